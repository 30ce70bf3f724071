//! Dispatch: one call ([`Request`]) routed to whatever serves its function (a worker connection,
//! a native function, a built-in), its pending entry, and the outcome delivered to its caller.
//!
//! Calls wait in one [`PendingTable`](crate::invocation::PendingTable) whatever serves them, so
//! completion, timeouts and disconnects work the same way. A worker's answer is forwarded byte
//! for byte when it already is what the caller needs.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{debug, Level};

use super::payload::Payload;
use super::state::{send_msg, uuid, InFlightSlot, Shared, Target, WorkerState};
use crate::function::{Call, CallOptions, Completer, Outcome, Reply};
use crate::invocation::inject_caller_worker_id;
use crate::meter::{CallOutcome, FunctionStats};
use crate::protocol::ErrorCode;
use crate::protocol::{InvocationResult, InvokeFunction, Message, RawJson};
use crate::registry::{check_namespace, Lease, DEFAULT_NAMESPACE};
use crate::server::{Connection, Frame};
use crate::telemetry::spans;

/// Who waits for a call's outcome.
pub(super) enum Caller {
    // A worker that wants the result (`reply`) or made a void call.
    Worker { conn: Arc<Connection>, reply: bool },
    Local(oneshot::Sender<Outcome>),
    Discard,
}

/// A call in flight.
pub(super) struct Pending {
    pub(super) caller: Caller,
    function_id: String,
    // Connection id of the worker serving the call, for `invocation_stopped` on disconnect.
    pub(super) target: Option<Arc<str>>,
    timeout: Duration,
    lease: Lease<Target>,
    // The calling connection's slot, given back when the call leaves the table.
    _in_flight: Option<InFlightSlot>,
    // The function's meters when metrics are on; a call dropped unanswered counts as cancelled.
    pub(super) metered: Metered,
    // The caller's trace id, for the log lines about the call; kept only when debug lines are
    // on (the lines about a routed call are debug lines), so it costs nothing otherwise.
    trace_id: Option<u128>,
    // When it was dispatched and its namespace, while the console watches (engine/recent.rs).
    recent: Option<(Instant, String)>,
    // The engine's span of the call, while tracing records it (telemetry/spans.rs).
    span: Option<Box<crate::telemetry::spans::Span>>,
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), as its text, or `""`.
pub fn trace_id(traceparent: Option<&str>) -> &str {
    traceparent
        .and_then(|t| t.get(3..35))
        .filter(|id| id.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or("")
}

/// A trace id kept for later log lines.
struct TraceId(Option<u128>);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id:032x}"),
            None => Ok(()),
        }
    }
}

/// A call's meters and the moment it was routed (metrics on), recorded once: by
/// [`Metered::finish`] with the outcome, or when dropped unfinished as
/// [`CallOutcome::Cancelled`].
pub(super) struct Metered(Option<(Arc<FunctionStats>, Instant)>);

