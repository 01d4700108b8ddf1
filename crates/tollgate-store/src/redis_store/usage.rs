//! Usage (exactly-once batches, split by tenant), reads of usage and pool roll-ups, and credit
//! leases.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::AsyncCommands;
use tollgate_core::{Day, Totals, UsageRow};

use super::conn::{store_err, Conn};
use super::keys::{parse_usage_field, write_usage_field, FIELD_SEP, POOL_USAGE, USAGE, WRITERS};
use super::Inner;
use crate::{LeaseOp, StoreError, StoreResult, UsageBatch, UsageDelta};

/// How long a writer's last batch number is kept after its last batch on a tenant: far longer
/// than any flusher retries a batch (as in the embedded store).
const BATCH_RETENTION: Duration = Duration::from_secs(2 * 86_400);
/// Requests one call keeps in flight at once (they share the multiplexed connection).
const PARALLEL: usize = 32;
/// Tenants whose parts of a batch share one script call on a single server.
const GROUP: usize = 64;
/// Bound of the set of accounts whose index this process wrote for usage.
const INDEXED_CAP: usize = 100_000;

impl Inner {
    pub(super) async fn record_usage(&self, batch: &UsageBatch) -> StoreResult<()> {
        for d in &batch.deltas {
            for name in [&d.product, &d.pool] {
                if name.contains(FIELD_SEP) {
                    return Err(StoreError::Internal(
                        "redis store: product and pool names may not contain U+001F".into(),
                    ));
                }
            }
        }
        // Usage is read by account id, so each account's tenant must be findable first. The index
        // never changes once written, so writing it before the batch is safe if the batch fails.
        // Most flushes find every account already indexed by this process: checked here, without
        // a future each.
        let accounts: Vec<(&str, &str)> = batch
            .deltas
            .iter()
            .filter(|d| !self.indexed.contains(&*d.account_id))
            .map(|d| (&*d.account_id, &*d.parent_id))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        for chunk in accounts.chunks(PARALLEL) {
            try_join_all(chunk.iter().map(|(a, t)| self.index_for_usage(a, t))).await?;
        }
        // On a single server, up to GROUP tenants' parts share one script call, exactly-once as a
        // group on the writer's marker: a flush of a thousand tenants is then 16 calls rather than
        // a thousand, on the gateway's core and on Redis's, and Redis keeps no per-tenant record
        // of writers. The groups go one after another, so that building them never holds a core
        // the data plane shares for more than one call's worth, nor Redis for more than one
        // script's; a retry after a partial failure skips the groups that landed (a retried batch
        // is the same batch, so it splits into the same groups). On Redis Cluster each tenant's
        // part is exactly-once on the tenant's record of the writer's last batch, and parts go out
        // concurrently (they live on different nodes). A tenant's part is its run of the deltas
        // sorted by tenant (a stable sort: a retried batch is split the same way).
        let mut sorted: Vec<&UsageDelta> = batch.deltas.iter().collect();
        sorted.sort_by(|a, b| a.parent_id.cmp(&b.parent_id));
        let parts: Vec<(&str, &[&UsageDelta])> = sorted
            .chunk_by(|a, b| a.parent_id == b.parent_id)
            .map(|run| (&*run[0].parent_id, run))
            .collect();
        if matches!(self.conns.main, Conn::Single(_)) {
            for (n, group) in parts.chunks(GROUP).enumerate() {
                self.record_parts(batch, group, Some(n)).await?;
            }
            return Ok(());
        }
        for chunk in parts.chunks(PARALLEL) {
            try_join_all(
                chunk
                    .iter()
                    .map(|part| self.record_parts(batch, std::slice::from_ref(part), None)),
            )
            .await?;
        }
        Ok(())
    }

    /// Writes an account's index entry (`record_usage` skips those this process wrote before).
    async fn index_for_usage(&self, account: &str, tenant: &str) -> StoreResult<()> {
        let _: bool = self
            .conn()
            .set_nx(self.keys.account_index(account), tenant)
            .await
            .map_err(store_err)?;
        if self.indexed.len() >= INDEXED_CAP {
            self.indexed.clear();
        }
        self.indexed.insert(account.to_owned());
        Ok(())
    }

