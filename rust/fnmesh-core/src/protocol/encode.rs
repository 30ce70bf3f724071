//! Encoding a [`Message`] as compact JSON, `type` first.

use std::fmt;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::messages::Message;
use super::raw::Extra;

impl Message {
    /// Encodes the message as compact UTF-8 JSON.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded message to `out` (lets a caller reuse one buffer per connection).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut ser = serde_json::Serializer::new(out);
        // Serializing our own types into a Vec cannot fail: every key is a string and RawJson is
        // valid JSON by construction.
        self.serialize(&mut ser)
            .expect("encoding a Message into memory cannot fail");
    }

    /// Encodes the message as a `String` (a WebSocket text frame).
    pub fn to_text(&self) -> String {
        String::from_utf8(self.encode()).expect("serde_json writes UTF-8")
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// Writes `type` first, then the present fields, then the kept unknown fields.
struct MapWriter<M: SerializeMap>(M);

impl<M: SerializeMap> MapWriter<M> {
    fn field<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> std::result::Result<(), M::Error> {
        self.0.serialize_entry(key, value)
    }
    fn opt<T: Serialize>(
        &mut self,
        key: &str,
        value: &Option<T>,
    ) -> std::result::Result<(), M::Error> {
        match value {
            Some(v) => self.0.serialize_entry(key, v),
            None => Ok(()),
        }
    }
    fn finish(mut self, extra: &Extra) -> std::result::Result<M::Ok, M::Error> {
        for (k, v) in extra {
            self.0.serialize_entry(k, v)?;
        }
        self.0.end()
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if let Message::Unknown(u) = self {
            return u.raw.serialize(s);
        }
        let mut w = MapWriter(s.serialize_map(None)?);
        w.field("type", self.kind())?;
        let extra = match self {
            Message::RegisterFunction(m) => {
                w.field("id", &m.id)?;
                w.opt("description", &m.description)?;
                w.opt("request_format", &m.request_format)?;
                w.opt("response_format", &m.response_format)?;
                w.opt("metadata", &m.metadata)?;
                w.opt("invocation", &m.invocation)?;
                &m.extra
            }
            Message::UnregisterFunction(m) => {
                w.field("id", &m.id)?;
                &m.extra
            }
            Message::InvokeFunction(m) => {
                w.opt("invocation_id", &m.invocation_id)?;
                w.field("function_id", &m.function_id)?;
                w.opt("data", &m.data)?;
                w.opt("traceparent", &m.traceparent)?;
                w.opt("baggage", &m.baggage)?;
                w.opt("action", &m.action)?;
                w.opt("metadata", &m.metadata)?;
                w.opt("namespace", &m.namespace)?;
                &m.extra
            }
            Message::InvocationResult(m) => {
                w.field("invocation_id", &m.invocation_id)?;
                w.field("function_id", &m.function_id)?;
                w.opt("result", &m.result)?;
                w.opt("error", &m.error)?;
                w.opt("traceparent", &m.traceparent)?;
                w.opt("baggage", &m.baggage)?;
                &m.extra
            }
            Message::RegisterTriggerType(m) => {
                w.field("id", &m.id)?;
                w.opt("description", &m.description)?;
                w.opt("trigger_request_format", &m.trigger_request_format)?;
                w.opt("call_request_format", &m.call_request_format)?;
                w.opt("namespace", &m.namespace)?;
                &m.extra
            }
            Message::UnregisterTriggerType(m) => {
                w.field("id", &m.id)?;
                &m.extra
            }
            Message::RegisterTrigger(m) => {
                w.field("id", &m.id)?;
                w.field("trigger_type", &m.trigger_type)?;
                w.field("function_id", &m.function_id)?;
                w.opt("config", &m.config)?;
                w.opt("metadata", &m.metadata)?;
                w.opt("namespace", &m.namespace)?;
                w.opt("trigger_namespace", &m.trigger_namespace)?;
                &m.extra
            }
            Message::UnregisterTrigger(m) => {
                w.field("id", &m.id)?;
                w.opt("trigger_type", &m.trigger_type)?;
                &m.extra
            }
            Message::TriggerRegistrationResult(m) => {
                w.field("id", &m.id)?;
                w.field("trigger_type", &m.trigger_type)?;
                w.field("function_id", &m.function_id)?;
                w.opt("error", &m.error)?;
                &m.extra
            }
            Message::RegisterService(m) => {
                w.field("id", &m.id)?;
                w.opt("name", &m.name)?;
                w.opt("description", &m.description)?;
                w.opt("parent_service_id", &m.parent_service_id)?;
                &m.extra
            }
            Message::Reattach(m) => {
                w.field("previous_worker_id", &m.previous_worker_id)?;
                w.field("reattach_token", &m.reattach_token)?;
                &m.extra
            }
            Message::WorkerRegistered(m) => {
                w.field("worker_id", &m.worker_id)?;
                w.opt("reattach_token", &m.reattach_token)?;
                &m.extra
            }
            Message::RegistrationRejected(m) => {
                w.field("code", &m.code)?;
                w.field("namespace", &m.namespace)?;
                w.opt("worker_name", &m.worker_name)?;
                w.opt("function_id", &m.function_id)?;
                w.field("owner_worker_id", &m.owner_worker_id)?;
                &m.extra
            }
            Message::Ping(m) | Message::Pong(m) => &m.extra,
            Message::Error(m) => {
                w.field("error", &m.error)?;
                &m.extra
            }
            Message::Unknown(_) => unreachable!("handled above"),
        };
        w.finish(extra)
    }
}
