//! `EmbeddedStore`: the key tree, usage and change feed in one redb file, for a single node.
//!
//! Every write is one redb write transaction with `Durability::Immediate` (redb's default), so a
//! write that returned `Ok` survives a killed process. redb is a blocking library: every operation
//! runs on tokio's blocking pool, never on a runtime worker. The change feed is in memory (see
//! `embedded/feed.rs`); a write's changes are appended right after its commit, inside the same blocking
//! task, so a caller that gives up waiting cannot leave a committed write out of the feed.
//!
//! Tables (keys on the left, all strings UTF-8, key hashes as their 32 raw bytes; the usage
//! tables' strings are `tables::Text`, ordered by bytes without a UTF-8 check per comparison, and
//! a file with the first `&str`-keyed `usage` and `pool_usage` is moved over when opened):
//!
//! | table | key | value |
//! |---|---|---|
//! | `accounts` | account id | the [`Account`] as JSON |
//! | `keys` | key hash | account id (no entry for invited or deleted accounts) |
//! | `account_keys` | account id | its current key hash |
//! | `emails` | [`normalize_email`](tollgate_core::normalize_email)ed email | account id, live accounts only: deleting frees it |
//! | `invitations` | token hash | (child id, expires_at unix seconds); removed on accept |
//! | `child_invitations` | child id | (token hash, expires_at): the child's one current invitation |
//! | `children` | (parent id, creation sequence) | child id, so a range scan is creation order |
//! | `subscriptions` | (parent id, pool) | the [`Subscription`] as JSON, so a scan is sorted by pool |
//! | `usage_v2` | (account id, day, product, pool) | (requests, credits) |
//! | `pool_usage_v2` | (parent id, pool) | credits, the tenant's roll-up of all its members |
//! | `batches` | usage batch id (`writer-seq`) | unix seconds it was recorded |
//! | `batches_by_time` | (unix seconds, batch id) | (), to prune ids past the retention in order |
//! | `leases` | (parent id, pool) | credits reserved by [`Store::lease_credits`] and not released |
//! | `meta` | name | counter (`child_seq`: the next creation sequence) |
//!
//! Seen batch ids are kept for [`EmbeddedOptions::batch_retention`] (2 days): far longer than any
//! flusher retries a batch, and pruned by the same transactions that add new ones.
//!
//! Credit leases persist: a process killed without releasing its slices strands at most those
//! slices (a graceful shutdown releases them), never more than it was granted.

mod feed;
mod invitations;
mod tables;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
use tollgate_core::{
    Account, Day, KeyHash, LimitOverrides, Role, Status, Subscription, Totals, UsageRow,
};

use crate::{
    Change, FeedEvent, LeaseOp, NewInvitation, NewParent, Store, StoreError, StoreResult,
    UsageBatch, UsageDelta,
};
use feed::Feed;
use tables::{
    add_pool_usage, add_usage, get_account, get_subscriptions, put_account, put_subscription, Ctx,
    Tree, ACCOUNTS, BATCHES, BATCHES_BY_TIME, CHILDREN, KEYS, LEASES, POOL_USAGE, SUBSCRIPTIONS,
    USAGE,
};

/// Gives the core back to whatever else is runnable there (on a shared, saturated core: the data
/// plane) after every `SLICE` of work, so that a large usage write never holds the core for more
/// than that at a time. Where nothing else waits, `yield_now` returns at once.
struct Pacer {
    since: Instant,
}

impl Pacer {
    const SLICE: Duration = Duration::from_micros(50);

    fn new() -> Pacer {
        Pacer {
            since: Instant::now(),
        }
    }

    fn tick(&mut self) {
        if self.since.elapsed() >= Self::SLICE {
            std::thread::yield_now();
            self.since = Instant::now();
        }
    }
}

/// Unix seconds; injectable so tests can age batch ids.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Tuning of an [`EmbeddedStore`]; [`Default`] is what production uses.
#[derive(Clone)]
pub struct EmbeddedOptions {
    /// How many change-feed events are kept in memory (10,000).
    pub feed_capacity: usize,
    /// How long a usage batch id is remembered, so a retry within it is not counted twice (2 days).
    pub batch_retention: Duration,
    /// The time batch ids are stamped with (the system clock).
    pub clock: Clock,
    /// Bulk loading (the load-test seeder): commit without fsync; nothing written is durable
    /// until [`EmbeddedStore::make_durable`] returns. Never for serving (false).
    pub bulk_load: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> EmbeddedOptions {
        EmbeddedOptions {
            feed_capacity: 10_000,
            batch_retention: Duration::from_secs(2 * 86_400),
            clock: Arc::new(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            }),
            bulk_load: false,
        }
    }
}

