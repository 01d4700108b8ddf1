//! End-to-end scenarios through the real `tollgate` binary on real sockets: a recording stub
//! upstream, the operator and account APIs, the data plane, restart and shutdown.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tollgate_testkit::http::{get, post_json, send, send_chunked, send_h2c, Reply};
use tollgate_testkit::{StubUpstream, TestGateway};

mod common;
use common::{create_parent, op, read_response, routes, whois, BIN};

async fn ops_call(g: &TestGateway, method: Method, path: &str) -> Reply {
    send(
        method,
        &format!("{}{path}", g.ops),
        &[("authorization", &op())],
        "",
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_in_every_source_is_admitted_and_stripped() {
    let up = StubUpstream::start().await;
    let g = TestGateway::start(BIN.as_ref(), &routes(&up.url())).await;
    let (pid, key) = create_parent(&g, "owner@a.example", &["whois"]).await;
    let url = format!(
        "{}/whoisserver/WhoisService?domainName=example.com",
        g.proxy
    );
    let bearer = format!("Bearer {key}");
    let cases: Vec<(&str, Reply)> = vec![
        (
            "x-api-key",
            get(&url, &[("x-api-key", &key)]).await.unwrap(),
        ),
        (
            "bearer",
            get(&url, &[("authorization", &bearer)]).await.unwrap(),
        ),
        (
            "x-authentication-token",
            get(&url, &[("x-authentication-token", &key)])
                .await
                .unwrap(),
        ),
        (
            "query",
            get(&format!("{url}&apiKey={key}"), &[]).await.unwrap(),
        ),
        (
            "json",
            post_json(
                &format!("{}/whoisserver/WhoisService", g.proxy),
                &[],
                &json!({"domainName": "example.com", "apiKey": key, "outputFormat": "JSON"}),
            )
            .await
            .unwrap(),
        ),
    ];
    for (source, r) in &cases {
        assert_eq!(
            r.status,
            200,
            "{source}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.header("x-request-id").is_some(), "{source}");
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 5);
    for (i, rec) in seen.iter().enumerate() {
        let source = cases[i].0;
        assert_eq!(
            rec.header("x-tollgate-account"),
            Some(pid.as_str()),
            "{source}"
        );
        assert_eq!(
            rec.header("x-tollgate-parent"),
            Some(pid.as_str()),
            "{source}"
        );
        assert!(rec.header("x-request-id").is_some(), "{source}");
        assert!(!rec.uri.contains(&key), "{source}: key in {}", rec.uri);
        assert!(
            rec.uri.contains("domainName=example.com") || source == "json",
            "{source}: {}",
            rec.uri
        );
        for (name, value) in &rec.headers {
            assert!(
                !value
                    .as_bytes()
                    .windows(key.len())
                    .any(|w| w == key.as_bytes()),
                "{source}: key in {name}"
            );
        }
        assert!(
            !String::from_utf8_lossy(&rec.body).contains(&key),
            "{source}: key in body"
        );
    }
    let json_body: Value = serde_json::from_slice(&seen[4].body).unwrap();
    assert_eq!(
        json_body,
        json!({"domainName": "example.com", "outputFormat": "JSON"})
    );

    // A client-sent request id is kept; a client-sent attribution header is not believed.
    let r = get(
        &url,
        &[
            ("x-api-key", &key),
            ("x-request-id", "req-123"),
            ("x-tollgate-account", "acc_forged"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.header("x-request-id"), Some("req-123"));
    let last = up.last().unwrap();
    assert_eq!(last.header("x-request-id"), Some("req-123"));
    assert_eq!(last.header("x-tollgate-account"), Some(pid.as_str()));

    // HTTP/2 cleartext from the client (the test client speaks only h2 here): the same rules for
    // the fields that go upstream, and HTTP/2's split cookies joined into one field for HTTP/1.1.
    let r = send_h2c(
        Method::GET,
        &url,
        &[
            ("x-api-key", &key),
            ("x-request-id", "req-h2"),
            ("x-tollgate-parent", "acc_forged"),
            ("x-forwarded-for", "10.0.0.1"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("accept", "application/json"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("req-h2"));
    assert!(r.header("ratelimit").is_some(), "{:?}", r.headers);
    let last = up.last().unwrap();
    assert_eq!(last.method, Method::GET);
    assert_eq!(last.header("x-tollgate-account"), Some(pid.as_str()));
    assert_eq!(last.header("x-tollgate-parent"), Some(pid.as_str()));
    assert_eq!(last.header("x-request-id"), Some("req-h2"));
    assert_eq!(last.header("x-api-key"), None);
    assert_eq!(last.header("cookie"), Some("a=1; b=2"));
    assert_eq!(last.header("x-forwarded-for"), Some("10.0.0.1, 127.0.0.1"));
    assert_eq!(last.header("accept"), Some("application/json"));
    let r = send_h2c(Method::HEAD, &url, &[("x-api-key", &key)])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(up.last().unwrap().method, Method::HEAD);
    // Another method goes through hyper's path: its split cookies are joined too.
    let r = send_h2c(
        Method::POST,
        &url,
        &[("x-api-key", &key), ("cookie", "a=1"), ("cookie", "b=2")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let last = up.last().unwrap();
    assert_eq!(last.method, Method::POST);
    assert_eq!(last.header("cookie"), Some("a=1; b=2"));
    assert_eq!(last.headers.get_all("cookie").iter().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_and_code() {
    let up = StubUpstream::start().await;
    up.script("/slow", 200, Duration::from_secs(3));
    let g = TestGateway::start(BIN.as_ref(), &routes(&up.url())).await;
    let (pid, pkey) = create_parent(&g, "owner@b.example", &["whois"]).await;
    let (cid, ckey) = g.create_child(&pkey, "member@b.example").await;
    let (_, ckey2) = g.create_child(&pkey, "member2@b.example").await;

    let r = whois(&g, &ckey).await;
    assert_eq!(r.status, 200);
    let rec = up.last().unwrap();
    assert_eq!(rec.header("x-tollgate-account"), Some(cid.as_str()));
    assert_eq!(rec.header("x-tollgate-parent"), Some(pid.as_str()));

    let before = up.count();
    let expect = |r: &Reply, status: u16, code: &str| {
        assert_eq!(
            r.status,
            status,
            "{code}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.code(), code);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("x-request-id").is_some());
        assert_eq!(
            r.header("www-authenticate"),
            (status == 401).then_some("Bearer realm=\"tollgate\""),
            "{code}"
        );
    };
    let url = format!("{}/whoisserver/WhoisService", g.proxy);
    expect(&get(&url, &[]).await.unwrap(), 401, "key_missing");
    expect(
        &whois(&g, "at_0000000000000000000000000000z").await,
        401,
        "key_unknown",
    );
    expect(&whois(&g, "not-a-key").await, 401, "key_unknown");
    expect(
        &get(
            &format!("{}/nothing-here", g.proxy),
            &[("x-api-key", &ckey)],
        )
        .await
        .unwrap(),
        404,
        "route_not_found",
    );
    expect(
        &get(&format!("{}/api/v2", g.proxy), &[("x-api-key", &ckey)])
            .await
            .unwrap(),
        403,
        "product_not_subscribed",
    );
    expect(
        &get(
            &format!("{}/billing/invoices", g.proxy),
            &[("x-api-key", &ckey)],
        )
        .await
        .unwrap(),
        403,
        "permission_denied",
    );
    assert_eq!(
        up.count(),
        before,
        "no refused request may reach the upstream"
    );
    // The parent may use the billing route.
    let r = get(
        &format!("{}/billing/invoices", g.proxy),
        &[("x-api-key", &pkey)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);

    // Disabled child, on the very next request; enabled again.
    assert_eq!(
        ops_call(
            &g,
            Method::POST,
            &format!("/admin/v1/accounts/{cid}/disable")
        )
        .await
        .status,
        200
    );
    expect(&whois(&g, &ckey).await, 403, "key_disabled");
    assert_eq!(
        ops_call(
            &g,
            Method::POST,
            &format!("/admin/v1/accounts/{cid}/enable")
        )
        .await
        .status,
        200
    );
    assert_eq!(whois(&g, &ckey).await.status, 200);

    // A disabled parent stops its children; re-enabled, they work again.
    assert_eq!(
        ops_call(
            &g,
            Method::POST,
            &format!("/admin/v1/accounts/{pid}/disable")
        )
        .await
        .status,
        200
    );
    expect(&whois(&g, &ckey).await, 403, "parent_disabled");
    expect(&whois(&g, &pkey).await, 403, "key_disabled");
    assert_eq!(
        ops_call(
            &g,
            Method::POST,
            &format!("/admin/v1/accounts/{pid}/enable")
        )
        .await
        .status,
        200
    );
    assert_eq!(whois(&g, &ckey2).await.status, 200);

    // Deleted: the key is unknown for good.
    assert_eq!(
        ops_call(&g, Method::DELETE, &format!("/admin/v1/accounts/{cid}"))
            .await
            .status,
        204
    );
    expect(&whois(&g, &ckey).await, 401, "key_unknown");

    // Upstream failures.
    let dead = format!("{}/dead", g.proxy);
    expect(
        &get(&dead, &[("x-api-key", &pkey)]).await.unwrap(),
        502,
        "upstream_unavailable",
    );
    let slow = format!("{}/slow", g.proxy);
    expect(
        &get(&slow, &[("x-api-key", &pkey)]).await.unwrap(),
        504,
        "upstream_timeout",
    );
    // The same with a body on the fast path, and on hyper's (a chunked body), which times each
    // request with a timer of its own.
    expect(
        &post_json(&slow, &[("x-api-key", &pkey)], &json!({"q": 1}))
            .await
            .unwrap(),
        504,
        "upstream_timeout",
    );
    expect(
        &send_chunked(Method::POST, &slow, &[("x-api-key", &pkey)], "{}")
            .await
            .unwrap(),
        504,
        "upstream_timeout",
    );

    // The refusals are counted by route and outcome.
    let m = get(&format!("{}/metrics", g.ops), &[]).await.unwrap();
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains(r#"tollgate_requests_total{outcome="key_disabled",route="whois"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tollgate_requests_total{outcome="route_not_found",route="_unmatched"} 1"#)
    );
    assert!(text.contains("tollgate_request_duration_seconds_bucket"));
    assert!(!text.contains(&pkey) && !text.contains(&ckey));
    assert!(
        !g.log().contains(&pkey) && !g.log().contains(&ckey2),
        "a key reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_cleanly() {
    let up = StubUpstream::start().await;
    let g = TestGateway::start(BIN.as_ref(), &routes(&up.url())).await;
    let (_, key) = create_parent(&g, "owner@c.example", &["whois"]).await;
    // Headers over the limit: 431.
    let big = "x".repeat(100 * 1024);
    let r = get(
        &format!("{}/whoisserver/WhoisService", g.proxy),
        &[("x-api-key", &key), ("x-big", &big)],
    )
    .await;
    match r {
        Ok(r) => assert_eq!(r.status, 431),
        Err(e) => panic!("expected a 431, got {e}"),
    }
    // An oversized operator body: 413.
    let huge = json!({"email": "x@y.example", "pad": "p".repeat(70 * 1024)});
    let r = post_json(
        &format!("{}/admin/v1/parents", g.ops),
        &[("authorization", &op())],
        &huge,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413);
    // No operator token: 401.
    let r = post_json(
        &format!("{}/admin/v1/parents", g.ops),
        &[],
        &json!({"email": "z@y.example"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    // Still healthy after all that.
    assert_eq!(whois(&g, &key).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_keys_and_sigterm_drains() {
    let up = StubUpstream::start().await;
    up.script(
        "/whoisserver/WhoisService/slow",
        200,
        Duration::from_millis(700),
    );
    let mut g = TestGateway::start(BIN.as_ref(), &routes(&up.url())).await;
    let (_, key) = create_parent(&g, "owner@d.example", &["whois"]).await;
    assert_eq!(whois(&g, &key).await.status, 200);
    g.restart().await;
    assert_eq!(
        whois(&g, &key).await.status,
        200,
        "the key survives a restart"
    );

    // A kept-alive connection (the fast path), idle when SIGTERM comes: closed by the drain.
    let addr = g.proxy.trim_start_matches("http://").to_owned();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    {
        use tokio::io::AsyncWriteExt;
        idle.write_all(
            format!(
                "GET /whoisserver/WhoisService HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let (status, head, _) = read_response(&mut idle, &mut Vec::new()).await;
        assert_eq!(status, 200, "{head}");
    }

    // An in-flight request completes across SIGTERM, and the process exits 0.
    let url = format!("{}/whoisserver/WhoisService/slow", g.proxy);
    let k = key.clone();
    let inflight = tokio::spawn(async move { get(&url, &[("x-api-key", &k)]).await });
    let n = up.count();
    tollgate_testkit::wait_until(
        "the slow request to reach the upstream",
        Duration::from_secs(10),
        || {
            let c = up.count();
            async move { c > n }
        },
    )
    .await;
    let t = std::time::Instant::now();
    let status = g.terminate().await;
    assert!(status.success(), "exit status {status}");
    // Well inside drain_timeout (30 s): the idle connection did not hold the drain up.
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "exit took {:?}",
        t.elapsed()
    );
    let r = inflight.await.unwrap().unwrap();
    assert_eq!(r.status, 200, "in-flight request was dropped");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), {
        use tokio::io::AsyncReadExt;
        idle.read_to_end(&mut rest)
    })
    .await
    .expect("the idle connection is closed")
    .unwrap_or(0);
    assert_eq!(n, 0, "bytes on an idle connection: {rest:?}");
}

#[test]
fn check_reports_every_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[cache]
max_staleness = "5 seconds"

[keys]
sorces = ["bearer"]

[[routes]]
prefix = "/x"
upstream = "ftp://example.com"
product = "whois"
"#,
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for path in ["cache.max_staleness", "keys.sorces", "routes[0].upstream"] {
        assert!(err.contains(path), "missing {path} in:\n{err}");
    }
    let ok = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../gateway.toml"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// `check` loads the `[proxy.tls]` files as `run` does, so a pair `run` refuses fails `check` too,
/// each problem under its TOML path; `run` refuses with the same report (before, `check` passed
/// non-PEM files and a mismatched key with exit 0, and only warned about a missing file).
#[test]
fn check_refuses_the_tls_files_run_refuses_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let pair = |name: &str| {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (
            dir.path().join(format!("{name}.crt")),
            dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        (cert, key)
    };
    let (cert_a, key_a) = pair("a");
    let (_, key_b) = pair("b");
    let not_pem = dir.path().join("notes.txt");
    std::fs::write(&not_pem, "[proxy]\nlisten = \"127.0.0.1:8080\"\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let store = dir.path().join("tollgate.db");
    let config = |i: usize, cert: &std::path::Path, key: &std::path::Path| {
        let path = dir.path().join(format!("tls{i}.toml"));
        std::fs::write(
            &path,
            format!(
                "[proxy.tls]\ncert = \"{}\"\nkey = \"{}\"\n[store]\npath = \"{}\"\n{}",
                cert.display(),
                key.display(),
                store.display(),
                routes("http://127.0.0.1:1"),
            ),
        )
        .unwrap();
        path
    };
    let tollgate = |command: &str, config: &std::path::Path| {
        std::process::Command::new(BIN)
            .args([command.as_ref(), "--config".as_ref(), config.as_os_str()])
            .output()
            .unwrap()
    };

    let cases: [(&std::path::Path, &std::path::Path, &[&str]); 4] = [
        (
            &not_pem,
            &not_pem,
            &[
                "proxy.tls.cert: the certificate file",
                "holds no PEM certificate",
                "proxy.tls.key: the key file",
                "holds no PEM private key",
            ],
        ),
        (
            &cert_a,
            &key_b,
            &[
                "proxy.tls.key: the key in",
                "does not match the certificate",
            ],
        ),
        (
            &missing,
            &key_a,
            &[
                "proxy.tls.cert: cannot read the certificate file",
                "missing.pem: it does not exist",
            ],
        ),
        (
            &cert_a,
            &missing,
            &[
                "proxy.tls.key: cannot read the key file",
                "missing.pem: it does not exist",
            ],
        ),
    ];
    for (i, (cert, key, want)) in cases.into_iter().enumerate() {
        let path = config(i, cert, key);
        let check = tollgate("check", &path);
        let err = String::from_utf8_lossy(&check.stderr);
        assert_eq!(check.status.code(), Some(1), "case {i}:\n{err}");
        for w in want {
            assert!(err.contains(w), "case {i}: missing {w:?} in:\n{err}");
        }
        // `run` refuses the same files with the same report.
        let run = tollgate("run", &path);
        assert_eq!(run.status.code(), Some(1), "case {i}");
        assert_eq!(String::from_utf8_lossy(&run.stderr), err, "case {i}");
    }
    let good = tollgate("check", &config(9, &cert_a, &key_a));
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
}

/// A stdout or stderr whose reader is already gone: every write to it fails with EPIPE, as
/// `tollgate check | head -1` does once `head` has its line.
fn closed_pipe() -> std::process::Stdio {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(ours);
    std::process::Stdio::from(std::os::fd::OwnedFd::from(theirs))
}

const BAD_TOML: &str = "[cache]\nmax_staleness = \"5 seconds\"\n[[routes]]\nprefix = \"/b/../c\"\n\
                        upstream = \"ftp://example.com\"\nproduct = \"whois\"\n";

#[test]
fn check_on_a_closed_pipe_exits_with_its_own_status() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, BAD_TOML).unwrap();
    let good = concat!(env!("CARGO_MANIFEST_DIR"), "/../../gateway.toml");
    for (config, want) in [(bad.as_os_str(), 1), (good.as_ref(), 0)] {
        let status = std::process::Command::new(BIN)
            .args(["check".as_ref(), "--config".as_ref(), config])
            .stdout(closed_pipe())
            .stderr(closed_pipe())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(want), "{config:?}: {status}");
    }
}

#[test]
fn a_bad_config_exits_1_for_check_run_and_dev() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, BAD_TOML).unwrap();
    for command in ["check", "run", "dev"] {
        let out = std::process::Command::new(BIN)
            .args([command.as_ref(), "--config".as_ref(), bad.as_os_str()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{command}: {}\n{err}",
            out.status
        );
        assert!(err.contains("routes[0].prefix"), "{command}:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_with_a_config_file_says_why_sighup_reloads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dev.toml");
    let port = || tollgate_testkit::free_port();
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{}\"\n[account_api]\nlisten = \"127.0.0.1:{}\"\n\
             [ops]\nlisten = \"127.0.0.1:{}\"\n[[routes]]\nprefix = \"/w\"\n\
             upstream = \"https://w.example.com\"\nproduct = \"whois\"\n",
            port(),
            port(),
            port()
        ),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    // The banner goes to a stdout nobody reads: dev must keep running all the same.
    let mut child = std::process::Command::new(BIN)
        .args(["dev".as_ref(), "--config".as_ref(), config.as_os_str()])
        .stdout(closed_pipe())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    tollgate_testkit::wait_until("dev listening", Duration::from_secs(30), || async {
        read().contains("tollgate is listening")
    })
    .await;
    let pid = child.id().to_string();
    let kill = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
    };
    assert!(kill("-HUP").success());
    let want = format!(
        "tollgate dev does not reload {} (its routes go to the built-in echo upstream)",
        config.display()
    );
    tollgate_testkit::wait_until("the SIGHUP message", Duration::from_secs(30), || async {
        read().contains(&want)
    })
    .await;
    assert!(
        !read().contains("not started from a config file"),
        "{}",
        read()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "dev exited:\n{}",
        read()
    );
    assert!(kill("-TERM").success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}\n{}", read());
}
