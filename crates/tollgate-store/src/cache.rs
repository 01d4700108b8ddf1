//! `KeyCache`: the in-process view of the key tree that every request is admitted from.
//!
//! Two maps: key hash -> account id (or a negative entry), and account id -> the account with, for
//! a parent, its subscriptions. A child's parent is looked up at request time, so disabling a parent
//! stops all its children with one entry's change. Entries are refreshed in place when the change
//! feed names them (a request never waits on the store for a key this node has seen), misses are
//! loaded once however many requests wait (single flight), and unknown keys are remembered for
//! `negative_ttl`. If the feed goes quiet for longer than `max_staleness`, entries older than that
//! are revalidated before use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tollgate_core::{Account, KeyHash, Role, Subscription};

use crate::{Change, Store, StoreError};

/// What the cache needs from `gateway.toml`.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    pub max_staleness: Duration,
    pub negative_ttl: Duration,
    /// With the store unreachable, keep judging cached keys as last known (`true`), or refuse them
    /// with `store_unavailable` once they are stale (`false`, fail closed).
    pub serve_stale_when_down: bool,
}

/// An account as cached, with the subscriptions of a parent (empty for a child).
#[derive(Debug)]
pub struct CachedAccount {
    /// The account id, shared so the meter can key on it without allocating.
    pub id: Arc<str>,
    pub account: Account,
    pub subscriptions: Arc<[Subscription]>,
    loaded_at: Instant,
}

impl CachedAccount {
    /// An entry loaded now.
    pub fn new(account: Account, subscriptions: Vec<Subscription>) -> CachedAccount {
        CachedAccount {
            id: Arc::from(account.id.as_str()),
            account,
            subscriptions: subscriptions.into(),
            loaded_at: Instant::now(),
        }
    }

    pub fn subscribed(&self, pool: &str) -> bool {
        self.subscriptions.iter().any(|s| s.pool == pool)
    }
}

/// Who is calling: the account and its tenant (the parent, or the account itself for a parent).
#[derive(Debug, Clone)]
pub struct Principal {
    pub account: Arc<CachedAccount>,
    pub tenant: Arc<CachedAccount>,
}

impl Principal {
    /// The parent to hand to `admit()`: `None` for a parent.
    pub fn parent(&self) -> Option<&Account> {
        (self.account.account.role == Role::Child).then_some(&self.tenant.account)
    }
}

/// The answer of a synchronous look-up.
#[derive(Debug, Clone)]
pub enum CacheLookup {
    Hit(Principal),
    /// Known not to exist (negative entry still valid).
    Unknown,
    /// Not cached, or too stale to use: call [`KeyCache::resolve`].
    Miss,
}

#[derive(Debug, Clone)]
enum KeySlot {
    Known(Arc<str>),
    Negative { until: Instant },
}

type Flight = Arc<OnceCell<Result<Option<Principal>, StoreError>>>;

/// See the module docs.
pub struct KeyCache {
    store: Arc<dyn Store>,
    config: CacheConfig,
    keys: DashMap<KeyHash, KeySlot>,
    accounts: DashMap<Arc<str>, Arc<CachedAccount>>,
    inflight: Mutex<HashMap<KeyHash, Flight>>,
    epoch: Instant,
    /// Millis since `epoch` when the feed follower last confirmed it had applied every change.
    feed_synced_ms: AtomicU64,
    store_up: AtomicBool,
    /// Told the seconds between a change's write and its application here (revocation lag).
    lag_observer: std::sync::OnceLock<Box<dyn Fn(f64) + Send + Sync>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub negative_hits: AtomicU64,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("keys", &self.keys.len())
            .field("accounts", &self.accounts.len())
            .finish()
    }
}

impl KeyCache {
    pub fn new(store: Arc<dyn Store>, config: CacheConfig) -> KeyCache {
        KeyCache {
            store,
            config,
            keys: DashMap::new(),
            accounts: DashMap::new(),
            inflight: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            feed_synced_ms: AtomicU64::new(0),
            store_up: AtomicBool::new(true),
            lag_observer: std::sync::OnceLock::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            negative_hits: AtomicU64::new(0),
        }
    }

