//! Many nodes on one real `redis-server` (issue 4): a change made through either node is enforced
//! by the other within the bound; Redis killed and restarted mid-test; pooled credits shared by two
//! nodes; usage from both nodes exact; no plaintext key or token anywhere in Redis.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use tollgate_testkit::http::{get, send, Reply};
use tollgate_testkit::{wait_until, StubUpstream, TestGateway, TestRedis};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn config(upstream: &str, redis: &str) -> String {
    format!(
        r#"
[store]
backend = "redis"
url = "{redis}"

[cache]
max_staleness = "2s"

[metering]
flush_interval = "50ms"

[limits]
parent = {{ rps = 100000, burst = 100000 }}
child = {{ rps = 100000, burst = 100000 }}

[[routes]]
prefix = "/whoisserver/WhoisService"
upstream = "{upstream}"
product = "whois"
"#
    )
}

async fn two_nodes(up: &StubUpstream, redis: &TestRedis) -> (TestGateway, TestGateway) {
    let cfg = config(&up.url(), &redis.url());
    let a = TestGateway::start(BIN.as_ref(), &cfg).await;
    let b = TestGateway::start(BIN.as_ref(), &cfg).await;
    (a, b)
}

/// Invites and accepts a child; `(id, key, invitation token)`.
async fn child(g: &TestGateway, parent_key: &str, email: &str) -> (String, String, String) {
    let token = g.invite(parent_key, email).await;
    let (id, key) = g.accept(&token).await;
    (id, key, token)
}

async fn product(g: &TestGateway, key: &str) -> Reply {
    get(
        &format!("{}/whoisserver/WhoisService?domainName=x.example", g.proxy),
        &[("x-api-key", key)],
    )
    .await
    .unwrap()
}

