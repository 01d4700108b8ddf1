//! The meter against the real embedded store: exactness under concurrency, a flush whose reply is
//! lost (retried, counted once), a store that is down mid-flush, rate limits on a fake clock, and
//! pooled credits spent to the last one.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::FakeRelativeClock;
use tollgate_core::*;
use tollgate_meter::{CellKey, Credits, Meter, RateLimits};
use tollgate_store::*;

/// A real store (embedded, or Redis), with faults a test can switch on: the store is unreachable
/// (nothing written), or the write happens and its reply is lost (usage batches; and, apart,
/// credit leases and releases). `tries` lists the (writer, number) of every batch sent, in order.
struct Faulty {
    inner: Arc<dyn Store>,
    down: AtomicBool,
    lose_replies: AtomicU32,
    lose_lease_replies: AtomicU32,
    /// How many lease and release replies were lost.
    lease_replies_lost: AtomicU32,
    tries: parking_lot::Mutex<Vec<(String, u64)>>,
}

impl Faulty {
    /// Whether to lose this reply (one of the `lose_lease_replies` still to lose).
    fn lose_lease_reply(&self) -> bool {
        let lose = self
            .lose_lease_replies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lose {
            self.lease_replies_lost.fetch_add(1, Ordering::SeqCst);
        }
        lose
    }
}

#[async_trait]
impl Store for Faulty {
    fn backend(&self) -> &'static str {
        "faulty-embedded"
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    async fn account(&self, id: &str) -> StoreResult<Option<Account>> {
        self.inner.account(id).await
    }
    async fn account_by_key(&self, key: &KeyHash) -> StoreResult<Option<Account>> {
        self.inner.account_by_key(key).await
    }
    async fn children(&self, p: &str) -> StoreResult<Vec<Account>> {
        self.inner.children(p).await
    }
    async fn subscriptions(&self, p: &str) -> StoreResult<Vec<Subscription>> {
        self.inner.subscriptions(p).await
    }
    async fn create_parent(&self, n: NewParent) -> StoreResult<Account> {
        self.inner.create_parent(n).await
    }
    async fn update_parent(
        &self,
        id: &str,
        t: Option<bool>,
        l: Option<LimitOverrides>,
    ) -> StoreResult<Account> {
        self.inner.update_parent(id, t, l).await
    }
    async fn put_subscription(&self, p: &str, s: Subscription) -> StoreResult<()> {
        self.inner.put_subscription(p, s).await
    }
    async fn invite(&self, n: NewInvitation) -> StoreResult<Account> {
        self.inner.invite(n).await
    }
    async fn accept_invitation(&self, t: &KeyHash, k: KeyHash, now: u64) -> StoreResult<Account> {
        self.inner.accept_invitation(t, k, now).await
    }
    async fn set_status(&self, id: &str, s: Status) -> StoreResult<Account> {
        self.inner.set_status(id, s).await
    }
    async fn rotate_key(&self, id: &str, old: &KeyHash, k: KeyHash) -> StoreResult<()> {
        self.inner.rotate_key(id, old, k).await
    }
    async fn record_usage(&self, batch: &UsageBatch) -> StoreResult<()> {
        self.tries.lock().push((batch.writer.clone(), batch.seq));
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected: store down".into()));
        }
        self.inner.record_usage(batch).await?;
        if self
            .lose_replies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Unavailable(
                "injected: reply lost after the write".into(),
            ));
        }
        Ok(())
    }
    async fn usage(&self, ids: &[String], from: Day, to: Day) -> StoreResult<Vec<UsageRow>> {
        self.inner.usage(ids, from, to).await
    }
    async fn pool_usage(&self, p: &str) -> StoreResult<Vec<(String, u64)>> {
        self.inner.pool_usage(p).await
    }
    async fn lease_credits(
        &self,
        p: &str,
        pool: &str,
        need: u64,
        want: u64,
        op: LeaseOp<'_>,
    ) -> StoreResult<(u64, u64)> {
        let r = self.inner.lease_credits(p, pool, need, want, op).await;
        if r.is_ok() && self.lose_lease_reply() {
            return Err(StoreError::Unavailable(
                "injected: lease reply lost after the write".into(),
            ));
        }
        r
    }
    async fn release_credits(
        &self,
        p: &str,
        pool: &str,
        amount: u64,
        op: LeaseOp<'_>,
    ) -> StoreResult<()> {
        let r = self.inner.release_credits(p, pool, amount, op).await;
        if r.is_ok() && self.lose_lease_reply() {
            return Err(StoreError::Unavailable(
                "injected: release reply lost after the write".into(),
            ));
        }
        r
    }
    async fn feed_head(&self) -> StoreResult<String> {
        self.inner.feed_head().await
    }
    async fn read_feed(&self, c: &str, w: Duration) -> StoreResult<Vec<FeedEvent>> {
        self.inner.read_feed(c, w).await
    }
}