    /// Tenants' parts in one call: a single server's group `group` (see `RECORD_USAGE_GROUP`), or
    /// on Cluster one tenant's part (`group` None; see `RECORD_USAGE_PARTS`).
    ///
    /// The EVALSHA command is written straight into one buffer: a flush of a thousand tenants
    /// names about three thousand keys and six thousand arguments, and going through
    /// `ScriptInvocation` cost each a `format!`, a `Vec` of its own and two more copies, on the
    /// core the data plane shares.
    async fn record_parts(
        &self,
        batch: &UsageBatch,
        parts: &[(&str, &[&UsageDelta])],
        group: Option<usize>,
    ) -> StoreResult<()> {
        let script = match group {
            Some(_) => &self.scripts.record_usage_group,
            None => &self.scripts.record_usage_parts,
        };
        // Per tenant: its accounts in order of first use (their usage hashes are its keys after
        // its pool usage), and each delta's account as its number there, counted from 1 (the
        // script counts from the pool-usage key).
        let mut seen: HashMap<&str, usize, foldhash::fast::RandomState> = HashMap::default();
        let layout: Vec<(Vec<&str>, Vec<usize>)> = parts
            .iter()
            .map(|(_, deltas)| {
                seen.clear();
                let mut accounts = Vec::new();
                let slots = deltas
                    .iter()
                    .map(|d| {
                        *seen.entry(&*d.account_id).or_insert_with(|| {
                            accounts.push(&*d.account_id);
                            accounts.len()
                        })
                    })
                    .collect();
                (accounts, slots)
            })
            .collect();
        // The writer's marker on a single server; per tenant, its writers record on Cluster, its
        // pool usage and its accounts' usage.
        let tenant_keys = 1 + usize::from(group.is_none());
        let keys = usize::from(group.is_some())
            + layout
                .iter()
                .map(|(accounts, _)| tenant_keys + accounts.len())
                .sum::<usize>();
        let args = 4 + parts.len() * 2 + 6 * parts.iter().map(|(_, d)| d.len()).sum::<usize>();
        let mut cmd = redis::Cmd::with_capacity(3 + keys + args, 64 * (keys + args));
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
        let mut buf = String::new();
        if group.is_some() {
            cmd.arg(self.keys.usage_writer(&mut buf, &batch.writer));
        }
        for ((tenant, _), (accounts, _)) in parts.iter().zip(&layout) {
            if group.is_none() {
                cmd.arg(self.keys.write_tenant_key(&mut buf, tenant, WRITERS, ""));
            }
            cmd.arg(self.keys.write_tenant_key(&mut buf, tenant, POOL_USAGE, ""));
            for account in accounts {
                cmd.arg(self.keys.write_tenant_key(&mut buf, tenant, USAGE, account));
            }
        }
        match group {
            Some(n) => cmd.arg(batch.seq).arg(n).arg(BATCH_RETENTION.as_secs()),
            None => cmd
                .arg(&batch.writer)
                .arg(batch.seq)
                .arg(super::now_ms() / 1000)
                .arg(BATCH_RETENTION.as_secs()),
        };
        for ((_, deltas), (accounts, slots)) in parts.iter().zip(&layout) {
            cmd.arg(accounts.len()).arg(deltas.len());
            for (d, slot) in deltas.iter().zip(slots) {
                cmd.arg(slot);
                cmd.arg(write_usage_field(
                    &mut buf, false, d.day.0, &d.product, &d.pool,
                ));
                cmd.arg(write_usage_field(
                    &mut buf, true, d.day.0, &d.product, &d.pool,
                ));
                cmd.arg(&*d.pool).arg(d.requests).arg(d.credits);
            }
        }
        let mut conn = self.conn();
        match cmd.query_async::<i64>(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // Redis lost its script cache (a restart, SCRIPT FLUSH): load it and call again.
                script.load_async(&mut conn).await.map_err(store_err)?;
                cmd.query_async::<i64>(&mut conn).await.map_err(store_err)?;
            }
            r => {
                r.map_err(store_err)?;
            }
        }
        Ok(())
    }

    pub(super) async fn usage(
        &self,
        account_ids: &[String],
        from: Day,
        to: Day,
    ) -> StoreResult<Vec<UsageRow>> {
        let mut ids: Vec<&str> = account_ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        if from > to {
            return Ok(Vec::new());
        }
        // `try_join_all` keeps the order of `ids`, so rows stay sorted by account.
        let mut rows = Vec::new();
        for chunk in ids.chunks(PARALLEL) {
            let per_account =
                try_join_all(chunk.iter().map(|id| self.account_usage(id, from, to))).await?;
            rows.extend(per_account.into_iter().flatten());
        }
        Ok(rows)
    }

    /// One account's rows in the range, sorted by day, product, pool.
    async fn account_usage(&self, id: &str, from: Day, to: Day) -> StoreResult<Vec<UsageRow>> {
        let Some(tenant) = self.tenant_of(id).await? else {
            return Ok(Vec::new());
        };
        let fields: Vec<(String, u64)> = self
            .conn()
            .hgetall(self.keys.tenant(&tenant).usage(id))
            .await
            .map_err(store_err)?;
        let mut cells: BTreeMap<(i32, String, String), Totals> = BTreeMap::new();
        for (field, n) in fields {
            let (credits, day, product, pool) = parse_usage_field(&field)
                .ok_or_else(|| StoreError::Internal("redis store: malformed usage field".into()))?;
            if day < from.0 || day > to.0 {
                continue;
            }
            let cell = cells
                .entry((day, product.to_owned(), pool.to_owned()))
                .or_default();
            if credits {
                cell.credits = n;
            } else {
                cell.requests = n;
            }
        }
        Ok(cells
            .into_iter()
            .map(|((day, product, pool), totals)| UsageRow {
                account_id: id.to_owned(),
                product,
                pool,
                day: Day(day),
                totals,
            })
            .collect())
    }

    pub(super) async fn pool_usage(&self, parent_id: &str) -> StoreResult<Vec<(String, u64)>> {
        let mut pools: Vec<(String, u64)> = self
            .conn()
            .hgetall(self.keys.tenant(parent_id).pool_usage())
            .await
            .map_err(store_err)?;
        pools.sort();
        Ok(pools)
    }

    pub(super) async fn lease_credits(
        &self,
        parent_id: &str,
        pool: &str,
        need: u64,
        want: u64,
        op: LeaseOp<'_>,
    ) -> StoreResult<(u64, u64)> {
        let tk = self.keys.tenant(parent_id);
        let (status, granted, beyond): (String, u64, u64) = self
            .scripts
            .lease
            .key(tk.subscriptions())
            .key(tk.leases())
            .key(tk.lease_ops())
            .arg(pool)
            .arg(need)
            .arg(want)
            .arg(lease_op_field(pool, op.node))
            .arg(op.seq)
            .invoke_async(&mut self.conn())
            .await
            .map_err(store_err)?;
        if status == "missing" {
            return Err(StoreError::NotFound(parent_id.to_owned()));
        }
        Ok((granted, beyond))
    }

    pub(super) async fn release_credits(
        &self,
        parent_id: &str,
        pool: &str,
        amount: u64,
        op: LeaseOp<'_>,
    ) -> StoreResult<()> {
        let tk = self.keys.tenant(parent_id);
        self.scripts
            .release
            .key(tk.leases())
            .key(tk.lease_ops())
            .arg(pool)
            .arg(amount)
            .arg(lease_op_field(pool, op.node))
            .arg(op.seq)
            .arg(if op.last { "last" } else { "" })
            .invoke_async::<i64>(&mut self.conn())
            .await
            .map_err(store_err)?;
        Ok(())
    }
}

/// The `T:leaseop` field of a node's operations on a pool.
fn lease_op_field(pool: &str, node: &str) -> String {
    format!("{pool}\u{1f}{node}")
}