/// `action` (`disable`, `enable`) on account `id` through `g`'s operator API, which must succeed.
async fn operate(g: &TestGateway, id: &str, action: &str) {
    let r = send(
        Method::POST,
        &format!("{}/admin/v1/accounts/{id}/{action}", g.ops),
        &[("authorization", &TestGateway::operator_auth())],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{action} {id} on {}", g.ops);
}

/// Waits until `node` answers `want` for `key`; returns how long it took.
async fn until_status(node: &TestGateway, key: &str, want: u16, bound: Duration) -> Duration {
    let start = Instant::now();
    wait_until(
        &format!("status {want} on the other node"),
        bound,
        || async { product(node, key).await.status == want },
    )
    .await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_one_node_are_enforced_by_the_other() {
    let up = StubUpstream::start().await;
    let mut redis = TestRedis::start();
    let (a, b) = two_nodes(&up, &redis).await;
    let subs = json!([{"pool": "whois", "credits": 100000, "overage": "allow"}]);
    let (pid, pkey) = a.create_parent("admin@n.example", subs).await;
    let (cid, ckey, token) = child(&a, &pkey, "kid@n.example").await;

    // Created through A, used through B (B has never seen the key).
    assert_eq!(product(&b, &ckey).await.status, 200);
    assert_eq!(
        up.last().unwrap().header("x-tollgate-account"),
        Some(cid.as_str())
    );

    // Disabled through A's account API: B refuses it within the bound, and back.
    let bound = Duration::from_secs(2);
    let r = send(
        Method::POST,
        &format!("{}/v1/team/members/{cid}/disable", a.account),
        &[("x-api-key", &pkey)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let lag = until_status(&b, &ckey, 403, bound).await;
    println!("disable via A seen by B after {lag:?}");
    assert_eq!(
        product(&a, &ckey).await.status,
        403,
        "the writing node enforces it at once"
    );
    operate(&b, &cid, "enable").await;
    until_status(&a, &ckey, 200, bound).await;
    // The parent disabled through the operator API on B stops the child on A.
    operate(&b, &pid, "disable").await;
    let r = {
        until_status(&a, &ckey, 403, bound).await;
        product(&a, &ckey).await
    };
    assert_eq!(r.code(), "parent_disabled");
    operate(&a, &pid, "enable").await;
    until_status(&b, &ckey, 200, bound).await;
    // The revocation lag is exported.
    let m = String::from_utf8_lossy(&get(&format!("{}/metrics", b.ops), &[]).await.unwrap().body)
        .into_owned();
    assert!(m.contains("tollgate_revocation_lag_seconds_count"), "{m}");

    // Redis goes away.
    let unknown = "at_zzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
    redis.stop();
    wait_until(
        "readyz to report the store down",
        Duration::from_secs(10),
        || async {
            get(&format!("{}/readyz", b.ops), &[])
                .await
                .map(|r| r.status == 503)
                .unwrap_or(false)
        },
    )
    .await;
    // A cached key keeps being judged as last known (serve_cached), past max_staleness too.
    tokio::time::sleep(Duration::from_millis(2500)).await; // let max_staleness (2 s) pass on purpose
    assert_eq!(product(&b, &ckey).await.status, 200);
    let r = product(&b, unknown).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (503, "store_unavailable".into())
    );
    // And without waiting on the dead store each time: once a load has found it down, requests
    // are judged at once (one probe a second tries the store). Each used to wait about 0.5 s
    // for the store's connection to fail, so these 20 took over 10 s.
    let started = std::time::Instant::now();
    for _ in 0..10 {
        assert_eq!(product(&b, &ckey).await.status, 200);
        assert_eq!(product(&b, unknown).await.status, 503);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "20 requests took {took:?}");
    // A change during the outage is refused with a 5xx, not lost silently.
    let r = send(
        Method::POST,
        &format!("{}/v1/team/members/{cid}/disable", a.account),
        &[("x-api-key", &pkey)],
        "",
    )
    .await
    .unwrap();
    assert!(r.status.is_server_error(), "got {}", r.status);

    // Redis returns: the nodes reconnect by themselves, and a change made now reaches both.
    redis.restart();
    wait_until("readyz to recover", Duration::from_secs(15), || async {
        get(&format!("{}/readyz", b.ops), &[])
            .await
            .map(|r| r.status == 200)
            .unwrap_or(false)
    })
    .await;
    operate(&a, &cid, "disable").await;
    until_status(&b, &ckey, 403, Duration::from_secs(5)).await;
    until_status(&a, &ckey, 403, Duration::from_secs(5)).await;
    assert_eq!(product(&b, unknown).await.code(), "key_unknown");
    // The accepted token cannot be reused, on either node.
    let r = send(
        Method::POST,
        &format!("{}/v1/invitations/{token}/accept", b.account),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);

    // Nothing in Redis holds a plaintext key or token.
    let keys = redis.cli(&["--scan"]);
    let mut dump = keys.clone();
    for k in keys.lines().filter(|k| !k.is_empty()) {
        let kind = redis.cli(&["type", k]);
        let value = match kind.trim() {
            "string" => redis.cli(&["get", k]),
            "hash" => redis.cli(&["hgetall", k]),
            "list" => redis.cli(&["lrange", k, "0", "-1"]),
            "set" => redis.cli(&["smembers", k]),
            "zset" => redis.cli(&["zrange", k, "0", "-1"]),
            "stream" => redis.cli(&["xrange", k, "-", "+"]),
            other => panic!("unexpected type {other} for {k}"),
        };
        dump.push_str(&value);
    }
    assert!(dump.len() > 100, "the scan found the data");
    for secret in [&pkey, &ckey, &token] {
        assert!(
            !dump.contains(secret.as_str()),
            "a secret is stored in plaintext"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_deny_pool_and_meter_exactly() {
    let up = StubUpstream::start().await;
    let redis = TestRedis::start();
    let (a, b) = two_nodes(&up, &redis).await;
    let subs = json!([{"pool": "whois", "credits": 300, "overage": "deny"}]);
    let (_, pkey) = a.create_parent("admin@pool.example", subs).await;
    let (_, c1, _) = child(&a, &pkey, "one@pool.example").await;
    let (_, c2, _) = child(&b, &pkey, "two@pool.example").await;

    // Both nodes, both children, concurrently, until everything is refused.
    let mut tasks = Vec::new();
    for (node, key) in [(&a, &c1), (&b, &c2), (&a, &c2), (&b, &c1)] {
        let url = format!("{}/whoisserver/WhoisService", node.proxy);
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0u64, 0u64);
            while refused < 5 {
                let r = get(&url, &[("x-api-key", &key)]).await.unwrap();
                match r.status.as_u16() {
                    200 => ok += 1,
                    402 => refused += 1,
                    s => panic!("unexpected {s}"),
                }
                assert!(ok <= 300);
            }
            ok
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    // Overshoot bound: 0 (a node never spends beyond its lease).
    assert!(admitted <= 300, "overshoot: {admitted} > 300");
    // No credit is stranded: keep asking both nodes until nothing more has been admitted for 3 s
    // (longer than the 2 s after which an idle slice goes back to Redis); the pool is then spent
    // to its last credit.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_ok = Instant::now();
    while last_ok.elapsed() < Duration::from_secs(3) {
        for (node, key) in [(&a, &c1), (&b, &c2)] {
            match product(node, key).await.status.as_u16() {
                200 => {
                    admitted += 1;
                    last_ok = Instant::now();
                }
                402 => {}
                s => panic!("unexpected {s}"),
            }
        }
        assert!(Instant::now() < deadline, "the pool did not settle");
        tokio::time::sleep(Duration::from_millis(50)).await; // pacing, not synchronisation
    }
    assert_eq!(
        admitted, 300,
        "every credit of the pool was spendable, none twice"
    );
    // After both nodes flushed, the team view says exactly 300 credits were used, by both children.
    wait_until(
        "usage to be flushed from both nodes",
        Duration::from_secs(10),
        || async {
            let t = get(
                &format!("{}/v1/team/usage", b.account),
                &[("x-api-key", &pkey)],
            )
            .await
            .unwrap()
            .json();
            t["total"]["credits"].as_u64() == Some(300)
        },
    )
    .await;
    let t = get(
        &format!("{}/v1/team/usage", b.account),
        &[("x-api-key", &pkey)],
    )
    .await
    .unwrap()
    .json();
    let sum: u64 = t["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["total"]["credits"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, 300);
    assert_eq!(t["pools"]["whois"]["overage"].as_u64(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_redis_cluster() {
    let up = StubUpstream::start().await;
    let cluster = tollgate_testkit::TestRedisCluster::start();
    let seeds: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let cfg = config(&up.url(), "unused").replace(
        "url = \"unused\"",
        &format!("cluster = [{}]", seeds.join(", ")),
    );
    let a = TestGateway::start(BIN.as_ref(), &cfg).await;
    let b = TestGateway::start(BIN.as_ref(), &cfg).await;
    let subs = json!([{"pool": "whois", "credits": 1000, "overage": "deny"}]);
    let (_, pkey) = a.create_parent("admin@cluster.example", subs).await;
    let (cid, ckey, _) = child(&a, &pkey, "kid@cluster.example").await;
    assert_eq!(product(&b, &ckey).await.status, 200);
    operate(&a, &cid, "disable").await;
    until_status(&b, &ckey, 403, Duration::from_secs(2)).await;
    operate(&b, &cid, "enable").await;
    until_status(&a, &ckey, 200, Duration::from_secs(2)).await;
    // Usage written by both nodes into the tenant's slot is exact.
    let (_, c2key, _) = child(&b, &pkey, "kid2@cluster.example").await;
    for node in [&a, &b, &a, &b] {
        assert_eq!(product(node, &c2key).await.status, 200);
    }
    wait_until(
        "usage from both nodes in the cluster",
        Duration::from_secs(10),
        || async {
            let u = get(&format!("{}/v1/usage", a.account), &[("x-api-key", &c2key)])
                .await
                .unwrap()
                .json();
            u["total"]["credits"].as_u64() == Some(4)
        },
    )
    .await;
}

/// Lowering a `deny` pool's credits takes back the slices the nodes leased under the old amount:
/// the node that made the change refuses from its next request on, and the other as soon as the
/// change reaches it, instead of each spending up to a whole slice (100 credits) past the new
/// amount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_a_deny_pool_takes_back_the_leased_slices() {
    let up = StubUpstream::start().await;
    let redis = TestRedis::start();
    let (a, b) = two_nodes(&up, &redis).await;
    let subs = json!([{"pool": "whois", "credits": 100000, "overage": "deny"}]);
    let (pid, pkey) = a.create_parent("admin@lower.example", subs).await;
    let (_, c1, _) = child(&a, &pkey, "one@lower.example").await;
    // One request on each node: each leases a slice of the pool.
    assert_eq!(product(&a, &c1).await.status, 200);
    assert_eq!(product(&b, &c1).await.status, 200);

    // The pool is cut to what was used: nothing more may be admitted.
    let r = send(
        Method::PUT,
        &format!("{}/admin/v1/parents/{pid}/subscriptions/whois", a.ops),
        &[
            ("authorization", &TestGateway::operator_auth()),
            ("content-type", "application/json"),
        ],
        r#"{"credits": 2, "overage": "deny"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    // The writing node applied the change before answering.
    for _ in 0..10 {
        let r = product(&a, &c1).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (402, "credits_exhausted".into())
        );
    }
    // The other node within the feed's delay (milliseconds): a request racing it may still get
    // through, not a slice's worth.
    let admitted = std::sync::atomic::AtomicU32::new(0);
    wait_until(
        "the other node to refuse",
        Duration::from_secs(5),
        || async {
            match product(&b, &c1).await.status.as_u16() {
                200 => {
                    admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    false
                }
                402 => true,
                s => panic!("unexpected {s}"),
            }
        },
    )
    .await;
    let admitted = admitted.into_inner();
    assert!(admitted <= 3, "{admitted} admitted past the new amount");
    for _ in 0..10 {
        assert_eq!(product(&b, &c1).await.status, 402);
        assert_eq!(product(&a, &c1).await.status, 402);
    }
}

/// On Redis Cluster, a write is done once the tenant's script has run; the steps after it (the
/// old key's pointer, the change feed) are on other masters. With the feed's master down, a
/// rotation and an invitation acceptance that went through answer 200 with the key they made
/// (they used to answer 503 after the fact: the old key was gone, the used token refused, and
/// the client never got the new key), and the key works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_done_on_its_tenant_answers_done_while_the_feed_master_is_down() {
    let up = StubUpstream::start().await;
    let mut cluster = tollgate_testkit::TestRedisCluster::start();
    cluster.serve_partial_coverage();
    let seeds: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let cfg = config(&up.url(), "unused").replace(
        "url = \"unused\"",
        &format!("cluster = [{}]", seeds.join(", ")),
    );
    let a = TestGateway::start(BIN.as_ref(), &cfg).await;
    let down = cluster.node_of("tg:feed");
    // A tenant, and the parent's entry in the account index, on other masters than the feed's
    // (four in nine are).
    let subs = json!([{"pool": "whois", "credits": 1000, "overage": "allow"}]);
    let mut parent = None;
    for n in 0..40 {
        let (id, key) = a
            .create_parent(&format!("admin{n}@partial.example"), subs.clone())
            .await;
        if cluster.node_of(&format!("{{tg:t:{id}}}:a:{id}")) != down
            && cluster.node_of(&format!("tg:a:{id}")) != down
        {
            parent = Some(key);
            break;
        }
    }
    let pkey = parent.expect("a tenant off the feed's master in 40 tries");
    // Invitations whose token records are on the masters that stay up (two in three are),
    // first those whose child's entry in the account index is on the master that goes down
    // (acceptance reads the child in the tenant the record names, not through the index).
    let mut tokens = Vec::new();
    for n in 0..16 {
        let r = tollgate_testkit::http::post_json(
            &format!("{}/v1/team/members", a.account),
            &[("x-api-key", &pkey)],
            &json!({ "email": format!("kid{n}@partial.example") }),
        )
        .await
        .unwrap();
        assert_eq!(
            r.status,
            201,
            "invite: {}",
            String::from_utf8_lossy(&r.body)
        );
        let (id, token) = (r.json()["id"].clone(), r.json()["invitation_token"].clone());
        let (id, token) = (id.as_str().unwrap(), token.as_str().unwrap());
        let record = format!("tg:i:{}", tollgate_core::KeyHash::of(token).to_hex());
        if cluster.node_of(&record) != down {
            let index_down = cluster.node_of(&format!("tg:a:{id}")) == down;
            tokens.push((!index_down, token.to_owned()));
        }
    }
    tokens.sort();
    assert!(
        !tokens.is_empty(),
        "no invitation off the feed's master in 16 tries"
    );
    cluster.stop(down);

    // A new key's own pointer may fall on the master that is down: then nothing is written and
    // the call answers 503, so the client tries again (with the same key or token, still good).
    let mut rotated = None;
    for _ in 0..20 {
        let r = send(
            Method::POST,
            &format!("{}/v1/keys/rotate", a.account),
            &[("x-api-key", &pkey)],
            "",
        )
        .await
        .unwrap();
        if r.status == 503 {
            eprintln!("rotate: {}", String::from_utf8_lossy(&r.body));
            continue;
        }
        assert_eq!(
            r.status,
            200,
            "rotate: {}",
            String::from_utf8_lossy(&r.body)
        );
        rotated = Some(r.json()["api_key"].as_str().unwrap().to_owned());
        break;
    }
    let new_pkey = rotated.expect("a rotation in 20 tries");
    assert_eq!(product(&a, &pkey).await.status, 401, "the old key");
    wait_until(
        "the rotated key to work",
        Duration::from_secs(10),
        || async { product(&a, &new_pkey).await.status == 200 },
    )
    .await;

    let mut accepted = None;
    for _ in 0..20 {
        let r = send(
            Method::POST,
            &format!("{}/v1/invitations/{}/accept", a.account, tokens[0].1),
            &[],
            "",
        )
        .await
        .unwrap();
        if r.status == 503 {
            eprintln!("accept: {}", String::from_utf8_lossy(&r.body));
            continue;
        }
        assert_eq!(
            r.status,
            200,
            "accept: {}",
            String::from_utf8_lossy(&r.body)
        );
        accepted = Some(r.json()["api_key"].as_str().unwrap().to_owned());
        break;
    }
    let ckey = accepted.expect("an acceptance in 20 tries");
    wait_until(
        "the child's key to work",
        Duration::from_secs(10),
        || async { product(&a, &ckey).await.status == 200 },
    )
    .await;
}

/// A well-formed key no account has (a miss every time).
fn unknown_key(n: u32) -> String {
    format!("at_{n:0>29}")
}

/// A Redis that hangs (paused, not dead, so connections are not refused) costs a request no
/// more than a short probe: once the first load has timed out, misses are refused at once, and
/// the one request a second that probes the store waits at most half a second for it, instead
/// of Redis's 2 s reply timeout (an audit saw a request a second wait the 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_a_request_a_short_probe_at_most() {
    let up = StubUpstream::start().await;
    let redis = TestRedis::start();
    let g = TestGateway::start(BIN.as_ref(), &config(&up.url(), &redis.url())).await;
    let subs = json!([{"pool": "whois", "credits": 1000, "overage": "allow"}]);
    let (_, pkey) = g.create_parent("admin@hung.example", subs).await;
    assert_eq!(product(&g, &pkey).await.status, 200);
    // Every client's commands wait (Redis 6.2's CLIENT PAUSE): a Redis that hangs.
    assert_eq!(redis.cli(&["client", "pause", "8000", "all"]).trim(), "OK");
    // The first miss waits for the store and opens the breaker.
    assert_eq!(product(&g, &unknown_key(0)).await.status, 503);
    let mut slowest = Duration::ZERO;
    for n in 1..=15 {
        let started = Instant::now();
        let status = product(&g, &unknown_key(n)).await.status;
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, 503, "miss {n} while Redis hangs");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(redis.cli(&["client", "unpause"]).trim(), "OK");
    assert!(
        slowest < Duration::from_millis(1500),
        "a request waited {slowest:?} for a hung Redis"
    );
    wait_until(
        "a new key to load again",
        Duration::from_secs(10),
        || async { product(&g, &unknown_key(99)).await.status == 401 },
    )
    .await;
}
