//! Change triggers: trigger types whose bindings fire a function on every change of some data
//! (the `state` trigger, `state/trigger.rs`; the `stream` trigger, `streams/trigger.rs`), each
//! binding filtered by its config, with an optional condition function.
//!
//! A binding runs its changes in lanes: the changes of one subject (a state key, a stream item)
//! always go to the same lane, and a lane runs one change at a time (condition, then function,
//! awaited), so a binding sees a subject's changes in the order they happened while different
//! subjects proceed in parallel. A lane [`LANE_BACKLOG`] changes behind drops the next ones
//! (logged): a slow function holds up only its own binding.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};
use std::sync::{Arc, RwLock};

use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::engine::WeakEngineRef;
use crate::function::{CallOptions, Outcome};
use crate::protocol::RawJson;
use crate::triggers::{condition_skips, TriggerAck, TriggerBinding, TriggerProvider};

/// Lanes per binding: how many subjects' changes one binding runs at once.
const LANES: usize = 8;

/// Changes a lane holds before it drops new ones.
pub const LANE_BACKLOG: usize = 4096;

/// One change a change trigger delivers, and how its bindings' configs select it.
pub trait Change: Send + Sync + 'static {
    /// A binding's parsed filter.
    type Filter: Send + Sync + 'static;
    /// The trigger type's id, for logs and errors (`state`, `stream`).
    const KIND: &'static str;
    /// Parses a binding's config into its filter and its condition function id, or says why not.
    fn parse(config: &RawValue) -> Result<(Self::Filter, Option<String>), String>;
    /// True when a binding with `filter` receives this change.
    fn matches(&self, filter: &Self::Filter) -> bool;
    /// Feeds the change's subject (what must stay in order) to `hasher`, which picks its lane.
    fn subject(&self, hasher: &mut DefaultHasher);
    /// The subject, for the log line of a dropped change.
    fn describe(&self) -> String;
    /// The payload the bound functions receive.
    fn payload(&self) -> &RawJson;
}

struct Bound<C: Change> {
    filter: C::Filter,
    lanes: Vec<mpsc::Sender<Arc<C>>>,
    id: String,
}

/// A change trigger type: its bindings and their lanes.
pub struct ChangeTrigger<C: Change> {
    engine: WeakEngineRef,
    bindings: RwLock<HashMap<String, Arc<Bound<C>>>>,
}

impl<C: Change> ChangeTrigger<C> {
    pub(crate) fn new(engine: WeakEngineRef) -> Arc<ChangeTrigger<C>> {
        Arc::new(ChangeTrigger {
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Bound<C>>>> {
        self.bindings.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `change` to every matching binding's lane for its subject.
    pub(crate) fn dispatch(&self, change: &Arc<C>) {
        let targets: Vec<Arc<Bound<C>>> = self
            .read()
            .values()
            .filter(|b| change.matches(&b.filter))
            .cloned()
            .collect();
        if targets.is_empty() {
            return;
        }
        let mut hasher = DefaultHasher::new();
        change.subject(&mut hasher);
        let lane = usize::try_from(hasher.finish() % LANES as u64).unwrap_or(0);
        for bound in targets {
            if let Err(mpsc::error::TrySendError::Full(_)) =
                bound.lanes[lane].try_send(change.clone())
            {
                warn!(trigger_id = %bound.id, subject = %change.describe(), "{} trigger backlog full: change dropped for this binding", C::KIND);
            }
        }
    }

    fn start(&self, binding: Arc<TriggerBinding>) -> Result<(), String> {
        let (filter, condition) = C::parse(&binding.config)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| format!("the {} trigger needs a tokio runtime", C::KIND))?;
        let condition: Option<Arc<str>> = condition.map(Arc::from);
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
            filter,
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

impl<C: Change> TriggerProvider for Arc<ChangeTrigger<C>> {
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
async fn run_lane<C: Change>(
    engine: WeakEngineRef,
    binding: Arc<TriggerBinding>,
    condition: Option<Arc<str>>,
    mut changes: mpsc::Receiver<Arc<C>>,
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
                .call_with(condition, change.payload().clone(), options())
                .await
            {
                Outcome::Success(result) if condition_skips(result.as_deref()) => {
                    debug!(trigger_id = %binding.id, "{} trigger skipped by its condition", C::KIND);
                    continue;
                }
                Outcome::Success(_) => {}
                Outcome::Failure(e) => {
                    warn!(trigger_id = %binding.id, code = %e.code, "{} trigger condition failed, skipped: {}", C::KIND, e.message);
                    continue;
                }
            }
        }
        if let Outcome::Failure(e) = engine
            .call_with(&binding.function_id, change.payload().clone(), options())
            .await
        {
            warn!(trigger_id = %binding.id, function_id = %binding.function_id, code = %e.code, "{} trigger function failed: {}", C::KIND, e.message);
        }
    }
}
