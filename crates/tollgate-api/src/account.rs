//! The account API: parents and children, authenticated by their own key, read their account,
//! subscriptions and usage, rotate their key, and (parents) manage their team.
//!
//! Callers are admitted from the same `KeyCache` as the data plane, with the same rules
//! (`core::admit`), so a key refused at the edge is refused here with the same code. Every write
//! applies the changes it caused to that cache before it answers.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tollgate_core::{
    admit, generate_id, generate_key, generate_token, is_valid_email, is_well_formed_key, Access,
    Account, Decision, DenyReason, KeyHash, LimitOverrides, Permission, Role, Status, UsageScope,
};
use tollgate_store::cache::AccountState;
use tollgate_store::{CacheLookup, Change, NewInvitation, Principal};

use crate::respond::{error, finish, json, json_object, no_content, Fields, MAX_BODY_BYTES};
use crate::router::{route, AccountHandler, Matched, ACCOUNT_ROUTES};
use crate::usage::{parse_range, team_body, usage_body};
use crate::{openapi, ApiError, ApiState};

/// Serves one account-API request.
pub async fn account_api(state: &ApiState, req: Request<Bytes>) -> Response<Bytes> {
    if req.body().len() > MAX_BODY_BYTES {
        return error(&ApiError::PayloadTooLarge);
    }
    let matched = match route(ACCOUNT_ROUTES, req.method(), req.uri().path()) {
        Ok(m) => m,
        Err(e) => return error(&e),
    };
    let res = finish(dispatch(state, &matched, &req).await);
    // The template, not the path: a path can carry an invitation token.
    tracing::debug!(
        route = matched.template,
        status = res.status().as_u16(),
        "account api"
    );
    res
}

async fn dispatch(
    state: &ApiState,
    m: &Matched<AccountHandler>,
    req: &Request<Bytes>,
) -> Result<Response<Bytes>, ApiError> {
    // The two endpoints anyone may call, before any key is looked at.
    match m.handler {
        AccountHandler::OpenApi => {
            let (body, etag) = state.key_sources.openapi();
            let seen = req.headers().get(http::header::IF_NONE_MATCH);
            return Ok(openapi::response(body, etag, seen));
        }
        AccountHandler::AcceptInvitation => {
            return accept_invitation(state, m.params.get("token").unwrap_or_default()).await
        }
        _ => {}
    }
    let caller = authenticate(state, req).await?;
    let id = || m.params.get("id").unwrap_or_default();
    match m.handler {
        AccountHandler::Me => {
            caller.require(None)?;
            // The cache keeps what admission needs; the rest of the record is the store's.
            let me = state
                .store
                .account(&caller.account().id)
                .await
                .map_err(store_err)?
                .ok_or(ApiError::Deny(DenyReason::KeyUnknown))?;
            Ok(json(StatusCode::OK, &member_json(&me)))
        }
        AccountHandler::Subscriptions => subscriptions(state, &caller).await,
        AccountHandler::Usage => usage(state, &caller, req.uri().query()).await,
        AccountHandler::TeamUsage => team_usage(state, &caller, req.uri().query()).await,
        AccountHandler::ListMembers => list_members(state, &caller).await,
        AccountHandler::InviteMember => invite(state, &caller, req.body()).await,
        AccountHandler::DisableMember => {
            set_member_status(state, &caller, id(), Status::Disabled).await
        }
        AccountHandler::EnableMember => {
            set_member_status(state, &caller, id(), Status::Active).await
        }
        AccountHandler::DeleteMember => {
            set_member_status(state, &caller, id(), Status::Deleted).await
        }
        AccountHandler::RotateKey => rotate(state, &caller).await,
        // Answered above, before any credential is looked at.
        AccountHandler::OpenApi | AccountHandler::AcceptInvitation => Err(ApiError::Internal),
    }
}

/// An authenticated caller: who it is and the hash of the key it came with.
struct Caller {
    principal: Principal,
    key_hash: KeyHash,
}

impl Caller {
    /// What the cache holds of the caller's account (id, role, status, parent); handlers that
    /// show more read the store.
    fn account(&self) -> &AccountState {
        &self.principal.account.account
    }

    /// The data plane's rules: the key's own state, its parent's, then the permission.
    fn require(&self, permission: Option<Permission>) -> Result<(), ApiError> {
        let access = Access {
            pool: None,
            permission,
        };
        match admit(self.account(), self.principal.parent(), |_| true, access) {
            Decision::Admit => Ok(()),
            Decision::Deny(reason) => Err(ApiError::Deny(reason)),
        }
    }

    /// Team management: a parent with `team.manage`.
    fn require_team_manager(&self) -> Result<(), ApiError> {
        self.require(Some(Permission::TeamManage))
    }
}

