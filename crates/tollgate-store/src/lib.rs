//! The key tree's and usage's storage: the [`Store`] trait with its backends ([`EmbeddedStore`], a
//! single file for one node; `RedisStore` for many nodes), the change feed every write appends to,
//! and the in-process [`KeyCache`] the data plane admits from.
//!
//! Must not depend on hyper: the data plane and the APIs depend on this crate, not the reverse.

pub mod cache;
pub mod contract;
pub mod embedded;
pub mod redis_store;
pub mod store;

pub use cache::{CacheConfig, CacheLookup, KeyCache, Principal};
pub use embedded::EmbeddedStore;
pub use redis_store::RedisStore;
pub use store::{
    Change, FeedEvent, LeaseOp, NewInvitation, NewParent, Store, StoreError, StoreResult,
    UsageBatch, UsageDelta,
};
