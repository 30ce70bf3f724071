//! Observability as an engine service: the in-memory telemetry store on the engine's hub
//! ([`crate::telemetry::store`]) and the functions that read it, `engine::traces::list`,
//! `engine::traces::tree`, `engine::logs::list`, `engine::metrics::list`, and
//! `engine::health::check`, with iii's inputs and answers (docs/observability.md, "Worker
//! telemetry and the query functions").
//!
//! The hub and the `/otel` decoder live in [`crate::telemetry`], below the engine; this module
//! sits above it, as the other services do.

pub mod query;
mod service;

pub use service::ObservabilityService;
