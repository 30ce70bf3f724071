//! [`HttpService`]: the HTTP trigger as an engine service.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;

use super::hosted::HttpHost;
use super::trigger::HttpTrigger;
use crate::engine::{EngineRef, EngineService, ServiceError};
use crate::registry::DEFAULT_NAMESPACE;

/// The `http` trigger type (docs/protocol.md 6.3) as an engine service: installs an [`HttpTrigger`]
/// with the engine's [`HttpConfig`](crate::config::HttpConfig), opening its listener at once when
/// `listen_at_start` says so, and stops the listener at shutdown.
#[derive(Default)]
pub struct HttpService {
    trigger: OnceLock<Arc<HttpTrigger>>,
}

impl HttpService {
    /// Where HTTP triggers are served, once the first route (or `listen_at_start`) opened the
    /// listener.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.trigger.get().and_then(|t| t.local_addr())
    }

    /// Offers the connections accepted from now on to `host` (docs/architecture.md, "Requests
    /// on the loop's thread"); `None` serves them all on the runtime. Nothing happens before
    /// the service is installed.
    pub fn set_host(&self, host: Option<Arc<dyn HttpHost>>) {
        if let Some(trigger) = self.trigger.get() {
            trigger.set_host(host);
        }
    }
}

impl EngineService for HttpService {
    fn name(&self) -> &'static str {
        "http"
    }

    fn install<'a>(&'a self, engine: &'a EngineRef) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let config = engine.config().http.clone();
            let listen_at_start = config.listen_at_start;
            let metered = engine.metrics_enabled();
            let http =
                HttpTrigger::new(engine.downgrade(), config, metered, engine.tracer().clone());
            if metered {
                engine.add_metrics_source(http.clone());
            }
            engine.register_engine_trigger_type(
                DEFAULT_NAMESPACE,
                "http",
                "HTTP routes served by the engine (docs/protocol.md 6.3)",
                http.clone(),
            )?;
            // Kept before the listener opens, so that shutdown stops it whatever happens next.
            let _ = self.trigger.set(http.clone());
            if listen_at_start {
                http.ensure_listening()
                    .map_err(|e| ServiceError::Listen(e.to_string()))?;
            }
            Ok(())
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(http) = self.trigger.get() {
                http.shutdown().await;
            }
        })
    }
}
