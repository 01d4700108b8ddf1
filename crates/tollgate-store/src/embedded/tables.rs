//! The embedded store's redb tables (listed in the parent module's docs) and the helpers that read
//! and write them inside a transaction.

use std::cmp::Ordering;
use std::fmt::Display;

use redb::{
    Database, Key, ReadableTable, Table, TableDefinition, TableHandle, TypeName, Value,
    WriteTransaction,
};
use tollgate_core::{normalize_email, Account, KeyHash, Role, Status, Subscription};

use crate::{Change, StoreError, StoreResult};

pub(super) type Str = &'static str;
pub(super) type Hash = &'static [u8; 32];
pub(super) type UsageKey = (Text, i32, Text, Text);

pub(super) const ACCOUNTS: TableDefinition<Str, Str> = TableDefinition::new("accounts");
pub(super) const KEYS: TableDefinition<Hash, Str> = TableDefinition::new("keys");
pub(super) const ACCOUNT_KEYS: TableDefinition<Str, Hash> = TableDefinition::new("account_keys");
pub(super) const EMAILS: TableDefinition<Str, Str> = TableDefinition::new("emails");
pub(super) const INVITATIONS: TableDefinition<Hash, (Str, u64)> =
    TableDefinition::new("invitations");
/// An invited child's current invitation: (token hash, expires_at). Written by invitations made
/// since this table exists; removed on accept and when the child is deleted.
pub(super) const CHILD_INVITATIONS: TableDefinition<Str, (Hash, u64)> =
    TableDefinition::new("child_invitations");
pub(super) const CHILDREN: TableDefinition<(Str, u64), Str> = TableDefinition::new("children");
pub(super) const SUBSCRIPTIONS: TableDefinition<(Str, Str), Str> =
    TableDefinition::new("subscriptions");
pub(super) const USAGE: TableDefinition<UsageKey, (u64, u64)> = TableDefinition::new("usage_v2");
pub(super) const POOL_USAGE: TableDefinition<(Text, Text), u64> =
    TableDefinition::new("pool_usage_v2");
/// The first layout of the usage tables (`&str` keys); moved to the tables above on open.
const USAGE_V1: TableDefinition<(Str, i32, Str, Str), (u64, u64)> = TableDefinition::new("usage");
const POOL_USAGE_V1: TableDefinition<(Str, Str), u64> = TableDefinition::new("pool_usage");
pub(super) const BATCHES: TableDefinition<Str, u64> = TableDefinition::new("batches");
pub(super) const BATCHES_BY_TIME: TableDefinition<(u64, Str), ()> =
    TableDefinition::new("batches_by_time");
pub(super) const LEASES: TableDefinition<(Str, Str), u64> = TableDefinition::new("leases");
/// One row written to prove the database writable again after an I/O error.
pub(super) const HEALTH: TableDefinition<&str, u64> = TableDefinition::new("health");
pub(super) const META: TableDefinition<Str, u64> = TableDefinition::new("meta");

const CHILD_SEQ: &str = "child_seq";

/// A string key ordered by its bytes, which is `str`'s order, without the UTF-8 check redb's
/// `&str` runs on both sides of every comparison: the usage tables take about a thousand updates
/// per flush, a few times a second, and that check was a third of their cost. Only `&str` is ever
/// written, so reading back never meets invalid UTF-8 (a corrupt file would read as U+FFFD).
#[derive(Debug)]
pub(super) struct Text;

impl Value for Text {
    type SelfType<'a>
        = &'a str
    where
        Self: 'a;
    type AsBytes<'a>
        = &'a [u8]
    where
        Self: 'a;

    fn fixed_width() -> Option<usize> {
        None
    }

    fn from_bytes<'a>(data: &'a [u8]) -> &'a str
    where
        Self: 'a,
    {
        std::str::from_utf8(data).unwrap_or("\u{FFFD}")
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a &'b str) -> &'a [u8]
    where
        Self: 'b,
    {
        value.as_bytes()
    }

    fn type_name() -> TypeName {
        TypeName::new("tollgate::Text")
    }
}

