//! Python view of `fnmesh_core::link::Link`: one class, `Link`, for the embedded engine
//! (`EngineHandle.link(namespace)`) and for a worker connection (`ClientHandle.link()`). Calls,
//! sends and registrations exist here once; the handles keep only their lifecycles.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fnmesh_core::function::CallOptions;
use fnmesh_core::link::{Link, LinkError};
use pyo3::prelude::*;

use crate::bridge::{function_def, raw_json, trigger_spec, Bridge, PyFunction, Work};
use crate::errors::{to_py, ConnectionFailed, InvalidArgument, RegistrationError};

/// Maps a link's refusal onto the Python hierarchy.
pub(crate) fn link_error(err: LinkError) -> PyErr {
    match err {
        LinkError::Invalid(e) => to_py(e),
        LinkError::Rejected(message) => RegistrationError::new_err(message),
        LinkError::Closed(message) => ConnectionFailed::new_err(message),
        // `LinkError` is non_exhaustive; a new variant reaches Python as a connection failure.
        #[allow(unreachable_patterns)]
        other => ConnectionFailed::new_err(other.to_string()),
    }
}

/// The runtime and the link while their owner (an engine or a client handle) runs; shared by
/// the owner, which empties it when it stops.
pub(crate) struct Opened {
    state: Mutex<Option<(tokio::runtime::Handle, Arc<dyn Link>)>>,
    /// The message of `InvalidArgument` once closed.
    closed: &'static str,
}

impl Opened {
    pub(crate) fn new(
        runtime: tokio::runtime::Handle,
        link: Arc<dyn Link>,
        closed: &'static str,
    ) -> Arc<Opened> {
        Arc::new(Opened {
            state: Mutex::new(Some((runtime, link))),
            closed,
        })
    }

    /// Closes every `Link` of this owner.
    pub(crate) fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.take();
        }
    }

    fn get(&self) -> PyResult<(tokio::runtime::Handle, Arc<dyn Link>)> {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .ok_or_else(|| InvalidArgument::new_err(self.closed))
    }
}

/// The way to the engine's functions: an embedded engine's, or a worker connection's.
// NOTE: `Arc<dyn Link>` rather than an enum of the two: one virtual call and one boxed future per
// call, beside a tokio spawn and two bridge crossings. An awaited call through the embedded
// engine (`App._call_remote` of an echo handler, callgrind over 1,000 calls, all threads) ran
// 203,975 instructions against 208,224 with the two handle classes before; E2 and E3 never take
// this path.
#[pyclass(frozen, module = "fnmesh._native", name = "Link")]
pub struct PyLink {
    opened: Arc<Opened>,
    /// Namespace of calls and registrations that name none: the app's on an embedded engine;
    /// `None` through a client (which picks by its own rules).
    namespace: Option<String>,
}

impl PyLink {
    pub(crate) fn new(opened: Arc<Opened>, namespace: Option<String>) -> PyLink {
        PyLink { opened, namespace }
    }

    fn options(
        &self,
        namespace: Option<String>,
        metadata: Option<&[u8]>,
        timeout_ms: Option<u64>,
        traceparent: Option<String>,
        baggage: Option<String>,
    ) -> PyResult<CallOptions> {
        Ok(CallOptions {
            namespace: namespace.or_else(|| self.namespace.clone()),
            metadata: metadata.map(|m| raw_json(m, "metadata")).transpose()?,
            timeout: timeout_ms.map(Duration::from_millis),
            traceparent,
            baggage,
        })
    }
}

#[pymethods]
impl PyLink {
    /// Serves a Python function: its calls reach `bridge`'s dispatch as `Invocation`s (through
    /// a client, it is registered again on every reconnect). Schemas and metadata are JSON
    /// text (or `None`).
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
        let (_, link) = self.opened.get()?;
        link.register_function(
            self.namespace.as_deref(),
            function_id,
            def,
            Arc::new(PyFunction(bridge.sender())),
        )
        .map_err(link_error)
    }

    /// Stops serving a Python function; False when it was not registered.
    fn unregister_function(&self, function_id: &str) -> PyResult<bool> {
        let (_, link) = self.opened.get()?;
        link.unregister_function(self.namespace.as_deref(), function_id)
            .map_err(link_error)
    }

    /// Calls any function; the outcome completes `future` through `bridge` (see `Bridge`).
    /// `data` and `metadata` are JSON bytes; `traceparent` and `baggage` are the W3C trace
    /// context handed to the handler.
    #[pyo3(signature = (
        bridge, future, function_id, data, *, namespace = None, metadata = None, timeout_ms = None,
        traceparent = None, baggage = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        bridge: &Bridge,
        future: Py<PyAny>,
        function_id: &str,
        data: &[u8],
        namespace: Option<String>,
        metadata: Option<&[u8]>,
        timeout_ms: Option<u64>,
        traceparent: Option<String>,
        baggage: Option<String>,
    ) -> PyResult<()> {
        let data = raw_json(data, "the call's data")?;
        let options = self.options(namespace, metadata, timeout_ms, traceparent, baggage)?;
        let (runtime, link) = self.opened.get()?;
        let tx = bridge.sender();
        let pending = link.call(function_id, data, options);
        runtime.spawn(async move {
            let outcome = pending.await;
            tx.send(Work::Done { future, outcome });
        });
        Ok(())
    }

    /// Invokes any function without waiting for its outcome (fire and forget; queued while a
    /// client is offline).
    #[pyo3(signature = (
        function_id, data, *, namespace = None, metadata = None, traceparent = None, baggage = None
    ))]
    fn send(
        &self,
        function_id: &str,
        data: &[u8],
        namespace: Option<String>,
        metadata: Option<&[u8]>,
        traceparent: Option<String>,
        baggage: Option<String>,
    ) -> PyResult<()> {
        let data = raw_json(data, "the call's data")?;
        let options = self.options(namespace, metadata, None, traceparent, baggage)?;
        let (runtime, link) = self.opened.get()?;
        // Dispatch may start a native function's task: run it inside the runtime.
        let _guard = runtime.enter();
        link.send(function_id, data, options).map_err(link_error)
    }

    /// Binds `function_id` to a trigger type (`http`, `cron`, a worker's type) with `config`
    /// (JSON text). The verdict completes `future` through `bridge`: `{"id": ...}` or the
    /// provider's refusal. Through a client the binding is replayed on every reconnect.
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
        let namespace = namespace.or_else(|| self.namespace.clone());
        let spec = trigger_spec(trigger_type, function_id, config, namespace, metadata, id)?;
        let (runtime, link) = self.opened.get()?;
        let tx = bridge.sender();
        let _guard = runtime.enter();
        let pending = link.register_trigger(spec);
        runtime.spawn(async move {
            let outcome = pending.await;
            tx.send(Work::Done { future, outcome });
        });
        Ok(())
    }

    /// Removes a trigger binding; False when there was none.
    fn unregister_trigger(&self, id: &str) -> PyResult<bool> {
        let (runtime, link) = self.opened.get()?;
        let _guard = runtime.enter();
        Ok(link.unregister_trigger(id))
    }

    /// True until the engine stops or the client shuts down.
    #[getter]
    fn open(&self) -> bool {
        self.opened.get().is_ok()
    }

    fn __repr__(&self) -> String {
        format!("Link(namespace={:?}, open={})", self.namespace, self.open())
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyLink>()?;
    Ok(())
}
