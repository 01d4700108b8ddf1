//! Each non-route table: accepted values and every rejection, with exact paths and fixes.

use std::path::PathBuf;

use tollgate_core::Limit;

use crate::tests::{section_errors, section_ok};
use crate::*;

#[test]
fn proxy_values_and_tls() {
    let c = section_ok(
        r#"
[proxy]
listen = "[::]:8443"
max_header_bytes = 8192
upstream_idle_per_host = 0
connect_timeout = "250ms"
drain_timeout = "1m"
tls = { cert = "c.pem", key = "k.pem" }
"#,
    );
    assert_eq!(c.proxy.listen, "[::]:8443".parse().unwrap());
    assert_eq!(c.proxy.max_header_bytes, 8192);
    assert_eq!(c.proxy.upstream_idle_per_host, 0);
    assert_eq!(c.proxy.connect_timeout.as_millis(), 250);
    assert_eq!(c.proxy.drain_timeout.as_secs(), 60);
    assert_eq!(
        c.proxy.tls,
        Some(TlsConfig {
            cert: PathBuf::from("c.pem"),
            key: PathBuf::from("k.pem")
        })
    );
}

#[test]
fn proxy_errors() {
    assert_eq!(
        section_errors("[proxy]\nlisten = \"localhost:8080\"\nmax_header_bytes = 100\n"),
        vec![
            "proxy.listen: \"localhost:8080\" is not an IP address and port; write an IP and a \
             port, e.g. \"0.0.0.0:8080\" (0.0.0.0 for every interface, 127.0.0.1 for this host \
             only, [::] for IPv6)",
            "proxy.max_header_bytes: 100 is too small; use 8192 or more",
        ]
    );
    assert_eq!(
        section_errors("[proxy.tls]\ncert = \"c.pem\"\n"),
        vec![
            "proxy.tls.key: missing; add key = \"/etc/tollgate/key.pem\" (a PEM file); \
             [proxy.tls] needs both cert and key, or remove it to serve plain HTTP"
        ]
    );
    assert_eq!(
        section_errors("[proxy.tls]\ncert = \"\"\nkey = \"k.pem\"\n"),
        vec![
            "proxy.tls.cert: is empty; give a value, e.g. cert = \"/etc/tollgate/cert.pem\", or \
             remove the key"
        ]
    );
}

#[test]
fn listeners() {
    let c = section_ok("[account_api]\nlisten = \"0.0.0.0:1\"\n[ops]\nlisten = \"127.0.0.1:2\"\n");
    assert_eq!(c.account_api.listen, "0.0.0.0:1".parse().unwrap());
    assert_eq!(c.ops.listen, "127.0.0.1:2".parse().unwrap());
    assert_eq!(
        section_errors("[ops]\nlisten = \"127.0.0.1:8080\"\nport = 1\n"),
        vec![
            "ops.port: unknown key; remove it; the keys here are listen",
            "ops.listen: \"127.0.0.1:8080\" uses the port of proxy.listen (\"0.0.0.0:8080\"); give \
             each listener its own port",
        ]
    );
    // Different addresses on one port, and port 0 (free-picked) everywhere, are fine.
    section_ok("[account_api]\nlisten = \"127.0.0.1:7000\"\n[ops]\nlisten = \"127.0.0.2:7000\"\n");
    section_ok(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[account_api]\nlisten = \"127.0.0.1:0\"\n\
         [ops]\nlisten = \"127.0.0.1:0\"\n",
    );
}

