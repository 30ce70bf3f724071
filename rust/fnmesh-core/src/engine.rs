//! The engine: worker connections, registrations and the dispatch loop (PROTOCOL.md 1-4, 6.1-6.2).
//!
//! Every frame of a worker is handled inline in that connection's reader task: decode the
//! envelope, route, re-encode. Payloads stay raw JSON from socket to socket and nothing here
//! touches Python. Calls wait in one [`PendingTable`] whatever serves them (a remote worker, a
//! native function, a built-in), so completion, timeouts and disconnects work the same way.
//!
//! ```no_run
//! use fnmesh_core::engine::Engine;
//! use fnmesh_core::function::{async_fn, Outcome};
//! use fnmesh_core::registry::FunctionDef;
//!
//! # async fn run() -> std::io::Result<()> {
//! let engine = Engine::builder()
//!     .addr("127.0.0.1:49134".parse().unwrap())
//!     .function("math::double", FunctionDef::default(), async_fn(|data| async move {
//!         let n: i64 = serde_json::from_str(data.get()).unwrap_or(0);
//!         Outcome::json(&(n * 2))
//!     }))
//!     .start()
//!     .await?;
//! println!("workers connect to {}", engine.url());
//! engine.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::cron::{CronLock, CronTrigger, LocalLock, RedisLock};
use crate::error::Error;
use crate::external::{ExternalFunctions, ExternalRegistration};
use crate::function::{Call, CallOptions, Completer, NativeFunction, Outcome, Reply};
use crate::http::{HttpConfig, HttpTrigger};
use crate::invocation::{
    inject_caller_worker_id, PendingTable, DEFAULT_INVOCATION_TIMEOUT, SWEEP_INTERVAL,
};
use crate::protocol::{
    self, ErrorBody, HttpInvocationRef, InvocationResult, InvokeFunction, Message, RawJson,
    RegisterTrigger, RegistrationRejected, TriggerAction, TriggerRegistrationResult,
    UnregisterTrigger, WorkerRegistered,
};
use crate::queue::service::{DurableSubscriber, QueueService, QueueSettings, DURABLE_SUBSCRIBER};
use crate::registry::{
    check_namespace, ConflictPolicy, FunctionDef, FunctionKind, FunctionsRegistry, Lease,
    DEFAULT_NAMESPACE,
};
use crate::server::{Connection, ConnectionHandler, Server, ServerConfig};
use crate::triggers::{
    BindingState, TriggerAck, TriggerBinding, TriggerBindingRegistry, TriggerProvider, TriggerSpec,
    TriggerType, TriggerTypeRegistry,
};
use crate::workers::WorkerRegistry;

/// Owner name of the engine's own built-in functions and trigger types.
pub const ENGINE_OWNER: &str = "engine";
/// Owner name of functions a host program registers through [`Engine::register_function`].
pub const HOST_OWNER: &str = "host";
/// Trigger type fired when the set of functions changes.
pub const FUNCTIONS_AVAILABLE: &str = "engine::functions-available";
/// Trigger type fired when workers connect, leave or describe themselves.
pub const WORKERS_AVAILABLE: &str = "engine::workers-available";

/// Every engine setting. `Default` gives PROTOCOL.md's defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The worker WebSocket listener.
    pub server: ServerConfig,
    /// The HTTP trigger's server (opened when the first `http` route is bound).
    pub http: HttpConfig,
    /// What a second owner of a function gets: a replica (default) or iii's rejection.
    pub function_conflict: ConflictPolicy,
    /// Engine-side bound on a pending call (PROTOCOL.md 11.2).
    pub invocation_timeout: Duration,
    /// How long registrations wait for `engine::workers::register` to name the namespace.
    pub namespace_grace: Duration,
    /// Minimum time between two `engine::functions-available` fires.
    pub functions_available_interval: Duration,
    /// How long `engine::register_trigger` waits for a worker provider's answer.
    pub trigger_ack_timeout: Duration,
    /// The Redis that engines sharing cron jobs take each tick's lock in, so that a tick fires on
    /// one of them only (see [`RedisLock`] for the URL forms); `None`: this engine alone
    /// ([`LocalLock`]). An invalid URL fails [`EngineBuilder::start`].
    pub cron_redis_url: Option<String>,
    /// Durable queues (`action: enqueue`, `engine::queue::*`, `durable:subscriber`); `None`
    /// turns them off (an enqueue then fails with `enqueue_error`). Default: a SQLite file at
    /// `.fnmesh/queues.sqlite3`, created at the first enqueue.
    pub queues: Option<QueueSettings>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            server: ServerConfig::default(),
            http: HttpConfig::default(),
            function_conflict: ConflictPolicy::Replicate,
            invocation_timeout: DEFAULT_INVOCATION_TIMEOUT,
            namespace_grace: Duration::from_millis(5000),
            functions_available_interval: Duration::from_secs(5),
            trigger_ack_timeout: Duration::from_secs(10),
            cron_redis_url: None,
            queues: Some(QueueSettings::default()),
        }
    }
}

/// What serves one replica of a function.
#[derive(Clone)]
pub enum Target {
    /// A remote worker connection.
    Worker(Arc<Connection>),
    /// A function inside this process.
    Native(Arc<dyn NativeFunction>),
}

/// Who provides a trigger type.
#[derive(Clone)]
pub(crate) enum Provider {
    Worker(Arc<Connection>),
    /// Served in this process (HTTP, cron, a host's own type).
    Native(Arc<dyn TriggerProvider>),
    /// Fired by the engine itself (`engine::functions-available`, ...).
    Builtin,
}

enum NsState {
    // Registrations wait here until `engine::workers::register` names the namespace (3.4).
    Buffering(Vec<Message>),
    Known(String),
}

