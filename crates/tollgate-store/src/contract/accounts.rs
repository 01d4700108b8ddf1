//! Contract checks for parents and accounts: creation and reads, emails, statuses, key rotation,
//! children, subscriptions and the operator's parent settings.

use tollgate_core::{Limit, LimitOverride, LimitOverrides, Overage, Role, Status};

use super::{
    account_of, assert_err, fresh_email, fresh_id, fresh_key, id_by_key, make_child, make_invite,
    make_parent, parent_account, sub, EXPIRES, NOW,
};
use crate::{NewParent, Store, StoreError};

pub async fn ping_and_backend(store: &dyn Store) {
    store.ping().await.expect("ping_and_backend: ping failed");
    let name = store.backend();
    assert!(
        name == "embedded" || name == "redis",
        "ping_and_backend: backend() is {name:?}, expected \"embedded\" or \"redis\""
    );
}

pub async fn parent_create_and_read(store: &dyn Store) {
    const CHECK: &str = "parent_create_and_read";
    let key = fresh_key();
    let mut wanted = parent_account(&fresh_email());
    wanted.limits.child = Some(Limit { rps: 7, burst: 9 }.into());
    let created = store
        .create_parent(NewParent {
            account: wanted.clone(),
            key_hash: key,
            subscriptions: vec![
                sub("whois", 1000, Overage::Deny),
                sub("drs", 50, Overage::Allow),
            ],
        })
        .await
        .unwrap_or_else(|e| panic!("{CHECK}: create_parent failed: {e:?}"));
    assert_eq!(
        created, wanted,
        "{CHECK}: create_parent returned another account"
    );
    assert_eq!(
        account_of(store, &wanted.id).await.as_ref(),
        Some(&wanted),
        "{CHECK}: account()"
    );
    assert_eq!(
        store.account_by_key(&key).await.unwrap().as_ref(),
        Some(&wanted),
        "{CHECK}: account_by_key()"
    );
    assert_eq!(
        store.subscriptions(&wanted.id).await.unwrap(),
        vec![
            sub("drs", 50, Overage::Allow),
            sub("whois", 1000, Overage::Deny)
        ],
        "{CHECK}: subscriptions are not the ones given, sorted by pool"
    );
    assert!(
        store.children(&wanted.id).await.unwrap().is_empty(),
        "{CHECK}: a new parent has children"
    );
    assert!(
        store.pool_usage(&wanted.id).await.unwrap().is_empty(),
        "{CHECK}: a new parent has usage"
    );
    assert_eq!(
        account_of(store, &fresh_id()).await,
        None,
        "{CHECK}: an unknown id resolves"
    );
    assert_eq!(
        id_by_key(store, &fresh_key()).await,
        None,
        "{CHECK}: an unknown key resolves"
    );
}

pub async fn parent_email_taken_case_insensitive(store: &dyn Store) {
    const CHECK: &str = "parent_email_taken_case_insensitive";
    let email = fresh_email();
    make_parent(store, &email).await;
    for variant in [
        email.clone(),
        email.to_uppercase(),
        format!(" {} ", email.to_lowercase()),
    ] {
        let key = fresh_key();
        let account = parent_account(&variant);
        let id = account.id.clone();
        let res = store
            .create_parent(NewParent {
                account,
                key_hash: key,
                subscriptions: vec![sub("whois", 1, Overage::Deny)],
            })
            .await;
        assert_err!(
            res,
            StoreError::EmailTaken,
            "{CHECK}: second parent with {variant:?}"
        );
        assert_eq!(
            account_of(store, &id).await,
            None,
            "{CHECK}: the refused parent was stored"
        );
        assert_eq!(
            id_by_key(store, &key).await,
            None,
            "{CHECK}: the refused parent's key resolves"
        );
    }
    // Case-insensitive beyond ASCII too.
    let tag = fresh_id();
    make_parent(store, &format!("ÜNÏ.{tag}@exämple.com")).await;
    let account = parent_account(&format!("ünï.{tag}@EXÄMPLE.com"));
    let res = store
        .create_parent(NewParent {
            account,
            key_hash: fresh_key(),
            subscriptions: Vec::new(),
        })
        .await;
    assert_err!(
        res,
        StoreError::EmailTaken,
        "{CHECK}: a parent whose email differs only in non-ASCII case"
    );
}

