//! Redis key names (the data model in the parent module's docs) and the small values stored in the
//! global indexes.

use std::fmt::Write;

use serde::{Deserialize, Serialize};
use tollgate_core::{normalize_email, KeyHash};

use crate::{StoreError, StoreResult};

/// Separates the parts of a usage field (`<day>␟<product>␟<pool>`): product and pool names are
/// configuration identifiers, which never contain control characters.
pub(super) const FIELD_SEP: char = '\u{1f}';

// Suffixes of the tenant keys the usage flush writes with [`Keys::write_tenant_key`]; the first
// two are also named by [`TenantKeys`] (see there).
pub(super) const USAGE: &str = ":u:";
pub(super) const POOL_USAGE: &str = ":pool";
/// Suffix of a tenant's hash on Redis Cluster: writer (a gateway process) -> `<seq> <unix s>`,
/// the last of its usage batches applied to this tenant and when.
pub(super) const WRITERS: &str = ":w";

/// Builds every key from the configured prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    // ---- global indexes, each key in its own slot ----

    /// Key hash -> [`KeyOwner`] JSON.
    pub(super) fn key_index(&self, key: &KeyHash) -> String {
        format!("{}:k:{}", self.prefix, key.to_hex())
    }

    /// Account id -> its tenant's id (its own for a parent). Written before the tenant's records.
    pub(super) fn account_index(&self, id: &str) -> String {
        format!("{}:a:{id}", self.prefix)
    }

    /// Normalized email -> [`EmailClaim`] JSON.
    pub(super) fn email_index(&self, email: &str) -> String {
        format!("{}:e:{}", self.prefix, normalize_email(email))
    }

    /// Invitation token hash -> [`InvitationRecord`] JSON.
    pub(super) fn invitation(&self, token: &KeyHash) -> String {
        format!("{}:i:{}", self.prefix, token.to_hex())
    }

    /// The change feed (a stream).
    pub(super) fn feed(&self) -> String {
        format!("{}:feed", self.prefix)
    }

    /// Writes the key of a writer's (a gateway process's) usage marker on a single server into
    /// `buf`, cleared first: `<batch number> <group number>` of the last group of its usage
    /// batches applied.
    pub(super) fn usage_writer<'b>(&self, buf: &'b mut String, writer: &str) -> &'b str {
        buf.clear();
        for part in [&*self.prefix, ":uw:", writer] {
            buf.push_str(part);
        }
        buf
    }

    // ---- one tenant's keys, all under the hash tag `{<prefix>:t:<tenant>}` ----

    pub(super) fn tenant(&self, tenant: &str) -> TenantKeys {
        TenantKeys {
            tag: format!("{{{}:t:{tenant}}}", self.prefix),
        }
    }

    /// Writes the tenant key `<tag><suffix><id>` (the name [`TenantKeys`] gives it) into `buf`,
    /// cleared first: the usage flush names thousands of keys, and this names them without an
    /// allocation each.
    pub(super) fn write_tenant_key<'b>(
        &self,
        buf: &'b mut String,
        tenant: &str,
        suffix: &str,
        id: &str,
    ) -> &'b str {
        buf.clear();
        for part in ["{", &self.prefix, ":t:", tenant, "}", suffix, id] {
            buf.push_str(part);
        }
        buf
    }
}

/// The keys of one tenant; they share a hash tag, so one Lua script may touch them all in Cluster.
#[derive(Debug, Clone)]
pub(super) struct TenantKeys {
    tag: String,
}

impl TenantKeys {
    /// An account of the tenant (the parent or a child): its [`tollgate_core::Account`] JSON.
    pub(super) fn account(&self, id: &str) -> String {
        format!("{}:a:{id}", self.tag)
    }

    /// Hash: account id -> hex hash of its current key (no field for invited or deleted accounts).
    /// The source of truth for "which key is this account's": the global key index only points here.
    pub(super) fn key_of(&self) -> String {
        format!("{}:keyof", self.tag)
    }

    /// List of child ids in creation order (deleted ones stay).
    pub(super) fn children(&self) -> String {
        format!("{}:children", self.tag)
    }

    /// Hash: invited child id -> `<token hash hex> <expires_at>`: its one current invitation
    /// (the source of truth: a token whose child's entry names another token is void).
    pub(super) fn invitations(&self) -> String {
        format!("{}:inv", self.tag)
    }

    /// Hash: pool -> [`tollgate_core::Subscription`] JSON.
    pub(super) fn subscriptions(&self) -> String {
        format!("{}:subs", self.tag)
    }

    /// Hash of one account's usage: `r␟<day>␟<product>␟<pool>` -> requests and
    /// `c␟<day>␟<product>␟<pool>` -> credits (integers, so HINCRBY adds them exactly).
    pub(super) fn usage(&self, account_id: &str) -> String {
        format!("{}{USAGE}{account_id}", self.tag)
    }

