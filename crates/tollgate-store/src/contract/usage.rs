//! Contract checks for usage: exact sums, idempotent batches, day ranges and the pool roll-up.

use tollgate_core::{generate_id, Day, Totals, UsageRow};

use super::{fresh_email, fresh_id, make_child, make_parent};
use crate::{Store, UsageBatch, UsageDelta};

/// The first batch of a writer of its own: (writer, number).
fn fresh_batch_id() -> (String, u64) {
    (generate_id(&mut rand::rng(), "node_"), 0)
}

fn day(n: i32) -> Day {
    // Any fixed day works; a December one mirrors the spec's examples.
    Day::from_ymd(2026, 12, 1).unwrap().add_days(n)
}

fn delta(
    account: &str,
    parent: &str,
    product: &str,
    pool: &str,
    day: Day,
    requests: u64,
    credits: u64,
) -> UsageDelta {
    UsageDelta {
        account_id: account.into(),
        parent_id: parent.into(),
        product: product.into(),
        pool: pool.into(),
        day,
        requests,
        credits,
    }
}

fn row(
    account: &str,
    product: &str,
    pool: &str,
    day: Day,
    requests: u64,
    credits: u64,
) -> UsageRow {
    UsageRow {
        account_id: account.to_owned(),
        product: product.to_owned(),
        pool: pool.to_owned(),
        day,
        totals: Totals { requests, credits },
    }
}

async fn record(store: &dyn Store, id: &(String, u64), deltas: Vec<UsageDelta>, check: &str) {
    let batch = UsageBatch {
        writer: id.0.clone(),
        seq: id.1,
        deltas,
    };
    store
        .record_usage(&batch)
        .await
        .unwrap_or_else(|e| panic!("{check}: record_usage({}) failed: {e:?}", batch.id()));
}

async fn pools(store: &dyn Store, parent_id: &str) -> Vec<(String, u64)> {
    store.pool_usage(parent_id).await.unwrap()
}

fn owned(pools: &[(&str, u64)]) -> Vec<(String, u64)> {
    pools.iter().map(|(p, c)| ((*p).to_owned(), *c)).collect()
}

