//! One way to reach functions, whether this process runs the engine or is a worker of one.
//!
//! [`Link`] answers calls, sends, enqueues, publishes and the registrations a program makes
//! (functions, trigger bindings) through the engine's handle ([`EngineRef`]) or through the worker
//! client ([`Client`]) alike, so code above it (the Python SDK's `App`) holds one link and never
//! asks which. Every answer of a call-like operation is an [`Outcome`]; every local refusal is a
//! [`LinkError`].
//!
//! This module depends on `engine` and `client`, never the reverse.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

use crate::client::{Client, ClientError};
use crate::engine::EngineRef;
use crate::function::{Call, CallOptions, NativeFunction, Outcome};
use crate::protocol::{ErrorCode, RawJson};
use crate::registry::FunctionDef;
use crate::triggers::TriggerSpec;

/// The engine's function behind [`Link::enqueue`] (docs/protocol.md, queues).
pub const ENQUEUE_FUNCTION: &str = "engine::queue::enqueue";
/// The function behind [`Link::publish`] (iii's durable publish).
pub const PUBLISH_FUNCTION: &str = "iii::durable::publish";
/// What a client calls to learn that the engine handled the bindings it sent before.
const ROUND_TRIP_FUNCTION: &str = "engine::functions::list";

/// The answer of a call-like operation, awaited on the link's tokio runtime.
pub type Pending = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

/// Why a link refused an operation before anything reached a function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// An argument that can never be valid, or a registration the engine refuses.
    #[error(transparent)]
    Invalid(#[from] crate::Error),
    /// The link is closed: the client shut down (or lost its connection for good).
    #[error("{0}")]
    Closed(String),
    /// The engine refused this worker for good ([`ClientError::Rejected`]).
    #[error("{0}")]
    Rejected(String),
}

impl From<ClientError> for LinkError {
    fn from(err: ClientError) -> Self {
        match err {
            ClientError::Core(e) => LinkError::Invalid(e),
            ClientError::Rejected { .. } => LinkError::Rejected(err.to_string()),
            other => LinkError::Closed(other.to_string()),
        }
    }
}

/// A message for one of the engine's queues: the request of `engine::queue::enqueue`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Enqueue {
    /// The queue (`default` when empty).
    pub queue: String,
    /// The function the queue calls with `data`.
    pub function_id: String,
    /// The call's input.
    pub data: Option<RawJson>,
    /// Namespace `function_id` resolves in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// W3C trace context handed to the queued call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C baggage handed to the queued call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baggage: Option<String>,
    /// A second enqueue with this key within the queue's window stores nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Holds the message back this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

/// The way to the engine's functions: implemented by [`EngineRef`] (in its process) and by
/// [`Client`] (a worker connection).
///
/// `namespace` arguments (and [`CallOptions::namespace`], [`TriggerSpec::namespace`]) left
/// `None` mean the link's own: `default` on an engine; through a client, the worker's namespace
/// (and `default` for `engine::*` ids), as the iii SDKs do.
pub trait Link: Send + Sync + 'static {
    /// Calls any function and resolves to its outcome (failures included: a timeout, a stop,
    /// a missing function are [`Outcome::Failure`]s with their wire codes).
    fn call(&self, function_id: &str, data: RawJson, options: CallOptions) -> Pending;

    /// Invokes a function without waiting for (or receiving) its outcome.
    fn send(&self, function_id: &str, data: RawJson, options: CallOptions)
        -> Result<(), LinkError>;

    /// Puts a call on an engine queue; resolves to `{"messageReceiptId": ...}` once stored.
    fn enqueue(&self, message: Enqueue, options: CallOptions) -> Pending {
        match serde_json::value::to_raw_value(&message) {
            Ok(request) => self.call(ENQUEUE_FUNCTION, request, options),
            Err(e) => ready(Outcome::failure(ErrorCode::EnqueueError, e.to_string())),
        }
    }

    /// Publishes `data` to `topic`: every durable subscriber gets a queued copy; resolves to
    /// `{"messageReceiptIds": [...]}`.
    fn publish(&self, topic: &str, data: RawJson, options: CallOptions) -> Pending {
        let request = serde_json::json!({ "topic": topic, "data": data });
        match serde_json::value::to_raw_value(&request) {
            Ok(request) => self.call(PUBLISH_FUNCTION, request, options),
            Err(e) => ready(Outcome::failure(
                ErrorCode::SerializationError,
                e.to_string(),
            )),
        }
    }

    /// Serves `function` as `function_id` from this process from now on (a client replays it
    /// on every reconnect). A client serves in its worker's namespace only: `namespace` must
    /// be `None` there.
    fn register_function(
        &self,
        namespace: Option<&str>,
        function_id: &str,
        def: FunctionDef,
        function: Arc<dyn NativeFunction>,
    ) -> Result<(), LinkError>;

    /// Stops serving a function registered through this link; false when it was not.
    fn unregister_function(
        &self,
        namespace: Option<&str>,
        function_id: &str,
    ) -> Result<bool, LinkError>;

    /// Binds a function to a trigger type; resolves to `{"id": binding_id}` once the provider
    /// accepted, or to its refusal (`trigger_registration_failed`).
    fn register_trigger(&self, spec: TriggerSpec) -> Pending;

    /// Removes a binding made through this link; false when there was none.
    fn unregister_trigger(&self, id: &str) -> bool;
}

