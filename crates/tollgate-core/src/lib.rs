//! Tollgate's domain core: accounts and their statuses, the permission matrix, `admit()`, the key
//! format (generation and hashing), credit cost rules, usage arithmetic (days, totals, roll-up),
//! and which request paths are safe to route and forward (shared by the data plane and `check`).
//!
//! This crate does no IO and must not depend on tokio, hyper, redis or any other IO crate: time and
//! randomness come in as arguments, so every rule here is a plain function that tests can drive.

pub mod account;
pub mod admit;
pub mod cost;
pub mod key;
pub mod path;
pub mod permission;
pub mod usage;

pub use account::{
    is_valid_email, normalize_email, Account, Limit, LimitOverride, LimitOverrides, Overage, Role,
    Status, Subscription,
};
pub use admit::{admit, Access, Admittable, Decision, DenyReason};
pub use cost::{cost, CostAction, CostRule};
pub use key::{
    bearer_token, generate_id, generate_key, generate_token, is_well_formed_key, ApiKey, KeyHash,
    BEARER_CHALLENGE,
};
pub use permission::{Permission, UsageScope};
pub use usage::{overage, Day, Totals, UsageRow};
