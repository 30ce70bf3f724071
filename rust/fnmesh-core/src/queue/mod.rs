//! Durable queues (docs/protocol.md 4.4, 6.5 and 11.4): where `action: enqueue` puts a call, and where
//! the engine's consumers take it from, until the function succeeds or the message runs out of
//! attempts and moves to its queue's dead letters.
//!
//! A [`QueueStore`] keeps the messages; the engine's consumers (in [`service`]) claim, call and
//! settle them. Every backend passes the same behaviour suite (`tests/queue_store.rs`):
//! - [`memory::MemoryStore`]: in this process only, for tests and throwaway runs;
//! - [`sqlite::SqliteStore`]: the embedded default, one SQLite file in WAL mode that survives a
//!   restart with nothing lost;
//! - [`redis_streams::RedisStore`]: Redis Streams, shared by several engines.
//!
//! Semantics every backend keeps:
//! - **At least once.** A claimed message is invisible to other claims until it is acked, nacked,
//!   or its visibility timeout passes (its consumer died): then it is claimed again. A consumer
//!   whose call runs longer keeps its claim with [`QueueStore::extend`].
//! - **Attempts.** Each claim counts one attempt ([`Delivery::attempt`], 1 for the first). A nack
//!   either schedules the next attempt after a delay or, when the caller says so, moves the
//!   message to the dead letters with the error and the attempt count.
//! - **Order.** A `standard` queue hands out ready messages oldest first, with no guarantee under
//!   retries. A `fifo` queue orders by group ([`NewMessage::group`]): a group's next message is
//!   claimable only once the one before it is acked or dead, so a group is processed strictly in
//!   enqueue order, one message at a time, while different groups proceed in parallel.
//! - **Idempotency.** A message with an idempotency key that an earlier message of the same queue
//!   used within the window is not stored again: the enqueue answers the first receipt id.
//! - **Backpressure.** A claim takes at most `max` messages; the rest wait in the store.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;

pub use crate::config::{QueueConfig, QueueKind};
use crate::protocol::ErrorBody;

mod engine_service;
pub mod memory;
pub mod redis_streams;
pub mod service;
pub mod sqlite;

pub use engine_service::QueuesService;

/// A message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The receipt id the caller gets (`messageReceiptId`), unique.
    pub id: String,
    /// The queue.
    pub queue: String,
    /// The function to call.
    pub function_id: String,
    /// The namespace captured at enqueue.
    pub namespace: String,
    /// The call's `data`, raw JSON text.
    pub data: String,
    /// W3C trace context of the enqueuer.
    pub traceparent: Option<String>,
    /// W3C baggage of the enqueuer.
    pub baggage: Option<String>,
    /// The fifo group (`None` on a standard queue).
    pub group: Option<String>,
    /// Drops a duplicate enqueued within the queue's idempotency window.
    pub idempotency_key: Option<String>,
    /// Not claimable before this long after the enqueue.
    pub delay: Duration,
}

/// What an enqueue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored under this receipt id.
    Stored(String),
    /// A duplicate of the message with this receipt id (same idempotency key): not stored.
    Duplicate(String),
}

impl Enqueued {
    /// The receipt id the caller gets.
    pub fn receipt_id(&self) -> &str {
        match self {
            Enqueued::Stored(id) | Enqueued::Duplicate(id) => id,
        }
    }
}

/// A claimed message: call its function, then [`QueueStore::ack`] or [`QueueStore::nack`] it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The receipt id.
    pub id: String,
    /// The queue.
    pub queue: String,
    /// The function to call.
    pub function_id: String,
    /// The namespace to call it in.
    pub namespace: String,
    /// The call's `data`, raw JSON text.
    pub data: String,
    /// W3C trace context of the enqueuer.
    pub traceparent: Option<String>,
    /// W3C baggage of the enqueuer.
    pub baggage: Option<String>,
    /// The fifo group.
    pub group: Option<String>,
    /// This delivery's attempt, 1 for the first.
    pub attempt: u32,
    /// How often the message was released ([`Nack::Release`]) without an attempt since it was
    /// enqueued (or redriven): the engine bounds it so a message that is never run (a handler
    /// answering `function_not_found`, a crash loop) cannot come back forever.
    pub releases: u32,
    /// When the message was enqueued (ms since the Unix epoch).
    pub enqueued_at_ms: u64,
    /// Identifies this claim: an ack or nack with a stale lease (the message was claimed again
    /// after its visibility timeout) is ignored.
    pub lease: String,
}

/// A message that ran out of attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The receipt id.
    pub id: String,
    /// The queue.
    pub queue: String,
    /// The function it was for.
    pub function_id: String,
    /// Its namespace.
    pub namespace: String,
    /// Its `data`, raw JSON text.
    pub data: String,
    /// The fifo group.
    pub group: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub error: ErrorBody,
    /// When it was enqueued (ms since the Unix epoch).
    pub enqueued_at_ms: u64,
    /// When it was dead-lettered (ms since the Unix epoch).
    pub failed_at_ms: u64,
}

