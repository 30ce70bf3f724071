//! Streams (docs/protocol.md 6.10): grouped items that functions write with
//! `stream::set|get|delete|update|list|list_groups` and that clients watch live on the stream
//! WebSocket, plus the `stream` trigger type that fires a function on every change.
//!
//! An item lives at `(stream_name, group_id, item_id)`. The items are kept by the state stores
//! ([`crate::state::StateStore`]: SQLite file, memory, Redis) under keys of their own: the
//! store's scope is the JSON array `[stream_name, group_id]` ([`scope`]) and its key the item
//! id, so a stream's groups are the scopes starting with `["<stream_name>",`. The stores' change
//! events, in write order (and, on Redis, those of every engine sharing it), become
//! [`StreamChange`]s, which the trigger ([`trigger::StreamTrigger`]) and the WebSocket hub
//! ([`socket::Hub`]) receive.
//!
//! A worker may serve a stream itself (iii's custom streams): when `stream::get(<name>)` (and
//! `set`, `delete`, `list`, `list_groups`, `update`) is registered, `stream::get` on that
//! stream calls it instead of the store, and the change events come from its answers.

use serde_json::value::RawValue;
use serde_json::Value;

use crate::protocol::RawJson;
use crate::state::StateEvent;

mod service;
pub mod socket;
pub mod trigger;

pub use service::StreamsService;

/// The store scope of a stream's group: the JSON array `[stream_name, group_id]`.
pub fn scope(stream_name: &str, group_id: &str) -> String {
    Value::Array(vec![Value::from(stream_name), Value::from(group_id)]).to_string()
}

/// The start every scope of `stream_name` has: `["<stream_name>",` (a JSON string ends at its
/// first unescaped quote, so no other stream's scopes start with it).
pub fn scope_prefix(stream_name: &str) -> String {
    format!("[{},", Value::from(stream_name))
}

/// `(stream_name, group_id)` of a store scope made by [`scope`].
pub fn parse_scope(scope: &str) -> Option<(String, String)> {
    serde_json::from_str::<(String, String)>(scope).ok()
}

/// What happened to an item (the `event.type` clients and triggers receive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The item got its first value.
    Create,
    /// The item's value was replaced.
    Update,
    /// The item was deleted (`data` is the value it had).
    Delete,
}

impl ChangeKind {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Create => "create",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
        }
    }
}

/// One change of one item, as the `stream` trigger's functions and the WebSocket clients
/// receive it: `payload` is `{"type":"stream","timestamp","streamName","groupId","id",
/// "event":{"type":"create"|"update"|"delete","data"}}` (docs/protocol.md 6.10).
#[derive(Debug)]
pub struct StreamChange {
    /// The stream.
    pub stream_name: String,
    /// The group.
    pub group_id: String,
    /// The item.
    pub item_id: String,
    /// The message, as JSON text.
    pub payload: RawJson,
}

impl StreamChange {
    /// The change of an item to `data` (its new value, or the deleted one).
    pub fn new(
        stream_name: &str,
        group_id: &str,
        item_id: &str,
        kind: ChangeKind,
        data: &Value,
    ) -> StreamChange {
        let payload = serde_json::json!({
            "type": "stream",
            "timestamp": chrono::Utc::now().timestamp_millis(),
            "streamName": stream_name,
            "groupId": group_id,
            "id": item_id,
            "event": {"type": kind.as_str(), "data": data},
        });
        StreamChange {
            stream_name: stream_name.to_owned(),
            group_id: group_id.to_owned(),
            item_id: item_id.to_owned(),
            // A `Value` always serializes; the default (`null`) is never used.
            payload: serde_json::value::to_raw_value(&payload).unwrap_or_default(),
        }
    }

    /// The change a store's event reports, or `None` if the event is not a stream item's (a
    /// scope not made by [`scope`]) or is malformed.
    pub fn from_state_event(event: &StateEvent) -> Option<StreamChange> {
        #[derive(serde::Deserialize)]
        struct Values<'a> {
            #[serde(borrow)]
            old_value: Option<&'a RawValue>,
            #[serde(borrow)]
            new_value: Option<&'a RawValue>,
        }
        let (stream_name, group_id) = parse_scope(&event.scope)?;
        let values: Values<'_> = serde_json::from_str(event.payload.get()).ok()?;
        fn present(v: Option<&RawValue>) -> Option<&RawValue> {
            v.filter(|raw| raw.get().trim() != "null")
        }
        let (kind, data) = match (present(values.old_value), present(values.new_value)) {
            (Some(_), Some(new)) => (ChangeKind::Update, new),
            (None, Some(new)) => (ChangeKind::Create, new),
            (Some(old), None) => (ChangeKind::Delete, old),
            (None, None) => return None,
        };
        let data: Value = serde_json::from_str(data.get()).ok()?;
        Some(StreamChange::new(
            &stream_name,
            &group_id,
            &event.key,
            kind,
            &data,
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn scopes_of_one_stream_share_a_prefix_no_other_stream_has() {
        let s = scope("orders", "eu");
        assert!(s.starts_with(&scope_prefix("orders")));
        assert!(!scope("orders-2", "eu").starts_with(&scope_prefix("orders")));
        assert!(!scope("orders\",", "x").starts_with(&scope_prefix("orders")));
        assert_eq!(parse_scope(&s), Some(("orders".into(), "eu".into())));
        assert_eq!(parse_scope("plain"), None);
    }

    #[test]
    fn a_state_event_becomes_the_stream_change_iii_sends() {
        let created = StateEvent::new(&scope("s", "g"), "i", None, Some(&json!({"n": 1})));
        let change = StreamChange::from_state_event(&created).expect("a change");
        let v: Value = serde_json::from_str(change.payload.get()).expect("json");
        assert_eq!(v["type"], "stream");
        assert_eq!(v["streamName"], "s");
        assert_eq!(v["groupId"], "g");
        assert_eq!(v["id"], "i");
        assert_eq!(v["event"], json!({"type": "create", "data": {"n": 1}}));
        assert!(v["timestamp"].as_i64().is_some_and(|t| t > 0));

        let updated = StateEvent::new(&scope("s", "g"), "i", Some(&json!(1)), Some(&json!(2)));
        let v: Value = serde_json::from_str(
            StreamChange::from_state_event(&updated)
                .expect("a change")
                .payload
                .get(),
        )
        .expect("json");
        assert_eq!(v["event"], json!({"type": "update", "data": 2}));

        let deleted = StateEvent::new(&scope("s", "g"), "i", Some(&json!("x")), None);
        let v: Value = serde_json::from_str(
            StreamChange::from_state_event(&deleted)
                .expect("a change")
                .payload
                .get(),
        )
        .expect("json");
        assert_eq!(v["event"], json!({"type": "delete", "data": "x"}));

        let foreign = StateEvent::new("not-a-stream-scope", "i", None, Some(&json!(1)));
        assert!(StreamChange::from_state_event(&foreign).is_none());
    }
}
