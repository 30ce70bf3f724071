//! The worker client: a Rust program (and, through the binding, the Python SDK) becomes a worker
//! of any iii-compatible engine over the worker WebSocket (docs/protocol.md sections 1 to 4).
//!
//! Functions are served by the same [`NativeFunction`] handlers the embedded engine runs, so a
//! handler written for [`crate::engine::Engine`] also works here unchanged.
//!
//! ```no_run
//! use fnmesh_core::client::{CallOptions, Client};
//! use fnmesh_core::function::{async_fn, Outcome};
//! use fnmesh_core::registry::FunctionDef;
//!
//! # async fn run() -> Result<(), fnmesh_core::client::ClientError> {
//! let client = Client::builder("ws://127.0.0.1:49134")
//!     .worker_name("orders")
//!     .function(
//!         "orders::ping",
//!         FunctionDef::default(),
//!         async_fn(|_data| async { Outcome::json("pong") }),
//!     )
//!     .connect()
//!     .await?;
//! let data = serde_json::value::to_raw_value(&serde_json::json!({})).unwrap();
//! let listing = client.call("engine::functions::list", data, CallOptions::default()).await?;
//! println!("{}", listing.map(|r| r.get().to_owned()).unwrap_or_default());
//! client.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Behaviour (docs/protocol.md is the authority):
//! * On every (re)connect the client sends, in order: `reattach` (when it knows a previous
//!   `worker_id` and token), every `registerfunction` with the same ids, the messages queued
//!   while offline (at most [`MAX_QUEUED`], oldest dropped), then `engine::workers::register`
//!   as a void call. It does not wait for `workerregistered` first, like the iii SDKs.
//! * Connection loss fails every call already sent with `invocation_stopped`: the engine halts
//!   the invocations of a closed connection (section 1.5), so their answers can never arrive.
//!   Calls made while offline are queued and keep waiting for their timeout.
//! * It reconnects with exponential backoff and jitter ([`Backoff`]) until
//!   [`Client::shutdown`], or until the engine rejects the worker with a code other than
//!   `FUNCTION_NAMESPACE_CONFLICT` (section 2.11: fatal, no reconnect).
//! * Only `ws://` URLs are supported (the crate is built without TLS).
//!
//! Files: `handle.rs` (the [`Client`] a program holds), `builder.rs` ([`ClientBuilder`], the
//! first connection), `inner.rs` (the state shared with the background tasks, and the handling
//! of each frame from the engine), `connection.rs` (connect, replay, serve, reconnect, time out
//! calls), `error.rs` ([`ClientError`]), `backoff.rs` ([`Backoff`]).

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::watch;

use crate::protocol::RawJson;

mod backoff;
mod builder;
mod connection;
mod error;
mod handle;
mod inner;

pub use crate::function::CallOptions;
pub use backoff::Backoff;
pub use builder::ClientBuilder;
pub use error::ClientError;
pub use handle::{Client, ClientState};

/// Most messages kept while offline; the oldest is dropped first (the iii SDKs keep 1000).
pub const MAX_QUEUED: usize = 1000;
/// Default client-side bound on an outbound call (iii SDK `invocation_timeout_ms`).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default interval between WebSocket pings; the connection is dead after twice this without
/// any inbound frame (the iii Rust and Node SDKs: 20 s / 60 s).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(20);
/// Default bound on one connection attempt (TCP connect plus WebSocket upgrade).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time [`ClientBuilder::connect`] waits for the first connection.
pub const DEFAULT_FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

const DEFAULT_NAMESPACE: &str = "default";
const WORKERS_REGISTER: &str = "engine::workers::register";

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (single assignments), so
    // poisoning is ignored rather than spread.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves once the stop flag is set (or its sender is gone), holding no borrow afterwards.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn null_json() -> RawJson {
    RawValue::NULL.to_owned()
}
