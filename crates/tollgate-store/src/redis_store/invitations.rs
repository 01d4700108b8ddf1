//! Invitations in Redis: inviting, re-inviting an invited child whose invitation expired, freeing
//! the email of another tenant's expired invitee, and accepting.
//!
//! The tenant is the source of truth for which invitation is current: `T:inv` maps each invited
//! child to `<token hash hex> <expires_at>`, written in the same script as the child (invite) or
//! replaced in one script (re-invite), and checked by the accept script, so a replaced token is
//! void whatever the global `P:i:` records say. The email of an expired invitee of another tenant
//! is freed by deleting that child first (one script on its tenant's slot, which checks the
//! expiry), then taking the email claim over, as for any deleted holder: a writer dying in between
//! leaves a claim on a deleted account, which the next writer takes over.

use std::time::Duration;

use redis::AsyncCommands;
use tollgate_core::{Account, KeyHash, Status};

use super::conn::store_err;
use super::keys::{from_json, to_json, EmailClaim, InvitationRecord, KeyOwner};
use super::tree::{Claim, Stored};
use super::writes::{after_commit, key_from_hex, too_busy, CAS_ROUNDS};
use super::{now_ms, Inner};
use crate::{Change, NewInvitation, StoreError, StoreResult};

/// Invitation records outlive their expiry by this much before Redis drops them: expiry is judged
/// on the caller's `now`, which may lag Redis's clock, so Redis only tidies up.
const INVITATION_GRACE: Duration = Duration::from_secs(86_400);

/// The value of a child's entry in `T:inv`.
fn invitation_entry(token: &KeyHash, expires_at: u64) -> String {
    format!("{} {expires_at}", token.to_hex())
}

