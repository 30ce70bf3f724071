//! Data channels (docs/protocol.md 1.7): one-way streams of text and binary items between two
//! parties that meet at the engine. `engine::channels::create` makes one and hands out two refs,
//! a writer and a reader, sharing an id and an access key; each end is claimed once, over a
//! WebSocket at `/ws/channels/{id}?key=..&dir=read|write` on the worker port ([`socket`]), or
//! held by the engine itself (the HTTP trigger's `request_body` and `response`).
//!
//! Bounded: a channel holds at most `buffer_size` items and [`BUFFER_BYTES`] bytes; a writer
//! past either waits (its socket is not read, so TCP slows the peer down). A channel whose ends
//! are not both claimed within [`ChannelHub::ttl`] is swept; the channels a worker created go
//! when it leaves; at most [`MAX_CHANNELS`] wait for their ends at once.

pub mod socket;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

/// Items a channel holds when `buffer_size` is not given (iii's default).
pub const DEFAULT_BUFFER_ITEMS: usize = 64;
/// Largest `buffer_size` accepted; larger asks are capped (as iii does).
pub const MAX_BUFFER_ITEMS: usize = 1024;
/// Bytes one channel buffers at most, whatever its item count.
// NOTE: the SDKs write binary chunks of 64 KiB, so 1 MiB is 16 chunks in flight per channel:
// enough to keep a loopback stream busy, and 1,000 channels full at once cost 1 GiB at worst
// instead of the 64 GiB that 1,024 items of 64 MiB frames would allow.
pub const BUFFER_BYTES: usize = 1024 * 1024;
/// Channels waiting for an end to be claimed, at most.
pub const MAX_CHANNELS: usize = 65_536;
/// How long a channel may wait for its ends to be claimed (iii: 5 minutes).
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Which end of a channel a ref names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The end that receives the items.
    Read,
    /// The end that sends them.
    Write,
}

impl Direction {
    /// Parses the `dir` query value.
    pub fn parse(text: &str) -> Option<Direction> {
        match text {
            "read" => Some(Direction::Read),
            "write" => Some(Direction::Write),
            _ => None,
        }
    }
}

/// A channel end as it travels in a payload: `{"channel_id","access_key","direction"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelRef {
    /// The channel's id (a UUID).
    pub channel_id: String,
    /// The secret both ends share (a UUID).
    pub access_key: String,
    /// Which end this ref names.
    pub direction: Direction,
}

/// One item: text stays text, binary stays binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Text(t) => t.len(),
            Item::Binary(b) => b.len(),
        }
    }
}

/// Why a channel end could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// No channel has this id and key (or it was swept).
    #[error("channel not found")]
    NotFound,
    /// The end was claimed already.
    #[error("channel end already claimed")]
    Taken,
    /// Too many channels wait for their ends.
    #[error("too many open channels ({MAX_CHANNELS})")]
    TooMany,
    /// The reader is gone: nothing written will be read.
    #[error("the channel's reader is gone")]
    ReaderGone,
    /// The writer went away without finishing the stream.
    #[error("the channel's writer failed: {0}")]
    Aborted(String),
}

struct Flow {
    /// Set by [`ChannelWriter::finish`]: the end of the stream is clean.
    finished: AtomicBool,
    /// Why the writer stopped, when it did not finish.
    reason: Mutex<Option<String>>,
    /// Bytes a writer may still queue.
    bytes: Semaphore,
}

/// The sending end. Dropped without [`ChannelWriter::finish`], the reader sees an error.
pub struct ChannelWriter {
    tx: mpsc::Sender<(Item, u32)>,
    flow: Arc<Flow>,
}

impl ChannelWriter {
    /// Queues one item, waiting while the channel is full (backpressure).
    pub async fn send(&self, item: Item) -> Result<(), ChannelError> {
        // An item larger than the whole budget takes all of it, so it still goes through alone.
        let permits = item.len().clamp(1, BUFFER_BYTES) as u32;
        let acquired = tokio::select! {
            acquired = self.flow.bytes.acquire_many(permits) => acquired,
            _ = self.tx.closed() => return Err(ChannelError::ReaderGone),
        };
        acquired.map_err(|_| ChannelError::ReaderGone)?.forget();
        self.tx
            .send((item, permits))
            .await
            .map_err(|_| ChannelError::ReaderGone)
    }

