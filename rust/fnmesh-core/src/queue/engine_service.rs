//! [`QueuesService`]: the durable queues as an engine service.

use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;

use super::service::{functions, DurableSubscriber, QueueService, DURABLE_SUBSCRIBER};
use crate::engine::{register_service_functions, EngineRef, EngineService, ServiceError};
use crate::registry::DEFAULT_NAMESPACE;

/// The durable queues (docs/protocol.md 4.4, 6.5) as an engine service. With the engine's
/// [`QueueSettings`](crate::config::QueueSettings) (`EngineConfig::queues`; `None` installs
/// nothing, and `action: enqueue` then fails with `enqueue_error`), it checks them, registers the
/// `engine::queue::*` functions (with `engine::queue::enqueue`, the target of `action: enqueue`)
/// and the `durable:subscriber` trigger type, and starts the store; at shutdown it stops the
/// consumers.
#[derive(Default)]
pub struct QueuesService {
    queues: OnceLock<Arc<QueueService>>,
}

impl EngineService for QueuesService {
    fn name(&self) -> &'static str {
        "queues"
    }

    fn install<'a>(&'a self, engine: &'a EngineRef) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let Some(settings) = &engine.config().queues else {
                return Ok(());
            };
            settings
                .validate()
                .map_err(|e| ServiceError::InvalidConfig(e.to_string()))?;
            let metered = engine.metrics_enabled();
            let service = QueueService::new(settings.clone(), engine.downgrade(), metered);
            if metered {
                engine.add_metrics_source(service.clone());
            }
            register_service_functions(engine, &service, functions())?;
            engine.register_engine_trigger_type(
                DEFAULT_NAMESPACE,
                DURABLE_SUBSCRIBER,
                "Durable topic subscription: every subscriber gets its own queued copy (docs/protocol.md 6.5)",
                DurableSubscriber(service.clone()),
            )?;
            service.start();
            let _ = self.queues.set(service);
            Ok(())
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(queues) = self.queues.get() {
                queues.shutdown().await;
            }
        })
    }
}
