//! The engine's queues: named queues over one [`QueueStore`], the consumers that call their
//! functions, the `engine::queue::*` / `iii::queue::*` functions, and topics (the
//! `durable:subscriber` trigger type with `iii::durable::publish`).
//!
//! - `action: enqueue` on any call (docs/protocol.md 4.4) becomes a call of `engine::queue::enqueue`
//!   (as in iii), which stores the message and answers `{"messageReceiptId"}`.
//! - One consumer per queue claims up to its `concurrency` messages at a time, calls each one's
//!   function in the namespace captured at enqueue (with the enqueuer's trace context), acks on
//!   success, and on failure retries after `backoff * 2^(attempt-1)` or, after `max_retries`
//!   retries, moves the message to the queue's dead letters. A consumer sleeps until an enqueue
//!   in this engine wakes it, or for `poll_interval` (retries coming due, other engines'
//!   enqueues on a shared store).
//! - The store opens lazily: at the first enqueue, or at start when it already holds messages
//!   (a SQLite file from an earlier run: its messages in flight then are claimed again once
//!   their visibility timeout passes, never earlier, since the workers of an engine that crashed
//!   may still be running them).
//! - While a call is in flight its claim is extended every third of the visibility timeout (a
//!   heartbeat), so a call may run longer than the visibility timeout without being delivered
//!   twice; the call itself is bounded by the larger of the visibility timeout and the engine's
//!   `invocation_timeout`.
//! - A message whose function no worker serves when it is claimed (its consumer restarting,
//!   a deploy) is put back without counting anything and waits, however long, with a delay
//!   growing to 5 s between looks (`consumer::park_if_unserved`).
//! - A call that never ran (a handler answering `function_not_found`) or was stopped
//!   (`invocation_stopped`: its worker left, the engine is stopping) puts the message back
//!   without using an attempt, at most `max_releases` times; a condition function that fails is
//!   a failed attempt. At shutdown the messages in flight are put back at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::{Notify, OnceCell};
use tracing::{debug, info, warn};

use super::memory::MemoryStore;
use super::sqlite::SqliteStore;
use super::{
    Delivery, Nack, NewMessage, QueueConfig, QueueKind, QueueStore, StoreError, StoreResult,
};
pub use crate::config::{QueueBackend, QueueConfigError, QueueSettings};
use crate::engine::{ServiceFunction, WeakEngineRef};
use crate::function::{Call, Outcome};
use crate::meter::{DeliveryCounts, Exposition, MetricsSource};
use crate::protocol::{ErrorBody, ErrorCode, RawJson};
use crate::registry::DEFAULT_NAMESPACE;
use crate::triggers::{TriggerAck, TriggerBinding, TriggerProvider};

/// After the SQLite store failed to open, calls within this long answer that failure again.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// The trigger type of topic subscriptions.
pub const DURABLE_SUBSCRIBER: &str = "durable:subscriber";
/// Code of every enqueue refusal (docs/protocol.md 4.4): [`ErrorCode::EnqueueError`].
pub const ENQUEUE_ERROR: &str = ErrorCode::EnqueueError.as_str();

