//! Decoding one frame into a [`Message`], in a single pass.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::messages::{
    ErrorBody, ErrorFrame, InvocationResult, InvokeFunction, Keepalive, Message, Reattach,
    RegisterFunction, RegisterService, RegisterTrigger, RegisterTriggerType, RegistrationRejected,
    TriggerRegistrationResult, UnknownMessage, UnregisterFunction, UnregisterTrigger,
    UnregisterTriggerType, WorkerRegistered,
};
use super::raw::{raw_of, Extra, RawJson};
use super::scan::{scan_frame, Spans};
use crate::error::{Error, Result};

/// Decodes one frame.
///
/// Returns [`Message::Unknown`] for a well-formed object whose `type` is not known, and
/// [`Error::MalformedFrame`] for anything else that cannot be read.
pub fn decode(frame: &[u8]) -> Result<Message> {
    decode_from(serde_json::Deserializer::from_slice(frame), frame)
}

/// Decodes one frame already known to be UTF-8 (a WebSocket text message): as [`decode`], without
/// checking each string's UTF-8 again.
// NOTE: serde_json checks the UTF-8 of every string it reads from a byte slice: 1,496
// instructions per routed call (two frames), for text the WebSocket layer had checked whole on
// arrival. With `spill_unused` looking only at present fields and `type` read without a copy,
// decoding the two frames of a routed call went from 12,136 to 7,922 instructions
// (benches/observability_callgrind.py's method; docs/architecture.md, "The hot path").
pub fn decode_text(frame: &str) -> Result<Message> {
    decode_from(serde_json::Deserializer::from_str(frame), frame.as_bytes())
}

/// Frames at least this large are decoded by [`decode_split`] without copying their payload.
// NOTE: `fnmesh-microbench codec --payload object|string --bytes N` times the engine's path with
// the split (`split_ns`: decode_split, then the frame to the worker written around the payload)
// against the path without (`whole_ns`: decode_text, then the frame written from the message).
// Split over whole, object payload / string payload: 0.86x / 0.67x at 16 KiB, 0.85x / 0.52x at
// 64 KiB, 0.81x / 0.33x at 1 MiB (2-core VM). Below 16 KiB the fixed cost of reading the
// envelope a second time (about 0.5 µs) eats what the split saves.
pub const SPLIT_FRAME_BYTES: usize = 16 * 1024;

/// A decoded frame whose payload may have stayed in the frame.
#[derive(Debug)]
pub struct Split {
    /// The message. When [`Split::payload`] is set, the payload field (`data` of an
    /// `invokefunction`, `result` of an `invocationresult`) is `None` here.
    pub message: Message,
    /// Where the payload left out of [`Split::message`] lies in the frame: well-formed JSON.
    pub payload: Option<Range<usize>>,
}

impl Split {
    /// The message as [`decode_text`] reads it: the payload left in `frame` (the frame this was
    /// decoded from) read back into it, at the cost of the copy the split saved.
    pub fn into_whole(self, frame: &str) -> Result<Message> {
        let mut message = self.message;
        let Some(range) = self.payload else {
            return Ok(message);
        };
        let raw = frame
            .get(range)
            .ok_or_else(|| Error::MalformedFrame("the payload is outside the frame".to_owned()))
            .and_then(|text| {
                RawValue::from_string(text.to_owned())
                    .map_err(|e| Error::MalformedFrame(format!("payload: {e}")))
            })?;
        match &mut message {
            Message::InvokeFunction(m) => m.data = Some(raw),
            Message::InvocationResult(r) => r.result = Some(raw),
            other => {
                return Err(Error::MalformedFrame(format!(
                    "a payload left out of {}",
                    other.kind()
                )))
            }
        }
        Ok(message)
    }
}