impl Inner {
    pub(super) async fn invite(&self, new: NewInvitation) -> StoreResult<Account> {
        let parent_id = new.parent_id()?;
        let NewInvitation {
            child,
            token_hash,
            expires_at,
        } = new;
        // The time of the call: a new account's creation time is the caller's now.
        let now = child.created_at;
        let mut parent = self.live_parent(&parent_id).await?;
        if let Some(again) = self
            .reinvite(
                &mut parent,
                &parent_id,
                &child.email,
                &token_hash,
                expires_at,
                now,
            )
            .await?
        {
            return Ok(again);
        }
        let email = self.claim_email(&child.email, &child.id, now).await?;
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
        let entry = invitation_entry(&token_hash, expires_at);
        for _ in 0..CAS_ROUNDS {
            let status: String = self
                .scripts
                .invite
                .key(parent.tk.account(&parent_id))
                .key(parent.tk.account(&child.id))
                .key(parent.tk.children())
                .key(parent.tk.invitations())
                .arg(&parent.raw)
                .arg(&child.id)
                .arg(&child_json)
                .arg(&entry)
                .invoke_async(&mut self.conn())
                .await
                .map_err(store_err)?;
            match status.as_str() {
                "ok" => {
                    after_commit(
                        "feed",
                        self.append_feed(&[Change::Account(child.id.clone())]).await,
                    );
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

    /// If the email is held by an invited child of `parent_id`, gives it the new invitation when
    /// its own expired at `now` (`Some`), or refuses with `EmailTaken` while it is valid. `None`:
    /// the email is not this parent's invitee's (any more); invite as usual. `parent` is the
    /// parent as the caller read it, read again here if it changed.
    async fn reinvite(
        &self,
        parent: &mut Stored,
        parent_id: &str,
        email: &str,
        token_hash: &KeyHash,
        expires_at: u64,
        now: u64,
    ) -> StoreResult<Option<Account>> {
        let current: Option<String> = self
            .conn()
            .get(self.keys.email_index(email))
            .await
            .map_err(store_err)?;
        let Some(current) = current else {
            return Ok(None);
        };
        let claim: EmailClaim = from_json(&current, "email claim")?;
        let ours = |h: &Stored| {
            h.tenant == parent_id
                && h.account.status == Status::Invited
                && h.account.parent_id.as_deref() == Some(parent_id)
        };
        let mut holder = match self.stored(&claim.account).await? {
            Some(h) if ours(&h) => h,
            _ => return Ok(None),
        };
        let id = holder.account.id.clone();
        let token = self
            .claim_invitation(token_hash, &id, parent_id, expires_at)
            .await?;
        let entry = invitation_entry(token_hash, expires_at);
        for _ in 0..CAS_ROUNDS {
            let (status, old): (String, Option<String>) = self
                .scripts
                .reinvite
                .key(parent.tk.account(parent_id))
                .key(parent.tk.account(&id))
                .key(parent.tk.invitations())
                .arg(&parent.raw)
                .arg(&holder.raw)
                .arg(&id)
                .arg(&entry)
                .arg(now)
                .invoke_async(&mut self.conn())
                .await
                .map_err(store_err)?;
            match status.as_str() {
                "ok" => {
                    self.drop_invitation_record(old.as_deref()).await;
                    after_commit("feed", self.append_feed(&[Change::Account(id)]).await);
                    return Ok(Some(holder.account));
                }
                "held" => {
                    self.roll_back(&[&token]).await;
                    return Err(StoreError::EmailTaken);
                }
                _ => {
                    let again = match self.live_parent(parent_id).await {
                        Ok(p) => self.stored(&id).await.map(|h| (p, h)),
                        Err(e) => Err(e),
                    };
                    match again {
                        Ok((p, Some(h))) if ours(&h) => (*parent, holder) = (p, h),
                        Ok(_) => {
                            self.roll_back(&[&token]).await;
                            return Ok(None);
                        }
                        Err(e) => {
                            self.roll_back(&[&token]).await;
                            return Err(e);
                        }
                    }
                }
            }
        }
        self.roll_back(&[&token]).await;
        Err(too_busy(&id))
    }

    /// Deletes an invited holder of an email whose invitation expired at `now`, so the email can
    /// be taken over. True if the holder is deleted now (by this call or another).
    pub(super) async fn expire_invitee(&self, holder: Stored, now: u64) -> StoreResult<bool> {
        let id = holder.account.id.clone();
        let mut s = holder;
        for _ in 0..CAS_ROUNDS {
            let mut deleted = s.account.clone();
            deleted.status = Status::Deleted;
            let (status, old): (String, Option<String>) = self
                .scripts
                .expire_invitee
                .key(s.tk.account(&id))
                .key(s.tk.invitations())
                .arg(&s.raw)
                .arg(to_json(&deleted, "account")?)
                .arg(&id)
                .arg(now)
                .invoke_async(&mut self.conn())
                .await
                .map_err(store_err)?;
            match status.as_str() {
                "ok" => {
                    self.drop_invitation_record(old.as_deref()).await;
                    after_commit("feed", self.append_feed(&[Change::Account(id)]).await);
                    return Ok(true);
                }
                "held" => return Ok(false),
                _ => match self.stored(&id).await? {
                    Some(n) if n.account.status == Status::Invited => s = n,
                    Some(n) => return Ok(n.account.status == Status::Deleted),
                    None => return Ok(false),
                },
            }
        }
        Err(too_busy(&id))
    }

    /// Removes the global record of a replaced or voided invitation (`<token hex> <expires_at>`);
    /// only tidying: the tenant's entry already decides that it is void.
    async fn drop_invitation_record(&self, entry: Option<&str>) {
        let Some(hex) = entry.and_then(|e| e.split(' ').next()) else {
            return;
        };
        let Ok(token) = key_from_hex(hex) else {
            return;
        };
        if let Err(e) = self.conn().del::<_, ()>(self.keys.invitation(&token)).await {
            tracing::warn!(error = %e, "redis store: could not remove a replaced invitation");
        }
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
        // Read in the tenant the record names, not through the account index: on Cluster that
        // may be on a master that is down while the tenant's is up.
        let mut child = self.stored_in(record.tenant.clone(), &record.child).await?;
        if !invited(&child) {
            return Err(StoreError::InvitationUnknown);
        }
        // Void once the parent is deleted (deleting a parent deletes its invited children in the
        // same script, so this only matters for parents deleted before that). A disabled parent's
        // invitation may still be accepted: the edge refuses the key until it is enabled.
        if !self
            .stored_in(record.tenant.clone(), &record.tenant)
            .await?
            .is_some_and(|p| p.account.status != Status::Deleted)
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
            let status: String = self
                .scripts
                .accept
                .key(s.tk.account(&active.id))
                .key(s.tk.key_of())
                .key(s.tk.invitations())
                .arg(&s.raw)
                .arg(to_json(&active, "account")?)
                .arg(&active.id)
                .arg(key_hash.to_hex())
                .arg(token_hash.to_hex())
                .invoke_async(&mut self.conn())
                .await
                .map_err(store_err)?;
            match status.as_str() {
                "ok" => {
                    // Single use is already enforced (the child is active now); this only
                    // tidies up.
                    if let Err(e) = self.conn().del::<_, ()>(&record_key).await {
                        tracing::warn!(error = %e, "redis store: could not remove a used invitation");
                    }
                    after_commit(
                        "feed",
                        self.append_feed(&[
                            Change::Account(active.id.clone()),
                            Change::KeyAdded(key_hash),
                        ])
                        .await,
                    );
                    return Ok(active);
                }
                // Another invitation of this child replaced this one.
                "void" => {
                    self.roll_back(&[&key]).await;
                    return Err(StoreError::InvitationUnknown);
                }
                _ => child = self.stored_in(record.tenant.clone(), &record.child).await?,
            }
        }
        Err(too_busy(&record.child))
    }
}