pub async fn record_usage_exact_and_idempotent(store: &dyn Store) {
    const CHECK: &str = "record_usage_exact_and_idempotent";
    let (parent, _) = make_parent(store, &fresh_email()).await;
    let (child, _) = make_child(store, &parent.id).await;
    let (p, c) = (parent.id.as_str(), child.id.as_str());

    let batch = fresh_batch_id();
    let deltas = vec![
        delta(c, p, "whois", "whois", day(0), 3, 5),
        delta(p, p, "whois", "whois", day(0), 1, 2),
        // The same cell twice in one batch adds up.
        delta(c, p, "whois", "whois", day(0), 2, 4),
    ];
    record(store, &batch, deltas.clone(), CHECK).await;
    let expected = vec![
        row(c, "whois", "whois", day(0), 5, 9),
        row(p, "whois", "whois", day(0), 1, 2),
    ];
    let mut expected_sorted = expected.clone();
    expected_sorted.sort_by(|a, b| a.account_id.cmp(&b.account_id));
    let ids = vec![p.to_owned(), c.to_owned()];
    assert_eq!(
        store.usage(&ids, day(0), day(0)).await.unwrap(),
        expected_sorted,
        "{CHECK}: after one batch"
    );
    assert_eq!(
        pools(store, p).await,
        owned(&[("whois", 11)]),
        "{CHECK}: pool usage after one batch"
    );

    // A retry after a lost reply, even carrying other numbers, must not count again.
    record(store, &batch, deltas, CHECK).await;
    record(
        store,
        &batch,
        vec![delta(c, p, "whois", "whois", day(0), 100, 100)],
        CHECK,
    )
    .await;
    assert_eq!(
        store.usage(&ids, day(0), day(0)).await.unwrap(),
        expected_sorted,
        "{CHECK}: a batch id counted twice"
    );
    assert_eq!(
        pools(store, p).await,
        owned(&[("whois", 11)]),
        "{CHECK}: a batch id counted twice in the pool"
    );

    // The writer's next batch adds, once; another writer's empty batch changes nothing.
    let next = (batch.0.clone(), 1);
    record(
        store,
        &next,
        vec![delta(c, p, "whois", "whois", day(0), 1, 1)],
        CHECK,
    )
    .await;
    record(
        store,
        &next,
        vec![delta(c, p, "whois", "whois", day(0), 50, 50)],
        CHECK,
    )
    .await;
    record(store, &fresh_batch_id(), Vec::new(), CHECK).await;
    assert_eq!(
        store.usage(&[c.to_owned()], day(0), day(0)).await.unwrap(),
        vec![row(c, "whois", "whois", day(0), 6, 10)],
        "{CHECK}: a second batch adds to the cell, its retry does not"
    );
    assert_eq!(
        pools(store, p).await,
        owned(&[("whois", 12)]),
        "{CHECK}: pool usage after a second batch"
    );

    // Large numbers are added exactly, not through a float.
    let big = (1u64 << 53) + 1;
    let (q, _) = make_parent(store, &fresh_email()).await;
    record(
        store,
        &fresh_batch_id(),
        vec![delta(&q.id, &q.id, "whois", "whois", day(0), big, big)],
        CHECK,
    )
    .await;
    record(
        store,
        &fresh_batch_id(),
        vec![delta(&q.id, &q.id, "whois", "whois", day(0), 2, 2)],
        CHECK,
    )
    .await;
    assert_eq!(
        store
            .usage(std::slice::from_ref(&q.id), day(0), day(0))
            .await
            .unwrap(),
        vec![row(&q.id, "whois", "whois", day(0), big + 2, big + 2)],
        "{CHECK}: large counts"
    );
    assert_eq!(
        pools(store, &q.id).await,
        owned(&[("whois", big + 2)]),
        "{CHECK}: large pool counts"
    );
}

