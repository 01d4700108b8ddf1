//! The Redis store's usage batches against real `redis-server`s: exactly-once per group of
//! tenants on a single server (the writer's marker), per tenant on Redis Cluster, and what each
//! keeps to do so (one record per writer, not a key per batch).

#![allow(clippy::unwrap_used)]

use tollgate_core::Day;
use tollgate_store::contract::NOW;
use tollgate_store::redis_store::RedisStore;
use tollgate_store::{Store, UsageBatch, UsageDelta};
use tollgate_testkit::{TestRedis, TestRedisCluster};

async fn single(redis: &TestRedis) -> RedisStore {
    RedisStore::connect(Some(&redis.url()), &[], "tg")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_many_tenants_counts_each_group_once() {
    // On a single server, tenants' parts share script calls, 64 to a call in the order of their
    // tenant ids: 150 tenants make three calls. Each call is exactly-once on the writer's marker:
    // a group already applied (it landed in an earlier try whose reply was lost) is skipped, the
    // rest apply, and a whole retry applies nothing.
    let redis = TestRedis::start();
    let store = single(&redis).await;
    let today = Day::from_unix_secs(NOW);
    let deltas: Vec<UsageDelta> = (0..150)
        .flat_map(|t| {
            [0, 1].map(|c| UsageDelta {
                account_id: format!("acc_{t}_{c}").into(),
                parent_id: format!("par_{t}").into(),
                product: "whois".into(),
                pool: if t % 2 == 0 { "whois" } else { "dns" }.into(),
                day: today,
                requests: 1 + c,
                credits: 10 * (t + 1),
            })
        })
        .collect();
    let batch = UsageBatch {
        writer: "node_x".into(),
        seq: 7,
        deltas,
    };
    // The first group of batch 7 landed before.
    assert_eq!(redis.cli(&["SET", "tg:uw:node_x", "7 0"]).trim(), "OK");
    let mut tenants: Vec<String> = (0..150).map(|t| format!("par_{t}")).collect();
    tenants.sort_unstable();
    let landed = &tenants[..64];
    redis.cli(&["CONFIG", "RESETSTAT"]);
    store.record_usage(&batch).await.unwrap();
    assert_eq!(redis.cli(&["GET", "tg:uw:node_x"]).trim(), "7 2");
    let ttl: u64 = redis.cli(&["TTL", "tg:uw:node_x"]).trim().parse().unwrap();
    assert!((1..=2 * 86_400).contains(&ttl), "marker TTL {ttl}");
    store.record_usage(&batch).await.unwrap();
    // Two tries of three calls each (plus up to three refused with NOSCRIPT before the script is
    // loaded).
    let stats = redis.cli(&["INFO", "commandstats"]);
    let calls: u64 = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!((6..=9).contains(&calls), "script calls: {calls}\n{stats}");
    for t in 0..150u64 {
        let skipped = landed.contains(&format!("par_{t}"));
        let pool = if t % 2 == 0 { "whois" } else { "dns" };
        let expect = if skipped {
            vec![]
        } else {
            vec![(pool.to_owned(), 20 * (t + 1))]
        };
        assert_eq!(
            store.pool_usage(&format!("par_{t}")).await.unwrap(),
            expect,
            "tenant {t}"
        );
        let rows = store
            .usage(&[format!("acc_{t}_1")], today, today)
            .await
            .unwrap();
        let got: Vec<(u64, u64)> = rows
            .iter()
            .map(|r| (r.totals.requests, r.totals.credits))
            .collect();
        let expect = if skipped {
            vec![]
        } else {
            vec![(2, 10 * (t + 1))]
        };
        assert_eq!(got, expect, "account acc_{t}_1");
    }
    // No record of writers per tenant on a single server.
    assert_eq!(redis.cli(&["EXISTS", "{tg:t:par_1}:w"]).trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_batches_keep_one_number_per_writer_not_a_key_per_batch() {
    // A node flushes every 250 ms for as long as it runs: what a single server keeps to make
    // batches exactly-once must not grow with the batches, only with the writers, and a writer's
    // record must go once it is long gone.
    let redis = TestRedis::start();
    let store = single(&redis).await;
    for seq in 0..50 {
        record_one(&store, "node_a", seq, 1).await;
    }
    // Redis forgets its scripts (a restart, SCRIPT FLUSH): the next batch loads it again.
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    record_one(&store, "node_b", 0, 1).await;
    // An earlier batch of a writer, sent again (it landed, its reply was lost), changes nothing.
    record_one(&store, "node_a", 10, 100).await;
    record_one(&store, "node_a", 49, 100).await;
    assert_eq!(
        store.pool_usage("par_1").await.unwrap(),
        vec![("whois".to_owned(), 51)]
    );
    assert_eq!(redis.cli(&["GET", "tg:uw:node_a"]).trim(), "49 0");
    let keys = redis.cli(&["KEYS", "*"]);
    let mut keys: Vec<&str> = keys.lines().filter(|k| !k.starts_with("tg:a:")).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "tg:uw:node_a",
            "tg:uw:node_b",
            "{tg:t:par_1}:pool",
            "{tg:t:par_1}:u:acc_1"
        ],
        "one record per writer, no key per batch"
    );
    for writer in ["tg:uw:node_a", "tg:uw:node_b"] {
        let ttl: u64 = redis.cli(&["TTL", writer]).trim().parse().unwrap();
        assert!(
            (2 * 86_400 - 60..=2 * 86_400).contains(&ttl),
            "{writer} TTL {ttl}"
        );
    }
}

/// Records a batch of one delta (`acc_1` of `par_1`, product and pool `whois`, one request).
async fn record_one(store: &dyn Store, writer: &str, seq: u64, credits: u64) {
    store
        .record_usage(&one_delta(writer, seq, credits))
        .await
        .unwrap();
}

fn one_delta(writer: &str, seq: u64, credits: u64) -> UsageBatch {
    UsageBatch {
        writer: writer.into(),
        seq,
        deltas: vec![UsageDelta {
            account_id: "acc_1".into(),
            parent_id: "par_1".into(),
            product: "whois".into(),
            pool: "whois".into(),
            day: Day::from_unix_secs(NOW),
            requests: 1,
            credits,
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_tenants_keep_one_number_per_writer() {
    // On Redis Cluster, where each tenant's part has its own call: a tenant keeps one number per
    // writer, and writers long gone are dropped.
    let cluster = TestRedisCluster::start();
    let store = RedisStore::connect(None, &cluster.urls(), "tg")
        .await
        .unwrap();
    let cli = |args: &[&str]| cluster.cli(args);
    for seq in 0..20 {
        record_one(&store, "node_a", seq, 1).await;
    }
    record_one(&store, "node_b", 0, 1).await;
    record_one(&store, "node_a", 10, 100).await;
    assert_eq!(
        store.pool_usage("par_1").await.unwrap(),
        vec![("whois".to_owned(), 21)]
    );
    assert_eq!(cli(&["HLEN", "{tg:t:par_1}:w"]).trim(), "2");
    let last = cli(&["HGET", "{tg:t:par_1}:w", "node_a"]);
    assert!(last.starts_with("19 "), "node_a's last batch: {last:?}");
    // Twenty writers last heard from long ago and one heard from now: a new writer's first batch
    // drops the old ones and keeps the rest.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for n in 0..20 {
        cli(&["HSET", "{tg:t:par_1}:w", &format!("gone_{n}"), "3 1000"]);
    }
    cli(&["HSET", "{tg:t:par_1}:w", "live", &format!("3 {now}")]);
    assert_eq!(cli(&["HLEN", "{tg:t:par_1}:w"]).trim(), "23");
    record_one(&store, "node_c", 0, 1).await;
    let writers = cli(&["HKEYS", "{tg:t:par_1}:w"]);
    let mut writers: Vec<&str> = writers.lines().collect();
    writers.sort_unstable();
    assert_eq!(writers, ["live", "node_a", "node_b", "node_c"]);
    assert_eq!(
        store.pool_usage("par_1").await.unwrap(),
        vec![("whois".to_owned(), 22)]
    );
}