/// Decodes one text frame as [`decode_text`] does, but leaves a large frame's payload in the
/// frame: the payload is checked as well-formed JSON and its place returned, instead of being
/// copied into the message (docs/architecture.md, "Large frames"). Small frames, other message
/// types and frames the scan does not take are decoded whole.
pub fn decode_split(frame: &str) -> Result<Split> {
    if frame.len() >= SPLIT_FRAME_BYTES {
        let spans = scan_frame(frame).filter(|s| s.data.is_some() || s.result.is_some());
        if let Some(split) = spans.and_then(|spans| split_payload(frame, spans)) {
            return Ok(split);
        }
    }
    decode_text(frame).map(|message| Split {
        message,
        payload: None,
    })
}

/// The envelope read with both payloads blanked out; `None` sends the frame down the ordinary
/// path (a message type that keeps the other payload key too, or an envelope that does not
/// decode, whose error that path words).
fn split_payload(frame: &str, spans: Spans) -> Option<Split> {
    let mut blanks: Vec<&Range<usize>> = spans.data.iter().chain(&spans.result).collect();
    blanks.sort_by_key(|r| r.start);
    let mut envelope = String::with_capacity(256);
    let mut at = 0;
    for r in blanks {
        envelope.push_str(&frame[at..r.start]);
        envelope.push('0');
        at = r.end;
    }
    envelope.push_str(&frame[at..]);
    let (message, payload) = match decode_text(&envelope).ok()? {
        Message::InvokeFunction(mut m) if spans.result.is_none() => {
            m.data = None;
            (Message::InvokeFunction(m), spans.data)
        }
        Message::InvocationResult(mut r) if spans.data.is_none() => {
            r.result = None;
            (Message::InvocationResult(r), spans.result)
        }
        _ => return None,
    };
    Some(Split { message, payload })
}

/// The single pass over `frame` read through `de`.
fn decode_from<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    frame: &[u8],
) -> Result<Message> {
    let mut fields = Fields::default();
    if let Err(err) = Fill(&mut fields)
        .deserialize(&mut de)
        .and_then(|()| de.end())
    {
        return decode_failed(frame, err);
    }
    fields.into_message(frame)
}

/// Decodes one frame after checking it against a size limit.
pub fn decode_limited(frame: &[u8], max_frame_bytes: usize) -> Result<Message> {
    if frame.len() > max_frame_bytes {
        return Err(Error::FrameTooLarge {
            size: frame.len(),
            limit: max_frame_bytes,
        });
    }
    decode(frame)
}

/// Slow path after a failed single-pass decode: a frame whose `type` is unknown is still an
/// [`Message::Unknown`] even when a field it shares a name with a known field has another shape.
#[cold]
fn decode_failed(frame: &[u8], err: serde_json::Error) -> Result<Message> {
    #[derive(Deserialize)]
    struct TypeOnly {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    if let Ok(TypeOnly { kind: Some(kind) }) = serde_json::from_slice::<TypeOnly>(frame) {
        if known_kind(&kind).is_none() {
            return unknown(kind, frame);
        }
    }
    Err(Error::MalformedFrame(err.to_string()))
}

/// The message types this codec knows, as static text.
fn known_kind(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "registerfunction" => "registerfunction",
        "unregisterfunction" => "unregisterfunction",
        "invokefunction" => "invokefunction",
        "invocationresult" => "invocationresult",
        "registertriggertype" => "registertriggertype",
        "unregistertriggertype" => "unregistertriggertype",
        "registertrigger" => "registertrigger",
        "unregistertrigger" => "unregistertrigger",
        "triggerregistrationresult" => "triggerregistrationresult",
        "registerservice" => "registerservice",
        "reattach" => "reattach",
        "workerregistered" => "workerregistered",
        "registrationrejected" => "registrationrejected",
        "ping" => "ping",
        "pong" => "pong",
        "error" => "error",
        _ => return None,
    })
}

fn unknown(kind: String, frame: &[u8]) -> Result<Message> {
    let text = std::str::from_utf8(frame)
        .map_err(|e| Error::MalformedFrame(e.to_string()))?
        .trim_matches(|c: char| c.is_ascii_whitespace());
    let raw =
        RawValue::from_string(text.to_owned()).map_err(|e| Error::MalformedFrame(e.to_string()))?;
    Ok(Message::Unknown(UnknownMessage { kind, raw }))
}