    /// Queues one item if there is room now, without waiting; gives it back otherwise.
    pub fn try_send(&self, item: Item) -> Result<(), Item> {
        let permits = item.len().clamp(1, BUFFER_BYTES) as u32;
        let Ok(acquired) = self.flow.bytes.try_acquire_many(permits) else {
            return Err(item);
        };
        match self.tx.try_send((item, permits)) {
            Ok(()) => {
                acquired.forget();
                Ok(())
            }
            Err(e) => Err(e.into_inner().0),
        }
    }

    /// Resolves once the reader is gone.
    pub async fn reader_gone(&self) {
        self.tx.closed().await;
    }

    /// Ends the stream cleanly: the reader sees its end once it has read every item.
    pub fn finish(self) {
        self.flow.finished.store(true, Ordering::Release);
    }

    /// Ends the stream with an error the reader sees after the items already queued.
    pub fn abort(self, reason: impl Into<String>) {
        if let Ok(mut slot) = self.flow.reason.lock() {
            *slot = Some(reason.into());
        }
    }
}

/// The receiving end.
pub struct ChannelReader {
    rx: mpsc::Receiver<(Item, u32)>,
    flow: Arc<Flow>,
}

impl ChannelReader {
    /// The next item; `None` at the clean end of the stream, an error when the writer failed.
    pub async fn recv(&mut self) -> Option<Result<Item, ChannelError>> {
        match self.rx.recv().await {
            Some((item, permits)) => {
                self.flow.bytes.add_permits(permits as usize);
                Some(Ok(item))
            }
            None if self.flow.finished.load(Ordering::Acquire) => None,
            None => {
                let reason = self.flow.reason.lock().ok().and_then(|mut r| r.take());
                Some(Err(ChannelError::Aborted(reason.unwrap_or_else(|| {
                    "the writer closed without finishing".to_owned()
                }))))
            }
        }
    }
}

/// A new channel's two ends, not registered anywhere.
pub fn pair(buffer_size: usize) -> (ChannelWriter, ChannelReader) {
    let (tx, rx) = mpsc::channel(buffer_size.clamp(1, MAX_BUFFER_ITEMS));
    let flow = Arc::new(Flow {
        finished: AtomicBool::new(false),
        reason: Mutex::new(None),
        bytes: Semaphore::new(BUFFER_BYTES),
    });
    (
        ChannelWriter {
            tx,
            flow: flow.clone(),
        },
        ChannelReader { rx, flow },
    )
}

/// A claimed end.
pub enum End {
    /// The reading end.
    Reader(ChannelReader),
    /// The writing end.
    Writer(ChannelWriter),
}

struct Entry {
    key: String,
    owner: Option<Arc<str>>,
    created: Instant,
    writer: Option<ChannelWriter>,
    reader: Option<ChannelReader>,
}

/// The channels whose ends are not all claimed yet.
pub struct ChannelHub {
    // NOTE: a DashMap, not one Mutex: every HTTP request adds and removes two channels. E4 quick
    // runs at 64 in flight, on a shared and noisy 2-core machine: 18-20k req/s with channels on
    // one Mutex, 14-19k with this (noise larger than the difference), 18-25k on main without
    // channels; to be re-measured on an idle machine.
    entries: DashMap<String, Entry>,
    /// Channel ids are unique, not secret (the key is): a random prefix and a counter.
    id_prefix: u64,
    next_id: AtomicU64,
    ttl: Duration,
    last_sweep: Mutex<Instant>,
}

impl Default for ChannelHub {
    fn default() -> Self {
        ChannelHub::new(DEFAULT_TTL)
    }
}

