//! Who holds the three listeners, end to end through the real binary: a gateway refuses to start
//! on an address another process listens on (a second gateway would otherwise join the first
//! one's `SO_REUSEPORT` group and take half of its connections to another store), and on SIGTERM
//! the ops listener stays up through the drain (`/healthz` 200, `/readyz` 503, `/metrics`, the
//! operator API) while the data plane and the account API stop accepting.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tollgate_testkit::http::{get, Reply};
use tollgate_testkit::{exit_of, free_port, wait_until, StubUpstream, TestGateway};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn route(prefix: &str, upstream: &str) -> String {
    format!(
        "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nproduct = \"whois\"\ncredits = 1\n"
    )
}

async fn create_parent(g: &TestGateway, email: &str) -> (String, String) {
    let subs = json!([{"pool": "whois", "credits": 1000, "overage": "allow"}]);
    g.create_parent(email, subs).await
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

async fn ops_get(g: &TestGateway, path: &str) -> Reply {
    get(&format!("{}{path}", g.ops), &[])
        .await
        .unwrap_or_else(|e| panic!("the ops listener did not answer {path}: {e}"))
}

/// The first gateway answers every call with its own store: with a second process in its port
/// group, about half of these would reach the other store and be refused as unknown keys.
async fn serves_alone(g: &TestGateway, key: &str) {
    for _ in 0..20 {
        let me = get(&format!("{}/v1/me", g.account), &[("x-api-key", key)])
            .await
            .unwrap();
        assert_eq!(me.status, 200, "{}", String::from_utf8_lossy(&me.body));
        let call = get(&format!("{}/whois", g.proxy), &[("x-api-key", key)])
            .await
            .unwrap();
        assert_eq!(call.status, 200, "{}", String::from_utf8_lossy(&call.body));
        assert_eq!(ops_get(g, "/healthz").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_an_address_in_use_refuses_to_start() {
    let up = StubUpstream::start().await;
    let g = TestGateway::start(BIN.as_ref(), &route("/whois", &up.url())).await;
    let (_, key) = create_parent(&g, "first@listeners.example").await;
    serves_alone(&g, &key).await;

    let dir = tempfile::tempdir().unwrap();
    let free = || format!("127.0.0.1:{}", free_port());
    // Each of the three addresses in turn; `dev` (fixed default ports, so given a config here)
    // takes the same path as `run`.
    let cases = [
        ("proxy", "run", [host_port(&g.proxy), free(), free()]),
        (
            "account_api",
            "run",
            [free(), host_port(&g.account), free()],
        ),
        ("ops", "dev", [free(), free(), host_port(&g.ops)]),
    ];
    for (i, (what, command, [p, a, o])) in cases.into_iter().enumerate() {
        let busy = match what {
            "proxy" => p.clone(),
            "account_api" => a.clone(),
            _ => o.clone(),
        };
        let config = dir.path().join(format!("second-{i}.toml"));
        let store = dir.path().join(format!("second-{i}.db"));
        std::fs::write(
            &config,
            format!(
                "[proxy]\nlisten = \"{p}\"\n[account_api]\nlisten = \"{a}\"\n[ops]\nlisten = \"{o}\"\n\
                 [store]\nbackend = \"embedded\"\npath = \"{}\"\n\n{}",
                store.display(),
                route("/whois", &up.url())
            ),
        )
        .unwrap();
        let args: [&OsStr; 3] = [command.as_ref(), "--config".as_ref(), config.as_os_str()];
        let (status, stderr) = exit_of(Path::new(BIN), &args, Duration::from_secs(30)).await;
        assert!(!status.success(), "{command} on {what}: {status}\n{stderr}");
        let expected = format!("cannot listen on {busy} ({what}): address in use");
        assert!(stderr.contains(&expected), "{command} on {what}:\n{stderr}");
        assert!(stderr.contains("--takeover"), "{stderr}");
        serves_alone(&g, &key).await;
    }
}

/// An upstream that takes one request and answers it only when released: a request in flight for
/// exactly as long as the test needs.
struct HeldUpstream {
    url: String,
    arrived: oneshot::Receiver<()>,
    release: oneshot::Sender<()>,
}

impl HeldUpstream {
    async fn start() -> HeldUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (arrived_tx, arrived) = oneshot::channel();
        let (release, release_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the gateway closed the upstream connection");
                head.extend_from_slice(&buf[..n]);
            }
            let _ = arrived_tx.send(());
            let _ = release_rx.await;
            conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nheld",
            )
            .await
            .unwrap();
        });
        HeldUpstream {
            url,
            arrived,
            release,
        }
    }
}

