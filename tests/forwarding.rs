//! What goes upstream and what comes back, through the real `tollgate` binary on real sockets:
//! the fast path, hyper's path and HTTP/2 side by side (targets, fields, credentials, timeouts),
//! HTTPS upstreams over pooled connections.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tollgate_testkit::http::{get, post_json, send, send_chunked, send_h2c};
use tollgate_testkit::{StubUpstream, TestGateway};

mod common;
use common::{create_parent, read_response, routes, whois, BIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_work_over_pooled_connections() {
    let up = StubUpstream::start_tls().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, up.ca_pem.as_deref().unwrap()).unwrap();
    let cfg = format!(
        "[[routes]]\nprefix = \"/whoisserver/WhoisService\"\nupstream = \"{}\"\nproduct = \"whois\"\n",
        up.url()
    );
    let g = TestGateway::start_with_env(
        BIN.as_ref(),
        &cfg,
        &[("TOLLGATE_UPSTREAM_CA", ca.to_str().unwrap())],
    )
    .await;
    let (pid, key) = create_parent(&g, "owner@tls.example", &["whois"]).await;
    for _ in 0..10 {
        let r = whois(&g, &key).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(up.count(), 10);
    // Each data-plane worker (one per core by default) keeps its own pool.
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(
        up.connections() <= workers,
        "sequential requests reuse pooled TLS connections: {} connections for 10 requests on {workers} workers",
        up.connections()
    );
    let rec = up.last().unwrap();
    assert_eq!(rec.header("x-tollgate-account"), Some(pid.as_str()));
    assert_eq!(rec.header("host"), Some(up.addr.to_string().as_str()));

    // Without the CA the upstream's certificate is refused: 502, never a silent plaintext fallback.
    let g2 = TestGateway::start(BIN.as_ref(), &cfg).await;
    let (_, key2) = create_parent(&g2, "owner2@tls.example", &["whois"]).await;
    let r = whois(&g2, &key2).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (502, "upstream_unavailable".into())
    );
}

/// One keep-alive connection: pipelined GETs (the fast path), then a chunked POST (hyper takes
/// the connection over with the bytes already read), then a GET again (hyper's from then
/// on). Every response is right and nothing of the key or spoofed attribution reaches upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_through_both_paths() {
    use tokio::io::AsyncWriteExt;
    let up = StubUpstream::start().await;
    let g = TestGateway::start(BIN.as_ref(), &routes(&up.url())).await;
    let (pid, key) = create_parent(&g, "owner@paths.example", &["whois"]).await;
    let addr = g.proxy.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let get = |id: &str| {
        format!(
            "GET /whoisserver/WhoisService?domainName=a.example HTTP/1.1\r\nHost: {addr}\r\n\
             X-Api-Key: {key}\r\nX-Tollgate-Account: forged\r\nX-Forwarded-For: 10.0.0.9\r\n\
             X-Request-Id: {id}\r\n\r\n"
        )
    };
    let mut buf = Vec::new();
    // Two pipelined in one write.
    s.write_all(format!("{}{}", get("r-1"), get("r-2")).as_bytes())
        .await
        .unwrap();
    for id in ["r-1", "r-2"] {
        let (status, head, _) = read_response(&mut s, &mut buf).await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("x-request-id: {id}")),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase().contains("ratelimit-policy:"),
            "{head}"
        );
    }
    // A chunked body: hyper's path, same connection.
    let body = r#"{"q":"x"}"#;
    s.write_all(
        format!(
            "POST /whoisserver/WhoisService HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, head, _) = read_response(&mut s, &mut buf).await;
    assert_eq!(status, 200, "{head}");
    s.write_all(get("r-3").as_bytes()).await.unwrap();
    let (status, head, _) = read_response(&mut s, &mut buf).await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-request-id: r-3"),
        "{head}"
    );

    let seen = up.requests();
    assert_eq!(seen.len(), 4);
    for r in &seen {
        assert_eq!(r.header("x-api-key"), None, "the key went upstream");
        assert_eq!(r.header("x-tollgate-account"), Some(pid.as_str()));
    }
    for i in [0, 1, 3] {
        assert_eq!(
            seen[i].header("x-forwarded-for"),
            Some("10.0.0.9, 127.0.0.1")
        );
    }
    assert_eq!(seen[2].header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen[2].method, Method::POST);
    assert_eq!(&seen[2].body[..], body.as_bytes());
    assert_eq!(seen[0].header("x-request-id"), Some("r-1"));

    // HEAD on the fast path: the length, no body, the connection still usable.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        format!(
            "HEAD /whoisserver/WhoisService HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\
             X-Request-Id: x-head-probe\r\n\r\n{}",
            get("r-4")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut s, &mut buf).await;
    assert_eq!((status, body.len()), (200, 0), "{head}");
    let (status, head, _) = read_response(&mut s, &mut buf).await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-request-id: r-4"),
        "{head}"
    );

    // A refusal on the fast path, then Connection: close is honoured.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        format!(
            "GET /whoisserver/WhoisService HTTP/1.1\r\nHost: {addr}\r\n\
             X-Api-Key: at_nonexistentnonexistentnonexi\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut s, &mut buf).await;
    assert_eq!(status, 401, "{head}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "key_unknown");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let mut rest = Vec::new();
    use tokio::io::AsyncReadExt;
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the connection closes after Connection: close");
}

