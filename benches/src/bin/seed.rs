//! `seed`: writes a load-test key tree straight into a store (no HTTP), for `benches/load/run.sh`.
//!
//! The tree is generated once in memory (ids, keys, invitation tokens), then written to every
//! store named on the command line, so one set of key files serves the embedded and the Redis
//! store alike. Each account goes through the same `Store` calls the APIs use: `create_parent`,
//! then `invite` + `accept_invitation` per child, then `set_status(Disabled)` for the children
//! picked for the refusal runs.
//!
//! ```text
//! seed --embedded out/seed/tollgate.db --redis redis://127.0.0.1:6379/0 --out out/seed \
//!      --parents 10000 --children-per-parent 10 --active 1000 --disabled 200 --unknown 1000
//! ```
//!
//! Writes to `--out`: `keys.txt` (active children's keys, one a line, spread evenly over the
//! tree), `disabled.txt` (disabled children's keys), `unknown.txt` (well-formed keys no account
//! has) and `seed.json` (what was written and how long it took).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use tollgate_core::{
    generate_id, generate_key, generate_token, Account, ApiKey, LimitOverrides, Overage, Role,
    Status, Subscription,
};
use tollgate_store::embedded::EmbeddedOptions;
use tollgate_store::{EmbeddedStore, NewInvitation, NewParent, RedisStore, Store};

#[derive(Parser, Debug)]
#[command(about = "Seed a Tollgate store with a load-test key tree")]
struct Args {
    /// Embedded store file to create (must not exist yet, or be empty).
    #[arg(long)]
    embedded: Option<PathBuf>,
    /// Redis URL (one server) to write to.
    #[arg(long)]
    redis: Option<String>,
    /// Key prefix in Redis (`[store] prefix`).
    #[arg(long, default_value = "tg")]
    prefix: String,
    /// Directory for keys.txt, disabled.txt, unknown.txt and seed.json.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    parents: usize,
    #[arg(long, default_value_t = 10)]
    children_per_parent: usize,
    /// Active children's keys written to keys.txt (spread evenly over the tree).
    #[arg(long, default_value_t = 1_000)]
    active: usize,
    /// Children disabled and written to disabled.txt (disjoint from the active ones).
    #[arg(long, default_value_t = 200)]
    disabled: usize,
    /// Well-formed keys that belong to no account, written to unknown.txt.
    #[arg(long, default_value_t = 1_000)]
    unknown: usize,
    /// Store operations in flight at once (Redis; the embedded store serializes writes anyway).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Embedded store only: commit without fsync while seeding, then make everything durable with
    /// one final durable commit (much faster; a crash mid-seed leaves a store to throw away).
    #[arg(long)]
    bulk: bool,
}

struct Child {
    id: String,
    token: ApiKey,
    key: ApiKey,
    disabled: bool,
}

struct Tenant {
    id: String,
    key: ApiKey,
    children: Vec<Child>,
}

/// The whole tree, generated up front so every store gets the same one.
struct Tree {
    tenants: Vec<Tenant>,
    active: Vec<String>,
    disabled: Vec<String>,
    unknown: Vec<String>,
}