/// The settings of named queues from JSON: `{"<name>": {"max_retries": 3, "backoff_ms": 1000,
/// "concurrency": 10, "visibility_timeout_ms": 30000, "type": "standard" | "fifo",
/// "message_group_field": "...", "idempotency_window_ms": 86400000, "max_releases": 20}}`, every
/// field optional.
/// Unknown fields and wrong types are errors that name the queue and the field.
pub fn queue_configs_from_json(text: &str) -> Result<Vec<QueueConfig>, QueueConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        max_retries: Option<u32>,
        backoff_ms: Option<u64>,
        concurrency: Option<usize>,
        visibility_timeout_ms: Option<u64>,
        #[serde(rename = "type")]
        kind: Option<String>,
        message_group_field: Option<String>,
        idempotency_window_ms: Option<u64>,
        max_releases: Option<u32>,
    }
    let entries: BTreeMap<String, Value> =
        serde_json::from_str(text).map_err(|e| QueueConfigError::NotATable(e.to_string()))?;
    let mut configs = Vec::new();
    for (name, value) in entries {
        let entry: Entry =
            serde_json::from_value(value).map_err(|e| QueueConfigError::InvalidEntry {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        let mut config = QueueConfig::new(name.clone());
        if let Some(v) = entry.max_retries {
            config.max_retries = v;
        }
        if let Some(v) = entry.backoff_ms {
            config.backoff = Duration::from_millis(v);
        }
        if let Some(v) = entry.concurrency {
            config.concurrency = v;
        }
        if let Some(v) = entry.visibility_timeout_ms {
            config.visibility_timeout = Duration::from_millis(v);
        }
        if let Some(v) = entry.idempotency_window_ms {
            config.idempotency_window = Duration::from_millis(v);
        }
        if let Some(v) = entry.max_releases {
            config.max_releases = v;
        }
        config.kind = match (
            entry.kind.as_deref().unwrap_or("standard"),
            entry.message_group_field,
        ) {
            ("standard", None) => QueueKind::Standard,
            ("standard", Some(_)) => return Err(QueueConfigError::GroupFieldWithoutFifo(name)),
            ("fifo", Some(field)) => QueueKind::Fifo {
                message_group_field: field,
            },
            ("fifo", None) => return Err(QueueConfigError::FifoWithoutGroupField(name)),
            (other, _) => {
                return Err(QueueConfigError::UnknownKind {
                    name,
                    kind: other.to_owned(),
                })
            }
        };
        configs.push(config);
    }
    Ok(configs)
}

/// One subscription of a function to a topic.
#[derive(Debug, Clone)]
struct Subscription {
    binding_id: String,
    topic: String,
    queue: String,
    function_id: String,
    namespace: String,
}

struct Consumer {
    stop: Arc<Notify>,
    wake: Arc<Notify>,
}

/// The queues of one engine.
pub(crate) struct QueueService {
    settings: QueueSettings,
    engine: WeakEngineRef,
    store: OnceCell<Arc<dyn QueueStore>>,
    /// Named queues and the queues of topic subscriptions.
    configs: Mutex<HashMap<String, QueueConfig>>,
    consumers: Mutex<HashMap<String, Consumer>>,
    subscriptions: Mutex<BTreeMap<String, Subscription>>,
    /// Condition functions of subscriber queues: queue -> (namespace, function id).
    conditions: Mutex<HashMap<String, (String, String)>>,
    /// Deliveries whose call is in flight, by lease, with their queue's settings: released at
    /// shutdown.
    running: Mutex<HashMap<String, (Delivery, QueueConfig)>>,
    /// Each queue's delivery meters, by queue name (one per consumer, so bounded by the
    /// queues); `None` when metrics are off.
    deliveries: Option<Mutex<BTreeMap<String, Arc<DeliveryCounts>>>>,
    /// When opening the SQLite store last failed, and why.
    open_failed: Mutex<Option<(std::time::Instant, StoreError)>>,
    stopped: std::sync::atomic::AtomicBool,
    /// Set when a queue may lack its consumer (before the store opens, after a subscription).
    consumers_stale: std::sync::atomic::AtomicBool,
    consumer_name: String,
}

fn failure(code: ErrorCode, message: impl Into<String>) -> Outcome {
    Outcome::failure(code, message)
}

/// An enqueue refused by the store: `enqueue_error`, or `queue_store_in_use` when another
/// engine holds the SQLite file.
fn store_failure(e: StoreError) -> Outcome {
    match e {
        StoreError::InUse(_) => failure(e.code(), e.to_string()),
        StoreError::Failed(_) => failure(ErrorCode::EnqueueError, e.to_string()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Deserialize)]
struct EnqueueRequest {
    #[serde(default)]
    queue: Option<String>,
    function_id: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default, rename = "messageReceiptId")]
    message_receipt_id: Option<String>,
    #[serde(default)]
    traceparent: Option<String>,
    #[serde(default)]
    baggage: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    delay_ms: Option<u64>,
}

#[derive(Deserialize)]
struct QueueRef {
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default, rename = "messageId")]
    message_id_camel: Option<String>,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

impl QueueRef {
    fn name(&self) -> Option<&str> {
        self.queue.as_deref().or(self.topic.as_deref())
    }
    fn message(&self) -> Option<&str> {
        self.message_id
            .as_deref()
            .or(self.message_id_camel.as_deref())
    }
}

