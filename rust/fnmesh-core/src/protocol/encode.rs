//! Encoding a [`Message`] as compact JSON, `type` first.

use std::fmt;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::messages::{InvokeFunction, Message};
use super::raw::Extra;

/// The key the engine adds to a worker's call payload: who is calling (docs/protocol.md 4.5).
pub const CALLER_WORKER_ID_KEY: &str = "_caller_worker_id";

impl Message {
    /// Encodes the message as compact UTF-8 JSON.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded message to `out` (lets a caller reuse one buffer per connection).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        if let Message::InvokeFunction(m) = self {
            return encode_invoke(m, payload_of(m), None, out);
        }
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

impl InvokeFunction {
    /// Encodes the call as the engine sends it to a worker, on behalf of the worker
    /// `caller_worker_id` when there is one: a `data` object then gets `"_caller_worker_id":
    /// caller_worker_id` spliced in (docs/protocol.md 4.5; other payloads go as they are). The
    /// same bytes as encoding the message after [`splice_caller_worker_id`] on its data, without
    /// parsing the payload again; with `None`, the same bytes as [`Message::encode`].
    pub fn encode_with_caller(&self, caller_worker_id: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_invoke(self, payload_of(self), caller_worker_id, &mut out);
        out
    }

    /// As [`InvokeFunction::encode_with_caller`], with `data` (well-formed JSON text) as the
    /// payload in place of the message's own: a payload kept elsewhere (a slice of the frame it
    /// arrived in) goes into the frame without first being copied into the message.
    /// It is written as a `String`, so the frame goes out as text without its UTF-8 being
    /// checked again.
    // NOTE: the connection's writer checked the UTF-8 of every frame given as bytes: a pass over
    // each 1 MiB frame to a worker in E8. `core::str::from_utf8` (that check and the WebSocket
    // layer's on arrival) went from 6.65% to 3.38% of the engine's CPU samples (`perf record`).
    // It is kept for `Connection::send`, whose callers hand over bytes.
    pub fn encode_with_payload(&self, data: &str, caller_worker_id: Option<&str>) -> String {
        let mut out = String::new();
        encode_invoke(self, Some(data), caller_worker_id, &mut out);
        out
    }
}

fn payload_of(m: &InvokeFunction) -> Option<&str> {
    m.data.as_deref().map(serde_json::value::RawValue::get)
}

/// Writes `data` (valid JSON) with `"_caller_worker_id": worker_id` added when it is an object,
/// and returns true; writes nothing and returns false when it is not an object.
///
/// The payload is not parsed: the key goes in before the closing brace, after any key of the same
/// name the caller sent, so every last-wins JSON reader sees the engine's value. Whitespace around
/// the object is dropped; valid JSON stays valid.
pub fn splice_caller_worker_id(data: &str, worker_id: &str, out: &mut String) -> bool {
    splice_into(data, worker_id, out)
}

/// Where a frame is encoded: bytes, or a `String` for a frame that goes out as text. Everything
/// written is text, so both stay UTF-8 without a check.
trait Out {
    fn put(&mut self, text: &str);
    fn reserve(&mut self, n: usize);
}

impl Out for Vec<u8> {
    fn put(&mut self, text: &str) {
        self.extend_from_slice(text.as_bytes());
    }
    fn reserve(&mut self, n: usize) {
        Vec::reserve(self, n);
    }
}

impl Out for String {
    fn put(&mut self, text: &str) {
        self.push_str(text);
    }
    fn reserve(&mut self, n: usize) {
        String::reserve(self, n);
    }
}

fn splice_into<W: Out>(data: &str, worker_id: &str, out: &mut W) -> bool {
    let text = data.trim_matches(|c: char| c.is_ascii_whitespace());
    let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else {
        return false;
    };
    out.reserve(text.len() + worker_id.len() + CALLER_WORKER_ID_KEY.len() + 6);
    out.put("{");
    if !inner.bytes().all(|b| b.is_ascii_whitespace()) {
        out.put(inner);
        out.put(",");
    }
    out.put("\"");
    out.put(CALLER_WORKER_ID_KEY);
    out.put("\":");
    write_str(out, worker_id);
    out.put("}");
    true
}

/// `invokefunction`, the frame of every routed call, written field by field.
// NOTE: byte for byte what the serde path writes (the tests compare both), without its per-key
// escaping and buffer growth, and with the caller's id spliced in as `data` is written: under
// callgrind (E1 at 64 in flight, benches/observability_callgrind.py) 3,374 instructions per
// routed call before (1,636 encoding, 1,738 splicing into a new payload parsed again), 1,009
// after.
fn encode_invoke<W: Out>(
    m: &InvokeFunction,
    data: Option<&str>,
    caller: Option<&str>,
    out: &mut W,
) {
    let text_len = |v: &Option<String>| v.as_ref().map_or(0, String::len);
    let raw_len = |v: &Option<super::RawJson>| v.as_ref().map_or(0, |r| r.get().len());
    out.reserve(
        160 + text_len(&m.invocation_id)
            + m.function_id.len()
            + data.map_or(0, str::len)
            + caller.map_or(0, str::len)
            + text_len(&m.traceparent)
            + text_len(&m.baggage)
            + raw_len(&m.metadata)
            + text_len(&m.namespace),
    );
    out.put(r#"{"type":"invokefunction""#);
    if let Some(id) = &m.invocation_id {
        out.put(r#","invocation_id":"#);
        write_str(out, id);
    }
    out.put(r#","function_id":"#);
    write_str(out, &m.function_id);
    if let Some(data) = data {
        out.put(r#","data":"#);
        let spliced = caller.is_some_and(|c| splice_into(data, c, out));
        if !spliced {
            out.put(data);
        }
    }
    if let Some(traceparent) = &m.traceparent {
        out.put(r#","traceparent":"#);
        write_str(out, traceparent);
    }
    if let Some(baggage) = &m.baggage {
        out.put(r#","baggage":"#);
        write_str(out, baggage);
    }
    if let Some(action) = &m.action {
        out.put(r#","action":"#);
        out.put(&serde_json::to_string(action).expect("encoding an action cannot fail"));
    }
    if let Some(metadata) = &m.metadata {
        out.put(r#","metadata":"#);
        out.put(metadata.get());
    }
    if let Some(namespace) = &m.namespace {
        out.put(r#","namespace":"#);
        write_str(out, namespace);
    }
    for (key, value) in &m.extra {
        out.put(",");
        write_str(out, key);
        out.put(":");
        out.put(value.get());
    }
    out.put("}");
}

/// A JSON string as serde_json writes it: verbatim when nothing in it needs an escape.
fn write_str<W: Out>(out: &mut W, text: &str) {
    // NOTE: a fold without early exit, which the compiler vectorises: 153 instructions per
    // 36-byte id against 288 with `any` (callgrind, E1 at 64 in flight).
    let needs_escape = text.bytes().fold(false, |seen, b| {
        seen | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escape {
        out.put(&serde_json::to_string(text).expect("encoding a string cannot fail"));
    } else {
        out.put("\"");
        out.put(text);
        out.put("\"");
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
