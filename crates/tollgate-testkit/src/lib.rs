//! Test harness for Tollgate's end-to-end tests: real parts only. [`StubUpstream`] is a real HTTP
//! server that records what reached it; [`TestRedis`] a real `redis-server` on a free port in its
//! own temp dir; [`TestRedisCluster`] a real three-master Redis Cluster; [`TestGateway`] the real
//! `tollgate` binary on free ports; [`http`] a small client. Everything is killed on drop, and
//! every wait is a condition with a deadline.

pub mod cluster;
pub mod gateway;
pub mod http;
pub mod redis;
pub mod upstream;
pub mod wait;

pub use cluster::TestRedisCluster;
pub use gateway::{exit_of, TestGateway};
pub use redis::TestRedis;
pub use upstream::{Recorded, StubUpstream};
pub use wait::{free_port, wait_until};