pub async fn usage_range_filtering(store: &dyn Store) {
    const CHECK: &str = "usage_range_filtering";
    // Usage does not need the accounts to exist; ids that extend one another must not mix.
    let a = fresh_id();
    let a_longer = format!("{a}0");
    let b = fresh_id();
    let tenant = fresh_id();
    let mut deltas = Vec::new();
    for n in 0..5 {
        deltas.push(delta(
            &a,
            &tenant,
            "whois",
            "whois",
            day(n),
            1,
            n as u64 + 1,
        ));
        deltas.push(delta(&a, &tenant, "dns", "whois", day(n), 2, 1));
        deltas.push(delta(&b, &tenant, "reverse-whois", "drs", day(n), 1, 10));
    }
    deltas.push(delta(&a, &tenant, "dns", "dns", day(2), 1, 1));
    deltas.push(delta(&a_longer, &tenant, "whois", "whois", day(2), 9, 9));
    deltas.push(delta(&a, &tenant, "whois", "whois", day(-400), 7, 7));
    deltas.push(delta(&a, &tenant, "whois", "whois", day(400), 7, 7));
    record(store, &fresh_batch_id(), deltas, CHECK).await;

    let got = store
        .usage(std::slice::from_ref(&a), day(1), day(3))
        .await
        .unwrap();
    let mut want = Vec::new();
    for n in 1..=3 {
        if n == 2 {
            want.push(row(&a, "dns", "dns", day(n), 1, 1));
        }
        want.push(row(&a, "dns", "whois", day(n), 2, 1));
        want.push(row(&a, "whois", "whois", day(n), 1, n as u64 + 1));
    }
    assert_eq!(
        got, want,
        "{CHECK}: days 1..=3 of one account, sorted by day, product, pool"
    );

    let one_day = store
        .usage(std::slice::from_ref(&b), day(4), day(4))
        .await
        .unwrap();
    assert_eq!(
        one_day,
        vec![row(&b, "reverse-whois", "drs", day(4), 1, 10)],
        "{CHECK}: a one-day range"
    );

    let mut both = [a.clone(), b.clone()];
    both.sort();
    let reversed: Vec<String> = both.iter().rev().cloned().collect();
    let got = store.usage(&reversed, day(0), day(4)).await.unwrap();
    assert_eq!(
        got.len(),
        10 + 1 + 5,
        "{CHECK}: rows of two accounts over five days: {got:#?}"
    );
    let order: Vec<(&str, Day, &str, &str)> = got
        .iter()
        .map(|r| {
            (
                r.account_id.as_str(),
                r.day,
                r.product.as_str(),
                r.pool.as_str(),
            )
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(
        order, sorted,
        "{CHECK}: rows are not sorted by account, day, product, pool"
    );
    assert!(
        got.iter().all(|r| r.account_id != a_longer),
        "{CHECK}: another account's rows leaked in"
    );

    assert!(
        store
            .usage(std::slice::from_ref(&a), day(3), day(1))
            .await
            .unwrap()
            .is_empty(),
        "{CHECK}: from after to"
    );
    assert!(
        store
            .usage(&[fresh_id()], day(-1000), day(1000))
            .await
            .unwrap()
            .is_empty(),
        "{CHECK}: an account without usage"
    );
    assert!(
        store
            .usage(&[], day(-1000), day(1000))
            .await
            .unwrap()
            .is_empty(),
        "{CHECK}: no accounts"
    );
    let all = store
        .usage(std::slice::from_ref(&a), day(-1000), day(1000))
        .await
        .unwrap();
    assert_eq!(
        all.len(),
        11 + 2,
        "{CHECK}: the whole history of one account: {all:#?}"
    );
}

pub async fn pool_usage_rolls_up_children(store: &dyn Store) {
    const CHECK: &str = "pool_usage_rolls_up_children";
    let (parent, _) = make_parent(store, &fresh_email()).await;
    let (c1, _) = make_child(store, &parent.id).await;
    let (c2, _) = make_child(store, &parent.id).await;
    let (other, _) = make_parent(store, &fresh_email()).await;
    let p = parent.id.as_str();
    record(
        store,
        &fresh_batch_id(),
        vec![
            delta(&c1.id, p, "whois", "whois", day(0), 10, 10),
            delta(&c2.id, p, "whois", "whois", day(1), 5, 5),
            delta(p, p, "whois", "whois", day(0), 1, 1),
            delta(&c1.id, p, "reverse-whois", "drs", day(0), 1, 7),
            delta(&c2.id, p, "brand-alert", "drs", day(2), 1, 3),
            delta(&other.id, &other.id, "whois", "whois", day(0), 100, 100),
        ],
        CHECK,
    )
    .await;
    assert_eq!(
        pools(store, p).await,
        owned(&[("drs", 10), ("whois", 16)]),
        "{CHECK}: the tenant's pools, sorted"
    );
    assert_eq!(
        pools(store, &other.id).await,
        owned(&[("whois", 100)]),
        "{CHECK}: another tenant's pools"
    );
    assert!(
        pools(store, &c1.id).await.is_empty(),
        "{CHECK}: a child has its own pool usage"
    );
    assert!(
        pools(store, &fresh_id()).await.is_empty(),
        "{CHECK}: a tenant without usage"
    );

    // A member deleted later keeps what it used, in its rows and in the roll-up.
    store
        .set_status(&c1.id, tollgate_core::Status::Deleted)
        .await
        .unwrap();
    let rows = store
        .usage(std::slice::from_ref(&c1.id), day(0), day(0))
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            row(&c1.id, "reverse-whois", "drs", day(0), 1, 7),
            row(&c1.id, "whois", "whois", day(0), 10, 10)
        ],
        "{CHECK}: a deleted member's usage"
    );
    assert_eq!(
        pools(store, p).await,
        owned(&[("drs", 10), ("whois", 16)]),
        "{CHECK}: the roll-up after a member was deleted"
    );
}
