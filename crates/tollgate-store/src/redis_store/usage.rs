//! Usage (exactly-once batches, split by tenant), reads of usage and pool roll-ups, and credit
//! leases.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::AsyncCommands;
use tollgate_core::{Day, Totals, UsageRow};

use super::conn::{store_err, Conn};
use super::keys::{parse_usage_field, usage_fields, FIELD_SEP};
use super::Inner;
use crate::{StoreError, StoreResult, UsageBatch, UsageDelta};

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
        let mut by_tenant: BTreeMap<&str, Vec<&UsageDelta>> = BTreeMap::new();
        for d in &batch.deltas {
            for name in [&d.product, &d.pool] {
                if name.contains(FIELD_SEP) {
                    return Err(StoreError::Internal(
                        "redis store: product and pool names may not contain U+001F".into(),
                    ));
                }
            }
            by_tenant.entry(d.parent_id.as_str()).or_default().push(d);
        }
        // Usage is read by account id, so each account's tenant must be findable first. The index
        // never changes once written, so writing it before the batch is safe if the batch fails.
        let accounts: Vec<(&str, &str)> = batch
            .deltas
            .iter()
            .map(|d| (d.account_id.as_str(), d.parent_id.as_str()))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        for chunk in accounts.chunks(PARALLEL) {
            try_join_all(chunk.iter().map(|(a, t)| self.index_for_usage(a, t))).await?;
        }
        // Each tenant's part is exactly-once on the tenant's record of the writer's last batch: a
        // retry after a partial failure applies only the parts that did not land. Parts of different tenants are independent,
        // so they go out concurrently (they live on different cluster nodes anyway). On a single
        // server, up to GROUP tenants' parts share one script call: a flush of a thousand tenants
        // is then 16 calls rather than a thousand, on the gateway's core and on Redis's. They go
        // one after another, so that building them never holds a core the data plane shares for
        // more than one call's worth, nor Redis for more than one script's.
        let parts: Vec<(&str, Vec<&UsageDelta>)> = by_tenant.into_iter().collect();
        if matches!(self.conns.main, Conn::Single(_)) {
            for group in parts.chunks(GROUP) {
                self.record_group_usage(batch, group).await?;
            }
            return Ok(());
        }
        for chunk in parts.chunks(PARALLEL) {
            try_join_all(
                chunk
                    .iter()
                    .map(|part| self.record_group_usage(batch, std::slice::from_ref(part))),
            )
            .await?;
        }
        Ok(())
    }

    async fn index_for_usage(&self, account: &str, tenant: &str) -> StoreResult<()> {
        if self.indexed.contains(account) {
            return Ok(());
        }
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

    /// Tenants' parts in one call (several only on a single server); see `RECORD_USAGE_GROUP`.
    async fn record_group_usage(
        &self,
        batch: &UsageBatch,
        parts: &[(&str, Vec<&UsageDelta>)],
    ) -> StoreResult<()> {
        let now = super::now_ms() / 1000;
        let mut script = self.scripts.record_usage_group.prepare_invoke();
        script
            .arg(&batch.writer)
            .arg(batch.seq)
            .arg(now)
            .arg(BATCH_RETENTION.as_secs());
        let mut slots: HashMap<&str, usize> = HashMap::new();
        for (tenant, deltas) in parts {
            let tk = self.keys.tenant(tenant);
            script.key(tk.writers());
            script.key(tk.pool_usage());
            slots.clear();
            for d in deltas {
                if !slots.contains_key(d.account_id.as_str()) {
                    script.key(tk.usage(&d.account_id));
                    slots.insert(d.account_id.as_str(), slots.len() + 1);
                }
            }
            script.arg(slots.len()).arg(deltas.len());
            for d in deltas {
                let (r, c) = usage_fields(d.day.0, &d.product, &d.pool);
                script
                    .arg(slots[d.account_id.as_str()])
                    .arg(r)
                    .arg(c)
                    .arg(&d.pool)
                    .arg(d.requests)
                    .arg(d.credits);
            }
        }
        script
            .invoke_async::<i64>(&mut self.conn())
            .await
            .map_err(store_err)?;
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
    ) -> StoreResult<(u64, u64)> {
        let tk = self.keys.tenant(parent_id);
        let (status, granted, beyond): (String, u64, u64) = self
            .scripts
            .lease
            .key(tk.subscriptions())
            .key(tk.leases())
            .arg(pool)
            .arg(need)
            .arg(want)
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
    ) -> StoreResult<()> {
        if amount == 0 {
            return Ok(());
        }
        self.scripts
            .release
            .key(self.keys.tenant(parent_id).leases())
            .arg(pool)
            .arg(amount)
            .invoke_async::<i64>(&mut self.conn())
            .await
            .map_err(store_err)?;
        Ok(())
    }
}