impl Metered {
    pub(super) fn finish(&mut self, outcome: CallOutcome) {
        if let Some((stats, started)) = self.0.take() {
            stats.record(outcome, started.elapsed());
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.finish(CallOutcome::Cancelled);
    }
}

/// The outcome label of a call's outcome.
fn outcome_label(outcome: &Outcome) -> CallOutcome {
    match outcome {
        Outcome::Success(_) => CallOutcome::Success,
        Outcome::Failure(e) if e.code == ErrorCode::InvocationTimeout => CallOutcome::Timeout,
        Outcome::Failure(_) => CallOutcome::Error,
    }
}

/// One call to route.
pub(super) struct Request {
    /// The function called.
    pub(super) function_id: String,
    /// Its input: raw JSON, or a slice of the frame it came in.
    pub(super) data: Payload,
    /// Namespace (`None`: `default`), metadata sidecar, W3C trace context, and the bound on the
    /// wait (`None`: the engine's `invocation_timeout`).
    pub(super) options: CallOptions,
    /// The caller's invocation id, echoed on both hops; `None`: the engine makes one.
    pub(super) invocation_id: Option<String>,
    /// Who gets the outcome.
    pub(super) caller: Caller,
    /// The calling worker's connection id, handed to a native function.
    pub(super) caller_worker_id: Option<Arc<str>>,
    /// Whether `data`, when an object, gets `_caller_worker_id` on its way (docs/protocol.md
    /// 4.5): a worker's own call. Done as late as possible: a worker target's frame is written
    /// with it (no second parse of the payload), a native function's payload is edited.
    pub(super) caller_in_data: bool,
    /// The calling connection's in-flight slot (a worker's call).
    pub(super) in_flight: Option<InFlightSlot>,
}

impl Request {
    /// A call made in this process: the engine makes the invocation id.
    pub(super) fn new(
        function_id: impl Into<String>,
        data: impl Into<Payload>,
        options: CallOptions,
        caller: Caller,
    ) -> Request {
        Request {
            function_id: function_id.into(),
            data: data.into(),
            options,
            invocation_id: None,
            caller,
            caller_worker_id: None,
            caller_in_data: false,
            in_flight: None,
        }
    }
}

impl Shared {
    /// Routes one call to whatever serves it, or fails it at once (no such function, an id
    /// already in flight). The caller has checked the namespace.
    pub(super) fn dispatch(&self, request: Request) {
        let Request {
            function_id,
            data,
            options,
            invocation_id,
            caller,
            caller_worker_id,
            caller_in_data,
            in_flight,
        } = request;
        let CallOptions {
            timeout,
            metadata,
            namespace,
            traceparent,
            baggage,
        } = options;
        let ns = namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        // NOTE: metrics cost three atomic adds (outcome, histogram bucket, sum), one Arc clone
        // and one `Instant::now()` pair per call, and nothing when off (`metered` false).
        // `python benches/routing.py --quick`, C=64, `fnmesh serve` (metrics on) against
        // `fnmesh serve --no-metrics` in the same run, 4 runs on 2 cores shared with other
        // builds: on/off 1.43, 1.12, 1.06, 1.08 (183.9k/128.3k ... 135.5k/125.4k calls/s): no
        // cost measurable above the noise (the on engine is measured first in each round).
        let Some((lease, stats)) = self
            .functions
            .select_metered(ns, &function_id, self.metered)
        else {
            let message = self.not_found_message(ns, &function_id);
            self.fail(
                caller,
                invocation_id.as_deref(),
                traceparent.as_deref(),
                &function_id,
                ErrorCode::FunctionNotFound,
                message,
            );
            return;
        };
        let target = lease.handler().clone();
        // The id as text goes into the frame to a worker; the `Arc` is shared by the pending
        // table and the reply (one allocation for both).
        let id_text = invocation_id.unwrap_or_else(uuid);
        let id: Arc<str> = Arc::from(id_text.as_str());
        let timeout = timeout.unwrap_or(self.config.invocation_timeout);
        let span =
            spans::start_invocation(&self.tracer, &function_id, ns, &id, traceparent.as_deref());
        // What serves the call sees the engine's span as its parent.
        let traceparent = span.as_ref().map_or(traceparent, |s| Some(s.traceparent()));
        // NOTE: one clock read for the metrics and the deadline: `clock_gettime` was 3.3% of the
        // engine's CPU samples in E1 at 64 in flight (`perf record`, 2-core VM), three reads per
        // routed call before.
        let now = Instant::now();
        let pending = Pending {
            caller,
            function_id: function_id.clone(),
            target: match &target {
                Target::Worker(conn) => Some(conn.id().clone()),
                Target::Native(_) => None,
            },
            timeout,
            lease,
            _in_flight: in_flight,
            metered: Metered(stats.map(|stats| (stats, now))),
            trace_id: if tracing::enabled!(Level::DEBUG) {
                u128::from_str_radix(trace_id(traceparent.as_deref()), 16).ok()
            } else {
                None
            },
            recent: self
                .recent
                .start(&function_id)
                .map(|at| (at, ns.to_owned())),
            span,
        };
        if let Err(pending) = self
            .pending
            .insert_until(id.clone(), pending, now + timeout)
        {
            self.fail(
                pending.caller,
                Some(&id),
                traceparent.as_deref(),
                &function_id,
                ErrorCode::InvalidArguments,
                format!("invocation_id {id} is already in flight"),
            );
            return;
        }
        // Who the payload names as its caller (docs/protocol.md 4.5), when it names one.
        let data_caller = caller_worker_id.as_deref().filter(|_| caller_in_data);
        match target {
            Target::Worker(conn) => {
                // A worker registered under a prefix (docs/access-control.md) is called by the
                // id it registered; no copy otherwise.
                let local = conn.local_function_id(&function_id).len();
                let function_id = if local == function_id.len() {
                    function_id
                } else {
                    function_id[function_id.len() - local..].to_owned()
                };
                let frame = InvokeFunction {
                    invocation_id: Some(id_text),
                    function_id,
                    traceparent,
                    baggage,
                    metadata,
                    ..InvokeFunction::default()
                };
                if conn
                    .send_text(frame.encode_with_payload(data.text(), data_caller))
                    .is_err()
                {
                    self.complete(
                        &id,
                        Outcome::failure(ErrorCode::InvocationStopped, "Invocation stopped"),
                    );
                }
            }
            Target::Native(function) => {
                let data = match data.into_raw() {
                    Ok(data) => data,
                    Err(e) => {
                        self.complete(
                            &id,
                            Outcome::failure(
                                ErrorCode::DeserializationError,
                                format!("the call's data is not JSON: {e}"),
                            ),
                        );
                        return;
                    }
                };
                function.invoke(Call {
                    invocation_id: id.clone(),
                    function_id,
                    namespace: namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
                    data: match data_caller {
                        Some(caller) => inject_caller_worker_id(&data, caller).unwrap_or(data),
                        None => data,
                    },
                    metadata,
                    traceparent,
                    baggage,
                    caller_worker_id,
                    reply: Reply::new(id, self.completer()),
                })
            }
        }
    }

