//! Usage recording and the exactly-once flusher.
//!
//! A request adds to two atomics in a cell keyed by (account, product, pool, UTC day); nothing on
//! the request path locks or allocates once the cell exists. The flusher turns what each cell
//! gained since the last successful flush into one [`UsageBatch`] with the next number. A batch
//! that failed (store down, reply lost) is retried with the *same* number until the store takes
//! it, so the store counts it once; only then do the cells' flushed marks move. Prometheus reads
//! the same cells at scrape time.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use foldhash::quality::RandomState;
use parking_lot::Mutex;
use tollgate_core::Day;
use tollgate_store::{Store, StoreError, UsageBatch, UsageDelta};

/// What a cell is keyed by. The parent is carried along (an account never changes parent).
#[derive(Debug, Clone, Eq)]
pub struct CellKey {
    pub account: Arc<str>,
    pub parent: Arc<str>,
    pub product: Arc<str>,
    pub pool: Arc<str>,
    pub day: Day,
}

impl PartialEq for CellKey {
    fn eq(&self, o: &Self) -> bool {
        // `Arc<str>`'s `==` looks at the pointers first: a request's key shares its strings with
        // the cell's (the cached account's id, the route's product and pool).
        self.day == o.day
            && self.account == o.account
            && self.product == o.product
            && self.pool == o.pool
    }
}

impl Hash for CellKey {
    /// The account and the day only: an account's few cells of a day (one per product and pool)
    /// share a hash and are told apart by `eq`, and a request hashes one string, not three.
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.account.hash(h);
        self.day.hash(h);
    }
}

#[derive(Debug, Default)]
struct Cell {
    requests: AtomicU64,
    credits: AtomicU64,
    /// Moved only by the flusher, after the store took a batch.
    flushed_requests: AtomicU64,
    flushed_credits: AtomicU64,
}

/// (account, parent, product): the labels of the per-account series.
type SeriesKey = (Arc<str>, Arc<str>, Arc<str>);

struct Pending {
    batch: UsageBatch,
    cells: Vec<(Arc<Cell>, u64, u64)>,
    attempts: u32,
}

/// Totals for one (account, parent, product) since this process started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesTotal {
    pub account: Arc<str>,
    pub parent: Arc<str>,
    pub product: Arc<str>,
    pub requests: u64,
    pub credits: u64,
}

/// See the module docs.
pub struct Meter {
    store: Arc<dyn Store>,
    node: String,
    seq: AtomicU64,
    cells: DashMap<CellKey, Arc<Cell>, RandomState>,
    pending: Mutex<Option<Pending>>,
    /// One flush at a time (the periodic flusher and the shutdown flush may overlap).
    flushing: tokio::sync::Mutex<()>,
    recorded_credits: AtomicU64,
    flushed_credits: AtomicU64,
    /// Totals of cells pruned after their day passed, so scrape-time counters stay monotonic.
    retired: Mutex<HashMap<SeriesKey, (u64, u64)>>,
    max_unflushed: u64,
    /// The last flush failed (the store is away): only then does the backlog bound apply.
    failing: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("node", &self.node)
            .field("cells", &self.cells.len())
            .finish()
    }
}

