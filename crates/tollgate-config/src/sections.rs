//! Every table of `gateway.toml` except `[[routes]]`: each read from its defaults, each problem
//! reported with its path, nothing stopping at the first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tollgate_core::Limit;
use toml::Value;

use crate::defaults::{REDIS_PREFIX, STORE_PATH};
use crate::model::{
    CacheConfig, ChargeOn, InvitationsConfig, KeySource, KeysConfig, LimitsConfig, ListenConfig,
    LogFormat, LoggingConfig, MeteringConfig, MetricsConfig, OnStoreDown, ProxyConfig, StoreConfig,
    TlsConfig,
};
use crate::raw::{index, show, suggest, Obj, Report};

/// The top-level tables, in the order they are checked and reported.
pub(crate) const TOP_KEYS: &[&str] = &[
    "proxy",
    "account_api",
    "ops",
    "store",
    "cache",
    "keys",
    "metering",
    "metrics",
    "limits",
    "invitations",
    "logging",
    "routes",
];

const POSITIVE: Duration = Duration::from_millis(1);

/// RFC 9110 `tchar`: what a header name may be made of.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A query parameter name we can find and strip without decoding: no separators, no spaces.
pub(crate) fn is_query_name(s: &str) -> bool {
    !s.is_empty()
        && !s.chars().any(|c| {
            matches!(c, '&' | '=' | '#' | '?' | '+' | '%') || c.is_whitespace() || c.is_control()
        })
}

/// `listen = "IP:PORT"`.
fn listen(r: &mut Report, t: &Obj<'_>, default: SocketAddr) -> SocketAddr {
    let Some(s) = t.string(r, "listen") else {
        return default;
    };
    match s.parse() {
        Ok(addr) => addr,
        Err(_) => {
            r.push(
                t.at("listen"),
                format!("{s:?} is not an IP address and port"),
                format!(
                    "write an IP and a port, e.g. \"{default}\" (0.0.0.0 for every interface, \
                     127.0.0.1 for this host only, [::] for IPv6)"
                ),
            );
            default
        }
    }
}

pub(crate) fn proxy(r: &mut Report, root: &Obj<'_>) -> ProxyConfig {
    let t = root.section(r, "proxy");
    t.deny_unknown(
        r,
        &[
            "listen",
            "tls",
            "max_header_bytes",
            "workers",
            "upstream_idle_per_host",
            "connect_timeout",
            "drain_timeout",
            "client_body_timeout",
        ],
    );
    let d = ProxyConfig::default();
    ProxyConfig {
        listen: listen(r, &t, d.listen),
        tls: tls(r, &t),
        // hyper refuses (panics) below 8 KiB of read buffer; better a `check` error than a crash.
        max_header_bytes: t
            .uint(r, "max_header_bytes", 8 * 1024, 16 * 1024 * 1024)
            .map_or(d.max_header_bytes, to_usize),
        workers: t.uint(r, "workers", 0, 1024).map_or(d.workers, to_usize),
        upstream_idle_per_host: t
            .uint(r, "upstream_idle_per_host", 0, 1_000_000)
            .map_or(d.upstream_idle_per_host, to_usize),
        connect_timeout: t
            .duration(r, "connect_timeout", POSITIVE)
            .unwrap_or(d.connect_timeout),
        drain_timeout: t
            .duration(r, "drain_timeout", Duration::ZERO)
            .unwrap_or(d.drain_timeout),
        client_body_timeout: t
            .duration(r, "client_body_timeout", POSITIVE)
            .unwrap_or(d.client_body_timeout),
    }
}

/// Values passed through here are at most `u32::MAX` by their `uint` range, so they fit any usize
/// we build for; saturating is only a formality.
fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn tls(r: &mut Report, proxy: &Obj<'_>) -> Option<TlsConfig> {
    let t = proxy.table(r, "tls")?;
    t.deny_unknown(r, &["cert", "key"]);
    let mut file = |key: &str, example: &str| {
        let value = t.name(r, key, example);
        if value.is_none() && !t.has(key) {
            r.missing(
                t.at(key),
                format!(
                    "add {key} = {example:?} (a PEM file); [proxy.tls] needs both cert and key, \
                     or remove it to serve plain HTTP"
                ),
            );
        }
        value.map(PathBuf::from)
    };
    let cert = file("cert", "/etc/tollgate/cert.pem");
    let key = file("key", "/etc/tollgate/key.pem");
    Some(TlsConfig {
        cert: cert?,
        key: key?,
    })
}

