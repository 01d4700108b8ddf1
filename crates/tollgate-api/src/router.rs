//! The routing tables as data: (method, path template, handler id). The OpenAPI document is
//! checked against [`ACCOUNT_ROUTES`] by a test, so the two cannot drift apart.

use http::Method;

use crate::ApiError;

/// The methods the APIs use; a plain enum so the tables can be `const`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Put => "PUT",
            Verb::Patch => "PATCH",
            Verb::Delete => "DELETE",
        }
    }

    /// The key of an OpenAPI path item.
    pub fn openapi_key(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Put => "put",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }

    /// HEAD is served as GET: hyper sends the headers and drops the body, as curl -I expects.
    fn matches(self, m: &Method) -> bool {
        m.as_str() == self.as_str() || (self == Verb::Get && m == Method::HEAD)
    }
}

/// One row of a routing table. `{name}` segments of `path` capture one path segment.
#[derive(Debug, Clone, Copy)]
pub struct Route<H: 'static> {
    pub verb: Verb,
    pub path: &'static str,
    pub handler: H,
}

/// Handlers of the account API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountHandler {
    Me,
    Subscriptions,
    Usage,
    TeamUsage,
    ListMembers,
    InviteMember,
    DisableMember,
    EnableMember,
    DeleteMember,
    AcceptInvitation,
    RotateKey,
    OpenApi,
}

/// Handlers of the ops listener (operator API and the open endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpsHandler {
    CreateParent,
    UpdateParent,
    PutSubscription,
    GetAccount,
    DisableAccount,
    EnableAccount,
    DeleteAccount,
    Metrics,
    Healthz,
    Readyz,
}

const fn r<H>(verb: Verb, path: &'static str, handler: H) -> Route<H> {
    Route {
        verb,
        path,
        handler,
    }
}

pub const ACCOUNT_ROUTES: &[Route<AccountHandler>] = &[
    r(Verb::Get, "/v1/me", AccountHandler::Me),
    r(
        Verb::Get,
        "/v1/subscriptions",
        AccountHandler::Subscriptions,
    ),
    r(Verb::Get, "/v1/usage", AccountHandler::Usage),
    r(Verb::Get, "/v1/team/usage", AccountHandler::TeamUsage),
    r(Verb::Get, "/v1/team/members", AccountHandler::ListMembers),
    r(Verb::Post, "/v1/team/members", AccountHandler::InviteMember),
    r(
        Verb::Post,
        "/v1/team/members/{id}/disable",
        AccountHandler::DisableMember,
    ),
    r(
        Verb::Post,
        "/v1/team/members/{id}/enable",
        AccountHandler::EnableMember,
    ),
    r(
        Verb::Delete,
        "/v1/team/members/{id}",
        AccountHandler::DeleteMember,
    ),
    r(
        Verb::Post,
        "/v1/invitations/{token}/accept",
        AccountHandler::AcceptInvitation,
    ),
    r(Verb::Post, "/v1/keys/rotate", AccountHandler::RotateKey),
    r(Verb::Get, "/openapi.json", AccountHandler::OpenApi),
];

pub const OPS_ROUTES: &[Route<OpsHandler>] = &[
    r(Verb::Post, "/admin/v1/parents", OpsHandler::CreateParent),
    r(
        Verb::Patch,
        "/admin/v1/parents/{id}",
        OpsHandler::UpdateParent,
    ),
    r(
        Verb::Put,
        "/admin/v1/parents/{id}/subscriptions/{pool}",
        OpsHandler::PutSubscription,
    ),
    r(Verb::Get, "/admin/v1/accounts/{id}", OpsHandler::GetAccount),
    r(
        Verb::Post,
        "/admin/v1/accounts/{id}/disable",
        OpsHandler::DisableAccount,
    ),
    r(
        Verb::Post,
        "/admin/v1/accounts/{id}/enable",
        OpsHandler::EnableAccount,
    ),
    r(
        Verb::Delete,
        "/admin/v1/accounts/{id}",
        OpsHandler::DeleteAccount,
    ),
    r(Verb::Get, "/metrics", OpsHandler::Metrics),
    r(Verb::Get, "/healthz", OpsHandler::Healthz),
    r(Verb::Get, "/readyz", OpsHandler::Readyz),
];