#[derive(Deserialize)]
struct PublishRequest {
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// `durable:subscriber`'s config.
#[derive(Deserialize)]
struct SubscriberConfig {
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    condition_function_id: Option<String>,
    #[serde(default)]
    queue_config: Option<SubscriberQueueConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SubscriberQueueConfig {
    #[serde(default)]
    max_retries: Option<u32>,
    #[serde(default)]
    concurrency: Option<usize>,
    /// Milliseconds.
    #[serde(default)]
    visibility_timeout: Option<u64>,
    #[serde(default)]
    backoff_delay_ms: Option<u64>,
}

fn raw(text: String) -> RawJson {
    RawValue::from_string(text).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

impl QueueService {
    pub(crate) fn new(
        settings: QueueSettings,
        engine: WeakEngineRef,
        metered: bool,
    ) -> Arc<QueueService> {
        let mut configs: HashMap<String, QueueConfig> = settings
            .queues
            .iter()
            .map(|q| (q.name.clone(), q.clone()))
            .collect();
        configs
            .entry("default".to_owned())
            .or_insert_with(|| QueueConfig::new("default"));
        Arc::new(QueueService {
            settings,
            engine,
            store: OnceCell::new(),
            configs: Mutex::new(configs),
            consumers: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(BTreeMap::new()),
            conditions: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            deliveries: metered.then(|| Mutex::new(BTreeMap::new())),
            open_failed: Mutex::new(None),
            stopped: std::sync::atomic::AtomicBool::new(false),
            consumers_stale: std::sync::atomic::AtomicBool::new(true),
            consumer_name: format!("fnmesh-{}", uuid::Uuid::new_v4()),
        })
    }

    /// The delivery meters of `queue`, made at its first use; `None` when metrics are off.
    fn delivery_counts(&self, queue: &str) -> Option<Arc<DeliveryCounts>> {
        let deliveries = self.deliveries.as_ref()?;
        Some(
            lock(deliveries)
                .entry(queue.to_owned())
                .or_default()
                .clone(),
        )
    }

    /// The backend's name, for discovery.
    fn backend_name(&self) -> &'static str {
        match self.settings.backend {
            QueueBackend::Memory => "memory",
            QueueBackend::Sqlite(_) => "sqlite",
            QueueBackend::Redis(_) => "redis",
        }
    }

    /// Opens the store now when it may already hold messages (memory and Redis always; SQLite
    /// when its file exists), so that they are delivered without waiting for an enqueue.
    pub(crate) fn start(self: &Arc<Self>) {
        let eager = match &self.settings.backend {
            QueueBackend::Sqlite(path) => path.exists(),
            QueueBackend::Memory | QueueBackend::Redis(_) => true,
        };
        if eager {
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.store().await {
                    warn!("queue store not available yet: {e}");
                }
            });
        }
    }

    /// Stops every consumer (messages stay in the store) and puts the messages whose calls are
    /// in flight back at once, without using an attempt: the engine is stopping, so their
    /// calls end with `invocation_stopped`, and the next engine on the store claims them at
    /// once instead of after their visibility timeout.
    pub(crate) async fn shutdown(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
        for consumer in lock(&self.consumers).drain().map(|(_, c)| c) {
            consumer.stop.notify_one();
        }
        let Some(store) = self.store.get() else {
            return;
        };
        let running: Vec<(Delivery, QueueConfig)> =
            lock(&self.running).drain().map(|(_, r)| r).collect();
        let error = ErrorBody::new(ErrorCode::InvocationStopped, "engine shutting down");
        for (delivery, config) in running {
            let counts = self.delivery_counts(&config.name);
            settle_nack(
                store,
                &config,
                counts.as_deref(),
                &delivery,
                &error,
                Nack::Release(Duration::ZERO),
            )
            .await;
        }
    }

