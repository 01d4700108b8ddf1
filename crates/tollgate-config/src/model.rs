//! The validated configuration: real types only, every value already checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tollgate_core::{CostRule, Limit, Permission};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub account_api: ListenConfig,
    pub ops: ListenConfig,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub keys: KeysConfig,
    pub metering: MeteringConfig,
    pub metrics: MetricsConfig,
    pub limits: LimitsConfig,
    pub invitations: InvitationsConfig,
    pub logging: LoggingConfig,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// TLS termination on the proxy listener (`[proxy.tls] cert`, `key`: PEM files).
    pub tls: Option<TlsConfig>,
    /// Largest request head accepted (default 64 KiB); beyond it, 431.
    pub max_header_bytes: usize,
    /// Data-plane threads, each with its own runtime and listener (default 0: one per core this
    /// process may run on).
    pub workers: usize,
    /// Keep-alive connections to each upstream kept idle per worker (default 64).
    pub upstream_idle_per_host: usize,
    /// Upstream connect timeout (default 5s); then 502.
    pub connect_timeout: Duration,
    /// How long shutdown waits for in-flight requests (default 30s).
    pub drain_timeout: Duration,
    /// How long a client may pause in the middle of a streamed request body (default 60s, as
    /// nginx's `client_body_timeout`); then 408 `request_timeout`.
    pub client_body_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Embedded {
        path: PathBuf,
    },
    Redis {
        /// `redis://`, `rediss://` (TLS) or `redis+sentinel://` URL of a single server.
        url: Option<String>,
        /// Seed nodes of a Redis Cluster; non-empty exactly when `url` is `None`.
        cluster: Vec<String>,
        /// Prefix of every Redis key Tollgate writes (default `tg`).
        prefix: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreDown {
    /// Keep judging cached keys as last known.
    ServeCached,
    /// Refuse cached keys with `store_unavailable` once they are older than `max_staleness`.
    FailClosed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    pub max_staleness: Duration,
    pub negative_ttl: Duration,
    pub on_store_down: OnStoreDown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `header:NAME` (NAME lower-cased).
    Header(String),
    /// `bearer`: `Authorization: Bearer KEY`.
    Bearer,
    /// `query:NAME`.
    Query(String),
    /// `json:NAME`: a top-level string field of a JSON body (up to 64 KiB), removed before forwarding.
    Json(String),
}

impl KeySource {
    /// Where a client puts a key for this source, as a `key_missing` message names it.
    pub fn place(&self) -> String {
        match self {
            KeySource::Header(name) => format!("the {name} header"),
            KeySource::Bearer => "an Authorization: Bearer header".to_owned(),
            KeySource::Query(name) => format!("the {name} query parameter"),
            KeySource::Json(name) => format!("the {name} field of a JSON body"),
        }
    }
}

/// The places of `sources` in their order, as a sentence names them ("the x-api-key header, or
/// the apiKey query parameter"), or `None` if there are none.
pub fn key_places<'a>(sources: impl IntoIterator<Item = &'a KeySource>) -> Option<String> {
    let places: Vec<String> = sources.into_iter().map(KeySource::place).collect();
    match places.as_slice() {
        [] => None,
        [one] => Some(one.clone()),
        [first @ .., last] => Some(format!("{}, or {last}", first.join(", "))),
    }
}

/// The `key_missing` message naming `sources` in their order, or `None` if there are none. It
/// names only places, never a value a caller sent.
pub fn key_missing_message<'a>(sources: impl IntoIterator<Item = &'a KeySource>) -> Option<String> {
    key_places(sources).map(|places| format!("No API key was given: send it in {places}."))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysConfig {
    pub sources: Vec<KeySource>,
    pub forward: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeOn {
    /// Only responses with a 2xx status are charged.
    Success,
    /// Every response the upstream gave is charged.
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeteringConfig {
    pub flush_interval: Duration,
    pub charge_on: ChargeOn,
    /// Most credits held in memory while the store is down (default 100,000,000); see README.
    pub max_unflushed_credits: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    pub per_key: bool,
    pub max_key_series: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    pub parent: Limit,
    pub child: Limit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvitationsConfig {
    /// How long an invitation token works (default 7 days).
    pub ttl: Duration,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event (tracing's default format).
    Text,
    /// One JSON object per line, fields at the top level, for log shippers.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoggingConfig {
    /// `format`; the `TOLLGATE_LOG_FORMAT` environment variable overrides it.
    pub format: LogFormat,
    /// Fraction (0..=1) of admitted requests that get an access-log line (default 1: all).
    pub access_sample: f64,
    /// Most refusal lines written per second by one process (default 100); the rest are counted
    /// and reported as one "suppressed" line per second.
    pub refusals_per_second: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// An upstream origin: scheme, host and port; no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    /// Lower-cased; an IPv6 literal without its brackets (`::1`), as `IpAddr` and TLS server names
    /// take it.
    pub host: String,
    pub port: u16,
    /// `host` or `host:port` as the `Host` header and `:authority` should read (port omitted when it
    /// is the scheme's default).
    pub authority: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAuthTarget {
    Query(String),
    Header(String),
}

/// A credential injected upstream, read from the environment when the gateway starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAuth {
    pub target: UpstreamAuthTarget,
    pub env: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The `route` label: `name` if given, else `product`, else `prefix`.
    pub name: String,
    /// Starts with `/`.
    pub prefix: String,
    /// Lower-cased, without port.
    pub host: Option<String>,
    pub upstream: Upstream,
    /// A product route when set.
    pub product: Option<String>,
    /// The credit pool (defaults to `product`); set exactly when `product` is.
    pub pool: Option<String>,
    /// Base credits per request (default 1 for a product route, 0 otherwise).
    pub credits: u64,
    pub cost_rules: Vec<CostRule>,
    pub timeout: Duration,
    /// The permission a non-product route needs.
    pub permission: Option<Permission>,
    pub upstream_auth: Option<UpstreamAuth>,
}
