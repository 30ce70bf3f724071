//! The standard engine services, and the engine that runs them: the composition root of the
//! crate.
//!
//! The engine core ([`crate::engine`]) names no service; each service lives in its own folder on
//! top of it and implements [`EngineService`]. This module, above both, is the one place that
//! lists them: [`Engine::builder`] starts an engine with [`standard`] (the HTTP trigger, cron,
//! the durable queues, state, pubsub, streams, the `/metrics` endpoint, the telemetry store and
//! its query functions, the OTLP exporter, in that order; shut down in reverse order).
//!
//! Adding a service to every engine: implement [`EngineService`] in its own folder, then add one
//! line to [`standard`].

use std::net::SocketAddr;

use crate::cron::CronService;
#[cfg(doc)]
use crate::engine::EngineService;
use crate::engine::{Engine, EngineBuilder};
use crate::http::HttpService;
use crate::metrics::MetricsService;
use crate::observability::ObservabilityService;
use crate::otlp::OtlpService;
use crate::pubsub::PubsubService;
use crate::queue::QueuesService;
use crate::state::StateService;
use crate::streams::StreamsService;

/// Adds the standard services to `builder`, in start order.
pub fn standard(builder: EngineBuilder) -> EngineBuilder {
    builder
        .service(HttpService::default())
        .service(CronService::default())
        .service(QueuesService::default())
        .service(StateService::default())
        .service(PubsubService::default())
        .service(StreamsService::default())
        .service(MetricsService::default())
        .service(ObservabilityService::default())
        .service(OtlpService::default())
}

impl Engine {
    /// A builder with the default configuration and the [`standard`] services (HTTP
    /// triggers, cron, durable queues, state, pubsub, streams). [`EngineBuilder::new`] starts from no service.
    pub fn builder() -> EngineBuilder {
        standard(EngineBuilder::new())
    }

    /// Where HTTP triggers are served, once the first route opened the listener (`None` also
    /// when the engine runs no [`HttpService`]).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.service::<HttpService>()
            .and_then(HttpService::local_addr)
    }

    /// Where `/metrics` is served (`None` when metrics are off, setting `metrics_addr`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.service::<MetricsService>()
            .and_then(MetricsService::local_addr)
    }

    /// Where the client stream WebSocket listens (`None` when the engine runs no
    /// [`StreamsService`] or streams are off).
    pub fn streams_addr(&self) -> Option<SocketAddr> {
        self.service::<StreamsService>()
            .and_then(StreamsService::local_addr)
    }
}