fn generate(a: &Args) -> anyhow::Result<Tree> {
    let total = a.parents * a.children_per_parent;
    if total == 0 || a.active == 0 {
        bail!("need at least one parent, one child per parent and one active key");
    }
    // Active child k is child k*stride; disabled child k is k*stride + stride/2 (never an active one).
    let stride = total / a.active;
    if stride < 2 || a.disabled > a.active {
        bail!(
            "{total} children cannot hold {} active and {} disabled keys spread over the tree \
             (need children >= 2 * active and disabled <= active)",
            a.active,
            a.disabled
        );
    }
    let mut rng = rand::rng();
    let mut active = Vec::with_capacity(a.active);
    let mut disabled = Vec::with_capacity(a.disabled);
    let mut tenants = Vec::with_capacity(a.parents);
    for p in 0..a.parents {
        let mut children = Vec::with_capacity(a.children_per_parent);
        for j in 0..a.children_per_parent {
            let c = p * a.children_per_parent + j;
            let key = generate_key(&mut rng);
            let (slot, offset) = (c / stride, c % stride);
            let is_disabled = offset == stride / 2 && slot < a.disabled;
            if offset == 0 && slot < a.active {
                active.push(key.expose().to_owned());
            }
            if is_disabled {
                disabled.push(key.expose().to_owned());
            }
            children.push(Child {
                id: generate_id(&mut rng, "acc_"),
                token: generate_token(&mut rng),
                key,
                disabled: is_disabled,
            });
        }
        tenants.push(Tenant {
            id: generate_id(&mut rng, "acc_"),
            key: generate_key(&mut rng),
            children,
        });
    }
    let unknown = (0..a.unknown)
        .map(|_| generate_key(&mut rng).expose().to_owned())
        .collect();
    Ok(Tree {
        tenants,
        active,
        disabled,
        unknown,
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn seed_tenant(store: &dyn Store, p: usize, t: &Tenant) -> anyhow::Result<()> {
    let now = now();
    store
        .create_parent(NewParent {
            account: Account {
                id: t.id.clone(),
                role: Role::Parent,
                status: Status::Active,
                email: format!("admin-{p}@tenant{p}.bench.example"),
                parent_id: None,
                team: true,
                limits: LimitOverrides::default(),
                created_at: now,
            },
            key_hash: t.key.hash(),
            subscriptions: vec![Subscription {
                pool: "whois".into(),
                credits: 1_000_000_000_000,
                overage: Overage::Allow,
            }],
        })
        .await
        .with_context(|| format!("creating parent {p}"))?;
    for (j, c) in t.children.iter().enumerate() {
        store
            .invite(NewInvitation {
                child: Account {
                    id: c.id.clone(),
                    role: Role::Child,
                    status: Status::Invited,
                    email: format!("member-{j}@tenant{p}.bench.example"),
                    parent_id: Some(t.id.clone()),
                    team: false,
                    limits: LimitOverrides::default(),
                    created_at: now,
                },
                token_hash: c.token.hash(),
                expires_at: now + 86_400,
            })
            .await
            .with_context(|| format!("inviting child {j} of parent {p}"))?;
        store
            .accept_invitation(&c.token.hash(), c.key.hash(), now)
            .await
            .with_context(|| format!("accepting child {j} of parent {p}"))?;
        if c.disabled {
            store
                .set_status(&c.id, Status::Disabled)
                .await
                .with_context(|| format!("disabling child {j} of parent {p}"))?;
        }
    }
    Ok(())
}

/// Writes the tree with `concurrency` workers taking tenants in order; returns seconds taken.
async fn seed_store(
    name: &str,
    store: Arc<dyn Store>,
    tree: Arc<Tree>,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let n = tree.tenants.len();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (store, tree, next, done) = (store.clone(), tree.clone(), next.clone(), done.clone());
        let name = name.to_owned();
        workers.spawn(async move {
            loop {
                let p = next.fetch_add(1, Ordering::Relaxed);
                let Some(t) = tree.tenants.get(p) else {
                    return anyhow::Ok(());
                };
                seed_tenant(store.as_ref(), p, t).await?;
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d % 1000 == 0 || d == n {
                    eprintln!(
                        "seed: {name}: {d}/{n} parents ({:.1}s)",
                        start.elapsed().as_secs_f64()
                    );
                }
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.context("seeding worker panicked")??;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn write_lines(path: PathBuf, lines: &[String]) -> anyhow::Result<()> {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(&path, s).with_context(|| format!("writing {}", path.display()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.embedded.is_none() && args.redis.is_none() {
        bail!("name at least one store: --embedded PATH and/or --redis URL");
    }
    let gen_start = Instant::now();
    let tree = Arc::new(generate(&args)?);
    eprintln!(
        "seed: generated {} parents, {} children in {:.1}s",
        args.parents,
        args.parents * args.children_per_parent,
        gen_start.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut timings = Vec::new();
    rt.block_on(async {
        if let Some(path) = &args.embedded {
            let options = EmbeddedOptions {
                bulk_load: args.bulk,
                ..EmbeddedOptions::default()
            };
            let store = EmbeddedStore::open_with(path, options)
                .with_context(|| format!("opening {}", path.display()))?;
            // redb serializes write transactions: more than a couple of workers only queue.
            let secs = seed_store("embedded", Arc::new(store.clone()), tree.clone(), 2).await?;
            if args.bulk {
                store.make_durable().await.context("final durable commit")?;
            }
            drop(store);
            timings.push(("embedded", secs));
        }
        if let Some(url) = &args.redis {
            let store = RedisStore::connect(Some(url), &[], &args.prefix)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            let secs = seed_store("redis", Arc::new(store), tree.clone(), args.concurrency).await?;
            timings.push(("redis", secs));
        }
        anyhow::Ok(())
    })?;

    write_lines(args.out.join("keys.txt"), &tree.active)?;
    write_lines(args.out.join("disabled.txt"), &tree.disabled)?;
    write_lines(args.out.join("unknown.txt"), &tree.unknown)?;
    let children = args.parents * args.children_per_parent;
    let timing_json: Vec<String> = timings
        .iter()
        .map(|(name, secs)| {
            format!(
                "\"{name}\": {{\"seconds\": {secs:.2}, \"accounts_per_second\": {:.0}}}",
                (args.parents + children) as f64 / secs
            )
        })
        .collect();
    let summary = format!(
        "{{\"parents\": {}, \"children\": {children}, \"active_keys\": {}, \"disabled_keys\": {}, \
         \"unknown_keys\": {}, \"bulk\": {}, \"stores\": {{{}}}}}\n",
        args.parents,
        tree.active.len(),
        tree.disabled.len(),
        tree.unknown.len(),
        args.bulk,
        timing_json.join(", ")
    );
    std::fs::write(args.out.join("seed.json"), &summary)?;
    eprint!("seed: {summary}");
    Ok(())
}
