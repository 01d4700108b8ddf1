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
    let message = match e.span() {
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
    };
    ConfigError::new("", message, "")
}
