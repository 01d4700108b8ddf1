//! Shared set-up for the criterion benches: an empty store (the benches never reach it) and
//! cache entries built in memory.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tollgate_core::*;
use tollgate_store::cache::CachedAccount;
use tollgate_store::*;

/// A store that is never reached: every look-up in the benches hits the cache.
#[derive(Debug)]
pub struct Unreached;

fn no<T>() -> StoreResult<T> {
    Err(StoreError::Unavailable("benchmark store".into()))
}

#[async_trait]
impl Store for Unreached {
    fn backend(&self) -> &'static str {
        "none"
    }
    async fn ping(&self) -> StoreResult<()> {
        no()
    }
    async fn account(&self, _: &str) -> StoreResult<Option<Account>> {
        no()
    }
    async fn account_by_key(&self, _: &KeyHash) -> StoreResult<Option<Account>> {
        no()
    }
    async fn children(&self, _: &str) -> StoreResult<Vec<Account>> {
        no()
    }
    async fn subscriptions(&self, _: &str) -> StoreResult<Vec<Subscription>> {
        no()
    }
    async fn create_parent(&self, _: NewParent) -> StoreResult<Account> {
        no()
    }
    async fn update_parent(
        &self,
        _: &str,
        _: Option<bool>,
        _: Option<LimitOverrides>,
    ) -> StoreResult<Account> {
        no()
    }
    async fn put_subscription(&self, _: &str, _: Subscription) -> StoreResult<()> {
        no()
    }
    async fn invite(&self, _: NewInvitation) -> StoreResult<Account> {
        no()
    }
    async fn accept_invitation(&self, _: &KeyHash, _: KeyHash, _: u64) -> StoreResult<Account> {
        no()
    }
    async fn set_status(&self, _: &str, _: Status) -> StoreResult<Account> {
        no()
    }
    async fn rotate_key(&self, _: &str, _: &KeyHash, _: KeyHash) -> StoreResult<()> {
        no()
    }
    async fn record_usage(&self, _: &UsageBatch) -> StoreResult<()> {
        no()
    }
    async fn usage(&self, _: &[String], _: Day, _: Day) -> StoreResult<Vec<UsageRow>> {
        no()
    }
    async fn pool_usage(&self, _: &str) -> StoreResult<Vec<(String, u64)>> {
        no()
    }
    async fn feed_head(&self) -> StoreResult<String> {
        no()
    }
    async fn read_feed(&self, _: &str, _: Duration) -> StoreResult<Vec<FeedEvent>> {
        no()
    }
}

pub fn account(id: String, parent: Option<&str>) -> Account {
    Account {
        email: format!("{id}@bench.example"),
        role: if parent.is_some() {
            Role::Child
        } else {
            Role::Parent
        },
        status: Status::Active,
        parent_id: parent.map(str::to_owned),
        team: true,
        limits: LimitOverrides::default(),
        created_at: 0,
        id,
    }
}

/// A cache with `parents` parents and `children` children spread over them; returns the cache and
/// the keys of the children.
pub fn populated_cache(parents: usize, children: usize) -> (KeyCache, Vec<ApiKey>) {
    let cache = KeyCache::new(
        Arc::new(Unreached),
        tollgate_store::CacheConfig {
            max_staleness: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(30),
            serve_stale_when_down: true,
        },
    );
    let mut rng = rand::rng();
    let subs = vec![Subscription {
        pool: "whois".into(),
        credits: 1_000_000,
        overage: Overage::Allow,
    }];
    let tenants: Vec<Arc<CachedAccount>> = (0..parents)
        .map(|i| {
            let a = Arc::new(CachedAccount::new(
                account(format!("acc_p{i:015}"), None),
                subs.clone(),
            ));
            cache.insert_loaded(generate_key(&mut rng).hash(), a.clone(), None);
            a
        })
        .collect();
    let mut keys = Vec::with_capacity(children);
    for i in 0..children {
        let t = &tenants[i % parents];
        let k = generate_key(&mut rng);
        let a = Arc::new(CachedAccount::new(
            account(format!("acc_c{i:015}"), Some(&t.account.id)),
            vec![],
        ));
        cache.insert_loaded(k.hash(), a, None);
        keys.push(k);
    }
    (cache, keys)
}

/// Resident memory of this process in bytes (Linux).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}
