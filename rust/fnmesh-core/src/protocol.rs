//! The iii wire codec: every message of PROTOCOL.md section 2, decoded leniently and encoded
//! the way the SDKs write it.
//!
//! * **Payloads stay raw.** `data`, `result`, `config`, `metadata` and the schema fields are kept
//!   as [`RawJson`] (the exact JSON text of the value) from decode to re-encode; the codec never
//!   builds a tree just to forward a payload.
//! * **Lenient decoding** (PROTOCOL.md 11.3): a missing `data`/`config` reads as `null` through the
//!   accessors; a `null` optional field reads as absent; an unknown `type` decodes to
//!   [`Message::Unknown`] holding the whole frame, so the caller can log and skip it; unknown
//!   fields of known messages are kept in `extra` and written back on encode (forward
//!   compatibility: a field a newer SDK adds survives routing). A malformed frame is an
//!   [`Error::MalformedFrame`] value, never a panic.
//! * **Encoding** writes compact UTF-8 JSON (non-ASCII text is not `\u`-escaped), `type` first,
//!   absent optional fields omitted.
//!
//! Decoding is a single pass over the frame: every field any message may carry is read into a
//! superset record, then the record is checked against the message's `type` (which may come
//! anywhere in the object).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};

/// A JSON value kept as its exact text.
pub type RawJson = Box<RawValue>;

/// Unknown fields of a known message, in arrival order, kept so a re-encode writes them back.
pub type Extra = Vec<(String, RawJson)>;

/// Default limit on the size of one frame (PROTOCOL.md 11.3): 16 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

fn or_null(value: &Option<RawJson>) -> &RawValue {
    match value {
        Some(raw) => raw,
        None => RawValue::NULL,
    }
}

// ---------------------------------------------------------------------------------------------
// Auxiliary shapes
// ---------------------------------------------------------------------------------------------

/// `{"code", "message", "stacktrace"?}`: the error of an invocation or trigger registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code (`function_not_found`, `invocation_failed`, ...).
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Remote stack trace, when the failing side had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacktrace: Option<String>,
}

impl ErrorBody {
    /// An error body without a stack trace.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            code: code.into(),
            message: message.into(),
            stacktrace: None,
        }
    }

    /// Reads an `error` value leniently, as the SDKs do: an object with string `code` and
    /// `message` is taken as is (a missing one becomes `UNKNOWN` / empty); any other value becomes
    /// code `UNKNOWN` with the value's text as the message.
    fn from_raw(raw: &RawValue) -> ErrorBody {
        #[derive(Deserialize)]
        struct Loose {
            code: Option<String>,
            message: Option<String>,
            stacktrace: Option<String>,
        }
        match serde_json::from_str::<Loose>(raw.get()) {
            Ok(l) => ErrorBody {
                code: l.code.unwrap_or_else(|| "UNKNOWN".to_owned()),
                message: l.message.unwrap_or_default(),
                stacktrace: l.stacktrace,
            },
            Err(_) => {
                let message = serde_json::from_str::<String>(raw.get())
                    .unwrap_or_else(|_| raw.get().to_owned());
                ErrorBody::new("UNKNOWN", message)
            }
        }
    }
}

/// How an `invokefunction` is routed (`action`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TriggerAction {
    /// Fire and forget: the function runs, nothing is sent back.
    Void,
    /// Put the call on a named queue; the caller gets a receipt.
    Enqueue {
        /// Name of the queue.
        queue: String,
    },
}

/// HTTP method of an external function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// GET
    Get,
    /// POST (the default)
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

/// Authentication of an external HTTP function. Each `*_key` names an environment variable of
/// the engine; secret values never travel on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HttpAuth {
    /// `x-iii-Signature: sha256=<hmac>` computed with the secret in `secret_key`.
    Hmac {
        /// Environment variable holding the shared secret.
        secret_key: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// Environment variable holding the token.
        token_key: String,
    },
    /// `<header>: <value>`.
    ApiKey {
        /// Header name.
        header: String,
        /// Environment variable holding the value.
        value_key: String,
    },
}

