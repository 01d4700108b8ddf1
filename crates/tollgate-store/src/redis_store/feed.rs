//! The change feed on a Redis Stream (`P:feed`): appended by every key-tree write, followed by
//! every node with `XREAD BLOCK` on a connection of its own. Cursors are stream entry ids.
//!
//! A cursor the stream no longer reaches back to is `FeedTrimmed`: entries were removed (trimming
//! only ever removes the oldest) and the oldest entry still held is newer than the cursor. That is
//! exact but for one case, a cursor at the very last trimmed entry, where the follower reloads
//! needlessly; it never lets a follower skip a change. A cursor beyond the newest id ever generated
//! (a stream that lost its data) is `FeedTrimmed` too, so the follower reloads.

use std::time::Duration;

use redis::streams::StreamReadReply;
use redis::Value;

use super::conn::store_err;
use super::keys::{from_json, to_json};
use super::{now_ms, Inner};
use crate::{Change, FeedEvent, StoreError, StoreResult};

/// Approximate length the stream is trimmed to (`MAXLEN ~`): at one change per write, far more
/// than a follower that is connected falls behind.
pub(super) const FEED_MAXLEN: u64 = 100_000;
/// Entries one read returns at most; the follower reads again for more.
const READ_COUNT: usize = 1000;

/// A stream entry id, `<ms>-<seq>`.
type EntryId = (u64, u64);

fn parse_id(s: &str) -> Option<EntryId> {
    let (ms, seq) = s.split_once('-')?;
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(seq) {
        return None;
    }
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// What the stream says about its extent (see the `FEED_STATE` script).
struct FeedState {
    last: EntryId,
    last_raw: String,
    /// The oldest entry still held (the last one if none is).
    oldest: EntryId,
    /// Whether any entry was ever removed.
    removed: bool,
}

impl FeedState {
    fn lost_after(&self, cursor: EntryId) -> bool {
        cursor > self.last || (self.removed && self.oldest > cursor)
    }
}

impl Inner {
    /// Appends one write's changes, contiguously, with the writer's time (for the lag metric).
    pub(super) async fn append_feed(&self, changes: &[Change]) -> StoreResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut script = self.scripts.feed_append.key(self.keys.feed());
        script.arg(FEED_MAXLEN).arg(now_ms());
        for change in changes {
            script.arg(to_json(change, "change")?);
        }
        script
            .invoke_async::<Option<String>>(&mut self.conn())
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn feed_state(&self) -> StoreResult<FeedState> {
        let (last_raw, oldest, removed): (String, String, i64) = self
            .scripts
            .feed_state
            .key(self.keys.feed())
            .arg(FEED_MAXLEN)
            .invoke_async(&mut self.conn())
            .await
            .map_err(store_err)?;
        let bad = || StoreError::Internal("redis store: the feed reported a malformed id".into());
        Ok(FeedState {
            last: parse_id(&last_raw).ok_or_else(bad)?,
            oldest: parse_id(&oldest).ok_or_else(bad)?,
            last_raw,
            removed: removed == 1,
        })
    }

    pub(super) async fn feed_head(&self) -> StoreResult<String> {
        Ok(self.feed_state().await?.last_raw)
    }

    pub(super) async fn read_feed(
        &self,
        cursor: &str,
        wait: Duration,
    ) -> StoreResult<Vec<FeedEvent>> {
        let after = parse_id(cursor).ok_or(StoreError::FeedTrimmed)?;
        if !wait.is_zero() && self.feed_state().await?.lost_after(after) {
            // Checked before blocking too, or a cursor from a lost stream would wait in vain.
            return Err(StoreError::FeedTrimmed);
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(READ_COUNT);
        if !wait.is_zero() {
            // BLOCK 0 would mean forever: at least 1 ms.
            cmd.arg("BLOCK").arg(wait.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS")
            .arg(self.keys.feed())
            .arg(format!("{}-{}", after.0, after.1));
        let mut conn = self.conns.take_feed().await?;
        let reply: Option<StreamReadReply> = cmd.query_async(&mut conn).await.map_err(store_err)?;
        // Only a read that completed goes back to the pool: one abandoned by a caller's time-out
        // is dropped with its future, closing the socket that may still be parked in XREAD.
        self.conns.give_back_feed(conn);
        // After the read: a trim that raced it is seen, so nothing is skipped silently.
        if self.feed_state().await?.lost_after(after) {
            return Err(StoreError::FeedTrimmed);
        }
        let mut events = Vec::new();
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            let json = match entry.map.get("c") {
                Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => {
                    return Err(StoreError::Internal(
                        "redis store: a feed entry has no change".into(),
                    ))
                }
            };
            let at_ms = match entry.map.get("t") {
                Some(Value::BulkString(bytes)) => {
                    std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok())
                }
                Some(Value::SimpleString(s)) => s.parse().ok(),
                Some(Value::Int(n)) => u64::try_from(*n).ok(),
                _ => None,
            };
            events.push(FeedEvent {
                cursor: entry.id,
                change: from_json(&json, "change")?,
                at_ms,
            });
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_strictly() {
        assert_eq!(parse_id("0-0"), Some((0, 0)));
        assert_eq!(parse_id("1700000000000-12"), Some((1_700_000_000_000, 12)));
        for bad in ["", "-1", "1", "1-", "-", "a-b", "1-2-3", "+1-2", "1- 2"] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn trimmed_detection() {
        let mut state = FeedState {
            last: (10, 0),
            last_raw: "10-0".into(),
            oldest: (5, 0),
            removed: true,
        };
        assert!(state.lost_after((4, 9)));
        assert!(!state.lost_after((5, 0)));
        assert!(!state.lost_after((10, 0)));
        assert!(state.lost_after((10, 1)));
        // Nothing ever removed: an old cursor (say, the head of the empty stream) lost nothing.
        state.removed = false;
        assert!(!state.lost_after((0, 0)));
    }
}
