//! The ops listener: the operator API (bearer token, compared in constant time) and the open
//! endpoints every orchestrator and scraper expects: `/metrics`, `/healthz`, `/readyz`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tollgate_core::{
    generate_id, generate_key, is_valid_email, Account, KeyHash, LimitOverride, LimitOverrides,
    Overage, Role, Status, Subscription,
};
use tollgate_store::{Change, NewParent, StoreError};

use crate::account::member_json;
use crate::respond::{error, finish, json, json_object, no_content, raw, Fields, MAX_BODY_BYTES};
use crate::router::{route, Matched, OpsHandler, OPS_ROUTES};
use crate::{ApiError, ApiState};

/// The Prometheus text exposition format's content type.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A readiness probe must answer even when the store hangs.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one request on the ops listener.
pub async fn ops_api(state: &ApiState, req: Request<Bytes>) -> Response<Bytes> {
    if req.body().len() > MAX_BODY_BYTES {
        return error(&ApiError::PayloadTooLarge);
    }
    let matched = match route(OPS_ROUTES, req.method(), req.uri().path()) {
        Ok(m) => m,
        // Without the token, nothing under /admin/ says what exists there.
        Err(_) if req.uri().path().starts_with("/admin/") && !authorized(state, &req) => {
            refused_token(&req);
            return error(&ApiError::Unauthorized);
        }
        Err(e) => return error(&e),
    };
    let res = finish(dispatch(state, &matched, &req).await);
    tracing::debug!(
        route = matched.template,
        status = res.status().as_u16(),
        "ops api"
    );
    res
}

async fn dispatch(
    state: &ApiState,
    m: &Matched<OpsHandler>,
    req: &Request<Bytes>,
) -> Result<Response<Bytes>, ApiError> {
    match m.handler {
        OpsHandler::Metrics => {
            let text = state.metrics.render();
            return Ok(raw(StatusCode::OK, METRICS_CONTENT_TYPE, Bytes::from(text)));
        }
        OpsHandler::Healthz => return Ok(json(StatusCode::OK, &json!({"status": "ok"}))),
        OpsHandler::Readyz => return Ok(readyz(state).await),
        _ => {}
    }
    if !authorized(state, req) {
        refused_token(req);
        return Err(ApiError::Unauthorized);
    }
    let id = m.params.get("id").unwrap_or_default();
    match m.handler {
        OpsHandler::CreateParent => create_parent(state, req.body()).await,
        OpsHandler::UpdateParent => update_parent(state, id, req.body()).await,
        OpsHandler::PutSubscription => {
            put_subscription(
                state,
                id,
                m.params.get("pool").unwrap_or_default(),
                req.body(),
            )
            .await
        }
        OpsHandler::GetAccount => get_account(state, id).await,
        OpsHandler::DisableAccount => set_status(state, id, Status::Disabled).await,
        OpsHandler::EnableAccount => set_status(state, id, Status::Active).await,
        OpsHandler::DeleteAccount => set_status(state, id, Status::Deleted).await,
        // Answered above, before any credential is looked at.
        OpsHandler::Metrics | OpsHandler::Healthz | OpsHandler::Readyz => Err(ApiError::Internal),
    }
}

/// Logs a request refused for a missing or wrong operator token: a warning at most every 10 s,
/// with how many were refused since the last one, so guessing the token shows at the default
/// log level without one line per guess.
fn refused_token(req: &Request<Bytes>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static REFUSED: AtomicU64 = AtomicU64::new(0);
    static LAST_WARN_S: AtomicU64 = AtomicU64::new(0);
    let refused = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_WARN_S.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST_WARN_S
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        REFUSED.store(0, Ordering::Relaxed);
        tracing::warn!(
            method = %req.method(),
            path = req.uri().path(),
            refused,
            "operator API: missing or wrong operator token (refused since the last such line)"
        );
    }
}

