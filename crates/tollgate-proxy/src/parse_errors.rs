//! JSON bodies on the answers hyper gives before any service runs. A request hyper cannot parse
//! (a bad request line or field, a head over the size limit, a target too long) gets hyper's own
//! `400`, `431` or `414` with no body, and the connection closes. [`JsonParseErrors`] wraps a
//! connection and puts the contract's `{"error":{...}}` body on exactly those answers: it
//! recognises hyper's head whole, byte for byte (status line, `connection: close`,
//! `content-length: 0`, `date`, nothing else: every response a service makes has other fields,
//! `x-request-id` or `content-type`), and writes the same status with the body instead.
//!
//! Used on every listener: the data plane (behind the fast path, which hands such a request to
//! hyper), where the answers are also counted as outcomes under `route="_unmatched"`, and, through
//! the binary, the account and ops listeners.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::respond::{error_body, Refusal};
use crate::server::ProxySlot;

/// Whose error codes the bodies carry: the data plane's (`bad_request`) or the account and ops
/// APIs' (`invalid_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Proxy,
    Api,
}

/// hyper's answers, up to the date (which follows, 29 bytes, then the blank line), and the
/// refusal each stands for.
const CANNED: [(&[u8], Refusal); 3] = [
    (
        b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: ",
        Refusal::BadRequest,
    ),
    (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: ",
        Refusal::HeadersTooLarge,
    ),
    (
        b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: ",
        Refusal::UriTooLong,
    ),
];

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) is always this long.
const DATE_LEN: usize = 29;

/// The response to write instead of `head`, when `head` is one of hyper's bodiless answers to a
/// request it could not parse, and the refusal it is.
fn replacement(head: &[u8], dialect: Dialect) -> Option<(Vec<u8>, Refusal)> {
    let (prefix, refusal) = CANNED.iter().find(|(p, _)| head.starts_with(p))?;
    let date = head[prefix.len()..].strip_suffix(b"\r\n\r\n")?;
    if date.len() != DATE_LEN || !date.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return None;
    }
    let status_line = &prefix[..prefix.iter().position(|b| *b == b'\n')? + 1];
    let body = match (dialect, refusal) {
        (Dialect::Proxy, r) => r.body().to_vec(),
        // The APIs' code for a request they cannot take.
        (Dialect::Api, Refusal::BadRequest) => {
            error_body("invalid_request", refusal.message()).into_bytes()
        }
        (Dialect::Api, r) => error_body(r.code(), r.message()).into_bytes(),
    };
    let mut out = Vec::with_capacity(head.len() + body.len() + 96);
    out.extend_from_slice(status_line);
    out.extend_from_slice(b"content-type: application/json\r\nconnection: close\r\n");
    if dialect == Dialect::Proxy {
        // The data plane's responses all carry one (a new one: no request was read).
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(&crate::proxy::random_hex());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\ndate: ", body.len()).as_bytes());
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
    Some((out, *refusal))
}

/// A connection whose parse-error answers carry JSON bodies (see the module docs).
pub struct JsonParseErrors<T> {
    io: T,
    /// The data plane's proxy, whose `_unmatched` outcome counters count these answers; `None` on
    /// the account and ops listeners.
    counted_by: Option<Arc<ProxySlot>>,
    /// A replacement being written: its bytes, how many are out, and the length of hyper's head it
    /// stands for (reported written once all of it is).
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<T> std::fmt::Debug for JsonParseErrors<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonParseErrors")
            .field("data_plane", &self.counted_by.is_some())
            .finish()
    }
}

impl<T> JsonParseErrors<T> {
    /// A data-plane connection: its answers are counted in `tollgate_requests_total` under
    /// `route="_unmatched"`, with the proxy in `slot` at the time.
    pub fn data_plane(io: T, slot: Arc<ProxySlot>) -> JsonParseErrors<T> {
        JsonParseErrors {
            io,
            counted_by: Some(slot),
            pending: None,
        }
    }

