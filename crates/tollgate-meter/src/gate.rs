//! `Metering`: what the proxy calls around each product request. Before forwarding: the rate
//! limit, the store backlog bound and, for `deny` pools, the pooled credits. After the upstream
//! answered: the charge (or the refund of credits taken for a request that is not charged).

use std::sync::Arc;

use tollgate_core::{Day, DenyReason, Overage};
use tollgate_store::Principal;

use crate::credits::{Credits, Take};
use crate::limits::{RateLimits, RateState};
use crate::meter::{now_secs, CellKey, Meter};

/// A route's product and pool, interned once at start-up.
#[derive(Debug, Clone)]
pub struct Charge {
    pub product: Arc<str>,
    pub pool: Arc<str>,
}

/// What an admitted request's response headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub rate: Option<RateState>,
    /// (included credits, remaining as far as this node knows) for the route's pool.
    pub credits: Option<(u64, Option<u64>)>,
    /// Credits taken from a `deny` pool's slice (to refund if the response is not charged).
    pub taken: u64,
}

/// The outcome of [`Metering::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Admit(Standing),
    Deny(DenyReason, u64),
    /// Lease credits with [`Metering::refill`], then check again passing this (the rate limit
    /// was already taken).
    Refill(RateState),
}

/// See the module docs.
pub struct Metering {
    pub meter: Arc<Meter>,
    pub limits: RateLimits,
    pub credits: Credits,
}

impl std::fmt::Debug for Metering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metering").finish_non_exhaustive()
    }
}

impl Metering {
    /// Rate limit first (it applies to every route), then credits for product routes.
    pub fn check(
        &self,
        p: &Principal,
        charge: Option<&Charge>,
        credits: u64,
        rate_checked: Option<RateState>,
    ) -> Check {
        let rate = match rate_checked {
            Some(r) => r,
            None => match self.limits.check(p) {
                Ok(r) => r,
                Err(retry) => return Check::Deny(DenyReason::RateLimited, retry.max(1)),
            },
        };
        let Some(charge) = charge else {
            return Check::Admit(Standing {
                rate: Some(rate),
                credits: None,
                taken: 0,
            });
        };
        if self.meter.backlog_full() {
            return Check::Deny(DenyReason::StoreUnavailable, 1);
        }
        let sub = p
            .tenant
            .subscriptions()
            .iter()
            .find(|s| *s.pool == *charge.pool);
        let (included, overage) = match sub {
            Some(s) => (s.credits, s.overage),
            // admit() already refused unsubscribed pools; be safe anyway.
            None => return Check::Deny(DenyReason::ProductNotSubscribed, 0),
        };
        if overage == Overage::Allow || credits == 0 {
            return Check::Admit(Standing {
                rate: Some(rate),
                credits: Some((included, None)),
                taken: 0,
            });
        }
        match self.credits.take(&p.tenant.id, &charge.pool, credits) {
            Take::Taken { remaining } => Check::Admit(Standing {
                rate: Some(rate),
                credits: Some((included, Some(remaining))),
                taken: credits,
            }),
            Take::Refill => Check::Refill(rate),
        }
    }

    /// The slow path after [`Check::Refill`]. `Ok(false)`: the pool is spent.
    pub async fn refill(
        &self,
        p: &Principal,
        charge: &Charge,
        credits: u64,
    ) -> Result<bool, tollgate_store::StoreError> {
        self.credits
            .refill(&p.tenant.id, &charge.pool, credits)
            .await
    }

    /// After the upstream answered: charge it, or give back what was taken.
    pub fn settle(
        &self,
        p: &Principal,
        charge: &Charge,
        credits: u64,
        standing: &Standing,
        charged: bool,
    ) {
        if charged {
            self.meter.record(
                CellKey {
                    account: p.account.id.clone(),
                    parent: p.tenant.id.clone(),
                    product: charge.product.clone(),
                    pool: charge.pool.clone(),
                    day: Day::from_unix_secs(now_secs()),
                },
                credits,
            );
        } else if standing.taken > 0 {
            self.credits
                .refund(&p.tenant.id, &charge.pool, standing.taken);
        }
    }
}