/// `Authorization: Bearer <token>` against the configured token. Both sides are hashed first so
/// the comparison takes the same time whatever the lengths; no token configured refuses all.
fn authorized(state: &ApiState, req: &Request<Bytes>) -> bool {
    let Some(expected) = state.operator_token.as_deref().filter(|t| !t.is_empty()) else {
        return false;
    };
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        return false;
    };
    // An empty token is no credential (the configured one is never empty).
    let Some(token) = tollgate_core::bearer_token(value.as_bytes().trim_ascii()) else {
        return false;
    };
    let presented = KeyHash::of(token);
    presented
        .0
        .ct_eq(&KeyHash::of(expected.as_bytes()).0)
        .into()
}

async fn readyz(state: &ApiState) -> Response<Bytes> {
    if state.draining.load(Ordering::Acquire) {
        // No store ping: whatever it says, this process takes no new traffic.
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "unavailable", "reason": "draining: the process is shutting down"}),
        );
    }
    let store_up = matches!(
        tokio::time::timeout(PING_TIMEOUT, state.store.ping()).await,
        Ok(Ok(()))
    );
    state.metrics.store_up.set(i64::from(store_up));
    let routes = state.routes_loaded.load(Ordering::Acquire);
    let reason = match (store_up, routes) {
        (true, true) => return json(StatusCode::OK, &json!({"status": "ok"})),
        (false, _) => "the store cannot be reached",
        (true, false) => "the routes are not loaded yet",
    };
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"status": "unavailable", "reason": reason}),
    )
}

fn not_found(e: StoreError) -> ApiError {
    ApiError::from_store(e, ApiError::AccountNotFound)
}

/// An account as the operator sees it: everything but the key (which is never stored). `team`
/// and `limits` are a tenant's settings, kept on its parent: a child's record has neither (its
/// stored defaults would read as "team off, no overrides", whatever its parent has).
fn account_json(a: &Account) -> Value {
    // `null` for a role or a field: the configured `[limits]` default applies.
    let limit = |l: Option<LimitOverride>| l.map(|l| json!({"rps": l.rps, "burst": l.burst}));
    let mut v = json!({
        "id": a.id,
        "role": a.role.as_str(),
        "status": a.status.as_str(),
        "email": a.email,
        "parent_id": a.parent_id,
        "created_at": a.created_at,
    });
    if a.role == Role::Parent {
        v["team"] = json!(a.team);
        v["limits"] = json!({"parent": limit(a.limits.parent), "child": limit(a.limits.child)});
    }
    v
}

fn subscription_json(s: &Subscription) -> Value {
    json!({"pool": s.pool, "credits": s.credits, "overage": s.overage.as_str()})
}