/// Every field any message may carry. Strings are typed on the way in; payloads stay raw;
/// `action`, `invocation` and `error` are kept raw until the message type says they matter, so
/// an odd value in a field a message does not use cannot fail the frame.
#[derive(Default)]
struct Fields {
    kind: Option<Cow<'static, str>>,
    id: Option<String>,
    function_id: Option<String>,
    invocation_id: Option<String>,
    data: Option<RawJson>,
    result: Option<RawJson>,
    error: Option<RawJson>,
    traceparent: Option<String>,
    baggage: Option<String>,
    action: Option<RawJson>,
    metadata: Option<RawJson>,
    namespace: Option<String>,
    description: Option<String>,
    request_format: Option<RawJson>,
    response_format: Option<RawJson>,
    invocation: Option<RawJson>,
    trigger_request_format: Option<RawJson>,
    call_request_format: Option<RawJson>,
    trigger_type: Option<String>,
    config: Option<RawJson>,
    trigger_namespace: Option<String>,
    name: Option<String>,
    parent_service_id: Option<String>,
    previous_worker_id: Option<String>,
    reattach_token: Option<String>,
    worker_id: Option<String>,
    code: Option<String>,
    worker_name: Option<String>,
    owner_worker_id: Option<String>,
    extra: Extra,
}

/// Field names, matched once per key while reading.
enum Key {
    Kind,
    Id,
    FunctionId,
    InvocationId,
    Data,
    Result,
    Error,
    Traceparent,
    Baggage,
    Action,
    Metadata,
    Namespace,
    Description,
    RequestFormat,
    ResponseFormat,
    Invocation,
    TriggerRequestFormat,
    CallRequestFormat,
    TriggerType,
    Config,
    TriggerNamespace,
    Name,
    ParentServiceId,
    PreviousWorkerId,
    ReattachToken,
    WorkerId,
    Code,
    WorkerName,
    OwnerWorkerId,
    Other(String),
}

impl Key {
    fn from_str(s: &str) -> Key {
        match s {
            "type" => Key::Kind,
            "id" => Key::Id,
            "function_id" => Key::FunctionId,
            "invocation_id" => Key::InvocationId,
            "data" => Key::Data,
            "result" => Key::Result,
            "error" => Key::Error,
            "traceparent" => Key::Traceparent,
            "baggage" => Key::Baggage,
            "action" => Key::Action,
            "metadata" => Key::Metadata,
            "namespace" => Key::Namespace,
            "description" => Key::Description,
            "request_format" => Key::RequestFormat,
            "response_format" => Key::ResponseFormat,
            "invocation" => Key::Invocation,
            "trigger_request_format" => Key::TriggerRequestFormat,
            "call_request_format" => Key::CallRequestFormat,
            "trigger_type" => Key::TriggerType,
            "config" => Key::Config,
            "trigger_namespace" => Key::TriggerNamespace,
            "name" => Key::Name,
            "parent_service_id" => Key::ParentServiceId,
            "previous_worker_id" => Key::PreviousWorkerId,
            "reattach_token" => Key::ReattachToken,
            "worker_id" => Key::WorkerId,
            "code" => Key::Code,
            "worker_name" => Key::WorkerName,
            "owner_worker_id" => Key::OwnerWorkerId,
            other => Key::Other(other.to_owned()),
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Key, E> {
                Ok(Key::from_str(v))
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// Reads an optional string field; `null` reads as absent.
struct OptString;
impl<'de> DeserializeSeed<'de> for OptString {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        Option::<String>::deserialize(d)
    }
}

/// Reads `type` as [`Option<String>`] would, without copying a known kind (one allocation less
/// per frame).
struct KindSeed;
impl<'de> DeserializeSeed<'de> for KindSeed {
    type Value = Option<Cow<'static, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_option(KindVisitor)
    }
}

struct KindVisitor;
impl<'de> Visitor<'de> for KindVisitor {
    type Value = Option<Cow<'static, str>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_none<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_str(KindVisitor)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok(Some(match known_kind(v) {
            Some(kind) => Cow::Borrowed(kind),
            None => Cow::Owned(v.to_owned()),
        }))
    }
}

