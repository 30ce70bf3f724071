//! Sessions: a worker connection from connect to cleanup. Every frame of a worker is handled
//! inline in that connection's reader task ([`Handler`]): decode the envelope, route, re-encode.
//! Registrations wait until the worker names its namespace (`engine::workers::register`, or the
//! grace period runs out, docs/protocol.md 3.4), then apply; a reattach retires the previous
//! connection of the same worker (1.5); external HTTP functions go through the host first
//! (section 5).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tracing::{debug, info, warn};

use super::dispatch::{Caller, Request};
use super::payload::Payload;
use super::state::{
    lock, raw_null, send_msg, uuid, InFlightSlot, NsState, Provider, Shared, Target, WorkerState,
};
use super::{is_in_process_owner, ENGINE_OWNER, ENQUEUE_FUNCTION};
use crate::access::{AccessConfig, Grants};
use crate::error::Error;
use crate::external::ExternalRegistration;
use crate::function::{CallOptions, Outcome};
use crate::protocol::ErrorCode;
use crate::protocol::{
    self, HttpInvocationRef, InvokeFunction, Message, RegistrationRejected, TriggerAction,
    WorkerRegistered,
};
use crate::registry::{check_namespace, FunctionDef, FunctionKind, DEFAULT_NAMESPACE};
use crate::server::{BoxFuture, Connection, ConnectionHandler, Frame};
use crate::triggers::TriggerType;

