//! The access log: one `tracing` event per request on target [`TARGET`], with the request id, the
//! client's address, method and path (never the query, where a key may be), the account and
//! parent ids (never a key), route, status, outcome, credits charged and durations.
//!
//! Admitted requests are sampled (`[logging] access_sample`): a per-thread xorshift draw against a
//! threshold, so a request that is not logged costs a few arithmetic instructions, no allocation,
//! no lock and no shared cache line. Every refusal is logged, up to `refusals_per_second` lines per
//! second per process, so a flood of bad keys cannot turn into a flood of log lines; the lines held
//! back are counted and reported by [`AccessLog::report_suppressed`] (called once a second).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tollgate_store::Principal;

/// The `tracing` target of access-log lines (filter with `RUST_LOG=info,tollgate::access=off`).
pub const TARGET: &str = "tollgate::access";

/// Threshold meaning "every request": no draw at all.
const ALWAYS: u64 = u64::MAX;

/// What the request path learned about one request, for its log line. Filled by moves and copies
/// only, whether or not a line is written.
#[derive(Debug, Default)]
pub struct Trace {
    /// The caller, once its key was resolved.
    pub principal: Option<Principal>,
    /// Credits charged for this request (0 when nothing was charged).
    pub credits: u64,
    /// Time the upstream took to answer (or fail), when the request was forwarded.
    pub upstream: Option<Duration>,
    /// The response body is still to be streamed from the upstream, and observes the request's
    /// duration when it ends (`UpstreamBody::arm`) rather than at the response head.
    pub duration_at_body_end: bool,
}

/// What a request's line says of the request itself, borrowed from it: read only when a line is
/// written.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    pub method: &'a str,
    /// The request target as it came; the line keeps its path and drops the query.
    pub target: &'a str,
    /// The client's address, as `x-forwarded-for` gets it.
    pub client: &'a [u8],
}

/// One line's fields.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The request id's bytes (a valid field value).
    pub request_id: &'a [u8],
    pub line: Line<'a>,
    pub account: Option<&'a str>,
    pub parent: Option<&'a str>,
    pub route: &'a str,
    pub status: u16,
    /// `admitted` or a refusal code.
    pub outcome: &'static str,
    pub credits: u64,
    /// Until the response head was ready.
    pub duration: Duration,
    pub upstream: Option<Duration>,
}

/// See the module docs. One per process, kept across config reloads; its settings change in place.
#[derive(Debug)]
pub struct AccessLog {
    /// An admitted request is logged when its draw is below this ([`ALWAYS`]: every one).
    threshold: AtomicU64,
    refusal_cap: AtomicU64,
    epoch: Instant,
    /// The second (since `epoch`) the refusal count below belongs to.
    window: AtomicU64,
    in_window: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for AccessLog {
    /// Every request logged, 100 refusal lines a second: the config defaults.
    fn default() -> Self {
        AccessLog::new(1.0, 100)
    }
}

impl AccessLog {
    pub fn new(sample: f64, refusals_per_second: u32) -> AccessLog {
        let log = AccessLog {
            threshold: AtomicU64::new(ALWAYS),
            refusal_cap: AtomicU64::new(0),
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        };
        log.set(sample, refusals_per_second);
        log
    }

    /// New settings (a config reload), in force from the next request.
    pub fn set(&self, sample: f64, refusals_per_second: u32) {
        self.threshold.store(threshold(sample), Ordering::Relaxed);
        self.refusal_cap
            .store(u64::from(refusals_per_second), Ordering::Relaxed);
    }

    /// Whether this admitted request gets a line.
    #[inline]
    pub fn sampled(&self) -> bool {
        let t = self.threshold.load(Ordering::Relaxed);
        t == ALWAYS || (t != 0 && draw() < t)
    }

    /// Logs an admitted request; the caller asked [`AccessLog::sampled`] first.
    pub fn admitted(&self, e: &Entry<'_>) {
        emit(e);
    }

    /// Logs a refusal, unless this second's allowance of refusal lines is spent (then counts it).
    pub fn refused(&self, e: &Entry<'_>, now: Instant) {
        if self.refusal_slot(now) {
            emit(e);
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes one of this second's refusal lines. Races at a second's boundary can let a few extra
    /// lines through; never fewer than the cap.
    fn refusal_slot(&self, now: Instant) -> bool {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let current = self.window.load(Ordering::Relaxed);
        if second > current
            && self
                .window
                .compare_exchange(current, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.in_window.store(0, Ordering::Relaxed);
        }
        self.in_window.fetch_add(1, Ordering::Relaxed) < self.refusal_cap.load(Ordering::Relaxed)
    }

    /// Refusal lines held back since the last call, now zero.
    pub fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Ordering::Relaxed)
    }

