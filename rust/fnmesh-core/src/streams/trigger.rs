//! The `stream` trigger type (docs/protocol.md 6.10): bindings that fire a function on every
//! change of a stream's items, filtered by `stream_name` (required), `group_id` and `item_id`,
//! with an optional condition function.
//!
//! As the `state` trigger (`state/trigger.rs`): each binding runs its changes in lanes, the
//! changes of one item always in the same lane and a lane one change at a time (condition, then
//! function, awaited), so a binding sees an item's changes in the order they happened while
//! different items proceed in parallel. A lane [`LANE_BACKLOG`] changes behind drops the next
//! ones (logged): a slow function holds up only its own binding.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::StreamChange;
use crate::engine::WeakEngineRef;
use crate::function::{CallOptions, Outcome};
use crate::triggers::{condition_skips, TriggerAck, TriggerBinding, TriggerProvider};

/// The trigger type's id.
pub const STREAM_TRIGGER: &str = "stream";

/// Lanes per binding: how many items' changes one binding runs at once.
const LANES: usize = 8;

/// Changes a lane holds before it drops new ones.
pub const LANE_BACKLOG: usize = 4096;

/// A binding's config (iii's `StreamTriggerConfig`).
#[derive(Debug, serde::Deserialize)]
struct StreamTriggerConfig {
    stream_name: String,
    group_id: Option<String>,
    item_id: Option<String>,
    condition_function_id: Option<String>,
}

struct Bound {
    config: StreamTriggerConfig,
    lanes: Vec<mpsc::Sender<Arc<StreamChange>>>,
    id: String,
}

impl Bound {
    fn matches(&self, change: &StreamChange) -> bool {
        // iii treats an empty filter as none.
        let filter =
            |f: &Option<String>, v: &str| f.as_deref().is_none_or(|f| f.is_empty() || f == v);
        self.config.stream_name == change.stream_name
            && filter(&self.config.group_id, &change.group_id)
            && filter(&self.config.item_id, &change.item_id)
    }
}

/// The `stream` trigger type: its bindings, fed by the streams service.
pub struct StreamTrigger {
    engine: WeakEngineRef,
    bindings: RwLock<HashMap<String, Arc<Bound>>>,
}

impl StreamTrigger {
    pub(crate) fn new(engine: WeakEngineRef) -> Arc<StreamTrigger> {
        Arc::new(StreamTrigger {
            engine,
            bindings: RwLock::new(HashMap::new()),
        })
    }

    /// Number of bindings.
    pub fn binding_count(&self) -> usize {
        self.read().len()
    }

    /// Stops every binding's lanes (engine shutdown); a change being run finishes.
    pub(crate) fn shutdown(&self) {
        self.bindings
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Bound>>> {
        self.bindings.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `change` to every matching binding's lane for its item.
    pub(crate) fn dispatch(&self, change: &Arc<StreamChange>) {
        let targets: Vec<Arc<Bound>> = self
            .read()
            .values()
            .filter(|b| b.matches(change))
            .cloned()
            .collect();
        if targets.is_empty() {
            return;
        }
        let mut hasher = std::hash::DefaultHasher::new();
        (&change.stream_name, &change.group_id, &change.item_id).hash(&mut hasher);
        let lane = usize::try_from(hasher.finish() % LANES as u64).unwrap_or(0);
        for bound in targets {
            if let Err(mpsc::error::TrySendError::Full(_)) =
                bound.lanes[lane].try_send(change.clone())
            {
                warn!(trigger_id = %bound.id, stream_name = %change.stream_name, item_id = %change.item_id, "stream trigger backlog full: change dropped for this binding");
            }
        }
    }

    fn start(&self, binding: Arc<TriggerBinding>) -> Result<(), String> {
        let config: StreamTriggerConfig = serde_json::from_str(binding.config.get())
            .map_err(|e| format!("invalid stream trigger config (it needs stream_name): {e}"))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the stream trigger needs a tokio runtime".to_owned())?;
        let condition: Option<Arc<str>> = config.condition_function_id.as_deref().map(Arc::from);
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
            config,
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

impl TriggerProvider for Arc<StreamTrigger> {
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

/// Runs one lane's changes in order until the binding goes (its sender is dropped).
async fn run_lane(
    engine: WeakEngineRef,
    binding: Arc<TriggerBinding>,
    condition: Option<Arc<str>>,
    mut changes: mpsc::Receiver<Arc<StreamChange>>,
) {
    while let Some(change) = changes.recv().await {
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
                .call_with(condition, change.payload.clone(), options())
                .await
            {
                Outcome::Success(result) if condition_skips(result.as_deref()) => {
                    debug!(trigger_id = %binding.id, "stream trigger skipped by its condition");
                    continue;
                }
                Outcome::Success(_) => {}
                Outcome::Failure(e) => {
                    warn!(trigger_id = %binding.id, code = %e.code, "stream trigger condition failed, skipped: {}", e.message);
                    continue;
                }
            }
        }
        if let Outcome::Failure(e) = engine
            .call_with(&binding.function_id, change.payload.clone(), options())
            .await
        {
            warn!(trigger_id = %binding.id, function_id = %binding.function_id, code = %e.code, "stream trigger function failed: {}", e.message);
        }
    }
}
