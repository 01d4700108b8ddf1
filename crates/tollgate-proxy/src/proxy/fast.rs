//! The fast path: what most API traffic is (HTTP/1.1 `GET` and `HEAD`, and `POST`, `PUT`, `PATCH`
//! and `DELETE` with a `Content-Length` body of at most [`FAST_BODY_MAX`] bytes, on plain TCP, to a
//! plain-HTTP upstream) is parsed with `httparse` and forwarded as bytes: the client's fields are
//! copied into the upstream request as they came, less the ones Tollgate takes out, the body
//! after them as it came, and the upstream's response head is re-written once for the client. No
//! `http::Request`, no header map, no per-request task or channel.
//!
//! A key in a JSON body (a `json:` source, when no head source has one) is read here too, and the
//! key field cut out of a JSON body (unless the key is forwarded) wherever the key came from, as
//! on hyper's path. Anything else (HTTP/2, `h2c` upgrades, chunked or larger bodies,
//! `Expect`, other methods, TLS, an HTTPS upstream, a head this code does not parse, a head larger
//! than `max_header_bytes`) hands the connection, with the bytes already read, to hyper for the
//! rest of its life: the first such request sees exactly what hyper would have done. Both paths
//! share the admission, metering, limits, metrics and log code in `proxy.rs`; the tests drive
//! both.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::{Buf as _, Bytes, BytesMut};
use http::StatusCode;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tollgate_core::DenyReason;

use super::{rate_limit_headers_into, Client, Deadlines, Proxy, RequestId, X_REQUEST_ID};
use crate::access_log::{Line, Trace};
use crate::extract;
use crate::forward::{connection_names, is_hop_by_hop, UpstreamBody};
use crate::respond::Refusal;
use crate::router::Router;
use crate::server::ProxySlot;
use crate::wire::RawHead;

/// How long a client may take to send a request head, idle keep-alive time included (as hyper's
/// `header_read_timeout` on the other path). Re-armed at most every few seconds, not per request.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const REARM_AFTER: std::time::Duration = std::time::Duration::from_secs(5);
const MAX_HEADERS: usize = 100;
/// The largest request body the fast path holds and forwards whole (as much as a `json:` source
/// reads); a longer one goes to hyper, which streams it.
pub(crate) const FAST_BODY_MAX: usize = extract::JSON_BODY_LIMIT;

