//! The OpenAPI 3.0.3 description of the account API, served at `GET /openapi.json`.
//!
//! Written out by hand (not derived from the routing table) so that a test comparing the two
//! catches an endpoint added to one and forgotten in the other.

use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, ETAG};
use http::{Response, StatusCode};
use serde_json::{json, Value};

use tollgate_config::{key_places, KeySource};

use crate::respond::{raw, JSON};

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn ok(description: &str, schema_name: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema(schema_name)}}})
}

/// An error response: every one has the same body, `{"error":{"code","message"}}`.
fn err(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema("Error")}}})
}

fn param(name: &str) -> Value {
    json!({"$ref": format!("#/components/parameters/{name}")})
}

fn json_body(schema_name: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema(schema_name)}}})
}

const E401: &str = "`key_missing`: no key was sent; `key_unknown`: no such key, or it was deleted or rotated away.";
const E403: &str = "`key_disabled`: the account is disabled; `parent_disabled`: its parent is disabled or deleted.";
const E403_PARENT: &str =
    "`key_disabled`, `parent_disabled`, or `permission_denied`: only a parent may call this.";
const E413: &str = "`payload_too_large`: the body is over 64 KiB.";
const E503: &str = "`store_unavailable`: the key store cannot be reached; retry shortly.";
const E400_RANGE: &str = "`invalid_request`: a date is not a calendar date written YYYY-MM-DD.";
const E404_MEMBER: &str = "`member_not_found`: no member of the caller's team has this id.";
const E409_STATE: &str = "`conflict`: the member has not accepted its invitation yet (no key to enable or disable), or it is deleted, which is permanent.";

/// The responses every authenticated endpoint can give besides its own.
fn authed(mut responses: Value, forbidden: &str) -> Value {
    responses["401"] = err(E401);
    responses["403"] = err(forbidden);
    responses["503"] = err(E503);
    responses
}

/// The document for the default `[keys] sources`, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| document_for(&tollgate_config::KeysConfig::default().sources))
}

/// The document for the key sources in force: one security scheme per header, bearer or query
/// source, in their order (a `json:` source reads no key on this API), named in the description.
pub fn document_for(sources: &[KeySource]) -> Value {
    let mut doc = build();
    let mut schemes = serde_json::Map::new();
    let mut security = Vec::new();
    for source in sources {
        // The defaults' schemes keep the names they always had.
        let (name, scheme) = match source {
            KeySource::Header(h) => (
                match h.as_str() {
                    "x-api-key" => "ApiKeyHeader".to_owned(),
                    _ => format!("Header-{}", scheme_name(h)),
                },
                json!({"type": "apiKey", "in": "header", "name": h}),
            ),
            KeySource::Query(q) => (
                match q.as_str() {
                    "apiKey" => "ApiKeyQuery".to_owned(),
                    _ => format!("Query-{}", scheme_name(q)),
                },
                json!({"type": "apiKey", "in": "query", "name": q}),
            ),
            KeySource::Bearer => (
                "BearerKey".to_owned(),
                json!({"type": "http", "scheme": "bearer", "description": "The API key as a bearer token."}),
            ),
            KeySource::Json(_) => continue,
        };
        security.push(json!({ name.clone(): [] }));
        schemes.insert(name, scheme);
    }
    let places = key_places(sources.iter().filter(|s| !matches!(s, KeySource::Json(_))))
        .unwrap_or_else(|| "none configured for this API: see [keys] sources".to_owned());
    doc["info"]["description"] = json!(format!(
        "Self-service API for parent and child accounts, authenticated by the caller's own API \
         key ({places}). Every error body is {{\"error\":{{\"code\",\"message\"}}}}. Unknown \
         paths answer 404 `not_found`; a known path with another method answers 405 \
         `method_not_allowed` with an `allow` header."
    ));
    doc["security"] = Value::Array(security);
    doc["components"]["securitySchemes"] = Value::Object(schemes);
    doc
}

