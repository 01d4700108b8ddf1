//! The `Store` trait: what every backend must do, with the semantics the contract suite checks.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tollgate_core::{Account, Day, KeyHash, LimitOverrides, Role, Status, Subscription, UsageRow};

/// Every way a store operation can fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The email (compared case-insensitively) belongs to an account already.
    #[error("the email belongs to an account already")]
    EmailTaken,
    /// No account with this id (or not one this operation applies to).
    #[error("account `{0}` not found")]
    NotFound(String),
    /// The invitation token is unknown, used, expired, or its child was deleted.
    #[error("the invitation is unknown, used or expired")]
    InvitationUnknown,
    /// The operation does not apply to the account in its current state (e.g. enabling a deleted one).
    #[error("{0}")]
    Conflict(String),
    /// The change-feed cursor is older than what the feed still holds: reload everything.
    #[error("the change feed was trimmed past the cursor")]
    FeedTrimmed,
    /// The backend cannot be reached; the operation may or may not have happened (retry is safe for
    /// idempotent operations such as [`Store::record_usage`]).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// Corrupt data or a backend bug.
    #[error("store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// What any status change but deletion of a deleted account gets: deletion is permanent.
    pub fn deleted(id: &str) -> StoreError {
        StoreError::Conflict(format!(
            "account `{id}` is deleted, which is permanent: it cannot be enabled or disabled"
        ))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A parent to create: the caller generates the id and key and passes only the key's hash.
#[derive(Debug, Clone)]
pub struct NewParent {
    /// `role` must be `Parent`, `status` `Active`, `parent_id` `None`.
    pub account: Account,
    pub key_hash: KeyHash,
    pub subscriptions: Vec<Subscription>,
}

/// A child to invite: the account (status `Invited`, no key) and its invitation token's hash.
#[derive(Debug, Clone)]
pub struct NewInvitation {
    pub child: Account,
    pub token_hash: KeyHash,
    /// Unix seconds after which the token no longer works.
    pub expires_at: u64,
}

impl NewInvitation {
    /// The invited child's parent: what every store checks first (a conflict unless `child` is
    /// an invited child with a parent).
    pub(crate) fn parent_id(&self) -> StoreResult<String> {
        match (&self.child.parent_id, self.child.role, self.child.status) {
            (Some(p), Role::Child, Status::Invited) => Ok(p.clone()),
            _ => Err(StoreError::Conflict(
                "an invited account must be an invited child with a parent".into(),
            )),
        }
    }
}

/// What changed in the key tree; followers reload what the event names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// The account's record (status, team, limits) changed, or it was created or deleted.
    Account(String),
    /// A key hash now maps to an account (drop negative cache entries for it).
    KeyAdded(KeyHash),
    /// A key hash no longer maps to anything (rotation, deletion).
    KeyRemoved(KeyHash),
    /// A parent's subscriptions changed.
    Subscriptions(String),
}

/// One change with the opaque cursor to resume after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    pub cursor: String,
    pub change: Change,
    /// When the writer appended it (unix ms, the writer's clock), if the backend records it.
    pub at_ms: Option<u64>,
}

/// Now, as unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One metered cell to add: an account's requests and credits for a product, pool and day.
///
/// The names are shared with the meter's cells (`Arc<str>`): a flush of thousands of cells
/// copies none of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    pub account_id: Arc<str>,
    /// The tenant it rolls up to (its own id for a parent).
    pub parent_id: Arc<str>,
    pub product: Arc<str>,
    pub pool: Arc<str>,
    pub day: Day,
    pub requests: u64,
    pub credits: u64,
}

/// A batch of usage written atomically and at most once per (`writer`, `seq`).
///
/// A writer (one gateway process) numbers its batches 0, 1, 2, ... and sends batch `n + 1` only
/// after the store took batch `n`, retrying `n` with the same number until then. A store may rely
/// on that order: the Redis store keeps, per tenant, only the last number it applied of each
/// writer, and treats a batch numbered at or below it as a retry (a no-op).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageBatch {
    /// The writer's id: unique per process (the meter's node id).
    pub writer: String,
    /// The batch's number among the writer's batches, increasing by one per batch taken.
    pub seq: u64,
    pub deltas: Vec<UsageDelta>,
}