#[test]
fn store_backends() {
    assert_eq!(
        section_ok("[store]\npath = \"/var/lib/tollgate.db\"\n").store,
        StoreConfig::Embedded {
            path: PathBuf::from("/var/lib/tollgate.db")
        }
    );
    assert_eq!(
        section_ok("[store]\nbackend = \"redis\"\nurl = \"rediss://:pw@r.example.com:6380/0\"\n")
            .store,
        StoreConfig::Redis {
            url: Some("rediss://:pw@r.example.com:6380/0".into()),
            cluster: vec![],
            prefix: "tg".into()
        }
    );
    assert_eq!(
        section_ok(
            "[store]\nbackend = \"redis\"\ncluster = [\"redis://10.0.0.1:7000\", \
             \"rediss://10.0.0.2:7000\"]\nprefix = \"tg:prod\"\n"
        )
        .store,
        StoreConfig::Redis {
            url: None,
            cluster: vec![
                "redis://10.0.0.1:7000".into(),
                "rediss://10.0.0.2:7000".into()
            ],
            prefix: "tg:prod".into()
        }
    );
    for url in [
        "redis+unix:///run/redis.sock",
        "unix:///run/redis.sock",
        "redis+sentinel://10.0.0.1:26379/mymaster",
    ] {
        section_ok(&format!("[store]\nbackend = \"redis\"\nurl = \"{url}\"\n"));
    }
}

