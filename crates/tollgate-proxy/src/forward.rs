//! Forwarding: Tollgate's own keep-alive pool of upstream HTTP/1.1 connections (plain TCP or
//! rustls), one per data-plane worker thread, and header hygiene.
//!
//! Why not hyper's client: each request there crosses a channel to its connection's own task and
//! the response crosses back (two wake-ups, a mutex-guarded pool in hyper-util's `Client`), which
//! measured as a quarter of the data plane's instructions. Here the request's own task writes the
//! head and reads the response on the connection ([`crate::wire`]). The pool is a thread-local
//! stack of connections per upstream origin: a worker pops the most recently used one and the
//! connection goes back when its response body has been read to the end (dropped earlier, it is
//! closed). An idempotent request that finds its kept-alive connection closed by the upstream
//! before any response byte is sent again on a fresh connection; for other methods an idle
//! connection is checked before use instead. Idle connections are dropped after two sweeps
//! ([`Upstreams::sweep_idle`], every [`IDLE_SWEEP`]) without use.
//!
//! `idle_per_host` bounds the idle connections a worker keeps, but not the instant a response
//! ends: those beyond it are closed once they have stayed unused for a whole [`EXCESS_TRIM`]
//! period ([`Upstreams::trim_excess`]), least recently used first. Closing them at once made a
//! worker with more requests in flight than that (HTTP/2 clients multiplex hundreds) close
//! connections as a burst of responses ended and open new ones for the next burst of requests a
//! moment later: a new upstream connection for about half of the requests.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::proxy::ProxyBody;
use crate::wire::{self, Checkin, Conn, ResponseBody};

/// How often each worker drops connections that stayed idle since the sweep before.
pub const IDLE_SWEEP: Duration = Duration::from_secs(30);
/// How often each worker closes the idle connections beyond `idle_per_host` that stayed unused
/// since the time before.
pub const EXCESS_TRIM: Duration = Duration::from_secs(1);

/// Why the upstream TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("CA file {0} holds no usable certificate")]
    NoCertificates(String),
}

/// Why a request did not get a response head from its upstream.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    #[error("connect to {origin}: {source}")]
    Connect {
        origin: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {origin}: {source}")]
    Tls {
        origin: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One upstream origin (scheme, host, port), shared by every route and config generation that
/// names it, so a reload keeps the warm connections.
#[derive(Debug)]
pub struct Origin {
    id: usize,
    pub(crate) https: bool,
    host: Arc<str>,
    port: u16,
    server_name: ServerName<'static>,
}

impl Origin {
    fn label(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }
}

/// The upstream side of every worker: connection settings, the TLS client configuration and the
/// registry of origins. Cheap to clone.
#[derive(Clone)]
pub struct Upstreams {
    inner: Arc<Inner>,
}

struct Inner {
    tls: TlsConnector,
    connect_timeout: Duration,
    max_idle: usize,
    origins: Mutex<HashMap<(bool, String, u16), Arc<Origin>>>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("origins", &self.inner.origins.lock().len())
            .finish()
    }
}

struct Idle {
    conn: Conn,
    /// The worker's sweep count when this connection was last put back.
    epoch: u64,
    /// The worker's trim count when this connection was last put back.
    trim: u64,
}

#[derive(Default)]
struct LocalPool {
    /// Indexed by [`Origin::id`]: a stack, most recently used at the back.
    idle: Vec<VecDeque<Idle>>,
    epoch: u64,
    trim: u64,
    /// `idle_per_host` (a restart setting), as the last connection put back said.
    max_idle: usize,
}

thread_local! {
    static POOL: RefCell<LocalPool> = RefCell::default();
}

/// Keep-alive connections to upstreams, HTTPS with the webpki roots (plus `extra_ca`, a PEM
/// bundle, for private upstreams and tests), at most `idle_per_host` idle per origin and worker.
pub fn upstreams(
    connect_timeout: Duration,
    idle_per_host: usize,
    extra_ca: Option<&Path>,
) -> Result<Upstreams, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
            if roots.add(cert).is_ok() {
                added += 1;
            }
        }
        if added == 0 {
            return Err(TlsSetupError::NoCertificates(path.display().to_string()));
        }
    }
    // ring rather than aws-lc-rs: no cmake/C toolchain step in the build, and upstream TLS here
    // is plain server authentication.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Upstreams {
        inner: Arc::new(Inner {
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout,
            max_idle: idle_per_host,
            origins: Mutex::new(HashMap::new()),
        }),
    })
}

