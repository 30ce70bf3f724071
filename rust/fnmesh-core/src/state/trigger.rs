//! The `state` trigger type (docs/protocol.md 6.8): bindings that fire a function on every change
//! of the state, filtered by scope and key, with an optional condition function.
//!
//! The store hands its change events over in write order ([`super::EventSink`]); one
//! dispatcher task gives each event to every matching binding. Delivery is a change trigger's
//! (`change_trigger.rs`): the events of one key run in order, one at a time per binding, while
//! different keys proceed in parallel.

use std::hash::{DefaultHasher, Hash};
use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::StateEvent;
use crate::change_trigger::{Change, ChangeTrigger};
use crate::protocol::RawJson;

pub use crate::change_trigger::LANE_BACKLOG;

/// The trigger type's id.
pub const STATE_TRIGGER: &str = "state";

/// The `state` trigger type: its bindings and the dispatcher feeding them.
pub type StateTrigger = ChangeTrigger<StateEvent>;

/// A binding's config.
#[derive(Debug, Default, serde::Deserialize)]
struct StateTriggerConfig {
    scope: Option<String>,
    key: Option<String>,
    condition_function_id: Option<String>,
}

/// What a state binding selects: a scope, a key, both or neither.
pub struct StateFilter {
    scope: Option<String>,
    key: Option<String>,
}

impl Change for StateEvent {
    type Filter = StateFilter;
    const KIND: &'static str = STATE_TRIGGER;

    fn parse(config: &RawValue) -> Result<(StateFilter, Option<String>), String> {
        let config: StateTriggerConfig = match config.get().trim() {
            "null" => StateTriggerConfig::default(),
            text => serde_json::from_str(text)
                .map_err(|e| format!("invalid state trigger config: {e}"))?,
        };
        let filter = StateFilter {
            scope: config.scope,
            key: config.key,
        };
        Ok((filter, config.condition_function_id))
    }

    fn matches(&self, filter: &StateFilter) -> bool {
        filter.scope.as_ref().is_none_or(|s| *s == self.scope)
            && filter.key.as_ref().is_none_or(|k| *k == self.key)
    }

    fn subject(&self, hasher: &mut DefaultHasher) {
        (&self.scope, &self.key).hash(hasher);
    }

    fn describe(&self) -> String {
        format!("scope {:?}, key {:?}", self.scope, self.key)
    }

    fn payload(&self) -> &RawJson {
        &self.payload
    }
}

impl ChangeTrigger<StateEvent> {
    /// Starts the dispatcher reading `events` (on the current runtime).
    pub(crate) fn run(self: &Arc<Self>, mut events: mpsc::Receiver<StateEvent>) -> JoinHandle<()> {
        let trigger = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let Some(trigger) = trigger.upgrade() else {
                    return;
                };
                trigger.dispatch(&Arc::new(event));
            }
        })
    }
}
