//! Key-tree writes. Each one reads what it changes, then applies it with a script that checks the
//! record is still exactly as read (compare-and-set on its JSON) and retries if not; steps that
//! touch global indexes are ordered as the module docs explain.

use tollgate_core::{Account, KeyHash, LimitOverrides, Role, Status, Subscription};

use super::conn::store_err;
use super::keys::{to_json, KeyOwner};
use super::tree::Stored;
use super::Inner;
use crate::{Change, NewParent, StoreError, StoreResult};

/// Rounds of read-then-compare-and-set before giving up on an account that keeps changing.
pub(super) const CAS_ROUNDS: usize = 16;

/// What the account update script does to the account's key.
#[derive(Clone, Copy)]
enum KeyOp<'a> {
    Keep,
    /// Replace the key `from` with `to`, only if the account still has `from`.
    Swap {
        from: &'a KeyHash,
        to: &'a KeyHash,
    },
    Remove,
}

/// What [`Inner::update_account`] did.
enum Updated {
    /// Written; the hash of the key the account had before.
    Done(Option<KeyHash>),
    /// The record changed since it was read: read it again and retry.
    Stale,
    /// A swap's account no longer has the key it was to replace.
    KeyMoved,
}

pub(super) fn key_from_hex(hex: &str) -> StoreResult<KeyHash> {
    KeyHash::from_hex(hex)
        .ok_or_else(|| StoreError::Internal("redis store: a stored key hash is not hex".into()))
}

/// Ends a step that follows a write's commit point (the tenant's script): tidying a global index
/// or telling the other nodes through the feed. The write is done whatever the step does. One
/// that fails leaves what a writer dying at that point leaves, which the module docs show is safe
/// (a dangling pointer, an email held by a deleted account, a change the followers pick up within
/// `max_staleness`), so it is logged and the write still reports done. Reporting an error would
/// have the client retry a write that happened: a rotation or an accepted invitation whose new key
/// it never got, a new parent whose email is then taken by itself.
pub(super) fn after_commit(step: &'static str, result: StoreResult<()>) {
    if let Err(e) = result {
        tracing::warn!(
            step,
            error = %e,
            "redis store: a write is done, but a step after it failed; other nodes see it within max_staleness"
        );
    }
}

pub(super) fn too_busy(id: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "redis store: account `{id}` kept changing; try again"
    ))
}

impl Inner {
    /// Compare-and-set of an account record (and its key).
    async fn update_account(
        &self,
        s: &Stored,
        new: &Account,
        key_op: KeyOp<'_>,
    ) -> StoreResult<Updated> {
        let new_raw = if *new == s.account {
            s.raw.clone()
        } else {
            to_json(new, "account")?
        };
        let (op, key, expected) = match key_op {
            KeyOp::Keep => ("keep", String::new(), String::new()),
            KeyOp::Swap { from, to } => ("set", to.to_hex(), from.to_hex()),
            KeyOp::Remove => ("del", String::new(), String::new()),
        };
        let (status, old): (String, Option<String>) = self
            .scripts
            .update_account
            .key(s.tk.account(&s.account.id))
            .key(s.tk.key_of())
            .arg(&s.raw)
            .arg(new_raw)
            .arg(&s.account.id)
            .arg(op)
            .arg(key)
            .arg(expected)
            .invoke_async(&mut self.conn())
            .await
            .map_err(store_err)?;
        Ok(match status.as_str() {
            "ok" => Updated::Done(old.as_deref().map(key_from_hex).transpose()?),
            "moved" => Updated::KeyMoved,
            _ => Updated::Stale,
        })
    }

