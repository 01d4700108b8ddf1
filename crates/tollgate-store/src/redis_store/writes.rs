//! Key-tree writes. Each one reads what it changes, then applies it with a script that checks the
//! record is still exactly as read (compare-and-set on its JSON) and retries if not; steps that
//! touch global indexes are ordered as the module docs explain.

use std::time::Duration;

use redis::AsyncCommands;
use tollgate_core::{Account, KeyHash, LimitOverrides, Role, Status, Subscription};

use super::conn::store_err;
use super::keys::{from_json, to_json, InvitationRecord, KeyOwner};
use super::tree::{Claim, Stored};
use super::{now_ms, Inner};
use crate::{Change, NewInvitation, NewParent, StoreError, StoreResult};

/// Rounds of read-then-compare-and-set before giving up on an account that keeps changing.
const CAS_ROUNDS: usize = 16;
/// Invitation records outlive their expiry by this much before Redis drops them: expiry is judged
/// on the caller's `now`, which may lag Redis's clock, so Redis only tidies up.
const INVITATION_GRACE: Duration = Duration::from_secs(86_400);

/// What the account update script does to the account's key.
enum KeyOp<'a> {
    Keep,
    Set(&'a KeyHash),
    Remove,
}

fn key_from_hex(hex: &str) -> StoreResult<KeyHash> {
    KeyHash::from_hex(hex)
        .ok_or_else(|| StoreError::Internal("redis store: a stored key hash is not hex".into()))
}

fn too_busy(id: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "redis store: account `{id}` kept changing; try again"
    ))
}

impl Inner {
    /// Compare-and-set of an account record (and its key). `Ok(None)` if the record changed since
    /// it was read; else the hash of the key it had before.
    async fn update_account(
        &self,
        s: &Stored,
        new: &Account,
        key_op: KeyOp<'_>,
    ) -> StoreResult<Option<Option<KeyHash>>> {
        let new_raw = if *new == s.account {
            s.raw.clone()
        } else {
            to_json(new, "account")?
        };
        let (op, key) = match key_op {
            KeyOp::Keep => ("keep", String::new()),
            KeyOp::Set(k) => ("set", k.to_hex()),
            KeyOp::Remove => ("del", String::new()),
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
            .invoke_async(&mut self.conn())
            .await
            .map_err(store_err)?;
        if status != "ok" {
            return Ok(None);
        }
        Ok(Some(old.as_deref().map(key_from_hex).transpose()?))
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
        let (status, old_keys): (String, Vec<Option<String>>) = script
            .invoke_async(&mut self.conn())
            .await
            .map_err(store_err)?;
        if status != "ok" {
            return Ok(false);
        }
        // The tenant no longer maps any of the keys; pointers and emails are tidied up after.
        let mut changes = Vec::with_capacity(gone.len() * 2);
        let mut old_keys = old_keys.into_iter();
        for account in &gone {
            changes.push(Change::Account(account.id.clone()));
            if let Some(hex) = old_keys.next().flatten() {
                let old = key_from_hex(&hex)?;
                let owner = KeyOwner {
                    tenant: s.tenant.clone(),
                    account: account.id.clone(),
                };
                self.drop_key_pointer(&old, &owner).await?;
                changes.push(Change::KeyRemoved(old));
            }
            self.free_email(&account.email, &account.id).await?;
        }
        self.append_feed(&changes).await?;
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
        let email = self.claim_email(&account.email, &id).await?;
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
        self.append_feed(&[Change::Account(id), Change::KeyAdded(key_hash)])
            .await?;
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
            if self
                .update_account(&s, &account, KeyOp::Keep)
                .await?
                .is_some()
            {
                self.append_feed(&[Change::Account(id.to_owned())]).await?;
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
                self.append_feed(&[Change::Subscriptions(parent_id.to_owned())])
                    .await?;
                return Ok(());
            }
        }
        Err(too_busy(parent_id))
    }