async fn authenticate(state: &ApiState, req: &Request<Bytes>) -> Result<Caller, ApiError> {
    let key = state.key_sources.find(req)?;
    // The shape check comes first: a random string costs neither a hash nor a store round trip.
    if !is_well_formed_key(&key) {
        return Err(ApiError::Deny(DenyReason::KeyUnknown));
    }
    let key_hash = KeyHash::of(&key);
    let principal = match state.cache.lookup(&key_hash) {
        CacheLookup::Hit(p) => p,
        CacheLookup::Unknown => return Err(ApiError::Deny(DenyReason::KeyUnknown)),
        CacheLookup::Miss => match state.cache.resolve(&key_hash).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(ApiError::Deny(DenyReason::KeyUnknown)),
            Err(e) => {
                return Err(ApiError::from_store(
                    e,
                    ApiError::Deny(DenyReason::KeyUnknown),
                ))
            }
        },
    };
    Ok(Caller {
        principal,
        key_hash,
    })
}

/// An account as the account API shows it (the member view: no limits, no team flag).
pub(crate) fn member_json(a: &Account) -> Value {
    json!({
        "id": a.id,
        "role": a.role.as_str(),
        "status": a.status.as_str(),
        "email": a.email,
        "parent_id": a.parent_id,
        "created_at": a.created_at,
    })
}

fn store_err(e: tollgate_store::StoreError) -> ApiError {
    // The caller's own records: missing means its key no longer names an account.
    ApiError::from_store(e, ApiError::Deny(DenyReason::KeyUnknown))
}

async fn subscriptions(state: &ApiState, caller: &Caller) -> Result<Response<Bytes>, ApiError> {
    caller.require(None)?;
    let tenant = caller.account().tenant_id().to_owned();
    let subs = state
        .store
        .subscriptions(&tenant)
        .await
        .map_err(store_err)?;
    // Included credits and the tenant's use are billing details and the whole team's usage: a
    // child sees which pools it may draw from and what happens when they run out.
    let billing = Permission::BillingView.allowed_for(caller.account().role);
    let used = if billing {
        state.store.pool_usage(&tenant).await.map_err(store_err)?
    } else {
        Vec::new()
    };
    let pools: Vec<Value> = subs
        .iter()
        .map(|s| {
            let products = state
                .pool_products
                .get(&s.pool)
                .cloned()
                .unwrap_or_default();
            let mut v =
                json!({"pool": s.pool, "products": products, "overage": s.overage.as_str()});
            if billing {
                let used: u64 = used
                    .iter()
                    .filter(|(p, _)| *p == s.pool)
                    .map(|(_, c)| *c)
                    .sum();
                v["included"] = json!(s.credits);
                v["used"] = json!(used);
            }
            v
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &json!({"account_id": &*caller.account().id, "pools": pools}),
    ))
}

async fn usage(
    state: &ApiState,
    caller: &Caller,
    query: Option<&str>,
) -> Result<Response<Bytes>, ApiError> {
    caller.require(Some(Permission::UsageView))?;
    let (from, to) = parse_range(query, state.now())?;
    let id = caller.account().id.to_string();
    let rows = state
        .store
        .usage(std::slice::from_ref(&id), from, to)
        .await
        .map_err(store_err)?;
    Ok(json(StatusCode::OK, &usage_body(&id, from, to, &rows)))
}

async fn team_usage(
    state: &ApiState,
    caller: &Caller,
    query: Option<&str>,
) -> Result<Response<Bytes>, ApiError> {
    caller.require(Some(Permission::UsageView))?;
    if caller.account().role.usage_scope() != UsageScope::All {
        return Err(ApiError::Deny(DenyReason::PermissionDenied));
    }
    let (from, to) = parse_range(query, state.now())?;
    let parent_id = caller.account().id.to_string();
    let parent = state
        .store
        .account(&parent_id)
        .await
        .map_err(store_err)?
        .ok_or(ApiError::Deny(DenyReason::KeyUnknown))?;
    let mut members = vec![parent];
    members.extend(state.store.children(&parent_id).await.map_err(store_err)?);
    let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
    let rows = state.store.usage(&ids, from, to).await.map_err(store_err)?;
    let subs = state
        .store
        .subscriptions(&parent_id)
        .await
        .map_err(store_err)?;
    Ok(json(
        StatusCode::OK,
        &team_body(&parent_id, &members, from, to, &rows, &subs),
    ))
}

async fn list_members(state: &ApiState, caller: &Caller) -> Result<Response<Bytes>, ApiError> {
    caller.require_team_manager()?;
    let children = state
        .store
        .children(&caller.account().id)
        .await
        .map_err(store_err)?;
    let members: Vec<Value> = children.iter().map(member_json).collect();
    Ok(json(StatusCode::OK, &json!({"members": members})))
}

