//! What `check` prints: every problem in the file at once, each with its TOML path and its fix.

use std::fmt;

/// One problem in `gateway.toml`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(self))]
pub struct ConfigError {
    /// Where it is, as a TOML path: `cache.max_staleness`, `routes[2].timeout` (list indices count
    /// from 0). Empty when the problem is the whole file (unreadable, or not TOML at all).
    pub path: String,
    /// What is wrong, naming the bad value.
    pub message: String,
    /// What to write instead. May be empty when the message already says it.
    pub fix: String,
}

impl ConfigError {
    pub fn new(
        path: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

fn render(e: &ConfigError) -> String {
    let mut out = String::new();
    if !e.path.is_empty() {
        out.push_str(&e.path);
        out.push_str(": ");
    }
    out.push_str(&e.message);
    if !e.fix.is_empty() {
        out.push_str("; ");
        out.push_str(&e.fix);
    }
    out
}

/// Every problem found in one file, in the order the file's sections are checked. Never empty when
/// returned by [`crate::parse`] or [`crate::load`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(&self.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// The paths of all problems, in order; handy for callers and tests that only need where.
    pub fn paths(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.path.as_str()).collect()
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One problem a line, no trailing newline, so callers can `eprintln!("{errors}")`.
struct Lines<'a>(&'a [ConfigError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_problem_per_line_with_path_message_and_fix() {
        let errs = ConfigErrors(vec![
            ConfigError::new(
                "routes[1].timeout",
                "\"5x\" is not a duration",
                "use a number with ms, s, m, h or d, e.g. \"30s\"",
            ),
            ConfigError::new("", "cannot read gateway.toml: No such file", ""),
        ]);
        assert_eq!(
            errs.to_string(),
            "routes[1].timeout: \"5x\" is not a duration; use a number with ms, s, m, h or d, e.g. \"30s\"\n\
             cannot read gateway.toml: No such file"
        );
        assert_eq!(errs.paths(), vec!["routes[1].timeout", ""]);
        assert_eq!(errs.len(), 2);
    }
}
