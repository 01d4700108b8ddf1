//! The one check of a request's path, made before its key is looked up or its route found, on
//! every path of the data plane (the HTTP/1.1 fast path and hyper's). The rule lives in
//! `tollgate-core` so that `tollgate check` refuses a route prefix no safe path can start with.

pub use tollgate_core::path::is_safe;
