//! Pooled credits with `overage = "deny"`, enforced without a store round trip per request: each
//! node leases a slice of the pool's remaining credits and spends it locally. The store shrinks
//! slices as the pool runs low (down to exactly one request's cost at the boundary), unspent
//! credits of a request that was not charged go back to the slice, and slices idle for
//! [`IDLE_RELEASE`] (and all of them at shutdown) go back to the store, so no credit is stranded on
//! a node that stopped using it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use foldhash::quality::RandomState;
use tollgate_store::{Store, StoreError};

/// A slice unused this long is returned to the store.
pub const IDLE_RELEASE: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Slice {
    local: AtomicU64,
    /// The pool's remaining credits beyond this slice, as of the last lease.
    beyond: AtomicU64,
    last_used_ms: AtomicU64,
    /// One lease request at a time per pool on this node.
    leasing: tokio::sync::Mutex<()>,
}

/// What taking credits from the local slice said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Taken; the pool's remaining credits as far as this node knows.
    Taken { remaining: u64 },
    /// The slice is too small: lease more ([`Credits::refill`]) and try again.
    Refill,
}

/// (tenant, pool).
type PoolKey = (Arc<str>, Arc<str>);

/// See the module docs.
pub struct Credits {
    store: Arc<dyn Store>,
    slices: Arc<DashMap<PoolKey, Arc<Slice>, RandomState>>,
    epoch: Instant,
    /// Upper bound of one lease (credits).
    max_slice: u64,
}

impl std::fmt::Debug for Credits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credits")
            .field("slices", &self.slices.len())
            .finish()
    }
}

impl Credits {
    pub fn new(store: Arc<dyn Store>, max_slice: u64) -> Credits {
        Credits {
            store,
            slices: Arc::default(),
            epoch: Instant::now(),
            max_slice: max_slice.max(1),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn slice(&self, tenant: &Arc<str>, pool: &Arc<str>) -> Arc<Slice> {
        if let Some(s) = self.slices.get(&(tenant.clone(), pool.clone())) {
            return s.clone();
        }
        self.slices
            .entry((tenant.clone(), pool.clone()))
            .or_insert_with(|| {
                Arc::new(Slice {
                    local: AtomicU64::new(0),
                    beyond: AtomicU64::new(0),
                    last_used_ms: AtomicU64::new(0),
                    leasing: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// Takes `credits` from this node's slice of the pool: the hot path, one CAS loop.
    pub fn take(&self, tenant: &Arc<str>, pool: &Arc<str>, credits: u64) -> Take {
        let s = self.slice(tenant, pool);
        s.last_used_ms.store(self.now_ms(), Ordering::Relaxed);
        let mut cur = s.local.load(Ordering::Relaxed);
        loop {
            if cur < credits {
                return Take::Refill;
            }
            match s.local.compare_exchange_weak(
                cur,
                cur - credits,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Take::Taken {
                        remaining: cur - credits + s.beyond.load(Ordering::Relaxed),
                    }
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Credits taken for a request that was not charged go back to the slice.
    pub fn refund(&self, tenant: &Arc<str>, pool: &Arc<str>, credits: u64) {
        if let Some(s) = self.slices.get(&(tenant.clone(), pool.clone())) {
            s.local.fetch_add(credits, Ordering::AcqRel);
        }
    }

    /// Leases more credits so that at least `need` are local. `Ok(false)` when the pool cannot
    /// cover `need` (the request gets `credits_exhausted`).
    pub async fn refill(
        &self,
        tenant: &Arc<str>,
        pool: &Arc<str>,
        need: u64,
    ) -> Result<bool, StoreError> {
        let s = self.slice(tenant, pool);
        let _one = s.leasing.lock().await;
        let have = s.local.load(Ordering::Acquire);
        if have >= need {
            return Ok(true);
        }
        let missing = need - have;
        let want = self.max_slice.max(missing);
        let (granted, beyond) = self
            .store
            .lease_credits(tenant, pool, missing, want)
            .await?;
        s.beyond.store(beyond, Ordering::Relaxed);
        if granted == 0 {
            return Ok(false);
        }
        s.local.fetch_add(granted, Ordering::AcqRel);
        Ok(true)
    }

    /// Returns slices idle for [`IDLE_RELEASE`] (or all, with `all`) to the store.
    pub async fn release_idle(&self, all: bool) {
        let now = self.now_ms();
        let idle: Vec<(PoolKey, Arc<Slice>)> = self
            .slices
            .iter()
            .filter(|e| {
                all || now.saturating_sub(e.value().last_used_ms.load(Ordering::Relaxed))
                    >= IDLE_RELEASE.as_millis() as u64
            })
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for ((tenant, pool), s) in idle {
            let _one = s.leasing.lock().await;
            let amount = s.local.swap(0, Ordering::AcqRel);
            if amount == 0 {
                continue;
            }
            if let Err(e) = self.store.release_credits(&tenant, &pool, amount).await {
                // Keep them: better spent here later than lost.
                s.local.fetch_add(amount, Ordering::AcqRel);
                tracing::warn!(error = %e, amount, "could not return leased credits");
            }
        }
    }

    /// A tenant's subscriptions changed: its slices stop at once and what they held goes back to
    /// the store in the background, so a pool whose credits were lowered is judged against the new
    /// amount from the next request on, instead of letting each node spend a slice leased under
    /// the old one. Credits the store cannot take back (it is down) return to the slice, as an
    /// idle slice's do. Returns at once.
    pub fn subscriptions_changed(&self, tenant: &str) {
        let held: Vec<(PoolKey, u64)> = self
            .slices
            .iter()
            .filter(|e| &*e.key().0 == tenant)
            .map(|e| (e.key().clone(), e.value().local.swap(0, Ordering::AcqRel)))
            .filter(|(_, amount)| *amount > 0)
            .collect();
        if held.is_empty() {
            return;
        }
        let store = self.store.clone();
        let slices = self.slices.clone();
        tokio::spawn(async move {
            for ((tenant, pool), amount) in held {
                if let Err(e) = store.release_credits(&tenant, &pool, amount).await {
                    // The store is away: back into the slice, as `release_idle` keeps what it
                    // cannot return (better spent here later than lost); it goes back when the
                    // slice is next idle.
                    if let Some(s) = slices.get(&(tenant, pool)) {
                        s.local.fetch_add(amount, Ordering::AcqRel);
                    }
                    tracing::warn!(error = %e, amount, "could not return credits leased before a subscription change");
                }
            }
        });
    }

    /// Credits this node holds unspent (all slices).
    pub fn held(&self) -> u64 {
        self.slices
            .iter()
            .map(|s| s.local.load(Ordering::Relaxed))
            .sum()
    }
}
