//! [`CronService`]: the `cron` trigger as an engine service.

use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;

use super::{CronLock, CronSchedule, CronTrigger, LocalLock, RedisLock};
use crate::engine::{EngineRef, EngineService, ServiceError};
use crate::error::Error;
use crate::function::{Call, Outcome};
use crate::protocol::ErrorCode;
use crate::registry::{FunctionDef, FunctionKind, DEFAULT_NAMESPACE};

/// The function answering the next fire time of schedules.
pub const NEXT_RUNS: &str = "engine::cron::next_runs";
/// Schedules per `engine::cron::next_runs` call.
const NEXT_RUNS_LIMIT: usize = 1000;

#[derive(serde::Deserialize)]
struct NextRunsInput {
    schedules: Vec<ScheduleInput>,
}

#[derive(serde::Deserialize)]
struct ScheduleInput {
    expression: String,
    timezone: Option<String>,
}

/// `engine::cron::next_runs`: each schedule's next fire time after now, in ms since the epoch;
/// `null` for one that never fires again or does not parse.
fn next_runs(call: Call) {
    let outcome = match serde_json::from_str::<NextRunsInput>(call.data.get()) {
        Err(e) => Outcome::failure(
            ErrorCode::DeserializationError,
            format!("invalid input for {NEXT_RUNS}: {e}"),
        ),
        Ok(input) if input.schedules.len() > NEXT_RUNS_LIMIT => Outcome::failure(
            ErrorCode::InvalidArgument,
            format!("{NEXT_RUNS} takes at most {NEXT_RUNS_LIMIT} schedules"),
        ),
        Ok(input) => {
            let now = chrono::Utc::now();
            let runs: Vec<Option<i64>> = input
                .schedules
                .iter()
                .map(|s| {
                    CronSchedule::parse(&s.expression, s.timezone.as_deref())
                        .ok()
                        .and_then(|schedule| schedule.next_after(now))
                        .map(|t| t.timestamp_millis())
                })
                .collect();
            Outcome::json(&serde_json::json!({ "next_runs": runs }))
        }
    };
    call.reply.send(outcome);
}

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
            let def = FunctionDef {
                kind: FunctionKind::Local,
                description: Some(
                    "Next fire times of cron schedules: {schedules: [{expression, timezone}]} \
                     answers {next_runs: [ms since the epoch or null]} (the console's column)"
                        .to_owned(),
                ),
                ..FunctionDef::default()
            };
            engine.register_engine_function(DEFAULT_NAMESPACE, NEXT_RUNS, def, next_runs)?;
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
