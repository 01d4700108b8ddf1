//! The contract suite every `Store` backend must pass.
//!
//! [`run_all`] runs every check; each check is also public so a backend's tests can run one alone.
//! Checks use fresh random ids, emails and keys and look only at what they created, so the suite
//! can run on a shared store (a Redis that other tests use, or one run after another). They panic
//! with a message naming the check and what differed.
//!
//! Beyond the trait docs, the suite pins down these choices, so every backend answers alike:
//! - a deleted account keeps its record (status `Deleted`) and its place among its parent's
//!   children, but no key resolves to it (except a child deleted with its parent: its key still
//!   resolves to it, so it is refused as `parent_disabled`) and its email is free for anyone;
//!   enabling or disabling it is a `Conflict`, deleting it again a no-op;
//! - enabling or disabling an `Invited` child is a `Conflict` (it has no key to enable);
//! - `accept_invitation` at `now == expires_at` is already too late;
//! - an invited child whose invitation expired holds its email no longer: its parent re-inviting
//!   it keeps the member (new token, the old one void), anyone else taking the email deletes it;
//! - `usage` rows are sorted by account id (whatever order the ids were given in), then day,
//!   product and pool;
//! - `read_feed` with a zero `wait` returns at once; an unparseable cursor is `FeedTrimmed`.

#![allow(clippy::unwrap_used)]

mod accounts;
mod credits;
mod feed;
mod invitations;
mod usage;

use std::time::Duration;

use tollgate_core::{
    generate_id, generate_key, generate_token, Account, KeyHash, LimitOverrides, Overage, Role,
    Status, Subscription,
};

use crate::{NewInvitation, NewParent, Store, StoreError};

pub use accounts::{
    children_in_creation_order, concurrent_rotations_one_wins, parent_create_and_read,
    parent_email_taken_case_insensitive, ping_and_backend, rotate_key_replaces_key,
    status_lifecycle, subscriptions_put_replace_sorted, update_parent_team_and_limits,
};
pub use credits::{credit_leases, next_op};
pub use feed::{feed_events_for_every_write, feed_rejects_bogus_cursor, feed_wakes_waiting_reader};
pub use invitations::{
    deleting_a_parent_deletes_its_children, email_freed_after_delete,
    expired_invitation_frees_email, invitation_accept_single_use, invitation_expiry,
    invitation_of_deleted_child, invite_email_taken, invite_needs_live_parent,
};
pub use usage::{
    pool_usage_rolls_up_children, record_usage_exact_and_idempotent, usage_range_filtering,
};

/// "Now" for invitations, in unix seconds (the store takes time as an argument).
pub const NOW: u64 = 1_780_000_000;
/// A week after [`NOW`]: the default invitation lifetime.
pub const EXPIRES: u64 = NOW + 7 * 86_400;

/// Runs every check, one after another.
pub async fn run_all(store: &dyn Store) {
    ping_and_backend(store).await;
    parent_create_and_read(store).await;
    parent_email_taken_case_insensitive(store).await;
    invite_email_taken(store).await;
    email_freed_after_delete(store).await;
    invite_needs_live_parent(store).await;
    invitation_accept_single_use(store).await;
    invitation_expiry(store).await;
    invitation_of_deleted_child(store).await;
    expired_invitation_frees_email(store).await;
    deleting_a_parent_deletes_its_children(store).await;
    status_lifecycle(store).await;
    rotate_key_replaces_key(store).await;
    concurrent_rotations_one_wins(store).await;
    children_in_creation_order(store).await;
    subscriptions_put_replace_sorted(store).await;
    update_parent_team_and_limits(store).await;
    record_usage_exact_and_idempotent(store).await;
    usage_range_filtering(store).await;
    pool_usage_rolls_up_children(store).await;
    credit_leases(store).await;
    feed_events_for_every_write(store).await;
    feed_wakes_waiting_reader(store).await;
    feed_rejects_bogus_cursor(store).await;
}

// ---- helpers shared by the checks ----

/// Panics unless `$res` is an `Err` matching `$pat`.
macro_rules! assert_err {
    ($res:expr, $pat:pat, $($what:tt)+) => {
        match $res {
            Err($pat) => {}
            other => panic!(
                "{}: expected Err({}), got {:?}",
                format!($($what)+),
                stringify!($pat),
                other
            ),
        }
    };
}
pub(crate) use assert_err;