/// A security scheme's name from a header or parameter name: OpenAPI allows `[A-Za-z0-9._-]`.
fn scheme_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `GET /openapi.json`: `body` is [`document_for`] the sources in force, rendered once per
/// configuration (see [`crate::KeySources`]), `etag` its entity tag. The same for every caller,
/// but re-rendered when a SIGHUP reload changes `[keys] sources`: `no-cache` lets a client keep
/// it only if it revalidates each time, which an `If-None-Match` naming the tag answers with a
/// bodiless 304.
pub(crate) fn response(
    body: Bytes,
    etag: HeaderValue,
    if_none_match: Option<&HeaderValue>,
) -> Response<Bytes> {
    let mut res = if if_none_match.is_some_and(|v| matches_etag(v.as_bytes(), etag.as_bytes())) {
        let mut res = Response::new(Bytes::new());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        res
    } else {
        raw(StatusCode::OK, JSON, body)
    };
    let h = res.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(ETAG, etag);
    res
}

/// Whether an `If-None-Match` value (`*`, or a list of tags, weak or strong) names `etag`; the
/// comparison is the weak one RFC 9110 prescribes for it.
fn matches_etag(header: &[u8], etag: &[u8]) -> bool {
    header.split(|&b| b == b',').any(|t| {
        let t = t.trim_ascii();
        t == b"*" || t.strip_prefix(b"W/").unwrap_or(t) == etag
    })
}

