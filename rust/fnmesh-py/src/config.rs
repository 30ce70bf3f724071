//! The engine's settings across the boundary: [`EngineSettings`] is read from the Python
//! `fnmesh.EngineConfig` dataclass (attribute by attribute, `#[derive(FromPyObject)]`) and turned
//! into the core's `EngineConfig`; its `Default`, made from the core's `Default`s, is what
//! `_native.engine_defaults()` hands Python, where the dataclass takes its defaults from.
//!
//! Adding an engine setting touches:
//! 1. the core: the field in `EngineConfig` (or `ServerConfig`, `HttpConfig`, `QueueSettings`)
//!    and its value in that struct's `Default`;
//! 2. this file: the field in [`EngineSettings`] (named as in Python, in the wire units: `_ms`
//!    integers for durations), its line in `Default` (read from the core's default) and its
//!    line in [`EngineSettings::into_core`];
//! 3. `python/fnmesh/engine.py`: the `EngineConfig` field with its docstring and
//!    `_DEFAULTS["name"]` as its default (plus a check in `__post_init__` if Python should
//!    refuse bad values before the engine starts).
//!
//! `tests/test_engine_config.py` checks that both sides name the same settings with the same
//! defaults. Settings served in Python only (`log_level`, `external_*`) live in the dataclass
//! alone.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fnmesh_core::config::{SqliteSynchronous, StateBackend, StreamsConfig};
use fnmesh_core::engine::EngineConfig;
use fnmesh_core::http::{CorsConfig, HttpConfig};
use fnmesh_core::queue::service::{queue_configs_from_json, QueueBackend, QueueSettings};
use fnmesh_core::registry::ConflictPolicy;
use pyo3::prelude::*;

use crate::errors::{to_py, IntoPyResult};

/// Threads of an embedded engine's tokio runtime (the binding's own setting).
const DEFAULT_WORKER_THREADS: usize = 2;

/// Every engine setting the Rust side reads, named as in `fnmesh.EngineConfig`.
#[derive(Debug, Clone, FromPyObject, IntoPyObject)]
pub(crate) struct EngineSettings {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `None`: the HTTP trigger server listens on `host` (the behaviour before the setting).
    pub(crate) http_host: Option<String>,
    pub(crate) http_port: u16,
    pub(crate) http_body_limit_bytes: usize,
    pub(crate) http_timeout_ms: u64,
    pub(crate) http_cors_origins: Option<Vec<String>>,
    pub(crate) http_header_read_timeout_ms: u64,
    pub(crate) http_body_read_timeout_ms: u64,
    pub(crate) http_max_connections: usize,
    pub(crate) http_body_buffer_bytes: usize,
    /// `None`: the host decides (`fnmesh serve` listens at start, an embedded engine does not).
    pub(crate) http_listen_at_start: Option<bool>,
    pub(crate) console_enabled: bool,
    pub(crate) console_path: String,
    pub(crate) console_token: Option<String>,
    pub(crate) auth_token: Option<String>,
    pub(crate) function_conflict: String,
    pub(crate) invocation_timeout_ms: u64,
    pub(crate) namespace_grace_ms: u64,
    pub(crate) max_frame_bytes: usize,
    pub(crate) handshake_timeout_ms: u64,
    pub(crate) outbound_queue: usize,
    pub(crate) outbound_bytes: usize,
    pub(crate) ping_interval_ms: u64,
    pub(crate) peer_timeout_ms: u64,
    pub(crate) functions_available_interval_ms: u64,
    pub(crate) trigger_ack_timeout_ms: u64,
    pub(crate) worker_threads: usize,
    pub(crate) cron_redis_url: Option<String>,
    pub(crate) queue_backend: String,
    pub(crate) queue_path: String,
    pub(crate) queue_redis_url: Option<String>,
    /// `full` or `normal` (`SqliteSynchronous`).
    pub(crate) queue_sqlite_synchronous: String,
    /// Named queues, as JSON text here (a dict of dicts in Python).
    #[pyo3(from_py_with = queues_to_json, into_py_with = queues_from_json)]
    pub(crate) queues: String,
    /// Further worker listeners, as JSON text here (a list of dicts in Python;
    /// docs/access-control.md).
    #[pyo3(from_py_with = queues_to_json, into_py_with = queues_from_json)]
    pub(crate) listeners: String,
    pub(crate) queue_poll_interval_ms: u64,
    /// `sqlite`, `memory`, `redis` or `off` (`StateBackend`).
    pub(crate) state_backend: String,
    pub(crate) state_path: String,
    /// `None`: `queue_redis_url`.
    pub(crate) state_redis_url: Option<String>,
    /// `local` or `redis`.
    pub(crate) pubsub_backend: String,
    /// `None`: `queue_redis_url`.
    pub(crate) pubsub_redis_url: Option<String>,
    pub(crate) max_calls_in_flight_per_connection: usize,
    pub(crate) max_buffered_registrations: usize,
    pub(crate) max_buffered_registration_bytes: usize,
    /// Where `/metrics` listens; `None` (`metrics_port`): metrics off.
    pub(crate) metrics_host: String,
    pub(crate) metrics_port: Option<u16>,
    /// The telemetry store's bounds (`TelemetryStoreConfig`).
    pub(crate) telemetry_store_spans: usize,
    pub(crate) telemetry_store_logs: usize,
    pub(crate) telemetry_store_metrics: usize,
    pub(crate) telemetry_store_bytes: usize,
    /// Share of new traces recorded (0 to 1); `None`: `OTEL_TRACES_SAMPLER*`, else all.
    pub(crate) traces_sample_ratio: Option<f64>,
    /// `None`: `OTEL_SERVICE_NAME`, else `fnmesh`.
    pub(crate) otel_service_name: Option<String>,
    /// `None`: the `OTEL_EXPORTER_OTLP_*` variables.
    pub(crate) otlp_endpoint: Option<String>,
    /// `stream::*`, the `stream` trigger type and the stream WebSocket, or none of them.
    pub(crate) streams_enabled: bool,
    /// `sqlite`, `memory` or `redis` (a `StateBackend`).
    pub(crate) streams_backend: String,
    pub(crate) streams_path: String,
    /// `None`: `queue_redis_url`.
    pub(crate) streams_redis_url: Option<String>,
    /// `None`: `host`.
    pub(crate) streams_host: Option<String>,
    /// `None`: the host decides (`fnmesh serve` 3112, an embedded engine any free port).
    pub(crate) streams_port: Option<u16>,
    pub(crate) streams_max_connections: usize,
    pub(crate) streams_max_subscriptions: usize,
    pub(crate) streams_outbound_bytes: usize,
    pub(crate) streams_max_frame_bytes: usize,
    pub(crate) streams_idle_timeout_ms: u64,
}

