//! The permission matrix of SPEC.md ("The model").

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::Role;

/// Everything a route or an account-API endpoint can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Permission {
    #[serde(rename = "product.use")]
    ProductUse,
    #[serde(rename = "subscription.buy")]
    SubscriptionBuy,
    #[serde(rename = "subscription.edit")]
    SubscriptionEdit,
    #[serde(rename = "billing.view")]
    BillingView,
    #[serde(rename = "usage.view")]
    UsageView,
    #[serde(rename = "newsletter.manage")]
    NewsletterManage,
    #[serde(rename = "team.manage")]
    TeamManage,
}

/// How much usage a role may see under `usage.view`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageScope {
    /// Every member's usage, its own, totals and overage.
    All,
    /// Only its own.
    Own,
}

impl Permission {
    pub const ALL: [Permission; 7] = [
        Permission::ProductUse,
        Permission::SubscriptionBuy,
        Permission::SubscriptionEdit,
        Permission::BillingView,
        Permission::UsageView,
        Permission::NewsletterManage,
        Permission::TeamManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ProductUse => "product.use",
            Permission::SubscriptionBuy => "subscription.buy",
            Permission::SubscriptionEdit => "subscription.edit",
            Permission::BillingView => "billing.view",
            Permission::UsageView => "usage.view",
            Permission::NewsletterManage => "newsletter.manage",
            Permission::TeamManage => "team.manage",
        }
    }

    /// The matrix itself: one exhaustive match, so adding a permission forces a decision here.
    pub fn allowed_for(self, role: Role) -> bool {
        match (self, role) {
            (Permission::ProductUse, _) => true,
            (Permission::UsageView, _) => true,
            (Permission::NewsletterManage, _) => true,
            (Permission::SubscriptionBuy, Role::Parent) => true,
            (Permission::SubscriptionBuy, Role::Child) => false,
            (Permission::SubscriptionEdit, Role::Parent) => true,
            (Permission::SubscriptionEdit, Role::Child) => false,
            (Permission::BillingView, Role::Parent) => true,
            (Permission::BillingView, Role::Child) => false,
            (Permission::TeamManage, Role::Parent) => true,
            (Permission::TeamManage, Role::Child) => false,
        }
    }
}

impl Role {
    pub fn usage_scope(self) -> UsageScope {
        match self {
            Role::Parent => UsageScope::All,
            Role::Child => UsageScope::Own,
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not one of [`Permission::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown permission `{0}`")]
pub struct UnknownPermission(pub String);

impl FromStr for Permission {
    type Err = UnknownPermission;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPermission(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every cell of SPEC.md's matrix, written out as the table reads.
    #[test]
    fn every_cell_of_the_matrix() {
        let table = [
            ("product.use", true, true),
            ("subscription.buy", true, false),
            ("subscription.edit", true, false),
            ("billing.view", true, false),
            ("usage.view", true, true),
            ("newsletter.manage", true, true),
            ("team.manage", true, false),
        ];
        assert_eq!(table.len(), Permission::ALL.len());
        for (name, parent, child) in table {
            let p: Permission = name.parse().unwrap();
            assert_eq!(p.as_str(), name);
            assert_eq!(p.allowed_for(Role::Parent), parent, "{name} parent");
            assert_eq!(p.allowed_for(Role::Child), child, "{name} child");
        }
        assert_eq!(Role::Parent.usage_scope(), UsageScope::All);
        assert_eq!(Role::Child.usage_scope(), UsageScope::Own);
        assert!("billing".parse::<Permission>().is_err());
    }
}
