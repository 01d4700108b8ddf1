//! `[[routes]]`: what each path prefix (and host) is, where it goes, what it costs and who may use it.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::str::FromStr;

use tollgate_core::{CostAction, CostRule, Permission};
use toml::Value;

use crate::defaults::{MAX_REQUEST_CREDITS, ROUTE_TIMEOUT};
use crate::model::{Route, Scheme, Upstream, UpstreamAuth, UpstreamAuthTarget};
use crate::raw::{show, suggest, Obj, Report};
use crate::sections::{is_query_name, is_token};

const ROUTE_KEYS: &[&str] = &[
    "prefix",
    "host",
    "upstream",
    "name",
    "product",
    "pool",
    "credits",
    "cost_rules",
    "timeout",
    "permission",
    "upstream_auth",
];

const ROUTE_EXAMPLE: &str =
    "add one, e.g. [[routes]] with prefix = \"/whoisserver/WhoisService\", \
                             upstream = \"https://www.whoisxmlapi.com\", product = \"whois\"";

pub(crate) fn routes(r: &mut Report, root: &Obj<'_>) -> Vec<Route> {
    let list = match root.get("routes") {
        None => {
            r.missing(
                "routes",
                format!("a gateway needs at least one route: {ROUTE_EXAMPLE}"),
            );
            return Vec::new();
        }
        Some(Value::Array(list)) => list,
        Some(v) => {
            r.push(
                "routes",
                format!("expected an array of tables, found {}", show(v)),
                "write [[routes]] (double brackets) above each route",
            );
            return Vec::new();
        }
    };
    if list.is_empty() {
        r.push(
            "routes",
            "is empty",
            format!("a gateway needs at least one route: {ROUTE_EXAMPLE}"),
        );
        return Vec::new();
    }
    let mut routes = Vec::with_capacity(list.len());
    // (host, prefix) -> index of the first route that claimed it.
    let mut seen: HashMap<(Option<String>, String), usize> = HashMap::new();
    // name -> (index, written as `name`) of the first route with it.
    let mut names: HashMap<String, (usize, bool)> = HashMap::new();
    for (i, v) in list.iter().enumerate() {
        let Some(t) = Obj::element(r, "routes", i, v, "write each route as a [[routes]] table")
        else {
            continue;
        };
        let Some(route) = route(r, &t) else { continue };
        let claim = (route.host.clone(), route.prefix.clone());
        if let Some(first) = seen.get(&claim) {
            let on = match &route.host {
                Some(h) => format!("host {h:?}"),
                None => "any host".to_owned(),
            };
            r.push(
                t.at("prefix"),
                format!("{:?} on {on} is already routes[{first}]", route.prefix),
                "change the prefix or host of one of them, or remove one",
            );
        } else {
            seen.insert(claim, i);
        }
        let named = t.has("name");
        match names.get(&route.name) {
            // Two routes of one product without names share its series, as intended; a name
            // written out must be the only one, or two routes' metrics and log lines merge.
            Some(&(first, first_named)) if named || first_named => {
                let other = if first_named {
                    format!("routes[{first}].name")
                } else {
                    format!("routes[{first}] (its default name, from product or prefix)")
                };
                let at = if named { t.at("name") } else { t.path.clone() };
                r.push(
                    at,
                    format!("route name {:?} is also the name of {other}", route.name),
                    "give each route its own name = \"...\": it is the route label of metrics and \
                     access-log lines, which would merge",
                );
            }
            Some(_) => {}
            None => {
                names.insert(route.name.clone(), (i, named));
            }
        }
        routes.push(route);
    }
    routes
}

