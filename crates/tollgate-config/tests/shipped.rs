//! The shipped `gateway.toml` and SPEC.md's own example must both pass `check`.

use std::path::Path;

use tollgate_config::{load, parse, StoreConfig};
use tollgate_core::Permission;

#[test]
fn shipped_gateway_toml_is_valid_with_the_expected_routes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../gateway.toml");
    let config = load(&path).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));

    let routes: Vec<_> = config
        .routes
        .iter()
        .map(|r| {
            (
                r.prefix.as_str(),
                r.host.as_deref(),
                r.product.as_deref(),
                r.pool.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        vec![
            (
                "/whoisserver/WhoisService",
                None,
                Some("whois"),
                Some("whois")
            ),
            (
                "/api/v2",
                Some("reverse-whois.whoisxmlapi.com"),
                Some("reverse-whois"),
                Some("drs")
            ),
            (
                "/whoisserver/DNSService",
                None,
                Some("dns-lookup"),
                Some("dns-lookup")
            ),
            (
                "/api/v1",
                Some("ip-geolocation.whoisxmlapi.com"),
                Some("ip-geolocation"),
                Some("ip-geolocation")
            ),
            ("/billing", None, None, None),
        ]
    );
    assert_eq!(config.routes[0].cost_rules.len(), 1);
    assert_eq!(config.routes[1].cost_rules.len(), 2);
    assert_eq!(config.routes[4].permission, Some(Permission::BillingView));
    assert_eq!(config.routes[4].credits, 0);
    // Shipped without secrets, so `check` passes anywhere.
    assert!(config.routes.iter().all(|r| r.upstream_auth.is_none()));
    assert!(tollgate_config::warnings(&config).is_empty());
    assert!(matches!(config.store, StoreConfig::Embedded { .. }));
}

#[test]
fn spec_example_is_valid() {
    let text = include_str!("fixtures/spec_example.toml");
    let config = parse(text).unwrap_or_else(|e| panic!("SPEC.md example:\n{e}"));
    assert_eq!(config.routes.len(), 3);
    assert_eq!(config.routes[1].pool.as_deref(), Some("drs"));
    assert_eq!(
        config.routes[1]
            .upstream_auth
            .as_ref()
            .map(|a| a.env.as_str()),
        Some("VENDOR_MASTER_KEY")
    );
    assert_eq!(config.routes[2].permission, Some(Permission::BillingView));
}

#[test]
fn shipped_file_matches_the_defaults_it_documents() {
    // Every value the shipped file writes out is the default, so it must equal a file with the
    // same routes and no other tables.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../gateway.toml");
    let shipped = load(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let routes_only = &text[text.find("[[routes]]").unwrap()..];
    assert_eq!(parse(routes_only).unwrap(), shipped);
}
