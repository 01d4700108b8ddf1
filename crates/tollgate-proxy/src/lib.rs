//! Tollgate's data plane: accepts client connections (HTTP/1.1 and h2c), finds the route, takes the
//! key from the configured sources, admits it through the in-process `KeyCache`, and forwards over
//! pooled keep-alive upstream connections with the key stripped and `x-tollgate-*` headers added.
//! Terminates TLS when configured ([`tls`]), writes the access log ([`access_log`]), and takes a new
//! configuration without dropping a connection ([`server::ProxySlot`]).
//!
//! Must not depend on the api crate. [`respond`] is the one place refusals become statuses and bodies.

pub mod access_log;
pub mod extract;
pub mod forward;
pub mod parse_errors;
pub mod path;
pub mod proxy;
pub mod respond;
pub mod router;
pub mod server;
pub mod tls;
pub mod wire;

pub use access_log::AccessLog;
pub use proxy::{Proxy, ProxyError};
pub use server::{bind, bind_std, ensure_unbound, serve, ProxySlot, ServeOptions, Workers};
pub use tls::TlsTerminator;
