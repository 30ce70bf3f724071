//! The worker client: a Rust program (and, through the binding, the Python SDK) becomes a worker
//! of any iii-compatible engine over the worker WebSocket (PROTOCOL.md sections 1 to 4).
//!
//! Functions are served by the same [`NativeFunction`] handlers the embedded engine runs, so a
//! handler written for [`crate::engine::Engine`] also works here unchanged.
//!
//! ```no_run
//! use fnmesh_core::client::{CallOptions, Client};
//! use fnmesh_core::function::{async_fn, Outcome};
//! use fnmesh_core::registry::FunctionDef;
//!
//! # async fn run() -> Result<(), fnmesh_core::client::ClientError> {
//! let client = Client::builder("ws://127.0.0.1:49134")
//!     .worker_name("orders")
//!     .function(
//!         "orders::ping",
//!         FunctionDef::default(),
//!         async_fn(|_data| async { Outcome::json("pong") }),
//!     )
//!     .connect()
//!     .await?;
//! let data = serde_json::value::to_raw_value(&serde_json::json!({})).unwrap();
//! let listing = client.call("engine::functions::list", data, CallOptions::default()).await?;
//! println!("{}", listing.map(|r| r.get().to_owned()).unwrap_or_default());
//! client.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Behaviour (PROTOCOL.md is the authority):
//! * On every (re)connect the client sends, in order: `reattach` (when it knows a previous
//!   `worker_id` and token), every `registerfunction` with the same ids, the messages queued
//!   while offline (at most [`MAX_QUEUED`], oldest dropped), then `engine::workers::register`
//!   as a void call. It does not wait for `workerregistered` first, like the iii SDKs.
//! * Connection loss fails every call already sent with `invocation_stopped`: the engine halts
//!   the invocations of a closed connection (section 1.5), so their answers can never arrive.
//!   Calls made while offline are queued and keep waiting for their timeout.
//! * It reconnects with exponential backoff and jitter ([`Backoff`]) until
//!   [`Client::shutdown`], or until the engine rejects the worker with a code other than
//!   `FUNCTION_NAMESPACE_CONFLICT` (section 2.11: fatal, no reconnect).
//! * Only `ws://` URLs are supported (the crate is built without TLS).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

use crate::function::{Call, Completer, NativeFunction, Outcome, Reply};
use crate::invocation::{PendingTable, SWEEP_INTERVAL};
use crate::protocol::{
    self, ErrorBody, HttpInvocationRef, InvocationResult, InvokeFunction, Message, RawJson,
    Reattach, RegisterFunction, RegisterTrigger, TriggerAction, UnregisterFunction,
    UnregisterTrigger,
};
use crate::registry::FunctionDef;
use crate::triggers::TriggerSpec;

/// Most messages kept while offline; the oldest is dropped first (the iii SDKs keep 1000).
pub const MAX_QUEUED: usize = 1000;
/// Default client-side bound on an outbound call (iii SDK `invocation_timeout_ms`).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default interval between WebSocket pings; the connection is dead after twice this without
/// any inbound frame (the iii Rust and Node SDKs: 20 s / 60 s).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(20);
/// Default bound on one connection attempt (TCP connect plus WebSocket upgrade).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time [`ClientBuilder::connect`] waits for the first connection.
pub const DEFAULT_FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

const DEFAULT_NAMESPACE: &str = "default";
const WORKERS_REGISTER: &str = "engine::workers::register";

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// Errors of the worker client. [`ClientError::code`] gives the iii code of each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The called function (or the engine on its behalf) answered with an error.
    #[error("{}: {}", .0.code, .0.message)]
    Invocation(ErrorBody),

    /// No answer within the call's timeout (code `TIMEOUT`). A late answer is ignored.
    #[error("invocation timed out after {0} ms")]
    Timeout(u64),

    /// The connection the call was sent on closed before the answer came
    /// (code `invocation_stopped`).
    #[error("invocation stopped: {0}")]
    Stopped(String),

    /// The client was shut down (code `SHUTDOWN`).
    #[error("the client is shut down")]
    Shutdown,

    /// The first connection could not be made in time.
    #[error("could not connect to {url}: {reason}")]
    Connect {
        /// The engine URL.
        url: String,
        /// The last failure.
        reason: String,
    },

    /// The engine refused this worker for good (section 2.11); the client stopped.
    #[error("registration rejected by the engine ({code}) in namespace '{namespace}'")]
    Rejected {
        /// The `registrationrejected` code, e.g. `WORKER_NAMESPACE_CONFLICT`.
        code: String,
        /// The namespace of the rejection.
        namespace: String,
    },

    /// An argument that can never be valid (a bad URL, an empty function id).
    #[error(transparent)]
    Core(#[from] crate::Error),
}

