//! Maps `fnmesh_core::Error` onto the Python hierarchy in `fnmesh/errors.py`, one class per
//! variant. The classes live in Python (so they can carry attributes and multiple bases such as
//! `ValueError`); they are imported lazily the first time an error crosses the boundary.

use fnmesh_core::protocol::ErrorCode;
use fnmesh_core::Error;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

pyo3::import_exception!(fnmesh.errors, FnmeshError);
pyo3::import_exception!(fnmesh.errors, MalformedFrame);
pyo3::import_exception!(fnmesh.errors, FrameTooLarge);
pyo3::import_exception!(fnmesh.errors, FunctionConflict);
pyo3::import_exception!(fnmesh.errors, WorkerConflict);
pyo3::import_exception!(fnmesh.errors, InvalidNamespace);
pyo3::import_exception!(fnmesh.errors, InvalidArgument);
pyo3::import_exception!(fnmesh.errors, RegistrationError);
pyo3::import_exception!(fnmesh.errors, ConnectionFailed);
pyo3::import_exception!(fnmesh.errors, AddressInUse);

/// An engine that could not bind `port` (chosen by the setting `setting`) because it is taken.
pub fn address_in_use(err: &std::io::Error, host: &str, port: u16, setting: &str) -> PyErr {
    AddressInUse::new_err((
        format!("port {port} on {host} is already in use (setting `{setting}`): {err}"),
        port,
        setting.to_owned(),
    ))
}

/// Runs a blocking `f` (a shutdown from `Drop`) without holding the GIL, so Python threads keep
/// running while it waits: a handler finishing, a peer answering the close handshake. `Drop`
/// may run with or without the GIL; when Python cannot be attached (interpreter shutting
/// down), `f` runs as it is.
pub fn without_gil<F: FnOnce() + Send>(f: F) {
    let mut pending = Some(f);
    let slot = &mut pending;
    let ran = Python::try_attach(|py| {
        py.detach(|| {
            if let Some(f) = slot.take() {
                f();
            }
        })
    });
    if ran.is_none() {
        if let Some(f) = pending.take() {
            f();
        }
    }
}

/// Converts a core error into the matching Python exception.
pub fn to_py(err: Error) -> PyErr {
    let message = err.to_string();
    match err {
        Error::MalformedFrame(_) => MalformedFrame::new_err(message),
        Error::FrameTooLarge { size, limit } => FrameTooLarge::new_err((message, size, limit)),
        Error::FunctionConflict {
            namespace,
            function_id,
            owner,
        } => FunctionConflict::new_err((message, namespace, function_id, owner)),
        Error::WorkerConflict {
            namespace,
            name,
            owner,
        } => WorkerConflict::new_err((message, namespace, name, owner)),
        Error::InvalidNamespace => InvalidNamespace::new_err(message),
        Error::InvalidArgument(_) => InvalidArgument::new_err(message),
        // `Error` is non_exhaustive for downstream crates; a variant added to the core without a
        // class here still reaches Python as the root class rather than a bare Exception.
        #[allow(unreachable_patterns)]
        _ => FnmeshError::new_err(message),
    }
}

/// Extension to turn `fnmesh_core::Result` into `PyResult` with `?`.
pub trait IntoPyResult<T> {
    /// Maps the error variant by variant.
    fn into_py_result(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for fnmesh_core::Result<T> {
    fn into_py_result(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// Adds `ERROR_CODES`: every wire error code of the core's table (`fnmesh_core::protocol::codes`),
/// in its order, from which `fnmesh/errors.py` builds its code-to-exception map.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let codes = PyTuple::new(m.py(), ErrorCode::ALL.iter().map(|code| code.as_str()))?;
    m.add("ERROR_CODES", codes)
}
