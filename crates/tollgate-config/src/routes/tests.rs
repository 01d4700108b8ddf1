//! `[[routes]]`: a full route, upstream origins, and every route error with its path and fix.

use std::time::Duration;

use tollgate_core::{CostAction, CostRule, Permission};

use super::parse_upstream;
use crate::tests::{errors, ok};
use crate::*;

/// One `[[routes]]` table with `body` as its keys.
fn route(body: &str) -> String {
    format!("[[routes]]\n{body}\n")
}

fn route_errors(body: &str) -> Vec<String> {
    errors(&route(body))
}

const BASE: &str = "prefix = \"/w\"\nupstream = \"https://w.example.com\"\n";

#[test]
fn a_full_route() {
    let c = ok(&route(
        r#"
prefix = "/api/v2"
host = "Reverse-WHOIS.WhoisXMLAPI.com"
upstream = "HTTPS://Reverse-Whois.WhoisXMLAPI.com:8443/"
name = "rw"
product = "reverse-whois"
pool = "drs"
credits = 3
cost_rules = [{ query = "mode=preview", set = 0 }, { query = "_hardRefresh", multiply = 5 }]
timeout = "2m"
permission = "product.use"
upstream_auth = { header = "X-Api-Key", env = "VENDOR_MASTER_KEY" }
"#,
    ));
    let r = &c.routes[0];
    assert_eq!(r.name, "rw");
    assert_eq!(r.prefix, "/api/v2");
    assert_eq!(r.host.as_deref(), Some("reverse-whois.whoisxmlapi.com"));
    assert_eq!(
        r.upstream,
        Upstream {
            scheme: Scheme::Https,
            host: "reverse-whois.whoisxmlapi.com".into(),
            port: 8443,
            authority: "reverse-whois.whoisxmlapi.com:8443".into(),
        }
    );
    assert_eq!(r.product.as_deref(), Some("reverse-whois"));
    assert_eq!(r.pool.as_deref(), Some("drs"));
    assert_eq!(r.credits, 3);
    assert_eq!(
        r.cost_rules,
        vec![
            CostRule {
                query: "mode=preview".into(),
                action: CostAction::Set(0)
            },
            CostRule {
                query: "_hardRefresh".into(),
                action: CostAction::Multiply(5)
            },
        ]
    );
    assert_eq!(r.timeout, Duration::from_secs(120));
    assert_eq!(r.permission, Some(Permission::ProductUse));
    assert_eq!(
        r.upstream_auth,
        Some(UpstreamAuth {
            target: UpstreamAuthTarget::Header("x-api-key".into()),
            env: "VENDOR_MASTER_KEY".into(),
        })
    );
}

#[test]
fn a_permission_route_and_names() {
    let c = ok(&format!(
        "{}{}",
        route(
            "prefix = \"/billing\"\nupstream = \"http://billing.internal\"\npermission = \"billing.view\"\n\
             upstream_auth = { query = \"key\", env = \"_K1\" }"
        ),
        route("prefix = \"/w\"\nupstream = \"https://w.example.com\"\nproduct = \"whois\"\ncredits = 0")
    ));
    let billing = &c.routes[0];
    assert_eq!(billing.name, "/billing");
    assert_eq!(billing.product, None);
    assert_eq!(billing.pool, None);
    assert_eq!(billing.credits, 0);
    assert_eq!(billing.permission, Some(Permission::BillingView));
    assert_eq!(
        billing.upstream_auth.as_ref().map(|a| &a.target),
        Some(&UpstreamAuthTarget::Query("key".into()))
    );
    assert_eq!(c.routes[1].name, "whois");
    assert_eq!(c.routes[1].credits, 0);
}

#[test]
fn upstream_origins() {
    let up = |s: &str| parse_upstream(s).unwrap();
    let u = up("http://api.example.com");
    assert_eq!(
        (u.scheme, u.port, u.authority.as_str()),
        (Scheme::Http, 80, "api.example.com")
    );
    let u = up("https://api.example.com:443/");
    assert_eq!(
        (u.scheme, u.port, u.authority.as_str()),
        (Scheme::Https, 443, "api.example.com")
    );
    let u = up("http://api.example.com:443");
    assert_eq!((u.port, u.authority.as_str()), (443, "api.example.com:443"));
    let u = up("http://[::1]:8080");
    assert_eq!(
        (u.host.as_str(), u.port, u.authority.as_str()),
        ("::1", 8080, "[::1]:8080")
    );
    let u = up("https://[2001:DB8::1]");
    assert_eq!(
        (u.host.as_str(), u.port, u.authority.as_str()),
        ("2001:db8::1", 443, "[2001:db8::1]")
    );
    let u = up("http://127.0.0.1:9000");
    assert_eq!(
        (u.host.as_str(), u.authority.as_str()),
        ("127.0.0.1", "127.0.0.1:9000")
    );
}

