//! The request path: route, key, admission, forwarding, response.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use prometheus::{Histogram, IntCounter};
use tollgate_config::{ChargeOn, Config, KeySource, UpstreamAuthTarget};
use tollgate_core::{admit, cost, is_well_formed_key, Access, Decision, DenyReason, KeyHash};
use tollgate_meter::{Charge, Check, Metering, Metrics, Standing};
use tollgate_store::{CacheLookup, KeyCache, Principal, StoreError};

use crate::access_log::{AccessLog, Entry, Line, Trace};
use crate::extract;
use crate::forward::{self, Origin, UpstreamBody, Upstreams};
use crate::respond::{refusal, Refusal};
use crate::router::{request_host, Router};

mod fast;
mod ratelimit;
mod upstream;
pub(crate) use fast::serve_conn;
use ratelimit::{push_num, rate_limit_headers, rate_limit_headers_into};

/// Request bodies to the upstream: the client's, passed through (perhaps after a part of it read
/// here), or one held whole here (a JSON body, perhaps without its key field).
pub type ProxyBody = Either<ClientBody, Full<Bytes>>;

/// The client's request body as it streams in: its first bytes already read here (a JSON body
/// held to look for a key field in it that grew past [`extract::JSON_BODY_LIMIT`]), then the rest;
/// with a [`BodyProgress`] once it goes upstream.
#[derive(Debug)]
pub struct ClientBody {
    held: Option<Bytes>,
    rest: Incoming,
    progress: Option<Arc<BodyProgress>>,
}

impl From<Incoming> for ClientBody {
    fn from(rest: Incoming) -> ClientBody {
        ClientBody {
            held: None,
            rest,
            progress: None,
        }
    }
}

/// How far a streamed request body has gone upstream, so that the route's timeout bounds the
/// upstream's waits only (for it to take the next part of the body, then for its answer after
/// the last part), as nginx's `proxy_send_timeout` and `proxy_read_timeout` do, and not the
/// client's upload time; a pause of the client's is bounded by `[proxy] client_body_timeout`.
#[derive(Debug)]
pub(crate) struct BodyProgress {
    start: Instant,
    /// Microseconds from `start` to the last part passed on (or the end).
    last_us: std::sync::atomic::AtomicU64,
    state: std::sync::atomic::AtomicU8,
}

/// [`BodyProgress`] states: a part was passed on and the upstream is to take it; the client is
/// to send the next part; the body ended; the client broke it off.
const PASSING: u8 = 0;
const AWAITING_CLIENT: u8 = 1;
const ENDED: u8 = 2;
const BROKEN: u8 = 3;

/// Whose wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    Upstream,
    Client,
}

impl BodyProgress {
    fn new() -> BodyProgress {
        BodyProgress {
            start: Instant::now(),
            last_us: std::sync::atomic::AtomicU64::new(0),
            state: std::sync::atomic::AtomicU8::new(PASSING),
        }
    }

    fn observe<T, E>(&self, poll: &std::task::Poll<Option<Result<T, E>>>) {
        use std::sync::atomic::Ordering::Relaxed;
        let state = match poll {
            std::task::Poll::Pending => AWAITING_CLIENT,
            std::task::Poll::Ready(Some(Err(_))) => BROKEN,
            std::task::Poll::Ready(Some(Ok(_))) => PASSING,
            std::task::Poll::Ready(None) => ENDED,
        };
        if state != AWAITING_CLIENT {
            let us = self.start.elapsed().as_micros() as u64;
            self.last_us.store(us, Relaxed);
        }
        self.state.store(state, Relaxed);
    }

    fn broken(&self) -> bool {
        self.state.load(std::sync::atomic::Ordering::Relaxed) == BROKEN
    }

    /// When the current wait runs out, and whose it is: `timeouts` are the upstream's and the
    /// client's.
    fn deadline(&self, timeouts: (std::time::Duration, std::time::Duration)) -> (Instant, Stall) {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.start + std::time::Duration::from_micros(self.last_us.load(Relaxed));
        match self.state.load(Relaxed) {
            AWAITING_CLIENT => (last + timeouts.1, Stall::Client),
            _ => (last + timeouts.0, Stall::Upstream),
        }
    }

