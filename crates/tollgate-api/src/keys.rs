//! Where the account API looks for the caller's key: `[keys] sources`, in their order, as on the
//! data plane, less the `json:` sources. Those read a product request's JSON body (the vendor's
//! POST convention); an account-API body is a request to this API (`{"email": ...}`), never a
//! product request, so no key is read from it.
//!
//! The sources in force can be replaced while requests run (SIGHUP reloads `[keys] sources`).

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION};
use http::Request;
use tollgate_config::{key_missing_message, KeySource, KeysConfig};
use tollgate_core::{bearer_token, DenyReason};

use crate::respond::query_param;
use crate::ApiError;

/// The configured key sources and the `key_missing` message naming them.
#[derive(Debug)]
pub struct KeySources {
    current: ArcSwap<Lookup>,
}

#[derive(Debug)]
struct Lookup {
    /// Header, bearer and query sources, in the configured order.
    sources: Vec<KeySource>,
    /// Names only the places a key is looked for: never a value the caller sent.
    missing: Arc<str>,
    /// `/openapi.json`, its security schemes these sources.
    openapi: Bytes,
    /// Its entity tag: a strong one, from its SHA-256, so a reload that changes the document
    /// changes the tag and one that does not keeps it.
    openapi_etag: HeaderValue,
}

impl Lookup {
    fn new(configured: &[KeySource]) -> Lookup {
        let sources: Vec<KeySource> = configured
            .iter()
            .filter(|s| !matches!(s, KeySource::Json(_)))
            .cloned()
            .collect();
        let openapi = Bytes::from(
            serde_json::to_vec(&crate::openapi::document_for(&sources)).unwrap_or_default(),
        );
        let digest = tollgate_core::KeyHash::of(&openapi).to_hex();
        Lookup {
            missing: missing_message(&sources).into(),
            // 32 hex digits: always a valid header value.
            openapi_etag: HeaderValue::try_from(format!("\"{}\"", &digest[..32]))
                .unwrap_or_else(|_| HeaderValue::from_static("\"openapi\"")),
            openapi,
            sources,
        }
    }
}

fn missing_message(sources: &[KeySource]) -> String {
    key_missing_message(sources).unwrap_or_else(|| {
        "No API key was given, and this gateway reads no header, bearer or query parameter for \
         one on the account API: ask the operator to configure [keys] sources."
            .to_owned()
    })
}

impl KeySources {
    /// The sources of `[keys] sources` (the `json:` ones are skipped).
    pub fn new(configured: &[KeySource]) -> KeySources {
        KeySources {
            current: ArcSwap::from_pointee(Lookup::new(configured)),
        }
    }

    /// Puts new sources in force (a config reload); requests already past the look-up keep theirs.
    pub fn set(&self, configured: &[KeySource]) {
        self.current.store(Arc::new(Lookup::new(configured)));
    }

    /// `/openapi.json` for the sources in force, and its entity tag.
    pub(crate) fn openapi(&self) -> (Bytes, HeaderValue) {
        let l = self.current.load();
        (l.openapi.clone(), l.openapi_etag.clone())
    }

    /// Whether any source in force can carry a key to the account API.
    pub fn any(&self) -> bool {
        !self.current.load().sources.is_empty()
    }

    /// The caller's key from the first source that holds one (an empty value holds none, as at
    /// the edge); `key_missing`, naming the sources, if none does.
    pub(crate) fn find(&self, req: &Request<Bytes>) -> Result<Vec<u8>, ApiError> {
        let lookup = self.current.load();
        for source in &lookup.sources {
            match source {
                KeySource::Header(name) => {
                    if let Some(v) = req.headers().get(name.as_str()) {
                        let v = v.as_bytes().trim_ascii();
                        if !v.is_empty() {
                            return Ok(v.to_vec());
                        }
                    }
                }
                KeySource::Bearer => {
                    let value = req.headers().get(AUTHORIZATION);
                    if let Some(key) = value.and_then(|v| bearer_token(v.as_bytes().trim_ascii())) {
                        return Ok(key.to_vec());
                    }
                }
                KeySource::Query(name) => {
                    let found = query_param(req.uri().query(), name)
                        .map_err(|_| ApiError::Deny(DenyReason::KeyUnknown))?;
                    if let Some(k) = found.filter(|k| !k.is_empty()) {
                        return Ok(k.into_bytes());
                    }
                }
                KeySource::Json(_) => {}
            }
        }
        Err(ApiError::KeyMissing(lookup.missing.clone()))
    }
}

impl Default for KeySources {
    /// The default `[keys] sources` (`x-api-key`, bearer, `x-authentication-token`, `apiKey`).
    fn default() -> KeySources {
        KeySources::new(&KeysConfig::default().sources)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<Bytes> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Bytes::new()).unwrap()
    }

    #[test]
    fn configured_order_first_hit_wins() {
        let s = KeySources::new(&[
            KeySource::Query("k".into()),
            KeySource::Header("x-token".into()),
            KeySource::Json("apiKey".into()),
        ]);
        let both = req("/v1/me?k=from-query", &[("x-token", "from-header")]);
        assert_eq!(s.find(&both).unwrap(), b"from-query");
        let header = req("/v1/me?k=", &[("x-token", " from-header ")]);
        assert_eq!(s.find(&header).unwrap(), b"from-header");
        // Not configured: not looked at.
        let other = req(
            "/v1/me?apiKey=a",
            &[("x-api-key", "b"), ("authorization", "Bearer c")],
        );
        let e = s.find(&other).unwrap_err();
        assert_eq!(e.code(), "key_missing");
        assert_eq!(
            e.to_string(),
            "No API key was given: send it in the k query parameter, or the x-token header."
        );
        s.set(&[KeySource::Bearer]);
        assert_eq!(s.find(&other).unwrap(), b"c");
    }

    #[test]
    fn the_default_message_names_the_default_sources() {
        let e = KeySources::default().find(&req("/v1/me", &[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "No API key was given: send it in the x-api-key header, an Authorization: Bearer \
             header, the x-authentication-token header, or the apiKey query parameter."
        );
        let json_only = KeySources::new(&[KeySource::Json("apiKey".into())]);
        assert!(!json_only.any());
        assert!(json_only
            .find(&req("/v1/me", &[]))
            .unwrap_err()
            .to_string()
            .contains("[keys] sources"));
    }
}
