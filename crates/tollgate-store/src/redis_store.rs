//! `RedisStore`: the key tree, usage and change feed in Redis (single server or Cluster), for many nodes.
//!
//! # Data model
//!
//! `P` is the configured prefix (`tg` by default); `T` is `{P:t:<tenant id>}`, the hash tag of one
//! tenant (a parent and its children), so every key of a tenant lives in one slot and a Lua script
//! can update several of them atomically in Redis Cluster too. Keys and invitation tokens appear
//! only as the hex of their SHA-256 hash ([`KeyHash::to_hex`]); no plaintext key or token is ever
//! written, in a key name or a value.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:k:<key hash>` | string | `{"t": tenant, "a": account}`: which account a key belongs to (a pointer, see below) |
//! | `P:a:<account id>` | string | the account's tenant id (its own for a parent); also written for accounts that only have usage |
//! | `P:e:<normalized email>` | string | `{"a": account, "at": claim time ms}`: the account holding the email |
//! | `P:i:<token hash>` | string | `{"c": child, "t": tenant, "x": expires_at}`, with PEXPIREAT a day past the expiry |
//! | `P:uw:<writer>` | string | on a single server, `<seq> <group>`: the last group of a writer's (gateway process's) usage batches applied; expires 2 days after |
//! | `P:feed` | stream | the change feed: entries `c` = a [`Change`](crate::Change) as JSON, `t` = writer time (ms); `MAXLEN ~ 100000` |
//! | `T:a:<account id>` | string | the [`Account`] as JSON (parent and children; deleted ones stay, status `deleted`) |
//! | `T:keyof` | hash | account id -> hash of its current key (no field for invited or deleted accounts, except children deleted with their parent, whose keys are refused as `parent_disabled`) |
//! | `T:children` | list | child ids in creation order |
//! | `T:inv` | hash | invited child id -> `<token hash hex> <expires_at>`: its one current invitation (removed on accept and when it expires into deletion) |
//! | `T:subs` | hash | pool -> [`Subscription`] as JSON |
//! | `T:u:<account id>` | hash | `r␟<day>␟<product>␟<pool>` -> requests, `c␟…` -> credits (␟ = U+001F) |
//! | `T:pool` | hash | pool -> all credits the tenant ever used from it (its members' roll-up) |
//! | `T:lease` | hash | pool -> credits leased to nodes and not given back |
//! | `T:leaseop` | hash | `<pool>␟<node>` -> `<seq> <granted> <left>`: the last lease or release of each node (gateway process) and pool, so one sent again after a time-out is applied once ([`LeaseOp`]); removed at the node's final release |
//! | `T:w` | hash | on Redis Cluster, writer (gateway process) -> `<seq> <unix s>`: its last usage batch applied to this tenant; writers silent for 2 days are dropped |
//!
//! # Crash safety across slots
//!
//! A write that touches a global index and a tenant cannot be one atomic step in Cluster, so the
//! steps are ordered to be safe at every point a writer may die:
//! - **The tenant is the source of truth for keys.** `P:k:` only points at an account; a key
//!   resolves only if `T:keyof` of that account holds the same hash. A new key's pointer is written
//!   before the tenant maps it, and an old key's pointer is removed after the tenant unmapped it, so
//!   a crash anywhere leaves at worst a dangling pointer that resolves to nothing, never a key that
//!   resolves to the wrong account.
//! - **Emails are claimed first** (`SET NX`), then the account is written; a refused write rolls the
//!   claim back. A claim whose writer died before writing the account is recognised (its account
//!   does not exist and the claim is older than five minutes, or its account is deleted) and taken
//!   over by the next writer, so a crash can make an email look taken for at most that long.
//! - **The account index** (`P:a:`) is written before the tenant's records and never changes.
//! - **Invitations** are single-use through the tenant: accepting flips the child from `invited` to
//!   `active` in one script, and a second accept finds it `active`. The token record is removed
//!   afterwards only to tidy up. `T:inv` names each invited child's current token: a re-invitation
//!   (after expiry) replaces it in one script, voiding the old token whatever `P:i:` still holds.
//! - **An expired invitation does not hold its email**: another account taking the email first
//!   deletes the invited child (one script that checks the expiry in `T:inv`), then takes the
//!   claim over as from any deleted holder.
//! - **Deleting a parent** deletes its children in the same script (they share its slot), so no
//!   child outlives its parent whenever the writer dies; the parent's key pointer and the emails
//!   are tidied up after, as for a single deletion. The children keep their keys (`T:keyof` and
//!   pointers), so a child's key resolves to a deleted child of a deleted parent: `parent_disabled`.
//! - **The change feed** is appended after the write it describes (a separate slot). A writer that
//!   dies in between leaves the change out of the feed; followers still converge within the
//!   cache's `max_staleness`.
//! - **A write is done once the tenant's script has run.** The steps after it (removing an old
//!   key's pointer, freeing an email, appending to the feed) touch other slots, which on Cluster may
//!   be on a master that is down while the tenant's is up. One that fails leaves what a writer dying
//!   there leaves, which the points above show is safe, so it is logged (`writes::after_commit`) and the
//!   write still reports done: a client told "unavailable" would retry a rotation or an invitation
//!   acceptance that happened, and never get the key it made.
//!
//! Usage batches are split by tenant, and a retried batch is never counted twice, even if only
//! some of its parts had been applied. On Redis Cluster each tenant's part is applied by one
//! script that first compares the batch's number with the last one of its writer applied to the
//! tenant (`T:w`), and records it. On a single server the tenants' parts go in groups of 64, one
//! script each, in order, and the script compares the batch and group numbers with the writer's
//! marker (`P:uw:`), and records them: a retried batch is the same batch in the same groups, so
//! the groups that landed are skipped. A writer sends its batches in order and the next only once
//! the last was taken, so one number per writer (and tenant, on Cluster) is all the memory this
//! takes (not a marker per batch).
//!
//! Every other write reads the record it changes and applies the change with a script that first
//! checks the record is still exactly as read (compare-and-set on its JSON), retrying if not, so
//! concurrent writers through different nodes never lose each other's changes.
//!
//! # Connections and requirements
//!
//! A single server is reached through a self-reconnecting `ConnectionManager` (`redis://`,
//! `unix://`, or `rediss://` for TLS); a cluster through a `ClusterConnection` built from the seed
//! URLs (`rediss://` seeds for TLS). TLS uses rustls and trusts the system's roots; a private CA is
//! added with `SSL_CERT_FILE`. Sentinel URLs are refused: the redis crate has no connection that
//! follows a Sentinel failover. Feed reads use connections of their own (`conn.rs`), so a parked
//! `XREAD BLOCK` never delays other calls. Every call is bounded in time (1 s to connect, 2 s per
//! reply, 5 s per call) and fails with `Unavailable` when Redis cannot be reached; the same store
//! works again once Redis is back, without being rebuilt.
//!
//! Needs Redis 6.2 or newer (`SET … PXAT`); Redis 7 makes the feed's trimmed-cursor check exact
//! (see `feed.rs`). Credit-lease arithmetic runs in Lua and is exact up to 2^53 credits; usage
//! counts are added by Redis as 64-bit integers.