    /// A connection of the account or ops listener (whose answers no metric counts).
    pub fn api(io: T) -> JsonParseErrors<T> {
        JsonParseErrors {
            io,
            counted_by: None,
            pending: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> JsonParseErrors<T> {
    /// Writes the pending replacement out (it stays pending until a write is told it went).
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((bytes, done, _)) = &mut self.pending {
            while *done < bytes.len() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*done..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *done += n;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// `Ready(n)`: all of the replacement is out, and it stands for the `n` bytes of hyper's head.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        Poll::Ready(Ok(self.pending.take().map_or(0, |(_, _, n)| n)))
    }

    /// Whether this write is (or continues) a replacement.
    fn intercepts(&mut self, buf: &[u8]) -> bool {
        if self.pending.is_some() {
            return true;
        }
        // Cheap first: a response head that starts with a 4xx status line.
        if buf.len() < 64 || !buf.starts_with(b"HTTP/1.1 4") {
            return false;
        }
        let dialect = match self.counted_by {
            Some(_) => Dialect::Proxy,
            None => Dialect::Api,
        };
        match replacement(buf, dialect) {
            Some((out, refusal)) => {
                if let Some(slot) = &self.counted_by {
                    slot.load().count_unparsed(refusal);
                }
                self.pending = Some((out, 0, buf.len()));
                true
            }
            None => false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonParseErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.intercepts(buf) {
            return self.poll_pending(cx);
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper's answer is its head alone, in one buffer (it has no body).
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (nonempty.next(), nonempty.next()) {
            if self.intercepts(only) {
                return self.poll_pending(cx);
            }
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Sat, 05 Dec 2026 23:12:40 GMT";

    fn canned(status_line: &str) -> Vec<u8> {
        format!("{status_line}\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n")
            .into_bytes()
    }

    #[test]
    fn hypers_answers_get_a_json_body_with_the_same_status() {
        for (line, status, proxy_code, api_code) in [
            (
                "HTTP/1.1 400 Bad Request",
                400,
                "bad_request",
                "invalid_request",
            ),
            (
                "HTTP/1.1 431 Request Header Fields Too Large",
                431,
                "headers_too_large",
                "headers_too_large",
            ),
            (
                "HTTP/1.1 414 URI Too Long",
                414,
                "uri_too_long",
                "uri_too_long",
            ),
        ] {
            for (dialect, code) in [(Dialect::Proxy, proxy_code), (Dialect::Api, api_code)] {
                let (out, _) = replacement(&canned(line), dialect).expect(line);
                let text = String::from_utf8(out).unwrap();
                let (head, body) = text.split_once("\r\n\r\n").unwrap();
                assert!(head.starts_with(&format!("{line}\r\n")), "{head}");
                assert!(head.contains("content-type: application/json\r\n"));
                assert!(head.contains("connection: close\r\n"));
                assert!(head.contains(&format!("content-length: {}\r\n", body.len())));
                assert!(head.ends_with(&format!("date: {DATE}")));
                let id = head.lines().find_map(|l| l.strip_prefix("x-request-id: "));
                match dialect {
                    Dialect::Proxy => assert_eq!(id.map(str::len), Some(32), "{head}"),
                    Dialect::Api => assert_eq!(id, None, "{head}"),
                }
                let json: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(json["error"]["code"], code, "{status}");
                assert!(json["error"]["message"].as_str().unwrap().ends_with('.'));
            }
        }
    }

    #[test]
    fn responses_a_service_made_pass_untouched() {
        // A service's 400 always has more fields (content-type, x-request-id).
        let service = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 23:12:40 GMT\r\n\r\n";
        assert!(replacement(service, Dialect::Proxy).is_none());
        // Another status, a head followed by body bytes, a head cut short.
        assert!(replacement(&canned("HTTP/1.1 404 Not Found"), Dialect::Proxy).is_none());
        let mut with_body = canned("HTTP/1.1 400 Bad Request");
        with_body.extend_from_slice(b"x");
        assert!(replacement(&with_body, Dialect::Proxy).is_none());
        let whole = canned("HTTP/1.1 400 Bad Request");
        assert!(replacement(&whole[..whole.len() - 2], Dialect::Proxy).is_none());
    }

    #[tokio::test]
    async fn a_replacement_goes_out_whole_through_a_slow_writer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A pipe that takes at most 7 bytes a write: the replacement needs many.
        let (client, server) = tokio::io::duplex(7);
        let mut wrapped = JsonParseErrors::api(server);
        let head = canned("HTTP/1.1 400 Bad Request");
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        wrapped.write_all(&head).await.unwrap();
        wrapped
            .write_all(b"later bytes pass as they are")
            .await
            .unwrap();
        wrapped.shutdown().await.unwrap();
        drop(wrapped);
        let got = String::from_utf8(reader.await.unwrap()).unwrap();
        let expected = String::from_utf8(replacement(&head, Dialect::Api).unwrap().0).unwrap();
        assert_eq!(got, format!("{expected}later bytes pass as they are"));
    }
}