/// One route; `None` when a required part is missing or broken (already reported).
fn route(r: &mut Report, t: &Obj<'_>) -> Option<Route> {
    t.deny_unknown(r, ROUTE_KEYS);

    let prefix = match t.string(r, "prefix") {
        None if !t.has("prefix") => {
            r.missing(
                t.at("prefix"),
                "add the path this route serves, e.g. prefix = \"/api\"",
            );
            None
        }
        None => None,
        Some(p) => check_prefix(r, t, p),
    };
    let host = t
        .name(r, "host", "api.example.com")
        .and_then(|h| check_host(r, t, h));
    let upstream = match t.string(r, "upstream") {
        None if !t.has("upstream") => {
            r.missing(
                t.at("upstream"),
                "add the origin requests go to, e.g. upstream = \"https://api.example.com\"",
            );
            None
        }
        None => None,
        Some(u) => match parse_upstream(u) {
            Ok(up) => Some(up),
            Err((message, fix)) => {
                r.push(t.at("upstream"), message, fix);
                None
            }
        },
    };
    let name = t.name(r, "name", "whois-lookup");
    let product = t
        .name(r, "product", "whois")
        .and_then(|p| check_label(r, t, "product", p));
    let pool = t
        .name(r, "pool", "drs")
        .and_then(|p| check_label(r, t, "pool", p));
    if t.has("pool") && !t.has("product") {
        r.push(
            t.at("pool"),
            "set on a route without a product",
            "a pool holds a product's credits: add product = \"...\", or remove pool",
        );
    }
    let credits = t.uint(r, "credits", 0, MAX_REQUEST_CREDITS);
    if credits.is_some_and(|c| c > 0) && !t.has("product") {
        r.push(
            t.at("credits"),
            "set on a route without a product",
            "credits are charged to a product's pool: add product = \"...\", or remove credits",
        );
    }
    let base = credits.unwrap_or(u64::from(t.has("product")));
    let cost_rules = cost_rules(r, t, base);
    // Judged on what was written, not on the rules that survived their own checks.
    let wrote_rules = t
        .get("cost_rules")
        .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()));
    if wrote_rules && !t.has("product") {
        r.push(
            t.at("cost_rules"),
            "set on a route without a product",
            "cost rules change a product's credits: add product = \"...\", or remove cost_rules",
        );
    }
    let timeout = t
        .duration(r, "timeout", std::time::Duration::from_millis(1))
        .unwrap_or(ROUTE_TIMEOUT);
    let permission = t
        .string(r, "permission")
        .and_then(|p| check_permission(r, t, p));
    let upstream_auth = upstream_auth(r, t);
    if !t.has("product") && !t.has("permission") {
        r.push(
            t.path.clone(),
            "has neither product nor permission",
            "add product = \"whois\" for a metered product route, or permission = \"billing.view\" \
             for a route that needs a permission",
        );
    }

    let prefix = prefix?;
    let upstream = upstream?;
    let product = product.map(str::to_owned);
    let pool = pool.map(str::to_owned).or_else(|| product.clone());
    Some(Route {
        name: name
            .map(str::to_owned)
            .or_else(|| product.clone())
            .unwrap_or_else(|| prefix.clone()),
        prefix,
        host,
        upstream,
        credits: credits.unwrap_or(u64::from(product.is_some())),
        product,
        pool,
        cost_rules,
        timeout,
        permission,
        upstream_auth,
    })
}

fn check_prefix(r: &mut Report, t: &Obj<'_>, p: &str) -> Option<String> {
    let fail = |r: &mut Report, message: String, fix: String| {
        r.push(t.at("prefix"), message, fix);
        None
    };
    if !p.starts_with('/') {
        return fail(
            r,
            format!("{p:?} does not start with \"/\""),
            format!("write \"/{p}\""),
        );
    }
    if let Some(at) = p.find(['?', '#']) {
        return fail(
            r,
            format!("{p:?} holds a query or fragment"),
            format!("a prefix matches the path only: write {:?}", &p[..at]),
        );
    }
    if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return fail(
            r,
            format!("{p:?} holds spaces or control characters"),
            "write the path as it appears in the URL, percent-encoded".to_owned(),
        );
    }
    if !tollgate_core::path::can_start_safe_path(p.as_bytes()) {
        return fail(
            r,
            format!(
                "{p:?} can never match: every path starting with it is refused as invalid_request"
            ),
            "the data plane refuses `.` and `..` segments (also percent-encoded), `\\`, `%2f` and \
             `%5c` before routing: write the path an upstream serves, without them"
                .to_owned(),
        );
    }
    Some(p.to_owned())
}

fn check_host(r: &mut Report, t: &Obj<'_>, h: &str) -> Option<String> {
    let host = h.to_ascii_lowercase();
    let (message, fix) = if let Some((_, rest)) = host.split_once("://") {
        let bare = rest.split(['/', ':']).next().unwrap_or(rest);
        (
            format!("{h:?} has a scheme"),
            format!("write only the host name, e.g. {bare:?}"),
        )
    } else if let Some((bare, _)) = host.split_once('/') {
        (
            format!("{h:?} has a path"),
            format!("write only the host name, e.g. {bare:?}"),
        )
    } else if let Some((bare, _)) = host.split_once(':') {
        (
            format!("{h:?} has a port"),
            format!("write {bare:?}: routes match the Host header without its port"),
        )
    } else if host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Some(host);
    } else {
        (
            format!("{h:?} is not a host name"),
            "use letters, digits, '-' and '.', e.g. \"api.example.com\"".to_owned(),
        )
    };
    r.push(t.at("host"), message, fix);
    None
}