    async fn store(self: &Arc<Self>) -> StoreResult<Arc<dyn QueueStore>> {
        let store = self
            .store
            .get_or_try_init(|| async {
                let store: Arc<dyn QueueStore> = match &self.settings.backend {
                    QueueBackend::Memory => Arc::new(MemoryStore::new()),
                    // Claims of an earlier run are not released here: after a crash its workers
                    // may still be running those handlers. They end with their visibility
                    // timeout, since nothing extends them any more (docs/architecture.md).
                    QueueBackend::Sqlite(path) => Arc::new(self.open_sqlite(path).await?),
                    QueueBackend::Redis(url) => Arc::new(
                        super::redis_streams::RedisStore::connect(url, &self.consumer_name).await?,
                    ),
                };
                info!(backend = store.backend(), "queue store open");
                Ok::<_, StoreError>(store)
            })
            .await?
            .clone();
        // Once at the first open, and after a subscription added a queue: not every enqueue.
        if self
            .consumers_stale
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            self.ensure_consumers(&store);
        }
        Ok(store)
    }

    /// Opens the SQLite store off the runtime (file I/O, a wait for the file's lock). After a
    /// failure, the calls of the next [`REOPEN_AFTER`] answer the same error without trying
    /// again, so a file held by another engine does not cost every enqueue a lock wait.
    async fn open_sqlite(&self, path: &std::path::Path) -> StoreResult<SqliteStore> {
        if let Some((at, error)) = lock(&self.open_failed).as_ref() {
            if at.elapsed() < REOPEN_AFTER {
                return Err(error.clone());
            }
        }
        let path = path.to_path_buf();
        let synchronous = self.settings.sqlite_synchronous;
        let opened = tokio::task::spawn_blocking(move || SqliteStore::open_with(path, synchronous))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::new(format!(
                    "opening the queue file failed: {e}"
                )))
            });
        match &opened {
            Ok(_) => *lock(&self.open_failed) = None,
            Err(e) => *lock(&self.open_failed) = Some((std::time::Instant::now(), e.clone())),
        }
        opened
    }

    fn config(&self, queue: &str) -> Option<QueueConfig> {
        lock(&self.configs).get(queue).cloned()
    }

    /// Starts a consumer for every known queue that has none.
    fn ensure_consumers(self: &Arc<Self>, store: &Arc<dyn QueueStore>) {
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let configs: Vec<QueueConfig> = lock(&self.configs).values().cloned().collect();
        let mut consumers = lock(&self.consumers);
        for config in configs {
            if consumers.contains_key(&config.name) {
                continue;
            }
            let consumer = Consumer {
                stop: Arc::new(Notify::new()),
                wake: Arc::new(Notify::new()),
            };
            tokio::spawn(consume(
                self.clone(),
                store.clone(),
                config.clone(),
                consumer.stop.clone(),
                consumer.wake.clone(),
            ));
            consumers.insert(config.name, consumer);
        }
    }

    fn wake(&self, queue: &str) {
        if let Some(c) = lock(&self.consumers).get(queue) {
            c.wake.notify_one();
        }
    }

    // -----------------------------------------------------------------------------------------
    // Enqueue
    // -----------------------------------------------------------------------------------------

    async fn enqueue(self: &Arc<Self>, request: EnqueueRequest) -> Outcome {
        let queue = request.queue.unwrap_or_else(|| "default".to_owned());
        let Some(config) = self.config(&queue) else {
            return failure(
                ErrorCode::EnqueueError,
                format!("Queue '{queue}' not found"),
            );
        };
        if request.function_id.trim().is_empty() {
            return failure(
                ErrorCode::EnqueueError,
                "an enqueued call needs a function_id",
            );
        }
        let data = request
            .data
            .map(|d| d.get().to_owned())
            .unwrap_or_else(|| "null".to_owned());
        let group = match &config.kind {
            QueueKind::Standard => None,
            QueueKind::Fifo {
                message_group_field,
            } => match group_of(&data, message_group_field) {
                Some(group) => Some(group),
                None => {
                    return failure(
                        ErrorCode::EnqueueError,
                        format!(
                            "queue '{queue}' is fifo: data.{message_group_field} must be present and not null"
                        ),
                    )
                }
            },
        };
        let message = NewMessage {
            id: request
                .message_receipt_id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            queue: queue.clone(),
            function_id: request.function_id,
            namespace: request
                .namespace
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            data,
            traceparent: request.traceparent,
            baggage: request.baggage,
            group,
            idempotency_key: request.idempotency_key,
            delay: Duration::from_millis(request.delay_ms.unwrap_or(0)),
        };
        let store = match self.store().await {
            Ok(store) => store,
            Err(e) => return store_failure(e),
        };
        match store.enqueue(message, &config).await {
            Ok(done) => {
                self.wake(&queue);
                let duplicate = matches!(done, super::Enqueued::Duplicate(_));
                let mut answer = json!({"messageReceiptId": done.receipt_id()});
                if duplicate {
                    answer["duplicate"] = json!(true);
                }
                Outcome::json(&answer)
            }
            Err(e) => store_failure(e),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Topics
    // -----------------------------------------------------------------------------------------

    async fn publish(self: &Arc<Self>, request: PublishRequest) -> Outcome {
        let topic = request.topic.unwrap_or_default();
        if topic.trim().is_empty() {
            return failure(
                ErrorCode::TopicNotSet,
                "iii::durable::publish needs a topic",
            );
        }
        let data = request
            .data
            .map(|d| d.get().to_owned())
            .unwrap_or_else(|| "null".to_owned());
        let targets: Vec<Subscription> = {
            let subs = lock(&self.subscriptions);
            let mut seen = std::collections::HashSet::new();
            subs.values()
                .filter(|s| s.topic == topic && seen.insert(s.queue.clone()))
                .cloned()
                .collect()
        };
        if targets.is_empty() {
            return Outcome::json(&json!({"topic": topic, "messageReceiptIds": []}));
        }
        let store = match self.store().await {
            Ok(store) => store,
            Err(e) => return store_failure(e),
        };
        let mut ids = Vec::with_capacity(targets.len());
        for sub in targets {
            let Some(config) = self.config(&sub.queue) else {
                continue;
            };
            let message = NewMessage {
                id: uuid::Uuid::new_v4().to_string(),
                queue: sub.queue.clone(),
                function_id: sub.function_id.clone(),
                namespace: sub.namespace.clone(),
                data: data.clone(),
                traceparent: None,
                baggage: None,
                group: None,
                idempotency_key: None,
                delay: Duration::ZERO,
            };
            match store.enqueue(message, &config).await {
                Ok(done) => {
                    ids.push(done.receipt_id().to_owned());
                    self.wake(&sub.queue);
                }
                Err(e) => return store_failure(e),
            }
        }
        Outcome::json(&json!({"topic": topic, "messageReceiptIds": ids}))
    }

    fn subscribe(self: &Arc<Self>, binding: &TriggerBinding) -> Result<(), SubscribeError> {
        let config: SubscriberConfig = serde_json::from_str(binding.config.get())
            .map_err(|e| SubscribeError::InvalidConfig(e.to_string()))?;
        let topic = config.topic.unwrap_or_default();
        if topic.trim().is_empty() {
            return Err(SubscribeError::NoTopic);
        }
        let queue = format!("durable::{}::{}", binding.namespace, binding.function_id);
        let mut queue_config = QueueConfig::new(queue.clone());
        let qc = config.queue_config.unwrap_or_default();
        if let Some(r) = qc.max_retries {
            queue_config.max_retries = r;
        }
        if let Some(c) = qc.concurrency {
            if c == 0 {
                return Err(SubscribeError::ZeroConcurrency);
            }
            if c > crate::config::MAX_QUEUE_CONCURRENCY {
                return Err(SubscribeError::ConcurrencyTooHigh);
            }
            queue_config.concurrency = c;
        }
        if let Some(ms) = qc.visibility_timeout {
            if ms == 0 {
                return Err(SubscribeError::ZeroVisibilityTimeout);
            }
            queue_config.visibility_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = qc.backoff_delay_ms {
            queue_config.backoff = Duration::from_millis(ms);
        }
        lock(&self.configs).insert(queue.clone(), queue_config);
        match config.condition_function_id {
            Some(f) if !f.is_empty() => {
                lock(&self.conditions).insert(queue.clone(), (binding.namespace.clone(), f));
            }
            _ => {
                lock(&self.conditions).remove(&queue);
            }
        }
        lock(&self.subscriptions).insert(
            binding.id.clone(),
            Subscription {
                binding_id: binding.id.clone(),
                topic,
                queue,
                function_id: binding.function_id.clone(),
                namespace: binding.namespace.clone(),
            },
        );
        // Its messages from before (an earlier run, or a subscriber that left) flow again.
        self.consumers_stale
            .store(true, std::sync::atomic::Ordering::Release);
        match self.store.get() {
            Some(store)
                if self
                    .consumers_stale
                    .swap(false, std::sync::atomic::Ordering::AcqRel) =>
            {
                self.ensure_consumers(store)
            }
            Some(_) => {}
            None => self.start(),
        }
        Ok(())
    }

    fn unsubscribe(&self, binding: &TriggerBinding) {
        let removed = lock(&self.subscriptions).remove(&binding.id);
        let Some(removed) = removed else { return };
        let still_used = lock(&self.subscriptions)
            .values()
            .any(|s| s.queue == removed.queue);
        if !still_used {
            // Messages stay in the store until the function subscribes again.
            if let Some(consumer) = lock(&self.consumers).remove(&removed.queue) {
                consumer.stop.notify_one();
            }
            lock(&self.configs).remove(&removed.queue);
            lock(&self.conditions).remove(&removed.queue);
        }
        debug!(binding = %removed.binding_id, topic = %removed.topic, "durable subscription removed");
    }

    // -----------------------------------------------------------------------------------------
    // Inspection and dead letters
    // -----------------------------------------------------------------------------------------

    async fn list_topics(self: &Arc<Self>) -> Outcome {
        let configs: Vec<QueueConfig> = {
            let mut c: Vec<QueueConfig> = lock(&self.configs).values().cloned().collect();
            c.sort_by(|a, b| a.name.cmp(&b.name));
            c
        };
        let subscriptions: Vec<Subscription> =
            lock(&self.subscriptions).values().cloned().collect();
        let mut rows = Vec::new();
        for c in &configs {
            let subscribers: Vec<Value> = subscriptions
                .iter()
                .filter(|s| s.queue == c.name)
                .map(|s| json!({"topic": s.topic, "function_id": s.function_id, "namespace": s.namespace}))
                .collect();
            let (kind, group_field) = match &c.kind {
                QueueKind::Standard => ("standard", None),
                QueueKind::Fifo {
                    message_group_field,
                } => ("fifo", Some(message_group_field.clone())),
            };
            rows.push(json!({
                "name": c.name,
                "type": kind,
                "message_group_field": group_field,
                "max_retries": c.max_retries,
                "backoff_ms": c.backoff.as_millis() as u64,
                "concurrency": c.concurrency,
                "visibility_timeout_ms": c.visibility_timeout.as_millis() as u64,
                "subscribers": subscribers,
            }));
        }
        let mut topics: Vec<String> = subscriptions.iter().map(|s| s.topic.clone()).collect();
        topics.sort();
        topics.dedup();
        Outcome::json(&json!({"backend": self.backend_name(), "queues": rows, "topics": topics}))
    }

    async fn topic_stats(self: &Arc<Self>, r: QueueRef) -> Outcome {
        let Some(name) = r.name().map(str::to_owned) else {
            return failure(ErrorCode::InvalidArgument, "topic_stats needs a queue");
        };
        if self.config(&name).is_none() {
            return failure(
                ErrorCode::QueueNotFound,
                format!("Queue '{name}' not found"),
            );
        }
        let store = match self.store().await {
            Ok(s) => s,
            Err(e) => return failure(e.code(), e.to_string()),
        };
        match store.stats(&name).await {
            Ok(stats) => Outcome::json(&json!({
                "queue": name,
                "ready": stats.ready,
                "delayed": stats.delayed,
                "in_flight": stats.in_flight,
                "dead": stats.dead,
            })),
            Err(e) => failure(e.code(), e.to_string()),
        }
    }

    async fn dlq_topics(self: &Arc<Self>) -> Outcome {
        let store = match self.store().await {
            Ok(s) => s,
            Err(e) => return failure(e.code(), e.to_string()),
        };
        let names = match store.queues().await {
            Ok(n) => n,
            Err(e) => return failure(e.code(), e.to_string()),
        };
        let mut rows = Vec::new();
        for name in names {
            match store.stats(&name).await {
                Ok(stats) if stats.dead > 0 => {
                    rows.push(json!({"queue": name, "count": stats.dead}))
                }
                Ok(_) => {}
                Err(e) => return failure(e.code(), e.to_string()),
            }
        }
        Outcome::json(&json!({"queues": rows}))
    }

    async fn dlq_messages(self: &Arc<Self>, r: QueueRef) -> Outcome {
        let Some(name) = r.name().map(str::to_owned) else {
            return failure(ErrorCode::InvalidArgument, "dlq_messages needs a queue");
        };
        let store = match self.store().await {
            Ok(s) => s,
            Err(e) => return failure(e.code(), e.to_string()),
        };
        let limit = r.limit.unwrap_or(100).min(1000);
        match store
            .dead_letters(&name, r.offset.unwrap_or(0), limit)
            .await
        {
            Ok(letters) => {
                let rows: Vec<Value> = letters
                    .into_iter()
                    .map(|d| {
                        let data: Value = serde_json::from_str(&d.data).unwrap_or(Value::Null);
                        json!({
                            "id": d.id,
                            "queue": d.queue,
                            "function_id": d.function_id,
                            "namespace": d.namespace,
                            "data": data,
                            "group": d.group,
                            "attempts": d.attempts,
                            "error": {"code": d.error.code, "message": d.error.message},
                            "enqueued_at_ms": d.enqueued_at_ms,
                            "failed_at_ms": d.failed_at_ms,
                        })
                    })
                    .collect();
                Outcome::json(&json!({"queue": name, "messages": rows}))
            }
            Err(e) => failure(e.code(), e.to_string()),
        }
    }

    async fn redrive(self: &Arc<Self>, r: QueueRef, one: bool) -> Outcome {
        let Some(name) = r.name().map(str::to_owned) else {
            return failure(ErrorCode::InvalidArgument, "redrive needs a queue");
        };
        let id = r.message().map(str::to_owned);
        if one && id.is_none() {
            return failure(
                ErrorCode::InvalidArgument,
                "redrive_message needs a message_id",
            );
        }
        let store = match self.store().await {
            Ok(s) => s,
            Err(e) => return failure(e.code(), e.to_string()),
        };
        match store
            .redrive(&name, if one { id.as_deref() } else { None })
            .await
        {
            Ok(count) => {
                self.wake(&name);
                info!(queue = %name, count, "dead letters redriven");
                if one && count == 0 {
                    return failure(
                        ErrorCode::MessageNotFound,
                        format!(
                            "no dead letter {} in queue '{name}'",
                            id.unwrap_or_default()
                        ),
                    );
                }
                Outcome::json(&json!({"queue": name, "redriven": count}))
            }
            Err(e) => failure(e.code(), e.to_string()),
        }
    }

    async fn discard(self: &Arc<Self>, r: QueueRef) -> Outcome {
        let (Some(name), Some(id)) = (r.name().map(str::to_owned), r.message().map(str::to_owned))
        else {
            return failure(
                ErrorCode::InvalidArgument,
                "discard_message needs a queue and a message_id",
            );
        };
        let store = match self.store().await {
            Ok(s) => s,
            Err(e) => return failure(e.code(), e.to_string()),
        };
        match store.discard(&name, &id).await {
            Ok(true) => Outcome::json(&json!({"queue": name, "discarded": id})),
            Ok(false) => failure(
                ErrorCode::MessageNotFound,
                format!("no dead letter {id} in queue '{name}'"),
            ),
            Err(e) => failure(e.code(), e.to_string()),
        }
    }
}

/// The fifo group of a message: `data.<field>`, its string value or its JSON text.
fn group_of(data: &str, field: &str) -> Option<String> {
    let value: Value = serde_json::from_str(data).ok()?;
    match value.get(field)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

mod consumer;

/// `fnmesh_queue_messages{queue,state}` (read from the store at each scrape, for every queue
/// this engine knows: configured or subscribed) and `fnmesh_queue_deliveries_total{queue,outcome}`.
impl MetricsSource for QueueService {
    fn collect<'a>(&'a self, out: &'a mut Exposition) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut names: Vec<String> = lock(&self.configs).keys().cloned().collect();
            names.sort();
            out.family(
                "fnmesh_queue_messages",
                "gauge",
                "Messages in each queue, by state (ready, delayed, in_flight, dead).",
            );
            if let Some(store) = self.store.get() {
                for name in &names {
                    let Ok(stats) = store.stats(name).await else {
                        continue;
                    };
                    for (state, n) in [
                        ("ready", stats.ready),
                        ("delayed", stats.delayed),
                        ("in_flight", stats.in_flight),
                        ("dead", stats.dead),
                    ] {
                        out.sample(
                            "fnmesh_queue_messages",
                            &[("queue", name), ("state", state)],
                            n as f64,
                        );
                    }
                }
            }
            out.family(
                "fnmesh_queue_deliveries_total",
                "counter",
                "Queue deliveries settled by this engine, by queue and outcome.",
            );
            let deliveries: Vec<(String, Arc<DeliveryCounts>)> = match &self.deliveries {
                Some(map) => lock(map)
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                None => Vec::new(),
            };
            for (queue, counts) in deliveries {
                counts.write(out, &queue);
            }
        })
    }
}