async fn invite(
    state: &ApiState,
    caller: &Caller,
    body: &Bytes,
) -> Result<Response<Bytes>, ApiError> {
    caller.require_team_manager()?;
    let parent_id = caller.account().id.to_string();
    // The team flag from the store, not the cache: the operator may have just switched it.
    let parent = state
        .store
        .account(&parent_id)
        .await
        .map_err(store_err)?
        .ok_or(ApiError::Deny(DenyReason::KeyUnknown))?;
    if !parent.team {
        return Err(ApiError::TeamNotEnabled);
    }
    let map = json_object(body, false)?;
    let fields = Fields::new(&map);
    fields.only(&["email"])?;
    let email = fields.str("email")?.trim();
    if !is_valid_email(email) {
        return Err(ApiError::invalid("`email` is not a valid email address"));
    }
    let now = state.now();
    let expires_at = now.saturating_add(state.invitation_ttl.as_secs());
    let (id, token) = {
        // `ThreadRng` is not `Send`: use it and drop it before the next await.
        let mut rng = rand::rng();
        (generate_id(&mut rng, "acc_"), generate_token(&mut rng))
    };
    let child = Account {
        id,
        role: Role::Child,
        status: Status::Invited,
        email: email.to_owned(),
        parent_id: Some(parent_id.clone()),
        team: false,
        limits: LimitOverrides::default(),
        created_at: now,
    };
    let child = state
        .store
        .invite(NewInvitation {
            child,
            token_hash: token.hash(),
            expires_at,
        })
        .await
        .map_err(store_err)?;
    state
        .apply_changes(&[Change::Account(child.id.clone())])
        .await;
    tracing::info!(parent = %parent_id, member = %child.id, "member invited");
    Ok(json(
        StatusCode::CREATED,
        &json!({
            "id": child.id,
            "email": child.email,
            "status": child.status.as_str(),
            "invitation_token": token.expose(),
            "expires_at": expires_at,
        }),
    ))
}

/// The caller's own child with this id, in any state. Anything else, whatever it is, is
/// `member_not_found`.
async fn own_child(state: &ApiState, parent_id: &str, id: &str) -> Result<Account, ApiError> {
    let found = state
        .store
        .account(id)
        .await
        .map_err(|e| ApiError::from_store(e, ApiError::MemberNotFound))?;
    match found {
        Some(a) if a.role == Role::Child && a.parent_id.as_deref() == Some(parent_id) => Ok(a),
        _ => Err(ApiError::MemberNotFound),
    }
}

async fn set_member_status(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    status: Status,
) -> Result<Response<Bytes>, ApiError> {
    caller.require_team_manager()?;
    // A deleted member stays the team's (it is listed, and its usage billed): deleting it again
    // is a no-op, enabling or disabling it a conflict, as the store answers.
    let member = own_child(state, &caller.account().id, id).await?;
    let updated = state
        .store
        .set_status(&member.id, status)
        .await
        .map_err(|e| ApiError::from_store(e, ApiError::MemberNotFound))?;
    state
        .apply_changes(&[Change::Account(member.id.clone())])
        .await;
    tracing::info!(parent = %caller.account().id, member = %member.id, status = status.as_str(), "member status changed");
    if status == Status::Deleted {
        Ok(no_content())
    } else {
        Ok(json(StatusCode::OK, &member_json(&updated)))
    }
}

/// Invitation tokens are `inv_` and 40 of `[a-z0-9]`; anything else is unknown without a look-up.
fn is_well_formed_token(t: &str) -> bool {
    t.len() == 44
        && t.starts_with("inv_")
        && t.bytes()
            .skip(4)
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

async fn accept_invitation(state: &ApiState, token: &str) -> Result<Response<Bytes>, ApiError> {
    if !is_well_formed_token(token) {
        return Err(ApiError::InvitationUnknown);
    }
    let token_hash = KeyHash::of(token);
    let key = generate_key(&mut rand::rng());
    let key_hash = key.hash();
    let child = state
        .store
        .accept_invitation(&token_hash, key_hash, state.now())
        .await
        .map_err(|e| ApiError::from_store(e, ApiError::InvitationUnknown))?;
    state
        .apply_changes(&[
            Change::KeyAdded(key_hash),
            Change::Account(child.id.clone()),
        ])
        .await;
    tracing::info!(member = %child.id, key = %key_hash.short(), "invitation accepted");
    Ok(json(
        StatusCode::OK,
        &json!({"id": child.id, "api_key": key.expose()}),
    ))
}

async fn rotate(state: &ApiState, caller: &Caller) -> Result<Response<Bytes>, ApiError> {
    caller.require(None)?;
    let id = caller.account().id.to_string();
    let key = generate_key(&mut rand::rng());
    let new_hash = key.hash();
    state
        .store
        .rotate_key(&id, &caller.key_hash, new_hash)
        .await
        // `NotFound`: the account was deleted meanwhile, or a concurrent rotation with the same
        // key won, so this key was rotated away: 401 `key_unknown`, as for any such key.
        .map_err(store_err)?;
    state
        .apply_changes(&[
            Change::KeyRemoved(caller.key_hash),
            Change::KeyAdded(new_hash),
            Change::Account(id.clone()),
        ])
        .await;
    tracing::info!(account = %id, old = %caller.key_hash.short(), new = %new_hash.short(), "key rotated");
    Ok(json(StatusCode::OK, &json!({"api_key": key.expose()})))
}