    pub(super) async fn invite(&self, new: NewInvitation) -> StoreResult<Account> {
        let NewInvitation {
            child,
            token_hash,
            expires_at,
        } = new;
        let parent_id = match (&child.parent_id, child.role, child.status) {
            (Some(p), Role::Child, Status::Invited) => p.clone(),
            _ => {
                return Err(StoreError::Conflict(
                    "an invited account must be an invited child with a parent".into(),
                ))
            }
        };
        let mut parent = self.live_parent(&parent_id).await?;
        let email = self.claim_email(&child.email, &child.id).await?;
        let index = match self.claim_account_id(&child.id, &parent_id).await {
            Ok(c) => c,
            Err(e) => {
                self.roll_back(&[&email]).await;
                return Err(e);
            }
        };
        let token = match self
            .claim_invitation(&token_hash, &child.id, &parent_id, expires_at)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                self.roll_back(&[&email, &index]).await;
                return Err(e);
            }
        };
        let child_json = to_json(&child, "account")?;
        for _ in 0..CAS_ROUNDS {
            let status: String = self
                .scripts
                .invite
                .key(parent.tk.account(&parent_id))
                .key(parent.tk.account(&child.id))
                .key(parent.tk.children())
                .arg(&parent.raw)
                .arg(&child.id)
                .arg(&child_json)
                .invoke_async(&mut self.conn())
                .await
                .map_err(store_err)?;
            match status.as_str() {
                "ok" => {
                    self.append_feed(&[Change::Account(child.id.clone())])
                        .await?;
                    return Ok(child);
                }
                "exists" => {
                    self.roll_back(&[&email, &index, &token]).await;
                    return Err(StoreError::Conflict(format!(
                        "account `{}` exists already",
                        child.id
                    )));
                }
                // The parent changed since it was read: read it again (it may be gone now).
                _ => match self.live_parent(&parent_id).await {
                    Ok(p) => parent = p,
                    Err(e) => {
                        self.roll_back(&[&email, &index, &token]).await;
                        return Err(e);
                    }
                },
            }
        }
        Err(too_busy(&parent_id))
    }

    /// Writes the invitation record; `Conflict` if the token is in use.
    async fn claim_invitation(
        &self,
        token: &KeyHash,
        child: &str,
        tenant: &str,
        expires_at: u64,
    ) -> StoreResult<Claim> {
        let key = self.keys.invitation(token);
        let raw = to_json(
            &InvitationRecord {
                child: child.to_owned(),
                tenant: tenant.to_owned(),
                expires_at,
            },
            "invitation",
        )?;
        let drop_at_ms = expires_at
            .saturating_mul(1000)
            .max(now_ms())
            .saturating_add(INVITATION_GRACE.as_millis() as u64);
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&raw)
            .arg("NX")
            .arg("PXAT")
            .arg(drop_at_ms)
            .query_async(&mut self.conn())
            .await
            .map_err(store_err)?;
        if set.is_none() {
            return Err(StoreError::Conflict(
                "the invitation token is in use already".into(),
            ));
        }
        Ok(Claim {
            key,
            raw,
            fresh: true,
        })
    }

    pub(super) async fn accept_invitation(
        &self,
        token_hash: &KeyHash,
        key_hash: KeyHash,
        now: u64,
    ) -> StoreResult<Account> {
        let record_key = self.keys.invitation(token_hash);
        let raw: Option<String> = self.conn().get(&record_key).await.map_err(store_err)?;
        let record: InvitationRecord = match raw {
            Some(raw) => from_json(&raw, "invitation")?,
            None => return Err(StoreError::InvitationUnknown),
        };
        if now >= record.expires_at {
            return Err(StoreError::InvitationUnknown);
        }
        // The child must still be invited, in the tenant the invitation names.
        let invited = |s: &Option<Stored>| {
            s.as_ref()
                .is_some_and(|s| s.tenant == record.tenant && s.account.status == Status::Invited)
        };
        let mut child = self.stored(&record.child).await?;
        if !invited(&child) {
            return Err(StoreError::InvitationUnknown);
        }
        // Void once the parent is deleted (deleting a parent deletes its invited children in the
        // same script, so this only matters for parents deleted before that). A disabled parent's
        // invitation may still be accepted: the edge refuses the key until it is enabled.
        if !self
            .account(&record.tenant)
            .await?
            .is_some_and(|p| p.status != Status::Deleted)
        {
            return Err(StoreError::InvitationUnknown);
        }
        let owner = KeyOwner {
            tenant: record.tenant.clone(),
            account: record.child.clone(),
        };
        let key = self.claim_key(&key_hash, &owner).await?;
        for _ in 0..CAS_ROUNDS {
            let Some(s) = child.as_ref().filter(|_| invited(&child)) else {
                self.roll_back(&[&key]).await;
                return Err(StoreError::InvitationUnknown);
            };
            let mut active = s.account.clone();
            active.status = Status::Active;
            if self
                .update_account(s, &active, KeyOp::Set(&key_hash))
                .await?
                .is_some()
            {
                // Single use is already enforced (the child is active now); this only tidies up.
                if let Err(e) = self.conn().del::<_, ()>(&record_key).await {
                    tracing::warn!(error = %e, "redis store: could not remove a used invitation");
                }
                self.append_feed(&[
                    Change::Account(active.id.clone()),
                    Change::KeyAdded(key_hash),
                ])
                .await?;
                return Ok(active);
            }
            child = self.stored(&record.child).await?;
        }
        Err(too_busy(&record.child))
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
            let Some(old_key) = self.update_account(&s, &account, key_op).await? else {
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
                    self.drop_key_pointer(&old, &owner).await?;
                    changes.push(Change::KeyRemoved(old));
                }
                self.free_email(&account.email, id).await?;
            }
            self.append_feed(&changes).await?;
            return Ok(account);
        }
        Err(too_busy(id))
    }

    pub(super) async fn rotate_key(&self, id: &str, new_key: KeyHash) -> StoreResult<()> {
        let mut s = self.live(id).await?;
        if s.account.status == Status::Invited {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        let owner = KeyOwner {
            tenant: s.tenant.clone(),
            account: id.to_owned(),
        };
        let claim = self.claim_key(&new_key, &owner).await?;
        for _ in 0..CAS_ROUNDS {
            let account = s.account.clone();
            if let Some(old) = self
                .update_account(&s, &account, KeyOp::Set(&new_key))
                .await?
            {
                let mut changes = Vec::with_capacity(3);
                if let Some(old) = old.filter(|old| *old != new_key) {
                    // Removed before the rotation is reported done.
                    self.drop_key_pointer(&old, &owner).await?;
                    changes.push(Change::KeyRemoved(old));
                }
                changes.push(Change::KeyAdded(new_key));
                changes.push(Change::Account(id.to_owned()));
                self.append_feed(&changes).await?;
                return Ok(());
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
