//! Taking the key from the request: configured sources in order, first one that has a key wins.
//! Header, bearer and query sources read only the request head; `json:NAME` reads a JSON body of at
//! most [`JSON_BODY_LIMIT`] bytes and is only consulted when no earlier source had a key.

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue};
use percent_encoding::percent_decode;
use tollgate_config::KeySource;

mod json;

/// Largest JSON body `json:NAME` parses for a key.
pub const JSON_BODY_LIMIT: usize = 64 * 1024;

/// Where the key was found, for stripping it before forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<'a> {
    Header(&'a str),
    Bearer,
    Query(&'a str),
    Json(&'a str),
}

/// The key (bytes as sent) and its source; `None` if no head source has one.
pub fn from_head<'s>(parts: &Parts, sources: &'s [KeySource]) -> Option<(Vec<u8>, Found<'s>)> {
    from_sources(
        |name| parts.headers.get(name).map(HeaderValue::as_bytes),
        parts.uri.query(),
        sources,
    )
}

/// [`from_head`] over any field lookup (by lower-case name; the first field of that name).
pub fn from_fields<'f>(
    field: impl Fn(&str) -> Option<&'f [u8]>,
    query: Option<&str>,
    sources: &[KeySource],
) -> Option<Vec<u8>> {
    from_sources(field, query, sources).map(|(k, _)| k)
}

fn from_sources<'f, 's>(
    field: impl Fn(&str) -> Option<&'f [u8]>,
    query: Option<&str>,
    sources: &'s [KeySource],
) -> Option<(Vec<u8>, Found<'s>)> {
    for source in sources {
        match source {
            KeySource::Header(name) => {
                if let Some(v) = field(name.as_str()) {
                    let v = v.trim_ascii();
                    if !v.is_empty() {
                        return Some((v.to_vec(), Found::Header(name)));
                    }
                }
            }
            KeySource::Bearer => {
                if let Some(v) = bearer_token(field("authorization")) {
                    return Some((v.to_vec(), Found::Bearer));
                }
            }
            KeySource::Query(name) => {
                if let Some(v) = query_param(query, name) {
                    return Some((v, Found::Query(name)));
                }
            }
            KeySource::Json(_) => {}
        }
    }
    None
}

/// The first `json:` source after every head source failed, if any.
pub fn json_source(sources: &[KeySource]) -> Option<&str> {
    sources.iter().find_map(|s| match s {
        KeySource::Json(name) => Some(name.as_str()),
        _ => None,
    })
}

/// Whether a body may be a JSON document worth parsing for a key.
pub fn is_json(parts: &Parts) -> bool {
    is_json_type(
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes),
    )
}

/// Whether a `Content-Type` value is JSON's (`application/json`, or a `+json` type).
pub fn is_json_type(value: Option<&[u8]>) -> bool {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .is_some_and(|ct| {
            let ct = ct.split(';').next().unwrap_or("").trim();
            ct.eq_ignore_ascii_case("application/json")
                || ct.to_ascii_lowercase().ends_with("+json")
        })
}

/// `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer(value: Option<&HeaderValue>) -> Option<&[u8]> {
    bearer_token(value.map(HeaderValue::as_bytes))
}

pub fn bearer_token(value: Option<&[u8]>) -> Option<&[u8]> {
    value.and_then(tollgate_core::bearer_token)
}

/// A query string's `(name, value)` pairs: split on `&`, then on the first `=` (no `=`: an empty
/// value). A plain byte loop: queries are short, and `str`'s searchers cost more to set up.
fn pairs(query: &str) -> impl Iterator<Item = (&[u8], &[u8])> {
    query.as_bytes().split(|&b| b == b'&').map(split_pair)
}

/// One `name=value` pair of a query string as (name, value); no `=`: an empty value.
pub fn split_pair(pair: &[u8]) -> (&[u8], &[u8]) {
    match pair.iter().position(|&b| b == b'=') {
        Some(i) => (&pair[..i], &pair[i + 1..]),
        None => (pair, &[][..]),
    }
}

/// The first non-empty value of `name` in a query string, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<Vec<u8>> {
    pairs(query?)
        .find(|(k, v)| *k == name.as_bytes() && !v.is_empty())
        // Through `Cow`: a value without escapes (a key) is copied once, at its size, where
        // collecting the decoder's bytes grows the vector step by step.
        .map(|(_, v)| std::borrow::Cow::from(percent_decode(v)).into_owned())
}

/// Whether the query string has a parameter named in `names` (one the upstream must not see).
pub fn has_param(query: &str, names: &[String]) -> bool {
    pairs(query).any(|(key, _)| names.iter().any(|n| n.as_bytes() == key))
}

