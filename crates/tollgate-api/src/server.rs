//! `serve`: puts the account API or the ops listener on a bound listener, HTTP/1.1 and h2c, with
//! bodies capped at 64 KiB and a graceful drain when the shutdown future resolves.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::respond::{error, MAX_BODY_BYTES};
use crate::{account_api, ops_api, ApiError, ApiState};

/// Which service a listener runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// `[account_api] listen`.
    Account,
    /// `[ops] listen`: operator API, metrics, health.
    Ops,
}

/// A client that sends headers this slowly holds a connection for nothing (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a shutdown waits for in-flight requests before it lets the connections go.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `kind` on `listener` until `shutdown` resolves, then stops accepting and drains the open
/// connections (at most [`DRAIN_TIMEOUT`]). Each accepted connection goes through `wrap` first
/// (the binary puts the data plane's JSON bodies on hyper's own parse-error answers with it; this
/// crate may not depend on that one).
pub async fn serve<W>(
    listener: TcpListener,
    kind: ApiKind,
    state: Arc<ApiState>,
    wrap: impl Fn(TcpStream) -> W,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    W: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, ?kind, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(kind, &state, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(wrap(stream)), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!(?kind, "all connections drained"),
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!(?kind, "drain timed out; closing the rest"),
    }
}

async fn handle(kind: ApiKind, state: &ApiState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let res = match read_body(req).await {
        Ok(req) => match kind {
            ApiKind::Account => account_api(state, req).await,
            ApiKind::Ops => ops_api(state, req).await,
        },
        Err(e) => error(&e),
    };
    res.map(Full::new)
}

/// Collects the body, refusing more than [`MAX_BODY_BYTES`] as soon as it is known: from the
/// declared length without reading anything, or when the limit is crossed mid-stream.
async fn read_body(req: Request<Incoming>) -> Result<Request<Bytes>, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    let (parts, body) = req.into_parts();
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(Request::from_parts(parts, collected.to_bytes())),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::PayloadTooLarge),
        Err(e) => {
            tracing::debug!(error = %e, "could not read a request body");
            Err(ApiError::invalid("the request body could not be read"))
        }
    }
}
