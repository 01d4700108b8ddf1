//! `gateway.toml` for Tollgate: reads the file, checks every key, and returns a validated
//! [`Config`] of real types (`SocketAddr`, `Duration`, core `Permission`s and `CostRule`s) that the
//! rest of the gateway uses without re-checking.
//!
//! Every problem in the file is reported at once, each as a [`ConfigError`] naming its TOML path
//! (`routes[2].timeout`, list indices counting from 0), the bad value and the fix; that list is
//! what `tollgate check` prints. To get all of them rather than serde's first, the file is parsed
//! into a `toml::Table` and walked by hand.
//!
//! This crate does no networking and must not depend on hyper or redis: it only describes where
//! things are; the store and proxy crates connect to them.

mod defaults;
mod duration;
mod errors;
pub mod model;
mod raw;
mod routes;
mod sections;
mod warnings;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use defaults::{MAX_REQUEST_CREDITS, REDIS_PREFIX, ROUTE_TIMEOUT, STORE_PATH};
pub use duration::{parse_duration, DurationError};
pub use errors::{ConfigError, ConfigErrors};
pub use model::*;
pub use warnings::warnings;

use raw::{Obj, Report};

/// Parses and validates the text of a `gateway.toml`.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => return Err(ConfigErrors(vec![syntax_error(text, &e)])),
    };
    let mut r = Report::default();
    let root = Obj::root(&table);
    root.deny_unknown(&mut r, sections::TOP_KEYS);
    let proxy = sections::proxy(&mut r, &root);
    let account_api = sections::listener(
        &mut r,
        &root,
        "account_api",
        model::ListenConfig::account_api_default(),
    );
    let ops = sections::listener(&mut r, &root, "ops", model::ListenConfig::ops_default());
    sections::distinct_listeners(
        &mut r,
        &[
            ("proxy.listen", proxy.listen),
            ("account_api.listen", account_api.listen),
            ("ops.listen", ops.listen),
        ],
    );
    let config = Config {
        proxy,
        account_api,
        ops,
        store: sections::store(&mut r, &root),
        cache: sections::cache(&mut r, &root),
        keys: sections::keys(&mut r, &root),
        metering: sections::metering(&mut r, &root),
        metrics: sections::metrics(&mut r, &root),
        limits: sections::limits(&mut r, &root),
        invitations: sections::invitations(&mut r, &root),
        logging: sections::logging(&mut r, &root),
        routes: routes::routes(&mut r, &root),
    };
    if r.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(r.errors))
    }
}

/// Reads and validates a `gateway.toml`; a file that cannot be read is one error with an empty path.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text),
        Err(e) => {
            let fix = match e.kind() {
                std::io::ErrorKind::NotFound => "check the path, or pass --config FILE",
                _ => "",
            };
            Err(ConfigErrors(vec![ConfigError::new(
                "",
                format!("cannot read {}: {e}", path.display()),
                fix,
            )]))
        }
    }
}

/// A TOML syntax error, placed by line and column (both from 1) so an editor can jump to it.
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    match duplicate_key_path(text, e) {
        Some(path) => ConfigError::new(path, syntax_message(text, e), "keep one of the two"),
        None => ConfigError::new("", syntax_message(text, e), ""),
    }
}

fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(
                "TOML syntax error at line {line}, column {column}: {}",
                e.message()
            )
        }
        None => format!("TOML syntax error: {}", e.message()),
    }
}

/// The TOML path of a key given twice in one table (`keys.forward`, `routes[1].credits`), which
/// the parser's "duplicate key" does not name. Only for a plain `key = ...` line under a table
/// header (or none); `None` where that is less certain (inline tables, dotted keys).
fn duplicate_key_path(text: &str, e: &toml::de::Error) -> Option<String> {
    if e.message() != "duplicate key" {
        return None;
    }
    let span = e.span()?;
    let key = text.get(span.clone())?.trim();
    let before = text.get(..span.start)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let bare = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !before[line_start..].trim().is_empty() || !bare(key) {
        return None;
    }
    // The nearest header above, without a trailing comment.
    let headers: Vec<&str> = before[..line_start]
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| l.starts_with('['))
        .collect();
    let Some(header) = headers.last() else {
        return Some(key.to_owned());
    };
    if let Some(name) = header.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
        let name = name.trim();
        if !bare(name) {
            return None;
        }
        let index = headers.iter().filter(|h| *h == header).count() - 1;
        return Some(format!("{name}[{index}].{key}"));
    }
    let name = header.strip_prefix('[')?.strip_suffix(']')?.trim();
    name.split('.').all(bare).then(|| format!("{name}.{key}"))
}
