//! [`StateService`]: `state::*` and the `state` trigger type as an engine service.

use std::sync::{Arc, Mutex, OnceLock};

use futures_util::future::BoxFuture;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tracing::info;

use super::memory::MemoryStore;
use super::redis_store::RedisStateStore;
use super::sqlite::SqliteStateStore;
use super::trigger::{StateTrigger, STATE_TRIGGER};
use super::{EventSink, StateError, StateResult, StateStore, UpdateOp};
use crate::config::StateBackend;
use crate::engine::{
    register_service_functions, EngineRef, EngineService, ServiceError, ServiceFunction,
};
use crate::function::{Call, Outcome};
use crate::protocol::ErrorCode;
use crate::registry::DEFAULT_NAMESPACE;

/// State (docs/protocol.md 6.8) as an engine service. With the engine's `state` backend
/// (`EngineConfig::state`; `None` installs nothing) it registers `state::set`, `state::get`,
/// `state::delete`, `state::update`, `state::list`, `state::list_groups` and the `state`
/// trigger type. A SQLite file is opened (off the runtime) at the first state call; a Redis
/// store connects and subscribes to the change events at install.
#[derive(Default)]
pub struct StateService {
    running: OnceLock<Arc<Running>>,
}

struct Running {
    backend: StateBackend,
    store: OnceCell<Arc<dyn StateStore>>,
    events: EventSink,
    trigger: Arc<StateTrigger>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
}

impl StateService {
    /// The `state` trigger type, once installed.
    pub fn trigger(&self) -> Option<&Arc<StateTrigger>> {
        self.running.get().map(|r| &r.trigger)
    }
}

impl Running {
    async fn store(&self) -> StateResult<Arc<dyn StateStore>> {
        self.store
            .get_or_try_init(|| async {
                let store: Arc<dyn StateStore> = match &self.backend {
                    StateBackend::Memory => Arc::new(MemoryStore::new(self.events.clone())),
                    StateBackend::Sqlite(path) => {
                        let path = path.clone();
                        let events = self.events.clone();
                        Arc::new(
                            tokio::task::spawn_blocking(move || {
                                SqliteStateStore::open(path, events)
                            })
                            .await
                            .map_err(|e| {
                                StateError::store(format_args!(
                                    "opening the state file failed: {e}"
                                ))
                            })??,
                        )
                    }
                    StateBackend::Redis(url) => Arc::new(
                        RedisStateStore::connect(url, self.events.clone())
                            .await
                            .map_err(StateError::Store)?,
                    ),
                };
                info!(backend = store.backend(), "state store open");
                Ok(store)
            })
            .await
            .cloned()
    }
}

impl EngineService for StateService {
    fn name(&self) -> &'static str {
        "state"
    }

    fn install<'a>(&'a self, engine: &'a EngineRef) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let Some(backend) = &engine.config().state else {
                return Ok(());
            };
            if let StateBackend::Redis(url) = backend {
                crate::redis_channel::client(url, "state_redis_url")
                    .map_err(ServiceError::InvalidConfig)?;
            }
            let (events, received) = EventSink::channel();
            let trigger = StateTrigger::new(engine.downgrade());
            let running = Arc::new(Running {
                backend: backend.clone(),
                store: OnceCell::new(),
                events,
                dispatcher: Mutex::new(Some(trigger.run(received))),
                trigger,
            });
            if matches!(backend, StateBackend::Redis(_)) {
                // Subscribed before the engine takes calls, so its triggers miss no change.
                running
                    .store()
                    .await
                    .map_err(|e| ServiceError::InvalidConfig(e.to_string()))?;
            }
            register_service_functions(engine, &running, functions())?;
            engine.register_engine_trigger_type(
                DEFAULT_NAMESPACE,
                STATE_TRIGGER,
                "Fires on every change of the state, filtered by scope and key (docs/protocol.md 6.8)",
                running.trigger.clone(),
            )?;
            let _ = self.running.set(running);
            Ok(())
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(running) = self.running.get() else {
                return;
            };
            running.trigger.shutdown();
            if let Some(dispatcher) = running
                .dispatcher
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                dispatcher.abort();
            }
        })
    }
}

#[derive(Deserialize)]
struct KeyRef {
    scope: String,
    key: String,
}

#[derive(Deserialize)]
struct SetInput {
    scope: String,
    key: String,
    #[serde(alias = "data")]
    value: Value,
}