    /// `fut`'s output, or whose wait ran out first: the deadline moves on with every part of
    /// the body passed on.
    async fn bound<F: Future>(
        &self,
        timeouts: (std::time::Duration, std::time::Duration),
        fut: F,
    ) -> Result<F::Output, Stall> {
        let mut fut = std::pin::pin!(fut);
        loop {
            let (deadline, _) = self.deadline(timeouts);
            let at = tokio::time::Instant::from_std(deadline);
            if let Ok(out) = tokio::time::timeout_at(at, fut.as_mut()).await {
                return Ok(out);
            }
            let (deadline, whose) = self.deadline(timeouts);
            if deadline <= Instant::now() {
                return Err(whose);
            }
        }
    }
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let poll = match this.held.take() {
            Some(held) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(held)))),
            None => std::pin::Pin::new(&mut this.rest).poll_frame(cx),
        };
        if let Some(p) = &this.progress {
            p.observe(&poll);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let rest = self.rest.size_hint();
        let held = self.held.as_ref().map_or(0, |h| h.len() as u64);
        let mut hint = hyper::body::SizeHint::new();
        hint.set_lower(rest.lower() + held);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

/// Response bodies to the client: the upstream's, passed through, or built here (refusals).
pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

static X_TOLLGATE_ACCOUNT: HeaderName = HeaderName::from_static("x-tollgate-account");
static X_TOLLGATE_PARENT: HeaderName = HeaderName::from_static("x-tollgate-parent");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Tls(#[from] forward::TlsSetupError),
    #[error("routes[{index}].upstream_auth.env (route {route}): the environment variable {env} is not set; set it where the gateway runs")]
    MissingSecret {
        index: usize,
        route: String,
        env: String,
    },
    #[error("route {route}: bad upstream {what}")]
    BadUpstream { route: String, what: String },
}

/// Per-route state resolved once: the upstream origin and the metric series.
struct RouteRuntime {
    origin: Arc<Origin>,
    host_header: HeaderValue,
    auth: Option<(UpstreamAuthTarget, String)>,
    charge: Option<Charge>,
    outcomes: Vec<IntCounter>,
    admitted: IntCounter,
    duration: Histogram,
    upstream_duration: Histogram,
    /// When an upstream failure was last logged as a warning (ms on [`log_clock_ms`]).
    warned_ms: std::sync::atomic::AtomicU64,
}

impl RouteRuntime {
    /// Whether an upstream failure goes to the log as a warning: at most one a second per route
    /// (an upstream that is down under load fails thousands of requests a second); the others
    /// go at debug level, and every one is in the access log and the metrics.
    fn warn_now(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = log_clock_ms();
        let last = self.warned_ms.load(Relaxed);
        (last == 0 || now >= last + 1000)
            && self
                .warned_ms
                .compare_exchange(last, now.max(1), Relaxed, Relaxed)
                .is_ok()
    }
}

/// Milliseconds since the first call: a clock for rate-limiting log lines.
fn log_clock_ms() -> u64 {
    static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64
}

/// Counters for requests that matched no route.
struct Unmatched {
    outcomes: Vec<IntCounter>,
    duration: Histogram,
}

/// The data plane's shared state for one configuration, used by every connection; a reload
/// builds a new one (see [`crate::server::ProxySlot`]).
pub struct Proxy {
    router: Router,
    runtime: Vec<RouteRuntime>,
    unmatched: Unmatched,
    cache: Arc<KeyCache>,
    sources: Vec<KeySource>,
    /// The `key_missing` body, naming `sources`.
    key_missing: Bytes,
    strip_headers: Vec<HeaderName>,
    strip_bearer: bool,
    strip_query: Vec<String>,
    json_field: Option<String>,
    forward_key: bool,
    /// `[proxy] client_body_timeout`.
    client_body_timeout: std::time::Duration,
    charge_on: ChargeOn,
    upstreams: Upstreams,
    metering: Option<Arc<Metering>>,
    access: Arc<AccessLog>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("routes", &self.router.routes().len())
            .finish()
    }
}

fn outcome_counters(metrics: &Metrics, route: &str) -> Vec<IntCounter> {
    Refusal::ALL
        .iter()
        .map(|r| metrics.request_counter(route, r.code()))
        .collect()
}

