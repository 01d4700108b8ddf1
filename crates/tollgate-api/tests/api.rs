//! The account and operator APIs end to end: handlers driven directly against a real
//! `EmbeddedStore` in a temporary directory, and once through `serve` on a real socket.

// The harness's helpers are test code outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod api {
    pub mod harness;

    mod account;
    mod keys;
    mod ops;
    mod rollup;
    mod socket;
    mod team;
    mod usage;
}
