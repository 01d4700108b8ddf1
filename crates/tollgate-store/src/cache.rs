//! `KeyCache`: the in-process view of the key tree that every request is admitted from.
//!
//! Two indexes over one set of entries, key -> account entry and account id -> the account's
//! current entry (with, for a parent, its subscriptions), and a map of keys known not to exist. A
//! child's parent is looked up by id at request time, so disabling a parent stops all its children
//! with one entry's change. Entries are refreshed in place when the change feed names them (a
//! request never waits on the store for a key this node has seen), misses are loaded once however
//! many requests wait (single flight), and unknown keys are remembered for `negative_ttl`. If the
//! feed goes quiet for longer than `max_staleness`, entries older than that are revalidated before
//! use.
//!
//! # Memory
//!
//! The cache holds every active key a node has seen, so its size per key is what a node's memory
//! is. Per cached child key (the common case) it holds:
//! - one [`CachedAccount`] allocation (72 bytes): the id, role, status, the load time, the key's
//!   prefix and a pointer to the parent's shared `ParentLink`. Email, creation time and a
//!   parent's own data (limits, team flag, subscriptions: `ParentData`) are not kept for children;
//!   the account API reads the rest from the store;
//! - the id's `Arc<str>`, shared by the entry, the id index and whoever attributes the request;
//! - one pointer in each index: both are sets of `Arc<CachedAccount>` hashed by a field of the
//!   entry (its key prefix, its id), not maps holding a copy of the key next to a value.
//!
//! That is about 170 bytes per key at a million keys (hash tables at their least full), against
//! about 550 when entries held a whole `Account` and the maps fat keys and values.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tollgate_core::{Account, Admittable, KeyHash, LimitOverrides, Role, Status, Subscription};

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

/// What the cache indexes a key by: the first 128 bits of its SHA-256.
///
/// The store keeps the full hash, but a hit here does not go back to it, so a presented key whose
/// hash shares these 16 bytes with a cached key's is admitted as that key. Finding one is a second
/// preimage on SHA-256 truncated to 128 bits: about 2^128 / n evaluations offline against n cached
/// keys (2^108 at a million). Truncating lowers the bar from guessing a key (29 random characters
/// of 36, about 2^150 / n tries, each one a request) to that, which is still far out of reach. Two
/// real keys sharing a prefix by chance: about n^2 / 2^129, nil. Unknown keys are remembered by
/// prefix too (a collision there would only refuse a key for `negative_ttl`). Halving the hash
/// saves 16 bytes in every entry.
type KeyPrefix = [u8; 16];

/// The prefix of an entry cached only as a tenant, under no key. (A real key has this prefix with
/// probability 2^-128, and then it only misses the cache every time.)
const NO_KEY: KeyPrefix = [0; 16];

fn prefix(key: &KeyHash) -> KeyPrefix {
    let mut p = NO_KEY;
    p.copy_from_slice(&key.0[..16]);
    p
}

/// Load times are millis since the cache's epoch in 48 bits (8,900 years), so that they fit in what
/// would otherwise be padding of [`AccountState`].
type Stamp = [u8; 6];

fn stamp(ms: u64) -> Stamp {
    let [a, b, c, d, e, f, _, _] = ms.min((1 << 48) - 1).to_le_bytes();
    [a, b, c, d, e, f]
}

fn unstamp(s: Stamp) -> u64 {
    let [a, b, c, d, e, f] = s;
    u64::from_le_bytes([a, b, c, d, e, f, 0, 0])
}

/// A parent's id, one allocation per parent shared by its children's entries: a child points at
/// its parent with one thin pointer and looks the parent's current entry up by this id.
#[derive(Debug)]
struct ParentLink {
    id: Arc<str>,
}

/// What a parent has and a child has not.
#[derive(Debug, Clone)]
struct ParentData {
    /// The link its children's entries share.
    link: Arc<ParentLink>,
    limits: LimitOverrides,
    team: bool,
    subscriptions: Arc<[Subscription]>,
}

/// What admission and attribution read of an account: `admit()` takes it as it takes an `Account`.
#[derive(Debug, Clone)]
pub struct AccountState {
    /// The account id, shared so the meter can key on it without allocating.
    pub id: Arc<str>,
    pub role: Role,
    pub status: Status,
    /// A child's parent.
    parent: Option<Arc<ParentLink>>,
    /// When the entry was loaded (see [`Stamp`]).
    loaded: Stamp,
}

impl AccountState {
    /// The id usage rolls up to: the parent's for a child, its own for a parent.
    pub fn tenant_id(&self) -> &str {
        self.parent_id().unwrap_or(&self.id)
    }

    /// The parent's id for a child; `None` for a parent.
    pub fn parent_id(&self) -> Option<&str> {
        self.parent.as_ref().map(|l| &*l.id)
    }

    pub fn is_parent(&self) -> bool {
        self.role == Role::Parent
    }
}

impl Admittable for AccountState {
    fn role(&self) -> Role {
        self.role
    }

    fn status(&self) -> Status {
        self.status
    }
}

