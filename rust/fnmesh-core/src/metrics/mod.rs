//! The Prometheus `/metrics` endpoint as an engine service (docs/observability.md): the meters
//! themselves are the foundation [`crate::meter`]; the engine and the services record into them.

mod service;

pub use service::MetricsService;