/// Everything but what [`document_for`] derives from the key sources: the description, `security`
/// and `components.securitySchemes`.
fn build() -> Value {
    let member_id = param("MemberId");
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Tollgate account API",
            "version": env!("CARGO_PKG_VERSION"),
            "license": {"name": "Apache-2.0"}
        },
        "paths": {
            "/v1/me": {
                "get": {
                    "operationId": "getMe",
                    "summary": "The calling account.",
                    "tags": ["account"],
                    "responses": authed(json!({"200": ok("The caller's account.", "Member")}), E403)
                }
            },
            "/v1/subscriptions": {
                "get": {
                    "operationId": "getSubscriptions",
                    "summary": "The pools the caller's tenant subscribes to. A parent also sees included and used credits; a child sees the same pools without them.",
                    "tags": ["account"],
                    "responses": authed(json!({"200": ok("The tenant's subscriptions.", "Subscriptions")}), E403)
                }
            },
            "/v1/usage": {
                "get": {
                    "operationId": "getUsage",
                    "summary": "The caller's own usage by product and UTC day.",
                    "tags": ["usage"],
                    "parameters": [param("From"), param("To")],
                    "responses": authed(json!({
                        "200": ok("The caller's usage in the range.", "Usage"),
                        "400": err(E400_RANGE)
                    }), E403)
                }
            },
            "/v1/team/usage": {
                "get": {
                    "operationId": "getTeamUsage",
                    "summary": "Every member's usage (the parent's own included, deleted members too), the team total and each pool's overage. Parents only.",
                    "tags": ["usage", "team"],
                    "parameters": [param("From"), param("To")],
                    "responses": authed(json!({
                        "200": ok("The team's usage in the range.", "TeamUsage"),
                        "400": err(E400_RANGE)
                    }), E403_PARENT)
                }
            },
            "/v1/team/members": {
                "get": {
                    "operationId": "listMembers",
                    "summary": "The parent's children, with their status. Parents only.",
                    "tags": ["team"],
                    "responses": authed(json!({"200": ok("The children.", "MemberList")}), E403_PARENT)
                },
                "post": {
                    "operationId": "inviteMember",
                    "summary": "Invites a child by email: creates it as `invited` and returns its single-use invitation token. An email whose invitation expired unaccepted is free again: inviting one of the caller's own expired invitees gives that member a new token and expiry (same id; the old token is void). Parents with the team feature only.",
                    "tags": ["team"],
                    "requestBody": json_body("NewMember"),
                    "responses": authed(json!({
                        "201": ok("The invited child and its invitation token (shown once).", "Invitation"),
                        "400": err("`invalid_request`: the body is not JSON, or `email` is missing or not an email address."),
                        "409": err("`email_taken`: an account holds this email already (an invited member whose invitation is still valid included)."),
                        "413": err(E413)
                    }), "`key_disabled`, `parent_disabled`, `permission_denied` (only a parent may invite), or `team_not_enabled` (the operator has not switched teams on).")
                }
            },
            "/v1/team/members/{id}": {
                "delete": {
                    "operationId": "deleteMember",
                    "summary": "Deletes a child for good: its key never works again and its email is freed. Its usage stays in team usage. Deleting a deleted member again changes nothing (204).",
                    "tags": ["team"],
                    "parameters": [member_id.clone()],
                    "responses": authed(json!({
                        "204": {"description": "Deleted (or was already)."},
                        "404": err(E404_MEMBER)
                    }), E403_PARENT)
                }
            },
            "/v1/team/members/{id}/disable": {
                "post": {
                    "operationId": "disableMember",
                    "summary": "Disables a child (reversible): its key is refused at once.",
                    "tags": ["team"],
                    "parameters": [member_id.clone()],
                    "responses": authed(json!({
                        "200": ok("The member.", "Member"),
                        "404": err(E404_MEMBER),
                        "409": err(E409_STATE),
                        "413": err(E413)
                    }), E403_PARENT)
                }
            },
            "/v1/team/members/{id}/enable": {
                "post": {
                    "operationId": "enableMember",
                    "summary": "Enables a disabled child again.",
                    "tags": ["team"],
                    "parameters": [member_id],
                    "responses": authed(json!({
                        "200": ok("The member.", "Member"),
                        "404": err(E404_MEMBER),
                        "409": err(E409_STATE),
                        "413": err(E413)
                    }), E403_PARENT)
                }
            },
            "/v1/invitations/{token}/accept": {
                "post": {
                    "operationId": "acceptInvitation",
                    "summary": "Accepts an invitation: activates the child and returns its API key, once. Needs no key, only the token.",
                    "tags": ["team"],
                    "security": [],
                    "parameters": [param("InvitationToken")],
                    "responses": {
                        "200": ok("The child's id and its new API key (shown once).", "AcceptedInvitation"),
                        "404": err("`invitation_unknown`: the token is unknown, used, expired, or its member was deleted."),
                        "413": err(E413),
                        "503": err(E503)
                    }
                }
            },
            "/v1/keys/rotate": {
                "post": {
                    "operationId": "rotateKey",
                    "summary": "Replaces the caller's key. The old key is refused from then on.",
                    "tags": ["account"],
                    "responses": authed(json!({
                        "200": ok("The new key (shown once).", "RotatedKey"),
                        "413": err(E413)
                    }), E403)
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document.",
                    "tags": ["meta"],
                    "security": [],
                    "responses": {"200": ok("The OpenAPI 3.0.3 document.", "OpenApiDocument")}
                }
            }
        },
        "components": {
            "parameters": {
                "From": {
                    "name": "from", "in": "query", "required": false,
                    "description": "First UTC day, inclusive. Default: the first day of the month of `to` (of the current month when `to` is not given either).",
                    "schema": {"type": "string", "format": "date", "example": "2026-12-01"}
                },
                "To": {
                    "name": "to", "in": "query", "required": false,
                    "description": "Last UTC day, inclusive. Default: today. A `to` before `from` makes an empty range (zero totals, no rows).",
                    "schema": {"type": "string", "format": "date", "example": "2026-12-04"}
                },
                "MemberId": {
                    "name": "id", "in": "path", "required": true,
                    "description": "The child's account id.",
                    "schema": {"type": "string"}
                },
                "InvitationToken": {
                    "name": "token", "in": "path", "required": true,
                    "description": "The invitation token returned when the member was invited.",
                    "schema": {"type": "string", "pattern": "^inv_[a-z0-9]{40}$"}
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string", "description": "Stable machine-readable code, e.g. `key_unknown`."},
                                "message": {"type": "string", "description": "A human sentence. Never contains a key."}
                            }
                        }
                    }
                },
                "Role": {"type": "string", "enum": ["parent", "child"]},
                "Status": {"type": "string", "enum": ["invited", "active", "disabled", "deleted"]},
                "Totals": {
                    "type": "object",
                    "required": ["requests", "credits"],
                    "properties": {
                        "requests": {"type": "integer", "format": "int64", "minimum": 0},
                        "credits": {"type": "integer", "format": "int64", "minimum": 0}
                    }
                },
                "Member": {
                    "type": "object",
                    "required": ["id", "role", "status", "email", "parent_id", "created_at"],
                    "properties": {
                        "id": {"type": "string"},
                        "role": schema("Role"),
                        "status": schema("Status"),
                        "email": {"type": "string", "format": "email"},
                        "parent_id": {"type": "string", "nullable": true, "description": "The parent's id; null for a parent."},
                        "created_at": {"type": "integer", "format": "int64", "description": "Unix seconds."}
                    }
                },
                "MemberList": {
                    "type": "object",
                    "required": ["members"],
                    "properties": {"members": {"type": "array", "items": schema("Member")}}
                },
                "Pool": {
                    "type": "object",
                    "required": ["pool", "products", "overage"],
                    "properties": {
                        "pool": {"type": "string"},
                        "products": {"type": "array", "items": {"type": "string"}, "description": "The products whose routes draw from this pool."},
                        "overage": {"type": "string", "enum": ["allow", "deny"], "description": "Whether requests go on once the included credits are spent."},
                        "included": {"type": "integer", "format": "int64", "description": "Parents only: credits included in the subscription."},
                        "used": {"type": "integer", "format": "int64", "description": "Parents only: credits the whole team has used from the pool."}
                    }
                },
                "Subscriptions": {
                    "type": "object",
                    "required": ["account_id", "pools"],
                    "properties": {
                        "account_id": {"type": "string"},
                        "pools": {"type": "array", "items": schema("Pool")}
                    }
                },
                "UsageDay": {
                    "type": "object",
                    "required": ["date", "product", "requests", "credits"],
                    "properties": {
                        "date": {"type": "string", "format": "date"},
                        "product": {"type": "string"},
                        "requests": {"type": "integer", "format": "int64"},
                        "credits": {"type": "integer", "format": "int64"}
                    }
                },
                "Usage": {
                    "type": "object",
                    "required": ["account_id", "from", "to", "total", "by_product", "by_day"],
                    "properties": {
                        "account_id": {"type": "string"},
                        "from": {"type": "string", "format": "date"},
                        "to": {"type": "string", "format": "date"},
                        "total": schema("Totals"),
                        "by_product": {"type": "object", "additionalProperties": schema("Totals")},
                        "by_day": {"type": "array", "items": schema("UsageDay")}
                    }
                },
                "PoolUsage": {
                    "type": "object",
                    "required": ["included", "used", "overage"],
                    "properties": {
                        "included": {"type": "integer", "format": "int64"},
                        "used": {"type": "integer", "format": "int64", "description": "Credits the team (the parent and every member, deleted ones included) drew from the pool between `from` and `to`."},
                        "overage": {"type": "integer", "format": "int64", "description": "Of `used`, the credits beyond the included amount: max(0, used - included)."}
                    }
                },
                "TeamMemberUsage": {
                    "type": "object",
                    "required": ["account_id", "email", "role", "status", "total", "by_product"],
                    "properties": {
                        "account_id": {"type": "string"},
                        "email": {"type": "string"},
                        "role": schema("Role"),
                        "status": schema("Status"),
                        "total": schema("Totals"),
                        "by_product": {"type": "object", "additionalProperties": schema("Totals")}
                    }
                },
                "TeamUsage": {
                    "type": "object",
                    "required": ["parent_id", "from", "to", "total", "pools", "members"],
                    "properties": {
                        "parent_id": {"type": "string"},
                        "from": {"type": "string", "format": "date"},
                        "to": {"type": "string", "format": "date"},
                        "total": schema("Totals"),
                        "pools": {"type": "object", "additionalProperties": schema("PoolUsage")},
                        "members": {"type": "array", "items": schema("TeamMemberUsage"), "description": "The parent first, then its children in the order they were invited."}
                    }
                },
                "NewMember": {
                    "type": "object",
                    "required": ["email"],
                    "additionalProperties": false,
                    "properties": {"email": {"type": "string", "format": "email"}}
                },
                "Invitation": {
                    "type": "object",
                    "required": ["id", "email", "status", "invitation_token", "expires_at"],
                    "properties": {
                        "id": {"type": "string"},
                        "email": {"type": "string", "format": "email"},
                        "status": {"type": "string", "enum": ["invited"]},
                        "invitation_token": {"type": "string", "description": "Single use; shown once."},
                        "expires_at": {"type": "integer", "format": "int64", "description": "Unix seconds."}
                    }
                },
                "AcceptedInvitation": {
                    "type": "object",
                    "required": ["id", "api_key"],
                    "properties": {
                        "id": {"type": "string"},
                        "api_key": {"type": "string", "pattern": "^at_[a-z0-9]{29}$"}
                    }
                },
                "RotatedKey": {
                    "type": "object",
                    "required": ["api_key"],
                    "properties": {"api_key": {"type": "string", "pattern": "^at_[a-z0-9]{29}$"}}
                },
                "OpenApiDocument": {"type": "object", "description": "An OpenAPI 3.0.3 document."}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::ACCOUNT_ROUTES;
    use crate::KeySources;
    use std::collections::BTreeSet;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// Every `$ref` string anywhere in the document.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "$ref" {
                        out.push(v.as_str().expect("$ref is a string"));
                    } else {
                        refs(v, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    fn resolve<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
        doc.pointer(r.strip_prefix('#')?)
    }

    #[test]
    fn router_and_document_agree() {
        let doc = document();
        let routed: BTreeSet<(String, String)> = ACCOUNT_ROUTES
            .iter()
            .map(|r| (r.path.to_owned(), r.verb.openapi_key().to_owned()))
            .collect();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, _) in item.as_object().expect("path item") {
                if METHODS.contains(&method.as_str()) {
                    documented.insert((path.clone(), method.clone()));
                }
            }
        }
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routed but not documented: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "documented but not routed: {unrouted:?}"
        );
    }

    #[test]
    fn document_structure() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.0.3");
        assert!(doc["info"]["title"].is_string());
        assert!(doc["info"]["version"].is_string());
        let schemes = doc["components"]["securitySchemes"]
            .as_object()
            .expect("security schemes");
        assert_eq!(schemes["ApiKeyHeader"]["in"], "header");
        assert_eq!(schemes["ApiKeyQuery"]["in"], "query");
        assert_eq!(schemes["BearerKey"]["scheme"], "bearer");
        for req in doc["security"].as_array().expect("global security") {
            for name in req.as_object().expect("requirement").keys() {
                assert!(schemes.contains_key(name), "{name}");
            }
        }

        let mut all = Vec::new();
        refs(doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            assert!(r.starts_with("#/components/"), "{r}");
            assert!(resolve(doc, r).is_some(), "dangling $ref {r}");
        }

        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            assert!(path.starts_with('/'), "{path}");
            for (method, op) in item.as_object().expect("path item") {
                assert!(METHODS.contains(&method.as_str()), "{path}: {method}");
                let id = op["operationId"].as_str().expect("operationId");
                assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
                // Every `{param}` of the template is declared as a required path parameter.
                let declared: BTreeSet<String> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .map(|p| match p.get("$ref") {
                                Some(r) => resolve(doc, r.as_str().unwrap()).unwrap(),
                                None => p,
                            })
                            .filter(|p| p["in"] == "path")
                            .inspect(|p| assert_eq!(p["required"], true, "{path}"))
                            .map(|p| p["name"].as_str().unwrap().to_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let in_template: BTreeSet<String> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                    .map(str::to_owned)
                    .collect();
                assert_eq!(declared, in_template, "{method} {path}");
                let responses = op["responses"].as_object().expect("responses");
                assert!(
                    responses.keys().any(|s| s.starts_with('2')),
                    "{method} {path}: no success"
                );
                for (status, res) in responses {
                    assert!(res["description"].is_string(), "{method} {path} {status}");
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            res["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/Error",
                            "{method} {path} {status}"
                        );
                    }
                }
                // Authenticated operations document the key refusals.
                let public = op
                    .get("security")
                    .is_some_and(|s| s.as_array().is_some_and(Vec::is_empty));
                if !public {
                    for s in ["401", "403", "503"] {
                        assert!(responses.contains_key(s), "{method} {path}: no {s}");
                    }
                }
            }
        }
    }

    #[test]
    fn served_document_parses() {
        let (body, etag) = crate::KeySources::default().openapi();
        let res = response(body, etag, None);
        assert_eq!(res.status(), StatusCode::OK);
        let v: Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(&v, document());
    }

    #[test]
    fn if_none_match_is_compared_weakly_in_a_list() {
        let tag = br#""abc""#;
        for yes in [
            &br#""abc""#[..],
            br#"W/"abc""#,
            br#""x", "abc""#,
            b"*",
            br#" "x" ,W/"abc" "#,
        ] {
            assert!(matches_etag(yes, tag), "{}", String::from_utf8_lossy(yes));
        }
        for no in [&br#""ab""#[..], br#""abcd""#, b"", br#"abc"#, br#""x""#] {
            assert!(!matches_etag(no, tag), "{}", String::from_utf8_lossy(no));
        }
    }

    /// One security scheme per header, bearer or query source in force, in their order, and the
    /// description names them; a `json:` source has none (it reads no key on this API). The
    /// default sources keep their scheme names, `x-authentication-token` among them.
    #[test]
    fn security_schemes_follow_the_key_sources() {
        let schemes = |doc: &Value| -> Vec<(String, Value)> {
            let all = doc["components"]["securitySchemes"].as_object().unwrap();
            doc["security"]
                .as_array()
                .unwrap()
                .iter()
                .map(|req| {
                    let name = req.as_object().unwrap().keys().next().unwrap().clone();
                    let scheme = all[&name].clone();
                    (name, scheme)
                })
                .collect()
        };
        let defaults = schemes(document());
        let names: Vec<&str> = defaults.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "ApiKeyHeader",
                "BearerKey",
                "Header-x-authentication-token",
                "ApiKeyQuery"
            ]
        );
        assert_eq!(defaults[2].1["name"], "x-authentication-token");

        let s = KeySources::new(&[
            KeySource::Query("token".into()),
            KeySource::Json("apiKey".into()),
            KeySource::Header("x-key".into()),
        ]);
        let doc: Value = serde_json::from_slice(&s.openapi().0).unwrap();
        assert_eq!(
            schemes(&doc),
            [
                (
                    "Query-token".to_owned(),
                    json!({"type": "apiKey", "in": "query", "name": "token"})
                ),
                (
                    "Header-x-key".to_owned(),
                    json!({"type": "apiKey", "in": "header", "name": "x-key"})
                ),
            ]
        );
        let description = doc["info"]["description"].as_str().unwrap();
        assert!(
            description.contains("(the token query parameter, or the x-key header)"),
            "{description}"
        );
        // A reload puts the new sources in the document too.
        s.set(&[KeySource::Bearer]);
        let doc: Value = serde_json::from_slice(&s.openapi().0).unwrap();
        assert_eq!(schemes(&doc).len(), 1);
        assert_eq!(doc["security"], json!([{"BearerKey": []}]));
    }
}
