//! The settings of the engine and of its standard services, in one place: [`EngineConfig`]
//! and the parts it aggregates ([`HttpConfig`], [`QueueSettings`], ...; the worker listener's
//! [`ServerConfig`] lives with the server). Plain data with defaults and validation, no
//! behaviour, so that it sits at the bottom of the crate's layers: the engine reads its settings
//! from here without depending on the services that use them (see [`crate::engine`] for the
//! layering). The types are re-exported where they were first defined
//! (`fnmesh_core::engine::EngineConfig`, `fnmesh_core::http::HttpConfig`,
//! `fnmesh_core::queue::service::QueueSettings`, `fnmesh_core::queue::QueueConfig`, ...).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::access::AccessConfig;
use crate::invocation::DEFAULT_INVOCATION_TIMEOUT;
use crate::registry::ConflictPolicy;
use crate::server::ServerConfig;

/// Every engine setting. `Default` gives docs/protocol.md's defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The worker WebSocket listener.
    pub server: ServerConfig,
    /// The HTTP trigger's server (opened when the first `http` route is bound).
    pub http: HttpConfig,
    /// What a second owner of a function gets: a replica (default) or iii's rejection.
    pub function_conflict: ConflictPolicy,
    /// Engine-side bound on a pending call (docs/protocol.md 11.2).
    pub invocation_timeout: Duration,
    /// How long registrations wait for `engine::workers::register` to name the namespace.
    pub namespace_grace: Duration,
    /// Minimum time between two `engine::functions-available` fires.
    pub functions_available_interval: Duration,
    /// How long `engine::register_trigger` waits for a worker provider's answer.
    pub trigger_ack_timeout: Duration,
    /// The Redis that engines sharing cron jobs take each tick's lock in, so that a tick fires on
    /// one of them only (see [`RedisLock`](crate::cron::RedisLock) for the URL forms); `None`:
    /// this engine alone ([`LocalLock`](crate::cron::LocalLock)). An invalid URL fails
    /// [`EngineBuilder::start`](crate::engine::EngineBuilder::start).
    pub cron_redis_url: Option<String>,
    /// Durable queues (`action: enqueue`, `engine::queue::*`, `durable:subscriber`); `None`
    /// turns them off (an enqueue then fails with `enqueue_error`). Default: a SQLite file at
    /// `.fnmesh/queues.sqlite3`, created at the first enqueue.
    pub queues: Option<QueueSettings>,
    /// Where `state::*` keeps its values (docs/protocol.md 6.8); `None` turns state off (its
    /// functions and the `state` trigger type are not registered). Default: a SQLite file at
    /// `.fnmesh/state.sqlite3`, beside the queue file, opened at the first state call.
    pub state: Option<StateBackend>,
    /// Streams (`stream::*`, the `stream` trigger type and the client stream WebSocket,
    /// docs/protocol.md 6.10); `None` turns them off. Default: a SQLite file at
    /// `.fnmesh/streams.sqlite3` and the WebSocket on a free loopback port.
    pub streams: Option<StreamsConfig>,
    /// The Redis that `publish` fans messages out through, so that the `subscribe` bindings of
    /// every engine sharing it receive them (docs/protocol.md 6.9); `None`: this engine only.
    pub pubsub_redis_url: Option<String>,
    /// Calls one worker connection may have in flight (made by it and not answered yet); one
    /// more fails at once with `too_many_calls_in_flight`.
    pub max_calls_in_flight_per_connection: usize,
    /// Registrations one connection may have waiting for `engine::workers::register` to name
    /// its namespace (docs/protocol.md 3.4); one more closes the connection with 1008.
    pub max_buffered_registrations: usize,
    /// Bytes of the frames of those waiting registrations; past it, the same.
    pub max_buffered_registration_bytes: usize,
    /// Further worker listeners beside [`EngineConfig::server`], each with its own address,
    /// token and access control (docs/access-control.md). Empty by default.
    pub listeners: Vec<ListenerConfig>,
    /// Where the Prometheus `/metrics` endpoint listens (docs/observability.md); `None` (the
    /// default of an embedded engine) turns metrics off: no endpoint, and calls record nothing.
    pub metrics_addr: Option<SocketAddr>,
    /// The in-memory store of telemetry that `engine::traces::list` and friends read
    /// (docs/observability.md).
    pub telemetry_store: TelemetryStoreConfig,
    /// The share of new traces the engine records spans for, 0 to 1 (docs/observability.md,
    /// "Traces"); a caller's sampled flag is always honoured. `None`: `OTEL_TRACES_SAMPLER` and
    /// `OTEL_TRACES_SAMPLER_ARG`, else every trace. Spans are made only while a sink that asks
    /// for them listens (an OTLP exporter; the telemetry store keeps them then, but does not ask).
    pub traces_sample_ratio: Option<f64>,
    /// The `service.name` of the engine's spans; `None`: `OTEL_SERVICE_NAME`, else `fnmesh`.
    pub otel_service_name: Option<String>,
    /// Where the OTLP exporter sends traces, logs and metrics (`http://host:4318` for
    /// OTLP/HTTP, `http://host:4317` with protocol `grpc`); `None`: the `OTEL_EXPORTER_OTLP_*`
    /// variables, and no exporter when they name no endpoint.
    pub otlp_endpoint: Option<String>,
    /// Test hook: how long a closed connection's cleanup is put off, as on a loaded machine
    /// where the old connection of a reconnecting worker is torn down late. Zero (the default):
    /// at once.
    #[doc(hidden)]
    pub cleanup_delay: Duration,
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
            state: Some(StateBackend::default()),
            streams: Some(StreamsConfig::default()),
            pubsub_redis_url: None,
            max_calls_in_flight_per_connection: 10_000,
            max_buffered_registrations: 10_000,
            max_buffered_registration_bytes: 128 * 1024 * 1024,
            listeners: Vec::new(),
            metrics_addr: None,
            telemetry_store: TelemetryStoreConfig::default(),
            traces_sample_ratio: None,
            otel_service_name: None,
            otlp_endpoint: None,
            cleanup_delay: Duration::ZERO,
        }
    }
}