pub(crate) fn listener(r: &mut Report, root: &Obj<'_>, key: &str, d: ListenConfig) -> ListenConfig {
    let t = root.section(r, key);
    t.deny_unknown(r, &["listen"]);
    ListenConfig {
        listen: listen(r, &t, d.listen),
    }
}

/// Two listeners on one port cannot both bind; say so now rather than at start-up. Port 0 (pick a
/// free port) never clashes.
pub(crate) fn distinct_listeners(r: &mut Report, listeners: &[(&str, SocketAddr)]) {
    for (i, (path, addr)) in listeners.iter().enumerate() {
        let clash = listeners[..i].iter().find(|(_, other)| {
            addr.port() != 0
                && addr.port() == other.port()
                && (addr.ip() == other.ip()
                    || addr.ip().is_unspecified()
                    || other.ip().is_unspecified())
        });
        if let Some((other_path, other)) = clash {
            r.push(
                *path,
                format!("\"{addr}\" uses the port of {other_path} (\"{other}\")"),
                "give each listener its own port",
            );
        }
    }
}

const REDIS_SCHEMES: &[&str] = &[
    "redis://",
    "rediss://",
    "redis+unix://",
    "unix://",
    "redis+sentinel://",
];

/// Hides a password in a Redis URL before it is quoted in a message.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

fn redis_url(r: &mut Report, path: String, url: &str, cluster_node: bool) -> Option<String> {
    let shown = redact(url);
    let Some(scheme) = REDIS_SCHEMES.iter().find(|s| url.starts_with(**s)) else {
        r.push(
            path,
            format!("{shown:?} is not a Redis URL"),
            "start it with redis://, rediss:// (TLS), redis+unix://, unix:// or redis+sentinel://, \
             e.g. \"redis://127.0.0.1:6379/0\"",
        );
        return None;
    };
    if url.len() == scheme.len() {
        r.push(
            path,
            format!("{shown:?} has no address"),
            "add the server's address, e.g. \"redis://127.0.0.1:6379/0\"",
        );
        return None;
    }
    // Cluster nodes announce and are reached by host:port, so only TCP URLs make sense there.
    if cluster_node && !matches!(*scheme, "redis://" | "rediss://") {
        r.push(
            path,
            format!("{shown:?} cannot be a Redis Cluster node"),
            "cluster nodes are reached over TCP: use redis:// or rediss://, e.g. \"redis://10.0.0.1:7000\"",
        );
        return None;
    }
    Some(url.to_owned())
}

pub(crate) fn store(r: &mut Report, root: &Obj<'_>) -> StoreConfig {
    let t = root.section(r, "store");
    t.deny_unknown(r, &["backend", "path", "url", "cluster", "prefix"]);
    let backend = match t.get("backend") {
        None => "embedded",
        Some(_) => match t.string(r, "backend") {
            Some(b @ ("embedded" | "redis")) => b,
            Some(other) => {
                let mut fix = String::new();
                if let Some(near) = suggest(other, &["embedded", "redis"]) {
                    fix.push_str(&format!("did you mean {near:?}? "));
                }
                fix.push_str("use \"embedded\" (one node, a file) or \"redis\" (many nodes)");
                r.push(
                    t.at("backend"),
                    format!("{other:?} is not a store backend"),
                    fix,
                );
                return StoreConfig::default();
            }
            // Wrong type, reported; the other keys cannot be judged without a backend.
            None => return StoreConfig::default(),
        },
    };
    if backend == "embedded" {
        for key in ["url", "cluster", "prefix"] {
            if t.has(key) {
                r.push(
                    t.at(key),
                    "only used by backend \"redis\"",
                    "remove it, or set backend = \"redis\"",
                );
            }
        }
        let path = t.name(r, "path", STORE_PATH).unwrap_or(STORE_PATH);
        return StoreConfig::Embedded {
            path: PathBuf::from(path),
        };
    }

    if t.has("path") {
        r.push(
            t.at("path"),
            "only used by backend \"embedded\"",
            "remove it; a redis store is reached by url or cluster",
        );
    }
    let url = t
        .string(r, "url")
        .and_then(|u| redis_url(r, t.at("url"), u, false));
    let cluster = match t.array(r, "cluster") {
        None => Vec::new(),
        Some([]) => {
            r.push(
                t.at("cluster"),
                "is empty",
                "list at least one seed node, e.g. cluster = [\"redis://10.0.0.1:7000\"]",
            );
            Vec::new()
        }
        Some(nodes) => {
            let path = t.at("cluster");
            nodes
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    Value::String(s) => redis_url(r, index(&path, i), s, true),
                    v => {
                        r.push(
                            index(&path, i),
                            format!("expected a string, found {}", show(v)),
                            "write each node as a quoted URL, e.g. \"redis://10.0.0.1:7000\"",
                        );
                        None
                    }
                })
                .collect()
        }
    };
    match (t.has("url"), t.has("cluster")) {
        (true, true) => r.push(
            t.at("cluster"),
            "given together with store.url",
            "keep one: url for a single server, cluster for a Redis Cluster",
        ),
        (false, false) => r.push(
            t.path.clone(),
            "backend \"redis\" needs url or cluster",
            "add url = \"redis://127.0.0.1:6379/0\" for one server, or \
             cluster = [\"redis://10.0.0.1:7000\", ...] for a Redis Cluster",
        ),
        _ => {}
    }
    let prefix = match t.name(r, "prefix", REDIS_PREFIX) {
        // Tollgate wraps its keys in {hash tags} for Redis Cluster; braces here would break them.
        Some(p)
            if !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":_.-".contains(&b)) =>
        {
            r.push(
                t.at("prefix"),
                format!("{p:?} has characters a Redis key prefix may not hold here"),
                "use letters, digits, ':', '_', '.' or '-', e.g. \"tg\"",
            );
            REDIS_PREFIX
        }
        Some(p) => p,
        None => REDIS_PREFIX,
    };
    StoreConfig::Redis {
        url,
        cluster,
        prefix: prefix.to_owned(),
    }
}

