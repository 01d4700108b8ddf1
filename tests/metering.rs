//! Metering end to end through the real binary: every credit attributed to the calling child and
//! rolled up to its parent, agreeing to the credit in the store (account API), the team view and
//! `/metrics`; nothing lost across SIGTERM under load; pooled credits with `deny`; rate limits; and
//! a real Prometheus scraping the gateway.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tollgate_testkit::http::{get, send};
use tollgate_testkit::{free_port, wait_until, StubUpstream, TestGateway};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn routes(upstream: &str) -> String {
    format!(
        r#"
[metering]
flush_interval = "50ms"

[limits]
parent = {{ rps = 100000, burst = 100000 }}
child = {{ rps = 100000, burst = 100000 }}

[[routes]]
prefix = "/whoisserver/WhoisService"
upstream = "{upstream}"
product = "whois"
credits = 1
cost_rules = [{{ query = "_hardRefresh=1", multiply = 5 }}]

[[routes]]
prefix = "/api/v2"
upstream = "{upstream}"
product = "reverse-whois"
pool = "drs"
credits = 2
cost_rules = [{{ query = "mode=preview", set = 0 }}]
"#
    )
}

async fn create_parent(g: &TestGateway, subs: Value) -> (String, String) {
    g.create_parent(&format!("owner-{}@m.example", free_port()), subs)
        .await
}

/// The value of one series in a Prometheus text exposition.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let ok = (series == name || series.starts_with(&format!("{name}{{")))
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok().map(|v| v as u64))
                .flatten()
        })
}

async fn metrics_text(g: &TestGateway) -> String {
    String::from_utf8_lossy(&get(&format!("{}/metrics", g.ops), &[]).await.unwrap().body)
        .into_owned()
}

