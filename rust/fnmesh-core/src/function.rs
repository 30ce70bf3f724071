//! Functions that run inside the engine's process: the engine's own built-ins, functions a Rust
//! host registers, and (through the binding) Python handlers.
//!
//! A [`NativeFunction`] receives a [`Call`] and answers it through the call's [`Reply`], now or
//! later (that is a *Deferred* result). The engine waits for the answer like it waits for a
//! remote worker's `invocationresult`, with the same timeout.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;

use crate::protocol::{ErrorBody, ErrorCode, RawJson};

/// How an invocation ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The function returned; `None` is *NoResult* (no `result` on the wire).
    Success(Option<RawJson>),
    /// The function failed.
    Failure(ErrorBody),
}

impl Outcome {
    /// A failure with this code and message.
    pub fn failure(code: impl Into<String>, message: impl Into<String>) -> Self {
        Outcome::Failure(ErrorBody::new(code, message))
    }

    /// A success carrying this serializable value.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Self {
        match serde_json::value::to_raw_value(value) {
            Ok(raw) => Outcome::Success(Some(raw)),
            Err(e) => Outcome::failure(ErrorCode::SerializationError, e.to_string()),
        }
    }
}

/// Where an answer goes. Implemented by the engine.
pub(crate) trait Completer: Send + Sync {
    fn complete(&self, invocation_id: &str, outcome: Outcome);
}

/// The answer slot of one call. Answer it once with [`Reply::send`]; dropping it unanswered
/// fails the call with `invocation_error`, so a caller never waits for a lost reply.
pub struct Reply {
    invocation_id: Arc<str>,
    completer: Option<Weak<dyn Completer>>,
}

impl Reply {
    pub(crate) fn new(invocation_id: Arc<str>, completer: Weak<dyn Completer>) -> Self {
        Reply {
            invocation_id,
            completer: Some(completer),
        }
    }

    /// The invocation this answers.
    pub fn invocation_id(&self) -> &str {
        &self.invocation_id
    }

    /// Answers the call. An answer after the call timed out or its caller left is dropped.
    pub fn send(mut self, outcome: Outcome) {
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(engine) = self.completer.take().and_then(|w| w.upgrade()) {
            engine.complete(&self.invocation_id, outcome);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if self.completer.is_some() {
            self.finish(Outcome::failure(
                ErrorCode::InvocationError,
                "the function dropped the call without answering",
            ));
        }
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("invocation_id", &self.invocation_id)
            .field("answered", &self.completer.is_none())
            .finish()
    }
}

/// Options of one call, made through a [`crate::client::Client`] or from inside an engine's
/// process ([`crate::engine::EngineRef::call_with`]).
#[derive(Debug, Default, Clone)]
pub struct CallOptions {
    /// Bound on the wait; `None` is the client's `call_timeout` (default 30 s) or the engine's
    /// `invocation_timeout`.
    pub timeout: Option<Duration>,
    /// The metadata sidecar delivered to the handler beside `data` (section 4.8).
    pub metadata: Option<RawJson>,
    /// Namespace to call in. `None`: in an engine, `default`; through a client, `default` for
    /// `engine::*` ids and otherwise the worker's namespace (omitted when it has none), as the
    /// iii SDKs do (section 4.9).
    pub namespace: Option<String>,
    /// W3C trace context to propagate (`traceparent`).
    pub traceparent: Option<String>,
    /// W3C baggage to propagate.
    pub baggage: Option<String>,
}

/// One invocation of a native function.
#[derive(Debug)]
pub struct Call {
    /// The invocation id (the caller's, or one the engine made).
    pub invocation_id: Arc<str>,
    /// The function called.
    pub function_id: String,
    /// The namespace it was called in.
    pub namespace: String,
    /// The payload as raw JSON (`null` when the caller sent none).
    pub data: RawJson,
    /// The caller's metadata sidecar.
    pub metadata: Option<RawJson>,
    /// W3C trace context of the caller.
    pub traceparent: Option<String>,
    /// W3C baggage of the caller.
    pub baggage: Option<String>,
    /// The calling worker's id, when a worker made the call.
    pub caller_worker_id: Option<Arc<str>>,
    /// Where the answer goes.
    pub reply: Reply,
}

impl Call {
    /// Parses the payload into `T`; on failure answers the call with `deserialization_error`
    /// and returns `None`.
    pub fn parse<T: serde::de::DeserializeOwned>(&mut self) -> Option<T> {
        match serde_json::from_str(self.data.get()) {
            Ok(value) => Some(value),
            Err(e) => {
                let reply = std::mem::replace(&mut self.reply, Reply::detached());
                reply.send(Outcome::failure(
                    ErrorCode::DeserializationError,
                    format!("invalid input for {}: {e}", self.function_id),
                ));
                None
            }
        }
    }
}

impl Reply {
    fn detached() -> Self {
        Reply {
            invocation_id: Arc::from(""),
            completer: None,
        }
    }
}

/// A function served inside the engine's process.
pub trait NativeFunction: Send + Sync + 'static {
    /// Starts the call. Must not block: answer through `call.reply` now, or hand the call to a
    /// task that answers later.
    fn invoke(&self, call: Call);

