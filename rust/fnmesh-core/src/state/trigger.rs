//! The `state` trigger type (docs/protocol.md 6.8): bindings that fire a function on every change
//! of the state, filtered by scope and key, with an optional condition function.
//!
//! The store hands its change events over in write order ([`super::EventSink`]); one
//! dispatcher task gives each event to every matching binding. A binding runs its events in
//! lanes: the events of one key always go to the same lane, and a lane runs one event at a time
//! (condition, then function, awaited), so a binding sees the changes of a key in the order they
//! happened, while changes of different keys proceed in parallel. A lane that falls
//! [`LANE_BACKLOG`] events behind drops the next ones (logged): a slow function holds up only
//! its own binding.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::StateEvent;
use crate::engine::WeakEngineRef;
use crate::function::{CallOptions, Outcome};
use crate::triggers::{condition_skips, TriggerAck, TriggerBinding, TriggerProvider};

/// The trigger type's id.
pub const STATE_TRIGGER: &str = "state";

/// Lanes per binding: how many keys' events one binding runs at once.
const LANES: usize = 8;

/// Events a lane holds before it drops new ones.
pub const LANE_BACKLOG: usize = 4096;

/// A binding's config.
#[derive(Debug, Default, serde::Deserialize)]
struct StateTriggerConfig {
    scope: Option<String>,
    key: Option<String>,
    condition_function_id: Option<String>,
}

struct Bound {
    scope: Option<String>,
    key: Option<String>,
    lanes: Vec<mpsc::Sender<Arc<StateEvent>>>,
    id: String,
}

impl Bound {
    fn matches(&self, event: &StateEvent) -> bool {
        self.scope.as_ref().is_none_or(|s| *s == event.scope)
            && self.key.as_ref().is_none_or(|k| *k == event.key)
    }
}

/// The `state` trigger type: its bindings and the dispatcher feeding them.
pub struct StateTrigger {
    engine: WeakEngineRef,
    bindings: RwLock<HashMap<String, Arc<Bound>>>,
}

impl StateTrigger {
    pub(crate) fn new(engine: WeakEngineRef) -> Arc<StateTrigger> {
        Arc::new(StateTrigger {
            engine,
            bindings: RwLock::new(HashMap::new()),
        })
    }

    /// Starts the dispatcher reading `events` (on the current runtime).
    pub(crate) fn run(self: &Arc<Self>, mut events: mpsc::Receiver<StateEvent>) -> JoinHandle<()> {
        let trigger = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let Some(trigger) = trigger.upgrade() else {
                    return;
                };
                trigger.dispatch(event);
            }
        })
    }

    /// Number of bindings.
    pub fn binding_count(&self) -> usize {
        self.read().len()
    }

    /// Stops every binding's lanes (engine shutdown); an event being run finishes.
    pub(crate) fn shutdown(&self) {
        self.bindings
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Bound>>> {
        self.bindings.read().unwrap_or_else(|p| p.into_inner())
    }

    fn dispatch(&self, event: StateEvent) {
        let targets: Vec<Arc<Bound>> = self
            .read()
            .values()
            .filter(|b| b.matches(&event))
            .cloned()
            .collect();
        if targets.is_empty() {
            return;
        }
        let mut hasher = std::hash::DefaultHasher::new();
        (&event.scope, &event.key).hash(&mut hasher);
        let lane = usize::try_from(hasher.finish() % LANES as u64).unwrap_or(0);
        let event = Arc::new(event);
        for bound in targets {
            if let Err(mpsc::error::TrySendError::Full(_)) =
                bound.lanes[lane].try_send(event.clone())
            {
                warn!(trigger_id = %bound.id, scope = %event.scope, key = %event.key, "state trigger backlog full: change event dropped for this binding");
            }
        }
    }

    fn start(&self, binding: Arc<TriggerBinding>) -> Result<(), String> {
        let config: StateTriggerConfig = match binding.config.get().trim() {
            "null" => StateTriggerConfig::default(),
            text => serde_json::from_str(text)
                .map_err(|e| format!("invalid state trigger config: {e}"))?,
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the state trigger needs a tokio runtime".to_owned())?;
        let condition: Option<Arc<str>> = config.condition_function_id.map(Arc::from);
        let mut lanes = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (tx, rx) = mpsc::channel(LANE_BACKLOG);
            lanes.push(tx);
            runtime.spawn(run_lane(
                self.engine.clone(),
                binding.clone(),
                condition.clone(),
                rx,
            ));
        }
        let bound = Arc::new(Bound {
            scope: config.scope,
            key: config.key,
            lanes,
            id: binding.id.clone(),
        });
        // Replacing a binding drops the previous one's lanes, which end after their backlog.
        self.bindings
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(binding.id.clone(), bound);
        Ok(())
    }
}

impl TriggerProvider for Arc<StateTrigger> {
    fn register(&self, binding: Arc<TriggerBinding>, ack: TriggerAck) {
        match self.start(binding) {
            Ok(()) => ack.accept(),
            Err(reason) => ack.refuse(reason),
        }
    }

    fn unregister(&self, binding: &TriggerBinding) {
        self.bindings
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&binding.id);
    }
}

/// Runs one lane's events in order until the binding goes (its sender is dropped).
async fn run_lane(
    engine: WeakEngineRef,
    binding: Arc<TriggerBinding>,
    condition: Option<Arc<str>>,
    mut events: mpsc::Receiver<Arc<StateEvent>>,
) {
    while let Some(event) = events.recv().await {
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let options = || CallOptions {
            namespace: Some(binding.namespace.clone()),
            metadata: binding.metadata.clone(),
            ..CallOptions::default()
        };
        if let Some(condition) = &condition {
            match engine
                .call_with(condition, event.payload.clone(), options())
                .await
            {
                Outcome::Success(result) if condition_skips(result.as_deref()) => {
                    debug!(trigger_id = %binding.id, "state trigger skipped by its condition");
                    continue;
                }
                Outcome::Success(_) => {}
                Outcome::Failure(e) => {
                    warn!(trigger_id = %binding.id, code = %e.code, "state trigger condition failed, skipped: {}", e.message);
                    continue;
                }
            }
        }
        if let Outcome::Failure(e) = engine
            .call_with(&binding.function_id, event.payload.clone(), options())
            .await
        {
            warn!(trigger_id = %binding.id, function_id = %binding.function_id, code = %e.code, "state trigger function failed: {}", e.message);
        }
    }
}
