//! External HTTP functions served from Python (`fnmesh.external`, with httpx).
//!
//! The engine hands every worker's registration of an external function to
//! [`PyExternalHost`], which queues it to the bridge as an [`ExternalEvent`]. Python checks the
//! URL and the secrets and answers with `accept(handler)` or `refuse(code, message)`. Each call
//! of an accepted function reaches the bridge's dispatch as an [`ExternalCall`]: the
//! invocation, and the handler given to `accept` (or to `register_external`, for the functions
//! an app declares itself).

use std::sync::{Arc, Mutex};

use fnmesh_core::external::{ExternalFunctions, ExternalReady, ExternalRegistration};
use fnmesh_core::function::{Call, NativeFunction};
use fnmesh_core::protocol::ErrorBody;
use fnmesh_core::registry::FunctionKind;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::bridge::{function_def, Bridge, BridgeSender, Invocation, Work};
use crate::engine::EngineHandle;
use crate::errors::IntoPyResult;

/// Serves the engine's external functions through a bridge.
struct PyExternalHost(BridgeSender);

impl ExternalFunctions for PyExternalHost {
    fn prepare(&self, registration: ExternalRegistration, ready: ExternalReady) {
        let invocation = serde_json::to_string(&registration.invocation)
            .unwrap_or_else(|_| String::from("null"));
        self.0.send(Work::External(ExternalEvent {
            namespace: registration.namespace,
            function_id: registration.function_id,
            worker_id: registration.worker_id.to_string(),
            invocation,
            ready: Mutex::new(Some(ready)),
            bridge: self.0.clone(),
        }));
    }
}

/// An external function: its calls go to `handler` on the bridge's loop.
struct PyExternalFunction {
    bridge: BridgeSender,
    handler: Arc<Py<PyAny>>,
}

impl NativeFunction for PyExternalFunction {
    fn invoke(&self, call: Call) {
        self.bridge.send(Work::InvokeExternal {
            call,
            handler: self.handler.clone(),
        });
    }
}

/// A worker registered an external function. Answer once with `accept(handler)` or
/// `refuse(code, message)`; unanswered, the function is never registered.
#[pyclass(frozen, module = "fnmesh._native", name = "ExternalEvent")]
pub struct ExternalEvent {
    #[pyo3(get)]
    namespace: String,
    #[pyo3(get)]
    function_id: String,
    #[pyo3(get)]
    worker_id: String,
    invocation: String,
    ready: Mutex<Option<ExternalReady>>,
    bridge: BridgeSender,
}

impl ExternalEvent {
    fn take_ready(&self) -> Option<ExternalReady> {
        self.ready.lock().ok().and_then(|mut r| r.take())
    }
}

#[pymethods]
impl ExternalEvent {
    /// The registration's `invocation` object as JSON bytes (url, method, timeout_ms,
    /// headers, auth, and fnmesh's `retry`).
    #[getter]
    fn invocation<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.invocation.as_bytes())
    }

    /// Registers the function; its calls reach the dispatch as `ExternalCall`s carrying
    /// `handler`. False when already answered.
    fn accept(&self, handler: Py<PyAny>) -> bool {
        match self.take_ready() {
            Some(ready) => {
                ready(Ok(Arc::new(PyExternalFunction {
                    bridge: self.bridge.clone(),
                    handler: Arc::new(handler),
                })));
                true
            }
            None => false,
        }
    }

    /// Drops the registration (the engine logs `code` and `message`). False when already
    /// answered.
    fn refuse(&self, code: &str, message: &str) -> bool {
        match self.take_ready() {
            Some(ready) => {
                ready(Err(ErrorBody::new(code, message)));
                true
            }
            None => false,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "ExternalEvent(function_id={:?}, namespace={:?}, worker_id={:?})",
            self.function_id, self.namespace, self.worker_id
        )
    }
}

/// One call of an external function: answer `invocation` using `handler`.
#[pyclass(frozen, module = "fnmesh._native", name = "ExternalCall")]
pub struct ExternalCall {
    #[pyo3(get)]
    handler: Py<PyAny>,
    #[pyo3(get)]
    invocation: Py<Invocation>,
}

impl ExternalCall {
    pub(crate) fn new(py: Python<'_>, call: Call, handler: &Py<PyAny>) -> PyResult<ExternalCall> {
        Ok(ExternalCall {
            handler: handler.clone_ref(py),
            invocation: Py::new(py, Invocation::from_call(call))?,
        })
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ExternalEvent>()?;
    m.add_class::<ExternalCall>()?;
    m.add_function(wrap_pyfunction!(set_external_functions, m)?)?;
    m.add_function(wrap_pyfunction!(register_external, m)?)?;
    Ok(())
}

/// Serves the external functions workers register through `bridge` (`ExternalEvent`s, then
/// `ExternalCall`s); `None` stops accepting new ones.
#[pyfunction]
#[pyo3(signature = (engine, bridge))]
fn set_external_functions(engine: &EngineHandle, bridge: Option<&Bridge>) -> PyResult<()> {
    let (_, engine) = engine.live()?;
    engine.set_external_functions(
        bridge.map(|b| Arc::new(PyExternalHost(b.sender())) as Arc<dyn ExternalFunctions>),
    );
    Ok(())
}

/// Registers an external function the host itself declares (listed with kind `http`); its
/// calls reach `bridge`'s dispatch as `ExternalCall`s carrying `handler`.
#[pyfunction]
#[pyo3(signature = (
    engine, bridge, function_id, handler, *, namespace = "default", description = None,
    request_format = None, response_format = None, metadata = None
))]
#[allow(clippy::too_many_arguments)]
fn register_external(
    engine: &EngineHandle,
    bridge: &Bridge,
    function_id: &str,
    handler: Py<PyAny>,
    namespace: &str,
    description: Option<String>,
    request_format: Option<&str>,
    response_format: Option<&str>,
    metadata: Option<&str>,
) -> PyResult<()> {
    let def = function_def(description, request_format, response_format, metadata)?;
    let (_, engine) = engine.live()?;
    let function = PyExternalFunction {
        bridge: bridge.sender(),
        handler: Arc::new(handler),
    };
    engine
        .register_function(
            namespace,
            function_id,
            fnmesh_core::registry::FunctionDef {
                kind: FunctionKind::Http,
                ..def
            },
            function,
        )
        .into_py_result()
}