pub async fn status_lifecycle(store: &dyn Store) {
    const CHECK: &str = "status_lifecycle";
    let (parent, parent_key) = make_parent(store, &fresh_email()).await;
    let (child, key) = make_child(store, &parent.id).await;

    let disabled = store.set_status(&child.id, Status::Disabled).await.unwrap();
    assert_eq!(disabled.status, Status::Disabled, "{CHECK}: disable");
    let by_key = store.account_by_key(&key).await.unwrap();
    assert_eq!(
        by_key.map(|a| a.status),
        Some(Status::Disabled),
        "{CHECK}: a disabled account's key must still resolve"
    );
    let again = store.set_status(&child.id, Status::Disabled).await;
    assert_eq!(
        again.map(|a| a.status),
        Ok(Status::Disabled),
        "{CHECK}: disabling twice is a no-op"
    );
    let enabled = store.set_status(&child.id, Status::Active).await.unwrap();
    assert_eq!(enabled.status, Status::Active, "{CHECK}: enable");
    let again = store.set_status(&child.id, Status::Active).await;
    assert_eq!(
        again.map(|a| a.status),
        Ok(Status::Active),
        "{CHECK}: enabling twice is a no-op"
    );

    let (invited, _) = make_invite(store, &parent.id, &fresh_email(), EXPIRES).await;
    assert_err!(
        store.set_status(&invited.id, Status::Active).await,
        StoreError::Conflict(_),
        "{CHECK}: enabling an invited child"
    );
    assert_eq!(
        account_of(store, &invited.id).await.map(|a| a.status),
        Some(Status::Invited),
        "{CHECK}: the invited child after a refused enable"
    );

    let deleted = store.set_status(&child.id, Status::Deleted).await.unwrap();
    assert_eq!(deleted.status, Status::Deleted, "{CHECK}: delete");
    assert_eq!(
        account_of(store, &child.id).await.map(|a| a.status),
        Some(Status::Deleted),
        "{CHECK}: a deleted account keeps its record"
    );
    assert_eq!(
        id_by_key(store, &key).await,
        None,
        "{CHECK}: a deleted account's key still resolves"
    );
    // Deleted is permanent: enabling or disabling is a conflict, deleting again a no-op.
    for status in [Status::Active, Status::Disabled] {
        assert_err!(
            store.set_status(&child.id, status).await,
            StoreError::Conflict(_),
            "{CHECK}: set_status({status:?}) on a deleted account"
        );
    }
    assert_eq!(
        store
            .set_status(&child.id, Status::Deleted)
            .await
            .map(|a| a.status),
        Ok(Status::Deleted),
        "{CHECK}: deleting a deleted account is a no-op"
    );
    assert_eq!(
        account_of(store, &child.id).await.map(|a| a.status),
        Some(Status::Deleted),
        "{CHECK}: a deleted account after refused status changes"
    );
    assert_eq!(
        id_by_key(store, &key).await,
        None,
        "{CHECK}: a deleted account's key resolves after refused status changes"
    );
    assert_err!(
        store.rotate_key(&child.id, &key, fresh_key()).await,
        StoreError::NotFound(_),
        "{CHECK}: rotate_key on a deleted account"
    );
    assert_err!(
        store.set_status(&fresh_id(), Status::Disabled).await,
        StoreError::NotFound(_),
        "{CHECK}: set_status on a missing account"
    );

    // The same for a parent, and its parent-only writes.
    store
        .set_status(&parent.id, Status::Disabled)
        .await
        .unwrap();
    store.set_status(&parent.id, Status::Deleted).await.unwrap();
    assert_eq!(
        id_by_key(store, &parent_key).await,
        None,
        "{CHECK}: a deleted parent's key still resolves"
    );
    assert_err!(
        store.update_parent(&parent.id, Some(false), None).await,
        StoreError::NotFound(_),
        "{CHECK}: update_parent on a deleted parent"
    );
    assert_err!(
        store
            .put_subscription(&parent.id, sub("whois", 1, Overage::Deny))
            .await,
        StoreError::NotFound(_),
        "{CHECK}: put_subscription on a deleted parent"
    );
    assert_err!(
        store.set_status(&parent.id, Status::Active).await,
        StoreError::Conflict(_),
        "{CHECK}: enabling a deleted parent"
    );
}

