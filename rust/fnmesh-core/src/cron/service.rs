//! [`CronService`]: the `cron` trigger as an engine service.

use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;

use super::{CronLock, CronTrigger, LocalLock, RedisLock};
use crate::engine::{EngineRef, EngineService, ServiceError};
use crate::error::Error;
use crate::registry::DEFAULT_NAMESPACE;

/// The `cron` trigger type (docs/protocol.md 6.4) as an engine service: installs a [`CronTrigger`]
/// taking each tick's lock in the engine's `cron_redis_url` ([`RedisLock`]) or, without one, in
/// this engine alone ([`LocalLock`]); stops every job at shutdown.
#[derive(Default)]
pub struct CronService {
    trigger: OnceLock<Arc<CronTrigger>>,
}

impl EngineService for CronService {
    fn name(&self) -> &'static str {
        "cron"
    }

    fn install<'a>(&'a self, engine: &'a EngineRef) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let lock: Arc<dyn CronLock> = match &engine.config().cron_redis_url {
                None => Arc::new(LocalLock),
                Some(url) => Arc::new(RedisLock::new(url).map_err(|e| {
                    let reason = match e {
                        Error::InvalidArgument(reason) => reason,
                        other => other.to_string(),
                    };
                    ServiceError::InvalidConfig(format!("invalid cron_redis_url: {reason}"))
                })?),
            };
            let cron = CronTrigger::new(engine.downgrade(), lock);
            engine.register_engine_trigger_type(
                DEFAULT_NAMESPACE,
                "cron",
                "Runs a function on a cron schedule (docs/protocol.md 6.4)",
                cron.clone(),
            )?;
            let _ = self.trigger.set(cron);
            Ok(())
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(cron) = self.trigger.get() {
                cron.shutdown();
            }
        })
    }
}