pub(crate) fn cache(r: &mut Report, root: &Obj<'_>) -> CacheConfig {
    let t = root.section(r, "cache");
    t.deny_unknown(r, &["max_staleness", "negative_ttl", "on_store_down"]);
    let d = CacheConfig::default();
    let on_store_down = match t.string(r, "on_store_down") {
        None => d.on_store_down,
        Some("serve_cached") => OnStoreDown::ServeCached,
        Some("fail_closed") => OnStoreDown::FailClosed,
        Some(other) => {
            r.push(
                t.at("on_store_down"),
                format!("{other:?} is not a choice here"),
                "use \"serve_cached\" (keep judging cached keys) or \"fail_closed\" (refuse once \
                 older than max_staleness)",
            );
            d.on_store_down
        }
    };
    CacheConfig {
        max_staleness: t
            .duration(r, "max_staleness", POSITIVE)
            .unwrap_or(d.max_staleness),
        // Zero is allowed: it turns negative caching off.
        negative_ttl: t
            .duration(r, "negative_ttl", Duration::ZERO)
            .unwrap_or(d.negative_ttl),
        on_store_down,
    }
}

const SOURCES_FIX: &str =
    "use \"header:NAME\", \"bearer\", \"query:NAME\" or \"json:NAME\", e.g. \"header:x-api-key\"";

/// One entry of `[keys] sources`; the error is (message, fix).
pub(crate) fn key_source(s: &str) -> Result<KeySource, (String, String)> {
    if s == "bearer" {
        return Ok(KeySource::Bearer);
    }
    let Some((kind, name)) = s.split_once(':') else {
        return Err((format!("{s:?} is not a key source"), SOURCES_FIX.to_owned()));
    };
    if name.is_empty() {
        return Err((
            format!("{s:?} names no {kind}"),
            format!("write the name after the colon, e.g. \"{kind}:apiKey\""),
        ));
    }
    match kind {
        "header" if is_token(name) => Ok(KeySource::Header(name.to_ascii_lowercase())),
        "header" => Err((
            format!("{name:?} is not a header name"),
            "use letters, digits and '-', e.g. \"header:x-api-key\"".to_owned(),
        )),
        "query" if is_query_name(name) => Ok(KeySource::Query(name.to_owned())),
        "query" => Err((
            format!("{name:?} is not a query parameter name"),
            "use the bare parameter name, e.g. \"query:apiKey\"".to_owned(),
        )),
        "json" => Ok(KeySource::Json(name.to_owned())),
        _ => Err((format!("{s:?} is not a key source"), SOURCES_FIX.to_owned())),
    }
}

