//! Pooled credits with `overage = "deny"`, enforced without a store round trip per request: each
//! node leases a slice of the pool's remaining credits and spends it locally. The store shrinks
//! slices as the pool runs low (down to exactly one request's cost at the boundary), unspent
//! credits of a request that was not charged go back to the slice, and slices idle for
//! [`IDLE_RELEASE`] (and all of them at shutdown) go back to the store, so no credit is stranded on
//! a node that stopped using it.
//!
//! A lease or release whose outcome is unknown (the store's reply timed out: it may have applied
//! it after the node gave up) is sent again, with the same number ([`LeaseOp`]), before the pool's
//! next one, and the store applies it at most once: credits given back are not spendable here
//! meanwhile (they may be the store's again), and credits leased are not lost. So neither a
//! release counted twice (the pool would then admit more than it holds) nor a lease the node never
//! heard of (its credits stranded) comes of a slow store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use foldhash::quality::RandomState;
use tollgate_store::{LeaseOp, Store, StoreError};

/// A slice unused this long is returned to the store.
pub const IDLE_RELEASE: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Slice {
    local: AtomicU64,
    /// The pool's remaining credits beyond this slice, as of the last lease.
    beyond: AtomicU64,
    last_used_ms: AtomicU64,
    /// One lease operation at a time per pool on this node.
    leasing: tokio::sync::Mutex<Ops>,
}

/// A pool's lease operations on this node: the last one's number, and the one whose outcome is
/// not known yet, if any (sent again before the next).
#[derive(Debug, Default)]
struct Ops {
    seq: u64,
    unsettled: Option<Unsettled>,
}

#[derive(Debug, Clone, Copy)]
enum Unsettled {
    Lease { seq: u64, need: u64, want: u64 },
    Release { seq: u64, amount: u64 },
}

/// Whether a failed call may have been applied all the same (a time-out, a dropped connection):
/// only then is it sent again; any other error left nothing done.
fn outcome_unknown(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_))
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
    /// This node's name in the store's record of lease operations.
    node: Arc<str>,
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
            node: tollgate_core::generate_id(&mut rand::rng(), "node_").into(),
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
                    leasing: tokio::sync::Mutex::new(Ops::default()),
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
        let mut ops = s.leasing.lock().await;
        settle(&*self.store, &self.node, tenant, pool, &s, &mut ops).await?;
        let have = s.local.load(Ordering::Acquire);
        if have >= need {
            return Ok(true);
        }
        let missing = need - have;
        let want = self.max_slice.max(missing);
        ops.seq += 1;
        let seq = ops.seq;
        let op = LeaseOp::new(&self.node, seq);
        let (granted, beyond) = match self
            .store
            .lease_credits(tenant, pool, missing, want, op)
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                if outcome_unknown(&e) {
                    ops.unsettled = Some(Unsettled::Lease {
                        seq,
                        need: missing,
                        want,
                    });
                }
                return Err(e);
            }
        };
        s.beyond.store(beyond, Ordering::Relaxed);
        if granted == 0 {
            return Ok(false);
        }
        s.local.fetch_add(granted, Ordering::AcqRel);
        Ok(true)
    }

    /// Returns slices idle for [`IDLE_RELEASE`] (or all, with `all`: at shutdown, as the node's
    /// final release) to the store. True when everything it was to return is returned (no
    /// operation's outcome unknown): at shutdown, call it again until then.
    pub async fn release_idle(&self, all: bool) -> bool {
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
        let mut done = true;
        for ((tenant, pool), s) in idle {
            let mut ops = s.leasing.lock().await;
            if settle(&*self.store, &self.node, &tenant, &pool, &s, &mut ops)
                .await
                .is_err()
            {
                done = false;
                continue;
            }
            let amount = s.local.swap(0, Ordering::AcqRel);
            if amount > 0 {
                let r = release(
                    &*self.store,
                    &self.node,
                    &tenant,
                    &pool,
                    &s,
                    &mut ops,
                    amount,
                );
                if r.await.is_err() {
                    done = false;
                    continue;
                }
            }
            // At shutdown, with every operation on the pool answered, the store may forget this
            // node's record of them (if it cannot, the record stays: a few bytes).
            if all && ops.seq > 0 {
                ops.seq += 1;
                let op = LeaseOp {
                    node: &self.node,
                    seq: ops.seq,
                    last: true,
                };
                let _ = self.store.release_credits(&tenant, &pool, 0, op).await;
            }
        }
        done
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
        let node = self.node.clone();
        tokio::spawn(async move {
            for ((tenant, pool), amount) in held {
                let Some(s) = slices
                    .get(&(tenant.clone(), pool.clone()))
                    .map(|s| s.clone())
                else {
                    continue;
                };
                let mut ops = s.leasing.lock().await;
                if let Err(e) = settle(&*store, &node, &tenant, &pool, &s, &mut ops).await {
                    // The store is away: back into the slice (better spent here later than
                    // lost); it goes back when the slice is next idle.
                    s.local.fetch_add(amount, Ordering::AcqRel);
                    tracing::warn!(error = %e, amount, "could not return credits leased before a subscription change");
                    continue;
                }
                let _ = release(&*store, &node, &tenant, &pool, &s, &mut ops, amount).await;
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

/// Sends the pool's operation whose outcome is unknown again, with its number (the store applies
/// it at most once): credits it leased come here, credits it gave back stay given back. `Err`
/// while its outcome is still unknown (or it failed for good: then nothing was applied, and
/// credits it was to give back return to the slice).
async fn settle(
    store: &dyn Store,
    node: &str,
    tenant: &str,
    pool: &str,
    s: &Slice,
    ops: &mut Ops,
) -> Result<(), StoreError> {
    let Some(u) = ops.unsettled else {
        return Ok(());
    };
    let result = match u {
        Unsettled::Lease { seq, need, want } => {
            let op = LeaseOp::new(node, seq);
            store
                .lease_credits(tenant, pool, need, want, op)
                .await
                .map(|(granted, beyond)| {
                    s.beyond.store(beyond, Ordering::Relaxed);
                    s.local.fetch_add(granted, Ordering::AcqRel);
                })
        }
        Unsettled::Release { seq, amount } => {
            let op = LeaseOp::new(node, seq);
            let r = store.release_credits(tenant, pool, amount, op).await;
            if matches!(&r, Err(e) if !outcome_unknown(e)) {
                s.local.fetch_add(amount, Ordering::AcqRel);
            }
            r
        }
    };
    if !matches!(&result, Err(e) if outcome_unknown(e)) {
        ops.unsettled = None;
    }
    result
}

/// Gives `amount` back to the store as the pool's next operation. If its outcome is unknown the
/// credits stay out of the slice (the store may have them again) until [`settle`] knows; if it
/// failed for good they return to the slice (better spent here later than lost).
async fn release(
    store: &dyn Store,
    node: &str,
    tenant: &str,
    pool: &str,
    s: &Slice,
    ops: &mut Ops,
    amount: u64,
) -> Result<(), StoreError> {
    ops.seq += 1;
    let seq = ops.seq;
    let op = LeaseOp::new(node, seq);
    let r = store.release_credits(tenant, pool, amount, op).await;
    if let Err(e) = &r {
        if outcome_unknown(e) {
            ops.unsettled = Some(Unsettled::Release { seq, amount });
            tracing::warn!(error = %e, amount, "returning leased credits: no answer from the store; sent again before the pool's next lease");
        } else {
            s.local.fetch_add(amount, Ordering::AcqRel);
            tracing::warn!(error = %e, amount, "could not return leased credits; kept");
        }
    }
    r
}
