//! Contract checks for credit leases: slice sizes as a pool runs low, releases, and refusals.

use tollgate_core::Overage;

use super::{assert_err, fresh_email, fresh_id, make_parent, sub};
use crate::{LeaseOp, Store, StoreError};

async fn lease(store: &dyn Store, parent: &str, pool: &str, need: u64, want: u64) -> (u64, u64) {
    store
        .lease_credits(parent, pool, need, want, next_op())
        .await
        .unwrap_or_else(|e| panic!("lease_credits({parent}, {pool}, {need}, {want}) failed: {e:?}"))
}

pub async fn credit_leases(store: &dyn Store) {
    const CHECK: &str = "credit_leases";
    let (parent, _) = make_parent(store, &fresh_email()).await;
    let p = parent.id.as_str();
    store
        .put_subscription(p, sub("whois", 1000, Overage::Deny))
        .await
        .unwrap();

    // A slice is at most a sixteenth of what is left, and never more than asked for.
    assert_eq!(
        lease(store, p, "whois", 1, 100).await,
        (62, 938),
        "{CHECK}: first slice"
    );
    assert_eq!(
        lease(store, p, "whois", 1, 10).await,
        (10, 928),
        "{CHECK}: a slice smaller than a sixteenth"
    );
    store
        .release_credits(p, "whois", 72, next_op())
        .await
        .unwrap();
    assert_eq!(
        lease(store, p, "whois", 5, 5000).await,
        (62, 938),
        "{CHECK}: after releasing everything"
    );
    store
        .release_credits(p, "whois", 62, next_op())
        .await
        .unwrap();

    // Near the end, slices shrink to exactly what the request needs, then nothing.
    store
        .put_subscription(p, sub("whois", 20, Overage::Deny))
        .await
        .unwrap();
    assert_eq!(
        lease(store, p, "whois", 3, 100).await,
        (3, 17),
        "{CHECK}: a slice at the boundary is `need`"
    );
    assert_eq!(
        lease(store, p, "whois", 18, 100).await,
        (0, 17),
        "{CHECK}: more than is left"
    );
    assert_eq!(
        lease(store, p, "whois", 17, 17).await,
        (17, 0),
        "{CHECK}: the last credits"
    );
    assert_eq!(
        lease(store, p, "whois", 1, 10).await,
        (0, 0),
        "{CHECK}: an exhausted pool"
    );
    store
        .release_credits(p, "whois", 20, next_op())
        .await
        .unwrap();
    assert_eq!(
        lease(store, p, "whois", 1, 1).await,
        (1, 19),
        "{CHECK}: after releasing the pool"
    );

    // A purchase raises what is left; leases of other tenants and pools are separate.
    store
        .put_subscription(p, sub("whois", 1020, Overage::Deny))
        .await
        .unwrap();
    assert_eq!(
        lease(store, p, "whois", 1, 1000).await,
        (63, 956),
        "{CHECK}: after a bigger subscription"
    );
    let (other, _) = make_parent(store, &fresh_email()).await;
    store
        .put_subscription(&other.id, sub("whois", 160, Overage::Deny))
        .await
        .unwrap();
    assert_eq!(
        lease(store, &other.id, "whois", 1, 100).await,
        (10, 150),
        "{CHECK}: another tenant's pool"
    );

    assert_err!(
        store.lease_credits(p, "drs", 1, 1, next_op()).await,
        StoreError::NotFound(_),
        "{CHECK}: a pool without a subscription"
    );
    assert_err!(
        store
            .lease_credits(&fresh_id(), "whois", 1, 1, next_op())
            .await,
        StoreError::NotFound(_),
        "{CHECK}: a missing parent"
    );
}

/// A new lease operation of one test node (each call the next number).
pub fn next_op() -> LeaseOp<'static> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    LeaseOp::new(
        "node_test",
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
    )
}