impl std::fmt::Debug for EmbeddedOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedOptions")
            .field("feed_capacity", &self.feed_capacity)
            .field("batch_retention", &self.batch_retention)
            .field("bulk_load", &self.bulk_load)
            .finish_non_exhaustive()
    }
}

/// See the module docs. Cheap to clone: clones share one database and one feed.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// `None` only while it is being opened again (see [`Inner::heal`]). Every call holds a read
    /// guard for as long as it runs, so reopening (a write guard) waits for calls in flight.
    db: parking_lot::RwLock<Option<Database>>,
    /// Set when a call failed on an I/O error (a full disk, say): redb then refuses every write
    /// until the database is opened again, which the next call tries first, at most once a
    /// second; until then calls fail with `Unavailable` (503, `/readyz` 503).
    broken: std::sync::atomic::AtomicBool,
    reopened_at: parking_lot::Mutex<Option<Instant>>,
    feed: Feed,
    path: PathBuf,
    options: EmbeddedOptions,
}

impl EmbeddedStore {
    /// Opens (or creates) the database file, creating its parent directories.
    pub fn open(path: &Path) -> StoreResult<EmbeddedStore> {
        EmbeddedStore::open_with(path, EmbeddedOptions::default())
    }

    /// [`EmbeddedStore::open`] with non-default tuning (tests: a small feed, a fake clock).
    pub fn open_with(path: &Path, options: EmbeddedOptions) -> StoreResult<EmbeddedStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).ctx(format_args!("create {}", dir.display()))?;
        }
        let db = Database::create(path).ctx(format_args!("open {}", path.display()))?;
        tables::create_all(&db)?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db: parking_lot::RwLock::new(Some(db)),
                broken: std::sync::atomic::AtomicBool::new(false),
                reopened_at: parking_lot::Mutex::new(None),
                feed: Feed::new(options.feed_capacity),
                path: path.to_path_buf(),
                options,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// One durable commit, which makes every earlier [`EmbeddedOptions::bulk_load`] write durable.
    pub async fn make_durable(&self) -> StoreResult<()> {
        self.blocking(|inner| {
            let mut txn = inner.begin_write("begin durable commit")?;
            txn.set_durability(redb::Durability::Immediate)
                .ctx("set durability")?;
            txn.commit().ctx("durable commit")
        })
        .await
    }

    async fn blocking<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            inner.heal()?;
            let result = {
                let _open = inner.db.read();
                f(&inner)
            };
            if let Err(StoreError::Unavailable(e)) = &result {
                if !inner.broken.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    tracing::warn!(error = %e, "embedded store: an I/O error; it is opened again before the next call");
                }
            }
            result
        })
        .await
        .map_err(|e| StoreError::Internal(format!("embedded store: task failed: {e}")))?
    }
}

impl Inner {
    fn now(&self) -> u64 {
        (self.options.clock)()
    }

