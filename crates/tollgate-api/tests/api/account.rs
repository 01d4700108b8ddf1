//! Authentication and the caller's own endpoints: `/v1/me`, `/v1/subscriptions`, key rotation,
//! routing errors and body limits.

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use tollgate_core::KeyHash;
use tollgate_store::CacheLookup;

use super::harness::{Harness, Key};

#[tokio::test]
async fn me_with_every_key_source() {
    let h = Harness::new();
    let (pid, pkey) = h.parent("Boss@Example.com", true).await;
    for key in [Key::Header(&pkey), Key::Bearer(&pkey), Key::Query(&pkey)] {
        let r = h.call(Method::GET, "/v1/me", key, Bytes::new()).await;
        let b = r.expect(200);
        assert_eq!(b["id"], pid.as_str());
        assert_eq!(b["role"], "parent");
        assert_eq!(b["status"], "active");
        assert_eq!(b["email"], "Boss@Example.com");
        assert_eq!(b["parent_id"], Value::Null);
    }
    // An empty source holds no key: the next one is used.
    let req = http::Request::builder()
        .uri("/v1/me?apiKey=")
        .header("x-api-key", "")
        .header("authorization", format!("Bearer {pkey}"))
        .body(Bytes::new())
        .unwrap();
    assert_eq!(tollgate_api::account_api(&h.state, req).await.status(), 200);
    let r = h
        .call(Method::HEAD, "/v1/me", Key::Header(&pkey), Bytes::new())
        .await;
    r.expect(200);

    let (cid, ckey) = h.child(&pkey, "kid@example.com").await;
    let b = h.get("/v1/me", &ckey).await;
    let b = b.expect(200);
    assert_eq!(b["id"], cid.as_str());
    assert_eq!(b["role"], "child");
    assert_eq!(b["parent_id"], pid.as_str());
}