/// Products and pools name metric label values and store keys, so keep them plain.
fn check_label<'a>(r: &mut Report, t: &Obj<'_>, key: &str, v: &'a str) -> Option<&'a str> {
    if v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Some(v);
    }
    r.push(
        t.at(key),
        format!("{v:?} holds characters a {key} name may not"),
        "use letters, digits, '-', '_' or '.', e.g. \"reverse-whois\"",
    );
    None
}

fn check_permission(r: &mut Report, t: &Obj<'_>, p: &str) -> Option<Permission> {
    match Permission::from_str(p) {
        Ok(perm) => Some(perm),
        Err(_) => {
            let names: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
            let mut fix = String::new();
            if let Some(near) = suggest(p, &names) {
                fix.push_str(&format!("did you mean {near:?}? "));
            }
            fix.push_str(&format!("use one of {}", names.join(", ")));
            r.push(
                t.at("permission"),
                format!("{p:?} is not a permission"),
                fix,
            );
            None
        }
    }
}

/// `{ query = "name=value", multiply = N }` or `{ query = ..., set = N }`, in order.
/// `base` is the route's credits, which a `multiply` scales.
fn cost_rules(r: &mut Report, t: &Obj<'_>, base: u64) -> Vec<CostRule> {
    let Some(list) = t.array(r, "cost_rules") else {
        return Vec::new();
    };
    let path = t.at("cost_rules");
    let mut rules = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let Some(rule) = Obj::element(
            r,
            &path,
            i,
            v,
            "write each rule as { query = \"name=value\", multiply = N } or { query = ..., set = N }",
        ) else {
            continue;
        };
        rule.deny_unknown(r, &["query", "multiply", "set"]);
        let query = match rule.name(r, "query", "mode=preview") {
            None if !rule.has("query") => {
                r.missing(
                    rule.at("query"),
                    "add the query pair it matches, e.g. query = \"mode=preview\"",
                );
                None
            }
            Some(q) if q.starts_with('?') || q.contains('&') => {
                r.push(
                    rule.at("query"),
                    format!("{q:?} is not one name=value pair"),
                    "a rule matches one pair, without '?' or '&': write one rule per pair",
                );
                None
            }
            q => q,
        };
        let multiply = rule
            .uint(r, "multiply", 0, MAX_REQUEST_CREDITS)
            .and_then(|m| {
                let cost = base.saturating_mul(m);
                if cost <= MAX_REQUEST_CREDITS {
                    return Some(m);
                }
                r.push(
                    rule.at("multiply"),
                    format!(
                        "{m} times the route's {base} credits is {cost}, more than one request \
                         may cost ({MAX_REQUEST_CREDITS})"
                    ),
                    format!("use {} or less", MAX_REQUEST_CREDITS / base.max(1)),
                );
                None
            });
        let set = rule.uint(r, "set", 0, MAX_REQUEST_CREDITS);
        let action = match (rule.has("multiply"), rule.has("set")) {
            (true, true) => {
                r.push(
                    rule.path.clone(),
                    "has both multiply and set",
                    "keep one: multiply scales the route's credits, set replaces them",
                );
                None
            }
            (false, false) => {
                r.push(
                    rule.path.clone(),
                    "has neither multiply nor set",
                    "add multiply = N to scale the route's credits, or set = N to replace them",
                );
                None
            }
            (true, false) => multiply.map(CostAction::Multiply),
            (false, true) => set.map(CostAction::Set),
        };
        if let (Some(query), Some(action)) = (query, action) {
            rules.push(CostRule {
                query: query.to_owned(),
                action,
            });
        }
    }
    rules
}

const AUTH_FIX: &str =
    "write { query = \"apiKey\", env = \"VENDOR_KEY\" } or { header = \"x-api-key\", env = \"VENDOR_KEY\" }";

