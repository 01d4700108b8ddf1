//! Durations as `gateway.toml` writes them: a whole number and a unit, `250ms`, `5s`, `2m`, `1h`, `7d`.

use std::time::Duration;

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("durations cannot be negative")]
    Negative,
    #[error("a duration starts with a whole number")]
    NoNumber,
    #[error("a duration needs a whole number, not a fraction")]
    NotInteger,
    #[error("a duration needs a unit")]
    NoUnit,
    #[error("unknown unit `{0}`")]
    UnknownUnit(String),
    #[error("duration too large (at most 36500d)")]
    Overflow,
}

impl DurationError {
    /// What to write instead; the text `check` prints after the problem.
    pub fn fix(&self) -> &'static str {
        match self {
            DurationError::NotInteger => {
                "use a whole number of a smaller unit, e.g. \"1500ms\" rather than \"1.5s\""
            }
            DurationError::Overflow => "use a smaller number, e.g. \"30d\"",
            DurationError::Empty
            | DurationError::Negative
            | DurationError::NoNumber
            | DurationError::NoUnit
            | DurationError::UnknownUnit(_) => UNITS_FIX,
        }
    }
}

pub(crate) const UNITS_FIX: &str = "use a number with ms, s, m, h or d, e.g. \"30s\"";

/// The longest duration a setting takes: 100 years. Every duration is added to a clock reading
/// somewhere, and a longer one would overflow it (a panic at the first request) rather than mean
/// "never".
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// Parses `250ms`, `5s`, `2m`, `1h` or `7d`: digits then one unit, nothing else (no spaces, no sign,
/// no fractions), so a value means the same to every reader of the file. At most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    if number.is_empty() {
        return Err(DurationError::NoNumber);
    }
    if unit.starts_with('.') {
        return Err(DurationError::NotInteger);
    }
    if unit.is_empty() {
        return Err(DurationError::NoUnit);
    }
    // All-digit `number` only fails to parse when it does not fit in a u64.
    let n: u64 = number.parse().map_err(|_| DurationError::Overflow)?;
    let secs_per = match unit {
        "ms" => {
            let d = Duration::from_millis(n);
            return if d > MAX_DURATION {
                Err(DurationError::Overflow)
            } else {
                Ok(d)
            };
        }
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        other => return Err(DurationError::UnknownUnit(other.to_owned())),
    };
    n.checked_mul(secs_per)
        .map(Duration::from_secs)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or(DurationError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("007s"), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn every_error() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("-5s"), Err(DurationError::Negative));
        assert_eq!(parse_duration("s"), Err(DurationError::NoNumber));
        assert_eq!(parse_duration("+5s"), Err(DurationError::NoNumber));
        assert_eq!(parse_duration(" 5s"), Err(DurationError::NoNumber));
        assert_eq!(parse_duration("30"), Err(DurationError::NoUnit));
        assert_eq!(parse_duration("1.5s"), Err(DurationError::NotInteger));
        assert_eq!(
            parse_duration("5x"),
            Err(DurationError::UnknownUnit("x".into()))
        );
        assert_eq!(
            parse_duration("5 s"),
            Err(DurationError::UnknownUnit(" s".into()))
        );
        assert_eq!(
            parse_duration("5sec"),
            Err(DurationError::UnknownUnit("sec".into()))
        );
        assert_eq!(
            parse_duration("5S"),
            Err(DurationError::UnknownUnit("S".into()))
        );
        assert_eq!(
            parse_duration("5s5"),
            Err(DurationError::UnknownUnit("s5".into()))
        );
        // Too many digits for a u64, and a u64 of days that overflows seconds.
        assert_eq!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::Overflow)
        );
        assert_eq!(
            parse_duration("18446744073709551615d"),
            Err(DurationError::Overflow)
        );
        // Fits in a u64 but would overflow a clock reading it is added to: refused at 100 years.
        assert_eq!(
            parse_duration("18446744073709551615s"),
            Err(DurationError::Overflow)
        );
        assert_eq!(
            parse_duration("18446744073709551615ms"),
            Err(DurationError::Overflow)
        );
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("36501d"), Err(DurationError::Overflow));
        assert_eq!(parse_duration("3153600000000ms"), Ok(MAX_DURATION));
        assert_eq!(
            parse_duration("3153600000001ms"),
            Err(DurationError::Overflow)
        );
        // Every setting's largest value still adds to a clock reading.
        assert!(std::time::Instant::now()
            .checked_add(MAX_DURATION)
            .is_some());
    }

    #[test]
    fn messages_and_fixes() {
        assert_eq!(
            DurationError::UnknownUnit("x".into()).to_string(),
            "unknown unit `x`"
        );
        assert_eq!(DurationError::NoUnit.fix(), UNITS_FIX);
        assert_eq!(
            DurationError::Overflow.fix(),
            "use a smaller number, e.g. \"30d\""
        );
    }
}
