//! [`Client`]: the handle a program holds on a worker connected to an engine.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use super::builder::ClientBuilder;
use super::error::ClientError;
use super::inner::{FunctionEntry, Inner, PendingCall};
use super::{duration_ms, lock, CallOptions};
use crate::function::{Call, NativeFunction, Outcome};
use crate::protocol::{
    ErrorBody, ErrorCode, HttpInvocationRef, InvokeFunction, Message, RawJson, RegisterTrigger,
    TriggerAction, UnregisterFunction, UnregisterTrigger,
};
use crate::registry::FunctionDef;
use crate::triggers::TriggerSpec;

/// Connection state of a [`Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// The first connection is being made.
    Connecting,
    /// The socket is open and the registrations were sent.
    Connected,
    /// The connection was lost; retrying with backoff.
    Reconnecting,
    /// Shut down, or rejected by the engine; no more retries.
    Closed,
}

/// A worker connected (or reconnecting) to an engine. Cheap to clone; dropping the last clone
/// stops it like [`Client::shutdown`] (without waiting).
#[derive(Clone)]
pub struct Client {
    pub(super) inner: Arc<Inner>,
    pub(super) guard: Arc<StopOnDrop>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.settings.url)
            .field("state", &self.state())
            .field("worker_id", &self.worker_id())
            .finish()
    }
}