impl Shared {
    fn on_frame(&self, ws: &Arc<WorkerState>, frame: &Frame) {
        if protocol::is_blank(frame.as_bytes()) {
            return;
        }
        // A large frame's payload stays in the frame (docs/architecture.md, "Large frames").
        let (message, payload) = match protocol::decode_split(frame.as_str()) {
            Ok(split) => (split.message, split.payload),
            Err(e) => {
                warn!(worker = %ws.conn.id(), "ignoring a frame: {e}");
                return;
            }
        };
        let framed = |range| Payload::Framed {
            frame: frame.clone(),
            range,
        };
        match message {
            Message::InvokeFunction(call) => self.on_invoke(ws, call, payload.map(framed)),
            Message::InvocationResult(result) => self.on_result(ws, result, frame, payload),
            Message::Reattach(r) => self.on_reattach(ws, &r.previous_worker_id, &r.reattach_token),
            Message::TriggerRegistrationResult(r) => self.on_trigger_ack(ws, r),
            Message::Ping(_) => {
                let _ = ws.conn.send(br#"{"type":"pong"}"#.to_vec());
            }
            Message::Pong(_) => {}
            m @ (Message::RegisterFunction(_)
            | Message::UnregisterFunction(_)
            | Message::RegisterTriggerType(_)
            | Message::UnregisterTriggerType(_)
            | Message::RegisterTrigger(_)
            | Message::UnregisterTrigger(_)
            | Message::RegisterService(_)) => {
                let mut state = lock(&ws.ns);
                match &mut *state {
                    NsState::Buffering { queue, bytes } => {
                        let config = &self.config;
                        if queue.len() >= config.max_buffered_registrations
                            || bytes.saturating_add(frame.len())
                                > config.max_buffered_registration_bytes
                        {
                            let (count, held) = (queue.len(), *bytes);
                            // Frees the buffered registrations now.
                            *state = NsState::Refused;
                            drop(state);
                            warn!(worker = %ws.conn.id(), registrations = count, bytes = held, "too many registrations before engine::workers::register named the namespace: closing with 1008");
                            ws.conn.close(
                                1008,
                                "too many registrations before engine::workers::register",
                            );
                            return;
                        }
                        *bytes += frame.len();
                        queue.push(m);
                    }
                    NsState::Known(ns) => {
                        let ns = ns.clone();
                        drop(state);
                        if let Some(session) = &ws.access {
                            self.queue_gated(ws, session, &ns, m);
                            return;
                        }
                        let _registering = lock(&self.registrations);
                        self.apply_registration(ws, &ns, m);
                    }
                    NsState::Refused => {}
                }
            }
            Message::Unknown(u) => {
                debug!(worker = %ws.conn.id(), kind = %u.kind, "ignoring a frame of unknown type")
            }
            other => {
                debug!(worker = %ws.conn.id(), kind = other.kind(), "ignoring an engine-to-worker message")
            }
        }
    }

    /// A worker's call; `framed` is its `data` when the decoder left it in the frame.
    fn on_invoke(&self, ws: &Arc<WorkerState>, call: InvokeFunction, framed: Option<Payload>) {
        let InvokeFunction {
            invocation_id,
            function_id,
            data,
            traceparent,
            baggage,
            action,
            metadata,
            namespace,
            ..
        } = call;
        let data = framed.or(data.map(Payload::Owned));
        let void = matches!(action, Some(TriggerAction::Void));
        let caller = Caller::Worker {
            conn: ws.conn.clone(),
            reply: invocation_id.is_some() && !void,
        };
        // A void call's target gets a fresh id (4.3): the caller may reuse its own at once.
        let invocation_id = if void { None } else { invocation_id };
        let max = self.config.max_calls_in_flight_per_connection;
        let Some(in_flight) = InFlightSlot::take(&ws.calls_in_flight, max) else {
            self.fail(
                caller,
                invocation_id.as_deref(),
                traceparent.as_deref(),
                &function_id,
                ErrorCode::TooManyCallsInFlight,
                format!(
                    "this connection already has {max} calls in flight \
                     (setting max_calls_in_flight_per_connection)"
                ),
            );
            return;
        };
        let in_flight = Some(in_flight);
        let namespace = namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        // A restricted listener's gate (docs/access-control.md): the call as sent, the
        // middleware's call instead, or FORBIDDEN.
        let (function_id, data, action, namespace) = match &ws.access {
            None => (function_id, data, action, namespace),
            Some(session) => match self.gate_call(session, function_id, namespace, data, action) {
                Ok(g) => (g.function_id, g.data, g.action, g.namespace),
                Err((function_id, message)) => {
                    self.fail(
                        caller,
                        invocation_id.as_deref(),
                        traceparent.as_deref(),
                        &function_id,
                        ErrorCode::Forbidden,
                        message,
                    );
                    return;
                }
            },
        };
        if let Some(TriggerAction::Enqueue { queue }) = action {
            // As iii does (4.4): a call of `engine::queue::enqueue` with the call inside, served
            // by the queue service when the engine runs one.
            let request = self.serves_enqueue().then(|| {
                let data = data.map(Payload::into_raw).transpose()?;
                serde_json::value::to_raw_value(&serde_json::json!({
                    "queue": queue,
                    "function_id": function_id,
                    "data": data.as_deref(),
                    "messageReceiptId": uuid(),
                    "traceparent": traceparent,
                    "baggage": baggage,
                    "namespace": namespace,
                }))
            });
            match request {
                Some(Ok(request)) => self.dispatch(Request {
                    invocation_id,
                    caller_worker_id: Some(ws.conn.id().clone()),
                    in_flight,
                    ..Request::new(ENQUEUE_FUNCTION, request, CallOptions::default(), caller)
                }),
                Some(Err(e)) => self.fail(
                    caller,
                    invocation_id.as_deref(),
                    traceparent.as_deref(),
                    &function_id,
                    ErrorCode::EnqueueError,
                    e.to_string(),
                ),
                None => self.fail(
                    caller,
                    invocation_id.as_deref(),
                    traceparent.as_deref(),
                    &function_id,
                    ErrorCode::EnqueueError,
                    "queues are turned off in this engine (setting queue_backend)".to_owned(),
                ),
            }
            return;
        }
        if let Err(e) = check_namespace(&namespace) {
            self.fail(
                caller,
                invocation_id.as_deref(),
                traceparent.as_deref(),
                &function_id,
                e.error_code(),
                e.to_string(),
            );
            return;
        }
        let data = data.unwrap_or_else(|| Payload::Owned(raw_null()));
        let options = CallOptions {
            namespace: Some(namespace),
            metadata,
            traceparent,
            baggage,
            ..CallOptions::default()
        };
        self.dispatch(Request {
            invocation_id,
            caller_worker_id: Some(ws.conn.id().clone()),
            caller_in_data: true,
            in_flight,
            ..Request::new(function_id, data, options, caller)
        });
    }

    /// True when the engine's own `engine::queue::enqueue` is registered (a queue service runs),
    /// so that `action: enqueue` has somewhere to go.
    fn serves_enqueue(&self) -> bool {
        self.functions
            .lookup(DEFAULT_NAMESPACE, ENQUEUE_FUNCTION)
            .is_some_and(|f| f.owners.iter().any(|o| &**o == ENGINE_OWNER))
    }

    /// The worker told us its namespace (or the grace period ran out): apply what waited.
    pub(crate) fn resolve_namespace(&self, ws: &Arc<WorkerState>, namespace: &str) {
        let queued = {
            let mut state = lock(&ws.ns);
            match std::mem::replace(&mut *state, NsState::Known(namespace.to_owned())) {
                NsState::Buffering { queue, .. } => queue,
                NsState::Refused => {
                    *state = NsState::Refused;
                    return;
                }
                // Pinned already: a later namespace is ignored (3.4).
                NsState::Known(pinned) => {
                    if pinned != namespace {
                        debug!(worker = %ws.conn.id(), %pinned, requested = namespace, "namespace already pinned");
                    }
                    *state = NsState::Known(pinned);
                    return;
                }
            }
        };
        if let Some(session) = &ws.access {
            for message in queued {
                self.queue_gated(ws, session, namespace, message);
            }
            return;
        }
        let _registering = lock(&self.registrations);
        for message in queued {
            self.apply_registration(ws, namespace, message);
        }
    }

    pub(super) fn apply_registration(&self, ws: &Arc<WorkerState>, ns: &str, message: Message) {
        let conn = &ws.conn;
        match message {
            Message::RegisterFunction(f) => {
                let rejected = |owner: &str| {
                    send_msg(
                        conn,
                        &Message::RegistrationRejected(RegistrationRejected {
                            code: ErrorCode::FunctionNamespaceConflict.into(),
                            namespace: ns.to_owned(),
                            function_id: Some(f.id.clone()),
                            owner_worker_id: owner.to_owned(),
                            ..RegistrationRejected::default()
                        }),
                    );
                };
                if f.id.starts_with("engine::") && ns != DEFAULT_NAMESPACE {
                    warn!(worker = %conn.id(), function_id = %f.id, "engine::* ids are reserved");
                    rejected("");
                    return;
                }
                // The engine's built-ins and the host's (embedded app's) functions belong to this
                // process: a worker never becomes a replica of one.
                let in_process = self
                    .functions
                    .lookup(ns, &f.id)
                    .is_some_and(|i| i.owners.iter().any(|o| is_in_process_owner(o)));
                if in_process {
                    warn!(worker = %conn.id(), function_id = %f.id, "refusing to shadow a function of the engine or its host");
                    rejected("");
                    return;
                }
                if let Some(invocation) = f.invocation {
                    let def = FunctionDef {
                        kind: FunctionKind::Http,
                        description: f.description,
                        request_format: f.request_format,
                        response_format: f.response_format,
                        metadata: f.metadata,
                    };
                    self.prepare_external(ws, ns, f.id, invocation, def);
                    return;
                }
                let def = FunctionDef {
                    kind: FunctionKind::Worker,
                    description: f.description,
                    request_format: f.request_format,
                    response_format: f.response_format,
                    metadata: f.metadata,
                };
                match self.functions.register(
                    ns,
                    &f.id,
                    conn.id().clone(),
                    Target::Worker(conn.clone()),
                    def,
                ) {
                    Ok(outcome) => {
                        info!(worker = %conn.id(), namespace = %ns, function_id = %f.id, ?outcome, "function registered");
                        self.functions_changed();
                    }
                    Err(Error::FunctionConflict { owner, .. }) => {
                        info!(worker = %conn.id(), function_id = %f.id, %owner, "function registration rejected: owned by another worker");
                        rejected(&owner);
                    }
                    Err(e) => {
                        warn!(worker = %conn.id(), function_id = %f.id, "function registration refused: {e}")
                    }
                }
            }
            Message::UnregisterFunction(f) => {
                lock(&ws.external_pending).remove(&(ns.to_owned(), f.id.clone()));
                if matches!(self.functions.unregister(ns, &f.id, conn.id()), Ok(true)) {
                    info!(worker = %conn.id(), function_id = %f.id, "function unregistered");
                    self.functions_changed();
                }
            }
            Message::RegisterTriggerType(t) => {
                let namespace = t.namespace.unwrap_or_else(|| ns.to_owned());
                if let Some(existing) = self.trigger_types.get(&namespace, &t.id) {
                    if is_in_process_owner(&existing.owner) {
                        warn!(worker = %conn.id(), namespace = %namespace, trigger_type = %t.id, owner = %existing.owner, "trigger type refused: it is provided by the engine or its host");
                        return;
                    }
                }
                let trigger_type = TriggerType {
                    namespace,
                    id: t.id,
                    description: t.description.unwrap_or_default(),
                    trigger_request_format: t.trigger_request_format,
                    call_request_format: t.call_request_format,
                    owner: conn.id().clone(),
                    provider: Provider::Worker(conn.clone()),
                };
                let (tns, tid) = (trigger_type.namespace.clone(), trigger_type.id.clone());
                match self.trigger_types.register(trigger_type) {
                    Ok(previous) => {
                        info!(worker = %conn.id(), namespace = %tns, trigger_type = %tid, "trigger type registered");
                        self.provider_arrived(&tns, &tid, previous, conn.id());
                    }
                    Err(e) => {
                        warn!(worker = %conn.id(), trigger_type = %tid, "trigger type refused: {e}")
                    }
                }
            }
            Message::UnregisterTriggerType(t)
                if self
                    .trigger_types
                    .unregister(ns, &t.id, conn.id())
                    .is_some() =>
            {
                info!(worker = %conn.id(), trigger_type = %t.id, "trigger type unregistered");
                for slot in self.bindings.active_for(ns, &t.id) {
                    self.activate(&slot.binding);
                }
            }
            Message::RegisterTrigger(t) => self.on_register_trigger(ws, ns, t),
            Message::UnregisterTrigger(t) => {
                match self.bindings.remove_if_owned(&t.id, conn.id()) {
                    Ok(Some(slot)) => {
                        info!(worker = %conn.id(), trigger_id = %t.id, "trigger unregistered");
                        self.retract(&slot.binding, &slot.state);
                    }
                    Ok(None) => {}
                    Err(owner) => {
                        warn!(worker = %conn.id(), trigger_id = %t.id, owner = %owner.as_deref().unwrap_or("engine::register_trigger"), "unregistertrigger ignored: the binding belongs to someone else");
                    }
                }
            }
            Message::RegisterService(s) => {
                debug!(worker = %conn.id(), service = %s.id, "service registered (grouping only)")
            }
            _ => {}
        }
    }

    fn on_reattach(&self, ws: &Arc<WorkerState>, previous: &str, token: &str) {
        if previous == &**ws.conn.id() {
            return;
        }
        let Some(old) = self.conns.get(previous).map(|o| o.clone()) else {
            debug!(worker = %ws.conn.id(), previous, "reattach to an unknown connection ignored");
            return;
        };
        if !constant_time_eq(old.reattach_token.as_bytes(), token.as_bytes()) {
            warn!(worker = %ws.conn.id(), previous, "reattach with a wrong token ignored");
            return;
        }
        info!(worker = %ws.conn.id(), previous, "worker reattached: retiring its previous connection");
        old.conn.close(1000, "replaced by a reattached connection");
        // Clean up now, before this connection's next frame (the replay) is read.
        self.cleanup(&old);
    }

    fn connect(&self, conn: &Arc<Connection>, admitted: Option<(Grants, Arc<AccessConfig>)>) {
        let token = uuid();
        let (access, gate) = match admitted {
            Some((grants, config)) => {
                let (session, rx) = self.open_session(conn, grants, config);
                (Some(session), Some(rx))
            }
            None => (None, None),
        };
        let ws = Arc::new(WorkerState {
            conn: conn.clone(),
            reattach_token: token.clone(),
            ns: Mutex::new(NsState::buffering()),
            cleaned: AtomicBool::new(false),
            calls_in_flight: Arc::default(),
            external_pending: Mutex::new(HashMap::new()),
            access,
        });
        if let Some(rx) = gate {
            tokio::spawn(Shared::run_registrations(
                self.me.clone(),
                Arc::downgrade(&ws),
                rx,
            ));
        }
        self.conns.insert(conn.id().clone(), ws.clone());
        self.workers.connect(
            conn.id().clone(),
            Some(conn.remote_addr().to_string()),
            conn.connected_at_ms(),
        );
        info!(worker = %conn.id(), remote = %conn.remote_addr(), "worker connected");
        send_msg(
            conn,
            &Message::WorkerRegistered(WorkerRegistered {
                worker_id: conn.id().to_string(),
                reattach_token: Some(token),
                ..WorkerRegistered::default()
            }),
        );
        let grace = self.config.namespace_grace;
        let me = self.me.clone();
        let weak_ws = Arc::downgrade(&ws);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if let (Some(shared), Some(ws)) = (me.upgrade(), weak_ws.upgrade()) {
                if !ws.cleaned.load(Ordering::Acquire) {
                    shared.resolve_namespace(&ws, DEFAULT_NAMESPACE);
                }
            }
        });
        self.fire_workers_available("worker_connected", conn.id());
    }

    pub(super) fn cleanup(&self, ws: &Arc<WorkerState>) {
        // A successor's registrations (the same worker reconnecting) wait until this is over,
        // so nothing below removes or retracts what it registered; and whoever finds `cleaned`
        // set can wait for the cleanup to be over by taking this lock.
        let registering = lock(&self.registrations);
        if ws.cleaned.swap(true, Ordering::AcqRel) {
            return;
        }
        // Waits for an external function being registered right now; later answers see
        // `cleaned` and drop themselves.
        lock(&ws.external_pending).clear();
        let id = ws.conn.id().clone();
        self.conns.remove_if(&id, |_, v| Arc::ptr_eq(v, ws));
        let removed = self.functions.remove_owner(&id);
        for (call_id, pending) in self.pending.drain_where(|p| p.target.as_ref() == Some(&id)) {
            self.deliver(
                &call_id,
                pending,
                Outcome::failure(ErrorCode::InvocationStopped, "Invocation stopped"),
            );
        }
        // Calls this worker made: nobody is left to answer.
        for (call_id, pending) in self
            .pending
            .drain_where(|p| matches!(&p.caller, Caller::Worker { conn, .. } if conn.id() == &id))
        {
            self.abandon(&call_id, &pending);
        }
        for slot in self.bindings.remove_owner(&id) {
            self.retract(&slot.binding, &slot.state);
        }
        for t in self.trigger_types.remove_owner(&id) {
            for slot in self.bindings.active_for(&t.namespace, &t.id) {
                self.activate(&slot.binding);
            }
        }
        let info = self.workers.disconnect(&id);
        drop(registering);
        self.channels.remove_owned_by(&id);
        let name = info.as_ref().and_then(|w| w.name().map(str::to_owned));
        info!(worker = %id, name = %name.as_deref().unwrap_or(""), functions = removed.len(), "worker disconnected");
        if !removed.is_empty() {
            self.functions_changed();
        }
        self.fire_workers_available("worker_disconnected", &id);
    }

    /// A worker's `registerfunction` with an `invocation`: the host checks it, and its answer
    /// registers the function, owned by the worker (section 5).
    fn prepare_external(
        &self,
        ws: &Arc<WorkerState>,
        ns: &str,
        function_id: String,
        invocation: HttpInvocationRef,
        def: FunctionDef,
    ) {
        let conn = &ws.conn;
        let host = self
            .external
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(host) = host else {
            warn!(worker = %conn.id(), function_id = %function_id, "external HTTP function dropped: this engine does not serve them (setting external_functions)");
            return;
        };
        let key = (ns.to_owned(), function_id.clone());
        let attempt = self.external_attempts.fetch_add(1, Ordering::Relaxed);
        lock(&ws.external_pending).insert(key.clone(), attempt);
        let registration = ExternalRegistration {
            namespace: ns.to_owned(),
            function_id,
            worker_id: conn.id().clone(),
            invocation,
        };
        let me = self.me.clone();
        let ws = ws.clone();
        host.prepare(
            registration,
            Box::new(move |answer| {
                let Some(shared) = me.upgrade() else { return };
                let conn = &ws.conn;
                let (ns, function_id) = &key;
                let mut pending = lock(&ws.external_pending);
                if ws.cleaned.load(Ordering::Acquire) || pending.get(&key) != Some(&attempt) {
                    debug!(worker = %conn.id(), function_id = %function_id, "external function answer dropped: withdrawn or worker gone");
                    return;
                }
                pending.remove(&key);
                let function = match answer {
                    Ok(function) => function,
                    Err(e) => {
                        // No message: iii drops a refused registration with a log line, and
                        // its SDKs treat an unknown `registrationrejected` code as fatal.
                        warn!(worker = %conn.id(), function_id = %function_id, code = %e.code, "external HTTP function refused: {}", e.message);
                        return;
                    }
                };
                match shared.functions.register(
                    ns,
                    function_id,
                    conn.id().clone(),
                    Target::Native(function),
                    def,
                ) {
                    Ok(outcome) => {
                        info!(worker = %conn.id(), namespace = %ns, function_id = %function_id, ?outcome, "external HTTP function registered");
                        drop(pending);
                        shared.functions_changed();
                    }
                    Err(Error::FunctionConflict { owner, .. }) => {
                        info!(worker = %conn.id(), function_id = %function_id, %owner, "external function registration rejected: owned by another worker");
                        send_msg(
                            conn,
                            &Message::RegistrationRejected(RegistrationRejected {
                                code: ErrorCode::FunctionNamespaceConflict.into(),
                                namespace: ns.clone(),
                                function_id: Some(function_id.clone()),
                                owner_worker_id: owner.to_string(),
                                ..RegistrationRejected::default()
                            }),
                        );
                    }
                    Err(e) => {
                        warn!(worker = %conn.id(), function_id = %function_id, "external function registration refused: {e}")
                    }
                }
            }),
        );
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The engine's side of one worker listener: one call per connection event. A restricted
/// listener (`access`) admits each connection through its auth function first.
pub(super) struct Handler {
    shared: Arc<Shared>,
    access: Option<Arc<AccessConfig>>,
    // Grants of connections admitted and not connected yet, by connection id.
    admitted: Arc<Mutex<HashMap<Arc<str>, Grants>>>,
}

impl Handler {
    pub(super) fn new(shared: Arc<Shared>, access: Option<AccessConfig>) -> Handler {
        Handler {
            shared,
            access: access.map(Arc::new),
            admitted: Arc::default(),
        }
    }
}

impl ConnectionHandler for Handler {
    fn channels(&self) -> Option<&crate::channels::ChannelHub> {
        Some(&self.shared.channels)
    }

    fn admit(&self, conn: &Arc<Connection>) -> BoxFuture<'static, bool> {
        let Some(config) = self.access.clone() else {
            return Box::pin(std::future::ready(true));
        };
        let (shared, conn) = (self.shared.clone(), conn.clone());
        let admitted = self.admitted.clone();
        Box::pin(async move {
            match shared.authenticate(&config, &conn).await {
                Some(grants) => {
                    lock(&admitted).insert(conn.id().clone(), grants);
                    true
                }
                None => false,
            }
        })
    }

    fn admit_telemetry(&self, conn: &Arc<Connection>) -> BoxFuture<'static, bool> {
        // The same auth function as a worker connection; the grants are not kept, since a
        // telemetry connection calls nothing.
        let Some(config) = self.access.clone() else {
            return Box::pin(std::future::ready(true));
        };
        let (shared, conn) = (self.shared.clone(), conn.clone());
        Box::pin(async move { shared.authenticate(&config, &conn).await.is_some() })
    }

    fn on_telemetry(&self, conn: &Arc<Connection>, message: &[u8]) {
        let peer = conn.remote_addr().to_string();
        crate::telemetry::ingest::ingest(&self.shared.telemetry, &peer, message);
    }

    fn on_connect(&self, conn: &Arc<Connection>) {
        let admitted = match &self.access {
            Some(config) => {
                let Some(grants) = lock(&self.admitted).remove(conn.id()) else {
                    // Admission always records the grants first; never accept without them.
                    conn.close(1008, "refused by the listener's access control");
                    return;
                };
                Some((grants, config.clone()))
            }
            None => None,
        };
        self.shared.connect(conn, admitted);
    }

    fn on_close_reason(&self, reason: crate::meter::CloseReason) {
        self.shared.connection_closed(reason);
    }

    fn on_frame(&self, conn: &Arc<Connection>, frame: &Frame) {
        let Some(ws) = self.shared.conns.get(conn.id()).map(|w| w.clone()) else {
            return; // retired by a reattach; its frames no longer count
        };
        self.shared.on_frame(&ws, frame);
    }

    fn on_disconnect(&self, conn: &Arc<Connection>) {
        let Some(ws) = self.shared.conns.get(conn.id()).map(|w| w.clone()) else {
            return;
        };
        let delay = self.shared.config.cleanup_delay;
        if delay.is_zero() {
            self.shared.cleanup(&ws);
        } else {
            // The test hook (`EngineConfig::cleanup_delay`): a late teardown.
            let shared = self.shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                shared.cleanup(&ws);
            });
        }
    }
}