/// Serves `stream` on the fast path for as long as its requests qualify. `Some`: hand the
/// connection and the bytes read so far to hyper.
pub(crate) async fn serve_conn(
    mut stream: TcpStream,
    slot: &ProxySlot,
    client: &Client,
    max_head: usize,
    draining: &AtomicBool,
    closing: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, Bytes)> {
    let mut buf = BytesMut::with_capacity(4096);
    let mut scratch = Scratch {
        out: Vec::with_capacity(1024),
        up: Vec::with_capacity(1024),
        deadlines: Deadlines::default(),
    };
    let sleep = tokio::time::sleep(HEADER_TIMEOUT);
    tokio::pin!(sleep);
    // One wait for the drain per connection, not one per request: it stays registered with the
    // channel between polls (and sees a `true` sent while it was not being polled).
    let closed = closing.wait_for(|c| *c);
    tokio::pin!(closed);
    let mut armed_at = tokio::time::Instant::now();
    // The bytes the request at the front needs, its body included, once its head said so.
    let mut need = 0;
    loop {
        // 1. A whole request head (pipelined ones may already be in the buffer). Its end is
        // found by a scan for the blank line; only a head still incomplete is parsed here, to hand
        // one that can never be a request to hyper at once. A complete one is parsed once, in 2.
        // Then its body, if it has one (`need`).
        loop {
            if need > 0 {
                if buf.len() >= need {
                    break;
                }
                buf.reserve(need - buf.len());
            } else if !buf.is_empty() {
                if has_blank_line(&buf) {
                    break;
                }
                match head_length(&buf) {
                    Some(Ok(_)) => break,
                    Some(Err(())) => return Some((stream, buf.freeze())),
                    None if buf.len() >= max_head => return Some((stream, buf.freeze())),
                    None => {}
                }
            }
            let idle = buf.is_empty();
            let read = tokio::select! {
                biased;
                r = stream.read_buf(&mut buf) => r,
                () = &mut sleep => return None,
                _ = &mut closed, if idle => return None,
            };
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }

        // 2. Does it qualify? Decided before anything happens, so hyper can take it as it is.
        let proxy = slot.load_full();
        let mut consumed = 0;
        let verdict = 'request: {
            // Left uninitialized: the parser writes the fields it finds.
            let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut []);
            let head_len = match req.parse_with_uninit_headers(&buf, &mut fields) {
                Ok(httparse::Status::Complete(n)) => n,
                _ => break 'request Verdict::Hyper,
            };
            let Some(mut head) = Head::qualify(&req, &proxy.router) else {
                break 'request Verdict::Hyper;
            };
            if buf.len() < head_len + head.body_len {
                break 'request Verdict::More(head_len + head.body_len);
            }
            consumed = head_len + head.body_len;
            head.body = &buf[head_len..consumed];
            if head
                .route
                .is_some_and(|idx| proxy.runtime[idx].origin.https)
            {
                break 'request Verdict::Hyper;
            }
            let close = head.close || draining.load(Ordering::Relaxed);
            let (body, ended) = proxy.serve_head(&head, client, close, &mut scratch).await;
            let (written, ended) = match body {
                None => (stream.write_all(&scratch.out).await, ended),
                Some(body) => {
                    let written = write_streaming(&mut stream, &scratch.out, body).await;
                    (written, Instant::now())
                }
            };
            // The time a client has for its next head runs from about now: the timer moves
            // when it was last set a while ago (a clock read per request is `ended`'s already).
            let ended = tokio::time::Instant::from_std(ended);
            if ended.saturating_duration_since(armed_at) >= REARM_AFTER {
                sleep.as_mut().reset(ended + HEADER_TIMEOUT);
                armed_at = ended;
            }
            match written {
                Err(_) => Verdict::Gone,
                Ok(()) if close => Verdict::Close,
                Ok(()) => Verdict::Next,
            }
        };
        need = 0;
        match verdict {
            Verdict::Hyper => return Some((stream, buf.freeze())),
            Verdict::More(total) => {
                need = total;
                continue;
            }
            Verdict::Gone => return None,
            Verdict::Close => {
                let _ = stream.shutdown().await;
                return None;
            }
            Verdict::Next => {}
        }
        buf.advance(consumed);
        if buf.capacity() > 64 * 1024 && buf.is_empty() {
            buf = BytesMut::with_capacity(4096);
        }
    }
}

/// What a connection keeps from one request to the next.
struct Scratch {
    /// The response for the client.
    out: Vec<u8>,
    /// The request for the upstream.
    up: Vec<u8>,
    deadlines: Deadlines,
}

enum Verdict {
    /// Not for this path: hyper takes the connection.
    Hyper,
    /// The body is not all here yet: read until the buffer holds this many bytes, then again.
    More(usize),
    /// Answered; read the next request.
    Next,
    /// Answered with `Connection: close`.
    Close,
    /// The client went away.
    Gone,
}

/// Whether `buf` holds the end of a request head: an empty line, ended by CRLF or (as httparse
/// also accepts) a bare LF, after the request line (empty lines before it are skipped, as httparse
/// skips them).
fn has_blank_line(buf: &[u8]) -> bool {
    let Some(start) = buf.iter().position(|&b| b != b'\r' && b != b'\n') else {
        return false;
    };
    let buf = &buf[start..];
    memchr::memchr_iter(b'\n', buf).any(|i| match buf.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => buf.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

/// The length of the request head at the start of `buf`: `Some(Err)` for bytes that are not an
/// HTTP/1 request head this path reads (an HTTP/2 preface, say); `None` for more to come.
fn head_length(buf: &[u8]) -> Option<Result<usize, ()>> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Some(Ok(n)),
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Err(())),
    }
}

/// A `Content-Length` value the fast path takes: decimal digits, at most [`FAST_BODY_MAX`].
fn body_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    // `parse` alone would also take a leading `+`.
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (n <= FAST_BODY_MAX).then_some(n)
}

/// A request head that qualifies for the fast path.
struct Head<'h, 'b> {
    head_req: bool,
    method: &'b str,
    target: &'b str,
    query: Option<&'b str>,
    fields: &'h [httparse::Header<'b>],
    /// The `Host` field's value as it came (for `x-forwarded-host`).
    host_field: &'b str,
    /// The path failed [`crate::path::is_safe`]: refused before its key or route is looked at.
    bad_path: bool,
    /// The route, found from the `Host` field and the path (`None` for a bad path).
    route: Option<usize>,
    /// The client asked for `Connection: close`.
    close: bool,
    /// The `Content-Length` of the body (0: none).
    body_len: usize,
    /// The body, once all of it is in the buffer.
    body: &'b [u8],
}