impl Client {
    /// A builder for a worker of the engine at `url` (`ws://host:port`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// Calls `function_id` and waits for its answer: `Ok(None)` is a success without a result.
    pub async fn call(
        &self,
        function_id: &str,
        data: RawJson,
        options: CallOptions,
    ) -> Result<Option<RawJson>, ClientError> {
        if self.state() == ClientState::Closed {
            return Err(self.inner.closed_error());
        }
        let timeout = options.timeout.unwrap_or(self.inner.settings.call_timeout);
        let invocation_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        let message = Message::InvokeFunction(InvokeFunction {
            invocation_id: Some(invocation_id.clone()),
            function_id: function_id.to_owned(),
            data: Some(data),
            traceparent: options.traceparent,
            baggage: options.baggage,
            action: None,
            metadata: options.metadata,
            namespace: self.inner.call_namespace(function_id, options.namespace),
            ..InvokeFunction::default()
        });
        {
            // Parked and sent under the link lock, so a connection loss either sees the call
            // (and stops it) or the call lands in the offline queue for the next connection.
            let mut link = lock(&self.inner.link);
            let pending = PendingCall {
                tx,
                timeout_ms: duration_ms(timeout),
            };
            if self
                .inner
                .pending
                .insert(invocation_id.as_str(), pending, timeout)
                .is_err()
            {
                // A fresh v4 UUID colliding with a pending one: practically impossible.
                return Err(crate::Error::InvalidArgument(format!(
                    "invocation id {invocation_id} is already pending"
                ))
                .into());
            }
            self.inner.send_locked(&mut link, message.to_text(), true);
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Shutdown),
        }
    }

    /// Fire-and-forget call (`action: void`, docs/protocol.md 4.3): nothing comes back. Queued
    /// while offline.
    pub fn send(&self, function_id: &str, data: RawJson) -> Result<(), ClientError> {
        self.send_with_metadata(function_id, data, None)
    }

    /// [`Client::send`] with a metadata sidecar for the handler.
    pub fn send_with_metadata(
        &self,
        function_id: &str,
        data: RawJson,
        metadata: Option<RawJson>,
    ) -> Result<(), ClientError> {
        let options = CallOptions {
            metadata,
            ..CallOptions::default()
        };
        self.send_with(function_id, data, options)
    }

    /// [`Client::send`] with a metadata sidecar, a namespace and trace context (the timeout
    /// does not apply: nothing comes back).
    pub fn send_with(
        &self,
        function_id: &str,
        data: RawJson,
        options: CallOptions,
    ) -> Result<(), ClientError> {
        if self.state() == ClientState::Closed {
            return Err(self.inner.closed_error());
        }
        let message = Message::InvokeFunction(InvokeFunction {
            invocation_id: None,
            function_id: function_id.to_owned(),
            data: Some(data),
            traceparent: options.traceparent,
            baggage: options.baggage,
            action: Some(TriggerAction::Void),
            metadata: options.metadata,
            namespace: self.inner.call_namespace(function_id, options.namespace),
            ..InvokeFunction::default()
        });
        let mut link = lock(&self.inner.link);
        self.inner.send_locked(&mut link, message.to_text(), true);
        Ok(())
    }

    /// Serves a function from now on; it is replayed on every reconnect. Registering an id
    /// again replaces its handler and description.
    pub fn register_function(
        &self,
        function_id: &str,
        def: FunctionDef,
        handler: impl NativeFunction,
    ) -> Result<(), ClientError> {
        self.add_function(
            function_id,
            FunctionEntry::new(function_id, &def, Arc::new(handler), None)?,
        );
        Ok(())
    }

    /// Registers an external HTTP function (docs/protocol.md section 5): the engine calls
    /// `invocation`'s URL for every call of `function_id`, with secrets from its own
    /// environment. Replayed on every reconnect like any function, and gone when this client
    /// disconnects. This client never serves it: an invocation forwarded here anyway answers
    /// `function_not_invokable`. An engine that refuses the URL only logs it (iii sends
    /// nothing back).
    pub fn register_external(
        &self,
        function_id: &str,
        def: FunctionDef,
        invocation: HttpInvocationRef,
    ) -> Result<(), ClientError> {
        let id = function_id.to_owned();
        let not_here = move |call: Call| {
            call.reply.send(Outcome::failure(
                ErrorCode::FunctionNotInvokable,
                format!("{id} is an external HTTP function; the engine calls its URL"),
            ))
        };
        self.add_function(
            function_id,
            FunctionEntry::new(function_id, &def, Arc::new(not_here), Some(invocation))?,
        );
        Ok(())
    }

    fn add_function(&self, function_id: &str, entry: FunctionEntry) {
        let frame = entry.frame.clone();
        let mut link = lock(&self.inner.link);
        link.functions.insert(function_id.to_owned(), entry);
        // While offline the replay on connect sends it; queueing it too would only repeat it.
        self.inner.send_locked(&mut link, frame, false);
    }

    /// Binds a function to a trigger type (`registertrigger`); the binding is replayed on
    /// every reconnect and dies with the connection on the engine's side. Returns the binding
    /// id (`spec.id` or a fresh one). A provider's refusal arrives later: see
    /// [`Client::trigger_errors`].
    pub fn register_trigger(&self, spec: TriggerSpec) -> String {
        let id = spec.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let frame = Message::RegisterTrigger(RegisterTrigger {
            id: id.clone(),
            trigger_type: spec.trigger_type.clone(),
            function_id: spec.function_id,
            config: Some(spec.config),
            metadata: spec.metadata,
            namespace: spec.namespace,
            trigger_namespace: spec.trigger_namespace,
            ..RegisterTrigger::default()
        })
        .to_text();
        self.inner.trigger_errors.remove(&id);
        let mut link = lock(&self.inner.link);
        link.triggers
            .insert(id.clone(), (spec.trigger_type, frame.clone()));
        self.inner.send_locked(&mut link, frame, false);
        id
    }

    /// Removes a binding made with [`Client::register_trigger`]; false when there was none.
    pub fn unregister_trigger(&self, id: &str) -> bool {
        let mut link = lock(&self.inner.link);
        let Some((trigger_type, _)) = link.triggers.remove(id) else {
            return false;
        };
        let frame = Message::UnregisterTrigger(UnregisterTrigger {
            id: id.to_owned(),
            trigger_type: Some(trigger_type),
            ..UnregisterTrigger::default()
        })
        .to_text();
        self.inner.send_locked(&mut link, frame, false);
        true
    }

    /// Bindings the engine or their provider refused (`triggerregistrationresult` with an
    /// error), by binding id, sorted.
    pub fn trigger_errors(&self) -> Vec<(String, ErrorBody)> {
        let mut errors: Vec<(String, ErrorBody)> = self
            .inner
            .trigger_errors
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        errors.sort_by(|a, b| a.0.cmp(&b.0));
        errors
    }

    /// Stops serving a function. Returns whether it was registered.
    pub fn unregister_function(&self, function_id: &str) -> bool {
        let mut link = lock(&self.inner.link);
        let removed = link.functions.remove(function_id).is_some();
        if removed {
            let frame = Message::UnregisterFunction(UnregisterFunction {
                id: function_id.to_owned(),
                ..UnregisterFunction::default()
            })
            .to_text();
            self.inner.send_locked(&mut link, frame, false);
        }
        removed
    }

    /// The ids of the functions this client serves.
    pub fn function_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.inner.link).functions.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The `worker_id` the engine assigned to the current (or last) connection, once its
    /// `workerregistered` arrived.
    pub fn worker_id(&self) -> Option<String> {
        lock(&self.inner.identity)
            .as_ref()
            .map(|(id, _)| id.clone())
    }

    /// The connection state now.
    pub fn state(&self) -> ClientState {
        *self.inner.state.borrow()
    }

    /// Waits until the state satisfies `accept`, for at most `timeout`. Returns the state
    /// reached, or `None` on timeout.
    pub async fn wait_for_state(
        &self,
        timeout: Duration,
        mut accept: impl FnMut(ClientState) -> bool,
    ) -> Option<ClientState> {
        let mut rx = self.inner.state.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|s| accept(*s))).await;
        match waited {
            Ok(Ok(state)) => Some(*state),
            _ => None,
        }
    }

    /// Number of outbound calls waiting for an answer.
    pub fn pending_count(&self) -> usize {
        self.inner.pending.len()
    }

    /// Closes the connection, stops reconnecting, fails every waiting call with
    /// [`ClientError::Shutdown`] and waits for the background task to finish.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let handle = lock(&self.guard.supervisor).take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        self.inner.finish_closed(ClientError::Shutdown);
    }
}

pub(super) struct StopOnDrop {
    pub(super) inner: Weak<Inner>,
    pub(super) supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.stop.send_replace(true);
        }
    }
}
