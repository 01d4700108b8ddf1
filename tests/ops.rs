//! Operations, end to end through the real binary on real sockets: a config reload (SIGHUP) under
//! load, a rolling restart of two processes on one set of ports (`SO_REUSEPORT`) under load with
//! every 2xx counted once in the store, TLS termination with HTTP/1.1 and HTTP/2 by ALPN and a
//! certificate replaced on SIGHUP, and the access log (ids only, never a key; refusals capped).
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tollgate_testkit::http::{get, Reply};
use tollgate_testkit::{wait_until, StubUpstream, TestGateway, TestRedis};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const WHOIS: &str = "/whoisserver/WhoisService?domainName=example.com";

/// Limits far above what the load reaches, and a short flush so usage settles quickly.
fn config(upstream: &str) -> String {
    format!(
        r#"
[metering]
flush_interval = "50ms"

[limits]
parent = {{ rps = 1000000, burst = 1000000 }}
child = {{ rps = 1000000, burst = 1000000 }}

[[routes]]
prefix = "/whoisserver/WhoisService"
upstream = "{upstream}"
product = "whois"
credits = 1
"#
    )
}

async fn create_parent(g: &TestGateway, email: &str) -> (String, String) {
    let subs = json!([{"pool": "whois", "credits": 100000000, "overage": "allow"}]);
    g.create_parent(email, subs).await
}

async fn call(g: &TestGateway, path: &str, key: &str) -> Reply {
    get(&format!("{}{path}", g.proxy), &[("x-api-key", key)])
        .await
        .unwrap()
}

/// (requests, credits) of the caller's usage today, as the store has it.
async fn usage(g: &TestGateway, key: &str) -> (u64, u64) {
    let r = get(&format!("{}/v1/usage", g.account), &[("x-api-key", key)])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    (
        v["total"]["requests"].as_u64().unwrap(),
        v["total"]["credits"].as_u64().unwrap(),
    )
}

