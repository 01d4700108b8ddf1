//! Who holds the three listeners, end to end through the real binary: a gateway refuses to start
//! on an address another process listens on (a second gateway would otherwise join the first
//! one's `SO_REUSEPORT` group and take half of its connections to another store).
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tollgate_testkit::http::{get, Reply};
use tollgate_testkit::{exit_of, free_port, StubUpstream, TestGateway};

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
