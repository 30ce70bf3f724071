//! Python view of the worker client (`fnmesh_core::client`): an app connected as a worker of any
//! iii-compatible engine. Like the engine handle, it owns a tokio runtime and never calls into
//! Python: invocations and awaited outcomes go through a [`Bridge`].

use std::sync::Mutex;
use std::time::Duration;

use fnmesh_core::client::{CallOptions, Client, ClientError, ClientState};
use fnmesh_core::function::Outcome;
use pyo3::prelude::*;

use crate::bridge::{function_def, raw_json, trigger_spec, Bridge, PyFunction, Work};
use crate::errors::{to_py, ConnectionFailed, InvalidArgument, RegistrationError};

/// Registers the class on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ClientHandle>()?;
    Ok(())
}

/// Errors of connecting, mapped onto the Python hierarchy.
fn connect_error(err: ClientError) -> PyErr {
    match err {
        ClientError::Core(e) => to_py(e),
        ClientError::Rejected { .. } => RegistrationError::new_err(err.to_string()),
        other => ConnectionFailed::new_err(other.to_string()),
    }
}

/// A connected worker client and the tokio runtime it runs on.
#[pyclass(frozen, module = "fnmesh._native", name = "ClientHandle")]
pub struct ClientHandle {
    state: Mutex<Option<(tokio::runtime::Runtime, Client)>>,
}

impl ClientHandle {
    fn live(&self) -> PyResult<(tokio::runtime::Handle, Client)> {
        self.state
            .lock()
            .ok()
            .and_then(|s| {
                s.as_ref()
                    .map(|(runtime, client)| (runtime.handle().clone(), client.clone()))
            })
            .ok_or_else(|| InvalidArgument::new_err("the client is shut down"))
    }
}

