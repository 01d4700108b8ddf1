//! Request bodies through the real `tollgate` binary on real sockets: a `Content-Length` body of up
//! to 64 KiB goes on the fast path, forwarded as it came; chunked and longer bodies go to hyper;
//! a refused request's body is read and never taken for a request; a `POST` is never sent twice.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_testkit::TestGateway;

mod common;
use common::{create_parent, read_response, routes, BIN};

/// One request as a raw upstream read it: its request line, its fields (lower-cased) and its
/// body, de-chunked.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    head: String,
    body: Vec<u8>,
}

/// A raw HTTP/1.1 upstream that records every request and answers it with a field whose name is
/// not lower-case (`X-Upstream-Case`): the fast path passes names on as they came, hyper's path
/// lower-cases them, so the client's response tells which path served it. With `drop_second`, it
/// reads the second request on each connection and closes that connection without answering.
async fn recording_upstream(drop_second: bool) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut served = 0;
                loop {
                    while let Some((req, used)) = parse_request(&buf) {
                        buf.drain(..used);
                        log.lock().unwrap().push(req);
                        served += 1;
                        if drop_second && served == 2 {
                            return;
                        }
                        let resp = "HTTP/1.1 200 OK\r\nX-Upstream-Case: kept\r\n\
                                    Content-Length: 2\r\n\r\n{}";
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    let mut chunk = [0u8; 16384];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (url, seen)
}

/// A whole request at the start of `buf` and the bytes it took, or `None` for more to come.
fn parse_request(buf: &[u8]) -> Option<(Seen, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = String::from_utf8(buf[..end].to_vec()).unwrap();
    let (line, head) = text.split_once("\r\n").unwrap_or((&text, ""));
    let head = head.to_ascii_lowercase();
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let mut at = end + 4;
    let mut body = Vec::new();
    if field("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        loop {
            let eol = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[at..eol]).unwrap(), 16).unwrap();
            at = eol + 2;
            if buf.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
            if size == 0 {
                break;
            }
        }
    } else {
        let len: usize = field("content-length:").map_or(0, |v| v.parse().unwrap());
        if buf.len() < at + len {
            return None;
        }
        body.extend_from_slice(&buf[at..at + len]);
        at += len;
    }
    let seen = Seen {
        line: line.to_owned(),
        head,
        body,
    };
    Some((seen, at))
}

impl Seen {
    /// The one value of field `name` (lower-case), or `None`; two of them fail the test.
    fn field(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}:");
        let mut values = self
            .head
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_owned()));
        let value = values.next();
        assert!(values.next().is_none(), "{name} twice: {}", self.head);
        value
    }
}