    /// The caller of `invocation_id` no longer waits for it: the engine timed it out, its caller
    /// left, the engine is shutting down, or (in a [`crate::client::Client`]) the connection it
    /// came on was lost. Whatever still runs for it can stop; its answer will be dropped.
    /// Called at most once per invocation, never for one already answered, and possibly before
    /// `invoke` handed it to the code that runs it (a queued call). Must not block. The default
    /// does nothing: the call runs on and its late answer is dropped.
    fn abandon(&self, invocation_id: &str) {
        let _ = invocation_id;
    }
}

impl<F> NativeFunction for F
where
    F: Fn(Call) + Send + Sync + 'static,
{
    fn invoke(&self, call: Call) {
        self(call)
    }
}

/// Wraps an async function of the payload into a [`NativeFunction`] run on the engine's tokio
/// runtime. A call the engine abandons ([`NativeFunction::abandon`]) has its future dropped at
/// its next `.await`.
///
/// ```
/// use fnmesh_core::function::{async_fn, Outcome};
///
/// let double = async_fn(|data| async move {
///     let n: i64 = serde_json::from_str(data.get()).unwrap_or(0);
///     Outcome::json(&(n * 2))
/// });
/// # let _ = double;
/// ```
pub fn async_fn<F, Fut>(f: F) -> impl NativeFunction
where
    F: Fn(RawJson) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    AsyncFn {
        f,
        running: Arc::new(DashMap::new()),
    }
}

struct AsyncFn<F> {
    f: F,
    // The calls still running, each with the signal that stops it. The entry goes in before the
    // task is spawned, so an abandon can never miss a call that has started.
    running: Arc<DashMap<Arc<str>, Arc<Notify>>>,
}

impl<F, Fut> NativeFunction for AsyncFn<F>
where
    F: Fn(RawJson) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn invoke(&self, call: Call) {
        let reply = call.reply;
        let id = call.invocation_id;
        let stop = Arc::new(Notify::new());
        self.running.insert(id.clone(), stop.clone());
        let running = self.running.clone();
        let fut = (self.f)(call.data);
        tokio::spawn(async move {
            tokio::select! {
                outcome = fut => reply.send(outcome),
                // The engine dropped the call; so is its future (and the reply, unanswered).
                _ = stop.notified() => {}
            }
            running.remove_if(&id, |_, s| Arc::ptr_eq(s, &stop));
        });
    }

    fn abandon(&self, invocation_id: &str) {
        if let Some((_, stop)) = self.running.remove(invocation_id) {
            // `notify_one` keeps the permit if the task has not polled yet.
            stop.notify_one();
        }
    }
}
