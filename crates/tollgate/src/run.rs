//! Wiring: open the store, build the cache, proxy and APIs, bind the three listeners, follow the
//! change feed, reload the config on SIGHUP, and shut everything down in order on SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate_api::{ApiKind, ApiState, KeySources};
use tollgate_config::{Config, LogFormat, OnStoreDown, StoreConfig};
use tollgate_meter::{Credits, Meter, Metering, Metrics, RateLimits};
use tollgate_proxy::parse_errors::JsonParseErrors;
use tollgate_proxy::{AccessLog, Proxy, ProxySlot, ServeOptions, TlsTerminator};
use tollgate_store::{CacheConfig, EmbeddedStore, KeyCache, Store};

use crate::reload::Reloader;

/// Upper bound of one credit lease (see `tollgate_meter::credits`).
const LEASE_SLICE: u64 = 100;
/// How long shutdown keeps retrying the last usage flush.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(20);

/// Logs to stderr in `format` (`[logging] format`), unless `TOLLGATE_LOG_FORMAT` (`text` or
/// `json`) says otherwise; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let env = std::env::var("TOLLGATE_LOG_FORMAT").ok();
    let format = match env.as_deref() {
        Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        _ => format,
    };
    // Colours only on a terminal: a log file or a collector gets plain text (NO_COLOR also wins).
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        // Fields at the top level of each object, where log shippers look for them.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
    if let Some(other) = env.filter(|v| v != "json" && v != "text") {
        tracing::warn!(
            value = %other,
            "TOLLGATE_LOG_FORMAT is neither \"text\" nor \"json\"; using [logging] format"
        );
    }
}

pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::stderr(format_args!("tollgate: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// `tollgate run`: `path` is re-read on SIGHUP.
pub fn run(config: Config, path: PathBuf, ports: Ports) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let store = open_store(&config).await?;
        let gateway = Gateway::start(config, store, ports).await?;
        gateway.reload_from(path).run_until_signal().await
    })
}

pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match &config.store {
        StoreConfig::Embedded { path } => {
            let store = EmbeddedStore::open(path)
                .with_context(|| format!("opening the embedded store at {}", path.display()))?;
            Ok(Arc::new(store))
        }
        StoreConfig::Redis {
            url,
            cluster,
            prefix,
        } => {
            // The URL is not repeated in the error: it may carry a password.
            let what = match url {
                Some(_) => "connecting to Redis (store.url)".to_owned(),
                None => format!(
                    "connecting to the Redis Cluster ({} seed nodes)",
                    cluster.len()
                ),
            };
            let store =
                tollgate_store::redis_store::RedisStore::connect(url.as_deref(), cluster, prefix)
                    .await
                    .context(what)?;
            Ok(Arc::new(store))
        }
    }
}

/// Whether a gateway may start on addresses another process already listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// Refuse to start if any of the three is in use: a second, unrelated gateway must not
    /// quietly join the first one's `SO_REUSEPORT` groups and take half of its connections.
    Own,
    /// `tollgate run --takeover`: the new process of a same-host rolling restart joins the
    /// running one's groups; SIGTERM to the old process then hands the ports over.
    TakeOver,
}

/// Every listener joins its port's `SO_REUSEPORT` group (the data plane's workers share the proxy
/// port that way, and a rolling restart's new process joins all three with `--takeover`), so
/// unless `ports` says take over, each address is first checked to be free of other processes.
fn check_free(ports: Ports, listeners: [(&str, SocketAddr); 3]) -> anyhow::Result<()> {
    if ports == Ports::TakeOver {
        return Ok(());
    }
    for (what, addr) in listeners {
        match tollgate_proxy::ensure_unbound(addr) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
                "cannot listen on {addr} ({what}): address in use by another process (to start \
                 beside a running Tollgate on its ports, a rolling restart: tollgate run --takeover)"
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr} ({what})")),
        }
    }
    Ok(())
}

fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    tollgate_proxy::bind(addr).with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// A running gateway: its listeners' addresses and the handles to stop it.
pub struct Gateway {
    pub proxy_addr: SocketAddr,
    pub account_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    /// `/readyz` answers 503 once this is set (at the start of shutdown).
    draining: Arc<AtomicBool>,
    /// The ops listener outlives the drain: it stops only when this turns `true`, just before
    /// the process exits, so `/healthz` and `/metrics` answer all through the drain and flush.
    ops_stop: watch::Sender<bool>,
    ops: JoinHandle<()>,
    flusher: JoinHandle<()>,
    metering: Arc<Metering>,
    background: Vec<JoinHandle<()>>,
    access: Arc<AccessLog>,
    reloader: Reloader,
    signals: Signals,
}

/// Installed before the gateway reports itself listening, so a signal sent as soon as it is up is
/// never met by the default action (SIGHUP's would end the process).
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }
}