#[test]
fn upstream_errors() {
    let err = |s: &str| {
        let (message, fix) = parse_upstream(s).unwrap_err();
        format!("{message}; {fix}")
    };
    assert_eq!(
        err("https://api.example.com/v1/x?y=1"),
        r#""https://api.example.com/v1/x?y=1" has a path ("/v1/x?y=1"); an upstream is an origin only: write "https://api.example.com"; the request path goes upstream unchanged, so "/v1/x" belongs in the route's prefix"#
    );
    assert_eq!(
        err("https://api.example.com?a=1"),
        r#""https://api.example.com?a=1" has a query or fragment ("?a=1"); an upstream is an origin only: write "https://api.example.com""#
    );
    assert_eq!(
        err("api.example.com"),
        r#""api.example.com" has no scheme; write "https://api.example.com" (or http://)"#
    );
    assert_eq!(
        err("ftp://api.example.com"),
        r#""ftp://api.example.com" is not an http or https URL; write "https://api.example.com" (or http://)"#
    );
    assert_eq!(
        err("https://me:pw@api.example.com"),
        r#""https://***@api.example.com" holds credentials; write "https://api.example.com" and inject the credential with upstream_auth = { header = ..., env = ... }"#
    );
    let port_fix = "use a number from 1 to 65535, or leave it out for the scheme's default";
    assert_eq!(
        err("http://a:99999"),
        format!(r#""99999" in "http://a:99999" is not a port; {port_fix}"#)
    );
    assert_eq!(
        err("http://a:0"),
        format!(r#""0" in "http://a:0" is not a port; {port_fix}"#)
    );
    assert_eq!(
        err("http://a:+80"),
        format!(r#""+80" in "http://a:+80" is not a port; {port_fix}"#)
    );
    assert_eq!(
        err("http://a:"),
        format!(r#""" in "http://a:" is not a port; {port_fix}"#)
    );
    assert_eq!(
        err("http://::1:8080"),
        r#""http://::1:8080" has an IPv6 address without brackets; write it in brackets, e.g. "http://[::1]:8080""#
    );
    assert_eq!(
        err("http://[::1"),
        r#""http://[::1" has an unclosed '['; write an IPv6 host as [::1]"#
    );
    assert_eq!(
        err("http://[nope]"),
        r#""nope" is not an IPv6 address; write an IPv6 host as [::1]"#
    );
    assert_eq!(
        err("https://"),
        r#""https://" has no valid host; write the upstream's origin, e.g. "https://api.example.com""#
    );
    assert_eq!(
        err("https://a b.com"),
        r#""https://a b.com" has no valid host; write the upstream's origin, e.g. "https://api.example.com""#
    );
}

#[test]
fn routes_must_exist_as_an_array_of_tables() {
    assert_eq!(
        errors("routes = []\n"),
        vec![
            "routes: is empty; a gateway needs at least one route: add one, e.g. [[routes]] with \
             prefix = \"/whoisserver/WhoisService\", upstream = \"https://www.whoisxmlapi.com\", \
             product = \"whois\""
        ]
    );
    assert_eq!(
        errors("[routes]\nprefix = \"/w\"\n"),
        vec!["routes: expected an array of tables, found a table; write [[routes]] (double brackets) above each route"]
    );
    assert_eq!(
        errors("routes = [1]\n"),
        vec![
            "routes[0]: expected a table, found integer 1; write each route as a [[routes]] table"
        ]
    );
}

#[test]
fn required_keys() {
    assert_eq!(
        route_errors("product = \"whois\""),
        vec![
            r#"routes[0].prefix: missing; add the path this route serves, e.g. prefix = "/api""#,
            r#"routes[0].upstream: missing; add the origin requests go to, e.g. upstream = "https://api.example.com""#,
        ]
    );
    assert_eq!(
        route_errors(BASE),
        vec![
            r#"routes[0]: has neither product nor permission; add product = "whois" for a metered product route, or permission = "billing.view" for a route that needs a permission"#
        ]
    );
}

#[test]
fn prefix_and_host_errors() {
    let product = "upstream = \"https://w.example.com\"\nproduct = \"w\"\n";
    let cases: &[(&str, &str)] = &[
        (
            "prefix = \"api\"",
            r#"routes[0].prefix: "api" does not start with "/"; write "/api""#,
        ),
        (
            "prefix = \"/api?x=1\"",
            r#"routes[0].prefix: "/api?x=1" holds a query or fragment; a prefix matches the path only: write "/api""#,
        ),
        (
            "prefix = \"/a b\"",
            r#"routes[0].prefix: "/a b" holds spaces or control characters; write the path as it appears in the URL, percent-encoded"#,
        ),
        (
            "prefix = \"/w\"\nhost = \"https://w.example.com/x\"",
            r#"routes[0].host: "https://w.example.com/x" has a scheme; write only the host name, e.g. "w.example.com""#,
        ),
        (
            "prefix = \"/w\"\nhost = \"w.example.com:8080\"",
            r#"routes[0].host: "w.example.com:8080" has a port; write "w.example.com": routes match the Host header without its port"#,
        ),
        (
            "prefix = \"/w\"\nhost = \"w.example.com/x\"",
            r#"routes[0].host: "w.example.com/x" has a path; write only the host name, e.g. "w.example.com""#,
        ),
        (
            "prefix = \"/w\"\nhost = \"*.example.com\"",
            r#"routes[0].host: "*.example.com" is not a host name; use letters, digits, '-' and '.', e.g. "api.example.com""#,
        ),
        (
            "prefix = \"/w\"\nhost = \"\"",
            r#"routes[0].host: is empty; give a value, e.g. host = "api.example.com", or remove the key"#,
        ),
    ];
    for (body, want) in cases {
        assert_eq!(
            route_errors(&format!("{body}\n{product}")),
            vec![*want],
            "for {body}"
        );
    }
}

#[test]
fn product_pool_credits_errors() {
    let cases: &[(&str, &[&str])] = &[
        (
            "permission = \"billing.view\"\npool = \"drs\"",
            &[
                r#"routes[0].pool: set on a route without a product; a pool holds a product's credits: add product = "...", or remove pool"#,
            ],
        ),
        (
            "permission = \"billing.view\"\ncredits = 2",
            &[
                r#"routes[0].credits: set on a route without a product; credits are charged to a product's pool: add product = "...", or remove credits"#,
            ],
        ),
        (
            "product = \"who is\"\npool = \"d{r}s\"",
            &[
                r#"routes[0].product: "who is" holds characters a product name may not; use letters, digits, '-', '_' or '.', e.g. "reverse-whois""#,
                r#"routes[0].pool: "d{r}s" holds characters a pool name may not; use letters, digits, '-', '_' or '.', e.g. "reverse-whois""#,
            ],
        ),
        (
            "product = \"w\"\ncredits = -1",
            &["routes[0].credits: -1 is negative; use 0 or more"],
        ),
        (
            "product = \"w\"\ntimeout = \"0s\"",
            &[r#"routes[0].timeout: "0s" is too short; use at least "1ms""#],
        ),
    ];
    for (body, want) in cases {
        assert_eq!(route_errors(&format!("{BASE}{body}")), *want, "for {body}");
    }
    // Explicit credits = 0 on a permission route is the default, so not an error.
    ok(&route(&format!(
        "{BASE}permission = \"billing.view\"\ncredits = 0"
    )));
}

#[test]
fn permission_errors_list_the_valid_names() {
    assert_eq!(
        route_errors(&format!("{BASE}permission = \"billing.read\"")),
        vec![
            "routes[0].permission: \"billing.read\" is not a permission; did you mean \
             \"billing.view\"? use one of product.use, subscription.buy, subscription.edit, \
             billing.view, usage.view, newsletter.manage, team.manage"
        ]
    );
    assert_eq!(
        route_errors(&format!("{BASE}permission = \"admin\"")),
        vec![
            "routes[0].permission: \"admin\" is not a permission; use one of product.use, \
             subscription.buy, subscription.edit, billing.view, usage.view, newsletter.manage, \
             team.manage"
        ]
    );
}

#[test]
fn cost_rule_errors() {
    let body = format!(
        "{BASE}product = \"w\"\ncost_rules = [{{ query = \"a=1\", multiply = 2, set = 3 }}, \
         {{ query = \"\", set = 1 }}, {{ set = 1 }}, {{ query = \"a=1&b=2\", set = 1 }}, \"x\"]"
    );
    assert_eq!(
        route_errors(&body),
        vec![
            "routes[0].cost_rules[0]: has both multiply and set; keep one: multiply scales the route's credits, set replaces them",
            r#"routes[0].cost_rules[1].query: is empty; give a value, e.g. query = "mode=preview", or remove the key"#,
            r#"routes[0].cost_rules[2].query: missing; add the query pair it matches, e.g. query = "mode=preview""#,
            r#"routes[0].cost_rules[3].query: "a=1&b=2" is not one name=value pair; a rule matches one pair, without '?' or '&': write one rule per pair"#,
            r#"routes[0].cost_rules[4]: expected a table, found string "x"; write each rule as { query = "name=value", multiply = N } or { query = ..., set = N }"#,
        ]
    );
}

#[test]
fn upstream_auth_errors() {
    let fix = r#"write { query = "apiKey", env = "VENDOR_KEY" } or { header = "x-api-key", env = "VENDOR_KEY" }"#;
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "{ query = \"k\", header = \"x-k\", env = \"K\" }",
            vec![format!("routes[0].upstream_auth: has both query and header; keep one: {fix}")],
        ),
        (
            "{ env = \"K\" }",
            vec![format!("routes[0].upstream_auth: has neither query nor header; {fix}")],
        ),
        (
            "{ query = \"k\" }",
            vec![r#"routes[0].upstream_auth.env: missing; name the environment variable holding the credential, e.g. env = "VENDOR_KEY""#.into()],
        ),
        (
            "{ header = \"x k\", env = \"1K\" }",
            vec![
                r#"routes[0].upstream_auth.header: "x k" is not a header name; use letters, digits and '-', e.g. "x-api-key""#.into(),
                r#"routes[0].upstream_auth.env: "1K" is not an environment variable name; use letters, digits and '_', not starting with a digit, e.g. "VENDOR_KEY""#.into(),
            ],
        ),
        (
            "{ query = \"a=b\", env = \"K\" }",
            vec![r#"routes[0].upstream_auth.query: "a=b" is not a query parameter name; use the bare parameter name, e.g. "apiKey""#.into()],
        ),
        (
            "\"VENDOR_KEY\"",
            vec![r#"routes[0].upstream_auth: expected a table, found string "VENDOR_KEY"; write upstream_auth = { ... } in that entry, or [routes.upstream_auth] on its own line below its [[routes]] line"#.into()],
        ),
    ];
    for (auth, want) in cases {
        let body = format!("{BASE}product = \"w\"\nupstream_auth = {auth}");
        assert_eq!(route_errors(&body), want, "for {auth}");
    }
}

#[test]
fn duplicate_host_and_prefix() {
    let text = format!(
        "{}{}{}{}",
        route(&format!("{BASE}product = \"a\"")),
        route(&format!("{BASE}product = \"b\"\nhost = \"x.example.com\"")),
        route(&format!("{BASE}product = \"c\"\nhost = \"X.example.com\"")),
        route(&format!("{BASE}product = \"d\"")),
    );
    assert_eq!(
        errors(&text),
        vec![
            r#"routes[2].prefix: "/w" on host "x.example.com" is already routes[1]; change the prefix or host of one of them, or remove one"#,
            r#"routes[3].prefix: "/w" on any host is already routes[0]; change the prefix or host of one of them, or remove one"#,
        ]
    );
}

#[test]
fn prefixes_the_data_plane_refuses_are_errors() {
    let fix =
        "the data plane refuses `.` and `..` segments (also percent-encoded), `\\`, `%2f` and \
               `%5c` before routing: write the path an upstream serves, without them";
    for p in [
        "/b/../c",
        "/d%2f",
        "/x/%2E%2e/y",
        "/a%5Cb",
        "/./x",
        "/a/..;/b",
    ] {
        let toml_p = p.replace('\\', "\\\\");
        assert_eq!(
            route_errors(&format!(
                "prefix = \"{toml_p}\"\nupstream = \"https://w.example.com\"\nproduct = \"w\""
            )),
            vec![format!(
                "routes[0].prefix: {p:?} can never match: every path starting with it is refused \
                 as invalid_request; {fix}"
            )],
            "for {p}"
        );
    }
    let backslash =
        route_errors("prefix = '/a\\b'\nupstream = \"https://w.example.com\"\nproduct = \"w\"");
    assert_eq!(backslash.len(), 1, "{backslash:?}");
    assert!(
        backslash[0].starts_with("routes[0].prefix: "),
        "{backslash:?}"
    );
    // A prefix ending in a dot segment still starts safe paths (`/a/.well-known`).
    for p in ["/a/.", "/.well-known", "/a/...", "/a%2"] {
        ok(&route(&format!(
            "prefix = \"{p}\"\nupstream = \"https://w.example.com\"\nproduct = \"w\""
        )));
    }
}

#[test]
fn product_and_permission_together_need_both() {
    // Not an error: admission checks the permission, then product.use and the subscription.
    let c = ok(&route(&format!(
        "{BASE}product = \"bulk\"\npermission = \"billing.view\""
    )));
    assert_eq!(c.routes[0].product.as_deref(), Some("bulk"));
    assert_eq!(c.routes[0].permission, Some(Permission::BillingView));
}

#[test]
fn route_names_are_unique() {
    let up = "upstream = \"https://w.example.com\"";
    let text = format!(
        "[[routes]]\nprefix = \"/a\"\n{up}\nproduct = \"a\"\nname = \"x\"\n\
         [[routes]]\nprefix = \"/b\"\n{up}\nproduct = \"b\"\nname = \"x\"\n\
         [[routes]]\nprefix = \"/c\"\n{up}\nproduct = \"c\"\n\
         [[routes]]\nprefix = \"/d\"\n{up}\nproduct = \"d\"\nname = \"c\"\n\
         [[routes]]\nprefix = \"/e\"\n{up}\nproduct = \"e\"\nname = \"e2\"\n\
         [[routes]]\nprefix = \"/f\"\n{up}\nproduct = \"e2\"\n"
    );
    let fix = "give each route its own name = \"...\": it is the route label of metrics and \
               access-log lines, which would merge";
    assert_eq!(
        errors(&text),
        vec![
            format!("routes[1].name: route name \"x\" is also the name of routes[0].name; {fix}"),
            format!(
                "routes[3].name: route name \"c\" is also the name of routes[2] (its default \
                 name, from product or prefix); {fix}"
            ),
            format!("routes[5]: route name \"e2\" is also the name of routes[4].name; {fix}"),
        ]
    );
    // Two unnamed routes of one product share its series: allowed, as before.
    ok(&format!(
        "[[routes]]\nprefix = \"/a\"\n{up}\nproduct = \"a\"\n\
         [[routes]]\nprefix = \"/a\"\nhost = \"h.example.com\"\n{up}\nproduct = \"a\"\n"
    ));
}

#[test]
fn credits_per_request_are_capped() {
    let max = MAX_REQUEST_CREDITS;
    assert_eq!(max, 1_000_000);
    ok(&route(&format!(
        "{BASE}product = \"w\"\ncredits = {max}\ncost_rules = [{{ query = \"a=1\", set = {max} }}, \
         {{ query = \"b=1\", multiply = 1 }}]"
    )));
    ok(&route(&format!(
        "{BASE}product = \"w\"\ncost_rules = [{{ query = \"a=1\", multiply = {max} }}]"
    )));
    assert_eq!(
        route_errors(&format!(
            "{BASE}product = \"w\"\ncredits = 9223372036854775807\n\
             cost_rules = [{{ query = \"a=1\", set = 9223372036854775807 }}]"
        )),
        vec![
            "routes[0].credits: 9223372036854775807 is too large; use 1000000 or less",
            "routes[0].cost_rules[0].set: 9223372036854775807 is too large; use 1000000 or less",
        ]
    );
    assert_eq!(
        route_errors(&format!(
            "{BASE}product = \"w\"\ncredits = 3\n\
             cost_rules = [{{ query = \"a=1\", multiply = 400000 }}, {{ query = \"b\", multiply = 1000001 }}]"
        )),
        vec![
            "routes[0].cost_rules[0].multiply: 400000 times the route's 3 credits is 1200000, more \
             than one request may cost (1000000); use 333333 or less",
            "routes[0].cost_rules[1].multiply: 1000001 is too large; use 1000000 or less",
        ]
    );
}