    /// Deletes a parent and, in the same script, all its children (see `DELETE_TENANT`); then
    /// tidies the global indexes as a single deletion does. `Ok(false)` if the parent, its list
    /// of children or a live child changed since they were read.
    async fn delete_tenant(&self, s: &Stored, deleted: &Account) -> StoreResult<bool> {
        let children = self.stored_children(&s.tk).await?;
        let id = &s.account.id;
        let mut script = self.scripts.delete_tenant.key(s.tk.account(id));
        script
            .key(s.tk.key_of())
            .key(s.tk.children())
            .arg(&s.raw)
            .arg(to_json(deleted, "account")?)
            .arg(id)
            .arg(children.len());
        let mut gone = vec![deleted.clone()];
        for (raw, child) in children {
            if child.status == Status::Deleted {
                continue;
            }
            let mut d = child;
            d.status = Status::Deleted;
            script
                .key(s.tk.account(&d.id))
                .arg(&d.id)
                .arg(raw)
                .arg(to_json(&d, "account")?);
            gone.push(d);
        }
        let (status, old_key): (String, Option<String>) = script
            .invoke_async(&mut self.conn())
            .await
            .map_err(store_err)?;
        if status != "ok" {
            return Ok(false);
        }
        // The tenant no longer maps the parent's key; its pointer and the emails are tidied up
        // after. The children's keys stay (see `DELETE_TENANT`).
        let mut changes = Vec::with_capacity(gone.len() + 1);
        for (i, account) in gone.iter().enumerate() {
            changes.push(Change::Account(account.id.clone()));
            if i == 0 {
                if let Some(hex) = &old_key {
                    let old = key_from_hex(hex)?;
                    let owner = KeyOwner {
                        tenant: s.tenant.clone(),
                        account: account.id.clone(),
                    };
                    after_commit("key pointer", self.drop_key_pointer(&old, &owner).await);
                    changes.push(Change::KeyRemoved(old));
                }
            }
            after_commit("email", self.free_email(&account.email, &account.id).await);
        }
        after_commit("feed", self.append_feed(&changes).await);
        Ok(true)
    }

    pub(super) async fn create_parent(&self, new: NewParent) -> StoreResult<Account> {
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
        let id = account.id.clone();
        let email = self
            .claim_email(&account.email, &id, account.created_at)
            .await?;
        let index = match self.claim_account_id(&id, &id).await {
            Ok(c) => c,
            Err(e) => {
                self.roll_back(&[&email]).await;
                return Err(e);
            }
        };
        let owner = KeyOwner {
            tenant: id.clone(),
            account: id.clone(),
        };
        let key = match self.claim_key(&key_hash, &owner).await {
            Ok(c) => c,
            Err(e) => {
                self.roll_back(&[&email, &index]).await;
                return Err(e);
            }
        };
        let tk = self.keys.tenant(&id);
        let mut script = self.scripts.create_parent.key(tk.account(&id));
        script
            .key(tk.key_of())
            .key(tk.subscriptions())
            .arg(to_json(&account, "account")?)
            .arg(&id)
            .arg(key_hash.to_hex());
        for sub in &subscriptions {
            script.arg(&sub.pool).arg(to_json(sub, "subscription")?);
        }
        // An error here leaves the outcome unknown, so the claims stay (see the module docs).
        let status: String = script
            .invoke_async(&mut self.conn())
            .await
            .map_err(store_err)?;
        if status != "ok" {
            self.roll_back(&[&email, &index, &key]).await;
            return Err(StoreError::Conflict(format!(
                "account `{id}` exists already"
            )));
        }
        after_commit(
            "feed",
            self.append_feed(&[Change::Account(id), Change::KeyAdded(key_hash)])
                .await,
        );
        Ok(account)
    }

    pub(super) async fn update_parent(
        &self,
        id: &str,
        team: Option<bool>,
        limits: Option<LimitOverrides>,
    ) -> StoreResult<Account> {
        for _ in 0..CAS_ROUNDS {
            let s = self.live_parent(id).await?;
            let mut account = s.account.clone();
            if let Some(team) = team {
                account.team = team;
            }
            if let Some(limits) = limits {
                account.limits = limits;
            }
            if let Updated::Done(_) = self.update_account(&s, &account, KeyOp::Keep).await? {
                after_commit(
                    "feed",
                    self.append_feed(&[Change::Account(id.to_owned())]).await,
                );
                return Ok(account);
            }
        }
        Err(too_busy(id))
    }

