//! Admission: may this account, under this parent, call this route? Pure and allocation-free.

use crate::{Account, Permission, Role, Status};

/// What [`admit`] reads of an account: its role and its state. Implemented by [`Account`] and by
/// the key cache's slim form of it, so the data plane admits straight from the cache.
pub trait Admittable {
    fn role(&self) -> Role;
    fn status(&self) -> Status;
}

impl Admittable for Account {
    fn role(&self) -> Role {
        self.role
    }

    fn status(&self) -> Status {
        self.status
    }
}

/// Every reason Tollgate refuses a request, one per row of SPEC.md's refusal table that is about the
/// caller (upstream failures are the proxy's, not the domain's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    KeyMissing,
    KeyUnknown,
    KeyDisabled,
    ParentDisabled,
    ProductNotSubscribed,
    PermissionDenied,
    CreditsExhausted,
    RateLimited,
    RouteNotFound,
    StoreUnavailable,
}

impl DenyReason {
    pub const ALL: [DenyReason; 10] = [
        DenyReason::KeyMissing,
        DenyReason::KeyUnknown,
        DenyReason::KeyDisabled,
        DenyReason::ParentDisabled,
        DenyReason::ProductNotSubscribed,
        DenyReason::PermissionDenied,
        DenyReason::CreditsExhausted,
        DenyReason::RateLimited,
        DenyReason::RouteNotFound,
        DenyReason::StoreUnavailable,
    ];

    /// The wire code of SPEC.md.
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::KeyMissing => "key_missing",
            DenyReason::KeyUnknown => "key_unknown",
            DenyReason::KeyDisabled => "key_disabled",
            DenyReason::ParentDisabled => "parent_disabled",
            DenyReason::ProductNotSubscribed => "product_not_subscribed",
            DenyReason::PermissionDenied => "permission_denied",
            DenyReason::CreditsExhausted => "credits_exhausted",
            DenyReason::RateLimited => "rate_limited",
            DenyReason::RouteNotFound => "route_not_found",
            DenyReason::StoreUnavailable => "store_unavailable",
        }
    }

    /// The human sentence of the error body. Never contains the key.
    pub fn message(self) -> &'static str {
        match self {
            DenyReason::KeyMissing => "No API key was given: send it in the x-api-key header, as a bearer token or as the apiKey query parameter.",
            DenyReason::KeyUnknown => "The API key is not valid.",
            DenyReason::KeyDisabled => "This API key's account is disabled.",
            DenyReason::ParentDisabled => "This key's parent account is disabled or deleted.",
            DenyReason::ProductNotSubscribed => "The account has no subscription to this product.",
            DenyReason::PermissionDenied => "This key is not allowed to do this.",
            DenyReason::CreditsExhausted => "The subscription's credits are used up.",
            DenyReason::RateLimited => "Too many requests: slow down and retry after the given time.",
            DenyReason::RouteNotFound => "No route matches this request.",
            DenyReason::StoreUnavailable => "The key store cannot be reached; try again shortly.",
        }
    }
}

/// The outcome of [`admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admit,
    Deny(DenyReason),
}

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access<'a> {
    /// A product route: needs `product.use` and a subscription to this pool.
    pub pool: Option<&'a str>,
    /// A non-product route names the permission it needs.
    pub permission: Option<Permission>,
}