impl Proxy {
    pub fn new(
        config: &Config,
        cache: Arc<KeyCache>,
        metrics: &Metrics,
        metering: Option<Arc<Metering>>,
        upstreams: Upstreams,
    ) -> Result<Proxy, ProxyError> {
        let mut runtime = Vec::with_capacity(config.routes.len());
        for (index, r) in config.routes.iter().enumerate() {
            let bad = |what: &str| ProxyError::BadUpstream {
                route: r.name.clone(),
                what: what.into(),
            };
            let https = r.upstream.scheme == tollgate_config::Scheme::Https;
            let origin = upstreams
                .origin(https, &r.upstream.host, r.upstream.port)
                .ok_or_else(|| bad("host"))?;
            let host_header =
                HeaderValue::from_str(&r.upstream.authority).map_err(|_| bad("host"))?;
            let auth = match &r.upstream_auth {
                None => None,
                Some(a) => {
                    let value = std::env::var(&a.env).map_err(|_| ProxyError::MissingSecret {
                        index,
                        route: r.name.clone(),
                        env: a.env.clone(),
                    })?;
                    Some((a.target.clone(), value))
                }
            };
            runtime.push(RouteRuntime {
                origin,
                host_header,
                auth,
                charge: match (&r.product, &r.pool) {
                    (Some(product), Some(pool)) => Some(Charge {
                        product: Arc::from(product.as_str()),
                        pool: Arc::from(pool.as_str()),
                    }),
                    _ => None,
                },
                outcomes: outcome_counters(metrics, &r.name),
                admitted: metrics.request_counter(&r.name, "admitted"),
                duration: metrics.request_histogram(&r.name),
                upstream_duration: metrics.upstream_histogram(&r.name),
                warned_ms: std::sync::atomic::AtomicU64::new(0),
            });
        }
        let mut strip_headers = Vec::new();
        let mut strip_query = Vec::new();
        let mut strip_bearer = false;
        for s in &config.keys.sources {
            match s {
                KeySource::Header(h) => {
                    if let Ok(n) = HeaderName::from_bytes(h.as_bytes()) {
                        strip_headers.push(n);
                    }
                }
                KeySource::Bearer => strip_bearer = true,
                KeySource::Query(q) => strip_query.push(q.clone()),
                KeySource::Json(_) => {}
            }
        }
        // The places a key is read from: the head sources, and the first `json:` source.
        let json_field = extract::json_source(&config.keys.sources);
        let read = config.keys.sources.iter().filter(|s| match s {
            KeySource::Json(name) => Some(name.as_str()) == json_field,
            _ => true,
        });
        let key_missing = match tollgate_config::key_missing_message(read) {
            Some(message) => Bytes::from(crate::respond::error_body(
                DenyReason::KeyMissing.code(),
                &message,
            )),
            None => Refusal::Deny(DenyReason::KeyMissing).body().clone(),
        };
        Ok(Proxy {
            key_missing,
            router: Router::new(config.routes.clone()),
            runtime,
            unmatched: Unmatched {
                outcomes: outcome_counters(metrics, "_unmatched"),
                duration: metrics.request_histogram("_unmatched"),
            },
            cache,
            json_field: json_field.map(str::to_owned),
            sources: config.keys.sources.clone(),
            strip_headers,
            strip_bearer,
            strip_query,
            forward_key: config.keys.forward,
            client_body_timeout: config.proxy.client_body_timeout,
            charge_on: config.metering.charge_on,
            upstreams,
            metering,
            access: Arc::new(AccessLog::default()),
        })
    }

    /// The JSON body of refusal `r`: `key_missing`'s names this configuration's key sources.
    pub(crate) fn refusal_body(&self, r: Refusal) -> &Bytes {
        match r {
            Refusal::Deny(DenyReason::KeyMissing) => &self.key_missing,
            _ => r.body(),
        }
    }

    /// Refusal `r` as hyper's path answers it (the fast path writes the same bytes itself).
    fn refusal(&self, r: Refusal) -> Response<ResponseBody> {
        refusal(r, self.refusal_body(r).clone()).map(Either::Right)
    }

    /// Writes the access log through `access` (shared across config reloads) instead of a
    /// default one.
    pub fn with_access_log(mut self, access: Arc<AccessLog>) -> Proxy {
        self.access = access;
        self
    }

