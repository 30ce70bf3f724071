//! The engine: worker connections, registrations and the dispatch loop (docs/protocol.md 1-4, 6.1-6.2).
//!
//! Every frame of a worker is handled inline in that connection's reader task: decode the
//! envelope, route, re-encode. Payloads stay raw JSON from socket to socket and nothing here
//! touches Python. Calls wait in one pending table whatever serves them (a remote worker, a
//! native function, a built-in), so completion, timeouts and disconnects work the same way.
//!
//! One file per job:
//! - `state`: what every connection shares (`Shared`), a connection's own state, and what
//!   serves a function ([`Target`]) or a trigger type;
//! - `dispatch`: one call (`Request`, carrying its [`CallOptions`](crate::function::CallOptions))
//!   routed to its target, its pending entry, its outcome delivered;
//! - `session`: a worker connection from connect to cleanup: frames, registrations, reattach,
//!   external functions;
//! - `bindings`: trigger bindings and their providers' verdicts;
//! - `events`: the engine's own trigger types (`engine::functions-available`,
//!   `engine::workers-available`);
//! - [`builtins`]: the built-in `engine::*` functions;
//! - `handle`: [`EngineRef`] and [`WeakEngineRef`];
//! - `service`: the [`EngineService`] seam;
//! - `builder`: [`EngineBuilder`] and the running [`Engine`].
//!
//! # Layers
//!
//! The crate's top-level modules import downwards only (`tests/architecture.rs` fails on a
//! circle):
//! 1. the foundations, which know no engine: [`crate::error`], [`crate::protocol`],
//!    [`crate::registry`], [`crate::triggers`], [`crate::workers`], [`crate::function`],
//!    [`crate::invocation`], [`crate::external`], [`crate::server`] and [`crate::config`] (every
//!    setting, those of the services included);
//! 2. the engine core, this module, which names no service: it installs whatever list of
//!    [`EngineService`]s it is given;
//! 3. the services, each in its own folder on top of the core: [`crate::http`], [`crate::cron`],
//!    [`crate::queue`] (and the modules to come);
//! 4. [`crate::services`], the composition root: the list of standard services, with
//!    [`Engine::builder`] (an engine with them) and [`Engine::http_addr`].
//!
//! [`crate::client`], the worker side, sits on the foundations beside the engine.
//!
//! ```no_run
//! use fnmesh_core::engine::Engine;
//! use fnmesh_core::function::{async_fn, Outcome};
//! use fnmesh_core::registry::FunctionDef;
//!
//! # async fn run() -> std::io::Result<()> {
//! let engine = Engine::builder()
//!     .addr("127.0.0.1:49134".parse().unwrap())
//!     .function("math::double", FunctionDef::default(), async_fn(|data| async move {
//!         let n: i64 = serde_json::from_str(data.get()).unwrap_or(0);
//!         Outcome::json(&(n * 2))
//!     }))
//!     .start()
//!     .await?;
//! println!("workers connect to {}", engine.url());
//! engine.shutdown().await;
//! # Ok(()) }
//! ```

pub mod builtins;

mod access;
mod bindings;
mod builder;
mod dispatch;
mod events;
mod handle;
mod meters;
mod payload;
pub mod recent;
mod service;
mod session;
mod state;

pub use builder::{Engine, EngineBuilder};
pub use dispatch::trace_id;
pub use handle::{EngineRef, WeakEngineRef};
pub use service::{register_service_functions, EngineService, ServiceError, ServiceFunction};
pub use state::Target;
use state::{Provider, Shared, WorkerState};

pub use crate::config::EngineConfig;

/// Owner name of the engine's own built-in functions and trigger types (those of its services
/// included).
pub const ENGINE_OWNER: &str = "engine";
/// Owner name of functions a host program registers through [`Engine::register_function`].
pub const HOST_OWNER: &str = "host";

/// Owners of what this process itself provides: the engine's built-ins and services, and the
/// host's (embedded app's) functions and trigger types. Listings show them as the engine, and
/// workers cannot take them over.
pub(crate) fn is_in_process_owner(owner: &str) -> bool {
    owner == ENGINE_OWNER || owner == HOST_OWNER
}
/// Trigger type fired when the set of functions changes.
pub const FUNCTIONS_AVAILABLE: &str = "engine::functions-available";
/// Trigger type fired when workers connect, leave or describe themselves.
pub const WORKERS_AVAILABLE: &str = "engine::workers-available";
/// The function a call with `action: enqueue` becomes a call of (docs/protocol.md 4.4), with the
/// call inside; the queue service registers it. Without it, such a call fails with
/// `enqueue_error`.
pub const ENQUEUE_FUNCTION: &str = "engine::queue::enqueue";
