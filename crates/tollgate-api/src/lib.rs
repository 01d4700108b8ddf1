//! Tollgate's control-plane HTTP services: the account API (parents and children manage their own
//! keys, team and usage), the operator API, `/metrics`, `/healthz`, `/readyz` and the OpenAPI
//! document of the account API.
//!
//! Handlers are plain `async fn`s over `http::Request<Bytes>` so tests drive them without a socket;
//! [`serve`] puts them on a listener (HTTP/1.1 and h2c). Must not depend on the proxy crate: the
//! binary wires both to the same store, cache and metrics.

mod account;
mod error;
mod keys;
pub mod openapi;
mod ops;
mod respond;
pub mod router;
mod server;
mod usage;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tollgate_meter::Metrics;
use tollgate_store::{Change, KeyCache, Store};

pub use account::account_api;
pub use error::ApiError;
pub use keys::KeySources;
pub use ops::ops_api;
pub use respond::MAX_BODY_BYTES;
pub use server::{serve, ApiKind};

/// How long an invitation token works unless configured otherwise (SPEC.md: 7 days).
pub const DEFAULT_INVITATION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Unix seconds; injected so tests control invitation expiry and the default usage range.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Everything the handlers share. Cheap to build; the binary makes one per process.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    /// The same cache the edge admits from: every write here applies its changes to it before the
    /// response goes out, so this node enforces them at once.
    pub cache: Arc<KeyCache>,
    pub metrics: Arc<Metrics>,
    /// `TOLLGATE_OPERATOR_TOKEN`; `None` (or empty) refuses every operator call.
    pub operator_token: Option<String>,
    pub invitation_ttl: Duration,
    /// Where the account API looks for the caller's key (`[keys] sources`, reloadable).
    pub key_sources: Arc<KeySources>,
    pub clock: Clock,
    /// Set by the binary once the routes are loaded; `/readyz` answers 503 until then.
    pub routes_loaded: Arc<AtomicBool>,
    /// Set by the binary when shutdown starts; `/readyz` answers 503 from then on, so load
    /// balancers stop sending while the ops listener stays up through the drain.
    pub draining: Arc<AtomicBool>,
    /// Pool -> the products whose routes draw from it (from `[[routes]]`): the store knows pools,
    /// not products.
    pub pool_products: BTreeMap<String, Vec<String>>,
}

impl ApiState {
    /// A state with the defaults: no operator token, 7-day invitations, the default key sources,
    /// the system clock, routes
    /// not yet loaded, not draining, no pool-to-product map.
    pub fn new(store: Arc<dyn Store>, cache: Arc<KeyCache>, metrics: Arc<Metrics>) -> ApiState {
        ApiState {
            store,
            cache,
            metrics,
            operator_token: None,
            invitation_ttl: DEFAULT_INVITATION_TTL,
            key_sources: Arc::new(KeySources::default()),
            clock: system_clock(),
            routes_loaded: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
            pool_products: BTreeMap::new(),
        }
    }

    pub(crate) fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Applies what a write changed to this node's cache before the response goes out, so the
    /// edge enforces it at once. A failure leaves the entry dropped (the cache's own rule), so the
    /// next request reloads it from the store.
    pub(crate) async fn apply_changes(&self, changes: &[Change]) {
        for change in changes {
            if let Err(e) = self.cache.apply(change).await {
                tracing::warn!(error = %e, "could not refresh the key cache after a write");
            }
        }
    }
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The operator token is a secret: say only whether one is set.
        f.debug_struct("ApiState")
            .field("store", &self.store.backend())
            .field("operator_token_set", &self.operator_token.is_some())
            .field("invitation_ttl", &self.invitation_ttl)
            .field("pool_products", &self.pool_products)
            .finish_non_exhaustive()
    }
}

/// The wall clock in unix seconds.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    })
}