async fn wait_flushed(g: &TestGateway) {
    wait_until("the meter to flush", Duration::from_secs(10), || async {
        metric(
            &metrics_text(g).await,
            "tollgate_usage_unflushed_credits",
            &[],
        ) == Some(0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_credit_is_attributed_and_rolled_up_exactly_embedded() {
    exactness(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_credit_is_attributed_and_rolled_up_exactly_on_redis() {
    let redis = tollgate_testkit::TestRedis::start();
    exactness(Some(&redis.url())).await;
}

/// N concurrent requests of different costs by a parent and three children, some answered 503 by
/// the upstream: the store, the team view and /metrics agree with the expected sums to the credit.
async fn exactness(redis: Option<&str>) {
    let up = StubUpstream::start().await;
    up.script("/whoisserver/WhoisService/fail", 503, Duration::ZERO);
    let mut cfg = routes(&up.url());
    if let Some(url) = redis {
        cfg = format!("[store]\nbackend = \"redis\"\nurl = \"{url}\"\n{cfg}");
    }
    let g = TestGateway::start(BIN.as_ref(), &cfg).await;
    let subs = json!([{"pool": "whois", "credits": 1000000, "overage": "allow"},
                      {"pool": "drs", "credits": 1000000, "overage": "allow"}]);
    let (pid, pkey) = create_parent(&g, subs).await;
    let mut members = vec![(pid.clone(), pkey.clone())];
    for i in 0..3 {
        members.push(
            g.create_child(&pkey, &format!("m{i}-{}@m.example", free_port()))
                .await,
        );
    }

    // Requests of several kinds by every member, concurrently: (path, credits charged).
    let kinds: [(&str, u64, &str); 5] = [
        ("/whoisserver/WhoisService?domainName=a.example", 1, "whois"),
        (
            "/whoisserver/WhoisService?domainName=a.example&_hardRefresh=1",
            5,
            "whois",
        ),
        ("/api/v2?mode=purchase", 2, "reverse-whois"),
        ("/api/v2?mode=preview", 0, "reverse-whois"),
        ("/whoisserver/WhoisService/fail", 0, "whois"), // upstream 503: not charged (charge_on 2xx)
    ];
    let mut expected: HashMap<(String, &str), (u64, u64)> = HashMap::new();
    let mut tasks = Vec::new();
    for (m, (id, key)) in members.iter().enumerate() {
        for n in 0..40usize {
            let (path, credits, product) = kinds[(n + m) % kinds.len()];
            if !path.ends_with("/fail") {
                let e = expected.entry((id.clone(), product)).or_default();
                e.0 += 1;
                e.1 += credits;
            }
            let url = format!("{}{path}", g.proxy);
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                get(&url, &[("x-api-key", &key)])
                    .await
                    .unwrap()
                    .status
                    .as_u16()
            }));
        }
    }
    let mut fails = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => {}
            503 => fails += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(fails, 32, "8 failing requests per member");
    wait_flushed(&g).await;
    // Requests charged 0 credits leave the unflushed-credits gauge at 0 while they wait for the
    // next flush: wait until the store has every request too (a count past it fails below).
    let want: u64 = expected.values().map(|e| e.0).sum();
    let team_url = format!("{}/v1/team/usage", g.account);
    wait_until(
        "every request in the store",
        Duration::from_secs(10),
        || async {
            let team = get(&team_url, &[("x-api-key", &pkey)])
                .await
                .unwrap()
                .json();
            team["total"]["requests"].as_u64() >= Some(want)
        },
    )
    .await;

    // 1. The store, through each member's own /v1/usage.
    let mut grand = (0u64, 0u64);
    for (id, key) in &members {
        let u = get(&format!("{}/v1/usage", g.account), &[("x-api-key", key)])
            .await
            .unwrap()
            .json();
        for product in ["whois", "reverse-whois"] {
            let (r, c) = expected
                .get(&(id.clone(), product))
                .copied()
                .unwrap_or_default();
            assert_eq!(
                u["by_product"][product]["requests"].as_u64().unwrap_or(0),
                r,
                "{id} {product}"
            );
            assert_eq!(
                u["by_product"][product]["credits"].as_u64().unwrap_or(0),
                c,
                "{id} {product}"
            );
            grand.0 += r;
            grand.1 += c;
        }
    }
    // 2. The team view: totals are the sum of the parts, to the credit.
    let team = get(
        &format!("{}/v1/team/usage", g.account),
        &[("x-api-key", &pkey)],
    )
    .await
    .unwrap()
    .json();
    assert_eq!(team["total"]["requests"].as_u64(), Some(grand.0));
    assert_eq!(team["total"]["credits"].as_u64(), Some(grand.1));
    let member_sum: u64 = team["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["total"]["credits"].as_u64().unwrap())
        .sum();
    assert_eq!(member_sum, grand.1);
    // 3. /metrics, per child and rolled up per parent.
    let text = metrics_text(&g).await;
    for ((id, product), (r, c)) in &expected {
        let labels = [
            ("account", id.as_str()),
            ("parent", pid.as_str()),
            ("product", *product),
        ];
        assert_eq!(
            metric(&text, "tollgate_account_credits_total", &labels),
            Some(*c),
            "{id} {product}"
        );
        assert_eq!(
            metric(&text, "tollgate_account_requests_total", &labels),
            Some(*r),
            "{id} {product}"
        );
    }
    let parent_whois: u64 = expected
        .iter()
        .filter(|((_, p), _)| *p == "whois")
        .map(|(_, v)| v.1)
        .sum();
    assert_eq!(
        metric(
            &text,
            "tollgate_parent_credits_total",
            &[("parent", &pid), ("product", "whois")]
        ),
        Some(parent_whois)
    );
    // Responses carry the IETF rate-limit fields.
    let r = get(
        &format!("{}/whoisserver/WhoisService?d=1", g.proxy),
        &[("x-api-key", &members[1].1)],
    )
    .await
    .unwrap();
    assert!(r
        .header("ratelimit-policy")
        .unwrap()
        .contains("\"rate\";q=100000"));
    assert!(r.header("ratelimit").unwrap().starts_with("\"rate\";r="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_charged_request() {
    let up = StubUpstream::start().await;
    up.script(
        "/whoisserver/WhoisService/slow",
        200,
        Duration::from_millis(30),
    );
    let mut g = TestGateway::start(BIN.as_ref(), &routes(&up.url()).replace("50ms", "5s")).await;
    let subs = json!([{"pool": "whois", "credits": 1000000, "overage": "allow"}]);
    let (_, pkey) = create_parent(&g, subs).await;
    let url = format!("{}/whoisserver/WhoisService/slow", g.proxy);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (url, key) = (url.clone(), pkey.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for _ in 0..200 {
                match get(&url, &[("x-api-key", &key)]).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    _ => break, // the listener closed: the gateway is draining
                }
            }
            ok
        }));
    }
    let n = up.count();
    wait_until("load to be flowing", Duration::from_secs(10), || {
        let c = up.count();
        async move { c > n + 20 }
    })
    .await;
    // The flush interval is 5 s: almost everything is still in memory when SIGTERM arrives.
    let status = g.terminate().await;
    assert!(status.success(), "exit {status}:\n{}", g.log());
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert!(ok > 0);
    g.restart().await;
    let u = get(&format!("{}/v1/usage", g.account), &[("x-api-key", &pkey)])
        .await
        .unwrap()
        .json();
    assert_eq!(
        u["total"]["requests"].as_u64(),
        Some(ok),
        "every 2xx is in the store after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_pool_is_spent_to_the_last_credit_then_402() {
    let up = StubUpstream::start().await;
    let g = TestGateway::start(BIN.as_ref(), &routes(&up.url())).await;
    let subs = json!([{"pool": "whois", "credits": 10, "overage": "deny"}]);
    let (_, pkey) = create_parent(&g, subs).await;
    let (_, ckey) = g
        .create_child(&pkey, &format!("c-{}@m.example", free_port()))
        .await;
    let url = format!("{}/whoisserver/WhoisService", g.proxy);
    let hard = format!("{url}?_hardRefresh=1");
    // 5 + 1 + 1 + 1 + 1 + 1 = 10 credits, from two members of the pool.
    assert_eq!(
        get(&hard, &[("x-api-key", &ckey)]).await.unwrap().status,
        200
    );
    for i in 0..5 {
        let key = if i % 2 == 0 { &pkey } else { &ckey };
        assert_eq!(
            get(&url, &[("x-api-key", key)]).await.unwrap().status,
            200,
            "request {i}"
        );
    }
    let r = get(&url, &[("x-api-key", &ckey)]).await.unwrap();
    assert_eq!(r.status, 402);
    assert_eq!(r.code(), "credits_exhausted");
    assert_eq!(
        get(&url, &[("x-api-key", &pkey)]).await.unwrap().status,
        402
    );
    // A purchase (the operator raising the pool) lets requests through again.
    let pid = get(&format!("{}/v1/me", g.account), &[("x-api-key", &pkey)])
        .await
        .unwrap()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = send(
        Method::PUT,
        &format!("{}/admin/v1/parents/{pid}/subscriptions/whois", g.ops),
        &[
            ("authorization", &TestGateway::operator_auth()),
            ("content-type", "application/json"),
        ],
        json!({"credits": 11, "overage": "deny"}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        get(&url, &[("x-api-key", &ckey)]).await.unwrap().status,
        200
    );
    assert_eq!(
        get(&url, &[("x-api-key", &ckey)]).await.unwrap().status,
        402
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let up = StubUpstream::start().await;
    let cfg = routes(&up.url()).replace(
        "child = { rps = 100000, burst = 100000 }",
        "child = { rps = 1, burst = 2 }",
    );
    let g = TestGateway::start(BIN.as_ref(), &cfg).await;
    let (_, pkey) = create_parent(
        &g,
        json!([{"pool": "whois", "credits": 1000, "overage": "allow"}]),
    )
    .await;
    let (_, ckey) = g
        .create_child(&pkey, &format!("r-{}@m.example", free_port()))
        .await;
    let url = format!("{}/whoisserver/WhoisService", g.proxy);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&url, &[("x-api-key", &ckey)]).await.unwrap());
    }
    assert_eq!(statuses[0].status, 200);
    assert_eq!(statuses[1].status, 200);
    let limited = statuses
        .iter()
        .find(|r| r.status == 429)
        .expect("a 429 within 4 fast requests");
    assert_eq!(limited.code(), "rate_limited");
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry));
    // The parent has its own allowance.
    assert_eq!(
        get(&url, &[("x-api-key", &pkey)]).await.unwrap().status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_per_child_credits() {
    let up = StubUpstream::start().await;
    let g = TestGateway::start(BIN.as_ref(), &routes(&up.url())).await;
    let (pid, pkey) = create_parent(
        &g,
        json!([{"pool": "whois", "credits": 1000, "overage": "allow"}]),
    )
    .await;
    let (cid, ckey) = g
        .create_child(&pkey, &format!("p-{}@m.example", free_port()))
        .await;
    for q in ["a=1", "_hardRefresh=1", "b=2"] {
        let r = get(
            &format!("{}/whoisserver/WhoisService?{q}", g.proxy),
            &[("x-api-key", &ckey)],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
    }
    wait_flushed(&g).await;
    // promtool accepts the exposition as it is.
    let text = metrics_text(&g).await;
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(text.as_bytes());
    assert!(
        check.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    check.stdout.clear();

    let dir = tempfile::tempdir().unwrap();
    let ops = g.ops.trim_start_matches("http://");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tollgate\n    static_configs:\n      - targets: ['{ops}']\n"),
    )
    .unwrap();
    let port = free_port();
    let mut prom = std::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus on PATH (apt-get install prometheus)");
    let query = format!(
        "http://127.0.0.1:{port}/api/v1/query?query=tollgate_account_credits_total%7Baccount%3D%22{cid}%22%7D"
    );
    let mut value = None;
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < end {
        if let Ok(r) = get(&query, &[]).await {
            if r.status == 200 {
                let v = r.json();
                if let Some(s) = v["data"]["result"][0]["value"][1].as_str() {
                    value = Some((
                        s.to_owned(),
                        v["data"]["result"][0]["metric"]["parent"]
                            .as_str()
                            .map(str::to_owned),
                    ));
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = prom.kill();
    let _ = prom.wait();
    let (value, parent) = value.expect("Prometheus returned the series within 60 s");
    assert_eq!(value, "7", "1 + 5 + 1 credits");
    assert_eq!(parent.as_deref(), Some(pid.as_str()));
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output;
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

/// Credits taken from a `deny` pool for a request whose client goes away before the answer go
/// back to the pool: three requests abandoned mid-flight (hyper's path: a chunked body), then
/// the pool of 5 still admits 5. Before, each abandoned request took its credit for good. The
/// three are counted as `client_closed` (nginx's 499), not lost from the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_of_a_request_its_client_abandons_go_back_to_the_pool() {
    use tokio::io::AsyncWriteExt;
    let up = StubUpstream::start().await;
    up.script(
        "/whoisserver/WhoisService/slow",
        200,
        Duration::from_secs(3),
    );
    let g = TestGateway::start(BIN.as_ref(), &routes(&up.url())).await;
    let subs = json!([{"pool": "whois", "credits": 5, "overage": "deny"}]);
    let (_, pkey) = create_parent(&g, subs).await;
    let addr = g.proxy.trim_start_matches("http://").to_owned();
    for n in 0..3 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let req = format!(
            "POST /whoisserver/WhoisService/slow HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {pkey}\r\n\
             Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        // Gone once the request reached the upstream (admitted, its credit taken).
        wait_until(
            &format!("abandoned request {n} at the upstream"),
            Duration::from_secs(5),
            || async { up.count() > n },
        )
        .await;
        drop(s);
    }
    let url = format!("{}/whoisserver/WhoisService", g.proxy);
    let mut admitted = 0;
    loop {
        let status = get(&url, &[("x-api-key", &pkey)]).await.unwrap().status;
        if status != 200 {
            assert_eq!(status, 402);
            break;
        }
        admitted += 1;
        assert!(admitted <= 5, "more than the pool");
    }
    assert_eq!(admitted, 5, "requests admitted after three abandoned ones");
    let closed = [("route", "whois"), ("outcome", "client_closed")];
    wait_until(
        "three client_closed requests in the metrics",
        Duration::from_secs(5),
        || async { metric(&metrics_text(&g).await, "tollgate_requests_total", &closed) == Some(3) },
    )
    .await;
}