/// The captured `{name}` segments of a matched path, percent-decoded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A matched route: its handler, its template (for logs: the concrete path may hold a token) and
/// its parameters.
#[derive(Debug, Clone)]
pub struct Matched<H> {
    pub handler: H,
    pub template: &'static str,
    pub params: Params,
}

/// Finds the route for a request: 404 `not_found` when no template matches the path, 405 with the
/// allowed methods when some do but not for this method.
pub fn route<H: Copy>(
    table: &[Route<H>],
    method: &Method,
    path: &str,
) -> Result<Matched<H>, ApiError> {
    let mut allow: Vec<&'static str> = Vec::new();
    for row in table {
        let Some(params) = match_path(row.path, path) else {
            continue;
        };
        if row.verb.matches(method) {
            return Ok(Matched {
                handler: row.handler,
                template: row.path,
                params,
            });
        }
        // HEAD is served wherever GET is (see `Verb::matches`), so it is allowed there too.
        let verbs: &[&'static str] = match row.verb {
            Verb::Get => &["GET", "HEAD"],
            v => &[v.as_str()],
        };
        for v in verbs {
            if !allow.contains(v) {
                allow.push(v);
            }
        }
    }
    if allow.is_empty() {
        Err(ApiError::NotFound)
    } else {
        Err(ApiError::MethodNotAllowed {
            allow: allow.join(", "),
        })
    }
}

/// The parameters of `path` if it has the template's shape (same segment count, literal segments
/// equal).
pub(crate) fn match_path(template: &'static str, path: &str) -> Option<Params> {
    let mut params = Vec::new();
    let mut want = template.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(Params(params)),
            (Some(w), Some(g)) => {
                if let Some(name) = w.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                    // An empty or undecodable segment is no value for a parameter.
                    let value = percent_encoding::percent_decode_str(g).decode_utf8().ok()?;
                    if value.is_empty() {
                        return None;
                    }
                    params.push((name, value.into_owned()));
                } else if w != g {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let m = route(
            ACCOUNT_ROUTES,
            &Method::POST,
            "/v1/team/members/acc_1/disable",
        )
        .unwrap();
        assert_eq!(m.handler, AccountHandler::DisableMember);
        assert_eq!(m.params.get("id"), Some("acc_1"));
        assert_eq!(m.template, "/v1/team/members/{id}/disable");

        let m = route(ACCOUNT_ROUTES, &Method::HEAD, "/v1/me").unwrap();
        assert_eq!(m.handler, AccountHandler::Me);
        let m = route(ACCOUNT_ROUTES, &Method::GET, "/v1/team/members").unwrap();
        assert_eq!(m.handler, AccountHandler::ListMembers);
        let m = route(ACCOUNT_ROUTES, &Method::POST, "/v1/team/members").unwrap();
        assert_eq!(m.handler, AccountHandler::InviteMember);

        let m = route(
            OPS_ROUTES,
            &Method::PUT,
            "/admin/v1/parents/acc_1/subscriptions/drs%2Dx",
        )
        .unwrap();
        assert_eq!(m.params.get("pool"), Some("drs-x"));
    }

    #[test]
    fn misses() {
        assert_eq!(
            route(ACCOUNT_ROUTES, &Method::GET, "/v1/nope").unwrap_err(),
            ApiError::NotFound
        );
        assert_eq!(
            route(ACCOUNT_ROUTES, &Method::GET, "/v1/me/").unwrap_err(),
            ApiError::NotFound
        );
        assert_eq!(
            route(ACCOUNT_ROUTES, &Method::GET, "/v1/team/members//disable").unwrap_err(),
            ApiError::NotFound
        );
        assert_eq!(
            route(ACCOUNT_ROUTES, &Method::DELETE, "/v1/team/members").unwrap_err(),
            ApiError::MethodNotAllowed {
                allow: "GET, HEAD, POST".into()
            }
        );
        assert_eq!(
            route(ACCOUNT_ROUTES, &Method::GET, "/v1/team/members/x").unwrap_err(),
            ApiError::MethodNotAllowed {
                allow: "DELETE".into()
            }
        );
    }

    #[test]
    fn templates_are_unique() {
        for (i, a) in ACCOUNT_ROUTES.iter().enumerate() {
            for b in &ACCOUNT_ROUTES[i + 1..] {
                assert!(
                    !(a.path == b.path && a.verb == b.verb),
                    "{} {}",
                    a.verb.as_str(),
                    a.path
                );
            }
        }
    }
}
