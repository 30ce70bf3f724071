//! [`PubsubService`]: `publish` and the `subscribe` trigger type as an engine service.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::{debug, warn};

use crate::engine::{EngineRef, EngineService, ServiceError, WeakEngineRef};
use crate::function::{Call, CallOptions, Outcome};
use crate::protocol::{ErrorCode, RawJson};
use crate::redis_channel;
use crate::registry::{FunctionDef, FunctionKind, DEFAULT_NAMESPACE};
use crate::triggers::{condition_skips, TriggerAck, TriggerBinding, TriggerProvider};

/// The trigger type's id.
pub const SUBSCRIBE_TRIGGER: &str = "subscribe";

/// The Redis channel every engine sharing `pubsub_redis_url` publishes to and listens on.
const CHANNEL: &str = "fnmesh:pubsub";

/// Deliveries (subscriber calls) one engine runs at once; past it a delivery is dropped and
/// logged, as fire-and-forget allows, so a flood of publishes to slow subscribers cannot grow
/// memory without bound.
pub const MAX_DELIVERIES_IN_FLIGHT: usize = 10_000;

/// Pubsub (docs/protocol.md 6.9) as an engine service: registers `publish` and the `subscribe`
/// trigger type; with the engine's `pubsub_redis_url`, publishes through Redis and listens
/// there for the messages of every engine.
#[derive(Default)]
pub struct PubsubService {
    running: OnceLock<Arc<Pubsub>>,
}

struct Subscriber {
    binding: Arc<TriggerBinding>,
    condition: Option<String>,
}

struct Pubsub {
    engine: WeakEngineRef,
    /// topic → binding id → subscriber.
    topics: RwLock<HashMap<String, HashMap<String, Arc<Subscriber>>>>,
    redis: Option<(ConnectionManager, String)>,
    deliveries: Arc<tokio::sync::Semaphore>,
    listener: std::sync::Mutex<Option<redis_channel::Listener>>,
}

#[derive(Deserialize)]
struct PublishInput {
    topic: String,
    data: Option<RawJson>,
}

/// A message on the Redis channel.
#[derive(Serialize, Deserialize)]
struct Wire {
    topic: String,
    data: RawJson,
}

#[derive(Deserialize)]
struct SubscribeConfig {
    topic: Option<String>,
    condition_function_id: Option<String>,
}

fn null() -> RawJson {
    RawValue::from_string("null".to_owned()).unwrap_or_default()
}

impl Pubsub {
    fn read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, HashMap<String, Arc<Subscriber>>>> {
        self.topics.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, HashMap<String, Arc<Subscriber>>>> {
        self.topics.write().unwrap_or_else(|p| p.into_inner())
    }

    async fn publish(&self, input: PublishInput) -> Outcome {
        if input.topic.is_empty() {
            return Outcome::failure(ErrorCode::TopicNotSet, "publish needs a non-empty topic");
        }
        let data = input.data.unwrap_or_else(null);
        let Some((redis, addr)) = &self.redis else {
            self.deliver(&input.topic, &data);
            return Outcome::Success(None);
        };
        let message = Wire {
            topic: input.topic,
            data,
        };
        let text = match serde_json::to_string(&message) {
            Ok(text) => text,
            Err(e) => return Outcome::failure(ErrorCode::SerializationError, e.to_string()),
        };
        let mut redis = redis.clone();
        match redis::cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(text)
            .query_async::<i64>(&mut redis)
            .await
        {
            Ok(_) => Outcome::Success(None),
            Err(e) => Outcome::failure(
                ErrorCode::InvocationFailed,
                format!("publish on Redis at {addr}: {e}"),
            ),
        }
    }

    /// Calls every subscriber of `topic` with `data`, each on its own: a failing or slow one
    /// does not hold up the others.
    fn deliver(&self, topic: &str, data: &RawJson) {
        let subscribers: Vec<Arc<Subscriber>> = match self.read().get(topic) {
            Some(bound) => bound.values().cloned().collect(),
            None => return,
        };
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        for subscriber in subscribers {
            let Ok(slot) = self.deliveries.clone().try_acquire_owned() else {
                warn!(trigger_id = %subscriber.binding.id, topic, "{MAX_DELIVERIES_IN_FLIGHT} deliveries in flight: message dropped for this subscriber");
                continue;
            };
            let engine = engine.clone();
            let data = data.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let binding = &subscriber.binding;
                let options = || CallOptions {
                    namespace: Some(binding.namespace.clone()),
                    metadata: binding.metadata.clone(),
                    ..CallOptions::default()
                };
                if let Some(condition) = &subscriber.condition {
                    match engine.call_with(condition, data.clone(), options()).await {
                        Outcome::Success(result) if condition_skips(result.as_deref()) => {
                            debug!(trigger_id = %binding.id, "subscriber skipped by its condition");
                            return;
                        }
                        Outcome::Success(_) => {}
                        Outcome::Failure(e) => {
                            warn!(trigger_id = %binding.id, code = %e.code, "subscriber condition failed, skipped: {}", e.message);
                            return;
                        }
                    }
                }
                if let Outcome::Failure(e) = engine
                    .call_with(&binding.function_id, data, options())
                    .await
                {
                    warn!(trigger_id = %binding.id, function_id = %binding.function_id, code = %e.code, "subscriber failed: {}", e.message);
                }
            });
        }
    }
}

