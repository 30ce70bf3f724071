//! [`StreamsService`]: `stream::*`, the `stream` trigger type and the client stream WebSocket as
//! an engine service.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::future::BoxFuture;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, watch, OnceCell};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::socket::{self, Hub};
use super::trigger::{StreamTrigger, STREAM_TRIGGER};
use super::{parse_scope, scope, scope_prefix, ChangeKind, StreamChange};
use crate::config::{StateBackend, StreamsConfig};
use crate::engine::{
    register_service_functions, EngineRef, EngineService, ServiceError, ServiceFunction,
    WeakEngineRef,
};
use crate::function::{Call, CallOptions, Outcome};
use crate::protocol::{ErrorCode, RawJson};
use crate::registry::DEFAULT_NAMESPACE;
use crate::state::memory::MemoryStore;
use crate::state::redis_store::RedisStateStore;
use crate::state::sqlite::SqliteStateStore;
use crate::state::{EventSink, StateError, StateEvent, StateResult, StateStore, UpdateOp};

/// The Redis key prefix of stream items (state's is `fnmesh:state:`).
const REDIS_PREFIX: &str = "fnmesh:streams:";

/// Changes made by custom streams (served by a worker, not a store) not yet dispatched.
const LOCAL_BACKLOG: usize = 65_536;

/// Streams (docs/protocol.md 6.10) as an engine service. With `EngineConfig::streams` (`None`
/// installs nothing) it registers `stream::set`, `stream::get`, `stream::delete`,
/// `stream::update`, `stream::list`, `stream::list_groups`, `stream::list_all`, the `stream`
/// trigger type, and opens the client stream WebSocket. A SQLite file is opened at the first
/// stream call; a Redis store connects and subscribes to the change events at install.
#[derive(Default)]
pub struct StreamsService {
    running: OnceLock<Arc<Running>>,
}

struct Running {
    config: StreamsConfig,
    store: OnceCell<Arc<dyn StateStore>>,
    events: EventSink,
    engine: WeakEngineRef,
    trigger: Arc<StreamTrigger>,
    hub: Arc<Hub>,
    local: mpsc::Sender<StreamChange>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl StreamsService {
    /// The `stream` trigger type, once installed.
    pub fn trigger(&self) -> Option<&Arc<StreamTrigger>> {
        self.running.get().map(|r| &r.trigger)
    }

    /// The clients of the stream WebSocket, once installed.
    pub fn hub(&self) -> Option<&Arc<Hub>> {
        self.running.get().map(|r| &r.hub)
    }

    /// Where the client stream WebSocket listens, once installed.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.running.get().map(|r| r.addr)
    }
}

fn store_error(e: impl std::fmt::Display) -> Outcome {
    Outcome::failure(ErrorCode::StreamStoreError, e.to_string())
}

impl Running {
    async fn store(&self) -> Result<Arc<dyn StateStore>, StateError> {
        self.store
            .get_or_try_init(|| async {
                let store: Arc<dyn StateStore> = match &self.config.backend {
                    StateBackend::Memory => Arc::new(MemoryStore::new(self.events.clone())),
                    StateBackend::Sqlite(path) => {
                        let (path, events) = (path.clone(), self.events.clone());
                        Arc::new(
                            tokio::task::spawn_blocking(move || {
                                SqliteStateStore::open(path, events)
                            })
                            .await
                            .map_err(|e| {
                                StateError::store(format_args!(
                                    "opening the streams file failed: {e}"
                                ))
                            })??,
                        )
                    }
                    StateBackend::Redis(url) => Arc::new(
                        RedisStateStore::connect_with_prefix(
                            url,
                            REDIS_PREFIX,
                            "streams_redis_url",
                            self.events.clone(),
                        )
                        .await
                        .map_err(StateError::Store)?,
                    ),
                };
                info!(backend = store.backend(), "stream store open");
                Ok(store)
            })
            .await
            .cloned()
    }

    fn dispatch(&self, change: StreamChange) {
        let change = Arc::new(change);
        self.trigger.dispatch(&change);
        self.hub.publish(&change);
    }

    /// The worker function serving `op` for `stream_name` (iii's custom streams), if any.
    fn custom(&self, op: &str, stream_name: &str) -> Option<(EngineRef, String)> {
        let engine = self.engine.upgrade()?;
        let id = format!("stream::{op}({stream_name})");
        engine
            .serves(DEFAULT_NAMESPACE, &id)
            .then_some((engine, id))
    }