    pub(super) async fn put_subscription(
        &self,
        parent_id: &str,
        sub: &Subscription,
    ) -> StoreResult<()> {
        let json = to_json(sub, "subscription")?;
        for _ in 0..CAS_ROUNDS {
            let s = self.live_parent(parent_id).await?;
            let status: String = self
                .scripts
                .put_subscription
                .key(s.tk.account(parent_id))
                .key(s.tk.subscriptions())
                .arg(&s.raw)
                .arg(&sub.pool)
                .arg(&json)
                .invoke_async(&mut self.conn())
                .await
                .map_err(store_err)?;
            if status == "ok" {
                after_commit(
                    "feed",
                    self.append_feed(&[Change::Subscriptions(parent_id.to_owned())])
                        .await,
                );
                return Ok(());
            }
        }
        Err(too_busy(parent_id))
    }

    pub(super) async fn set_status(&self, id: &str, status: Status) -> StoreResult<Account> {
        for _ in 0..CAS_ROUNDS {
            let s = self
                .stored(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
            if s.account.status == status {
                return Ok(s.account);
            }
            match (s.account.status, status) {
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
            let mut account = s.account.clone();
            account.status = status;
            let deleting = status == Status::Deleted;
            if deleting && account.role == Role::Parent {
                // Its children go with it, in one script on the tenant's slot.
                if self.delete_tenant(&s, &account).await? {
                    return Ok(account);
                }
                continue;
            }
            let key_op = if deleting { KeyOp::Remove } else { KeyOp::Keep };
            let Updated::Done(old_key) = self.update_account(&s, &account, key_op).await? else {
                continue;
            };
            let mut changes = vec![Change::Account(id.to_owned())];
            if deleting {
                // The tenant no longer maps the key, so it already resolves to nothing; the
                // pointer and the email are tidied up after, as the module docs explain.
                if let Some(old) = old_key {
                    let owner = KeyOwner {
                        tenant: s.tenant.clone(),
                        account: id.to_owned(),
                    };
                    after_commit("key pointer", self.drop_key_pointer(&old, &owner).await);
                    changes.push(Change::KeyRemoved(old));
                }
                after_commit("email", self.free_email(&account.email, id).await);
            }
            after_commit("feed", self.append_feed(&changes).await);
            return Ok(account);
        }
        Err(too_busy(id))
    }

    pub(super) async fn rotate_key(
        &self,
        id: &str,
        old_key: &KeyHash,
        new_key: KeyHash,
    ) -> StoreResult<()> {
        let mut s = self.live(id).await?;
        if s.account.status == Status::Invited {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        let owner = KeyOwner {
            tenant: s.tenant.clone(),
            account: id.to_owned(),
        };
        let claim = self.claim_key(&new_key, &owner).await?;
        let swap = KeyOp::Swap {
            from: old_key,
            to: &new_key,
        };
        for _ in 0..CAS_ROUNDS {
            let account = s.account.clone();
            match self.update_account(&s, &account, swap).await? {
                Updated::Done(old) => {
                    let mut changes = Vec::with_capacity(3);
                    if let Some(old) = old.filter(|old| *old != new_key) {
                        after_commit("key pointer", self.drop_key_pointer(&old, &owner).await);
                        changes.push(Change::KeyRemoved(old));
                    }
                    changes.push(Change::KeyAdded(new_key));
                    changes.push(Change::Account(id.to_owned()));
                    after_commit("feed", self.append_feed(&changes).await);
                    return Ok(());
                }
                Updated::KeyMoved => {
                    // Another rotation with the same key won: this one's key is gone, as for
                    // any rotated-away key. Nothing was written but our pointer.
                    self.roll_back(&[&claim]).await;
                    return Err(StoreError::NotFound(id.to_owned()));
                }
                Updated::Stale => {}
            }
            s = match self.live(id).await {
                Ok(s) if s.account.status != Status::Invited => s,
                Ok(_) | Err(StoreError::NotFound(_)) => {
                    self.roll_back(&[&claim]).await;
                    return Err(StoreError::NotFound(id.to_owned()));
                }
                Err(e) => return Err(e),
            };
        }
        Err(too_busy(id))
    }
}