/// An account as cached: its [`AccountState`] (which it dereferences to, so `entry.id` is the id),
/// the prefix of the key it was loaded by, and for a parent its `ParentData`.
#[derive(Debug, Clone)]
pub struct CachedAccount {
    pub account: AccountState,
    key: KeyPrefix,
    parent_data: Option<Box<ParentData>>,
}

impl Deref for CachedAccount {
    type Target = AccountState;

    fn deref(&self) -> &AccountState {
        &self.account
    }
}

impl CachedAccount {
    /// An entry built outside a cache (tests, warm-up): a child gets a link of its own, a parent
    /// these subscriptions (a child's are ignored: children use their parent's).
    /// [`KeyCache::insert_loaded`] stamps it and points a child at its cached parent's link.
    pub fn new(account: Account, subscriptions: Vec<Subscription>) -> CachedAccount {
        let id: Arc<str> = Arc::from(account.id.as_str());
        let parent = account
            .parent_id
            .as_deref()
            .map(|pid| Arc::new(ParentLink { id: Arc::from(pid) }));
        build(account, id, parent, None, subscriptions, NO_KEY, 0)
    }

    pub fn subscribed(&self, pool: &str) -> bool {
        self.subscriptions().iter().any(|s| s.pool == pool)
    }

    /// A parent's subscriptions (which its children share); none for a child.
    pub fn subscriptions(&self) -> &[Subscription] {
        self.parent_data.as_ref().map_or(&[], |d| &d.subscriptions)
    }

    /// A parent's rate-limit overrides; none for a child (its parent's apply).
    pub fn limits(&self) -> LimitOverrides {
        self.parent_data
            .as_ref()
            .map(|d| d.limits)
            .unwrap_or_default()
    }

    /// A parent's team flag; `false` for a child.
    pub fn team(&self) -> bool {
        self.parent_data.as_ref().is_some_and(|d| d.team)
    }

    /// The link a parent's children point at.
    fn own_link(&self) -> Option<&Arc<ParentLink>> {
        self.parent_data.as_ref().map(|d| &d.link)
    }

    fn loaded_ms(&self) -> u64 {
        unstamp(self.account.loaded)
    }
}

/// An entry from the store's account. `id` and the links are passed in so they can be shared;
/// `own_link` is a parent's existing link (a new one is made if `None`).
fn build(
    account: Account,
    id: Arc<str>,
    parent: Option<Arc<ParentLink>>,
    own_link: Option<Arc<ParentLink>>,
    subscriptions: Vec<Subscription>,
    key: KeyPrefix,
    loaded_ms: u64,
) -> CachedAccount {
    let parent_data = (account.role == Role::Parent).then(|| {
        Box::new(ParentData {
            link: own_link.unwrap_or_else(|| Arc::new(ParentLink { id: id.clone() })),
            limits: account.limits,
            team: account.team,
            subscriptions: subscriptions.into(),
        })
    });
    CachedAccount {
        account: AccountState {
            id,
            role: account.role,
            status: account.status,
            parent,
            loaded: stamp(loaded_ms),
        },
        key,
        parent_data,
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
    pub fn parent(&self) -> Option<&AccountState> {
        (self.account.role == Role::Child).then_some(&self.tenant.account)
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

/// An entry in the key index: hashed and compared by its key prefix, so the index is a set of
/// pointers rather than a map from a copy of the key.
#[derive(Debug, Clone)]
struct ByKey(Arc<CachedAccount>);

impl Hash for ByKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}

impl PartialEq for ByKey {
    fn eq(&self, other: &ByKey) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for ByKey {}

impl Borrow<KeyPrefix> for ByKey {
    fn borrow(&self) -> &KeyPrefix {
        &self.0.key
    }
}

/// An entry in the id index, hashed and compared by its id.
#[derive(Debug, Clone)]
struct ById(Arc<CachedAccount>);

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (*self.0.account.id).hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &ById) -> bool {
        self.0.account.id == other.0.account.id
    }
}

impl Eq for ById {}

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.account.id
    }
}

/// Puts `k` in the set, replacing an equal element (a plain insert would keep the old one), and
/// returns the one it replaced. One shard lock: readers see the old entry or the new one.
fn replace<K: Hash + Eq>(set: &DashMap<K, (), Seeded>, k: K) -> Option<K> {
    match set.entry(k) {
        Entry::Occupied(o) => Some(o.replace_entry(()).0),
        Entry::Vacant(v) => {
            v.insert(());
            None
        }
    }
}

type Flight = Arc<OnceCell<Result<Option<Principal>, StoreError>>>;

/// foldhash with a per-process random seed: several times cheaper than SipHash for these short
/// keys, and bucket placement stays unpredictable to a client choosing keys (a key's prefix is a
/// SHA-256 output it can grind, but not aim without the seed).
type Seeded = foldhash::quality::RandomState;