    /// Hash: pool -> all credits the tenant has ever used from it.
    pub(super) fn pool_usage(&self) -> String {
        format!("{}{POOL_USAGE}", self.tag)
    }

    /// Hash: pool -> credits leased to nodes and not given back.
    pub(super) fn leases(&self) -> String {
        format!("{}:lease", self.tag)
    }

    /// Hash: `<pool>␟<node>` -> the node's last lease operation on the pool (see `LeaseOp`).
    pub(super) fn lease_ops(&self) -> String {
        format!("{}:leaseop", self.tag)
    }
}

/// Writes the usage hash field of a cell's requests (or credits) into `buf`, cleared first:
/// `r␟<day>␟<product>␟<pool>` (or `c␟...`).
pub(super) fn write_usage_field<'b>(
    buf: &'b mut String,
    credits: bool,
    day: i32,
    product: &str,
    pool: &str,
) -> &'b str {
    buf.clear();
    buf.push(if credits { 'c' } else { 'r' });
    buf.push(FIELD_SEP);
    // Writing to a String cannot fail.
    let _ = write!(buf, "{day}");
    for part in [product, pool] {
        buf.push(FIELD_SEP);
        buf.push_str(part);
    }
    buf
}

/// Splits a usage field into (is_credits, day, product, pool).
pub(super) fn parse_usage_field(field: &str) -> Option<(bool, i32, &str, &str)> {
    let mut parts = field.splitn(4, FIELD_SEP);
    let credits = match parts.next()? {
        "r" => false,
        "c" => true,
        _ => return None,
    };
    let day = parts.next()?.parse().ok()?;
    Some((credits, day, parts.next()?, parts.next()?))
}

/// Value of the key index: which account of which tenant a key hash belongs to. Only a pointer:
/// the key resolves only if the tenant's `keyof` hash agrees (see `RedisStore::account_by_key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct KeyOwner {
    #[serde(rename = "t")]
    pub(super) tenant: String,
    #[serde(rename = "a")]
    pub(super) account: String,
}

/// Value of the email index: the account that claimed the email and when (unix ms). The time lets
/// a later writer tell a claim whose creator crashed before writing the account from one whose
/// creation is still under way (see `tree::claim_email`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct EmailClaim {
    #[serde(rename = "a")]
    pub(super) account: String,
    #[serde(rename = "at")]
    pub(super) at_ms: u64,
}

/// Value of an invitation: the invited child, its tenant and the expiry (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct InvitationRecord {
    #[serde(rename = "c")]
    pub(super) child: String,
    #[serde(rename = "t")]
    pub(super) tenant: String,
    #[serde(rename = "x")]
    pub(super) expires_at: u64,
}

pub(super) fn to_json<T: Serialize>(value: &T, what: &str) -> StoreResult<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Internal(format!("redis store: encode {what}: {e}")))
}

pub(super) fn from_json<'a, T: Deserialize<'a>>(json: &'a str, what: &str) -> StoreResult<T> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Internal(format!("redis store: decode {what}: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tenant_keys_share_one_hash_tag() {
        let k = Keys::new("tg");
        let t = k.tenant("acc_1");
        for key in [
            t.account("acc_2"),
            t.key_of(),
            t.children(),
            t.subscriptions(),
            t.usage("acc_2"),
            t.pool_usage(),
            t.leases(),
        ] {
            assert!(key.starts_with("{tg:t:acc_1}:"), "{key}");
        }
        assert_eq!(k.email_index(" A@B.com "), "tg:e:a@b.com");
        let mut buf = String::from("left over");
        for (suffix, id, named) in [
            (USAGE, "acc_2", t.usage("acc_2")),
            (POOL_USAGE, "", t.pool_usage()),
            (WRITERS, "", "{tg:t:acc_1}:w".to_owned()),
        ] {
            assert_eq!(k.write_tenant_key(&mut buf, "acc_1", suffix, id), named);
        }
        assert_eq!(t.usage("acc_2"), "{tg:t:acc_1}:u:acc_2");
    }

    #[test]
    fn usage_fields_round_trip() {
        let r = write_usage_field(&mut String::new(), false, -3, "reverse-whois", "drs").to_owned();
        let c = write_usage_field(&mut String::new(), true, -3, "reverse-whois", "drs").to_owned();
        assert_eq!(
            parse_usage_field(&r),
            Some((false, -3, "reverse-whois", "drs"))
        );
        assert_eq!(
            parse_usage_field(&c),
            Some((true, -3, "reverse-whois", "drs"))
        );
        assert_eq!(r, "r\u{1f}-3\u{1f}reverse-whois\u{1f}drs");
        assert_eq!(parse_usage_field("x"), None);
    }
}