impl Key for Text {
    fn compare(a: &[u8], b: &[u8]) -> Ordering {
        a.cmp(b)
    }
}
/// Turns a backend error into `Unavailable` if the disk failed (an I/O error: a full disk, say;
/// the store is opened again before the next call), else `Internal`, saying what was being done.
pub(super) trait Ctx<T> {
    fn ctx(self, what: impl Display) -> StoreResult<T>;
}

impl<T, E: Display + 'static> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl Display) -> StoreResult<T> {
        self.map_err(|e| {
            let message = format!("embedded store: {what}: {e}");
            if is_io_failure(&e) {
                StoreError::Unavailable(message)
            } else {
                StoreError::Internal(message)
            }
        })
    }
}

/// Whether a backend error is the disk's: an I/O error now, or redb's refusal after an earlier
/// one.
fn is_io_failure(e: &dyn std::any::Any) -> bool {
    use redb::{CommitError, DatabaseError, StorageError, TableError, TransactionError};
    let storage = |s: &StorageError| matches!(s, StorageError::Io(_) | StorageError::PreviousIo);
    if e.is::<std::io::Error>() {
        return true;
    }
    if let Some(s) = e.downcast_ref::<StorageError>() {
        return storage(s);
    }
    if let Some(TransactionError::Storage(s)) = e.downcast_ref::<TransactionError>() {
        return storage(s);
    }
    if let Some(CommitError::Storage(s)) = e.downcast_ref::<CommitError>() {
        return storage(s);
    }
    if let Some(TableError::Storage(s)) = e.downcast_ref::<TableError>() {
        return storage(s);
    }
    if let Some(DatabaseError::Storage(s)) = e.downcast_ref::<DatabaseError>() {
        return storage(s);
    }
    matches!(
        e.downcast_ref::<redb::Error>(),
        Some(redb::Error::Io(_) | redb::Error::PreviousIo)
    )
}

/// Created up front so a read transaction never meets a missing table.
pub(super) fn create_all(db: &Database) -> StoreResult<()> {
    let txn = db.begin_write().ctx("begin creating tables")?;
    {
        txn.open_table(ACCOUNTS).ctx("create accounts")?;
        txn.open_table(KEYS).ctx("create keys")?;
        txn.open_table(ACCOUNT_KEYS).ctx("create account_keys")?;
        txn.open_table(EMAILS).ctx("create emails")?;
        txn.open_table(INVITATIONS).ctx("create invitations")?;
        txn.open_table(CHILD_INVITATIONS)
            .ctx("create child_invitations")?;
        txn.open_table(CHILDREN).ctx("create children")?;
        txn.open_table(SUBSCRIPTIONS).ctx("create subscriptions")?;
        txn.open_table(USAGE).ctx("create usage")?;
        txn.open_table(POOL_USAGE).ctx("create pool_usage")?;
        txn.open_table(BATCHES).ctx("create batches")?;
        txn.open_table(BATCHES_BY_TIME)
            .ctx("create batches_by_time")?;
        txn.open_table(LEASES).ctx("create leases")?;
        txn.open_table(HEALTH).ctx("create health")?;
        txn.open_table(META).ctx("create meta")?;
        migrate_usage(&txn)?;
    }
    txn.commit().ctx("commit table creation")?;
    Ok(())
}

/// Moves usage written by a version with `&str`-keyed usage tables into the current tables, in the
/// transaction that opens the file: all of it or (on any error) none of it.
fn migrate_usage(txn: &WriteTransaction) -> StoreResult<()> {
    let names: Vec<String> = txn
        .list_tables()
        .ctx("list tables")?
        .map(|t| t.name().to_owned())
        .collect();
    if names.iter().any(|n| n == USAGE_V1.name()) {
        let mut to = txn.open_table(USAGE).ctx("open usage")?;
        {
            let from = txn.open_table(USAGE_V1).ctx("open old usage")?;
            for item in from.iter().ctx("scan old usage")? {
                let (k, v) = item.ctx("scan old usage")?;
                add_usage(&mut to, k.value(), v.value())?;
            }
        }
        txn.delete_table(USAGE_V1).ctx("drop old usage")?;
    }
    if names.iter().any(|n| n == POOL_USAGE_V1.name()) {
        let mut to = txn.open_table(POOL_USAGE).ctx("open pool_usage")?;
        {
            let from = txn.open_table(POOL_USAGE_V1).ctx("open old pool_usage")?;
            for item in from.iter().ctx("scan old pool_usage")? {
                let (k, v) = item.ctx("scan old pool_usage")?;
                add_pool_usage(&mut to, k.value(), v.value())?;
            }
        }
        txn.delete_table(POOL_USAGE_V1).ctx("drop old pool_usage")?;
    }
    Ok(())
}