    /// Installs the revocation-lag observer (once; later calls are ignored).
    pub fn set_lag_observer(&self, observe: impl Fn(f64) + Send + Sync + 'static) {
        let _ = self.lag_observer.set(Box::new(observe));
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Number of cached keys (positive and negative).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn store_up(&self) -> bool {
        self.store_up.load(Ordering::Relaxed)
    }

    pub fn set_store_up(&self, up: bool) {
        self.store_up.store(up, Ordering::Relaxed);
    }

    /// Called by the feed follower after each successful read: every change up to now is applied.
    pub fn mark_feed_synced(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.feed_synced_ms.store(ms, Ordering::Relaxed);
    }

    fn is_fresh(&self, entry: &CachedAccount, now: Instant) -> bool {
        let synced =
            self.epoch + Duration::from_millis(self.feed_synced_ms.load(Ordering::Relaxed));
        let confirmed = entry.loaded_at.max(synced);
        now.saturating_duration_since(confirmed) <= self.config.max_staleness
    }

    /// The hot path: no await, no store access.
    pub fn lookup(&self, key: &KeyHash) -> CacheLookup {
        let now = Instant::now();
        let account_id = match self.keys.get(key) {
            Some(slot) => match &*slot {
                KeySlot::Known(id) => id.clone(),
                KeySlot::Negative { until } if *until > now => {
                    self.negative_hits.fetch_add(1, Ordering::Relaxed);
                    return CacheLookup::Unknown;
                }
                KeySlot::Negative { .. } => {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    return CacheLookup::Miss;
                }
            },
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                return CacheLookup::Miss;
            }
        };
        match self.principal_of(&account_id, now) {
            Some(p) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                CacheLookup::Hit(p)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                CacheLookup::Miss
            }
        }
    }

    /// Both entries present and fresh, or `None`.
    fn principal_of(&self, account_id: &str, now: Instant) -> Option<Principal> {
        let account = self.accounts.get(account_id)?.clone();
        if !self.is_fresh(&account, now) {
            return None;
        }
        let tenant = match &account.account.parent_id {
            None => account.clone(),
            Some(pid) => {
                let t = self.accounts.get(pid.as_str())?.clone();
                if !self.is_fresh(&t, now) {
                    return None;
                }
                t
            }
        };
        Some(Principal { account, tenant })
    }

    /// Whatever is cached for the key, fresh or not (the store-down fallback).
    fn stale_principal(&self, key: &KeyHash) -> Option<Principal> {
        let id = match self.keys.get(key).map(|s| s.clone())? {
            KeySlot::Known(id) => id,
            KeySlot::Negative { .. } => return None,
        };
        let account = self.accounts.get(&*id)?.clone();
        let tenant = match &account.account.parent_id {
            None => account.clone(),
            Some(pid) => self.accounts.get(pid.as_str())?.clone(),
        };
        Some(Principal { account, tenant })
    }

    /// The slow path after a [`CacheLookup::Miss`]: loads the key from the store once, however many
    /// callers wait for it. `Ok(None)` for an unknown key (now cached negatively).
    pub async fn resolve(&self, key: &KeyHash) -> Result<Option<Principal>, StoreError> {
        let flight = {
            let mut inflight = self.inflight.lock();
            inflight.entry(*key).or_default().clone()
        };
        let result = flight.get_or_init(|| self.load(key)).await.clone();
        {
            let mut inflight = self.inflight.lock();
            if inflight.get(key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                inflight.remove(key);
            }
        }
        match result {
            Err(StoreError::Unavailable(msg)) => {
                self.set_store_up(false);
                if self.config.serve_stale_when_down {
                    if let Some(p) = self.stale_principal(key) {
                        return Ok(Some(p));
                    }
                }
                Err(StoreError::Unavailable(msg))
            }
            other => other,
        }
    }

    async fn load(&self, key: &KeyHash) -> Result<Option<Principal>, StoreError> {
        let Some(account) = self.store.account_by_key(key).await? else {
            self.set_store_up(true);
            self.keys.insert(
                *key,
                KeySlot::Negative {
                    until: Instant::now() + self.config.negative_ttl,
                },
            );
            return Ok(None);
        };
        self.set_store_up(true);
        let id: Arc<str> = Arc::from(account.id.as_str());
        let parent_id = account.parent_id.clone();
        let entry = self.fetch_entry_from(account).await?;
        let tenant = match parent_id {
            None => entry.clone(),
            Some(pid) => match self.refresh_account(&pid).await? {
                Some(t) => t,
                // A child whose parent record is gone is judged as under a deleted parent.
                None => return Ok(None),
            },
        };
        self.accounts.insert(id.clone(), entry.clone());
        self.keys.insert(*key, KeySlot::Known(id));
        Ok(Some(Principal {
            account: entry,
            tenant,
        }))
    }

    async fn fetch_entry_from(&self, account: Account) -> Result<Arc<CachedAccount>, StoreError> {
        let subscriptions: Arc<[Subscription]> = if account.role == Role::Parent {
            self.store.subscriptions(&account.id).await?.into()
        } else {
            Arc::from(Vec::new())
        };
        Ok(Arc::new(CachedAccount {
            id: Arc::from(account.id.as_str()),
            account,
            subscriptions,
            loaded_at: Instant::now(),
        }))
    }

    /// Reloads one account (and a parent's subscriptions) and replaces the cached entry.
    async fn refresh_account(&self, id: &str) -> Result<Option<Arc<CachedAccount>>, StoreError> {
        match self.store.account(id).await? {
            None => {
                self.accounts.remove(id);
                Ok(None)
            }
            Some(account) => {
                let entry = self.fetch_entry_from(account).await?;
                self.accounts.insert(Arc::from(id), entry.clone());
                Ok(Some(entry))
            }
        }
    }

    /// Applies one change of the feed (or one this node just made, before its API call returns).
    /// Entries this node does not hold are left alone: they will be loaded when first used.
    pub async fn apply(&self, change: &Change) -> Result<(), StoreError> {
        match change {
            Change::Account(id) | Change::Subscriptions(id) => {
                if self.accounts.contains_key(id.as_str()) {
                    if let Err(e) = self.refresh_account(id).await {
                        // Better to refuse with `store_unavailable` than to admit on a state we
                        // know has changed.
                        self.accounts.remove(id.as_str());
                        return Err(e);
                    }
                }
            }
            Change::KeyAdded(hash) => {
                self.keys
                    .remove_if(hash, |_, slot| matches!(slot, KeySlot::Negative { .. }));
            }
            Change::KeyRemoved(hash) => {
                self.keys.remove(hash);
            }
        }
        Ok(())
    }

    /// Puts a loaded account under its key (and its tenant, for a child) without asking the store:
    /// for bulk warm-up and benchmarks.
    pub fn insert_loaded(
        &self,
        key: KeyHash,
        account: Arc<CachedAccount>,
        tenant: Option<Arc<CachedAccount>>,
    ) {
        if let Some(t) = tenant {
            self.accounts.insert(t.id.clone(), t);
        }
        self.keys.insert(key, KeySlot::Known(account.id.clone()));
        self.accounts.insert(account.id.clone(), account);
    }

    /// Forgets everything (after the feed was trimmed past this node's cursor).
    pub fn clear(&self) {
        self.keys.clear();
        self.accounts.clear();
    }

    /// Drops expired negative entries; run now and then so random-key floods do not grow the map.
    pub fn sweep_negative(&self) {
        let now = Instant::now();
        self.keys
            .retain(|_, slot| !matches!(slot, KeySlot::Negative { until } if *until <= now));
    }

    /// Follows the store's change feed until `shutdown` resolves: applies every change, resumes
    /// from the last cursor after errors, and reloads from scratch if the feed was trimmed past it.
    pub async fn follow_feed(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut cursor: Option<String> = None;
        let mut backoff = Duration::from_millis(50);
        let wait = (self.config.max_staleness / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut last_sweep = Instant::now();
        loop {
            let step = async {
                let c = match &cursor {
                    Some(c) => c.clone(),
                    None => {
                        let head = self.store.feed_head().await?;
                        // Anything cached before we knew the head may have missed changes.
                        self.clear();
                        head
                    }
                };
                let events = self.store.read_feed(&c, wait).await?;
                Ok::<_, StoreError>((c, events))
            };
            let res = tokio::select! {
                _ = &mut shutdown => return,
                r = step => r,
            };
            match res {
                Ok((c, events)) => {
                    backoff = Duration::from_millis(50);
                    self.set_store_up(true);
                    let mut next = c;
                    let mut ok = true;
                    for ev in events {
                        if let Err(e) = self.apply(&ev.change).await {
                            tracing::warn!(error = %e, "could not apply a key-tree change; will retry");
                            ok = false;
                            break;
                        }
                        if let (Some(at), Some(observe)) = (ev.at_ms, self.lag_observer.get()) {
                            observe(crate::store::unix_ms().saturating_sub(at) as f64 / 1000.0);
                        }
                        next = ev.cursor;
                    }
                    cursor = Some(next);
                    if ok {
                        self.mark_feed_synced();
                    }
                }
                Err(StoreError::FeedTrimmed) => {
                    tracing::warn!("change feed trimmed past our cursor: reloading the key cache");
                    cursor = None;
                }
                Err(e) => {
                    self.set_store_up(false);
                    tracing::warn!(error = %e, "change feed unavailable");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
            if last_sweep.elapsed() > self.config.negative_ttl.max(Duration::from_secs(1)) {
                self.sweep_negative();
                last_sweep = Instant::now();
            }
        }
    }
}
