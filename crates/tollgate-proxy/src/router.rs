//! Route matching: the longest `prefix` that starts the path wins; among equal prefixes a route
//! with a matching `host` beats one without.

use tollgate_config::Route;

/// The routes, ordered so that the first match is the best one.
#[derive(Debug, Clone)]
pub struct Router {
    order: Vec<usize>,
    routes: Vec<Route>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Router {
        let mut order: Vec<usize> = (0..routes.len()).collect();
        order.sort_by(|&a, &b| {
            let (ra, rb) = (&routes[a], &routes[b]);
            rb.prefix
                .len()
                .cmp(&ra.prefix.len())
                .then(rb.host.is_some().cmp(&ra.host.is_some()))
                .then(a.cmp(&b))
        });
        Router { order, routes }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The index of the best route for this host (lower-case, no port) and path.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.order.iter().copied().find(|&i| {
            let r = &self.routes[i];
            path.starts_with(r.prefix.as_str())
                && match (&r.host, host) {
                    (None, _) => true,
                    (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                    (Some(_), None) => false,
                }
        })
    }
}

/// The host a request is for, by HTTP's rules; `Err` for a request that names it badly, which is
/// answered 400 before anything else (RFC 9112 section 3.2: an HTTP/1.1 request without `Host`, or
/// with more than one, or with a value that is not one). An absolute-form target's authority wins
/// over `Host` (section 3.2.2); an HTTP/2 request's `:authority` is its host, and a `host` field
/// naming another is malformed (RFC 9113 section 8.3.1). `Ok(None)`: an HTTP/1.0 request without
/// one, routed by the routes without a `host`.
pub fn request_host<'a>(
    version: http::Version,
    uri: &'a http::Uri,
    headers: &'a http::HeaderMap,
) -> Result<Option<&'a str>, BadHost> {
    let mut fields = headers.get_all(http::header::HOST).iter();
    let field = match (fields.next(), fields.next()) {
        (Some(_), Some(_)) => return Err(BadHost),
        (Some(v), None) => Some(v.to_str().map_err(|_| BadHost)?),
        (None, _) => None,
    };
    let field = field.map(host_of);
    match uri.host() {
        Some(authority) => {
            if version == http::Version::HTTP_2
                && field.is_some_and(|f| !f.eq_ignore_ascii_case(authority))
            {
                return Err(BadHost);
            }
            // `uri.host()` has no port; an IPv6 literal keeps its brackets, which `host_of` drops.
            Ok(Some(host_of(authority)))
        }
        None if field.is_none() && version == http::Version::HTTP_11 => Err(BadHost),
        None => Ok(field),
    }
}

/// A request whose host is missing, doubled or malformed: a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadHost;

/// The host of a `Host` field value: `[v6]:port`, `host:port`, `host`.
pub fn host_of(raw: &str) -> &str {
    if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tollgate_config::{Scheme, Upstream};

    fn route(prefix: &str, host: Option<&str>) -> Route {
        Route {
            name: prefix.into(),
            prefix: prefix.into(),
            host: host.map(Into::into),
            upstream: Upstream {
                scheme: Scheme::Http,
                host: "u".into(),
                port: 80,
                authority: "u".into(),
            },
            product: Some("p".into()),
            pool: Some("p".into()),
            credits: 1,
            cost_rules: vec![],
            timeout: Duration::from_secs(1),
            permission: None,
            upstream_auth: None,
        }
    }

    #[test]
    fn longest_prefix_then_host() {
        let r = Router::new(vec![
            route("/api", None),
            route("/api/v2", None),
            route("/api/v2", Some("rw.example.com")),
            route("/", None),
        ]);
        assert_eq!(r.find(None, "/api/v2/x"), Some(1));
        assert_eq!(r.find(Some("rw.example.com"), "/api/v2/x"), Some(2));
        assert_eq!(r.find(Some("RW.example.com"), "/api/v2/x"), Some(2));
        assert_eq!(r.find(Some("other"), "/api/v1"), Some(0));
        assert_eq!(r.find(None, "/zzz"), Some(3));
        let none = Router::new(vec![route("/api", None)]);
        assert_eq!(none.find(None, "/other"), None);
    }

    #[test]
    fn hosts() {
        use http::Version;
        let v11 = Version::HTTP_11;
        let mut h = http::HeaderMap::new();
        let uri: http::Uri = "/x".parse().unwrap();
        // HTTP/1.1 needs exactly one Host; HTTP/1.0 may go without.
        assert_eq!(request_host(v11, &uri, &h), Err(BadHost));
        assert_eq!(request_host(Version::HTTP_10, &uri, &h), Ok(None));
        h.insert("host", "Example.com:8080".parse().unwrap());
        assert_eq!(request_host(v11, &uri, &h), Ok(Some("Example.com")));
        h.insert("host", "[::1]:8080".parse().unwrap());
        assert_eq!(request_host(v11, &uri, &h), Ok(Some("::1")));
        h.append("host", "other.example".parse().unwrap());
        assert_eq!(request_host(v11, &uri, &h), Err(BadHost));
        assert_eq!(request_host(Version::HTTP_10, &uri, &h), Err(BadHost));
        let mut bad = http::HeaderMap::new();
        bad.insert("host", http::HeaderValue::from_bytes(b"a\xffb").unwrap());
        assert_eq!(request_host(v11, &uri, &bad), Err(BadHost));
        // An absolute-form target's authority wins over Host.
        let abs: http::Uri = "http://a.example:1/x".parse().unwrap();
        let mut other = http::HeaderMap::new();
        other.insert("host", "other.example".parse().unwrap());
        assert_eq!(request_host(v11, &abs, &other), Ok(Some("a.example")));
        assert_eq!(
            request_host(v11, &abs, &http::HeaderMap::new()),
            Ok(Some("a.example"))
        );
        let v6: http::Uri = "http://[::1]:1/x".parse().unwrap();
        assert_eq!(
            request_host(v11, &v6, &http::HeaderMap::new()),
            Ok(Some("::1"))
        );
        // HTTP/2: :authority is the host; a host field naming another is malformed.
        let v2 = Version::HTTP_2;
        assert_eq!(request_host(v2, &abs, &other), Err(BadHost));
        let mut same = http::HeaderMap::new();
        same.insert("host", "A.example:1".parse().unwrap());
        assert_eq!(request_host(v2, &abs, &same), Ok(Some("a.example")));
        assert_eq!(
            request_host(v2, &abs, &http::HeaderMap::new()),
            Ok(Some("a.example"))
        );
    }
}