    /// Serves one request end to end. Never fails: every problem becomes a response.
    pub async fn handle(&self, req: Request<Incoming>, client: &Client) -> Response<ResponseBody> {
        let started = Instant::now();
        let request_id = request_id(req.headers());
        // For the access line, kept past `req` (moved upstream): no allocation for the standard
        // methods, and a reference count for the URI.
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let line = Line {
            method: method.as_str(),
            target: uri.path(),
            client: client.ip.as_bytes(),
        };
        let trace = Trace::default();
        if method == http::Method::TRACE {
            let r = Refusal::MethodNotAllowed;
            self.record(None, started, request_id.as_bytes(), line, &trace, Err(r));
            return finish(self.refusal(r), request_id);
        }
        let Ok(host) = request_host(req.version(), req.uri(), req.headers()) else {
            let r = Refusal::InvalidRequest;
            self.record(None, started, request_id.as_bytes(), line, &trace, Err(r));
            return finish(self.refusal(r), request_id);
        };
        // Before the route or the key: a path the upstream could resolve elsewhere is never
        // routed as it reads (`uri.path()` is the path as it came; an absolute-form target's,
        // `""` for authority form, `*` for asterisk form).
        let path = req.uri().path();
        if !crate::path::is_safe(path.as_bytes()) {
            let r = Refusal::InvalidRequest;
            self.record(None, started, request_id.as_bytes(), line, &trace, Err(r));
            return finish(self.refusal(r), request_id);
        }
        let Some(idx) = self.router.find(host, path) else {
            let r = Refusal::Deny(DenyReason::RouteNotFound);
            self.record(None, started, request_id.as_bytes(), line, &trace, Err(r));
            return finish(self.refusal(r), request_id);
        };
        // Until the answer's head is here: if hyper drops this future (the client went away),
        // the request is still counted and logged, as a 499.
        let mut watch = Abandoned {
            proxy: self,
            idx,
            started,
            request_id: request_id.as_bytes(),
            line,
            trace,
            armed: true,
        };
        let answer = self
            .admit_and_forward(idx, req, client, &request_id, &mut watch.trace)
            .await;
        watch.armed = false;
        let mut trace = std::mem::take(&mut watch.trace);
        drop(watch);
        let resp = match answer {
            Ok(mut resp) => {
                if let Either::Left(body) = resp.body_mut() {
                    let timeout = self.router.routes()[idx].timeout;
                    trace.duration_at_body_end =
                        body.arm(timeout, &self.runtime[idx].duration, started);
                }
                self.record(
                    Some(idx),
                    started,
                    request_id.as_bytes(),
                    line,
                    &trace,
                    Ok(resp.status()),
                );
                resp
            }
            Err((r, retry_after)) => {
                self.record(
                    Some(idx),
                    started,
                    request_id.as_bytes(),
                    line,
                    &trace,
                    Err(r),
                );
                let mut resp = self.refusal(r);
                if let Some(secs) = retry_after {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                resp
            }
        };
        finish(resp, request_id)
    }

    /// Counts an answer the HTTP layer gave to a request it could not parse (see
    /// [`crate::parse_errors`]): under `route="_unmatched"`, as no request exists to route.
    pub(crate) fn count_unparsed(&self, r: Refusal) {
        self.unmatched.outcomes[r.index()].inc();
    }

    /// Counts, times and logs one finished request: `Ok(status)` forwarded, `Err` refused. Returns
    /// the time it read as the request's end.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        idx: Option<usize>,
        started: Instant,
        request_id: &[u8],
        line: Line<'_>,
        trace: &Trace,
        outcome: Result<http::StatusCode, Refusal>,
    ) -> Instant {
        let ended = Instant::now();
        let elapsed = ended.saturating_duration_since(started);
        let (route, duration, name) = match idx {
            Some(i) => {
                let rt = &self.runtime[i];
                (
                    Some(rt),
                    &rt.duration,
                    self.router.routes()[i].name.as_str(),
                )
            }
            None => (None, &self.unmatched.duration, "_unmatched"),
        };
        match (&outcome, route) {
            (Ok(_), Some(rt)) => rt.admitted.inc(),
            (Err(r), Some(rt)) => rt.outcomes[r.index()].inc(),
            (Err(r), None) => self.unmatched.outcomes[r.index()].inc(),
            (Ok(_), None) => {}
        }
        if !trace.duration_at_body_end {
            duration.observe(elapsed.as_secs_f64());
        }
        let admitted = outcome.is_ok();
        if admitted && !self.access.sampled() {
            return ended;
        }
        let (status, code) = match outcome {
            Ok(s) => (s.as_u16(), "admitted"),
            Err(r) => (r.status().as_u16(), r.code()),
        };
        let entry = Entry {
            request_id,
            line,
            account: trace.principal.as_ref().map(|p| &*p.account.id),
            parent: trace.principal.as_ref().map(|p| &*p.tenant.id),
            route: name,
            status,
            outcome: code,
            credits: trace.credits,
            duration: elapsed,
            upstream: trace.upstream,
        };
        if admitted {
            self.access.admitted(&entry);
        } else {
            self.access.refused(&entry, ended);
        }
        ended
    }