impl<'h, 'b> Head<'h, 'b> {
    fn qualify(req: &'h httparse::Request<'_, 'b>, router: &Router) -> Option<Head<'h, 'b>> {
        if req.version != Some(1) {
            return None;
        }
        let method = req.method?;
        let head_req = match method {
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE" => false,
            "HEAD" => true,
            _ => return None,
        };
        let target = req.path?;
        if !target.starts_with('/') {
            return None;
        }
        let (mut host, mut close, mut body_len) = (None, false, None);
        for f in req.headers.iter() {
            let name = f.name.as_bytes();
            if name.eq_ignore_ascii_case(b"host") {
                if host.is_some() {
                    return None;
                }
                host = Some(std::str::from_utf8(f.value).ok()?);
            } else if name.eq_ignore_ascii_case(b"content-length") {
                // One length, of digits only, and small enough to hold: anything else is hyper's
                // (which refuses conflicting lengths, and streams long bodies).
                if body_len.is_some() {
                    return None;
                }
                body_len = Some(body_length(f.value)?);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"expect")
                || name.eq_ignore_ascii_case(b"upgrade")
                || name.eq_ignore_ascii_case(b"http2-settings")
            {
                return None;
            } else if name.eq_ignore_ascii_case(b"connection") {
                if connection_names(f.value).next().is_some() {
                    // It names fields to drop: hyper's path handles that.
                    return None;
                }
                close |= f
                    .value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
        }
        let body_len = body_len.unwrap_or(0);
        if head_req && body_len > 0 {
            return None;
        }
        let host_field = host?;
        let host = crate::router::host_of(host_field);
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let bad_path = !crate::path::is_safe(path.as_bytes());
        Some(Head {
            head_req,
            method,
            target,
            query,
            fields: &*req.headers,
            host_field,
            bad_path,
            route: if bad_path {
                None
            } else {
                router.find(Some(host), path)
            },
            close,
            body_len,
            body: &[],
        })
    }

    /// The request's side of its access line.
    fn line<'c>(&self, client: &'c Client) -> Line<'c>
    where
        'b: 'c,
    {
        Line {
            method: self.method,
            target: self.target,
            client: client.ip.as_bytes(),
        }
    }

    fn field(&self, name: &str) -> Option<&'b [u8]> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
    }
}

