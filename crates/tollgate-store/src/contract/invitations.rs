//! Contract checks for invitations: emails taken and freed across trees, single use, expiry, and
//! which parents may invite.

use tollgate_core::{Account, KeyHash, Status};

use super::{
    account_of, assert_err, child_account, fresh_email, fresh_id, fresh_key, fresh_token,
    id_by_key, make_child, make_child_with_email, make_invite, make_parent, parent_account,
    EXPIRES, NOW,
};
use crate::{NewInvitation, NewParent, Store, StoreError};

pub async fn invite_email_taken(store: &dyn Store) {
    const CHECK: &str = "invite_email_taken";
    let parent_email = fresh_email();
    let (parent, _) = make_parent(store, &parent_email).await;
    let (other_parent, _) = make_parent(store, &fresh_email()).await;

    let res = store
        .invite(NewInvitation {
            child: child_account(&parent.id, &parent_email.to_uppercase()),
            token_hash: fresh_token(),
            expires_at: EXPIRES,
        })
        .await;
    assert_err!(
        res,
        StoreError::EmailTaken,
        "{CHECK}: inviting the parent's own email"
    );

    let child_email = fresh_email();
    let (child, token) = make_invite(store, &parent.id, &child_email, EXPIRES).await;
    for (who, email) in [
        ("same tree, invited", child_email.to_lowercase()),
        ("other tree, invited", child_email.to_uppercase()),
    ] {
        let under = if who.starts_with("same") {
            &parent.id
        } else {
            &other_parent.id
        };
        let res = store
            .invite(NewInvitation {
                child: child_account(under, &email),
                token_hash: fresh_token(),
                expires_at: EXPIRES,
            })
            .await;
        assert_err!(
            res,
            StoreError::EmailTaken,
            "{CHECK}: inviting an invited child's email ({who})"
        );
    }
    store
        .accept_invitation(&token, fresh_key(), NOW)
        .await
        .unwrap();
    let res = store
        .invite(NewInvitation {
            child: child_account(&other_parent.id, &child_email),
            token_hash: fresh_token(),
            expires_at: EXPIRES,
        })
        .await;
    assert_err!(
        res,
        StoreError::EmailTaken,
        "{CHECK}: inviting an active child's email"
    );
    let res = store
        .create_parent(NewParent {
            account: parent_account(&child_email.to_uppercase()),
            key_hash: fresh_key(),
            subscriptions: Vec::new(),
        })
        .await;
    assert_err!(
        res,
        StoreError::EmailTaken,
        "{CHECK}: a parent with a child's email"
    );
    let kids = store.children(&parent.id).await.unwrap();
    assert_eq!(
        kids.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [child.id.as_str()],
        "{CHECK}: refused invitations left children behind"
    );
}

pub async fn email_freed_after_delete(store: &dyn Store) {
    const CHECK: &str = "email_freed_after_delete";
    let email = fresh_email();
    let (first, _) = make_parent(store, &email).await;
    store.set_status(&first.id, Status::Deleted).await.unwrap();
    let (second, _) = make_parent(store, &email.to_uppercase()).await;
    assert_ne!(first.id, second.id, "{CHECK}: ids must differ");

    let child_email = fresh_email();
    let (child, _) = make_child_with_email(store, &second.id, &child_email).await;
    store.set_status(&child.id, Status::Deleted).await.unwrap();
    let (again, token) = make_invite(store, &second.id, &child_email.to_lowercase(), EXPIRES).await;
    assert_eq!(again.status, Status::Invited, "{CHECK}: re-invited child");
    store
        .accept_invitation(&token, fresh_key(), NOW)
        .await
        .unwrap_or_else(|e| {
            panic!("{CHECK}: accepting the re-invitation of a freed email failed: {e:?}")
        });

    // An invitation withdrawn before it was accepted frees its email too.
    let pending_email = fresh_email();
    let (pending, _) = make_invite(store, &second.id, &pending_email, EXPIRES).await;
    store
        .set_status(&pending.id, Status::Deleted)
        .await
        .unwrap();
    make_invite(store, &second.id, &pending_email, EXPIRES).await;
}

pub async fn invite_needs_live_parent(store: &dyn Store) {
    const CHECK: &str = "invite_needs_live_parent";
    let (parent, _) = make_parent(store, &fresh_email()).await;
    let (child, _) = make_child(store, &parent.id).await;
    let (deleted, _) = make_parent(store, &fresh_email()).await;
    store
        .set_status(&deleted.id, Status::Deleted)
        .await
        .unwrap();
    for (what, parent_id) in [
        ("a missing parent", fresh_id()),
        ("a deleted parent", deleted.id.clone()),
        ("a child as parent", child.id.clone()),
    ] {
        let email = fresh_email();
        let res = store
            .invite(NewInvitation {
                child: child_account(&parent_id, &email),
                token_hash: fresh_token(),
                expires_at: EXPIRES,
            })
            .await;
        assert_err!(
            res,
            StoreError::NotFound(_),
            "{CHECK}: inviting under {what}"
        );
        // The refused invitation must not hold the email.
        make_invite(store, &parent.id, &email, EXPIRES).await;
    }
}

