//! Usage arithmetic: UTC days, request and credit totals, and the roll-up of members into a team.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A UTC calendar day, as days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Day(pub i32);

impl Day {
    pub fn from_unix_secs(secs: u64) -> Day {
        Day((secs / 86_400) as i32)
    }

    /// Proleptic Gregorian conversion (H. Hinnant's `days_from_civil`).
    pub fn from_ymd(y: i32, m: u32, d: u32) -> Option<Day> {
        if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
            return None;
        }
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400) as u32;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        Some(Day(era * 146_097 + doe as i32 - 719_468))
    }

    pub fn ymd(self) -> (i32, u32, u32) {
        let z = self.0 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097) as u32;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe as i32 + era * 400 + i32::from(m <= 2);
        (y, m, d)
    }

    pub fn add_days(self, n: i32) -> Day {
        Day(self.0 + n)
    }
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// Not a `YYYY-MM-DD` calendar date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a date of the form YYYY-MM-DD")]
pub struct BadDay(pub String);

impl FromStr for Day {
    type Err = BadDay;
    fn from_str(s: &str) -> Result<Day, BadDay> {
        let bad = || BadDay(s.chars().take(32).collect());
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Result<u32, BadDay> {
            let part = &s[r];
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse().map_err(|_| bad())
        };
        let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        Day::from_ymd(y as i32, m, d).ok_or_else(bad)
    }
}

/// Requests and credits, the two things usage counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub credits: u64,
}

impl Totals {
    pub fn add(&mut self, other: Totals) {
        self.requests = self.requests.saturating_add(other.requests);
        self.credits = self.credits.saturating_add(other.credits);
    }
}

impl std::iter::Sum for Totals {
    fn sum<I: Iterator<Item = Totals>>(iter: I) -> Totals {
        let mut t = Totals::default();
        for x in iter {
            t.add(x);
        }
        t
    }
}

/// One stored usage cell: an account's use of a product from a pool on a day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub account_id: String,
    pub product: String,
    pub pool: String,
    pub day: Day,
    pub totals: Totals,
}

/// Credits used beyond what a pool includes.
pub fn overage(included: u64, used: u64) -> u64 {
    used.saturating_sub(included)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_days() {
        assert_eq!(Day::from_ymd(1970, 1, 1), Some(Day(0)));
        assert_eq!(
            "2026-12-04".parse::<Day>().unwrap().to_string(),
            "2026-12-04"
        );
        assert_eq!(Day::from_unix_secs(1_780_000_000).to_string(), "2026-05-28");
        assert!("2026-02-29".parse::<Day>().is_err());
        assert!("2024-02-29".parse::<Day>().is_ok());
        for bad in [
            "2026-13-01",
            "2026-1-01",
            "20261201",
            "2026-12-00",
            "abcd-ef-gh",
            "+026-12-01",
        ] {
            assert!(bad.parse::<Day>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn days_round_trip(n in -100_000i32..200_000) {
            let d = Day(n);
            let s = d.to_string();
            if (0..=9999).contains(&d.ymd().0) {
                prop_assert_eq!(s.parse::<Day>().unwrap(), d);
            }
        }

        #[test]
        fn totals_sum_is_the_sum_of_parts(parts in proptest::collection::vec((0u64..1_000_000, 0u64..1_000_000), 0..50)) {
            let t: Totals = parts.iter().map(|&(r, c)| Totals { requests: r, credits: c }).sum();
            prop_assert_eq!(t.requests, parts.iter().map(|p| p.0).sum::<u64>());
            prop_assert_eq!(t.credits, parts.iter().map(|p| p.1).sum::<u64>());
        }
    }

    #[test]
    fn overage_is_the_excess() {
        assert_eq!(overage(100, 90), 0);
        assert_eq!(overage(100, 130), 30);
    }
}
