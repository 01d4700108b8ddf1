//! Metering and metrics: per-request usage recorded on atomics, flushed to the store in batches
//! that count once; and the Prometheus registry every listener's counters live in.
//!
//! Must not depend on hyper: the proxy records into this crate, the ops API renders it.

pub mod metrics;

pub use metrics::{names, Metrics};