    /// Calls a custom stream's function with the call's input; its answer parsed as `T`.
    async fn call_custom<T: DeserializeOwned>(
        engine: &EngineRef,
        id: &str,
        input: &RawJson,
    ) -> Result<Option<T>, Outcome> {
        match engine
            .call_with(id, input.clone(), CallOptions::default())
            .await
        {
            Outcome::Success(Some(raw)) if raw.get().trim() != "null" => {
                serde_json::from_str(raw.get()).map(Some).map_err(|e| {
                    store_error(format_args!("{id} answered an unexpected shape: {e}"))
                })
            }
            Outcome::Success(_) => Ok(None),
            failure => Err(failure),
        }
    }

    /// Hands a change made by a custom stream to the trigger and the clients (a store's changes
    /// come through its events instead).
    fn custom_change(&self, key: &ItemRef, kind: ChangeKind, data: &Value) {
        let change = StreamChange::new(&key.stream_name, &key.group_id, &key.item_id, kind, data);
        if self.local.try_send(change).is_err() {
            warn!(stream_name = %key.stream_name, "stream change backlog full: change dropped");
        }
    }
}

#[derive(Deserialize)]
struct ItemRef {
    stream_name: String,
    group_id: String,
    item_id: String,
}

#[derive(Deserialize)]
struct SetInput {
    #[serde(flatten)]
    key: ItemRef,
    data: Value,
}

#[derive(Deserialize)]
struct UpdateInput {
    #[serde(flatten)]
    key: ItemRef,
    ops: Vec<UpdateOp>,
}

#[derive(Deserialize)]
struct GroupRef {
    stream_name: String,
    group_id: String,
}

#[derive(Deserialize)]
struct StreamRef {
    stream_name: String,
}

/// `stream::set`'s answer (iii's `SetResult`), and a custom stream's.
#[derive(Serialize, Deserialize)]
struct SetResult {
    #[serde(default)]
    old_value: Option<Value>,
    new_value: Value,
}

/// `stream::delete`'s answer (iii's `DeleteResult`).
#[derive(Serialize, Deserialize, Default)]
struct DeleteResult {
    #[serde(default)]
    old_value: Option<Value>,
}

/// `stream::update`'s answer (iii's `UpdateResult`).
#[derive(Serialize, Deserialize)]
struct UpdateResult {
    #[serde(default)]
    old_value: Option<Value>,
    new_value: Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    errors: Vec<Value>,
}

/// A custom stream's answer to a write: what the item was and what it is now.
trait Written: Serialize + DeserializeOwned {
    fn old_value(&self) -> &Option<Value>;
    fn new_value(&self) -> &Value;
}

impl Written for SetResult {
    fn old_value(&self) -> &Option<Value> {
        &self.old_value
    }
    fn new_value(&self) -> &Value {
        &self.new_value
    }
}

impl Written for UpdateResult {
    fn old_value(&self) -> &Option<Value> {
        &self.old_value
    }
    fn new_value(&self) -> &Value {
        &self.new_value
    }
}

impl Running {
    /// Runs `op` on the store (opened on first use) and answers with what `answer` makes of its
    /// result; a store that cannot open or an operation that fails is `stream_store_error`.
    async fn on_store<T, Fut>(
        &self,
        op: impl FnOnce(Arc<dyn StateStore>) -> Fut,
        answer: impl FnOnce(T) -> Outcome,
    ) -> Outcome
    where
        Fut: std::future::Future<Output = StateResult<T>>,
    {
        match self.store().await {
            Ok(store) => match op(store).await {
                Ok(value) => answer(value),
                Err(e) => store_error(e),
            },
            Err(e) => store_error(e),
        }
    }

    /// Writes through a custom stream's function `id` and hands the change it reports on to the
    /// trigger and the clients.
    async fn custom_write<R: Written>(
        &self,
        engine: &EngineRef,
        id: &str,
        raw: &RawJson,
        key: &ItemRef,
    ) -> Outcome {
        match Self::call_custom::<R>(engine, id, raw).await {
            Ok(Some(result)) => {
                let kind = match result.old_value() {
                    Some(_) => ChangeKind::Update,
                    None => ChangeKind::Create,
                };
                self.custom_change(key, kind, result.new_value());
                Outcome::json(&result)
            }
            Ok(None) => store_error(format_args!("{id} answered no result")),
            Err(failure) => failure,
        }
    }

    async fn set(&self, raw: &RawJson, input: SetInput) -> Outcome {
        if let Some((engine, id)) = self.custom("set", &input.key.stream_name) {
            return self
                .custom_write::<SetResult>(&engine, &id, raw, &input.key)
                .await;
        }
        let k = &input.key;
        let scope = scope(&k.stream_name, &k.group_id);
        let data = input.data.clone();
        self.on_store(
            |store| async move { store.set(&scope, &k.item_id, data).await },
            |old_value| {
                Outcome::json(&SetResult {
                    old_value,
                    new_value: input.data,
                })
            },
        )
        .await
    }