/// Judges a caller against a route.
///
/// `parent` is the caller's parent (ignored for a parent); `subscribed(pool)` answers for the
/// tenant's subscriptions (the parent's, which its children share). Checks run in the order of
/// SPEC.md's table: the key's own state, then its parent's, then what the route needs, with one
/// exception: a deleted child under a deleted parent (deleted with it: the stores keep such a
/// child's key) is `ParentDisabled`, as SPEC's table says for a deleted parent, not `KeyUnknown`.
pub fn admit<A: Admittable + ?Sized>(
    account: &A,
    parent: Option<&A>,
    subscribed: impl FnOnce(&str) -> bool,
    access: Access<'_>,
) -> Decision {
    let role = account.role();
    match account.status() {
        Status::Active => {}
        Status::Disabled => return Decision::Deny(DenyReason::KeyDisabled),
        Status::Deleted
            if role == Role::Child && parent.is_some_and(|p| p.status() == Status::Deleted) =>
        {
            return Decision::Deny(DenyReason::ParentDisabled)
        }
        // An invited child has no key and a deleted account's key is gone: either way, unknown.
        Status::Invited | Status::Deleted => return Decision::Deny(DenyReason::KeyUnknown),
    }
    if role == Role::Child {
        match parent.map(|p| p.status()) {
            Some(Status::Active) => {}
            Some(Status::Disabled | Status::Deleted | Status::Invited) | None => {
                return Decision::Deny(DenyReason::ParentDisabled)
            }
        }
    }
    if let Some(permission) = access.permission {
        if !permission.allowed_for(role) {
            return Decision::Deny(DenyReason::PermissionDenied);
        }
    }
    if let Some(pool) = access.pool {
        if !Permission::ProductUse.allowed_for(role) {
            return Decision::Deny(DenyReason::PermissionDenied);
        }
        if !subscribed(pool) {
            return Decision::Deny(DenyReason::ProductNotSubscribed);
        }
    }
    Decision::Admit
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LimitOverrides;
    use proptest::prelude::*;

    fn account(role: Role, status: Status) -> Account {
        Account {
            id: "acc_a".into(),
            role,
            status,
            email: "a@example.com".into(),
            parent_id: (role == Role::Child).then(|| "acc_p".into()),
            team: true,
            limits: LimitOverrides::default(),
            created_at: 0,
        }
    }

    const PRODUCT: Access<'static> = Access {
        pool: Some("whois"),
        permission: None,
    };

    #[test]
    fn every_deny_reason_has_a_distinct_code_and_message() {
        let mut codes: Vec<_> = DenyReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), DenyReason::ALL.len());
        for r in DenyReason::ALL {
            assert!(!r.message().is_empty());
        }
        let mut messages: Vec<_> = DenyReason::ALL.iter().map(|r| r.message()).collect();
        messages.sort();
        messages.dedup();
        assert_eq!(messages.len(), DenyReason::ALL.len());
        // A child stopped by its parent is told so, not that its own account is disabled.
        let m = DenyReason::ParentDisabled.message();
        assert!(
            m.contains("parent") && m.contains("disabled or deleted"),
            "{m}"
        );
    }

    #[test]
    fn account_states() {
        let parent = account(Role::Parent, Status::Active);
        for (status, want) in [
            (Status::Active, Decision::Admit),
            (Status::Disabled, Decision::Deny(DenyReason::KeyDisabled)),
            (Status::Deleted, Decision::Deny(DenyReason::KeyUnknown)),
            (Status::Invited, Decision::Deny(DenyReason::KeyUnknown)),
        ] {
            let child = account(Role::Child, status);
            assert_eq!(admit(&child, Some(&parent), |_| true, PRODUCT), want);
            let p = account(Role::Parent, status);
            assert_eq!(admit(&p, None, |_| true, PRODUCT), want);
        }
    }

    #[test]
    fn parent_states_stop_children() {
        let child = account(Role::Child, Status::Active);
        for status in [Status::Disabled, Status::Deleted] {
            let parent = account(Role::Parent, status);
            assert_eq!(
                admit(&child, Some(&parent), |_| true, PRODUCT),
                Decision::Deny(DenyReason::ParentDisabled)
            );
        }
        assert_eq!(
            admit(&child, None, |_| true, PRODUCT),
            Decision::Deny(DenyReason::ParentDisabled)
        );
        // A child deleted with its parent is stopped by its parent, as SPEC's table has it; one
        // deleted on its own (its parent alive or disabled) is unknown, and so is an invited one.
        let deleted_child = account(Role::Child, Status::Deleted);
        for (parent, want) in [
            (Status::Deleted, DenyReason::ParentDisabled),
            (Status::Active, DenyReason::KeyUnknown),
            (Status::Disabled, DenyReason::KeyUnknown),
        ] {
            let parent = account(Role::Parent, parent);
            assert_eq!(
                admit(&deleted_child, Some(&parent), |_| true, PRODUCT),
                Decision::Deny(want)
            );
        }
        let deleted_parent = account(Role::Parent, Status::Deleted);
        assert_eq!(
            admit(
                &account(Role::Child, Status::Invited),
                Some(&deleted_parent),
                |_| true,
                PRODUCT
            ),
            Decision::Deny(DenyReason::KeyUnknown)
        );
        assert_eq!(
            admit(&deleted_parent, None, |_| true, PRODUCT),
            Decision::Deny(DenyReason::KeyUnknown)
        );
        // The child's own disabled state is reported first: it is the more specific reason.
        let disabled_child = account(Role::Child, Status::Disabled);
        let disabled_parent = account(Role::Parent, Status::Disabled);
        assert_eq!(
            admit(&disabled_child, Some(&disabled_parent), |_| true, PRODUCT),
            Decision::Deny(DenyReason::KeyDisabled)
        );
    }

    #[test]
    fn subscriptions() {
        let parent = account(Role::Parent, Status::Active);
        let child = account(Role::Child, Status::Active);
        let only_drs = |pool: &str| pool == "drs";
        assert_eq!(
            admit(&child, Some(&parent), only_drs, PRODUCT),
            Decision::Deny(DenyReason::ProductNotSubscribed)
        );
        assert_eq!(
            admit(&parent, None, only_drs, PRODUCT),
            Decision::Deny(DenyReason::ProductNotSubscribed)
        );
        let drs = Access {
            pool: Some("drs"),
            permission: None,
        };
        assert_eq!(admit(&child, Some(&parent), only_drs, drs), Decision::Admit);
    }

    proptest! {
        /// For an active caller under an active parent, a permission route is admitted exactly when
        /// the matrix says so, whatever the subscriptions.
        #[test]
        fn permission_routes_follow_the_matrix(p in 0usize..7, child in any::<bool>(), subscribed in any::<bool>()) {
            let permission = Permission::ALL[p];
            let role = if child { Role::Child } else { Role::Parent };
            let parent = account(Role::Parent, Status::Active);
            let caller = account(role, Status::Active);
            let access = Access { pool: None, permission: Some(permission) };
            let got = admit(&caller, Some(&parent), |_| subscribed, access);
            let want = if permission.allowed_for(role) { Decision::Admit } else { Decision::Deny(DenyReason::PermissionDenied) };
            prop_assert_eq!(got, want);
        }
    }
}