use consumer::{consume, settle_nack};

// ---------------------------------------------------------------------------------------------
// Functions and the trigger type
// ---------------------------------------------------------------------------------------------

/// Why a `durable:subscriber` binding is refused (the registrant's `trigger_registration_failed`
/// message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SubscribeError {
    /// The config is not an object of the expected shape.
    #[error("durable:subscriber config: {0}")]
    InvalidConfig(String),
    /// No topic, or a blank one.
    #[error("durable:subscriber needs a topic")]
    NoTopic,
    /// `queue_config.concurrency` is 0.
    #[error("queue_config.concurrency must be at least 1")]
    ZeroConcurrency,
    /// `queue_config.concurrency` is above [`crate::config::MAX_QUEUE_CONCURRENCY`].
    #[error(
        "queue_config.concurrency must be at most {}",
        crate::config::MAX_QUEUE_CONCURRENCY
    )]
    ConcurrencyTooHigh,
    /// `queue_config.visibilityTimeout` is 0.
    #[error("queue_config.visibilityTimeout must be positive")]
    ZeroVisibilityTimeout,
}

/// The `durable:subscriber` trigger type.
pub(crate) struct DurableSubscriber(pub(crate) Arc<QueueService>);

impl TriggerProvider for DurableSubscriber {
    fn register(&self, binding: Arc<TriggerBinding>, ack: TriggerAck) {
        match self.0.subscribe(&binding) {
            Ok(()) => ack.accept(),
            Err(reason) => ack.refuse(reason.to_string()),
        }
    }