    /// Steps 2 to 4 for a key found in the request: who it is, whether it may call route `idx`,
    /// its limits and credits. The caller lands in `trace.principal`.
    pub(crate) async fn admit_key(
        &self,
        idx: usize,
        key: &[u8],
        query: Option<&str>,
        started: Instant,
        trace: &mut Trace,
    ) -> Result<(u64, Option<Standing>), (Refusal, Option<u64>)> {
        let route = &self.router.routes()[idx];
        let rt = &self.runtime[idx];
        // A malformed key never reaches the hash or the store.
        if !is_well_formed_key(key) {
            return Err((Refusal::Deny(DenyReason::KeyUnknown), None));
        }
        let hash = KeyHash::of(key);
        let principal = match self.cache.lookup_at(&hash, started) {
            CacheLookup::Hit(p) => p,
            CacheLookup::Unknown => return Err((Refusal::Deny(DenyReason::KeyUnknown), None)),
            // Boxed: the rare path's future stays out of every request's.
            CacheLookup::Miss => match Box::pin(self.cache.resolve(&hash)).await {
                Ok(Some(p)) => p,
                Ok(None) => return Err((Refusal::Deny(DenyReason::KeyUnknown), None)),
                Err(StoreError::Unavailable(_)) | Err(_) => {
                    return Err((Refusal::Deny(DenyReason::StoreUnavailable), None))
                }
            },
        };
        // Moved, not cloned: the access log reads it after the response is built.
        let principal = &*trace.principal.insert(principal);

        let access = Access {
            pool: route.pool.as_deref(),
            permission: route.permission,
        };
        if let Decision::Deny(r) = admit(
            &principal.account.account,
            principal.parent(),
            |pool| principal.tenant.subscribed(pool),
            access,
        ) {
            return Err((Refusal::Deny(r), None));
        }

        let credits = if route.product.is_some() {
            cost(route.credits, &route.cost_rules, query)
        } else {
            0
        };
        let standing = match &self.metering {
            Some(m) => Some(self.limits_and_credits(m, rt, principal, credits).await?),
            None => None,
        };
        Ok((credits, standing))
    }

    /// Step 5's exchange, on both paths: under the route's timeout (then 504), any other failure
    /// 502; its time goes to the route's upstream histogram and the trace.
    /// A request body streamed from the client (`body`) moves the deadline on as it goes: the
    /// route's timeout then bounds each wait for the upstream to take the next part, and for its
    /// answer after the last, not the client's upload (see [`BodyProgress`]).
    pub(crate) async fn call_upstream<T>(
        &self,
        idx: usize,
        trace: &mut Trace,
        deadlines: Option<&mut Deadlines>,
        body: Option<&BodyProgress>,
        exchange: impl Future<Output = Result<T, forward::ForwardError>>,
    ) -> Result<T, Refusal> {
        let route = &self.router.routes()[idx];
        let sent = Instant::now();
        let deadline = tokio::time::Instant::from_std(sent + route.timeout);
        // A connection's own timer where it keeps one (the fast path); else a timer for this
        // request alone.
        let result = match (deadlines, body) {
            (_, Some(p)) => {
                p.bound((route.timeout, self.client_body_timeout), exchange)
                    .await
            }
            (Some(d), None) => d.run(deadline, exchange).await.ok_or(Stall::Upstream),
            (None, None) => tokio::time::timeout_at(deadline, exchange)
                .await
                .map_err(|_| Stall::Upstream),
        };
        let upstream_time = sent.elapsed();
        self.runtime[idx]
            .upstream_duration
            .observe(upstream_time.as_secs_f64());
        trace.upstream = Some(upstream_time);
        match result {
            Err(Stall::Upstream) => {
                let (route, timeout) = (&route.name, route.timeout);
                if self.runtime[idx].warn_now() {
                    tracing::warn!(%route, ?timeout, "upstream did not answer within the route's timeout (504)");
                } else {
                    tracing::debug!(%route, ?timeout, "upstream did not answer within the route's timeout (504)");
                }
                Err(Refusal::UpstreamTimeout)
            }
            Err(Stall::Client) => Err(Refusal::RequestTimeout),
            // The client broke its body off: not the upstream's failure.
            Ok(Err(_)) if body.is_some_and(BodyProgress::broken) => Err(Refusal::BadRequest),
            Ok(Err(e)) => {
                if self.runtime[idx].warn_now() {
                    tracing::warn!(route = %route.name, error = %e, "upstream request failed (502)");
                } else {
                    tracing::debug!(route = %route.name, error = %e, "upstream request failed (502)");
                }
                Err(Refusal::UpstreamUnavailable)
            }
            Ok(Ok(answer)) => Ok(answer),
        }
    }

