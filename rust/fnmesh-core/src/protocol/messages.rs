//! One struct per message type of docs/protocol.md section 2, and the [`Message`] enum over them.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::raw::{or_null, Extra, RawJson};
use crate::error::ErrorCode;

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
    pub(super) fn from_raw(raw: &RawValue) -> ErrorBody {
        #[derive(Deserialize)]
        struct Loose {
            code: Option<String>,
            message: Option<String>,
            stacktrace: Option<String>,
        }
        match serde_json::from_str::<Loose>(raw.get()) {
            Ok(l) => ErrorBody {
                code: l.code.unwrap_or_else(|| ErrorCode::Unknown.into()),
                message: l.message.unwrap_or_default(),
                stacktrace: l.stacktrace,
            },
            Err(_) => {
                let message = serde_json::from_str::<String>(raw.get())
                    .unwrap_or_else(|_| raw.get().to_owned());
                ErrorBody::new(ErrorCode::Unknown, message)
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// fnmesh extension: the retry policy, passed to the host as given, byte for byte (iii has
    /// no retries; its workers never send it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RawJson>,
}

impl PartialEq for HttpInvocationRef {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
            && self.method == other.method
            && self.timeout_ms == other.timeout_ms
            && self.headers == other.headers
            && self.auth == other.auth
            && self.retry.as_ref().map(|r| r.get()) == other.retry.as_ref().map(|r| r.get())
    }
}

impl Eq for HttpInvocationRef {}

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
}
