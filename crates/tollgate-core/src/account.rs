//! Accounts (parents and children), their lifecycle statuses and a parent's subscriptions.

use serde::{Deserialize, Serialize};

/// Where an account sits in the key tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Parent,
    Child,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Parent => "parent",
            Role::Child => "child",
        }
    }
}

/// Lifecycle of an account. `Deleted` is final: the key never works again and the email is freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// A child that has been invited and has not accepted yet: it has no key.
    Invited,
    Active,
    /// Reversibly switched off by its parent or the operator.
    Disabled,
    Deleted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Invited => "invited",
            Status::Active => "active",
            Status::Disabled => "disabled",
            Status::Deleted => "deleted",
        }
    }
}

/// A rate limit: sustained requests per second and the burst above it (GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub rps: u32,
    pub burst: u32,
}

/// Per-tenant overrides of the configured `[limits]`, set by the operator on the parent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<Limit>,
}

impl LimitOverrides {
    pub fn is_empty(&self) -> bool {
        self.parent.is_none() && self.child.is_none()
    }
}

/// What happens once a pool's included credits are spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overage {
    Allow,
    Deny,
}

impl Overage {
    pub fn as_str(self) -> &'static str {
        match self {
            Overage::Allow => "allow",
            Overage::Deny => "deny",
        }
    }
}

/// A parent's subscription to a credit pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub pool: String,
    /// Credits included in the subscription.
    pub credits: u64,
    pub overage: Overage,
}

/// One account of the key tree. The key itself is never part of it: the store keeps only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub role: Role,
    pub status: Status,
    /// As the user typed it; uniqueness is checked on [`normalize_email`].
    pub email: String,
    /// The parent's id for a child; `None` for a parent.
    pub parent_id: Option<String>,
    /// Parents only: the enterprise team feature (inviting children).
    #[serde(default)]
    pub team: bool,
    /// Parents only: this tenant's rate-limit overrides.
    #[serde(default, skip_serializing_if = "LimitOverrides::is_empty")]
    pub limits: LimitOverrides,
    /// Unix seconds.
    pub created_at: u64,
}

impl Account {
    /// The id usage rolls up to: the parent's for a child, its own for a parent.
    pub fn tenant_id(&self) -> &str {
        self.parent_id.as_deref().unwrap_or(&self.id)
    }

    pub fn is_parent(&self) -> bool {
        self.role == Role::Parent
    }
}

/// Emails are compared case-insensitively (and without surrounding blanks), with Unicode's full
/// lower-case mapping (`ÜNÏ@EXÄMPLE.com` is `ünï@exämple.com`). On ASCII this is exactly the
/// ASCII lower case, so the indexes written before it kept their ASCII entries valid. No Unicode
/// normalization (NFC): a precomposed and a decomposed `ü` stay different addresses.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A deliberately plain check: one `@`, a non-empty local part, a dotted domain, no blanks or
/// control characters, at most 254 bytes. Deliverability is the invitation mail's problem.
pub fn is_valid_email(email: &str) -> bool {
    let e = email.trim();
    if e.is_empty() || e.len() > 254 || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(is_valid_email("a@b.co"));
        assert!(is_valid_email(" Ann.Lee+x@Example.com "));
        for bad in [
            "", "a", "a@b", "@b.co", "a@@b.co", "a b@c.co", "a@.co", "a@b.", "a@b..co",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
        assert_eq!(normalize_email(" Ann@Example.COM "), "ann@example.com");
    }

    #[test]
    fn emails_compare_case_insensitively_beyond_ascii() {
        assert_eq!(
            normalize_email("ÜNÏ@exämple.com"),
            normalize_email("ünï@EXÄMPLE.com")
        );
        assert_eq!(normalize_email(" ÜNÏ@EXÄMPLE.COM "), "ünï@exämple.com");
        assert_eq!(normalize_email("ΣΟΦΙΑ@Example.gr"), "σοφια@example.gr");
        assert_ne!(
            normalize_email("ü@example.com"),
            normalize_email("u@example.com")
        );
        // ASCII exactly as before: the ASCII lower case of the trimmed address.
        for ascii in ["Ann.Lee+X@Example.COM", "a_B-9@x.CO", "ZZ@ZZ.ZZ"] {
            assert_eq!(normalize_email(ascii), ascii.to_ascii_lowercase());
        }
    }
}
