//! What a request costs: the route's base credits, changed by the first matching cost rule.

use serde::{Deserialize, Serialize};

/// How a matching rule changes the base cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CostAction {
    Multiply(u64),
    Set(u64),
}

/// `{ query = "name=value", multiply = N }` or `{ query = "name=value", set = N }`. A rule matches
/// when the request's query string holds that exact `name=value` pair, or, for a bare `name`, has a
/// parameter of that name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostRule {
    pub query: String,
    pub action: CostAction,
}

impl CostRule {
    pub fn matches(&self, query: Option<&str>) -> bool {
        let Some(q) = query else { return false };
        let want = self.query.as_str();
        q.split('&').any(|pair| {
            if want.contains('=') {
                pair == want
            } else {
                pair == want || pair.split_once('=').is_some_and(|(n, _)| n == want)
            }
        })
    }
}

/// The first matching rule wins; no rule, the base cost. Saturates instead of overflowing.
pub fn cost(base: u64, rules: &[CostRule], query: Option<&str>) -> u64 {
    match rules.iter().find(|r| r.matches(query)) {
        Some(CostRule {
            action: CostAction::Multiply(m),
            ..
        }) => base.saturating_mul(*m),
        Some(CostRule {
            action: CostAction::Set(n),
            ..
        }) => *n,
        None => base,
    }
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
    fn first_match_wins() {
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
        assert_eq!(cost(1, &rules, Some("mode=preview&mode=purchase")), 0);
        assert_eq!(cost(u64::MAX, &rules, Some("_hardRefresh=1")), u64::MAX);
    }

    #[test]
    fn bare_name_matches_any_value() {
        let r = rule("debug", CostAction::Set(0));
        assert!(r.matches(Some("debug=1")));
        assert!(r.matches(Some("a=1&debug")));
        assert!(!r.matches(Some("debugger=1")));
    }
}