impl Proxy {
    /// One fast-path request: the response head (and a body already in hand) go into `out`; a
    /// body still to read off the upstream comes back.
    async fn serve_head(
        &self,
        head: &Head<'_, '_>,
        client: &Client,
        close: bool,
        scratch: &mut Scratch,
    ) -> (Option<UpstreamBody>, Instant) {
        let started = Instant::now();
        let out = &mut scratch.out;
        out.clear();
        let id = RequestId::from_field(head.field("x-request-id"));
        let request_id = id.as_bytes();
        let mut trace = Trace::default();
        let line = head.line(client);
        let Some(idx) = head.route else {
            let r = if head.bad_path {
                Refusal::InvalidRequest
            } else {
                Refusal::Deny(DenyReason::RouteNotFound)
            };
            let ended = self.record(None, started, request_id, line, &trace, Err(r));
            let body = self.refusal_body(r);
            write_refusal(out, r, body, None, request_id, (head.head_req, close));
            return (None, ended);
        };
        match self
            .forward_head(
                idx, head, client, request_id, started, &mut trace, close, scratch,
            )
            .await
        {
            Ok((status, mut body)) => {
                if let Some(b) = body.as_mut() {
                    let timeout = self.router.routes()[idx].timeout;
                    trace.duration_at_body_end =
                        b.arm(timeout, &self.runtime[idx].duration, started);
                }
                let ended = self.record(Some(idx), started, request_id, line, &trace, Ok(status));
                (body, ended)
            }
            Err((r, retry_after)) => {
                let ended = self.record(Some(idx), started, request_id, line, &trace, Err(r));
                let out = &mut scratch.out;
                out.clear();
                let body = self.refusal_body(r);
                write_refusal(
                    out,
                    r,
                    body,
                    retry_after,
                    request_id,
                    (head.head_req, close),
                );
                (None, ended)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward_head(
        &self,
        idx: usize,
        head: &Head<'_, '_>,
        client: &Client,
        request_id: &[u8],
        started: Instant,
        trace: &mut Trace,
        close: bool,
        scratch: &mut Scratch,
    ) -> Result<(StatusCode, Option<UpstreamBody>), (Refusal, Option<u64>)> {
        let rt = &self.runtime[idx];
        let Scratch { out, up, deadlines } = scratch;

        // 1. The key: head sources first; a JSON body (taken out of it unless the key is
        // forwarded) only if they had none.
        let mut rewritten = None;
        let key = match extract::from_fields(|name| head.field(name), head.query, &self.sources) {
            Some(key) => key,
            None => {
                let missing = (Refusal::Deny(DenyReason::KeyMissing), None);
                let field = self.json_field.as_deref().ok_or(missing)?;
                if head.body.is_empty() || !extract::is_json_type(head.field("content-type")) {
                    return Err(missing);
                }
                let (key, body) =
                    extract::from_json(head.body, field, !self.forward_key).ok_or(missing)?;
                rewritten = body;
                key
            }
        };

        // 2-4. Who, may it, limits and credits: the same code as hyper's path.
        let (credits, standing) = self
            .admit_key(idx, &key, head.query, started, trace)
            .await?;
        let principal = trace
            .principal
            .as_ref()
            .ok_or((Refusal::Deny(DenyReason::KeyUnknown), None))?;

        // A JSON body the key did not come from may hold the key field too: it goes without it.
        if rewritten.is_none() && !head.body.is_empty() {
            if let Some(field) = self.strip_json_field() {
                if extract::is_json_type(head.field("content-type")) {
                    rewritten = extract::strip_json(head.body, field).map(Bytes::from);
                }
            }
        }

        // 5. The upstream request, its fields copied as they came but for Tollgate's own.
        up.clear();
        self.write_request_start(head.method, head.target, head.query, rt, up);
        // A body re-written without its key gets its own length in place of the client's.
        let fields = || {
            head.fields
                .iter()
                .map(|f| (f.name, f.value))
                .filter(|(name, _)| {
                    rewritten.is_none() || !name.eq_ignore_ascii_case("content-length")
                })
        };
        let host = Some(head.host_field.as_bytes());
        self.write_upstream_fields(fields, host, rt, principal, client, request_id, up);
        if let Some(body) = &rewritten {
            push_length(up, body.len() as u64);
        }
        up.extend_from_slice(b"\r\n");
        // The body after the head: as it came, or without its key.
        up.extend_from_slice(rewritten.as_deref().unwrap_or(head.body));
        // A request that may not be repeated is not sent again on a fresh connection when a
        // pooled one fails (as on hyper's path).
        let idempotent = matches!(head.method, "GET" | "HEAD" | "PUT" | "DELETE");

        // The exchange. As the upstream's response head arrives, the start of the client's (step
        // 7) is written from it where it lies in the connection's buffer (no header map): its
        // status line and fields, less hop-by-hop ones and those Tollgate sets.
        let head_req = head.head_req;
        let answer = self
            .call_upstream(
                idx,
                trace,
                Some(deadlines),
                None,
                self.upstreams.send_raw(
                    &rt.origin,
                    up,
                    head_req,
                    idempotent,
                    |raw: &RawHead<'_>| Ok(client_head(raw, head_req, out)),
                ),
            )
            .await;

        // 6. Charge what the upstream answered (or give back credits taken for nothing).
        let status = answer.as_ref().ok().map(|((status, _), _)| *status);
        self.settle(idx, trace, credits, standing.as_ref(), status);
        let ((status, has_date), body) = answer.map_err(|r| (r, None))?;

        // 7. The rest of the client's response head: Tollgate's fields, then the body's framing.

        if let Some(s) = &standing {
            rate_limit_headers_into(out, s);
        }
        push_field(out, X_REQUEST_ID.as_str().as_bytes(), request_id);
        if !has_date {
            push_date(out);
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        let no_body = head.head_req
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        if no_body {
            out.extend_from_slice(b"\r\n");
            return Ok((status, None));
        }
        match body {
            UpstreamBody::Whole(data) => {
                let data = data.unwrap_or_default();
                push_length(out, data.len() as u64);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&data);
                Ok((status, None))
            }
            UpstreamBody::Streaming(b) => {
                match b.size_hint().exact() {
                    Some(n) => push_length(out, n),
                    None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
                }
                out.extend_from_slice(b"\r\n");
                Ok((status, Some(UpstreamBody::Streaming(b))))
            }
        }
    }
}

/// The status line and fields of the client's response, from the upstream's head: its fields as
/// they came, less hop-by-hop ones (and those `Connection` names), `content-length` (set again
/// from the body, but for `HEAD`) and the ones Tollgate sets. The status, and whether a `date` came.
fn client_head(raw: &RawHead<'_>, head_req: bool, out: &mut Vec<u8>) -> (StatusCode, bool) {
    let status = raw.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let connection = || {
        raw.fields
            .iter()
            .filter(|f| f.name.len() == 10 && f.name.eq_ignore_ascii_case("connection"))
            .map(|f| f.value)
    };
    // Usually `Connection: keep-alive` or none: then no field needs looking up in it.
    let names_fields = connection().any(|v| connection_names(v).next().is_some());
    let named = |name: &str| {
        connection().any(|v| connection_names(v).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
    };
    let mut has_date = false;
    for f in raw.fields {
        let name = f.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        // Tollgate's own, and the length (set again from the body): by length first.
        let own = match name.len() {
            9 => is("ratelimit"),
            12 => is("x-request-id"),
            14 => !head_req && is("content-length"),
            16 => is("ratelimit-policy"),
            _ => false,
        };
        if own || is_hop_by_hop(name) || (names_fields && named(name)) {
            continue;
        }
        has_date |= name.len() == 4 && is("date");
        push_field(out, name.as_bytes(), f.value);
    }
    (status, has_date)
}

pub(super) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    super::push_num(out, n);
    out.extend_from_slice(b"\r\n");
}

/// `date`, as hyper's server adds it: rendered once a second per worker.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((0, Vec::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            d.0 = secs;
            d.1 = httpdate::fmt_http_date(now).into_bytes();
        }
        push_field(out, b"date", &d.1);
    });
}

