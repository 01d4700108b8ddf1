//! Through `serve` on a real socket: HTTP/1.1 and h2c, the body limit on the wire (declared and
//! chunked), and a graceful drain on shutdown.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tollgate_api::{serve, ApiKind};

use super::harness::{Harness, OP_TOKEN};

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(h: &Harness, kind: ApiKind) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let plain = |s: TcpStream| s;
    let task = tokio::spawn(serve(
        listener,
        kind,
        Arc::clone(&h.state),
        plain,
        async move {
            let _ = rx.await;
        },
    ));
    Server {
        addr,
        stop: Some(tx),
        task,
    }
}

async fn http1(
    addr: std::net::SocketAddr,
    req: Request<Full<Bytes>>,
) -> (u16, http::HeaderMap, Bytes) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = send.send_request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    (
        parts.status.as_u16(),
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn account_api_over_http1_and_h2c() {
    let h = Harness::new();
    let (pid, pkey) = h.parent("p@example.com", true).await;
    let mut server = start(&h, ApiKind::Account).await;

    let req = Request::get("/v1/me")
        .header("host", "localhost")
        .header("x-api-key", &pkey)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = http1(server.addr, req).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["id"], pid.as_str());

    // A POST with a JSON body.
    let req = Request::post("/v1/team/members")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {pkey}"))
        .body(Full::new(Bytes::from_static(
            br#"{"email":"kid@example.com"}"#,
        )))
        .unwrap();
    assert_eq!(http1(server.addr, req).await.0, 201);

    // h2c with prior knowledge.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{}/v1/me?apiKey={pkey}", server.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);

    let _ = server.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(10), &mut server.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
}

#[tokio::test]
async fn oversized_bodies_on_the_wire() {
    let h = Harness::new();
    let (_, pkey) = h.parent("p@example.com", true).await;
    let server = start(&h, ApiKind::Account).await;

    // Declared too large: refused from the header.
    let req = Request::post("/v1/team/members")
        .header("host", "localhost")
        .header("x-api-key", &pkey)
        .body(Full::new(Bytes::from(vec![b' '; 65 * 1024])))
        .unwrap();
    let (status, _, body) = http1(server.addr, req).await;
    assert_eq!(status, 413);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");

    // Chunked, no length: refused once the limit is crossed, without waiting for the rest.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/team/members HTTP/1.1\r\nhost: localhost\r\nx-api-key: {pkey}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 70 * 1024];
    stream
        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
        .await
        .unwrap();
    stream.write_all(&chunk).await.unwrap();
    stream.write_all(b"\r\n").await.unwrap();
    // No terminating chunk: the server must answer anyway.
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("answered before the body ended")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

#[tokio::test]
async fn ops_listener_and_graceful_drain() {
    let h = Harness::new();
    let mut server = start(&h, ApiKind::Ops).await;
    let req = Request::get("/metrics")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, _) = http1(server.addr, req).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let req = Request::post("/admin/v1/parents")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {OP_TOKEN}"))
        .body(Full::new(Bytes::from_static(
            br#"{"email":"p@example.com"}"#,
        )))
        .unwrap();
    assert_eq!(http1(server.addr, req).await.0, 201);

    // An idle keep-alive connection does not hold the drain up.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("/healthz")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);

    let _ = server.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(10), &mut server.task)
        .await
        .expect("serve drains and returns")
        .unwrap();
    // The listener is closed: new connections are refused.
    assert!(TcpStream::connect(server.addr).await.is_err());
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
}
