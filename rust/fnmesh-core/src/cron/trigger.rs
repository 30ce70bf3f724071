//! The `cron` trigger type: bindings to job loops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::error::CronError;
use super::job::{run_job, Fire};
use super::lock::CronLock;
use super::schedule::CronSchedule;
use crate::engine::WeakEngineRef;
use crate::function::{CallOptions, Outcome};
use crate::telemetry::spans;
use crate::triggers::{condition_skips, TriggerAck, TriggerBinding, TriggerProvider};

/// A binding's config (docs/protocol.md 6.4, plus fnmesh's `timezone`).
#[derive(serde::Deserialize)]
struct CronConfig {
    expression: Option<String>,
    condition_function_id: Option<String>,
    timezone: Option<String>,
}

struct Job {
    stop: watch::Sender<bool>,
}

/// The `cron` trigger type: one [`run_job`] loop per binding, stopped when the binding goes.
pub struct CronTrigger {
    engine: WeakEngineRef,
    lock: Arc<dyn CronLock>,
    jobs: Mutex<HashMap<String, Job>>,
}

impl CronTrigger {
    pub(crate) fn new(engine: WeakEngineRef, lock: Arc<dyn CronLock>) -> Arc<CronTrigger> {
        Arc::new(CronTrigger {
            engine,
            lock,
            jobs: Mutex::new(HashMap::new()),
        })
    }

    /// Stops every job (engine shutdown); a run in progress finishes on its own.
    pub(crate) fn shutdown(&self) {
        for (_, job) in lock_jobs(&self.jobs).drain() {
            let _ = job.stop.send(true);
        }
    }

    /// Number of running jobs.
    pub fn job_count(&self) -> usize {
        lock_jobs(&self.jobs).len()
    }

    fn start(&self, binding: Arc<TriggerBinding>) -> Result<(), CronError> {
        let config: CronConfig = serde_json::from_str(binding.config.get())
            .map_err(|e| CronError::InvalidConfig(e.to_string()))?;
        let expression = config.expression.ok_or(CronError::MissingExpression)?;
        let schedule = CronSchedule::parse(&expression, config.timezone.as_deref())?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| CronError::NoRuntime)?;
        let fire = fire_binding(
            self.engine.clone(),
            binding.clone(),
            config.condition_function_id,
        );
        let (stop, stopped) = watch::channel(false);
        let previous = lock_jobs(&self.jobs).insert(binding.id.clone(), Job { stop });
        if let Some(previous) = previous {
            let _ = previous.stop.send(true);
        }
        info!(job_id = %binding.id, expression = %schedule.expression(), timezone = schedule.timezone(), function_id = %binding.function_id, "cron job scheduled");
        runtime.spawn(run_job(
            binding.id.clone(),
            schedule,
            self.lock.clone(),
            fire,
            stopped,
        ));
        Ok(())
    }
}

impl TriggerProvider for Arc<CronTrigger> {
    fn register(&self, binding: Arc<TriggerBinding>, ack: TriggerAck) {
        match self.start(binding) {
            Ok(()) => ack.accept(),
            Err(reason) => ack.refuse(reason.to_string()),
        }
    }

    fn unregister(&self, binding: &TriggerBinding) {
        if let Some(job) = lock_jobs(&self.jobs).remove(&binding.id) {
            let _ = job.stop.send(true);
            info!(job_id = %binding.id, "cron job removed");
        }
    }
}

/// One fire of a binding: its condition (JSON `false` or an error skips), then its function,
/// in the binding's namespace with its metadata. Results are ignored; failures are logged.
fn fire_binding(
    engine: WeakEngineRef,
    binding: Arc<TriggerBinding>,
    condition: Option<String>,
) -> Fire {
    Arc::new(move |payload: Value| {
        let engine = engine.clone();
        let binding = binding.clone();
        let condition = condition.clone();
        Box::pin(async move {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let Ok(data) = serde_json::value::to_raw_value(&payload) else {
                return;
            };
            let span = spans::start_cron(engine.tracer(), &binding.id, &binding.function_id);
            let options = || CallOptions {
                traceparent: span.as_ref().map(|s| s.traceparent()),
                namespace: Some(binding.namespace.clone()),
                metadata: binding.metadata.clone(),
                ..CallOptions::default()
            };
            if let Some(condition) = &condition {
                match engine.call_with(condition, data.clone(), options()).await {
                    Outcome::Success(result) if condition_skips(result.as_deref()) => {
                        debug!(job_id = %binding.id, "cron run skipped by its condition");
                        spans::end(span, None);
                        return;
                    }
                    Outcome::Success(_) => {}
                    Outcome::Failure(e) => {
                        warn!(job_id = %binding.id, code = %e.code, "cron condition failed, run skipped: {}", e.message);
                        spans::end(span, Some(&e));
                        return;
                    }
                }
            }
            let outcome = engine
                .call_with(&binding.function_id, data, options())
                .await;
            if let Outcome::Failure(e) = &outcome {
                warn!(job_id = %binding.id, function_id = %binding.function_id, code = %e.code, "cron run failed: {}", e.message);
            }
            spans::end(span, spans::failure(&outcome));
        })
    })
}

fn lock_jobs(
    jobs: &Mutex<HashMap<String, Job>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
    jobs.lock().unwrap_or_else(|p| p.into_inner())
}