/// The account and ops listeners' connections: hyper's own parse-error answers get the APIs'
/// JSON body, as the data plane's do.
fn api_conn(stream: TcpStream) -> JsonParseErrors<TcpStream> {
    JsonParseErrors::api(stream)
}

async fn shutdown_signal(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl Gateway {
    pub async fn start(
        config: Config,
        store: Arc<dyn Store>,
        ports: Ports,
    ) -> anyhow::Result<Gateway> {
        // Before anything is bound or started, so a refusal leaves nothing half up.
        check_free(
            ports,
            [
                ("proxy", config.proxy.listen),
                ("account_api", config.account_api.listen),
                ("ops", config.ops.listen),
            ],
        )?;
        let metrics = Metrics::new();
        let cache = Arc::new(KeyCache::new(
            store.clone(),
            CacheConfig {
                max_staleness: config.cache.max_staleness,
                negative_ttl: config.cache.negative_ttl,
                serve_stale_when_down: config.cache.on_store_down == OnStoreDown::ServeCached,
            },
        ));
        {
            let lag = metrics.revocation_lag.clone();
            cache.set_lag_observer(move |secs| lag.observe(secs));
        }
        {
            let cache = cache.clone();
            metrics.on_scrape(move |m| {
                m.key_cache_entries.set(cache.len() as i64);
                let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                tollgate_meter::metrics::set_counter(
                    &m.key_cache_lookups.with_label_values(&["hit"]),
                    load(&cache.hits),
                );
                tollgate_meter::metrics::set_counter(
                    &m.key_cache_lookups.with_label_values(&["miss"]),
                    load(&cache.misses),
                );
                tollgate_meter::metrics::set_counter(
                    &m.key_cache_lookups.with_label_values(&["negative_hit"]),
                    load(&cache.negative_hits),
                );
                m.store_up.set(i64::from(cache.store_up()));
            });
        }
        let client = tollgate_proxy::forward::upstreams(
            config.proxy.connect_timeout,
            config.proxy.upstream_idle_per_host,
            std::env::var_os("TOLLGATE_UPSTREAM_CA")
                .as_deref()
                .map(std::path::Path::new),
        )?;
        let meter = Arc::new(Meter::new(
            store.clone(),
            config.metering.max_unflushed_credits,
        ));
        let metering = Arc::new(Metering {
            meter: meter.clone(),
            limits: RateLimits::new(config.limits.parent, config.limits.child),
            credits: Credits::new(store.clone(), LEASE_SLICE),
        });
        {
            let metering = metering.clone();
            cache.set_subscriptions_observer(move |tenant| {
                metering.credits.subscriptions_changed(tenant);
            });
        }
        {
            let meter = meter.clone();
            let (per_key, max_series) = (config.metrics.per_key, config.metrics.max_key_series);
            metrics.on_scrape(move |m| {
                m.usage_unflushed_credits
                    .set(meter.unflushed_credits() as i64);
                m.export_usage(&meter.totals(), per_key, max_series);
            });
        }
        let access = Arc::new(AccessLog::new(
            config.logging.access_sample,
            config.logging.refusals_per_second,
        ));
        let tls = match &config.proxy.tls {
            None => None,
            Some(t) => Some(Arc::new(
                // `main` has loaded them once already (as `check` does); this can only fail if
                // the files changed since.
                TlsTerminator::load(&t.cert, &t.key)
                    .map_err(|e| anyhow::anyhow!("{}: {e}; {}", e.toml_path(), e.fix()))?,
            )),
        };
        let proxy = Proxy::new(
            &config,
            cache.clone(),
            &metrics,
            Some(metering.clone()),
            client.clone(),
        )?
        .with_access_log(access.clone());
        let proxy: Arc<ProxySlot> = Arc::new(ProxySlot::from_pointee(proxy));

        let operator_token = std::env::var("TOLLGATE_OPERATOR_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        if operator_token.is_none() {
            tracing::warn!(
                "TOLLGATE_OPERATOR_TOKEN is not set: the operator API refuses every call"
            );
        }
        let mut api = ApiState::new(store.clone(), cache.clone(), metrics.clone());
        api.operator_token = operator_token;
        api.invitation_ttl = config.invitations.ttl;
        api.key_sources = Arc::new(KeySources::new(&config.keys.sources));
        if !api.key_sources.any() {
            tracing::warn!(
                "[keys] sources has no header, bearer or query source: the account API accepts no key"
            );
        }
        let key_sources = api.key_sources.clone();
        for r in &config.routes {
            if let (Some(pool), Some(product)) = (&r.pool, &r.product) {
                let products = api.pool_products.entry(pool.clone()).or_default();
                if !products.contains(product) {
                    products.push(product.clone());
                }
            }
        }
        let routes_loaded = api.routes_loaded.clone();
        let draining = api.draining.clone();
        let api = Arc::new(api);

        let workers = match config.proxy.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let (tx, rx) = watch::channel(false);
        let (ops_stop, ops_rx) = watch::channel(false);
        let data_plane = tollgate_proxy::Workers::start(
            config.proxy.listen,
            workers,
            proxy.clone(),
            ServeOptions {
                max_header_bytes: config.proxy.max_header_bytes,
                drain: config.proxy.drain_timeout,
                tls: tls.clone(),
            },
            rx.clone(),
        )
        .with_context(|| format!("cannot listen on {} (proxy)", config.proxy.listen))?;
        let account_l = bind("account_api", config.account_api.listen)?;
        let ops_l = bind("ops", config.ops.listen)?;
        let (proxy_addr, account_addr, ops_addr) = (
            data_plane.local_addr(),
            account_l.local_addr()?,
            ops_l.local_addr()?,
        );

        let servers = vec![
            tokio::spawn(data_plane.join()),
            tokio::spawn(tollgate_api::serve(
                account_l,
                ApiKind::Account,
                api.clone(),
                api_conn,
                shutdown_signal(rx.clone()),
            )),
        ];
        let ops = tokio::spawn(tollgate_api::serve(
            ops_l,
            ApiKind::Ops,
            api.clone(),
            api_conn,
            shutdown_signal(ops_rx),
        ));
        let background = vec![tokio::spawn(
            cache.clone().follow_feed(shutdown_signal(rx.clone())),
        )];
        let flusher = tokio::spawn(
            meter
                .clone()
                .run_flusher(config.metering.flush_interval, shutdown_signal(rx.clone())),
        );
        {
            let metering = metering.clone();
            let access = access.clone();
            let stop = shutdown_signal(rx.clone());
            tokio::spawn(async move {
                tokio::pin!(stop);
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tick.tick() => {
                            access.report_suppressed();
                            metering.credits.release_idle(false).await;
                        }
                    }
                }
            });
        }
        let signals = Signals::install()?;
        routes_loaded.store(true, Ordering::Relaxed);
        tracing::info!(
            proxy = %proxy_addr, account_api = %account_addr, ops = %ops_addr,
            store = store.backend(), routes = config.routes.len(), workers,
            tls = tls.is_some(),
            "tollgate is listening"
        );
        let reloader = Reloader {
            path: None,
            no_file: "this gateway was not started from a config file; nothing to reload".into(),
            running: config,
            slot: proxy,
            cache,
            metrics,
            metering: metering.clone(),
            client,
            access: access.clone(),
            tls,
            key_sources,
        };
        Ok(Gateway {
            proxy_addr,
            account_addr,
            ops_addr,

            shutdown: tx,
            servers,
            draining,
            ops_stop,
            ops,
            flusher,
            metering,
            background,
            access,
            reloader,
            signals,
        })
    }

    /// SIGHUP re-reads this file (see `reload.rs`).
    pub fn reload_from(mut self, path: PathBuf) -> Gateway {
        self.reloader.path = Some(path);
        self
    }

    /// Started without a file to re-read: SIGHUP logs `why` and changes nothing.
    pub fn without_reload(mut self, why: String) -> Gateway {
        self.reloader.path = None;
        self.reloader.no_file = why;
        self
    }

    /// Re-reads the config file now, as SIGHUP does. `false`: the running config stayed.
    pub fn reload(&mut self) -> bool {
        self.reloader.reload()
    }

    /// Reloads on SIGHUP; on SIGTERM or SIGINT drains and stops.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = self.signals.term.recv() => break,
                _ = self.signals.int.recv() => break,
                _ = self.signals.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    self.reload();
                }
            }
        }
        tracing::info!("signal received: draining in-flight requests");
        self.stop().await
    }

    /// Drains and stops: `/readyz` turns 503 and the data plane and account API stop accepting at
    /// once; in-flight requests finish, usage is flushed and credit slices returned; the ops
    /// listener (health, metrics, operator API) closes last.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.draining.store(true, Ordering::Release);
        let _ = self.shutdown.send(true);
        for s in self.servers {
            let _ = s.await;
        }
        // Every request has been answered: now nothing more can be metered.
        let _ = self.flusher.await;
        self.access.report_suppressed();
        let left = self.metering.meter.flush_all(FINAL_FLUSH).await;
        // Credit slices go back too, sent again while the store does not answer (a brief outage
        // would otherwise strand them), within the same bound as the usage.
        let until = std::time::Instant::now() + FINAL_FLUSH;
        while !self.metering.credits.release_idle(true).await {
            if std::time::Instant::now() >= until {
                tracing::error!(
                    "the store did not take back this node's leased credits before the deadline"
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        for b in self.background {
            let _ = b.await;
        }
        let _ = self.ops_stop.send(true);
        let _ = self.ops.await;
        if left > 0 {
            tracing::error!(
                unflushed_credits = left,
                "the store did not take the last usage before the deadline"
            );
            anyhow::bail!("{left} metered credits could not be written to the store");
        }
        tracing::info!("stopped; all usage flushed");
        Ok(())
    }
}