    fn unregister(&self, binding: &TriggerBinding) {
        self.0.unsubscribe(binding);
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
        Err(e) => failure(
            ErrorCode::DeserializationError,
            format!("invalid input for {}: {e}", call.function_id),
        ),
    };
    call.reply.send(outcome);
}

/// The queue functions, `(id, description, handler)`.
pub(crate) fn functions() -> Vec<ServiceFunction<QueueService>> {
    vec![
        (
            "engine::queue::enqueue",
            "Put a call on a named queue; answers {messageReceiptId}",
            |s, call| Box::pin(answer(call, move |r| async move { s.enqueue(r).await })),
        ),
        (
            "engine::queue::list_topics",
            "List queues, their settings and topic subscribers",
            |s, call| {
                Box::pin(answer(call, move |_: IgnoredAny| async move {
                    s.list_topics().await
                }))
            },
        ),
        (
            "engine::queue::topic_stats",
            "Counts of one queue's messages (ready, delayed, in flight, dead)",
            |s, call| Box::pin(answer(call, move |r| async move { s.topic_stats(r).await })),
        ),
        (
            "engine::queue::dlq_topics",
            "Queues holding dead letters, with their counts",
            |s, call| {
                Box::pin(answer(call, move |_: IgnoredAny| async move {
                    s.dlq_topics().await
                }))
            },
        ),
        (
            "engine::queue::dlq_messages",
            "Dead letters of one queue (offset, limit)",
            |s, call| {
                Box::pin(answer(
                    call,
                    move |r| async move { s.dlq_messages(r).await },
                ))
            },
        ),
        (
            "iii::queue::redrive",
            "Move every dead letter of a queue back to it",
            |s, call| {
                Box::pin(answer(
                    call,
                    move |r| async move { s.redrive(r, false).await },
                ))
            },
        ),
        (
            "iii::queue::redrive_message",
            "Move one dead letter back to its queue",
            |s, call| {
                Box::pin(answer(
                    call,
                    move |r| async move { s.redrive(r, true).await },
                ))
            },
        ),
        (
            "iii::queue::discard_message",
            "Delete one dead letter",
            |s, call| Box::pin(answer(call, move |r| async move { s.discard(r).await })),
        ),
        (
            "iii::durable::publish",
            "Publish {topic, data}: every durable:subscriber of the topic gets its own copy",
            |s, call| Box::pin(answer(call, move |r| async move { s.publish(r).await })),
        ),
    ]
}
