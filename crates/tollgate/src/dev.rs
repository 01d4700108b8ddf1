//! `tollgate dev`: a gateway a newcomer can curl offline. Embedded store in a temp dir, a built-in
//! echo upstream behind every route, and a demo parent (team on, every pool subscribed) with one
//! accepted child, whose keys are printed with a ready-to-paste curl line.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tollgate_config::{Config, Scheme, StoreConfig, Upstream};
use tollgate_core::{
    generate_id, generate_key, generate_token, Account, LimitOverrides, Overage, Role, Status,
    Subscription,
};
use tollgate_store::{EmbeddedStore, NewInvitation, NewParent, Store};

use crate::run::{runtime, Gateway, Ports};

/// The demo's routes: the shipped config's products, with listeners on loopback.
const DEV_TOML: &str = r#"
[proxy]
listen = "127.0.0.1:8080"
[account_api]
listen = "127.0.0.1:8081"
[ops]
listen = "127.0.0.1:9190"

[[routes]]
prefix = "/whoisserver/WhoisService"
upstream = "http://echo.invalid"
product = "whois"
credits = 1
cost_rules = [{ query = "_hardRefresh=1", multiply = 5 }]

[[routes]]
prefix = "/whoisserver/DNSService"
upstream = "http://echo.invalid"
product = "dns-lookup"
credits = 1

[[routes]]
prefix = "/api/v2"
upstream = "http://echo.invalid"
product = "reverse-whois"
pool = "drs"
credits = 1
cost_rules = [{ query = "mode=preview", set = 0 }, { query = "mode=purchase", set = 10 }]

[[routes]]
prefix = "/billing"
upstream = "http://echo.invalid"
permission = "billing.view"
"#;

pub fn dev(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let mut config: Config = match &config_path {
        Some(p) => {
            tollgate_config::load(p).map_err(|e| anyhow::anyhow!("{}:\n{e}", p.display()))?
        }
        None => tollgate_config::parse(DEV_TOML)
            .map_err(|e| anyhow::anyhow!("built-in dev config:\n{e}"))?,
    };
    let dir = tempfile::Builder::new().prefix("tollgate-dev-").tempdir()?;
    config.store = StoreConfig::Embedded {
        path: dir.path().join("tollgate.db"),
    };
    if std::env::var_os("TOLLGATE_OPERATOR_TOKEN").is_none() {
        let token = generate_id(&mut rand::rng(), "op_");
        // Safe: nothing else runs yet (no runtime, no threads).
        std::env::set_var("TOLLGATE_OPERATOR_TOKEN", &token);
    }
    runtime()?.block_on(async move {
        let echo = start_echo().await?;
        for r in &mut config.routes {
            r.upstream = Upstream {
                scheme: Scheme::Http,
                host: echo.ip().to_string(),
                port: echo.port(),
                authority: echo.to_string(),
            };
            r.upstream_auth = None;
        }
        let path = match &config.store {
            StoreConfig::Embedded { path } => path.clone(),
            StoreConfig::Redis { .. } => unreachable!("set above"),
        };
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path)?);
        let pools: Vec<String> = {
            let mut p: Vec<String> = config.routes.iter().filter_map(|r| r.pool.clone()).collect();
            p.sort();
            p.dedup();
            p
        };
        let (parent_key, child_key, parent_id, child_id) = demo_accounts(&*store, &pools).await?;
        // A reload would send the routes to their real upstreams instead of the echo, so dev
        // re-reads nothing, and says so instead of claiming it had no file.
        let why = match &config_path {
            Some(p) => format!(
                "tollgate dev does not reload {} (its routes go to the built-in echo upstream); \
                 restart tollgate dev to apply changes, or use tollgate run to reload on SIGHUP",
                p.display()
            ),
            None => "tollgate dev runs its built-in demo config; nothing to reload".to_owned(),
        };
        let gateway = Gateway::start(config.clone(), store, Ports::Own)
            .await?
            .without_reload(why);
        let route = config
            .routes
            .iter()
            .find(|r| r.product.is_some())
            .map(|r| r.prefix.clone())
            .unwrap_or_else(|| "/".into());
        let token = std::env::var("TOLLGATE_OPERATOR_TOKEN").unwrap_or_default();
        // Not println!: a closed stdout (`tollgate dev | head`) must not end the gateway.
        crate::stdout(format_args!(
            "\nTollgate dev is running (embedded store in {dir}, echo upstream on {echo}).\n\n\
             proxy        http://{p}\n\
             account API  http://{a}\n\
             ops          http://{o}   (operator token: {token})\n\n\
             demo parent  {parent_id}  key {parent_key}\n\
             demo child   {child_id}  key {child_key}\n\n\
             Try:\n  curl -s 'http://{p}{route}?domainName=example.com' -H 'x-api-key: {child_key}'\n\
             \x20 curl -s 'http://{a}/v1/me' -H 'x-api-key: {child_key}'\n\
             \x20 curl -s 'http://{a}/v1/team/members' -H 'x-api-key: {parent_key}'\n",
            dir = dir.path().display(),
            p = gateway.proxy_addr,
            a = gateway.account_addr,
            o = gateway.ops_addr,
        ));
        gateway.run_until_signal().await
    })
}

async fn demo_accounts(
    store: &dyn Store,
    pools: &[String],
) -> anyhow::Result<(String, String, String, String)> {
    let mut rng = rand::rng();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let parent_key = generate_key(&mut rng);
    let parent = store
        .create_parent(NewParent {
            account: Account {
                id: generate_id(&mut rng, "acc_"),
                role: Role::Parent,
                status: Status::Active,
                email: "admin@demo.example".into(),
                parent_id: None,
                team: true,
                limits: LimitOverrides::default(),
                created_at: now,
            },
            key_hash: parent_key.hash(),
            subscriptions: pools
                .iter()
                .map(|p| Subscription {
                    pool: p.clone(),
                    credits: 1_000_000,
                    overage: Overage::Allow,
                })
                .collect(),
        })
        .await
        .context("creating the demo parent")?;
    let token = generate_token(&mut rng);
    let child = store
        .invite(NewInvitation {
            child: Account {
                id: generate_id(&mut rng, "acc_"),
                role: Role::Child,
                status: Status::Invited,
                email: "member@demo.example".into(),
                parent_id: Some(parent.id.clone()),
                team: false,
                limits: LimitOverrides::default(),
                created_at: now,
            },
            token_hash: token.hash(),
            expires_at: now + 3600,
        })
        .await
        .context("inviting the demo child")?;
    let child_key = generate_key(&mut rng);
    store
        .accept_invitation(&token.hash(), child_key.hash(), now)
        .await
        .context("accepting the demo invitation")?;
    Ok((
        parent_key.expose().to_owned(),
        child_key.expose().to_owned(),
        parent.id,
        child.id,
    ))
}

/// An upstream that answers every request with what it received (method, path, query, headers,
/// body size) as JSON: shows exactly what Tollgate forwards.
async fn start_echo() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the echo upstream")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    let headers: serde_json::Map<String, serde_json::Value> = parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                        .collect();
                    let echo = serde_json::json!({
                        "echo": true,
                        "method": parts.method.as_str(),
                        "path": parts.uri.path(),
                        "query": parts.uri.query(),
                        "headers": headers,
                        "body_bytes": body.len(),
                    });
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(echo.to_string())));
                    resp.headers_mut().insert(
                        "content-type",
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