pub(crate) struct WorkerState {
    pub(crate) conn: Arc<Connection>,
    reattach_token: String,
    ns: Mutex<NsState>,
    cleaned: AtomicBool,
    // External functions waiting for the host's answer, (namespace, id) -> attempt; an
    // unregistration or a newer registration of the same id makes the answer stale. Held while
    // an answer registers, and by cleanup, so nothing registers after the worker left.
    external_pending: Mutex<HashMap<(String, String), u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Caller {
    // A worker that wants the result (`reply`) or made a void call.
    Worker { conn: Arc<Connection>, reply: bool },
    Local(oneshot::Sender<Outcome>),
    Discard,
}

struct Pending {
    caller: Caller,
    function_id: String,
    // Connection id of the worker serving the call, for `invocation_stopped` on disconnect.
    target: Option<Arc<str>>,
    timeout: Duration,
    _lease: Lease<Target>,
}

/// Everything the engine shares between connections.
pub(crate) struct Shared {
    pub(crate) config: EngineConfig,
    pub(crate) functions: FunctionsRegistry<Target>,
    pub(crate) trigger_types: TriggerTypeRegistry<Provider>,
    pub(crate) bindings: TriggerBindingRegistry,
    pub(crate) workers: WorkerRegistry,
    pub(crate) conns: DashMap<Arc<str>, Arc<WorkerState>>,
    pending: PendingTable<Pending>,
    pub(crate) acks: DashMap<String, oneshot::Sender<Option<ErrorBody>>>,
    me: Weak<Shared>,
    fn_change_scheduled: AtomicBool,
    fn_last_fire: Mutex<Option<Instant>>,
    /// Set by [`Engine::shutdown`]: calls made through an [`EngineRef`] afterwards fail at once.
    stopped: AtomicBool,
    /// The host serving external HTTP functions, if any.
    external: RwLock<Option<Arc<dyn ExternalFunctions>>>,
    external_attempts: AtomicU64,
    /// The queues, when enabled (set once at start).
    queues: std::sync::OnceLock<Arc<QueueService>>,
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn raw_null() -> RawJson {
    RawValue::NULL.to_owned()
}

fn send_msg(conn: &Connection, msg: &Message) -> bool {
    conn.send(msg.encode()).is_ok()
}

impl Shared {
    fn new(config: EngineConfig) -> Arc<Shared> {
        Arc::new_cyclic(|me| Shared {
            functions: FunctionsRegistry::new(config.function_conflict),
            trigger_types: TriggerTypeRegistry::default(),
            bindings: TriggerBindingRegistry::default(),
            workers: WorkerRegistry::default(),
            conns: DashMap::default(),
            pending: PendingTable::new(),
            acks: DashMap::default(),
            me: me.clone(),
            fn_change_scheduled: AtomicBool::new(false),
            fn_last_fire: Mutex::new(None),
            stopped: AtomicBool::new(false),
            external: RwLock::new(None),
            external_attempts: AtomicU64::new(0),
            queues: std::sync::OnceLock::new(),
            config,
        })
    }

    fn completer(&self) -> Weak<dyn Completer> {
        self.me.clone()
    }

    // -----------------------------------------------------------------------------------------
    // Invocation
    // -----------------------------------------------------------------------------------------