impl Meter {
    pub fn new(store: Arc<dyn Store>, max_unflushed_credits: u64) -> Meter {
        let node = tollgate_core::generate_id(&mut rand::rng(), "node_");
        Meter {
            store,
            node,
            seq: AtomicU64::new(0),
            cells: DashMap::default(),
            pending: Mutex::new(None),
            flushing: tokio::sync::Mutex::new(()),
            recorded_credits: AtomicU64::new(0),
            flushed_credits: AtomicU64::new(0),
            retired: Mutex::new(HashMap::new()),
            max_unflushed: max_unflushed_credits,
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// This process's id, the prefix of its batch ids.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// Adds one request and `credits` to the cell. The hot path.
    pub fn record(&self, key: CellKey, credits: u64) {
        let cell = match self.cells.get(&key) {
            Some(c) => c.clone(),
            None => self.cells.entry(key).or_default().clone(),
        };
        cell.requests.fetch_add(1, Ordering::Relaxed);
        cell.credits.fetch_add(credits, Ordering::Relaxed);
        self.recorded_credits.fetch_add(credits, Ordering::Relaxed);
    }

    /// Credits recorded but not yet in the store.
    pub fn unflushed_credits(&self) -> u64 {
        self.recorded_credits
            .load(Ordering::Relaxed)
            .saturating_sub(self.flushed_credits.load(Ordering::Relaxed))
    }

    /// Whether the in-memory backlog reached `max_unflushed_credits` while the store does not take
    /// it (the last flush failed): metered requests are then refused with `store_unavailable`
    /// rather than served unbilled. While flushes succeed, what waits for the next one is not a
    /// backlog, however busy the node (a small bound used to refuse healthy traffic).
    pub fn backlog_full(&self) -> bool {
        self.failing.load(Ordering::Relaxed) && self.unflushed_credits() >= self.max_unflushed
    }

    /// Writes everything recorded so far (one batch). `Ok(true)` if something was written.
    pub async fn flush(&self) -> Result<bool, StoreError> {
        let _one = self.flushing.lock().await;
        let pending = {
            let mut slot = self.pending.lock();
            match slot.take() {
                Some(p) => Some(p),
                None => self.build_batch(),
            }
        };
        let Some(mut pending) = pending else {
            return Ok(false);
        };
        match self.store.record_usage(&pending.batch).await {
            Ok(()) => {
                let mut credits = 0;
                for (cell, r, c) in &pending.cells {
                    cell.flushed_requests.fetch_add(*r, Ordering::Relaxed);
                    cell.flushed_credits.fetch_add(*c, Ordering::Relaxed);
                    credits += c;
                }
                self.flushed_credits.fetch_add(credits, Ordering::Relaxed);
                self.failing.store(false, Ordering::Relaxed);
                if pending.attempts > 0 {
                    tracing::info!(batch = %pending.batch.id(), attempts = pending.attempts + 1, "usage batch written after retries");
                }
                Ok(true)
            }
            Err(e) => {
                self.failing.store(true, Ordering::Relaxed);
                pending.attempts += 1;
                // The first failure, then one line every 120 attempts (30 s at the default
                // interval), not four a second for as long as the store is away.
                if pending.attempts == 1 || pending.attempts.is_multiple_of(120) {
                    tracing::warn!(batch = %pending.batch.id(), attempts = pending.attempts, error = %e, unflushed_credits = self.unflushed_credits(), "usage flush failed; will retry the same batch");
                } else {
                    tracing::debug!(batch = %pending.batch.id(), attempts = pending.attempts, error = %e, "usage flush failed again");
                }
                *self.pending.lock() = Some(pending);
                Err(e)
            }
        }
    }

    fn build_batch(&self) -> Option<Pending> {
        let mut deltas = Vec::new();
        let mut cells = Vec::new();
        for entry in self.cells.iter() {
            let (k, cell) = (entry.key(), entry.value());
            let r = cell.requests.load(Ordering::Relaxed)
                - cell.flushed_requests.load(Ordering::Relaxed);
            let c =
                cell.credits.load(Ordering::Relaxed) - cell.flushed_credits.load(Ordering::Relaxed);
            if r == 0 && c == 0 {
                continue;
            }
            deltas.push(UsageDelta {
                account_id: k.account.clone(),
                parent_id: k.parent.clone(),
                product: k.product.clone(),
                pool: k.pool.clone(),
                day: k.day,
                requests: r,
                credits: c,
            });
            cells.push((cell.clone(), r, c));
        }
        if deltas.is_empty() {
            return None;
        }
        // Numbered in order, the next only once the last was taken (`pending` is empty here): the
        // order `UsageBatch` promises the store.
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        Some(Pending {
            batch: UsageBatch {
                writer: self.node.clone(),
                seq,
                deltas,
            },
            cells,
            attempts: 0,
        })
    }

    /// Flushes until nothing is left or `deadline` passes; for shutdown. Returns what is left.
    pub async fn flush_all(&self, deadline: Duration) -> u64 {
        let end = tokio::time::Instant::now() + deadline;
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.flush().await {
                Ok(false) if self.pending.lock().is_none() => return self.unflushed_credits(),
                Ok(_) => backoff = Duration::from_millis(20),
                Err(_) => {
                    if tokio::time::Instant::now() + backoff > end {
                        return self.unflushed_credits();
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Runs the periodic flusher until `shutdown`; then a final flush of everything.
    pub async fn run_flusher(
        self: Arc<Self>,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            let _ = self.flush().await;
            if last_prune.elapsed() > Duration::from_secs(60) {
                self.prune(Day::from_unix_secs(now_secs()));
                last_prune = tokio::time::Instant::now();
            }
        }
    }

    /// Drops fully flushed cells of days before yesterday, keeping their totals for the metrics.
    pub fn prune(&self, today: Day) {
        let mut retired = self.retired.lock();
        self.cells.retain(|k, cell| {
            let done = cell.requests.load(Ordering::Relaxed)
                == cell.flushed_requests.load(Ordering::Relaxed)
                && cell.credits.load(Ordering::Relaxed)
                    == cell.flushed_credits.load(Ordering::Relaxed);
            // A cell in a pending batch is still referenced there; its flushed marks move later.
            let in_flight = Arc::strong_count(cell) > 1;
            if k.day.0 < today.0 - 1 && done && !in_flight {
                let e = retired
                    .entry((k.account.clone(), k.parent.clone(), k.product.clone()))
                    .or_default();
                e.0 += cell.requests.load(Ordering::Relaxed);
                e.1 += cell.credits.load(Ordering::Relaxed);
                false
            } else {
                true
            }
        });
    }

    /// Totals per (account, parent, product) since start, for the Prometheus series.
    pub fn totals(&self) -> Vec<SeriesTotal> {
        let mut map: HashMap<SeriesKey, (u64, u64)> = self.retired.lock().clone();
        for entry in self.cells.iter() {
            let k = entry.key();
            let e = map
                .entry((k.account.clone(), k.parent.clone(), k.product.clone()))
                .or_default();
            e.0 += entry.value().requests.load(Ordering::Relaxed);
            e.1 += entry.value().credits.load(Ordering::Relaxed);
        }
        let mut out: Vec<SeriesTotal> = map
            .into_iter()
            .map(
                |((account, parent, product), (requests, credits))| SeriesTotal {
                    account,
                    parent,
                    product,
                    requests,
                    credits,
                },
            )
            .collect();
        out.sort_by(|a, b| (&a.account, &a.product).cmp(&(&b.account, &b.product)));
        out
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
