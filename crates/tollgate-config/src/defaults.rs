//! The named defaults: what a key means when `gateway.toml` leaves it out (SPEC.md "gateway.toml").
//! Parsing starts from these, so the file and `Default` can never disagree.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tollgate_core::Limit;

use crate::model::{
    CacheConfig, ChargeOn, InvitationsConfig, KeySource, KeysConfig, LimitsConfig, ListenConfig,
    LogFormat, LoggingConfig, MeteringConfig, MetricsConfig, OnStoreDown, ProxyConfig, StoreConfig,
};

/// `[[routes]] timeout`: upstream response timeout, then 504.
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most credits one request may cost: `[[routes]] credits`, a cost rule's `set`, and the
/// route's credits times a rule's `multiply` are at most this. A single request far beyond it
/// would fill `[metering] max_unflushed_credits` and refuse every metered request until the next
/// flush; no product costs anywhere near it.
pub const MAX_REQUEST_CREDITS: u64 = 1_000_000;
/// `[store] path` of the embedded backend.
pub const STORE_PATH: &str = "data/tollgate.db";
/// `[store] prefix` of every Redis key.
pub const REDIS_PREFIX: &str = "tg";

const fn addr(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: addr(0, 0, 0, 0, 8080),
            tls: None,
            max_header_bytes: 64 * 1024,
            workers: 0,
            upstream_idle_per_host: 64,
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            client_body_timeout: Duration::from_secs(60),
        }
    }
}

impl ListenConfig {
    /// `[account_api] listen`: loopback, since the account API usually sits behind the operator's
    /// own front door.
    pub fn account_api_default() -> Self {
        ListenConfig {
            listen: addr(127, 0, 0, 1, 8081),
        }
    }

    /// `[ops] listen`: 9190, not 9090, which is Prometheus's own port.
    pub fn ops_default() -> Self {
        ListenConfig {
            listen: addr(127, 0, 0, 1, 9190),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Embedded {
            path: PathBuf::from(STORE_PATH),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_staleness: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(30),
            on_store_down: OnStoreDown::ServeCached,
        }
    }
}

impl Default for KeysConfig {
    /// The vendor's own conventions, in SPEC.md's order: the first source holding a key wins.
    fn default() -> Self {
        KeysConfig {
            sources: vec![
                KeySource::Header("x-api-key".into()),
                KeySource::Bearer,
                KeySource::Header("x-authentication-token".into()),
                KeySource::Query("apiKey".into()),
                KeySource::Json("apiKey".into()),
            ],
            forward: false,
        }
    }
}

impl Default for MeteringConfig {
    fn default() -> Self {
        MeteringConfig {
            flush_interval: Duration::from_millis(250),
            charge_on: ChargeOn::Success,
            max_unflushed_credits: 100_000_000,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            per_key: true,
            max_key_series: 10_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            parent: Limit {
                rps: 200,
                burst: 400,
            },
            child: Limit {
                rps: 50,
                burst: 100,
            },
        }
    }
}

impl Default for InvitationsConfig {
    fn default() -> Self {
        InvitationsConfig {
            ttl: Duration::from_secs(7 * 86_400),
        }
    }
}

impl Default for LoggingConfig {
    /// Every admitted request logged, as nginx, Envoy and Kong do out of the box; busy nodes
    /// sample (README "Operating Tollgate").
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Text,
            access_sample: 1.0,
            refusals_per_second: 100,
        }
    }
}