#[pymethods]
impl ClientHandle {
    /// Connects to the engine at `url` (retrying with backoff for up to
    /// `first_connect_timeout_ms`). Raises `ConnectionFailed` when it cannot,
    /// `RegistrationError` when the engine refuses the worker, `InvalidArgument` for a bad URL.
    #[staticmethod]
    #[pyo3(signature = (
        url, *, worker_name, namespace = None, auth_token = None, call_timeout_ms = 30_000,
        first_connect_timeout_ms = 30_000, worker_threads = 1
    ))]
    #[allow(clippy::too_many_arguments)]
    fn connect(
        py: Python<'_>,
        url: String,
        worker_name: String,
        namespace: Option<String>,
        auth_token: Option<String>,
        call_timeout_ms: u64,
        first_connect_timeout_ms: u64,
        worker_threads: usize,
    ) -> PyResult<ClientHandle> {
        // NOTE: one connection needs one thread: with 1 worker thread instead of 2, one Python
        // worker served 95-103k echo calls/s instead of 85k (benches/python_worker.py setup,
        // C=64), the client's CPU falling from 42% to 38% of a core.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads.max(1))
            .thread_name("fnmesh-client")
            .enable_all()
            .build()?;
        let mut builder = Client::builder(url)
            .worker_name(worker_name)
            .call_timeout(Duration::from_millis(call_timeout_ms))
            .first_connect_timeout(Duration::from_millis(first_connect_timeout_ms));
        if let Some(namespace) = namespace {
            builder = builder.namespace(namespace);
        }
        if let Some(token) = auth_token {
            builder = builder.auth_token(token);
        }
        let client = py
            .detach(|| runtime.block_on(builder.connect()))
            .map_err(connect_error)?;
        Ok(ClientHandle {
            state: Mutex::new(Some((runtime, client))),
        })
    }

    /// Serves a Python function: its calls reach `bridge`'s dispatch as `Invocation`s. It is
    /// registered again on every reconnect.
    #[pyo3(signature = (
        bridge, function_id, *, description = None, request_format = None,
        response_format = None, metadata = None
    ))]
    fn register_function(
        &self,
        bridge: &Bridge,
        function_id: &str,
        description: Option<String>,
        request_format: Option<&str>,
        response_format: Option<&str>,
        metadata: Option<&str>,
    ) -> PyResult<()> {
        let def = function_def(description, request_format, response_format, metadata)?;
        let (_, client) = self.live()?;
        client
            .register_function(function_id, def, PyFunction(bridge.sender()))
            .map_err(connect_error)
    }

    /// Registers an external HTTP function: the engine calls the URL of `invocation` (the
    /// JSON `invocation` object of PROTOCOL.md section 5) for every call. Registered again on
    /// every reconnect.
    #[pyo3(signature = (
        function_id, invocation, *, description = None, request_format = None,
        response_format = None, metadata = None
    ))]
    fn register_external(
        &self,
        function_id: &str,
        invocation: &str,
        description: Option<String>,
        request_format: Option<&str>,
        response_format: Option<&str>,
        metadata: Option<&str>,
    ) -> PyResult<()> {
        let def = function_def(description, request_format, response_format, metadata)?;
        let invocation = serde_json::from_str(invocation).map_err(|e| {
            crate::errors::InvalidArgument::new_err(format!("invalid invocation object: {e}"))
        })?;
        let (_, client) = self.live()?;
        client
            .register_external(function_id, def, invocation)
            .map_err(connect_error)
    }

    /// Stops serving a function; False when it was not registered.
    fn unregister_function(&self, function_id: &str) -> PyResult<bool> {
        let (_, client) = self.live()?;
        Ok(client.unregister_function(function_id))
    }

    /// Calls any function through the engine; the outcome completes `future` through `bridge`.
    /// `traceparent` and `baggage` are the W3C trace context sent with the call.
    #[pyo3(signature = (
        bridge, future, function_id, data, *, metadata = None, timeout_ms = None,
        traceparent = None, baggage = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        bridge: &Bridge,
        future: Py<PyAny>,
        function_id: String,
        data: &[u8],
        metadata: Option<&[u8]>,
        timeout_ms: Option<u64>,
        traceparent: Option<String>,
        baggage: Option<String>,
    ) -> PyResult<()> {
        let data = raw_json(data, "the call's data")?;
        let options = CallOptions {
            timeout: timeout_ms.map(Duration::from_millis),
            metadata: metadata.map(|m| raw_json(m, "metadata")).transpose()?,
            namespace: None,
            traceparent,
            baggage,
        };
        let (runtime, client) = self.live()?;
        let tx = bridge.sender();
        runtime.spawn(async move {
            let outcome = match client.call(&function_id, data, options).await {
                Ok(result) => Outcome::Success(result),
                Err(e) => Outcome::Failure(e.to_error_body()),
            };
            tx.send(Work::Done { future, outcome });
        });
        Ok(())
    }

    /// Invokes a function without waiting for it (queued while offline).
    #[pyo3(signature = (function_id, data, *, metadata = None, traceparent = None, baggage = None))]
    fn send(
        &self,
        function_id: &str,
        data: &[u8],
        metadata: Option<&[u8]>,
        traceparent: Option<String>,
        baggage: Option<String>,
    ) -> PyResult<()> {
        let data = raw_json(data, "the call's data")?;
        let options = CallOptions {
            metadata: metadata.map(|m| raw_json(m, "metadata")).transpose()?,
            traceparent,
            baggage,
            ..CallOptions::default()
        };
        let (_, client) = self.live()?;
        client
            .send_with(function_id, data, options)
            .map_err(connect_error)
    }

    /// Binds `function_id` to a trigger type (`registertrigger`, replayed on reconnects);
    /// returns the binding id. Refusals arrive later: see `trigger_errors()`.
    #[pyo3(signature = (trigger_type, function_id, config, *, namespace = None, metadata = None, id = None))]
    fn register_trigger(
        &self,
        trigger_type: String,
        function_id: String,
        config: &str,
        namespace: Option<String>,
        metadata: Option<&str>,
        id: Option<String>,
    ) -> PyResult<String> {
        let spec = trigger_spec(trigger_type, function_id, config, namespace, metadata, id)?;
        let (_, client) = self.live()?;
        Ok(client.register_trigger(spec))
    }

    /// Removes a binding made with `register_trigger`; False when there was none.
    fn unregister_trigger(&self, id: &str) -> PyResult<bool> {
        let (_, client) = self.live()?;
        Ok(client.unregister_trigger(id))
    }

    /// Refused bindings: `(binding_id, code, message)` tuples.
    fn trigger_errors(&self) -> PyResult<Vec<(String, String, String)>> {
        let (_, client) = self.live()?;
        Ok(client
            .trigger_errors()
            .into_iter()
            .map(|(id, e)| (id, e.code, e.message))
            .collect())
    }

    /// The id the engine gave the current connection, once known.
    #[getter]
    fn worker_id(&self) -> Option<String> {
        self.live().ok().and_then(|(_, c)| c.worker_id())
    }

    /// `connecting`, `connected`, `reconnecting` or `closed`.
    #[getter]
    fn state(&self) -> &'static str {
        match self.live().map(|(_, c)| c.state()) {
            Ok(ClientState::Connecting) => "connecting",
            Ok(ClientState::Connected) => "connected",
            Ok(ClientState::Reconnecting) => "reconnecting",
            Ok(ClientState::Closed) | Err(_) => "closed",
        }
    }

    /// Calls waiting for an answer.
    #[getter]
    fn pending_count(&self) -> usize {
        self.live().map_or(0, |(_, c)| c.pending_count())
    }

    /// Closes the connection (waiting calls fail) and stops the runtime. Idempotent.
    fn shutdown(&self, py: Python<'_>) {
        let taken = self.state.lock().map(|mut s| s.take()).unwrap_or(None);
        if let Some((runtime, client)) = taken {
            py.detach(move || {
                runtime.block_on(client.shutdown());
                runtime.shutdown_timeout(Duration::from_secs(5));
            });
        }
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.lock() {
            if let Some((runtime, client)) = state.take() {
                runtime.block_on(client.shutdown());
                runtime.shutdown_timeout(Duration::from_secs(5));
            }
        }
    }
}
