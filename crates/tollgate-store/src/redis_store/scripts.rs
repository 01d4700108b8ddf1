//! The Lua scripts: every multi-key update of one tenant, and the few compare-and-set steps on the
//! global indexes. Each runs atomically on the node that owns its keys (all of one script's keys
//! share a slot), and is sent as EVALSHA, loaded on first use (`redis::Script` does both).
//!
//! Conventions: a script answers with a status word first (`ok`, `stale`, `exists`, `missing`), so
//! expected outcomes are values, not Lua errors: a Lua error halfway would leave half a write, which
//! is why the scripts also check everything before they write anything. Numbers that may exceed
//! 2^53 (usage counts) are never added in Lua (its numbers are doubles): HINCRBY adds them as
//! 64-bit integers inside Redis, and saturates instead of failing on overflow. Credit leases do
//! their arithmetic in Lua, exact for subscriptions up to 2^53 credits.

use redis::Script;

/// Creates a parent: its record, its key and its subscriptions. KEYS: account, keyof, subs.
/// ARGV: account JSON, id, key hex, then (pool, subscription JSON) pairs.
const CREATE_PARENT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
return 'ok'
";

/// Adds an invited child under a parent that is still as the caller read it, with its current
/// invitation. KEYS: parent account, child account, children, invitations.
/// ARGV: parent JSON as read, child id, child JSON, `<token hex> <expires_at>`.
const INVITE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'stale' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'exists' end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[4])
return 'ok'
";

/// Lua helper: whether an invited child's current invitation (`<token hex> <expires_at>` in the
/// invitations hash) expired at `now`. No entry (invited before entries existed): unknown, so no.
const EXPIRED: &str = r"
local function expired(inv, id, now)
  local cur = redis.call('HGET', inv, id)
  if not cur then return false end
  local x = tonumber(string.match(cur, ' (%d+)$') or '')
  return x ~= nil and now >= x
end
";

/// Gives an invited child whose invitation expired a new one, if the parent and the child are
/// still as the caller read them. KEYS: parent account, child account, invitations.
/// ARGV: parent JSON as read, child JSON as read, child id, `<token hex> <expires_at>`, now.
/// Returns {status (`ok`, `stale`, `held`: not expired), the entry it replaced}.
const REINVITE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'stale', false} end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return {'stale', false} end
if not expired(KEYS[3], ARGV[3], tonumber(ARGV[5])) then return {'held', false} end
local old = redis.call('HGET', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
return {'ok', old}
";

/// Deletes an invited child whose invitation expired, if it is still as the caller read it, so
/// its email can go to another account. KEYS: child account, invitations.
/// ARGV: child JSON as read, child JSON deleted, child id, now.
/// Returns {status (`ok`, `stale`, `held`), the invitation entry it removed}.
const EXPIRE_INVITEE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'stale', false} end
if not expired(KEYS[2], ARGV[3], tonumber(ARGV[4])) then return {'held', false} end
local old = redis.call('HGET', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[3])
return {'ok', old}
";

/// Accepts an invitation: the child, still as read (so still invited), becomes active with its
/// key, if the token is its current invitation (or it has no entry: invited before entries
/// existed). KEYS: child account, keyof, invitations.
/// ARGV: child JSON as read, child JSON active, child id, key hex, token hex.
/// Returns `ok`, `stale` or `void` (another invitation replaced this one).
const ACCEPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'stale' end
local cur = redis.call('HGET', KEYS[3], ARGV[3])
if cur and string.match(cur, '^(%x+) ') ~= ARGV[5] then return 'void' end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('HDEL', KEYS[3], ARGV[3])
return 'ok'
";

