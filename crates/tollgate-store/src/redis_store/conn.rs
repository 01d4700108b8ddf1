//! Connections: one multiplexed connection for every ordinary command (a self-reconnecting
//! `ConnectionManager` for a single server, a `ClusterConnection` for Redis Cluster), and separate
//! connections for blocking feed reads, so a parked `XREAD BLOCK` never delays other calls.

use std::future::Future;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture,
    ServerErrorKind, Value,
};

use crate::{StoreError, StoreResult};

/// How long one attempt to open a TCP (or TLS) connection may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one command may wait for its reply on the shared connection.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound of one store call (reconnect attempts and retries included); past it the call is
/// `Unavailable`. Keeps every caller (readiness probes, the account API) from hanging on a dead
/// Redis even if a library-level timeout does not fire.
pub(super) const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// Idle feed connections kept for reuse (one per concurrent follower is enough).
const MAX_IDLE_FEED: usize = 4;

/// Maps a Redis error to the store's: anything about reaching Redis (IO, timeouts, a cluster that
/// is resharding or failing over, a server still loading) is `Unavailable`; the rest (type and
/// script errors) means bad data or a bug, so `Internal`.
pub(super) fn store_err(e: RedisError) -> StoreError {
    let unavailable = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::AuthenticationFailed
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                )
        );
    if unavailable {
        StoreError::Unavailable(format!("redis: {e}"))
    } else {
        StoreError::Internal(format!("redis: {e}"))
    }
}

/// Runs `fut` with [`CALL_DEADLINE`] (plus `extra`), mapping a time-out to `Unavailable`.
pub(super) async fn bounded<T>(
    extra: Duration,
    fut: impl Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    match tokio::time::timeout(CALL_DEADLINE + extra, fut).await {
        Ok(res) => res,
        Err(_) => Err(StoreError::Unavailable(format!(
            "redis: no answer within {:?}",
            CALL_DEADLINE + extra
        ))),
    }
}

/// The shared connection; cheap to clone (clones multiplex over the same socket(s)).
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A connection used only for feed reads. Not self-healing: one that failed is dropped.
pub(super) enum FeedConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for FeedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            FeedConn::Single(c) => c.req_packed_command(cmd),
            FeedConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            FeedConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            FeedConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            FeedConn::Single(c) => c.get_db(),
            FeedConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where new feed connections come from: clients configured without a response timeout, because
/// a blocking read legitimately waits as long as the caller asked (the caller bounds it instead).
enum FeedSource {
    Single(Box<Client>),
    Cluster(Box<ClusterClient>),
}

/// The shared connection plus a small pool of feed connections.
pub(super) struct Connections {
    pub(super) main: Conn,
    feed_source: FeedSource,
    idle_feed: Mutex<Vec<FeedConn>>,
}

impl Connections {
    /// Connects to a single server (`url`) or a cluster (`cluster` seeds), and checks it answers.
    pub(super) async fn open(url: Option<&str>, cluster: &[String]) -> StoreResult<Connections> {
        let bad_url =
            |e: RedisError| StoreError::Internal(format!("redis store: invalid Redis URL: {e}"));
        let (main, feed_source) = match (url, cluster) {
            (Some(url), []) => {
                if url.starts_with("redis+sentinel") {
                    return Err(StoreError::Internal(
                        "redis store: Sentinel URLs are not supported; give the master's URL or use Redis Cluster".into(),
                    ));
                }
                let client = Client::open(url).map_err(bad_url)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let manager = bounded(Duration::ZERO, async {
                    ConnectionManager::new_with_config(client.clone(), config)
                        .await
                        .map_err(store_err)
                })
                .await?;
                (Conn::Single(manager), FeedSource::Single(Box::new(client)))
            }
            (None, [_, ..]) => {
                let main_client = ClusterClient::builder(cluster.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .overall_response_timeout(Some(CALL_DEADLINE - Duration::from_secs(1)))
                    .retries(3)
                    .build()
                    .map_err(bad_url)?;
                let feed_client = ClusterClient::builder(cluster.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .retries(3)
                    .build()
                    .map_err(bad_url)?;
                let conn = bounded(Duration::ZERO, async {
                    main_client.get_async_connection().await.map_err(store_err)
                })
                .await?;
                (
                    Conn::Cluster(conn),
                    FeedSource::Cluster(Box::new(feed_client)),
                )
            }
            _ => {
                return Err(StoreError::Internal(
                    "redis store: give either one URL or a non-empty list of cluster nodes".into(),
                ))
            }
        };
        let conns = Connections {
            main,
            feed_source,
            idle_feed: Mutex::new(Vec::new()),
        };
        let mut conn = conns.main.clone();
        bounded(Duration::ZERO, async {
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(store_err)
        })
        .await?;
        Ok(conns)
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.main, Conn::Cluster(_))
    }

    /// An idle feed connection, or a new one.
    pub(super) async fn take_feed(&self) -> StoreResult<FeedConn> {
        if let Some(conn) = self.idle_feed.lock().pop() {
            return Ok(conn);
        }
        match &self.feed_source {
            FeedSource::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(None);
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(FeedConn::Single)
                    .map_err(store_err)
            }
            FeedSource::Cluster(client) => client
                .get_async_connection_with_config(
                    ClusterConfig::new().set_connection_timeout(CONNECT_TIMEOUT),
                )
                .await
                .map(FeedConn::Cluster)
                .map_err(store_err),
        }
    }

    /// Returns a feed connection whose last read completed normally. One whose read failed or was
    /// abandoned is simply dropped (closed), since it may still be parked in a blocking read.
    pub(super) fn give_back_feed(&self, conn: FeedConn) {
        let mut idle = self.idle_feed.lock();
        if idle.len() < MAX_IDLE_FEED {
            idle.push(conn);
        }
    }
}