impl UsageBatch {
    /// `writer-seq`: the batch's id in logs and in the embedded store's table of seen batches.
    pub fn id(&self) -> String {
        format!("{}-{}", self.writer, self.seq)
    }
}

/// The key tree, usage and change feed. Every write to the key tree appends to the change feed
/// before it returns. Implementations are shared across tasks (`Arc<dyn Store>`).
/// Names one lease or release of credits by a node, so that one sent again after an error that
/// left its outcome unknown (a reply that timed out: the store may have applied it after the node
/// gave up) is applied at most once. A node's operations on one pool are numbered `seq` = 1, 2,
/// ..., one at a time, and it repeats its last one until it has an answer before it sends the
/// next; the store remembers the last one of each node and pool (Redis: `T:leaseop`; the embedded
/// store has no unknown outcomes), so repeating it is harmless. `last` (a release of 0, once the
/// node's operations on the pool are all answered, at shutdown): the store forgets the node's
/// record; no credits move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseOp<'a> {
    pub node: &'a str,
    pub seq: u64,
    pub last: bool,
}

impl<'a> LeaseOp<'a> {
    /// Operation `seq` of `node` (a lease or a return, not the last).
    pub fn new(node: &'a str, seq: u64) -> LeaseOp<'a> {
        LeaseOp {
            node,
            seq,
            last: false,
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short name for logs and metrics: `embedded` or `redis`.
    fn backend(&self) -> &'static str;

    /// Cheap round trip: `Ok` when the store answers.
    async fn ping(&self) -> StoreResult<()>;

    // ---- key tree reads ----

    async fn account(&self, id: &str) -> StoreResult<Option<Account>>;

    /// The account a key hash belongs to (any status), or `None` for an unknown, rotated-away or
    /// deleted key. A child deleted with its parent keeps its key: it resolves to the deleted
    /// child, whose deleted parent makes `admit()` refuse it as `parent_disabled`.
    async fn account_by_key(&self, key: &KeyHash) -> StoreResult<Option<Account>>;

    /// All children of a parent, in creation order, deleted ones included.
    async fn children(&self, parent_id: &str) -> StoreResult<Vec<Account>>;

    /// A parent's subscriptions, sorted by pool.
    async fn subscriptions(&self, parent_id: &str) -> StoreResult<Vec<Subscription>>;

    // ---- key tree writes ----

    /// `EmailTaken` if any live account holds the email, except an invited child whose
    /// invitation expired at `account.created_at` (the time of the call): that child is deleted,
    /// freeing the email, in the same write (see [`Store::invite`]).
    async fn create_parent(&self, new: NewParent) -> StoreResult<Account>;

    /// Switches the team feature and/or replaces the limit overrides. `NotFound` for a non-parent.
    async fn update_parent(
        &self,
        id: &str,
        team: Option<bool>,
        limits: Option<LimitOverrides>,
    ) -> StoreResult<Account>;

    /// Sets or replaces the subscription to `sub.pool`. `NotFound` for a non-parent.
    async fn put_subscription(&self, parent_id: &str, sub: Subscription) -> StoreResult<()>;

    /// Creates an `Invited` child and its token. `NotFound` if the parent is missing or deleted.
    ///
    /// `child.created_at` is the time of the call. An invited child whose invitation expired by
    /// then (`created_at >= expires_at`, as in [`Store::accept_invitation`]) no longer holds its
    /// email: if it is this parent's, it gets the new token and expiry instead (same id, returned
    /// as stored; its old token is void) and no account is created; if it is another tenant's, it
    /// is deleted (it never had a key or usage) and the new child takes the email. Any other live
    /// holder of the email, an invited child whose invitation is still valid included, is
    /// `EmailTaken`. Each is one atomic step, or ordered to be safe (Redis Cluster).
    async fn invite(&self, new: NewInvitation) -> StoreResult<Account>;

    /// Consumes the token (single use) and activates its child with `key_hash`.
    /// `InvitationUnknown` if the token is unknown, used, expired at `now`, replaced by a newer
    /// invitation of the same child, or its child or its parent is deleted. A disabled parent's invitation may be accepted (disabling is reversible).
    async fn accept_invitation(
        &self,
        token_hash: &KeyHash,
        key_hash: KeyHash,
        now: u64,
    ) -> StoreResult<Account>;

    /// `Active` <-> `Disabled`, or `Deleted` (final: removes the key, frees the email; deleting a
    /// parent deletes all its children in the same atomic step, voiding their pending
    /// invitations, freeing their emails but keeping their keys, so they are refused as
    /// `parent_disabled` rather than unknown, and appends each one's changes to the feed). Setting the
    /// status an account already has is a no-op that succeeds (deleting a deleted account too);
    /// enabling or disabling a deleted account is a `Conflict` ([`StoreError::deleted`]).
    async fn set_status(&self, id: &str, status: Status) -> StoreResult<Account>;

    /// Replaces the account's key with `new_key` if its current key is still `old_key`
    /// (compare-and-swap, in one atomic step): of concurrent rotations presenting the same key,
    /// exactly one succeeds and the others get `NotFound`, as a rotated-away key is refused.
    /// `old_key` stops resolving at once. `NotFound` also if the account is missing, deleted or
    /// invited (no key yet).
    async fn rotate_key(&self, id: &str, old_key: &KeyHash, new_key: KeyHash) -> StoreResult<()>;

    // ---- usage ----

    /// Adds every delta, and the parent's roll-up, in one atomic step; a batch seen before (same
    /// writer and number) is a no-op, so a retry after a lost reply never counts twice.
    async fn record_usage(&self, batch: &UsageBatch) -> StoreResult<()>;

    /// Usage rows of these accounts between the two days inclusive, sorted by account, day, product.
    async fn usage(&self, account_ids: &[String], from: Day, to: Day)
        -> StoreResult<Vec<UsageRow>>;

    /// All credits a tenant has ever used from each pool (its own and its children's), by pool.
    async fn pool_usage(&self, parent_id: &str) -> StoreResult<Vec<(String, u64)>>;

    // ---- pooled credits ----

    /// Reserves credits of a `deny` pool for this node to spend locally. With `avail` = the
    /// subscription's credits less everything reserved so far: 0 if `avail < need`; else
    /// `clamp(min(want, avail / 16), need, avail)`, so slices shrink as the pool runs low, down to
    /// exactly `need` at the boundary. Returns `(granted, avail - granted)`. `NotFound` if the parent
    /// has no subscription to the pool. Sent again with the same `op` (after an error that left
    /// its outcome unknown), it is applied at most once and answers as it first did.
    async fn lease_credits(
        &self,
        parent_id: &str,
        pool: &str,
        need: u64,
        want: u64,
        op: LeaseOp<'_>,
    ) -> StoreResult<(u64, u64)> {
        let _ = (parent_id, pool, need, want, op);
        Err(StoreError::Internal(format!(
            "{} does not support credit leases",
            self.backend()
        )))
    }

    /// Gives back reserved credits this node did not spend. Sent again with the same `op`, it is
    /// applied at most once.
    async fn release_credits(
        &self,
        parent_id: &str,
        pool: &str,
        amount: u64,
        op: LeaseOp<'_>,
    ) -> StoreResult<()> {
        let _ = (parent_id, pool, amount, op);
        Err(StoreError::Internal(format!(
            "{} does not support credit leases",
            self.backend()
        )))
    }

    // ---- change feed ----

    /// The cursor of the newest event: follow from here after a full load.
    async fn feed_head(&self) -> StoreResult<String>;

    /// Events after `cursor`, oldest first; waits up to `wait` for the first one, then returns what
    /// it has (possibly nothing). `FeedTrimmed` if the feed no longer reaches back to `cursor`.
    async fn read_feed(&self, cursor: &str, wait: Duration) -> StoreResult<Vec<FeedEvent>>;
}
