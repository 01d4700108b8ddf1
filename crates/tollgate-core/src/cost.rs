//! What a request costs: the route's base credits, changed by its cost rules (the costliest
//! matching one).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// How a matching rule changes the base cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CostAction {
    Multiply(u64),
    Set(u64),
}

/// `{ query = "name=value", multiply = N }` or `{ query = "name=value", set = N }`. A rule matches
/// when the request's query string holds that `name=value` pair, or, for a bare `name`, has a
/// parameter of that name. Names and values are compared as the upstream reads them (`%XX` and `+`
/// decoded), so `mode=purch%61se` is `mode=purchase`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostRule {
    pub query: String,
    pub action: CostAction,
}

impl CostRule {
    pub fn matches(&self, query: Option<&str>) -> bool {
        let Some(q) = query else { return false };
        let (want_name, want_value) = match self.query.split_once('=') {
            Some((n, v)) => (form_decoded(n), Some(form_decoded(v))),
            None => (form_decoded(&self.query), None),
        };
        q.split('&').any(|pair| {
            let (name, value) = match pair.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (pair, None),
            };
            form_decoded(name) == want_name
                && match &want_value {
                    None => true,
                    Some(want) => value.is_some_and(|v| form_decoded(v) == *want),
                }
        })
    }

    fn apply(&self, base: u64) -> u64 {
        match self.action {
            CostAction::Multiply(m) => base.saturating_mul(m),
            CostAction::Set(n) => n,
        }
    }
}

/// A query-string component as an upstream reads it: `+` is a space and `%XX` its byte (an escape
/// that is not one stays as it is). Borrowed when there is nothing to decode.
fn form_decoded(s: &str) -> Cow<'_, [u8]> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s.as_bytes());
    }
    let spaced = s.replace('+', " ");
    Cow::Owned(percent_encoding::percent_decode_str(&spaced).collect())
}

/// The costliest of the matching rules applies (a request that names several parameters with a
/// price, or one parameter twice, never pays less than any of them says); no rule matches, the
/// base cost. Saturates instead of overflowing.
pub fn cost(base: u64, rules: &[CostRule], query: Option<&str>) -> u64 {
    rules
        .iter()
        .filter(|r| r.matches(query))
        .map(|r| r.apply(base))
        .max()
        .unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(q: &str, action: CostAction) -> CostRule {
        CostRule {
            query: q.into(),
            action,
        }
    }

    #[test]
    fn the_costliest_match_applies() {
        let rules = [
            rule("mode=preview", CostAction::Set(0)),
            rule("mode=purchase", CostAction::Set(10)),
            rule("_hardRefresh=1", CostAction::Multiply(5)),
        ];
        assert_eq!(cost(1, &rules, None), 1);
        assert_eq!(cost(1, &rules, Some("a=b")), 1);
        assert_eq!(cost(1, &rules, Some("mode=preview")), 0);
        assert_eq!(cost(1, &rules, Some("x=1&mode=purchase")), 10);
        assert_eq!(cost(2, &rules, Some("_hardRefresh=1")), 10);
        assert_eq!(cost(2, &rules, Some("_hardRefresh=10")), 2);
        // The same parameter twice, or two priced ones: the dearest.
        assert_eq!(cost(1, &rules, Some("mode=preview&mode=purchase")), 10);
        assert_eq!(cost(1, &rules, Some("mode=purchase&mode=preview")), 10);
        assert_eq!(cost(1, &rules, Some("mode=preview&_hardRefresh=1")), 5);
        assert_eq!(cost(u64::MAX, &rules, Some("_hardRefresh=1")), u64::MAX);
    }

    #[test]
    fn names_and_values_are_compared_decoded() {
        let rules = [
            rule("mode=purchase", CostAction::Set(10)),
            rule("_hardRefresh=1", CostAction::Multiply(5)),
            rule("q=a b", CostAction::Set(7)),
        ];
        assert_eq!(cost(1, &rules, Some("mode=purch%61se")), 10);
        assert_eq!(cost(1, &rules, Some("mode=PURCH%61se")), 1);
        assert_eq!(cost(1, &rules, Some("domainName=x&_hardRefresh=%31")), 5);
        assert_eq!(cost(1, &rules, Some("_hard%52efresh=1")), 5);
        assert_eq!(cost(1, &rules, Some("%6dode=purchase")), 10);
        assert_eq!(cost(1, &rules, Some("q=a+b")), 7);
        assert_eq!(cost(1, &rules, Some("q=a%20b")), 7);
        // A bad escape is compared as it is.
        assert_eq!(cost(1, &rules, Some("mode=purchase%")), 1);
        assert_eq!(cost(1, &rules, Some("mode=purchas%zz")), 1);
    }

    #[test]
    fn bare_name_matches_any_value() {
        let r = rule("debug", CostAction::Set(0));
        assert!(r.matches(Some("debug=1")));
        assert!(r.matches(Some("a=1&debug")));
        assert!(!r.matches(Some("debugger=1")));
        assert!(r.matches(Some("d%65bug=1")));
    }
}
