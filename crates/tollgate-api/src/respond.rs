//! Shared plumbing of both APIs: JSON responses, error bodies, query strings and request bodies
//! checked field by field.
//!
//! Bodies are parsed into a `serde_json::Value` and read by hand rather than derived, so every
//! message is ours (serde's own quote the offending value, which could be a misplaced key).

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde_json::{Map, Value};

use crate::ApiError;

/// Largest request body either API reads (SPEC.md: over 64 KiB is 413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub(crate) const JSON: &str = "application/json";

/// A JSON response. `no-store`: these bodies carry keys, tokens and account data that no proxy or
/// browser cache should keep.
pub(crate) fn json(status: StatusCode, body: &Value) -> Response<Bytes> {
    // Serializing a `Value` cannot fail (its map keys are strings).
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    raw(status, JSON, Bytes::from(bytes))
}

pub(crate) fn raw(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Bytes> {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

pub(crate) fn no_content() -> Response<Bytes> {
    let mut res = Response::new(Bytes::new());
    *res.status_mut() = StatusCode::NO_CONTENT;
    res
}

/// What a 401 asks for: the key, or the operator token, as a bearer credential (the account API
/// also takes the key from the other configured sources).
pub(crate) const CHALLENGE: &str = tollgate_core::BEARER_CHALLENGE;

/// `{"error":{"code","message"}}` with the error's status (and `allow` for a 405,
/// `www-authenticate` for a 401).
pub(crate) fn error(e: &ApiError) -> Response<Bytes> {
    let body = serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}});
    let mut res = json(e.status(), &body);
    if let ApiError::MethodNotAllowed { allow } = e {
        if let Ok(v) = HeaderValue::from_str(allow) {
            res.headers_mut().insert(ALLOW, v);
        }
    }
    if res.status() == StatusCode::UNAUTHORIZED {
        res.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    }
    res
}

/// Folds a handler's result into a response.
pub(crate) fn finish(result: Result<Response<Bytes>, ApiError>) -> Response<Bytes> {
    match result {
        Ok(res) => res,
        Err(e) => error(&e),
    }
}

/// The percent-decoded value of the first `name` parameter of a query string. `Err` when it is
/// not valid UTF-8 after decoding.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, ApiError> {
    let Some(query) = query else {
        return Ok(None);
    };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(k).as_deref() == Some(name) {
            return decode(v).map(Some).ok_or_else(|| {
                ApiError::invalid(format!("query parameter `{name}` is not valid UTF-8"))
            });
        }
    }
    Ok(None)
}

/// `+` is a space in query strings; then percent-decoding. `None` for invalid UTF-8.
pub(crate) fn decode(s: &str) -> Option<String> {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// A request body that must be a JSON object. An empty body counts as `{}` only when `allow_empty`.
pub(crate) fn json_object(body: &[u8], allow_empty: bool) -> Result<Map<String, Value>, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    if allow_empty && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid("the request body must be a JSON object")),
        Err(e) => Err(ApiError::invalid(format!(
            "the request body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))),
    }
}

/// Typed reads of a JSON object's fields, each with a message that names the field.
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(map: &'a Map<String, Value>) -> Fields<'a> {
        Fields {
            map,
            prefix: String::new(),
        }
    }

    /// The fields of a nested object, named `parent.field` in messages.
    pub(crate) fn nested(map: &'a Map<String, Value>, prefix: &str) -> Fields<'a> {
        Fields {
            map,
            prefix: format!("{prefix}."),
        }
    }

    fn name(&self, field: &str) -> String {
        format!("{}{}", self.prefix, field)
    }

    /// Refuses fields the endpoint does not know, so a typo is not silently ignored.
    pub(crate) fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => {
                // Field names are the caller's text too: name it only when it is short enough to
                // be a name and not a key (32 characters) or a token (44).
                let shown =
                    if k.len() <= 24 && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        format!("`{}`", self.name(k))
                    } else {
                        "a field".to_owned()
                    };
                Err(ApiError::invalid(format!(
                    "unknown field {shown}; expected {}",
                    known
                        .iter()
                        .map(|k| format!("`{}`", self.name(k)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        }
    }

    /// Present and not `null`.
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    pub(crate) fn has(&self, field: &str) -> bool {
        self.map.contains_key(field)
    }

    pub(crate) fn opt_str(&self, field: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(format!(
                "`{}` must be a string",
                self.name(field)
            ))),
        }
    }

    pub(crate) fn str(&self, field: &str) -> Result<&'a str, ApiError> {
        self.opt_str(field)?
            .ok_or_else(|| ApiError::invalid(format!("`{}` is required", self.name(field))))
    }

    pub(crate) fn opt_bool(&self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::invalid(format!(
                "`{}` must be true or false",
                self.name(field)
            ))),
        }
    }

    pub(crate) fn u64(&self, field: &str) -> Result<u64, ApiError> {
        match self.get(field) {
            None => Err(ApiError::invalid(format!(
                "`{}` is required",
                self.name(field)
            ))),
            Some(v) => v.as_u64().ok_or_else(|| {
                ApiError::invalid(format!(
                    "`{}` must be a whole number, 0 or more",
                    self.name(field)
                ))
            }),
        }
    }

    pub(crate) fn opt_object(
        &self,
        field: &str,
    ) -> Result<Option<&'a Map<String, Value>>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(ApiError::invalid(format!(
                "`{}` must be an object",
                self.name(field)
            ))),
        }
    }

    pub(crate) fn opt_array(&self, field: &str) -> Result<Option<&'a Vec<Value>>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(ApiError::invalid(format!(
                "`{}` must be an array",
                self.name(field)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let q = Some("a=1&apiKey=at%5Fx+y&apiKey=second&flag");
        assert_eq!(query_param(q, "apiKey").unwrap().as_deref(), Some("at_x y"));
        assert_eq!(query_param(q, "flag").unwrap().as_deref(), Some(""));
        assert_eq!(query_param(q, "missing").unwrap(), None);
        assert_eq!(query_param(None, "a").unwrap(), None);
        assert!(query_param(Some("a=%ff"), "a").is_err());
    }

    #[test]
    fn bodies() {
        assert!(json_object(b"", true).unwrap().is_empty());
        assert_eq!(
            json_object(b"", false).unwrap_err().code(),
            "invalid_request"
        );
        assert_eq!(
            json_object(b"[1]", false).unwrap_err().code(),
            "invalid_request"
        );
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(
            json_object(&big, true).unwrap_err(),
            ApiError::PayloadTooLarge
        );
        let secret = br#"{"email": 5, "at_secretsecretsecretsecretsecre": 1}"#;
        let map = json_object(secret, false).unwrap();
        let f = Fields::new(&map);
        let e = f.only(&["email"]).unwrap_err().to_string();
        assert!(!e.contains("at_secret"), "{e}");
        assert_eq!(
            f.str("email").unwrap_err().to_string(),
            "`email` must be a string"
        );
        assert_eq!(f.str("nope").unwrap_err().to_string(), "`nope` is required");
    }

    #[test]
    fn error_bodies() {
        let res = error(&ApiError::MethodNotAllowed {
            allow: "GET, POST".into(),
        });
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers()[ALLOW], "GET, POST");
        assert_eq!(res.headers()[CONTENT_TYPE], JSON);
        let v: Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["error"]["code"], "method_not_allowed");
        assert!(res.headers().get(WWW_AUTHENTICATE).is_none());

        // Every 401 says which credential it wants; no other status does.
        let res = error(&ApiError::Unauthorized);
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()[WWW_AUTHENTICATE], CHALLENGE);
    }
}