#[derive(Deserialize)]
struct UpdateInput {
    scope: String,
    key: String,
    ops: Vec<UpdateOp>,
}

#[derive(Deserialize)]
struct ScopeRef {
    scope: String,
}

fn failed(e: StateError) -> Outcome {
    Outcome::failure(e.code(), e.to_string())
}

impl Running {
    async fn set(&self, input: SetInput) -> Outcome {
        let store = match self.store().await {
            Ok(store) => store,
            Err(e) => return failed(e),
        };
        match store
            .set(&input.scope, &input.key, input.value.clone())
            .await
        {
            Ok(old) => Outcome::json(&serde_json::json!({
                "old_value": old,
                "new_value": input.value,
            })),
            Err(e) => failed(e),
        }
    }

    async fn get(&self, input: KeyRef) -> Outcome {
        match self.store().await {
            Ok(store) => match store.get(&input.scope, &input.key).await {
                Ok(value) => Outcome::json(&value),
                Err(e) => failed(e),
            },
            Err(e) => failed(e),
        }
    }

    async fn delete(&self, input: KeyRef) -> Outcome {
        match self.store().await {
            // iii answers the deleted value itself (null when there was none).
            Ok(store) => match store.delete(&input.scope, &input.key).await {
                Ok(old) => Outcome::json(&old),
                Err(e) => failed(e),
            },
            Err(e) => failed(e),
        }
    }

    async fn update(&self, input: UpdateInput) -> Outcome {
        let store = match self.store().await {
            Ok(store) => store,
            Err(e) => return failed(e),
        };
        match store.update(&input.scope, &input.key, input.ops).await {
            Ok(updated) => {
                let mut answer = serde_json::json!({
                    "old_value": updated.old_value,
                    "new_value": updated.new_value,
                });
                if !updated.errors.is_empty() {
                    answer["errors"] = serde_json::json!(updated.errors);
                }
                Outcome::json(&answer)
            }
            Err(e) => failed(e),
        }
    }

    async fn list(&self, input: ScopeRef) -> Outcome {
        match self.store().await {
            Ok(store) => match store.list(&input.scope).await {
                Ok(values) => Outcome::json(&values),
                Err(e) => failed(e),
            },
            Err(e) => failed(e),
        }
    }

    async fn list_groups(&self) -> Outcome {
        match self.store().await {
            Ok(store) => match store.list_groups().await {
                Ok(groups) => Outcome::json(&serde_json::json!({ "groups": groups })),
                Err(e) => failed(e),
            },
            Err(e) => failed(e),
        }
    }
}

/// Answers `call` with `handle(input)`, its input parsed from the call's data; a bad input is a
/// `deserialization_error` naming the function.
async fn answer<T, F, Fut>(call: Call, handle: F)
where
    T: serde::de::DeserializeOwned,
    F: FnOnce(T) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let outcome = match serde_json::from_str::<T>(call.data.get()) {
        Ok(input) => handle(input).await,
        Err(e) => Outcome::failure(
            ErrorCode::DeserializationError,
            format!("invalid input for {}: {e}", call.function_id),
        ),
    };
    call.reply.send(outcome);
}

/// The state functions, `(id, description, handler)`.
fn functions() -> Vec<ServiceFunction<Running>> {
    vec![
        (
            "state::set",
            "Set {scope, key, value}; answers {old_value, new_value}",
            |s, call| Box::pin(answer(call, move |i| async move { s.set(i).await })),
        ),
        (
            "state::get",
            "Get {scope, key}; answers the value or null",
            |s, call| Box::pin(answer(call, move |i| async move { s.get(i).await })),
        ),
        (
            "state::delete",
            "Delete {scope, key}; answers the deleted value or null",
            |s, call| Box::pin(answer(call, move |i| async move { s.delete(i).await })),
        ),
        (
            "state::update",
            "Apply {scope, key, ops} atomically; answers {old_value, new_value, errors?}",
            |s, call| Box::pin(answer(call, move |i| async move { s.update(i).await })),
        ),
        (
            "state::list",
            "Every value of {scope}, in key order",
            |s, call| Box::pin(answer(call, move |i| async move { s.list(i).await })),
        ),
        (
            "state::list_groups",
            "The scopes holding values; answers {groups}",
            |s, call| {
                Box::pin(answer(call, move |_: IgnoredAny| async move {
                    s.list_groups().await
                }))
            },
        ),
    ]
}