/// An upstream that answers every request on its connections with `head` and a `{}` body.
async fn raw_upstream(head: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let req = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = if req.contains("transfer-encoding: chunked") {
                            // The bodies here are one chunk: up to the last chunk's end.
                            match buf[end + 4..].windows(5).position(|w| w == b"0\r\n\r\n") {
                                Some(at) => at + 5,
                                None => break,
                            }
                        } else {
                            req.lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse().unwrap())
                        };
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        buf.drain(..end + 4 + len);
                        let resp = format!("{head}Content-Length: 2\r\n\r\n{{}}");
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    url
}

/// The upstream's response fields reach the client less the hop-by-hop ones (and those its
/// `Connection` names) and less the ones Tollgate sets itself, the same on both paths (GET and a
/// `Content-Length` POST: the fast path; a chunked POST: hyper's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_fields_lose_hop_by_hop_and_spoofed_ones_on_both_paths() {
    use tokio::io::AsyncWriteExt;
    let up = raw_upstream(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive, X-Hop\r\n\
         X-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
         X-Request-Id: from-upstream\r\nRateLimit: \"forged\";r=1\r\n\
         RateLimit-Policy: \"forged\";q=1\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\n\
         X-Kept: yes\r\nX-Kept: twice\r\n",
    )
    .await;
    let g = TestGateway::start(BIN.as_ref(), &routes(&up)).await;
    let (_, key) = create_parent(&g, "owner@fields.example", &["whois"]).await;
    let addr = g.proxy.trim_start_matches("http://").to_owned();
    let requests = [
        format!(
            "GET /whoisserver/WhoisService HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\
             X-Request-Id: mine\r\n\r\n"
        ),
        format!(
            "POST /whoisserver/WhoisService HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\
             X-Request-Id: mine\r\nContent-Length: 2\r\n\r\n{{}}"
        ),
        format!(
            "POST /whoisserver/WhoisService HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\
             X-Request-Id: mine\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
        ),
    ];
    let mut seen = Vec::new();
    for req in requests {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let (status, head, body) = read_response(&mut s, &mut buf).await;
        assert_eq!((status, &body[..]), (200, &b"{}"[..]), "{head}");
        let mut fields: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        fields.sort();
        let all = |name: &str| -> Vec<&str> {
            fields
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(all("x-kept"), ["twice", "yes"], "{head}");
        assert_eq!(all("content-type"), ["application/json"], "{head}");
        assert_eq!(all("content-length"), ["2"], "{head}");
        assert_eq!(all("x-request-id"), ["mine"], "{head}");
        assert_eq!(all("date"), ["Tue, 01 Dec 2026 10:00:00 GMT"], "{head}");
        for gone in ["x-hop", "keep-alive", "proxy-connection"] {
            assert!(all(gone).is_empty(), "{gone} reached the client: {head}");
        }
        for ours in ["ratelimit", "ratelimit-policy"] {
            let values = all(ours);
            assert_eq!(values.len(), 1, "{head}");
            assert!(!values[0].contains("forged"), "{head}");
        }
        // `connection` is the gateway's own (keep-alive), never the upstream's list.
        assert!(
            all("connection").iter().all(|v| !v.contains("X-Hop")),
            "{head}"
        );
        seen.push(
            fields
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| n != "connection")
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(seen[0], seen[1], "the two paths forward different fields");
    assert_eq!(seen[0], seen[2], "the two paths forward different fields");
}

/// On one kept-alive connection (the fast path keeps one timer for the route timeouts of its
/// requests), each request gets its whole timeout: a request still running when an earlier
/// request's deadline passes is not cut short, and one that runs past its own gets 504 on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_a_connection_gets_its_whole_timeout() {
    use tokio::io::AsyncWriteExt;
    let up = StubUpstream::start().await;
    up.script("/t/medium", 200, Duration::from_millis(600));
    up.script("/t/slow", 200, Duration::from_secs(3));
    let cfg = format!(
        r#"
[[routes]]
prefix = "/t"
upstream = "{}"
product = "whois"
timeout = "1s"
"#,
        up.url()
    );
    let g = TestGateway::start(BIN.as_ref(), &cfg).await;
    let (_, key) = create_parent(&g, "owner@timeouts.example", &["whois"]).await;
    let addr = g.proxy.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\r\n");

    // Arms the connection's timer for t0 + 1 s.
    s.write_all(get("/t/fast").as_bytes()).await.unwrap();
    let (status, head, _) = read_response(&mut s, &mut buf).await;
    assert_eq!(status, 200, "{head}");
    // Time passing is the scenario here: the next request starts 0.7 s in and its upstream takes
    // 0.6 s, so the first request's deadline passes while it runs; its own is 1.7 s.
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.write_all(get("/t/medium").as_bytes()).await.unwrap();
    let (status, head, _) = read_response(&mut s, &mut buf).await;
    assert_eq!(
        status, 200,
        "cut short by an earlier request's deadline: {head}"
    );

    let t = std::time::Instant::now();
    s.write_all(get("/t/slow").as_bytes()).await.unwrap();
    let (status, head, body) = read_response(&mut s, &mut buf).await;
    let took = t.elapsed();
    assert_eq!(status, 504, "{head}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(2900),
        "504 after {took:?}, the route timeout is 1 s"
    );
}