mod conn;
mod feed;
mod invitations;
mod keys;
mod scripts;
mod tree;
mod usage;
mod writes;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use dashmap::DashSet;
use tollgate_core::{Account, Day, KeyHash, LimitOverrides, Status, Subscription, UsageRow};

use crate::{
    FeedEvent, LeaseOp, NewInvitation, NewParent, Store, StoreError, StoreResult, UsageBatch,
};
use conn::{bounded, Connections};
use keys::Keys;
use scripts::Scripts;

/// See the module docs. Cheap to clone: clones share the connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("cluster", &self.inner.conns.is_cluster())
            .finish_non_exhaustive()
    }
}

struct Inner {
    conns: Connections,
    keys: Keys,
    scripts: Scripts,
    prefix: String,
    /// Accounts whose `P:a:` index this process has written for usage, so a flush does not
    /// rewrite it every time. Cleared when it grows past `usage::INDEXED_CAP`.
    indexed: DashSet<String, foldhash::fast::RandomState>,
}

impl RedisStore {
    /// Connects to one server (`url`) or a Redis Cluster (`cluster`, seed node URLs; `url` must
    /// then be `None`), and checks that it answers. Every key starts with `prefix`.
    pub async fn connect(
        url: Option<&str>,
        cluster: &[String],
        prefix: &str,
    ) -> StoreResult<RedisStore> {
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(StoreError::Internal(
                "redis store: the key prefix must be non-empty and without braces".into(),
            ));
        }
        let conns = Connections::open(url, cluster).await?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conns,
                keys: Keys::new(prefix),
                scripts: Scripts::new(),
                prefix: prefix.to_owned(),
                indexed: DashSet::default(),
            }),
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }
}

