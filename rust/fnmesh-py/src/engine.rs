//! Python view of the engine: start an `fnmesh_core::engine::Engine` on a tokio runtime owned by
//! the handle, stop it, register Python functions with it and call any function through it. The
//! engine never calls into Python: Python functions and awaited outcomes go through a
//! [`Bridge`]. The GIL is released while the engine starts and stops.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use fnmesh_core::engine::{Engine, EngineConfig, EngineRef};
use fnmesh_core::function::{CallOptions, Outcome};
use fnmesh_core::http::{CorsConfig, HttpConfig};
use fnmesh_core::queue::service::{queue_configs_from_json, QueueBackend, QueueSettings};
use fnmesh_core::registry::ConflictPolicy;
use pyo3::prelude::*;

use crate::bridge::{function_def, raw_json, trigger_spec, Bridge, PyFunction, Work};
use crate::errors::{IntoPyResult, InvalidArgument};

/// Registers the classes and functions on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<EngineHandle>()?;
    m.add_function(wrap_pyfunction!(init_logging, m)?)?;
    Ok(())
}

/// Sends the engine's log lines (Rust `tracing`) to stderr, filtered by `level` (an
/// `env_logger`-style filter such as `"info"` or `"fnmesh_core=debug"`). Only the first call
/// installs the logger; later calls return False.
#[pyfunction]
#[pyo3(signature = (level = "info"))]
fn init_logging(level: &str) -> PyResult<bool> {
    let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| {
        crate::errors::InvalidArgument::new_err(format!("bad log filter {level:?}: {e}"))
    })?;
    // Colours only on a terminal: piped into a file or a log collector, lines stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    Ok(tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init()
        .is_ok())
}

/// A running engine and the tokio runtime it runs on.
#[pyclass(frozen, module = "fnmesh._native", name = "EngineHandle")]
pub struct EngineHandle {
    state: Mutex<Option<(tokio::runtime::Runtime, Engine)>>,
    addr: SocketAddr,
}

fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