pub fn fresh_id() -> String {
    generate_id(&mut rand::rng(), "acc_")
}

/// A unique address; the mixed case lets checks vary it.
pub fn fresh_email() -> String {
    format!("{}@Example.com", generate_id(&mut rand::rng(), "User."))
}

pub fn fresh_key() -> KeyHash {
    generate_key(&mut rand::rng()).hash()
}

pub fn fresh_token() -> KeyHash {
    generate_token(&mut rand::rng()).hash()
}

pub fn sub(pool: &str, credits: u64, overage: Overage) -> Subscription {
    Subscription {
        pool: pool.to_owned(),
        credits,
        overage,
    }
}

pub fn parent_account(email: &str) -> Account {
    Account {
        id: fresh_id(),
        role: Role::Parent,
        status: Status::Active,
        email: email.to_owned(),
        parent_id: None,
        team: true,
        limits: LimitOverrides::default(),
        created_at: NOW,
    }
}

pub fn child_account(parent_id: &str, email: &str) -> Account {
    Account {
        id: fresh_id(),
        role: Role::Child,
        status: Status::Invited,
        email: email.to_owned(),
        parent_id: Some(parent_id.to_owned()),
        team: false,
        limits: LimitOverrides::default(),
        created_at: NOW,
    }
}

/// A new active parent (team on, no subscriptions) and its key's hash.
pub async fn make_parent(store: &dyn Store, email: &str) -> (Account, KeyHash) {
    let key = fresh_key();
    let account = store
        .create_parent(NewParent {
            account: parent_account(email),
            key_hash: key,
            subscriptions: Vec::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("create_parent({email}) failed: {e:?}"));
    (account, key)
}

/// A new invited child of `parent_id` and its invitation token's hash.
pub async fn make_invite(
    store: &dyn Store,
    parent_id: &str,
    email: &str,
    expires_at: u64,
) -> (Account, KeyHash) {
    let token = fresh_token();
    let child = store
        .invite(NewInvitation {
            child: child_account(parent_id, email),
            token_hash: token,
            expires_at,
        })
        .await
        .unwrap_or_else(|e| panic!("invite({email}) under {parent_id} failed: {e:?}"));
    (child, token)
}

/// A new active child of `parent_id` (invited and accepted) and its key's hash.
pub async fn make_child(store: &dyn Store, parent_id: &str) -> (Account, KeyHash) {
    make_child_with_email(store, parent_id, &fresh_email()).await
}

async fn account_of(store: &dyn Store, id: &str) -> Option<Account> {
    store
        .account(id)
        .await
        .unwrap_or_else(|e| panic!("account({id}) failed: {e:?}"))
}

async fn id_by_key(store: &dyn Store, key: &KeyHash) -> Option<String> {
    store
        .account_by_key(key)
        .await
        .unwrap_or_else(|e| panic!("account_by_key({key:?}) failed: {e:?}"))
        .map(|a| a.id)
}

/// A new active child of `parent_id` with this email, and its key's hash.
pub async fn make_child_with_email(
    store: &dyn Store,
    parent_id: &str,
    email: &str,
) -> (Account, KeyHash) {
    let (child, token) = make_invite(store, parent_id, email, EXPIRES).await;
    let key = fresh_key();
    let child = store
        .accept_invitation(&token, key, NOW)
        .await
        .unwrap_or_else(|e| panic!("accept_invitation for {} failed: {e:?}", child.id));
    (child, key)
}

/// A read of the feed that fails the check instead of hanging if the backend overstays `wait`.
pub(crate) async fn read_feed_bounded(
    store: &dyn Store,
    cursor: &str,
    wait: Duration,
    check: &str,
) -> Result<Vec<crate::FeedEvent>, StoreError> {
    match tokio::time::timeout(wait + Duration::from_secs(5), store.read_feed(cursor, wait)).await {
        Ok(res) => res,
        Err(_) => {
            panic!("{check}: read_feed({cursor:?}, {wait:?}) did not return within {wait:?} + 5s")
        }
    }
}