/// The query key comes out wherever it stands, and only it: the fast path (GET, and POST with a
/// `Content-Length` body), hyper's (a chunked POST) and HTTP/2 send the upstream the same target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_key_is_cut_out_of_the_target_and_nothing_else() {
    let up = StubUpstream::start().await;
    let g = TestGateway::start(BIN.as_ref(), &routes(&up.url())).await;
    let (_, key) = create_parent(&g, "owner@q.example", &["whois"]).await;
    let base = format!("{}/whoisserver/WhoisService", g.proxy);
    let cases = [
        (format!("apiKey={key}&a=1&&b=x%26y"), "a=1&&b=x%26y"),
        (format!("a=1&apiKey={key}&b=2&&c"), "a=1&b=2&&c"),
        (format!("&apiKey={key}&a=1&"), "&a=1&"),
        (format!("a=1&apiKey={key}&&apiKey=x"), "a=1&"),
        (format!("a=1&apiKey={key}&apiKeyX=2"), "a=1&apiKeyX=2"),
        (format!("a=1&apiKey={key}"), "a=1"),
        (format!("apiKey={key}"), ""),
    ];
    for (query, want) in &cases {
        let url = format!("{base}?{query}");
        let replies = [
            ("GET", get(&url, &[]).await.unwrap()),
            (
                "POST",
                post_json(&url, &[], &json!({"x": 1})).await.unwrap(),
            ),
            (
                "chunked POST",
                send_chunked(Method::POST, &url, &[], "{}").await.unwrap(),
            ),
            ("h2", send_h2c(Method::GET, &url, &[]).await.unwrap()),
        ];
        for (how, r) in &replies {
            assert_eq!(r.status, 200, "{how} {query}");
        }
        let seen = up.requests();
        for (rec, (how, _)) in seen[seen.len() - replies.len()..].iter().zip(&replies) {
            let want = if want.is_empty() {
                "/whoisserver/WhoisService".to_owned()
            } else {
                format!("/whoisserver/WhoisService?{want}")
            };
            assert_eq!(rec.uri, want, "{how} {query}");
        }
    }
}

/// The vendor's own credential goes upstream in place of the client's key, by query or header, on
/// every path (GET and a `Content-Length` POST: the fast path; a chunked POST: hyper's; HTTP/2
/// GET: bytes, as the fast path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_credentials_replace_the_clients_key() {
    let up = StubUpstream::start().await;
    let cfg = format!(
        r#"
[[routes]]
prefix = "/whoisserver/WhoisService"
upstream = "{u}"
product = "whois"
upstream_auth = {{ query = "apiKey", env = "TG_TEST_VENDOR_Q" }}

[[routes]]
prefix = "/dns"
upstream = "{u}"
product = "whois"
upstream_auth = {{ header = "x-api-key", env = "TG_TEST_VENDOR_H" }}
"#,
        u = up.url()
    );
    let g = TestGateway::start_with_env(
        BIN.as_ref(),
        &cfg,
        &[
            ("TG_TEST_VENDOR_Q", "at_vendor-q.1~ &2"),
            ("TG_TEST_VENDOR_H", "vendor-h"),
        ],
    )
    .await;
    let (_, key) = create_parent(&g, "owner@vendor.example", &["whois"]).await;
    let q = format!("{}/whoisserver/WhoisService?domainName=a.example", g.proxy);
    let r = get(&format!("{q}&apiKey={key}"), &[]).await.unwrap();
    assert_eq!(r.status, 200);
    let r = post_json(&q, &[("x-api-key", &key)], &json!({"x": 1}))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = send_chunked(Method::POST, &q, &[("x-api-key", &key)], "{}")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = send_h2c(Method::GET, &format!("{q}&apiKey={key}"), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let h = format!("{}/dns/lookup?name=a.example", g.proxy);
    let r = get(&h, &[("x-api-key", &key)]).await.unwrap();
    assert_eq!(r.status, 200);
    let r = send_h2c(Method::GET, &h, &[("x-api-key", &key)])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let seen = up.requests();
    assert_eq!(seen.len(), 6);
    for r in &seen[..4] {
        assert_eq!(
            r.uri, "/whoisserver/WhoisService?domainName=a.example&apiKey=at_vendor-q.1~%20%262",
            "{:?}",
            r.method
        );
        assert_eq!(r.header("x-api-key"), None);
    }
    for r in &seen[4..] {
        assert_eq!(r.uri, "/dns/lookup?name=a.example");
        assert_eq!(r.header("x-api-key"), Some("vendor-h"));
    }
}

