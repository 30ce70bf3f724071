//! State (docs/protocol.md 6.8): a scoped key-value store that functions call as plain
//! functions (`state::set|get|delete|update|list|list_groups`), and the `state` trigger type
//! that fires a function on every change.
//!
//! A [`StateStore`] keeps the values; every backend keeps the same semantics:
//! - a value is any JSON value, kept under `(scope, key)`;
//! - a write (`set`, `update`, `delete`) is atomic: `update` reads, applies its operations
//!   ([`ops`]) and writes as one step, so concurrent updates of one key never lose a write;
//! - every write that changes something produces one [`StateEvent`], delivered to the
//!   [`EventSink`] in the order the writes happened, which is what the `state` trigger
//!   ([`trigger::StateTrigger`]) fires from.
//!
//! Backends:
//! - [`memory::MemoryStore`]: in this process only;
//! - [`sqlite::SqliteStateStore`]: the embedded default, one SQLite file (WAL, an fsync per
//!   commit) that survives a restart with every value kept;
//! - [`redis_store::RedisStateStore`]: Redis hashes shared by several engines; each write publishes
//!   its event on a Redis channel in the same atomic step, so every engine's triggers see the
//!   changes of all of them, in write order.

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::protocol::{ErrorCode, RawJson};

pub mod memory;
pub mod ops;
pub mod redis_store;
mod service;
pub mod sqlite;
pub mod trigger;

pub use ops::{UpdateOp, UpdateOpError};
pub use service::StateService;

/// What a store operation answers, or why it failed.
pub type StateResult<T> = Result<T, StateError>;

/// Why a state operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The store (SQLite file, Redis) failed; the message says how. Wire code
    /// `state_store_error`.
    #[error("state store: {0}")]
    Store(String),
}

impl StateError {
    /// A store failure with this message.
    pub fn store(message: impl std::fmt::Display) -> StateError {
        StateError::Store(message.to_string())
    }

    /// The wire code a call failing with this error answers.
    pub fn code(&self) -> ErrorCode {
        match self {
            StateError::Store(_) => ErrorCode::StateStoreError,
        }
    }
}

/// What an `update` did: the value before (`None`: there was none), the value stored after,
/// and the operations refused (each left the value as it was).
#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    /// The value before the update.
    pub old_value: Option<Value>,
    /// The value stored by the update.
    pub new_value: Value,
    /// The operations that were refused, by index.
    pub errors: Vec<UpdateOpError>,
}

/// Which kind of change a [`StateEvent`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateEventKind {
    /// A key got its first value (`set` or `update` of a missing key).
    Created,
    /// A key's value was replaced.
    Updated,
    /// A key was deleted.
    Deleted,
}

impl StateEventKind {
    /// The wire spelling (`state:created`, `state:updated`, `state:deleted`).
    pub fn as_str(self) -> &'static str {
        match self {
            StateEventKind::Created => "state:created",
            StateEventKind::Updated => "state:updated",
            StateEventKind::Deleted => "state:deleted",
        }
    }
}

/// One change of one key, as the `state` trigger's functions receive it: `payload` is
/// `{"type":"state","event_type","scope","key","old_value","new_value"}` (docs/protocol.md 6.8).
#[derive(Debug)]
pub struct StateEvent {
    /// The scope changed.
    pub scope: String,
    /// The key changed.
    pub key: String,
    /// The payload handed to the bound functions.
    pub payload: RawJson,
}

impl StateEvent {
    /// The event of a change of `(scope, key)` from `old` to `new` (`None`: deleted).
    pub fn new(scope: &str, key: &str, old: Option<&Value>, new: Option<&Value>) -> StateEvent {
        let kind = match (old, new) {
            (_, None) => StateEventKind::Deleted,
            (None, Some(_)) => StateEventKind::Created,
            (Some(_), Some(_)) => StateEventKind::Updated,
        };
        let payload = serde_json::json!({
            "type": "state",
            "event_type": kind.as_str(),
            "scope": scope,
            "key": key,
            "old_value": old,
            "new_value": new,
        });
        StateEvent {
            scope: scope.to_owned(),
            key: key.to_owned(),
            // A `Value` always serializes; the default (`null`) is never used.
            payload: serde_json::value::to_raw_value(&payload).unwrap_or_default(),
        }
    }
}

/// Events a store has not handed to the trigger yet; one more is dropped (and logged).
pub const EVENT_BACKLOG: usize = 65_536;

/// Where a store sends its change events, in write order. Never blocks a write: when the
/// trigger has fallen [`EVENT_BACKLOG`] events behind, an event is dropped with a warning.
#[derive(Debug, Clone)]
pub struct EventSink(mpsc::Sender<StateEvent>);

impl EventSink {
    /// A sink and the receiving end the trigger reads.
    pub fn channel() -> (EventSink, mpsc::Receiver<StateEvent>) {
        let (tx, rx) = mpsc::channel(EVENT_BACKLOG);
        (EventSink(tx), rx)
    }

    /// Hands an event on (dropped with a warning when the backlog is full).
    pub fn emit(&self, event: StateEvent) {
        if let Err(mpsc::error::TrySendError::Full(event)) = self.0.try_send(event) {
            tracing::warn!(scope = %event.scope, key = %event.key, "state trigger backlog full: change event dropped");
        }
    }
}

/// A state backend. Every method is atomic on its key; writes emit their [`StateEvent`] to the
/// store's [`EventSink`] in write order.
pub trait StateStore: Send + Sync + 'static {
    /// The backend's name for logs (`memory`, `sqlite`, `redis`).
    fn backend(&self) -> &'static str;
    /// The value of `(scope, key)`, if any.
    fn get<'a>(&'a self, scope: &'a str, key: &'a str)
        -> BoxFuture<'a, StateResult<Option<Value>>>;
    /// Stores `value`; answers the value it replaced.
    fn set<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        value: Value,
    ) -> BoxFuture<'a, StateResult<Option<Value>>>;
    /// Applies `ops` to the value (`{}` when there is none) and stores the result.
    fn update<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        ops: Vec<UpdateOp>,
    ) -> BoxFuture<'a, StateResult<Updated>>;
    /// Deletes the key; answers the value it had.
    fn delete<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, StateResult<Option<Value>>>;
    /// Every value of a scope, in key order.
    fn list<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, StateResult<Vec<Value>>>;
    /// Every scope holding at least one key, sorted.
    fn list_groups(&self) -> BoxFuture<'_, StateResult<Vec<String>>>;
}
