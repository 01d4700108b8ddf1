//! Per-account rate limits: one GCRA limiter (governor) per account, with the quota of its role or
//! its tenant's override. A check is one atomic compare-and-swap; the clock is a parameter so tests
//! drive it with governor's fake clock.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use foldhash::quality::RandomState;
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
    /// The role defaults, packed by [`pack`] so a config reload can change them while requests
    /// read them, without a lock.
    parent: AtomicU64,
    child: AtomicU64,
    clock: C,
    limiters: DashMap<Arc<str>, Arc<Entry<C>>, RandomState>,
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
            parent: AtomicU64::new(pack(parent)),
            child: AtomicU64::new(pack(child)),
            clock,
            limiters: DashMap::default(),
        }
    }

    /// Replaces the role defaults (a config reload). An account on a default gets a fresh
    /// allowance at the new rate on its next request; accounts with a tenant override keep theirs.
    pub fn set_defaults(&self, parent: Limit, child: Limit) {
        self.parent.store(pack(parent), Ordering::Relaxed);
        self.child.store(pack(child), Ordering::Relaxed);
    }

    /// The role defaults in force: (parent, child).
    pub fn defaults(&self) -> (Limit, Limit) {
        (
            unpack(self.parent.load(Ordering::Relaxed)),
            unpack(self.child.load(Ordering::Relaxed)),
        )
    }

    /// The limit in force for this caller: each field of its tenant's override for its role, else
    /// that field of the role's default (as configured now: a reload moves the fields a tenant
    /// does not override).
    pub fn limit_for(&self, p: &Principal) -> Limit {
        let role = p.account.account.role;
        let default = match role {
            Role::Parent => &self.parent,
            Role::Child => &self.child,
        };
        p.tenant
            .limits()
            .limit_for(role, unpack(default.load(Ordering::Relaxed)))
    }

    /// Takes one request from the caller's allowance. `Err(seconds)` to wait before retrying.
    pub fn check(&self, p: &Principal) -> Result<RateState, u64> {
        let limit = self.limit_for(p);
        // The map's guard must be gone before the insert below, which locks the same shard: held
        // in the match scrutinee it would deadlock whenever the limit changed.
        let existing = self.limiters.get(&p.account.id).map(|e| e.clone());
        let entry = match existing {
            Some(e) if e.limit == limit => e,
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

fn pack(l: Limit) -> u64 {
    (u64::from(l.rps) << 32) | u64::from(l.burst)
}

fn unpack(v: u64) -> Limit {
    Limit {
        rps: (v >> 32) as u32,
        burst: v as u32,
    }
}

fn quota(limit: Limit) -> Quota {
    let rps = NonZeroU32::new(limit.rps.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limit.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rps).allow_burst(burst)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;
    use tollgate_core::{Account, LimitOverride, LimitOverrides, Status};
    use tollgate_store::cache::CachedAccount;

    use super::*;

    fn child(overrides: LimitOverrides) -> Principal {
        let parent = Account {
            id: "acc_p".into(),
            role: Role::Parent,
            status: Status::Active,
            email: "p@x.example".into(),
            parent_id: None,
            team: true,
            limits: overrides,
            created_at: 0,
        };
        let mut me = parent.clone();
        me.id = "acc_c".into();
        me.role = Role::Child;
        me.parent_id = Some("acc_p".into());
        Principal {
            account: Arc::new(CachedAccount::new(me, vec![])),
            tenant: Arc::new(CachedAccount::new(parent, vec![])),
        }
    }

    #[test]
    fn pack_round_trips() {
        for l in [
            Limit { rps: 0, burst: 0 },
            Limit { rps: 1, burst: 2 },
            Limit {
                rps: u32::MAX,
                burst: u32::MAX,
            },
        ] {
            assert_eq!(unpack(pack(l)), l);
        }
    }

    #[test]
    fn new_defaults_apply_on_the_next_request_but_not_over_an_override() {
        let clock = FakeRelativeClock::default();
        let limits = RateLimits::with_clock(
            Limit { rps: 9, burst: 9 },
            Limit { rps: 1, burst: 2 },
            clock.clone(),
        );
        let c = child(LimitOverrides::default());
        assert_eq!(limits.check(&c).unwrap().remaining, 1);
        assert_eq!(limits.check(&c).unwrap().remaining, 0);
        assert!(limits.check(&c).is_err());

        limits.set_defaults(Limit { rps: 9, burst: 9 }, Limit { rps: 5, burst: 10 });
        assert_eq!(limits.defaults().1, Limit { rps: 5, burst: 10 });
        let s = limits.check(&c).unwrap();
        assert_eq!(s.limit, Limit { rps: 5, burst: 10 });
        assert_eq!(s.remaining, 9, "a fresh allowance at the new rate");

        let overridden = child(LimitOverrides {
            parent: None,
            child: Some(Limit { rps: 1, burst: 3 }.into()),
        });
        limits.set_defaults(Limit { rps: 9, burst: 9 }, Limit { rps: 7, burst: 7 });
        assert_eq!(
            limits.check(&overridden).unwrap().limit,
            Limit { rps: 1, burst: 3 }
        );
        clock.advance(Duration::from_secs(1));
    }

    #[test]
    fn a_partial_override_follows_the_defaults_in_the_fields_it_leaves_out() {
        let limits = RateLimits::with_clock(
            Limit { rps: 9, burst: 9 },
            Limit { rps: 1, burst: 2 },
            FakeRelativeClock::default(),
        );
        let burst_only = child(LimitOverrides {
            parent: None,
            child: Some(LimitOverride {
                rps: None,
                burst: Some(5),
            }),
        });
        assert_eq!(limits.limit_for(&burst_only), Limit { rps: 1, burst: 5 });
        limits.set_defaults(Limit { rps: 9, burst: 9 }, Limit { rps: 4, burst: 8 });
        let s = limits.check(&burst_only).unwrap();
        assert_eq!(s.limit, Limit { rps: 4, burst: 5 });
        assert_eq!(s.remaining, 4);
    }
}
