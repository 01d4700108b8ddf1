//! The IETF `RateLimit-Policy` and `RateLimit` response fields (draft-ietf-httpapi-ratelimit-
//! headers), into a header map (hyper's path) or as bytes (the fast path), the same either way.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use tollgate_meter::Standing;

static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The IETF `RateLimit-Policy` value (draft-ietf-httpapi-ratelimit-headers): the account's rate
/// (quota per 1 s window, with its burst) and its pool's credits. `false`: there is none.
fn push_policy(o: &mut Vec<u8>, s: &Standing) -> bool {
    if let Some(r) = s.rate {
        o.extend_from_slice(b"\"rate\";q=");
        push_num(o, r.limit.rps.into());
        o.extend_from_slice(b";w=1;burst=");
        push_num(o, r.limit.burst.into());
    }
    if let Some((included, _)) = s.credits {
        if s.rate.is_some() {
            o.extend_from_slice(b", ");
        }
        o.extend_from_slice(b"\"credits\";q=");
        push_num(o, included);
    }
    s.rate.is_some() || s.credits.is_some()
}

/// The `RateLimit` value: what is left of each. `false`: there is none.
fn push_state(o: &mut Vec<u8>, s: &Standing) -> bool {
    if let Some(r) = s.rate {
        o.extend_from_slice(b"\"rate\";r=");
        push_num(o, r.remaining.into());
        o.extend_from_slice(if r.remaining == 0 { b";t=1" } else { b";t=0" });
    }
    let credits = s.credits.and_then(|(_, remaining)| remaining);
    if let Some(rem) = credits {
        if s.rate.is_some() {
            o.extend_from_slice(b", ");
        }
        o.extend_from_slice(b"\"credits\";r=");
        push_num(o, rem);
    }
    s.rate.is_some() || credits.is_some()
}

type PushValue = fn(&mut Vec<u8>, &Standing) -> bool;

/// The fields, into a header map.
pub(super) fn rate_limit_headers(h: &mut http::HeaderMap, s: &Standing) {
    if let Some(v) = with_policy(s, |v| v.cloned()) {
        h.insert(RATELIMIT_POLICY.clone(), v);
    }
    let mut value = Vec::with_capacity(64);
    if push_state(&mut value, s) {
        if let Ok(mut v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
            // What is left changes from response to response: over HTTP/2 it goes out as a
            // never-indexed literal (see `finish`); the policy repeats and stays indexable.
            v.set_sensitive(true);
            h.insert(RATELIMIT.clone(), v);
        }
    }
}

/// The same fields, appended to a raw response head.
pub(super) fn rate_limit_headers_into(out: &mut Vec<u8>, s: &Standing) {
    with_policy(s, |v| {
        if let Some(v) = v {
            out.extend_from_slice(RATELIMIT_POLICY.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    });
    push_rate_limit_field(out, &RATELIMIT, push_state, s);
}

/// Runs `f` with the `RateLimit-Policy` value for `s` (`None`: there is none). The value is the
/// same for every request under the same limits, so each worker renders it once per change.
fn with_policy<R>(s: &Standing, f: impl FnOnce(Option<&HeaderValue>) -> R) -> R {
    /// What the value is made of: the rate and burst, the pool's included credits.
    type Policy = (Option<(u32, u32)>, Option<u64>);
    thread_local! {
        static POLICY: std::cell::RefCell<Option<(Policy, Option<HeaderValue>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let policy: Policy = (
        s.rate.map(|r| (r.limit.rps, r.limit.burst)),
        s.credits.map(|(included, _)| included),
    );
    POLICY.with_borrow_mut(|memo| {
        if !matches!(memo, Some((p, _)) if *p == policy) {
            let mut value = Vec::with_capacity(96);
            let v = push_policy(&mut value, s)
                .then(|| HeaderValue::from_maybe_shared(Bytes::from(value)).ok())
                .flatten();
            *memo = Some((policy, v));
        }
        f(memo.as_ref().and_then(|(_, v)| v.as_ref()))
    })
}

fn push_rate_limit_field(out: &mut Vec<u8>, name: &HeaderName, push: PushValue, s: &Standing) {
    let start = out.len();
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    if push(out, s) {
        out.extend_from_slice(b"\r\n");
    } else {
        out.truncate(start);
    }
}

/// Appends `n` in decimal, two digits per step.
pub(super) fn push_num(out: &mut Vec<u8>, mut n: u64) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        digits[i] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both paths' `RateLimit-Policy` and `RateLimit` fields, for each mix of a rate and credits.
    #[test]
    fn rate_limit_fields_the_same_on_both_paths() {
        use tollgate_core::Limit;
        use tollgate_meter::RateState;
        let rate = Some(RateState {
            limit: Limit {
                rps: 50,
                burst: 100,
            },
            remaining: 0,
        });
        let cases = [
            (
                rate,
                None,
                Some(r#""rate";q=50;w=1;burst=100"#),
                Some(r#""rate";r=0;t=1"#),
            ),
            (
                rate,
                Some((1000, Some(7))),
                Some(r#""rate";q=50;w=1;burst=100, "credits";q=1000"#),
                Some(r#""rate";r=0;t=1, "credits";r=7"#),
            ),
            // The same policy as the case before (rendered once), another state.
            (
                rate,
                Some((1000, Some(3))),
                Some(r#""rate";q=50;w=1;burst=100, "credits";q=1000"#),
                Some(r#""rate";r=0;t=1, "credits";r=3"#),
            ),
            (None, Some((1000, None)), Some(r#""credits";q=1000"#), None),
            (
                None,
                Some((5, Some(5))),
                Some(r#""credits";q=5"#),
                Some(r#""credits";r=5"#),
            ),
            (None, None, None, None),
        ];
        for (rate, credits, policy, state) in cases {
            let s = Standing {
                rate,
                credits,
                taken: 0,
            };
            let mut map = http::HeaderMap::new();
            rate_limit_headers(&mut map, &s);
            let get = |name: &str| map.get(name).map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(get("ratelimit-policy").as_deref(), policy);
            assert_eq!(get("ratelimit").as_deref(), state);
            let mut raw = Vec::new();
            rate_limit_headers_into(&mut raw, &s);
            let mut want = String::new();
            for (name, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
                if let Some(v) = value {
                    want.push_str(&format!("{name}: {v}\r\n"));
                }
            }
            assert_eq!(String::from_utf8(raw).unwrap(), want);
        }
    }

    #[test]
    fn numbers_in_decimal() {
        for n in [0u64, 7, 10, 99, 100, 101, 1_000_000_000, 12_345, u64::MAX] {
            let mut b = b"x".to_vec();
            push_num(&mut b, n);
            assert_eq!(b, format!("x{n}").as_bytes());
        }
    }
}