    /// Step 6: charge what the upstream answered (`Some(status)`), or give back credits taken for
    /// nothing (`None`: no answer).
    pub(crate) fn settle(
        &self,
        idx: usize,
        trace: &mut Trace,
        credits: u64,
        standing: Option<&Standing>,
        status: Option<http::StatusCode>,
    ) {
        let rt = &self.runtime[idx];
        let (Some(m), Some(charge), Some(standing), Some(principal)) =
            (&self.metering, &rt.charge, standing, &trace.principal)
        else {
            return;
        };
        let charged = match status {
            None => false,
            Some(s) => match self.charge_on {
                ChargeOn::Always => true,
                ChargeOn::Success => s.is_success(),
            },
        };
        m.settle(principal, charge, credits, standing, charged);
        trace.credits = if charged { credits } else { 0 };
    }

    async fn admit_and_forward(
        &self,
        idx: usize,
        req: Request<Incoming>,
        client: &Client,
        request_id: &HeaderValue,
        trace: &mut Trace,
    ) -> Result<Response<ResponseBody>, (Refusal, Option<u64>)> {
        let rt = &self.runtime[idx];
        let (mut parts, body) = req.into_parts();

        // 1. The key: head sources first; the JSON body only if they had none.
        let (key, body): (Vec<u8>, ProxyBody) = match extract::from_head(&parts, &self.sources) {
            Some((k, _)) => (k, Either::Left(ClientBody::from(body))),
            None => match (&self.json_field, extract::is_json(&parts)) {
                (Some(field), true) => {
                    let bytes = match Limited::new(body, extract::JSON_BODY_LIMIT).collect().await {
                        Ok(c) => c.to_bytes(),
                        // Too large to hold a key we would parse, or the client broke off.
                        Err(_) => return Err((Refusal::Deny(DenyReason::KeyMissing), None)),
                    };
                    match extract::from_json(&bytes, field, !self.forward_key) {
                        Some((k, rewritten)) => {
                            let new = rewritten.unwrap_or(bytes);
                            parts
                                .headers
                                .insert(header::CONTENT_LENGTH, HeaderValue::from(new.len()));
                            (k, Either::Right(Full::new(new)))
                        }
                        None => return Err((Refusal::Deny(DenyReason::KeyMissing), None)),
                    }
                }
                _ => return Err((Refusal::Deny(DenyReason::KeyMissing), None)),
            },
        };

        // 2-4. Who is it, may it call this route, its limits and credits.
        let (credits, standing) = self
            .admit_key(idx, &key, parts.uri.query(), Instant::now(), trace)
            .await?;
        let principal = trace
            .principal
            .as_ref()
            .ok_or((Refusal::Deny(DenyReason::KeyUnknown), None))?;
        let mut refund = self.refund_on_drop(idx, principal, standing.as_ref());

        // 5. Forward, in origin form; the client's path and query as they came unless a key or
        // the upstream's credential is taken out or put in. An HTTP/2 GET or HEAD (no body)
        // goes as the fast path's requests do: its head written as bytes from the client's
        // fields; anything else through a header map.
        let bodiless = matches!(&body, Either::Left(b) if hyper::body::Body::is_end_stream(b));
        // A JSON body the key did not come from may hold the key field too: it goes without it.
        let body = match (self.strip_json_field(), body) {
            (Some(field), Either::Left(b)) if !bodiless && extract::is_json(&parts) => {
                Self::without_json_key(&mut parts.headers, b, field).await?
            }
            (_, body) => body,
        };
        let resp = if parts.version == http::Version::HTTP_2
            && bodiless
            && matches!(parts.method, http::Method::GET | http::Method::HEAD)
        {
            let head_req = parts.method == http::Method::HEAD;
            let up = self.upstream_head_h2(&parts, rt, principal, client, request_id);
            self.call_upstream(idx, trace, None, None, async {
                let (head, body) = self
                    .upstreams
                    .send_raw(&rt.origin, &up, head_req, true, crate::wire::to_response)
                    .await?;
                Ok(head.map(|()| body))
            })
            .await
        } else {
            // The host the client addressed, for `x-forwarded-host`, before the target loses it.
            let authority = parts.uri.authority().cloned();
            if let Some(pq) = self.upstream_path_and_query(&parts.uri, rt)? {
                parts.uri = Uri::from(pq);
            }
            let http2 = parts.version == http::Version::HTTP_2;
            parts.version = http::Version::HTTP_11;
            self.prepare_headers(
                &mut parts.headers,
                http2,
                authority.as_ref(),
                rt,
                principal,
                client,
                request_id,
            );
            let (body, progress) = match body {
                Either::Left(mut b) if !bodiless => {
                    let p = Arc::new(BodyProgress::new());
                    b.progress = Some(p.clone());
                    (Either::Left(b), Some(p))
                }
                body => (body, None),
            };
            let upstream_req = Request::from_parts(parts, body);
            self.call_upstream(
                idx,
                trace,
                None,
                progress.as_deref(),
                self.upstreams.send(&rt.origin, upstream_req),
            )
            .await
        };

        // 6. Charge what the upstream answered (or give back credits taken for nothing).
        if let Some(r) = refund.as_mut() {
            r.disarm();
        }
        let status = resp.as_ref().ok().map(Response::status);
        self.settle(idx, trace, credits, standing.as_ref(), status);
        let resp = resp.map_err(|r| (r, None))?;
        let (mut rparts, rbody) = resp.into_parts();
        forward::strip_hop_by_hop(&mut rparts.headers);
        if let Some(s) = &standing {
            rate_limit_headers(&mut rparts.headers, s);
        }
        Ok(Response::from_parts(rparts, Either::Left(rbody)))
    }

