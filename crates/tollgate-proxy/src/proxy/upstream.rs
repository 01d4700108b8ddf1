//! The upstream's request: its target (the key's query parameter out, the upstream's credential
//! in) and its fields, written as bytes (the fast path, HTTP/2 GET and HEAD) or edited in a header
//! map (hyper's path), by the same rules.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::Uri;
use tollgate_config::UpstreamAuthTarget;
use tollgate_store::Principal;

use super::fast::push_field;
use super::{
    Client, Proxy, RouteRuntime, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
    X_REQUEST_ID, X_TOLLGATE_ACCOUNT, X_TOLLGATE_PARENT,
};
use crate::respond::Refusal;
use crate::{extract, forward};

/// What an injected credential escapes in a query value: everything but RFC 3986's unreserved
/// characters, which stay as they are (a vendor key `at_...` goes out as `at_...`, not `at%5F...`).
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl Proxy {
    /// The HTTP/1.1 head of an HTTP/2 GET or HEAD for the upstream, with the fast path's field
    /// rules; split cookies joined (see `joined_cookies`).
    pub(super) fn upstream_head_h2(
        &self,
        parts: &http::request::Parts,
        rt: &RouteRuntime,
        principal: &Principal,
        client: &Client,
        request_id: &HeaderValue,
    ) -> Vec<u8> {
        let mut up = Vec::with_capacity(512);
        let target = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        self.write_request_start(
            parts.method.as_str(),
            target,
            parts.uri.query(),
            rt,
            &mut up,
        );
        let joined = joined_cookies(&parts.headers);
        let fields = || {
            parts
                .headers
                .iter()
                .filter(|(name, _)| joined.is_none() || *name != header::COOKIE)
                .map(|(name, value)| (name.as_str(), value.as_bytes()))
                .chain(joined.as_deref().map(|v| ("cookie", v)))
        };
        // The host the client addressed: `:authority` (a `host` field, if any, agrees with it:
        // see `request_host`).
        let client_host = match parts.uri.authority() {
            Some(a) => Some(a.as_str().as_bytes()),
            None => parts.headers.get(header::HOST).map(HeaderValue::as_bytes),
        };
        self.write_upstream_fields(
            fields,
            client_host,
            rt,
            principal,
            client,
            request_id.as_bytes(),
            &mut up,
        );
        up.extend_from_slice(b"\r\n");
        up
    }

    /// The upstream request line and its `host` field. `target` is the client's, in origin form,
    /// and `query` the part of it after the `?`: the target goes as it came unless
    /// [`Self::push_upstream_target`] rewrites it.
    pub(super) fn write_request_start(
        &self,
        method: &str,
        target: &str,
        query: Option<&str>,
        rt: &RouteRuntime,
        up: &mut Vec<u8>,
    ) {
        up.extend_from_slice(method.as_bytes());
        up.push(b' ');
        let path = &target[..target.len() - query.map_or(0, |q| q.len() + 1)];
        if !self.push_upstream_target(path, query, rt, up) {
            up.extend_from_slice(target.as_bytes());
        }
        up.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        up.extend_from_slice(rt.host_header.as_bytes());
        up.extend_from_slice(b"\r\n");
    }

    /// The upstream request's fields after its request line and `host`: the client's as they
    /// came, less hop-by-hop ones, Tollgate's own and the key's (unless the key is forwarded);
    /// then the attribution, the request id, the `x-forwarded-*` fields and the upstream's
    /// credential; not the blank line that ends them. Shared by the fast path (httparse's fields)
    /// and HTTP/2 GET and HEAD (a header map's). `fields` gives the client's fields, once more
    /// only when it sent `x-forwarded-for` more than once (to join them). `client_host`: the
    /// `Host` (or `:authority`) the client sent, for `x-forwarded-host`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_upstream_fields<'f, I>(
        &self,
        fields: impl Fn() -> I,
        client_host: Option<&[u8]>,
        rt: &RouteRuntime,
        principal: &Principal,
        client: &Client,
        request_id: &[u8],
        up: &mut Vec<u8>,
    ) where
        I: Iterator<Item = (&'f str, &'f [u8])>,
    {
        let auth_header = match &rt.auth {
            Some((UpstreamAuthTarget::Header(name), value)) => Some((name.as_str(), value)),
            _ => None,
        };
        // The client's first `x-forwarded-for`, and whether there were more.
        let (mut xff, mut more_xff): (Option<&[u8]>, bool) = (None, false);
        for (name, value) in fields() {
            if dropped_request_field(name)
                || (!self.forward_key
                    && self
                        .strip_headers
                        .iter()
                        .any(|h| h.as_str().eq_ignore_ascii_case(name)))
                || auth_header.is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                continue;
            }
            if name.eq_ignore_ascii_case("x-forwarded-for") {
                more_xff |= xff.is_some();
                xff.get_or_insert(value);
                continue;
            }
            if name.eq_ignore_ascii_case("authorization")
                && !self.forward_key
                && self.strip_bearer
                && extract::bearer_token(Some(value)).is_some()
            {
                continue;
            }
            push_field(up, name.as_bytes(), value);
        }
        let account = &principal.account;
        push_field(
            up,
            X_TOLLGATE_ACCOUNT.as_str().as_bytes(),
            account.id.as_bytes(),
        );
        push_field(
            up,
            X_TOLLGATE_PARENT.as_str().as_bytes(),
            principal.tenant.id.as_bytes(),
        );
        push_field(up, X_REQUEST_ID.as_str().as_bytes(), request_id);
        // Every value the client sent, in order, then its address (nginx's
        // `$proxy_add_x_forwarded_for`).
        up.extend_from_slice(X_FORWARDED_FOR.as_str().as_bytes());
        up.extend_from_slice(b": ");
        let mut push_hop = |value: &[u8]| {
            let value = value.trim_ascii();
            if !value.is_empty() {
                up.extend_from_slice(value);
                up.extend_from_slice(b", ");
            }
        };
        match xff {
            Some(_) if more_xff => fields()
                .filter(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-for"))
                .for_each(|(_, value)| push_hop(value)),
            Some(value) => push_hop(value),
            None => {}
        }
        up.extend_from_slice(client.ip.as_bytes());
        up.extend_from_slice(b"\r\n");
        // Set from the connection and the request, never the client's own.
        push_field(
            up,
            X_FORWARDED_PROTO.as_str().as_bytes(),
            client.proto().as_bytes(),
        );
        if let Some(host) = client_host {
            push_field(up, X_FORWARDED_HOST.as_str().as_bytes(), host);
        }
        if let Some((name, value)) = auth_header {
            push_field(up, name.as_bytes(), value.as_bytes());
        }
    }

    /// The upstream request target when it differs from the client's (`None`: pass it through;
    /// an HTTP/2 client's absolute URI is reduced to origin form too).
    pub(super) fn upstream_path_and_query(
        &self,
        uri: &Uri,
        rt: &RouteRuntime,
    ) -> Result<Option<PathAndQuery>, (Refusal, Option<u64>)> {
        let (path, query) = (uri.path(), uri.query());
        let mut target = Vec::new();
        if self.push_upstream_target(path, query, rt, &mut target) {
            return PathAndQuery::from_maybe_shared(Bytes::from(target))
                .map(Some)
                .map_err(|_| (Refusal::BadRequest, None));
        }
        if uri.scheme().is_none() && uri.authority().is_none() {
            return Ok(None);
        }
        Ok(Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        ))
    }

    /// Appends the upstream's request target to `out` if it differs from the client's: `path`,
    /// then the query less the key's parameters (unless the key is forwarded) and less the
    /// upstream credential's, each with one `&`, every other byte as it came (empty `&&` pairs
    /// too), then the credential. A query left empty loses its `?`. `false`, with `out`
    /// untouched: the client's target goes as it is.
    fn push_upstream_target(
        &self,
        path: &str,
        query: Option<&str>,
        rt: &RouteRuntime,
        out: &mut Vec<u8>,
    ) -> bool {
        let strip = !self.forward_key
            && !self.strip_query.is_empty()
            && query.is_some_and(|q| extract::has_param(q, &self.strip_query));
        let auth = match &rt.auth {
            Some((UpstreamAuthTarget::Query(name), value)) => Some((name.as_str(), value)),
            _ => None,
        };
        // The common case (a query without the key) is one read of it, nothing written.
        if !strip && auth.is_none() {
            return false;
        }
        out.reserve(path.len() + query.map_or(0, str::len) + 1);
        out.extend_from_slice(path.as_bytes());
        // The pairs kept, joined by `&` as they were: an empty one is kept too (`a&&b`), only a
        // query with nothing left in it is dropped.
        let start = out.len();
        out.push(b'?');
        let mut first = true;
        for pair in query.unwrap_or("").as_bytes().split(|&b| b == b'&') {
            let (name, _) = extract::split_pair(pair);
            if (strip && self.strip_query.iter().any(|n| n.as_bytes() == name))
                || auth.is_some_and(|(n, _)| n.as_bytes() == name)
            {
                continue;
            }
            if !first {
                out.push(b'&');
            }
            first = false;
            out.extend_from_slice(pair);
        }
        let empty = out.len() == start + 1;
        if empty {
            out.truncate(start);
        }
        let Some((name, value)) = auth else {
            return true;
        };
        out.push(if empty { b'?' } else { b'&' });
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        let enc = percent_encoding::utf8_percent_encode(value, QUERY_VALUE);
        for piece in enc {
            out.extend_from_slice(piece.as_bytes());
        }
        true
    }

    /// The client's fields made the upstream's, in place, by the rules of
    /// [`Self::write_upstream_fields`]; an HTTP/2 client's split cookies joined. `authority`: the
    /// client's target's (HTTP/2, or an HTTP/1.1 absolute-form target), which is the host it
    /// addressed in place of its `Host` field.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn prepare_headers(
        &self,
        h: &mut http::HeaderMap,
        http2: bool,
        authority: Option<&http::uri::Authority>,
        rt: &RouteRuntime,
        principal: &Principal,
        client: &Client,
        request_id: &HeaderValue,
    ) {
        forward::strip_hop_by_hop(h);
        if http2 {
            if let Some(v) = joined_cookies(h) {
                if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(v)) {
                    h.insert(header::COOKIE, v);
                }
            }
        }
        // Room for the fields added below, so they cost no rehash.
        h.reserve(8);
        // One pass finds what there is to take out (usually just the key's own field), so a
        // field that is not there costs no hashed removal.
        let (mut keys, mut spoofed) = (false, false);
        for k in h.keys() {
            if k == X_TOLLGATE_ACCOUNT || k == X_TOLLGATE_PARENT {
                spoofed = true;
            } else if self.strip_headers.contains(k) {
                keys = true;
            }
        }
        if !self.forward_key {
            if keys {
                for name in &self.strip_headers {
                    h.remove(name);
                }
            }
            if self.strip_bearer && extract::bearer(h.get(header::AUTHORIZATION)).is_some() {
                h.remove(header::AUTHORIZATION);
            }
        }
        // Nothing the client sends may pose as Tollgate's own attribution.
        if spoofed {
            h.remove(&X_TOLLGATE_ACCOUNT);
            h.remove(&X_TOLLGATE_PARENT);
        }
        let account = &principal.account.account;
        if let Ok(v) = HeaderValue::from_str(&account.id) {
            h.insert(X_TOLLGATE_ACCOUNT.clone(), v);
        }
        if let Ok(v) = HeaderValue::from_str(account.tenant_id()) {
            h.insert(X_TOLLGATE_PARENT.clone(), v);
        }
        h.insert(X_REQUEST_ID.clone(), request_id.clone());
        let host_field = h.insert(header::HOST, rt.host_header.clone());
        let client_host = match authority {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => host_field,
        };
        // Every value the client sent (all its fields, in order), then its address.
        let xff = {
            let mut prev = h
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .map(|v| v.as_bytes().trim_ascii())
                .filter(|v| !v.is_empty())
                .peekable();
            if prev.peek().is_none() {
                Some(client.ip.clone())
            } else {
                let ip = client.ip.as_bytes();
                let mut v = Vec::with_capacity(64);
                for p in prev {
                    v.extend_from_slice(p);
                    v.extend_from_slice(b", ");
                }
                v.extend_from_slice(ip);
                HeaderValue::from_maybe_shared(Bytes::from(v)).ok()
            }
        };
        match xff {
            Some(v) => h.insert(X_FORWARDED_FOR.clone(), v),
            None => h.remove(&X_FORWARDED_FOR),
        };
        h.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(client.proto()),
        );
        match client_host {
            Some(v) => h.insert(X_FORWARDED_HOST.clone(), v),
            None => h.remove(&X_FORWARDED_HOST),
        };
        if let Some((UpstreamAuthTarget::Header(name), value)) = &rt.auth {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                h.insert(n, v);
            }
        }
    }
}

/// HTTP/2 may split `cookie` into several fields; an HTTP/1.1 upstream must get them as one,
/// joined with "; " (RFC 9113, section 8.2.3). `None`: there are fewer than two.
fn joined_cookies(h: &http::HeaderMap) -> Option<Vec<u8>> {
    let mut cookies = h.get_all(header::COOKIE).iter();
    let first = cookies.next()?;
    let mut rest = cookies.peekable();
    rest.peek()?;
    let mut v = first.as_bytes().to_vec();
    for c in rest {
        v.extend_from_slice(b"; ");
        v.extend_from_slice(c.as_bytes());
    }
    Some(v)
}

/// Fields a client may send that never go upstream as they are: hop-by-hop ones, the ones
/// Tollgate sets itself (`host`, attribution, request id, `x-forwarded-proto` and `-host`).
fn dropped_request_field(name: &str) -> bool {
    const DROP: [&str; 12] = [
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "x-tollgate-account",
        "x-tollgate-parent",
        "x-request-id",
        "x-forwarded-proto",
        "x-forwarded-host",
    ];
    DROP.iter().any(|d| d.eq_ignore_ascii_case(name))
}