impl ChannelHub {
    /// A hub whose unclaimed channels live `ttl`.
    pub fn new(ttl: Duration) -> ChannelHub {
        ChannelHub {
            entries: DashMap::new(),
            id_prefix: uuid::Uuid::new_v4().as_u64_pair().0,
            next_id: AtomicU64::new(0),
            ttl,
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// How long an unclaimed channel waits for its ends.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Creates a channel; `owner` (a worker connection id) takes it along when it leaves.
    /// Returns the writer's ref and the reader's.
    pub fn create(
        &self,
        buffer_size: usize,
        owner: Option<Arc<str>>,
    ) -> Result<(ChannelRef, ChannelRef), ChannelError> {
        let (writer, reader) = pair(buffer_size);
        self.insert(owner, Some(writer), Some(reader))
    }

    /// Creates a channel whose writer the engine keeps: returns the reader's ref.
    pub fn create_for_reading(
        &self,
        buffer_size: usize,
    ) -> Result<(ChannelRef, ChannelWriter), ChannelError> {
        let (writer, reader) = pair(buffer_size);
        let (_, read_ref) = self.insert(None, None, Some(reader))?;
        Ok((read_ref, writer))
    }

    /// Creates a channel whose reader the engine keeps: returns the writer's ref.
    pub fn create_for_writing(
        &self,
        buffer_size: usize,
    ) -> Result<(ChannelRef, ChannelReader), ChannelError> {
        let (writer, reader) = pair(buffer_size);
        let (write_ref, _) = self.insert(None, Some(writer), None)?;
        Ok((write_ref, reader))
    }

    fn insert(
        &self,
        owner: Option<Arc<str>>,
        writer: Option<ChannelWriter>,
        reader: Option<ChannelReader>,
    ) -> Result<(ChannelRef, ChannelRef), ChannelError> {
        if self.entries.len() >= MAX_CHANNELS {
            return Err(ChannelError::TooMany);
        }
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let channel_id = uuid::Uuid::from_u64_pair(self.id_prefix, n).to_string();
        let access_key = uuid::Uuid::new_v4().to_string();
        self.entries.insert(
            channel_id.clone(),
            Entry {
                key: access_key.clone(),
                owner,
                created: Instant::now(),
                writer,
                reader,
            },
        );
        let make = |direction| ChannelRef {
            channel_id: channel_id.clone(),
            access_key: access_key.clone(),
            direction,
        };
        Ok((make(Direction::Write), make(Direction::Read)))
    }

    /// Whether an id and key name a channel here (any end still unclaimed).
    pub fn exists(&self, channel_id: &str, key: &str) -> bool {
        self.entries
            .get(channel_id)
            .is_some_and(|e| key_matches(&e.key, key))
    }

    /// Whether `channel_id`'s end `direction` was claimed (or the channel is gone).
    pub fn is_claimed(&self, channel_id: &str, direction: Direction) -> bool {
        self.entries
            .get(channel_id)
            .is_none_or(|entry| match direction {
                Direction::Read => entry.reader.is_none(),
                Direction::Write => entry.writer.is_none(),
            })
    }

    /// Claims one end; the access key is compared in constant time.
    pub fn claim(&self, channel_id: &str, key: &str, dir: Direction) -> Result<End, ChannelError> {
        let (end, spent) = {
            let mut entry = self
                .entries
                .get_mut(channel_id)
                .filter(|e| key_matches(&e.key, key))
                .ok_or(ChannelError::NotFound)?;
            let end = match dir {
                Direction::Read => entry.reader.take().map(End::Reader),
                Direction::Write => entry.writer.take().map(End::Writer),
            }
            .ok_or(ChannelError::Taken)?;
            (end, entry.reader.is_none() && entry.writer.is_none())
        };
        if spent {
            self.entries
                .remove_if(channel_id, |_, e| e.reader.is_none() && e.writer.is_none());
        }
        Ok(end)
    }

    /// Drops a channel's unclaimed ends (the claimed ones see the channel end).
    pub fn remove(&self, channel_id: &str) {
        drop(self.entries.remove(channel_id));
    }

    /// Drops the unclaimed ends of every channel `owner` created.
    pub fn remove_owned_by(&self, owner: &str) {
        self.entries
            .retain(|_, e| e.owner.as_deref() != Some(owner));
    }

    /// Drops the channels that waited longer than the ttl; scans at most once a second.
    pub fn sweep(&self) {
        {
            let Ok(mut last) = self.last_sweep.lock() else {
                return;
            };
            if last.elapsed() < Duration::from_secs(1).min(self.ttl) {
                return;
            }
            *last = Instant::now();
        }
        let ttl = self.ttl;
        self.entries.retain(|_, e| e.created.elapsed() < ttl);
    }

    /// Channels waiting for an end.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no channel waits for an end.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Constant time in the keys' content.
fn key_matches(expected: &str, given: &str) -> bool {
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_flow_in_order_and_finish_cleanly() {
        let (writer, mut reader) = pair(4);
        writer.send(Item::Text("a".into())).await.unwrap();
        writer
            .send(Item::Binary(Bytes::from_static(b"\x00\x01")))
            .await
            .unwrap();
        writer.finish();
        assert_eq!(reader.recv().await, Some(Ok(Item::Text("a".into()))));
        assert_eq!(
            reader.recv().await,
            Some(Ok(Item::Binary(Bytes::from_static(b"\x00\x01"))))
        );
        assert_eq!(reader.recv().await, None);
    }

    #[tokio::test]
    async fn a_writer_dropped_without_finishing_is_an_error_for_the_reader() {
        let (writer, mut reader) = pair(4);
        writer.send(Item::Text("a".into())).await.unwrap();
        writer.abort("upload cut");
        assert!(matches!(reader.recv().await, Some(Ok(_))));
        assert_eq!(
            reader.recv().await,
            Some(Err(ChannelError::Aborted("upload cut".into())))
        );
        let (writer, mut reader) = pair(4);
        drop(writer);
        assert!(matches!(
            reader.recv().await,
            Some(Err(ChannelError::Aborted(_)))
        ));
    }

    #[tokio::test]
    async fn a_full_channel_makes_the_writer_wait_until_the_reader_reads() {
        let (writer, mut reader) = pair(2);
        writer.send(Item::Text("1".into())).await.unwrap();
        writer.send(Item::Text("2".into())).await.unwrap();
        let third = writer.send(Item::Text("3".into()));
        tokio::pin!(third);
        assert!(futures_util::future::poll_immediate(third.as_mut())
            .await
            .is_none());
        assert!(reader.recv().await.is_some());
        third.await.unwrap();
        // Bytes bound it too: one item of the whole budget blocks the next.
        let (writer, mut reader) = pair(64);
        writer
            .send(Item::Binary(Bytes::from(vec![0u8; BUFFER_BYTES])))
            .await
            .unwrap();
        let next = writer.send(Item::Binary(Bytes::from_static(b"x")));
        tokio::pin!(next);
        assert!(futures_util::future::poll_immediate(next.as_mut())
            .await
            .is_none());
        assert!(reader.recv().await.is_some());
        next.await.unwrap();
    }

    #[tokio::test]
    async fn a_gone_reader_fails_the_writer_even_while_it_waits() {
        let (writer, reader) = pair(1);
        writer.send(Item::Text("1".into())).await.unwrap();
        let waiting = writer.send(Item::Text("2".into()));
        tokio::pin!(waiting);
        assert!(futures_util::future::poll_immediate(waiting.as_mut())
            .await
            .is_none());
        drop(reader);
        assert_eq!(waiting.await, Err(ChannelError::ReaderGone));
    }

    #[test]
    fn ends_are_claimed_once_with_the_right_key() {
        let hub = ChannelHub::default();
        let (w, r) = hub.create(8, None).unwrap();
        assert_eq!(w.channel_id, r.channel_id);
        assert_eq!(w.direction, Direction::Write);
        let wrong = "0".repeat(w.access_key.len());
        assert!(matches!(
            hub.claim(&w.channel_id, &wrong, Direction::Write),
            Err(ChannelError::NotFound)
        ));
        assert!(matches!(
            hub.claim(&w.channel_id, &w.access_key, Direction::Write),
            Ok(End::Writer(_))
        ));
        assert!(matches!(
            hub.claim(&w.channel_id, &w.access_key, Direction::Write),
            Err(ChannelError::Taken)
        ));
        assert_eq!(hub.len(), 1);
        assert!(matches!(
            hub.claim(&r.channel_id, &r.access_key, Direction::Read),
            Ok(End::Reader(_))
        ));
        assert!(
            hub.is_empty(),
            "a channel with both ends claimed leaves the hub"
        );
    }

    #[tokio::test]
    async fn a_leaving_owner_and_the_sweep_drop_unclaimed_channels() {
        let hub = ChannelHub::new(Duration::from_millis(0));
        let (w, _) = hub.create(8, Some("worker-1".into())).unwrap();
        let (_, r2) = hub.create(8, Some("worker-2".into())).unwrap();
        let End::Reader(mut reader) = hub
            .claim(&w.channel_id, &w.access_key, Direction::Read)
            .unwrap()
        else {
            panic!("asked for the reader");
        };
        hub.remove_owned_by("worker-1");
        assert!(!hub.exists(&w.channel_id, &w.access_key));
        assert!(
            matches!(reader.recv().await, Some(Err(ChannelError::Aborted(_)))),
            "the claimed reader learns the writer is gone"
        );
        assert!(hub.exists(&r2.channel_id, &r2.access_key));
        hub.sweep();
        assert!(hub.is_empty());
    }
}
