//! A minimal HTTP client for tests (HTTP/1.1, or h2c with prior knowledge).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// What came back.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error.code` of a refusal body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request. `url` is absolute (`http://127.0.0.1:port/path?query`).
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<Reply> {
    send_with(false, method, url, headers, Full::new(body.into())).await
}

/// As [`send`], over HTTP/2 cleartext with prior knowledge.
pub async fn send_h2c(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    send_with(true, method, url, headers, Full::new(Bytes::new())).await
}

/// As [`send_h2c`], with a body: of a stated length (`content-length`, from the body's size) when
/// `sized`, else in frames of no stated length.
pub async fn send_h2c_body(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
    sized: bool,
) -> anyhow::Result<Reply> {
    let body = body.into();
    if sized {
        send_with(true, method, url, headers, Full::new(body)).await
    } else {
        send_with(true, method, url, headers, Unsized(Some(body))).await
    }
}

/// As [`send`], with a body of no stated length: HTTP/1.1 sends it chunked (so the gateway's
/// hyper path serves it, where a `Content-Length` body up to 64 KiB takes the fast path).
pub async fn send_chunked(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<Reply> {
    send_with(false, method, url, headers, Unsized(Some(body.into()))).await
}

/// A body whose length is not known up front (one data frame).
struct Unsized(Option<Bytes>);

impl hyper::body::Body for Unsized {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

async fn send_with<B>(
    h2: bool,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: B,
) -> anyhow::Result<Reply>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let client: Client<_, B> = Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http();
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(body)?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await??;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
    send(Method::GET, url, headers, Bytes::new()).await
}

pub async fn post_json(
    url: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> anyhow::Result<Reply> {
    let mut h: Vec<(&str, &str)> = headers.to_vec();
    h.push(("content-type", "application/json"));
    send(Method::POST, url, &h, body.to_string()).await
}
