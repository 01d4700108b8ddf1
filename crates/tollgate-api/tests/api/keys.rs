//! The account API takes the caller's key from `[keys] sources`, in their order, as the data
//! plane does (less `json:`), and its `key_missing` names the sources in force.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use serde_json::Value;
use tollgate_api::{account_api, KeySources};
use tollgate_config::KeySource;

use super::harness::Harness;

/// An account-API call with these headers (the key, if any, goes where the test puts it).
async fn call(
    h: &Harness,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, Value) {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let res = account_api(&h.state, b.body(Bytes::from(body.to_owned())).unwrap()).await;
    let status = res.status();
    let body = serde_json::from_slice(res.body()).unwrap_or(Value::Null);
    (status, body)
}

async fn me(h: &Harness, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    call(h, Method::GET, uri, headers, "").await
}

fn custom() -> Vec<KeySource> {
    vec![
        KeySource::Header("x-authentication-token".into()),
        KeySource::Query("token".into()),
        KeySource::Json("apiKey".into()),
    ]
}

#[tokio::test]
async fn configured_sources_in_their_order_and_no_others() {
    let h = Harness::with_state(|s| s.key_sources = Arc::new(KeySources::new(&custom())));
    let (id, key) = h.parent("p@example.com", true).await;

    let (status, body) = me(&h, "/v1/me", &[("x-authentication-token", &key)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], id.as_str());
    let (status, body) = me(&h, &format!("/v1/me?token={key}"), &[]).await;
    assert_eq!(status, 200, "{body}");
    // The configured order: the header comes first, even with a wrong key in it.
    let (status, body) = me(
        &h,
        &format!("/v1/me?token={key}"),
        &[("x-authentication-token", "at_0000000000000000000000000000z")],
    )
    .await;
    assert_eq!(
        (status.as_u16(), &body["error"]["code"]),
        (401, &"key_unknown".into())
    );

    // Sources that are not configured are not looked at; json: is never read here.
    let bearer = format!("Bearer {key}");
    for (uri, headers) in [
        ("/v1/me".to_owned(), vec![("x-api-key", key.as_str())]),
        (
            "/v1/me".to_owned(),
            vec![("authorization", bearer.as_str())],
        ),
        (format!("/v1/me?apiKey={key}"), vec![]),
    ] {
        let (status, body) = me(&h, &uri, &headers).await;
        assert_eq!(
            (status.as_u16(), &body["error"]["code"]),
            (401, &"key_missing".into()),
            "{uri} {headers:?}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert_eq!(
            message,
            "No API key was given: send it in the x-authentication-token header, or the token query parameter."
        );
        assert!(!message.contains(&key));
    }
    let (status, body) = call(
        &h,
        Method::POST,
        "/v1/keys/rotate",
        &[("content-type", "application/json")],
        &format!(r#"{{"apiKey":"{key}"}}"#),
    )
    .await;
    assert_eq!(
        (status.as_u16(), &body["error"]["code"]),
        (401, &"key_missing".into())
    );

    // A reload puts new sources in force for the next request.
    h.state
        .key_sources
        .set(&[KeySource::Header("x-api-key".into())]);
    let (status, _) = me(&h, "/v1/me", &[("x-api-key", &key)]).await;
    assert_eq!(status, 200);
    let (status, _) = me(&h, "/v1/me", &[("x-authentication-token", &key)]).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_default_sources_are_the_configs_defaults() {
    let h = Harness::new();
    let (_, key) = h.parent("p@example.com", true).await;
    let bearer = format!("bearer {key}");
    for (uri, headers) in [
        ("/v1/me".to_owned(), vec![("x-api-key", key.as_str())]),
        (
            "/v1/me".to_owned(),
            vec![("authorization", bearer.as_str())],
        ),
        (
            "/v1/me".to_owned(),
            vec![("x-authentication-token", key.as_str())],
        ),
        (format!("/v1/me?apiKey={key}"), vec![]),
    ] {
        let (status, body) = me(&h, &uri, &headers).await;
        assert_eq!(status, 200, "{uri} {headers:?}: {body}");
    }
    let (status, body) = me(&h, "/v1/me?token=x", &[("x-token", &key)]).await;
    assert_eq!(
        (status.as_u16(), &body["error"]["code"]),
        (401, &"key_missing".into())
    );
    assert_eq!(
        body["error"]["message"],
        "No API key was given: send it in the x-api-key header, an Authorization: Bearer header, \
         the x-authentication-token header, or the apiKey query parameter."
    );
}

/// `/openapi.json` changes on a reload of `[keys] sources`: clients revalidate it every time
/// (`no-cache`) against its ETag, and a reload that changes it changes the tag.
#[tokio::test]
async fn openapi_is_revalidated_by_etag_across_reloads() {
    let h = Harness::new();
    let get = |inm: Option<&str>| {
        let mut b = Request::builder().method(Method::GET).uri("/openapi.json");
        if let Some(v) = inm {
            b = b.header("if-none-match", v);
        }
        account_api(&h.state, b.body(Bytes::new()).unwrap())
    };
    let first = get(None).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["cache-control"], "no-cache");
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() == 34,
        "{etag}"
    );

    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".to_owned(),
    ] {
        let r = get(Some(&inm)).await;
        assert_eq!(r.status(), 304, "{inm}");
        assert!(r.body().is_empty());
        assert_eq!(r.headers()["etag"], etag.as_str());
        assert_eq!(r.headers()["cache-control"], "no-cache");
    }
    assert_eq!(get(Some("\"other\"")).await.status(), 200);

    // The same sources again: the same document, the same tag.
    h.state
        .key_sources
        .set(&tollgate_config::KeysConfig::default().sources);
    assert_eq!(get(Some(&etag)).await.status(), 304);
    // Other sources: another document, so the old tag no longer matches.
    h.state.key_sources.set(&custom());
    let after = get(Some(&etag)).await;
    assert_eq!(after.status(), 200);
    assert_ne!(after.headers()["etag"], etag.as_str());
    let doc: Value = serde_json::from_slice(after.body()).unwrap();
    assert!(
        doc["components"]["securitySchemes"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.contains("token")),
        "{doc}"
    );
}
