//! Forwarding: Tollgate's own keep-alive pool of upstream HTTP/1.1 connections (plain TCP or
//! rustls), one per data-plane worker thread, and header hygiene.
//!
//! Why not hyper-util's pooled `Client`: every checkout there goes through a shared mutex, a
//! waiter queue and a re-built absolute URI, which measured about 7k instructions per request
//! here. This pool is a thread-local stack of `hyper::client::conn::http1::SendRequest` per
//! upstream origin: a worker pops the most recently used connection, sends the request in origin
//! form, and the connection goes back on the stack when the response body has been read to its
//! end (dropped earlier, hyper closes it instead). A connection the upstream closed while idle is
//! skipped at checkout; one that turns out closed when the request is handed to it gives the
//! request back unsent and it is retried on a fresh connection. Idle connections are dropped after
//! two sweeps ([`Upstreams::sweep_idle`], every [`IDLE_SWEEP`]) without use.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::proxy::ProxyBody;

/// How often each worker drops connections that stayed idle since the sweep before.
pub const IDLE_SWEEP: Duration = Duration::from_secs(30);

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
    Http(#[from] hyper::Error),
}

/// One upstream origin (scheme, host, port), shared by every route and config generation that
/// names it, so a reload keeps the warm connections.
#[derive(Debug)]
pub struct Origin {
    id: usize,
    https: bool,
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
    sender: http1::SendRequest<ProxyBody>,
    /// The worker's sweep count when this connection was last put back.
    epoch: u64,
}

#[derive(Default)]
struct LocalPool {
    /// Indexed by [`Origin::id`]: a stack, most recently used on top.
    idle: Vec<Vec<Idle>>,
    epoch: u64,
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
        loop {
            let (mut sender, reused) = match checkout(origin.id) {
                Some(s) => (s, true),
                None => (self.connect(origin).await?, false),
            };
            // A connection put back as its last response ended is idle by now or a moment later.
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(ForwardError::Http(e));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = UpstreamBody {
                        inner: body,
                        lease: (self.inner.max_idle > 0).then_some(Lease {
                            sender,
                            origin: origin.id,
                            max_idle: self.inner.max_idle,
                        }),
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // Closed under us before a byte was written: the request is intact; a pooled
                    // connection may have gone stale, so try another one.
                    Some(r) if reused => req = r,
                    _ => return Err(ForwardError::Http(e.into_error())),
                },
            }
        }
    }

    async fn connect(
        &self,
        origin: &Origin,
    ) -> Result<http1::SendRequest<ProxyBody>, ForwardError> {
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
        if origin.https {
            let tls = self
                .inner
                .tls
                .connect(origin.server_name.clone(), tcp)
                .await
                .map_err(|source| ForwardError::Tls {
                    origin: origin.label(),
                    source,
                })?;
            handshake(tls).await
        } else {
            handshake(tcp).await
        }
    }

    /// Drops this worker's connections that stayed idle for a whole [`IDLE_SWEEP`] period. Each
    /// worker runs this on its own thread every [`IDLE_SWEEP`].
    pub fn sweep_idle() {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            let epoch = p.epoch;
            for stack in &mut p.idle {
                stack.retain(|i| i.epoch >= epoch && !i.sender.is_closed());
            }
            p.epoch += 1;
        });
    }

    /// Idle connections this worker holds to `origin` (for tests and metrics).
    pub fn idle_here(origin: &Origin) -> usize {
        POOL.with(|p| p.borrow().idle.get(origin.id).map_or(0, Vec::len))
    }
}

async fn handshake<T>(io: T) -> Result<http1::SendRequest<ProxyBody>, ForwardError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(ForwardError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// The most recently used open connection to `origin` on this worker.
fn checkout(origin: usize) -> Option<http1::SendRequest<ProxyBody>> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let stack = p.idle.get_mut(origin)?;
        while let Some(idle) = stack.pop() {
            if !idle.sender.is_closed() {
                return Some(idle.sender);
            }
        }
        None
    })
}

/// A connection on loan to one response; back to the pool when its body is read to the end.
struct Lease {
    sender: http1::SendRequest<ProxyBody>,
    origin: usize,
    max_idle: usize,
}

/// An upstream response body: the bytes pass through untouched; the connection it came on goes
/// back to this worker's pool once the body has ended.
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        // Not read to the end: hyper closes the connection; nothing to keep.
        if !self.inner.is_end_stream() || lease.sender.is_closed() {
            return;
        }
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.idle.len() <= lease.origin {
                p.idle.resize_with(lease.origin + 1, Vec::new);
            }
            let epoch = p.epoch;
            let stack = &mut p.idle[lease.origin];
            if stack.len() < lease.max_idle {
                stack.push(Idle {
                    sender: lease.sender,
                    epoch,
                });
            }
        });
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
            for token in v.as_bytes().split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.is_empty()
                    || token.eq_ignore_ascii_case(b"close")
                    || token.eq_ignore_ascii_case(b"keep-alive")
                {
                    continue;
                }
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
    use http_body_util::{BodyExt, Either, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};

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
                    let mut resp = Response::new(match req.uri().path() {
                        "/big" => Full::new(Bytes::from(vec![b'x'; 1 << 20])),
                        _ => Full::new(Bytes::from_static(b"{}")),
                    });
                    if req.uri().path() == "/close" {
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

    async fn read(resp: Response<UpstreamBody>) -> usize {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        body.len()
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
