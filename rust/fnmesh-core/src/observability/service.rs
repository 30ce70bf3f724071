//! [`ObservabilityService`]: adds the telemetry store to the engine's hub and registers the
//! query functions.

use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::query::{self, LogsListInput, MetricsListInput, TracesListInput, TracesTreeInput};
use crate::engine::{EngineRef, EngineService, ServiceError, WeakEngineRef};
use crate::function::{Call, Outcome};
use crate::protocol::ErrorCode;
use crate::registry::{FunctionDef, FunctionKind, DEFAULT_NAMESPACE};
use crate::telemetry::store::{now_unix_nano, StoreSink, TelemetryStore, STORE_SINK};
use crate::telemetry::Telemetry;

/// The telemetry store and its query functions. The functions are registered on every engine;
/// with the store off (`telemetry_store_*` all 0) the trace functions answer
/// `memory_exporter_not_enabled` and the others answer empty lists, as iii's do.
#[derive(Default)]
pub struct ObservabilityService {
    running: OnceLock<Arc<Running>>,
}

struct Running {
    store: Option<Arc<TelemetryStore>>,
    hub: Telemetry,
    engine: WeakEngineRef,
}

impl ObservabilityService {
    /// The store, once installed and when on.
    pub fn store(&self) -> Option<&Arc<TelemetryStore>> {
        self.running.get().and_then(|r| r.store.as_ref())
    }
}

type Handler = fn(Arc<Running>, Call);

impl EngineService for ObservabilityService {
    fn name(&self) -> &'static str {
        "observability"
    }

    fn install<'a>(&'a self, engine: &'a EngineRef) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let config = &engine.config().telemetry_store;
            let store = config
                .enabled()
                .then(|| Arc::new(TelemetryStore::new(config)));
            if let Some(store) = &store {
                engine
                    .telemetry()
                    .add_sink(Arc::new(StoreSink(store.clone())));
            }
            let running = Arc::new(Running {
                store,
                hub: engine.telemetry().clone(),
                engine: engine.downgrade(),
            });
            let functions: [(&str, &str, Handler); 5] = [
                (
                    "engine::traces::list",
                    "List the stored traces' root spans (filters, sort, offset/limit)",
                    traces_list,
                ),
                (
                    "engine::traces::tree",
                    "The spans of {trace_id} nested under their parents: {roots}",
                    traces_tree,
                ),
                (
                    "engine::logs::list",
                    "List the stored log records, newest first (filters, offset/limit)",
                    logs_list,
                ),
                (
                    "engine::metrics::list",
                    "List the stored metrics the workers sent (filters, aggregate_interval)",
                    metrics_list,
                ),
                (
                    "engine::health::check",
                    "The engine's health: {status, components, timestamp, version}",
                    health_check,
                ),
            ];
            for (id, description, handler) in functions {
                let r = running.clone();
                let def = FunctionDef {
                    kind: FunctionKind::Local,
                    description: Some(description.to_owned()),
                    ..FunctionDef::default()
                };
                engine.register_engine_function(DEFAULT_NAMESPACE, id, def, move |call| {
                    handler(r.clone(), call)
                })?;
            }
            let _ = self.running.set(running);
            Ok(())
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(running) = self.running.get() {
                running.hub.remove_sink(STORE_SINK);
            }
        })
    }
}

/// The call's input, `null` (no payload) read as `{}`; a bad one answers
/// `deserialization_error`.
fn input<T: DeserializeOwned>(call: &Call) -> Result<T, Outcome> {
    let data = call.data.get();
    let data = if data.trim() == "null" { "{}" } else { data };
    serde_json::from_str(data).map_err(|e| {
        Outcome::failure(
            ErrorCode::DeserializationError,
            format!("invalid input for {}: {e}", call.function_id),
        )
    })
}

fn now_ms() -> u64 {
    now_unix_nano() / 1_000_000
}

fn bad_argument(message: String) -> Outcome {
    Outcome::failure(ErrorCode::InvalidArguments, message)
}

fn no_spans() -> Outcome {
    Outcome::failure(
        ErrorCode::MemoryExporterNotEnabled,
        "the telemetry store keeps no spans (setting telemetry_store_spans is 0)",
    )
}

/// The store when it keeps spans.
fn span_store(r: &Running) -> Option<&TelemetryStore> {
    r.store
        .as_deref()
        .filter(|s| s.spans.lock().unwrap_or_else(|p| p.into_inner()).enabled())
}

fn traces_list(r: Arc<Running>, call: Call) {
    let outcome = match input::<TracesListInput>(&call) {
        Err(e) => e,
        Ok(i) => match span_store(&r) {
            None => no_spans(),
            Some(store) => match query::traces_list(store, &i) {
                Ok(answer) => Outcome::json(&answer),
                Err(e) => bad_argument(e),
            },
        },
    };
    call.reply.send(outcome);
}

