//! A key's life at its edges, through the binary, on the embedded store and on a real
//! `redis-server` (two nodes): concurrent rotations with one key (exactly one wins, its key works,
//! the others are refused as the rotated-away key is).
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use http::Method;
use serde_json::json;
use tollgate_testkit::http::{get, send, Reply};
use tollgate_testkit::{wait_until, StubUpstream, TestGateway, TestRedis};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// How long a change made through one node may take to reach the other (`max_staleness`).
const BOUND: Duration = Duration::from_secs(2);

fn config(upstream: &str, redis: Option<&str>) -> String {
    let store = redis.map_or(String::new(), |url| {
        format!("[store]\nbackend = \"redis\"\nurl = \"{url}\"\n\n")
    });
    format!(
        r#"{store}
[cache]
max_staleness = "2s"

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

async fn product(g: &TestGateway, key: &str) -> Reply {
    get(
        &format!("{}/whoisserver/WhoisService?domainName=x.example", g.proxy),
        &[("x-api-key", key)],
    )
    .await
    .unwrap()
}

async fn me(g: &TestGateway, key: &str) -> Reply {
    get(&format!("{}/v1/me", g.account), &[("x-api-key", key)])
        .await
        .unwrap()
}

async fn rotate(g: &TestGateway, key: &str) -> Reply {
    send(
        Method::POST,
        &format!("{}/v1/keys/rotate", g.account),
        &[("x-api-key", key)],
        "",
    )
    .await
    .unwrap()
}

fn outcome(r: &Reply) -> (u16, String) {
    let code = if r.status.is_success() {
        String::new()
    } else {
        r.code()
    };
    (r.status.as_u16(), code)
}

/// `N` rotations with one key at once, spread over `nodes`: exactly one 200, whose key works on
/// every node; the rest 401 `key_unknown`; the old key refused everywhere.
async fn concurrent_rotations(nodes: &[&TestGateway], key: &str, who: &str) {
    const N: usize = 8;
    let replies =
        futures_util::future::join_all((0..N).map(|i| rotate(nodes[i % nodes.len()], key))).await;
    let outcomes: Vec<_> = replies.iter().map(outcome).collect();
    let winners: Vec<_> = replies.iter().filter(|r| r.status == 200).collect();
    assert_eq!(
        winners.len(),
        1,
        "{who}: {N} concurrent rotations: {outcomes:?}"
    );
    for o in &outcomes {
        assert!(
            *o == (200, String::new()) || *o == (401, "key_unknown".to_owned()),
            "{who}: a losing rotation answered {o:?}"
        );
    }
    let new = winners[0].json()["api_key"].as_str().unwrap().to_owned();
    for g in nodes {
        assert_eq!(
            outcome(&product(g, &new).await),
            (200, String::new()),
            "{who}: the new key"
        );
        assert_eq!(
            outcome(&me(g, &new).await),
            (200, String::new()),
            "{who}: the new key, /v1/me"
        );
        wait_until(&format!("{who}: the old key refused"), BOUND, || async {
            outcome(&product(g, key).await) == (401, "key_unknown".to_owned())
        })
        .await;
    }
}

async fn rotations_with_one_key(nodes: &[&TestGateway]) {
    let subs = json!([{"pool": "whois", "credits": 100000, "overage": "allow"}]);
    let (_, pkey) = nodes[0].create_parent("admin@rot.example", subs).await;
    let (_, ckey) = nodes[0].create_child(&pkey, "kid@rot.example").await;
    // Every node knows the keys before the race, as a busy gateway would.
    for g in nodes {
        assert_eq!(product(g, &pkey).await.status, 200);
        assert_eq!(product(g, &ckey).await.status, 200);
    }
    concurrent_rotations(nodes, &pkey, "parent").await;
    concurrent_rotations(nodes, &ckey, "child").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_one_wins_embedded() {
    let up = StubUpstream::start().await;
    let g = TestGateway::start(BIN.as_ref(), &config(&up.url(), None)).await;
    rotations_with_one_key(&[&g]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_one_wins_redis() {
    let up = StubUpstream::start().await;
    let redis = TestRedis::start();
    let cfg = config(&up.url(), Some(&redis.url()));
    let a = TestGateway::start(BIN.as_ref(), &cfg).await;
    let b = TestGateway::start(BIN.as_ref(), &cfg).await;
    rotations_with_one_key(&[&a, &b]).await;
}
