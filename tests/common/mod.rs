//! Helpers shared by the end-to-end test binaries (`e2e`, `forwarding`): the binary under test,
//! a gateway.toml with one route of each kind, a parent with subscriptions, a product call, and
//! a response read off a raw socket.
// Each test binary uses its own subset of these.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_testkit::http::{get, Reply};
use tollgate_testkit::{free_port, TestGateway};

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

pub fn routes(upstream: &str) -> String {
    format!(
        r#"
[[routes]]
prefix = "/whoisserver/WhoisService"
upstream = "{upstream}"
product = "whois"
credits = 1

[[routes]]
prefix = "/api/v2"
upstream = "{upstream}"
product = "reverse-whois"
pool = "drs"

[[routes]]
prefix = "/billing"
upstream = "{upstream}"
permission = "billing.view"

[[routes]]
prefix = "/dead"
upstream = "http://127.0.0.1:{dead}"
product = "whois"

[[routes]]
prefix = "/slow"
upstream = "{upstream}"
product = "whois"
timeout = "300ms"
"#,
        dead = free_port()
    )
}

pub fn op() -> String {
    TestGateway::operator_auth()
}

pub async fn create_parent(g: &TestGateway, email: &str, pools: &[&str]) -> (String, String) {
    let subs: Vec<Value> = pools
        .iter()
        .map(|p| json!({"pool": p, "credits": 1000, "overage": "allow"}))
        .collect();
    g.create_parent(email, json!(subs)).await
}

pub async fn whois(g: &TestGateway, key: &str) -> Reply {
    get(
        &format!(
            "{}/whoisserver/WhoisService?domainName=example.com",
            g.proxy
        ),
        &[("x-api-key", key)],
    )
    .await
    .unwrap()
}

/// Reads one HTTP/1.1 response (content-length framed, as every response here is) off `s`.
pub async fn read_response(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> (u16, String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            let status: u16 = head[9..12].parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            let head_req = head.contains("x-head-probe");
            let total = end + 4 + if head_req { 0 } else { len };
            if buf.len() >= total {
                let body = buf[end + 4..total].to_vec();
                buf.drain(..total);
                return (status, head, body);
            }
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(n > 0, "connection closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
    }
}