impl ClientError {
    /// The iii error code: the remote code for [`ClientError::Invocation`], otherwise the code
    /// the iii SDKs produce locally.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Invocation(body) => &body.code,
            ClientError::Timeout(_) => "TIMEOUT",
            ClientError::Stopped(_) => "invocation_stopped",
            ClientError::Shutdown => "SHUTDOWN",
            ClientError::Connect { .. } => "CONNECTION_FAILED",
            ClientError::Rejected { code, .. } => code,
            ClientError::Core(e) => e.code(),
        }
    }

    /// The error as an [`ErrorBody`] (what a handler would send back to its own caller).
    pub fn to_error_body(&self) -> ErrorBody {
        match self {
            ClientError::Invocation(body) => body.clone(),
            other => ErrorBody::new(other.code(), other.to_string()),
        }
    }
}

/// Reconnect schedule: the n-th retry waits `min(initial * factor^n, max)`, scaled by a random
/// factor in `1 ± jitter`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Growth per attempt.
    pub factor: f64,
    /// Cap on the delay.
    pub max: Duration,
    /// Relative jitter, 0.0 to 1.0.
    pub jitter: f64,
}

impl Default for Backoff {
    /// PROTOCOL.md 1.5: 1 000 ms, x2, capped at 30 000 ms, ±30 %.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(1000),
            factor: 2.0,
            max: Duration::from_millis(30_000),
            jitter: 0.3,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based), jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.initial.as_secs_f64() * self.factor.max(1.0).powi(attempt.min(64) as i32);
        let capped = base.min(self.max.as_secs_f64()).max(0.0);
        let jitter = self.jitter.clamp(0.0, 1.0);
        // A uniform number in [-1, 1) from a v4 UUID: no extra dependency for one random draw.
        let unit = (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64;
        let scaled = capped * (1.0 + jitter * (unit * 2.0 - 1.0));
        Duration::from_secs_f64(scaled.max(0.0))
    }
}
pub use crate::function::CallOptions;

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

// ---------------------------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------------------------

struct Settings {
    url: String,
    worker_name: String,
    namespace: Option<String>,
    auth_token: Option<String>,
    backoff: Backoff,
    keepalive: Duration,
    connect_timeout: Duration,
    first_connect_timeout: Duration,
    call_timeout: Duration,
}

