//! Revocation propagation between two real gateway processes on one real `redis-server`: a child is
//! disabled (then enabled) through node A's account API, and node B is polled until it refuses
//! (admits) the key. Prints the distribution over the cycles; never fails on a number.
//!
//! `cargo build --release -p tollgate && cargo bench -p tollgate-benches --bench propagation`
//! (`CYCLES=200` by default; `TOLLGATE_BIN` to pick the binary, default target/release/tollgate).

#![allow(clippy::unwrap_used)] // a benchmark: a panic is the failure report

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use tollgate_testkit::http::{get, post_json, send};
use tollgate_testkit::{StubUpstream, TestGateway, TestRedis};

fn binary() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("TOLLGATE_BIN") {
        return p.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
    std::path::Path::new(&target).join("release/tollgate")
}

async fn until(node: &TestGateway, key: &str, want: u16) -> Duration {
    let url = format!("{}/whoisserver/WhoisService", node.proxy);
    let start = Instant::now();
    loop {
        if get(&url, &[("x-api-key", key)]).await.unwrap().status == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no propagation within 10 s"
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` compatibility
    }
    let bin = binary();
    assert!(
        bin.exists(),
        "build the gateway first: cargo build --release -p tollgate ({})",
        bin.display()
    );
    let cycles: usize = std::env::var("CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(200);
    let redis = TestRedis::start();
    let up = StubUpstream::start().await;
    let cfg = format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\n\n[limits]\nparent = {{ rps = 1000000, burst = 1000000 }}\nchild = {{ rps = 1000000, burst = 1000000 }}\n\n[[routes]]\nprefix = \"/whoisserver/WhoisService\"\nupstream = \"{}\"\nproduct = \"whois\"\n",
        redis.url(),
        up.url()
    );
    let a = TestGateway::start(&bin, &cfg).await;
    let b = TestGateway::start(&bin, &cfg).await;
    let r = post_json(
        &format!("{}/admin/v1/parents", a.ops),
        &[("authorization", &TestGateway::operator_auth())],
        &json!({"email": "bench@p.example", "team": true, "subscriptions": [{"pool": "whois", "credits": 1000000000, "overage": "allow"}]}),
    )
    .await
    .unwrap();
    let pkey = r.json()["api_key"].as_str().unwrap().to_owned();
    let r = post_json(
        &format!("{}/v1/team/members", a.account),
        &[("x-api-key", &pkey)],
        &json!({"email": "kid@p.example"}),
    )
    .await
    .unwrap();
    let token = r.json()["invitation_token"].as_str().unwrap().to_owned();
    let r = send(
        Method::POST,
        &format!("{}/v1/invitations/{token}/accept", a.account),
        &[],
        "",
    )
    .await
    .unwrap();
    let cid = r.json()["id"].as_str().unwrap().to_owned();
    let ckey = r.json()["api_key"].as_str().unwrap().to_owned();
    until(&b, &ckey, 200).await;

    let mut lags = Vec::with_capacity(cycles * 2);
    for _ in 0..cycles {
        for (action, want) in [("disable", 403), ("enable", 200)] {
            let url = format!("{}/v1/team/members/{cid}/{action}", a.account);
            let r = send(Method::POST, &url, &[("x-api-key", &pkey)], "")
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            // Measured from the API call's return: the change is then committed and on the feed.
            lags.push(until(&b, &ckey, want).await);
        }
    }
    lags.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "propagation A -> B over {} changes ({} disable/enable cycles): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target: p99 < 100 ms, aim < 25 ms)",
        lags.len(),
        cycles,
        ms(percentile(&lags, 0.5)),
        ms(percentile(&lags, 0.9)),
        ms(percentile(&lags, 0.99)),
        ms(*lags.last().unwrap()),
    );
    let m = get(&format!("{}/metrics", b.ops), &[]).await.unwrap();
    for line in String::from_utf8_lossy(&m.body)
        .lines()
        .filter(|l| l.starts_with("tollgate_revocation_lag_seconds"))
    {
        println!("  B {line}");
    }
}
