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

/// A tenant's override of one role's configured limit, field by field: a field it leaves `None`
/// follows the configured default, whatever that is when the limit is applied (a reload
/// included). Stored as `{"rps": .., "burst": ..}` with absent fields left out, so records written
/// when both fields were required read as an override of both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl LimitOverride {
    /// The limit in force: each overridden field, else the default's.
    pub fn apply(self, default: Limit) -> Limit {
        Limit {
            rps: self.rps.unwrap_or(default.rps),
            burst: self.burst.unwrap_or(default.burst),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rps.is_none() && self.burst.is_none()
    }
}

impl From<Limit> for LimitOverride {
    fn from(l: Limit) -> LimitOverride {
        LimitOverride {
            rps: Some(l.rps),
            burst: Some(l.burst),
        }
    }
}

/// Per-tenant overrides of the configured `[limits]`, set by the operator on the parent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<LimitOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<LimitOverride>,
}

impl LimitOverrides {
    pub fn is_empty(&self) -> bool {
        self.parent.is_none() && self.child.is_none()
    }

    /// The limit in force for a role, given the configured defaults of that role.
    pub fn limit_for(&self, role: Role, default: Limit) -> Limit {
        let o = match role {
            Role::Parent => self.parent,
            Role::Child => self.child,
        };
        o.map_or(default, |o| o.apply(default))
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
/// lower-case mapping (`ÜNÏ@EXÄMPLE.com` is `ünï@exämple.com`), then the word-final sigma `ς`
/// folded to `σ`: `to_lowercase` maps a final `Σ` to `ς`, so `ΟΔΟΣ` and `οδοσ` would otherwise be
/// two addresses. On ASCII this is exactly the ASCII lower case, so the indexes written before it
/// kept their ASCII entries valid. No Unicode normalization (NFC): a precomposed and a decomposed
/// `ü` stay different addresses.
pub fn normalize_email(email: &str) -> String {
    let lower = email.trim().to_lowercase();
    if lower.contains('ς') {
        lower.replace('ς', "σ")
    } else {
        lower
    }
}

/// A practical addr-spec (RFC 5322 without quoted strings, comments or domain literals, with
/// RFC 6531's non-ASCII characters), checked after trimming:
/// - one `@`; at most 254 bytes in all, 64 in the local part;
/// - a local part of dot-separated atoms (no leading, trailing or double dot) of ASCII letters,
///   digits and ``!#$%&'*+-/=?^_`{|}~``, or any non-ASCII character that is not a space or a
///   control character;
/// - a domain of at least two dot-separated labels of 1 to 63 bytes, each letters, digits and `-`
///   (not first or last), non-ASCII letters and digits allowed (internationalized names).
///
/// So no spaces, control characters or `<>()[]\,;:"` anywhere. Deliverability is the invitation
/// mail's problem.
pub fn is_valid_email(email: &str) -> bool {
    let e = email.trim();
    if e.len() > 254 {
        return false;
    }
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    let non_ascii_ok = |c: char| !c.is_ascii() && !c.is_whitespace() && !c.is_control();
    let atext =
        |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || non_ascii_ok(c);
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext));
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| {
                c.is_ascii_alphanumeric() || c == '-' || (non_ascii_ok(c) && c.is_alphanumeric())
            })
    };
    local_ok && domain.len() <= 255 && domain.contains('.') && domain.split('.').all(label_ok)
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
    }

    #[test]
    fn emails_are_a_practical_addr_spec() {
        for good in [
            "a@b.co",
            "first.last@demo.example",
            "a+tag@sub.demo.example",
            "o'brien@demo.example",
            "x!#$%&'*+-/=?^_`{|}~@demo.example",
            "a@x-y.demo.example",
            "a@1.2.example",
            "ünï@exämple.com",
            "ΟΔΟΣ@greek.example",
            "用户@例子.广告",
        ] {
            assert!(is_valid_email(good), "{good} refused");
        }
        let long_label = format!("a@{}.example", "d".repeat(64));
        let long_local = format!("{}@demo.example", "l".repeat(65));
        let long_total = format!("a@{}.example", vec!["d".repeat(60); 5].join("."));
        for bad in [
            "<a>@demo.example",
            "a,b@demo.example",
            "a;b@demo.example",
            ".a@demo.example",
            "a.@demo.example",
            "a..b@demo.example",
            "a@-demo.example",
            "a@demo-.example",
            "a@demo.example-",
            "<script>@c.example",
            "a:b@demo.example",
            "a(b)@demo.example",
            "a[b]@demo.example",
            "a\\b@demo.example",
            "\"a\"@demo.example",
            "a\tb@demo.example",
            "a\u{7f}@demo.example",
            "a\u{85}@demo.example",
            "a\u{3000}b@demo.example",
            "a@demo.example\u{0}",
            "a@[127.0.0.1]",
            "a@demo_x.example",
            "a@demo.exa mple",
            "a@localhost",
            &long_label,
            &long_local,
            &long_total,
        ] {
            assert!(!is_valid_email(bad), "{bad:?} accepted");
        }
        assert!(is_valid_email(&format!("{}@demo.example", "l".repeat(64))));
        assert!(is_valid_email(&format!("a@{}.example", "d".repeat(63))));
        assert_eq!(normalize_email(" Ann@Example.COM "), "ann@example.com");
    }

    #[test]
    fn limit_overrides_apply_field_by_field_and_read_old_records() {
        let default = Limit {
            rps: 50,
            burst: 100,
        };
        let burst_only = LimitOverride {
            rps: None,
            burst: Some(5),
        };
        assert_eq!(burst_only.apply(default), Limit { rps: 50, burst: 5 });
        let o = LimitOverrides {
            parent: None,
            child: Some(burst_only),
        };
        assert_eq!(
            o.limit_for(Role::Child, default),
            Limit { rps: 50, burst: 5 }
        );
        assert_eq!(o.limit_for(Role::Parent, default), default);
        // A record written when an override had both fields reads as both overridden.
        let old: LimitOverrides =
            serde_json::from_str(r#"{"parent":{"rps":10,"burst":20}}"#).unwrap();
        assert_eq!(old.parent, Some(Limit { rps: 10, burst: 20 }.into()));
        assert_eq!(old.child, None);
        // Both set: the same JSON as before; one set: only that field is written.
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"parent":{"rps":10,"burst":20}}"#
        );
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            r#"{"child":{"burst":5}}"#
        );
        let back: LimitOverrides = serde_json::from_str(r#"{"child":{"burst":5}}"#).unwrap();
        assert_eq!(back, o);
    }

    #[test]
    fn emails_compare_case_insensitively_beyond_ascii() {
        assert_eq!(
            normalize_email("ÜNÏ@exämple.com"),
            normalize_email("ünï@EXÄMPLE.com")
        );
        assert_eq!(normalize_email(" ÜNÏ@EXÄMPLE.COM "), "ünï@exämple.com");
        assert_eq!(normalize_email("ΣΟΦΙΑ@Example.gr"), "σοφια@example.gr");
        // A word-final capital sigma lower-cases to ς: folded to σ, so both spellings are one.
        assert_eq!(
            normalize_email("ΟΔΟΣ@greek.example"),
            normalize_email("οδοσ@greek.example")
        );
        assert_eq!(normalize_email("οδος@greek.example"), "οδοσ@greek.example");
        assert_eq!(normalize_email("ΟΔΟΣ@GREEK.example"), "οδοσ@greek.example");
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
