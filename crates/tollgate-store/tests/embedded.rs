//! `EmbeddedStore`: the contract suite, plus what only a file-backed single-node store promises
//! (surviving a reopen and a killed process, pruning old batch ids, the in-memory feed's bounds).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_core::{Day, KeyHash, Overage, Status, Totals, UsageRow};
use tollgate_store::contract::{
    self, fresh_email, fresh_key, make_child, make_invite, make_parent, sub, EXPIRES, NOW,
};
use tollgate_store::embedded::EmbeddedOptions;
use tollgate_store::{Change, EmbeddedStore, NewParent, Store, StoreError, UsageBatch, UsageDelta};

fn store_in(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(&dir.join("tollgate.db")).unwrap()
}

fn delta(account: &str, parent: &str, day: Day, requests: u64, credits: u64) -> UsageDelta {
    UsageDelta {
        account_id: account.into(),
        parent_id: parent.into(),
        product: "whois".into(),
        pool: "whois".into(),
        day,
        requests,
        credits,
    }
}

/// The first batch of the writer `writer`.
fn batch(writer: &str, deltas: Vec<UsageDelta>) -> UsageBatch {
    UsageBatch {
        writer: writer.to_owned(),
        seq: 0,
        deltas,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_suite_passes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    contract::run_all(&store).await;
}

#[tokio::test]
async fn contract_suite_passes_on_a_current_thread_runtime() {
    // Every redb call runs on the blocking pool, so one runtime thread is enough.
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    contract::run_all(&store).await;
}

#[tokio::test]
async fn usage_in_the_first_table_layout_moves_over_on_open() {
    // Versions before the usage tables were keyed by `tollgate::Text` wrote `&str` keys into
    // `usage` and `pool_usage`. Opening such a file moves the rows, then counting goes on.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.db");
    type S = &'static str;
    const OLD_USAGE: redb::TableDefinition<(S, i32, S, S), (u64, u64)> =
        redb::TableDefinition::new("usage");
    const OLD_POOLS: redb::TableDefinition<(S, S), u64> = redb::TableDefinition::new("pool_usage");
    let today = Day(20_000);
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(OLD_USAGE).unwrap();
            t.insert(("acc_old", today.0, "whois", "whois"), (3, 30))
                .unwrap();
            t.insert(("acc_old", today.0 - 1, "whois", "whois"), (1, 10))
                .unwrap();
            let mut p = txn.open_table(OLD_POOLS).unwrap();
            p.insert(("par_old", "whois"), 40).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = store_in(dir.path());
    let rows = store
        .usage(&["acc_old".to_owned()], Day(today.0 - 1), today)
        .await
        .unwrap();
    let totals: Vec<(i32, u64, u64)> = rows
        .iter()
        .map(|r| (r.day.0, r.totals.requests, r.totals.credits))
        .collect();
    assert_eq!(totals, vec![(today.0 - 1, 1, 10), (today.0, 3, 30)]);
    assert_eq!(
        store.pool_usage("par_old").await.unwrap(),
        vec![("whois".to_owned(), 40)]
    );
    store
        .record_usage(&batch("b1", vec![delta("acc_old", "par_old", today, 2, 5)]))
        .await
        .unwrap();
    let rows = store
        .usage(&["acc_old".to_owned()], today, today)
        .await
        .unwrap();
    assert_eq!(
        rows[0].totals,
        Totals {
            requests: 5,
            credits: 35
        }
    );
    assert_eq!(
        store.pool_usage("par_old").await.unwrap(),
        vec![("whois".to_owned(), 45)]
    );
    drop(store);
    // The old tables are gone: a second open moves nothing twice.
    let store = store_in(dir.path());
    assert_eq!(
        store.pool_usage("par_old").await.unwrap(),
        vec![("whois".to_owned(), 45)]
    );
}

#[tokio::test]
async fn open_creates_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/tollgate.db");
    let store = EmbeddedStore::open(&path).unwrap();
    store.ping().await.unwrap();
    assert!(path.exists());
    assert_eq!(store.path(), path);
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let day = Day::from_ymd(2026, 12, 4).unwrap();
    let (parent, parent_key, child, child_key, pending, token, old_head) = {
        let store = store_in(dir.path());
        let (parent, parent_key) = make_parent(&store, &fresh_email()).await;
        store
            .put_subscription(&parent.id, sub("whois", 1000, Overage::Deny))
            .await
            .unwrap();
        let (child, child_key) = make_child(&store, &parent.id).await;
        let (pending, token) = make_invite(&store, &parent.id, &fresh_email(), EXPIRES).await;
        store
            .record_usage(&batch(
                "b1",
                vec![
                    delta(&child.id, &parent.id, day, 3, 30),
                    delta(&parent.id, &parent.id, day, 1, 10),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            store
                .lease_credits(&parent.id, "whois", 1, 16, OP)
                .await
                .unwrap(),
            (16, 984)
        );
        let head = store.feed_head().await.unwrap();
        (parent, parent_key, child, child_key, pending, token, head)
    };

    let store = store_in(dir.path());
    assert_eq!(
        store.account(&parent.id).await.unwrap(),
        Some(parent.clone())
    );
    assert_eq!(
        store.account_by_key(&parent_key).await.unwrap(),
        Some(parent.clone())
    );
    assert_eq!(
        store.account_by_key(&child_key).await.unwrap(),
        Some(child.clone())
    );
    assert_eq!(
        store.children(&parent.id).await.unwrap(),
        vec![child.clone(), pending.clone()]
    );
    assert_eq!(
        store.subscriptions(&parent.id).await.unwrap(),
        vec![sub("whois", 1000, Overage::Deny)]
    );
    let ids = vec![parent.id.clone(), child.id.clone()];
    let rows = store.usage(&ids, day, day).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows.iter().map(|r| r.totals.credits).sum::<u64>(),
        40,
        "{rows:?}"
    );
    assert_eq!(
        store.pool_usage(&parent.id).await.unwrap(),
        vec![("whois".to_owned(), 40)]
    );

    // What is remembered across the restart: taken emails, seen batch ids, leases, invitations.
    let res = store
        .create_parent(NewParent {
            account: contract::parent_account(&child.email),
            key_hash: fresh_key(),
            subscriptions: Vec::new(),
        })
        .await;
    assert_eq!(res, Err(StoreError::EmailTaken));
    store
        .record_usage(&batch("b1", vec![delta(&child.id, &parent.id, day, 3, 30)]))
        .await
        .unwrap();
    assert_eq!(
        store.pool_usage(&parent.id).await.unwrap(),
        vec![("whois".to_owned(), 40)],
        "a batch retried after a restart was counted twice"
    );
    assert_eq!(
        store
            .lease_credits(&parent.id, "whois", 1, 1, OP)
            .await
            .unwrap(),
        (1, 983),
        "leased credits were forgotten"
    );
    let accepted = store
        .accept_invitation(&token, fresh_key(), NOW)
        .await
        .unwrap();
    assert_eq!(accepted.id, pending.id);

    // The feed is per process: a cursor from before the restart asks for a full reload.
    assert_ne!(old_head, "0");
    assert_eq!(
        store.read_feed(&old_head, Duration::ZERO).await,
        Err(StoreError::FeedTrimmed)
    );
}

/// Run as a child process by `a_killed_process_loses_no_committed_write`: writes, then aborts
/// without any destructor running, as a `kill -9` would.
async fn crash_child(path: &Path) {
    let store = EmbeddedStore::open(path).unwrap();
    let mut account = contract::parent_account("crash@example.com");
    account.id = "acc_crash".into();
    store
        .create_parent(NewParent {
            account,
            key_hash: KeyHash::of("crash-key"),
            subscriptions: vec![sub("whois", 5, Overage::Allow)],
        })
        .await
        .unwrap();
    for i in 0..20 {
        store
            .record_usage(&batch(
                &format!("crash-{i}"),
                vec![delta("acc_crash", "acc_crash", Day(20_000), 1, 2)],
            ))
            .await
            .unwrap();
    }
    store
        .set_status("acc_crash", Status::Disabled)
        .await
        .unwrap();
    std::process::abort();
}

#[tokio::test]
async fn a_killed_process_loses_no_committed_write() {
    if let Some(path) = std::env::var_os("TOLLGATE_STORE_CRASH_DB") {
        crash_child(Path::new(&path)).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_killed_process_loses_no_committed_write",
            "--nocapture",
        ])
        .env("TOLLGATE_STORE_CRASH_DB", &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child was meant to abort");

    let store = EmbeddedStore::open(&path).unwrap();
    let account = store.account("acc_crash").await.unwrap().unwrap();
    assert_eq!(account.status, Status::Disabled);
    assert_eq!(
        store
            .account_by_key(&KeyHash::of("crash-key"))
            .await
            .unwrap()
            .map(|a| a.id),
        Some("acc_crash".to_owned())
    );
    assert_eq!(
        store.pool_usage("acc_crash").await.unwrap(),
        vec![("whois".to_owned(), 40)]
    );
    assert_eq!(
        store
            .usage(&["acc_crash".to_owned()], Day(20_000), Day(20_000))
            .await
            .unwrap(),
        vec![UsageRow {
            account_id: "acc_crash".into(),
            product: "whois".into(),
            pool: "whois".into(),
            day: Day(20_000),
            totals: Totals {
                requests: 20,
                credits: 40
            },
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_add_up_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(store_in(dir.path()));
    let (parent, _) = make_parent(&*store, &fresh_email()).await;
    let (child, _) = make_child(&*store, &parent.id).await;
    let day = Day::from_ymd(2026, 12, 4).unwrap();
    const TASKS: u64 = 32;
    const BATCHES: u64 = 10;

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        let (p, c) = (parent.id.clone(), child.id.clone());
        tasks.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                let one = UsageBatch {
                    writer: format!("node{t}"),
                    seq: b,
                    deltas: vec![delta(&c, &p, day, 1, t + 1), delta(&p, &p, day, 1, 1)],
                };
                store.record_usage(&one).await.unwrap();
                // Every other batch is retried, as after a lost reply.
                if b % 2 == 0 {
                    store.record_usage(&one).await.unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let child_credits: u64 = (1..=TASKS).sum::<u64>() * BATCHES;
    let rows = store
        .usage(&[child.id.clone(), parent.id.clone()], day, day)
        .await
        .unwrap();
    let of = |id: &str| {
        rows.iter()
            .find(|r| r.account_id == id)
            .map(|r| r.totals)
            .unwrap()
    };
    assert_eq!(
        of(&child.id),
        Totals {
            requests: TASKS * BATCHES,
            credits: child_credits
        }
    );
    assert_eq!(
        of(&parent.id),
        Totals {
            requests: TASKS * BATCHES,
            credits: TASKS * BATCHES
        }
    );
    assert_eq!(
        store.pool_usage(&parent.id).await.unwrap(),
        vec![("whois".to_owned(), child_credits + TASKS * BATCHES)]
    );
}

#[tokio::test]
async fn batch_ids_are_forgotten_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(NOW));
    let clock = now.clone();
    let store = EmbeddedStore::open_with(
        &dir.path().join("t.db"),
        EmbeddedOptions {
            clock: Arc::new(move || clock.load(Ordering::SeqCst)),
            ..EmbeddedOptions::default()
        },
    )
    .unwrap();
    let day = Day(20_000);
    let old = batch("old", vec![delta("a", "p", day, 1, 1)]);
    store.record_usage(&old).await.unwrap();

    now.store(NOW + 86_400, Ordering::SeqCst);
    store.record_usage(&old).await.unwrap();
    assert_eq!(
        store.pool_usage("p").await.unwrap(),
        vec![("whois".to_owned(), 1)],
        "a retry within the retention counted"
    );

    // A later batch prunes ids older than two days; the old id is then new again.
    now.store(NOW + 2 * 86_400 + 1, Ordering::SeqCst);
    store
        .record_usage(&batch("new", vec![delta("a", "p", day, 1, 1)]))
        .await
        .unwrap();
    store.record_usage(&old).await.unwrap();
    assert_eq!(
        store.pool_usage("p").await.unwrap(),
        vec![("whois".to_owned(), 3)]
    );
}

#[tokio::test]
async fn the_feed_keeps_only_its_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(
        &dir.path().join("t.db"),
        EmbeddedOptions {
            feed_capacity: 4,
            ..EmbeddedOptions::default()
        },
    )
    .unwrap();
    assert_eq!(store.feed_head().await.unwrap(), "0");
    let (parent, parent_key) = make_parent(&store, &fresh_email()).await;
    assert_eq!(store.feed_head().await.unwrap(), "2");
    make_child(&store, &parent.id).await; // invite: 1 event, accept: 2
    assert_eq!(
        store.read_feed("0", Duration::ZERO).await,
        Err(StoreError::FeedTrimmed)
    );
    let events = store.read_feed("1", Duration::ZERO).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.cursor.as_str()).collect::<Vec<_>>(),
        ["2", "3", "4", "5"]
    );
    assert_eq!(events[0].change, Change::KeyAdded(parent_key));
    assert_eq!(store.feed_head().await.unwrap(), "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_in_another_task_wakes_on_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(store_in(dir.path()));
    let head = store.feed_head().await.unwrap();
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let events = store
                .read_feed(&head, Duration::from_secs(20))
                .await
                .unwrap();
            (events, started.elapsed())
        })
    };
    // Give the reader time to park in its wait.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (parent, key) = make_parent(&*store, &fresh_email()).await;
    let (events, took) = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();
    assert!(took < Duration::from_secs(10), "woke after {took:?}");
    let changes: Vec<Change> = events.into_iter().map(|e| e.change).collect();
    assert_eq!(
        changes,
        vec![Change::Account(parent.id), Change::KeyAdded(key)]
    );
}

/// The embedded store applies every lease once (its transactions commit or fail): the op's
/// number is not looked at.
const OP: tollgate_store::LeaseOp<'static> = tollgate_store::LeaseOp {
    node: "node_test",
    seq: 1,
    last: false,
};