/// `registerfunction.invocation`: makes the function an external HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpInvocationRef {
    /// Target URL.
    pub url: String,
    /// Method; absent means POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// Per-call timeout in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Static headers added to every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// Authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HttpAuth>,
    /// fnmesh extension: the retry policy, passed to the host as given (iii has no retries;
    /// its workers never send it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<serde_json::Value>,
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// `registerfunction` (worker → engine).
#[derive(Debug, Clone, Default)]
pub struct RegisterFunction {
    /// Function id.
    pub id: String,
    /// Description.
    pub description: Option<String>,
    /// Input schema (any JSON, usually JSON Schema).
    pub request_format: Option<RawJson>,
    /// Output schema.
    pub response_format: Option<RawJson>,
    /// Metadata (`internal: true` hides the function from listings).
    pub metadata: Option<RawJson>,
    /// Present for external HTTP functions.
    pub invocation: Option<HttpInvocationRef>,
    /// Fields this codec does not know, kept verbatim.
    pub extra: Extra,
}

/// `unregisterfunction` (worker → engine).
#[derive(Debug, Clone, Default)]
pub struct UnregisterFunction {
    /// Function id.
    pub id: String,
    /// Fields this codec does not know, kept verbatim.
    pub extra: Extra,
}

/// `invokefunction`, both a worker's call and the engine's request to execute.
#[derive(Debug, Clone, Default)]
pub struct InvokeFunction {
    /// Correlation id (canonical UUID); absent for fire-and-forget calls.
    pub invocation_id: Option<String>,
    /// Target function.
    pub function_id: String,
    /// Payload; `None` when the key was absent (read it through [`Self::data_or_null`]).
    pub data: Option<RawJson>,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// W3C baggage.
    pub baggage: Option<String>,
    /// Routing action.
    pub action: Option<TriggerAction>,
    /// Per-invocation side channel, never merged into `data`.
    pub metadata: Option<RawJson>,
    /// Namespace the function resolves in (absent = `default`).
    pub namespace: Option<String>,
    /// Fields this codec does not know, kept verbatim.
    pub extra: Extra,
}

impl InvokeFunction {
    /// The payload, with an absent `data` read as `null`.
    pub fn data_or_null(&self) -> &RawValue {
        or_null(&self.data)
    }
}

/// `invocationresult`, both a worker's reply and the engine's reply to a caller.
#[derive(Debug, Clone, Default)]
pub struct InvocationResult {
    /// The id of the invocation this answers.
    pub invocation_id: String,
    /// The function that ran.
    pub function_id: String,
    /// Success value (absent means `null`).
    pub result: Option<RawJson>,
    /// Failure; when set the invocation failed whatever `result` says.
    pub error: Option<ErrorBody>,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// W3C baggage.
    pub baggage: Option<String>,
    /// Fields this codec does not know, kept verbatim.
    pub extra: Extra,
}

/// `registertriggertype` (worker → engine): the worker provides a trigger type.
#[derive(Debug, Clone, Default)]
pub struct RegisterTriggerType {
    /// Trigger type id.
    pub id: String,
    /// Description.
    pub description: Option<String>,
    /// Schema of a binding's `config`.
    pub trigger_request_format: Option<RawJson>,
    /// Schema of the payload the trigger sends.
    pub call_request_format: Option<RawJson>,
    /// Provider namespace (absent = the connection's).
    pub namespace: Option<String>,
    /// Fields this codec does not know, kept verbatim.
    pub extra: Extra,
}

/// `unregistertriggertype` (sent by SDKs; the iii engine does not know it).
#[derive(Debug, Clone, Default)]
pub struct UnregisterTriggerType {
    /// Trigger type id.
    pub id: String,
    /// Fields this codec does not know, kept verbatim.
    pub extra: Extra,
}

/// `registertrigger`: a worker binds a function to a trigger, or the engine delivers a binding to
/// the provider of its type.
#[derive(Debug, Clone, Default)]
pub struct RegisterTrigger {
    /// Binding id.
    pub id: String,
    /// Trigger type.
    pub trigger_type: String,
    /// Function the trigger invokes.
    pub function_id: String,
    /// Binding configuration; `None` when absent (read it through [`Self::config_or_null`]).
    pub config: Option<RawJson>,
    /// Metadata passed to every invocation of this binding.
    pub metadata: Option<RawJson>,
    /// Namespace the target function resolves in.
    pub namespace: Option<String>,
    /// Namespace of the provider.
    pub trigger_namespace: Option<String>,
    /// Fields this codec does not know, kept verbatim.
    pub extra: Extra,
}

impl RegisterTrigger {
    /// The configuration, with an absent `config` read as `null`.
    pub fn config_or_null(&self) -> &RawValue {
        or_null(&self.config)
    }
}