/// Test hook, not a setting: milliseconds by which a closed worker connection's cleanup is put
/// off (`EngineConfig::cleanup_delay`), to reproduce a late teardown (tests/test_faults.py).
const CLEANUP_DELAY_ENV: &str = "FNMESH_TEST_CLEANUP_DELAY_MS";

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

impl Default for EngineSettings {
    /// The core's defaults, in the Python dataclass's terms.
    fn default() -> Self {
        let core = EngineConfig::default();
        let fallback = QueueSettings::default();
        let queues = core.queues.as_ref().unwrap_or(&fallback);
        let (queue_backend, queue_redis_url) = match &queues.backend {
            QueueBackend::Memory => ("memory", None),
            QueueBackend::Sqlite(_) => ("sqlite", None),
            QueueBackend::Redis(url) => ("redis", Some(url.clone())),
        };
        let queue_path = match (&queues.backend, &fallback.backend) {
            (QueueBackend::Sqlite(path), _) | (_, QueueBackend::Sqlite(path)) => {
                path.to_string_lossy().into_owned()
            }
            _ => String::new(),
        };
        let (state_backend, state_redis_url) = match &core.state {
            None => ("off", None),
            Some(StateBackend::Memory) => ("memory", None),
            Some(StateBackend::Sqlite(_)) => ("sqlite", None),
            Some(StateBackend::Redis(url)) => ("redis", Some(url.clone())),
        };
        let state_path = match (&core.state, &StateBackend::default()) {
            (Some(StateBackend::Sqlite(path)), _) | (_, StateBackend::Sqlite(path)) => {
                path.to_string_lossy().into_owned()
            }
            _ => String::new(),
        };
        let streams = core.streams.clone().unwrap_or_default();
        let (streams_backend, streams_redis_url) = match &streams.backend {
            StateBackend::Memory => ("memory", None),
            StateBackend::Sqlite(_) => ("sqlite", None),
            StateBackend::Redis(url) => ("redis", Some(url.clone())),
        };
        let streams_path = match (&streams.backend, &StreamsConfig::default().backend) {
            (StateBackend::Sqlite(path), _) | (_, StateBackend::Sqlite(path)) => {
                path.to_string_lossy().into_owned()
            }
            _ => String::new(),
        };
        EngineSettings {
            streams_enabled: core.streams.is_some(),
            streams_backend: streams_backend.to_owned(),
            streams_path,
            streams_redis_url,
            streams_host: None,
            streams_port: None,
            streams_max_connections: streams.max_connections,
            streams_max_subscriptions: streams.max_subscriptions,
            streams_outbound_bytes: streams.outbound_bytes,
            streams_max_frame_bytes: streams.max_frame_bytes,
            streams_idle_timeout_ms: millis(streams.idle_timeout),
            host: core.server.addr.ip().to_string(),
            port: core.server.addr.port(),
            http_host: None,
            http_port: core.http.addr.port(),
            metrics_host: core
                .metrics_addr
                .map_or_else(|| "127.0.0.1".to_owned(), |a| a.ip().to_string()),
            metrics_port: core.metrics_addr.map(|a| a.port()),
            telemetry_store_spans: core.telemetry_store.spans,
            telemetry_store_logs: core.telemetry_store.logs,
            telemetry_store_metrics: core.telemetry_store.metrics,
            telemetry_store_bytes: core.telemetry_store.bytes,
            traces_sample_ratio: core.traces_sample_ratio,
            otel_service_name: core.otel_service_name.clone(),
            otlp_endpoint: core.otlp_endpoint.clone(),
            http_body_limit_bytes: core.http.body_limit,
            http_timeout_ms: millis(core.http.timeout),
            http_header_read_timeout_ms: millis(core.http.header_read_timeout),
            http_body_read_timeout_ms: millis(core.http.body_read_timeout),
            http_max_connections: core.http.max_connections,
            http_body_buffer_bytes: core.http.body_buffer_bytes,
            http_cors_origins: core.http.cors.map(|cors| cors.allowed_origins),
            http_listen_at_start: None,
            console_enabled: core.http.console_enabled,
            console_path: core.http.console_path,
            console_token: core.http.console_token,
            auth_token: core.server.auth_token,
            function_conflict: core.function_conflict.as_str().to_owned(),
            invocation_timeout_ms: millis(core.invocation_timeout),
            namespace_grace_ms: millis(core.namespace_grace),
            max_frame_bytes: core.server.max_frame_bytes,
            handshake_timeout_ms: millis(core.server.handshake_timeout),
            outbound_queue: core.server.outbound_queue,
            outbound_bytes: core.server.outbound_bytes,
            ping_interval_ms: millis(core.server.ping_interval),
            peer_timeout_ms: millis(core.server.peer_timeout),
            functions_available_interval_ms: millis(core.functions_available_interval),
            trigger_ack_timeout_ms: millis(core.trigger_ack_timeout),
            worker_threads: DEFAULT_WORKER_THREADS,
            cron_redis_url: core.cron_redis_url,
            queue_backend: if core.queues.is_none() {
                "off"
            } else {
                queue_backend
            }
            .to_owned(),
            queue_path,
            queue_redis_url,
            queue_sqlite_synchronous: queues.sqlite_synchronous.as_str().to_owned(),
            // The core's default has no named queues (a `default` queue always exists).
            queues: String::from("{}"),
            // The core's default has no further listeners.
            listeners: String::from("[]"),
            queue_poll_interval_ms: millis(queues.poll_interval),
            state_backend: state_backend.to_owned(),
            state_path,
            state_redis_url,
            pubsub_backend: if core.pubsub_redis_url.is_some() {
                "redis"
            } else {
                "local"
            }
            .to_owned(),
            pubsub_redis_url: core.pubsub_redis_url.clone(),
            max_calls_in_flight_per_connection: core.max_calls_in_flight_per_connection,
            max_buffered_registrations: core.max_buffered_registrations,
            max_buffered_registration_bytes: core.max_buffered_registration_bytes,
        }
    }
}