/// A path the upstream would resolve elsewhere than it was routed (dot segments, written out or
/// percent-encoded; encoded slashes and backslashes) is refused with 400 `invalid_request` before
/// its key or route is looked at, on the fast path (raw GET and HEAD, so nothing normalises the
/// `..`), hyper's (bodies, absolute and asterisk form) and HTTP/2: the upstream never sees it and
/// nothing is metered. Paths that only look alike, and queries, pass unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_and_encoded_separators_are_refused_on_every_path() {
    use tokio::io::AsyncWriteExt;
    let up = StubUpstream::start().await;
    let cfg = format!(
        r#"
[metering]
flush_interval = "50ms"

[[routes]]
prefix = "/whoisserver/WhoisService"
upstream = "{u}"
product = "whois"

[[routes]]
prefix = "/whoisserver/DNSService"
upstream = "{u}"
product = "dns"

[[routes]]
prefix = "/billing"
upstream = "{u}"
permission = "billing.view"
"#,
        u = up.url()
    );
    let g = TestGateway::start(BIN.as_ref(), &cfg).await;
    let (pid, pkey) = create_parent(&g, "owner@dots.example", &["whois"]).await;
    let (cid, ckey) = g.create_child(&pkey, "member@dots.example").await;
    let addr = g.proxy.trim_start_matches("http://").to_owned();
    let refused = |status: u16, head: &str, body: &[u8], what: &str| {
        assert_eq!(status, 400, "{what}: {head}");
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_request", "{what}");
        assert!(v["error"]["message"].as_str().unwrap().len() > 20);
        let head = head.to_ascii_lowercase();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("x-request-id: "), "{head}");
    };
    // The premise: the child's tenant has no DNS subscription.
    let r = get(
        &format!("{}/whoisserver/DNSService?domainName=x", g.proxy),
        &[("x-api-key", &ckey)],
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "product_not_subscribed".into())
    );

    let attacks = [
        "/whoisserver/WhoisService/../DNSService?domainName=x",
        "/whoisserver/WhoisService/%2e%2e/DNSService?domainName=x",
        "/whoisserver/WhoisService/.%2E/DNSService",
        "/whoisserver/WhoisService/%2E./DNSService",
        "/whoisserver/WhoisService/..%2FDNSService",
        "/whoisserver/WhoisService%2f..%2fDNSService",
        "/whoisserver/WhoisService/..%5cDNSService",
        "/whoisserver/WhoisService\\..\\DNSService",
        "/whoisserver/WhoisService/..;/DNSService",
        "/whoisserver/WhoisService/./x",
        "/whoisserver/WhoisService/..",
        "/billing/../whoisserver/DNSService",
    ];
    let before = up.count();
    let mut invalid = 0;

    // The fast path: one kept-alive connection, GETs and a HEAD, then a normal request on it.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();
    for p in attacks {
        let req = format!("GET {p} HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {ckey}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let (status, head, body) = read_response(&mut s, &mut buf).await;
        refused(status, &head, &body, p);
        invalid += 1;
    }
    s.write_all(
        format!(
            "HEAD {} HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {ckey}\r\nX-Request-Id: x-head-probe\r\n\r\n",
            attacks[0]
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, head, body) = read_response(&mut s, &mut buf).await;
    assert_eq!((status, body.len()), (400, 0), "HEAD: {head}");
    invalid += 1;
    // Segments and queries that only look like those go upstream as they came.
    let normal = [
        "/whoisserver/WhoisService/.well-known/a.b/.../%2e%2e%2e/..x?q=../x&r=%2F..%2F&s=%2e%2e",
        "/whoisserver/WhoisService?domainName=a/../b%5c",
    ];
    let mut admitted = 0;
    for p in normal {
        let req = format!("GET {p} HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {ckey}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let (status, head, _) = read_response(&mut s, &mut buf).await;
        assert_eq!(status, 200, "{p}: {head}");
        assert_eq!(up.last().unwrap().uri, p);
        admitted += 1;
    }

    // Hyper's path: a body (the key in it too), absolute form and asterisk form; a connection each.
    let body = format!(r#"{{"apiKey":"{ckey}"}}"#);
    let mut hyper_reqs: Vec<String> = attacks
        .iter()
        .map(|p| {
            format!(
                "POST {p} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        })
        .collect();
    for target in [
        format!("http://{addr}{}", attacks[0]),
        format!("http://{addr}{}", attacks[1]),
        "*".to_owned(),
    ] {
        hyper_reqs.push(format!(
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {ckey}\r\n\r\n"
        ));
    }
    hyper_reqs.push(format!(
        "OPTIONS * HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {ckey}\r\n\r\n"
    ));
    for req in &hyper_reqs {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let (status, head, body) = read_response(&mut s, &mut Vec::new()).await;
        refused(status, &head, &body, req);
        invalid += 1;
    }
    // The same on hyper's path with nothing wrong: admitted (absolute form goes up in origin form).
    let p = normal[0];
    for req in [
        format!(
            "POST {p} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        format!("GET http://{addr}{p} HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {ckey}\r\n\r\n"),
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let (status, head, _) = read_response(&mut s, &mut Vec::new()).await;
        assert_eq!(status, 200, "{req}: {head}");
        assert_eq!(up.last().unwrap().uri, p);
        admitted += 1;
    }

    // HTTP/2.
    for p in attacks {
        let r = send_h2c(
            Method::GET,
            &format!("{}{p}", g.proxy),
            &[("x-api-key", &ckey)],
        )
        .await
        .unwrap();
        let head: String = r
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {}\r\n", v.to_str().unwrap()))
            .collect();
        refused(r.status.as_u16(), &head, &r.body, p);
        invalid += 1;
    }
    let r = send_h2c(
        Method::GET,
        &format!("{}{p}", g.proxy),
        &[("x-api-key", &ckey)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last().unwrap().uri, p);
    admitted += 1;

    // Nothing refused reached the upstream, or was counted anywhere but as `invalid_request`.
    assert_eq!(up.count(), before + admitted);
    assert!(up.requests().iter().all(|r| !r.uri.contains("DNSService")));
    let text =
        String::from_utf8_lossy(&get(&format!("{}/metrics", g.ops), &[]).await.unwrap().body)
            .into_owned();
    assert!(
        text.contains(&format!(
            r#"tollgate_requests_total{{outcome="invalid_request",route="_unmatched"}} {invalid}"#
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"tollgate_requests_total{{outcome="admitted",route="whois"}} {admitted}"#
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"tollgate_account_requests_total{{account="{cid}",parent="{pid}",product="whois"}} {admitted}"#
        )),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("tollgate_") && l.contains("product=\"dns\"")),
        "{text}"
    );
    // And in the store: once the usage of every admitted request is there, that is all there is.
    let usage = || async {
        get(&format!("{}/v1/usage", g.account), &[("x-api-key", &ckey)])
            .await
            .unwrap()
            .json()
    };
    tollgate_testkit::wait_until(
        "the usage to be flushed",
        Duration::from_secs(10),
        || async { usage().await["total"]["requests"].as_u64() >= Some(admitted as u64) },
    )
    .await;
    let u = usage().await;
    assert_eq!(u["total"]["requests"], admitted, "{u}");
    assert_eq!(u["by_product"]["whois"]["requests"], admitted, "{u}");
    assert!(u["by_product"].get("dns").is_none(), "{u}");
}

/// `key_missing` names the key sources in force, in their order, on every path (GET: the fast
/// path; POST with a JSON body: hyper's; HTTP/2): the head sources and the first `json:` one, the
/// only one read. Before, the data plane always named the default sources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_missing_names_the_configured_sources_on_every_path() {
    let up = StubUpstream::start().await;
    let cfg = format!(
        "[keys]\nsources = [\"header:x-authentication-token\", \"json:apiKey\", \"query:token\", \
         \"json:key\"]\n{}",
        routes(&up.url())
    );
    let g = TestGateway::start(BIN.as_ref(), &cfg).await;
    let url = format!("{}/whoisserver/WhoisService?domainName=a.example", g.proxy);
    // A key where the default sources, not these, would find it.
    let default_place = [("x-api-key", "at_0000000000000000000000000000z")];
    let replies = [
        ("GET", get(&url, &default_place).await.unwrap()),
        (
            "POST",
            post_json(
                &url,
                &default_place,
                &json!({"key": "at_0000000000000000000000000000z"}),
            )
            .await
            .unwrap(),
        ),
        (
            "h2",
            send_h2c(Method::GET, &url, &default_place).await.unwrap(),
        ),
    ];
    for (how, r) in &replies {
        assert_eq!(r.status, 401, "{how}");
        assert_eq!(
            r.json(),
            json!({"error": {"code": "key_missing", "message":
                "No API key was given: send it in the x-authentication-token header, the apiKey \
                 field of a JSON body, or the token query parameter."}}),
            "{how}"
        );
        assert_eq!(
            r.headers["content-length"].to_str().unwrap(),
            r.body.len().to_string(),
            "{how}"
        );
    }
    assert!(up.requests().is_empty());
}

/// The host a request is routed by follows HTTP's rules (RFC 9112 section 3.2, RFC 9113 section
/// 8.3.1): an HTTP/1.1 request without `Host` or with two is a 400 `invalid_request`, an
/// absolute-form target's authority wins over `Host`, HTTP/1.0 may go without one, and an HTTP/2
/// `host` field that names another host than `:authority` is malformed. Nothing refused reaches
/// an upstream.
#[tokio::test]
async fn the_host_a_request_is_routed_by_follows_http() {
    use tokio::io::AsyncWriteExt;
    let named = StubUpstream::start().await;
    let other = StubUpstream::start().await;
    let cfg = format!(
        r#"
[[routes]]
prefix = "/whoisserver/WhoisService"
host = "named.example"
upstream = "{n}"
product = "whois"

[[routes]]
prefix = "/whoisserver/WhoisService"
upstream = "{o}"
product = "whois"
"#,
        n = named.url(),
        o = other.url()
    );
    let g = TestGateway::start(BIN.as_ref(), &cfg).await;
    let (_, key) = create_parent(&g, "owner@host.example", &["whois"]).await;
    let addr = g.proxy.trim_start_matches("http://").to_owned();
    let path = "/whoisserver/WhoisService?domainName=a.example";
    let raw = |head: String| {
        let addr = addr.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            read_response(&mut s, &mut buf).await
        }
    };
    let refused = [
        format!("GET {path} HTTP/1.1\r\nX-Api-Key: {key}\r\n\r\n"),
        format!(
            "GET {path} HTTP/1.1\r\nHost: named.example\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\r\n"
        ),
    ];
    for head in refused {
        let (status, resp, body) = raw(head.clone()).await;
        assert_eq!(status, 400, "{head:?}: {resp}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_request", "{head:?}");
    }
    assert_eq!((named.count(), other.count()), (0, 0));

    // Absolute form: the target's authority, not Host.
    let (status, resp, _) = raw(format!(
        "GET http://named.example{path} HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\r\n"
    ))
    .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!((named.count(), other.count()), (1, 0));
    // Host as the fast path reads it, either case, with a port.
    let (status, resp, _) = raw(format!(
        "GET {path} HTTP/1.1\r\nHost: Named.Example:8080\r\nX-Api-Key: {key}\r\n\r\n"
    ))
    .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!((named.count(), other.count()), (2, 0));
    // HTTP/1.0 without Host: the routes without a host.
    let (status, resp, _) = raw(format!("GET {path} HTTP/1.0\r\nX-Api-Key: {key}\r\n\r\n")).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!((named.count(), other.count()), (2, 1));

    // HTTP/2: :authority is the host; a host field that disagrees is malformed.
    let url = format!("{}{path}", g.proxy);
    let r = send_h2c(Method::GET, &url, &[("x-api-key", &key)])
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!((named.count(), other.count()), (2, 2));
    let r = send_h2c(
        Method::GET,
        &url,
        &[("x-api-key", &key), ("host", "named.example")],
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "invalid_request".into())
    );
    assert_eq!((named.count(), other.count()), (2, 2));
}

/// An upstream that answers each request with a head promising 100 bytes and sends 5 of them,
/// then holds its connections open without another byte.
async fn stalling_upstream() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
                .await;
            held.push(s);
        }
    });
    url
}