#[test]
fn store_errors() {
    let redis = "[store]\nbackend = \"redis\"\n";
    let cases: &[(String, &[&str])] = &[
        (
            "[store]\nbackend = \"Redis\"\n".into(),
            &[r#"store.backend: "Redis" is not a store backend; did you mean "redis"? use "embedded" (one node, a file) or "redis" (many nodes)"#],
        ),
        (
            "[store]\nbackend = \"mysql\"\n".into(),
            &[r#"store.backend: "mysql" is not a store backend; use "embedded" (one node, a file) or "redis" (many nodes)"#],
        ),
        (
            "[store]\nurl = \"redis://r:6379\"\ncluster = [\"redis://r:7000\"]\nprefix = \"x\"\n".into(),
            &[
                r#"store.url: only used by backend "redis"; remove it, or set backend = "redis""#,
                r#"store.cluster: only used by backend "redis"; remove it, or set backend = "redis""#,
                r#"store.prefix: only used by backend "redis"; remove it, or set backend = "redis""#,
            ],
        ),
        (
            format!("{redis}path = \"data/x.db\"\nurl = \"redis://r:6379\"\n"),
            &[r#"store.path: only used by backend "embedded"; remove it; a redis store is reached by url or cluster"#],
        ),
        (
            redis.into(),
            &[r#"store: backend "redis" needs url or cluster; add url = "redis://127.0.0.1:6379/0" for one server, or cluster = ["redis://10.0.0.1:7000", ...] for a Redis Cluster"#],
        ),
        (
            format!("{redis}url = \"redis://a:6379\"\ncluster = [\"redis://b:7000\"]\n"),
            &["store.cluster: given together with store.url; keep one: url for a single server, cluster for a Redis Cluster"],
        ),
        (
            format!("{redis}cluster = []\n"),
            &[r#"store.cluster: is empty; list at least one seed node, e.g. cluster = ["redis://10.0.0.1:7000"]"#],
        ),
        (
            format!("{redis}url = \"http://user:secret@r:6379\"\n"),
            &[r#"store.url: "http://***@r:6379" is not a Redis URL; start it with redis://, rediss:// (TLS), redis+unix://, unix:// or redis+sentinel://, e.g. "redis://127.0.0.1:6379/0""#],
        ),
        (
            format!("{redis}url = \"redis://\"\n"),
            &[r#"store.url: "redis://" has no address; add the server's address, e.g. "redis://127.0.0.1:6379/0""#],
        ),
        (
            format!("{redis}cluster = [\"redis://a:7000\", \"unix:///r.sock\", 7000]\n"),
            &[
                r#"store.cluster[1]: "unix:///r.sock" cannot be a Redis Cluster node; cluster nodes are reached over TCP: use redis:// or rediss://, e.g. "redis://10.0.0.1:7000""#,
                r#"store.cluster[2]: expected a string, found integer 7000; write each node as a quoted URL, e.g. "redis://10.0.0.1:7000""#,
            ],
        ),
        (
            format!("{redis}url = \"redis://r:6379\"\nprefix = \"{{tg}}\"\n"),
            &[r#"store.prefix: "{tg}" has characters a Redis key prefix may not hold here; use letters, digits, ':', '_', '.' or '-', e.g. "tg""#],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(section_errors(text), *want, "for:\n{text}");
    }
}

#[test]
fn cache_choices() {
    let c = section_ok(
        "[cache]\nmax_staleness = \"1s\"\nnegative_ttl = \"2m\"\non_store_down = \"fail_closed\"\n",
    );
    assert_eq!(c.cache.max_staleness.as_secs(), 1);
    assert_eq!(c.cache.negative_ttl.as_secs(), 120);
    assert_eq!(c.cache.on_store_down, OnStoreDown::FailClosed);
    assert_eq!(
        section_ok("[cache]\non_store_down = \"serve_cached\"\n")
            .cache
            .on_store_down,
        OnStoreDown::ServeCached
    );
    assert_eq!(
        section_errors("[cache]\non_store_down = \"closed\"\n"),
        vec![
            "cache.on_store_down: \"closed\" is not a choice here; use \"serve_cached\" (keep judging \
             cached keys) or \"fail_closed\" (refuse once older than max_staleness)"
        ]
    );
}

#[test]
fn key_sources() {
    let c = section_ok(
        "[keys]\nsources = [\"query:key\", \"header:X-Api-Key\", \"json:k\", \"bearer\"]\nforward = true\n",
    );
    assert_eq!(
        c.keys.sources,
        vec![
            KeySource::Query("key".into()),
            KeySource::Header("x-api-key".into()),
            KeySource::Json("k".into()),
            KeySource::Bearer,
        ]
    );
    assert!(c.keys.forward);
}

#[test]
fn key_source_errors() {
    assert_eq!(
        section_errors("[keys]\nsources = []\n"),
        vec![
            "keys.sources: is empty, so no request could carry a key; list at least one source, \
             e.g. sources = [\"header:x-api-key\"]"
        ]
    );
    assert_eq!(
        section_errors(
            "[keys]\nsources = [\"bearer\", \"cookie:k\", \"header:x api\", \"query:\", \
             \"query:a&b\", \"Bearer\", \"header:X-K\", \"header:x-k\", 1]\n"
        ),
        vec![
            r#"keys.sources[1]: "cookie:k" is not a key source; use "header:NAME", "bearer", "query:NAME" or "json:NAME", e.g. "header:x-api-key""#,
            r#"keys.sources[2]: "x api" is not a header name; use letters, digits and '-', e.g. "header:x-api-key""#,
            r#"keys.sources[3]: "query:" names no query; write the name after the colon, e.g. "query:apiKey""#,
            r#"keys.sources[4]: "a&b" is not a query parameter name; use the bare parameter name, e.g. "query:apiKey""#,
            r#"keys.sources[5]: "Bearer" is not a key source; use "header:NAME", "bearer", "query:NAME" or "json:NAME", e.g. "header:x-api-key""#,
            r#"keys.sources[7]: "header:x-k" is listed twice; remove one"#,
            r#"keys.sources[8]: expected a string, found integer 1; use "header:NAME", "bearer", "query:NAME" or "json:NAME", e.g. "header:x-api-key""#,
        ]
    );
}

#[test]
fn metering_values_and_errors() {
    let c = section_ok(
        "[metering]\nflush_interval = \"10ms\"\ncharge_on = \"always\"\nmax_unflushed_credits = 5\n",
    );
    assert_eq!(c.metering.flush_interval.as_millis(), 10);
    assert_eq!(c.metering.charge_on, ChargeOn::Always);
    assert_eq!(c.metering.max_unflushed_credits, 5);
    assert_eq!(
        section_ok("[metering]\ncharge_on = \"2xx\"\n")
            .metering
            .charge_on,
        ChargeOn::Success
    );
    assert_eq!(
        section_errors("[metering]\nflush_interval = \"9ms\"\nmax_unflushed_credits = 0\n"),
        vec![
            r#"metering.flush_interval: "9ms" is too short; use at least "10ms""#,
            "metering.max_unflushed_credits: 0 is too small; use 1 or more",
        ]
    );
}

#[test]
fn metrics_values_and_errors() {
    let c = section_ok("[metrics]\nper_key = false\nmax_key_series = 0\n");
    assert!(!c.metrics.per_key);
    assert_eq!(c.metrics.max_key_series, 0);
    assert_eq!(
        section_errors("[metrics]\nmax_key_series = -1\nper_key = 1\n"),
        vec![
            "metrics.per_key: expected a boolean, found integer 1; write true or false, without quotes",
            "metrics.max_key_series: -1 is negative; use 0 or more",
        ]
    );
}

#[test]
fn limits_values_and_errors() {
    let c = section_ok("[limits]\nparent = { rps = 1, burst = 2 }\nchild = { burst = 7 }\n");
    assert_eq!(c.limits.parent, Limit { rps: 1, burst: 2 });
    // A partial table keeps the other key's default.
    assert_eq!(c.limits.child, Limit { rps: 50, burst: 7 });
    assert_eq!(
        section_errors(
            "[limits]\nparent = { rps = 10, burst = 0 }\nchild = \"fast\"\nguest = { rps = 1 }\n"
        ),
        vec![
            "limits.guest: unknown key; remove it; the keys here are parent, child",
            "limits.parent.burst: 0 is too small; use 1 or more",
            "limits.child: expected a table, found string \"fast\"; write [limits.child] on its own \
             line, or child = { ... }",
        ]
    );
    assert_eq!(
        section_errors("[limits.child]\nrps = 4294967296\n"),
        vec!["limits.child.rps: 4294967296 is too large; use 4294967295 or less"]
    );
}

#[test]
fn invitations_ttl() {
    assert_eq!(
        section_ok("[invitations]\nttl = \"2h\"\n")
            .invitations
            .ttl
            .as_secs(),
        7200
    );
    assert_eq!(
        section_errors("[invitations]\nttl = \"7 days\"\n"),
        vec![
            r#"invitations.ttl: "7 days" is not a duration; use a number with ms, s, m, h or d, e.g. "30s""#
        ]
    );
}

#[test]
fn logging_values() {
    let c =
        section_ok("[logging]\nformat = \"json\"\naccess_sample = 0.01\nrefusals_per_second = 0\n");
    assert_eq!(c.logging.format, LogFormat::Json);
    assert_eq!(c.logging.access_sample, 0.01);
    assert_eq!(c.logging.refusals_per_second, 0);
    // Whole numbers are the natural way to write all and none.
    assert_eq!(
        section_ok("[logging]\naccess_sample = 0\n")
            .logging
            .access_sample,
        0.0
    );
    assert_eq!(
        section_ok("[logging]\naccess_sample = 1\n")
            .logging
            .access_sample,
        1.0
    );
}

#[test]
fn logging_errors() {
    assert_eq!(
        section_errors(
            "[logging]\nformat = \"jsno\"\naccess_sample = 1.5\nrefusals_per_second = -1\nlevel = \"info\"\n"
        ),
        vec![
            "logging.level: unknown key; remove it; the keys here are format, access_sample, \
             refusals_per_second",
            "logging.format: \"jsno\" is not a log format; did you mean \"json\"? use \"text\" (for \
             people) or \"json\" (one object a line, for log shippers)",
            "logging.access_sample: 1.5 is not between 0 and 1; write a share from 0 (none) to 1 \
             (all), e.g. 0.01 for one in a hundred",
            "logging.refusals_per_second: -1 is negative; use 0 or more",
        ]
    );
    assert_eq!(
        section_errors("[logging]\naccess_sample = \"1%\"\nrefusals_per_second = 2000000\n"),
        vec![
            "logging.access_sample: expected a number, found string \"1%\"; write a number from 0 \
             to 1, without quotes, e.g. 0.01",
            "logging.refusals_per_second: 2000000 is too large; use 1000000 or less",
        ]
    );
    assert_eq!(
        section_errors("[logging]\naccess_sample = nan\n"),
        vec![
            "logging.access_sample: NaN is not between 0 and 1; write a share from 0 (none) to 1 \
             (all), e.g. 0.01 for one in a hundred"
        ]
    );
}