/// Compare-and-set of an account record, with an optional change of its key.
/// KEYS: account, keyof. ARGV: JSON as read, new JSON, id, key op (`keep`, `set`, `del`), new key
/// hex, and for `set` the key hex the account must still have (a rotation's compare-and-swap: a
/// concurrent rotation with the same key that ran first makes this one `moved`, changing nothing).
/// Returns {status (`ok`, `stale`, `moved`), the key hex the account had before}.
const UPDATE_ACCOUNT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'stale', false} end
local old = redis.call('HGET', KEYS[2], ARGV[3])
if ARGV[4] == 'set' and old ~= ARGV[6] then return {'moved', old} end
if ARGV[2] ~= ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end
if ARGV[4] == 'set' then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[5])
elseif ARGV[4] == 'del' then
  redis.call('HDEL', KEYS[2], ARGV[3])
end
return {'ok', old}
";

/// Deletes a parent and its children in one step, if the parent, its list of children and each
/// live child are still as the caller read them: every record set to its deleted JSON and the
/// parent's key unmapped. The children's keys stay mapped, so they resolve to a deleted child of
/// a deleted parent and are refused as `parent_disabled`.
/// KEYS: parent account, keyof, children, then each live child's account.
/// ARGV: parent JSON as read, parent JSON deleted, parent id, length of the children list as
/// read, then per live child (in KEYS order): id, JSON as read, JSON deleted.
/// Returns {status, the parent's key hex before (false: none)}.
const DELETE_TENANT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'stale', false} end
if redis.call('LLEN', KEYS[3]) ~= tonumber(ARGV[4]) then return {'stale', false} end
local n = #KEYS - 3
for i = 1, n do
  if redis.call('GET', KEYS[3 + i]) ~= ARGV[3 * i + 3] then return {'stale', false} end
end
redis.call('SET', KEYS[1], ARGV[2])
local old = redis.call('HGET', KEYS[2], ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[3])
for i = 1, n do
  redis.call('SET', KEYS[3 + i], ARGV[3 * i + 4])
end
return {'ok', old}
";

/// Sets a subscription of a parent that is still as the caller read it.
/// KEYS: parent account, subs. ARGV: parent JSON as read, pool, subscription JSON.
const PUT_SUBSCRIPTION: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'stale' end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 'ok'
";

/// The account JSON if the key is still the account's current one, else nil.
/// KEYS: account, keyof. ARGV: id, key hex.
const RESOLVE_KEY: &str = r"
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return false end
return redis.call('GET', KEYS[1])
";

/// What both usage scripts share: `add` (HINCRBY, pinning a counter that would overflow at
/// i64::MAX), `below` (decimal strings compared exactly, with no float rounding: shorter is
/// smaller) and `apply`, which adds one tenant's deltas: `p` is the index in KEYS of the tenant's
/// pool usage, its accounts' usage hashes follow it, and its deltas start at `ARGV[a]`, six
/// arguments each: (index of its usage hash counted from the pool-usage key, requests field,
/// credits field, pool, requests, credits).
const USAGE_HELPERS: &str = r"
local function add(key, field, n)
  local r = redis.pcall('HINCRBY', key, field, n)
  if type(r) == 'table' and r.err then
    redis.call('HSET', key, field, '9223372036854775807')
  end
end
local function below(x, y)
  return #x < #y or (#x == #y and x < y)
end
local function apply(p, a, deltas)
  local pool = KEYS[p]
  for i = a, a + (deltas - 1) * 6, 6 do
    local h = KEYS[p + tonumber(ARGV[i])]
    add(h, ARGV[i + 1], ARGV[i + 4])
    add(h, ARGV[i + 2], ARGV[i + 5])
    add(pool, ARGV[i + 3], ARGV[i + 5])
  end
end
";

