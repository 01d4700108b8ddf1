//! The one check of a request's path, made before its key is looked up or its route found, on
//! every path of the data plane (the HTTP/1.1 fast path and hyper's, through
//! `tollgate_proxy::path`), and the same rule applied to a route's prefix by `tollgate check`.
//!
//! Routing matches the path as it came, and the path goes upstream as it came; so a path that an
//! upstream would resolve to another place than the one it was routed as must never pass:
//! `/whoisserver/WhoisService/../DNSService` routes as `whois` but is DNSService upstream. Dot
//! segments (`.`, `..`, written out or percent-encoded) and anything an upstream may decode into a
//! separator (`\`, `%2f`, `%5c`) are refused instead of normalised, since a gateway that rewrites
//! the path no longer forwards what the client signed, cached or logged.

/// Whether `path` (the request target before any `?`) may be routed and forwarded as it is: it
/// starts with `/` (origin form; `*` and authority form do not), and has
/// - no segment that is `.` or `..`, written out or percent-encoded in either case (`%2e`,
///   `.%2E`, `%2e%2e`), nor one that is such a segment before a `;` (`..;x`, which servlet
///   containers read as `..`);
/// - no `\` and no `%2f` or `%5c` (either case), which upstreams may decode into separators;
/// - no `#`: a fragment is not part of a request target, and an upstream that cuts it off
///   would see a path ending in a segment this check did not see as one.
///
/// Segments such as `...`, `.well-known`, `a.b` and `%2e%2e%2e` pass. One pass over the bytes,
/// no allocation.
#[inline]
pub fn is_safe(path: &[u8]) -> bool {
    scan(path).is_some_and(|(dots, other)| !dot_segment(dots, other))
}

/// Whether some path that [`is_safe`] passes starts with `prefix`: a route prefix for which this
/// is `false` can never match a request, as every path it starts is refused before routing. A
/// prefix ending in a dot segment still can (`/a/.` starts `/a/.well-known`); anything else
/// `is_safe` refuses cannot be undone by what follows.
pub fn can_start_safe_path(prefix: &[u8]) -> bool {
    scan(prefix).is_some()
}

/// Whether the current segment, its dots counted and `other` set if it has anything else, is a
/// dot segment (`.` or `..`, written out or encoded).
#[inline]
fn dot_segment(dots: u8, other: bool) -> bool {
    !other && (dots == 1 || dots == 2)
}

/// One pass over `path`: `None` as soon as something no continuation can make safe is seen,
/// else the state of the last segment (its dots, and whether it has anything else).
#[inline]
fn scan(path: &[u8]) -> Option<(u8, bool)> {
    let Some((b'/', rest)) = path.split_first() else {
        return None;
    };
    // The current segment so far: the dots in it (written out or encoded), and whether it has
    // anything else (then it is no dot segment however many dots it has).
    let (mut dots, mut other) = (0u8, false);
    let mut bytes = rest.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'/' => {
                if dot_segment(dots, other) {
                    return None;
                }
                (dots, other) = (0, false);
            }
            b'.' => dots = dots.saturating_add(1),
            b'%' => match bytes.as_slice() {
                [b'2', x, ..] if x.eq_ignore_ascii_case(&b'e') => {
                    dots = dots.saturating_add(1);
                    bytes.nth(1);
                }
                [b'2', x, ..] if x.eq_ignore_ascii_case(&b'f') => return None,
                [b'5', x, ..] if x.eq_ignore_ascii_case(&b'c') => return None,
                // Any other escape, or a `%` that starts none, is data. Its next bytes are read
                // as they come, so `%%2f` is still seen.
                _ => other = true,
            },
            b'\\' | b'#' => return None,
            b';' => {
                if dot_segment(dots, other) {
                    return None;
                }
                other = true;
            }
            _ => other = true,
        }
    }
    Some((dots, other))
}

#[cfg(test)]
mod tests {
    use super::{can_start_safe_path, is_safe};

    #[test]
    fn normal_paths_pass() {
        for p in [
            "/",
            "/whoisserver/WhoisService",
            "/whoisserver/WhoisService/",
            "/api/v2",
            "//a//b//",
            "/a/.../b",
            "/a/...",
            "/.well-known/x",
            "/a.b/c.d",
            "/a/b.",
            "/a/.b",
            "/a/..b",
            "/a/b..",
            "/a/.b.",
            "/%2e%2e%2e",
            "/a/%2E%2e%2E/b",
            "/a/.%2e./",
            "/a/%2ex",
            "/a/x%2e",
            "/a/%2e%41",
            "/a/...;x",
            "/a/b;..",
            "/a/b;x=../c",
            "/a/%41%42",
            "/a/%25",
            "/a/%252e%252e/b",
            "/a/%252f",
            "/a%",
            "/a%2",
            "/a/%",
            "/a/%zz",
            "/a/%2",
            "/caf\u{e9}/\u{2e2e}",
            "/a b",
        ] {
            assert!(is_safe(p.as_bytes()), "{p:?} was refused");
        }
    }

    #[test]
    fn dot_segments_separators_and_other_forms_are_refused() {
        for p in [
            // Not an absolute path.
            "",
            "*",
            "a/b",
            "example.com:443",
            "http://example.com/a",
            ".",
            // Dot segments, written out, anywhere.
            "/.",
            "/..",
            "/./",
            "/../",
            "/a/.",
            "/a/..",
            "/a/./b",
            "/a/../b",
            "/whoisserver/WhoisService/../DNSService",
            "//..//",
            // Percent-encoded, in either case, whole or in part.
            "/%2e",
            "/%2E",
            "/a/%2e%2e",
            "/a/%2E%2E/b",
            "/a/.%2e/b",
            "/a/.%2E/b",
            "/a/%2e./b",
            "/a/%2E.",
            "/a/%2e/b",
            // Before a `;`.
            "/a/..;/b",
            "/a/..;x=1/b",
            "/a/.;/b",
            "/a/%2e%2e;/b",
            "/a/..;",
            // Encoded separators and backslashes.
            "/a%2fb",
            "/a%2Fb",
            "/a/%2f",
            "/a%5cb",
            "/a%5Cb",
            "/a\\b",
            "/a\\..\\b",
            "/a/..%2fb",
            "/a/..%5cb",
            "/a/%%2f",
            "/a/%2%2f",
            // A fragment.
            "/a#b",
            "/a/..#",
            "/a#/../b",
        ] {
            assert!(!is_safe(p.as_bytes()), "{p:?} was let through");
        }
    }

    #[test]
    fn prefixes_that_no_safe_path_starts() {
        for p in [
            "/b/../c", "/d%2f", "/a\\b", "/a#", "/./x", "/a/..;/b", "", "api", "/a/%5C",
        ] {
            assert!(!can_start_safe_path(p.as_bytes()), "{p:?} was let through");
        }
        // A trailing dot segment or a cut-off escape can still be continued into a safe path.
        for p in [
            "/",
            "/api/v2",
            "/a/.",
            "/a/..",
            "/a/%2e",
            "/a%2",
            "/a%",
            "/a/.well-known",
        ] {
            assert!(can_start_safe_path(p.as_bytes()), "{p:?} was refused");
            assert!(is_safe(format!("{p}x").as_bytes()), "{p:?}x");
        }
    }
}
