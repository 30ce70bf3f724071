//! Every error code fnmesh puts on the wire, in one table.
//!
//! A code travels as the `code` string of an [`ErrorBody`](crate::protocol::ErrorBody) (an
//! `invocationresult` or `triggerregistrationresult` error), of a `registrationrejected`, or of
//! the `{"error":{"code",...}}` envelope of an HTTP trigger's response. [`ErrorCode::as_str`] is
//! that string, byte for byte as iii and the iii SDKs spell it: the spellings are not uniform
//! (`function_not_found` next to `INVALID_ARGUMENTS`) because workers compare them as they are.
//!
//! Two timeout codes exist on purpose: [`ErrorCode::InvocationTimeout`] is sent by the engine
//! when its own bound on a pending call expires (a fnmesh extension: iii keeps a call pending
//! until its worker answers or leaves), while [`ErrorCode::Timeout`] never leaves a process: it is
//! what a worker client reports for its own call timeout, as the iii SDKs do. Likewise
//! [`ErrorCode::InvalidArguments`] is the engine's and the introspection built-ins' spelling and
//! [`ErrorCode::InvalidArgument`] the queue built-ins'.
//!
//! It lives beside [`crate::Error`] (whose variants each map to one code) and is re-exported as
//! `protocol::codes`, so that neither module imports the other in a circle.
//!
//! The Python binding exports [`ErrorCode::ALL`] (`fnmesh._native.ERROR_CODES`), from which
//! `fnmesh.errors` builds its code-to-exception map. A code added here needs no change there
//! unless it deserves its own exception class.
//!
//! ```
//! use fnmesh_core::protocol::ErrorCode;
//! // The same table: fnmesh_core::protocol::codes is fnmesh_core::error::codes.
//!
//! assert_eq!(ErrorCode::InvocationStopped.as_str(), "invocation_stopped");
//! assert_eq!("TIMEOUT".parse::<ErrorCode>(), Ok(ErrorCode::Timeout));
//! assert!(String::from("function_not_found") == ErrorCode::FunctionNotFound);
//! ```

use std::fmt;
use std::str::FromStr;

