//! Contract checks for invitations: emails taken and freed across trees, single use, expiry, and
//! which parents may invite.

use tollgate_core::Status;

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
