//! SIGHUP: re-read `gateway.toml` and apply what can change under running connections (routes,
//! cost rules, key sources (data plane and account API), `charge_on`, the `[limits]` defaults, access-log sampling, the TLS
//! certificate). A file that fails `check` changes nothing and every problem is logged; keys that
//! only take effect on a restart (listeners, store, cache, ...) are logged as such and keep their
//! running values.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tollgate_api::KeySources;
use tollgate_config::Config;
use tollgate_meter::{Metering, Metrics};
use tollgate_proxy::forward::Upstreams;
use tollgate_proxy::{AccessLog, Proxy, ProxySlot, TlsTerminator};
use tollgate_store::KeyCache;

/// Everything a reload needs to build a new [`Proxy`] next to the running one.
pub(crate) struct Reloader {
    /// `None` for `tollgate dev`, which re-reads no file (see `no_file`).
    pub path: Option<PathBuf>,
    /// Logged on SIGHUP when there is no `path`: why nothing is reloaded.
    pub no_file: String,
    /// The configuration in force (restart-only keys as started).
    pub running: Config,
    pub slot: Arc<ProxySlot>,
    pub cache: Arc<KeyCache>,
    pub metrics: Arc<Metrics>,
    pub metering: Arc<Metering>,
    pub client: Upstreams,
    pub access: Arc<AccessLog>,
    pub tls: Option<Arc<TlsTerminator>>,
    /// The account API's key sources (`[keys] sources`, as the proxy's).
    pub key_sources: Arc<KeySources>,
}

impl Reloader {
    /// Re-reads the file and applies it. `false` when the running config stayed as it was.
    pub fn reload(&mut self) -> bool {
        let Some(path) = self.path.clone() else {
            tracing::warn!("SIGHUP: {}", self.no_file);
            return false;
        };
        let applied = self.apply(&path);
        self.metrics.reloaded(applied);
        applied
    }

    fn apply(&mut self, path: &std::path::Path) -> bool {
        let path = path.to_path_buf();
        let new = match tollgate_config::load(&path) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors {
                    tracing::warn!(
                        file = %path.display(), path = %e.path, problem = %e.message, fix = %e.fix,
                        "config reload refused: {e}"
                    );
                }
                tracing::warn!(
                    file = %path.display(), problems = errors.len(),
                    "config reload refused; the running config stays in force"
                );
                return false;
            }
        };
        let (mut next, restart_only) = reloadable(&self.running, new);

        // Built before anything changes, so a failure leaves the running proxy untouched.
        let proxy = match Proxy::new(
            &next,
            self.cache.clone(),
            &self.metrics,
            Some(self.metering.clone()),
            self.client.clone(),
        ) {
            Ok(p) => p.with_access_log(self.access.clone()),
            Err(e) => {
                tracing::warn!(
                    file = %path.display(), error = %e,
                    "config reload refused; the running config stays in force"
                );
                return false;
            }
        };
        if let (Some(tls), Some(files)) = (&self.tls, &next.proxy.tls) {
            match tls.reload(&files.cert, &files.key) {
                Ok(()) => tracing::info!(
                    cert = %files.cert.display(),
                    "TLS certificate re-read; new connections get it"
                ),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "TLS certificate not replaced; the running certificate stays in force"
                    );
                    let (cert, key) = tls.paths();
                    next.proxy.tls = Some(tollgate_config::TlsConfig { cert, key });
                }
            }
        }
        self.metering
            .limits
            .set_defaults(next.limits.parent, next.limits.child);
        self.access
            .set(next.logging.access_sample, next.logging.refusals_per_second);
        self.slot.store(Arc::new(proxy));
        self.key_sources.set(&next.keys.sources);
        for key in restart_only {
            tracing::warn!(
                key,
                "changed in {} but takes effect only after a restart; the running value stays",
                path.display()
            );
        }
        tracing::info!(
            file = %path.display(), routes = next.routes.len(),
            "config reloaded: new requests use the new routes, limits and prices"
        );
        self.running = next;
        true
    }
}