/// Declares [`ErrorCode`] from one list: variant, doc, wire string. `as_str`, `ALL` and parsing
/// are generated from the same list, so they cannot disagree.
macro_rules! error_codes {
    ($( $(#[doc = $doc:literal])+ $variant:ident = $wire:literal, )+) => {
        /// One wire error code. See the [module documentation](self) for where codes travel.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[doc = $doc])+ #[doc = ""] #[doc = concat!("Wire string: `", $wire, "`.")] $variant, )+
        }

        impl ErrorCode {
            /// Every code, in the order of the table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// The code as it travels on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $wire,)+
                }
            }

            /// The code whose wire string is `code`, if it is one of the table's.
            pub fn from_wire(code: &str) -> Option<ErrorCode> {
                match code {
                    $($wire => Some(ErrorCode::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    // ---- calls (invocation path), sent by the engine ----

    /// No function with that id is registered in the requested namespace (the engine, for a call,
    /// a trigger or an HTTP route); also a worker client's answer to an invocation of an id it
    /// does not serve.
    FunctionNotFound = "function_not_found",
    /// The connection serving (or making) a call closed while the call was pending, or the engine
    /// stopped before the call was answered; a worker client fails the calls it had sent on a
    /// connection it lost with this code too.
    InvocationStopped = "invocation_stopped",
    /// The engine's own bound on a pending call expired (engine setting `invocation_timeout`, or
    /// the call's timeout). Sent by the engine; a fnmesh extension, as iii does not bound calls.
    InvocationTimeout = "invocation_timeout",
    /// A call ended without an answer: the handler dropped its reply, or the engine dropped the
    /// call internally.
    InvocationError = "invocation_error",
    /// An engine-side function (a built-in, the HTTP trigger building a request's input) could
    /// not serialize a value.
    SerializationError = "serialization_error",
    /// A built-in's input did not have the expected shape; also the code of a malformed frame
    /// ([`crate::Error::MalformedFrame`]).
    DeserializationError = "deserialization_error",
    /// An argument that can never be valid: an empty function id, an `invocation_id` already in
    /// flight, a bad introspection query ([`crate::Error::InvalidArgument`]).
    InvalidArguments = "INVALID_ARGUMENTS",
    /// An introspection built-in found nothing; also the code of an HTTP trigger's 404 (no route,
    /// or the route's function is gone).
    NotFound = "NOT_FOUND",
    /// An enqueue (a call with `action: enqueue`, or a publish) was refused: queues turned off,
    /// no such queue, the store failed.
    EnqueueError = "enqueue_error",
    /// The calling connection already has `max_calls_in_flight_per_connection` calls in flight
    /// (made by it, not answered yet): the call fails at once.
    TooManyCallsInFlight = "too_many_calls_in_flight",
    /// The calling connection's listener does not let it call this function (its access
    /// control, docs/access-control.md): not exposed, not granted, or forbidden. iii's spelling,
    /// which the iii SDKs map to their typed `FORBIDDEN` error.
    Forbidden = "FORBIDDEN",
    /// A frame exceeds the configured size limit ([`crate::Error::FrameTooLarge`]); the engine
    /// closes such a connection with WebSocket code 1009.
    FrameTooLarge = "frame_too_large",
    /// An `error` value that is not an object with a string `code` (read leniently, as the SDKs
    /// do), so no code was given.
    Unknown = "UNKNOWN",

    // ---- registrations ----

    /// `registrationrejected` (not fatal for the worker): another owner serves the function and
    /// the conflict policy is `reject` ([`crate::Error::FunctionConflict`]).
    FunctionNamespaceConflict = "FUNCTION_NAMESPACE_CONFLICT",
    /// `registrationrejected` (fatal for the worker): another live connection uses this worker
    /// name in this namespace ([`crate::Error::WorkerConflict`]).
    WorkerNamespaceConflict = "WORKER_NAMESPACE_CONFLICT",
    /// A namespace that is present but blank ([`crate::Error::InvalidNamespace`]).
    InvalidNamespace = "INVALID_NAMESPACE",
    /// A trigger binding was refused: unknown trigger type, a provider's refusal, an invalid
    /// config (a bad cron expression, for instance), or the binding was replaced meanwhile.
    TriggerRegistrationFailed = "trigger_registration_failed",
    /// A trigger or trigger type registration was refused by the connection's access control
    /// (its grants, or a registration hook that failed, timed out or answered garbage).
    RegistrationDenied = "REGISTRATION_DENIED",

    // ---- the worker client's local codes (never sent by the engine) ----

    /// The worker client's own call timeout expired (the iii SDKs' `TIMEOUT`, which workers
    /// expect). Compare [`ErrorCode::InvocationTimeout`], the engine's.
    Timeout = "TIMEOUT",
    /// A call on a worker client that was shut down.
    Shutdown = "SHUTDOWN",
    /// The worker client's first connection could not be made in time.
    ConnectionFailed = "CONNECTION_FAILED",
    /// An engine listener could not bind its address (the port is taken); raised where the
    /// engine starts, never sent.
    AddressInUse = "ADDRESS_IN_USE",
    /// The worker client got an invocation of an external HTTP function it registered: the
    /// engine calls that function's URL, the worker never serves it.
    FunctionNotInvokable = "function_not_invokable",

    // ---- the queue built-ins ----

    /// A publish (durable `iii::durable::publish` or fire-and-forget `publish`) without a topic.
    TopicNotSet = "topic_not_set",
    /// A queue built-in was called without a required field (the queue built-ins' spelling;
    /// compare [`ErrorCode::InvalidArguments`]).
    InvalidArgument = "invalid_argument",
    /// No queue with that name.
    QueueNotFound = "queue_not_found",
    /// The queue store (SQLite, Redis) failed.
    QueueStoreError = "queue_store_error",
    /// The engine's SQLite queue file is held by another engine (a SQLite queue file serves one
    /// engine at a time; share queues between engines with the Redis backend).
    QueueStoreInUse = "queue_store_in_use",
    /// No message with that id in the dead-letter queue.
    MessageNotFound = "message_not_found",
    /// The error recorded on a message moved to the dead-letter queue because it was claimed
    /// more often than it may run, its earlier attempts never having finished.
    AttemptsExhausted = "attempts_exhausted",

    // ---- state ----

    /// The state store (SQLite file, Redis) failed.
    StateStoreError = "state_store_error",

    // ---- streams ----

    /// The stream store (SQLite file, Redis) failed, or a custom stream's function answered
    /// something that is not the shape `stream::*` promises.
    StreamStoreError = "stream_store_error",

    // ---- telemetry ----

    /// `engine::traces::list` or `engine::traces::tree` on an engine whose telemetry store keeps
    /// no spans (setting `telemetry_store_spans` 0); iii's code for its in-memory exporter off.
    MemoryExporterNotEnabled = "memory_exporter_not_enabled",

    // ---- the HTTP trigger's responses ----

    /// A middleware function answered with something that is neither `continue` nor `respond`
    /// (HTTP 500).
    InvalidMiddlewareResult = "invalid_middleware_result",
    /// The route's function answered with something that is not an HTTP response (HTTP 500).
    InvalidHttpResponse = "invalid_http_response",
    /// The route's condition function answered `false` (HTTP 422, with `"skipped": true`).
    ConditionNotMet = "CONDITION_NOT_MET",
    /// The request body exceeds the limit (HTTP 413).
    PayloadTooLarge = "PAYLOAD_TOO_LARGE",
    /// The request body could not be read (HTTP 400).
    BadRequest = "BAD_REQUEST",
    /// No byte of the request body arrived within `http_body_read_timeout_ms` (HTTP 408).
    RequestTimeout = "REQUEST_TIMEOUT",
    /// The engine is stopping (HTTP 503).
    Stopped = "STOPPED",
    /// The console's API refused a request: no token or a wrong one (HTTP 401), another
    /// site's page or a host name that is not loopback without a token (HTTP 403).
    Unauthorized = "UNAUTHORIZED",

    // ---- sent by the Python SDK through the binding ----

    /// A handler raised: the message and stack trace are the exception's (the iii SDKs' code
    /// too).
    InvocationFailed = "invocation_failed",
    /// A call's input or a handler's output did not match the function's schema.
    ValidationFailed = "validation_failed",
    /// An external HTTP function's URL was refused by the security policy.
    UrlValidationFailed = "url_validation_failed",
    /// An external HTTP function's auth names an environment variable that is unset or empty.
    MissingSecret = "missing_secret",
    /// An external HTTP function's auth names an environment variable the engine's operator
    /// did not list as a secret (setting `external_secret_env`).
    SecretNotAllowed = "secret_not_allowed",
    /// The request of an external HTTP function failed (DNS, connection, timeout).
    HttpRequestFailed = "http_request_failed",
    /// The response of an external HTTP function could not be read, or exceeds the size limit.
    HttpResponseFailed = "http_response_failed",
    /// An external HTTP function answered with an error status and no error code of its own.
    HttpError = "http_error",
    /// An external HTTP function answered with a body that is not JSON.
    InvalidResponse = "invalid_response",
    /// A worker registered an external HTTP function with an app that serves none.
    ExternalFunctionsDisabled = "external_functions_disabled",
}

impl ErrorCode {
    /// Whether `code` is this code's wire string.
    pub fn is(self, code: &str) -> bool {
        self.as_str() == code
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ErrorCode> for String {
    fn from(code: ErrorCode) -> String {
        code.as_str().to_owned()
    }
}

impl PartialEq<ErrorCode> for String {
    fn eq(&self, code: &ErrorCode) -> bool {
        code.is(self)
    }
}

impl PartialEq<ErrorCode> for str {
    fn eq(&self, code: &ErrorCode) -> bool {
        code.is(self)
    }
}

/// A string that is not one of the table's codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a fnmesh error code")]
pub struct UnknownErrorCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    fn from_str(code: &str) -> Result<ErrorCode, UnknownErrorCode> {
        ErrorCode::from_wire(code).ok_or_else(|| UnknownErrorCode(code.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_code_round_trips_and_is_unique() {
        let mut seen = HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} twice");
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
            assert_eq!(code.to_string(), code.as_str());
            assert_eq!(String::from(code), code.as_str());
        }
        assert_eq!(
            "no_such_code".parse::<ErrorCode>(),
            Err(UnknownErrorCode("no_such_code".to_owned()))
        );
    }

    #[test]
    fn spellings_workers_compare() {
        // The iii SDKs and fnmesh's own Python SDK compare these strings as they are.
        assert_eq!(ErrorCode::Timeout.as_str(), "TIMEOUT");
        assert_eq!(ErrorCode::InvocationTimeout.as_str(), "invocation_timeout");
        assert_eq!(
            ErrorCode::FunctionNamespaceConflict.as_str(),
            "FUNCTION_NAMESPACE_CONFLICT"
        );
        assert_eq!(ErrorCode::InvalidArguments.as_str(), "INVALID_ARGUMENTS");
        assert_eq!(ErrorCode::InvalidArgument.as_str(), "invalid_argument");
        assert!(*"invocation_stopped" == ErrorCode::InvocationStopped);
    }
}
