//! # fnmesh-core
//!
//! The engine core of fnmesh, usable from plain Rust with no Python involved: the iii wire
//! codec ([`protocol`]), the function, trigger and worker registries ([`registry`]) and, in
//! later modules, the dispatch loop and the WebSocket/HTTP servers; [`client`] is the worker
//! client that connects a Rust program to any iii-compatible engine.
//!
//! ```
//! use fnmesh_core::protocol::{decode, Message};
//!
//! let frame = r#"{"type":"invokefunction","invocation_id":"9b2f0c9e-2c55-4d53-9a57-0f1f0f6b8a11",
//!                 "function_id":"orders::create","data":{"sku":"A1"}}"#;
//! let Message::InvokeFunction(call) = decode(frame.as_bytes())? else { unreachable!() };
//! assert_eq!(call.function_id, "orders::create");
//! // The payload is kept as raw JSON text, never parsed into a tree.
//! assert_eq!(call.data_or_null().get(), r#"{"sku":"A1"}"#);
//! # Ok::<(), fnmesh_core::Error>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod bulk_read;
pub mod change_trigger;
pub mod channels;
pub mod client;
pub mod config;
pub mod cron;
pub mod driver;
pub mod engine;
pub mod error;
pub mod external;
pub mod function;
pub mod http;
pub mod invocation;
pub mod link;
pub mod meter;
pub mod metrics;
pub mod observability;
pub mod otlp;
pub mod protocol;
pub mod pubsub;
pub mod queue;
pub mod redis_channel;
pub mod registry;
pub mod server;
pub mod services;
pub mod state;
pub mod streams;
pub mod telemetry;
pub mod triggers;
pub mod workers;

pub use engine::builtins;
pub use error::{Error, Result};
