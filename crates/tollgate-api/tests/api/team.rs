//! Team management: invitations (single use, expiry), members' lifecycle, and tenancy (no parent
//! can touch or even detect another tenant's accounts).

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

use super::harness::{Harness, Key};

#[tokio::test]
async fn invite_accept_once_and_list() {
    let h = Harness::new();
    let (pid, pkey) = h.parent("p@example.com", true).await;
    let r = h
        .post(
            "/v1/team/members",
            &pkey,
            json!({"email": " Kid@Example.com "}),
        )
        .await;
    let b = r.expect(201).clone();
    assert_eq!(b["email"], "Kid@Example.com");
    assert_eq!(b["status"], "invited");
    let id = b["id"].as_str().unwrap().to_owned();
    let token = b["invitation_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("inv_"));
    assert_eq!(b["expires_at"], super::harness::NOW + 7 * 86_400);

    let list = h.get("/v1/team/members", &pkey).await;
    let members = list.expect(200)["members"].as_array().unwrap().clone();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["id"], id.as_str());
    assert_eq!(members[0]["status"], "invited");
    assert_eq!(members[0]["parent_id"], pid.as_str());

    let accept = format!("/v1/invitations/{token}/accept");
    let r = h.post(&accept, "", Value::Null).await;
    let key = r.expect(200)["api_key"].as_str().unwrap().to_owned();
    assert_eq!(r.body["id"], id.as_str());
    assert_eq!(h.get("/v1/me", &key).await.expect(200)["status"], "active");
    // Single use.
    h.post(&accept, "", Value::Null)
        .await
        .expect_error(404, "invitation_unknown");
    // Malformed tokens never reach the store; unknown well-formed ones are the same 404.
    h.post("/v1/invitations/nope/accept", "", Value::Null)
        .await
        .expect_error(404, "invitation_unknown");
    let ghost = format!("inv_{}", "a".repeat(40));
    h.post(&format!("/v1/invitations/{ghost}/accept"), "", Value::Null)
        .await
        .expect_error(404, "invitation_unknown");

    let list = h.get("/v1/team/members", &pkey).await;
    assert_eq!(list.body["members"][0]["status"], "active");
}

#[tokio::test]
async fn invitations_expire() {
    let h = Harness::with_state(|s| s.invitation_ttl = std::time::Duration::from_secs(3600));
    let (_, pkey) = h.parent("p@example.com", true).await;
    let a = h
        .post("/v1/team/members", &pkey, json!({"email": "a@example.com"}))
        .await;
    let b = h
        .post("/v1/team/members", &pkey, json!({"email": "b@example.com"}))
        .await;
    assert_eq!(a.body["expires_at"], super::harness::NOW + 3600);
    let ta = a.body["invitation_token"].as_str().unwrap().to_owned();
    let tb = b.body["invitation_token"].as_str().unwrap().to_owned();
    h.advance(3599);
    h.post(&format!("/v1/invitations/{ta}/accept"), "", Value::Null)
        .await
        .expect(200);
    h.advance(1);
    h.post(&format!("/v1/invitations/{tb}/accept"), "", Value::Null)
        .await
        .expect_error(404, "invitation_unknown");
}