/// Bounds of the in-memory telemetry store (docs/observability.md): the spans, log records and
/// metrics workers send on `/otel` (and the engine's spans while they are exported), the oldest
/// evicted first. A count of 0 keeps none of that signal; all three 0 turns the store off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryStoreConfig {
    /// Spans kept.
    pub spans: usize,
    /// Log records kept.
    pub logs: usize,
    /// Metrics kept (one per metric per export, with its data points).
    pub metrics: usize,
    /// Bytes (estimated) each of the three keeps at most.
    pub bytes: usize,
}

impl Default for TelemetryStoreConfig {
    fn default() -> Self {
        TelemetryStoreConfig {
            spans: 10_000,
            logs: 10_000,
            metrics: 10_000,
            bytes: 16 * 1024 * 1024,
        }
    }
}

impl TelemetryStoreConfig {
    /// Whether the store keeps anything.
    pub fn enabled(&self) -> bool {
        self.bytes > 0 && (self.spans > 0 || self.logs > 0 || self.metrics > 0)
    }
}

/// One more worker listener (docs/access-control.md): its socket settings, and the access
/// control of the connections it accepts (`None`: the default listener's behaviour, anything
/// goes).
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Address, token, frame limit and the rest, as for the default listener.
    pub server: ServerConfig,
    /// Auth function, `expose_functions`, hooks and middleware.
    pub access: Option<AccessConfig>,
}