impl Upstreams {
    /// The origin for `host:port` (registered on first use). `None` if `host` is not a valid TLS
    /// server name (only checked for HTTPS).
    pub fn origin(&self, https: bool, host: &str, port: u16) -> Option<Arc<Origin>> {
        let mut origins = self.inner.origins.lock();
        let next_id = origins.len();
        let key = (https, host.to_owned(), port);
        if let Some(o) = origins.get(&key) {
            return Some(o.clone());
        }
        let server_name = ServerName::try_from(host.to_owned()).ok()?;
        let origin = Arc::new(Origin {
            id: next_id,
            https,
            host: Arc::from(host),
            port,
            server_name,
        });
        origins.insert(key, origin.clone());
        Some(origin)
    }

    /// Sends `req` (origin-form URI, `Host` set) to `origin` on a pooled connection, or a new one.
    pub async fn send(
        &self,
        origin: &Arc<Origin>,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, ForwardError> {
        let idempotent = req.method().is_idempotent();
        loop {
            let (mut conn, reused) = match checkout(origin.id, !idempotent) {
                Some(c) => (c, true),
                // Boxed: a new connection's (TLS) future stays out of every request's.
                None => (Box::pin(self.connect(origin)).await?, false),
            };
            match wire::exchange(&mut conn, &mut req).await {
                Ok((head, framing)) => {
                    let body = self.body(origin, conn, framing);
                    return Ok(head.map(|()| body));
                }
                // The upstream closed a kept-alive connection before answering: send again.
                Err(e) if e.retryable && reused && idempotent => continue,
                Err(e) => return Err(ForwardError::Io(e.error)),
            }
        }
    }

    /// Sends a serialized request (its head, and a body held in memory after it) to `origin` on
    /// a pooled connection, or a new one. `take` reads the response head where it lies (see
    /// [`wire::exchange_raw`]); it runs once, for the response that is returned. As [`Self::send`]
    /// does, a request that is not `idempotent` goes only on a pooled connection that does not
    /// look closed, and is not sent again if that one fails.
    pub async fn send_raw<T>(
        &self,
        origin: &Arc<Origin>,
        request: &[u8],
        head_req: bool,
        idempotent: bool,
        mut take: impl FnMut(&wire::RawHead<'_>) -> std::io::Result<T>,
    ) -> Result<(T, UpstreamBody), ForwardError> {
        loop {
            let (mut conn, reused) = match checkout(origin.id, !idempotent) {
                Some(c) => (c, true),
                // Boxed: a new connection's (TLS) future stays out of every request's.
                None => (Box::pin(self.connect(origin)).await?, false),
            };
            match wire::exchange_raw(&mut conn, request, head_req, &mut take).await {
                Ok((taken, framing)) => return Ok((taken, self.body(origin, conn, framing))),
                Err(e) if e.retryable && reused && idempotent => continue,
                Err(e) => return Err(ForwardError::Io(e.error)),
            }
        }
    }

    fn body(&self, origin: &Origin, conn: Conn, framing: wire::Framing) -> UpstreamBody {
        let checkin = (self.inner.max_idle > 0).then_some(Checkin {
            give: checkin,
            origin: origin.id,
            max_idle: self.inner.max_idle,
        });
        let mut body = ResponseBody::new(conn, framing, checkin);
        match body.try_complete() {
            Some(all) => UpstreamBody::Whole(Some(all)),
            None => UpstreamBody::Streaming(Streamed::new(body)),
        }
    }

    async fn connect(&self, origin: &Origin) -> Result<Conn, ForwardError> {
        let connect = TcpStream::connect((&*origin.host, origin.port));
        let tcp = match tokio::time::timeout(self.inner.connect_timeout, connect).await {
            Err(_) => return Err(ForwardError::ConnectTimeout(origin.label())),
            Ok(Err(source)) => {
                return Err(ForwardError::Connect {
                    origin: origin.label(),
                    source,
                })
            }
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&tcp).set_keepalive(true);
        if !origin.https {
            return Ok(Conn::plain(tcp));
        }
        let tls = self
            .inner
            .tls
            .connect(origin.server_name.clone(), tcp)
            .await
            .map_err(|source| ForwardError::Tls {
                origin: origin.label(),
                source,
            })?;
        Ok(Conn::tls(tls))
    }

    /// Drops this worker's connections that stayed idle for a whole [`IDLE_SWEEP`] period. Each
    /// worker runs this on its own thread every [`IDLE_SWEEP`].
    pub fn sweep_idle() {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            let epoch = p.epoch;
            for stack in &mut p.idle {
                stack.retain(|i| i.epoch >= epoch);
            }
            p.epoch += 1;
        });
    }