    /// A guard that gives back the credits taken from a `deny` pool's slice for this request if
    /// its handling is dropped before step 6 settles it: the client went away mid-request (hyper
    /// then drops the request's future). Before, those credits were neither charged nor given
    /// back, so every abandoned request took them out of the pool.
    fn refund_on_drop(
        &self,
        idx: usize,
        principal: &Principal,
        standing: Option<&Standing>,
    ) -> Option<RefundOnDrop<'_>> {
        let taken = standing.map_or(0, |s| s.taken);
        let metering = self.metering.as_ref()?;
        let charge = self.runtime[idx].charge.as_ref()?;
        (taken > 0).then(|| RefundOnDrop {
            metering,
            tenant: principal.tenant.id.clone(),
            pool: charge.pool.clone(),
            taken,
        })
    }

    /// The JSON field taken out of request bodies before they go upstream (`None`: the key is
    /// forwarded, or there is no `json:` source).
    pub(crate) fn strip_json_field(&self) -> Option<&str> {
        self.json_field.as_deref().filter(|_| !self.forward_key)
    }

    /// A JSON body whose key came from the head, made ready to go upstream: held whole (as a
    /// `json:` source reads it, up to [`extract::JSON_BODY_LIMIT`]) and sent without its top-level
    /// `field` members (its `content-length` set to match). A body longer than that goes as it
    /// came, streamed (the `json:` source would not read it either).
    async fn without_json_key(
        headers: &mut http::HeaderMap,
        mut body: ClientBody,
        field: &str,
    ) -> Result<ProxyBody, (Refusal, Option<u64>)> {
        let limit = extract::JSON_BODY_LIMIT;
        if hyper::body::Body::size_hint(&body).lower() > limit as u64 {
            return Ok(Either::Left(body));
        }
        let mut held = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            // The client broke off: nothing to forward.
            let frame = frame.map_err(|_| (Refusal::BadRequest, None))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            held.extend_from_slice(&data);
            if held.len() > limit {
                body.held = Some(held.freeze());
                return Ok(Either::Left(body));
            }
        }
        let held = held.freeze();
        let whole = match extract::strip_json(&held, field) {
            Some(stripped) => Bytes::from(stripped),
            None => held,
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(whole.len()));
        Ok(Either::Right(Full::new(whole)))
    }

    /// Rate limit, backlog bound and pooled credits; leases more credits when the local slice is
    /// spent (the only await, and a rare one).
    async fn limits_and_credits(
        &self,
        m: &Metering,
        rt: &RouteRuntime,
        principal: &Principal,
        credits: u64,
    ) -> Result<Standing, (Refusal, Option<u64>)> {
        let mut rate = None;
        // Concurrent requests may take the credits a refill brought in; a few rounds settle it.
        for _ in 0..8 {
            match m.check(principal, rt.charge.as_ref(), credits, rate) {
                Check::Admit(s) => return Ok(s),
                Check::Deny(r, retry) => {
                    return Err((
                        Refusal::Deny(r),
                        (r == DenyReason::RateLimited).then_some(retry),
                    ))
                }
                Check::Refill(r) => {
                    rate = Some(r);
                    let Some(charge) = &rt.charge else { break };
                    match Box::pin(m.refill(principal, charge, credits)).await {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(_) => return Err((Refusal::Deny(DenyReason::StoreUnavailable), None)),
                    }
                }
            }
        }
        Err((Refusal::Deny(DenyReason::CreditsExhausted), None))
    }
}