/// `unregistertrigger`.
#[derive(Debug, Clone, Default)]
pub struct UnregisterTrigger {
    /// Binding id.
    pub id: String,
    /// Trigger type (always sent by the engine to providers; optional from workers).
    pub trigger_type: Option<String>,
    /// Fields this codec does not know, kept verbatim.
    pub extra: Extra,
}

/// `triggerregistrationresult`: a provider's answer, or the engine's failure report.
#[derive(Debug, Clone, Default)]
pub struct TriggerRegistrationResult {
    /// Binding id.
    pub id: String,
    /// Trigger type.
    pub trigger_type: String,
    /// Function of the binding.
    pub function_id: String,
    /// Set when the registration failed.
    pub error: Option<ErrorBody>,
    /// Fields this codec does not know, kept verbatim.
    pub extra: Extra,
}

/// `registerservice`: grouping metadata.
#[derive(Debug, Clone, Default)]
pub struct RegisterService {
    /// Service id.
    pub id: String,
    /// Display name (defaults to the id).
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Parent service.
    pub parent_service_id: Option<String>,
    /// Fields this codec does not know, kept verbatim.
    pub extra: Extra,
}

/// `reattach`: the first frame after a reconnect, retiring the previous connection.
#[derive(Debug, Clone, Default)]
pub struct Reattach {
    /// The worker id of the previous connection.
    pub previous_worker_id: String,
    /// The secret token the engine gave that connection.
    pub reattach_token: String,
    /// Fields this codec does not know, kept verbatim.
    pub extra: Extra,
}

/// `workerregistered` (engine → worker): the identity assigned on accept.
#[derive(Debug, Clone, Default)]
pub struct WorkerRegistered {
    /// The connection's worker id.
    pub worker_id: String,
    /// Secret for a later `reattach`.
    pub reattach_token: Option<String>,
    /// Fields this codec does not know, kept verbatim.
    pub extra: Extra,
}

/// `registrationrejected` (engine → worker).
#[derive(Debug, Clone, Default)]
pub struct RegistrationRejected {
    /// `FUNCTION_NAMESPACE_CONFLICT` or `WORKER_NAMESPACE_CONFLICT`.
    pub code: String,
    /// Namespace of the conflict.
    pub namespace: String,
    /// Worker name, for worker conflicts.
    pub worker_name: Option<String>,
    /// Function id, for function conflicts.
    pub function_id: Option<String>,
    /// The live owner (may be empty).
    pub owner_worker_id: String,
    /// Fields this codec does not know, kept verbatim.
    pub extra: Extra,
}

/// `ping` / `pong` JSON keepalives, and the auth `error` frame.
#[derive(Debug, Clone, Default)]
pub struct Keepalive {
    /// Fields this codec does not know, kept verbatim.
    pub extra: Extra,
}

/// `error` (engine → worker): sent on authentication failure, followed by a close.
#[derive(Debug, Clone)]
pub struct ErrorFrame {
    /// The error.
    pub error: ErrorBody,
    /// Fields this codec does not know, kept verbatim.
    pub extra: Extra,
}

/// A frame whose `type` this codec does not know. It holds the whole frame so it can be logged
/// or forwarded unchanged.
#[derive(Debug, Clone)]
pub struct UnknownMessage {
    /// The frame's `type`.
    pub kind: String,
    /// The whole frame.
    pub raw: RawJson,
}

/// One protocol message.
#[derive(Debug, Clone)]
pub enum Message {
    /// `registerfunction`
    RegisterFunction(RegisterFunction),
    /// `unregisterfunction`
    UnregisterFunction(UnregisterFunction),
    /// `invokefunction`
    InvokeFunction(InvokeFunction),
    /// `invocationresult`
    InvocationResult(InvocationResult),
    /// `registertriggertype`
    RegisterTriggerType(RegisterTriggerType),
    /// `unregistertriggertype`
    UnregisterTriggerType(UnregisterTriggerType),
    /// `registertrigger`
    RegisterTrigger(RegisterTrigger),
    /// `unregistertrigger`
    UnregisterTrigger(UnregisterTrigger),
    /// `triggerregistrationresult`
    TriggerRegistrationResult(TriggerRegistrationResult),
    /// `registerservice`
    RegisterService(RegisterService),
    /// `reattach`
    Reattach(Reattach),
    /// `workerregistered`
    WorkerRegistered(WorkerRegistered),
    /// `registrationrejected`
    RegistrationRejected(RegistrationRejected),
    /// `ping`
    Ping(Keepalive),
    /// `pong`
    Pong(Keepalive),
    /// `error`
    Error(ErrorFrame),
    /// Any other `type`.
    Unknown(UnknownMessage),
}

