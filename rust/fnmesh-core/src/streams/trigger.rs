//! The `stream` trigger type (docs/protocol.md 6.10): bindings that fire a function on every
//! change of a stream's items, filtered by `stream_name` (required), `group_id` and `item_id`,
//! with an optional condition function.
//!
//! Delivery is a change trigger's (`change_trigger.rs`), as for the `state` trigger: the changes
//! of one item run in order, one at a time per binding, while different items proceed in
//! parallel.

use std::hash::{DefaultHasher, Hash};

use serde_json::value::RawValue;

use super::StreamChange;
use crate::change_trigger::{Change, ChangeTrigger};
use crate::protocol::RawJson;

pub use crate::change_trigger::LANE_BACKLOG;

/// The trigger type's id.
pub const STREAM_TRIGGER: &str = "stream";

/// The `stream` trigger type: its bindings, fed by the streams service.
pub type StreamTrigger = ChangeTrigger<StreamChange>;

/// A binding's config (iii's `StreamTriggerConfig`), which is also its filter.
#[derive(Debug, serde::Deserialize)]
pub struct StreamTriggerConfig {
    stream_name: String,
    group_id: Option<String>,
    item_id: Option<String>,
    condition_function_id: Option<String>,
}

impl Change for StreamChange {
    type Filter = StreamTriggerConfig;
    const KIND: &'static str = STREAM_TRIGGER;

    fn parse(config: &RawValue) -> Result<(StreamTriggerConfig, Option<String>), String> {
        let config: StreamTriggerConfig = serde_json::from_str(config.get())
            .map_err(|e| format!("invalid stream trigger config (it needs stream_name): {e}"))?;
        let condition = config.condition_function_id.clone();
        Ok((config, condition))
    }

    fn matches(&self, filter: &StreamTriggerConfig) -> bool {
        // iii treats an empty filter as none.
        let empty_or =
            |f: &Option<String>, v: &str| f.as_deref().is_none_or(|f| f.is_empty() || f == v);
        filter.stream_name == self.stream_name
            && empty_or(&filter.group_id, &self.group_id)
            && empty_or(&filter.item_id, &self.item_id)
    }

    fn subject(&self, hasher: &mut DefaultHasher) {
        (&self.stream_name, &self.group_id, &self.item_id).hash(hasher);
    }

    fn describe(&self) -> String {
        format!(
            "stream {:?}, group {:?}, item {:?}",
            self.stream_name, self.group_id, self.item_id
        )
    }

    fn payload(&self) -> &RawJson {
        &self.payload
    }
}
