//! Whole-file behaviour: defaults, syntax errors, many problems reported at once, `load`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tollgate_core::Limit;

use crate::*;

/// The smallest valid route; sections under test go before it (a table after `[[routes]]` would
/// belong to the route).
pub(crate) const ROUTE: &str =
    "[[routes]]\nprefix = \"/w\"\nupstream = \"https://w.example.com\"\nproduct = \"whois\"\n";

pub(crate) fn ok(text: &str) -> Config {
    parse(text).unwrap_or_else(|e| panic!("expected a valid config, got:\n{e}"))
}

/// Every problem, rendered as `check` prints it.
pub(crate) fn errors(text: &str) -> Vec<String> {
    parse(text)
        .expect_err("expected errors")
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// `errors` for a section followed by a valid route.
pub(crate) fn section_errors(section: &str) -> Vec<String> {
    errors(&format!("{section}\n{ROUTE}"))
}

pub(crate) fn section_ok(section: &str) -> Config {
    ok(&format!("{section}\n{ROUTE}"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn every_default() {
    let c = ok(ROUTE);
    assert_eq!(c.proxy.listen, addr("0.0.0.0:8080"));
    assert_eq!(c.proxy.tls, None);
    assert_eq!(c.proxy.max_header_bytes, 65_536);
    assert_eq!(c.proxy.upstream_idle_per_host, 64);
    assert_eq!(c.proxy.workers, 0);
    assert_eq!(c.proxy.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.proxy.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.proxy.client_body_timeout, Duration::from_secs(60));
    assert_eq!(c.account_api.listen, addr("127.0.0.1:8081"));
    assert_eq!(c.ops.listen, addr("127.0.0.1:9190"));
    assert_eq!(
        c.store,
        StoreConfig::Embedded {
            path: PathBuf::from("data/tollgate.db")
        }
    );
    assert_eq!(c.cache.max_staleness, Duration::from_secs(5));
    assert_eq!(c.cache.negative_ttl, Duration::from_secs(30));
    assert_eq!(c.cache.on_store_down, OnStoreDown::ServeCached);
    assert_eq!(
        c.keys.sources,
        vec![
            KeySource::Header("x-api-key".into()),
            KeySource::Bearer,
            KeySource::Header("x-authentication-token".into()),
            KeySource::Query("apiKey".into()),
            KeySource::Json("apiKey".into()),
        ]
    );
    assert!(!c.keys.forward);
    assert_eq!(c.metering.flush_interval, Duration::from_millis(250));
    assert_eq!(c.metering.charge_on, ChargeOn::Success);
    assert_eq!(c.metering.max_unflushed_credits, 100_000_000);
    assert!(c.metrics.per_key);
    assert_eq!(c.metrics.max_key_series, 10_000);
    assert_eq!(
        c.limits.parent,
        Limit {
            rps: 200,
            burst: 400
        }
    );
    assert_eq!(
        c.limits.child,
        Limit {
            rps: 50,
            burst: 100
        }
    );
    assert_eq!(c.invitations.ttl, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(c.logging.format, LogFormat::Text);
    assert_eq!(c.logging.access_sample, 1.0);
    assert_eq!(c.logging.refusals_per_second, 100);

    let r = &c.routes[0];
    assert_eq!(r.name, "whois");
    assert_eq!(r.prefix, "/w");
    assert_eq!(r.host, None);
    assert_eq!(r.product.as_deref(), Some("whois"));
    assert_eq!(r.pool.as_deref(), Some("whois"));
    assert_eq!(r.credits, 1);
    assert!(r.cost_rules.is_empty());
    assert_eq!(r.timeout, Duration::from_secs(30));
    assert_eq!(r.permission, None);
    assert_eq!(r.upstream_auth, None);
}

#[test]
fn empty_tables_mean_defaults_too() {
    let text = "[proxy]\n[account_api]\n[ops]\n[store]\n[cache]\n[keys]\n[metering]\n[metrics]\n\
                [limits]\n[invitations]\n[logging]\n";
    assert_eq!(section_ok(text), ok(ROUTE));
}

#[test]
fn three_mistakes_in_three_tables_are_all_reported() {
    let text = r#"
[cache]
max_staleness = "5x"

[metering]
charge_on = "sometimes"

[[routes]]
prefix = "/w"
upstream = "https://w.example.com/v1"
product = "whois"
"#;
    assert_eq!(
        errors(text),
        vec![
            r#"cache.max_staleness: "5x" is not a duration; use a number with ms, s, m, h or d, e.g. "30s""#,
            r#"metering.charge_on: "sometimes" is not a choice here; use "2xx" (charge successful responses) or "always""#,
            r#"routes[0].upstream: "https://w.example.com/v1" has a path ("/v1"); an upstream is an origin only: write "https://w.example.com"; the request path goes upstream unchanged, so "/v1" belongs in the route's prefix"#,
        ]
    );
    let err = parse(text).unwrap_err();
    assert_eq!(
        err.paths(),
        vec![
            "cache.max_staleness",
            "metering.charge_on",
            "routes[0].upstream"
        ]
    );
}

#[test]
fn problems_in_several_routes_and_nested_tables_each_keep_their_path() {
    let text = r#"
[limits]
parent = { rps = 0, burst = 400 }

[[routes]]
prefix = "/a"
upstream = "https://a.example.com"
product = "a"
timeout = "5x"

[[routes]]
prefix = "/b"
upstream = "https://b.example.com"
product = "b"
cost_rules = [{ query = "x=1", multiply = 2 }, { query = "y=1", set = -1 }]
"#;
    assert_eq!(
        errors(text),
        vec![
            "limits.parent.rps: 0 is too small; use 1 or more",
            r#"routes[0].timeout: "5x" is not a duration; use a number with ms, s, m, h or d, e.g. "30s""#,
            "routes[1].cost_rules[1].set: -1 is negative; use 0 or more",
        ]
    );
}

#[test]
fn unknown_keys_everywhere_with_suggestions() {
    let text = r#"
colour = "blue"

[cache]
max_stalenes = "5s"

[limits]
parent = { rsp = 10, burst = 20 }

[[routes]]
prefix = "/w"
upstream = "https://w.example.com"
prodcut = "whois"
permission = "product.use"
cost_rules = [{ query = "a=1", multiple = 2 }]
upstream_auth = { header = "x-api-key", env = "K", envv = "K" }
"#;
    assert_eq!(
        errors(text),
        vec![
            "colour: unknown key; remove it; the keys here are proxy, account_api, ops, store, \
             cache, keys, metering, metrics, limits, invitations, logging, routes",
            r#"cache.max_stalenes: unknown key; did you mean "max_staleness"?"#,
            r#"limits.parent.rsp: unknown key; did you mean "rps"?"#,
            r#"routes[0].prodcut: unknown key; did you mean "product"?"#,
            r#"routes[0].cost_rules[0].multiple: unknown key; did you mean "multiply"?"#,
            "routes[0].cost_rules[0]: has neither multiply nor set; add multiply = N to scale the \
             route's credits, or set = N to replace them",
            "routes[0].cost_rules: set on a route without a product; cost rules change a \
             product's credits: add product = \"...\", or remove cost_rules",
            r#"routes[0].upstream_auth.envv: unknown key; did you mean "env"?"#,
        ]
    );
}

#[test]
fn misspelt_section_is_suggested() {
    let text = ROUTE.replace("[[routes]]", "[[route]]");
    assert_eq!(
        errors(&text),
        vec![
            r#"route: unknown key; did you mean "routes"?"#,
            "routes: missing; a gateway needs at least one route: add one, e.g. [[routes]] with \
             prefix = \"/whoisserver/WhoisService\", upstream = \"https://www.whoisxmlapi.com\", \
             product = \"whois\"",
        ]
    );
}

#[test]
fn odd_keys_are_quoted_in_paths() {
    assert_eq!(
        section_errors("[cache]\n\"max staleness\" = \"5s\"\n"),
        vec![r#"cache."max staleness": unknown key; did you mean "max_staleness"?"#]
    );
}

#[test]
fn wrong_types_name_what_was_found() {
    let text = r#"
cache = 5

[proxy]
listen = 8080
connect_timeout = 5

[keys]
forward = "no"
sources = "bearer"
"#;
    assert_eq!(
        section_errors(text),
        vec![
            "proxy.listen: expected a string, found integer 8080; put the value in double quotes",
            "proxy.connect_timeout: expected a duration string, found integer 5; write a quoted \
             number with ms, s, m, h or d, e.g. \"30s\"",
            "cache: expected a table, found integer 5; write [cache] on its own line, or cache = { ... }",
            "keys.sources: expected an array, found string \"bearer\"; write a list in square \
             brackets, e.g. [\"a\", \"b\"]",
            "keys.forward: expected a boolean, found string \"no\"; write true or false, without quotes",
        ]
    );
}

#[test]
fn every_duration_problem_in_a_file() {
    let text = r#"
[proxy]
connect_timeout = ""
drain_timeout = "-5s"

[cache]
max_staleness = "30"
negative_ttl = "1.5s"

[metering]
flush_interval = "5ms"

[invitations]
ttl = "99999999999999999999d"
"#;
    assert_eq!(
        section_errors(text),
        vec![
            r#"proxy.connect_timeout: "" is not a duration; use a number with ms, s, m, h or d, e.g. "30s""#,
            r#"proxy.drain_timeout: "-5s" is not a duration: it is negative; use a number with ms, s, m, h or d, e.g. "30s""#,
            r#"cache.max_staleness: "30" is not a duration; use a number with ms, s, m, h or d, e.g. "30s""#,
            r#"cache.negative_ttl: "1.5s" is not a duration; use a whole number of a smaller unit, e.g. "1500ms" rather than "1.5s""#,
            r#"metering.flush_interval: "5ms" is too short; use at least "10ms""#,
            r#"invitations.ttl: "99999999999999999999d" is too long a duration; use a smaller number, e.g. "30d""#,
        ]
    );
}

#[test]
fn zero_durations_only_where_they_mean_something() {
    let c = section_ok("[proxy]\ndrain_timeout = \"0s\"\n[cache]\nnegative_ttl = \"0s\"\n");
    assert_eq!(c.proxy.drain_timeout, Duration::ZERO);
    assert_eq!(c.cache.negative_ttl, Duration::ZERO);
    assert_eq!(
        section_errors("[cache]\nmax_staleness = \"0s\"\n"),
        vec![r#"cache.max_staleness: "0s" is too short; use at least "1ms""#]
    );
}

#[test]
fn syntax_error_has_line_and_column() {
    let errs = parse("[proxy]\nlisten = 0.0.0.0:8080\n").unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs.0[0].path, "");
    assert!(
        errs.0[0]
            .message
            .starts_with("TOML syntax error at line 2, column 13: "),
        "{}",
        errs.0[0].message
    );

    let errs = parse("[cache]\nmax_staleness = \"5s\"\nmax_staleness = \"6s\"\n").unwrap_err();
    assert!(
        errs.0[0]
            .message
            .starts_with("TOML syntax error at line 3, column 1: "),
        "{}",
        errs.0[0].message
    );
}

#[test]
fn a_duplicate_key_is_reported_with_its_path() {
    let dup = |text: &str| parse(text).unwrap_err().0[0].path.clone();
    assert_eq!(
        parse("[cache]\nmax_staleness = \"5s\"\nmax_staleness = \"6s\"\n")
            .unwrap_err()
            .to_string(),
        "cache.max_staleness: TOML syntax error at line 3, column 1: duplicate key; keep one of the two"
    );
    assert_eq!(
        dup("[keys] # comment\nforward = false\n  forward = true\n"),
        "keys.forward"
    );
    assert_eq!(
        dup(&format!("{ROUTE}{ROUTE}credits = 1\ncredits = 2\n")),
        "routes[1].credits"
    );
    assert_eq!(dup("a = 1\na = 2\n"), "a");
    // Inside an inline table the line's header says too little: no path rather than a wrong one.
    assert_eq!(dup("[limits]\nparent = { rps = 1, rps = 2 }\n"), "");
}

#[test]
fn load_reads_a_file_and_reports_an_unreadable_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, ROUTE).unwrap();
    assert_eq!(load(&path).unwrap(), ok(ROUTE));

    let missing = dir.path().join("nope.toml");
    let errs = load(&missing).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs.0[0].path, "");
    assert_eq!(
        errs.to_string(),
        format!(
            "cannot read {}: No such file or directory (os error 2); check the path, or pass --config FILE",
            missing.display()
        )
    );
}

#[test]
fn an_empty_file_needs_a_route() {
    assert_eq!(errors("").len(), 1);
    assert!(errors("")[0].starts_with("routes: missing; "));
}
