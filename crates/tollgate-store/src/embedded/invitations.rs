//! Invitations in the embedded store: inviting (a new child, or a fresh invitation for an invited
//! child whose invitation expired) and accepting, each one write transaction.

use tollgate_core::{normalize_email, Account, KeyHash, Status};

use redb::ReadableTable;

use super::tables::{get_account, put_account, Ctx};
use super::Inner;
use crate::{Change, NewInvitation, StoreError, StoreResult};

impl Inner {
    pub(super) fn invite(&self, new: NewInvitation) -> StoreResult<Account> {
        let parent_id = new.parent_id()?;
        let NewInvitation {
            child,
            token_hash,
            expires_at,
        } = new;
        // The time of the call: a new account's creation time is the caller's now.
        let now = child.created_at;
        self.write_tree(|t| {
            t.live_parent(&parent_id)?;
            // The parent's own invited child whose invitation expired gets a fresh one: same
            // member, new token and expiry; the old token is void.
            if let Some(holder) = t.email_holder(&normalize_email(&child.email))? {
                if let Some(stale) = t.expired_invitee(&holder, now)? {
                    if stale.parent_id.as_deref() == Some(parent_id.as_str()) {
                        t.set_invitation(&stale.id, &token_hash, expires_at)?;
                        let changes = vec![Change::Account(stale.id.clone())];
                        return Ok((stale, changes));
                    }
                }
            }
            let (email, mut changes) = t.claim_email(&child.email, now)?;
            t.check_new_account(&child.id)?;
            put_account(&mut t.accounts, &child)?;
            t.emails
                .insert(email.as_str(), child.id.as_str())
                .ctx("write email index")?;
            t.set_invitation(&child.id, &token_hash, expires_at)?;
            let seq = t.next_child_seq()?;
            t.children
                .insert((parent_id.as_str(), seq), child.id.as_str())
                .ctx("write child")?;
            changes.push(Change::Account(child.id.clone()));
            Ok((child, changes))
        })
    }

    pub(super) fn accept_invitation(
        &self,
        token_hash: &KeyHash,
        key_hash: KeyHash,
        now: u64,
    ) -> StoreResult<Account> {
        self.write_tree(|t| {
            let (child_id, expires_at) = t
                .invitations
                .get(&token_hash.0)
                .ctx("read invitation")?
                .map(|g| {
                    let (id, exp) = g.value();
                    (id.to_owned(), exp)
                })
                .ok_or(StoreError::InvitationUnknown)?;
            if now >= expires_at {
                return Err(StoreError::InvitationUnknown);
            }
            let mut child = match get_account(&t.accounts, &child_id)? {
                Some(c) if c.status == Status::Invited => c,
                _ => return Err(StoreError::InvitationUnknown),
            };
            // Only the child's current invitation (children invited before the index existed
            // have no entry, and one invitation).
            let superseded = t
                .child_invitations
                .get(child_id.as_str())
                .ctx("read child invitation")?
                .is_some_and(|g| g.value().0 != &token_hash.0);
            if superseded {
                return Err(StoreError::InvitationUnknown);
            }
            // Void once its parent is deleted (a disabled parent's may still be accepted: the
            // edge refuses the key until the parent is enabled).
            let parent_id = child.parent_id.as_deref().unwrap_or_default();
            if !get_account(&t.accounts, parent_id)?.is_some_and(|p| p.status != Status::Deleted) {
                return Err(StoreError::InvitationUnknown);
            }
            t.check_key_free(&key_hash)?;
            child.status = Status::Active;
            put_account(&mut t.accounts, &child)?;
            t.set_key(&child_id, &key_hash)?;
            t.invitations
                .remove(&token_hash.0)
                .ctx("remove invitation")?;
            t.child_invitations
                .remove(child_id.as_str())
                .ctx("remove child invitation")?;
            Ok((
                child,
                vec![Change::Account(child_id), Change::KeyAdded(key_hash)],
            ))
        })
    }
}