/// Configures and connects a [`Client`].
pub struct ClientBuilder {
    settings: Settings,
    functions: Vec<(String, FunctionDef, Arc<dyn NativeFunction>)>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.settings.url)
            .field("worker_name", &self.settings.worker_name)
            .field("functions", &self.functions.len())
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The worker name reported through `engine::workers::register` (default: env
    /// `III_WORKER_NAME`, else `<hostname>:<pid>`).
    pub fn worker_name(mut self, name: impl Into<String>) -> Self {
        self.settings.worker_name = name.into();
        self
    }

    /// The worker's namespace (default: env `III_NAMESPACE`, else none, i.e. `default`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.settings.namespace = Some(namespace.into());
        self
    }

    /// Sends `Authorization: Bearer <token>` on the upgrade (PROTOCOL.md 11.5).
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.settings.auth_token = Some(token.into());
        self
    }

    /// The reconnect schedule (default [`Backoff::default`]).
    pub fn reconnect(mut self, backoff: Backoff) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// Interval between WebSocket pings; twice this without any inbound frame is a dead
    /// connection (default [`DEFAULT_KEEPALIVE`]).
    pub fn keepalive(mut self, interval: Duration) -> Self {
        self.settings.keepalive = interval.max(Duration::from_millis(10));
        self
    }

    /// Bound on one connection attempt (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long [`ClientBuilder::connect`] waits for the first connection, retrying with
    /// backoff meanwhile (default [`DEFAULT_FIRST_CONNECT_TIMEOUT`]).
    pub fn first_connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.first_connect_timeout = timeout;
        self
    }

    /// Default bound on outbound calls (default [`DEFAULT_CALL_TIMEOUT`]).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.settings.call_timeout = timeout;
        self
    }

    /// Serves a function from the first connection on.
    pub fn function(
        mut self,
        function_id: impl Into<String>,
        def: FunctionDef,
        handler: impl NativeFunction,
    ) -> Self {
        self.functions
            .push((function_id.into(), def, Arc::new(handler)));
        self
    }

    /// Starts the client and waits until the first connection is open and its registrations
    /// are sent. Fails with [`ClientError::Connect`] when that does not happen within the
    /// first-connect timeout; later losses are retried forever. Must run inside a tokio runtime.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let settings = self.settings;
        let request = settings
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| crate::Error::InvalidArgument(format!("bad engine URL: {e}")))?;
        if request.uri().scheme_str() != Some("ws") {
            return Err(crate::Error::InvalidArgument(format!(
                "only ws:// engine URLs are supported, not '{}'",
                settings.url
            ))
            .into());
        }
        let mut functions = HashMap::new();
        for (id, def, handler) in self.functions {
            let entry = FunctionEntry::new(&id, &def, handler, None)?;
            functions.insert(id, entry);
        }
        let (state_tx, mut state_rx) = watch::channel(ClientState::Connecting);
        let (stop_tx, stop_rx) = watch::channel(false);
        let first_connect_timeout = settings.first_connect_timeout;
        let inner = Arc::new(Inner {
            settings,
            link: Mutex::new(Link {
                tx: None,
                queued: VecDeque::new(),
                functions,
                triggers: HashMap::new(),
            }),
            pending: PendingTable::new(),
            inbound: DashMap::new(),
            identity: Mutex::new(None),
            state: state_tx,
            stop: stop_tx,
            last_error: Mutex::new(None),
            rejected: AtomicBool::new(false),
            trigger_errors: DashMap::new(),
        });
        let supervisor = tokio::spawn(supervise(inner.clone(), stop_rx.clone()));
        tokio::spawn(sweep(Arc::downgrade(&inner), stop_rx));
        let client = Client {
            inner: inner.clone(),
            guard: Arc::new(StopOnDrop {
                inner: Arc::downgrade(&inner),
                supervisor: Mutex::new(Some(supervisor)),
            }),
        };
        let connected = matches!(
            tokio::time::timeout(
                first_connect_timeout,
                state_rx.wait_for(|s| matches!(s, ClientState::Connected | ClientState::Closed)),
            )
            .await
            .map(|r| r.map(|state| *state)),
            Ok(Ok(ClientState::Connected))
        );
        if connected {
            return Ok(client);
        }
        let reason = lock(&inner.last_error)
            .clone()
            .unwrap_or_else(|| "timed out".to_owned());
        client.shutdown().await;
        Err(ClientError::Connect {
            url: inner.settings.url.clone(),
            reason,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A worker connected (or reconnecting) to an engine. Cheap to clone; dropping the last clone
/// stops it like [`Client::shutdown`] (without waiting).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    guard: Arc<StopOnDrop>,
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
        let pid = std::process::id();
        let worker_name = std::env::var("III_WORKER_NAME").unwrap_or_else(|_| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "rust".to_owned());
            format!("{host}:{pid}")
        });
        ClientBuilder {
            settings: Settings {
                url: url.into(),
                worker_name,
                namespace: std::env::var("III_NAMESPACE").ok(),
                auth_token: None,
                backoff: Backoff::default(),
                keepalive: DEFAULT_KEEPALIVE,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                first_connect_timeout: DEFAULT_FIRST_CONNECT_TIMEOUT,
                call_timeout: DEFAULT_CALL_TIMEOUT,
            },
            functions: Vec::new(),
        }
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
                .insert(&invocation_id, pending, timeout)
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

    /// Fire-and-forget call (`action: void`, PROTOCOL.md 4.3): nothing comes back. Queued
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

    /// Registers an external HTTP function (PROTOCOL.md section 5): the engine calls
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
                "function_not_invokable",
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