impl EngineSettings {
    /// The core's config, checked; and the runtime's thread count. `InvalidArgument` names a
    /// bad setting.
    pub(crate) fn into_core(self) -> PyResult<(EngineConfig, usize)> {
        let invalid = |message: String| to_py(fnmesh_core::Error::InvalidArgument(message));
        let shared_redis = self.queue_redis_url.clone();
        let state = match (
            self.state_backend.as_str(),
            self.state_redis_url.or(shared_redis.clone()),
        ) {
            ("off", _) => None,
            ("memory", _) => Some(StateBackend::Memory),
            ("sqlite", _) => Some(StateBackend::Sqlite(std::path::PathBuf::from(
                self.state_path,
            ))),
            ("redis", Some(url)) => Some(StateBackend::Redis(url)),
            ("redis", None) => {
                return Err(invalid(
                    "state_backend = \"redis\" needs state_redis_url (or queue_redis_url)".into(),
                ))
            }
            (other, _) => {
                return Err(invalid(format!(
                    "state_backend must be sqlite, memory, redis or off, not {other:?}"
                )))
            }
        };
        let streams_backend = match (
            self.streams_backend.as_str(),
            self.streams_redis_url.or(shared_redis.clone()),
        ) {
            ("memory", _) => StateBackend::Memory,
            ("sqlite", _) => StateBackend::Sqlite(std::path::PathBuf::from(self.streams_path)),
            ("redis", Some(url)) => StateBackend::Redis(url),
            ("redis", None) => {
                return Err(invalid(
                    "streams_backend = \"redis\" needs streams_redis_url (or queue_redis_url)"
                        .into(),
                ))
            }
            (other, _) => {
                return Err(invalid(format!(
                    "streams_backend must be sqlite, memory or redis, not {other:?}"
                )))
            }
        };
        let pubsub_redis_url = match (
            self.pubsub_backend.as_str(),
            self.pubsub_redis_url.or(shared_redis),
        ) {
            ("local", _) => None,
            ("redis", Some(url)) => Some(url),
            ("redis", None) => {
                return Err(invalid(
                    "pubsub_backend = \"redis\" needs pubsub_redis_url (or queue_redis_url)".into(),
                ))
            }
            (other, _) => {
                return Err(invalid(format!(
                    "pubsub_backend must be local or redis, not {other:?}"
                )))
            }
        };
        let backend = match (self.queue_backend.as_str(), self.queue_redis_url) {
            ("off", _) => None,
            ("memory", _) => Some(QueueBackend::Memory),
            ("sqlite", _) => Some(QueueBackend::Sqlite(std::path::PathBuf::from(
                self.queue_path,
            ))),
            ("redis", Some(url)) => Some(QueueBackend::Redis(url)),
            ("redis", None) => {
                return Err(invalid(
                    "queue_backend = \"redis\" needs queue_redis_url".into(),
                ))
            }
            (other, _) => {
                return Err(invalid(format!(
                    "queue_backend must be sqlite, memory, redis or off, not {other:?}"
                )))
            }
        };
        let queues = match backend {
            None => None,
            Some(backend) => {
                let sqlite_synchronous = SqliteSynchronous::parse(&self.queue_sqlite_synchronous)
                    .ok_or_else(|| {
                    invalid(format!(
                        "queue_sqlite_synchronous must be \"full\" or \"normal\", not {:?}",
                        self.queue_sqlite_synchronous
                    ))
                })?;
                let settings = QueueSettings {
                    backend,
                    sqlite_synchronous,
                    queues: queue_configs_from_json(&self.queues)
                        .map_err(|e| invalid(e.to_string()))?,
                    poll_interval: ms(self.queue_poll_interval_ms),
                };
                settings.validate().map_err(|e| invalid(e.to_string()))?;
                Some(settings)
            }
        };
        let host = &self.host;
        let ip: IpAddr = host
            .parse()
            .map_err(|_| invalid(format!("host must be an IP address, not {host:?}")))?;
        let http_ip: IpAddr = match &self.http_host {
            None => ip,
            Some(host) => host
                .parse()
                .map_err(|_| invalid(format!("http_host must be an IP address, not {host:?}")))?,
        };
        let metrics_addr = match self.metrics_port {
            None => None,
            Some(port) => {
                let host = &self.metrics_host;
                let ip: IpAddr = host.parse().map_err(|_| {
                    invalid(format!("metrics_host must be an IP address, not {host:?}"))
                })?;
                Some(SocketAddr::new(ip, port))
            }
        };
        let streams_ip: IpAddr = match &self.streams_host {
            None => ip,
            Some(host) => host.parse().map_err(|_| {
                invalid(format!("streams_host must be an IP address, not {host:?}"))
            })?,
        };
        let streams = self.streams_enabled.then(|| StreamsConfig {
            backend: streams_backend,
            // An embedded engine takes any free port unless told (docs/protocol.md 6.10).
            addr: SocketAddr::new(streams_ip, self.streams_port.unwrap_or(0)),
            max_connections: self.streams_max_connections,
            max_subscriptions: self.streams_max_subscriptions,
            outbound_bytes: self.streams_outbound_bytes,
            max_frame_bytes: self.streams_max_frame_bytes,
            idle_timeout: ms(self.streams_idle_timeout_ms),
        });
        let policy: ConflictPolicy = self.function_conflict.parse().into_py_result()?;
        let http = HttpConfig {
            addr: SocketAddr::new(http_ip, self.http_port),
            listen_at_start: self.http_listen_at_start.unwrap_or(false),
            body_limit: self.http_body_limit_bytes,
            timeout: ms(self.http_timeout_ms),
            header_read_timeout: ms(self.http_header_read_timeout_ms),
            body_read_timeout: ms(self.http_body_read_timeout_ms),
            max_connections: self.http_max_connections,
            body_buffer_bytes: self.http_body_buffer_bytes,
            cors: self.http_cors_origins.map(|origins| CorsConfig {
                allowed_origins: origins,
                ..CorsConfig::default()
            }),
            console_enabled: self.console_enabled,
            console_path: self.console_path,
            console_token: self.console_token,
            ..HttpConfig::default()
        };
        let mut config = EngineConfig {
            http,
            function_conflict: policy,
            invocation_timeout: ms(self.invocation_timeout_ms),
            namespace_grace: ms(self.namespace_grace_ms),
            functions_available_interval: ms(self.functions_available_interval_ms),
            trigger_ack_timeout: ms(self.trigger_ack_timeout_ms),
            cron_redis_url: self.cron_redis_url,
            queues,
            state,
            streams,
            pubsub_redis_url,
            max_calls_in_flight_per_connection: self.max_calls_in_flight_per_connection,
            max_buffered_registrations: self.max_buffered_registrations,
            max_buffered_registration_bytes: self.max_buffered_registration_bytes,
            metrics_addr,
            telemetry_store: fnmesh_core::config::TelemetryStoreConfig {
                spans: self.telemetry_store_spans,
                logs: self.telemetry_store_logs,
                metrics: self.telemetry_store_metrics,
                bytes: self.telemetry_store_bytes,
            },
            traces_sample_ratio: self.traces_sample_ratio,
            otel_service_name: self.otel_service_name,
            otlp_endpoint: self.otlp_endpoint,
            cleanup_delay: std::env::var(CLEANUP_DELAY_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(Duration::ZERO, ms),
            ..EngineConfig::default()
        };
        config.server.addr = SocketAddr::new(ip, self.port);
        config.server.auth_token = self.auth_token;
        config.server.max_frame_bytes = self.max_frame_bytes;
        config.server.handshake_timeout = ms(self.handshake_timeout_ms);
        config.server.outbound_queue = self.outbound_queue;
        config.server.outbound_bytes = self.outbound_bytes;
        config.server.ping_interval = ms(self.ping_interval_ms);
        config.server.peer_timeout = ms(self.peer_timeout_ms);
        config.listeners =
            fnmesh_core::config::listeners_from_json(&self.listeners, &config.server)
                .map_err(invalid)?;
        Ok((config, self.worker_threads.max(1)))
    }
}

fn queues_to_json(queues: &Bound<'_, PyAny>) -> PyResult<String> {
    let json = queues.py().import("json")?;
    json.call_method1("dumps", (queues,))?.extract()
}

// The derive hands the field over as a `Cow` of its own type.
#[allow(clippy::owned_cow)]
fn queues_from_json<'py>(
    queues: std::borrow::Cow<'_, String>,
    py: Python<'py>,
) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (queues.as_str(),))
}

/// The Rust side's default for every engine setting it reads, by name: where
/// `fnmesh.EngineConfig` takes its defaults from.
#[pyfunction]
fn engine_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // (`streams_port` is `None` here: the host picks; `STREAMS_SERVE_PORT` is `fnmesh serve`'s.)
    EngineSettings::default()
        .into_pyobject(py)
        .map(Bound::into_any)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(engine_defaults, m)?)?;
    m.add(
        "STREAMS_SERVE_PORT",
        fnmesh_core::config::SERVE_STREAMS_PORT,
    )?;
    Ok(())
}