    /// Closes this worker's idle connections beyond `idle_per_host` to each origin that stayed
    /// unused since the trim before, least recently used first. Each worker runs this on its own
    /// thread every [`EXCESS_TRIM`].
    pub fn trim_excess() {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            let (trim, max_idle) = (p.trim, p.max_idle);
            for stack in &mut p.idle {
                while stack.len() > max_idle && stack.front().is_some_and(|i| i.trim < trim) {
                    stack.pop_front();
                }
            }
            p.trim += 1;
        });
    }

    /// Idle connections this worker holds to `origin` (for tests and metrics).
    pub fn idle_here(origin: &Origin) -> usize {
        POOL.with(|p| p.borrow().idle.get(origin.id).map_or(0, VecDeque::len))
    }
}

/// The most recently used connection to `origin` on this worker (`probe`: one that the upstream
/// has not closed meanwhile, as far as a non-blocking read can tell).
fn checkout(origin: usize, probe: bool) -> Option<Conn> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let stack = p.idle.get_mut(origin)?;
        while let Some(mut idle) = stack.pop_back() {
            if !probe || !idle.conn.is_stale() {
                return Some(idle.conn);
            }
        }
        None
    })
}

/// A connection whose response was read to the end goes back on this worker's stack (those
/// beyond `max_idle` until the next trims, see [`Upstreams::trim_excess`]).
fn checkin(origin: usize, max_idle: usize, conn: Conn) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.idle.len() <= origin {
            p.idle.resize_with(origin + 1, VecDeque::new);
        }
        p.max_idle = max_idle;
        let (epoch, trim) = (p.epoch, p.trim);
        p.idle[origin].push_back(Idle { conn, epoch, trim });
    });
}

/// An upstream response body: already read whole (a small response usually arrives with its
/// head), or read off the connection as the client side polls it. The bytes pass through as they
/// came.
pub enum UpstreamBody {
    Whole(Option<Bytes>),
    Streaming(Streamed),
}

impl UpstreamBody {
    /// For a body still to be read: the upstream may go at most `idle` without sending any of it
    /// (the route's timeout, as nginx's `proxy_read_timeout` bounds each read), after which the
    /// body fails and its connection is closed; and `duration` observes the time since `started`
    /// when the body has ended, failed or been dropped, so the request-duration histogram holds the
    /// whole request as the client saw it. A body already read whole needs neither. `true`: the
    /// body observes the duration (the caller must not).
    pub fn arm(
        &mut self,
        idle: Duration,
        duration: &prometheus::Histogram,
        started: Instant,
    ) -> bool {
        match self {
            UpstreamBody::Streaming(s) => {
                s.idle = Some(idle);
                s.end = Some((duration.clone(), started));
                true
            }
            UpstreamBody::Whole(_) => false,
        }
    }
}

