//! Notes on a valid config that depend on where it runs (secrets, files) or are merely unwise.
//! Never errors: `tollgate check` may run on a build host that holds none of the secrets. (The
//! `[proxy.tls]` files are not looked at here: `tollgate check` loads them with the proxy's code and
//! reports what `run` would refuse as errors.)

use std::ffi::OsString;

use crate::model::{Config, KeySource, Scheme, UpstreamAuthTarget};

/// Non-fatal notes on `config`, each a line starting with the TOML path it is about.
pub fn warnings(config: &Config) -> Vec<String> {
    warnings_with(config, &|name| std::env::var_os(name))
}

/// [`warnings`] with the environment passed in, so tests control it.
pub(crate) fn warnings_with(
    config: &Config,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Vec<String> {
    let mut out = Vec::new();
    if config
        .keys
        .sources
        .iter()
        .all(|s| matches!(s, KeySource::Json(_)))
    {
        out.push(
            "keys.sources: only json: sources: the account API, which never reads a key from a \
             body, accepts no key; add a header, bearer or query source"
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
                "routes[{i}].upstream_auth.env: {} is not set in this environment; `tollgate run` \
                 refuses to start without it, so set it where the gateway runs",
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
            warnings_with(&config, &env),
            vec![
                "keys.forward: true sends every caller's Tollgate key on to the upstreams",
                "routes[1].upstream_auth.env: UNSET_KEY is not set in this environment; \
                 `tollgate run` refuses to start without it, so set it where the gateway runs",
                "routes[1].upstream_auth: the credential (header x-api-key) goes to \
                 http://b.internal:8080 unencrypted",
                "routes[2].upstream_auth.env: EMPTY_KEY is set but empty",
            ]
        );
    }

    #[test]
    fn missing_tls_files_are_not_warnings() {
        // `tollgate check` reports them as errors (tollgate_proxy::tls::problems).
        let config = ok(&format!(
            "[proxy.tls]\ncert = \"/nowhere/c.pem\"\nkey = \"k.pem\"\n{}",
            crate::tests::ROUTE
        ));
        assert!(warnings_with(&config, &env).is_empty());
    }

    #[test]
    fn json_sources_alone_leave_the_account_api_without_a_key() {
        let config = ok(&format!(
            "[keys]\nsources = [\"json:apiKey\"]\n{}",
            crate::tests::ROUTE
        ));
        let w = warnings_with(&config, &env);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(
            w[0],
            "keys.sources: only json: sources: the account API, which never reads a key from a \
             body, accepts no key; add a header, bearer or query source"
        );
    }

    #[test]
    fn a_plain_config_has_none() {
        assert!(warnings(&ok(crate::tests::ROUTE)).is_empty());
    }
}