/// See the module docs.
pub struct KeyCache {
    store: Arc<dyn Store>,
    config: CacheConfig,
    /// Known keys, by prefix. An element can trail a replacement of its account's entry for a
    /// moment: `accounts` says which entry is current, and a key counts only if that entry is
    /// keyed by it.
    keys: DashMap<ByKey, (), Seeded>,
    /// Unknown keys: until when (millis since `epoch`) they are known not to exist.
    negative: DashMap<KeyPrefix, u64, Seeded>,
    /// The current entry of every cached account, by id.
    accounts: DashMap<ById, (), Seeded>,
    inflight: Mutex<HashMap<KeyHash, Flight>>,
    epoch: Instant,
    /// Millis since `epoch` when the feed follower last confirmed it had applied every change.
    feed_synced_ms: AtomicU64,
    store_up: AtomicBool,
    /// The store-down breaker: set (millis since `epoch` until which no load is tried) when a load
    /// found the store unavailable, cleared by the next load that reaches it. While it is set,
    /// requests do not each wait for the store to time out: a stale cached key is judged as last
    /// known (`serve_stale_when_down`) and a miss is refused at once, and one load at a time
    /// (`probing`), no more than one a second, finds out whether the store is back.
    down_until_ms: AtomicU64,
    probing: AtomicBool,
    /// Told the seconds between a change's write and its application here (revocation lag).
    lag_observer: std::sync::OnceLock<Box<dyn Fn(f64) + Send + Sync>>,
    /// Told the parent id of every subscription change applied here (the meter's credit slices
    /// follow it).
    subscriptions_observer: std::sync::OnceLock<TenantObserver>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub negative_hits: AtomicU64,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("keys", &self.keys.len())
            .field("negative", &self.negative.len())
            .field("accounts", &self.accounts.len())
            .finish()
    }
}

/// Told a parent's id (see `KeyCache::set_subscriptions_observer`).
type TenantObserver = Box<dyn Fn(&str) + Send + Sync>;

