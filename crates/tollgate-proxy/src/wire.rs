//! The upstream side of HTTP/1.1, written for a proxy: the request head is serialized straight
//! from the `http::Request` the data plane built, the response head is parsed with `httparse`, and
//! the body is read by whoever polls it, on the connection itself: no connection task, no channel
//! and no wake-up between a request and its upstream connection (with hyper's client, each request
//! crossed a channel to the connection's own task and its response crossed back).
//!
//! Framing, RFC 9112 section 6: no body for `HEAD`, 1xx, 204 and 304; else `Transfer-Encoding:
//! chunked` (decoded here, re-framed by the server side), else `Content-Length`, else the body runs
//! to the end of the connection. A connection is kept only when its response was read to the end
//! and neither side asked for `Connection: close`.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::io::poll_read_buf;

use crate::proxy::ProxyBody;

/// Largest upstream response head.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most fields in an upstream response head; one with more is a 502.
pub const MAX_FIELDS: usize = 1024;
/// The fields a head is parsed into on the stack; a head with more is parsed again into room for
/// [`MAX_FIELDS`] on the heap (rare: the common head pays for neither the heap nor a 32 KiB
/// stack frame).
const STACK_FIELDS: usize = 128;
const READ_CHUNK: usize = 16 * 1024;

/// An upstream connection: the socket (plain or TLS) and what was read past the last response.
pub struct Conn {
    io: Io,
    buf: BytesMut,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    pub fn plain(s: TcpStream) -> Conn {
        Conn {
            io: Io::Plain(s),
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    pub fn tls(s: TlsStream<TcpStream>) -> Conn {
        Conn {
            io: Io::Tls(Box::new(s)),
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// Whether the upstream has closed (or sent bytes nobody asked for) while the connection sat
    /// idle. Never blocks.
    pub fn is_stale(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut probe = [0u8; 1];
        match &self.io {
            Io::Plain(s) => {
                !matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            // A TLS close_notify or a stray record would need the TLS layer to read; the send
            // path's retry covers a connection found closed on use.
            Io::Tls(_) => false,
        }
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        match &mut self.io {
            Io::Plain(s) => poll_read_buf(Pin::new(s), cx, &mut self.buf),
            Io::Tls(s) => poll_read_buf(Pin::new(s.as_mut()), cx, &mut self.buf),
        }
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }

    async fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match &mut self.io {
            Io::Plain(s) => s.write_all(b).await,
            Io::Tls(s) => s.write_all(b).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match &mut self.io {
            Io::Plain(s) => s.flush().await,
            Io::Tls(s) => s.flush().await,
        }
    }
}

/// Why an exchange failed, and whether the request can be sent again on another connection.
#[derive(Debug)]
pub struct WireError {
    pub error: io::Error,
    /// Nothing of a response arrived and the request (no body, or a body held in memory) can be
    /// replayed: a kept-alive connection the upstream closed meanwhile.
    pub retryable: bool,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// How the request body goes out.
enum Out {
    None,
    Bytes(Bytes),
    Stream { chunked: bool },
}

/// Writes the request (head in one write) and reads the response head. The response body is read
/// through the returned [`Framing`] by [`ResponseBody`].
pub async fn exchange(
    conn: &mut Conn,
    req: &mut Request<ProxyBody>,
) -> Result<(Response<()>, Framing), WireError> {
    let mut head = Vec::with_capacity(512);
    let out = encode_head(req, &mut head);
    if let Out::Bytes(b) = &out {
        // Kept in the request too, so it can be sent again on another connection.
        *req.body_mut() = http_body_util::Either::Right(http_body_util::Full::new(b.clone()));
    }
    let no_retry = |error| WireError {
        error,
        retryable: false,
    };
    let replayable = !matches!(out, Out::Stream { .. });
    let sent = async {
        match &out {
            Out::Bytes(b) if b.len() <= 16 * 1024 => {
                head.extend_from_slice(b);
                conn.write_all(&head).await?;
            }
            Out::Bytes(b) => {
                conn.write_all(&head).await?;
                conn.write_all(b).await?;
            }
            _ => conn.write_all(&head).await?,
        }
        conn.flush().await
    }
    .await;
    if let Err(error) = sent {
        return Err(WireError {
            error,
            retryable: replayable,
        });
    }
    if let Out::Stream { chunked } = out {
        write_body(conn, req.body_mut(), chunked)
            .await
            .map_err(no_retry)?;
    }
    read_response(conn, *req.method() == Method::HEAD, replayable, to_response).await
}

/// Sends a request head already serialized (no body) and reads the response head: the data
/// plane's fast path. `take` sees the head where it lies in the connection's buffer (say, to copy
/// its fields into the client's response) and says what becomes of it; no header map is built.
pub async fn exchange_raw<T>(
    conn: &mut Conn,
    head: &[u8],
    head_req: bool,
    take: impl FnMut(&RawHead<'_>) -> io::Result<T>,
) -> Result<(T, Framing), WireError> {
    let sent = async {
        conn.write_all(head).await?;
        conn.flush().await
    }
    .await;
    if let Err(error) = sent {
        return Err(WireError {
            error,
            retryable: true,
        });
    }
    read_response(conn, head_req, true, take).await
}

/// A final response head (not 1xx), borrowed from the connection's buffer: fields as httparse
/// found them (names as the upstream spelled them, values checked for forbidden bytes).
pub struct RawHead<'a> {
    pub status: StatusCode,
    pub http10: bool,
    pub fields: &'a [httparse::Header<'a>],
}

async fn read_response<T>(
    conn: &mut Conn,
    head_req: bool,
    replayable: bool,
    mut take: impl FnMut(&RawHead<'_>) -> io::Result<T>,
) -> Result<(T, Framing), WireError> {
    let mut first = true;
    loop {
        if let Some(done) = take_head(&mut conn.buf, head_req, &mut take) {
            return done.map_err(|error| WireError {
                error,
                retryable: false,
            });
        }
        match conn.read_more().await {
            Ok(0) => {
                let error = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upstream closed the connection before a response",
                );
                return Err(WireError {
                    error,
                    retryable: first && conn.buf.is_empty() && replayable,
                });
            }
            Ok(_) => first = false,
            Err(error) => {
                let retryable = first && conn.buf.is_empty() && replayable;
                return Err(WireError { error, retryable });
            }
        }
    }
}

/// The final response head at the start of `buf`, given to `take` and consumed (1xx heads before
/// it are skipped); `None` until a whole one is there. Not async, so the parser's field array
/// lives on the stack and not in every future that awaits a response.
fn take_head<T>(
    buf: &mut BytesMut,
    head_req: bool,
    take: &mut impl FnMut(&RawHead<'_>) -> io::Result<T>,
) -> Option<io::Result<(T, Framing)>> {
    loop {
        // Left uninitialized: the parser writes the fields it finds (4 KiB not cleared per head).
        let mut fields = [const { std::mem::MaybeUninit::uninit() }; STACK_FIELDS];
        let step = match take_one(buf, head_req, take, &mut fields) {
            Step::TooManyFields => take_one_large(buf, head_req, take),
            step => step,
        };
        match step {
            Step::Informational(len) => buf.advance(len),
            Step::Final(done, len) => {
                buf.advance(len);
                return Some(done);
            }
            Step::Partial if buf.len() >= MAX_HEAD => {
                return Some(Err(bad(&format!(
                    "upstream response head larger than {} KiB",
                    MAX_HEAD / 1024
                ))))
            }
            Step::Partial => return None,
            Step::TooManyFields => {
                return Some(Err(bad(&format!(
                    "upstream response head has more than {MAX_FIELDS} fields"
                ))))
            }
            Step::Failed(e) => return Some(Err(e)),
        }
    }
}

/// What [`take_one`] found at the start of the buffer.
enum Step<T> {
    /// A 1xx head of this length, to skip.
    Informational(usize),
    /// The final head, taken (or why not), and its length.
    Final(io::Result<(T, Framing)>, usize),
    /// Not a whole head yet.
    Partial,
    /// More fields than `fields` has room for.
    TooManyFields,
    Failed(io::Error),
}

/// One response head at the start of `buf`, parsed into `fields`; a final one is given to `take`.
fn take_one<'b, T>(
    buf: &'b [u8],
    head_req: bool,
    take: &mut impl FnMut(&RawHead<'_>) -> io::Result<T>,
    fields: &mut [std::mem::MaybeUninit<httparse::Header<'b>>],
) -> Step<T> {
    match parse_head(buf, fields) {
        Ok(Some((head, len))) if head.status.is_informational() => {
            // 100 Continue, 103 Early Hints: not forwarded; the final response follows.
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                return Step::Failed(bad("upstream switched protocols unasked"));
            }
            Step::Informational(len)
        }
        Ok(Some((head, len))) => {
            let done = framing(&head, head_req).and_then(|f| Ok((take(&head)?, f)));
            Step::Final(done, len)
        }
        Ok(None) => Step::Partial,
        Err(HeadError::TooManyFields) => Step::TooManyFields,
        Err(HeadError::Bad(e)) => Step::Failed(e),
    }
}

/// [`take_one`] with room for [`MAX_FIELDS`] fields, on the heap: for the rare head with more
/// than [`STACK_FIELDS`].
#[cold]
#[inline(never)]
fn take_one_large<T>(
    buf: &[u8],
    head_req: bool,
    take: &mut impl FnMut(&RawHead<'_>) -> io::Result<T>,
) -> Step<T> {
    let mut fields = Vec::with_capacity(MAX_FIELDS);
    fields.resize_with(MAX_FIELDS, std::mem::MaybeUninit::uninit);
    take_one(buf, head_req, take, &mut fields)
}

/// Serializes the request line and fields; says how the body follows.
fn encode_head(req: &mut Request<ProxyBody>, out: &mut Vec<u8>) -> Out {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    match req.uri().path_and_query() {
        Some(pq) => out.extend_from_slice(pq.as_str().as_bytes()),
        None => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let body = req.body();
    let has_length = req.headers().contains_key(http::header::CONTENT_LENGTH);
    let how = match body {
        http_body_util::Either::Right(full) => match full.size_hint().exact() {
            Some(0) if !has_length && matches!(*req.method(), Method::GET | Method::HEAD) => {
                Out::None
            }
            _ => {
                let bytes = take_full(req.body_mut());
                let len = bytes.len();
                req.headers_mut()
                    .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
                Out::Bytes(bytes)
            }
        },
        http_body_util::Either::Left(incoming) => {
            if incoming.is_end_stream() {
                Out::None
            } else if has_length && incoming.size_hint().exact().is_some() {
                Out::Stream { chunked: false }
            } else {
                req.headers_mut().remove(http::header::CONTENT_LENGTH);
                Out::Stream { chunked: true }
            }
        }
    };
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if matches!(how, Out::Stream { chunked: true }) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    how
}

fn take_full(body: &mut ProxyBody) -> Bytes {
    match body {
        http_body_util::Either::Right(full) => {
            let mut out = BytesMut::new();
            // A `Full` yields its one frame at once; no waker is needed.
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut *full).poll_frame(&mut cx) {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            out.freeze()
        }
        http_body_util::Either::Left(_) => Bytes::new(),
    }
}

async fn write_body(conn: &mut Conn, body: &mut ProxyBody, chunked: bool) -> io::Result<()> {
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| io::Error::other(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            conn.write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .await?;
            conn.write_all(&data).await?;
            conn.write_all(b"\r\n").await?;
        } else {
            conn.write_all(&data).await?;
        }
    }
    if chunked {
        conn.write_all(b"0\r\n\r\n").await?;
    }
    conn.flush().await
}

/// Why a response head could not be parsed.
enum HeadError {
    /// More fields than the parser was given room for.
    TooManyFields,
    Bad(io::Error),
}

impl From<io::Error> for HeadError {
    fn from(e: io::Error) -> HeadError {
        HeadError::Bad(e)
    }
}

/// A complete response head at the start of `buf`, and its length.
fn parse_head<'b, 'f>(
    buf: &'b [u8],
    fields: &'f mut [std::mem::MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<(RawHead<'f>, usize)>, HeadError>
where
    'b: 'f,
{
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        fields,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyFields),
        Err(e) => return Err(bad(&format!("bad upstream response head: {e}")).into()),
    };
    let code = parsed.code.ok_or_else(|| bad("no status"))?;
    let status = StatusCode::from_u16(code).map_err(|_| bad("bad status code"))?;
    let head = RawHead {
        status,
        http10: parsed.version == Some(0),
        fields: parsed.headers,
    };
    Ok(Some((head, len)))
}

/// The head as an `http::Response` (hyper's path), with room for the fields the proxy adds
/// (RateLimit, x-request-id) without a rehash.
pub(crate) fn to_response(head: &RawHead<'_>) -> io::Result<Response<()>> {
    let mut map = HeaderMap::with_capacity(head.fields.len() + 8);
    for h in head.fields {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad("bad field name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| bad("bad field value"))?;
        map.append(name, value);
    }
    let mut resp = Response::new(());
    *resp.status_mut() = head.status;
    *resp.version_mut() = if head.http10 {
        http::Version::HTTP_10
    } else {
        http::Version::HTTP_11
    };
    *resp.headers_mut() = map;
    Ok(resp)
}

/// How the response body is delimited, and whether the connection may be kept afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub kind: Kind,
    pub keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

fn framing(head: &RawHead<'_>, head_req: bool) -> io::Result<Framing> {
    // One pass over the fields, names told apart by length first.
    let (mut close, mut keep_alive_token) = (false, false);
    let mut te: Option<&[u8]> = None;
    let mut length: Result<Option<u64>, &'static str> = Ok(None);
    for f in head.fields {
        let is = |n: &str| f.name.eq_ignore_ascii_case(n);
        match f.name.len() {
            10 if is("connection") => {
                close |= has_token(f.value, b"close");
                keep_alive_token |= has_token(f.value, b"keep-alive");
            }
            17 if is("transfer-encoding") => {
                te.get_or_insert(f.value);
            }
            14 if is("content-length") => {
                let n = std::str::from_utf8(f.value.trim_ascii())
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                length = match (length, n) {
                    (Err(e), _) => Err(e),
                    (_, None) => Err("bad content-length"),
                    (Ok(Some(l)), Some(n)) if l != n => Err("conflicting content-length"),
                    (Ok(_), Some(n)) => Ok(Some(n)),
                };
            }
            _ => {}
        }
    }
    let keep_alive = if head.http10 {
        keep_alive_token
    } else {
        !close
    };
    let status = head.status;
    if head_req || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing {
            kind: Kind::Empty,
            keep_alive,
        });
    }
    if let Some(te) = te {
        return if has_token(te, b"chunked") {
            Ok(Framing {
                kind: Kind::Chunked,
                keep_alive,
            })
        } else {
            Ok(Framing {
                kind: Kind::UntilClose,
                keep_alive: false,
            })
        };
    }
    Ok(match length.map_err(bad)? {
        Some(0) => Framing {
            kind: Kind::Empty,
            keep_alive,
        },
        Some(n) => Framing {
            kind: Kind::Length(n),
            keep_alive,
        },
        None => Framing {
            kind: Kind::UntilClose,
            keep_alive: false,
        },
    })
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Reads a response body off its connection. `on_done` gets the connection back when the body was
/// read to its end and the connection may be reused.
pub struct ResponseBody {
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
    on_done: Option<Checkin>,
}

/// Where a connection goes when its response is done: `give(origin, max_idle, conn)`.
pub struct Checkin {
    pub give: fn(usize, usize, Conn),
    pub origin: usize,
    pub max_idle: usize,
}

enum State {
    Length(u64),
    /// In a chunked body: bytes left in the current chunk (`None`: at a size line).
    Chunk(Option<u64>),
    Trailers,
    UntilClose,
    Done,
}

impl ResponseBody {
    pub fn new(conn: Conn, framing: Framing, on_done: Option<Checkin>) -> Self {
        let state = match framing.kind {
            Kind::Empty => State::Done,
            Kind::Length(n) => State::Length(n),
            Kind::Chunked => State::Chunk(None),
            Kind::UntilClose => State::UntilClose,
        };
        let mut body = ResponseBody {
            conn: Some(conn),
            state,
            keep_alive: framing.keep_alive,
            on_done,
        };
        if matches!(body.state, State::Done) {
            body.finish();
        }
        body
    }

    /// The whole body if it is already in the buffer (a small response usually is): then the
    /// connection goes back at once and the body needs no further polling.
    pub fn try_complete(&mut self) -> Option<Bytes> {
        match (&self.state, &mut self.conn) {
            (State::Done, _) => Some(Bytes::new()),
            (State::Length(n), Some(conn)) if (conn.buf.len() as u64) >= *n => {
                let data = conn.buf.split_to(*n as usize).freeze();
                self.state = State::Done;
                self.finish();
                Some(data)
            }
            _ => None,
        }
    }

    fn finish(&mut self) {
        self.state = State::Done;
        if let (Some(conn), Some(c)) = (self.conn.take(), self.on_done.take()) {
            if self.keep_alive && conn.buf.is_empty() {
                (c.give)(c.origin, c.max_idle, conn);
            }
        }
    }

    fn fail(&mut self, msg: &str) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(bad(msg))))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.state {
                State::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                State::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                State::Length(n) => {
                    if !conn.buf.is_empty() {
                        let take = (conn.buf.len() as u64).min(n) as usize;
                        let data = conn.buf.split_to(take).freeze();
                        this.state = State::Length(n - take as u64);
                        if n == take as u64 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(conn.poll_read_more(cx)) {
                        Ok(0) => return this.fail("upstream closed in the middle of a body"),
                        Ok(_) => {}
                        Err(e) => {
                            this.conn = None;
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                State::UntilClose => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(conn.poll_read_more(cx)) {
                        Ok(0) => {
                            this.conn = None;
                            this.state = State::Done;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            this.conn = None;
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                State::Chunk(Some(0)) => {
                    // The CRLF after a chunk's data.
                    if conn.buf.len() >= 2 {
                        if &conn.buf[..2] != b"\r\n" {
                            return this.fail("bad chunk end");
                        }
                        conn.buf.advance(2);
                        this.state = State::Chunk(None);
                        continue;
                    }
                    if ready!(read_or_eof(conn, cx)).is_err() {
                        return this.fail("upstream closed in the middle of a chunked body");
                    }
                }
                State::Chunk(Some(left)) => {
                    if !conn.buf.is_empty() {
                        let take = (conn.buf.len() as u64).min(left) as usize;
                        let data = conn.buf.split_to(take).freeze();
                        this.state = State::Chunk(Some(left - take as u64));
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if ready!(read_or_eof(conn, cx)).is_err() {
                        return this.fail("upstream closed in the middle of a chunked body");
                    }
                }
                State::Chunk(None) => match find_crlf(&conn.buf) {
                    Some(end) => {
                        let line = &conn.buf[..end];
                        let hex = line
                            .split(|b| *b == b';')
                            .next()
                            .unwrap_or(b"")
                            .trim_ascii();
                        let size = std::str::from_utf8(hex)
                            .ok()
                            .and_then(|s| u64::from_str_radix(s, 16).ok());
                        let Some(size) = size else {
                            return this.fail("bad chunk size");
                        };
                        conn.buf.advance(end + 2);
                        this.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::Chunk(Some(size))
                        };
                    }
                    None if conn.buf.len() > 4096 => return this.fail("chunk size line too long"),
                    None => {
                        if ready!(read_or_eof(conn, cx)).is_err() {
                            return this.fail("upstream closed in the middle of a chunked body");
                        }
                    }
                },
                State::Trailers => match find_crlf(&conn.buf) {
                    // Trailer fields are dropped; an empty line ends the body.
                    Some(0) => {
                        conn.buf.advance(2);
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Some(end) => conn.buf.advance(end + 2),
                    None if conn.buf.len() > MAX_HEAD => return this.fail("trailers too long"),
                    None => {
                        if ready!(read_or_eof(conn, cx)).is_err() {
                            return this.fail("upstream closed in the trailers");
                        }
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

fn read_or_eof(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
    match ready!(conn.poll_read_more(cx)) {
        Ok(0) | Err(_) => Poll::Ready(Err(())),
        Ok(_) => Poll::Ready(Ok(())),
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The framing of a response head (`HTTP/1.x` and its fields), or the error's text.
    fn frame(head: &str, head_req: bool) -> Result<(Kind, bool), String> {
        let mut fields = [const { std::mem::MaybeUninit::uninit() }; STACK_FIELDS];
        let Ok(Some((raw, _))) = parse_head(head.as_bytes(), &mut fields) else {
            panic!("not a whole head: {head}");
        };
        framing(&raw, head_req)
            .map(|f| (f.kind, f.keep_alive))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h11 = |fields: &str| format!("HTTP/1.1 200 OK\r\n{fields}\r\n");
        assert_eq!(
            frame(&h11("Content-Length: 5\r\n"), false),
            Ok((Kind::Length(5), true))
        );
        assert_eq!(
            frame(&h11("content-length:  0 \r\n"), false),
            Ok((Kind::Empty, true))
        );
        // The same length twice is one length; two lengths are an error, a bad one too.
        let twice = h11("Content-Length: 5\r\nContent-Length: 5\r\n");
        assert_eq!(frame(&twice, false), Ok((Kind::Length(5), true)));
        let conflict = h11("Content-Length: 5\r\nContent-Length: 6\r\n");
        assert_eq!(
            frame(&conflict, false),
            Err("conflicting content-length".into())
        );
        assert_eq!(
            frame(&h11("Content-Length: x\r\n"), false),
            Err("bad content-length".into())
        );
        // No body for HEAD (whatever its length says), and then a bad length does not matter.
        assert_eq!(
            frame(&h11("Content-Length: x\r\n"), true),
            Ok((Kind::Empty, true))
        );
        // Transfer-Encoding wins over Content-Length; a coding other than chunked runs to close.
        let chunked = h11("Transfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n");
        assert_eq!(frame(&chunked, false), Ok((Kind::Chunked, true)));
        let gzip = h11("Transfer-Encoding: gzip\r\n");
        assert_eq!(frame(&gzip, false), Ok((Kind::UntilClose, false)));
        // Neither: to the end of the connection, which is then not kept.
        assert_eq!(
            frame(&h11("X-A: 1\r\n"), false),
            Ok((Kind::UntilClose, false))
        );
        // Connection: close on 1.1; 1.0 keeps the connection only when asked to.
        let close = h11("Connection: Keep-Alive, close\r\nContent-Length: 1\r\n");
        assert_eq!(frame(&close, false), Ok((Kind::Length(1), false)));
        let h10 = "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(frame(h10, false), Ok((Kind::Length(1), false)));
        let h10_kept = "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(frame(h10_kept, false), Ok((Kind::Length(1), true)));
        // 204 and 304 have no body.
        let no_content = "HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n";
        assert_eq!(frame(no_content, false), Ok((Kind::Empty, true)));
    }
}