/// A refusal, as hyper's path writes it: the status line and fixed fields rendered at start-up,
/// then the per-request ones and `body` (none for `HEAD`).
fn write_refusal(
    out: &mut Vec<u8>,
    r: Refusal,
    body: &[u8],
    retry_after: Option<u64>,
    request_id: &[u8],
    (head_req, close): (bool, bool),
) {
    out.extend_from_slice(r.wire_head());
    if let Some(secs) = retry_after {
        out.extend_from_slice(b"retry-after: ");
        super::push_num(out, secs);
        out.extend_from_slice(b"\r\n");
    }
    push_field(out, X_REQUEST_ID.as_str().as_bytes(), request_id);
    push_date(out);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    push_length(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    if !head_req {
        out.extend_from_slice(body);
    }
}

/// Writes the head, then the body as it comes off the upstream (re-chunked when its length is
/// not known).
async fn write_streaming(
    stream: &mut TcpStream,
    head: &[u8],
    mut body: UpstreamBody,
) -> io::Result<()> {
    stream.write_all(head).await?;
    let chunked = body.size_hint().exact().is_none();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            stream
                .write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .await?;
            stream.write_all(&data).await?;
            stream.write_all(b"\r\n").await?;
        } else {
            stream.write_all(&data).await?;
        }
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n").await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{body_length, has_blank_line as end, head_length, FAST_BODY_MAX};

    #[test]
    fn a_body_length_is_plain_digits_up_to_the_cap() {
        assert_eq!(body_length(b"0"), Some(0));
        assert_eq!(body_length(b" 0042 "), Some(42));
        assert_eq!(body_length(b"65536"), Some(FAST_BODY_MAX));
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"5 5",
            b"0x10",
            b"65537",
            b"99999999999999999999999",
        ] {
            assert_eq!(body_length(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_end_of_a_head_is_its_first_empty_line() {
        assert!(end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(end(b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(end(b"GET / HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n"));
        assert!(!end(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(!end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"));
        // Empty lines before the request line are not its end (httparse skips them).
        assert!(!end(b"\r\n\r\nGET / HTTP/1.1\r\n"));
        assert!(!end(b"\r\n\r\n"));
        assert!(end(b"\r\nGET / HTTP/1.1\r\n\r\n"));
        // Wherever the scan says "complete", httparse agrees (or finds no request at all).
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"\r\nGET / HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(end(head));
            assert!(
                head_length(head).is_some(),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