/// How a failed attempt ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nack {
    /// Claimable again after this delay (the attempt count is kept).
    Retry(Duration),
    /// Moved to the dead letters.
    Dead,
    /// Not attempted (nobody serves its function right now, or its call was stopped by a worker
    /// leaving or the engine stopping): claimable again after this delay, and this claim does not
    /// count as an attempt, so a worker that is away for a while (a deploy, a crash loop) does
    /// not use up a message's retries. Counts one more [`Delivery::releases`].
    Release(Duration),
    /// Not handed to anyone: the engine found no worker serving its function when it claimed
    /// it (a consumer worker restarting, a deploy, a function not deployed yet). Claimable again
    /// after this delay, counting neither an attempt nor a release: a message waits for its
    /// function however long it is away, as it would in a queue nobody consumes.
    Park(Duration),
}

/// Counts of one queue's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Waiting for nothing but a consumer: claimable now, a claim whose visibility timeout has
    /// passed, or (fifo) a message queued behind its group's head.
    pub ready: u64,
    /// Waiting for a retry delay or an enqueue delay.
    pub delayed: u64,
    /// Claimed, within the visibility timeout, not settled yet.
    pub in_flight: u64,
    /// Dead letters.
    pub dead: u64,
}

/// A store failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// I/O, a lost Redis connection, a corrupt row, ... (code `queue_store_error`).
    #[error("queue store: {0}")]
    Failed(String),
    /// The SQLite file is held by another engine (code `queue_store_in_use`): a SQLite queue
    /// file serves one engine at a time.
    #[error("queue store: {0}")]
    InUse(String),
}

impl StoreError {
    /// A store error ([`StoreError::Failed`]) with this message.
    pub fn new(message: impl std::fmt::Display) -> StoreError {
        StoreError::Failed(message.to_string())
    }

    /// The message, without the `queue store:` prefix.
    pub fn message(&self) -> &str {
        match self {
            StoreError::Failed(m) | StoreError::InUse(m) => m,
        }
    }

    /// The wire code of a call that failed with this error (docs/protocol.md 6.5).
    pub fn code(&self) -> crate::protocol::ErrorCode {
        match self {
            StoreError::Failed(_) => crate::protocol::ErrorCode::QueueStoreError,
            StoreError::InUse(_) => crate::protocol::ErrorCode::QueueStoreInUse,
        }
    }
}

/// Result of a store operation.
pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// Where queued messages live. Every method may be called concurrently from several tasks (and,
/// for a shared backend, from several engines).
pub trait QueueStore: Send + Sync + 'static {
    /// The backend's name (`memory`, `sqlite`, `redis`), for logs and discovery.
    fn backend(&self) -> &'static str;

    /// Stores a message, or finds the earlier one with its idempotency key.
    fn enqueue(
        &self,
        message: NewMessage,
        config: &QueueConfig,
    ) -> BoxFuture<'_, StoreResult<Enqueued>>;

    /// Claims up to `max` claimable messages of `config.name`, oldest first (fifo: at most the
    /// head of each group that has nothing in flight), each invisible to other claims for
    /// `config.visibility_timeout`. Messages whose previous claim timed out are claimable again.
    fn claim(&self, config: &QueueConfig, max: usize) -> BoxFuture<'_, StoreResult<Vec<Delivery>>>;

    /// The call succeeded: removes the message. False when the lease is stale (the message was
    /// claimed again meanwhile) or the message is gone.
    fn ack(&self, delivery: &Delivery) -> BoxFuture<'_, StoreResult<bool>>;

    /// The call failed with `error`: schedules the next attempt or dead-letters the message.
    /// False when the lease is stale or the message is gone.
    fn nack(
        &self,
        delivery: &Delivery,
        error: &ErrorBody,
        how: Nack,
    ) -> BoxFuture<'_, StoreResult<bool>>;

    /// The delivery's call is still running: its message stays invisible for
    /// `visibility_timeout` from now (the engine's consumers call this as a heartbeat while a
    /// call is in flight, so a call longer than the visibility timeout is not claimed again).
    /// False when the lease is stale (the message was claimed again meanwhile) or the message
    /// is gone.
    fn extend(
        &self,
        delivery: &Delivery,
        visibility_timeout: Duration,
    ) -> BoxFuture<'_, StoreResult<bool>>;

    /// Makes every message this store shows as claimed claimable again, at once, and returns
    /// how many were released; shared stores (Redis) leave other engines' claims alone and
    /// return 0. Only for an operator who knows that no consumer still runs: an engine does not
    /// call it when it starts, since after a crash (SIGKILL) the workers of the engine that died
    /// may still be running handlers of the messages it had claimed, and reconnect; those
    /// claims end on their own once their visibility timeout passes (their heartbeat stopped
    /// with the engine).
    fn release_all(&self) -> BoxFuture<'_, StoreResult<u64>>;

    /// Counts of `queue`'s messages.
    fn stats(&self, queue: &str) -> BoxFuture<'_, StoreResult<QueueStats>>;

    /// Names of the queues holding any message or dead letter, sorted.
    fn queues(&self) -> BoxFuture<'_, StoreResult<Vec<String>>>;

    /// Dead letters of `queue`, oldest first, `offset` skipped, at most `limit`.
    fn dead_letters(
        &self,
        queue: &str,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<DeadLetter>>>;

    /// Moves dead letters back to the queue, claimable at once with a fresh attempt count: all of
    /// `queue`'s when `id` is `None`, else that one. Returns how many moved.
    fn redrive(&self, queue: &str, id: Option<&str>) -> BoxFuture<'_, StoreResult<u64>>;

    /// Deletes the dead letter `id` of `queue`. False when there is none.
    fn discard(&self, queue: &str, id: &str) -> BoxFuture<'_, StoreResult<bool>>;
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