/// Takes the key field out of a JSON object body. `None` if the body is not (structurally) a JSON
/// object or its last top-level member of that name is not a non-empty string; else the key and,
/// when `strip`, the body without every top-level member of that name (see [`strip_json`]).
pub fn from_json(body: &[u8], field: &str, strip: bool) -> Option<(Vec<u8>, Option<Bytes>)> {
    if !json::may_hold(body, field) {
        return None;
    }
    let obj = json::scan(body, field)?;
    let key: String = serde_json::from_slice(&body[obj.last_value()?]).ok()?;
    if key.is_empty() {
        return None;
    }
    let rest = strip.then(|| Bytes::from(obj.without_named(body)));
    Some((key.into_bytes(), rest))
}

/// A JSON object body without its top-level members named `field`, cut out with one adjoining
/// separator each and every other byte left as it came; `None` when there are none (or the body
/// is not structurally a JSON object): it goes as it is. A body without the quoted name (or any
/// escape) is not scanned.
pub fn strip_json(body: &[u8], field: &str) -> Option<Vec<u8>> {
    if !json::may_hold(body, field) {
        return None;
    }
    let obj = json::scan(body, field)?;
    obj.has_named().then(|| obj.without_named(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn sources() -> Vec<KeySource> {
        vec![
            KeySource::Header("x-api-key".into()),
            KeySource::Bearer,
            KeySource::Header("x-authentication-token".into()),
            KeySource::Query("apiKey".into()),
            KeySource::Json("apiKey".into()),
        ]
    }

    #[test]
    fn sources_in_order() {
        let s = sources();
        let p = parts(
            "/x?apiKey=q",
            &[("authorization", "Bearer b"), ("x-api-key", "h")],
        );
        assert_eq!(
            from_head(&p, &s),
            Some((b"h".to_vec(), Found::Header("x-api-key")))
        );
        let p = parts("/x?apiKey=q", &[("authorization", "bearer  b ")]);
        assert_eq!(from_head(&p, &s), Some((b"b".to_vec(), Found::Bearer)));
        let p = parts("/x?a=1&apiKey=q%5F", &[("authorization", "Basic zz")]);
        assert_eq!(
            from_head(&p, &s),
            Some((b"q_".to_vec(), Found::Query("apiKey")))
        );
        let p = parts("/x?apiKey=", &[("x-authentication-token", "t")]);
        assert_eq!(
            from_head(&p, &s),
            Some((b"t".to_vec(), Found::Header("x-authentication-token")))
        );
        assert_eq!(from_head(&parts("/x", &[("x-api-key", " ")]), &s), None);
        assert_eq!(json_source(&s), Some("apiKey"));
    }

    #[test]
    fn query_key_parameters() {
        let names = ["apiKey".to_owned()];
        assert!(has_param("a=1&apiKey=k", &names));
        assert!(has_param("apiKey", &names));
        assert!(!has_param("a=1&apiKeyX=k&b=apiKey", &names));
        assert!(has_param("xapiKey=1&apiKey&b=2", &names));
        assert!(!has_param("", &names));
        assert!(!has_param("apiKe", &names));
    }

    #[test]
    fn json_bodies() {
        let body = Bytes::from_static(
            br#"{"domainName":"example.com","apiKey":"at_k","outputFormat":"JSON"}"#,
        );
        let (k, rest) = from_json(&body, "apiKey", true).unwrap();
        assert_eq!(k, b"at_k");
        assert_eq!(
            rest.unwrap(),
            Bytes::from_static(br#"{"domainName":"example.com","outputFormat":"JSON"}"#)
        );
        assert_eq!(from_json(&Bytes::from_static(b"[1]"), "apiKey", true), None);
        assert_eq!(
            from_json(&Bytes::from_static(b"{\"apiKey\":1}"), "apiKey", true),
            None
        );
        assert_eq!(
            from_json(&Bytes::from_static(b"not json"), "apiKey", true),
            None
        );
        let p = parts("/x", &[("content-type", "application/json; charset=utf-8")]);
        assert!(is_json(&p));
        assert!(!is_json(&parts("/x", &[("content-type", "text/plain")])));
    }

    #[test]
    fn query_pairs_split_on_the_first_equals_sign() {
        let names = vec!["apiKey".to_owned()];
        assert_eq!(
            query_param(Some("a=1&apiKey=&apiKey=k%2B1=x"), "apiKey").unwrap(),
            b"k+1=x"
        );
        assert_eq!(query_param(Some("apiKey&b=2"), "apiKey"), None);
        assert_eq!(query_param(None, "apiKey"), None);
        assert!(has_param("b=2&apiKey", &names));
        assert!(!has_param("b=apiKey&apiKeys=1", &names));
    }
}