/// The client's `x-request-id` if it is sane, else a new random one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        if !v.is_empty() && v.len() <= 128 {
            return v.clone();
        }
    }
    new_request_id()
}

fn new_request_id() -> HeaderValue {
    HeaderValue::from_bytes(&random_hex()).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// 32 random hex digits: a new request id.
pub(crate) fn random_hex() -> [u8; 32] {
    let n: u128 = rand::random();
    let mut hex = [0u8; 32];
    for (i, d) in hex.iter_mut().enumerate() {
        let nibble = (n >> (124 - 4 * i)) & 0xf;
        *d = b"0123456789abcdef"[nibble as usize];
    }
    hex
}

/// A request's id on the fast path, without an allocation: the client's `x-request-id` when it is
/// one (1 to 128 bytes; the head parser checked its bytes as a field value's), else 32 random hex
/// digits.
pub(crate) enum RequestId<'a> {
    Given(&'a [u8]),
    New([u8; 32]),
}

impl<'a> RequestId<'a> {
    pub(crate) fn from_field(value: Option<&'a [u8]>) -> RequestId<'a> {
        match value {
            Some(v) if !v.is_empty() && v.len() <= 128 => RequestId::Given(v),
            _ => RequestId::New(random_hex()),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Given(v) => v,
            RequestId::New(hex) => hex,
        }
    }
}

/// The route timeouts of one connection's requests, one after another, without a timer-wheel
/// insert and removal for each: the timer stays armed at an earlier request's deadline and, when
/// it fires before the current request's, is moved there. Most requests never touch it.
#[derive(Default)]
pub(crate) struct Deadlines {
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Deadlines {
    /// `fut`'s output, or `None` if `deadline` passes first.
    pub(crate) async fn run<F: Future>(
        &mut self,
        deadline: tokio::time::Instant,
        fut: F,
    ) -> Option<F::Output> {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if sleep.deadline() > deadline {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(out) = fut.as_mut().poll(cx) {
                return std::task::Poll::Ready(Some(out));
            }
            // Armed at or before `deadline`: fired at its own deadline, which may be earlier.
            while sleep.as_mut().poll(cx).is_ready() {
                if sleep.deadline() >= deadline {
                    return std::task::Poll::Ready(None);
                }
                sleep.as_mut().reset(deadline);
            }
            std::task::Poll::Pending
        })
        .await
    }
}

/// The client end of a connection, with its address pre-rendered once for `x-forwarded-for`, and
/// whether it came over TLS (for `x-forwarded-proto`).
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    ip: HeaderValue,
    tls: bool,
}

impl Client {
    /// `tls`: the connection is TLS the proxy listener terminated.
    pub fn new(addr: SocketAddr, tls: bool) -> Client {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Client { addr, ip, tls }
    }

    /// The scheme the client used: the value of `x-forwarded-proto`.
    fn proto(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

fn finish(mut resp: Response<ResponseBody>, mut request_id: HeaderValue) -> Response<ResponseBody> {
    // Unique to the response: HTTP/2's HPACK would add it to the connection's dynamic table and
    // push out the fields that repeat (server, content type, rate-limit policy), which then go
    // out in full again. "Sensitive" makes it a never-indexed literal; HTTP/1.1 is unaffected.
    request_id.set_sensitive(true);
    resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    resp
}

/// A request being admitted and forwarded on hyper's path (see [`Proxy::handle`]): recorded as
/// [`Refusal::ClientClosed`] if dropped before its answer.
struct Abandoned<'a> {
    proxy: &'a Proxy,
    idx: usize,
    started: Instant,
    request_id: &'a [u8],
    line: Line<'a>,
    trace: Trace,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            let r = Refusal::ClientClosed;
            let (idx, started, line) = (Some(self.idx), self.started, self.line);
            self.proxy
                .record(idx, started, self.request_id, line, &self.trace, Err(r));
        }
    }
}

/// See [`Proxy::refund_on_drop`].
pub(crate) struct RefundOnDrop<'a> {
    metering: &'a Metering,
    tenant: Arc<str>,
    pool: Arc<str>,
    taken: u64,
}

impl RefundOnDrop<'_> {
    /// Step 6 settles the request: nothing to give back here.
    pub(crate) fn disarm(&mut self) {
        self.taken = 0;
    }
}

impl Drop for RefundOnDrop<'_> {
    fn drop(&mut self) {
        if self.taken > 0 {
            self.metering
                .credits
                .refund(&self.tenant, &self.pool, self.taken);
            tracing::debug!(
                credits = self.taken,
                "request dropped before its answer (the client went away): its credits go back"
            );
        }
    }
}
