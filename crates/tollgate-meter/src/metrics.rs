//! The Prometheus registry. Metric names are constants in [`names`]; hot-path series are resolved
//! once (per route and outcome) so a request only bumps an atomic.

use std::sync::Arc;

use parking_lot::RwLock;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric name Tollgate exports, in one place.
pub mod names {
    pub const REQUESTS_TOTAL: &str = "tollgate_requests_total";
    pub const ACCOUNT_REQUESTS_TOTAL: &str = "tollgate_account_requests_total";
    pub const ACCOUNT_CREDITS_TOTAL: &str = "tollgate_account_credits_total";
    pub const PARENT_CREDITS_TOTAL: &str = "tollgate_parent_credits_total";
    pub const REQUEST_DURATION_SECONDS: &str = "tollgate_request_duration_seconds";
    pub const UPSTREAM_DURATION_SECONDS: &str = "tollgate_upstream_duration_seconds";
    pub const KEY_CACHE_ENTRIES: &str = "tollgate_key_cache_entries";
    pub const KEY_CACHE_LOOKUPS_TOTAL: &str = "tollgate_key_cache_lookups_total";
    pub const STORE_UP: &str = "tollgate_store_up";
    pub const USAGE_UNFLUSHED_CREDITS: &str = "tollgate_usage_unflushed_credits";
    pub const REVOCATION_LAG_SECONDS: &str = "tollgate_revocation_lag_seconds";
    pub const CONFIG_RELOADS_TOTAL: &str = "tollgate_config_reloads_total";
    pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "tollgate_config_last_reload_successful";
    pub const CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS: &str =
        "tollgate_config_last_reload_success_timestamp_seconds";
    pub const BUILD_INFO: &str = "tollgate_build_info";
}

type ScrapeHook = Box<dyn Fn(&Metrics) + Send + Sync>;