impl Message {
    /// The wire `type` of this message.
    pub fn kind(&self) -> &str {
        match self {
            Message::RegisterFunction(_) => "registerfunction",
            Message::UnregisterFunction(_) => "unregisterfunction",
            Message::InvokeFunction(_) => "invokefunction",
            Message::InvocationResult(_) => "invocationresult",
            Message::RegisterTriggerType(_) => "registertriggertype",
            Message::UnregisterTriggerType(_) => "unregistertriggertype",
            Message::RegisterTrigger(_) => "registertrigger",
            Message::UnregisterTrigger(_) => "unregistertrigger",
            Message::TriggerRegistrationResult(_) => "triggerregistrationresult",
            Message::RegisterService(_) => "registerservice",
            Message::Reattach(_) => "reattach",
            Message::WorkerRegistered(_) => "workerregistered",
            Message::RegistrationRejected(_) => "registrationrejected",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
            Message::Error(_) => "error",
            Message::Unknown(u) => &u.kind,
        }
    }

    /// Whether this is a message type the codec knows.
    pub fn is_known(&self) -> bool {
        !matches!(self, Message::Unknown(_))
    }

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

// ---------------------------------------------------------------------------------------------
// Telemetry frames
// ---------------------------------------------------------------------------------------------

/// What a binary frame prefixed with `OTLP`, `MTRC` or `LOGS` carries (PROTOCOL.md 1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelemetryKind {
    /// `OTLP`: spans.
    Spans,
    /// `MTRC`: metrics.
    Metrics,
    /// `LOGS`: logs.
    Logs,
}

/// Classifies a binary frame: `Some((kind, body))` for OTLP-JSON telemetry, `None` for a binary
/// frame that carries a protocol message.
pub fn telemetry_frame(frame: &[u8]) -> Option<(TelemetryKind, &[u8])> {
    let (prefix, body) = frame.split_at_checked(4)?;
    let kind = match prefix {
        b"OTLP" => TelemetryKind::Spans,
        b"MTRC" => TelemetryKind::Metrics,
        b"LOGS" => TelemetryKind::Logs,
        _ => return None,
    };
    Some((kind, body))
}

/// Whether a frame is empty or only whitespace (such frames are skipped, not decoded).
pub fn is_blank(frame: &[u8]) -> bool {
    frame.iter().all(u8::is_ascii_whitespace)
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Decodes one frame.
///
/// Returns [`Message::Unknown`] for a well-formed object whose `type` is not known, and
/// [`Error::MalformedFrame`] for anything else that cannot be read.
pub fn decode(frame: &[u8]) -> Result<Message> {
    let mut de = serde_json::Deserializer::from_slice(frame);
    let fields = match Fields::deserialize(&mut de).and_then(|f| de.end().map(|()| f)) {
        Ok(fields) => fields,
        Err(err) => return decode_failed(frame, err),
    };
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
        if !is_known_kind(&kind) {
            return unknown(kind, frame);
        }
    }
    Err(Error::MalformedFrame(err.to_string()))
}

fn is_known_kind(kind: &str) -> bool {
    matches!(
        kind,
        "registerfunction"
            | "unregisterfunction"
            | "invokefunction"
            | "invocationresult"
            | "registertriggertype"
            | "unregistertriggertype"
            | "registertrigger"
            | "unregistertrigger"
            | "triggerregistrationresult"
            | "registerservice"
            | "reattach"
            | "workerregistered"
            | "registrationrejected"
            | "ping"
            | "pong"
            | "error"
    )
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
    kind: Option<String>,
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

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Fields, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object with a string `type`")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Fields, A::Error> {
                let mut f = Fields::default();
                // A repeated key: the last value wins, as with Python's `json.loads`.
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Kind => f.kind = map.next_value_seed(OptString)?,
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
                        Key::Other(name) => {
                            let value: RawJson = map.next_value()?;
                            f.extra.retain(|(k, _)| *k != name);
                            f.extra.push((name, value));
                        }
                    }
                }
                Ok(f)
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
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

fn raw_of<T: Serialize>(value: &T) -> RawJson {
    serde_json::value::to_raw_value(value).expect("strings always serialize")
}

