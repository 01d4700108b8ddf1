//! A key's life at its edges, through the binary, on the embedded store and on a real
//! `redis-server` (two nodes): concurrent rotations with one key (exactly one wins, its key works,
//! the others are refused as the rotated-away key is), and the keys of a deleted parent's children
//! (refused with 403 `parent_disabled`, as SPEC's table says for a deleted parent, while a child
//! deleted on its own and the parent's own key are 401 `key_unknown`).
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

async fn operator_delete(g: &TestGateway, id: &str) {
    let r = send(
        Method::DELETE,
        &format!("{}/admin/v1/accounts/{id}", g.ops),
        &[("authorization", &TestGateway::operator_auth())],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
}

/// A parent with three children: `warm` (used on every node before the deletion, so cached),
/// `cold` (never used before it), `alone` (deleted on its own first). The parent is deleted
/// through `nodes[0]`'s operator API.
async fn deleting_a_parent(nodes: &[&TestGateway]) {
    let subs = json!([{"pool": "whois", "credits": 100000, "overage": "allow"}]);
    let g0 = nodes[0];
    let (pid, pkey) = g0.create_parent("admin@del.example", subs).await;
    let (_, warm) = g0.create_child(&pkey, "warm@del.example").await;
    let (_, cold) = g0.create_child(&pkey, "cold@del.example").await;
    let (alone_id, alone) = g0.create_child(&pkey, "alone@del.example").await;
    for g in nodes {
        assert_eq!(product(g, &warm).await.status, 200);
        assert_eq!(product(g, &alone).await.status, 200);
        assert_eq!(product(g, &pkey).await.status, 200);
    }
    let r = send(
        Method::DELETE,
        &format!("{}/v1/team/members/{alone_id}", g0.account),
        &[("x-api-key", &pkey)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204);
    let unknown = (401, "key_unknown".to_owned());
    let parent_disabled = (403, "parent_disabled".to_owned());
    for g in nodes {
        wait_until("a child deleted on its own refused", BOUND, || async {
            outcome(&product(g, &alone).await) == unknown
        })
        .await;
    }

    operator_delete(g0, &pid).await;
    // The writing node at once; the others within the bound.
    assert_eq!(outcome(&product(g0, &warm).await), parent_disabled);
    for g in nodes {
        wait_until("a cached child of a deleted parent", BOUND, || async {
            outcome(&product(g, &warm).await) == parent_disabled
        })
        .await;
        wait_until("the deleted parent's own key", BOUND, || async {
            outcome(&product(g, &pkey).await) == unknown
        })
        .await;
        assert_eq!(
            outcome(&product(g, &cold).await),
            parent_disabled,
            "a child of a deleted parent, loaded after the deletion"
        );
        assert_eq!(
            outcome(&product(g, &alone).await),
            unknown,
            "deleted on its own"
        );
        // The account API judges the keys as the data plane does.
        assert_eq!(outcome(&me(g, &warm).await), parent_disabled, "/v1/me");
        assert_eq!(outcome(&me(g, &cold).await), parent_disabled, "/v1/me");
        assert_eq!(outcome(&rotate(g, &cold).await), parent_disabled, "rotate");
        assert_eq!(outcome(&me(g, &alone).await), unknown, "/v1/me");
        assert_eq!(outcome(&me(g, &pkey).await), unknown, "/v1/me");
    }
    // The rest of the cascade stands: the children show as deleted and their emails are free.
    let r = get(
        &format!("{}/admin/v1/accounts/{pid}", g0.ops),
        &[("authorization", &TestGateway::operator_auth())],
    )
    .await
    .unwrap();
    let statuses: Vec<_> = r.json()["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["deleted", "deleted", "deleted"]);
    let subs = json!([{"pool": "whois", "credits": 1, "overage": "allow"}]);
    let (_, other) = g0.create_parent("admin2@del.example", subs).await;
    g0.create_child(&other, "WARM@del.example").await;
    g0.create_parent("cold@del.example", json!([])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_of_a_deleted_parent_are_parent_disabled_embedded() {
    let up = StubUpstream::start().await;
    let g = TestGateway::start(BIN.as_ref(), &config(&up.url(), None)).await;
    deleting_a_parent(&[&g]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_of_a_deleted_parent_are_parent_disabled_redis() {
    let up = StubUpstream::start().await;
    let redis = TestRedis::start();
    let cfg = config(&up.url(), Some(&redis.url()));
    let a = TestGateway::start(BIN.as_ref(), &cfg).await;
    let b = TestGateway::start(BIN.as_ref(), &cfg).await;
    deleting_a_parent(&[&a, &b]).await;
}
