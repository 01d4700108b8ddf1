//! The proxy listener: HTTP/1.1 and h2c on one port (hyper-util's auto builder), or TLS with HTTP/2
//! by ALPN; the [`Proxy`] in force swapped atomically on a config reload; a listener that a second
//! process can bind too (`SO_REUSEPORT`), and a drain that hands clients over to it without a
//! failed request.
//!
//! Draining, in order: (1) every HTTP/1 response carries `Connection: close`, so each client leaves
//! its keep-alive connection after the response it is waiting for, instead of having an idle
//! connection closed under a request it is sending; (2) the connections the kernel already queued on
//! this listener are accepted and served, then the listener is closed (a queued connection would be
//! reset by the close); (3) up to [`KEEPALIVE_LINGER`] for clients to notice, then hyper's graceful
//! shutdown (GOAWAY for HTTP/2, close for idle HTTP/1) and up to `drain` for in-flight requests.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{HeaderValue, CONNECTION};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::parse_errors::JsonParseErrors;
use crate::proxy::Client;
use crate::tls::TlsTerminator;
use crate::Proxy;

/// The proxy in force: requests load it once at their start, a reload stores a new one.
pub type ProxySlot = ArcSwap<Proxy>;

/// How long a draining listener waits for keep-alive clients to take their `Connection: close`
/// before closing idle connections under them.
pub const KEEPALIVE_LINGER: Duration = Duration::from_secs(1);

/// A TLS handshake slower than this is dropped (a client that connects and sends nothing must not
/// hold a task, or the drain, for long).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The pending-connection queue of each listener (what `TcpListener::bind` uses too).
const BACKLOG: i32 = 1024;

/// Binds `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`, so a new gateway process can bind the same
/// port while the old one drains (the kernel spreads new connections over both; only processes of
/// the same user may join). A process that is not such a successor probes with
/// [`ensure_unbound`] first. Must run inside the tokio runtime.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr)?)
}

/// Fails with [`io::ErrorKind::AddrInUse`] if any socket listens on `addr`, a `SO_REUSEPORT` group
/// of another process included: the probe binds without `SO_REUSEPORT`, so it joins no group, and
/// is closed before it returns. Run it before [`bind`], whose `SO_REUSEPORT` would otherwise
/// quietly join another gateway's port and split the traffic between two processes. It sets
/// `SO_REUSEADDR`, as [`bind`] does, so connections in `TIME_WAIT` from an earlier process on the
/// port do not count. Port 0 is not probed: the kernel gives a bind to port 0 a port that no other
/// socket holds, `SO_REUSEPORT` or not (Linux 4.6 and later). Two processes probing in the same
/// instant can both pass; this catches the usual case, a port already in use when one starts.
pub fn ensure_unbound(addr: SocketAddr) -> io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into())
}

/// [`bind`], for a listener to hand to another thread's runtime.
pub fn bind_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// The data plane's threads: each runs its own single-threaded tokio runtime with its own
/// `SO_REUSEPORT` listener on the proxy address, so the kernel spreads connections over them and a
/// connection's requests, its upstream connections and their pool stay on one core, with no
/// cross-thread wake-up, work stealing or shared pool lock per request. (Measured against one
/// work-stealing runtime: see the README's performance section.)
pub struct Workers {
    addr: SocketAddr,
    done: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl Workers {
    /// Binds `workers` listeners on `addr` (port 0: one free port for all) and starts a thread
    /// for each; they serve until `shutdown` turns `true`, then drain as [`serve`] does.
    pub fn start(
        addr: SocketAddr,
        workers: usize,
        proxy: Arc<ProxySlot>,
        options: ServeOptions,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> io::Result<Workers> {
        let first = bind_std(addr)?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..workers.max(1) {
            listeners.push(bind_std(addr)?);
        }
        let mut done = Vec::with_capacity(listeners.len());
        for (i, listener) in listeners.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (proxy, options, mut shutdown) = (proxy.clone(), options.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name(format!("tollgate-w{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let listener = match TcpListener::from_std(listener) {
                            Ok(l) => l,
                            Err(e) => {
                                tracing::error!(error = %e, "data-plane worker cannot listen");
                                return;
                            }
                        };
                        let sweeper = tokio::spawn(async {
                            use crate::forward::{Upstreams, EXCESS_TRIM, IDLE_SWEEP};
                            let mut sweep = tokio::time::interval(IDLE_SWEEP);
                            let mut trim = tokio::time::interval(EXCESS_TRIM);
                            loop {
                                tokio::select! {
                                    _ = sweep.tick() => Upstreams::sweep_idle(),
                                    _ = trim.tick() => Upstreams::trim_excess(),
                                }
                            }
                        });
                        let stop = async move {
                            let _ = shutdown.wait_for(|stop| *stop).await;
                        };
                        serve(listener, proxy, options, stop).await;
                        sweeper.abort();
                    });
                    let _ = tx.send(());
                })?;
            done.push(rx);
        }
        Ok(Workers { addr, done })
    }

    /// The address every worker listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resolves when every worker has drained and stopped.
    pub async fn join(self) {
        for d in self.done {
            let _ = d.await;
        }
    }
}

/// What [`serve`] needs besides the listener and the proxy.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest request head (at least 8 KiB: hyper's floor).
    pub max_header_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    pub drain: Duration,
    /// Terminate TLS with this certificate (replaceable at run time).
    pub tls: Option<Arc<TlsTerminator>>,
}

struct Shared {
    proxy: Arc<ProxySlot>,
    draining: AtomicBool,
    /// Turns `true` when idle connections are to close (hyper's graceful shutdown starts).
    closing: tokio::sync::watch::Sender<bool>,
    max_head: usize,
}

static CLOSE: HeaderValue = HeaderValue::from_static("close");

