//! Python view of the worker client (`fnmesh_core::client`): an app connected as a worker of any
//! iii-compatible engine. Like the engine handle, it owns a tokio runtime and never calls into
//! Python; its `link()` registers Python functions and calls any function (invocations and
//! awaited outcomes go through a `Bridge`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fnmesh_core::client::{Client, ClientError, ClientState};
use pyo3::prelude::*;

use crate::bridge::function_def;
use crate::errors::{to_py, ConnectionFailed, InvalidArgument, RegistrationError};
use crate::link::{Opened, PyLink};

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
    /// What this client's links reach it through; emptied by `shutdown()`.
    opened: Arc<Opened>,
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
        let opened = Opened::new(
            runtime.handle().clone(),
            Arc::new(client.clone()),
            "the client is shut down",
        );
        Ok(ClientHandle {
            state: Mutex::new(Some((runtime, client))),
            opened,
        })
    }

    /// Registers an external HTTP function: the engine calls the URL of `invocation` (the
    /// JSON `invocation` object of docs/protocol.md section 5) for every call. Registered again on
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

    /// The way to the engine's functions through this connection (registering Python
    /// functions, calling any function through a bridge). Closes when the client shuts down.
    fn link(&self) -> PyLink {
        PyLink::new(self.opened.clone(), None)
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
        self.opened.close();
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
        self.opened.close();
        let taken = self.state.lock().map(|mut s| s.take()).unwrap_or(None);
        if let Some((runtime, client)) = taken {
            crate::errors::without_gil(move || {
                runtime.block_on(client.shutdown());
                runtime.shutdown_timeout(Duration::from_secs(5));
            });
        }
    }
}