/// Reads a frame's fields into the record, in place.
// NOTE: `Fields` is about 700 bytes; returned by value it was copied three times per frame, 530
// instructions per routed call under callgrind (E1 at 64 in flight).
struct Fill<'a>(&'a mut Fields);

impl<'de> DeserializeSeed<'de> for Fill<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        struct FieldsVisitor<'a>(&'a mut Fields);
        impl<'de> Visitor<'de> for FieldsVisitor<'_> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object with a string `type`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
                let f = self.0;
                // A repeated key: the last value wins, as with Python's `json.loads`.
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Kind => f.kind = map.next_value_seed(KindSeed)?,
                        Key::Id => f.id = map.next_value_seed(OptString)?,
                        Key::FunctionId => f.function_id = map.next_value_seed(OptString)?,
                        Key::InvocationId => f.invocation_id = map.next_value_seed(OptString)?,
                        Key::Data => f.data = Some(map.next_value()?),
                        Key::Result => f.result = Some(map.next_value()?),
                        Key::Error => f.error = Some(map.next_value()?),
                        Key::Traceparent => f.traceparent = map.next_value_seed(OptString)?,
                        Key::Baggage => f.baggage = map.next_value_seed(OptString)?,
                        Key::Action => f.action = Some(map.next_value()?),
                        Key::Metadata => f.metadata = Some(map.next_value()?),
                        Key::Namespace => f.namespace = map.next_value_seed(OptString)?,
                        Key::Description => f.description = map.next_value_seed(OptString)?,
                        Key::RequestFormat => f.request_format = Some(map.next_value()?),
                        Key::ResponseFormat => f.response_format = Some(map.next_value()?),
                        Key::Invocation => f.invocation = Some(map.next_value()?),
                        Key::TriggerRequestFormat => {
                            f.trigger_request_format = Some(map.next_value()?)
                        }
                        Key::CallRequestFormat => f.call_request_format = Some(map.next_value()?),
                        Key::TriggerType => f.trigger_type = map.next_value_seed(OptString)?,
                        Key::Config => f.config = Some(map.next_value()?),
                        Key::TriggerNamespace => {
                            f.trigger_namespace = map.next_value_seed(OptString)?
                        }
                        Key::Name => f.name = map.next_value_seed(OptString)?,
                        Key::ParentServiceId => {
                            f.parent_service_id = map.next_value_seed(OptString)?
                        }
                        Key::PreviousWorkerId => {
                            f.previous_worker_id = map.next_value_seed(OptString)?
                        }
                        Key::ReattachToken => f.reattach_token = map.next_value_seed(OptString)?,
                        Key::WorkerId => f.worker_id = map.next_value_seed(OptString)?,
                        Key::Code => f.code = map.next_value_seed(OptString)?,
                        Key::WorkerName => f.worker_name = map.next_value_seed(OptString)?,
                        Key::OwnerWorkerId => f.owner_worker_id = map.next_value_seed(OptString)?,
                        Key::Other(name) => f.extra.push((name, map.next_value()?)),
                    }
                }
                last_wins(&mut f.extra);
                Ok(())
            }
        }
        d.deserialize_map(FieldsVisitor(self.0))
    }
}

/// Keeps the last value of each repeated unknown key, at the place of its last occurrence.
///
/// Linear in the number of keys. (It was a `retain` over the earlier keys for every key: two
/// frames of 300k unique unknown keys, a few MB each, held both runtime threads for over a
/// minute.)
fn last_wins(extra: &mut Extra) {
    if extra.len() < 2 {
        return;
    }
    let keep: Vec<bool> = {
        let mut seen = HashSet::with_capacity(extra.len());
        let mut keep = vec![false; extra.len()];
        for (i, (key, _)) in extra.iter().enumerate().rev() {
            keep[i] = seen.insert(key.as_str());
        }
        keep
    };
    if keep.iter().all(|k| *k) {
        return;
    }
    let mut at = 0;
    extra.retain(|_| {
        at += 1;
        keep[at - 1]
    });
}