#[pymethods]
impl EngineHandle {
    /// Binds the listener and starts the engine. Raises `OSError` when the address is taken and
    /// `InvalidArgument` for a bad setting.
    #[staticmethod]
    #[pyo3(signature = (
        *, host, port, http_port, auth_token, function_conflict, invocation_timeout_ms,
        namespace_grace_ms, max_frame_bytes, handshake_timeout_ms, outbound_queue,
        functions_available_interval_ms, trigger_ack_timeout_ms, worker_threads,
        http_body_limit_bytes, http_timeout_ms, http_cors_origins, http_listen_at_start,
        cron_redis_url, queue_backend = "sqlite", queue_path = ".fnmesh/queues.sqlite3",
        queue_redis_url = None, queues = "{}", queue_poll_interval_ms = 100
    ))]
    #[allow(clippy::too_many_arguments)]
    fn start(
        py: Python<'_>,
        host: &str,
        port: u16,
        http_port: u16,
        auth_token: Option<String>,
        function_conflict: &str,
        invocation_timeout_ms: u64,
        namespace_grace_ms: u64,
        max_frame_bytes: usize,
        handshake_timeout_ms: u64,
        outbound_queue: usize,
        functions_available_interval_ms: u64,
        trigger_ack_timeout_ms: u64,
        worker_threads: usize,
        http_body_limit_bytes: usize,
        http_timeout_ms: u64,
        http_cors_origins: Option<Vec<String>>,
        http_listen_at_start: Option<bool>,
        cron_redis_url: Option<String>,
        queue_backend: &str,
        queue_path: &str,
        queue_redis_url: Option<String>,
        queues: &str,
        queue_poll_interval_ms: u64,
    ) -> PyResult<EngineHandle> {
        let invalid =
            |message: String| crate::errors::to_py(fnmesh_core::Error::InvalidArgument(message));
        let backend = match (queue_backend, queue_redis_url) {
            ("off", _) => None,
            ("memory", _) => Some(QueueBackend::Memory),
            ("sqlite", _) => Some(QueueBackend::Sqlite(std::path::PathBuf::from(queue_path))),
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
                let settings = QueueSettings {
                    backend,
                    queues: queue_configs_from_json(queues).map_err(invalid)?,
                    poll_interval: ms(queue_poll_interval_ms),
                };
                settings.validate().map_err(invalid)?;
                Some(settings)
            }
        };
        let ip: IpAddr = host.parse().map_err(|_| {
            crate::errors::to_py(fnmesh_core::Error::InvalidArgument(format!(
                "host must be an IP address, not {host:?}"
            )))
        })?;
        let policy: ConflictPolicy = function_conflict.parse().into_py_result()?;
        let http = HttpConfig {
            addr: SocketAddr::new(ip, http_port),
            listen_at_start: http_listen_at_start.unwrap_or(false),
            body_limit: http_body_limit_bytes,
            timeout: ms(http_timeout_ms),
            cors: http_cors_origins.map(|origins| CorsConfig {
                allowed_origins: origins,
                ..CorsConfig::default()
            }),
            ..HttpConfig::default()
        };
        let mut config = EngineConfig {
            http,
            function_conflict: policy,
            invocation_timeout: ms(invocation_timeout_ms),
            namespace_grace: ms(namespace_grace_ms),
            functions_available_interval: ms(functions_available_interval_ms),
            trigger_ack_timeout: ms(trigger_ack_timeout_ms),
            cron_redis_url,
            queues,
            ..EngineConfig::default()
        };
        config.server.addr = SocketAddr::new(ip, port);
        config.server.auth_token = auth_token;
        config.server.max_frame_bytes = max_frame_bytes;
        config.server.handshake_timeout = ms(handshake_timeout_ms);
        config.server.outbound_queue = outbound_queue;
        py.detach(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(worker_threads.max(1))
                .thread_name("fnmesh-engine")
                .enable_all()
                .build()?;
            let engine = runtime.block_on(Engine::builder().config(config).start())?;
            let addr = engine.local_addr();
            Ok::<_, std::io::Error>(EngineHandle {
                state: Mutex::new(Some((runtime, engine))),
                addr,
            })
        })
        .map_err(PyErr::from)
    }

    /// The worker WebSocket address.
    #[getter]
    fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    /// The worker WebSocket port (the real one when 0 was asked).
    #[getter]
    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `host:port` of the HTTP trigger server, once the first route opened it.
    #[getter]
    fn http_addr(&self) -> Option<String> {
        let state = self.state.lock().ok()?;
        let (_, engine) = state.as_ref()?;
        engine.http_addr().map(|a| a.to_string())
    }

    /// Binds `function_id` to a trigger type (`http`, `cron`, a worker's type) with `config`
    /// (JSON text). The outcome completes `future` through `bridge`: `{"id": ...}` or the
    /// provider's refusal.
    #[pyo3(signature = (
        bridge, future, trigger_type, function_id, config, *, namespace = None, metadata = None,
        id = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn register_trigger(
        &self,
        bridge: &Bridge,
        future: Py<PyAny>,
        trigger_type: String,
        function_id: String,
        config: &str,
        namespace: Option<String>,
        metadata: Option<&str>,
        id: Option<String>,
    ) -> PyResult<()> {
        let spec = trigger_spec(trigger_type, function_id, config, namespace, metadata, id)?;
        let (runtime, engine) = self.live()?;
        let tx = bridge.sender();
        runtime.spawn(async move {
            let outcome = match engine.register_trigger(spec).await {
                Ok(id) => Outcome::json(&serde_json::json!({ "id": id })),
                Err(e) => Outcome::Failure(e),
            };
            tx.send(Work::Done { future, outcome });
        });
        Ok(())
    }

    /// Removes a trigger binding; False when there was none.
    fn unregister_trigger(&self, id: &str) -> PyResult<bool> {
        let (runtime, engine) = self.live()?;
        let _guard = runtime.enter();
        Ok(engine.unregister_trigger(id))
    }

    /// True until `stop()`.
    #[getter]
    fn running(&self) -> bool {
        self.state.lock().is_ok_and(|s| s.is_some())
    }

    /// Connected workers.
    #[getter]
    fn worker_count(&self) -> usize {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|(_, e)| e.worker_count()))
            .unwrap_or(0)
    }

    /// Calls waiting for an answer.
    #[getter]
    fn pending_count(&self) -> usize {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|(_, e)| e.pending_count()))
            .unwrap_or(0)
    }

    /// Registers a Python function: its calls reach `bridge`'s dispatch as `Invocation`s.
    /// Schemas and metadata are JSON text (or `None`).
    #[pyo3(signature = (
        bridge, function_id, *, namespace = "default", description = None,
        request_format = None, response_format = None, metadata = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn register_function(
        &self,
        bridge: &Bridge,
        function_id: &str,
        namespace: &str,
        description: Option<String>,
        request_format: Option<&str>,
        response_format: Option<&str>,
        metadata: Option<&str>,
    ) -> PyResult<()> {
        let def = function_def(description, request_format, response_format, metadata)?;
        let (_, engine) = self.live()?;
        engine
            .register_function(namespace, function_id, def, PyFunction(bridge.sender()))
            .into_py_result()
    }

    /// Removes a Python function; False when it was not registered.
    #[pyo3(signature = (function_id, *, namespace = "default"))]
    fn unregister_function(&self, function_id: &str, namespace: &str) -> PyResult<bool> {
        let (_, engine) = self.live()?;
        engine
            .unregister_function(namespace, function_id)
            .into_py_result()
    }

    /// Calls any function through the engine. The outcome completes `future` through
    /// `bridge` (see `Bridge`). `data` and `metadata` are JSON bytes; `traceparent` and
    /// `baggage` are the W3C trace context handed to the handler.
    #[pyo3(signature = (
        bridge, future, function_id, data, *, namespace = None, metadata = None, timeout_ms = None,
        traceparent = None, baggage = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        bridge: &Bridge,
        future: Py<PyAny>,
        function_id: String,
        data: &[u8],
        namespace: Option<String>,
        metadata: Option<&[u8]>,
        timeout_ms: Option<u64>,
        traceparent: Option<String>,
        baggage: Option<String>,
    ) -> PyResult<()> {
        let data = raw_json(data, "the call's data")?;
        let options = CallOptions {
            namespace,
            metadata: metadata.map(|m| raw_json(m, "metadata")).transpose()?,
            timeout: timeout_ms.map(ms),
            traceparent,
            baggage,
        };
        let (runtime, engine) = self.live()?;
        let tx = bridge.sender();
        runtime.spawn(async move {
            let outcome = engine.call_with(&function_id, data, options).await;
            tx.send(Work::Done { future, outcome });
        });
        Ok(())
    }

    /// Invokes any function without waiting for its outcome (fire and forget).
    #[pyo3(signature = (
        function_id, data, *, namespace = "default", metadata = None, traceparent = None,
        baggage = None
    ))]
    fn send(
        &self,
        function_id: &str,
        data: &[u8],
        namespace: &str,
        metadata: Option<&[u8]>,
        traceparent: Option<String>,
        baggage: Option<String>,
    ) -> PyResult<()> {
        let data = raw_json(data, "the call's data")?;
        let options = CallOptions {
            namespace: Some(namespace.to_owned()),
            metadata: metadata.map(|m| raw_json(m, "metadata")).transpose()?,
            timeout: None,
            traceparent,
            baggage,
        };
        let (runtime, engine) = self.live()?;
        // Dispatch may start a native function's task: run it inside the runtime.
        let _guard = runtime.enter();
        engine.send_with(function_id, data, options);
        Ok(())
    }

    /// Closes every connection and stops the engine. Idempotent.
    fn stop(&self, py: Python<'_>) {
        let taken = self.state.lock().map(|mut s| s.take()).unwrap_or(None);
        if let Some((runtime, engine)) = taken {
            py.detach(move || {
                runtime.block_on(engine.shutdown());
                runtime.shutdown_timeout(Duration::from_secs(5));
            });
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "EngineHandle(addr={}, running={})",
            self.addr,
            self.running()
        )
    }
}

impl EngineHandle {
    /// The runtime and a handle on the engine, or `InvalidArgument` once stopped.
    pub(crate) fn live(&self) -> PyResult<(tokio::runtime::Handle, EngineRef)> {
        self.state
            .lock()
            .ok()
            .and_then(|s| {
                s.as_ref()
                    .map(|(runtime, engine)| (runtime.handle().clone(), engine.handle()))
            })
            .ok_or_else(|| InvalidArgument::new_err("the engine is not running"))
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.lock() {
            if let Some((runtime, engine)) = state.take() {
                runtime.block_on(engine.shutdown());
                runtime.shutdown_timeout(Duration::from_secs(5));
            }
        }
    }
}