/// The route's `timeout` also bounds each wait for the response body (as nginx's
/// `proxy_read_timeout`): an upstream that stalls in the middle of a body has the response cut
/// off after it, on every path, instead of holding the client for as long as it likes; and the
/// request-duration histogram covers the whole response, body included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_cut_off_after_the_route_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = stalling_upstream().await;
    let cfg = format!(
        r#"
[[routes]]
name = "stall"
prefix = "/whoisserver/WhoisService"
upstream = "{up}"
product = "whois"
timeout = "1s"
"#
    );
    let g = TestGateway::start(BIN.as_ref(), &cfg).await;
    let (_, key) = create_parent(&g, "owner@stall.example", &["whois"]).await;
    let addr = g.proxy.trim_start_matches("http://").to_owned();
    let path = "/whoisserver/WhoisService?domainName=a.example";
    let deadline = Duration::from_secs(15);

    // HTTP/1.1: the fast path (GET) and hyper's (a chunked POST). The client sees the 5 bytes,
    // then the connection ends short of the promised 100.
    let heads = [
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\r\n"),
        format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\
             Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
        ),
    ];
    for head in heads {
        let started = std::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(deadline, async {
            let mut chunk = [0u8; 4096];
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "still waiting after {deadline:?}: {head:?}");
        let elapsed = started.elapsed();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("\r\n\r\nhello"), "{text}");
        assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    }

    // HTTP/2: the stream is reset after the timeout; the client gets an error, not a body.
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        deadline,
        send_h2c(
            Method::GET,
            &format!("{}{path}", g.proxy),
            &[("x-api-key", &key)],
        ),
    )
    .await
    .expect("the HTTP/2 request ends");
    assert!(r.is_err(), "a body cut short is an error on HTTP/2");
    assert!(started.elapsed() >= Duration::from_secs(1));

    // Each of the three requests took over a second as its client saw it, and the histogram
    // says so (it used to stop at the response head, a few milliseconds).
    let metrics =
        String::from_utf8_lossy(&get(&format!("{}/metrics", g.ops), &[]).await.unwrap().body)
            .into_owned();
    let field = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains(r#"route="stall""#))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
            .parse()
            .unwrap()
    };
    assert_eq!(field("tollgate_request_duration_seconds_count"), 3.0);
    assert!(field("tollgate_request_duration_seconds_sum") >= 3.0);
}