    fn not_found_message(&self, namespace: &str, function_id: &str) -> String {
        let mut elsewhere: Vec<String> = self
            .functions
            .list(crate::registry::ListFilter {
                prefix: Some(function_id),
                ..Default::default()
            })
            .into_iter()
            .filter(|f| f.function_id == function_id && f.namespace != namespace)
            .map(|f| f.namespace)
            .collect();
        elsewhere.dedup();
        let mut message = format!("Function {function_id} not found in namespace {namespace}.");
        if !elsewhere.is_empty() {
            message.push_str(&format!(
                " It is registered in namespace(s): {}.",
                elsewhere.join(", ")
            ));
        }
        message
    }

    pub(super) fn fail(
        &self,
        caller: Caller,
        invocation_id: Option<&str>,
        traceparent: Option<&str>,
        function_id: &str,
        code: ErrorCode,
        message: String,
    ) {
        debug!(
            function_id,
            invocation_id = invocation_id.unwrap_or(""),
            trace_id = trace_id(traceparent),
            code = code.as_str(),
            error = %message,
            "call failed before dispatch"
        );
        if self.metered {
            self.unrouted.record_unrouted(CallOutcome::Error);
        }
        let outcome = Outcome::failure(code, message);
        match (caller, invocation_id) {
            (Caller::Worker { conn, reply: true }, Some(id)) => {
                reply_to(&conn, id, function_id, outcome)
            }
            (Caller::Local(tx), _) => {
                let _ = tx.send(outcome);
            }
            _ => {}
        }
    }

    pub(super) fn deliver(&self, id: &str, mut pending: Pending, outcome: Outcome) {
        pending.metered.finish(outcome_label(&outcome));
        spans::end(pending.span.take(), spans::failure(&outcome));
        if let Some((started, ns)) = &pending.recent {
            let code = match &outcome {
                Outcome::Success(_) => None,
                Outcome::Failure(e) => Some(e.code.as_str()),
            };
            self.recent
                .finish(Some(*started), &pending.function_id, ns, code);
        }
        match pending.caller {
            Caller::Worker { conn, reply: true } => {
                reply_to(&conn, id, &pending.function_id, outcome)
            }
            Caller::Local(tx) => {
                let _ = tx.send(outcome);
            }
            Caller::Worker { reply: false, .. } | Caller::Discard => {
                if let Outcome::Failure(e) = outcome {
                    debug!(function_id = %pending.function_id, invocation_id = id, trace_id = %TraceId(pending.trace_id), code = %e.code, "void call failed: {}", e.message);
                }
            }
        }
    }

    /// A worker answered a call routed to it.
    ///
    /// `payload` is where the decoder left the `result` in `frame`, when it left it there.
    pub(super) fn on_result(
        &self,
        from: &Arc<WorkerState>,
        mut result: InvocationResult,
        frame: &Frame,
        payload: Option<Range<usize>>,
    ) {
        let from_id = from.conn.id();
        let Some(mut pending) = self.pending.take_if(&result.invocation_id, |p| {
            p.target.as_ref() == Some(from_id)
        }) else {
            debug!(invocation_id = %result.invocation_id, "result for an unknown or finished call dropped");
            return;
        };
        pending.metered.finish(match &result.error {
            None => CallOutcome::Success,
            Some(e) if e.code == ErrorCode::InvocationTimeout => CallOutcome::Timeout,
            Some(_) => CallOutcome::Error,
        });
        spans::end(pending.span.take(), result.error.as_ref());
        match &pending.caller {
            // The reply frame is already what the caller needs (same id on both hops): forward
            // the worker's bytes untouched.
            Caller::Worker { conn, reply: true } if result.function_id == pending.function_id => {
                if let Some((started, ns)) = &pending.recent {
                    let code = result.error.as_ref().map(|e| e.code.as_str());
                    self.recent
                        .finish(Some(*started), &pending.function_id, ns, code);
                }
                let _ = conn.forward(frame);
            }
            _ => {
                if let Some(range) = payload {
                    // Read once more and copied: the answer goes to a caller in this process,
                    // or its frame must be rewritten.
                    let framed = Payload::Framed {
                        frame: frame.clone(),
                        range,
                    };
                    match framed.into_raw() {
                        Ok(raw) => result.result = Some(raw),
                        Err(e) => {
                            let outcome = Outcome::failure(
                                ErrorCode::DeserializationError,
                                format!("the worker's result is not JSON: {e}"),
                            );
                            self.deliver(&result.invocation_id, pending, outcome);
                            return;
                        }
                    }
                }
                let outcome = match result.error {
                    Some(error) => Outcome::Failure(error),
                    None => Outcome::Success(result.result),
                };
                self.deliver(&result.invocation_id, pending, outcome);
            }
        }
    }

