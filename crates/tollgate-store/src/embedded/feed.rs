//! The embedded store's change feed: an in-memory ring of the latest key-tree changes.
//!
//! The embedded store serves one node, so its followers live in the same process and a feed that
//! dies with the process loses nothing anyone could still read. Cursors are decimal sequence
//! numbers; they restart at 0 with the process, and a cursor beyond the head (from an earlier
//! process) is answered with `FeedTrimmed`, which makes the follower reload everything.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{Change, FeedEvent, StoreError, StoreResult};

/// How many events one `read_feed` returns at most; the follower simply reads again.
const MAX_READ: usize = 1024;

#[derive(Debug)]
struct Ring {
    /// Sequence number of the newest event (0 before the first).
    head: u64,
    /// Events `head - events.len() + 1 ..= head`, oldest first.
    /// With the wall-clock time of the append in ms, for the revocation-lag metric.
    events: VecDeque<(Change, u64)>,
}

impl Ring {
    /// Sequence number of the oldest event still held (`head + 1` when none is).
    fn first(&self) -> u64 {
        self.head + 1 - self.events.len() as u64
    }
}

#[derive(Debug)]
pub(crate) struct Feed {
    capacity: usize,
    ring: Mutex<Ring>,
    /// Carries the head; readers wait on it for new events.
    head_tx: watch::Sender<u64>,
}

impl Feed {
    pub(crate) fn new(capacity: usize) -> Feed {
        let capacity = capacity.max(1);
        Feed {
            capacity,
            ring: Mutex::new(Ring {
                head: 0,
                events: VecDeque::with_capacity(capacity.min(MAX_READ)),
            }),
            head_tx: watch::Sender::new(0),
        }
    }

    /// Appends the changes of one committed write, contiguously, and wakes every reader.
    pub(crate) fn append(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let at_ms = crate::store::unix_ms();
        let head = {
            let mut ring = self.ring.lock();
            for change in changes {
                if ring.events.len() == self.capacity {
                    ring.events.pop_front();
                }
                ring.events.push_back((change, at_ms));
                ring.head += 1;
            }
            ring.head
        };
        // `send_replace` updates the value even when nobody is subscribed (plain `send` would not).
        self.head_tx.send_replace(head);
    }

    pub(crate) fn head(&self) -> String {
        self.ring.lock().head.to_string()
    }

    /// Events after `cursor`, possibly none; `FeedTrimmed` if the ring no longer reaches back to it.
    fn after(&self, cursor: u64) -> StoreResult<Vec<FeedEvent>> {
        let ring = self.ring.lock();
        if cursor > ring.head || cursor + 1 < ring.first() {
            return Err(StoreError::FeedTrimmed);
        }
        let skip = (cursor + 1 - ring.first()) as usize;
        Ok(ring
            .events
            .iter()
            .skip(skip)
            .take(MAX_READ)
            .zip(cursor + 1..)
            .map(|((change, at_ms), seq)| FeedEvent {
                cursor: seq.to_string(),
                change: change.clone(),
                at_ms: Some(*at_ms),
            })
            .collect())
    }

    pub(crate) async fn read(&self, cursor: &str, wait: Duration) -> StoreResult<Vec<FeedEvent>> {
        let cursor: u64 = cursor.parse().map_err(|_| StoreError::FeedTrimmed)?;
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribing before the first look means an append between the look and the wait still
        // wakes us: no lost wake-up.
        let mut rx = self.head_tx.subscribe();
        loop {
            rx.borrow_and_update();
            let events = self.after(cursor)?;
            if !events.is_empty() {
                return Ok(events);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the sender is gone (cannot happen while `self` lives).
                Ok(Err(_)) | Err(_) => return Ok(Vec::new()),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn acc(n: u32) -> Change {
        Change::Account(format!("a{n}"))
    }

    #[tokio::test]
    async fn cursors_advance_and_old_ones_are_trimmed() {
        let feed = Feed::new(3);
        assert_eq!(feed.head(), "0");
        assert!(feed.read("0", Duration::ZERO).await.unwrap().is_empty());
        feed.append(vec![acc(1), acc(2)]);
        let evs = feed.read("0", Duration::ZERO).await.unwrap();
        assert_eq!(
            evs.iter().map(|e| e.cursor.as_str()).collect::<Vec<_>>(),
            ["1", "2"]
        );
        assert_eq!(evs[1].change, acc(2));
        feed.append(vec![acc(3), acc(4)]);
        // The ring holds 2..=4: "1" still reaches back (its next event is 2), "0" does not.
        assert_eq!(feed.read("1", Duration::ZERO).await.unwrap().len(), 3);
        assert_eq!(
            feed.read("0", Duration::ZERO).await,
            Err(StoreError::FeedTrimmed)
        );
        assert_eq!(
            feed.read("5", Duration::ZERO).await,
            Err(StoreError::FeedTrimmed)
        );
        assert_eq!(
            feed.read("x", Duration::ZERO).await,
            Err(StoreError::FeedTrimmed)
        );
        assert!(feed.read("4", Duration::ZERO).await.unwrap().is_empty());
        assert_eq!(feed.head(), "4");
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_append() {
        let feed = Arc::new(Feed::new(10));
        let reader = {
            let feed = feed.clone();
            tokio::spawn(async move { feed.read("0", Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = std::time::Instant::now();
        feed.append(vec![acc(1)]);
        let evs = reader.await.unwrap().unwrap();
        assert_eq!(evs.len(), 1);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_reader_with_nothing_new_returns_empty_after_the_wait() {
        let feed = Feed::new(10);
        let started = std::time::Instant::now();
        assert!(feed
            .read("0", Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty());
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
