//! Contract checks for the change feed: which events each write appends, in what order, and that
//! a waiting reader wakes when a write lands.

use std::time::{Duration, Instant};

use tollgate_core::{KeyHash, Overage, Status};

use super::{
    assert_err, fresh_email, fresh_key, make_invite, parent_account, read_feed_bounded, sub,
    EXPIRES, NOW,
};
use crate::{Change, NewParent, Store, StoreError};

/// Reads from `cursor` until `n` changes passing `ours` arrived (others are skipped: the store may
/// be shared), each read waiting up to `wait`. Returns them and the cursor after the last event.
async fn collect(
    store: &dyn Store,
    cursor: String,
    ours: impl Fn(&Change) -> bool,
    n: usize,
    wait: Duration,
    check: &str,
) -> (Vec<Change>, String) {
    let deadline = Instant::now() + wait + Duration::from_secs(10);
    let mut cursor = cursor;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{check}: only {got:?} of {n} expected changes arrived"
        );
        let events = read_feed_bounded(store, &cursor, wait.min(left), check)
            .await
            .unwrap_or_else(|e| panic!("{check}: read_feed({cursor:?}) failed: {e:?}"));
        for ev in events {
            assert_ne!(
                ev.cursor, cursor,
                "{check}: an event carries the cursor it was read after"
            );
            cursor = ev.cursor;
            if ours(&ev.change) {
                got.push(ev.change);
            }
        }
    }
    (got, cursor)
}

pub async fn feed_events_for_every_write(store: &dyn Store) {
    const CHECK: &str = "feed_events_for_every_write";
    let head = store.feed_head().await.unwrap();
    let mut expected = Vec::new();

    let parent_key = fresh_key();
    let parent = store
        .create_parent(NewParent {
            account: parent_account(&fresh_email()),
            key_hash: parent_key,
            subscriptions: vec![sub("whois", 10, Overage::Deny)],
        })
        .await
        .unwrap();
    let p = parent.id.clone();
    expected.extend([Change::Account(p.clone()), Change::KeyAdded(parent_key)]);

    store.update_parent(&p, Some(false), None).await.unwrap();
    expected.push(Change::Account(p.clone()));
    store
        .put_subscription(&p, sub("drs", 5, Overage::Allow))
        .await
        .unwrap();
    expected.push(Change::Subscriptions(p.clone()));

    let (child, token) = make_invite(store, &p, &fresh_email(), EXPIRES).await;
    let c = child.id.clone();
    expected.push(Change::Account(c.clone()));
    let child_key = fresh_key();
    store
        .accept_invitation(&token, child_key, NOW)
        .await
        .unwrap();
    expected.extend([Change::Account(c.clone()), Change::KeyAdded(child_key)]);

    store.set_status(&c, Status::Disabled).await.unwrap();
    expected.push(Change::Account(c.clone()));
    store.set_status(&c, Status::Active).await.unwrap();
    expected.push(Change::Account(c.clone()));

    let rotated = fresh_key();
    store.rotate_key(&c, &child_key, rotated).await.unwrap();
    expected.extend([
        Change::KeyRemoved(child_key),
        Change::KeyAdded(rotated),
        Change::Account(c.clone()),
    ]);

    store.set_status(&c, Status::Deleted).await.unwrap();
    expected.extend([Change::Account(c.clone()), Change::KeyRemoved(rotated)]);

    // Deleting the parent deletes its live child too (the one deleted before is not repeated),
    // whose key stays mapped (refused as `parent_disabled`).
    let (second, token) = make_invite(store, &p, &fresh_email(), EXPIRES).await;
    let c2 = second.id.clone();
    let second_key = fresh_key();
    store
        .accept_invitation(&token, second_key, NOW)
        .await
        .unwrap();
    expected.extend([
        Change::Account(c2.clone()),
        Change::Account(c2.clone()),
        Change::KeyAdded(second_key),
    ]);
    store.set_status(&p, Status::Deleted).await.unwrap();
    expected.extend([
        Change::Account(p.clone()),
        Change::KeyRemoved(parent_key),
        Change::Account(c2.clone()),
    ]);

    let keys: [KeyHash; 4] = [parent_key, child_key, rotated, second_key];
    let ours = |change: &Change| match change {
        Change::Account(id) | Change::Subscriptions(id) => *id == p || *id == c || *id == c2,
        Change::KeyAdded(k) | Change::KeyRemoved(k) => keys.contains(k),
    };
    let (got, cursor) = collect(
        store,
        head,
        ours,
        expected.len(),
        Duration::from_secs(1),
        CHECK,
    )
    .await;
    assert_eq!(got, expected, "{CHECK}: the feed after create, update, subscribe, invite, accept, disable, enable, rotate, delete");

    // Nothing of ours after that: no duplicates.
    let more = read_feed_bounded(store, &cursor, Duration::from_millis(100), CHECK)
        .await
        .unwrap();
    let extra: Vec<&Change> = more.iter().map(|e| &e.change).filter(|c| ours(c)).collect();
    assert!(
        extra.is_empty(),
        "{CHECK}: changes repeated after the last expected one: {extra:?}"
    );
}

pub async fn feed_wakes_waiting_reader(store: &dyn Store) {
    const CHECK: &str = "feed_wakes_waiting_reader";
    let head = store.feed_head().await.unwrap();
    let account = parent_account(&fresh_email());
    let id = account.id.clone();
    let wait = Duration::from_secs(10);
    let started = Instant::now();
    let reader = collect(
        store,
        head,
        |c| *c == Change::Account(id.clone()),
        1,
        wait,
        CHECK,
    );
    let writer = async {
        // Long enough for the reader to be parked in its wait, so this tests the wake-up.
        tokio::time::sleep(Duration::from_millis(200)).await;
        store
            .create_parent(NewParent {
                account: account.clone(),
                key_hash: fresh_key(),
                subscriptions: Vec::new(),
            })
            .await
            .unwrap();
    };
    let ((got, _), ()) = tokio::join!(reader, writer);
    assert_eq!(
        got,
        vec![Change::Account(id.clone())],
        "{CHECK}: the awaited change"
    );
    let took = started.elapsed();
    assert!(
        took < wait / 2,
        "{CHECK}: read_feed returned after {took:?}: it should wake when the write lands, not at the end of its {wait:?} wait"
    );
}

pub async fn feed_rejects_bogus_cursor(store: &dyn Store) {
    const CHECK: &str = "feed_rejects_bogus_cursor";
    for bogus in ["not-a-cursor", "", "-1"] {
        assert_err!(
            read_feed_bounded(store, bogus, Duration::ZERO, CHECK).await,
            StoreError::FeedTrimmed,
            "{CHECK}: read_feed({bogus:?})"
        );
    }
    let head = store.feed_head().await.unwrap();
    let started = Instant::now();
    read_feed_bounded(store, &head, Duration::ZERO, CHECK)
        .await
        .unwrap_or_else(|e| panic!("{CHECK}: read_feed(head, 0) failed: {e:?}"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{CHECK}: read_feed with a zero wait took {:?}",
        started.elapsed()
    );
}