    /// The engine gave up on a call it took out of the pending table without an answer (timed
    /// out, caller left, shutdown): a native function serving it is told so it can stop
    /// (docs/architecture.md, "Abandoned calls"). A worker is not: iii has no message for it.
    pub(super) fn abandon(&self, id: &str, pending: &Pending) {
        if let Target::Native(function) = pending.lease.handler() {
            function.abandon(id);
        }
    }

    pub(super) fn sweep(&self) {
        self.channels.sweep();
        self.tracer.flush();
        self.recent.sweep(Instant::now());
        for (id, pending) in self.pending.expired(Instant::now()) {
            self.abandon(&id, &pending);
            let ms = pending.timeout.as_millis();
            debug!(function_id = %pending.function_id, invocation_id = &*id, trace_id = %TraceId(pending.trace_id), timeout_ms = ms as u64, "call timed out");
            self.deliver(
                &id,
                pending,
                Outcome::failure(
                    ErrorCode::InvocationTimeout,
                    format!("Invocation timed out after {ms} ms"),
                ),
            );
        }
    }

    /// Calls a function from inside the process and waits for the outcome.
    pub(crate) async fn call(
        &self,
        function_id: &str,
        data: RawJson,
        options: CallOptions,
    ) -> Outcome {
        let namespace = options.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        if let Err(e) = check_namespace(namespace) {
            return Outcome::failure(e.error_code(), e.to_string());
        }
        if self.stopped.load(Ordering::Acquire) {
            return Outcome::failure(ErrorCode::InvocationStopped, "the engine has stopped");
        }
        let (tx, rx) = oneshot::channel();
        let id = uuid();
        let mut request = Request::new(function_id, data, options, Caller::Local(tx));
        request.invocation_id = Some(id.clone());
        self.dispatch(request);
        let gone = CallerGone {
            shared: self,
            id: &id,
        };
        let outcome = rx.await.unwrap_or_else(|_| {
            Outcome::failure(
                ErrorCode::InvocationError,
                "the call was dropped by the engine",
            )
        });
        std::mem::forget(gone);
        outcome
    }

    /// Fires a call whose outcome nobody waits for (trigger fires, `send`).
    /// The options' timeout does not apply: the engine's `invocation_timeout` bounds the call.
    pub(crate) fn fire(&self, function_id: &str, data: RawJson, options: CallOptions) {
        let options = CallOptions {
            timeout: None,
            ..options
        };
        self.dispatch(Request::new(function_id, data, options, Caller::Discard));
    }
}

/// Armed while an in-process caller awaits its call: a caller that stops waiting (its future
/// dropped, by a timeout around it or an aborted task) takes the call out of the pending table
/// and abandons it, instead of leaving it to run until the engine's timeout.
struct CallerGone<'a> {
    shared: &'a Shared,
    id: &'a str,
}

impl Drop for CallerGone<'_> {
    fn drop(&mut self) {
        if let Some(pending) = self.shared.pending.take(self.id) {
            self.shared.abandon(self.id, &pending);
        }
    }
}

impl Completer for Shared {
    fn complete(&self, invocation_id: &str, outcome: Outcome) {
        // Only calls served in this process complete this way; a worker's answer goes through
        // `on_result`, which checks the sender.
        if let Some(pending) = self.pending.take_if(invocation_id, |p| p.target.is_none()) {
            self.deliver(invocation_id, pending, outcome);
        }
    }
}

fn reply_to(conn: &Connection, id: &str, function_id: &str, outcome: Outcome) {
    let (result, error) = match outcome {
        Outcome::Success(result) => (result, None),
        Outcome::Failure(error) => (None, Some(error)),
    };
    send_msg(
        conn,
        &Message::InvocationResult(InvocationResult {
            invocation_id: id.to_owned(),
            function_id: function_id.to_owned(),
            result,
            error,
            ..InvocationResult::default()
        }),
    );
}
