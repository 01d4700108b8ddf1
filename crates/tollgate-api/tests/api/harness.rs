//! A real store in a temp dir, the cache and metrics around it, a clock the test moves, and
//! helpers that call the handler functions and decode their JSON.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use tollgate_api::{account_api, ops_api, ApiState};
use tollgate_core::{Day, UsageRow};
use tollgate_meter::Metrics;
use tollgate_store::{CacheConfig, EmbeddedStore, KeyCache, Store, UsageBatch, UsageDelta};

pub const OP_TOKEN: &str = "operator-secret-token";

/// 2026-12-04T12:00:00Z.
pub const NOW: u64 = 1_796_385_600;

pub struct Harness {
    pub state: Arc<ApiState>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<AtomicU64>,
    batch: AtomicU64,
    _dir: TempDir,
}

/// A decoded response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Bytes,
}

impl Resp {
    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// Asserts status and error code together, with the body in the message.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status.as_u16(), self.code()),
            (status, code),
            "body: {}",
            self.body
        );
        assert_eq!(self.headers["content-type"], "application/json");
        // RFC 9110: a 401 names the credential it wants.
        assert_eq!(
            self.headers.get("www-authenticate").is_some(),
            status == 401,
            "www-authenticate on a {status}"
        );
        assert!(self.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }

    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        &self.body
    }
}

/// How a request carries its key.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    None,
    Header(&'a str),
    Bearer(&'a str),
    Query(&'a str),
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with_state(|_| {})
    }

    pub fn with_state(tweak: impl FnOnce(&mut ApiState)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("t.db")).unwrap());
        let cache = Arc::new(KeyCache::new(
            store.clone(),
            CacheConfig {
                max_staleness: Duration::from_secs(3600),
                negative_ttl: Duration::from_secs(30),
                serve_stale_when_down: false,
            },
        ));
        let clock = Arc::new(AtomicU64::new(NOW));
        let c = clock.clone();
        let mut state = ApiState::new(store.clone(), cache, Metrics::new());
        state.operator_token = Some(OP_TOKEN.to_owned());
        state.clock = Arc::new(move || c.load(Ordering::SeqCst));
        state.routes_loaded = Arc::new(AtomicBool::new(true));
        tweak(&mut state);
        Harness {
            state: Arc::new(state),
            store,
            clock,
            batch: AtomicU64::new(0),
            _dir: dir,
        }
    }

    pub fn advance(&self, secs: u64) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
    }

    fn request(method: Method, uri: &str, body: impl Into<Bytes>) -> Request<Bytes> {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(body.into())
            .unwrap()
    }

    async fn decode(res: http::Response<Bytes>) -> Resp {
        let (parts, raw) = res.into_parts();
        let body = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw).unwrap_or(Value::Null)
        };
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
            raw,
        }
    }

    /// An account-API call with the key carried as `key` says.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        key: Key<'_>,
        body: impl Into<Bytes>,
    ) -> Resp {
        let uri = match key {
            Key::Query(k) => format!(
                "{uri}{}apiKey={k}",
                if uri.contains('?') { '&' } else { '?' }
            ),
            _ => uri.to_owned(),
        };
        let mut req = Harness::request(method, &uri, body);
        match key {
            Key::Header(k) => {
                req.headers_mut().insert("x-api-key", k.parse().unwrap());
            }
            Key::Bearer(k) => {
                req.headers_mut()
                    .insert("authorization", format!("Bearer {k}").parse().unwrap());
            }
            Key::None | Key::Query(_) => {}
        }
        Harness::decode(account_api(&self.state, req).await).await
    }

    pub async fn get(&self, uri: &str, key: &str) -> Resp {
        self.call(Method::GET, uri, Key::Header(key), Bytes::new())
            .await
    }

    pub async fn post(&self, uri: &str, key: &str, body: Value) -> Resp {
        let body = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body).unwrap()
        };
        let key = if key.is_empty() {
            Key::None
        } else {
            Key::Header(key)
        };
        self.call(Method::POST, uri, key, body).await
    }

    pub async fn delete(&self, uri: &str, key: &str) -> Resp {
        self.call(Method::DELETE, uri, Key::Header(key), Bytes::new())
            .await
    }

    /// An ops-listener call with an optional bearer token.
    pub async fn ops(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Resp {
        let mut req = Harness::request(method, uri, body);
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Harness::decode(ops_api(&self.state, req).await).await
    }

    pub async fn op(&self, method: Method, uri: &str, body: Value) -> Resp {
        let body = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body).unwrap()
        };
        self.ops(method, uri, Some(OP_TOKEN), body).await
    }

    /// A parent with a 1000-credit `whois` pool (overage allowed) and a 50-credit `drs` pool
    /// (denied). Returns (id, key).
    pub async fn parent(&self, email: &str, team: bool) -> (String, String) {
        let r = self
            .op(
                Method::POST,
                "/admin/v1/parents",
                json!({"email": email, "team": team, "subscriptions": [
                    {"pool": "whois", "credits": 1000, "overage": "allow"},
                    {"pool": "drs", "credits": 50, "overage": "deny"}
                ]}),
            )
            .await;
        let b = r.expect(201);
        (
            b["id"].as_str().unwrap().to_owned(),
            b["api_key"].as_str().unwrap().to_owned(),
        )
    }

    /// Invites and accepts a child. Returns (id, key).
    pub async fn child(&self, parent_key: &str, email: &str) -> (String, String) {
        let inv = self
            .post("/v1/team/members", parent_key, json!({"email": email}))
            .await;
        let token = inv.expect(201)["invitation_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let acc = self
            .post(&format!("/v1/invitations/{token}/accept"), "", Value::Null)
            .await;
        let b = acc.expect(200);
        (
            b["id"].as_str().unwrap().to_owned(),
            b["api_key"].as_str().unwrap().to_owned(),
        )
    }

    /// Writes one usage cell (and its roll-up) as the meter would.
    #[allow(clippy::too_many_arguments)]
    pub async fn record(
        &self,
        account: &str,
        parent: &str,
        product: &str,
        pool: &str,
        day: &str,
        requests: u64,
        credits: u64,
    ) {
        let n = self.batch.fetch_add(1, Ordering::SeqCst);
        let batch = UsageBatch {
            writer: format!("test-{n}"),
            seq: 0,
            deltas: vec![UsageDelta {
                account_id: account.into(),
                parent_id: parent.into(),
                product: product.into(),
                pool: pool.into(),
                day: day.parse::<Day>().unwrap(),
                requests,
                credits,
            }],
        };
        self.store.record_usage(&batch).await.unwrap();
    }

    #[allow(dead_code)]
    pub async fn rows(&self, ids: &[String]) -> Vec<UsageRow> {
        self.store.usage(ids, Day(0), Day(100_000)).await.unwrap()
    }
}