/// The `subscribe` trigger type's provider.
struct Subscriptions(Arc<Pubsub>);

impl TriggerProvider for Subscriptions {
    fn register(&self, binding: Arc<TriggerBinding>, ack: TriggerAck) {
        let config: SubscribeConfig = match serde_json::from_str(binding.config.get()) {
            Ok(config) => config,
            Err(e) => return ack.refuse(format!("invalid subscribe config: {e}")),
        };
        let Some(topic) = config.topic.filter(|t| !t.is_empty()) else {
            return ack.refuse("a subscribe trigger needs a non-empty topic");
        };
        let id = binding.id.clone();
        let subscriber = Arc::new(Subscriber {
            binding,
            condition: config.condition_function_id,
        });
        let mut topics = self.0.write();
        // A binding id registered again may have changed its topic.
        for bound in topics.values_mut() {
            bound.remove(&id);
        }
        topics.retain(|_, bound| !bound.is_empty());
        topics.entry(topic).or_default().insert(id, subscriber);
        ack.accept();
    }

    fn unregister(&self, binding: &TriggerBinding) {
        let mut topics = self.0.write();
        for bound in topics.values_mut() {
            bound.remove(&binding.id);
        }
        topics.retain(|_, bound| !bound.is_empty());
    }
}

impl EngineService for PubsubService {
    fn name(&self) -> &'static str {
        "pubsub"
    }

    fn install<'a>(&'a self, engine: &'a EngineRef) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let redis = match &engine.config().pubsub_redis_url {
                None => None,
                Some(url) => {
                    let client = redis_channel::client(url, "pubsub_redis_url")
                        .map_err(ServiceError::InvalidConfig)?;
                    let addr = client.get_connection_info().addr().to_string();
                    let manager = redis_channel::manager(client.clone()).await.map_err(|e| {
                        ServiceError::InvalidConfig(format!("invalid pubsub_redis_url: {e}"))
                    })?;
                    Some((client, manager, addr))
                }
            };
            let pubsub = Arc::new(Pubsub {
                engine: engine.downgrade(),
                topics: RwLock::new(HashMap::new()),
                redis: redis
                    .as_ref()
                    .map(|(_, manager, addr)| (manager.clone(), addr.clone())),
                deliveries: Arc::new(tokio::sync::Semaphore::new(MAX_DELIVERIES_IN_FLIGHT)),
                listener: std::sync::Mutex::new(None),
            });
            if let Some((client, _, _)) = redis {
                let receiver = Arc::downgrade(&pubsub);
                let listener = redis_channel::listen(client, CHANNEL.to_owned(), move |payload| {
                    let Some(pubsub) = receiver.upgrade() else {
                        return;
                    };
                    match serde_json::from_slice::<Wire>(&payload) {
                        Ok(message) => pubsub.deliver(&message.topic, &message.data),
                        Err(e) => warn!("ignored a malformed pubsub message from Redis: {e}"),
                    }
                })
                .await;
                *pubsub.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
            }
            let p = pubsub.clone();
            let publish = move |call: Call| {
                let p = p.clone();
                tokio::spawn(async move {
                    let outcome = match serde_json::from_str::<PublishInput>(call.data.get()) {
                        Ok(input) => p.publish(input).await,
                        Err(e) => Outcome::failure(
                            ErrorCode::DeserializationError,
                            format!("invalid input for publish: {e}"),
                        ),
                    };
                    call.reply.send(outcome);
                });
            };
            let def = FunctionDef {
                kind: FunctionKind::Local,
                description: Some(
                    "Publish {topic, data} to every subscribe binding of the topic, fire-and-forget"
                        .to_owned(),
                ),
                ..FunctionDef::default()
            };
            engine.register_engine_function(DEFAULT_NAMESPACE, "publish", def, publish)?;
            engine.register_engine_trigger_type(
                DEFAULT_NAMESPACE,
                SUBSCRIBE_TRIGGER,
                "Receives the messages published on a topic (docs/protocol.md 6.9)",
                Subscriptions(pubsub.clone()),
            )?;
            let _ = self.running.set(pubsub);
            Ok(())
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(pubsub) = self.running.get() {
                pubsub.write().clear();
                if let Some(listener) = pubsub
                    .listener
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    listener.stop();
                }
            }
        })
    }
}
