//! Key-tree reads, and the helpers the writes share: loading an account as stored (for
//! compare-and-set), and claiming and releasing the global email and key indexes.

use redis::AsyncCommands;
use tollgate_core::{Account, KeyHash, Role, Status, Subscription};

use super::conn::store_err;
use super::keys::{from_json, to_json, EmailClaim, KeyOwner, TenantKeys};
use super::{now_ms, Inner};
use crate::{StoreError, StoreResult};

/// A claim of an email whose account does not exist is taken over only after this long, so a
/// creation still under way (claim written, account not yet) is never overtaken.
const STALE_CLAIM_MS: u64 = 5 * 60 * 1000;

/// An account as stored: its tenant's keys, the exact JSON (the expected value of a
/// compare-and-set) and the decoded record.
pub(super) struct Stored {
    pub(super) tenant: String,
    pub(super) tk: TenantKeys,
    pub(super) raw: String,
    pub(super) account: Account,
}

/// A claim this writer holds on a global index key, and whether this call made it (only then may
/// a refused write roll it back).
pub(super) struct Claim {
    pub(super) key: String,
    pub(super) raw: String,
    pub(super) fresh: bool,
}

impl Inner {
    pub(super) async fn ping(&self) -> StoreResult<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn())
            .await
            .map(drop)
            .map_err(store_err)
    }

    /// The tenant an account id belongs to, from the account index.
    pub(super) async fn tenant_of(&self, id: &str) -> StoreResult<Option<String>> {
        self.conn()
            .get(self.keys.account_index(id))
            .await
            .map_err(store_err)
    }

    /// The account as stored, deleted ones included.
    pub(super) async fn stored(&self, id: &str) -> StoreResult<Option<Stored>> {
        let Some(tenant) = self.tenant_of(id).await? else {
            return Ok(None);
        };
        self.stored_in(tenant, id).await
    }

    /// The account as stored in a tenant known already (without the account index, which on
    /// Cluster may be on another master); `None` if the tenant has no such account.
    pub(super) async fn stored_in(&self, tenant: String, id: &str) -> StoreResult<Option<Stored>> {
        let tk = self.keys.tenant(&tenant);
        let raw: Option<String> = self.conn().get(tk.account(id)).await.map_err(store_err)?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let account: Account = from_json(&raw, "account")?;
        if account.id != id {
            return Err(StoreError::Internal(format!(
                "redis store: record of `{id}` holds account `{}`",
                account.id
            )));
        }
        Ok(Some(Stored {
            tenant,
            tk,
            raw,
            account,
        }))
    }

    /// The account unless it is missing or deleted (`NotFound` either way, as in every write).
    pub(super) async fn live(&self, id: &str) -> StoreResult<Stored> {
        match self.stored(id).await? {
            Some(s) if s.account.status != Status::Deleted => Ok(s),
            _ => Err(StoreError::NotFound(id.to_owned())),
        }
    }

    /// A live parent: its own tenant, role parent.
    pub(super) async fn live_parent(&self, id: &str) -> StoreResult<Stored> {
        let s = self.live(id).await?;
        if s.account.role != Role::Parent || s.tenant != id {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        Ok(s)
    }

    pub(super) async fn account(&self, id: &str) -> StoreResult<Option<Account>> {
        Ok(self.stored(id).await?.map(|s| s.account))
    }

    pub(super) async fn account_by_key(&self, key: &KeyHash) -> StoreResult<Option<Account>> {
        let pointer: Option<String> = self
            .conn()
            .get(self.keys.key_index(key))
            .await
            .map_err(store_err)?;
        let Some(pointer) = pointer else {
            return Ok(None);
        };
        let owner: KeyOwner = from_json(&pointer, "key index")?;
        let tk = self.keys.tenant(&owner.tenant);
        // The pointer alone is not trusted: the tenant must still map the account to this key.
        let raw: Option<String> = self
            .scripts
            .resolve_key
            .key(tk.account(&owner.account))
            .key(tk.key_of())
            .arg(&owner.account)
            .arg(key.to_hex())
            .invoke_async(&mut self.conn())
            .await
            .map_err(store_err)?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let account: Account = from_json(&raw, "account")?;
        Ok((account.id == owner.account).then_some(account))
    }

    pub(super) async fn children(&self, parent_id: &str) -> StoreResult<Vec<Account>> {
        let tk = self.keys.tenant(parent_id);
        Ok(self
            .stored_children(&tk)
            .await?
            .into_iter()
            .map(|(_, account)| account)
            .collect())
    }

    /// A tenant's children in creation order, each with its JSON as stored.
    pub(super) async fn stored_children(
        &self,
        tk: &TenantKeys,
    ) -> StoreResult<Vec<(String, Account)>> {
        let ids: Vec<String> = self
            .conn()
            .lrange(tk.children(), 0, -1)
            .await
            .map_err(store_err)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let record_keys: Vec<String> = ids.iter().map(|id| tk.account(id)).collect();
        let raws: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&record_keys)
            .query_async(&mut self.conn())
            .await
            .map_err(store_err)?;
        ids.iter()
            .zip(raws)
            .map(|(id, raw)| {
                let raw = raw.ok_or_else(|| {
                    StoreError::Internal(format!("redis store: child `{id}` has no record"))
                })?;
                let account = from_json(&raw, "child account")?;
                Ok((raw, account))
            })
            .collect()
    }

    pub(super) async fn subscriptions(&self, parent_id: &str) -> StoreResult<Vec<Subscription>> {
        let tk = self.keys.tenant(parent_id);
        let raws: Vec<(String, String)> = self
            .conn()
            .hgetall(tk.subscriptions())
            .await
            .map_err(store_err)?;
        let mut subs = raws
            .iter()
            .map(|(_, raw)| from_json::<Subscription>(raw, "subscription"))
            .collect::<StoreResult<Vec<_>>>()?;
        subs.sort_by(|a, b| a.pool.cmp(&b.pool));
        Ok(subs)
    }

    // ---- global index claims ----

    /// Compare-and-set of one string key (`""` = absent / delete). True if it was done.
    pub(super) async fn cas(&self, key: &str, expected: &str, new: &str) -> StoreResult<bool> {
        let done: i64 = self
            .scripts
            .cas
            .key(key)
            .arg(expected)
            .arg(new)
            .invoke_async(&mut self.conn())
            .await
            .map_err(store_err)?;
        Ok(done == 1)
    }

    /// `SET key value NX`: true if set.
    async fn set_nx(&self, key: &str, value: &str) -> StoreResult<bool> {
        self.conn().set_nx(key, value).await.map_err(store_err)
    }

    /// Claims `email` for `account`; `EmailTaken` if a live account (or a creation under way)
    /// holds it. A claim left by a writer that died, or by a deleted account, is taken over; so
    /// is one of an invited child whose invitation expired at `now` (unix seconds), which is
    /// deleted first (see `invitations.rs`).
    pub(super) async fn claim_email(
        &self,
        email: &str,
        account: &str,
        now: u64,
    ) -> StoreResult<Claim> {
        let key = self.keys.email_index(email);
        let mine = to_json(
            &EmailClaim {
                account: account.to_owned(),
                at_ms: now_ms(),
            },
            "email claim",
        )?;
        // A few rounds: the holder may vanish or be replaced between our reads.
        for _ in 0..4 {
            if self.set_nx(&key, &mine).await? {
                return Ok(Claim {
                    key,
                    raw: mine,
                    fresh: true,
                });
            }
            let current: Option<String> = self.conn().get(&key).await.map_err(store_err)?;
            let Some(current) = current else {
                continue;
            };
            let claim: EmailClaim = from_json(&current, "email claim")?;
            if claim.account == account {
                // Our own claim from an earlier attempt of this same write.
                return Ok(Claim {
                    key,
                    raw: current,
                    fresh: false,
                });
            }
            if !self.claim_is_stale(&claim, now).await? {
                return Err(StoreError::EmailTaken);
            }
            if self.cas(&key, &current, &mine).await? {
                return Ok(Claim {
                    key,
                    raw: mine,
                    fresh: true,
                });
            }
        }
        Err(StoreError::EmailTaken)
    }

    async fn claim_is_stale(&self, claim: &EmailClaim, now: u64) -> StoreResult<bool> {
        Ok(match self.stored(&claim.account).await? {
            Some(holder) if holder.account.status == Status::Invited => {
                self.expire_invitee(holder, now).await?
            }
            Some(holder) => holder.account.status == Status::Deleted,
            None => now_ms().saturating_sub(claim.at_ms) > STALE_CLAIM_MS,
        })
    }

    /// Frees the email if `account` holds it (deletion).
    pub(super) async fn free_email(&self, email: &str, account: &str) -> StoreResult<()> {
        let key = self.keys.email_index(email);
        let current: Option<String> = self.conn().get(&key).await.map_err(store_err)?;
        if let Some(current) = current {
            let claim: EmailClaim = from_json(&current, "email claim")?;
            if claim.account == account {
                self.cas(&key, &current, "").await?;
            }
        }
        Ok(())
    }

    /// Points `key` at `owner`; `Conflict` if it points elsewhere already.
    pub(super) async fn claim_key(&self, key: &KeyHash, owner: &KeyOwner) -> StoreResult<Claim> {
        let index = self.keys.key_index(key);
        let mine = to_json(owner, "key index")?;
        if self.set_nx(&index, &mine).await? {
            return Ok(Claim {
                key: index,
                raw: mine,
                fresh: true,
            });
        }
        let current: Option<String> = self.conn().get(&index).await.map_err(store_err)?;
        if current.as_deref() == Some(mine.as_str()) {
            return Ok(Claim {
                key: index,
                raw: mine,
                fresh: false,
            });
        }
        Err(StoreError::Conflict(format!(
            "key {} is in use already",
            key.short()
        )))
    }

    /// Removes the pointer of `key` if it still points at `owner`.
    pub(super) async fn drop_key_pointer(
        &self,
        key: &KeyHash,
        owner: &KeyOwner,
    ) -> StoreResult<()> {
        let mine = to_json(owner, "key index")?;
        self.cas(&self.keys.key_index(key), &mine, "").await?;
        Ok(())
    }

    /// Claims the account index for a new account: `Conflict` if the id belongs to another tenant.
    pub(super) async fn claim_account_id(&self, id: &str, tenant: &str) -> StoreResult<Claim> {
        let key = self.keys.account_index(id);
        if self.set_nx(&key, tenant).await? {
            return Ok(Claim {
                key,
                raw: tenant.to_owned(),
                fresh: true,
            });
        }
        match self.tenant_of(id).await? {
            Some(t) if t == tenant => Ok(Claim {
                key,
                raw: t,
                fresh: false,
            }),
            _ => Err(StoreError::Conflict(format!(
                "account `{id}` exists already"
            ))),
        }
    }

    /// Undoes the claims this call made, after a write that was refused (never after one whose
    /// outcome is unknown). Best effort: a claim left behind is harmless (see the module docs).
    pub(super) async fn roll_back(&self, claims: &[&Claim]) {
        for claim in claims.iter().filter(|c| c.fresh) {
            if let Err(e) = self.cas(&claim.key, &claim.raw, "").await {
                tracing::warn!(error = %e, "redis store: could not roll back a claim");
            }
        }
    }
}