impl Fields {
    /// Moves every field the message type `kind` does not use into `extra`, so a re-encode
    /// writes the frame back whole. Only runs for odd frames: the SDKs send no such fields.
    fn spill_unused(&mut self, used: &[&str]) {
        macro_rules! spill {
            ($($field:ident),*) => {$(
                if !used.contains(&stringify!($field)) {
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
        let k = kind.as_str();
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
            _ => return unknown(kind, frame),
        };
        Ok(msg)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn roundtrip(frame: &str) -> (Message, Value) {
        let msg = decode(frame.as_bytes()).expect("decodes");
        let again: Value = serde_json::from_slice(&msg.encode()).unwrap();
        (msg, again)
    }

    #[test]
    fn invoke_keeps_payload_text_exactly() {
        let frame = r#"{"type":"invokefunction","invocation_id":"9b2f0c9e-2c55-4d53-9a57-0f1f0f6b8a11","function_id":"a::b","data":{"z": 1,  "a":[1.50,"é"]}}"#;
        let msg = decode(frame.as_bytes()).unwrap();
        let Message::InvokeFunction(m) = &msg else {
            panic!()
        };
        // Whitespace, key order and number spelling survive: the payload was never parsed into a tree.
        assert_eq!(m.data_or_null().get(), r#"{"z": 1,  "a":[1.50,"é"]}"#);
        assert!(msg
            .to_text()
            .contains(r#""data":{"z": 1,  "a":[1.50,"é"]}"#));
    }

    #[test]
    fn missing_data_reads_as_null_and_stays_absent() {
        let (msg, again) = roundtrip(r#"{"type":"invokefunction","function_id":"f"}"#);
        let Message::InvokeFunction(m) = msg else {
            panic!()
        };
        assert_eq!(m.data_or_null().get(), "null");
        assert!(again.get("data").is_none());
        let (msg, again) = roundtrip(r#"{"type":"invokefunction","function_id":"f","data":null}"#);
        let Message::InvokeFunction(m) = msg else {
            panic!()
        };
        assert_eq!(m.data.as_deref().map(RawValue::get), Some("null"));
        assert_eq!(again["data"], Value::Null);
    }

    #[test]
    fn missing_config_reads_as_null() {
        let Message::RegisterTrigger(t) = decode(
            br#"{"type":"registertrigger","id":"t1","trigger_type":"cron","function_id":"f"}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(t.config_or_null().get(), "null");
    }

    #[test]
    fn type_may_come_last() {
        let (msg, _) = roundtrip(r#"{"id":"x","type":"unregisterfunction"}"#);
        assert_eq!(msg.kind(), "unregisterfunction");
    }

    #[test]
    fn unknown_type_is_a_value_not_an_error() {
        let frame = br#" {"type":"observe","id":5,"weird":[1,2]} "#;
        let msg = decode(frame).unwrap();
        assert!(!msg.is_known());
        assert_eq!(msg.kind(), "observe");
        assert_eq!(msg.to_text(), r#"{"type":"observe","id":5,"weird":[1,2]}"#);
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let frame = r#"{"type":"invokefunction","function_id":"f","data":1,"caller":{"function_id":"g"},"observe_depth":2}"#;
        let (_, again) = roundtrip(frame);
        assert_eq!(again, serde_json::from_str::<Value>(frame).unwrap());
    }

    #[test]
    fn fields_of_other_messages_are_kept_too() {
        let frame = r#"{"type":"unregisterfunction","id":"f","data":{"x":1},"description":"d"}"#;
        let (_, again) = roundtrip(frame);
        assert_eq!(again, serde_json::from_str::<Value>(frame).unwrap());
    }

    #[test]
    fn malformed_frames_are_errors() {
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            b"{}",
            b"{\"type\":5}",
            b"{\"type\":\"invokefunction\"}",
            b"{\"type\":\"invokefunction\",\"function_id\":7}",
            b"{\"type\":\"invokefunction\",\"function_id\":\"f\",\"action\":{\"type\":\"teleport\"}}",
            b"{\"type\":\"invocationresult\",\"function_id\":\"f\"}",
            b"{\"type\":\"reattach\",\"previous_worker_id\":\"a\"}",
            b"{\"type\":\"ping\"} trailing",
            b"\xff\xfe",
            b"",
        ] {
            match decode(bad) {
                Err(Error::MalformedFrame(msg)) => assert!(!msg.is_empty()),
                other => panic!("{:?} decoded to {other:?}", String::from_utf8_lossy(bad)),
            }
        }
    }

    #[test]
    fn deep_nesting_never_overflows_the_stack() {
        // Payloads are skipped, not parsed, so even absurd nesting is carried as raw text
        // without recursion; the typed fields still refuse it (serde_json's recursion limit).
        let depth = 100_000;
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let frame = format!(r#"{{"type":"invokefunction","function_id":"f","data":{nested}}}"#);
        let Message::InvokeFunction(m) = decode(frame.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(m.data_or_null().get().len(), 2 * depth);
        let frame = format!(r#"{{"type":"invokefunction","function_id":"f","action":{nested}}}"#);
        assert!(matches!(
            decode(frame.as_bytes()),
            Err(Error::MalformedFrame(_))
        ));
        let frame = format!(r#"{{"type":"mystery","x":{nested}}}"#);
        assert_eq!(decode(frame.as_bytes()).unwrap().kind(), "mystery");
    }

    #[test]
    fn size_limit() {
        let frame = br#"{"type":"ping"}"#;
        assert!(decode_limited(frame, frame.len()).is_ok());
        assert_eq!(
            decode_limited(frame, 4).unwrap_err(),
            Error::FrameTooLarge {
                size: frame.len(),
                limit: 4
            }
        );
    }

    #[test]
    fn encoding_is_raw_utf8_and_omits_absent_fields() {
        let msg = Message::InvocationResult(InvocationResult {
            invocation_id: "i".into(),
            function_id: "größe::計算".into(),
            error: Some(ErrorBody::new("invocation_failed", "échec 💥")),
            ..Default::default()
        });
        assert_eq!(
            msg.to_text(),
            r#"{"type":"invocationresult","invocation_id":"i","function_id":"größe::計算","error":{"code":"invocation_failed","message":"échec 💥"}}"#
        );
    }

    #[test]
    fn null_optional_strings_read_as_absent() {
        let (msg, again) = roundtrip(
            r#"{"type":"invokefunction","invocation_id":null,"function_id":"f","traceparent":null}"#,
        );
        let Message::InvokeFunction(m) = msg else {
            panic!()
        };
        assert!(m.invocation_id.is_none() && m.traceparent.is_none());
        assert!(again.get("invocation_id").is_none());
    }

    #[test]
    fn lenient_error_bodies() {
        let Message::InvocationResult(r) = decode(
            br#"{"type":"invocationresult","invocation_id":"i","function_id":"f","error":"boom"}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(r.error, Some(ErrorBody::new("UNKNOWN", "boom")));
        let Message::InvocationResult(r) =
            decode(br#"{"type":"invocationresult","invocation_id":"i","function_id":"f","error":null,"result":3}"#)
                .unwrap()
        else {
            panic!()
        };
        assert!(r.error.is_none());
        assert_eq!(r.result.as_deref().map(RawValue::get), Some("3"));
    }

    #[test]
    fn actions_and_http_refs() {
        let Message::InvokeFunction(m) = decode(
            br#"{"type":"invokefunction","function_id":"f","data":{},"action":{"type":"enqueue","queue":"payments"}}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            m.action,
            Some(TriggerAction::Enqueue {
                queue: "payments".into()
            })
        );
        let Message::RegisterFunction(r) = decode(
            br#"{"type":"registerfunction","id":"x","invocation":{"url":"https://e.x/a","method":"PUT","auth":{"type":"api_key","header":"X-K","value_key":"K"}}}"#,
        )
        .unwrap() else {
            panic!()
        };
        let inv = r.invocation.unwrap();
        assert_eq!(inv.method, Some(HttpMethod::Put));
        assert_eq!(
            inv.auth,
            Some(HttpAuth::ApiKey {
                header: "X-K".into(),
                value_key: "K".into()
            })
        );
    }

    #[test]
    fn telemetry_prefixes() {
        assert_eq!(
            telemetry_frame(b"OTLP{}"),
            Some((TelemetryKind::Spans, &b"{}"[..]))
        );
        assert_eq!(
            telemetry_frame(b"MTRC"),
            Some((TelemetryKind::Metrics, &b""[..]))
        );
        assert_eq!(
            telemetry_frame(b"LOGSx"),
            Some((TelemetryKind::Logs, &b"x"[..]))
        );
        assert_eq!(telemetry_frame(b"{\"type\":\"ping\"}"), None);
        assert_eq!(telemetry_frame(b"OTL"), None);
        assert!(is_blank(b" \n\t") && is_blank(b"") && !is_blank(b" {} "));
    }

    #[test]
    fn repeated_keys_last_wins() {
        let Message::UnregisterFunction(m) =
            decode(br#"{"type":"unregisterfunction","id":"a","id":"b"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(m.id, "b");
    }
}
