//! Walking the parsed TOML tree by hand, so that every wrong key, type and value in the file is
//! reported in one pass with its path (serde stops at the first).

use std::time::Duration;

use toml::{Table, Value};

use crate::duration::{parse_duration, DurationError};
use crate::errors::ConfigError;

/// The problems found so far.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) errors: Vec<ConfigError>,
}

impl Report {
    pub(crate) fn push(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.errors.push(ConfigError::new(path, message, fix));
    }

    /// A required key is absent.
    pub(crate) fn missing(&mut self, path: impl Into<String>, fix: impl Into<String>) {
        self.push(path, "missing", fix);
    }
}

/// `parent.key`, quoting a key that is not a bare TOML key so the path reads back as TOML.
pub(crate) fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[i]`.
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// A value as the message should quote it: strings quoted, containers by kind only.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(i) => format!("integer {i}"),
        Value::Float(f) => format!("float {f}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("datetime {d}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

/// Edit distance counting a swap of two neighbours as one edit (optimal string alignment), since
/// `rsp` for `rps` is the typo people make. Inputs are key names, so quadratic is fine.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The closest of `candidates` to `got`, if close enough to be a likely typo: one edit for short
/// names (so `url` does not suggest `ttl`), two for longer ones, a third of the name beyond that.
pub(crate) fn suggest<'c>(got: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let lower = got.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&lower, c), *c))
        .filter(|(d, c)| {
            *d <= match c.len() {
                0..=4 => 1,
                5..=8 => 2,
                n => n / 3,
            }
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// A TOML table (or an absent one, read as empty) and where it sits in the file.
#[derive(Debug, Clone)]
pub(crate) struct Obj<'a> {
    pub(crate) path: String,
    table: Option<&'a Table>,
}

impl<'a> Obj<'a> {
    pub(crate) fn root(table: &'a Table) -> Self {
        Obj {
            path: String::new(),
            table: Some(table),
        }
    }

    pub(crate) fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.table.and_then(|t| t.get(key))
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Reports every key not in `known`, with the nearest known key when one is close.
    pub(crate) fn deny_unknown(&self, r: &mut Report, known: &[&str]) {
        let Some(table) = self.table else { return };
        // Sorted so the report does not depend on the map's iteration order.
        let mut unknown: Vec<&String> = table
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .collect();
        unknown.sort();
        for key in unknown {
            let fix = match suggest(key, known) {
                Some(near) => format!("did you mean {near:?}?"),
                None => format!("remove it; the keys here are {}", known.join(", ")),
            };
            r.push(self.at(key), "unknown key", fix);
        }
    }

    fn wrong_type(&self, r: &mut Report, key: &str, v: &Value, expected: &str, fix: &str) {
        r.push(
            self.at(key),
            format!("expected {expected}, found {}", show(v)),
            fix,
        );
    }

    pub(crate) fn string(&self, r: &mut Report, key: &str) -> Option<&'a str> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            v => {
                self.wrong_type(r, key, v, "a string", "put the value in double quotes");
                None
            }
        }
    }

    /// A string that must not be empty.
    pub(crate) fn name(&self, r: &mut Report, key: &str, example: &str) -> Option<&'a str> {
        let s = self.string(r, key)?;
        if s.trim().is_empty() {
            r.push(
                self.at(key),
                "is empty",
                format!("give a value, e.g. {key} = {example:?}, or remove the key"),
            );
            return None;
        }
        Some(s)
    }

    pub(crate) fn boolean(&self, r: &mut Report, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Boolean(b) => Some(*b),
            v => {
                self.wrong_type(
                    r,
                    key,
                    v,
                    "a boolean",
                    "write true or false, without quotes",
                );
                None
            }
        }
    }

    /// A whole number in `min..=max`.
    pub(crate) fn uint(&self, r: &mut Report, key: &str, min: u64, max: u64) -> Option<u64> {
        let v = self.get(key)?;
        let Value::Integer(i) = v else {
            self.wrong_type(
                r,
                key,
                v,
                "a whole number",
                "write a whole number, without quotes",
            );
            return None;
        };
        match u64::try_from(*i) {
            Ok(n) if n < min => {
                r.push(
                    self.at(key),
                    format!("{n} is too small"),
                    format!("use {min} or more"),
                );
                None
            }
            Ok(n) if n > max => {
                r.push(
                    self.at(key),
                    format!("{n} is too large"),
                    format!("use {max} or less"),
                );
                None
            }
            Ok(n) => Some(n),
            Err(_) => {
                r.push(
                    self.at(key),
                    format!("{i} is negative"),
                    format!("use {min} or more"),
                );
                None
            }
        }
    }

    /// A number in `0..=1` (`0`, `1`, `0.25`, `1e-3`): a share of something.
    pub(crate) fn fraction(&self, r: &mut Report, key: &str) -> Option<f64> {
        let v = self.get(key)?;
        let f = match v {
            Value::Float(f) => *f,
            // `1` and `0` are integers in TOML; they are the obvious way to say all and none.
            Value::Integer(i) => *i as f64,
            v => {
                self.wrong_type(
                    r,
                    key,
                    v,
                    "a number",
                    "write a number from 0 to 1, without quotes, e.g. 0.01",
                );
                return None;
            }
        };
        if (0.0..=1.0).contains(&f) {
            Some(f)
        } else {
            r.push(
                self.at(key),
                format!("{f} is not between 0 and 1"),
                "write a share from 0 (none) to 1 (all), e.g. 0.01 for one in a hundred",
            );
            None
        }
    }

    /// A duration string no shorter than `min`.
    pub(crate) fn duration(&self, r: &mut Report, key: &str, min: Duration) -> Option<Duration> {
        let v = self.get(key)?;
        let Value::String(s) = v else {
            self.wrong_type(
                r,
                key,
                v,
                "a duration string",
                "write a quoted number with ms, s, m, h or d, e.g. \"30s\"",
            );
            return None;
        };
        match parse_duration(s) {
            Ok(d) if d < min => {
                r.push(
                    self.at(key),
                    format!("{s:?} is too short"),
                    format!("use at least {:?}", show_duration(min)),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                let message = match e {
                    DurationError::Negative => format!("{s:?} is not a duration: it is negative"),
                    DurationError::Overflow => format!("{s:?} is too long a duration"),
                    _ => format!("{s:?} is not a duration"),
                };
                r.push(self.at(key), message, e.fix());
                None
            }
        }
    }

    /// A sub-table (`[a.b]` or `b = { ... }`); `None` when absent or not a table (reported).
    pub(crate) fn table(&self, r: &mut Report, key: &str) -> Option<Obj<'a>> {
        match self.get(key)? {
            Value::Table(t) => Some(Obj {
                path: self.at(key),
                table: Some(t),
            }),
            v => {
                self.wrong_type(r, key, v, "a table", table_fix(&self.at(key), key).as_str());
                None
            }
        }
    }

    /// Like [`Obj::table`], but an absent or broken section reads as empty, so its defaults apply
    /// and the rest of the file is still checked.
    pub(crate) fn section(&self, r: &mut Report, key: &str) -> Obj<'a> {
        self.table(r, key).unwrap_or(Obj {
            path: self.at(key),
            table: None,
        })
    }

    pub(crate) fn array(&self, r: &mut Report, key: &str) -> Option<&'a [Value]> {
        match self.get(key)? {
            Value::Array(a) => Some(a),
            v => {
                self.wrong_type(
                    r,
                    key,
                    v,
                    "an array",
                    "write a list in square brackets, e.g. [\"a\", \"b\"]",
                );
                None
            }
        }
    }

    /// The `i`th element of an array found at `key`, as a table.
    pub(crate) fn element(
        r: &mut Report,
        array_path: &str,
        i: usize,
        v: &'a Value,
        fix: &str,
    ) -> Option<Obj<'a>> {
        let path = index(array_path, i);
        match v {
            Value::Table(t) => Some(Obj {
                path,
                table: Some(t),
            }),
            v => {
                r.push(path, format!("expected a table, found {}", show(v)), fix);
                None
            }
        }
    }
}

/// A duration as the file would write it, for messages.
pub(crate) fn show_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// How to write the table at `path` (its last key `key`). Inside an array of tables `[a[1].b]` is
/// not TOML: the header there is `[a.b]`, below that entry's `[[a]]` line.
fn table_fix(path: &str, key: &str) -> String {
    let Some(last) = path.rfind('[') else {
        return format!("write [{path}] on its own line, or {key} = {{ ... }}");
    };
    let plain = |p: &str| {
        let mut out = String::with_capacity(p.len());
        let mut in_index = false;
        for c in p.chars() {
            match c {
                '[' => in_index = true,
                ']' => in_index = false,
                c if !in_index => out.push(c),
                _ => {}
            }
        }
        out
    };
    format!(
        "write {key} = {{ ... }} in that entry, or [{}] on its own line below its [[{}]] line",
        plain(path),
        plain(&path[..last])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_as_toml() {
        assert_eq!(join("", "cache"), "cache");
        assert_eq!(join("cache", "max_staleness"), "cache.max_staleness");
        assert_eq!(join("routes[0]", "a b"), "routes[0].\"a b\"");
        assert_eq!(join("x", ""), "x.\"\"");
        assert_eq!(index("routes", 2), "routes[2]");
    }

    #[test]
    fn distance_and_suggestion() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("max_stalenes", "max_staleness"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("rsp", "rps"), 1);
        assert_eq!(edit_distance("abc", ""), 3);
        let known = ["max_staleness", "negative_ttl", "on_store_down"];
        assert_eq!(suggest("max_stalenes", &known), Some("max_staleness"));
        assert_eq!(suggest("Negative_TTL", &known), Some("negative_ttl"));
        assert_eq!(suggest("colour", &known), None);
        assert_eq!(suggest("rsp", &["rps", "burst"]), Some("rps"));
        assert_eq!(suggest("url", &["ttl"]), None);
    }

    #[test]
    fn durations_shown_as_written() {
        assert_eq!(show_duration(Duration::from_millis(10)), "10ms");
        assert_eq!(show_duration(Duration::from_secs(30)), "30s");
    }
}
