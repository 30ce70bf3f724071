//! The state a [`super::Client`] shares with its background tasks, and what the client does with
//! each frame from the engine.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use super::builder::Settings;
use super::error::ClientError;
use super::handle::ClientState;
use super::{lock, null_json, DEFAULT_NAMESPACE, MAX_QUEUED, WORKERS_REGISTER};
use crate::function::{Call, Completer, NativeFunction, Outcome, Reply};
use crate::invocation::PendingTable;
use crate::protocol::{
    self, ErrorBody, ErrorCode, HttpInvocationRef, InvocationResult, InvokeFunction, Message,
    RawJson, RegisterFunction, TriggerAction,
};
use crate::registry::FunctionDef;

pub(super) struct FunctionEntry {
    /// The encoded `registerfunction`, replayed verbatim on every connect.
    pub(super) frame: String,
    pub(super) handler: Arc<dyn NativeFunction>,
}

impl FunctionEntry {
    pub(super) fn new(
        function_id: &str,
        def: &FunctionDef,
        handler: Arc<dyn NativeFunction>,
        invocation: Option<HttpInvocationRef>,
    ) -> Result<FunctionEntry, ClientError> {
        if function_id.trim().is_empty() {
            return Err(
                crate::Error::InvalidArgument("function id must not be empty".into()).into(),
            );
        }
        let frame = Message::RegisterFunction(RegisterFunction {
            id: function_id.to_owned(),
            description: def.description.clone(),
            request_format: def.request_format.clone(),
            response_format: def.response_format.clone(),
            metadata: def.metadata.clone(),
            invocation,
            ..RegisterFunction::default()
        })
        .to_text();
        Ok(FunctionEntry { frame, handler })
    }
}

/// What sends go through: the live connection's outbox, or the offline queue.
pub(super) struct Link {
    pub(super) tx: Option<mpsc::UnboundedSender<String>>,
    pub(super) queued: VecDeque<String>,
    pub(super) functions: HashMap<String, FunctionEntry>,
    /// Bindings this client made: binding id -> (trigger type, `registertrigger` frame).
    pub(super) triggers: HashMap<String, (String, String)>,
}

pub(super) struct PendingCall {
    pub(super) tx: oneshot::Sender<Result<Option<RawJson>, ClientError>>,
    pub(super) timeout_ms: u64,
}

pub(super) struct Inner {
    pub(super) settings: Settings,
    // NOTE: one std mutex guards the outbox, the offline queue and the function table so that
    // a reconnect's replay is atomic with respect to sends; it is held only for a channel send.
    // Contention under load is not measured yet.
    pub(super) link: Mutex<Link>,
    pub(super) pending: PendingTable<PendingCall>,
    /// Invocations being executed here: invocation id -> function id (needed by the reply) and
    /// the handler running it (told when the connection is lost).
    pub(super) inbound: DashMap<Arc<str>, (String, Arc<dyn NativeFunction>)>,
    /// `(worker_id, reattach_token)` of the last `workerregistered`.
    pub(super) identity: Mutex<Option<(String, Option<String>)>>,
    pub(super) state: watch::Sender<ClientState>,
    pub(super) stop: watch::Sender<bool>,
    pub(super) last_error: Mutex<Option<String>>,
    /// Set when the engine rejected the worker for good.
    pub(super) rejected: AtomicBool,
    /// Refusals of this client's bindings, by binding id.
    pub(super) trigger_errors: DashMap<String, ErrorBody>,
}

impl Inner {
    pub(super) fn call_namespace(
        &self,
        function_id: &str,
        explicit: Option<String>,
    ) -> Option<String> {
        if explicit.is_some() {
            return explicit;
        }
        if function_id.starts_with("engine::") {
            return self
                .settings
                .namespace
                .as_ref()
                .map(|_| DEFAULT_NAMESPACE.to_owned());
        }
        self.settings.namespace.clone()
    }

    /// Sends on the live connection, or queues when offline (if `queue` says so).
    pub(super) fn send_locked(&self, link: &mut Link, frame: String, queue: bool) {
        let frame = match &link.tx {
            Some(tx) => match tx.send(frame) {
                Ok(()) => return,
                Err(mpsc::error::SendError(frame)) => frame,
            },
            None => frame,
        };
        if queue {
            if link.queued.len() >= MAX_QUEUED {
                link.queued.pop_front();
                warn!("offline queue full: dropped the oldest message");
            }
            link.queued.push_back(frame);
        }
    }

    pub(super) fn send_now(&self, frame: String) {
        let mut link = lock(&self.link);
        self.send_locked(&mut link, frame, false);
    }

    pub(super) fn closed_error(&self) -> ClientError {
        match lock(&self.last_error).as_deref() {
            Some(code) if self.rejected.load(Ordering::Relaxed) => ClientError::Rejected {
                code: code.to_owned(),
                namespace: self
                    .settings
                    .namespace
                    .clone()
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            },
            _ => ClientError::Shutdown,
        }
    }

    pub(super) fn finish_closed(&self, error: ClientError) {
        self.state.send_replace(ClientState::Closed);
        for (_, call) in self.pending.drain_where(|_| true) {
            let _ = call.tx.send(Err(error.clone()));
        }
    }