/// One listener as written in settings (the shape of iii's `iii-worker-manager` config, plus
/// fnmesh's `auth_token` and `hook_timeout_ms`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerSpec {
    host: Option<String>,
    port: u16,
    auth_token: Option<String>,
    middleware_function_id: Option<String>,
    hook_timeout_ms: Option<u64>,
    rbac: Option<RbacSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RbacSpec {
    auth_function_id: Option<String>,
    #[serde(default)]
    expose_functions: Vec<crate::access::FunctionFilter>,
    on_function_registration_function_id: Option<String>,
    on_trigger_registration_function_id: Option<String>,
    on_trigger_type_registration_function_id: Option<String>,
}

/// Reads further listeners from JSON: a list of `{host?, port, auth_token?,
/// middleware_function_id?, hook_timeout_ms?, rbac?: {auth_function_id?, expose_functions?,
/// on_function_registration_function_id?, on_trigger_registration_function_id?,
/// on_trigger_type_registration_function_id?}}` (docs/access-control.md). Each starts from
/// `base` (the default listener's settings); one with neither `rbac` nor a middleware is
/// unrestricted. Unknown keys are refused.
pub fn listeners_from_json(json: &str, base: &ServerConfig) -> Result<Vec<ListenerConfig>, String> {
    let specs: Vec<ListenerSpec> =
        serde_json::from_str(json).map_err(|e| format!("listeners: {e}"))?;
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let ip = match &spec.host {
            Some(host) => {
                let host = if host == "localhost" {
                    "127.0.0.1"
                } else {
                    host.as_str()
                };
                host.parse()
                    .map_err(|_| format!("listeners: host {host:?} is not an IP address"))?
            }
            None => base.addr.ip(),
        };
        let mut server = base.clone();
        server.addr = SocketAddr::new(ip, spec.port);
        server.auth_token = spec.auth_token.filter(|t| !t.is_empty());
        let access = match (spec.rbac, spec.middleware_function_id) {
            (None, None) => None,
            (rbac, middleware) => {
                let mut access = AccessConfig::new();
                if let Some(ms) = spec.hook_timeout_ms {
                    access.hook_timeout = Duration::from_millis(ms.max(1));
                }
                access.middleware_function_id = middleware;
                if let Some(r) = rbac {
                    access.auth_function_id = r.auth_function_id;
                    access.expose_functions = r.expose_functions;
                    access.on_function_registration_function_id =
                        r.on_function_registration_function_id;
                    access.on_trigger_registration_function_id =
                        r.on_trigger_registration_function_id;
                    access.on_trigger_type_registration_function_id =
                        r.on_trigger_type_registration_function_id;
                } else {
                    // A middleware alone: every function may be called, through it.
                    access.expose_functions = vec![crate::access::FunctionFilter::Id {
                        glob: "*".into(),
                        namespace: None,
                    }];
                }
                Some(access)
            }
        };
        out.push(ListenerConfig { server, access });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// HTTP trigger
// ---------------------------------------------------------------------------------------------

/// Settings of the HTTP trigger server.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where the listener binds (port 0 picks a free port).
    pub addr: SocketAddr,
    /// Open the listener when the engine starts (an unknown route then answers 404 from the
    /// start, as iii does), instead of with the first route (so an engine nobody binds HTTP
    /// routes on never takes the port).
    pub listen_at_start: bool,
    /// Largest request body accepted; larger ones get 413.
    pub body_limit: usize,
    /// How long a request may take (middleware, condition and function); then 504.
    pub timeout: Duration,
    /// Cross-origin settings; `None` is permissive (any origin), as iii is by default.
    pub cors: Option<CorsConfig>,
    /// Requests served at once; further ones wait for a slot. A request takes its slot only
    /// once its whole body is in, so slow senders cannot hold the slots.
    pub max_in_flight: usize,
    /// How long a client may take to send a request's headers (the first request's, and each
    /// next one's on a kept-alive connection); then the connection is closed.
    pub header_read_timeout: Duration,
    /// How long a request body may go without a byte arriving; then 408 and the connection is
    /// closed.
    pub body_read_timeout: Duration,
    /// Open connections; further clients wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Request body bytes buffered at once over all connections (at least `body_limit`);
    /// readers wait for room, so many large uploads at once cannot exhaust memory.
    pub body_buffer_bytes: usize,
    /// Serve the console (a page showing functions, workers, triggers, queues and recent calls)
    /// on this port under `console_path`. It is served only when the listener is on a loopback
    /// address, or when `console_token` is set (docs/cli-and-console.md).
    pub console_enabled: bool,
    /// Where the console is served (a path starting with `/`).
    pub console_path: String,
    /// The token the console asks for (a login form sets it as a cookie); required whenever
    /// set, and the only way to serve the console beyond loopback.
    pub console_token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 3111)),
            listen_at_start: false,
            body_limit: 16 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            cors: None,
            max_in_flight: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            body_buffer_bytes: 256 * 1024 * 1024,
            console_enabled: true,
            console_path: "/_console".to_owned(),
            console_token: None,
        }
    }
}

