//! The one module that maps refusals (domain `DenyReason`s and upstream failures) to HTTP statuses
//! and JSON bodies. Bodies are rendered once at start-up; a refusal costs a `Bytes` clone.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tollgate_core::DenyReason;

/// Everything the data plane can answer instead of the upstream's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    Deny(DenyReason),
    UpstreamUnavailable,
    UpstreamTimeout,
    /// A request we cannot make sense of (e.g. an unusable URI).
    BadRequest,
    /// A path that is not safe to route and forward as it is (see [`crate::path::is_safe`]).
    InvalidRequest,
    /// The client paused its request body for longer than `[proxy] client_body_timeout`.
    RequestTimeout,
    /// `TRACE`: an upstream that honours it would echo the request it got, with the gateway's
    /// fields and an `upstream_auth` credential, back to the client (nginx answers it 405 too).
    MethodNotAllowed,
    /// A request head over `[proxy] max_header_bytes` or 100 fields (answered by the HTTP layer,
    /// see [`crate::parse_errors`]).
    HeadersTooLarge,
    /// A request target too long for the HTTP layer (see [`crate::parse_errors`]).
    UriTooLong,
    /// The client went away (closed its connection, reset its HTTP/2 stream) before its answer:
    /// counted and logged as nginx's 499; nothing is sent.
    ClientClosed,
}

impl Refusal {
    pub const ALL: [Refusal; 19] = [
        Refusal::Deny(DenyReason::KeyMissing),
        Refusal::Deny(DenyReason::KeyUnknown),
        Refusal::Deny(DenyReason::KeyDisabled),
        Refusal::Deny(DenyReason::ParentDisabled),
        Refusal::Deny(DenyReason::ProductNotSubscribed),
        Refusal::Deny(DenyReason::PermissionDenied),
        Refusal::Deny(DenyReason::CreditsExhausted),
        Refusal::Deny(DenyReason::RateLimited),
        Refusal::Deny(DenyReason::RouteNotFound),
        Refusal::Deny(DenyReason::StoreUnavailable),
        Refusal::UpstreamUnavailable,
        Refusal::UpstreamTimeout,
        Refusal::BadRequest,
        Refusal::InvalidRequest,
        Refusal::RequestTimeout,
        Refusal::MethodNotAllowed,
        Refusal::HeadersTooLarge,
        Refusal::UriTooLong,
        Refusal::ClientClosed,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Deny(r) => match r {
                DenyReason::KeyMissing => StatusCode::UNAUTHORIZED,
                DenyReason::KeyUnknown => StatusCode::UNAUTHORIZED,
                DenyReason::KeyDisabled => StatusCode::FORBIDDEN,
                DenyReason::ParentDisabled => StatusCode::FORBIDDEN,
                DenyReason::ProductNotSubscribed => StatusCode::FORBIDDEN,
                DenyReason::PermissionDenied => StatusCode::FORBIDDEN,
                DenyReason::CreditsExhausted => StatusCode::PAYMENT_REQUIRED,
                DenyReason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                DenyReason::RouteNotFound => StatusCode::NOT_FOUND,
                DenyReason::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            },
            Refusal::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Refusal::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::BadRequest => StatusCode::BAD_REQUEST,
            Refusal::InvalidRequest => StatusCode::BAD_REQUEST,
            Refusal::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            // nginx's "client closed request": no response carries it, only logs and metrics.
            Refusal::ClientClosed => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Refusal::Deny(r) => r.code(),
            Refusal::UpstreamUnavailable => "upstream_unavailable",
            Refusal::UpstreamTimeout => "upstream_timeout",
            Refusal::BadRequest => "bad_request",
            Refusal::InvalidRequest => "invalid_request",
            Refusal::RequestTimeout => "request_timeout",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::UriTooLong => "uri_too_long",
            Refusal::ClientClosed => "client_closed",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Deny(r) => r.message(),
            Refusal::UpstreamUnavailable => "The upstream service refused or broke the connection.",
            Refusal::UpstreamTimeout => "The upstream service did not answer in time.",
            Refusal::BadRequest => "The request could not be understood.",
            Refusal::RequestTimeout => "The request body stopped arriving before it was complete.",
            Refusal::MethodNotAllowed => "TRACE is not served here.",
            Refusal::HeadersTooLarge => {
                "The request's head (its line and fields) is larger than this listener accepts."
            }
            Refusal::UriTooLong => "The request target is longer than this listener accepts.",
            Refusal::ClientClosed => "The client went away before its answer.",
            Refusal::InvalidRequest => {
                "The request path must start with / and may not contain . or .. segments \
                 (plain or percent-encoded), backslashes, encoded slashes or backslashes, or a \
                 fragment."
            }
        }
    }

    /// Position in [`Refusal::ALL`], for per-outcome counters resolved at start-up.
    pub fn index(self) -> usize {
        Refusal::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// The default JSON body (`key_missing`'s names the default sources; a proxy renders its own,
    /// see [`crate::Proxy`]).
    pub fn body(self) -> &'static Bytes {
        &BODIES[self.index()]
    }

    /// The HTTP/1.1 status line and fixed fields of [`refusal`], as the fast path writes them,
    /// rendered once: a refusal then costs no header map.
    pub fn wire_head(self) -> &'static [u8] {
        &WIRE_HEADS[self.index()]
    }
}