pub async fn invitation_accept_single_use(store: &dyn Store) {
    const CHECK: &str = "invitation_accept_single_use";
    let (parent, _) = make_parent(store, &fresh_email()).await;
    let email = fresh_email();
    let (invited, token) = make_invite(store, &parent.id, &email, EXPIRES).await;
    assert_eq!(invited.status, Status::Invited, "{CHECK}: invite() status");
    assert_eq!(
        invited.parent_id.as_deref(),
        Some(parent.id.as_str()),
        "{CHECK}: invite() parent"
    );
    assert_eq!(
        account_of(store, &invited.id).await.as_ref(),
        Some(&invited),
        "{CHECK}: account() of the invited child"
    );

    let key = fresh_key();
    let active = store
        .accept_invitation(&token, key, NOW)
        .await
        .unwrap_or_else(|e| panic!("{CHECK}: accept failed: {e:?}"));
    let mut expected = invited.clone();
    expected.status = Status::Active;
    assert_eq!(active, expected, "{CHECK}: accept_invitation() result");
    assert_eq!(
        account_of(store, &invited.id).await,
        Some(expected.clone()),
        "{CHECK}: account() after accept"
    );
    assert_eq!(
        store.account_by_key(&key).await.unwrap(),
        Some(expected),
        "{CHECK}: the new key"
    );

    let second_key = fresh_key();
    assert_err!(
        store.accept_invitation(&token, second_key, NOW).await,
        StoreError::InvitationUnknown,
        "{CHECK}: a used token"
    );
    assert_eq!(
        id_by_key(store, &second_key).await,
        None,
        "{CHECK}: a refused accept mapped its key"
    );
    assert_eq!(
        id_by_key(store, &key).await.as_deref(),
        Some(invited.id.as_str()),
        "{CHECK}: the first key after a refused second accept"
    );
    assert_err!(
        store
            .accept_invitation(&fresh_token(), fresh_key(), NOW)
            .await,
        StoreError::InvitationUnknown,
        "{CHECK}: an unknown token"
    );
}

pub async fn invitation_expiry(store: &dyn Store) {
    const CHECK: &str = "invitation_expiry";
    let (parent, _) = make_parent(store, &fresh_email()).await;
    let (late, token) = make_invite(store, &parent.id, &fresh_email(), NOW + 100).await;
    let key = fresh_key();
    assert_err!(
        store.accept_invitation(&token, key, NOW + 100).await,
        StoreError::InvitationUnknown,
        "{CHECK}: accepting at expires_at"
    );
    assert_eq!(
        id_by_key(store, &key).await,
        None,
        "{CHECK}: an expired accept mapped its key"
    );
    assert_eq!(
        account_of(store, &late.id).await.map(|a| a.status),
        Some(Status::Invited),
        "{CHECK}: the child after an expired accept"
    );

    let (child, token) = make_invite(store, &parent.id, &fresh_email(), NOW + 100).await;
    let accepted = store.accept_invitation(&token, fresh_key(), NOW + 99).await;
    assert_eq!(
        accepted.map(|a| a.id),
        Ok(child.id),
        "{CHECK}: accepting one second before expiry"
    );
}

pub async fn invitation_of_deleted_child(store: &dyn Store) {
    const CHECK: &str = "invitation_of_deleted_child";
    let (parent, _) = make_parent(store, &fresh_email()).await;
    let (child, token) = make_invite(store, &parent.id, &fresh_email(), EXPIRES).await;
    store.set_status(&child.id, Status::Deleted).await.unwrap();
    let key = fresh_key();
    assert_err!(
        store.accept_invitation(&token, key, NOW).await,
        StoreError::InvitationUnknown,
        "{CHECK}: accepting for a deleted child"
    );
    assert_eq!(
        id_by_key(store, &key).await,
        None,
        "{CHECK}: the refused key resolves"
    );
    assert_eq!(
        account_of(store, &child.id).await.map(|a| a.status),
        Some(Status::Deleted),
        "{CHECK}: the child came back"
    );
}

