//! Tollgate's data plane: accepts client connections (HTTP/1.1 and h2c), finds the route, takes the
//! key from the configured sources, admits it through the in-process `KeyCache`, and forwards over
//! pooled keep-alive upstream connections with the key stripped and `x-tollgate-*` headers added.
//!
//! Must not depend on the api crate. [`respond`] is the one place refusals become statuses and bodies.

pub mod extract;
pub mod forward;
pub mod proxy;
pub mod respond;
pub mod router;
pub mod server;

pub use proxy::{Proxy, ProxyError};
pub use server::serve;