/// A request body streamed slower than the route's timeout is not cut off: the timeout bounds
/// the upstream's waits (to take more of the body, then to answer after it), not the client's
/// upload, as nginx's `proxy_send_timeout` and `proxy_read_timeout` do. A client that pauses
/// its body for longer than `[proxy] client_body_timeout` gets 408 `request_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_slower_than_the_route_timeout_goes_through() {
    use tokio::io::AsyncWriteExt;
    let up = StubUpstream::start().await;
    let cfg = format!(
        r#"
[proxy]
client_body_timeout = "1500ms"

[[routes]]
prefix = "/whoisserver/WhoisService"
upstream = "{}"
product = "whois"
timeout = "1s"
"#,
        up.url()
    );
    let g = TestGateway::start(BIN.as_ref(), &cfg).await;
    let (_, key) = create_parent(&g, "owner@upload.example", &["whois"]).await;
    let addr = g.proxy.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST /whoisserver/WhoisService?domainName=a.example HTTP/1.1\r\nHost: {addr}\r\n\
         X-Api-Key: {key}\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    );

    // Six parts 400 ms apart: 2.4 s of upload on a route with a 1 s timeout.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    for _ in 0..6 {
        s.write_all(b"4\r\npart\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let (status, resp_head, body) = read_response(&mut s, &mut buf).await;
    assert_eq!(
        status,
        200,
        "{resp_head}\n{}",
        String::from_utf8_lossy(&body)
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(up.last().unwrap().body, "part".repeat(6).as_bytes());

    // One part, then nothing for longer than client_body_timeout.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(b"4\r\npart\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let (status, resp_head, body) = read_response(&mut s, &mut buf).await;
    assert_eq!(status, 408, "{resp_head}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "request_timeout");
    assert!(started.elapsed() >= Duration::from_millis(1400));
    let metrics = get(&format!("{}/metrics", g.ops), &[]).await.unwrap().body;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"tollgate_requests_total{outcome="request_timeout",route="whois"} 1"#),
        "{metrics}"
    );
}

/// `x-forwarded-for` keeps every value the client sent, in order (two fields are one list), then
/// the client's address; `x-forwarded-proto` and `x-forwarded-host` are Tollgate's (the scheme the
/// client used, the host it addressed), never the client's own: on the fast path (GET, and a
/// `Content-Length` POST), hyper's (a chunked POST, an absolute-form target) and HTTP/2 (GET as
/// bytes, a POST through a header map).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_fields_keep_every_hop_and_say_how_the_client_came() {
    use tokio::io::AsyncWriteExt;
    let up = StubUpstream::start().await;
    let g = TestGateway::start(BIN.as_ref(), &routes(&up.url())).await;
    let (_, key) = create_parent(&g, "owner@xff.example", &["whois"]).await;
    let addr = g.proxy.trim_start_matches("http://").to_owned();
    let path = "/whoisserver/WhoisService?domainName=a.example";
    let spoofed = "X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n\
                   X-Forwarded-Host: evil.example\r\nX-Forwarded-For: 5.6.7.8\r\n";
    let raw = [
        format!(
            "GET {path} HTTP/1.1\r\nHost: client.example:8080\r\nX-Api-Key: {key}\r\n{spoofed}\r\n"
        ),
        format!(
            "POST {path} HTTP/1.1\r\nHost: client.example:8080\r\nX-Api-Key: {key}\r\n{spoofed}\
             Content-Length: 2\r\n\r\n{{}}"
        ),
        format!(
            "POST {path} HTTP/1.1\r\nHost: client.example:8080\r\nX-Api-Key: {key}\r\n{spoofed}\
             Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
        ),
        // Absolute form: the host addressed is the target's, not the Host field's.
        format!(
            "GET http://client.example:8080{path} HTTP/1.1\r\nHost: other.example\r\n\
             X-Api-Key: {key}\r\n{spoofed}\r\n"
        ),
    ];
    for req in &raw {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let (status, head, _) = read_response(&mut s, &mut buf).await;
        assert_eq!(status, 200, "{req:?}: {head}");
    }
    let url = format!("{}{path}", g.proxy);
    let h2_fields = [
        ("x-api-key", key.as_str()),
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-for", "5.6.7.8"),
    ];
    let r = send_h2c(Method::GET, &url, &h2_fields).await.unwrap();
    assert_eq!(r.status, 200);
    let r = tollgate_testkit::http::send_h2c_body(Method::POST, &url, &h2_fields, "{}", false)
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    let seen = up.requests();
    assert_eq!(seen.len(), 6);
    let hows = [
        "fast GET",
        "fast POST",
        "chunked POST",
        "absolute form",
        "h2 GET",
        "h2 POST",
    ];
    for (rec, how) in seen.iter().zip(hows) {
        let all = |name: &str| -> Vec<&str> {
            rec.headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(
            all("x-forwarded-for"),
            ["1.2.3.4, 5.6.7.8, 127.0.0.1"],
            "{how}"
        );
        assert_eq!(all("x-forwarded-proto"), ["http"], "{how}");
        let host = if how.starts_with("h2") {
            addr.as_str()
        } else {
            "client.example:8080"
        };
        assert_eq!(all("x-forwarded-host"), [host], "{how}");
        assert_eq!(all("host"), [up.addr.to_string().as_str()], "{how}");
    }

    // Nothing from the client: its address alone, and still the scheme and host.
    let r = get(&url, &[("x-api-key", &key)]).await.unwrap();
    assert_eq!(r.status, 200);
    let rec = up.last().unwrap();
    assert_eq!(rec.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(rec.header("x-forwarded-proto"), Some("http"));
    assert_eq!(rec.header("x-forwarded-host"), Some(addr.as_str()));
}

/// An upstream response with 200 fields reaches the client whole on every path (the response
/// head parser used to stop at 128 and answer 502); one with more than 1024 is a 502, and the
/// log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_200_fields_passes_on_every_path() {
    use tokio::io::AsyncWriteExt;
    let fields = |n: usize| -> &'static str {
        let mut head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n".to_owned();
        for i in 0..n {
            head.push_str(&format!("X-F{i}: {i}\r\n"));
        }
        head.leak()
    };
    let many = raw_upstream(fields(200)).await;
    let too_many = raw_upstream(fields(1100)).await;
    let cfg = format!(
        "{}\n[[routes]]\nprefix = \"/toomany\"\nupstream = \"{too_many}\"\nproduct = \"whois\"\n",
        routes(&many)
    );
    let g = TestGateway::start(BIN.as_ref(), &cfg).await;
    let (_, key) = create_parent(&g, "owner@fields200.example", &["whois"]).await;
    let addr = g.proxy.trim_start_matches("http://").to_owned();
    let path = "/whoisserver/WhoisService";
    let requests = [
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\r\n"),
        format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\
             Content-Length: 2\r\n\r\n{{}}"
        ),
        format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\
             Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
        ),
    ];
    for req in &requests {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let (status, head, body) = read_response(&mut s, &mut buf).await;
        assert_eq!((status, &body[..]), (200, &b"{}"[..]), "{req:?}: {head}");
        let lower = head.to_ascii_lowercase();
        for i in [0, 127, 128, 199] {
            assert!(
                lower.contains(&format!("\r\nx-f{i}: {i}\r\n")),
                "x-f{i}: {head}"
            );
        }
    }
    let url = format!("{}{path}", g.proxy);
    let r = send_h2c(Method::GET, &url, &[("x-api-key", &key)])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-f199"), Some("199"));

    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        format!("GET /toomany HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut s, &mut buf).await;
    assert_eq!(status, 502, "{head}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    tollgate_testkit::wait_until(
        "the 502's reason in the log",
        Duration::from_secs(5),
        || async { g.log().contains("more than 1024 fields") },
    )
    .await;
}