/// Pool names are config identifiers (`whois`, `drs`, `reverse-whois`).
fn valid_pool(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 64
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Most credits a subscription may include: 2^53 - 1, the largest whole number every store
/// computes with exactly (the Redis store's scripts count in doubles).
const MAX_CREDITS: u64 = (1 << 53) - 1;

/// `{"credits", "overage"}` (and `pool` inside a create call). `overage` defaults to `deny`: no
/// tenant runs up a bill nobody chose.
fn parse_subscription(f: &Fields<'_>, pool: &str) -> Result<Subscription, ApiError> {
    if !valid_pool(pool) {
        return Err(ApiError::invalid(
            "a pool name is 1 to 64 of letters, digits, `-`, `_` and `.`",
        ));
    }
    let credits = f.u64("credits")?;
    if credits > MAX_CREDITS {
        return Err(ApiError::invalid(format!(
            "`credits` must be at most {MAX_CREDITS}"
        )));
    }
    let overage = match f.opt_str("overage")? {
        None | Some("deny") => Overage::Deny,
        Some("allow") => Overage::Allow,
        Some(_) => return Err(ApiError::invalid("`overage` must be \"allow\" or \"deny\"")),
    };
    Ok(Subscription {
        pool: pool.to_owned(),
        credits,
        overage,
    })
}

async fn create_parent(state: &ApiState, body: &Bytes) -> Result<Response<Bytes>, ApiError> {
    let map = json_object(body, false)?;
    let f = Fields::new(&map);
    f.only(&["email", "team", "subscriptions"])?;
    let email = f.str("email")?.trim();
    if !is_valid_email(email) {
        return Err(ApiError::invalid("`email` is not a valid email address"));
    }
    let team = f.opt_bool("team")?.unwrap_or(false);
    let mut subscriptions: Vec<Subscription> = Vec::new();
    for (i, item) in f
        .opt_array("subscriptions")?
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Value::Object(m) = item else {
            return Err(ApiError::invalid(format!(
                "`subscriptions[{i}]` must be an object"
            )));
        };
        let sf = Fields::nested(m, &format!("subscriptions[{i}]"));
        sf.only(&["pool", "credits", "overage"])?;
        let sub = parse_subscription(&sf, sf.str("pool")?)?;
        if subscriptions.iter().any(|s| s.pool == sub.pool) {
            return Err(ApiError::invalid(format!(
                "`subscriptions[{i}]`: pool `{}` appears twice",
                sub.pool
            )));
        }
        subscriptions.push(sub);
    }
    let (id, key) = {
        let mut rng = rand::rng();
        (generate_id(&mut rng, "acc_"), generate_key(&mut rng))
    };
    let account = Account {
        id,
        role: Role::Parent,
        status: Status::Active,
        email: email.to_owned(),
        parent_id: None,
        team,
        limits: LimitOverrides::default(),
        created_at: state.now(),
    };
    let key_hash = key.hash();
    let created = state
        .store
        .create_parent(NewParent {
            account,
            key_hash,
            subscriptions,
        })
        .await
        .map_err(not_found)?;
    state
        .apply_changes(&[
            Change::KeyAdded(key_hash),
            Change::Account(created.id.clone()),
        ])
        .await;
    tracing::info!(parent = %created.id, key = %key_hash.short(), "parent created");
    Ok(json(
        StatusCode::CREATED,
        &json!({"id": created.id, "api_key": key.expose()}),
    ))
}

/// A live parent; `conflict` for a deleted one (which `GET` still shows), else
/// `account_not_found`.
async fn live_parent(state: &ApiState, id: &str) -> Result<Account, ApiError> {
    match state.store.account(id).await.map_err(not_found)? {
        Some(a) if a.role == Role::Parent && a.status == Status::Deleted => {
            Err(ApiError::Conflict(format!(
                "account `{id}` is deleted, which is permanent: its team, limits and \
                 subscriptions can no longer change"
            )))
        }
        Some(a) if a.role == Role::Parent => Ok(a),
        _ => Err(ApiError::AccountNotFound),
    }
}

/// One role's override, `limits.<field>`: `null` removes it (the role follows `[limits]`); an
/// object changes the fields it names, each a whole number from 1 up, or `null` to follow that
/// field's default again; a field it leaves out keeps the current override's value (or, if there
/// is none, goes on following the default). `Ok(None)` when nothing is overridden afterwards.
fn parse_limit(
    f: &Fields<'_>,
    field: &str,
    current: Option<LimitOverride>,
) -> Result<Option<LimitOverride>, ApiError> {
    let Some(m) = f.opt_object(field)? else {
        return Ok(None);
    };
    let lf = Fields::nested(m, &format!("limits.{field}"));
    lf.only(&["rps", "burst"])?;
    let read = |name: &str, now: Option<u32>| -> Result<Option<u32>, ApiError> {
        match m.get(name) {
            None => Ok(now),
            Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64().map(u32::try_from) {
                Some(Ok(n)) if n >= 1 => Ok(Some(n)),
                _ => Err(ApiError::invalid(format!(
                    "`limits.{field}.{name}` must be a whole number from 1 to {} (or null for the configured default)",
                    u32::MAX
                ))),
            },
        }
    };
    let current = current.unwrap_or_default();
    let merged = LimitOverride {
        rps: read("rps", current.rps)?,
        burst: read("burst", current.burst)?,
    };
    Ok((!merged.is_empty()).then_some(merged))
}