/// Accepts connections until `shutdown` resolves, then drains (see the module docs).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<ProxySlot>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let builder = builder(options.max_header_bytes);
    let graceful = GracefulShutdown::new();
    let shared = Arc::new(Shared {
        proxy,
        draining: AtomicBool::new(false),
        closing: tokio::sync::watch::Sender::new(false),
        max_head: options.max_header_bytes.max(8192),
    });
    let tls = options.tls.as_ref();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        start(&builder, &graceful, &shared, tls, stream, remote);
    }

    shared.draining.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + options.drain;
    // The kernel may have completed handshakes this process has not accepted yet: serve them
    // rather than reset them by closing the listener.
    match listener.into_std() {
        Ok(std_listener) => loop {
            match std_listener.accept() {
                Ok((stream, remote)) => {
                    let stream = stream
                        .set_nonblocking(true)
                        .and_then(|()| TcpStream::from_std(stream));
                    match stream {
                        Ok(s) => start(&builder, &graceful, &shared, tls, s, remote),
                        Err(e) => tracing::debug!(error = %e, "dropping a queued connection"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: the queue is empty; dropping the listener closes it now.
                Err(_) => break,
            }
        },
        Err(e) => tracing::warn!(error = %e, "could not take the listener's last connections"),
    }

    let linger_end = Instant::now() + KEEPALIVE_LINGER.min(options.drain);
    while graceful.count() > 0 && Instant::now() < linger_end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shared.closing.send_replace(true);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep_until(deadline) => {
            tracing::warn!("drain timeout passed with requests still in flight");
        }
    }
}

fn builder(max_header_bytes: usize) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(max_header_bytes.max(8192))
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_header_bytes.max(8192) as u32);
    builder
}

/// Serves one accepted connection on its own task (the TLS handshake too, so a slow client never
/// holds up the accept loop).
fn start(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    shared: &Arc<Shared>,
    tls: Option<&Arc<TlsTerminator>>,
    stream: TcpStream,
    remote: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    // One allocation per connection; each request clones one `Arc`.
    let conn = Arc::new((shared.clone(), Client::new(remote, tls.is_some())));
    let fast = conn.clone();
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let conn = conn.clone();
        // Boxed: the request's future is several KiB, and HTTP/2 moves each stream's future
        // into a task of its own (three copies a request, where the box costs one allocation).
        Box::pin(async move {
            let (shared, client) = &*conn;
            // Loaded once per request: a reload in the meantime does not change this request's
            // routes, limits or prices.
            let proxy = shared.proxy.load_full();
            let http1 = req.version() < http::Version::HTTP_2;
            let mut resp = proxy.handle(req, client).await;
            if http1 && shared.draining.load(Ordering::Relaxed) {
                resp.headers_mut().insert(CONNECTION, CLOSE.clone());
            }
            Ok::<_, std::convert::Infallible>(resp)
        })
    });
    match tls {
        None => {
            // The fast path first (plain HTTP/1.1 GET and HEAD); hyper takes over the connection,
            // with the bytes already read, at the first request that is anything else.
            let watcher = graceful.watcher();
            let builder = builder.clone();
            tokio::spawn(async move {
                let (shared, client) = &*fast;
                let mut closing = shared.closing.subscribe();
                let handed = crate::proxy::serve_conn(
                    stream,
                    &shared.proxy,
                    client,
                    shared.max_head,
                    &shared.draining,
                    &mut closing,
                )
                .await;
                let Some((stream, read)) = handed else {
                    return;
                };
                let conn = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(JsonParseErrors::data_plane(
                            Rewind::new(read, stream),
                            shared.proxy.clone(),
                        )),
                        service,
                    )
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::trace!(error = %e, "client connection ended with an error");
                }
            });
        }
        Some(tls) => {
            // Watched from before the handshake, so the drain waits for it too.
            let watcher = graceful.watcher();
            let builder = builder.clone();
            let acceptor = tls.acceptor();
            let counted_by = shared.proxy.clone();
            tokio::spawn(async move {
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    };
                let stream = JsonParseErrors::data_plane(stream, counted_by);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::trace!(error = %e, "client connection ended with an error");
                }
            });
        }
    }
}

/// A connection with bytes already read from it in front: what the fast path hands hyper.
struct Rewind {
    read: bytes::Bytes,
    io: TcpStream,
}

impl Rewind {
    fn new(read: bytes::Bytes, io: TcpStream) -> Rewind {
        Rewind { read, io }
    }
}

impl tokio::io::AsyncRead for Rewind {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            let head = self.read.split_to(n);
            buf.put_slice(&head);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Rewind {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_second_listener_binds_the_same_port() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind(addr).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        // A plain bind (no SO_REUSEPORT) is still refused: only gateways share the port.
        assert!(std::net::TcpListener::bind(addr).is_err());
    }

    #[tokio::test]
    async fn the_probe_sees_a_reuseport_group_and_any_other_listener() {
        let group = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = group.local_addr().unwrap();
        let e = ensure_unbound(addr).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        // The probe joined nothing: the group's own members can still bind.
        bind(addr).unwrap();

        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = plain.local_addr().unwrap();
        assert_eq!(
            ensure_unbound(addr).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(plain);
        ensure_unbound(addr).unwrap();
        // And the port is free again after the probe.
        bind(addr).unwrap();
        ensure_unbound("127.0.0.1:0".parse().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn the_probe_ignores_time_wait_left_by_an_earlier_listener() {
        use tokio::io::AsyncReadExt;
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        drop(listener);
        // The server side closes first, so its end of the connection stays in TIME_WAIT.
        drop(server);
        let mut client = client;
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
        drop(client);
        ensure_unbound(addr).unwrap();
        bind(addr).unwrap();
    }
}