/// A body read off the upstream's connection, with the route's idle timeout and the
/// request-duration observation of [`UpstreamBody::arm`].
pub struct Streamed {
    /// `None` once the idle timeout fired: the connection is dropped, never reused.
    body: Option<ResponseBody>,
    idle: Option<Duration>,
    /// Armed at the first wait for the upstream, moved on by every frame.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    end: Option<(prometheus::Histogram, Instant)>,
}

impl Streamed {
    fn new(body: ResponseBody) -> Streamed {
        Streamed {
            body: Some(body),
            idle: None,
            timer: None,
            end: None,
        }
    }

    fn ended(&mut self) {
        if let Some((h, started)) = self.end.take() {
            h.observe(started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        // The client went away (or the response was dropped) before the end: its request ended here.
        self.ended();
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(timer), Some(idle)) = (this.timer.as_mut(), this.idle) {
                    timer.as_mut().reset(tokio::time::Instant::now() + idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(done) => {
                this.ended();
                Poll::Ready(done)
            }
            Poll::Pending => {
                let Some(idle) = this.idle else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.body = None;
                this.ended();
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the upstream sent nothing of the body for the route's timeout",
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(ResponseBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), ResponseBody::size_hint)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            UpstreamBody::Whole(data) => Poll::Ready(
                data.take()
                    .filter(|d| !d.is_empty())
                    .map(|d| Ok(Frame::data(d))),
            ),
            UpstreamBody::Streaming(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Whole(data) => data.as_ref().is_none_or(Bytes::is_empty),
            UpstreamBody::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Whole(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            UpstreamBody::Streaming(body) => body.size_hint(),
        }
    }
}

/// Hop-by-hop fields of RFC 9110 section 7.6.1: meaningful for one connection only.
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether a field named `name` is one of the hop-by-hop fields (not counting those a `Connection`
/// field names).
pub fn is_hop_by_hop(name: &str) -> bool {
    // By length first: most names are ruled out without a comparison.
    let is = |h: &str| name.eq_ignore_ascii_case(h);
    match name.len() {
        2 => is("te"),
        7 => is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        _ => false,
    }
}

/// The field names a `Connection` value lists: its tokens less `close` and `keep-alive` (which
/// name none). The one reading of that list for both paths, requests and responses.
pub fn connection_names(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
        })
}

/// Removes hop-by-hop fields, including every field the `Connection` header names. One pass over
/// the (usually few) fields finds which are there; only those are removed, and the common
/// `Connection: keep-alive` / `close` costs no parsing or allocation.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u8;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for v in headers.get_all(header::CONNECTION) {
            for token in connection_names(v.as_bytes()) {
                if let Ok(n) = HeaderName::from_bytes(token) {
                    named.push(n);
                }
            }
        }
        for n in named {
            headers.remove(n);
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn raw_hop_by_hop_names_are_the_header_maps() {
        for h in &HOP_BY_HOP {
            assert!(is_hop_by_hop(h.as_str()), "{h}");
            assert!(is_hop_by_hop(&h.as_str().to_ascii_uppercase()), "{h}");
        }
        for other in [
            "date",
            "content-length",
            "tee",
            "x-upgrade",
            "connections",
            "",
        ] {
            assert!(!is_hop_by_hop(other), "{other}");
        }
    }
    use http_body_util::{BodyExt, Either, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

    /// A body of `parts` with no length: hyper sends it chunked.
    fn chunked(parts: &[&'static str]) -> TestBody {
        struct Parts(std::collections::VecDeque<Bytes>);
        impl Body for Parts {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
                Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
            }
        }
        Parts(
            parts
                .iter()
                .map(|p| Bytes::from_static(p.as_bytes()))
                .collect(),
        )
        .boxed()
    }

    /// A real HTTP/1.1 upstream on a free port: counts accepted connections; `/close` answers with
    /// `Connection: close`; `/big` answers with a body larger than one read.
    async fn upstream() -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let path = req.uri().path().to_owned();
                    let body: TestBody = match path.as_str() {
                        "/big" => Full::new(Bytes::from(vec![b'x'; 1 << 20])).boxed(),
                        "/chunked" => chunked(&["ab", "", "cde", "f"]),
                        "/echo" => {
                            let got = req.into_body().collect().await.unwrap().to_bytes();
                            Full::new(got).boxed()
                        }
                        _ => Full::new(Bytes::from_static(b"{}")).boxed(),
                    };
                    let mut resp = Response::new(body);
                    if path == "/close" {
                        resp.headers_mut()
                            .insert(header::CONNECTION, "close".parse().unwrap());
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (port, accepted)
    }

    fn get(path: &str) -> Request<ProxyBody> {
        Request::builder()
            .uri(path)
            .header(header::HOST, "upstream")
            .body(Either::Right(Full::new(Bytes::new())))
            .unwrap()
    }

    async fn body(resp: Response<UpstreamBody>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    async fn read(resp: Response<UpstreamBody>) -> usize {
        body(resp).await.len()
    }

    #[tokio::test]
    async fn chunked_head_and_bodies_in_both_directions() {
        let (port, accepted) = upstream().await;
        let up = pool();
        let origin = up.origin(false, "127.0.0.1", port).unwrap();
        // A chunked response is decoded whole, and its connection is reused.
        for _ in 0..3 {
            let resp = up.send(&origin, get("/chunked")).await.unwrap();
            assert_eq!(&body(resp).await[..], b"abcdef");
        }
        // HEAD: the length is announced, no body follows, the connection stays usable.
        let mut head = get("/big");
        *head.method_mut() = http::Method::HEAD;
        let resp = up.send(&origin, head).await.unwrap();
        assert_eq!(resp.headers()["content-length"], "1048576");
        assert_eq!(read(resp).await, 0);
        // A body held in memory goes with a content-length.
        let mut post = get("/echo");
        *post.method_mut() = http::Method::POST;
        *post.body_mut() = Either::Right(Full::new(Bytes::from_static(b"{\"a\":1}")));
        let resp = up.send(&origin, post).await.unwrap();
        assert_eq!(&body(resp).await[..], b"{\"a\":1}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_kept_alive_connection_closed_while_idle_is_retried_for_get() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Answers one request per connection, keep-alive in name only, then closes it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                drop(s);
            }
        });
        let up = pool();
        let origin = up.origin(false, "127.0.0.1", port).unwrap();
        for i in 1..=3 {
            let resp = up.send(&origin, get("/")).await.unwrap();
            assert_eq!(read(resp).await, 2, "request {i}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    fn pool() -> Upstreams {
        upstreams(Duration::from_secs(2), 8, None).unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_is_read() {
        let (port, accepted) = upstream().await;
        let up = pool();
        let origin = up.origin(false, "127.0.0.1", port).unwrap();
        for _ in 0..5 {
            let resp = up.send(&origin, get("/")).await.unwrap();
            assert_eq!(read(resp).await, 2);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(Upstreams::idle_here(&origin), 1);
        // The same origin named again (a reload) is the same pool.
        assert_eq!(up.origin(false, "127.0.0.1", port).unwrap().id, origin.id);
    }

    #[tokio::test]
    async fn an_unread_body_does_not_go_back_to_the_pool() {
        let (port, accepted) = upstream().await;
        let up = pool();
        let origin = up.origin(false, "127.0.0.1", port).unwrap();
        let resp = up.send(&origin, get("/big")).await.unwrap();
        drop(resp);
        assert_eq!(Upstreams::idle_here(&origin), 0);
        let resp = up.send(&origin, get("/")).await.unwrap();
        assert_eq!(read(resp).await, 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        let resp = up.send(&origin, get("/big")).await.unwrap();
        assert_eq!(read(resp).await, 1 << 20);
        assert_eq!(Upstreams::idle_here(&origin), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_used_again() {
        let (port, accepted) = upstream().await;
        let up = pool();
        let origin = up.origin(false, "127.0.0.1", port).unwrap();
        for i in 1..=3 {
            let resp = up.send(&origin, get("/close")).await.unwrap();
            assert_eq!(read(resp).await, 2);
            assert_eq!(accepted.load(Ordering::SeqCst), i);
        }
        let resp = up.send(&origin, get("/")).await.unwrap();
        assert_eq!(read(resp).await, 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn idle_connections_go_after_two_sweeps() {
        let (port, _) = upstream().await;
        let up = pool();
        let origin = up.origin(false, "127.0.0.1", port).unwrap();
        let resp = up.send(&origin, get("/")).await.unwrap();
        read(resp).await;
        assert_eq!(Upstreams::idle_here(&origin), 1);
        Upstreams::sweep_idle();
        assert_eq!(
            Upstreams::idle_here(&origin),
            1,
            "one sweep is not idle long enough"
        );
        Upstreams::sweep_idle();
        assert_eq!(Upstreams::idle_here(&origin), 0);
    }

    #[tokio::test]
    async fn connections_beyond_the_idle_cap_stay_until_a_trim_finds_them_unused() {
        // More requests in flight than `idle_per_host` (8 here): when they end, every connection
        // stays for the next burst instead of being closed and opened again; those still unused
        // a whole trim period later are closed down to the cap.
        let (port, accepted) = upstream().await;
        let up = pool();
        let origin = up.origin(false, "127.0.0.1", port).unwrap();
        for burst in 1..=3 {
            // Bodies of 1 MiB are read as the caller polls them, so each response holds its
            // connection until it is read.
            let mut held = Vec::new();
            for _ in 0..12 {
                held.push(up.send(&origin, get("/big")).await.unwrap());
            }
            for resp in held {
                assert_eq!(read(resp).await, 1 << 20);
            }
            assert_eq!(Upstreams::idle_here(&origin), 12, "burst {burst}");
            assert_eq!(accepted.load(Ordering::SeqCst), 12, "burst {burst}");
        }
        Upstreams::trim_excess();
        assert_eq!(
            Upstreams::idle_here(&origin),
            12,
            "put back since the last trim: kept"
        );
        Upstreams::trim_excess();
        assert_eq!(
            Upstreams::idle_here(&origin),
            8,
            "unused for a whole period"
        );
        Upstreams::trim_excess();
        assert_eq!(Upstreams::idle_here(&origin), 8, "never below the cap");
        // The most recently used are the ones kept: all still work.
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(up.send(&origin, get("/big")).await.unwrap());
        }
        for resp in held {
            assert_eq!(read(resp).await, 1 << 20);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 12);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_a_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let up = pool();
        let origin = up.origin(false, "127.0.0.1", port).unwrap();
        let req = Request::builder()
            .uri("/")
            .header(header::HOST, "x")
            .body(Either::Right(Full::new(Bytes::new())))
            .unwrap();
        match up.send(&origin, req).await {
            Err(ForwardError::Connect { .. }) => {}
            Err(e) => panic!("expected a connect error, got {e}"),
            Ok(r) => panic!("expected a connect error, got {}", r.status()),
        }
    }

    #[test]
    fn hop_by_hop_fields_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("upgrade", "h2c".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        // Every Connection field counts, names in any case; keep-alive itself goes too.
        let mut h = HeaderMap::new();
        h.append("connection", "Keep-Alive".parse().unwrap());
        h.append("connection", "X-Other ,, close".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        h.insert("close", "not hop-by-hop".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["close", "x-kept"]);

        // Nothing to remove: nothing changes.
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }
}