#[tokio::test]
async fn missing_malformed_and_unknown_keys() {
    let h = Harness::new();
    h.call(Method::GET, "/v1/me", Key::None, Bytes::new())
        .await
        .expect_error(401, "key_missing");
    for bad in [
        "nope",
        "at_short",
        "AT_abcdefghijklmnopqrstuvwxyz012",
        "at_abcdefghijklmnopqrstuvwxyz01!",
    ] {
        let r = h.get("/v1/me", bad).await;
        r.expect_error(401, "key_unknown");
        assert!(!String::from_utf8_lossy(&r.raw).contains(bad));
    }
    // Well formed but never issued: the store is asked once, then the negative entry answers.
    let ghost = "at_abcdefghijklmnopqrstuvwxyz012";
    h.get("/v1/me", ghost)
        .await
        .expect_error(401, "key_unknown");
    assert!(matches!(
        h.state.cache.lookup(&KeyHash::of(ghost)),
        CacheLookup::Unknown
    ));
    h.get("/v1/me", ghost)
        .await
        .expect_error(401, "key_unknown");
    // A non-bearer Authorization header is no key at all.
    let mut req = http::Request::builder()
        .uri("/v1/me")
        .header("authorization", "Basic dXNlcjpwYXNz")
        .body(Bytes::new())
        .unwrap();
    req.headers_mut().insert("x-other", "1".parse().unwrap());
    let res = tollgate_api::account_api(&h.state, req).await;
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn account_states_are_enforced_like_the_edge() {
    let h = Harness::new();
    let (pid, pkey) = h.parent("p@example.com", true).await;
    let (cid, ckey) = h.child(&pkey, "c@example.com").await;
    h.get("/v1/me", &ckey).await.expect(200);

    h.op(
        Method::POST,
        &format!("/admin/v1/accounts/{cid}/disable"),
        Value::Null,
    )
    .await
    .expect(200);
    h.get("/v1/me", &ckey)
        .await
        .expect_error(403, "key_disabled");
    h.op(
        Method::POST,
        &format!("/admin/v1/accounts/{cid}/enable"),
        Value::Null,
    )
    .await
    .expect(200);
    h.get("/v1/me", &ckey).await.expect(200);

    h.op(
        Method::POST,
        &format!("/admin/v1/accounts/{pid}/disable"),
        Value::Null,
    )
    .await
    .expect(200);
    let r = h.get("/v1/me", &ckey).await;
    r.expect_error(403, "parent_disabled");
    assert_eq!(
        r.body["error"]["message"],
        "This key's parent account is disabled or deleted."
    );
    h.get("/v1/me", &pkey)
        .await
        .expect_error(403, "key_disabled");
    h.op(
        Method::POST,
        &format!("/admin/v1/accounts/{pid}/enable"),
        Value::Null,
    )
    .await
    .expect(200);
    h.get("/v1/me", &ckey).await.expect(200);

    h.op(
        Method::DELETE,
        &format!("/admin/v1/accounts/{pid}"),
        Value::Null,
    )
    .await
    .expect(204);
    // Deleting a parent deletes its children: their keys are refused as their parent's, as on
    // the data plane; the parent's own key is unknown.
    h.get("/v1/me", &ckey)
        .await
        .expect_error(403, "parent_disabled");
    h.get("/v1/me", &pkey)
        .await
        .expect_error(401, "key_unknown");
}

#[tokio::test]
async fn subscriptions_for_parent_and_child() {
    let h = Harness::with_state(|s| {
        s.pool_products
            .insert("whois".into(), vec!["whois".into(), "bulk-whois".into()]);
    });
    let (pid, pkey) = h.parent("p@example.com", true).await;
    let (cid, ckey) = h.child(&pkey, "c@example.com").await;
    h.record(&cid, &pid, "whois", "whois", "2026-12-01", 10, 30)
        .await;
    h.record(&pid, &pid, "whois", "whois", "2026-12-02", 5, 5)
        .await;

    let r = h.get("/v1/subscriptions", &pkey).await;
    let b = r.expect(200);
    assert_eq!(b["account_id"], pid.as_str());
    let pools = b["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 2);
    let drs = &pools[0];
    assert_eq!(drs["pool"], "drs");
    assert_eq!(drs["products"], json!([]));
    assert_eq!(drs["included"], 50);
    assert_eq!(drs["used"], 0);
    assert_eq!(drs["overage"], "deny");
    let whois = &pools[1];
    assert_eq!(whois["products"], json!(["whois", "bulk-whois"]));
    assert_eq!(whois["included"], 1000);
    assert_eq!(whois["used"], 35);
    assert_eq!(whois["overage"], "allow");

    // The child sees the same pools, without the tenant's billing figures.
    let r = h.get("/v1/subscriptions", &ckey).await;
    let b = r.expect(200);
    let pools = b["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 2);
    assert_eq!(pools[1]["pool"], "whois");
    assert_eq!(pools[1]["overage"], "allow");
    assert!(pools[1].get("included").is_none());
    assert!(pools[1].get("used").is_none());
}

#[tokio::test]
async fn rotation_refuses_the_old_key_at_once() {
    let h = Harness::new();
    let (pid, pkey) = h.parent("p@example.com", true).await;
    let (cid, ckey) = h.child(&pkey, "c@example.com").await;
    // Use both keys once so the cache holds them.
    h.get("/v1/me", &pkey).await.expect(200);
    h.get("/v1/me", &ckey).await.expect(200);
    assert!(matches!(
        h.state.cache.lookup(&KeyHash::of(&ckey)),
        CacheLookup::Hit(_)
    ));

    for (id, old) in [(cid, ckey), (pid, pkey)] {
        let r = h.post("/v1/keys/rotate", &old, Value::Null).await;
        let new = r.expect(200)["api_key"].as_str().unwrap().to_owned();
        assert!(tollgate_core::is_well_formed_key(new.as_bytes()));
        assert_ne!(new, old);
        // The cache no longer answers for the old key, and the store does not know it.
        let old_hash = KeyHash::of(&old);
        assert!(!matches!(
            h.state.cache.lookup(&old_hash),
            CacheLookup::Hit(_)
        ));
        assert!(h.state.cache.resolve(&old_hash).await.unwrap().is_none());
        h.get("/v1/me", &old).await.expect_error(401, "key_unknown");
        h.post("/v1/keys/rotate", &old, Value::Null)
            .await
            .expect_error(401, "key_unknown");
        assert_eq!(h.get("/v1/me", &new).await.expect(200)["id"], id.as_str());
    }
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let h = Harness::new();
    let (_, key) = h.parent("p@example.com", true).await;
    h.get("/v1/nothing", &key)
        .await
        .expect_error(404, "not_found");
    h.get("/", &key).await.expect_error(404, "not_found");
    let r = h.delete("/v1/me", &key).await;
    r.expect_error(405, "method_not_allowed");
    assert_eq!(r.headers["allow"], "GET, HEAD");
    let r = h
        .call(
            Method::PUT,
            "/v1/team/members",
            Key::Header(&key),
            Bytes::new(),
        )
        .await;
    r.expect_error(405, "method_not_allowed");
    assert_eq!(r.headers["allow"], "GET, HEAD, POST");
    // Routing is judged before the key: an unknown path needs none.
    h.call(Method::GET, "/v2", Key::None, Bytes::new())
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let h = Harness::with_state(|_| {});
    let (_, key) = h.parent("p@example.com", true).await;
    let big = vec![b'x'; tollgate_api::MAX_BODY_BYTES + 1];
    h.call(
        Method::POST,
        "/v1/team/members",
        Key::Header(&key),
        big.clone(),
    )
    .await
    .expect_error(413, "payload_too_large");
    h.call(Method::POST, "/v1/keys/rotate", Key::Header(&key), big)
        .await
        .expect_error(413, "payload_too_large");
    // Exactly the limit is accepted (JSON allows the trailing blanks).
    let mut exact = br#"{"email": "a@example.com"}"#.to_vec();
    exact.resize(tollgate_api::MAX_BODY_BYTES, b' ');
    h.call(Method::POST, "/v1/team/members", Key::Header(&key), exact)
        .await
        .expect(201);
}

#[tokio::test]
async fn openapi_needs_no_key() {
    let h = Harness::new();
    let r = h
        .call(Method::GET, "/openapi.json", Key::None, Bytes::new())
        .await;
    let b = r.expect(200);
    assert_eq!(b["openapi"], "3.0.3");
    assert_eq!(r.headers["content-type"], "application/json");
}

#[tokio::test]
async fn no_key_or_token_in_any_body() {
    let h = Harness::new();
    let (_, pkey) = h.parent("p@example.com", true).await;
    let inv = h
        .post("/v1/team/members", &pkey, json!({"email": "c@example.com"}))
        .await;
    let token = inv.body["invitation_token"].as_str().unwrap().to_owned();
    // Every refusal with the key or token somewhere in the request keeps them out of the body.
    let probes = [
        h.get(&format!("/v1/usage?from={pkey}"), &pkey).await,
        h.post("/v1/team/members", &pkey, json!({"email": pkey}))
            .await,
        h.post(
            "/v1/team/members",
            &pkey,
            json!({"email": "x@example.com", pkey.as_str(): 1}),
        )
        .await,
        h.post(
            &format!("/v1/team/members/{pkey}/disable"),
            &pkey,
            Value::Null,
        )
        .await,
        h.post(&format!("/v1/invitations/{token}x/accept"), "", Value::Null)
            .await,
    ];
    for r in probes {
        assert!(r.status.is_client_error(), "{:?}", r.status);
        let text = String::from_utf8_lossy(&r.raw);
        assert!(!text.contains(&pkey) && !text.contains(&token), "{text}");
    }
}
