//! Usage bodies: the date range of a query, one account's usage by product and day, and a team's
//! roll-up. Pure functions over the store's rows, so the arithmetic is tested without IO.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use tollgate_core::{overage, Account, Day, Subscription, Totals, UsageRow};

use crate::respond::query_param;
use crate::ApiError;

/// `from` and `to` of a usage query. Defaults: `to` today (UTC), `from` the first day of `to`'s
/// month (so `?to=` alone asks for that month up to that day).
///
/// Any two dates make a range: `from` after `to` is an empty one (no day is in it), and there is
/// no longest range, as a query costs what is stored in it (only days with usage are), not how
/// many days it spans. So every date the OpenAPI document allows is answered with a 200, and
/// only a malformed one is a 400.
pub(crate) fn parse_range(query: Option<&str>, now: u64) -> Result<(Day, Day), ApiError> {
    let today = Day::from_unix_secs(now);
    let day = |name: &str, default: Day| -> Result<Day, ApiError> {
        match query_param(query, name)? {
            None => Ok(default),
            // The parser's own message quotes the value; ours does not.
            Some(s) => s.parse::<Day>().map_err(|_| {
                ApiError::invalid(format!("`{name}` must be a date of the form YYYY-MM-DD"))
            }),
        }
    };
    let to = day("to", today)?;
    let (y, m, _) = to.ymd();
    let from = day("from", Day::from_ymd(y, m, 1).unwrap_or(to))?;
    Ok((from, to))
}

pub(crate) fn totals_json(t: Totals) -> Value {
    json!({"requests": t.requests, "credits": t.credits})
}

/// One account's usage in a range.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct MemberUsage {
    pub total: Totals,
    pub by_product: BTreeMap<String, Totals>,
}

impl MemberUsage {
    pub(crate) fn of<'a>(rows: impl IntoIterator<Item = &'a UsageRow>) -> MemberUsage {
        let mut u = MemberUsage::default();
        for row in rows {
            u.total.add(row.totals);
            u.by_product
                .entry(row.product.clone())
                .or_default()
                .add(row.totals);
        }
        u
    }

    fn by_product_json(&self) -> Value {
        let map: Map<String, Value> = self
            .by_product
            .iter()
            .map(|(p, t)| (p.clone(), totals_json(*t)))
            .collect();
        Value::Object(map)
    }
}

/// `GET /v1/usage`: one account's total, by product, and by day and product (a product drawn from
/// two pools on one day is one entry).
pub(crate) fn usage_body(account_id: &str, from: Day, to: Day, rows: &[UsageRow]) -> Value {
    let mine: Vec<&UsageRow> = rows.iter().filter(|r| r.account_id == account_id).collect();
    let usage = MemberUsage::of(mine.iter().copied());
    let mut by_day: BTreeMap<(Day, &str), Totals> = BTreeMap::new();
    for row in &mine {
        by_day
            .entry((row.day, row.product.as_str()))
            .or_default()
            .add(row.totals);
    }
    let by_day: Vec<Value> = by_day
        .into_iter()
        .map(|((day, product), t)| {
            json!({"date": day.to_string(), "product": product, "requests": t.requests, "credits": t.credits})
        })
        .collect();
    json!({
        "account_id": account_id,
        "from": from.to_string(),
        "to": to.to_string(),
        "total": totals_json(usage.total),
        "by_product": usage.by_product_json(),
        "by_day": by_day,
    })
}

/// Included credits and the credits the range's `rows` drew, of every pool a tenant subscribes to
/// or drew from in the range.
pub(crate) fn pools(subs: &[Subscription], rows: &[UsageRow]) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for s in subs {
        out.entry(s.pool.clone()).or_default().0 = s.credits;
    }
    for row in rows {
        let e = out.entry(row.pool.clone()).or_default();
        e.1 = e.1.saturating_add(row.totals.credits);
    }
    out
}