    async fn get(&self, raw: &RawJson, key: ItemRef) -> Outcome {
        if let Some((engine, id)) = self.custom("get", &key.stream_name) {
            return engine
                .call_with(&id, raw.clone(), CallOptions::default())
                .await;
        }
        let scope = scope(&key.stream_name, &key.group_id);
        self.on_store(
            |store| async move { store.get(&scope, &key.item_id).await },
            |value| Outcome::json(&value),
        )
        .await
    }

    async fn delete(&self, raw: &RawJson, key: ItemRef) -> Outcome {
        if let Some((engine, id)) = self.custom("delete", &key.stream_name) {
            return match Self::call_custom::<DeleteResult>(&engine, &id, raw).await {
                Ok(result) => {
                    let result = result.unwrap_or_default();
                    if let Some(old) = &result.old_value {
                        self.custom_change(&key, ChangeKind::Delete, old);
                    }
                    Outcome::json(&result)
                }
                Err(failure) => failure,
            };
        }
        let scope = scope(&key.stream_name, &key.group_id);
        self.on_store(
            |store| async move { store.delete(&scope, &key.item_id).await },
            |old_value| Outcome::json(&DeleteResult { old_value }),
        )
        .await
    }

    async fn update(&self, raw: &RawJson, input: UpdateInput) -> Outcome {
        if let Some((engine, id)) = self.custom("update", &input.key.stream_name) {
            return self
                .custom_write::<UpdateResult>(&engine, &id, raw, &input.key)
                .await;
        }
        let k = &input.key;
        let scope = scope(&k.stream_name, &k.group_id);
        self.on_store(
            |store| async move { store.update(&scope, &k.item_id, input.ops).await },
            |updated| {
                Outcome::json(&UpdateResult {
                    old_value: updated.old_value,
                    new_value: updated.new_value,
                    errors: updated
                        .errors
                        .iter()
                        .filter_map(|e| serde_json::to_value(e).ok())
                        .collect(),
                })
            },
        )
        .await
    }

    async fn list(&self, raw: &RawJson, group: GroupRef) -> Outcome {
        if let Some((engine, id)) = self.custom("list", &group.stream_name) {
            return engine
                .call_with(&id, raw.clone(), CallOptions::default())
                .await;
        }
        let scope = scope(&group.stream_name, &group.group_id);
        self.on_store(
            |store| async move { store.list(&scope).await },
            |values| Outcome::json(&values),
        )
        .await
    }

    async fn list_groups(&self, raw: &RawJson, stream: StreamRef) -> Outcome {
        if let Some((engine, id)) = self.custom("list_groups", &stream.stream_name) {
            return engine
                .call_with(&id, raw.clone(), CallOptions::default())
                .await;
        }
        let prefix = scope_prefix(&stream.stream_name);
        self.on_store(
            |store| async move { store.list_groups().await },
            |scopes| {
                let groups: Vec<String> = scopes
                    .iter()
                    .filter(|s| s.starts_with(&prefix))
                    .filter_map(|s| parse_scope(s).map(|(_, group)| group))
                    .collect();
                Outcome::json(&groups)
            },
        )
        .await
    }

    async fn list_all(&self) -> Outcome {
        self.on_store(
            |store| async move { store.list_groups().await },
            |scopes| {
                let mut streams: Vec<(String, Vec<String>)> = Vec::new();
                for (stream, group) in scopes.iter().filter_map(|s| parse_scope(s)) {
                    match streams.last_mut() {
                        Some((last, groups)) if *last == stream => groups.push(group),
                        _ => streams.push((stream, vec![group])),
                    }
                }
                let stream: Vec<Value> = streams
                    .into_iter()
                    .map(|(id, groups)| serde_json::json!({"id": id, "groups": groups}))
                    .collect();
                let count = stream.len();
                Outcome::json(&serde_json::json!({"stream": stream, "count": count}))
            },
        )
        .await
    }
}

/// Answers `call` with `handle(raw input, parsed input)`; a bad input is a
/// `deserialization_error` naming the function.
async fn answer<T, F, Fut>(call: Call, handle: F)
where
    T: DeserializeOwned,
    F: FnOnce(RawJson, T) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let outcome = match serde_json::from_str::<T>(call.data.get()) {
        Ok(input) => handle(call.data.clone(), input).await,
        Err(e) => Outcome::failure(
            ErrorCode::DeserializationError,
            format!("invalid input for {}: {e}", call.function_id),
        ),
    };
    call.reply.send(outcome);
}

