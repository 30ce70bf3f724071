//! Trigger types implemented in Python (`fnmesh.TriggerType`), served by an embedded engine.
//!
//! The engine hands such a type its bindings through the same bridge as invocations: each
//! `register` / `unregister` becomes a [`TriggerEvent`] in a dispatch batch, and Python answers
//! a registration with `accept()` or `refuse(reason)` whenever it is done (a registration
//! dropped unanswered counts as accepted, as the engine's [`TriggerAck`] does).

use std::sync::{Arc, Mutex};

use fnmesh_core::triggers::{TriggerAck, TriggerBinding, TriggerProvider};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::bridge::{Bridge, BridgeSender, Work};
use crate::engine::EngineHandle;
use crate::errors::IntoPyResult;

/// A trigger type whose bindings are handled by Python code behind a bridge.
pub(crate) struct PyTriggerProvider {
    pub(crate) trigger_type: String,
    pub(crate) bridge: BridgeSender,
}

impl TriggerProvider for PyTriggerProvider {
    fn register(&self, binding: Arc<TriggerBinding>, ack: TriggerAck) {
        self.bridge.send(Work::Trigger(TriggerEvent::new(
            &self.trigger_type,
            "register",
            &binding,
            Some(ack),
        )));
    }

    fn unregister(&self, binding: &TriggerBinding) {
        self.bridge.send(Work::Trigger(TriggerEvent::new(
            &self.trigger_type,
            "unregister",
            binding,
            None,
        )));
    }
}

/// A binding handed to (`kind == "register"`) or taken from (`"unregister"`) a Python
/// trigger type. Answer a registration once with `accept()` or `refuse(reason)`.
#[pyclass(frozen, module = "fnmesh._native", name = "TriggerEvent")]
pub struct TriggerEvent {
    #[pyo3(get)]
    kind: &'static str,
    #[pyo3(get)]
    trigger_type: String,
    #[pyo3(get)]
    binding_id: String,
    #[pyo3(get)]
    function_id: String,
    #[pyo3(get)]
    namespace: String,
    config: String,
    metadata: Option<String>,
    ack: Mutex<Option<TriggerAck>>,
}

impl TriggerEvent {
    fn new(
        trigger_type: &str,
        kind: &'static str,
        binding: &TriggerBinding,
        ack: Option<TriggerAck>,
    ) -> TriggerEvent {
        TriggerEvent {
            kind,
            trigger_type: trigger_type.to_owned(),
            binding_id: binding.id.clone(),
            function_id: binding.function_id.clone(),
            namespace: binding.namespace.clone(),
            config: binding.config.get().to_owned(),
            metadata: binding.metadata.as_ref().map(|m| m.get().to_owned()),
            ack: Mutex::new(ack),
        }
    }

    fn take_ack(&self) -> Option<TriggerAck> {
        self.ack.lock().ok().and_then(|mut a| a.take())
    }
}

#[pymethods]
impl TriggerEvent {
    /// The binding's config as JSON bytes (`b"null"` when none was given).
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.config.as_bytes())
    }

    /// The binding's metadata as JSON bytes, or `None`.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.metadata
            .as_ref()
            .map(|m| PyBytes::new(py, m.as_bytes()))
    }

    /// Accepts the binding. False when already answered (or not a registration).
    fn accept(&self) -> bool {
        match self.take_ack() {
            Some(ack) => {
                ack.accept();
                true
            }
            None => false,
        }
    }

    /// Refuses the binding: its registrant gets `trigger_registration_failed` with `reason`.
    /// False when already answered (or not a registration).
    fn refuse(&self, reason: String) -> bool {
        match self.take_ack() {
            Some(ack) => {
                ack.refuse(reason);
                true
            }
            None => false,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "TriggerEvent({}, trigger_type={:?}, binding_id={:?}, function_id={:?})",
            self.kind, self.trigger_type, self.binding_id, self.function_id
        )
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TriggerEvent>()?;
    m.add_function(wrap_pyfunction!(register_trigger_type, m)?)?;
    m.add_function(wrap_pyfunction!(unregister_trigger_type, m)?)?;
    Ok(())
}

/// Serves `trigger_type` from Python: its bindings reach `bridge`'s dispatch as
/// `TriggerEvent`s (a host-owned type of the engine, beside `http` and `cron`).
#[pyfunction]
#[pyo3(signature = (engine, bridge, trigger_type, description, *, namespace = "default"))]
fn register_trigger_type(
    engine: &EngineHandle,
    bridge: &Bridge,
    trigger_type: String,
    description: &str,
    namespace: &str,
) -> PyResult<()> {
    let (runtime, engine) = engine.live()?;
    // Bindings waiting for this type are delivered at once, from inside the runtime.
    let _guard = runtime.enter();
    let provider = PyTriggerProvider {
        trigger_type: trigger_type.clone(),
        bridge: bridge.sender(),
    };
    engine
        .register_trigger_type(namespace, &trigger_type, description, provider)
        .into_py_result()
}

/// Stops serving a trigger type registered with `register_trigger_type`; its bindings wait for
/// another provider. False when it was not registered.
#[pyfunction]
#[pyo3(signature = (engine, trigger_type, *, namespace = "default"))]
fn unregister_trigger_type(
    engine: &EngineHandle,
    trigger_type: &str,
    namespace: &str,
) -> PyResult<bool> {
    let (runtime, engine) = engine.live()?;
    let _guard = runtime.enter();
    Ok(engine.unregister_trigger_type(namespace, trigger_type))
}