pub(crate) fn keys(r: &mut Report, root: &Obj<'_>) -> KeysConfig {
    let t = root.section(r, "keys");
    t.deny_unknown(r, &["sources", "forward"]);
    let d = KeysConfig::default();
    let sources = match t.array(r, "sources") {
        None => d.sources,
        Some([]) => {
            r.push(
                t.at("sources"),
                "is empty, so no request could carry a key",
                "list at least one source, e.g. sources = [\"header:x-api-key\"]",
            );
            d.sources
        }
        Some(list) => {
            let path = t.at("sources");
            let mut sources: Vec<KeySource> = Vec::with_capacity(list.len());
            for (i, v) in list.iter().enumerate() {
                let Value::String(s) = v else {
                    r.push(
                        index(&path, i),
                        format!("expected a string, found {}", show(v)),
                        SOURCES_FIX,
                    );
                    continue;
                };
                match key_source(s) {
                    Ok(source) if sources.contains(&source) => {
                        r.push(
                            index(&path, i),
                            format!("{s:?} is listed twice"),
                            "remove one",
                        );
                    }
                    Ok(source) => sources.push(source),
                    Err((message, fix)) => r.push(index(&path, i), message, fix),
                }
            }
            sources
        }
    };
    KeysConfig {
        sources,
        forward: t.boolean(r, "forward").unwrap_or(d.forward),
    }
}

pub(crate) fn metering(r: &mut Report, root: &Obj<'_>) -> MeteringConfig {
    let t = root.section(r, "metering");
    t.deny_unknown(r, &["flush_interval", "charge_on", "max_unflushed_credits"]);
    let d = MeteringConfig::default();
    let charge_on = match t.string(r, "charge_on") {
        None => d.charge_on,
        Some("2xx") => ChargeOn::Success,
        Some("always") => ChargeOn::Always,
        Some(other) => {
            r.push(
                t.at("charge_on"),
                format!("{other:?} is not a choice here"),
                "use \"2xx\" (charge successful responses) or \"always\"",
            );
            d.charge_on
        }
    };
    MeteringConfig {
        // Below 10ms the flusher would cost more store round trips than it saves.
        flush_interval: t
            .duration(r, "flush_interval", Duration::from_millis(10))
            .unwrap_or(d.flush_interval),
        charge_on,
        max_unflushed_credits: t
            .uint(r, "max_unflushed_credits", 1, u64::MAX)
            .unwrap_or(d.max_unflushed_credits),
    }
}

pub(crate) fn metrics(r: &mut Report, root: &Obj<'_>) -> MetricsConfig {
    let t = root.section(r, "metrics");
    t.deny_unknown(r, &["per_key", "max_key_series"]);
    let d = MetricsConfig::default();
    MetricsConfig {
        per_key: t.boolean(r, "per_key").unwrap_or(d.per_key),
        max_key_series: t
            .uint(r, "max_key_series", 0, u64::from(u32::MAX))
            .map_or(d.max_key_series, to_usize),
    }
}

fn limit(r: &mut Report, limits: &Obj<'_>, key: &str, d: Limit) -> Limit {
    let Some(t) = limits.table(r, key) else {
        return d;
    };
    t.deny_unknown(r, &["rps", "burst"]);
    let mut field = |name: &str, default: u32| {
        t.uint(r, name, 1, u64::from(u32::MAX))
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(default)
    };
    Limit {
        rps: field("rps", d.rps),
        burst: field("burst", d.burst),
    }
}

pub(crate) fn limits(r: &mut Report, root: &Obj<'_>) -> LimitsConfig {
    let t = root.section(r, "limits");
    t.deny_unknown(r, &["parent", "child"]);
    let d = LimitsConfig::default();
    LimitsConfig {
        parent: limit(r, &t, "parent", d.parent),
        child: limit(r, &t, "child", d.child),
    }
}

pub(crate) fn invitations(r: &mut Report, root: &Obj<'_>) -> InvitationsConfig {
    let t = root.section(r, "invitations");
    t.deny_unknown(r, &["ttl"]);
    let d = InvitationsConfig::default();
    InvitationsConfig {
        ttl: t.duration(r, "ttl", POSITIVE).unwrap_or(d.ttl),
    }
}

pub(crate) fn logging(r: &mut Report, root: &Obj<'_>) -> LoggingConfig {
    let t = root.section(r, "logging");
    t.deny_unknown(r, &["format", "access_sample", "refusals_per_second"]);
    let d = LoggingConfig::default();
    let format = match t.string(r, "format") {
        None => d.format,
        Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            let mut fix = String::new();
            if let Some(near) = suggest(other, &["text", "json"]) {
                fix.push_str(&format!("did you mean {near:?}? "));
            }
            fix.push_str(
                "use \"text\" (for people) or \"json\" (one object a line, for log shippers)",
            );
            r.push(
                t.at("format"),
                format!("{other:?} is not a log format"),
                fix,
            );
            d.format
        }
    };
    LoggingConfig {
        format,
        access_sample: t.fraction(r, "access_sample").unwrap_or(d.access_sample),
        refusals_per_second: t
            .uint(r, "refusals_per_second", 0, 1_000_000)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(d.refusals_per_second),
    }
}

#[cfg(test)]
mod tests;