    /// Every frame from the engine.
    pub(super) fn on_frame(self: &Arc<Self>, frame: &[u8]) {
        if protocol::is_blank(frame) {
            return;
        }
        let message = match protocol::decode(frame) {
            Ok(message) => message,
            Err(e) => {
                warn!("ignoring a frame from the engine: {e}");
                return;
            }
        };
        match message {
            Message::InvokeFunction(call) => self.on_invoke(call),
            Message::InvocationResult(result) => self.on_result(result),
            Message::WorkerRegistered(w) => {
                debug!(worker_id = %w.worker_id, "registered with the engine");
                *lock(&self.identity) = Some((w.worker_id, w.reattach_token));
            }
            Message::RegistrationRejected(r) => {
                if r.code == ErrorCode::FunctionNamespaceConflict {
                    warn!(
                        function_id = r.function_id.as_deref().unwrap_or(""),
                        namespace = %r.namespace,
                        owner = %r.owner_worker_id,
                        "the engine refused a function: another worker owns it"
                    );
                } else {
                    warn!(code = %r.code, namespace = %r.namespace, "the engine rejected this worker: stopping");
                    *lock(&self.last_error) = Some(r.code.clone());
                    self.rejected.store(true, Ordering::Relaxed);
                    self.stop.send_replace(true);
                }
            }
            Message::TriggerRegistrationResult(r) => {
                if let Some(error) = r.error {
                    warn!(trigger_id = %r.id, trigger_type = %r.trigger_type, code = %error.code, "the engine refused a binding: {}", error.message);
                    self.trigger_errors.insert(r.id, error);
                }
            }
            Message::Ping(_) => self.send_now(r#"{"type":"pong"}"#.to_owned()),
            Message::Pong(_) => {}
            Message::Error(e) => {
                warn!(code = %e.error.code, "engine error: {}", e.error.message);
                *lock(&self.last_error) = Some(format!("{}: {}", e.error.code, e.error.message));
            }
            other => debug!(
                kind = other.kind(),
                "ignoring a message a worker does not handle"
            ),
        }
    }

    fn on_invoke(self: &Arc<Self>, invoke: InvokeFunction) {
        let handler = lock(&self.link)
            .functions
            .get(&invoke.function_id)
            .map(|f| f.handler.clone());
        // The engine always sends an id when executing; without one nobody waits for an answer,
        // so a private id that is never registered in `inbound` swallows the reply.
        let (invocation_id, answered): (Arc<str>, bool) = match invoke.invocation_id {
            Some(id) => (Arc::from(id), true),
            None => (Arc::from(uuid::Uuid::new_v4().to_string()), false),
        };
        let Some(handler) = handler else {
            if answered {
                let body = ErrorBody::new(
                    ErrorCode::FunctionNotFound,
                    format!("Function {} not found", invoke.function_id),
                );
                self.send_result(&invocation_id, invoke.function_id, Outcome::Failure(body));
            }
            return;
        };
        if answered {
            self.inbound.insert(
                invocation_id.clone(),
                (invoke.function_id.clone(), handler.clone()),
            );
        }
        let weak: Weak<dyn Completer> = Arc::downgrade(self) as Weak<dyn Completer>;
        let call = Call {
            reply: Reply::new(invocation_id.clone(), weak),
            invocation_id,
            function_id: invoke.function_id,
            namespace: self
                .settings
                .namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            data: invoke.data.unwrap_or_else(null_json),
            metadata: invoke.metadata,
            traceparent: invoke.traceparent,
            baggage: invoke.baggage,
            caller_worker_id: None,
        };
        // `NativeFunction::invoke` must not block, so it is called right here on the read loop:
        // invocations still run concurrently (each handler answers later through its Reply).
        handler.invoke(call);
    }

    fn send_result(&self, invocation_id: &str, function_id: String, outcome: Outcome) {
        let (result, error) = match outcome {
            Outcome::Success(result) => (result, None),
            Outcome::Failure(error) => (None, Some(error)),
        };
        let frame = Message::InvocationResult(InvocationResult {
            invocation_id: invocation_id.to_owned(),
            function_id,
            result,
            error,
            ..InvocationResult::default()
        })
        .to_text();
        // Not queued while offline: the engine stopped the invocation with the connection.
        self.send_now(frame);
    }

    fn on_result(&self, result: InvocationResult) {
        let Some(call) = self.pending.take(&result.invocation_id) else {
            debug!(invocation_id = %result.invocation_id, "late or unknown result dropped");
            return;
        };
        let outcome = match result.error {
            Some(error) => Err(ClientError::Invocation(error)),
            None => Ok(result.result),
        };
        let _ = call.tx.send(outcome);
    }

    pub(super) fn worker_register_frame(&self) -> String {
        let mut payload = serde_json::json!({
            "runtime": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "name": self.settings.worker_name,
            "os": std::env::consts::OS,
            "pid": std::process::id(),
            "telemetry": {"language": "rust"},
        });
        if let Some(ns) = &self.settings.namespace {
            payload["namespace"] = serde_json::Value::String(ns.clone());
        }
        Message::InvokeFunction(InvokeFunction {
            invocation_id: None,
            function_id: WORKERS_REGISTER.to_owned(),
            data: serde_json::value::to_raw_value(&payload).ok(),
            action: Some(TriggerAction::Void),
            namespace: self
                .settings
                .namespace
                .as_ref()
                .map(|_| DEFAULT_NAMESPACE.to_owned()),
            ..InvokeFunction::default()
        })
        .to_text()
    }
}

impl Completer for Inner {
    fn complete(&self, invocation_id: &str, outcome: Outcome) {
        if let Some((_, (function_id, _))) = self.inbound.remove(invocation_id) {
            self.send_result(invocation_id, function_id, outcome);
        }
    }
}