/// Which origins may call the routes from a browser.
#[derive(Debug, Clone, Default)]
pub struct CorsConfig {
    /// Allowed origins (`*` for any); an origin not listed gets no CORS headers.
    pub allowed_origins: Vec<String>,
    /// Methods announced to preflight requests (empty: the route methods).
    pub allowed_methods: Vec<String>,
    /// Request headers announced to preflight requests (empty: whatever was asked for).
    pub allowed_headers: Vec<String>,
    /// Whether credentials are allowed.
    pub allow_credentials: bool,
    /// How long a preflight answer may be cached, in seconds.
    pub max_age: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// Where state values live (setting `state_backend`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateBackend {
    /// In this process only: lost when it exits.
    Memory,
    /// A SQLite file (WAL, an fsync per commit), created at the first state call.
    Sqlite(PathBuf),
    /// Redis hashes at this URL, shared with other engines (change events reach every engine's
    /// `state` triggers).
    Redis(String),
}

impl Default for StateBackend {
    fn default() -> Self {
        StateBackend::Sqlite(PathBuf::from(".fnmesh/state.sqlite3"))
    }
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// The port of the client stream WebSocket under `fnmesh serve` (iii's): an embedded engine's
/// default is a free port instead ([`StreamsConfig::addr`]), so that several engines of one
/// machine (apps, tests) never fight over it.
pub const SERVE_STREAMS_PORT: u16 = 3112;

/// The streams' settings (docs/protocol.md 6.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamsConfig {
    /// Where items live: the state stores, with keys of their own.
    pub backend: StateBackend,
    /// Where the client stream WebSocket listens (port 0: any free port, read back with
    /// `Engine::streams_addr`). Default `127.0.0.1:0`; `fnmesh serve` uses
    /// [`SERVE_STREAMS_PORT`].
    pub addr: SocketAddr,
    /// Client connections open at once; one more is closed right after it connects.
    pub max_connections: usize,
    /// Subscriptions (`join`s) one connection may hold; one more closes it with 1008.
    pub max_subscriptions: usize,
    /// Bytes queued to one client and not yet written; past it the client is too slow and is
    /// dropped (never buffered without bound).
    pub outbound_bytes: usize,
    /// Largest frame (and message) a client may send; a bigger one closes it with 1009.
    pub max_frame_bytes: usize,
    /// A client silent this long (no frame, no answer to the pings sent at half this period)
    /// is dropped.
    pub idle_timeout: Duration,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            backend: StateBackend::Sqlite(PathBuf::from(".fnmesh/streams.sqlite3")),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_connections: 1024,
            max_subscriptions: 256,
            outbound_bytes: 4 * 1024 * 1024,
            max_frame_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Queues
// ---------------------------------------------------------------------------------------------

/// Where the messages live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueBackend {
    /// In this process only: lost when it exits.
    Memory,
    /// A SQLite file (WAL), created at the first enqueue.
    Sqlite(PathBuf),
    /// Redis Streams at this URL, shared with other engines.
    Redis(String),
}