async fn refuses_connections(url: &str) -> bool {
    TcpStream::connect(host_port(url)).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_listener_stays_up_through_the_drain_and_readyz_turns_503() {
    let held = HeldUpstream::start().await;
    let g = TestGateway::start(BIN.as_ref(), &route("/held", &held.url)).await;
    let (pid, key) = create_parent(&g, "drain@listeners.example").await;
    assert_eq!(ops_get(&g, "/readyz").await.status, 200);

    let url = format!("{}/held", g.proxy);
    let inflight = tokio::spawn(async move { get(&url, &[("x-api-key", &key)]).await });
    tokio::time::timeout(Duration::from_secs(10), held.arrived)
        .await
        .expect("the request to reach the upstream within 10 s")
        .unwrap();

    g.signal("TERM");
    // Until the signal is handled /readyz may still say 200; it must never be refused.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let r = ops_get(&g, "/readyz").await;
        if r.status != 200 {
            break r;
        }
        assert!(
            std::time::Instant::now() < end,
            "/readyz still 200 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(ready.status, 503);
    assert!(
        ready.json()["reason"]
            .as_str()
            .unwrap()
            .contains("draining"),
        "{}",
        ready.json()
    );
    wait_until(
        "the data plane and the account API to stop accepting",
        Duration::from_secs(10),
        || async { refuses_connections(&g.proxy).await && refuses_connections(&g.account).await },
    )
    .await;

    // Draining, the request still held upstream: alive, scrapeable, operable.
    assert!(!inflight.is_finished());
    assert_eq!(ops_get(&g, "/healthz").await.status, 200);
    let metrics = ops_get(&g, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(String::from_utf8_lossy(&metrics.body).contains("tollgate_store_up"));
    let account = get(
        &format!("{}/admin/v1/accounts/{pid}", g.ops),
        &[("authorization", &TestGateway::operator_auth())],
    )
    .await
    .unwrap();
    assert_eq!(
        account.status,
        200,
        "{}",
        String::from_utf8_lossy(&account.body)
    );
    assert_eq!(ops_get(&g, "/readyz").await.status, 503);
    assert!(!inflight.is_finished());

    held.release.send(()).unwrap();
    let r = inflight.await.unwrap().unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(&r.body[..], b"held");
    let mut g = g;
    let status = g.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", g.log());
}

/// `run` without the environment variable a route's `upstream_auth` names exits 1 and says which
/// TOML path needs it (`check`, which may run where the secret is not, only warns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_without_an_upstream_secret_names_its_toml_path() {
    let dir = tempfile::tempdir().unwrap();
    let (p, a, o) = (free_port(), free_port(), free_port());
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{p}\"\n[account_api]\nlisten = \"127.0.0.1:{a}\"\n\
             [ops]\nlisten = \"127.0.0.1:{o}\"\n[store]\nbackend = \"embedded\"\npath = \"{}\"\n\n\
             [[routes]]\nprefix = \"/a\"\nupstream = \"http://127.0.0.1:9\"\nproduct = \"a\"\n\n\
             [[routes]]\nprefix = \"/b\"\nupstream = \"http://127.0.0.1:9\"\nproduct = \"b\"\n\
             upstream_auth = {{ query = \"apiKey\", env = \"TG_TEST_SECRET_NEVER_SET\" }}\n",
            dir.path().join("t.db").display()
        ),
    )
    .unwrap();
    let args: [&OsStr; 3] = ["run".as_ref(), "--config".as_ref(), config.as_os_str()];
    let (status, stderr) = exit_of(Path::new(BIN), &args, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("routes[1].upstream_auth.env")
            && stderr.contains("TG_TEST_SECRET_NEVER_SET is not set"),
        "{stderr}"
    );
}

/// Sends `raw` on a new connection and reads everything until the gateway closes it.
async fn raw_until_closed(addr: &str, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the gateway closes the connection after a request it cannot parse")
        .unwrap();
    String::from_utf8(got).unwrap()
}

