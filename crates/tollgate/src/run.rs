//! Wiring: open the store, build the cache, proxy and APIs, bind the three listeners, follow the
//! change feed, and shut everything down in order on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate_api::{ApiKind, ApiState};
use tollgate_config::{Config, OnStoreDown, StoreConfig};
use tollgate_meter::{Credits, Meter, Metering, Metrics, RateLimits};
use tollgate_proxy::Proxy;
use tollgate_store::{CacheConfig, EmbeddedStore, KeyCache, Store};

/// Upper bound of one credit lease (see `tollgate_meter::credits`).
const LEASE_SLICE: u64 = 100;
/// How long shutdown keeps retrying the last usage flush.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(20);

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("TOLLGATE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
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

/// `tollgate run`.
pub fn run(config: Config, _reserved: Option<()>) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let store = open_store(&config).await?;
        let gateway = Gateway::start(config, store).await?;
        gateway.run_until_signal().await
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

async fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// A running gateway: its listeners' addresses and the handles to stop it.
pub struct Gateway {
    pub proxy_addr: SocketAddr,
    pub account_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    flusher: JoinHandle<()>,
    metering: Arc<Metering>,
    background: Vec<JoinHandle<()>>,
}

fn shutdown_signal(
    mut rx: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        while !*rx.borrow() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

impl Gateway {
    pub async fn start(config: Config, store: Arc<dyn Store>) -> anyhow::Result<Gateway> {
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
        let client = tollgate_proxy::forward::upstream_client(
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
            let meter = meter.clone();
            let (per_key, max_series) = (config.metrics.per_key, config.metrics.max_key_series);
            metrics.on_scrape(move |m| {
                m.usage_unflushed_credits
                    .set(meter.unflushed_credits() as i64);
                m.export_usage(&meter.totals(), per_key, max_series);
            });
        }
        let proxy = Arc::new(Proxy::new(
            &config,
            cache.clone(),
            &metrics,
            Some(metering.clone()),
            client,
        )?);

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
        for r in &config.routes {
            if let (Some(pool), Some(product)) = (&r.pool, &r.product) {
                let products = api.pool_products.entry(pool.clone()).or_default();
                if !products.contains(product) {
                    products.push(product.clone());
                }
            }
        }
        let routes_loaded = api.routes_loaded.clone();
        let api = Arc::new(api);

        let proxy_l = bind("proxy", config.proxy.listen).await?;
        let account_l = bind("account_api", config.account_api.listen).await?;
        let ops_l = bind("ops", config.ops.listen).await?;
        let (proxy_addr, account_addr, ops_addr) = (
            proxy_l.local_addr()?,
            account_l.local_addr()?,
            ops_l.local_addr()?,
        );

        let (tx, rx) = watch::channel(false);
        let mut servers = Vec::new();
        servers.push(tokio::spawn(tollgate_proxy::serve(
            proxy_l,
            proxy,
            config.proxy.max_header_bytes,
            config.proxy.drain_timeout,
            shutdown_signal(rx.clone()),
        )));
        servers.push(tokio::spawn(tollgate_api::serve(
            account_l,
            ApiKind::Account,
            api.clone(),
            shutdown_signal(rx.clone()),
        )));
        servers.push(tokio::spawn(tollgate_api::serve(
            ops_l,
            ApiKind::Ops,
            api.clone(),
            shutdown_signal(rx.clone()),
        )));
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
            let stop = shutdown_signal(rx.clone());
            tokio::spawn(async move {
                tokio::pin!(stop);
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tick.tick() => metering.credits.release_idle(false).await,
                    }
                }
            });
        }
        routes_loaded.store(true, Ordering::Relaxed);
        tracing::info!(
            proxy = %proxy_addr, account_api = %account_addr, ops = %ops_addr,
            store = store.backend(), routes = config.routes.len(),
            "tollgate is listening"
        );
        Ok(Gateway {
            proxy_addr,
            account_addr,
            ops_addr,

            shutdown: tx,
            servers,
            flusher,
            metering,
            background,
        })
    }

    /// Waits for SIGTERM or SIGINT, then drains and stops.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        wait_for_signal().await?;
        tracing::info!("signal received: draining in-flight requests");
        self.stop().await
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        for s in self.servers {
            let _ = s.await;
        }
        // Every request has been answered: now nothing more can be metered.
        let _ = self.flusher.await;
        let left = self.metering.meter.flush_all(FINAL_FLUSH).await;
        self.metering.credits.release_idle(true).await;
        for b in self.background {
            let _ = b.await;
        }
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

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