/// `TRACE` is answered 405 at the edge, over HTTP/1.1 and HTTP/2, never forwarded: an upstream
/// that honours it would echo back what the gateway added (attribution, an `upstream_auth`
/// credential). The other methods still go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_is_refused_at_the_edge_and_never_forwarded() {
    let up = StubUpstream::start().await;
    let g = TestGateway::start(BIN.as_ref(), &routes(&up.url())).await;
    let (_, key) = create_parent(&g, "owner@trace.example", &["whois"]).await;
    let url = format!("{}/whoisserver/WhoisService?domainName=a.example", g.proxy);
    let headers = [("x-api-key", key.as_str())];
    for h2 in [false, true] {
        let r = if h2 {
            send_h2c(Method::TRACE, &url, &headers).await.unwrap()
        } else {
            send(Method::TRACE, &url, &headers, "").await.unwrap()
        };
        assert_eq!(r.status.as_u16(), 405, "h2 {h2}");
        assert_eq!(r.code(), "method_not_allowed");
        let allow = r.header("allow").unwrap_or_default();
        assert!(allow.contains("GET") && !allow.contains("TRACE"), "{allow}");
        assert!(r.header("x-request-id").is_some());
    }
    assert_eq!(up.count(), 0, "a TRACE reached the upstream");
    for method in [Method::OPTIONS, Method::DELETE] {
        let r = send(method.clone(), &url, &headers, "").await.unwrap();
        assert_eq!(r.status.as_u16(), 200, "{method}");
    }
    assert_eq!(up.count(), 2);
}