fn ready(outcome: Outcome) -> Pending {
    Box::pin(std::future::ready(outcome))
}

/// A registered `Arc<dyn NativeFunction>` as the `impl NativeFunction` the engine and the
/// client take.
struct Shared(Arc<dyn NativeFunction>);

impl NativeFunction for Shared {
    fn invoke(&self, call: Call) {
        self.0.invoke(call)
    }

    fn abandon(&self, invocation_id: &str) {
        self.0.abandon(invocation_id)
    }
}

const DEFAULT_NAMESPACE: &str = "default";

impl Link for EngineRef {
    fn call(&self, function_id: &str, data: RawJson, options: CallOptions) -> Pending {
        let engine = self.clone();
        let function_id = function_id.to_owned();
        Box::pin(async move { engine.call_with(&function_id, data, options).await })
    }

    fn send(
        &self,
        function_id: &str,
        data: RawJson,
        options: CallOptions,
    ) -> Result<(), LinkError> {
        self.send_with(function_id, data, options);
        Ok(())
    }

    fn register_function(
        &self,
        namespace: Option<&str>,
        function_id: &str,
        def: FunctionDef,
        function: Arc<dyn NativeFunction>,
    ) -> Result<(), LinkError> {
        let namespace = namespace.unwrap_or(DEFAULT_NAMESPACE);
        EngineRef::register_function(self, namespace, function_id, def, Shared(function))?;
        Ok(())
    }

    fn unregister_function(
        &self,
        namespace: Option<&str>,
        function_id: &str,
    ) -> Result<bool, LinkError> {
        let namespace = namespace.unwrap_or(DEFAULT_NAMESPACE);
        Ok(EngineRef::unregister_function(
            self,
            namespace,
            function_id,
        )?)
    }

    fn register_trigger(&self, spec: TriggerSpec) -> Pending {
        let engine = self.clone();
        Box::pin(async move {
            match EngineRef::register_trigger(&engine, spec).await {
                Ok(id) => Outcome::json(&serde_json::json!({ "id": id })),
                Err(refusal) => Outcome::Failure(refusal),
            }
        })
    }

    fn unregister_trigger(&self, id: &str) -> bool {
        EngineRef::unregister_trigger(self, id)
    }
}

fn own_namespace(namespace: Option<&str>) -> Result<(), LinkError> {
    match namespace {
        None => Ok(()),
        Some(other) => Err(LinkError::Invalid(crate::Error::InvalidArgument(format!(
            "a worker client serves in its own namespace, not {other:?}"
        )))),
    }
}

impl Link for Client {
    fn call(&self, function_id: &str, data: RawJson, options: CallOptions) -> Pending {
        let client = self.clone();
        let function_id = function_id.to_owned();
        Box::pin(async move {
            match Client::call(&client, &function_id, data, options).await {
                Ok(result) => Outcome::Success(result),
                Err(e) => Outcome::Failure(e.to_error_body()),
            }
        })
    }

    fn send(
        &self,
        function_id: &str,
        data: RawJson,
        options: CallOptions,
    ) -> Result<(), LinkError> {
        Ok(self.send_with(function_id, data, options)?)
    }

    fn register_function(
        &self,
        namespace: Option<&str>,
        function_id: &str,
        def: FunctionDef,
        function: Arc<dyn NativeFunction>,
    ) -> Result<(), LinkError> {
        own_namespace(namespace)?;
        Ok(Client::register_function(
            self,
            function_id,
            def,
            Shared(function),
        )?)
    }

    fn unregister_function(
        &self,
        namespace: Option<&str>,
        function_id: &str,
    ) -> Result<bool, LinkError> {
        own_namespace(namespace)?;
        Ok(Client::unregister_function(self, function_id))
    }

    /// The binding is sent at once (and replayed on every reconnect); its verdict comes from a
    /// round trip: the engine answers a call after handling the frames sent before it, and its
    /// own providers (http, cron) refuse synchronously, so a refusal is in by then.
    fn register_trigger(&self, spec: TriggerSpec) -> Pending {
        let id = Client::register_trigger(self, spec);
        let client = self.clone();
        Box::pin(async move {
            let empty = serde_json::value::to_raw_value(&serde_json::json!({}));
            let Ok(empty) = empty else {
                return Outcome::failure(ErrorCode::SerializationError, "cannot encode {}");
            };
            if let Err(e) =
                Client::call(&client, ROUND_TRIP_FUNCTION, empty, CallOptions::default()).await
            {
                return Outcome::Failure(e.to_error_body());
            }
            match client
                .trigger_errors()
                .into_iter()
                .find(|(bound, _)| *bound == id)
            {
                Some((_, refusal)) => Outcome::Failure(refusal),
                None => Outcome::json(&serde_json::json!({ "id": id })),
            }
        })
    }

    fn unregister_trigger(&self, id: &str) -> bool {
        Client::unregister_trigger(self, id)
    }
}