    /// Routes one call. `invocation_id` is the caller's id (echoed on both hops) or `None`.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &self,
        namespace: &str,
        function_id: &str,
        data: RawJson,
        metadata: Option<RawJson>,
        traceparent: Option<String>,
        baggage: Option<String>,
        invocation_id: Option<String>,
        caller: Caller,
        caller_worker_id: Option<Arc<str>>,
        timeout: Option<Duration>,
    ) {
        let Some(lease) = self.functions.select(namespace, function_id) else {
            let message = self.not_found_message(namespace, function_id);
            self.fail(
                caller,
                invocation_id.as_deref(),
                function_id,
                "function_not_found",
                message,
            );
            return;
        };
        let target = lease.handler().clone();
        let id: Arc<str> = Arc::from(invocation_id.unwrap_or_else(uuid));
        let timeout = timeout.unwrap_or(self.config.invocation_timeout);
        let pending = Pending {
            caller,
            function_id: function_id.to_owned(),
            target: match &target {
                Target::Worker(conn) => Some(conn.id().clone()),
                Target::Native(_) => None,
            },
            timeout,
            _lease: lease,
        };
        if let Err(pending) = self.pending.insert(&id, pending, timeout) {
            self.fail(
                pending.caller,
                Some(&id),
                function_id,
                "INVALID_ARGUMENTS",
                format!("invocation_id {id} is already in flight"),
            );
            return;
        }
        match target {
            Target::Worker(conn) => {
                let frame = Message::InvokeFunction(InvokeFunction {
                    invocation_id: Some(id.to_string()),
                    function_id: function_id.to_owned(),
                    data: Some(data),
                    traceparent,
                    baggage,
                    metadata,
                    ..InvokeFunction::default()
                });
                if conn.send(frame.encode()).is_err() {
                    self.complete(
                        &id,
                        Outcome::failure("invocation_stopped", "Invocation stopped"),
                    );
                }
            }
            Target::Native(function) => function.invoke(Call {
                invocation_id: id.clone(),
                function_id: function_id.to_owned(),
                namespace: namespace.to_owned(),
                data,
                metadata,
                traceparent,
                baggage,
                caller_worker_id,
                reply: Reply::new(id, self.completer()),
            }),
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

    fn fail(
        &self,
        caller: Caller,
        invocation_id: Option<&str>,
        function_id: &str,
        code: &str,
        message: String,
    ) {
        debug!(function_id, code, %message, "call failed before dispatch");
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

    fn deliver(&self, id: &str, pending: Pending, outcome: Outcome) {
        match pending.caller {
            Caller::Worker { conn, reply: true } => {
                reply_to(&conn, id, &pending.function_id, outcome)
            }
            Caller::Local(tx) => {
                let _ = tx.send(outcome);
            }
            Caller::Worker { reply: false, .. } | Caller::Discard => {
                if let Outcome::Failure(e) = outcome {
                    debug!(function_id = %pending.function_id, code = %e.code, "void call failed: {}", e.message);
                }
            }
        }
    }

    /// A worker answered a call routed to it.
    fn on_result(&self, from: &Arc<WorkerState>, result: InvocationResult, frame: &[u8]) {
        let from_id = from.conn.id();
        let Some(pending) = self.pending.take_if(&result.invocation_id, |p| {
            p.target.as_ref() == Some(from_id)
        }) else {
            debug!(invocation_id = %result.invocation_id, "result for an unknown or finished call dropped");
            return;
        };
        match &pending.caller {
            // The reply frame is already what the caller needs (same id on both hops): forward
            // the worker's bytes untouched.
            Caller::Worker { conn, reply: true } if result.function_id == pending.function_id => {
                let _ = conn.send(frame.to_vec());
            }
            _ => {
                let outcome = match result.error {
                    Some(error) => Outcome::Failure(error),
                    None => Outcome::Success(result.result),
                };
                self.deliver(&result.invocation_id, pending, outcome);
            }
        }
    }

    fn sweep(&self) {
        for (id, pending) in self.pending.expired(Instant::now()) {
            let ms = pending.timeout.as_millis();
            self.deliver(
                &id,
                pending,
                Outcome::failure(
                    "invocation_timeout",
                    format!("Invocation timed out after {ms} ms"),
                ),
            );
        }
    }

    /// Registers a trigger type served in this process and hands it its bindings.
    pub(crate) fn add_native_trigger_type(
        &self,
        namespace: &str,
        id: &str,
        description: &str,
        provider: Arc<dyn TriggerProvider>,
        owner: &str,
    ) -> crate::Result<()> {
        let previous = self.trigger_types.register(TriggerType {
            namespace: namespace.to_owned(),
            id: id.to_owned(),
            description: description.to_owned(),
            trigger_request_format: None,
            call_request_format: None,
            owner: owner.into(),
            provider: Provider::Native(provider),
        })?;
        info!(
            namespace,
            trigger_type = id,
            "trigger type served in process"
        );
        self.provider_arrived(namespace, id, previous, owner);
        Ok(())
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
            return Outcome::failure(e.code(), e.to_string());
        }
        if self.stopped.load(Ordering::Acquire) {
            return Outcome::failure("invocation_stopped", "the engine has stopped");
        }
        let (tx, rx) = oneshot::channel();
        self.dispatch(
            namespace,
            function_id,
            data,
            options.metadata,
            options.traceparent,
            options.baggage,
            None,
            Caller::Local(tx),
            None,
            options.timeout,
        );
        rx.await.unwrap_or_else(|_| {
            Outcome::failure("invocation_error", "the call was dropped by the engine")
        })
    }

    /// Fires a call whose outcome nobody waits for (trigger fires, `send`).
    pub(crate) fn fire(&self, function_id: &str, data: RawJson, options: CallOptions) {
        let namespace = options.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        self.dispatch(
            namespace,
            function_id,
            data,
            options.metadata,
            options.traceparent,
            options.baggage,
            None,
            Caller::Discard,
            None,
            None,
        );
    }

    // -----------------------------------------------------------------------------------------
    // Frames from workers
    // -----------------------------------------------------------------------------------------

    fn on_frame(&self, ws: &Arc<WorkerState>, frame: &[u8]) {
        if protocol::is_blank(frame) {
            return;
        }
        let message = match protocol::decode(frame) {
            Ok(message) => message,
            Err(e) => {
                warn!(worker = %ws.conn.id(), "ignoring a frame: {e}");
                return;
            }
        };
        match message {
            Message::InvokeFunction(call) => self.on_invoke(ws, call),
            Message::InvocationResult(result) => self.on_result(ws, result, frame),
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
                    NsState::Buffering(queue) => queue.push(m),
                    NsState::Known(ns) => {
                        let ns = ns.clone();
                        drop(state);
                        self.apply_registration(ws, &ns, m);
                    }
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

    fn on_invoke(&self, ws: &Arc<WorkerState>, call: InvokeFunction) {
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
        let void = matches!(action, Some(TriggerAction::Void));
        let caller = Caller::Worker {
            conn: ws.conn.clone(),
            reply: invocation_id.is_some() && !void,
        };
        // A void call's target gets a fresh id (4.3): the caller may reuse its own at once.
        let invocation_id = if void { None } else { invocation_id };
        let namespace = namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        if let Some(TriggerAction::Enqueue { queue }) = action {
            // As iii does (4.4): a call of `engine::queue::enqueue` with the call inside.
            let request = self.queues.get().map(|_| {
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
                Some(Ok(request)) => self.dispatch(
                    DEFAULT_NAMESPACE,
                    "engine::queue::enqueue",
                    request,
                    None,
                    None,
                    None,
                    invocation_id,
                    caller,
                    Some(ws.conn.id().clone()),
                    None,
                ),
                Some(Err(e)) => self.fail(
                    caller,
                    invocation_id.as_deref(),
                    &function_id,
                    "enqueue_error",
                    e.to_string(),
                ),
                None => self.fail(
                    caller,
                    invocation_id.as_deref(),
                    &function_id,
                    "enqueue_error",
                    "queues are turned off in this engine (setting queue_backend)".to_owned(),
                ),
            }
            return;
        }
        if let Err(e) = check_namespace(&namespace) {
            self.fail(
                caller,
                invocation_id.as_deref(),
                &function_id,
                e.code(),
                e.to_string(),
            );
            return;
        }
        let data = data.unwrap_or_else(raw_null);
        let data = inject_caller_worker_id(&data, ws.conn.id()).unwrap_or(data);
        self.dispatch(
            &namespace,
            &function_id,
            data,
            metadata,
            traceparent,
            baggage,
            invocation_id,
            caller,
            Some(ws.conn.id().clone()),
            None,
        );
    }

    /// The worker told us its namespace (or the grace period ran out): apply what waited.
    pub(crate) fn resolve_namespace(&self, ws: &Arc<WorkerState>, namespace: &str) {
        let queued = {
            let mut state = lock(&ws.ns);
            match std::mem::replace(&mut *state, NsState::Known(namespace.to_owned())) {
                NsState::Buffering(queue) => queue,
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
        for message in queued {
            self.apply_registration(ws, namespace, message);
        }
    }

    fn apply_registration(&self, ws: &Arc<WorkerState>, ns: &str, message: Message) {
        let conn = &ws.conn;
        match message {
            Message::RegisterFunction(f) => {
                let rejected = |owner: &str| {
                    send_msg(
                        conn,
                        &Message::RegistrationRejected(RegistrationRejected {
                            code: "FUNCTION_NAMESPACE_CONFLICT".to_owned(),
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
                let builtin = self
                    .functions
                    .lookup(ns, &f.id)
                    .is_some_and(|i| i.owners.iter().any(|o| &**o == ENGINE_OWNER));
                if builtin {
                    warn!(worker = %conn.id(), function_id = %f.id, "refusing to shadow a built-in");
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
                if let Some(slot) = self.bindings.remove(&t.id) {
                    info!(worker = %conn.id(), trigger_id = %t.id, "trigger unregistered");
                    self.retract(&slot.binding, &slot.state);
                }
            }
            Message::RegisterService(s) => {
                debug!(worker = %conn.id(), service = %s.id, "service registered (grouping only)")
            }
            _ => {}
        }
    }

    fn on_register_trigger(&self, ws: &Arc<WorkerState>, ns: &str, t: RegisterTrigger) {
        let conn = &ws.conn;
        let namespace = t
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        let blank = check_namespace(&namespace).and_then(|_| {
            t.trigger_namespace
                .as_deref()
                .map_or(Ok(()), check_namespace)
        });
        let report = |code: &str, message: String| {
            send_msg(
                conn,
                &Message::TriggerRegistrationResult(TriggerRegistrationResult {
                    id: t.id.clone(),
                    trigger_type: t.trigger_type.clone(),
                    function_id: t.function_id.clone(),
                    error: Some(ErrorBody::new(code, message)),
                    ..TriggerRegistrationResult::default()
                }),
            );
        };
        if let Err(e) = blank {
            report(e.code(), e.to_string());
            return;
        }
        let binding = TriggerBinding {
            id: t.id.clone(),
            trigger_type: t.trigger_type.clone(),
            function_id: t.function_id.clone(),
            namespace,
            trigger_namespace: t.trigger_namespace.clone(),
            config: t.config.clone().unwrap_or_else(raw_null),
            metadata: t.metadata.clone(),
            owner: Some(conn.id().clone()),
            origin_namespace: ns.to_owned(),
        };
        match self.bindings.insert(binding, BindingState::Pending) {
            Ok(previous) => {
                if let Some(prev) = previous {
                    self.retract(&prev.binding, &prev.state);
                }
                if let Some(slot) = self.bindings.get(&t.id) {
                    info!(worker = %conn.id(), trigger_id = %t.id, trigger_type = %t.trigger_type, function_id = %t.function_id, "trigger registered");
                    self.activate(&slot.binding);
                }
            }
            Err(e) => report("trigger_registration_failed", e.to_string()),
        }
    }

    /// Resolves a binding's provider and delivers it, or parks it as pending.
    pub(crate) fn activate(&self, binding: &Arc<TriggerBinding>) {
        let provider = self.trigger_types.resolve(
            &binding.trigger_type,
            binding.trigger_namespace.as_deref(),
            &binding.origin_namespace,
        );
        let Some(provider) = provider else {
            warn!(trigger_id = %binding.id, trigger_type = %binding.trigger_type, "no provider for this trigger type yet: binding parked");
            self.bindings.set_state(&binding.id, BindingState::Pending);
            return;
        };
        if let Provider::Worker(conn) = &provider.provider {
            let delivery = Message::RegisterTrigger(RegisterTrigger {
                id: binding.id.clone(),
                trigger_type: binding.trigger_type.clone(),
                function_id: binding.function_id.clone(),
                config: Some(binding.config.clone()),
                metadata: binding.metadata.clone(),
                namespace: (binding.namespace != DEFAULT_NAMESPACE)
                    .then(|| binding.namespace.clone()),
                trigger_namespace: (provider.namespace != DEFAULT_NAMESPACE)
                    .then(|| provider.namespace.clone()),
                ..RegisterTrigger::default()
            });
            send_msg(conn, &delivery);
        }
        self.bindings.set_state(
            &binding.id,
            BindingState::Active {
                provider_namespace: provider.namespace.clone(),
            },
        );
        if let Provider::Native(native) = &provider.provider {
            let me = self.me.clone();
            let delivered = binding.clone();
            native.register(
                binding.clone(),
                TriggerAck::new(move |verdict| {
                    if let Some(shared) = me.upgrade() {
                        shared.native_verdict(&delivered, verdict);
                    }
                }),
            );
        }
    }

    /// A native provider's answer on a binding: a refusal drops the binding and tells whoever
    /// registered it (PROTOCOL.md 6.2, in-process providers).
    fn native_verdict(&self, binding: &Arc<TriggerBinding>, verdict: Result<(), String>) {
        let error = verdict
            .err()
            .map(|reason| ErrorBody::new("trigger_registration_failed", reason));
        if let Some((_, waiter)) = self.acks.remove(&binding.id) {
            let _ = waiter.send(error.clone());
        }
        let Some(error) = error else {
            return;
        };
        // Only if the binding under this id is still the one refused (not a replacement).
        let current = self
            .bindings
            .get(&binding.id)
            .is_some_and(|slot| Arc::ptr_eq(&slot.binding, binding));
        if !current {
            return;
        }
        self.bindings.remove(&binding.id);
        warn!(trigger_id = %binding.id, trigger_type = %binding.trigger_type, "binding refused: {}", error.message);
        if let Some(owner) = binding.owner.as_ref().and_then(|o| self.conns.get(o)) {
            send_msg(
                &owner.conn,
                &Message::TriggerRegistrationResult(TriggerRegistrationResult {
                    id: binding.id.clone(),
                    trigger_type: binding.trigger_type.clone(),
                    function_id: binding.function_id.clone(),
                    error: Some(error),
                    ..TriggerRegistrationResult::default()
                }),
            );
        }
    }

    /// A provider registered `(tns, tid)` (replacing `previous`, if any): it takes over the
    /// type's bindings, those that waited for a provider, and those of its namespace that had
    /// fallen back to the `default` provider.
    pub(crate) fn provider_arrived(
        &self,
        tns: &str,
        tid: &str,
        previous: Option<Arc<TriggerType<Provider>>>,
        new_owner: &str,
    ) {
        let taken_over = self.bindings.active_for(tns, tid);
        if let Some(previous) = previous.filter(|p| &*p.owner != new_owner) {
            for slot in &taken_over {
                match &previous.provider {
                    Provider::Worker(old) => retract_at(old, &slot.binding),
                    Provider::Native(old) => old.unregister(&slot.binding),
                    Provider::Builtin => {}
                }
            }
        }
        let mut todo = taken_over;
        todo.extend(self.bindings.pending_for(tns, tid));
        if tns != DEFAULT_NAMESPACE {
            for slot in self.bindings.active_for(DEFAULT_NAMESPACE, tid) {
                if slot.binding.trigger_namespace.is_none() && slot.binding.origin_namespace == tns
                {
                    self.retract(&slot.binding, &slot.state);
                    todo.push(slot);
                }
            }
        }
        for slot in todo {
            self.activate(&slot.binding);
        }
    }

    /// Stores a binding made by the host or through `engine::register_trigger` (not tied to a
    /// connection) and delivers it; waits for the provider's verdict (up to
    /// `trigger_ack_timeout`, silence counting as acceptance). Returns the binding id.
    pub(crate) async fn bind(&self, binding: TriggerBinding) -> Result<String, ErrorBody> {
        let id = binding.id.clone();
        match self.bindings.insert(binding, BindingState::Pending) {
            Ok(Some(previous)) => self.retract(&previous.binding, &previous.state),
            Ok(None) => {}
            Err(e) => {
                let code = if e == Error::InvalidNamespace {
                    e.code()
                } else {
                    "trigger_registration_failed"
                };
                return Err(ErrorBody::new(code, e.to_string()));
            }
        }
        let Some(slot) = self.bindings.get(&id) else {
            return Err(ErrorBody::new(
                "trigger_registration_failed",
                "the binding was replaced while it was being registered",
            ));
        };
        let (tx, mut rx) = oneshot::channel();
        self.acks.insert(id.clone(), tx);
        self.activate(&slot.binding);
        let verdict = match rx.try_recv() {
            Ok(verdict) => verdict,
            Err(_) if self.answers_for(&id) => {
                match tokio::time::timeout(self.config.trigger_ack_timeout, rx).await {
                    Ok(Ok(verdict)) => verdict,
                    _ => None,
                }
            }
            Err(_) => None,
        };
        self.acks.remove(&id);
        info!(trigger_id = %id, trigger_type = %slot.binding.trigger_type, function_id = %slot.binding.function_id, accepted = verdict.is_none(), "durable trigger registered");
        match verdict {
            Some(error) => {
                self.bindings.remove(&id);
                Err(ErrorBody::new("trigger_registration_failed", error.message))
            }
            None => Ok(id),
        }
    }

    /// True when binding `id` was delivered to a provider that answers (a worker or a native
    /// provider), so a verdict may still come.
    fn answers_for(&self, id: &str) -> bool {
        self.bindings.get(id).is_some_and(|slot| match &slot.state {
            BindingState::Active { provider_namespace } => self
                .trigger_types
                .get(provider_namespace, &slot.binding.trigger_type)
                .is_some_and(|t| !matches!(t.provider, Provider::Builtin)),
            BindingState::Pending => false,
        })
    }

    /// Removes a binding and tells its provider; false when there was none.
    pub(crate) fn unbind(&self, id: &str) -> bool {
        match self.bindings.remove(id) {
            Some(slot) => {
                self.retract(&slot.binding, &slot.state);
                true
            }
            None => false,
        }
    }

    /// Tells the provider of a removed binding to drop it.
    pub(crate) fn retract(&self, binding: &TriggerBinding, state: &BindingState) {
        let BindingState::Active { provider_namespace } = state else {
            return;
        };
        if let Some(t) = self
            .trigger_types
            .get(provider_namespace, &binding.trigger_type)
        {
            match &t.provider {
                Provider::Worker(conn) => retract_at(conn, binding),
                Provider::Native(native) => native.unregister(binding),
                Provider::Builtin => {}
            }
        }
    }

    fn on_trigger_ack(&self, ws: &Arc<WorkerState>, ack: TriggerRegistrationResult) {
        let Some(slot) = self.bindings.get(&ack.id) else {
            return;
        };
        let BindingState::Active { provider_namespace } = &slot.state else {
            return;
        };
        // Only the provider that owns the type may report on it.
        let from_provider = self
            .trigger_types
            .get(provider_namespace, &slot.binding.trigger_type)
            .is_some_and(|t| t.owner == *ws.conn.id());
        if !from_provider {
            return;
        }
        if let Some((_, waiter)) = self.acks.remove(&ack.id) {
            let _ = waiter.send(ack.error.clone());
        }
        let Some(error) = ack.error else {
            return;
        };
        warn!(trigger_id = %ack.id, code = %error.code, "provider refused the binding: {}", error.message);
        self.bindings.set_state(&ack.id, BindingState::Pending);
        if let Some(owner) = slot.binding.owner.as_ref().and_then(|o| self.conns.get(o)) {
            send_msg(
                &owner.conn,
                &Message::TriggerRegistrationResult(TriggerRegistrationResult {
                    id: slot.binding.id.clone(),
                    trigger_type: slot.binding.trigger_type.clone(),
                    function_id: slot.binding.function_id.clone(),
                    error: Some(error),
                    ..TriggerRegistrationResult::default()
                }),
            );
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

    // -----------------------------------------------------------------------------------------
    // Connections
    // -----------------------------------------------------------------------------------------

    fn connect(&self, conn: &Arc<Connection>) {
        let token = uuid();
        let ws = Arc::new(WorkerState {
            conn: conn.clone(),
            reattach_token: token.clone(),
            ns: Mutex::new(NsState::Buffering(Vec::new())),
            cleaned: AtomicBool::new(false),
            external_pending: Mutex::new(HashMap::new()),
        });
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

    fn cleanup(&self, ws: &Arc<WorkerState>) {
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
                Outcome::failure("invocation_stopped", "Invocation stopped"),
            );
        }
        // Calls this worker made: nobody is left to answer.
        drop(
            self.pending.drain_where(
                |p| matches!(&p.caller, Caller::Worker { conn, .. } if conn.id() == &id),
            ),
        );
        for slot in self.bindings.remove_owner(&id) {
            self.retract(&slot.binding, &slot.state);
        }
        for t in self.trigger_types.remove_owner(&id) {
            for slot in self.bindings.active_for(&t.namespace, &t.id) {
                self.activate(&slot.binding);
            }
        }
        let info = self.workers.disconnect(&id);
        let name = info.as_ref().and_then(|w| w.name().map(str::to_owned));
        info!(worker = %id, name = %name.as_deref().unwrap_or(""), functions = removed.len(), "worker disconnected");
        if !removed.is_empty() {
            self.functions_changed();
        }
        self.fire_workers_available("worker_disconnected", &id);
    }

    // -----------------------------------------------------------------------------------------
    // Built-in trigger types
    // -----------------------------------------------------------------------------------------

    pub(crate) fn fire_workers_available(&self, event: &str, worker_id: &str) {
        self.fire_builtin_type(
            WORKERS_AVAILABLE,
            || serde_json::json!({"event": event, "worker_id": worker_id}),
        );
    }

    /// Invokes every function bound to one of the engine's own trigger types with `payload`
    /// (built only when something is bound).
    fn fire_builtin_type(&self, trigger_type: &str, payload: impl FnOnce() -> serde_json::Value) {
        let slots = self.bindings.active_for(DEFAULT_NAMESPACE, trigger_type);
        if slots.is_empty() {
            return;
        }
        let Ok(payload) = serde_json::value::to_raw_value(&payload()) else {
            return;
        };
        for slot in slots {
            let b = &slot.binding;
            let options = CallOptions {
                namespace: Some(b.namespace.clone()),
                metadata: b.metadata.clone(),
                ..CallOptions::default()
            };
            self.fire(&b.function_id, payload.clone(), options);
        }
    }

    fn functions_changed(&self) {
        if self.fn_change_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let interval = self.config.functions_available_interval;
        let wait = lock(&self.fn_last_fire).map_or(Duration::ZERO, |last| {
            interval.saturating_sub(last.elapsed())
        });
        let me = self.me.clone();
        let fire = move || {
            if let Some(shared) = me.upgrade() {
                shared.fn_change_scheduled.store(false, Ordering::Release);
                *lock(&shared.fn_last_fire) = Some(Instant::now());
                shared.fire_functions_available();
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    tokio::time::sleep(wait).await;
                    fire();
                });
            }
            Err(_) => fire(),
        }
    }

    fn fire_functions_available(&self) {
        self.fire_builtin_type(FUNCTIONS_AVAILABLE, || {
            let functions = crate::builtins::function_summaries(self, true);
            serde_json::json!({"event": "functions_changed", "functions": functions})
        });
    }

    /// Calls in flight on worker `id` (as target).
    pub(crate) fn pending_for_worker(&self, id: &str) -> usize {
        self.pending
            .count_where(|p| p.target.as_deref() == Some(id))
    }

    /// Registers a native function under `owner`.
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
                                code: "FUNCTION_NAMESPACE_CONFLICT".to_owned(),
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

    pub(crate) fn register_native(
        &self,
        namespace: &str,
        function_id: &str,
        owner: &str,
        def: FunctionDef,
        function: Arc<dyn NativeFunction>,
    ) -> crate::Result<()> {
        self.functions
            .register(namespace, function_id, owner, Target::Native(function), def)?;
        self.functions_changed();
        Ok(())
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

fn retract_at(provider: &Connection, binding: &TriggerBinding) {
    send_msg(
        provider,
        &Message::UnregisterTrigger(UnregisterTrigger {
            id: binding.id.clone(),
            trigger_type: Some(binding.trigger_type.clone()),
            ..UnregisterTrigger::default()
        }),
    );
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct Handler(Arc<Shared>);

impl ConnectionHandler for Handler {
    fn on_connect(&self, conn: &Arc<Connection>) {
        self.0.connect(conn);
    }

    fn on_frame(&self, conn: &Arc<Connection>, frame: &[u8]) {
        let Some(ws) = self.0.conns.get(conn.id()).map(|w| w.clone()) else {
            return; // retired by a reattach; its frames no longer count
        };
        self.0.on_frame(&ws, frame);
    }

    fn on_disconnect(&self, conn: &Arc<Connection>) {
        if let Some(ws) = self.0.conns.get(conn.id()).map(|w| w.clone()) {
            self.0.cleanup(&ws);
        }
    }
}

/// Builds and starts an [`Engine`].
pub struct EngineBuilder {
    config: EngineConfig,
    natives: Vec<(String, String, FunctionDef, Arc<dyn NativeFunction>)>,
}

impl EngineBuilder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// The worker WebSocket address (port 0 picks a free port).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.config.server.addr = addr;
        self
    }

    /// Requires workers to present this token (PROTOCOL.md 11.5).
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.config.server.auth_token = Some(token.into());
        self
    }

    /// Replicas (default) or iii's rejection for a second owner of a function.
    pub fn function_conflict(mut self, policy: ConflictPolicy) -> Self {
        self.config.function_conflict = policy;
        self
    }

    /// Engine-side bound on pending calls.
    pub fn invocation_timeout(mut self, timeout: Duration) -> Self {
        self.config.invocation_timeout = timeout;
        self
    }

    /// Registers a native function in the `default` namespace.
    pub fn function(
        mut self,
        function_id: &str,
        def: FunctionDef,
        function: impl NativeFunction,
    ) -> Self {
        self.natives.push((
            DEFAULT_NAMESPACE.to_owned(),
            function_id.to_owned(),
            FunctionDef {
                kind: FunctionKind::Local,
                ..def
            },
            Arc::new(function),
        ));
        self
    }

    /// Binds the listener and starts serving. Must run inside a tokio runtime.
    pub async fn start(self) -> std::io::Result<Engine> {
        let shared = Shared::new(self.config.clone());
        crate::builtins::install(&shared);
        for (ns, id, def, f) in self.natives {
            shared
                .register_native(&ns, &id, HOST_OWNER, def, f)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        }
        let http = HttpTrigger::new(
            EngineRef {
                shared: shared.clone(),
            }
            .downgrade(),
            self.config.http.clone(),
        );
        shared
            .add_native_trigger_type(
                DEFAULT_NAMESPACE,
                "http",
                "HTTP routes served by the engine (PROTOCOL.md 6.3)",
                Arc::new(http.clone()),
                ENGINE_OWNER,
            )
            .expect("the http trigger type is valid");
        if self.config.http.listen_at_start {
            http.ensure_listening()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::AddrInUse, e))?;
        }
        let cron_lock: Arc<dyn CronLock> = match &self.config.cron_redis_url {
            None => Arc::new(LocalLock),
            Some(url) => Arc::new(RedisLock::new(url).map_err(|e| {
                let reason = match e {
                    Error::InvalidArgument(reason) => reason,
                    other => other.to_string(),
                };
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("invalid cron_redis_url: {reason}"),
                )
            })?),
        };
        if let Some(settings) = &self.config.queues {
            settings
                .validate()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let service = QueueService::new(
                settings.clone(),
                EngineRef {
                    shared: shared.clone(),
                }
                .downgrade(),
            );
            for (id, description, handler) in crate::queue::service::functions() {
                let s = service.clone();
                let native = move |call: Call| {
                    tokio::spawn(handler(s.clone(), call));
                };
                shared
                    .register_native(
                        DEFAULT_NAMESPACE,
                        id,
                        ENGINE_OWNER,
                        FunctionDef {
                            kind: FunctionKind::Local,
                            description: Some(description.to_owned()),
                            ..FunctionDef::default()
                        },
                        Arc::new(native),
                    )
                    .expect("queue function ids are valid and registered once");
            }
            shared
                .add_native_trigger_type(
                    DEFAULT_NAMESPACE,
                    DURABLE_SUBSCRIBER,
                    "Durable topic subscription: every subscriber gets its own queued copy (PROTOCOL.md 6.5)",
                    Arc::new(DurableSubscriber(service.clone())),
                    ENGINE_OWNER,
                )
                .expect("the durable:subscriber trigger type is valid");
            service.start();
            let _ = shared.queues.set(service);
        }
        let cron = CronTrigger::new(
            EngineRef {
                shared: shared.clone(),
            }
            .downgrade(),
            cron_lock,
        );
        shared
            .add_native_trigger_type(
                DEFAULT_NAMESPACE,
                "cron",
                "Runs a function on a cron schedule (PROTOCOL.md 6.4)",
                Arc::new(cron.clone()),
                ENGINE_OWNER,
            )
            .expect("the cron trigger type is valid");
        let server = Server::bind(
            self.config.server.clone(),
            Arc::new(Handler(shared.clone())),
        )
        .await?;
        let weak = Arc::downgrade(&shared);
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(shared) => shared.sweep(),
                    None => break,
                }
            }
        });
        info!(addr = %server.local_addr(), "fnmesh engine listening for workers");
        Ok(Engine {
            shared,
            server,
            sweeper,
            http,
            cron,
        })
    }
}

/// A running engine. Stop it with [`Engine::shutdown`].
pub struct Engine {
    shared: Arc<Shared>,
    server: Server,
    sweeper: tokio::task::JoinHandle<()>,
    http: Arc<HttpTrigger>,
    cron: Arc<CronTrigger>,
}

impl Engine {
    /// A builder with the default configuration.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            config: EngineConfig::default(),
            natives: Vec::new(),
        }
    }

    /// Where workers connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// `ws://host:port` for workers.
    pub fn url(&self) -> String {
        format!("ws://{}", self.local_addr())
    }

    /// Where HTTP triggers are served, once the first route opened the listener.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.local_addr()
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Registers a native function (owner [`HOST_OWNER`]) while running.
    pub fn register_function(
        &self,
        namespace: &str,
        function_id: &str,
        def: FunctionDef,
        function: impl NativeFunction,
    ) -> crate::Result<()> {
        self.handle()
            .register_function(namespace, function_id, def, function)
    }

    /// Removes a native function registered with [`Engine::register_function`].
    pub fn unregister_function(&self, namespace: &str, function_id: &str) -> crate::Result<bool> {
        self.handle().unregister_function(namespace, function_id)
    }

    /// Calls any function (local or on a worker) and waits for its outcome.
    pub async fn call(
        &self,
        namespace: &str,
        function_id: &str,
        data: RawJson,
        timeout: Option<Duration>,
    ) -> Outcome {
        self.handle()
            .call(namespace, function_id, data, None, timeout)
            .await
    }

    /// A cheap, cloneable handle that calls and registers functions on this engine from any
    /// task, for as long as it runs (a host binding keeps one per caller).
    pub fn handle(&self) -> EngineRef {
        EngineRef {
            shared: self.shared.clone(),
        }
    }

    /// Number of connected workers.
    pub fn worker_count(&self) -> usize {
        self.shared.conns.len()
    }

    /// Number of calls waiting for an answer.
    pub fn pending_count(&self) -> usize {
        self.shared.pending.len()
    }

    /// Stops accepting, closes every connection (their pending calls fail with
    /// `invocation_stopped`) and waits for the cleanup.
    pub async fn shutdown(self) {
        self.shared.stopped.store(true, Ordering::Release);
        if let Some(queues) = self.shared.queues.get() {
            queues.shutdown();
        }
        self.cron.shutdown();
        self.http.shutdown().await;
        self.server.shutdown().await;
        self.sweeper.abort();
        for (id, pending) in self.shared.pending.drain_where(|_| true) {
            self.shared.deliver(
                &id,
                pending,
                Outcome::failure("invocation_stopped", "engine shutting down"),
            );
        }
        info!("fnmesh engine stopped");
    }
}

/// A cloneable handle on a running [`Engine`] (see [`Engine::handle`]). Once the engine has
/// stopped, calls fail at once with `invocation_stopped`.
#[derive(Clone)]
pub struct EngineRef {
    shared: Arc<Shared>,
}

impl EngineRef {
    /// Calls any function (local or on a worker) with an optional metadata sidecar and waits
    /// for its outcome, bounded by `timeout` (the engine's `invocation_timeout` when `None`).
    pub async fn call(
        &self,
        namespace: &str,
        function_id: &str,
        data: RawJson,
        metadata: Option<RawJson>,
        timeout: Option<Duration>,
    ) -> Outcome {
        let options = CallOptions {
            namespace: Some(namespace.to_owned()),
            metadata,
            timeout,
            ..CallOptions::default()
        };
        self.call_with(function_id, data, options).await
    }

    /// Calls any function with every option (namespace, metadata, timeout, W3C trace context
    /// handed on to the handler) and waits for its outcome.
    pub async fn call_with(
        &self,
        function_id: &str,
        data: RawJson,
        options: CallOptions,
    ) -> Outcome {
        self.shared.call(function_id, data, options).await
    }

    /// Invokes a function without waiting for (or receiving) its outcome.
    pub fn send(
        &self,
        namespace: &str,
        function_id: &str,
        data: RawJson,
        metadata: Option<RawJson>,
    ) {
        let options = CallOptions {
            namespace: Some(namespace.to_owned()),
            metadata,
            ..CallOptions::default()
        };
        self.send_with(function_id, data, options);
    }

    /// [`EngineRef::send`] with every option (the timeout does not apply). Dropped silently
    /// after shutdown or for a blank namespace, as nothing would receive an error.
    pub fn send_with(&self, function_id: &str, data: RawJson, options: CallOptions) {
        let namespace = options.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        if !self.shared.stopped.load(Ordering::Acquire) && check_namespace(namespace).is_ok() {
            self.shared.fire(function_id, data, options);
        }
    }

    /// Serves the external HTTP functions workers register (`registerfunction` with an
    /// `invocation`, PROTOCOL.md section 5) through `host`; `None` stops accepting new ones (those
    /// registered stay until their workers leave).
    pub fn set_external_functions(&self, host: Option<Arc<dyn ExternalFunctions>>) {
        *self
            .shared
            .external
            .write()
            .unwrap_or_else(|p| p.into_inner()) = host;
    }

    /// Registers a native function (owner [`HOST_OWNER`]), like [`Engine::register_function`].
    /// It is listed with kind `local`, or `http` when `def` says so (a host's own external
    /// function).
    pub fn register_function(
        &self,
        namespace: &str,
        function_id: &str,
        def: FunctionDef,
        function: impl NativeFunction,
    ) -> crate::Result<()> {
        self.shared.register_native(
            namespace,
            function_id,
            HOST_OWNER,
            FunctionDef {
                kind: if def.kind == FunctionKind::Http {
                    FunctionKind::Http
                } else {
                    FunctionKind::Local
                },
                ..def
            },
            Arc::new(function),
        )
    }

    /// Serves the trigger type `(namespace, id)` from this process (owner [`HOST_OWNER`]): the
    /// provider receives every binding of that type, including those that waited for one.
    pub fn register_trigger_type(
        &self,
        namespace: &str,
        id: &str,
        description: &str,
        provider: impl TriggerProvider,
    ) -> crate::Result<()> {
        self.shared.add_native_trigger_type(
            namespace,
            id,
            description,
            Arc::new(provider),
            HOST_OWNER,
        )
    }

    /// Stops serving a trigger type registered by the host; its bindings wait for another
    /// provider. False when the host did not provide it.
    pub fn unregister_trigger_type(&self, namespace: &str, id: &str) -> bool {
        let Some(removed) = self
            .shared
            .trigger_types
            .unregister(namespace, id, HOST_OWNER)
        else {
            return false;
        };
        for slot in self.shared.bindings.active_for(namespace, id) {
            if let Provider::Native(native) = &removed.provider {
                native.unregister(&slot.binding);
            }
            self.shared.activate(&slot.binding);
        }
        true
    }

    /// Binds a function to a trigger type, like `engine::register_trigger` (the binding is not
    /// tied to a connection). Waits for the provider's verdict; returns the binding id, or the
    /// provider's refusal (`trigger_registration_failed`).
    pub async fn register_trigger(&self, spec: TriggerSpec) -> Result<String, ErrorBody> {
        let namespace = spec
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        let binding = TriggerBinding {
            id: spec.id.unwrap_or_else(uuid),
            trigger_type: spec.trigger_type,
            function_id: spec.function_id,
            origin_namespace: namespace.clone(),
            namespace,
            trigger_namespace: spec.trigger_namespace,
            config: spec.config,
            metadata: spec.metadata,
            owner: None,
        };
        self.shared.bind(binding).await
    }

    /// Removes a binding (made by anyone); false when there was none.
    pub fn unregister_trigger(&self, id: &str) -> bool {
        self.shared.unbind(id)
    }

    /// Removes a function registered by the host.
    pub fn unregister_function(&self, namespace: &str, function_id: &str) -> crate::Result<bool> {
        let removed = self
            .shared
            .functions
            .unregister(namespace, function_id, HOST_OWNER)?;
        if removed {
            self.shared.functions_changed();
        }
        Ok(removed)
    }

    /// True once the engine has stopped.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// A handle that does not keep the engine alive (for what the engine itself owns, like a
    /// trigger provider, which would otherwise hold it in a cycle).
    pub fn downgrade(&self) -> WeakEngineRef {
        WeakEngineRef {
            shared: Arc::downgrade(&self.shared),
        }
    }
}

/// An [`EngineRef`] that does not keep the engine alive; see [`EngineRef::downgrade`].
#[derive(Clone)]
pub struct WeakEngineRef {
    shared: Weak<Shared>,
}

impl WeakEngineRef {
    /// The engine, while it exists.
    pub fn upgrade(&self) -> Option<EngineRef> {
        self.shared.upgrade().map(|shared| EngineRef { shared })
    }
}

impl std::fmt::Debug for WeakEngineRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakEngineRef").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EngineRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineRef")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}
