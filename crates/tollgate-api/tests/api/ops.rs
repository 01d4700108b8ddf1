//! The ops listener: operator authentication, the operator API, metrics, health and readiness.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

use super::harness::{Harness, Key, OP_TOKEN};

#[tokio::test]
async fn operator_calls_need_the_token() {
    let h = Harness::new();
    let body = || Bytes::from_static(br#"{"email":"p@example.com"}"#);
    for token in [
        None,
        Some("wrong"),
        Some(""),
        Some("operator-secret-token-but-longer"),
    ] {
        h.ops(Method::POST, "/admin/v1/parents", token, body())
            .await
            .expect_error(401, "unauthorized");
        h.ops(Method::GET, "/admin/v1/accounts/acc_x", token, Bytes::new())
            .await
            .expect_error(401, "unauthorized");
        // Unknown admin paths do not reveal themselves without the token either.
        h.ops(Method::GET, "/admin/v1/secret", token, Bytes::new())
            .await
            .expect_error(401, "unauthorized");
    }
    // A basic-auth header carrying the right secret is still not a bearer token.
    let req = http::Request::builder()
        .method(Method::POST)
        .uri("/admin/v1/parents")
        .header("authorization", format!("Basic {OP_TOKEN}"))
        .body(body())
        .unwrap();
    assert_eq!(tollgate_api::ops_api(&h.state, req).await.status(), 401);
    // The scheme is case-insensitive.
    let req = http::Request::builder()
        .method(Method::POST)
        .uri("/admin/v1/parents")
        .header("authorization", format!("bearer {OP_TOKEN}"))
        .body(body())
        .unwrap();
    assert_eq!(tollgate_api::ops_api(&h.state, req).await.status(), 201);
    h.ops(
        Method::GET,
        "/admin/v1/secret",
        Some(OP_TOKEN),
        Bytes::new(),
    )
    .await
    .expect_error(404, "not_found");
}

#[tokio::test]
async fn no_configured_token_refuses_everyone() {
    for configured in [None, Some(String::new())] {
        let h = Harness::with_state(|s| s.operator_token = configured.clone());
        for token in [None, Some(""), Some(OP_TOKEN)] {
            h.ops(Method::GET, "/admin/v1/accounts/acc_x", token, Bytes::new())
                .await
                .expect_error(401, "unauthorized");
        }
        h.ops(Method::GET, "/healthz", None, Bytes::new())
            .await
            .expect(200);
    }
}

#[tokio::test]
async fn create_parent_and_refusals() {
    let h = Harness::new();
    let r = h
        .op(
            Method::POST,
            "/admin/v1/parents",
            json!({"email": "Boss@Example.com", "team": true, "subscriptions": [{"pool": "whois", "credits": 10, "overage": "deny"}]}),
        )
        .await;
    let b = r.expect(201);
    let id = b["id"].as_str().unwrap().to_owned();
    let key = b["api_key"].as_str().unwrap().to_owned();
    assert!(tollgate_core::is_well_formed_key(key.as_bytes()));
    assert_eq!(h.get("/v1/me", &key).await.expect(200)["id"], id.as_str());

    let a = h
        .op(
            Method::GET,
            &format!("/admin/v1/accounts/{id}"),
            Value::Null,
        )
        .await;
    let a = a.expect(200);
    assert_eq!(a["team"], true);
    assert_eq!(a["role"], "parent");
    assert_eq!(
        a["subscriptions"],
        json!([{"pool": "whois", "credits": 10, "overage": "deny"}])
    );
    assert_eq!(a["children"], json!([]));
    assert_eq!(a["limits"], json!({"parent": null, "child": null}));

    // Defaults: no team, no subscriptions.
    let r = h
        .op(
            Method::POST,
            "/admin/v1/parents",
            json!({"email": "plain@example.com"}),
        )
        .await;
    let pid = r.expect(201)["id"].as_str().unwrap().to_owned();
    let a = h
        .op(
            Method::GET,
            &format!("/admin/v1/accounts/{pid}"),
            Value::Null,
        )
        .await;
    assert_eq!(a.body["team"], false);
    assert_eq!(a.body["subscriptions"], json!([]));

    h.op(
        Method::POST,
        "/admin/v1/parents",
        json!({"email": "BOSS@example.com"}),
    )
    .await
    .expect_error(409, "email_taken");
    for bad in [
        json!({}),
        json!({"email": "not-an-email"}),
        json!({"email": "x@example.com", "team": "yes"}),
        json!({"email": "x@example.com", "subscriptions": {}}),
        json!({"email": "x@example.com", "subscriptions": [{"pool": "whois"}]}),
        json!({"email": "x@example.com", "subscriptions": [{"pool": "whois", "credits": -1}]}),
        json!({"email": "x@example.com", "subscriptions": [{"pool": "whois", "credits": 1, "overage": "maybe"}]}),
        json!({"email": "x@example.com", "subscriptions": [{"pool": "a b", "credits": 1}]}),
        json!({"email": "x@example.com", "subscriptions": [{"pool": "w", "credits": 1}, {"pool": "w", "credits": 2}]}),
        json!({"email": "x@example.com", "extra": 1}),
    ] {
        h.op(Method::POST, "/admin/v1/parents", bad.clone())
            .await
            .expect_error(400, "invalid_request");
    }
    h.ops(
        Method::POST,
        "/admin/v1/parents",
        Some(OP_TOKEN),
        Bytes::from_static(b"{oops"),
    )
    .await
    .expect_error(400, "invalid_request");
}

#[tokio::test]
async fn patch_parent_team_and_limits() {
    let h = Harness::new();
    let (pid, pkey) = h.parent("p@example.com", false).await;
    h.post("/v1/team/members", &pkey, json!({"email": "c@example.com"}))
        .await
        .expect_error(403, "team_not_enabled");
    let uri = format!("/admin/v1/parents/{pid}");
    let r = h.op(Method::PATCH, &uri, json!({"team": true})).await;
    assert_eq!(r.expect(200)["team"], true);
    // Switched on: the next invite works at once.
    h.post("/v1/team/members", &pkey, json!({"email": "c@example.com"}))
        .await
        .expect(201);

    let r = h
        .op(
            Method::PATCH,
            &uri,
            json!({"limits": {"parent": {"rps": 10, "burst": 20}}}),
        )
        .await;
    assert_eq!(
        r.expect(200)["limits"],
        json!({"parent": {"rps": 10, "burst": 20}, "child": null})
    );
    // Each field is optional: setting `child` keeps `parent`; `null` clears one.
    let r = h
        .op(
            Method::PATCH,
            &uri,
            json!({"limits": {"child": {"rps": 1, "burst": 1}}}),
        )
        .await;
    assert_eq!(
        r.expect(200)["limits"],
        json!({"parent": {"rps": 10, "burst": 20}, "child": {"rps": 1, "burst": 1}})
    );
    let r = h
        .op(Method::PATCH, &uri, json!({"limits": {"parent": null}}))
        .await;
    assert_eq!(
        r.expect(200)["limits"],
        json!({"parent": null, "child": {"rps": 1, "burst": 1}})
    );
    assert_eq!(r.body["team"], true);

    // rps and burst are each optional: a field left out keeps the override's value...
    let r = h
        .op(
            Method::PATCH,
            &uri,
            json!({"limits": {"child": {"burst": 5}}}),
        )
        .await;
    assert_eq!(
        r.expect(200)["limits"]["child"],
        json!({"rps": 1, "burst": 5})
    );
    // ... or, with no override for the role, follows `[limits]` (`null`: the default).
    let r = h
        .op(
            Method::PATCH,
            &uri,
            json!({"limits": {"parent": {"burst": 7}}}),
        )
        .await;
    assert_eq!(
        r.expect(200)["limits"],
        json!({"parent": {"rps": null, "burst": 7}, "child": {"rps": 1, "burst": 5}})
    );
    // A field set to `null` follows the default again; with neither overridden, nor is the role.
    let r = h
        .op(
            Method::PATCH,
            &uri,
            json!({"limits": {"child": {"rps": null}}}),
        )
        .await;
    assert_eq!(
        r.expect(200)["limits"]["child"],
        json!({"rps": null, "burst": 5})
    );
    let r = h
        .op(
            Method::PATCH,
            &uri,
            json!({"limits": {"parent": {"burst": null}, "child": {}}}),
        )
        .await;
    assert_eq!(
        r.expect(200)["limits"],
        json!({"parent": null, "child": {"rps": null, "burst": 5}})
    );
    let stored = h.store.account(&pid).await.unwrap().unwrap().limits;
    assert_eq!(
        stored.child,
        Some(tollgate_core::LimitOverride {
            rps: None,
            burst: Some(5)
        })
    );
    assert_eq!(stored.parent, None);

    for bad in [
        json!({"limits": {"parent": {"rps": 0, "burst": 1}}}),
        json!({"limits": {"parent": {"rps": 1, "burst": 0}}}),
        json!({"limits": {"parent": {"rps": "1"}}}),
        json!({"limits": {"parent": {"rps": -1}}}),
        json!({"limits": {"parent": {"rps": 1, "burst": 5000000000u64}}}),
        json!({"limits": {"parent": {"rps": 1, "per": 2}}}),
        json!({"limits": {"parent": 5}}),
        json!({"limits": {"other": {"rps": 1, "burst": 1}}}),
        json!({"team": 1}),
        json!({"email": "x@example.com"}),
    ] {
        h.op(Method::PATCH, &uri, bad)
            .await
            .expect_error(400, "invalid_request");
    }

    // Only live parents.
    let (cid, _) = h.child(&pkey, "kid@example.com").await;
    for id in [cid.as_str(), "acc_missing"] {
        h.op(
            Method::PATCH,
            &format!("/admin/v1/parents/{id}"),
            json!({"team": false}),
        )
        .await
        .expect_error(404, "account_not_found");
    }
}

#[tokio::test]
async fn put_subscription_is_seen_at_once() {
    let h = Harness::new();
    let (pid, pkey) = h.parent("p@example.com", true).await;
    // Cache the parent's entry first, so the change must reach it.
    h.get("/v1/subscriptions", &pkey).await.expect(200);
    let r = h
        .op(
            Method::PUT,
            &format!("/admin/v1/parents/{pid}/subscriptions/brand-alert"),
            json!({"credits": 500, "overage": "allow"}),
        )
        .await;
    assert_eq!(
        *r.expect(200),
        json!({"parent_id": pid, "pool": "brand-alert", "credits": 500, "overage": "allow"})
    );
    let subs = h.get("/v1/subscriptions", &pkey).await;
    let pools: Vec<&str> = subs.body["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pool"].as_str().unwrap())
        .collect();
    assert_eq!(pools, ["brand-alert", "drs", "whois"]);
    match h.state.cache.lookup(&tollgate_core::KeyHash::of(&pkey)) {
        tollgate_store::CacheLookup::Hit(p) => assert!(p.tenant.subscribed("brand-alert")),
        other => panic!("expected a cached principal, got {other:?}"),
    }
    // Change an existing one.
    let r = h
        .op(
            Method::PUT,
            &format!("/admin/v1/parents/{pid}/subscriptions/whois"),
            json!({"credits": 7}),
        )
        .await;
    assert_eq!(r.expect(200)["overage"], "deny");

    h.op(
        Method::PUT,
        "/admin/v1/parents/acc_missing/subscriptions/whois",
        json!({"credits": 1}),
    )
    .await
    .expect_error(404, "account_not_found");
    h.op(
        Method::PUT,
        &format!("/admin/v1/parents/{pid}/subscriptions/whois"),
        json!({}),
    )
    .await
    .expect_error(400, "invalid_request");
    // Credits are exact up to 2^53 - 1 in every store; more is refused, not rounded.
    let path = format!("/admin/v1/parents/{pid}/subscriptions/whois");
    let max = (1u64 << 53) - 1;
    let r = h.op(Method::PUT, &path, json!({ "credits": max })).await;
    assert_eq!(r.expect(200)["credits"], max);
    for over in [max + 1, u64::MAX] {
        let r = h.op(Method::PUT, &path, json!({ "credits": over })).await;
        r.expect_error(400, "invalid_request");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("9007199254740991"), "{message}");
    }
}