/// The stream functions, `(id, description, handler)`.
fn functions() -> Vec<ServiceFunction<Running>> {
    vec![
        (
            "stream::set",
            "Set {stream_name, group_id, item_id, data}; answers {old_value, new_value}",
            |s, call| Box::pin(answer(call, move |r, i| async move { s.set(&r, i).await })),
        ),
        (
            "stream::get",
            "Get {stream_name, group_id, item_id}; answers the item or null",
            |s, call| Box::pin(answer(call, move |r, i| async move { s.get(&r, i).await })),
        ),
        (
            "stream::delete",
            "Delete {stream_name, group_id, item_id}; answers {old_value}",
            |s, call| Box::pin(answer(call, move |r, i| async move { s.delete(&r, i).await })),
        ),
        (
            "stream::update",
            "Apply {stream_name, group_id, item_id, ops} atomically; answers {old_value, new_value, errors?}",
            |s, call| Box::pin(answer(call, move |r, i| async move { s.update(&r, i).await })),
        ),
        (
            "stream::list",
            "The items of {stream_name, group_id}, in item id order",
            |s, call| Box::pin(answer(call, move |r, i| async move { s.list(&r, i).await })),
        ),
        (
            "stream::list_groups",
            "The groups of {stream_name} holding items, sorted",
            |s, call| {
                Box::pin(answer(call, move |r, i| async move {
                    s.list_groups(&r, i).await
                }))
            },
        ),
        (
            "stream::list_all",
            "Every stream holding items and its groups; answers {stream: [{id, groups}], count}",
            |s, call| {
                Box::pin(answer(call, move |_, _: IgnoredAny| async move {
                    s.list_all().await
                }))
            },
        ),
    ]
}

/// Turns the store's change events (its own writes, and on Redis every engine's) into stream
/// changes, and dispatches them with the custom streams' ones.
fn run_dispatcher(
    running: &Arc<Running>,
    mut events: mpsc::Receiver<StateEvent>,
    mut local: mpsc::Receiver<StreamChange>,
) -> JoinHandle<()> {
    let running = Arc::downgrade(running);
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => StreamChange::from_state_event(&event),
                    None => return,
                },
                change = local.recv() => match change {
                    Some(change) => Some(change),
                    None => return,
                },
            };
            let Some(running) = running.upgrade() else {
                return;
            };
            if let Some(change) = change {
                running.dispatch(change);
            }
        }
    })
}

impl EngineService for StreamsService {
    fn name(&self) -> &'static str {
        "streams"
    }

    fn install<'a>(&'a self, engine: &'a EngineRef) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let Some(config) = engine.config().streams.clone() else {
                return Ok(());
            };
            if let StateBackend::Redis(url) = &config.backend {
                crate::redis_channel::client(url, "streams_redis_url")
                    .map_err(ServiceError::InvalidConfig)?;
            }
            if config.max_connections == 0
                || config.max_subscriptions == 0
                || config.outbound_bytes == 0
                || config.max_frame_bytes == 0
                || config.idle_timeout.is_zero()
            {
                return Err(ServiceError::InvalidConfig(
                    "streams_max_connections, streams_max_subscriptions, streams_outbound_bytes, \
                     streams_max_frame_bytes and streams_idle_timeout_ms must be positive"
                        .into(),
                ));
            }
            let (events, received) = EventSink::channel();
            let (local, local_received) = mpsc::channel(LOCAL_BACKLOG);
            let hub = Hub::new(config.clone());
            let (stop, stopped) = watch::channel(false);
            let addr = socket::listen(hub.clone(), engine.downgrade(), stopped)
                .await
                .map_err(|e| {
                    ServiceError::Listen(format!(
                        "cannot listen for stream clients on {} (streams_host, streams_port): {e}",
                        config.addr
                    ))
                })?;
            let running = Arc::new(Running {
                store: OnceCell::new(),
                events,
                engine: engine.downgrade(),
                trigger: StreamTrigger::new(engine.downgrade()),
                hub,
                local,
                addr,
                stop,
                tasks: Mutex::new(Vec::new()),
                config,
            });
            let dispatcher = run_dispatcher(&running, received, local_received);
            running
                .tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(dispatcher);
            if matches!(running.config.backend, StateBackend::Redis(_)) {
                // Subscribed before the engine takes calls, so no change is missed.
                running
                    .store()
                    .await
                    .map_err(|e| ServiceError::InvalidConfig(e.to_string()))?;
            }
            register_service_functions(engine, &running, functions())?;
            engine.register_engine_trigger_type(
                DEFAULT_NAMESPACE,
                STREAM_TRIGGER,
                "Fires on every change of a stream's items, filtered by stream, group and item (docs/protocol.md 6.10)",
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
            let _ = running.stop.send(true);
            running.trigger.shutdown();
            for task in running
                .tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
            {
                task.abort();
            }
        })
    }
}