/// The registry and the series every part of the gateway shares.
pub struct Metrics {
    pub registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub key_cache_entries: IntGauge,
    pub key_cache_lookups: IntCounterVec,
    pub store_up: IntGauge,
    pub usage_unflushed_credits: IntGauge,
    pub revocation_lag: Histogram,
    pub account_requests: IntCounterVec,
    pub account_credits: IntCounterVec,
    pub parent_credits: IntCounterVec,
    /// SIGHUP reloads by result (`success`, `failure`).
    pub config_reloads: IntCounterVec,
    /// 1 when the last reload (or the start) applied the file, 0 when the last one was refused.
    pub config_last_reload_successful: IntGauge,
    /// Unix time of the start or of the last reload that applied the file.
    pub config_last_reload_success_time: IntGauge,
    /// Accounts that have their own series (at most `max_key_series`, first come first served).
    series: parking_lot::Mutex<std::collections::HashSet<Arc<str>>>,
    hooks: RwLock<Vec<ScrapeHook>>,
    process: crate::process::ProcessMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new(
                names::REQUESTS_TOTAL,
                "Requests by route and outcome (admitted or an error code).",
            ),
            &["route", "outcome"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                names::REQUEST_DURATION_SECONDS,
                "Whole request as the client saw it.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                names::UPSTREAM_DURATION_SECONDS,
                "Upstream response time (to headers).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let key_cache_entries = IntGauge::new(
            names::KEY_CACHE_ENTRIES,
            "Keys held by the in-process cache.",
        )
        .expect("valid metric");
        let key_cache_lookups = IntCounterVec::new(
            Opts::new(
                names::KEY_CACHE_LOOKUPS_TOTAL,
                "Key cache look-ups by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let store_up = IntGauge::new(names::STORE_UP, "1 when the store answers, else 0.")
            .expect("valid metric");
        let usage_unflushed_credits = IntGauge::new(
            names::USAGE_UNFLUSHED_CREDITS,
            "Credits metered but not yet written to the store.",
        )
        .expect("valid metric");
        let revocation_lag = Histogram::with_opts(
            HistogramOpts::new(
                names::REVOCATION_LAG_SECONDS,
                "From a key-tree change's write (any node) to its application in this node's cache.",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )
        .expect("valid metric");
        let account_requests = IntCounterVec::new(
            Opts::new(
                names::ACCOUNT_REQUESTS_TOTAL,
                "Charged requests by account (id), parent and product.",
            ),
            &["account", "parent", "product"],
        )
        .expect("valid metric");
        let account_credits = IntCounterVec::new(
            Opts::new(
                names::ACCOUNT_CREDITS_TOTAL,
                "Charged credits by account (id), parent and product.",
            ),
            &["account", "parent", "product"],
        )
        .expect("valid metric");
        let parent_credits = IntCounterVec::new(
            Opts::new(
                names::PARENT_CREDITS_TOTAL,
                "Charged credits rolled up to the parent, by product.",
            ),
            &["parent", "product"],
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                names::CONFIG_RELOADS_TOTAL,
                "Configuration reloads (SIGHUP) by result: success, or failure (the running config stayed).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let config_last_reload_successful = IntGauge::new(
            names::CONFIG_LAST_RELOAD_SUCCESSFUL,
            "1 when the last reload (or the start) applied the file, 0 when the last reload was refused.",
        )
        .expect("valid metric");
        let config_last_reload_success_time = IntGauge::new(
            names::CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
            "Unix time of the start, or of the last reload that applied the file.",
        )
        .expect("valid metric");
        // Always 1; the label says which release answers (as `prometheus_build_info` does).
        let build_info = IntGaugeVec::new(
            Opts::new(
                names::BUILD_INFO,
                "The running build: always 1, with its version.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        config_last_reload_successful.set(1);
        config_last_reload_success_time.set(unix_now_s());
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        for c in [
            Box::new(config_reloads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(config_last_reload_successful.clone()),
            Box::new(config_last_reload_success_time.clone()),
            Box::new(build_info),
            Box::new(account_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(account_credits.clone()),
            Box::new(parent_credits.clone()),
            Box::new(revocation_lag.clone()),
            Box::new(requests_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(key_cache_entries.clone()),
            Box::new(key_cache_lookups.clone()),
            Box::new(store_up.clone()),
            Box::new(usage_unflushed_credits.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        let process = crate::process::ProcessMetrics::register(&registry);
        Arc::new(Metrics {
            registry,
            requests_total,
            request_duration,
            upstream_duration,
            key_cache_entries,
            key_cache_lookups,
            store_up,
            usage_unflushed_credits,
            revocation_lag,
            account_requests,
            account_credits,
            parent_credits,
            config_reloads,
            config_last_reload_successful,
            config_last_reload_success_time,
            series: parking_lot::Mutex::new(std::collections::HashSet::new()),
            hooks: RwLock::new(Vec::new()),
            process,
        })
    }

    /// Records a reload's result (see the `config_*` metrics).
    pub fn reloaded(&self, applied: bool) {
        let result = if applied { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
        self.config_last_reload_successful.set(i64::from(applied));
        if applied {
            self.config_last_reload_success_time.set(unix_now_s());
        }
    }

    /// The counter for one route and outcome, to resolve once and keep.
    pub fn request_counter(&self, route: &str, outcome: &str) -> IntCounter {
        self.requests_total.with_label_values(&[route, outcome])
    }

    pub fn request_histogram(&self, route: &str) -> Histogram {
        self.request_duration.with_label_values(&[route])
    }

    pub fn upstream_histogram(&self, route: &str) -> Histogram {
        self.upstream_duration.with_label_values(&[route])
    }

    /// Runs at every scrape, before encoding: copies gauges and counters kept elsewhere (the key
    /// cache's atomics, the meter's backlog) into the registry.
    pub fn on_scrape(&self, hook: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.hooks.write().push(Box::new(hook));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        for hook in self.hooks.read().iter() {
            hook(self);
        }
        self.process.update();
        let mut buf = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Metrics {
    /// Copies the meter's totals into the per-account and per-parent series. Accounts beyond
    /// `max_key_series` are summed under `account="_other"` (and `parent="_other"`, so a flood of
    /// tenants cannot grow the series either); the parent roll-up stays exact per parent.
    pub fn export_usage(
        &self,
        totals: &[crate::meter::SeriesTotal],
        per_key: bool,
        max_key_series: usize,
    ) {
        use std::collections::HashMap;
        let mut parents: HashMap<(&str, &str), u64> = HashMap::new();
        let mut other: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut series = self.series.lock();
        for t in totals {
            *parents.entry((&t.parent, &t.product)).or_default() += t.credits;
            if !per_key {
                continue;
            }
            let own = series.contains(&t.account)
                || (series.len() < max_key_series && series.insert(t.account.clone()));
            if own {
                let labels = [&*t.account, &*t.parent, &*t.product];
                set_counter(
                    &self.account_requests.with_label_values(&labels),
                    t.requests,
                );
                set_counter(&self.account_credits.with_label_values(&labels), t.credits);
            } else {
                let e = other.entry(&t.product).or_default();
                e.0 += t.requests;
                e.1 += t.credits;
            }
        }
        drop(series);
        for (product, (r, c)) in other {
            let labels = ["_other", "_other", product];
            set_counter(&self.account_requests.with_label_values(&labels), r);
            set_counter(&self.account_credits.with_label_values(&labels), c);
        }
        for ((parent, product), c) in parents {
            set_counter(
                &self.parent_credits.with_label_values(&[parent, product]),
                c,
            );
        }
    }
}

/// Sets a counter to an absolute value read from elsewhere (counters only move up).
pub fn set_counter(c: &IntCounter, value: u64) {
    let cur = c.get();
    if value > cur {
        c.inc_by(value - cur);
    }
}

fn unix_now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::SeriesTotal;

    fn t(account: &str, parent: &str, credits: u64) -> SeriesTotal {
        SeriesTotal {
            account: Arc::from(account),
            parent: Arc::from(parent),
            product: Arc::from("whois"),
            requests: 1,
            credits,
        }
    }

    #[test]
    fn accounts_beyond_the_series_limit_are_summed_and_parents_stay_exact() {
        let m = Metrics::new();
        let totals = [
            t("a1", "p1", 5),
            t("a2", "p1", 7),
            t("a3", "p2", 11),
            t("a4", "p2", 13),
        ];
        m.export_usage(&totals, true, 2);
        let text = m.render();
        assert!(text.contains(
            r#"tollgate_account_credits_total{account="a1",parent="p1",product="whois"} 5"#
        ));
        assert!(text.contains(
            r#"tollgate_account_credits_total{account="a2",parent="p1",product="whois"} 7"#
        ));
        assert!(!text.contains(r#"account="a3""#), "{text}");
        assert!(text.contains(
            r#"tollgate_account_credits_total{account="_other",parent="_other",product="whois"} 24"#
        ));
        assert!(text.contains(r#"tollgate_parent_credits_total{parent="p1",product="whois"} 12"#));
        assert!(text.contains(r#"tollgate_parent_credits_total{parent="p2",product="whois"} 24"#));
        // Later scrapes keep the same accounts in their own series and only move counters up.
        let grown = [
            t("a1", "p1", 6),
            t("a2", "p1", 7),
            t("a3", "p2", 20),
            t("a4", "p2", 13),
            t("a5", "p3", 1),
        ];
        m.export_usage(&grown, true, 2);
        let text = m.render();
        assert!(text.contains(
            r#"tollgate_account_credits_total{account="a1",parent="p1",product="whois"} 6"#
        ));
        assert!(text.contains(
            r#"tollgate_account_credits_total{account="_other",parent="_other",product="whois"} 34"#
        ));
        assert!(text.contains(r#"tollgate_parent_credits_total{parent="p3",product="whois"} 1"#));
        // No per-account series at all when per_key is off.
        let off = Metrics::new();
        off.export_usage(&totals, false, 10);
        assert!(!off.render().contains("tollgate_account_credits_total{"));
    }

    #[test]
    fn build_info_names_the_running_version() {
        let text = Metrics::new().render();
        let series = format!(
            "tollgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&series), "{text}");
    }
}