/// `new` with every key that cannot change while running put back to its `running` value, and the
/// names of those that differed.
pub(crate) fn reloadable(running: &Config, new: Config) -> (Config, Vec<&'static str>) {
    let mut next = new;
    let mut restart = Vec::new();
    macro_rules! keep {
        ($($field:ident).+, $name:expr) => {
            if next.$($field).+ != running.$($field).+ {
                restart.push($name);
                next.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!(proxy.listen, "proxy.listen");
    keep!(proxy.max_header_bytes, "proxy.max_header_bytes");
    keep!(proxy.upstream_idle_per_host, "proxy.upstream_idle_per_host");
    keep!(proxy.workers, "proxy.workers");
    keep!(proxy.connect_timeout, "proxy.connect_timeout");
    keep!(proxy.drain_timeout, "proxy.drain_timeout");
    // The certificate files may change (they are re-read); TLS on or off is a new listener.
    if next.proxy.tls.is_some() != running.proxy.tls.is_some() {
        restart.push("proxy.tls (turning TLS on or off)");
        next.proxy.tls = running.proxy.tls.clone();
    }
    keep!(account_api.listen, "account_api.listen");
    keep!(ops.listen, "ops.listen");
    keep!(store, "store");
    keep!(cache, "cache");
    keep!(metering.flush_interval, "metering.flush_interval");
    keep!(
        metering.max_unflushed_credits,
        "metering.max_unflushed_credits"
    );
    keep!(metrics, "metrics");
    keep!(invitations, "invitations");
    keep!(logging.format, "logging.format");
    // The account API lists each pool's products as they were at start-up.
    if pool_products(&next) != pool_products(running) {
        restart.push("routes (the products per pool that GET /v1/subscriptions lists)");
    }
    (next, restart)
}

fn pool_products(config: &Config) -> BTreeMap<&str, Vec<&str>> {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &config.routes {
        if let (Some(pool), Some(product)) = (&r.pool, &r.product) {
            let products = map.entry(pool.as_str()).or_default();
            if !products.contains(&product.as_str()) {
                products.push(product.as_str());
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const BASE: &str = r#"
[proxy]
listen = "127.0.0.1:8080"
[limits]
child = { rps = 5, burst = 5 }
[[routes]]
prefix = "/w"
upstream = "http://127.0.0.1:1"
product = "whois"
credits = 1
"#;

    #[test]
    fn routes_limits_and_sampling_apply_listeners_and_store_wait_for_a_restart() {
        let running = tollgate_config::parse(BASE).unwrap();
        let changed = BASE
            .replace("127.0.0.1:8080", "127.0.0.1:9999")
            .replace("rps = 5", "rps = 7")
            .replace("credits = 1", "credits = 3")
            .replace(
                "[limits]",
                "[logging]\nformat = \"json\"\naccess_sample = 0.5\n[cache]\nmax_staleness = \"1s\"\n[limits]",
            );
        let (next, restart) = reloadable(&running, tollgate_config::parse(&changed).unwrap());
        assert_eq!(restart, vec!["proxy.listen", "cache", "logging.format"]);
        assert_eq!(next.proxy.listen, running.proxy.listen);
        assert_eq!(next.cache, running.cache);
        assert_eq!(next.logging.format, running.logging.format);
        assert_eq!(next.routes[0].credits, 3);
        assert_eq!(next.limits.child.rps, 7);
        assert_eq!(next.logging.access_sample, 0.5);
    }

    #[test]
    fn a_changed_listener_is_named_by_its_key() {
        let running = tollgate_config::parse(BASE).unwrap();
        let moved = format!(
            "[ops]\nlisten = \"127.0.0.1:9999\"\n[account_api]\nlisten = \"127.0.0.1:9998\"\n{BASE}"
        );
        let (next, restart) = reloadable(&running, tollgate_config::parse(&moved).unwrap());
        assert_eq!(restart, vec!["account_api.listen", "ops.listen"]);
        assert_eq!(next.ops, running.ops);
    }

    #[test]
    fn a_new_product_is_applied_but_noted_for_the_account_api() {
        let running = tollgate_config::parse(BASE).unwrap();
        let more = format!(
            "{BASE}\n[[routes]]\nprefix = \"/d\"\nupstream = \"http://127.0.0.1:1\"\nproduct = \"dns\"\n"
        );
        let (next, restart) = reloadable(&running, tollgate_config::parse(&more).unwrap());
        assert_eq!(next.routes.len(), 2);
        assert_eq!(restart.len(), 1);
        assert!(restart[0].starts_with("routes"));
        let (_, none) = reloadable(&running, running.clone());
        assert!(none.is_empty());
    }
}
