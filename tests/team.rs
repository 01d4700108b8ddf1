//! Team management end to end through the binary (issue 3's scenario): parents A and B; A invites
//! two members who accept; their product requests reach the upstream attributed to them under A;
//! billing is refused to a child before the upstream; disable, enable, delete, re-invite; B cannot
//! touch A's members; tokens are single use; a rotated-away key is refused.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use http::Method;
use serde_json::{json, Value};
use tollgate_testkit::http::{get, post_json, send, Reply};
use tollgate_testkit::{StubUpstream, TestGateway};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn config(upstream: &str) -> String {
    format!(
        r#"
[[routes]]
prefix = "/whoisserver/WhoisService"
upstream = "{upstream}"
product = "whois"

[[routes]]
prefix = "/billing"
upstream = "{upstream}"
permission = "billing.view"

[[routes]]
prefix = "/subscriptions/buy"
upstream = "{upstream}"
permission = "subscription.buy"

[[routes]]
prefix = "/newsletter"
upstream = "{upstream}"
permission = "newsletter.manage"
"#
    )
}

async fn parent(g: &TestGateway, email: &str) -> (String, String) {
    let subs = json!([{"pool": "whois", "credits": 1000, "overage": "allow"}]);
    g.create_parent(email, subs).await
}

async fn invite(g: &TestGateway, key: &str, email: &str) -> Reply {
    post_json(
        &format!("{}/v1/team/members", g.account),
        &[("x-api-key", key)],
        &json!({ "email": email }),
    )
    .await
    .unwrap()
}

async fn accept(g: &TestGateway, token: &str) -> Reply {
    send(
        Method::POST,
        &format!("{}/v1/invitations/{token}/accept", g.account),
        &[],
        "",
    )
    .await
    .unwrap()
}

async fn member_call(g: &TestGateway, key: &str, method: Method, path: &str) -> Reply {
    send(
        method,
        &format!("{}{path}", g.account),
        &[("x-api-key", key)],
        "",
    )
    .await
    .unwrap()
}