async fn connect(g: &TestGateway) -> tokio::net::TcpStream {
    let s = tokio::net::TcpStream::connect(g.proxy.trim_start_matches("http://"))
        .await
        .unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Whether a response head came off the fast path (the upstream's field name as it spelled it).
fn fast(head: &str) -> bool {
    assert!(
        head.to_ascii_lowercase().contains("x-upstream-case: kept"),
        "{head}"
    );
    head.contains("X-Upstream-Case: kept")
}

/// `POST`, `PUT`, `PATCH` and `DELETE` with a `Content-Length` body, pipelined, one split between
/// two writes, reach the upstream with the body and length as they came, on the fast path; a
/// chunked body and one over 64 KiB go to hyper, which keeps the connection from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_bodies_go_on_the_fast_path_as_they_came() {
    let (up, seen) = recording_upstream(false).await;
    let g = TestGateway::start(BIN.as_ref(), &routes(&up)).await;
    let (pid, key) = create_parent(&g, "owner@bodies.example", &["whois"]).await;
    let host = g.proxy.trim_start_matches("http://").to_owned();
    let req = |method: &str, body: &str| {
        format!(
            "{method} /whoisserver/WhoisService?x=1 HTTP/1.1\r\nHost: {host}\r\n\
             X-Api-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let bodies = [
        ("POST", r#"{"domainName":"a.example"}"#),
        ("PUT", "put body"),
        ("PATCH", "GET /whoisserver/WhoisService HTTP/1.1\r\n\r\n"),
        ("DELETE", ""),
    ];
    let mut s = connect(&g).await;
    let all: String = bodies.iter().map(|(m, b)| req(m, b)).collect();
    s.write_all(all.as_bytes()).await.unwrap();
    // The head, then its body in a second write.
    let split = req("POST", r#"{"second":"write"}"#);
    let at = split.find("\r\n\r\n").unwrap() + 4;
    s.write_all(&split.as_bytes()[..at]).await.unwrap();
    s.flush().await.unwrap();
    tokio::task::yield_now().await;
    s.write_all(&split.as_bytes()[at..]).await.unwrap();
    let mut buf = Vec::new();
    for (method, _) in bodies.iter().chain([&("POST", "")]) {
        let (status, head, body) = read_response(&mut s, &mut buf).await;
        assert_eq!((status, &body[..]), (200, &b"{}"[..]), "{method}: {head}");
        assert!(
            fast(&head),
            "{method} was not served on the fast path: {head}"
        );
    }
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 5, "{seen:?}");
        let sent = bodies.iter().chain([&("POST", r#"{"second":"write"}"#)]);
        for (r, (method, body)) in seen.iter().zip(sent) {
            assert_eq!(
                r.line,
                format!("{method} /whoisserver/WhoisService?x=1 HTTP/1.1")
            );
            assert_eq!(r.body, body.as_bytes(), "{method}");
            assert_eq!(r.field("content-length"), Some(body.len().to_string()));
            assert!(r.head.contains(&format!("x-tollgate-account: {pid}")));
            assert!(!r.head.contains(&key), "the key went upstream: {}", r.head);
        }
    }

    // Over 64 KiB: hyper's (it streams it), and hyper keeps the connection for the next.
    let big = "x".repeat(64 * 1024 + 1);
    s.write_all(format!("{}{}", req("POST", &big), req("PUT", "small")).as_bytes())
        .await
        .unwrap();
    for _ in 0..2 {
        let (status, head, _) = read_response(&mut s, &mut buf).await;
        assert_eq!(status, 200, "{head}");
        assert!(!fast(&head), "{head}");
    }
    // A chunked body: hyper's from the first request on a new connection.
    let mut s = connect(&g).await;
    let mut buf = Vec::new();
    s.write_all(
        format!(
            "POST /whoisserver/WhoisService HTTP/1.1\r\nHost: {host}\r\nX-Api-Key: {key}\r\n\
             Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, head, _) = read_response(&mut s, &mut buf).await;
    assert_eq!(status, 200, "{head}");
    assert!(!fast(&head), "{head}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 8);
    assert_eq!(seen[5].body, big.as_bytes());
    assert_eq!(seen[6].body, b"small");
    assert_eq!(seen[7].body, b"abcde");
}

/// A refused request's body is read off the connection with it: a body that looks like a request
/// never reaches the upstream, and the request after it on the connection is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_requests_body_is_never_taken_for_a_request() {
    let (up, seen) = recording_upstream(false).await;
    let g = TestGateway::start(BIN.as_ref(), &routes(&up)).await;
    let (_, key) = create_parent(&g, "owner@smuggle.example", &["whois"]).await;
    let host = g.proxy.trim_start_matches("http://").to_owned();
    let inner = format!(
        "GET /whoisserver/WhoisService?smuggled=1 HTTP/1.1\r\nHost: {host}\r\nX-Api-Key: {key}\r\n\r\n"
    );
    let refused = [
        // Unknown key, no route, and a path refused before its route.
        (
            "/whoisserver/WhoisService",
            "at_nonexistentnonexistentnonexi",
        ),
        ("/nothing-here", key.as_str()),
        ("/whoisserver/../billing", key.as_str()),
    ];
    let mut s = connect(&g).await;
    let mut buf = Vec::new();
    for (path, k) in refused {
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nX-Api-Key: {k}\r\n\
                 Content-Length: {}\r\n\r\n{inner}\
                 GET /whoisserver/WhoisService?next=1 HTTP/1.1\r\nHost: {host}\r\nX-Api-Key: {key}\r\n\r\n",
                inner.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let (status, head, _) = read_response(&mut s, &mut buf).await;
        assert!([400, 401, 404].contains(&status), "{path}: {head}");
        let (status, head, _) = read_response(&mut s, &mut buf).await;
        assert_eq!(status, 200, "{path}: {head}");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for r in seen.iter() {
        assert_eq!(r.line, "GET /whoisserver/WhoisService?next=1 HTTP/1.1");
    }
}

/// When a pooled upstream connection fails after taking the request, a `GET` is sent again on a
/// new one (the upstream sees it twice and the client gets its answer), and a `POST` is not: the
/// client gets 502 `upstream_unavailable` and the upstream saw it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_never_sent_twice() {
    let (up, seen) = recording_upstream(true).await;
    // One client connection: one worker, whose upstream pool every request below shares.
    let g = TestGateway::start(BIN.as_ref(), &routes(&up)).await;
    let (_, key) = create_parent(&g, "owner@once.example", &["whois"]).await;
    let host = g.proxy.trim_start_matches("http://").to_owned();
    let req = |method: &str, id: &str| {
        format!(
            "{method} /whoisserver/WhoisService?id={id} HTTP/1.1\r\nHost: {host}\r\n\
             X-Api-Key: {key}\r\nContent-Length: 2\r\n\r\n{{}}"
        )
    };
    let mut s = connect(&g).await;
    let mut buf = Vec::new();
    let mut exchange = async |method: &str, id: &str| {
        s.write_all(req(method, id).as_bytes()).await.unwrap();
        let (status, head, body) = read_response(&mut s, &mut buf).await;
        (status, head, body)
    };
    // The upstream answers the first request on a connection and drops the second unanswered.
    assert_eq!(exchange("GET", "a").await.0, 200);
    let (status, head, body) = exchange("POST", "b").await;
    assert_eq!(status, 502, "{head}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    assert_eq!(exchange("GET", "c").await.0, 200);
    assert_eq!(exchange("GET", "d").await.0, 200);
    let ids: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.line.split_whitespace().nth(1).unwrap().to_owned())
        .collect();
    let count = |id: &str| {
        ids.iter()
            .filter(|p| p.ends_with(&format!("id={id}")))
            .count()
    };
    assert_eq!(count("b"), 1, "{ids:?}");
    assert_eq!(count("d"), 2, "{ids:?}");
}

/// A key in a JSON body (the default `json:apiKey` source, no key in the head) is taken out of the
/// body on the fast path, as on hyper's (chunked), and the upstream gets the shorter body with its
/// own length; with `forward = true` the body goes as it came. A body of another type is not read
/// for a key: 401 `key_missing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_a_json_body_is_taken_out_on_the_fast_path() {
    let (up, seen) = recording_upstream(false).await;
    let plain = TestGateway::start(BIN.as_ref(), &routes(&up)).await;
    let forwarding = TestGateway::start(
        BIN.as_ref(),
        &format!("[keys]\nforward = true\n{}", routes(&up)),
    )
    .await;
    let (_, key) = create_parent(&plain, "owner@json.example", &["whois"]).await;
    let (_, fkey) = create_parent(&forwarding, "owner@jsonf.example", &["whois"]).await;
    let post = |g: &TestGateway, key: &str, ct: &str, chunked: bool| {
        let host = g.proxy.trim_start_matches("http://");
        let body = format!(r#"{{"domainName":"a.example","apiKey":"{key}","n":1}}"#);
        let framing = if chunked {
            format!(
                "Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            )
        } else {
            format!("Content-Length: {}\r\n\r\n{body}", body.len())
        };
        format!(
            "POST /whoisserver/WhoisService HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ct}\r\n\
             {framing}GET /whoisserver/WhoisService HTTP/1.1\r\nHost: {host}\r\nX-Api-Key: {key}\r\n\r\n"
        )
    };
    let cases = [
        (&plain, key.as_str(), "application/json", false, true),
        (
            &plain,
            key.as_str(),
            "application/json; charset=utf-8",
            true,
            false,
        ),
        (&forwarding, fkey.as_str(), "application/json", false, true),
    ];
    for (g, k, ct, chunked, on_fast_path) in cases {
        let mut s = connect(g).await;
        let mut buf = Vec::new();
        s.write_all(post(g, k, ct, chunked).as_bytes())
            .await
            .unwrap();
        for _ in 0..2 {
            let (status, head, _) = read_response(&mut s, &mut buf).await;
            assert_eq!(status, 200, "{head}");
            assert_eq!(fast(&head), on_fast_path, "{head}");
        }
    }
    let stripped = r#"{"domainName":"a.example","n":1}"#;
    let kept = format!(r#"{{"domainName":"a.example","apiKey":"{fkey}","n":1}}"#);
    {
        let seen = seen.lock().unwrap();
        let posts: Vec<&Seen> = seen.iter().filter(|r| r.line.starts_with("POST")).collect();
        assert_eq!(posts.len(), 3);
        for (r, want) in posts.iter().zip([stripped, stripped, kept.as_str()]) {
            assert_eq!(String::from_utf8_lossy(&r.body), want);
            if !r.head.contains("transfer-encoding") {
                assert_eq!(r.field("content-length"), Some(want.len().to_string()));
            }
        }
        assert!(!posts[0].head.contains(&key) && !posts[1].head.contains(&key));
    }
    let mut s = connect(&plain).await;
    let mut buf = Vec::new();
    s.write_all(post(&plain, &key, "text/plain", false).as_bytes())
        .await
        .unwrap();
    let (status, head, body) = read_response(&mut s, &mut buf).await;
    assert_eq!(status, 401, "{head}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "key_missing");
    let (status, head, _) = read_response(&mut s, &mut buf).await;
    assert_eq!(status, 200, "{head}");
}

/// With `forward = false`, a JSON body's top-level key field never reaches the upstream, wherever
/// the key came from (here the `x-api-key` header): on the fast path (a `Content-Length` body),
/// hyper's (chunked) and HTTP/2 (with and without a `content-length`), the field is cut out and
/// every other byte goes as the client sent it: numbers, escapes, spacing, nested fields of the
/// same name. A chunked JSON body over 64 KiB is not held: it streams through as it came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_field_in_a_json_body_goes_whichever_source_the_key_came_from() {
    use http::Method;
    use tollgate_testkit::http::{send_chunked, send_h2c_body};

    let (up, seen) = recording_upstream(false).await;
    let g = TestGateway::start(BIN.as_ref(), &routes(&up)).await;
    let (_, key) = create_parent(&g, "owner@jsonhead.example", &["whois"]).await;
    let url = format!("{}/whoisserver/WhoisService", g.proxy);
    let rest = r#""n": 12345678901234567890123, "x":1.50,"e" :1.0e2, "s":"\u00e9\/",
  "o": {"apiKey": "nested"}, "l": ["apiKey", {"apiKey": 1}]"#;
    let body = format!("{{ \"apiKey\": \"{key}\",\n  {rest} }}");
    let want = format!("{{ {rest} }}");

    // The fast path, then hyper's (chunked), on raw connections.
    let host = g.proxy.trim_start_matches("http://");
    for chunked in [false, true] {
        let framing = if chunked {
            format!(
                "Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            )
        } else {
            format!("Content-Length: {}\r\n\r\n{body}", body.len())
        };
        let req = format!(
            "POST /whoisserver/WhoisService HTTP/1.1\r\nHost: {host}\r\nX-Api-Key: {key}\r\n\
             Content-Type: application/json\r\n{framing}"
        );
        let mut s = connect(&g).await;
        s.write_all(req.as_bytes()).await.unwrap();
        let (status, head, _) = read_response(&mut s, &mut Vec::new()).await;
        assert_eq!(status, 200, "{head}");
        assert_eq!(fast(&head), !chunked, "{head}");
    }
    // HTTP/2, with a content-length and without.
    for sized in [true, false] {
        let r = send_h2c_body(
            Method::POST,
            &url,
            &[("x-api-key", &key), ("content-type", "application/json")],
            body.clone(),
            sized,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "h2 sized={sized}");
    }
    // The key in the body alone: the same cut, the same bytes left.
    let r = send_chunked(
        Method::POST,
        &url,
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    // Too long to hold: streamed as it came (the `json:` source would not read it either).
    let long = format!(
        "{{\"pad\":\"{}\",\"apiKey\":\"{key}\"}}",
        "p".repeat(extract_limit() + 10)
    );
    let r = send_chunked(
        Method::POST,
        &url,
        &[("x-api-key", &key), ("content-type", "application/json")],
        long.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);

    let seen = seen.lock().unwrap();
    let posts: Vec<&Seen> = seen.iter().filter(|r| r.line.starts_with("POST")).collect();
    assert_eq!(posts.len(), 6);
    for (i, r) in posts[..5].iter().enumerate() {
        assert_eq!(String::from_utf8_lossy(&r.body), want, "request {i}");
        assert!(!r.head.contains(&key), "request {i}: {}", r.head);
        assert_eq!(
            r.field("content-length"),
            Some(want.len().to_string()),
            "request {i}"
        );
    }
    assert_eq!(posts[5].body, long.as_bytes());
}

/// The largest JSON body Tollgate holds (the `json:` source's limit).
fn extract_limit() -> usize {
    64 * 1024
}