#[tokio::test]
async fn accounts_lifecycle_by_operator() {
    let h = Harness::new();
    let (pid, pkey) = h.parent("p@example.com", true).await;
    let (cid, ckey) = h.child(&pkey, "c@example.com").await;

    let a = h
        .op(
            Method::GET,
            &format!("/admin/v1/accounts/{pid}"),
            Value::Null,
        )
        .await;
    let children = a.expect(200)["children"].as_array().unwrap().clone();
    assert_eq!(children.len(), 1);
    assert_eq!(children[0]["id"], cid.as_str());
    let c = h
        .op(
            Method::GET,
            &format!("/admin/v1/accounts/{cid}"),
            Value::Null,
        )
        .await;
    assert_eq!(c.expect(200)["parent_id"], pid.as_str());
    assert!(c.body.get("children").is_none());
    // The tenant's settings live on the parent: a child's record does not show them.
    assert!(c.body.get("team").is_none(), "{}", c.body);
    assert!(c.body.get("limits").is_none(), "{}", c.body);
    assert!(c.body.get("subscriptions").is_none(), "{}", c.body);

    let r = h
        .op(
            Method::POST,
            &format!("/admin/v1/accounts/{cid}/disable"),
            Value::Null,
        )
        .await;
    assert_eq!(r.expect(200)["status"], "disabled");
    h.get("/v1/me", &ckey)
        .await
        .expect_error(403, "key_disabled");
    let r = h
        .op(
            Method::POST,
            &format!("/admin/v1/accounts/{cid}/enable"),
            Value::Null,
        )
        .await;
    assert_eq!(r.expect(200)["status"], "active");
    h.op(
        Method::DELETE,
        &format!("/admin/v1/accounts/{cid}"),
        Value::Null,
    )
    .await
    .expect(204);
    h.get("/v1/me", &ckey)
        .await
        .expect_error(401, "key_unknown");
    // The record stays readable for the operator; nothing more can be done to it.
    let c = h
        .op(
            Method::GET,
            &format!("/admin/v1/accounts/{cid}"),
            Value::Null,
        )
        .await;
    assert_eq!(c.expect(200)["status"], "deleted");
    for action in ["enable", "disable"] {
        let r = h
            .op(
                Method::POST,
                &format!("/admin/v1/accounts/{cid}/{action}"),
                Value::Null,
            )
            .await;
        r.expect_error(409, "conflict");
        assert!(r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deleted, which is permanent"));
    }
    // Deleting again is a no-op (idempotent DELETE), and the record is unchanged.
    let r = h
        .op(
            Method::DELETE,
            &format!("/admin/v1/accounts/{cid}"),
            Value::Null,
        )
        .await;
    r.expect(204);
    assert!(r.raw.is_empty());
    let c = h
        .op(
            Method::GET,
            &format!("/admin/v1/accounts/{cid}"),
            Value::Null,
        )
        .await;
    assert_eq!(c.expect(200)["status"], "deleted");
    h.get("/v1/me", &ckey)
        .await
        .expect_error(401, "key_unknown");

    for (m, uri) in [
        (Method::GET, "/admin/v1/accounts/acc_missing"),
        (Method::POST, "/admin/v1/accounts/acc_missing/disable"),
        (Method::POST, "/admin/v1/accounts/acc_missing/enable"),
        (Method::DELETE, "/admin/v1/accounts/acc_missing"),
    ] {
        h.op(m, uri, Value::Null)
            .await
            .expect_error(404, "account_not_found");
    }
    let r = h.op(Method::PUT, "/admin/v1/accounts/x", Value::Null).await;
    r.expect_error(405, "method_not_allowed");
    assert_eq!(r.headers["allow"], "GET, HEAD, DELETE");
}

#[tokio::test]
async fn metrics_health_and_readiness() {
    let h = Harness::new();
    let r = h.ops(Method::GET, "/metrics", None, Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(String::from_utf8_lossy(&r.raw).contains("tollgate_store_up"));

    assert_eq!(
        *h.ops(Method::GET, "/healthz", None, Bytes::new())
            .await
            .expect(200),
        json!({"status": "ok"})
    );
    h.ops(Method::GET, "/readyz", None, Bytes::new())
        .await
        .expect(200);
    assert_eq!(h.state.metrics.store_up.get(), 1);
    h.ops(Method::POST, "/healthz", None, Bytes::new())
        .await
        .expect_error(405, "method_not_allowed");
    h.ops(Method::GET, "/nothing", None, Bytes::new())
        .await
        .expect_error(404, "not_found");

    h.state.routes_loaded.store(false, Ordering::Release);
    let r = h.ops(Method::GET, "/readyz", None, Bytes::new()).await;
    let b = r.expect(503);
    assert!(b["reason"].as_str().unwrap().contains("routes"));

    // Draining: not ready whatever the store says, yet alive and scrapeable.
    h.state.routes_loaded.store(true, Ordering::Release);
    h.state.draining.store(true, Ordering::Release);
    let r = h.ops(Method::GET, "/readyz", None, Bytes::new()).await;
    let b = r.expect(503);
    assert!(b["reason"].as_str().unwrap().contains("draining"));
    h.ops(Method::GET, "/healthz", None, Bytes::new())
        .await
        .expect(200);
    let r = h.ops(Method::GET, "/metrics", None, Bytes::new()).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn deleting_a_parent_deletes_its_team() {
    let h = Harness::new();
    let (pid, pkey) = h.parent("p@example.com", true).await;
    let (cid, ckey) = h.child(&pkey, "c@example.com").await;
    let inv = h
        .post("/v1/team/members", &pkey, json!({"email": "b@example.com"}))
        .await;
    let token = inv.expect(201)["invitation_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Cached before the deletion, so the deletion must reach the cache.
    h.get("/v1/me", &ckey).await.expect(200);

    h.op(
        Method::DELETE,
        &format!("/admin/v1/accounts/{pid}"),
        Value::Null,
    )
    .await
    .expect(204);
    h.post(&format!("/v1/invitations/{token}/accept"), "", Value::Null)
        .await
        .expect_error(404, "invitation_unknown");
    // The child went with its parent: refused as under a deleted parent (SPEC's table).
    h.get("/v1/me", &ckey)
        .await
        .expect_error(403, "parent_disabled");
    let a = h
        .op(
            Method::GET,
            &format!("/admin/v1/accounts/{pid}"),
            Value::Null,
        )
        .await;
    let children = a.expect(200)["children"].as_array().unwrap().clone();
    assert_eq!(children.len(), 2);
    assert!(children.iter().all(|c| c["status"] == "deleted"), "{a:?}");
    assert_eq!(children[0]["id"], cid.as_str());
    // A deleted parent's settings are as final as its status: conflict, not "not found", as GET
    // still shows it.
    for (method, path, body) in [
        (
            Method::PATCH,
            format!("/admin/v1/parents/{pid}"),
            json!({"team": false}),
        ),
        (
            Method::PUT,
            format!("/admin/v1/parents/{pid}/subscriptions/whois"),
            json!({"credits": 5}),
        ),
    ] {
        let r = h.op(method, &path, body).await;
        r.expect_error(409, "conflict");
        assert!(r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deleted, which is permanent"));
    }
    // Their emails are free for another tenant.
    let (_, qkey) = h.parent("q@example.com", true).await;
    for email in ["C@example.com", "b@example.com"] {
        h.post("/v1/team/members", &qkey, json!({ "email": email }))
            .await
            .expect(201);
    }

    // A disabled parent's invitation can still be accepted (disabling is reversible); the key
    // is refused until the parent is enabled.
    let (rid, rkey) = h.parent("r@example.com", true).await;
    let inv = h
        .post("/v1/team/members", &rkey, json!({"email": "d@example.com"}))
        .await;
    let token = inv.expect(201)["invitation_token"]
        .as_str()
        .unwrap()
        .to_owned();
    h.op(
        Method::POST,
        &format!("/admin/v1/accounts/{rid}/disable"),
        Value::Null,
    )
    .await
    .expect(200);
    let r = h
        .post(&format!("/v1/invitations/{token}/accept"), "", Value::Null)
        .await;
    let dkey = r.expect(200)["api_key"].as_str().unwrap().to_owned();
    h.get("/v1/me", &dkey)
        .await
        .expect_error(403, "parent_disabled");
    h.op(
        Method::POST,
        &format!("/admin/v1/accounts/{rid}/enable"),
        Value::Null,
    )
    .await
    .expect(200);
    h.get("/v1/me", &dkey).await.expect(200);
}

#[tokio::test]
async fn emails_must_be_addresses_on_both_apis() {
    let h = Harness::new();
    let (_, pkey) = h.parent("p@example.com", true).await;
    for bad in [
        "<a>@demo.example",
        "a,b@demo.example",
        "a;b@demo.example",
        ".a@demo.example",
        "a@-demo.example",
        "<script>@c.example",
        "a\"b@demo.example",
        "a b@demo.example",
        "a@demo",
    ] {
        h.op(Method::POST, "/admin/v1/parents", json!({"email": bad}))
            .await
            .expect_error(400, "invalid_request");
        h.call(
            Method::POST,
            "/v1/team/members",
            Key::Header(&pkey),
            Bytes::from(json!({"email": bad}).to_string()),
        )
        .await
        .expect_error(400, "invalid_request");
    }
    // Internationalized addresses stay welcome.
    h.op(
        Method::POST,
        "/admin/v1/parents",
        json!({"email": "ünï@exämple.com"}),
    )
    .await
    .expect(201);
    h.post(
        "/v1/team/members",
        &pkey,
        json!({"email": "o'brien+team@sub.demo.example"}),
    )
    .await
    .expect(201);
}

#[tokio::test]
async fn a_final_sigma_is_the_same_address() {
    let h = Harness::new();
    h.op(
        Method::POST,
        "/admin/v1/parents",
        json!({"email": "ΟΔΟΣ@greek.example"}),
    )
    .await
    .expect(201);
    for same in [
        "οδοσ@greek.example",
        "οδος@greek.example",
        "ΟΔΟΣ@GREEK.example",
    ] {
        h.op(Method::POST, "/admin/v1/parents", json!({"email": same}))
            .await
            .expect_error(409, "email_taken");
    }
}