/// How a SQLite queue file syncs its commits to disk (setting `queue_sqlite_synchronous`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SqliteSynchronous {
    /// `full`: an fsync per commit (group commit shares it among the writes waiting at once), so
    /// an acknowledged enqueue survives a power cut. The default.
    #[default]
    Full,
    /// `normal`: syncs at WAL checkpoints only; a crash of the process loses nothing, but a
    /// power cut can lose the last acknowledged commits (never corrupts the file). Faster.
    Normal,
}

impl SqliteSynchronous {
    /// `full` or `normal`.
    pub fn as_str(self) -> &'static str {
        match self {
            SqliteSynchronous::Full => "full",
            SqliteSynchronous::Normal => "normal",
        }
    }

    /// Reads `full` or `normal` (any case); `None` for anything else.
    pub fn parse(text: &str) -> Option<SqliteSynchronous> {
        match text.to_ascii_lowercase().as_str() {
            "full" => Some(SqliteSynchronous::Full),
            "normal" => Some(SqliteSynchronous::Normal),
            _ => None,
        }
    }
}

/// The queue settings of an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// The store.
    pub backend: QueueBackend,
    /// How the SQLite backend syncs its commits (`full`, the default, or `normal`).
    pub sqlite_synchronous: SqliteSynchronous,
    /// Named queues; a `default` queue with the default settings is added when absent.
    pub queues: Vec<QueueConfig>,
    /// How often an idle consumer looks for due retries and other engines' messages.
    pub poll_interval: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            backend: QueueBackend::Sqlite(PathBuf::from(".fnmesh/queues.sqlite3")),
            sqlite_synchronous: SqliteSynchronous::Full,
            queues: Vec::new(),
            poll_interval: Duration::from_millis(100),
        }
    }
}

/// Why queue settings are refused; the text names the queue and the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueConfigError {
    /// A queue with a blank name.
    #[error("a queue needs a non-empty name")]
    NoName,
    /// Two queues with one name.
    #[error("queue '{0}' is configured twice")]
    Duplicate(String),
    /// A queue with `concurrency` 0.
    #[error("queue '{0}': concurrency must be at least 1")]
    ZeroConcurrency(String),
    /// A queue with a `concurrency` above [`MAX_QUEUE_CONCURRENCY`].
    #[error("queue '{0}': concurrency must be at most {MAX_QUEUE_CONCURRENCY}")]
    ConcurrencyTooHigh(String),
    /// A queue with a zero `visibility_timeout`.
    #[error("queue '{0}': visibility_timeout must be positive")]
    ZeroVisibilityTimeout(String),
    /// A fifo queue without `message_group_field`.
    #[error("queue '{0}': a fifo queue needs message_group_field")]
    FifoWithoutGroupField(String),
    /// A standard queue with a `message_group_field`.
    #[error("queue '{0}': message_group_field needs type = \"fifo\"")]
    GroupFieldWithoutFifo(String),
    /// A queue `type` other than `standard` and `fifo`.
    #[error("queue '{name}': type must be \"standard\" or \"fifo\", not {kind:?}")]
    UnknownKind {
        /// The queue.
        name: String,
        /// The type given.
        kind: String,
    },
    /// A zero `poll_interval`.
    #[error("queue poll_interval must be positive")]
    ZeroPollInterval,
    /// The queues' JSON is not a table of queues.
    #[error("queues must be a table of queues: {0}")]
    NotATable(String),
    /// A queue's JSON entry has an unknown field or a field of the wrong type.
    #[error("queue '{name}': {reason}")]
    InvalidEntry {
        /// The queue.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// The most calls one queue's consumer keeps in flight on one engine. A larger value serves no
/// purpose (each call is a claimed message and a pending call) and a huge one would overflow the
/// consumer's semaphore, which aborts that queue's consumer.
pub const MAX_QUEUE_CONCURRENCY: usize = 10_000;

impl QueueSettings {
    /// Checks names and values; the error names the queue and the setting.
    pub fn validate(&self) -> Result<(), QueueConfigError> {
        let mut seen = std::collections::HashSet::new();
        for q in &self.queues {
            if q.name.trim().is_empty() {
                return Err(QueueConfigError::NoName);
            }
            if !seen.insert(q.name.as_str()) {
                return Err(QueueConfigError::Duplicate(q.name.clone()));
            }
            if q.concurrency == 0 {
                return Err(QueueConfigError::ZeroConcurrency(q.name.clone()));
            }
            if q.concurrency > MAX_QUEUE_CONCURRENCY {
                return Err(QueueConfigError::ConcurrencyTooHigh(q.name.clone()));
            }
            if q.visibility_timeout.is_zero() {
                return Err(QueueConfigError::ZeroVisibilityTimeout(q.name.clone()));
            }
            if let QueueKind::Fifo {
                message_group_field,
            } = &q.kind
            {
                if message_group_field.trim().is_empty() {
                    return Err(QueueConfigError::FifoWithoutGroupField(q.name.clone()));
                }
            }
        }
        if self.poll_interval.is_zero() {
            return Err(QueueConfigError::ZeroPollInterval);
        }
        Ok(())
    }
}

/// A queue's delivery order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum QueueKind {
    /// Oldest ready message first; groups are ignored.
    Standard,
    /// Strict order within each group; a message's group is the value of `message_group_field`
    /// in its `data` (an enqueue without it is refused).
    Fifo {
        /// The field of `data` that names the group.
        message_group_field: String,
    },
}