fn required(value: Option<String>, kind: &str, field: &str) -> Result<String> {
    value.ok_or_else(|| Error::MalformedFrame(format!("{kind}: missing string field `{field}`")))
}

fn typed<T: serde::de::DeserializeOwned>(
    raw: Option<RawJson>,
    kind: &str,
    field: &str,
) -> Result<Option<T>> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|e| Error::MalformedFrame(format!("{kind}: field `{field}`: {e}"))),
    }
}

impl Fields {
    /// Moves every field the message type `kind` does not use into `extra`, so a re-encode
    /// writes the frame back whole. Only runs for odd frames: the SDKs send no such fields.
    fn spill_unused(&mut self, used: &[&str]) {
        macro_rules! spill {
            ($($field:ident),*) => {$(
                if self.$field.is_some() && !used.contains(&stringify!($field)) {
                    if let Some(v) = self.$field.take() {
                        let raw = raw_of(&v);
                        self.extra.push((stringify!($field).to_owned(), raw));
                    }
                }
            )*};
        }
        spill!(
            id,
            function_id,
            invocation_id,
            data,
            result,
            error,
            traceparent,
            baggage,
            action,
            metadata,
            namespace,
            description,
            request_format,
            response_format,
            invocation,
            trigger_request_format,
            call_request_format,
            trigger_type,
            config,
            trigger_namespace,
            name,
            parent_service_id,
            previous_worker_id,
            reattach_token,
            worker_id,
            code,
            worker_name,
            owner_worker_id
        );
    }