pub async fn rotate_key_replaces_key(store: &dyn Store) {
    const CHECK: &str = "rotate_key_replaces_key";
    let (parent, old_parent_key) = make_parent(store, &fresh_email()).await;
    let (child, old_child_key) = make_child(store, &parent.id).await;
    for (who, id, old) in [
        ("parent", &parent.id, old_parent_key),
        ("child", &child.id, old_child_key),
    ] {
        let new = fresh_key();
        store
            .rotate_key(id, &old, new)
            .await
            .unwrap_or_else(|e| panic!("{CHECK}: rotating the {who}'s key failed: {e:?}"));
        assert_eq!(
            id_by_key(store, &old).await,
            None,
            "{CHECK}: the {who}'s old key still resolves"
        );
        assert_eq!(
            id_by_key(store, &new).await.as_deref(),
            Some(id.as_str()),
            "{CHECK}: the {who}'s new key"
        );
        // The old key is not the account's any more: rotating with it is refused, changing nothing.
        let refused = fresh_key();
        assert_err!(
            store.rotate_key(id, &old, refused).await,
            StoreError::NotFound(_),
            "{CHECK}: rotating the {who}'s key with a rotated-away key"
        );
        assert_eq!(
            id_by_key(store, &refused).await,
            None,
            "{CHECK}: a rotation with the {who}'s rotated-away key mapped its key"
        );
        let newer = fresh_key();
        store.rotate_key(id, &new, newer).await.unwrap();
        assert_eq!(
            id_by_key(store, &new).await,
            None,
            "{CHECK}: the {who}'s second-to-last key still resolves"
        );
        assert_eq!(
            id_by_key(store, &newer).await.as_deref(),
            Some(id.as_str()),
            "{CHECK}: the {who}'s newest key"
        );
    }
    let (invited, _) = make_invite(store, &parent.id, &fresh_email(), EXPIRES).await;
    let key = fresh_key();
    assert_err!(
        store.rotate_key(&invited.id, &fresh_key(), key).await,
        StoreError::NotFound(_),
        "{CHECK}: rotating an invited child's key"
    );
    assert_eq!(
        id_by_key(store, &key).await,
        None,
        "{CHECK}: a refused rotation mapped its key"
    );
    assert_err!(
        store
            .rotate_key(&fresh_id(), &fresh_key(), fresh_key())
            .await,
        StoreError::NotFound(_),
        "{CHECK}: rotating a missing account's key"
    );
}

/// Rotation is a compare-and-swap on the current key: of many concurrent rotations presenting the
/// same key, exactly one succeeds and its new key is the one that resolves; the others are
/// `NotFound` (the key they presented was rotated away) and map nothing.
pub async fn concurrent_rotations_one_wins(store: &dyn Store) {
    const CHECK: &str = "concurrent_rotations_one_wins";
    const N: usize = 8;
    let (parent, parent_key) = make_parent(store, &fresh_email()).await;
    let (child, child_key) = make_child(store, &parent.id).await;
    for (who, id, old) in [
        ("parent", &parent.id, parent_key),
        ("child", &child.id, child_key),
    ] {
        let new: Vec<_> = (0..N).map(|_| fresh_key()).collect();
        let results =
            futures_util::future::join_all(new.iter().map(|k| store.rotate_key(id, &old, *k)))
                .await;
        let winners: Vec<_> = new
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "{CHECK}: {N} concurrent rotations of the {who}'s key: {results:?}"
        );
        for r in &results {
            assert!(
                matches!(r, Ok(()) | Err(StoreError::NotFound(_))),
                "{CHECK}: a losing rotation of the {who}'s key answered {r:?}"
            );
        }
        assert_eq!(
            id_by_key(store, &old).await,
            None,
            "{CHECK}: the {who}'s old key still resolves"
        );
        for k in &new {
            let want = (*k == winners[0]).then(|| id.clone());
            assert_eq!(
                id_by_key(store, k).await,
                want,
                "{CHECK}: the {who}'s keys after the race (winner resolves, losers do not)"
            );
        }
    }
}

pub async fn children_in_creation_order(store: &dyn Store) {
    const CHECK: &str = "children_in_creation_order";
    let (parent, _) = make_parent(store, &fresh_email()).await;
    let (other, _) = make_parent(store, &fresh_email()).await;
    let (first, _) = make_child(store, &parent.id).await;
    let (second, token) = make_invite(store, &parent.id, &fresh_email(), EXPIRES).await;
    let (elsewhere, _) = make_child(store, &other.id).await;
    let (third, _) = make_invite(store, &parent.id, &fresh_email(), EXPIRES).await;
    store.set_status(&first.id, Status::Deleted).await.unwrap();
    store
        .accept_invitation(&token, fresh_key(), NOW)
        .await
        .unwrap();

    let kids = store.children(&parent.id).await.unwrap();
    let got: Vec<(&str, Status)> = kids.iter().map(|c| (c.id.as_str(), c.status)).collect();
    assert_eq!(
        got,
        [
            (first.id.as_str(), Status::Deleted),
            (second.id.as_str(), Status::Active),
            (third.id.as_str(), Status::Invited),
        ],
        "{CHECK}: children in creation order, deleted included"
    );
    assert!(
        kids.iter()
            .all(|c| c.parent_id.as_deref() == Some(parent.id.as_str()) && c.role == Role::Child),
        "{CHECK}: children with the wrong parent or role: {kids:?}"
    );
    let others = store.children(&other.id).await.unwrap();
    assert_eq!(
        others.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [elsewhere.id.as_str()],
        "{CHECK}: another parent's children"
    );
    assert!(
        store.children(&fresh_id()).await.unwrap().is_empty(),
        "{CHECK}: a missing parent's children"
    );
}