fn faulty() -> (Arc<Faulty>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let inner = EmbeddedStore::open(&dir.path().join("t.db")).unwrap();
    (faulty_over(Arc::new(inner)), dir)
}

fn faulty_over(inner: Arc<dyn Store>) -> Arc<Faulty> {
    Arc::new(Faulty {
        inner,
        down: AtomicBool::new(false),
        lose_replies: AtomicU32::new(0),
        lose_lease_replies: AtomicU32::new(0),
        lease_replies_lost: AtomicU32::new(0),
        tries: parking_lot::Mutex::new(Vec::new()),
    })
}

fn key(account: &str, parent: &str, product: &str, day: i32) -> CellKey {
    CellKey {
        account: Arc::from(account),
        parent: Arc::from(parent),
        product: Arc::from(product),
        pool: Arc::from(product),
        day: Day(day),
    }
}

async fn stored_totals(store: &dyn Store, ids: &[&str]) -> Totals {
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    store
        .usage(&ids, Day(0), Day(100_000))
        .await
        .unwrap()
        .iter()
        .map(|r| r.totals)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_records_flush_exactly() {
    let (store, _dir) = faulty();
    let meter = Arc::new(Meter::new(store.clone(), u64::MAX));
    let flusher = {
        let m = meter.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                let _ = m.flush().await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let m = meter.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..2_000u64 {
                let account = format!("acc_c{}", (t + i) % 4);
                m.record(
                    key(
                        &account,
                        "acc_p",
                        if i % 3 == 0 { "dns" } else { "whois" },
                        20_000,
                    ),
                    1 + i % 5,
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    flusher.await.unwrap();
    assert_eq!(meter.flush_all(Duration::from_secs(5)).await, 0);
    let expected_credits: u64 = (0..8u64)
        .map(|_| (0..2_000u64).map(|i| 1 + i % 5).sum::<u64>())
        .sum();
    let got = stored_totals(&*store, &["acc_c0", "acc_c1", "acc_c2", "acc_c3"]).await;
    assert_eq!(got.requests, 16_000);
    assert_eq!(got.credits, expected_credits);
    let pool: u64 = store
        .pool_usage("acc_p")
        .await
        .unwrap()
        .iter()
        .map(|(_, c)| c)
        .sum();
    assert_eq!(
        pool, expected_credits,
        "the parent's roll-up equals the sum of its members"
    );
    assert_eq!(meter.unflushed_credits(), 0);
}

#[tokio::test]
async fn a_lost_reply_is_retried_and_counted_once() {
    let (store, _dir) = faulty();
    let meter = Meter::new(store.clone(), u64::MAX);
    for _ in 0..10 {
        meter.record(key("acc_a", "acc_p", "whois", 20_000), 3);
    }
    store.lose_replies.store(1, Ordering::SeqCst);
    assert!(meter.flush().await.is_err(), "the reply was lost");
    assert_eq!(meter.unflushed_credits(), 30, "not known to be written yet");
    // More usage arrives before the retry; the retry resends the same batch, then the rest.
    meter.record(key("acc_a", "acc_p", "whois", 20_000), 3);
    assert_eq!(meter.flush_all(Duration::from_secs(5)).await, 0);
    let got = stored_totals(&*store, &["acc_a"]).await;
    assert_eq!((got.requests, got.credits), (11, 33));
    // The order a store may rely on (`UsageBatch`): the retry carries the same number, and the
    // next number comes only after it was taken.
    let node = meter.node_id().to_owned();
    assert_eq!(
        *store.tries.lock(),
        vec![(node.clone(), 0), (node.clone(), 0), (node, 1)]
    );
}

#[tokio::test]
async fn store_down_mid_flush_then_back() {
    let (store, _dir) = faulty();
    let meter = Meter::new(store.clone(), 50);
    // While the store takes every flush, what waits for the next one is no backlog, however much.
    meter.record(key("acc_a", "acc_p", "whois", 20_000), 60);
    assert!(!meter.backlog_full(), "a healthy store's unflushed usage");
    assert!(meter.flush().await.unwrap());
    meter.record(key("acc_a", "acc_p", "whois", 20_000), 20);
    store.down.store(true, Ordering::SeqCst);
    assert!(meter.flush().await.is_err());
    meter.record(key("acc_b", "acc_p", "whois", 20_001), 20);
    assert!(!meter.backlog_full());
    meter.record(key("acc_b", "acc_p", "whois", 20_001), 20);
    assert!(
        meter.backlog_full(),
        "the backlog bound is reached at 50 credits"
    );
    assert_eq!(
        meter.flush_all(Duration::from_millis(100)).await,
        60,
        "nothing lost while down"
    );
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(meter.flush_all(Duration::from_secs(5)).await, 0);
    assert!(!meter.backlog_full());
    let got = stored_totals(&*store, &["acc_a", "acc_b"]).await;
    assert_eq!((got.requests, got.credits), (4, 120));
}

#[tokio::test]
async fn pruned_cells_keep_metric_totals() {
    let (store, _dir) = faulty();
    let meter = Meter::new(store.clone(), u64::MAX);
    meter.record(key("acc_a", "acc_p", "whois", 100), 5);
    meter.record(key("acc_a", "acc_p", "whois", 20_000), 7);
    meter.flush_all(Duration::from_secs(5)).await;
    meter.prune(Day(20_000));
    let t = meter.totals();
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].requests, t[0].credits), (2, 12));
}

fn principal(role: Role, limits: LimitOverrides) -> Principal {
    let parent = Account {
        id: "acc_p".into(),
        role: Role::Parent,
        status: Status::Active,
        email: "p@x.example".into(),
        parent_id: None,
        team: true,
        limits,
        created_at: 0,
    };
    let mut me = parent.clone();
    if role == Role::Child {
        me.id = "acc_c".into();
        me.role = Role::Child;
        me.parent_id = Some("acc_p".into());
    }
    let tenant = Arc::new(tollgate_store::cache::CachedAccount::new(parent, vec![]));
    let account = if role == Role::Child {
        Arc::new(tollgate_store::cache::CachedAccount::new(me, vec![]))
    } else {
        tenant.clone()
    };
    Principal { account, tenant }
}

#[test]
fn rate_limits_follow_gcra_on_a_fake_clock() {
    let clock = FakeRelativeClock::default();
    let limits = RateLimits::with_clock(
        Limit {
            rps: 200,
            burst: 400,
        },
        Limit { rps: 2, burst: 3 },
        clock.clone(),
    );
    let child = principal(Role::Child, LimitOverrides::default());
    for expect_remaining in [2, 1, 0] {
        assert_eq!(limits.check(&child).unwrap().remaining, expect_remaining);
    }
    let retry = limits.check(&child).unwrap_err();
    assert_eq!(retry, 1, "retry-after rounds up to whole seconds");
    clock.advance(Duration::from_millis(500));
    assert!(
        limits.check(&child).is_ok(),
        "one request regained after 1/rps"
    );
    assert!(limits.check(&child).is_err());
    // An operator override for the tenant's children takes effect on the next check.
    let overridden = principal(
        Role::Child,
        LimitOverrides {
            parent: None,
            child: Some(Limit { rps: 1, burst: 10 }.into()),
        },
    );
    assert_eq!(limits.check(&overridden).unwrap().remaining, 9);
}

#[tokio::test]
async fn pooled_credits_are_spent_to_the_last_one_across_nodes() {
    let (store, _dir) = faulty();
    let tenant = deny_parent(&*store, 1_000).await;
    let tenant: Arc<str> = Arc::from(tenant.as_str());
    let pool: Arc<str> = Arc::from("whois");
    // Two "nodes" (two Credits on one store) spend in turns; node B stops half way, and its
    // slice goes back when released, so node A can spend the pool to its last credit.
    let a = Credits::new(store.clone(), 100);
    let b = Credits::new(store.clone(), 100);
    let mut spent = 0u64;
    for i in 0..2_000u64 {
        let node = if i % 2 == 0 || spent > 500 { &a } else { &b };
        if node.take(&tenant, &pool, 3) != tollgate_meter::credits::Take::Refill {
            spent += 3;
            continue;
        }
        if spent > 500 {
            b.release_idle(true).await;
        }
        if !node.refill(&tenant, &pool, 3).await.unwrap() {
            break;
        }
        assert!(matches!(
            node.take(&tenant, &pool, 3),
            tollgate_meter::credits::Take::Taken { .. }
        ));
        spent += 3;
    }
    assert_eq!(
        spent, 999,
        "every whole request the pool can pay for was admitted"
    );
    a.release_idle(true).await;
    // One credit is left, and a 1-credit request gets it; then nothing.
    assert!(a.refill(&tenant, &pool, 1).await.unwrap());
    assert!(!a.refill(&tenant, &pool, 2).await.unwrap());
}

/// A parent with a `deny` subscription of `credits` to pool `whois`; its id.
async fn deny_parent(store: &dyn Store, credits: u64) -> String {
    let mut rng = rand::rng();
    let parent = store
        .create_parent(NewParent {
            account: Account {
                id: generate_id(&mut rng, "acc_"),
                role: Role::Parent,
                status: Status::Active,
                email: format!("{}@x.example", generate_id(&mut rng, "p")),
                parent_id: None,
                team: true,
                limits: LimitOverrides::default(),
                created_at: 0,
            },
            key_hash: generate_key(&mut rng).hash(),
            subscriptions: vec![Subscription {
                pool: "whois".into(),
                credits,
                overage: Overage::Deny,
            }],
        })
        .await
        .unwrap();
    parent.id
}

/// A lease or release whose reply is lost after the store applied it (a reply that timed out) is
/// neither counted twice nor lost: two nodes on a real Redis, with a lease or release reply lost
/// every few steps, spend a 1,000-credit pool in 3-credit requests to exactly 999 credits. Before,
/// a node kept credits whose release had been applied (and spent them: more than 999), and never
/// got credits whose lease had been applied (fewer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_lease_and_release_replies_neither_overshoot_nor_strand() {
    let redis = tollgate_testkit::TestRedis::start();
    let inner = RedisStore::connect(Some(&redis.url()), &[], "tg")
        .await
        .unwrap();
    let store = faulty_over(Arc::new(inner));
    let tenant: Arc<str> = Arc::from(deny_parent(&*store, 1_000).await.as_str());
    let pool: Arc<str> = Arc::from("whois");
    let a = Credits::new(store.clone(), 100);
    let b = Credits::new(store.clone(), 100);
    let mut spent = 0u64;
    for i in 0..400u64 {
        let node = if i % 2 == 0 { &a } else { &b };
        if i % 7 == 0 {
            store.lose_lease_replies.store(1, Ordering::SeqCst);
        }
        if i % 5 == 0 {
            node.release_idle(true).await;
        }
        match node.take(&tenant, &pool, 3) {
            tollgate_meter::credits::Take::Taken { .. } => spent += 3,
            tollgate_meter::credits::Take::Refill => {
                let _ = node.refill(&tenant, &pool, 3).await;
            }
        }
    }
    let lost = store.lease_replies_lost.load(Ordering::SeqCst);
    assert!(lost > 10, "the faults were not hit: {lost}");
    // Everything held goes back (sent again until the store has answered), then one node spends
    // what is left.
    store.lose_lease_replies.store(0, Ordering::SeqCst);
    for node in [&a, &b] {
        let mut rounds = 0;
        while !node.release_idle(true).await {
            rounds += 1;
            assert!(rounds < 10, "releases never settled");
        }
    }
    while a.refill(&tenant, &pool, 3).await.unwrap() {
        assert!(matches!(
            a.take(&tenant, &pool, 3),
            tollgate_meter::credits::Take::Taken { .. }
        ));
        spent += 3;
    }
    assert_eq!(spent, 999, "credits spent of a 1,000-credit pool");
}
