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

/// The host a request names, lower-case and without its port (`Host` header, else the URI).
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a http::HeaderMap) -> Option<&'a str> {
    let raw = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.host())?;
    Some(host_of(raw))
}

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
        let mut h = http::HeaderMap::new();
        let uri: http::Uri = "/x".parse().unwrap();
        assert_eq!(request_host(&uri, &h), None);
        h.insert("host", "Example.com:8080".parse().unwrap());
        assert_eq!(request_host(&uri, &h), Some("Example.com"));
        h.insert("host", "[::1]:8080".parse().unwrap());
        assert_eq!(request_host(&uri, &h), Some("::1"));
        let abs: http::Uri = "http://a.example:1/x".parse().unwrap();
        assert_eq!(
            request_host(&abs, &http::HeaderMap::new()),
            Some("a.example")
        );
    }
}
