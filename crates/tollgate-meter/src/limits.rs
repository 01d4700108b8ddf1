//! Per-account rate limits: one GCRA limiter (governor) per account, with the quota of its role or
//! its tenant's override. A check is one atomic compare-and-swap; the clock is a parameter so tests
//! drive it with governor's fake clock.

use std::num::NonZeroU32;
use std::sync::Arc;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tollgate_core::{Limit, Role};
use tollgate_store::Principal;

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

struct Entry<C: Clock> {
    limit: Limit,
    limiter: Limiter<C>,
}

/// An admitted request's standing, for the `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    pub limit: Limit,
    pub remaining: u32,
}

/// See the module docs.
pub struct RateLimits<C: Clock = DefaultClock> {
    parent: Limit,
    child: Limit,
    clock: C,
    limiters: DashMap<Arc<str>, Arc<Entry<C>>>,
}

impl<C: Clock> std::fmt::Debug for RateLimits<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("accounts", &self.limiters.len())
            .finish()
    }
}

impl RateLimits<DefaultClock> {
    pub fn new(parent: Limit, child: Limit) -> Self {
        Self::with_clock(parent, child, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    pub fn with_clock(parent: Limit, child: Limit, clock: C) -> Self {
        RateLimits {
            parent,
            child,
            clock,
            limiters: DashMap::new(),
        }
    }

    /// The limit in force for this caller: its tenant's override for its role, else the default.
    pub fn limit_for(&self, p: &Principal) -> Limit {
        let overrides = &p.tenant.account.limits;
        match p.account.account.role {
            Role::Parent => overrides.parent.unwrap_or(self.parent),
            Role::Child => overrides.child.unwrap_or(self.child),
        }
    }

    /// Takes one request from the caller's allowance. `Err(seconds)` to wait before retrying.
    pub fn check(&self, p: &Principal) -> Result<RateState, u64> {
        let limit = self.limit_for(p);
        let entry = match self.limiters.get(&p.account.id) {
            Some(e) if e.limit == limit => e.clone(),
            _ => {
                // First request, or the operator changed the limit: a fresh allowance.
                let e = Arc::new(Entry {
                    limit,
                    limiter: RateLimiter::direct_with_clock(quota(limit), self.clock.clone())
                        .with_middleware::<StateInformationMiddleware>(),
                });
                self.limiters.insert(p.account.id.clone(), e.clone());
                e
            }
        };
        match entry.limiter.check() {
            Ok(snapshot) => Ok(RateState {
                limit,
                remaining: snapshot.remaining_burst_capacity(),
            }),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
            }
        }
    }
}

fn quota(limit: Limit) -> Quota {
    let rps = NonZeroU32::new(limit.rps.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limit.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rps).allow_burst(burst)
}