/// Adds (requests, credits) to a usage row, creating it; saturating. One lookup for a row that
/// exists (updated in place), two for a new one.
pub(super) fn add_usage(
    t: &mut Table<UsageKey, (u64, u64)>,
    key: (&str, i32, &str, &str),
    (requests, credits): (u64, u64),
) -> StoreResult<()> {
    let mut row = t.get_mut(key).ctx("read usage")?;
    if let Some(g) = row.as_mut() {
        let (r, c) = g.value();
        return g
            .insert((r.saturating_add(requests), c.saturating_add(credits)))
            .ctx("write usage");
    }
    drop(row);
    t.insert(key, (requests, credits)).ctx("write usage")?;
    Ok(())
}

/// Adds credits to a tenant's pool roll-up, creating it; saturating.
pub(super) fn add_pool_usage(
    t: &mut Table<(Text, Text), u64>,
    key: (&str, &str),
    credits: u64,
) -> StoreResult<()> {
    let mut row = t.get_mut(key).ctx("read pool usage")?;
    if let Some(g) = row.as_mut() {
        let used = g.value();
        return g
            .insert(used.saturating_add(credits))
            .ctx("write pool usage");
    }
    drop(row);
    t.insert(key, credits).ctx("write pool usage")?;
    Ok(())
}

// ---- table helpers shared by read and write transactions ----

pub(super) fn get_account(
    t: &impl ReadableTable<Str, Str>,
    id: &str,
) -> StoreResult<Option<Account>> {
    match t.get(id).ctx("read account")? {
        None => Ok(None),
        Some(json) => serde_json::from_str(json.value())
            .ctx(format_args!("decode account `{id}`"))
            .map(Some),
    }
}

pub(super) fn put_account(t: &mut Table<'_, Str, Str>, account: &Account) -> StoreResult<()> {
    let json = serde_json::to_string(account).ctx("encode account")?;
    t.insert(account.id.as_str(), json.as_str())
        .ctx("write account")?;
    Ok(())
}

pub(super) fn get_subscriptions(
    t: &impl ReadableTable<(Str, Str), Str>,
    parent_id: &str,
) -> StoreResult<Vec<Subscription>> {
    let mut out = Vec::new();
    for item in t.range((parent_id, "")..).ctx("scan subscriptions")? {
        let (k, v) = item.ctx("scan subscriptions")?;
        if k.value().0 != parent_id {
            break;
        }
        out.push(serde_json::from_str(v.value()).ctx("decode subscription")?);
    }
    Ok(out)
}

pub(super) fn put_subscription(
    t: &mut Table<'_, (Str, Str), Str>,
    parent_id: &str,
    sub: &Subscription,
) -> StoreResult<()> {
    let json = serde_json::to_string(sub).ctx("encode subscription")?;
    t.insert((parent_id, sub.pool.as_str()), json.as_str())
        .ctx("write subscription")?;
    Ok(())
}

/// The key-tree tables of one write transaction.
pub(super) struct Tree<'t> {
    pub(super) accounts: Table<'t, Str, Str>,
    pub(super) keys: Table<'t, Hash, Str>,
    pub(super) account_keys: Table<'t, Str, Hash>,
    pub(super) emails: Table<'t, Str, Str>,
    pub(super) invitations: Table<'t, Hash, (Str, u64)>,
    pub(super) child_invitations: Table<'t, Str, (Hash, u64)>,
    pub(super) children: Table<'t, (Str, u64), Str>,
    pub(super) subscriptions: Table<'t, (Str, Str), Str>,
    pub(super) meta: Table<'t, Str, u64>,
}