struct StopOnDrop {
    inner: Weak<Inner>,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.stop.send_replace(true);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------------

struct FunctionEntry {
    /// The encoded `registerfunction`, replayed verbatim on every connect.
    frame: String,
    handler: Arc<dyn NativeFunction>,
}

impl FunctionEntry {
    fn new(
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
struct Link {
    tx: Option<mpsc::UnboundedSender<String>>,
    queued: VecDeque<String>,
    functions: HashMap<String, FunctionEntry>,
    /// Bindings this client made: binding id -> (trigger type, `registertrigger` frame).
    triggers: HashMap<String, (String, String)>,
}

struct PendingCall {
    tx: oneshot::Sender<Result<Option<RawJson>, ClientError>>,
    timeout_ms: u64,
}

struct Inner {
    settings: Settings,
    // NOTE: one std mutex guards the outbox, the offline queue and the function table so that
    // a reconnect's replay is atomic with respect to sends; it is held only for a channel send.
    // Contention under load is not measured yet.
    link: Mutex<Link>,
    pending: PendingTable<PendingCall>,
    /// Invocations being executed here: invocation id -> function id (needed by the reply).
    inbound: DashMap<Arc<str>, String>,
    /// `(worker_id, reattach_token)` of the last `workerregistered`.
    identity: Mutex<Option<(String, Option<String>)>>,
    state: watch::Sender<ClientState>,
    stop: watch::Sender<bool>,
    last_error: Mutex<Option<String>>,
    /// Set when the engine rejected the worker for good.
    rejected: AtomicBool,
    /// Refusals of this client's bindings, by binding id.
    trigger_errors: DashMap<String, ErrorBody>,
}

impl Inner {
    fn call_namespace(&self, function_id: &str, explicit: Option<String>) -> Option<String> {
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
    fn send_locked(&self, link: &mut Link, frame: String, queue: bool) {
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

    fn send_now(&self, frame: String) {
        let mut link = lock(&self.link);
        self.send_locked(&mut link, frame, false);
    }

    fn closed_error(&self) -> ClientError {
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

    fn finish_closed(&self, error: ClientError) {
        self.state.send_replace(ClientState::Closed);
        for (_, call) in self.pending.drain_where(|_| true) {
            let _ = call.tx.send(Err(error.clone()));
        }
    }

    /// Every frame from the engine.
    fn on_frame(self: &Arc<Self>, frame: &[u8]) {
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
                if r.code == "FUNCTION_NAMESPACE_CONFLICT" {
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
                    "function_not_found",
                    format!("Function {} not found", invoke.function_id),
                );
                self.send_result(&invocation_id, invoke.function_id, Outcome::Failure(body));
            }
            return;
        };
        if answered {
            self.inbound
                .insert(invocation_id.clone(), invoke.function_id.clone());
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

    fn worker_register_frame(&self) -> String {
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
        if let Some((_, function_id)) = self.inbound.remove(invocation_id) {
            self.send_result(invocation_id, function_id, outcome);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Background tasks
// ---------------------------------------------------------------------------------------------

type Socket = WebSocketStream<TcpStream>;

/// Connects, serves, and reconnects with backoff until told to stop.
async fn supervise(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut attempt: u32 = 0;
    loop {
        if *stop.borrow() {
            break;
        }
        let connected = tokio::select! {
            r = connect_once(&inner) => r,
            _ = stopped(&mut stop) => break,
        };
        match connected {
            Ok(socket) => {
                attempt = 0;
                let (tx, rx) = mpsc::unbounded_channel();
                replay(&inner, tx);
                inner.state.send_replace(ClientState::Connected);
                info!(url = %inner.settings.url, "connected to the engine");
                let reason = run_connection(&inner, socket, rx, stop.clone()).await;
                let stopping = *stop.borrow();
                let error = if stopping {
                    inner.closed_error()
                } else {
                    ClientError::Stopped(format!("connection lost: {reason}"))
                };
                lose_connection(&inner, error);
                if stopping {
                    break;
                }
                warn!(url = %inner.settings.url, "connection lost ({reason}); reconnecting");
            }
            Err(reason) => {
                debug!(url = %inner.settings.url, attempt, "connection attempt failed: {reason}");
                *lock(&inner.last_error) = Some(reason);
            }
        }
        if *inner.state.borrow() != ClientState::Connecting {
            inner.state.send_replace(ClientState::Reconnecting);
        }
        let delay = inner.settings.backoff.delay(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => break,
        }
    }
    let error = inner.closed_error();
    inner.finish_closed(error);
}

async fn connect_once(inner: &Inner) -> Result<Socket, String> {
    let mut request = inner
        .settings
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if let Some(token) = &inner.settings.auth_token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
        request.headers_mut().insert("authorization", value);
    }
    let host = request.uri().host().unwrap_or("127.0.0.1").to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let attempt = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(crate::server::READ_BUFFER_BYTES);
        let (socket, _response) =
            tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
                .await
                .map_err(|e| e.to_string())?;
        Ok::<_, String>(socket)
    };
    match tokio::time::timeout(inner.settings.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err("connection attempt timed out".to_owned()),
    }
}

/// Queues, in protocol order, what every new connection starts with, then makes the connection
/// the live outbox (all under the link lock, so no send slips in between).
fn replay(inner: &Inner, tx: mpsc::UnboundedSender<String>) {
    let identity = lock(&inner.identity).clone();
    let mut link = lock(&inner.link);
    if let Some((previous_worker_id, Some(reattach_token))) = identity {
        let frame = Message::Reattach(Reattach {
            previous_worker_id,
            reattach_token,
            ..Reattach::default()
        });
        let _ = tx.send(frame.to_text());
    }
    for entry in link.functions.values() {
        let _ = tx.send(entry.frame.clone());
    }
    for (_, frame) in link.triggers.values() {
        let _ = tx.send(frame.clone());
    }
    for frame in link.queued.drain(..) {
        let _ = tx.send(frame);
    }
    let _ = tx.send(inner.worker_register_frame());
    link.tx = Some(tx);
}

/// Detaches the dead connection and stops the calls sent on it (PROTOCOL.md 1.5: the engine
/// halted them, their answers can never come).
fn lose_connection(inner: &Inner, error: ClientError) {
    let mut link = lock(&inner.link);
    link.tx = None;
    let stopped = inner.pending.drain_where(|_| true);
    drop(link);
    for (_, call) in stopped {
        let _ = call.tx.send(Err(error.clone()));
    }
    // The answers of invocations running here would go nowhere: the engine stopped them.
    inner.inbound.clear();
}

/// Serves one connection until it dies or the client stops; returns why it ended.
async fn run_connection(
    inner: &Arc<Inner>,
    mut socket: Socket,
    mut outbox: mpsc::UnboundedReceiver<String>,
    mut stop: watch::Receiver<bool>,
) -> String {
    let keepalive = inner.settings.keepalive;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_inbound = Instant::now();
    loop {
        // Not `biased`: a steady stream of outbound frames must not starve the reads.
        tokio::select! {
            _ = stopped(&mut stop) => {
                let _ = socket
                    .close(Some(CloseFrame { code: 1000.into(), reason: "worker shutting down".into() }))
                    .await;
                return "shutdown".to_owned();
            }
            frame = outbox.recv() => {
                let Some(frame) = frame else { return "outbox closed".to_owned() };
                // NOTE: frames already waiting are fed together and flushed once; the gain over
                // one flush per frame is not measured yet.
                if let Err(e) = socket.feed(WsMessage::text(frame)).await {
                    return format!("send failed: {e}");
                }
                while let Ok(frame) = outbox.try_recv() {
                    if let Err(e) = socket.feed(WsMessage::text(frame)).await {
                        return format!("send failed: {e}");
                    }
                }
                if let Err(e) = socket.flush().await {
                    return format!("send failed: {e}");
                }
            }
            incoming = socket.next() => {
                last_inbound = Instant::now();
                match incoming {
                    None => return "closed by the engine".to_owned(),
                    Some(Err(e)) => return format!("read failed: {e}"),
                    Some(Ok(WsMessage::Text(text))) => inner.on_frame(text.as_bytes()),
                    Some(Ok(WsMessage::Binary(bytes))) => inner.on_frame(&bytes),
                    Some(Ok(WsMessage::Close(frame))) => {
                        return match frame {
                            Some(f) => format!("closed by the engine ({} {})", f.code, f.reason),
                            None => "closed by the engine".to_owned(),
                        };
                    }
                    // Pings are answered by tungstenite on the next write or flush.
                    Some(Ok(_)) => {}
                }
            }
            _ = ping.tick() => {
                if last_inbound.elapsed() >= keepalive * 2 {
                    return format!("no frame from the engine for {} ms", duration_ms(keepalive * 2));
                }
                if let Err(e) = socket.send(WsMessage::Ping(Default::default())).await {
                    return format!("ping failed: {e}");
                }
            }
        }
    }
}

/// Fails expired outbound calls with `TIMEOUT`.
async fn sweep(inner: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    // NOTE: reuses the engine's sweep interval (invocation.rs: 133 us per 10 000 pending calls
    // per sweep); a timeout fires up to 50 ms late.
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        for (_, call) in inner.pending.expired(Instant::now()) {
            let _ = call.tx.send(Err(ClientError::Timeout(call.timeout_ms)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (single assignments), so
    // poisoning is ignored rather than spread.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves once the stop flag is set (or its sender is gone), holding no borrow afterwards.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn null_json() -> RawJson {
    RawValue::NULL.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff::default();
        for _ in 0..100 {
            let d0 = b.delay(0).as_secs_f64();
            assert!((0.7..=1.3).contains(&d0), "{d0}");
            let d10 = b.delay(10).as_secs_f64();
            assert!((21.0..=39.0).contains(&d10), "{d10}");
        }
        let none = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(none.delay(2), Duration::from_secs(4));
    }

    #[test]
    fn error_codes() {
        assert_eq!(ClientError::Timeout(5).code(), "TIMEOUT");
        assert_eq!(
            ClientError::Stopped("x".into()).code(),
            "invocation_stopped"
        );
        let e = ClientError::Invocation(ErrorBody::new("boom", "bad"));
        assert_eq!(e.code(), "boom");
        assert_eq!(e.to_string(), "boom: bad");
    }
}