    /// Writes one "N refusal lines suppressed" line if any were held back since the last call.
    pub fn report_suppressed(&self) {
        let n = self.take_suppressed();
        if n > 0 {
            tracing::info!(
                target: TARGET,
                suppressed = n,
                "{n} refusal lines suppressed (logging.refusals_per_second)"
            );
        }
    }
}

/// `bytes` as text if they are all visible ASCII (or tabs), as `HeaderValue::to_str` reads them.
fn visible_ascii(bytes: &[u8]) -> Option<&str> {
    if bytes.iter().all(|&b| b == b'\t' || (32..127).contains(&b)) {
        std::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

fn emit(e: &Entry<'_>) {
    tracing::info!(
        target: TARGET,
        request_id = visible_ascii(e.request_id).unwrap_or("-"),
        client = visible_ascii(e.line.client).unwrap_or("-"),
        method = e.line.method,
        path = e.line.target.split('?').next().unwrap_or(""),
        account = e.account,
        parent = e.parent,
        route = e.route,
        status = e.status,
        outcome = e.outcome,
        credits = e.credits,
        duration_ms = millis(e.duration),
        upstream_ms = e.upstream.map(millis),
        "access"
    );
}

/// Milliseconds with microsecond resolution.
fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// The draw threshold for a share in `0..=1`: `share * 2^64`, all at 1.
fn threshold(share: f64) -> u64 {
    if share.is_nan() || share <= 0.0 {
        0
    } else if share >= 1.0 {
        ALWAYS
    } else {
        // 2^64 as f64 is exact; `as` saturates below u64::MAX.
        ((share * 18_446_744_073_709_551_616.0) as u64).min(ALWAYS - 1)
    }
}

thread_local! {
    /// xorshift64* state, seeded once per thread from the OS RNG (never 0).
    static RNG: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
}

/// A uniformly distributed u64 from this thread's generator. Not for secrets: sampling only.
#[inline]
fn draw() -> u64 {
    RNG.with(|c| {
        let x = xorshift(c.get());
        c.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

#[inline]
fn xorshift(mut x: u64) -> u64 {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(-1.0), 0);
        assert_eq!(threshold(f64::NAN), 0);
        assert_eq!(threshold(1.0), ALWAYS);
        assert_eq!(threshold(0.5), 1 << 63);
        assert!(threshold(0.999_999_999_999_999_9) < ALWAYS);
    }

    #[test]
    fn sampling_keeps_about_the_share_asked_for() {
        let n = 200_000;
        for share in [0.01, 0.25, 0.5] {
            let log = AccessLog::new(share, 0);
            let kept = (0..n).filter(|_| log.sampled()).count() as f64;
            let expected = share * n as f64;
            // Five standard deviations of a binomial: never flaky, still tight.
            let tolerance = 5.0 * (expected * (1.0 - share)).sqrt();
            assert!(
                (kept - expected).abs() < tolerance,
                "share {share}: kept {kept}, expected {expected}"
            );
        }
        assert!((0..1000).all(|_| AccessLog::new(1.0, 0).sampled()));
        assert!(!(0..1000).any(|_| AccessLog::new(0.0, 0).sampled()));
    }

    #[test]
    fn refusals_are_capped_per_second_and_the_rest_counted() {
        let log = AccessLog::new(1.0, 3);
        let t0 = log.epoch;
        let slots: Vec<bool> = (0..5).map(|_| log.refusal_slot(t0)).collect();
        assert_eq!(slots, [true, true, true, false, false]);
        // refusal_slot itself does not count; refused() does.
        let e = Entry {
            request_id: b"r1",
            line: Line {
                method: "GET",
                target: "/whois?apiKey=x",
                client: b"127.0.0.1",
            },
            account: None,
            parent: None,
            route: "whois",
            status: 401,
            outcome: "key_missing",
            credits: 0,
            duration: Duration::from_micros(1500),
            upstream: None,
        };
        log.refused(&e, t0);
        log.refused(&e, t0 + Duration::from_millis(999));
        assert_eq!(log.take_suppressed(), 2);
        assert_eq!(log.take_suppressed(), 0);
        // The next second has its own allowance.
        let t1 = t0 + Duration::from_secs(1);
        assert!((0..3).all(|_| log.refusal_slot(t1)));
        assert!(!log.refusal_slot(t1));
        // A late caller with an older clock reading does not reopen a past second.
        assert!(!log.refusal_slot(t0));
        // Zero: every refusal only counted.
        log.set(1.0, 0);
        assert!(!log.refusal_slot(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn millis_keep_microseconds() {
        assert_eq!(millis(Duration::from_micros(1500)), 1.5);
        assert_eq!(millis(Duration::from_secs(2)), 2000.0);
    }
}