impl<'t> Tree<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> StoreResult<Tree<'t>> {
        Ok(Tree {
            accounts: txn.open_table(ACCOUNTS).ctx("open accounts")?,
            keys: txn.open_table(KEYS).ctx("open keys")?,
            account_keys: txn.open_table(ACCOUNT_KEYS).ctx("open account_keys")?,
            emails: txn.open_table(EMAILS).ctx("open emails")?,
            invitations: txn.open_table(INVITATIONS).ctx("open invitations")?,
            child_invitations: txn
                .open_table(CHILD_INVITATIONS)
                .ctx("open child_invitations")?,
            children: txn.open_table(CHILDREN).ctx("open children")?,
            subscriptions: txn.open_table(SUBSCRIPTIONS).ctx("open subscriptions")?,
            meta: txn.open_table(META).ctx("open meta")?,
        })
    }

    /// The account unless it is missing or deleted (`NotFound` either way: a deleted account is
    /// gone for every write).
    pub(super) fn live(&self, id: &str) -> StoreResult<Account> {
        match get_account(&self.accounts, id)? {
            Some(a) if a.status != Status::Deleted => Ok(a),
            _ => Err(StoreError::NotFound(id.to_owned())),
        }
    }

    pub(super) fn live_parent(&self, id: &str) -> StoreResult<Account> {
        let a = self.live(id)?;
        if a.role != Role::Parent {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        Ok(a)
    }

    /// The id of the account holding the email, if any.
    pub(super) fn email_holder(&self, normalized: &str) -> StoreResult<Option<String>> {
        Ok(self
            .emails
            .get(normalized)
            .ctx("read email index")?
            .map(|g| g.value().to_owned()))
    }

    /// Makes the email free for a new account at `now` (unix seconds): free already, or held by
    /// an invited child whose invitation expired by then, which is deleted (its email freed).
    /// `EmailTaken` otherwise. Returns the normalized email and the changes made.
    pub(super) fn claim_email(
        &mut self,
        email: &str,
        now: u64,
    ) -> StoreResult<(String, Vec<Change>)> {
        let normalized = normalize_email(email);
        let Some(holder) = self.email_holder(&normalized)? else {
            return Ok((normalized, Vec::new()));
        };
        match self.expired_invitee(&holder, now)? {
            Some(mut stale) => {
                let changes = self.delete(&mut stale)?;
                Ok((normalized, changes))
            }
            None => Err(StoreError::EmailTaken),
        }
    }

    /// The account if it is an invited child whose current invitation expired at `now`. Children
    /// invited before `child_invitations` existed have no entry: their expiry is unknown, so they
    /// keep their email until deleted, as they did.
    pub(super) fn expired_invitee(&self, id: &str, now: u64) -> StoreResult<Option<Account>> {
        let Some(account) = get_account(&self.accounts, id)? else {
            return Ok(None);
        };
        if account.status != Status::Invited {
            return Ok(None);
        }
        let expired = self
            .child_invitations
            .get(id)
            .ctx("read child invitation")?
            .is_some_and(|g| now >= g.value().1);
        Ok(expired.then_some(account))
    }

    /// Records `token` as the child's one current invitation, voiding the one it had.
    pub(super) fn set_invitation(
        &mut self,
        child_id: &str,
        token: &KeyHash,
        expires_at: u64,
    ) -> StoreResult<()> {
        if self
            .invitations
            .get(&token.0)
            .ctx("read invitation")?
            .is_some()
        {
            return Err(StoreError::Conflict(
                "the invitation token is in use already".into(),
            ));
        }
        self.drop_invitation(child_id)?;
        self.invitations
            .insert(&token.0, (child_id, expires_at))
            .ctx("write invitation")?;
        self.child_invitations
            .insert(child_id, (&token.0, expires_at))
            .ctx("write child invitation")?;
        Ok(())
    }

    /// Removes the child's current invitation (token and index entry), if it has one.
    pub(super) fn drop_invitation(&mut self, child_id: &str) -> StoreResult<()> {
        let old = self
            .child_invitations
            .remove(child_id)
            .ctx("remove child invitation")?
            .map(|g| *g.value().0);
        if let Some(old) = old {
            self.invitations.remove(&old).ctx("remove invitation")?;
        }
        Ok(())
    }

    pub(super) fn check_new_account(&self, id: &str) -> StoreResult<()> {
        if self.accounts.get(id).ctx("read account")?.is_some() {
            return Err(StoreError::Conflict(format!(
                "account `{id}` exists already"
            )));
        }
        Ok(())
    }

    pub(super) fn check_key_free(&self, key: &KeyHash) -> StoreResult<()> {
        if self.keys.get(&key.0).ctx("read key")?.is_some() {
            return Err(StoreError::Conflict(format!(
                "key {} is in use already",
                key.short()
            )));
        }
        Ok(())
    }

    pub(super) fn set_key(&mut self, id: &str, key: &KeyHash) -> StoreResult<()> {
        self.keys.insert(&key.0, id).ctx("write key")?;
        self.account_keys
            .insert(id, &key.0)
            .ctx("write account key")?;
        Ok(())
    }

    /// The account's current key, if it has one.
    pub(super) fn key_of(&self, id: &str) -> StoreResult<Option<KeyHash>> {
        Ok(self
            .account_keys
            .get(id)
            .ctx("read account key")?
            .map(|g| KeyHash(*g.value())))
    }

    /// Unmaps the account's current key, returning its hash.
    pub(super) fn remove_key(&mut self, id: &str) -> StoreResult<Option<KeyHash>> {
        let old = self
            .account_keys
            .remove(id)
            .ctx("remove account key")?
            .map(|g| KeyHash(*g.value()));
        if let Some(old) = &old {
            self.keys.remove(&old.0).ctx("remove key")?;
        }
        Ok(old)
    }

    /// The ids of a parent's children, in creation order.
    pub(super) fn child_ids(&self, parent_id: &str) -> StoreResult<Vec<String>> {
        let mut ids = Vec::new();
        for item in self
            .children
            .range((parent_id, 0u64)..)
            .ctx("scan children")?
        {
            let (k, v) = item.ctx("scan children")?;
            if k.value().0 != parent_id {
                break;
            }
            ids.push(v.value().to_owned());
        }
        Ok(ids)
    }

    /// Marks a live account deleted: its record, its key unmapped, its email freed (if the index
    /// still names it). Returns the changes.
    pub(super) fn delete(&mut self, account: &mut Account) -> StoreResult<Vec<Change>> {
        self.delete_keeping_key(account, false)
    }

    /// As [`delete`](Self::delete), for a child deleted with its parent: its key stays mapped to
    /// it, so the key is refused as `parent_disabled` (deleted under a deleted parent) rather
    /// than as unknown.
    pub(super) fn delete_with_parent(&mut self, account: &mut Account) -> StoreResult<Vec<Change>> {
        self.delete_keeping_key(account, true)
    }

    fn delete_keeping_key(
        &mut self,
        account: &mut Account,
        keep_key: bool,
    ) -> StoreResult<Vec<Change>> {
        account.status = Status::Deleted;
        put_account(&mut self.accounts, account)?;
        let id = account.id.as_str();
        let mut changes = vec![Change::Account(id.to_owned())];
        let email = normalize_email(&account.email);
        let ours = self
            .emails
            .get(email.as_str())
            .ctx("read email index")?
            .is_some_and(|g| g.value() == id);
        if ours {
            self.emails
                .remove(email.as_str())
                .ctx("remove email index")?;
        }
        if !keep_key {
            if let Some(old) = self.remove_key(id)? {
                changes.push(Change::KeyRemoved(old));
            }
        }
        self.drop_invitation(id)?;
        Ok(changes)
    }

    pub(super) fn next_child_seq(&mut self) -> StoreResult<u64> {
        let seq = self
            .meta
            .get(CHILD_SEQ)
            .ctx("read child sequence")?
            .map_or(0, |g| g.value());
        self.meta
            .insert(CHILD_SEQ, seq + 1)
            .ctx("write child sequence")?;
        Ok(seq)
    }
}