/// Clears the breaker's `probing` flag when the probe ends, however it ends (a dropped request
/// included).
struct ProbeGuard<'a>(&'a AtomicBool);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// How long the request that probes a down store waits for it (see `KeyCache::resolve`).
const PROBE_WAIT: Duration = Duration::from_millis(500);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl KeyCache {
    pub fn new(store: Arc<dyn Store>, config: CacheConfig) -> KeyCache {
        KeyCache {
            store,
            config,
            keys: DashMap::default(),
            negative: DashMap::default(),
            accounts: DashMap::default(),
            inflight: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            feed_synced_ms: AtomicU64::new(0),
            store_up: AtomicBool::new(true),
            down_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            lag_observer: std::sync::OnceLock::new(),
            subscriptions_observer: std::sync::OnceLock::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            negative_hits: AtomicU64::new(0),
        }
    }

    /// Installs the revocation-lag observer (once; later calls are ignored).
    pub fn set_lag_observer(&self, observe: impl Fn(f64) + Send + Sync + 'static) {
        let _ = self.lag_observer.set(Box::new(observe));
    }

    /// Installs the subscription-change observer (once; later calls are ignored): called with the
    /// parent's id for every `Change::Subscriptions` applied, from the feed or from this node's own
    /// write, whether or not the parent is cached.
    pub fn set_subscriptions_observer(&self, observe: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.subscriptions_observer.set(Box::new(observe));
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Number of cached keys (positive and negative).
    pub fn len(&self) -> usize {
        self.keys.len() + self.negative.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.negative.is_empty()
    }

    pub fn store_up(&self) -> bool {
        self.store_up.load(Ordering::Relaxed)
    }

    pub fn set_store_up(&self, up: bool) {
        self.store_up.store(up, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// Called by the feed follower after each successful read: every change up to now is applied.
    pub fn mark_feed_synced(&self) {
        self.feed_synced_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn is_fresh(&self, entry: &CachedAccount, now_ms: u64) -> bool {
        let confirmed = entry
            .loaded_ms()
            .max(self.feed_synced_ms.load(Ordering::Relaxed));
        now_ms.saturating_sub(confirmed) <= millis(self.config.max_staleness)
    }

    /// The current entry of an account.
    fn current(&self, id: &str) -> Option<Arc<CachedAccount>> {
        self.accounts.get(id).map(|e| e.key().0.clone())
    }

    /// The current entry of the account the key index holds `key` for: `None` if it holds none.
    /// One look-up: [`install`](Self::install) and [`forget`](Self::forget) change the key index
    /// before the id index, so the key index never trails the account's current entry.
    fn current_under(&self, key: &KeyPrefix) -> Option<Arc<CachedAccount>> {
        self.keys.get(key).map(|e| e.key().0.clone())
    }

    /// The hot path: no await, no store access.
    pub fn lookup(&self, key: &KeyHash) -> CacheLookup {
        self.lookup_at(key, Instant::now())
    }

    /// [`lookup`](Self::lookup) as of `now`, a time the caller read already (the request's start).
    pub fn lookup_at(&self, key: &KeyHash, now: Instant) -> CacheLookup {
        let now = millis(now.saturating_duration_since(self.epoch));
        let key = prefix(key);
        let Some(account) = self.current_under(&key) else {
            let until = self.negative.get(&key).map(|u| *u);
            if until.is_some_and(|until| until > now) {
                self.negative_hits.fetch_add(1, Ordering::Relaxed);
                return CacheLookup::Unknown;
            }
            self.misses.fetch_add(1, Ordering::Relaxed);
            return CacheLookup::Miss;
        };
        match self.principal_of(account, now) {
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

    /// The account's entry and its tenant's, both fresh, or `None`.
    fn principal_of(&self, account: Arc<CachedAccount>, now_ms: u64) -> Option<Principal> {
        if !self.is_fresh(&account, now_ms) {
            return None;
        }
        let tenant = match &account.parent {
            None => account.clone(),
            Some(link) => {
                let t = self.current(&link.id)?;
                if !self.is_fresh(&t, now_ms) {
                    return None;
                }
                t
            }
        };
        Some(Principal { account, tenant })
    }

    /// Whatever is cached for the key, fresh or not (the store-down fallback).
    fn stale_principal(&self, key: &KeyHash) -> Option<Principal> {
        let account = self.current_under(&prefix(key))?;
        let tenant = match &account.parent {
            None => account.clone(),
            Some(link) => self.current(&link.id)?,
        };
        Some(Principal { account, tenant })
    }

    /// Makes `entry` its account's current one. `by_key`: it was just loaded by its key, which is
    /// indexed; otherwise (a refresh) its key is the one of the entry it replaces, and stays indexed
    /// only if it still is: a key removed meanwhile must not come back with a refresh.
    fn install(&self, entry: &Arc<CachedAccount>, by_key: bool) {
        // The key index first: a look-up by key reads that index alone, so from here on it finds
        // this entry (the id index follows; a child's look-up of this as its parent finds the old
        // entry until then, as if it had come a moment earlier).
        if entry.key != NO_KEY {
            if by_key {
                replace(&self.keys, ByKey(entry.clone()));
                self.negative.remove(&entry.key);
            } else if let Entry::Occupied(o) = self.keys.entry(ByKey(entry.clone())) {
                if o.key().0.id == entry.id {
                    o.replace_entry(());
                }
            }
        }
        let old = replace(&self.accounts, ById(entry.clone()));
        if let Some(ById(old)) = old {
            // Loaded by another key: the old one no longer names the account.
            if old.key != NO_KEY && old.key != entry.key {
                self.keys.remove_if(&old.key, |k, _| k.0.id == old.id);
            }
        }
    }

    /// Drops an account's entry (and its key's index element, first: see `install`).
    fn forget(&self, id: &str) {
        let key = self.accounts.get(id).map(|e| e.key().0.key);
        if let Some(key) = key.filter(|k| *k != NO_KEY) {
            self.keys.remove_if(&key, |k, _| &*k.0.id == id);
        }
        if let Some((ById(old), ())) = self.accounts.remove(id) {
            // Loaded by another key meanwhile: that one goes too.
            if old.key != NO_KEY && Some(old.key) != key {
                self.keys.remove_if(&old.key, |k, _| k.0.id == old.id);
            }
        }
    }

    /// The link to point a child of `parent_id` at: its cached parent's, else a new one.
    fn link_to(&self, parent_id: &str, tenant: Option<&CachedAccount>) -> Arc<ParentLink> {
        let shared = match tenant {
            Some(t) if *t.id == *parent_id => t.own_link().cloned(),
            _ => self.current(parent_id).and_then(|t| t.own_link().cloned()),
        };
        shared.unwrap_or_else(|| {
            Arc::new(ParentLink {
                id: Arc::from(parent_id),
            })
        })
    }

    /// The slow path after a [`CacheLookup::Miss`]: loads the key from the store once, however many
    /// callers wait for it. `Ok(None)` for an unknown key (now cached negatively).
    pub async fn resolve(&self, key: &KeyHash) -> Result<Option<Principal>, StoreError> {
        // The breaker is open: answer without waiting on the store, unless this call is the one
        // probe that may try it (then `probe` clears `probing` when it is done).
        let probe = match self.down_until_ms.load(Ordering::Relaxed) {
            0 => None,
            until if self.now_ms() < until || self.probing.swap(true, Ordering::AcqRel) => {
                return self.while_down(key);
            }
            _ => Some(ProbeGuard(&self.probing)),
        };
        let result = match probe {
            // A probe of a store that hangs (rather than refusing connections) answers within
            // `PROBE_WAIT` instead of its 2 s reply timeout: the request it rides on gets what
            // any request gets while the store is down.
            Some(_) => tokio::time::timeout(PROBE_WAIT, self.resolve_from_store(key))
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(
                        "the store did not answer the probe in time".into(),
                    ))
                }),
            None => self.resolve_from_store(key).await,
        };
        match &result {
            Err(StoreError::Unavailable(_)) => {
                self.down_until_ms.store(
                    self.now_ms().saturating_add(1_000).max(1),
                    Ordering::Relaxed,
                );
            }
            _ => self.down_until_ms.store(0, Ordering::Relaxed),
        }
        drop(probe);
        match result {
            Err(StoreError::Unavailable(msg)) => {
                self.set_store_up(false);
                self.while_down(key)
                    .map_err(|_| StoreError::Unavailable(msg))
            }
            other => other,
        }
    }

    /// What a request gets while the store is down: the key's cached entry, fresh or not, where
    /// `serve_stale_when_down` allows it; else `store_unavailable`.
    fn while_down(&self, key: &KeyHash) -> Result<Option<Principal>, StoreError> {
        if self.config.serve_stale_when_down {
            if let Some(p) = self.stale_principal(key) {
                return Ok(Some(p));
            }
        }
        Err(StoreError::Unavailable("the store is unavailable".into()))
    }

    /// One load of `key` (single flight), as [`Self::resolve`] does while the store is up.
    async fn resolve_from_store(&self, key: &KeyHash) -> Result<Option<Principal>, StoreError> {
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
        result
    }

    async fn load(&self, key: &KeyHash) -> Result<Option<Principal>, StoreError> {
        let k = prefix(key);
        let Some(account) = self.store.account_by_key(key).await? else {
            self.set_store_up(true);
            self.keys.remove(&k);
            let until = self
                .now_ms()
                .saturating_add(millis(self.config.negative_ttl));
            self.negative.insert(k, until);
            return Ok(None);
        };
        self.set_store_up(true);
        // The parent first: the child's entry points at the link in the parent's.
        let tenant = match account.parent_id.as_deref() {
            None => None,
            Some(pid) => match self.refresh_account(pid).await? {
                Some(t) => Some(t),
                // A child whose parent record is gone is judged as under a deleted parent.
                None => return Ok(None),
            },
        };
        let entry = self
            .fetch_entry_from(account, Some(k), tenant.as_deref())
            .await?;
        self.install(&entry, true);
        let tenant = tenant.unwrap_or_else(|| entry.clone());
        Ok(Some(Principal {
            account: entry,
            tenant,
        }))
    }

    /// An entry for a store account (with a parent's subscriptions), under `key`, or under the key
    /// of the entry it replaces if `None`.
    async fn fetch_entry_from(
        &self,
        account: Account,
        key: Option<KeyPrefix>,
        tenant: Option<&CachedAccount>,
    ) -> Result<Arc<CachedAccount>, StoreError> {
        let subscriptions = if account.role == Role::Parent {
            self.store.subscriptions(&account.id).await?
        } else {
            Vec::new()
        };
        // Share what the entry it replaces already holds: the id and a parent's link.
        let previous = self.current(&account.id);
        let key = key.unwrap_or_else(|| previous.as_ref().map_or(NO_KEY, |p| p.key));
        let id = match &previous {
            Some(p) => p.id.clone(),
            None => Arc::from(account.id.as_str()),
        };
        let parent = account
            .parent_id
            .as_deref()
            .map(|pid| self.link_to(pid, tenant));
        let own_link = previous.as_ref().and_then(|p| p.own_link().cloned());
        Ok(Arc::new(build(
            account,
            id,
            parent,
            own_link,
            subscriptions,
            key,
            self.now_ms(),
        )))
    }

    /// Reloads one account (and a parent's subscriptions) and replaces the cached entry.
    async fn refresh_account(&self, id: &str) -> Result<Option<Arc<CachedAccount>>, StoreError> {
        match self.store.account(id).await? {
            None => {
                self.forget(id);
                Ok(None)
            }
            Some(account) => {
                let entry = self.fetch_entry_from(account, None, None).await?;
                self.install(&entry, false);
                Ok(Some(entry))
            }
        }
    }

    /// Applies one change of the feed (or one this node just made, before its API call returns).
    /// Entries this node does not hold are left alone: they will be loaded when first used.
    pub async fn apply(&self, change: &Change) -> Result<(), StoreError> {
        if let (Change::Subscriptions(id), Some(observe)) =
            (change, self.subscriptions_observer.get())
        {
            observe(id);
        }
        match change {
            Change::Account(id) | Change::Subscriptions(id) => {
                if self.accounts.contains_key(id.as_str()) {
                    if let Err(e) = self.refresh_account(id).await {
                        // Better to refuse with `store_unavailable` than to admit on a state we
                        // know has changed.
                        self.forget(id);
                        return Err(e);
                    }
                }
            }
            Change::KeyAdded(hash) => {
                self.negative.remove(&prefix(hash));
            }
            Change::KeyRemoved(hash) => {
                // A removed key never comes back (keys are random, never issued twice), so it is
                // remembered as unknown: refused as `key_unknown` without asking the store, also
                // while the store (or, on Cluster, the master with the key's pointer) is down.
                let k = prefix(hash);
                self.keys.remove(&k);
                let until = self
                    .now_ms()
                    .saturating_add(millis(self.config.negative_ttl));
                self.negative.insert(k, until);
            }
        }
        Ok(())
    }

    /// Puts a loaded account under its key (and its tenant, for a child) without asking the store:
    /// for bulk warm-up and benchmarks. The entries are stamped as loaded now, and a child's is
    /// pointed at its cached parent's link.
    pub fn insert_loaded(
        &self,
        key: KeyHash,
        account: Arc<CachedAccount>,
        tenant: Option<Arc<CachedAccount>>,
    ) {
        if let Some(t) = tenant {
            let t = self.adopt(t, None);
            self.install(&t, false);
        }
        let a = self.adopt(account, Some(prefix(&key)));
        self.install(&a, true);
    }

    /// An entry built by [`CachedAccount::new`], made ready for this cache (see `insert_loaded`).
    fn adopt(&self, entry: Arc<CachedAccount>, key: Option<KeyPrefix>) -> Arc<CachedAccount> {
        let mut e = Arc::unwrap_or_clone(entry);
        let previous = self.current(&e.id);
        e.key = key.unwrap_or_else(|| previous.as_ref().map_or(NO_KEY, |p| p.key));
        e.account.loaded = stamp(self.now_ms());
        let shared = e
            .parent_id()
            .and_then(|pid| self.current(pid))
            .and_then(|t| t.own_link().cloned());
        if shared.is_some() {
            e.account.parent = shared;
        }
        if let (Some(d), Some(link)) = (
            e.parent_data.as_mut(),
            previous.as_ref().and_then(|p| p.own_link()),
        ) {
            d.link = link.clone();
        }
        Arc::new(e)
    }

    /// Forgets everything (after the feed was trimmed past this node's cursor).
    pub fn clear(&self) {
        self.keys.clear();
        self.negative.clear();
        self.accounts.clear();
    }

    /// Drops expired negative entries; run now and then so random-key floods do not grow the map.
    pub fn sweep_negative(&self) {
        let now = self.now_ms();
        self.negative.retain(|_, until| *until > now);
    }

    /// Follows the store's change feed until `shutdown` resolves: applies every change, resumes
    /// from the last cursor after errors, and reloads from scratch if the feed was trimmed past it.
    pub async fn follow_feed(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut cursor: Option<String> = None;
        let mut backoff = Duration::from_millis(50);
        let mut failures: u64 = 0;
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
                    if failures > 0 {
                        tracing::info!(failures, "change feed available again");
                        failures = 0;
                    }
                }
                Err(StoreError::FeedTrimmed) => {
                    tracing::warn!("change feed trimmed past our cursor: reloading the key cache");
                    cursor = None;
                }
                Err(e) => {
                    self.set_store_up(false);
                    failures += 1;
                    // The first failure, then one line a minute (the retries are 2 s apart).
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(error = %e, failures, "change feed unavailable");
                    } else {
                        tracing::debug!(error = %e, failures, "change feed unavailable");
                    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::contract::{fresh_email, fresh_key, make_child, make_parent, sub};
    use crate::EmbeddedStore;
    use tollgate_core::{admit, Access, Decision, DenyReason, Limit, Overage};

    fn cache() -> (KeyCache, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("t.db")).unwrap();
        let cache = KeyCache::new(
            Arc::new(store),
            CacheConfig {
                max_staleness: Duration::from_secs(3600),
                negative_ttl: Duration::from_secs(30),
                serve_stale_when_down: false,
            },
        );
        (cache, dir)
    }

    fn hit(cache: &KeyCache, key: &KeyHash) -> Principal {
        match cache.lookup(key) {
            CacheLookup::Hit(p) => p,
            other => panic!("expected a hit, got {other:?}"),
        }
    }

    async fn resolved(cache: &KeyCache, key: &KeyHash) -> Principal {
        assert!(matches!(cache.lookup(key), CacheLookup::Miss));
        cache.resolve(key).await.unwrap().unwrap()
    }

    const PRODUCT: Access<'static> = Access {
        pool: Some("whois"),
        permission: None,
    };

    fn decide(p: &Principal) -> Decision {
        admit(
            &p.account.account,
            p.parent(),
            |pool| p.tenant.subscribed(pool),
            PRODUCT,
        )
    }

    /// What keeps a million keys in memory: an entry must stay one 72-byte allocation.
    #[test]
    fn entries_stay_small() {
        assert!(std::mem::size_of::<AccountState>() <= 32);
        assert!(std::mem::size_of::<CachedAccount>() <= 56);
        assert_eq!(std::mem::size_of::<ByKey>(), 8);
        assert_eq!(std::mem::size_of::<ById>(), 8);
    }

    #[test]
    fn stamps_round_trip_and_saturate() {
        for ms in [0, 1, 1_234_567_890_123, (1 << 48) - 1] {
            assert_eq!(unstamp(stamp(ms)), ms);
        }
        assert_eq!(unstamp(stamp(u64::MAX)), (1 << 48) - 1);
    }

    #[test]
    fn keys_are_indexed_by_the_first_128_bits_of_their_hash() {
        let k = KeyHash::of("at_abcdefghijklmnopqrstuvwxyz012");
        assert_eq!(prefix(&k)[..], k.0[..16]);
    }

    #[tokio::test]
    async fn children_share_their_parents_link_and_data() {
        let (cache, _dir) = cache();
        let store = cache.store().clone();
        let (parent, pkey) = make_parent(&*store, &fresh_email()).await;
        store
            .put_subscription(&parent.id, sub("whois", 100, Overage::Deny))
            .await
            .unwrap();
        let (c1, k1) = make_child(&*store, &parent.id).await;
        let (_c2, k2) = make_child(&*store, &parent.id).await;

        let p1 = resolved(&cache, &k1).await;
        let p2 = resolved(&cache, &k2).await;
        assert_eq!(&*p1.account.id, c1.id);
        assert_eq!(p1.account.tenant_id(), parent.id);
        assert_eq!(&*p1.tenant.id, parent.id);
        let (l1, l2) = (p1.account.parent.clone(), p2.account.parent.clone());
        assert!(Arc::ptr_eq(&l1.unwrap(), &l2.unwrap()));
        // The link's id is the parent entry's own id: no copy per child.
        let link = p1.account.parent.as_ref().unwrap();
        assert!(Arc::ptr_eq(&link.id, &p1.tenant.id));
        // Parent-only data lives on the parent.
        assert!(p1.account.subscriptions().is_empty());
        assert!(p1.tenant.subscribed("whois"));
        assert!(p1.tenant.team());
        assert_eq!(decide(&p1), Decision::Admit);

        // The parent's own key finds the same tenant entry (now keyed), and the children keep
        // sharing its link.
        let pp = resolved(&cache, &pkey).await;
        assert!(Arc::ptr_eq(&pp.account, &pp.tenant));
        assert!(Arc::ptr_eq(pp.tenant.own_link().unwrap(), link));
        let p1 = hit(&cache, &k1);
        assert!(Arc::ptr_eq(&p1.tenant, &pp.tenant));
        assert_eq!(cache.len(), 3);
    }

    #[tokio::test]
    async fn one_change_to_a_parent_stops_its_children_and_refreshes_in_place() {
        let (cache, _dir) = cache();
        let store = cache.store().clone();
        let (parent, pkey) = make_parent(&*store, &fresh_email()).await;
        store
            .put_subscription(&parent.id, sub("whois", 100, Overage::Deny))
            .await
            .unwrap();
        let (_c, k) = make_child(&*store, &parent.id).await;
        resolved(&cache, &k).await;
        resolved(&cache, &pkey).await;

        store
            .set_status(&parent.id, Status::Disabled)
            .await
            .unwrap();
        let limits = LimitOverrides {
            parent: None,
            child: Some(Limit { rps: 7, burst: 9 }.into()),
        };
        store
            .update_parent(&parent.id, None, Some(limits))
            .await
            .unwrap();
        cache
            .apply(&Change::Account(parent.id.clone()))
            .await
            .unwrap();
        // Still hits (no store round trip), on the new state.
        let p = hit(&cache, &k);
        assert_eq!(decide(&p), Decision::Deny(DenyReason::ParentDisabled));
        assert_eq!(p.tenant.limits(), limits);
        let pp = hit(&cache, &pkey);
        assert_eq!(decide(&pp), Decision::Deny(DenyReason::KeyDisabled));
        assert!(Arc::ptr_eq(&pp.account, &p.tenant));
    }

    #[tokio::test]
    async fn children_deleted_with_their_parent_are_parent_disabled() {
        let (cache, _dir) = cache();
        let store = cache.store().clone();
        let (parent, pkey) = make_parent(&*store, &fresh_email()).await;
        store
            .put_subscription(&parent.id, sub("whois", 100, Overage::Allow))
            .await
            .unwrap();
        let (_, warm) = make_child(&*store, &parent.id).await;
        let (_, cold) = make_child(&*store, &parent.id).await;
        let (alone, alone_key) = make_child(&*store, &parent.id).await;
        for k in [&warm, &alone_key, &pkey] {
            assert_eq!(decide(&resolved(&cache, k).await), Decision::Admit);
        }
        // Applied as a follower applies them: what the feed says, nothing more.
        let head = store.feed_head().await.unwrap();
        store.set_status(&alone.id, Status::Deleted).await.unwrap();
        store.set_status(&parent.id, Status::Deleted).await.unwrap();
        for ev in store.read_feed(&head, Duration::ZERO).await.unwrap() {
            cache.apply(&ev.change).await.unwrap();
        }
        // Cached before: still a hit, now refused by its parent.
        let p = hit(&cache, &warm);
        assert_eq!(decide(&p), Decision::Deny(DenyReason::ParentDisabled));
        // Loaded after: the same.
        let p = resolved(&cache, &cold).await;
        assert_eq!(decide(&p), Decision::Deny(DenyReason::ParentDisabled));
        // Deleted on its own before, and the parent itself: known unknown from the feed, and
        // unknown to the store.
        for k in [&alone_key, &pkey] {
            assert!(matches!(cache.lookup(k), CacheLookup::Unknown));
            assert!(store.account_by_key(k).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn a_refreshed_child_keeps_hitting_under_its_key() {
        let (cache, _dir) = cache();
        let store = cache.store().clone();
        let (parent, _) = make_parent(&*store, &fresh_email()).await;
        let (child, k) = make_child(&*store, &parent.id).await;
        let before = resolved(&cache, &k).await;
        store.set_status(&child.id, Status::Disabled).await.unwrap();
        cache
            .apply(&Change::Account(child.id.clone()))
            .await
            .unwrap();
        let after = hit(&cache, &k);
        assert!(!Arc::ptr_eq(&before.account, &after.account));
        // The id allocation is carried over.
        assert!(Arc::ptr_eq(&before.account.id, &after.account.id));
        assert_eq!(decide(&after), Decision::Deny(DenyReason::KeyDisabled));
        // The index holds the new entry: the old one is freed.
        assert_eq!(Arc::strong_count(&before.account), 1);
    }

    #[tokio::test]
    async fn a_key_the_account_was_since_loaded_under_another_no_longer_hits() {
        let (cache, _dir) = cache();
        let store = cache.store().clone();
        let (parent, _) = make_parent(&*store, &fresh_email()).await;
        let (child, old) = make_child(&*store, &parent.id).await;
        resolved(&cache, &old).await;
        // Rotated elsewhere; this node sees the new key before the feed's `KeyRemoved(old)`.
        let new = fresh_key();
        store.rotate_key(&child.id, &old, new).await.unwrap();
        resolved(&cache, &new).await;
        assert!(matches!(cache.lookup(&old), CacheLookup::Miss));
        assert!(cache.resolve(&old).await.unwrap().is_none());
        assert!(matches!(cache.lookup(&old), CacheLookup::Unknown));
        hit(&cache, &new);
    }

    #[tokio::test]
    async fn unknown_keys_are_cached_negatively_until_added() {
        let (cache, _dir) = cache();
        let k = fresh_key();
        assert!(cache.resolve(&k).await.unwrap().is_none());
        assert!(matches!(cache.lookup(&k), CacheLookup::Unknown));
        assert_eq!(cache.len(), 1);
        cache.apply(&Change::KeyAdded(k)).await.unwrap();
        assert!(matches!(cache.lookup(&k), CacheLookup::Miss));
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn a_removed_key_is_unknown_and_a_deleted_account_is_forgotten() {
        let (cache, _dir) = cache();
        let store = cache.store().clone();
        let (parent, pkey) = make_parent(&*store, &fresh_email()).await;
        let (child, k) = make_child(&*store, &parent.id).await;
        resolved(&cache, &k).await;
        resolved(&cache, &pkey).await;
        cache.apply(&Change::KeyRemoved(pkey)).await.unwrap();
        assert!(matches!(cache.lookup(&pkey), CacheLookup::Unknown));
        // A refresh of its account (as after a rotation) does not bring the removed key back.
        cache
            .apply(&Change::Account(parent.id.clone()))
            .await
            .unwrap();
        assert!(matches!(cache.lookup(&pkey), CacheLookup::Unknown));
        // The parent's entry stays: its children are judged against it.
        hit(&cache, &k);
        store.set_status(&child.id, Status::Deleted).await.unwrap();
        cache
            .apply(&Change::Account(child.id.clone()))
            .await
            .unwrap();
        let p = hit(&cache, &k);
        assert_eq!(decide(&p), Decision::Deny(DenyReason::KeyUnknown));
    }

    #[test]
    fn insert_loaded_points_children_at_the_cached_parents_link() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KeyCache::new(
            Arc::new(EmbeddedStore::open(&dir.path().join("t.db")).unwrap()),
            CacheConfig {
                max_staleness: Duration::from_secs(3600),
                negative_ttl: Duration::from_secs(30),
                serve_stale_when_down: true,
            },
        );
        let account = |id: &str, parent: Option<&str>| Account {
            id: id.into(),
            role: if parent.is_some() {
                Role::Child
            } else {
                Role::Parent
            },
            status: Status::Active,
            email: format!("{id}@x.example"),
            parent_id: parent.map(str::to_owned),
            team: false,
            limits: LimitOverrides::default(),
            created_at: 0,
        };
        let (pk, k1, k2) = (fresh_key(), fresh_key(), fresh_key());
        let parent = Arc::new(CachedAccount::new(
            account("acc_p", None),
            vec![sub("whois", 1, Overage::Allow)],
        ));
        cache.insert_loaded(pk, parent, None);
        for (k, id) in [(k1, "acc_1"), (k2, "acc_2")] {
            let child = CachedAccount::new(account(id, Some("acc_p")), vec![]);
            cache.insert_loaded(k, Arc::new(child), None);
        }
        let (p1, p2, pp) = (hit(&cache, &k1), hit(&cache, &k2), hit(&cache, &pk));
        let link = pp.account.own_link().unwrap();
        assert!(Arc::ptr_eq(p1.account.parent.as_ref().unwrap(), link));
        assert!(Arc::ptr_eq(p2.account.parent.as_ref().unwrap(), link));
        assert!(Arc::ptr_eq(&p1.tenant, &pp.account));
        assert!(p2.tenant.subscribed("whois"));
        assert_eq!(decide(&p2), Decision::Admit);
    }
}