/// One named queue's settings (engine config, `[queues.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// The queue's name.
    pub name: String,
    /// Attempts after the first before a message is dead-lettered (3: four attempts in all).
    pub max_retries: u32,
    /// Delay before the first retry; doubled for each later one (1 s).
    pub backoff: Duration,
    /// Messages of this queue in flight at once in one engine (10).
    pub concurrency: usize,
    /// How long a claimed message stays invisible before it is claimed again (30 s). Longer
    /// than the slowest call, or a slow call is delivered twice.
    pub visibility_timeout: Duration,
    /// Delivery order.
    pub kind: QueueKind,
    /// Window in which an idempotency key drops duplicates (24 h).
    pub idempotency_window: Duration,
    /// How often a message may be put back without using an attempt (20): when its call never
    /// ran (`function_not_found`) or was stopped (`invocation_stopped`: its worker left, the
    /// engine stopped). Each release waits [`QueueConfig::release_delay`]; past this bound such
    /// a call counts as a failed attempt, so a message nobody can run still ends in the dead
    /// letters.
    pub max_releases: u32,
}

impl QueueConfig {
    /// A `standard` queue with the defaults.
    pub fn new(name: impl Into<String>) -> QueueConfig {
        QueueConfig {
            name: name.into(),
            max_retries: 3,
            backoff: Duration::from_millis(1000),
            concurrency: 10,
            visibility_timeout: Duration::from_secs(30),
            kind: QueueKind::Standard,
            idempotency_window: Duration::from_secs(24 * 3600),
            max_releases: 20,
        }
    }

    /// The wait before a message released `releases` times before (0 for the first release) is
    /// claimable again: 100 ms, doubled per release, at most 5 s.
    pub fn release_delay(&self, releases: u32) -> Duration {
        Duration::from_millis(100)
            .saturating_mul(2u32.saturating_pow(releases.min(16)))
            .min(Duration::from_secs(5))
    }

    /// The delay before attempt `attempt + 1` after attempt `attempt` (1-based) failed:
    /// `backoff * 2^(attempt-1)`, capped at one hour.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.backoff
            .saturating_mul(factor)
            .min(Duration::from_secs(3600))
    }
}