fn upstream_auth(r: &mut Report, route: &Obj<'_>) -> Option<UpstreamAuth> {
    let t = route.table(r, "upstream_auth")?;
    t.deny_unknown(r, &["query", "header", "env"]);
    let query = t.name(r, "query", "apiKey").and_then(|q| {
        if is_query_name(q) {
            return Some(UpstreamAuthTarget::Query(q.to_owned()));
        }
        r.push(
            t.at("query"),
            format!("{q:?} is not a query parameter name"),
            "use the bare parameter name, e.g. \"apiKey\"",
        );
        None
    });
    let header = t.name(r, "header", "x-api-key").and_then(|h| {
        if is_token(h) {
            return Some(UpstreamAuthTarget::Header(h.to_ascii_lowercase()));
        }
        r.push(
            t.at("header"),
            format!("{h:?} is not a header name"),
            "use letters, digits and '-', e.g. \"x-api-key\"",
        );
        None
    });
    let target = match (t.has("query"), t.has("header")) {
        (true, true) => {
            r.push(
                t.path.clone(),
                "has both query and header",
                format!("keep one: {AUTH_FIX}"),
            );
            None
        }
        (false, false) => {
            r.push(t.path.clone(), "has neither query nor header", AUTH_FIX);
            None
        }
        _ => query.or(header),
    };
    let env = match t.name(r, "env", "VENDOR_KEY") {
        None if !t.has("env") => {
            r.missing(
                t.at("env"),
                "name the environment variable holding the credential, e.g. env = \"VENDOR_KEY\"",
            );
            None
        }
        Some(e) if !is_env_name(e) => {
            r.push(
                t.at("env"),
                format!("{e:?} is not an environment variable name"),
                "use letters, digits and '_', not starting with a digit, e.g. \"VENDOR_KEY\"",
            );
            None
        }
        e => e,
    };
    Some(UpstreamAuth {
        target: target?,
        env: env?.to_owned(),
    })
}

fn is_env_name(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.bytes().next().is_some_and(|b| !b.is_ascii_digit())
}

/// `http://host[:port]` or `https://host[:port]`, with at most a trailing `/`. The error is
/// (message, fix).
pub(crate) fn parse_upstream(u: &str) -> Result<Upstream, (String, String)> {
    let Some((scheme, rest)) = u.split_once("://") else {
        return Err((
            format!("{u:?} has no scheme"),
            format!("write \"https://{u}\" (or http://)"),
        ));
    };
    let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "http" => (Scheme::Http, 80),
        "https" => (Scheme::Https, 443),
        _ => {
            return Err((
                format!("{u:?} is not an http or https URL"),
                format!("write \"https://{rest}\" (or http://)"),
            ))
        }
    };
    let origin = |authority: &str| match scheme {
        Scheme::Http => format!("http://{authority}"),
        Scheme::Https => format!("https://{authority}"),
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if !tail.is_empty() && tail != "/" {
        let fix = if tail.starts_with('/') {
            format!(
                "an upstream is an origin only: write {:?}; the request path goes upstream \
                 unchanged, so {:?} belongs in the route's prefix",
                origin(authority),
                tail.split(['?', '#']).next().unwrap_or(tail),
            )
        } else {
            format!(
                "an upstream is an origin only: write {:?}",
                origin(authority)
            )
        };
        let what = if tail.starts_with('/') {
            "a path"
        } else {
            "a query or fragment"
        };
        return Err((format!("{u:?} has {what} ({tail:?})"), fix));
    }
    if let Some((_, after)) = authority.rsplit_once('@') {
        return Err((
            format!("{:?} holds credentials", origin(&format!("***@{after}"))),
            format!(
                "write {:?} and inject the credential with upstream_auth = {{ header = ..., env = ... }}",
                origin(after)
            ),
        ));
    }
    let bad_port = |p: &str| {
        (
            format!("{p:?} in {u:?} is not a port"),
            "use a number from 1 to 65535, or leave it out for the scheme's default".to_owned(),
        )
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((ip, after)) = v6.split_once(']') else {
            return Err((
                format!("{u:?} has an unclosed '['"),
                "write an IPv6 host as [::1]".into(),
            ));
        };
        if ip.parse::<Ipv6Addr>().is_err() {
            return Err((
                format!("{ip:?} is not an IPv6 address"),
                "write an IPv6 host as [::1]".into(),
            ));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad_port(p))?),
        };
        (ip.to_ascii_lowercase(), port)
    } else {
        match authority.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err((
                    format!("{u:?} has an IPv6 address without brackets"),
                    "write it in brackets, e.g. \"http://[::1]:8080\"".into(),
                ))
            }
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (authority.to_ascii_lowercase(), None),
        }
    };
    let valid_name = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    if host.is_empty() || !valid_name {
        return Err((
            format!("{u:?} has no valid host"),
            "write the upstream's origin, e.g. \"https://api.example.com\"".into(),
        ));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(bad_port(p)),
        },
    };
    let shown_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let authority = if port == default_port {
        shown_host
    } else {
        format!("{shown_host}:{port}")
    };
    Ok(Upstream {
        scheme,
        host,
        port,
        authority,
    })
}

#[cfg(test)]
mod tests;