#[tokio::test]
async fn invite_refusals() {
    let h = Harness::new();
    let (_, no_team) = h.parent("solo@example.com", false).await;
    h.post(
        "/v1/team/members",
        &no_team,
        json!({"email": "x@example.com"}),
    )
    .await
    .expect_error(403, "team_not_enabled");

    let (_, pkey) = h.parent("p@example.com", true).await;
    let (_, other) = h.parent("other@example.com", true).await;
    let (_, ckey) = h.child(&other, "taken@example.com").await;
    let post = |body: &'static [u8]| {
        h.call(
            Method::POST,
            "/v1/team/members",
            Key::Header(&pkey),
            Bytes::from_static(body),
        )
    };
    post(b"{not json")
        .await
        .expect_error(400, "invalid_request");
    post(b"").await.expect_error(400, "invalid_request");
    post(b"[]").await.expect_error(400, "invalid_request");
    post(b"{}").await.expect_error(400, "invalid_request");
    post(br#"{"email": 5}"#)
        .await
        .expect_error(400, "invalid_request");
    post(br#"{"email": "no-at-sign"}"#)
        .await
        .expect_error(400, "invalid_request");
    post(br#"{"email": "a@b.co", "role": "parent"}"#)
        .await
        .expect_error(400, "invalid_request");
    // Any account's email, in any tree, compared case-insensitively.
    post(br#"{"email": "TAKEN@example.com"}"#)
        .await
        .expect_error(409, "email_taken");
    post(br#"{"email": "other@example.com"}"#)
        .await
        .expect_error(409, "email_taken");
    post(br#"{"email": "p@example.com"}"#)
        .await
        .expect_error(409, "email_taken");
    h.post(
        "/v1/team/members",
        &pkey,
        json!({"email": "new@example.com"}),
    )
    .await
    .expect(201);
    h.post(
        "/v1/team/members",
        &pkey,
        json!({"email": "NEW@example.com"}),
    )
    .await
    .expect_error(409, "email_taken");

    // A child may not invite, whatever its body.
    h.post("/v1/team/members", &ckey, json!({"email": "y@example.com"}))
        .await
        .expect_error(403, "permission_denied");
}

#[tokio::test]
async fn children_get_permission_denied_on_parent_endpoints() {
    let h = Harness::new();
    let (_, pkey) = h.parent("p@example.com", true).await;
    let (cid, ckey) = h.child(&pkey, "c@example.com").await;
    let (sib, _) = h.child(&pkey, "s@example.com").await;
    let k = Key::Header(&ckey);
    let calls = [
        (Method::GET, "/v1/team/usage".to_owned()),
        (Method::GET, "/v1/team/members".to_owned()),
        (Method::POST, "/v1/team/members".to_owned()),
        (Method::POST, format!("/v1/team/members/{sib}/disable")),
        (Method::POST, format!("/v1/team/members/{sib}/enable")),
        (Method::DELETE, format!("/v1/team/members/{sib}")),
        (Method::DELETE, format!("/v1/team/members/{cid}")),
    ];
    for (m, uri) in calls {
        h.call(
            m.clone(),
            &uri,
            k,
            Bytes::from_static(br#"{"email":"z@example.com"}"#),
        )
        .await
        .expect_error(403, "permission_denied");
    }
    // What a child may do.
    h.get("/v1/me", &ckey).await.expect(200);
    h.get("/v1/usage", &ckey).await.expect(200);
    h.get("/v1/subscriptions", &ckey).await.expect(200);
}

#[tokio::test]
async fn disable_enable_delete_members() {
    let h = Harness::new();
    let (_, pkey) = h.parent("p@example.com", true).await;
    let (cid, ckey) = h.child(&pkey, "c@example.com").await;

    let r = h
        .post(
            &format!("/v1/team/members/{cid}/disable"),
            &pkey,
            Value::Null,
        )
        .await;
    assert_eq!(r.expect(200)["status"], "disabled");
    assert_eq!(r.body["id"], cid.as_str());
    h.get("/v1/me", &ckey)
        .await
        .expect_error(403, "key_disabled");
    // Idempotent.
    h.post(
        &format!("/v1/team/members/{cid}/disable"),
        &pkey,
        Value::Null,
    )
    .await
    .expect(200);

    let r = h
        .post(
            &format!("/v1/team/members/{cid}/enable"),
            &pkey,
            Value::Null,
        )
        .await;
    assert_eq!(r.expect(200)["status"], "active");
    h.get("/v1/me", &ckey).await.expect(200);

    let r = h.delete(&format!("/v1/team/members/{cid}"), &pkey).await;
    r.expect(204);
    assert!(r.raw.is_empty());
    h.get("/v1/me", &ckey)
        .await
        .expect_error(401, "key_unknown");
    // Deleted is final (the member is still the team's: a conflict, not an unknown member),
    // deleting again changes nothing, and the email is free again.
    for action in ["enable", "disable"] {
        let r = h
            .post(
                &format!("/v1/team/members/{cid}/{action}"),
                &pkey,
                Value::Null,
            )
            .await;
        r.expect_error(409, "conflict");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("deleted, which is permanent"),
            "{}",
            r.body
        );
    }
    let r = h.delete(&format!("/v1/team/members/{cid}"), &pkey).await;
    r.expect(204);
    assert!(r.raw.is_empty());
    h.get("/v1/me", &ckey)
        .await
        .expect_error(401, "key_unknown");
    h.post("/v1/team/members", &pkey, json!({"email": "c@example.com"}))
        .await
        .expect(201);
    let list = h.get("/v1/team/members", &pkey).await;
    let statuses: Vec<&str> = list.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["deleted", "invited"]);

    // An invited member has no key to disable: a conflict, not a silent success.
    let invited = list.body["members"][1]["id"].as_str().unwrap().to_owned();
    h.post(
        &format!("/v1/team/members/{invited}/disable"),
        &pkey,
        Value::Null,
    )
    .await
    .expect_error(409, "conflict");
    h.delete(&format!("/v1/team/members/{invited}"), &pkey)
        .await
        .expect(204);
}

#[tokio::test]
async fn tenants_cannot_see_or_touch_each_other() {
    let h = Harness::new();
    let (a_id, a_key) = h.parent("a@example.com", true).await;
    let (a_child, a_child_key) = h.child(&a_key, "a-kid@example.com").await;
    let (a_gone, _) = h.child(&a_key, "a-gone@example.com").await;
    h.delete(&format!("/v1/team/members/{a_gone}"), &a_key)
        .await
        .expect(204);
    let (b_id, b_key) = h.parent("b@example.com", true).await;
    let (b_child, _) = h.child(&b_key, "b-kid@example.com").await;

    // B's list holds only B's child.
    let list = h.get("/v1/team/members", &b_key).await;
    let ids: Vec<&str> = list.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b_child.as_str()]);

    // Every id that is not B's own child gets the very same answer.
    let mut bodies = Vec::new();
    // (Another tenant's deleted child too: a conflict would tell B it exists.)
    for id in [
        a_child.as_str(),
        a_gone.as_str(),
        a_id.as_str(),
        b_id.as_str(),
        "acc_doesnotexist0000",
        "%20",
    ] {
        for (m, uri) in [
            (Method::POST, format!("/v1/team/members/{id}/disable")),
            (Method::POST, format!("/v1/team/members/{id}/enable")),
            (Method::DELETE, format!("/v1/team/members/{id}")),
        ] {
            let r = h.call(m, &uri, Key::Header(&b_key), Bytes::new()).await;
            r.expect_error(404, "member_not_found");
            bodies.push(r.raw);
        }
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));

    // A's child is untouched.
    h.get("/v1/me", &a_child_key).await.expect(200);
    // B's team usage holds only B's tree.
    let u = h.get("/v1/team/usage", &b_key).await;
    let ids: Vec<&str> = u.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["account_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b_id.as_str(), b_child.as_str()]);
}

#[tokio::test]
async fn emails_are_case_insensitive_beyond_ascii() {
    let h = Harness::new();
    let (_, pkey) = h.parent("p@example.com", true).await;
    h.post(
        "/v1/team/members",
        &pkey,
        json!({"email": "ÜNÏ@exämple.com"}),
    )
    .await
    .expect(201);
    h.post(
        "/v1/team/members",
        &pkey,
        json!({"email": "ünï@EXÄMPLE.com"}),
    )
    .await
    .expect_error(409, "email_taken");
    // The operator's parents share the one index.
    h.op(
        Method::POST,
        "/admin/v1/parents",
        json!({"email": "ünï@exämple.COM"}),
    )
    .await
    .expect_error(409, "email_taken");
    h.op(
        Method::POST,
        "/admin/v1/parents",
        json!({"email": "ŒUVRE@Exämple.com"}),
    )
    .await
    .expect(201);
    h.post(
        "/v1/team/members",
        &pkey,
        json!({"email": "œuvre@exÄmple.com"}),
    )
    .await
    .expect_error(409, "email_taken");
    // Different letters stay different addresses.
    h.post(
        "/v1/team/members",
        &pkey,
        json!({"email": "uni@example.com"}),
    )
    .await
    .expect(201);
}

/// The invitation token and member id of a 201 invitation.
fn invited(r: &super::harness::Resp) -> (String, String) {
    let b = r.expect(201);
    assert_eq!(b["status"], "invited");
    (
        b["id"].as_str().unwrap().to_owned(),
        b["invitation_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn an_expired_invitation_is_reissued_to_the_same_member() {
    let h = Harness::with_state(|s| s.invitation_ttl = std::time::Duration::from_secs(3));
    let (_, pkey) = h.parent("p@example.com", true).await;
    let invite = |email: &'static str| h.post("/v1/team/members", &pkey, json!({"email": email}));
    let (id, old) = invited(&invite("x@example.com").await);
    // Still valid: the email is held, as any account's.
    h.advance(2);
    invite("x@example.com")
        .await
        .expect_error(409, "email_taken");
    h.advance(1);
    h.post(&format!("/v1/invitations/{old}/accept"), "", Value::Null)
        .await
        .expect_error(404, "invitation_unknown");

    let r = invite("X@Example.com").await;
    let (again, token) = invited(&r);
    assert_eq!(again, id, "the same member");
    assert_ne!(token, old);
    assert_eq!(r.body["expires_at"], super::harness::NOW + 3 + 3);
    assert_eq!(r.body["email"], "x@example.com");
    let list = h.get("/v1/team/members", &pkey).await;
    let members = list.expect(200)["members"].as_array().unwrap().clone();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(
        (&members[0]["id"], &members[0]["status"]),
        (&json!(id), &json!("invited"))
    );

    h.post(&format!("/v1/invitations/{old}/accept"), "", Value::Null)
        .await
        .expect_error(404, "invitation_unknown");
    let r = h
        .post(&format!("/v1/invitations/{token}/accept"), "", Value::Null)
        .await;
    assert_eq!(r.expect(200)["id"], id.as_str());
    let key = r.body["api_key"].as_str().unwrap().to_owned();
    assert_eq!(h.get("/v1/me", &key).await.expect(200)["status"], "active");
    // Accepted: the email is the member's for good.
    h.advance(10);
    invite("x@example.com")
        .await
        .expect_error(409, "email_taken");
}

#[tokio::test]
async fn an_expired_invitation_of_another_tenant_frees_the_email() {
    let h = Harness::with_state(|s| s.invitation_ttl = std::time::Duration::from_secs(3600));
    let (_, a_key) = h.parent("a@example.com", true).await;
    let (_, b_key) = h.parent("b@example.com", true).await;
    let (a_member, a_token) = invited(
        &h.post(
            "/v1/team/members",
            &a_key,
            json!({"email": "x@example.com"}),
        )
        .await,
    );
    let (_, y_token) = invited(
        &h.post(
            "/v1/team/members",
            &a_key,
            json!({"email": "y@example.com"}),
        )
        .await,
    );
    // Valid invitations hold their emails against other tenants and the operator.
    h.advance(3599);
    h.post(
        "/v1/team/members",
        &b_key,
        json!({"email": "X@example.com"}),
    )
    .await
    .expect_error(409, "email_taken");
    h.op(
        Method::POST,
        "/admin/v1/parents",
        json!({"email": "y@example.com"}),
    )
    .await
    .expect_error(409, "email_taken");

    h.advance(1);
    let (b_member, b_token) = invited(
        &h.post(
            "/v1/team/members",
            &b_key,
            json!({"email": "X@example.com"}),
        )
        .await,
    );
    assert_ne!(b_member, a_member);
    h.op(
        Method::POST,
        "/admin/v1/parents",
        json!({"email": "y@example.com"}),
    )
    .await
    .expect(201);

    // A's stale members are deleted: listed as such, in team usage with nothing used.
    let list = h.get("/v1/team/members", &a_key).await;
    let statuses: Vec<(&str, &str)> = list.expect(200)["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["email"].as_str().unwrap(), m["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [("x@example.com", "deleted"), ("y@example.com", "deleted")]
    );
    let usage = h.get("/v1/team/usage", &a_key).await;
    let members = usage.expect(200)["members"].as_array().unwrap().clone();
    let stale = members
        .iter()
        .find(|m| m["account_id"] == a_member.as_str())
        .unwrap();
    assert_eq!(stale["status"], "deleted");
    assert_eq!(stale["total"], json!({"requests": 0, "credits": 0}));
    for token in [&a_token, &y_token] {
        h.post(&format!("/v1/invitations/{token}/accept"), "", Value::Null)
            .await
            .expect_error(404, "invitation_unknown");
    }
    // The email is B's member's now.
    h.post(
        "/v1/team/members",
        &a_key,
        json!({"email": "x@example.com"}),
    )
    .await
    .expect_error(409, "email_taken");
    let r = h
        .post(
            &format!("/v1/invitations/{b_token}/accept"),
            "",
            Value::Null,
        )
        .await;
    assert_eq!(r.expect(200)["id"], b_member.as_str());
}