async fn product(g: &TestGateway, key: &str) -> u16 {
    get(
        &format!("{}/whoisserver/WhoisService?domainName=x.example", g.proxy),
        &[("x-api-key", key)],
    )
    .await
    .unwrap()
    .status
    .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_runs_its_team() {
    let up = StubUpstream::start().await;
    let g = TestGateway::start(BIN.as_ref(), &config(&up.url())).await;
    let (a_id, a_key) = parent(&g, "admin@a.example").await;
    let (_b_id, b_key) = parent(&g, "admin@b.example").await;

    // A invites two members; both accept.
    let mut children = Vec::new();
    for email in ["ann@a.example", "bob@a.example"] {
        let r = invite(&g, &a_key, email).await;
        assert_eq!(r.status, 201);
        let v = r.json();
        assert_eq!(v["status"], "invited");
        let token = v["invitation_token"].as_str().unwrap().to_owned();
        let r = accept(&g, &token).await;
        assert_eq!(r.status, 200);
        let id = r.json()["id"].as_str().unwrap().to_owned();
        let key = r.json()["api_key"].as_str().unwrap().to_owned();
        assert_eq!(id, v["id"].as_str().unwrap());
        // The token is single use.
        let again = accept(&g, &token).await;
        assert_eq!(
            (again.status.as_u16(), again.code()),
            (404, "invitation_unknown".into())
        );
        children.push((id, key));
    }
    // The same email cannot be invited twice, in any case, nor a parent's email.
    assert_eq!(invite(&g, &a_key, "ANN@a.example").await.status, 409);
    assert_eq!(invite(&g, &a_key, "admin@b.example").await.status, 409);

    // Product requests reach the upstream attributed to the child, rolled up to A.
    for (id, key) in &children {
        assert_eq!(product(&g, key).await, 200);
        let rec = up.last().unwrap();
        assert_eq!(rec.header("x-tollgate-account"), Some(id.as_str()));
        assert_eq!(rec.header("x-tollgate-parent"), Some(a_id.as_str()));
    }
    // Permission routes: refused to a child before the upstream; newsletter is allowed.
    let (c1_id, c1_key) = children[0].clone();
    let before = up.count();
    for path in ["/billing/invoices", "/subscriptions/buy"] {
        let r = get(&format!("{}{path}", g.proxy), &[("x-api-key", &c1_key)])
            .await
            .unwrap();
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (403, "permission_denied".into()),
            "{path}"
        );
    }
    assert_eq!(
        up.count(),
        before,
        "the upstream never saw the refused requests"
    );
    let r = get(
        &format!("{}/newsletter", g.proxy),
        &[("x-api-key", &c1_key)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    // Parent-only account endpoints refuse a child.
    let r = member_call(&g, &c1_key, Method::GET, "/v1/team/members").await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "permission_denied".into())
    );

    // The list shows both members with their status.
    let r = member_call(&g, &a_key, Method::GET, "/v1/team/members").await;
    let list: Value = r.json();
    let text = list.to_string();
    assert!(
        text.contains(&c1_id) && text.contains(&children[1].0),
        "{text}"
    );

    // B can neither list, disable, enable nor delete A's children.
    for (method, path) in [
        (Method::POST, format!("/v1/team/members/{c1_id}/disable")),
        (Method::POST, format!("/v1/team/members/{c1_id}/enable")),
        (Method::DELETE, format!("/v1/team/members/{c1_id}")),
        (Method::POST, format!("/v1/team/members/{a_id}/disable")),
    ] {
        let r = member_call(&g, &b_key, method.clone(), &path).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (404, "member_not_found".into()),
            "{method} {path}"
        );
    }
    let b_list = member_call(&g, &b_key, Method::GET, "/v1/team/members")
        .await
        .json()
        .to_string();
    assert!(!b_list.contains(&c1_id));
    assert_eq!(
        product(&g, &c1_key).await,
        200,
        "B's attempts changed nothing"
    );

    // Disable: refused on the very next request; enable: admitted; delete: unknown.
    let r = member_call(
        &g,
        &a_key,
        Method::POST,
        &format!("/v1/team/members/{c1_id}/disable"),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = get(
        &format!("{}/whoisserver/WhoisService", g.proxy),
        &[("x-api-key", &c1_key)],
    )
    .await
    .unwrap();
    assert_eq!((r.status.as_u16(), r.code()), (403, "key_disabled".into()));
    assert_eq!(
        member_call(
            &g,
            &a_key,
            Method::POST,
            &format!("/v1/team/members/{c1_id}/enable")
        )
        .await
        .status,
        200
    );
    assert_eq!(product(&g, &c1_key).await, 200);
    assert_eq!(
        member_call(
            &g,
            &a_key,
            Method::DELETE,
            &format!("/v1/team/members/{c1_id}")
        )
        .await
        .status,
        204
    );
    let r = get(
        &format!("{}/whoisserver/WhoisService", g.proxy),
        &[("x-api-key", &c1_key)],
    )
    .await
    .unwrap();
    assert_eq!((r.status.as_u16(), r.code()), (401, "key_unknown".into()));
    // The email is free again.
    assert_eq!(invite(&g, &a_key, "ann@a.example").await.status, 201);

    // Rotation: the new key works, the old one is refused from that moment.
    let (_, c2_key) = children[1].clone();
    let r = member_call(&g, &c2_key, Method::POST, "/v1/keys/rotate").await;
    assert_eq!(r.status, 200);
    let new_key = r.json()["api_key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, c2_key);
    assert_eq!(product(&g, &c2_key).await, 401);
    assert_eq!(product(&g, &new_key).await, 200);

    // A's own usage view includes the deleted member, marked deleted.
    let team = member_call(&g, &a_key, Method::GET, "/v1/team/usage")
        .await
        .json();
    let deleted = team["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["account_id"] == c1_id.as_str())
        .unwrap();
    assert_eq!(deleted["status"], "deleted");
}
