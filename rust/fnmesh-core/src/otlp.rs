//! [`OtlpService`]: installs the OTLP exporter ([`crate::telemetry::export`]) on the engine's
//! telemetry hub when the setting `otlp_endpoint` or the `OTEL_EXPORTER_OTLP_*` variables name a
//! collector (docs/observability.md, "Traces").

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tracing::info;

use crate::engine::{EngineRef, EngineService, ServiceError, WeakEngineRef};
use crate::telemetry::export::{ExportConfig, OtlpExporter};

/// How long shutdown waits for the queued telemetry to be sent.
const DRAIN: Duration = Duration::from_secs(2);

type Running = (
    Arc<OtlpExporter>,
    tokio::task::JoinHandle<()>,
    WeakEngineRef,
);

/// The OTLP exporter service. Installed by every engine; it exports only when configured.
#[derive(Default)]
pub struct OtlpService {
    running: Mutex<Option<Running>>,
}

impl OtlpService {
    /// The running exporter, when one is configured.
    pub fn exporter(&self) -> Option<Arc<OtlpExporter>> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.as_ref().map(|(sink, _, _)| sink.clone())
    }
}

impl EngineService for OtlpService {
    fn name(&self) -> &'static str {
        "otlp"
    }

    fn install<'a>(&'a self, engine: &'a EngineRef) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
            let Some(config) =
                ExportConfig::from_settings(engine.config().otlp_endpoint.as_deref(), env)
                    .map_err(ServiceError::InvalidConfig)?
            else {
                return Ok(());
            };
            info!(traces = ?config.traces, logs = ?config.logs, metrics = ?config.metrics, "exporting telemetry over OTLP");
            let (sink, task) = OtlpExporter::start(config);
            engine.telemetry().add_sink(sink.clone());
            *self.running.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((sink, task, engine.downgrade()));
            Ok(())
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let running = self
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            let Some((sink, task, engine)) = running else {
                return;
            };
            if let Some(engine) = engine.upgrade() {
                // The spans finished since the last sweep, then no more batches.
                engine.tracer().flush();
                engine.telemetry().remove_sink("otlp");
            }
            drop(sink);
            let abort = task.abort_handle();
            if tokio::time::timeout(DRAIN, task).await.is_err() {
                abort.abort();
            }
        })
    }
}
