//! Metering and metrics: per-request usage recorded on atomics, flushed to the store in batches
//! that count once; rate limits (GCRA, governor); pooled credits leased per node; and the
//! Prometheus registry every listener's counters live in, with the per-account series read from the
//! meter at scrape time.
//!
//! Must not depend on hyper: the proxy records into this crate, the ops API renders it.

pub mod credits;
pub mod gate;
pub mod limits;
pub mod meter;
pub mod metrics;
mod process;

pub use credits::Credits;
pub use gate::{Charge, Check, Metering, Standing};
pub use limits::{RateLimits, RateState};
pub use meter::{CellKey, Meter};
pub use metrics::{names, Metrics};