/// As [`raw_until_closed`], the first response: (status, head, body).
async fn raw_exchange(addr: &str, raw: &[u8]) -> (u16, String, String) {
    let text = raw_until_closed(addr, raw).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// A request hyper cannot parse (a bad field, no HTTP at all, a head over the field limit, a long
/// target) is
/// answered on every listener with the status hyper chose and the contract's JSON error body,
/// where hyper alone sends an empty one; on the data plane before and after hyper has taken the
/// connection from the fast path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_be_parsed_get_a_json_error_on_every_listener() {
    let up = StubUpstream::start().await;
    let g = TestGateway::start(Path::new(BIN), &route("/whois", &up.url())).await;
    let (_, key) = create_parent(&g, "owner@parse.example").await;
    let bad_field = b"GET /whois HTTP/1.1\r\nHost: x\r\nX-Bad\x01Name: 1\r\n\r\n".to_vec();
    let no_http = b"GARBAGE\r\n\r\n".to_vec();
    // Over the 100 fields a head may have, in a few KiB: the gateway reads all of it before it
    // answers, so its close is a FIN (a close with bytes unread would reset the connection, and
    // the client could lose the answer).
    let mut huge = b"GET /whois HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..120 {
        huge.extend_from_slice(format!("X-Filler-{i}: v\r\n").as_bytes());
    }
    huge.extend_from_slice(b"\r\n");
    let listeners = [
        (host_port(&g.proxy), "bad_request"),
        (host_port(&g.account), "invalid_request"),
        (host_port(&g.ops), "invalid_request"),
    ];
    for (addr, code_400) in &listeners {
        for (raw, status, code) in [
            (&bad_field, 400, *code_400),
            (&no_http, 400, *code_400),
            (&huge, 431, "headers_too_large"),
        ] {
            let (got, head, body) = raw_exchange(addr, raw).await;
            assert_eq!(got, status, "{addr}: {head}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("content-type: application/json"),
                "{addr}: {head}"
            );
            // The data plane's answers carry a request id, as all its responses do.
            assert_eq!(
                head.to_ascii_lowercase().contains("x-request-id: "),
                *code_400 == "bad_request",
                "{addr}: {head}"
            );
            let json: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{addr}: not JSON ({e}): {body:?}"));
            assert_eq!(json["error"]["code"], code, "{addr}: {body}");
            assert!(json["error"]["message"].is_string(), "{body}");
        }
    }
    // A target over hyper's 64 KiB limit, where the head may be longer than that (the APIs'
    // may; the data plane's head limit, 64 KiB by default, answers such a head with 431). All of
    // it is read before the answer, so the close is a FIN.
    let long = format!(
        "GET /v1/me?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let (got, head, body) = raw_exchange(&host_port(&g.account), long.as_bytes()).await;
    assert_eq!(got, 414, "{head}");
    assert!(body.contains(r#""code":"uri_too_long""#), "{body}");

    // On the data plane after hyper took the connection (a POST is hyper's): a good request, then
    // a bad one on the same connection.
    let both = format!(
        "POST /whois HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nContent-Length: 2\r\n\r\n{{}}\
         GET /whois HTTP/1.1\r\nHost: x\r\nX-Bad\x01Name: 1\r\n\r\n"
    );
    let text = raw_until_closed(&host_port(&g.proxy), both.as_bytes()).await;
    let second = text
        .match_indices("HTTP/1.1 ")
        .nth(1)
        .map(|(i, _)| &text[i..])
        .unwrap_or_else(|| panic!("two responses: {text}"));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(second.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        second.ends_with(
            r#""code":"bad_request","message":"The request could not be understood."}}"#
        ),
        "{text}"
    );
    assert_eq!(up.requests().len(), 1);

    // The data plane counts them: two 400s and a 431 above, then the 400 after hyper took over.
    let metrics = String::from_utf8(ops_get(&g, "/metrics").await.body.to_vec()).unwrap();
    for (outcome, n) in [("bad_request", 3), ("headers_too_large", 1)] {
        let series =
            format!(r#"tollgate_requests_total{{outcome="{outcome}",route="_unmatched"}} {n}"#);
        assert!(metrics.contains(&series), "{series} not in the metrics");
    }
}