fn traces_tree(r: Arc<Running>, call: Call) {
    let outcome = match input::<TracesTreeInput>(&call) {
        Err(e) => e,
        Ok(i) => match span_store(&r) {
            None => no_spans(),
            Some(store) => Outcome::json(&query::traces_tree(store, &i)),
        },
    };
    call.reply.send(outcome);
}

fn logs_list(r: Arc<Running>, call: Call) {
    let outcome = match input::<LogsListInput>(&call) {
        Err(e) => e,
        Ok(i) => match &r.store {
            None => Outcome::json(&json!({ "logs": [], "total": 0, "timestamp": now_ms() })),
            Some(store) => match query::logs_list(store, &i, now_ms()) {
                Ok(answer) => Outcome::json(&answer),
                Err(e) => bad_argument(e),
            },
        },
    };
    call.reply.send(outcome);
}

fn metrics_list(r: Arc<Running>, call: Call) {
    let outcome = match input::<MetricsListInput>(&call) {
        Err(e) => e,
        Ok(i) => match &r.store {
            None => Outcome::json(&json!({ "sdk_metrics": [], "timestamp": now_ms() })),
            Some(store) => match query::metrics_list(store, &i, now_ms()) {
                Ok(answer) => Outcome::json(&answer),
                Err(e) => bad_argument(e),
            },
        },
    };
    call.reply.send(outcome);
}

fn component(on: bool, details: Value) -> Value {
    if on {
        json!({ "status": "healthy", "details": details })
    } else {
        json!({ "status": "disabled", "details": null })
    }
}

fn health_check(r: Arc<Running>, call: Call) {
    if let Err(e) = input::<serde::de::IgnoredAny>(&call) {
        call.reply.send(e);
        return;
    }
    tokio::spawn(async move {
        let Some(engine) = r.engine.upgrade() else {
            call.reply.send(Outcome::failure(
                ErrorCode::InvocationStopped,
                "the engine has stopped",
            ));
            return;
        };
        let outcome = Outcome::json(&health(&r, &engine).await);
        call.reply.send(outcome);
    });
}

async fn health(r: &Running, engine: &EngineRef) -> Value {
    let ring = |pick: fn(&TelemetryStore) -> (bool, usize, usize, u64), key: &str| match r
        .store
        .as_deref()
        .map(pick)
    {
        Some((true, len, bytes, evicted)) => component(
            true,
            json!({ key: len, "bytes": bytes, "evicted": evicted }),
        ),
        _ => component(false, Value::Null),
    };
    let spans = ring(
        |s| {
            let g = s.spans.lock().unwrap_or_else(|p| p.into_inner());
            (g.enabled(), g.len(), g.bytes(), g.evicted())
        },
        "stored_spans",
    );
    let logs = ring(
        |s| {
            let g = s.logs.lock().unwrap_or_else(|p| p.into_inner());
            (g.enabled(), g.len(), g.bytes(), g.evicted())
        },
        "stored_logs",
    );
    let metrics = ring(
        |s| {
            let g = s.metrics.lock().unwrap_or_else(|p| p.into_inner());
            (g.enabled(), g.len(), g.bytes(), g.evicted())
        },
        "stored_metrics",
    );
    let otel = component(
        r.hub.has_sinks(),
        json!({
            "enabled": r.hub.has_sinks(),
            "sinks": r.hub.sink_names(),
            "rejected_frames": r.hub.rejected(),
        }),
    );
    // Workers: the connected ones engine::workers::list reports (its engine row aside).
    let outcome = match serde_json::value::RawValue::from_string("{}".to_owned()) {
        Ok(data) => {
            engine
                .call(DEFAULT_NAMESPACE, "engine::workers::list", data, None, None)
                .await
        }
        Err(e) => Outcome::failure(ErrorCode::SerializationError, e.to_string()),
    };
    let workers = match outcome {
        Outcome::Success(Some(raw)) => serde_json::from_str::<Value>(raw.get())
            .ok()
            .and_then(|v| v["workers"].as_array().cloned())
            .map_or(0, |rows| {
                rows.iter().filter(|w| w["runtime"] != "engine").count()
            }),
        _ => 0,
    };
    let serves = |id: &str| engine.serves(DEFAULT_NAMESPACE, id);
    let services = json!({
        "state": serves("state::get"),
        "streams": serves("stream::get"),
        "queues": serves("engine::queue::enqueue"),
        "pubsub": serves("publish"),
        "cron": serves("engine::cron::next_runs"),
        "metrics_endpoint": engine.config().metrics_addr.is_some(),
    });
    json!({
        "status": "healthy",
        "components": {
            "otel": otel,
            "metrics": metrics,
            "logs": logs,
            "spans": spans,
            "workers": component(true, json!({ "connected": workers })),
            "services": component(true, services),
        },
        "timestamp": now_ms(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}