impl Inner {
    /// A handle on the shared connection.
    fn conn(&self) -> conn::Conn {
        self.conns.main.clone()
    }
}

/// Wall-clock unix milliseconds (for feed entries, email claims and the age of a writer's last
/// usage batch; never for invitation expiry, which is judged on the caller's `now`).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> StoreResult<()> {
        bounded(Duration::ZERO, self.inner.ping()).await
    }

    async fn account(&self, id: &str) -> StoreResult<Option<Account>> {
        bounded(Duration::ZERO, self.inner.account(id)).await
    }

    async fn account_by_key(&self, key: &KeyHash) -> StoreResult<Option<Account>> {
        bounded(Duration::ZERO, self.inner.account_by_key(key)).await
    }

    async fn children(&self, parent_id: &str) -> StoreResult<Vec<Account>> {
        bounded(Duration::ZERO, self.inner.children(parent_id)).await
    }

    async fn subscriptions(&self, parent_id: &str) -> StoreResult<Vec<Subscription>> {
        bounded(Duration::ZERO, self.inner.subscriptions(parent_id)).await
    }

    async fn create_parent(&self, new: NewParent) -> StoreResult<Account> {
        bounded(Duration::ZERO, self.inner.create_parent(new)).await
    }

    async fn update_parent(
        &self,
        id: &str,
        team: Option<bool>,
        limits: Option<LimitOverrides>,
    ) -> StoreResult<Account> {
        bounded(Duration::ZERO, self.inner.update_parent(id, team, limits)).await
    }

    async fn put_subscription(&self, parent_id: &str, sub: Subscription) -> StoreResult<()> {
        bounded(Duration::ZERO, self.inner.put_subscription(parent_id, &sub)).await
    }

    async fn invite(&self, new: NewInvitation) -> StoreResult<Account> {
        bounded(Duration::ZERO, self.inner.invite(new)).await
    }

    async fn accept_invitation(
        &self,
        token_hash: &KeyHash,
        key_hash: KeyHash,
        now: u64,
    ) -> StoreResult<Account> {
        bounded(
            Duration::ZERO,
            self.inner.accept_invitation(token_hash, key_hash, now),
        )
        .await
    }

    async fn set_status(&self, id: &str, status: Status) -> StoreResult<Account> {
        bounded(Duration::ZERO, self.inner.set_status(id, status)).await
    }

    async fn rotate_key(&self, id: &str, old_key: &KeyHash, new_key: KeyHash) -> StoreResult<()> {
        bounded(Duration::ZERO, self.inner.rotate_key(id, old_key, new_key)).await
    }

    async fn record_usage(&self, batch: &UsageBatch) -> StoreResult<()> {
        bounded(Duration::ZERO, self.inner.record_usage(batch)).await
    }

    async fn usage(
        &self,
        account_ids: &[String],
        from: Day,
        to: Day,
    ) -> StoreResult<Vec<UsageRow>> {
        bounded(Duration::ZERO, self.inner.usage(account_ids, from, to)).await
    }

    async fn pool_usage(&self, parent_id: &str) -> StoreResult<Vec<(String, u64)>> {
        bounded(Duration::ZERO, self.inner.pool_usage(parent_id)).await
    }

    async fn lease_credits(
        &self,
        parent_id: &str,
        pool: &str,
        need: u64,
        want: u64,
        op: LeaseOp<'_>,
    ) -> StoreResult<(u64, u64)> {
        bounded(
            Duration::ZERO,
            self.inner.lease_credits(parent_id, pool, need, want, op),
        )
        .await
    }

    async fn release_credits(
        &self,
        parent_id: &str,
        pool: &str,
        amount: u64,
        op: LeaseOp<'_>,
    ) -> StoreResult<()> {
        bounded(
            Duration::ZERO,
            self.inner.release_credits(parent_id, pool, amount, op),
        )
        .await
    }

    async fn feed_head(&self) -> StoreResult<String> {
        bounded(Duration::ZERO, self.inner.feed_head()).await
    }

    async fn read_feed(&self, cursor: &str, wait: Duration) -> StoreResult<Vec<FeedEvent>> {
        // The blocking read may take all of `wait`; the deadline covers what comes on top.
        bounded(wait, self.inner.read_feed(cursor, wait)).await
    }
}