/// Deleting a parent deletes its children at once: emails are freed, pending invitations are
/// void, the parent's key stops; the children's keys still resolve, to the deleted children (so
/// they are refused as `parent_disabled`). A disabled parent's invitation may still be accepted.
pub async fn deleting_a_parent_deletes_its_children(store: &dyn Store) {
    const CHECK: &str = "deleting_a_parent_deletes_its_children";
    let (parent, parent_key) = make_parent(store, &fresh_email()).await;
    let active_email = fresh_email();
    let (active, active_key) = make_child_with_email(store, &parent.id, &active_email).await;
    let (disabled, disabled_key) = make_child(store, &parent.id).await;
    store
        .set_status(&disabled.id, Status::Disabled)
        .await
        .unwrap();
    let (gone, _) = make_child(store, &parent.id).await;
    store.set_status(&gone.id, Status::Deleted).await.unwrap();
    let invited_email = fresh_email();
    let (invited, token) = make_invite(store, &parent.id, &invited_email, EXPIRES).await;

    let deleted = store.set_status(&parent.id, Status::Deleted).await.unwrap();
    assert_eq!(deleted.status, Status::Deleted, "{CHECK}: delete");
    let statuses: Vec<(String, Status)> = store
        .children(&parent.id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c.status))
        .collect();
    assert_eq!(
        statuses,
        [&active, &disabled, &gone, &invited]
            .map(|c| (c.id.clone(), Status::Deleted))
            .to_vec(),
        "{CHECK}: the children after their parent was deleted"
    );
    assert_eq!(
        id_by_key(store, &parent_key).await,
        None,
        "{CHECK}: the parent's key still resolves"
    );
    for (who, key, id) in [
        ("active child", active_key, &active.id),
        ("disabled child", disabled_key, &disabled.id),
    ] {
        let resolved = store.account_by_key(&key).await.unwrap();
        assert_eq!(
            resolved.map(|a| (a.id, a.status)),
            Some((id.clone(), Status::Deleted)),
            "{CHECK}: the {who}'s key resolves to it, deleted"
        );
    }
    let key = fresh_key();
    assert_err!(
        store.accept_invitation(&token, key, NOW).await,
        StoreError::InvitationUnknown,
        "{CHECK}: accepting an invitation of a deleted parent"
    );
    assert_eq!(
        id_by_key(store, &key).await,
        None,
        "{CHECK}: the refused key resolves"
    );
    // The emails are free for anyone.
    let (other, _) = make_parent(store, &fresh_email()).await;
    make_child_with_email(store, &other.id, &active_email.to_uppercase()).await;
    make_parent(store, &invited_email.to_lowercase()).await;

    // Disabling is reversible: the invitation stays good.
    let (paused, _) = make_parent(store, &fresh_email()).await;
    let (child, token) = make_invite(store, &paused.id, &fresh_email(), EXPIRES).await;
    store
        .set_status(&paused.id, Status::Disabled)
        .await
        .unwrap();
    let key = fresh_key();
    let accepted = store.accept_invitation(&token, key, NOW).await;
    assert_eq!(
        accepted.map(|a| (a.id, a.status)),
        Ok((child.id.clone(), Status::Active)),
        "{CHECK}: accepting an invitation of a disabled parent"
    );
    assert_eq!(
        id_by_key(store, &key).await,
        Some(child.id),
        "{CHECK}: the key of a disabled parent's new child"
    );
    assert_eq!(
        account_of(store, &paused.id).await.map(|a| a.status),
        Some(Status::Disabled),
        "{CHECK}: the parent stays disabled"
    );
}

/// Invites `email` under `parent_id` at `now` (the new child's `created_at`), expiring at
/// `expires_at`, with a fresh token. Returns the store's answer and the token.
async fn invite_at(
    store: &dyn Store,
    parent_id: &str,
    email: &str,
    now: u64,
    expires_at: u64,
) -> (Result<Account, StoreError>, KeyHash) {
    let mut child = child_account(parent_id, email);
    child.created_at = now;
    let token = fresh_token();
    let res = store
        .invite(NewInvitation {
            child,
            token_hash: token,
            expires_at,
        })
        .await;
    (res, token)
}