pub async fn subscriptions_put_replace_sorted(store: &dyn Store) {
    const CHECK: &str = "subscriptions_put_replace_sorted";
    let (parent, _) = make_parent(store, &fresh_email()).await;
    assert!(
        store.subscriptions(&parent.id).await.unwrap().is_empty(),
        "{CHECK}: a parent created without subscriptions has some"
    );
    store
        .put_subscription(&parent.id, sub("whois", 100, Overage::Deny))
        .await
        .unwrap();
    store
        .put_subscription(&parent.id, sub("drs", 5, Overage::Allow))
        .await
        .unwrap();
    store
        .put_subscription(&parent.id, sub("ip-geo", 0, Overage::Deny))
        .await
        .unwrap();
    store
        .put_subscription(&parent.id, sub("whois", 200, Overage::Allow))
        .await
        .unwrap();
    assert_eq!(
        store.subscriptions(&parent.id).await.unwrap(),
        vec![
            sub("drs", 5, Overage::Allow),
            sub("ip-geo", 0, Overage::Deny),
            sub("whois", 200, Overage::Allow)
        ],
        "{CHECK}: put replaces the pool's subscription; the list is sorted by pool"
    );

    let (child, _) = make_child(store, &parent.id).await;
    assert_err!(
        store
            .put_subscription(&child.id, sub("whois", 1, Overage::Deny))
            .await,
        StoreError::NotFound(_),
        "{CHECK}: a subscription for a child"
    );
    assert!(
        store.subscriptions(&child.id).await.unwrap().is_empty(),
        "{CHECK}: a child has subscriptions"
    );
    assert_err!(
        store
            .put_subscription(&fresh_id(), sub("whois", 1, Overage::Deny))
            .await,
        StoreError::NotFound(_),
        "{CHECK}: a subscription for a missing parent"
    );
}

pub async fn update_parent_team_and_limits(store: &dyn Store) {
    const CHECK: &str = "update_parent_team_and_limits";
    let mut wanted = parent_account(&fresh_email());
    wanted.team = false;
    let parent = store
        .create_parent(NewParent {
            account: wanted,
            key_hash: fresh_key(),
            subscriptions: Vec::new(),
        })
        .await
        .unwrap();
    assert!(!parent.team, "{CHECK}: team off at creation");

    let on = store
        .update_parent(&parent.id, Some(true), None)
        .await
        .unwrap();
    assert!(
        on.team && on.limits.is_empty(),
        "{CHECK}: switching team on: {on:?}"
    );
    // A partial override (burst only) is kept as such: rps follows the configured default.
    let limits = LimitOverrides {
        parent: Some(
            Limit {
                rps: 500,
                burst: 1000,
            }
            .into(),
        ),
        child: Some(LimitOverride {
            rps: None,
            burst: Some(40),
        }),
    };
    let limited = store
        .update_parent(&parent.id, None, Some(limits))
        .await
        .unwrap();
    assert!(limited.team, "{CHECK}: setting limits switched team off");
    assert_eq!(limited.limits, limits, "{CHECK}: limits");
    let unchanged = store.update_parent(&parent.id, None, None).await.unwrap();
    assert_eq!(
        unchanged, limited,
        "{CHECK}: an empty update changed the parent"
    );
    assert_eq!(
        account_of(store, &parent.id).await,
        Some(limited.clone()),
        "{CHECK}: account() after updates"
    );
    let cleared = store
        .update_parent(&parent.id, Some(false), Some(LimitOverrides::default()))
        .await
        .unwrap();
    assert!(
        !cleared.team && cleared.limits.is_empty(),
        "{CHECK}: clearing: {cleared:?}"
    );
    let mut expected = parent.clone();
    expected.team = false;
    assert_eq!(
        account_of(store, &parent.id).await,
        Some(expected),
        "{CHECK}: only team and limits change"
    );

    let (child, _) = make_child(store, &parent.id).await;
    assert_err!(
        store.update_parent(&child.id, Some(true), None).await,
        StoreError::NotFound(_),
        "{CHECK}: update_parent on a child"
    );
    assert_err!(
        store.update_parent(&fresh_id(), Some(true), None).await,
        StoreError::NotFound(_),
        "{CHECK}: update_parent on a missing account"
    );
}
