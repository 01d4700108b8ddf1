//! `StubUpstream`: a real HTTP/1.1 server that records every request that reaches it and answers
//! as scripted (status, delay, body) per path prefix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query exactly as received.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How to answer requests under a path prefix.
#[derive(Debug, Clone)]
pub struct Script {
    pub status: StatusCode,
    pub delay: Duration,
    pub body: Bytes,
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Recorded>>,
    scripts: Mutex<BTreeMap<String, Script>>,
    connections: std::sync::atomic::AtomicUsize,
}

/// See the module docs. Stops on drop.
pub struct StubUpstream {
    pub addr: SocketAddr,
    /// For an HTTPS stub: its self-signed certificate (PEM), for the client to trust.
    pub ca_pem: Option<String>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl StubUpstream {
    pub async fn start() -> StubUpstream {
        Self::start_with(None).await
    }

    /// An HTTPS stub on 127.0.0.1 with a fresh self-signed certificate for that address.
    pub async fn start_tls() -> StubUpstream {
        let ck = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .expect("self-signed certificate");
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .expect("key der");
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let mut stub = Self::start_with(Some(acceptor)).await;
        stub.ca_pem = Some(ck.cert.pem());
        stub
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> StubUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stub upstream");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                s.connections
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let uri = parts
                                .uri
                                .path_and_query()
                                .map(|p| p.as_str().to_owned())
                                .unwrap_or_default();
                            let script = {
                                let scripts = s.scripts.lock();
                                scripts
                                    .iter()
                                    .rev()
                                    .find(|(prefix, _)| uri.starts_with(prefix.as_str()))
                                    .map(|(_, sc)| sc.clone())
                            };
                            s.seen.lock().push(Recorded {
                                method: parts.method,
                                uri,
                                headers: parts.headers,
                                body,
                            });
                            let (status, delay, body) = match script {
                                Some(sc) => (sc.status, sc.delay, sc.body),
                                None => (
                                    StatusCode::OK,
                                    Duration::ZERO,
                                    Bytes::from_static(b"{\"ok\":true}"),
                                ),
                            };
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let mut resp = Response::new(Full::new(body));
                            *resp.status_mut() = status;
                            resp.headers_mut().insert(
                                "content-type",
                                "application/json".parse().expect("static"),
                            );
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        StubUpstream {
            addr,
            ca_pem: None,
            shared,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`, or `https://` for a TLS stub.
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Answer requests whose path starts with `prefix` this way (longest prefix wins).
    pub fn script(&self, prefix: &str, status: u16, delay: Duration) {
        self.shared.scripts.lock().insert(
            prefix.to_owned(),
            Script {
                status: StatusCode::from_u16(status).expect("valid status"),
                delay,
                body: Bytes::from_static(b"{\"scripted\":true}"),
            },
        );
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.seen.lock().clone()
    }

    /// TCP connections accepted so far (keep-alive reuse shows as fewer connections than requests).
    pub fn connections(&self) -> usize {
        self.shared
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn count(&self) -> usize {
        self.shared.seen.lock().len()
    }

    pub fn last(&self) -> Option<Recorded> {
        self.shared.seen.lock().last().cloned()
    }
}

impl Drop for StubUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