/// Clients sending requests back to back over shared keep-alive connections, as an application
/// server in front of the gateway would, counting 2xx answers and recording anything else.
struct Load {
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, key: String, workers: usize) -> Load {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let (client, url, key) = (client.clone(), url.clone(), key.clone());
                let (ok, failures, stop) = (ok.clone(), failures.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let req = http::Request::get(&url)
                            .header("x-api-key", &key)
                            .body(Empty::new())
                            .unwrap();
                        let outcome = match client.request(req).await {
                            Ok(resp) => {
                                let status = resp.status();
                                match resp.into_body().collect().await {
                                    Ok(_) if status.is_success() => Ok(()),
                                    Ok(body) => Err(format!(
                                        "{status}: {}",
                                        String::from_utf8_lossy(&body.to_bytes())
                                    )),
                                    Err(e) => Err(format!("{status}, body broken: {e}")),
                                }
                            }
                            Err(e) => Err(format!("request failed: {e:?}")),
                        };
                        match outcome {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            ok,
            failures,
            stop,
            workers,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` further requests succeeded.
    async fn advance(&self, more: u64, what: &str) {
        let target = self.ok() + more;
        wait_until(what, Duration::from_secs(30), || async {
            self.ok() >= target || !self.failures.lock().unwrap().is_empty()
        })
        .await;
    }

    /// Stops and returns (2xx count, failures).
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// Polls `probe` until it yields a value or `deadline` passes (then panics with `what`).
async fn poll<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_routes_prices_and_limits_under_load_and_refuses_a_broken_file() {
    let up = StubUpstream::start().await;
    let base = config(&up.url());
    let mut g = TestGateway::start(BIN.as_ref(), &base).await;
    let (_, pkey) = create_parent(&g, "reload@ops.example").await;
    let (_, ckey) = g.create_child(&pkey, "member@ops.example").await;
    let history = "/whois-history/api/v1?domainName=example.com";
    assert_eq!(call(&g, history, &pkey).await.code(), "route_not_found");
    // The child has a rate limiter at the old default before the reload.
    assert_eq!(call(&g, WHOIS, &ckey).await.status, 200);

    let load = Load::start(format!("{}{WHOIS}", g.proxy), pkey.clone(), 4);
    load.advance(50, "load before the reload").await;

    // New price on the loaded route, a new route, and a tight default limit for children.
    let path = g.config_path().to_owned();
    let text = std::fs::read_to_string(&path).unwrap();
    let reloaded = text
        .replace("credits = 1\n", "credits = 3\n")
        .replace(
            "child = { rps = 1000000, burst = 1000000 }",
            "child = { rps = 1, burst = 2 }",
        )
        + &format!(
            "\n[[routes]]\nprefix = \"/whois-history\"\nupstream = \"{}\"\nproduct = \"whois-history\"\npool = \"whois\"\ncredits = 2\n",
            up.url()
        );
    assert_ne!(text, reloaded);
    std::fs::write(&path, &reloaded).unwrap();
    g.reload();
    wait_until(
        "the new route after SIGHUP",
        Duration::from_secs(10),
        || async { call(&g, history, &pkey).await.status == 200 },
    )
    .await;
    load.advance(50, "load after the reload").await;
    let m = reload_metrics(&g).await;
    assert!(
        m.contains("tollgate_config_reloads_total{result=\"success\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tollgate_config_last_reload_successful 1"),
        "{m}"
    );

    // The child's new default limit: a burst of 2, then refused.
    let statuses = [
        call(&g, WHOIS, &ckey).await.status,
        call(&g, WHOIS, &ckey).await.status,
        call(&g, WHOIS, &ckey).await.status,
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [200, 200, 429]);

    // A file that fails `check`: refused, every problem logged with its path, the old one serves.
    std::fs::write(
        &path,
        format!("{reloaded}\n[[routes]]\nprefix = \"nope\"\nupstream = \"ftp://x\"\n"),
    )
    .unwrap();
    g.reload();
    wait_until(
        "the refusal in the log",
        Duration::from_secs(10),
        || async {
            g.log()
                .contains("config reload refused; the running config stays")
        },
    )
    .await;
    let log = g.log();
    assert!(log.contains("routes[2].prefix"), "{log}");
    assert!(log.contains("routes[2].upstream"), "{log}");
    load.advance(50, "load after the refused reload").await;
    assert_eq!(call(&g, history, &pkey).await.status, 200);
    let m = reload_metrics(&g).await;
    assert!(
        m.contains("tollgate_config_reloads_total{result=\"failure\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tollgate_config_last_reload_successful 0"),
        "{m}"
    );

    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty(), "failed requests: {failures:?}");

    // Every 2xx is in the store: the parent's load and its two successful history calls (the
    // probes before the reload were refused, so not charged). From now on whois costs 3 credits.
    let (requests, credits_before) = poll("usage flushed", Duration::from_secs(15), || async {
        let u = usage(&g, &pkey).await;
        (u.0 >= ok + 2).then_some(u)
    })
    .await;
    assert_eq!(requests, ok + 2);
    for _ in 0..5 {
        assert_eq!(call(&g, WHOIS, &pkey).await.status, 200);
    }
    wait_until(
        "five requests at 3 credits",
        Duration::from_secs(15),
        || async { usage(&g, &pkey).await == (requests + 5, credits_before + 15) },
    )
    .await;
    assert_eq!(g.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_on_shared_ports_loses_no_request_and_no_usage() {
    let redis = TestRedis::start();
    let up = StubUpstream::start().await;
    let cfg = format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\n{}",
        redis.url(),
        config(&up.url())
    );
    let mut a = TestGateway::start(BIN.as_ref(), &cfg).await;
    let (_, key) = create_parent(&a, "rolling@ops.example").await;

    let load = Load::start(format!("{}{WHOIS}", a.proxy), key.clone(), 8);
    load.advance(100, "load on the old process").await;

    // The new process binds the same three ports while the old one still serves.
    let mut b = a.start_sibling().await;
    load.advance(100, "load with both processes up").await;
    let status = a.terminate().await;
    assert!(status.success(), "old process: {status}\n{}", a.log());
    load.advance(200, "load on the new process alone").await;
    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty(), "failed requests: {failures:?}");

    // Both processes served and logged requests, in plain text: their stderr is a file, not a
    // terminal, so no colour codes.
    assert!(!lines_with(&a.log(), "tollgate::access").is_empty());
    assert!(
        !a.log().contains('\u{1b}'),
        "colour codes in a log file:\n{}",
        a.log()
    );
    assert!(
        !lines_with(&b.log(), "tollgate::access").is_empty(),
        "{}",
        b.log()
    );
    // The old process flushed at exit, the new one flushes as it goes: every 2xx counted once.
    let stored = poll(
        "usage of both processes",
        Duration::from_secs(15),
        || async {
            let u = usage(&b, &key).await;
            (u.0 >= ok).then_some(u)
        },
    )
    .await;
    assert_eq!(stored, (ok, ok), "usage in the store vs 2xx responses");
    let status = b.terminate().await;
    assert!(status.success(), "new process: {status}\n{}", b.log());
}

/// A self-signed certificate for `localhost` and 127.0.0.1: (certificate PEM, key PEM, DER).
fn certificate() -> (String, String, rustls::pki_types::CertificateDer<'static>) {
    let c =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    (
        c.cert.pem(),
        c.signing_key.serialize_pem(),
        c.cert.der().clone(),
    )
}

/// An HTTPS client trusting only `ca`, offering h2 and http/1.1 by ALPN, or http/1.1 alone.
fn tls_client(
    ca: &rustls::pki_types::CertificateDer<'static>,
    h2: bool,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    // ring, as the gateway uses (no C toolchain step).
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let connector = if h2 {
        builder.enable_http1().enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

/// One request; the protocol version it went over, or the error.
async fn tls_get(
    client: &Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Empty<Bytes>,
    >,
    url: &str,
    key: &str,
) -> Result<(u16, http::Version), String> {
    let req = http::Request::get(url)
        .header("x-api-key", key)
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let (status, version) = (resp.status().as_u16(), resp.version());
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, version))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_http2_by_alpn_and_a_certificate_replaced_on_sighup() {
    let up = StubUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (cert, key, der) = certificate();
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let cfg = format!(
        "{}\n[proxy.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        config(&up.url()),
        cert_path.display(),
        key_path.display()
    );
    let g = TestGateway::start(BIN.as_ref(), &cfg).await;
    let (pid, pkey) = create_parent(&g, "tls@ops.example").await;
    let port = g.proxy.rsplit(':').next().unwrap();
    let url = format!("https://localhost:{port}{WHOIS}");

    let (status, version) = tls_get(&tls_client(&der, true), &url, &pkey).await.unwrap();
    assert_eq!((status, version), (200, http::Version::HTTP_2));
    let (status, version) = tls_get(&tls_client(&der, false), &url, &pkey)
        .await
        .unwrap();
    assert_eq!((status, version), (200, http::Version::HTTP_11));
    assert_eq!(
        up.last().unwrap().header("x-tollgate-account"),
        Some(pid.as_str())
    );
    // The upstream learns the client came over TLS, on HTTP/2 and HTTP/1.1 alike.
    for r in &up.requests() {
        assert_eq!(r.header("x-forwarded-proto"), Some("https"));
        assert_eq!(
            r.header("x-forwarded-host"),
            Some(format!("localhost:{port}").as_str())
        );
    }
    // Plain HTTP on the TLS port is not served.
    assert!(get(&format!("{}{WHOIS}", g.proxy), &[("x-api-key", &pkey)])
        .await
        .is_err());

    // A new certificate, picked up by new connections after SIGHUP.
    let (cert2, key2, der2) = certificate();
    std::fs::write(&cert_path, cert2).unwrap();
    std::fs::write(&key_path, key2).unwrap();
    g.reload();
    wait_until("the new certificate", Duration::from_secs(10), || async {
        tls_get(&tls_client(&der2, true), &url, &pkey).await.is_ok()
    })
    .await;
    assert!(tls_get(&tls_client(&der, true), &url, &pkey).await.is_err());

    // A broken one is refused and the running certificate stays.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    g.reload();
    wait_until(
        "the refused certificate",
        Duration::from_secs(10),
        || async { g.log().contains("TLS certificate not replaced") },
    )
    .await;
    assert_eq!(
        tls_get(&tls_client(&der2, true), &url, &pkey).await,
        Ok((200, http::Version::HTTP_2))
    );
}

/// The JSON log lines of the access log.
fn access_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v| v["target"] == "tollgate::access")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_ids_never_keys_and_caps_refusals() {
    let up = StubUpstream::start().await;
    let cfg = format!(
        "[logging]\nformat = \"json\"\nrefusals_per_second = 3\n{}",
        config(&up.url())
    );
    let g = TestGateway::start(BIN.as_ref(), &cfg).await;
    let (pid, pkey) = create_parent(&g, "logs@ops.example").await;
    let (cid, ckey) = g.create_child(&pkey, "member@logs.example").await;
    let unknown = "at_0000000000000000000000000000z";

    let url = format!("{}{WHOIS}", g.proxy);
    let r = get(
        &url,
        &[("x-api-key", &ckey), ("x-request-id", "ops-admitted")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    // The key in the query this time: the line has the path, never the query.
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = get(
        &format!("{url}{sep}apiKey={unknown}"),
        &[("x-request-id", "ops-refused")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    let find = |id: &'static str| {
        let g = &g;
        async move {
            access_lines(&g.log())
                .into_iter()
                .find(|v| v["request_id"] == id)
        }
    };
    wait_until("both access lines", Duration::from_secs(10), || async {
        find("ops-admitted").await.is_some() && find("ops-refused").await.is_some()
    })
    .await;
    let admitted = find("ops-admitted").await.unwrap();
    assert_eq!(admitted["account"], cid.as_str());
    assert_eq!(admitted["parent"], pid.as_str());
    assert_eq!(admitted["route"], "whois");
    assert_eq!(admitted["status"], 200);
    assert_eq!(admitted["outcome"], "admitted");
    assert_eq!(admitted["credits"], 1);
    assert!(admitted["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(admitted["upstream_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(admitted["method"], "GET");
    assert_eq!(admitted["path"], WHOIS.split('?').next().unwrap());
    assert_eq!(admitted["client"], "127.0.0.1");
    let refused = find("ops-refused").await.unwrap();
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["outcome"], "key_unknown");
    assert_eq!(refused["credits"], 0);
    assert!(refused.get("account").is_none() && refused.get("upstream_ms").is_none());
    assert_eq!(refused["path"], WHOIS.split('?').next().unwrap());
    assert!(!g.log().contains(unknown), "a key in the log");

    // A burst of refusals: at most 3 lines a second, the rest counted in "suppressed" lines.
    let burst = 20;
    for i in 0..burst {
        let r = get(&url, &[("x-request-id", &format!("flood-{i}"))])
            .await
            .unwrap();
        assert_eq!(r.code(), "key_missing");
    }
    let (logged, suppressed) = poll(
        "every refusal logged or counted",
        Duration::from_secs(10),
        || async {
            let lines = access_lines(&g.log());
            let logged = lines
                .iter()
                .filter(|v| {
                    v["request_id"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("flood-"))
                })
                .count() as u64;
            let suppressed: u64 = lines.iter().filter_map(|v| v["suppressed"].as_u64()).sum();
            (logged + suppressed >= burst).then_some((logged, suppressed))
        },
    )
    .await;
    assert_eq!(logged + suppressed, burst);
    // The first second's allowance is shared with the refusal above.
    assert!(
        logged >= 1 && suppressed > 0,
        "{logged} logged, {suppressed} suppressed"
    );

    let log = g.log();
    for secret in [&pkey, &ckey, &unknown.to_owned()] {
        assert!(!log.contains(secret.as_str()), "a key in the log:\n{log}");
    }
}

/// The `tollgate_config_*` lines of `/metrics`.
async fn reload_metrics(g: &TestGateway) -> String {
    let body = tollgate_testkit::http::get(&format!("{}/metrics", g.ops), &[])
        .await
        .unwrap()
        .body;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("tollgate_config_"))
        .collect::<Vec<_>>()
        .join("\n")
}