async fn update_parent(
    state: &ApiState,
    id: &str,
    body: &Bytes,
) -> Result<Response<Bytes>, ApiError> {
    let current = live_parent(state, id).await?;
    let map = json_object(body, true)?;
    let f = Fields::new(&map);
    f.only(&["team", "limits"])?;
    let team = f.opt_bool("team")?;
    // Each limit is optional: absent keeps the override, `null` removes it, an object sets it.
    let limits = match f.opt_object("limits")? {
        None => None,
        Some(m) => {
            let lf = Fields::nested(m, "limits");
            lf.only(&["parent", "child"])?;
            let mut merged = current.limits;
            if lf.has("parent") {
                merged.parent = parse_limit(&lf, "parent", merged.parent)?;
            }
            if lf.has("child") {
                merged.child = parse_limit(&lf, "child", merged.child)?;
            }
            Some(merged)
        }
    };
    let updated = if team.is_none() && limits.is_none() {
        current
    } else {
        let a = state
            .store
            .update_parent(id, team, limits)
            .await
            .map_err(not_found)?;
        state.apply_changes(&[Change::Account(a.id.clone())]).await;
        tracing::info!(parent = %a.id, team = a.team, "parent updated");
        a
    };
    Ok(json(StatusCode::OK, &account_json(&updated)))
}

async fn put_subscription(
    state: &ApiState,
    id: &str,
    pool: &str,
    body: &Bytes,
) -> Result<Response<Bytes>, ApiError> {
    live_parent(state, id).await?;
    let map = json_object(body, false)?;
    let f = Fields::new(&map);
    f.only(&["credits", "overage"])?;
    let sub = parse_subscription(&f, pool)?;
    state
        .store
        .put_subscription(id, sub.clone())
        .await
        .map_err(not_found)?;
    state
        .apply_changes(&[Change::Subscriptions(id.to_owned())])
        .await;
    tracing::info!(parent = %id, pool = %sub.pool, credits = sub.credits, "subscription set");
    let mut v = subscription_json(&sub);
    v["parent_id"] = json!(id);
    Ok(json(StatusCode::OK, &v))
}

async fn get_account(state: &ApiState, id: &str) -> Result<Response<Bytes>, ApiError> {
    let account = state
        .store
        .account(id)
        .await
        .map_err(not_found)?
        .ok_or(ApiError::AccountNotFound)?;
    let mut v = account_json(&account);
    if account.role == Role::Parent {
        let subs = state.store.subscriptions(id).await.map_err(not_found)?;
        let children = state.store.children(id).await.map_err(not_found)?;
        v["subscriptions"] = Value::Array(subs.iter().map(subscription_json).collect());
        v["children"] = Value::Array(children.iter().map(member_json).collect());
    }
    Ok(json(StatusCode::OK, &v))
}

async fn set_status(
    state: &ApiState,
    id: &str,
    status: Status,
) -> Result<Response<Bytes>, ApiError> {
    let updated = state
        .store
        .set_status(id, status)
        .await
        .map_err(not_found)?;
    let mut changes = vec![Change::Account(updated.id.clone())];
    if status == Status::Deleted && updated.role == Role::Parent {
        // Its children were deleted with it: this node's cache learns it before the answer (or,
        // if they cannot be listed now, from the change feed).
        match state.store.children(id).await {
            Ok(children) => changes.extend(children.into_iter().map(|c| Change::Account(c.id))),
            Err(e) => {
                tracing::warn!(error = %e, parent = %id, "could not list a deleted parent's children")
            }
        }
    }
    state.apply_changes(&changes).await;
    tracing::info!(account = %updated.id, status = status.as_str(), "account status set by operator");
    if status == Status::Deleted {
        Ok(no_content())
    } else {
        Ok(json(StatusCode::OK, &account_json(&updated)))
    }
}