static WIRE_HEADS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    Refusal::ALL
        .iter()
        .map(|r| {
            let resp = refusal(*r, Bytes::new());
            let status = resp.status();
            let mut out = format!(
                "HTTP/1.1 {} {}\r\n",
                status.as_str(),
                status.canonical_reason().unwrap_or("")
            )
            .into_bytes();
            for (name, value) in resp.headers() {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out
        })
        .collect()
});

static BODIES: LazyLock<Vec<Bytes>> = LazyLock::new(|| {
    Refusal::ALL
        .iter()
        .map(|r| Bytes::from(error_body(r.code(), r.message())))
        .collect()
});

/// `{"error":{"code":..,"message":..}}`, the shape of every refusal.
pub fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({"error": {"code": code, "message": message}}).to_string()
}

static JSON: HeaderValue = HeaderValue::from_static("application/json");
/// What a 401 asks for (RFC 9110 requires the field): a key, as a bearer credential or in any
/// other configured source.
static CHALLENGE: HeaderValue = HeaderValue::from_static(tollgate_core::BEARER_CHALLENGE);
/// When a client may try again after `store_unavailable`: the store is usually back within
/// seconds (a failover, a restart).
static STORE_RETRY: HeaderValue = HeaderValue::from_static("1");
/// What a 405 must list (RFC 9110, section 15.5.6): every method but `TRACE` and `CONNECT`.
static ALLOW: HeaderValue =
    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");

/// A complete refusal response with `body` (`r.body()`, or the proxy's own `key_missing` body
/// naming its sources). The caller adds `x-request-id` (and `retry-after` when limited). A 401
/// carries `www-authenticate`, a `store_unavailable` a `retry-after` of a second.
pub fn refusal(r: Refusal, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = r.status();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, JSON.clone());
    match r {
        Refusal::Deny(DenyReason::KeyMissing | DenyReason::KeyUnknown) => {
            h.insert(header::WWW_AUTHENTICATE, CHALLENGE.clone());
        }
        Refusal::Deny(DenyReason::StoreUnavailable) => {
            h.insert(header::RETRY_AFTER, STORE_RETRY.clone());
        }
        Refusal::MethodNotAllowed => {
            h.insert(header::ALLOW, ALLOW.clone());
        }
        _ => {}
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_the_spec_status_and_a_json_body() {
        let spec = [
            ("key_missing", 401),
            ("key_unknown", 401),
            ("key_disabled", 403),
            ("parent_disabled", 403),
            ("product_not_subscribed", 403),
            ("permission_denied", 403),
            ("credits_exhausted", 402),
            ("rate_limited", 429),
            ("route_not_found", 404),
            ("upstream_unavailable", 502),
            ("upstream_timeout", 504),
            ("store_unavailable", 503),
            ("bad_request", 400),
            ("invalid_request", 400),
            ("request_timeout", 408),
            ("method_not_allowed", 405),
            ("headers_too_large", 431),
            ("uri_too_long", 414),
            ("client_closed", 499),
        ];
        assert_eq!(spec.len(), Refusal::ALL.len());
        for (code, status) in spec {
            let r = Refusal::ALL.iter().find(|r| r.code() == code).unwrap();
            assert_eq!(r.status().as_u16(), status, "{code}");
            let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
            assert_eq!(v["error"]["code"], code);
            assert!(v["error"]["message"].as_str().unwrap().len() > 10);
            // Both paths send `refusal`'s fields: the challenge on every 401 and only there,
            // a retry hint when the store is away.
            let resp = refusal(*r, r.body().clone());
            let h = resp.headers();
            // The fast path's pre-rendered head carries the same status and fields.
            let wire = String::from_utf8(r.wire_head().to_vec()).unwrap();
            let line = format!(
                "HTTP/1.1 {status} {}\r\n",
                r.status().canonical_reason().unwrap_or("")
            );
            assert!(wire.starts_with(&line), "{wire}");
            assert_eq!(wire.lines().count(), 1 + h.len(), "{wire}");
            for (name, value) in h {
                let field = format!("{name}: {}\r\n", value.to_str().unwrap());
                assert!(wire.contains(&field), "{code}: {field} not in {wire}");
            }
            assert_eq!(h[header::CONTENT_TYPE], "application/json");
            assert_eq!(
                h.get(header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap()),
                (status == 401).then_some("Bearer realm=\"tollgate\""),
                "{code}"
            );
            assert_eq!(
                h.get(header::RETRY_AFTER).is_some(),
                code == "store_unavailable",
                "{code}"
            );
        }
        let v: serde_json::Value =
            serde_json::from_slice(Refusal::Deny(DenyReason::ParentDisabled).body()).unwrap();
        assert_eq!(
            v["error"]["message"],
            "This key's parent account is disabled or deleted."
        );
    }
}