/// An expired, never-accepted invitation does not hold its email: its own parent re-inviting
/// gives the same member a fresh token (the old one is void); anyone else taking the email
/// deletes that member. A valid one holds the email against everyone.
pub async fn expired_invitation_frees_email(store: &dyn Store) {
    const CHECK: &str = "expired_invitation_frees_email";
    let (a, _) = make_parent(store, &fresh_email()).await;
    let (b, _) = make_parent(store, &fresh_email()).await;
    let exp = NOW + 100;

    // While valid: taken for its own parent, another tenant and a new parent alike.
    let email = fresh_email();
    let (invited, old_token) = make_invite(store, &a.id, &email, exp).await;
    for (who, parent) in [("its own parent", &a.id), ("another tenant", &b.id)] {
        let (res, _) = invite_at(store, parent, &email.to_uppercase(), exp - 1, exp + 500).await;
        assert_err!(
            res,
            StoreError::EmailTaken,
            "{CHECK}: re-inviting a valid invitation's email ({who})"
        );
    }
    let mut new_parent = parent_account(&email);
    new_parent.created_at = exp - 1;
    assert_err!(
        store
            .create_parent(NewParent {
                account: new_parent,
                key_hash: fresh_key(),
                subscriptions: Vec::new(),
            })
            .await,
        StoreError::EmailTaken,
        "{CHECK}: a parent with a valid invitation's email"
    );

    // Expired, its own parent: the same member, a new token and expiry.
    let (again, new_token) = invite_at(store, &a.id, &email.to_lowercase(), exp, exp + 500).await;
    let again = again.unwrap_or_else(|e| panic!("{CHECK}: re-inviting after expiry: {e:?}"));
    assert_eq!(again, invited, "{CHECK}: the re-invited member");
    let kids: Vec<String> = store
        .children(&a.id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        kids,
        std::slice::from_ref(&invited.id),
        "{CHECK}: children after re-invite"
    );
    // The old token is void even on a clock that has not reached its expiry.
    assert_err!(
        store.accept_invitation(&old_token, fresh_key(), NOW).await,
        StoreError::InvitationUnknown,
        "{CHECK}: the replaced token"
    );
    // Valid again: it holds the email once more.
    let (res, _) = invite_at(store, &b.id, &email, exp + 1, exp + 900).await;
    assert_err!(
        res,
        StoreError::EmailTaken,
        "{CHECK}: another tenant during the new invitation"
    );
    let key = fresh_key();
    let active = store
        .accept_invitation(&new_token, key, exp + 1)
        .await
        .unwrap_or_else(|e| panic!("{CHECK}: accepting the new token: {e:?}"));
    assert_eq!(
        (active.id.as_str(), active.status),
        (invited.id.as_str(), Status::Active),
        "{CHECK}: accepted re-invitation"
    );
    assert_eq!(
        id_by_key(store, &key).await.as_deref(),
        Some(invited.id.as_str()),
        "{CHECK}: the accepted key"
    );
    // Accepted: expiry no longer matters.
    let (res, _) = invite_at(store, &a.id, &email, exp + 10_000, exp + 20_000).await;
    assert_err!(
        res,
        StoreError::EmailTaken,
        "{CHECK}: re-inviting an active member"
    );

    // Expired, another tenant: the stale member is deleted, the new one holds the email.
    let email = fresh_email();
    let (stale, stale_token) = make_invite(store, &a.id, &email, exp).await;
    let (taken, b_token) = invite_at(store, &b.id, &email.to_uppercase(), exp, exp + 500).await;
    let taken = taken.unwrap_or_else(|e| panic!("{CHECK}: another tenant after expiry: {e:?}"));
    assert_ne!(taken.id, stale.id, "{CHECK}: another tenant's member id");
    assert_eq!(
        account_of(store, &stale.id).await.map(|s| s.status),
        Some(Status::Deleted),
        "{CHECK}: the expired invitee after another tenant took its email"
    );
    let listed: Vec<(String, Status)> = store
        .children(&a.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.id == stale.id)
        .map(|c| (c.id, c.status))
        .collect();
    assert_eq!(
        listed,
        [(stale.id.clone(), Status::Deleted)],
        "{CHECK}: the expired invitee in its parent's children"
    );
    assert_err!(
        store
            .accept_invitation(&stale_token, fresh_key(), NOW)
            .await,
        StoreError::InvitationUnknown,
        "{CHECK}: the deleted invitee's token"
    );
    let (res, _) = invite_at(store, &a.id, &email, exp + 1, exp + 900).await;
    assert_err!(
        res,
        StoreError::EmailTaken,
        "{CHECK}: the first tenant re-inviting an email another took"
    );
    store
        .accept_invitation(&b_token, fresh_key(), exp + 1)
        .await
        .unwrap_or_else(|e| panic!("{CHECK}: accepting the other tenant's invitation: {e:?}"));

    // Expired, a new parent takes the email.
    let email = fresh_email();
    let (stale, _) = make_invite(store, &a.id, &email, exp).await;
    let mut new_parent = parent_account(&email.to_uppercase());
    new_parent.created_at = exp;
    store
        .create_parent(NewParent {
            account: new_parent,
            key_hash: fresh_key(),
            subscriptions: Vec::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("{CHECK}: a parent with an expired invitation's email: {e:?}"));
    assert_eq!(
        account_of(store, &stale.id).await.map(|s| s.status),
        Some(Status::Deleted),
        "{CHECK}: the expired invitee after a new parent took its email"
    );
}