    /// After an I/O error: closes and opens the database again (at most once a second), and
    /// proves it writable with a small write, so that a disk with room again is used again
    /// without a restart.
    fn heal(&self) -> StoreResult<()> {
        use std::sync::atomic::Ordering;
        if !self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        {
            let mut at = self.reopened_at.lock();
            if at.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Err(StoreError::Unavailable(
                    "embedded store: the last write failed on an I/O error (is the disk full?)"
                        .into(),
                ));
            }
            *at = Some(Instant::now());
        }
        let mut db = self.db.write();
        // Closed first: the file is locked while it is open.
        *db = None;
        let reopened = Database::create(&self.path)
            .ctx(format_args!("open {} again", self.path.display()))
            .and_then(|new| {
                tables::create_all(&new)?;
                let txn = new.begin_write().ctx("begin probe write")?;
                {
                    let mut t = txn.open_table(tables::HEALTH).ctx("open health")?;
                    t.insert("probe", self.now()).ctx("write probe")?;
                }
                txn.commit().ctx("commit probe write")?;
                Ok(new)
            });
        match reopened {
            Ok(new) => {
                *db = Some(new);
                self.broken.store(false, Ordering::Release);
                tracing::info!("embedded store: opened again after an I/O error; writes work");
                Ok(())
            }
            Err(e) => {
                // Whatever it was, it is the disk's (or the file's) to mend: 503 until then.
                *db = Database::create(&self.path).ok();
                Err(match e {
                    StoreError::Unavailable(m) | StoreError::Internal(m) => {
                        StoreError::Unavailable(m)
                    }
                    other => other,
                })
            }
        }
    }

    fn database(&self) -> StoreResult<parking_lot::RwLockReadGuard<'_, Option<Database>>> {
        let db = self.db.read_recursive();
        if db.is_none() {
            return Err(StoreError::Unavailable(
                "embedded store: the database is being opened again".into(),
            ));
        }
        Ok(db)
    }

    fn begin_write(&self, what: &str) -> StoreResult<redb::WriteTransaction> {
        let db = self.database()?;
        let mut txn = db
            .as_ref()
            .map(Database::begin_write)
            .ok_or_else(|| {
                StoreError::Unavailable("embedded store: the database is closed".into())
            })?
            .ctx(what)?;
        if self.options.bulk_load {
            txn.set_durability(redb::Durability::None)
                .ctx("set durability")?;
        }
        Ok(txn)
    }

    fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> StoreResult<T>) -> StoreResult<T> {
        let db = self.database()?;
        let txn = db
            .as_ref()
            .map(Database::begin_read)
            .ok_or_else(|| {
                StoreError::Unavailable("embedded store: the database is closed".into())
            })?
            .ctx("begin read")?;
        f(&txn)
    }

    /// One write transaction: `f` returns its result and the changes to append once committed.
    /// An `Err` from `f` drops the transaction, which aborts it.
    fn write_tree<T>(
        &self,
        f: impl FnOnce(&mut Tree<'_>) -> StoreResult<(T, Vec<Change>)>,
    ) -> StoreResult<T> {
        let txn = self.begin_write("begin write")?;
        let (out, changes) = {
            let mut tree = Tree::open(&txn)?;
            f(&mut tree)?
        };
        txn.commit().ctx("commit")?;
        self.feed.append(changes);
        Ok(out)
    }

    fn account(&self, id: &str) -> StoreResult<Option<Account>> {
        self.read(|txn| get_account(&txn.open_table(ACCOUNTS).ctx("open accounts")?, id))
    }

    fn account_by_key(&self, key: &KeyHash) -> StoreResult<Option<Account>> {
        self.read(|txn| {
            let keys = txn.open_table(KEYS).ctx("open keys")?;
            let Some(id) = keys.get(&key.0).ctx("read key")? else {
                return Ok(None);
            };
            get_account(&txn.open_table(ACCOUNTS).ctx("open accounts")?, id.value())
        })
    }

    fn children(&self, parent_id: &str) -> StoreResult<Vec<Account>> {
        self.read(|txn| {
            let children = txn.open_table(CHILDREN).ctx("open children")?;
            let accounts = txn.open_table(ACCOUNTS).ctx("open accounts")?;
            let mut out = Vec::new();
            for item in children.range((parent_id, 0u64)..).ctx("scan children")? {
                let (k, v) = item.ctx("scan children")?;
                if k.value().0 != parent_id {
                    break;
                }
                let id = v.value();
                let child = get_account(&accounts, id)?.ok_or_else(|| {
                    StoreError::Internal(format!("embedded store: child `{id}` has no record"))
                })?;
                out.push(child);
            }
            Ok(out)
        })
    }

    fn subscriptions(&self, parent_id: &str) -> StoreResult<Vec<Subscription>> {
        self.read(|txn| {
            let t = txn.open_table(SUBSCRIPTIONS).ctx("open subscriptions")?;
            get_subscriptions(&t, parent_id)
        })
    }

    fn create_parent(&self, new: NewParent) -> StoreResult<Account> {
        let NewParent {
            account,
            key_hash,
            subscriptions,
        } = new;
        if account.role != Role::Parent
            || account.status != Status::Active
            || account.parent_id.is_some()
        {
            return Err(StoreError::Conflict(
                "a new parent must be an active parent account without a parent".into(),
            ));
        }
        self.write_tree(|t| {
            let (email, mut changes) = t.claim_email(&account.email, account.created_at)?;
            t.check_new_account(&account.id)?;
            t.check_key_free(&key_hash)?;
            put_account(&mut t.accounts, &account)?;
            t.emails
                .insert(email.as_str(), account.id.as_str())
                .ctx("write email index")?;
            t.set_key(&account.id, &key_hash)?;
            for sub in &subscriptions {
                put_subscription(&mut t.subscriptions, &account.id, sub)?;
            }
            changes.push(Change::Account(account.id.clone()));
            changes.push(Change::KeyAdded(key_hash));
            Ok((account, changes))
        })
    }

    fn update_parent(
        &self,
        id: &str,
        team: Option<bool>,
        limits: Option<LimitOverrides>,
    ) -> StoreResult<Account> {
        self.write_tree(|t| {
            let mut account = t.live_parent(id)?;
            if let Some(team) = team {
                account.team = team;
            }
            if let Some(limits) = limits {
                account.limits = limits;
            }
            put_account(&mut t.accounts, &account)?;
            Ok((account, vec![Change::Account(id.to_owned())]))
        })
    }

    fn put_subscription(&self, parent_id: &str, sub: &Subscription) -> StoreResult<()> {
        self.write_tree(|t| {
            t.live_parent(parent_id)?;
            put_subscription(&mut t.subscriptions, parent_id, sub)?;
            Ok(((), vec![Change::Subscriptions(parent_id.to_owned())]))
        })
    }

    fn set_status(&self, id: &str, status: Status) -> StoreResult<Account> {
        self.write_tree(|t| {
            let mut account =
                get_account(&t.accounts, id)?.ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
            if account.status == status {
                return Ok((account, Vec::new()));
            }
            match (account.status, status) {
                (Status::Deleted, _) => return Err(StoreError::deleted(id)),
                (_, Status::Invited) => {
                    return Err(StoreError::Conflict(
                        "an account cannot go back to invited".into(),
                    ))
                }
                (Status::Invited, Status::Active | Status::Disabled) => {
                    return Err(StoreError::Conflict(format!(
                        "account `{id}` has not accepted its invitation yet"
                    )))
                }
                _ => {}
            }
            if status != Status::Deleted {
                account.status = status;
                put_account(&mut t.accounts, &account)?;
                return Ok((account, vec![Change::Account(id.to_owned())]));
            }
            let mut changes = t.delete(&mut account)?;
            // A parent's children go with it, in the same transaction. Their keys stay mapped to
            // them (deleted, under a deleted parent), so they are refused as `parent_disabled`.
            if account.role == Role::Parent {
                for child_id in t.child_ids(id)? {
                    let mut child = get_account(&t.accounts, &child_id)?.ok_or_else(|| {
                        StoreError::Internal(format!(
                            "embedded store: child `{child_id}` has no record"
                        ))
                    })?;
                    if child.status != Status::Deleted {
                        changes.extend(t.delete_with_parent(&mut child)?);
                    }
                }
            }
            Ok((account, changes))
        })
    }

    fn rotate_key(&self, id: &str, old_key: &KeyHash, new_key: KeyHash) -> StoreResult<()> {
        self.write_tree(|t| {
            let account = t.live(id)?;
            if account.status == Status::Invited {
                return Err(StoreError::NotFound(id.to_owned()));
            }
            // The compare of the compare-and-swap: a concurrent rotation with the same key that
            // committed first moved the account to another key, so this one's key is gone.
            if t.key_of(id)? != Some(*old_key) {
                return Err(StoreError::NotFound(id.to_owned()));
            }
            t.check_key_free(&new_key)?;
            let mut changes = Vec::with_capacity(3);
            if let Some(old) = t.remove_key(id)? {
                changes.push(Change::KeyRemoved(old));
            }
            t.set_key(id, &new_key)?;
            changes.push(Change::KeyAdded(new_key));
            changes.push(Change::Account(id.to_owned()));
            Ok(((), changes))
        })
    }

    fn record_usage(&self, batch: &UsageBatch) -> StoreResult<()> {
        let now = self.now();
        let batch_id = batch.id();
        let txn = self.begin_write("begin usage write")?;
        {
            let mut batches = txn.open_table(BATCHES).ctx("open batches")?;
            if batches
                .get(batch_id.as_str())
                .ctx("read batch id")?
                .is_some()
            {
                // Seen: this is a retry of a batch that was committed. Nothing to write.
                drop(batches);
                txn.abort().ctx("abort usage write")?;
                return Ok(());
            }
            let mut by_time = txn
                .open_table(BATCHES_BY_TIME)
                .ctx("open batches_by_time")?;
            let cutoff = now.saturating_sub(self.options.batch_retention.as_secs());
            let mut expired = Vec::new();
            for item in by_time.range(..(cutoff, "")).ctx("scan batch ids")? {
                let (k, _) = item.ctx("scan batch ids")?;
                let (at, id) = k.value();
                expired.push((at, id.to_owned()));
            }
            for (at, id) in &expired {
                by_time.remove((*at, id.as_str())).ctx("prune batch id")?;
                batches.remove(id.as_str()).ctx("prune batch id")?;
            }
            batches
                .insert(batch_id.as_str(), now)
                .ctx("write batch id")?;
            by_time
                .insert((now, batch_id.as_str()), ())
                .ctx("write batch id")?;

            let mut usage = txn.open_table(USAGE).ctx("open usage")?;
            let mut pools = txn.open_table(POOL_USAGE).ctx("open pool_usage")?;
            // In key order: consecutive updates land on the same pages.
            let mut deltas: Vec<&UsageDelta> = batch.deltas.iter().collect();
            deltas.sort_unstable_by(|a, b| {
                (&a.account_id, a.day.0, &a.product, &a.pool).cmp(&(
                    &b.account_id,
                    b.day.0,
                    &b.product,
                    &b.pool,
                ))
            });
            let mut pace = Pacer::new();
            for d in deltas {
                pace.tick();
                let key = (&*d.account_id, d.day.0, &*d.product, &*d.pool);
                add_usage(&mut usage, key, (d.requests, d.credits))?;
                add_pool_usage(&mut pools, (&d.parent_id, &d.pool), d.credits)?;
            }
        }
        txn.commit().ctx("commit usage")
    }

    fn usage(&self, account_ids: &[String], from: Day, to: Day) -> StoreResult<Vec<UsageRow>> {
        let mut ids: Vec<&str> = account_ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        self.read(|txn| {
            let t = txn.open_table(USAGE).ctx("open usage")?;
            let mut rows = Vec::new();
            for id in ids {
                for item in t.range((id, from.0, "", "")..).ctx("scan usage")? {
                    let (k, v) = item.ctx("scan usage")?;
                    let (account, day, product, pool) = k.value();
                    if account != id || day > to.0 {
                        break;
                    }
                    let (requests, credits) = v.value();
                    rows.push(UsageRow {
                        account_id: account.to_owned(),
                        product: product.to_owned(),
                        pool: pool.to_owned(),
                        day: Day(day),
                        totals: Totals { requests, credits },
                    });
                }
            }
            Ok(rows)
        })
    }

    fn lease_credits(
        &self,
        parent_id: &str,
        pool: &str,
        need: u64,
        want: u64,
    ) -> StoreResult<(u64, u64)> {
        let txn = self.begin_write("begin lease")?;
        let out = {
            let subs = txn.open_table(SUBSCRIPTIONS).ctx("open subscriptions")?;
            let credits = match subs.get((parent_id, pool)).ctx("read subscription")? {
                Some(json) => {
                    serde_json::from_str::<Subscription>(json.value())
                        .ctx("decode subscription")?
                        .credits
                }
                None => return Err(StoreError::NotFound(parent_id.to_owned())),
            };
            let mut leases = txn.open_table(LEASES).ctx("open leases")?;
            let reserved = leases
                .get((parent_id, pool))
                .ctx("read lease")?
                .map_or(0, |g| g.value());
            // The subscription may have shrunk below what is out on lease already.
            let avail = credits.saturating_sub(reserved);
            let granted = if avail < need {
                0
            } else {
                want.min(avail / 16).clamp(need, avail)
            };
            if granted > 0 {
                leases
                    .insert((parent_id, pool), reserved + granted)
                    .ctx("write lease")?;
            }
            (granted, avail - granted)
        };
        txn.commit().ctx("commit lease")?;
        Ok(out)
    }

    fn release_credits(&self, parent_id: &str, pool: &str, amount: u64) -> StoreResult<()> {
        let txn = self.begin_write("begin release")?;
        {
            let mut leases = txn.open_table(LEASES).ctx("open leases")?;
            let reserved = leases
                .get((parent_id, pool))
                .ctx("read lease")?
                .map_or(0, |g| g.value());
            leases
                .insert((parent_id, pool), reserved.saturating_sub(amount))
                .ctx("write lease")?;
        }
        txn.commit().ctx("commit release")
    }

    fn pool_usage(&self, parent_id: &str) -> StoreResult<Vec<(String, u64)>> {
        self.read(|txn| {
            let t = txn.open_table(POOL_USAGE).ctx("open pool_usage")?;
            let mut out = Vec::new();
            for item in t.range((parent_id, "")..).ctx("scan pool usage")? {
                let (k, v) = item.ctx("scan pool usage")?;
                let (parent, pool) = k.value();
                if parent != parent_id {
                    break;
                }
                out.push((pool.to_owned(), v.value()));
            }
            Ok(out)
        })
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.blocking(|s| s.read(|_| Ok(()))).await
    }

    async fn account(&self, id: &str) -> StoreResult<Option<Account>> {
        let id = id.to_owned();
        self.blocking(move |s| s.account(&id)).await
    }

    async fn account_by_key(&self, key: &KeyHash) -> StoreResult<Option<Account>> {
        let key = *key;
        self.blocking(move |s| s.account_by_key(&key)).await
    }

    async fn children(&self, parent_id: &str) -> StoreResult<Vec<Account>> {
        let parent_id = parent_id.to_owned();
        self.blocking(move |s| s.children(&parent_id)).await
    }

    async fn subscriptions(&self, parent_id: &str) -> StoreResult<Vec<Subscription>> {
        let parent_id = parent_id.to_owned();
        self.blocking(move |s| s.subscriptions(&parent_id)).await
    }

    async fn create_parent(&self, new: NewParent) -> StoreResult<Account> {
        self.blocking(move |s| s.create_parent(new)).await
    }

    async fn update_parent(
        &self,
        id: &str,
        team: Option<bool>,
        limits: Option<LimitOverrides>,
    ) -> StoreResult<Account> {
        let id = id.to_owned();
        self.blocking(move |s| s.update_parent(&id, team, limits))
            .await
    }

    async fn put_subscription(&self, parent_id: &str, sub: Subscription) -> StoreResult<()> {
        let parent_id = parent_id.to_owned();
        self.blocking(move |s| s.put_subscription(&parent_id, &sub))
            .await
    }

    async fn invite(&self, new: NewInvitation) -> StoreResult<Account> {
        self.blocking(move |s| s.invite(new)).await
    }

    async fn accept_invitation(
        &self,
        token_hash: &KeyHash,
        key_hash: KeyHash,
        now: u64,
    ) -> StoreResult<Account> {
        let token_hash = *token_hash;
        self.blocking(move |s| s.accept_invitation(&token_hash, key_hash, now))
            .await
    }

    async fn set_status(&self, id: &str, status: Status) -> StoreResult<Account> {
        let id = id.to_owned();
        self.blocking(move |s| s.set_status(&id, status)).await
    }

    async fn rotate_key(&self, id: &str, old_key: &KeyHash, new_key: KeyHash) -> StoreResult<()> {
        let id = id.to_owned();
        let old_key = *old_key;
        self.blocking(move |s| s.rotate_key(&id, &old_key, new_key))
            .await
    }

    async fn record_usage(&self, batch: &UsageBatch) -> StoreResult<()> {
        let batch = batch.clone();
        self.blocking(move |s| s.record_usage(&batch)).await
    }

    async fn usage(
        &self,
        account_ids: &[String],
        from: Day,
        to: Day,
    ) -> StoreResult<Vec<UsageRow>> {
        let account_ids = account_ids.to_vec();
        self.blocking(move |s| s.usage(&account_ids, from, to))
            .await
    }

    async fn pool_usage(&self, parent_id: &str) -> StoreResult<Vec<(String, u64)>> {
        let parent_id = parent_id.to_owned();
        self.blocking(move |s| s.pool_usage(&parent_id)).await
    }

    async fn lease_credits(
        &self,
        parent_id: &str,
        pool: &str,
        need: u64,
        want: u64,
        _op: LeaseOp<'_>,
    ) -> StoreResult<(u64, u64)> {
        let (parent_id, pool) = (parent_id.to_owned(), pool.to_owned());
        self.blocking(move |s| s.lease_credits(&parent_id, &pool, need, want))
            .await
    }

    async fn release_credits(
        &self,
        parent_id: &str,
        pool: &str,
        amount: u64,
        _op: LeaseOp<'_>,
    ) -> StoreResult<()> {
        let (parent_id, pool) = (parent_id.to_owned(), pool.to_owned());
        self.blocking(move |s| s.release_credits(&parent_id, &pool, amount))
            .await
    }

    async fn feed_head(&self) -> StoreResult<String> {
        Ok(self.inner.feed.head())
    }

    async fn read_feed(&self, cursor: &str, wait: Duration) -> StoreResult<Vec<FeedEvent>> {
        self.inner.feed.read(cursor, wait).await
    }
}