/// `GET /v1/team/usage`. `members` are the parent and then its children (deleted ones included:
/// what they used is billed); the total is the sum of the members, so it always agrees with them.
/// `rows` are the members' usage in the range: each pool's `used` is their credits drawn from it
/// (so the pools' `used` add up to the total's credits), and its `overage` what of that is
/// beyond the included credits.
pub(crate) fn team_body(
    parent_id: &str,
    members: &[Account],
    from: Day,
    to: Day,
    rows: &[UsageRow],
    subs: &[Subscription],
) -> Value {
    let mut by_account: BTreeMap<&str, Vec<&UsageRow>> = BTreeMap::new();
    for row in rows {
        by_account
            .entry(row.account_id.as_str())
            .or_default()
            .push(row);
    }
    let mut total = Totals::default();
    let members_json: Vec<Value> = members
        .iter()
        .map(|m| {
            let usage =
                MemberUsage::of(by_account.get(m.id.as_str()).into_iter().flatten().copied());
            total.add(usage.total);
            json!({
                "account_id": m.id,
                "email": m.email,
                "role": m.role.as_str(),
                "status": m.status.as_str(),
                "total": totals_json(usage.total),
                "by_product": usage.by_product_json(),
            })
        })
        .collect();
    let pools_json: Map<String, Value> = pools(subs, rows)
        .into_iter()
        .map(|(pool, (included, used))| {
            (
                pool,
                json!({"included": included, "used": used, "overage": overage(included, used)}),
            )
        })
        .collect();
    json!({
        "parent_id": parent_id,
        "from": from.to_string(),
        "to": to.to_string(),
        "total": totals_json(total),
        "pools": pools_json,
        "members": members_json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::Overage;

    fn day(s: &str) -> Day {
        s.parse().unwrap()
    }

    fn row(
        account: &str,
        product: &str,
        pool: &str,
        d: &str,
        requests: u64,
        credits: u64,
    ) -> UsageRow {
        UsageRow {
            account_id: account.into(),
            product: product.into(),
            pool: pool.into(),
            day: day(d),
            totals: Totals { requests, credits },
        }
    }

    // 2026-12-04T12:00:00Z
    const NOW: u64 = 1_796_385_600;

    #[test]
    fn ranges() {
        assert_eq!(Day::from_unix_secs(NOW).to_string(), "2026-12-04");
        assert_eq!(
            parse_range(None, NOW).unwrap(),
            (day("2026-12-01"), day("2026-12-04"))
        );
        assert_eq!(
            parse_range(Some("from=2026-01-01&to=2026-12-31"), NOW).unwrap(),
            (day("2026-01-01"), day("2026-12-31"))
        );
        // Any two dates: a range over years, an inverted (empty) one, the calendar's ends.
        for q in [
            "from=2024-01-01&to=2025-01-01",
            "from=2026-12-05&to=2026-12-04",
            "from=0000-01-01&to=9999-12-31",
        ] {
            assert!(parse_range(Some(q), NOW).is_ok(), "{q}");
        }
        assert!(parse_range(Some("from=2026-13-01"), NOW).is_err());
        assert!(parse_range(Some("to=yesterday"), NOW).is_err());
        // `to` alone asks for its month up to that day; `from` alone runs to today.
        assert_eq!(
            parse_range(Some("to=2026-11-20"), NOW).unwrap(),
            (day("2026-11-01"), day("2026-11-20"))
        );
        assert_eq!(
            parse_range(Some("to=2026-03-01"), NOW).unwrap(),
            (day("2026-03-01"), day("2026-03-01"))
        );
        assert_eq!(
            parse_range(Some("from=2026-10-15"), NOW).unwrap(),
            (day("2026-10-15"), day("2026-12-04"))
        );
        let msg = parse_range(Some("from=at_secret"), NOW)
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("at_secret"));
    }

    #[test]
    fn usage_by_product_and_day() {
        let rows = vec![
            row("a", "whois", "whois", "2026-12-01", 1, 2),
            row("a", "whois", "whois", "2026-12-02", 3, 4),
            row("a", "dns", "whois", "2026-12-02", 5, 6),
            row("b", "whois", "whois", "2026-12-02", 100, 100),
        ];
        let v = usage_body("a", day("2026-12-01"), day("2026-12-04"), &rows);
        assert_eq!(v["total"], json!({"requests": 9, "credits": 12}));
        assert_eq!(
            v["by_product"]["whois"],
            json!({"requests": 4, "credits": 6})
        );
        assert_eq!(v["by_day"].as_array().unwrap().len(), 3);
        assert_eq!(
            v["by_day"][1],
            json!({"date": "2026-12-02", "product": "dns", "requests": 5, "credits": 6})
        );
    }

    #[test]
    fn pools_and_overage() {
        let subs = vec![
            Subscription {
                pool: "whois".into(),
                credits: 10,
                overage: Overage::Allow,
            },
            Subscription {
                pool: "drs".into(),
                credits: 100,
                overage: Overage::Deny,
            },
        ];
        let rows = [
            row("a", "whois", "whois", "2026-12-01", 1, 5),
            row("b", "bulk-whois", "whois", "2026-12-02", 1, 10),
            row("b", "legacy", "old", "2026-12-02", 1, 3),
        ];
        let p = pools(&subs, &rows);
        assert_eq!(p["whois"], (10, 15));
        assert_eq!(p["drs"], (100, 0));
        assert_eq!(p["old"], (0, 3));
        let members: Vec<Account> = Vec::new();
        let v = team_body(
            "p",
            &members,
            day("2026-12-01"),
            day("2026-12-02"),
            &rows,
            &subs,
        );
        assert_eq!(
            v["pools"]["whois"],
            json!({"included": 10, "used": 15, "overage": 5})
        );
    }
}