/// Tenants' parts of a usage batch on Redis Cluster (one tenant a call there, as their keys span
/// slots), each applied at most once: a tenant's writers hash holds the number of the last batch
/// of each writer applied to it, and a part numbered at or below it is a retry that landed before
/// (skipped). A writer's first part on a tenant whose hash has 16 or more writers first drops the
/// writers not heard from within the retention (processes long gone), so the hash stays as small
/// as the number of live gateway processes.
/// KEYS: per tenant, its writers hash, its pool usage, then the usage hash of each of its
/// accounts. ARGV: writer, batch number (decimal), now (unix s), retention (s), then per tenant:
/// (number of account hashes, number of deltas) and its deltas (see `USAGE_HELPERS`). Returns how
/// many parts were applied.
const RECORD_USAGE_PARTS: &str = r"
local writer, seq, now, keep = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local stamp = seq .. ' ' .. ARGV[3]
local k, a, applied = 1, 5, 0
while a <= #ARGV do
  local accounts, deltas = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local w = KEYS[k]
  local last = redis.call('HGET', w, writer)
  if not last or below(string.match(last, '^%d+') or '', seq) then
    if not last and redis.call('HLEN', w) >= 16 then
      local all = redis.call('HGETALL', w)
      for i = 1, #all, 2 do
        local at = tonumber(string.match(all[i + 1], ' (%d+)$') or '0')
        if at < now - keep then redis.call('HDEL', w, all[i]) end
      end
    end
    apply(k + 1, a, deltas)
    redis.call('HSET', w, writer, stamp)
    applied = applied + 1
  end
  k = k + 2 + accounts
  a = a + deltas * 6
end
return applied
";

/// A group of tenants' parts of a usage batch on a single server, applied at most once as a
/// whole: the writer's marker holds `<batch number> <group number>` of the last group it applied,
/// and a group at or below it is a retry that landed before (skipped). A writer sends its batches
/// in order, the next only once the last was taken, and a retried batch is the same batch split
/// into the same groups in the same order, so this one key per writer (expiring after the
/// retention) is all the memory exactly-once takes: no per-tenant record, two commands a tenant
/// fewer than `RECORD_USAGE_PARTS`.
/// KEYS: the writer's marker, then per tenant, its pool usage and the usage hash of each of its
/// accounts. ARGV: batch number (decimal), group number, retention (s), then per tenant: (number
/// of account hashes, number of deltas) and its deltas (see `USAGE_HELPERS`). Returns how many
/// parts were applied.
const RECORD_USAGE_GROUP: &str = r"
local seq, group = ARGV[1], tonumber(ARGV[2])
local last = redis.call('GET', KEYS[1])
if last then
  local s, g = string.match(last, '^(%d+) (%d+)$')
  if s and (below(seq, s) or (s == seq and tonumber(g) >= group)) then return 0 end
end
local k, a, applied = 2, 4, 0
while a <= #ARGV do
  local accounts, deltas = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  apply(k, a + 2, deltas)
  k = k + 1 + accounts
  a = a + 2 + deltas * 6
  applied = applied + 1
end
redis.call('SET', KEYS[1], seq .. ' ' .. ARGV[2], 'EX', ARGV[3])
return applied
";

/// Leases credits of a pool (the rule is on `Store::lease_credits`). KEYS: subs, leases, lease
/// ops. ARGV: pool, need, want, the node's op field, the op's seq. Returns {status, granted,
/// avail - granted}; the same op again returns its first answer and changes nothing.
const LEASE: &str = r"
local last = redis.call('HGET', KEYS[3], ARGV[4])
if last then
  local seq, g, left = string.match(last, '^(%d+) (%d+) (%d+)$')
  if seq == ARGV[5] then return {'ok', tonumber(g), tonumber(left)} end
end
local sub = redis.call('HGET', KEYS[1], ARGV[1])
if not sub then return {'missing', 0, 0} end
local credits = tonumber(cjson.decode(sub).credits) or 0
local reserved = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') or 0
local avail = credits - reserved
if avail < 0 then avail = 0 end
local need, want = tonumber(ARGV[2]), tonumber(ARGV[3])
if avail < need then return {'ok', 0, avail} end
local g = math.min(want, math.floor(avail / 16))
if g < need then g = need end
if g > avail then g = avail end
if g > 0 then redis.call('HINCRBY', KEYS[2], ARGV[1], string.format('%d', g)) end
redis.call('HSET', KEYS[3], ARGV[4], string.format('%s %d %d', ARGV[5], g, avail - g))
return {'ok', g, avail - g}
";

