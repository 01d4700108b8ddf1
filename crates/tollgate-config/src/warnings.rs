//! Notes on a valid config that depend on where it runs (secrets, files) or are merely unwise.
//! Never errors: `tollgate check` may run on a build host that holds none of the secrets.

use std::ffi::OsString;
use std::path::Path;

use crate::model::{Config, KeySource, Scheme, UpstreamAuthTarget};

/// Non-fatal notes on `config`, each a line starting with the TOML path it is about.
pub fn warnings(config: &Config) -> Vec<String> {
    warnings_with(config, &|name| std::env::var_os(name), &|p| p.exists())
}

/// [`warnings`] with the environment and the file system passed in, so tests control both.
pub(crate) fn warnings_with(
    config: &Config,
    env: &dyn Fn(&str) -> Option<OsString>,
    exists: &dyn Fn(&Path) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(tls) = &config.proxy.tls {
        for (key, path) in [("cert", &tls.cert), ("key", &tls.key)] {
            if !exists(path) {
                out.push(format!(
                    "proxy.tls.{key}: {} does not exist here; the gateway will not start without it",
                    path.display()
                ));
            }
        }
    }
    if config
        .keys
        .sources
        .iter()
        .all(|s| matches!(s, KeySource::Json(_)))
    {
        out.push(
            "keys.sources: only json: sources: the account API, which never reads a key from a              body, accepts no key; add a header, bearer or query source"
                .to_owned(),
        );
    }
    if config.keys.forward {
        out.push(
            "keys.forward: true sends every caller's Tollgate key on to the upstreams".to_owned(),
        );
    }
    for (i, route) in config.routes.iter().enumerate() {
        let Some(auth) = &route.upstream_auth else {
            continue;
        };
        match env(&auth.env) {
            None => out.push(format!(
                "routes[{i}].upstream_auth.env: {} is not set in this environment; set it where \
                 the gateway runs",
                auth.env
            )),
            Some(v) if v.is_empty() => out.push(format!(
                "routes[{i}].upstream_auth.env: {} is set but empty",
                auth.env
            )),
            Some(_) => {}
        }
        if route.upstream.scheme == Scheme::Http {
            let target = match &auth.target {
                UpstreamAuthTarget::Query(q) => format!("query parameter {q}"),
                UpstreamAuthTarget::Header(h) => format!("header {h}"),
            };
            out.push(format!(
                "routes[{i}].upstream_auth: the credential ({target}) goes to http://{} unencrypted",
                route.upstream.authority
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::ok;

    const AUTH_ROUTES: &str = r#"
[[routes]]
prefix = "/a"
upstream = "https://a.example.com"
product = "a"
upstream_auth = { query = "apiKey", env = "SET_KEY" }

[[routes]]
prefix = "/b"
upstream = "http://b.internal:8080"
product = "b"
upstream_auth = { header = "x-api-key", env = "UNSET_KEY" }

[[routes]]
prefix = "/c"
upstream = "https://c.example.com"
product = "c"
upstream_auth = { header = "x-api-key", env = "EMPTY_KEY" }
"#;

    fn env(name: &str) -> Option<OsString> {
        match name {
            "SET_KEY" => Some("secret".into()),
            "EMPTY_KEY" => Some("".into()),
            _ => None,
        }
    }

    #[test]
    fn unset_env_plain_http_credentials_and_forwarded_keys() {
        let config = ok(&format!("[keys]\nforward = true\n{AUTH_ROUTES}"));
        assert_eq!(
            warnings_with(&config, &env, &|_| true),
            vec![
                "keys.forward: true sends every caller's Tollgate key on to the upstreams",
                "routes[1].upstream_auth.env: UNSET_KEY is not set in this environment; set it \
                 where the gateway runs",
                "routes[1].upstream_auth: the credential (header x-api-key) goes to \
                 http://b.internal:8080 unencrypted",
                "routes[2].upstream_auth.env: EMPTY_KEY is set but empty",
            ]
        );
    }

    #[test]
    fn missing_tls_files() {
        let config = ok(&format!(
            "[proxy.tls]\ncert = \"/nowhere/c.pem\"\nkey = \"k.pem\"\n{}",
            crate::tests::ROUTE
        ));
        assert_eq!(
            warnings_with(&config, &env, &|p| p == Path::new("k.pem")),
            vec!["proxy.tls.cert: /nowhere/c.pem does not exist here; the gateway will not start without it"]
        );
    }

    #[test]
    fn json_sources_alone_leave_the_account_api_without_a_key() {
        let config = ok(&format!(
            "[keys]\nsources = [\"json:apiKey\"]\n{}",
            crate::tests::ROUTE
        ));
        let w = warnings_with(&config, &env, &|_| true);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("keys.sources: only json: sources"),
            "{w:?}"
        );
    }

    #[test]
    fn a_plain_config_has_none() {
        assert!(warnings(&ok(crate::tests::ROUTE)).is_empty());
    }
}