    fn into_message(mut self, frame: &[u8]) -> Result<Message> {
        let Some(kind) = self.kind.take() else {
            return Err(Error::MalformedFrame(
                "missing string field `type`".to_owned(),
            ));
        };
        let k: &str = &kind;
        let msg = match k {
            "invokefunction" => {
                self.spill_unused(&[
                    "invocation_id",
                    "function_id",
                    "data",
                    "traceparent",
                    "baggage",
                    "action",
                    "metadata",
                    "namespace",
                ]);
                Message::InvokeFunction(InvokeFunction {
                    function_id: required(self.function_id, k, "function_id")?,
                    action: typed(self.action, k, "action")?,
                    invocation_id: self.invocation_id,
                    data: self.data,
                    traceparent: self.traceparent,
                    baggage: self.baggage,
                    metadata: self.metadata,
                    namespace: self.namespace,
                    extra: self.extra,
                })
            }
            "invocationresult" => {
                self.spill_unused(&[
                    "invocation_id",
                    "function_id",
                    "result",
                    "error",
                    "traceparent",
                    "baggage",
                ]);
                Message::InvocationResult(InvocationResult {
                    invocation_id: required(self.invocation_id, k, "invocation_id")?,
                    function_id: required(self.function_id, k, "function_id")?,
                    result: self.result,
                    error: self
                        .error
                        .filter(|e| e.get() != "null")
                        .map(|e| ErrorBody::from_raw(&e)),
                    traceparent: self.traceparent,
                    baggage: self.baggage,
                    extra: self.extra,
                })
            }
            "registerfunction" => {
                self.spill_unused(&[
                    "id",
                    "description",
                    "request_format",
                    "response_format",
                    "metadata",
                    "invocation",
                ]);
                Message::RegisterFunction(RegisterFunction {
                    id: required(self.id, k, "id")?,
                    invocation: typed(self.invocation, k, "invocation")?,
                    description: self.description,
                    request_format: self.request_format,
                    response_format: self.response_format,
                    metadata: self.metadata,
                    extra: self.extra,
                })
            }
            "unregisterfunction" => {
                self.spill_unused(&["id"]);
                Message::UnregisterFunction(UnregisterFunction {
                    id: required(self.id, k, "id")?,
                    extra: self.extra,
                })
            }
            "registertriggertype" => {
                self.spill_unused(&[
                    "id",
                    "description",
                    "trigger_request_format",
                    "call_request_format",
                    "namespace",
                ]);
                Message::RegisterTriggerType(RegisterTriggerType {
                    id: required(self.id, k, "id")?,
                    description: self.description,
                    trigger_request_format: self.trigger_request_format,
                    call_request_format: self.call_request_format,
                    namespace: self.namespace,
                    extra: self.extra,
                })
            }
            "unregistertriggertype" => {
                self.spill_unused(&["id"]);
                Message::UnregisterTriggerType(UnregisterTriggerType {
                    id: required(self.id, k, "id")?,
                    extra: self.extra,
                })
            }
            "registertrigger" => {
                self.spill_unused(&[
                    "id",
                    "trigger_type",
                    "function_id",
                    "config",
                    "metadata",
                    "namespace",
                    "trigger_namespace",
                ]);
                Message::RegisterTrigger(RegisterTrigger {
                    id: required(self.id, k, "id")?,
                    trigger_type: required(self.trigger_type, k, "trigger_type")?,
                    function_id: required(self.function_id, k, "function_id")?,
                    config: self.config,
                    metadata: self.metadata,
                    namespace: self.namespace,
                    trigger_namespace: self.trigger_namespace,
                    extra: self.extra,
                })
            }
            "unregistertrigger" => {
                self.spill_unused(&["id", "trigger_type"]);
                Message::UnregisterTrigger(UnregisterTrigger {
                    id: required(self.id, k, "id")?,
                    trigger_type: self.trigger_type,
                    extra: self.extra,
                })
            }
            "triggerregistrationresult" => {
                self.spill_unused(&["id", "trigger_type", "function_id", "error"]);
                Message::TriggerRegistrationResult(TriggerRegistrationResult {
                    id: required(self.id, k, "id")?,
                    trigger_type: required(self.trigger_type, k, "trigger_type")?,
                    function_id: required(self.function_id, k, "function_id")?,
                    error: self
                        .error
                        .filter(|e| e.get() != "null")
                        .map(|e| ErrorBody::from_raw(&e)),
                    extra: self.extra,
                })
            }
            "registerservice" => {
                self.spill_unused(&["id", "name", "description", "parent_service_id"]);
                Message::RegisterService(RegisterService {
                    id: required(self.id, k, "id")?,
                    name: self.name,
                    description: self.description,
                    parent_service_id: self.parent_service_id,
                    extra: self.extra,
                })
            }
            "reattach" => {
                self.spill_unused(&["previous_worker_id", "reattach_token"]);
                Message::Reattach(Reattach {
                    previous_worker_id: required(self.previous_worker_id, k, "previous_worker_id")?,
                    reattach_token: required(self.reattach_token, k, "reattach_token")?,
                    extra: self.extra,
                })
            }
            "workerregistered" => {
                self.spill_unused(&["worker_id", "reattach_token"]);
                Message::WorkerRegistered(WorkerRegistered {
                    worker_id: required(self.worker_id, k, "worker_id")?,
                    reattach_token: self.reattach_token,
                    extra: self.extra,
                })
            }
            "registrationrejected" => {
                self.spill_unused(&[
                    "code",
                    "namespace",
                    "worker_name",
                    "function_id",
                    "owner_worker_id",
                ]);
                Message::RegistrationRejected(RegistrationRejected {
                    code: required(self.code, k, "code")?,
                    namespace: required(self.namespace, k, "namespace")?,
                    worker_name: self.worker_name,
                    function_id: self.function_id,
                    owner_worker_id: self.owner_worker_id.unwrap_or_default(),
                    extra: self.extra,
                })
            }
            "ping" | "pong" => {
                self.spill_unused(&[]);
                let body = Keepalive { extra: self.extra };
                if k == "ping" {
                    Message::Ping(body)
                } else {
                    Message::Pong(body)
                }
            }
            "error" => {
                self.spill_unused(&["error"]);
                let error = match self.error {
                    Some(raw) if raw.get() != "null" => ErrorBody::from_raw(&raw),
                    _ => {
                        return Err(Error::MalformedFrame(
                            "error: missing field `error`".to_owned(),
                        ))
                    }
                };
                Message::Error(ErrorFrame {
                    error,
                    extra: self.extra,
                })
            }
            _ => return unknown(kind.into_owned(), frame),
        };
        Ok(msg)
    }
}