/// Gives leased credits back, never below zero. KEYS: leases, lease ops. ARGV: pool, amount, the
/// node's op field, the op's seq, `last` to forget the node's record instead (nothing else
/// changes). The same op again changes nothing.
const RELEASE: &str = r"
if ARGV[5] == 'last' then
  redis.call('HDEL', KEYS[2], ARGV[3])
  return 0
end
local last = redis.call('HGET', KEYS[2], ARGV[3])
if last and string.match(last, '^(%d+)') == ARGV[4] then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0
local left = cur - tonumber(ARGV[2])
if left < 0 then left = 0 end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', left))
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4] .. ' 0 0')
return 1
";

/// Appends one write's changes contiguously. KEYS: feed. ARGV: max length, writer time (ms),
/// then each change's JSON. Returns the last entry id.
const FEED_APPEND: &str = r"
local last = false
for i = 3, #ARGV do
  last = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'c', ARGV[i], 't', ARGV[2])
end
return last
";

/// What `read_feed` needs to tell a trimmed cursor: {last generated id, oldest entry id held (the
/// last id if none is), 1 if entries were ever removed}. Removal is known exactly from Redis 7's
/// `entries-added`; older servers report no such field, and reaching the maximum length stands in.
/// KEYS: feed. ARGV: max length.
const FEED_STATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'0-0', '0-0', 0} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, added, len, first = '0-0', false, 0, false
for i = 1, #info, 2 do
  local k = info[i]
  if k == 'last-generated-id' then last = info[i + 1]
  elseif k == 'entries-added' then added = info[i + 1]
  elseif k == 'length' then len = info[i + 1]
  elseif k == 'first-entry' and info[i + 1] then first = info[i + 1][1] end
end
local removed
if added then removed = added > len else removed = len >= tonumber(ARGV[1]) end
return {last, first or last, removed and 1 or 0}
";

/// Compare-and-set of one string key: if it holds ARGV[1] (`''` = absent), set it to ARGV[2]
/// (`''` = delete it). Returns 1 if it did.
const CAS: &str = r"
local cur = redis.call('GET', KEYS[1])
if (cur or '') ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
return 1
";

/// All scripts, hashed once.
pub(super) struct Scripts {
    pub(super) create_parent: Script,
    pub(super) invite: Script,
    pub(super) reinvite: Script,
    pub(super) expire_invitee: Script,
    pub(super) accept: Script,
    pub(super) update_account: Script,
    pub(super) delete_tenant: Script,
    pub(super) put_subscription: Script,
    pub(super) resolve_key: Script,
    pub(super) record_usage_parts: Script,
    pub(super) record_usage_group: Script,
    pub(super) lease: Script,
    pub(super) release: Script,
    pub(super) feed_append: Script,
    pub(super) feed_state: Script,
    pub(super) cas: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            create_parent: Script::new(CREATE_PARENT),
            invite: Script::new(INVITE),
            reinvite: Script::new(&format!("{EXPIRED}{REINVITE}")),
            expire_invitee: Script::new(&format!("{EXPIRED}{EXPIRE_INVITEE}")),
            accept: Script::new(ACCEPT),
            update_account: Script::new(UPDATE_ACCOUNT),
            delete_tenant: Script::new(DELETE_TENANT),
            put_subscription: Script::new(PUT_SUBSCRIPTION),
            resolve_key: Script::new(RESOLVE_KEY),
            record_usage_parts: Script::new(&format!("{USAGE_HELPERS}{RECORD_USAGE_PARTS}")),
            record_usage_group: Script::new(&format!("{USAGE_HELPERS}{RECORD_USAGE_GROUP}")),
            lease: Script::new(LEASE),
            release: Script::new(RELEASE),
            feed_append: Script::new(FEED_APPEND),
            feed_state: Script::new(FEED_STATE),
            cas: Script::new(CAS),
        }
    }
}
