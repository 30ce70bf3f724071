//! Python view of `fnmesh_core::registry::FunctionsRegistry`, holding Python callables as
//! handlers. Schemas and metadata are kept as raw JSON in the core (the engine shares that form
//! with remote workers), so they are JSON-encoded on `register` and decoded on `lookup`/`list`;
//! `select` (the hot path) touches no JSON.

use std::sync::{Arc, Mutex};

use fnmesh_core::registry::{
    check_namespace, ConflictPolicy, FunctionDef, FunctionKind, FunctionsRegistry as Core, Lease,
    ListFilter, Registered,
};
use fnmesh_core::{protocol::RawJson, Error};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::errors::IntoPyResult;

type Handler = Arc<Py<PyAny>>;

/// Registers the classes on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<FunctionsRegistry>()?;
    m.add_class::<FunctionInfo>()?;
    m.add_class::<Replica>()?;
    Ok(())
}

fn to_raw(
    py: Python<'_>,
    what: &str,
    value: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<RawJson>> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let kwargs = PyDict::new(py);
    kwargs.set_item("ensure_ascii", false)?;
    kwargs.set_item("separators", (",", ":"))?;
    let text = match py
        .import("json")?
        .call_method("dumps", (value,), Some(&kwargs))
    {
        Ok(text) => text,
        Err(err) => {
            let bad = Err::<(), _>(Error::InvalidArgument(format!(
                "{what} must be JSON-serialisable: {err}"
            )))
            .into_py_result()
            .unwrap_err();
            bad.set_cause(py, Some(err));
            return Err(bad);
        }
    };
    let text: String = text.extract()?;
    // json.dumps always produces valid JSON, so this cannot fail in practice.
    serde_json::value::RawValue::from_string(text)
        .map(Some)
        .map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))
        .into_py_result()
}

fn from_raw(py: Python<'_>, raw: Option<&RawJson>) -> PyResult<Py<PyAny>> {
    match raw {
        None => Ok(py.None()),
        Some(raw) => Ok(py
            .import("json")?
            .call_method1("loads", (raw.get(),))?
            .unbind()),
    }
}

fn snapshot(py: Python<'_>, info: fnmesh_core::registry::FunctionInfo) -> PyResult<FunctionInfo> {
    Ok(FunctionInfo {
        request_format: from_raw(py, info.def.request_format.as_ref())?,
        response_format: from_raw(py, info.def.response_format.as_ref())?,
        metadata: from_raw(py, info.def.metadata.as_ref())?,
        kind: info.def.kind.as_str(),
        description: info.def.description.clone(),
        owners: PyTuple::new(py, info.owners.iter().map(|o| &**o))?.unbind(),
        namespace: info.namespace,
        function_id: info.function_id,
    })
}

/// Functions by `(namespace, function_id)`, each served by one or more replicas.
#[pyclass(frozen, module = "fnmesh._native", name = "FunctionsRegistry")]
pub struct FunctionsRegistry {
    core: Core<Handler>,
}

#[pymethods]
impl FunctionsRegistry {
    #[new]
    #[pyo3(signature = (conflict = "replicate"))]
    fn new(conflict: &str) -> PyResult<Self> {
        let policy: ConflictPolicy = conflict.parse().into_py_result()?;
        Ok(FunctionsRegistry {
            core: Core::new(policy),
        })
    }

    /// The conflict policy: `"replicate"` or `"reject"`.
    #[getter]
    fn conflict(&self) -> &'static str {
        self.core.policy().as_str()
    }

    /// Registers `handler` as `owner`'s replica. True when the key is new.
    #[pyo3(signature = (
        function_id, handler, *, owner, namespace = "default", kind = "local",
        description = None, request_format = None, response_format = None, metadata = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn register(
        &self,
        py: Python<'_>,
        function_id: &str,
        handler: Py<PyAny>,
        owner: &str,
        namespace: &str,
        kind: &str,
        description: Option<String>,
        request_format: Option<&Bound<'_, PyAny>>,
        response_format: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let kind: FunctionKind = kind.parse().into_py_result()?;
        let def = FunctionDef {
            kind,
            description,
            request_format: to_raw(py, "request_format", request_format)?,
            response_format: to_raw(py, "response_format", response_format)?,
            metadata: to_raw(py, "metadata", metadata)?,
        };
        let outcome = self
            .core
            .register(namespace, function_id, owner, Arc::new(handler), def)
            .into_py_result()?;
        Ok(outcome == Registered::Created)
    }

    /// Removes `owner`'s replica; True when something was removed.
    #[pyo3(signature = (function_id, *, owner, namespace = "default"))]
    fn unregister(&self, function_id: &str, owner: &str, namespace: &str) -> PyResult<bool> {
        self.core
            .unregister(namespace, function_id, owner)
            .into_py_result()
    }

    /// A snapshot of the function, or None.
    #[pyo3(signature = (function_id, namespace = "default"))]
    fn lookup(
        &self,
        py: Python<'_>,
        function_id: &str,
        namespace: &str,
    ) -> PyResult<Option<FunctionInfo>> {
        check_namespace(namespace).into_py_result()?;
        self.core
            .lookup(namespace, function_id)
            .map(|info| snapshot(py, info))
            .transpose()
    }

    /// Picks a replica (least in flight, round-robin among equals) and counts a call on it until
    /// the returned lease is released. None when the function is not registered.
    #[pyo3(signature = (function_id, namespace = None))]
    fn select(
        &self,
        py: Python<'_>,
        function_id: &Bound<'_, PyString>,
        namespace: Option<&Bound<'_, PyString>>,
    ) -> PyResult<Option<Replica>> {
        let namespace = namespace.unwrap_or_else(|| pyo3::intern!(py, "default"));
        let ns = namespace.to_str()?;
        check_namespace(ns).into_py_result()?;
        let Some(lease) = self.core.select(ns, function_id.to_str()?) else {
            return Ok(None);
        };
        Ok(Some(Replica {
            lease: Mutex::new(lease),
            namespace: namespace.clone().unbind(),
            function_id: function_id.clone().unbind(),
        }))
    }

    /// Functions matching every given filter, sorted by (namespace, function_id).
    #[pyo3(signature = (namespace = None, prefix = None, search = None))]
    fn list(
        &self,
        py: Python<'_>,
        namespace: Option<&str>,
        prefix: Option<&str>,
        search: Option<&str>,
    ) -> PyResult<Vec<FunctionInfo>> {
        if let Some(ns) = namespace {
            check_namespace(ns).into_py_result()?;
        }
        self.core
            .list(ListFilter {
                namespace,
                prefix,
                search,
            })
            .into_iter()
            .map(|info| snapshot(py, info))
            .collect()
    }

    /// Removes every replica `owner` serves; returns the affected keys, sorted.
    fn remove_owner(&self, owner: &str) -> Vec<(String, String)> {
        self.core
            .remove_owner(owner)
            .into_iter()
            .map(|key| (key.namespace().to_owned(), key.function_id().to_owned()))
            .collect()
    }

    fn __len__(&self) -> usize {
        self.core.len()
    }

    /// `"id" in registry` (namespace "default") or `("namespace", "id") in registry`.
    fn __contains__(&self, key: &Bound<'_, PyAny>) -> bool {
        if let Ok(id) = key.extract::<&str>() {
            return self.core.contains("default", id);
        }
        if let Ok((ns, id)) = key.extract::<(String, String)>() {
            return self.core.contains(&ns, &id);
        }
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "FunctionsRegistry(conflict={:?}, functions={})",
            self.core.policy().as_str(),
            self.core.len()
        )
    }
}

/// A selected replica: one call in flight on it until `release()` (or the end of a `with`).
#[pyclass(frozen, module = "fnmesh._native", name = "Replica")]
pub struct Replica {
    lease: Mutex<Lease<Handler>>,
    namespace: Py<PyString>,
    function_id: Py<PyString>,
}

impl Replica {
    fn lease(&self) -> std::sync::MutexGuard<'_, Lease<Handler>> {
        // A panic never happens while the lock is held, but recover rather than propagate one.
        self.lease
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[pymethods]
impl Replica {
    /// The replica's handler, as registered.
    #[getter]
    fn handler(&self, py: Python<'_>) -> Py<PyAny> {
        self.lease().handler().clone_ref(py)
    }

    /// The replica's owner.
    #[getter]
    fn owner(&self) -> String {
        self.lease().owner().to_string()
    }

    #[getter]
    fn namespace(&self, py: Python<'_>) -> Py<PyString> {
        self.namespace.clone_ref(py)
    }

    #[getter]
    fn function_id(&self, py: Python<'_>) -> Py<PyString> {
        self.function_id.clone_ref(py)
    }

    /// Calls in flight on this replica right now.
    #[getter]
    fn in_flight(&self) -> usize {
        self.lease().in_flight()
    }

    /// True once released.
    #[getter]
    fn released(&self) -> bool {
        self.lease().is_released()
    }

    /// Ends the call; idempotent.
    fn release(&self) {
        self.lease().release();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) -> bool {
        self.release();
        false
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let lease = self.lease();
        format!(
            "Replica(namespace={:?}, function_id={:?}, owner={:?}, in_flight={}, released={})",
            self.namespace.bind(py).to_string(),
            self.function_id.bind(py).to_string(),
            &**lease.owner(),
            lease.in_flight(),
            lease.is_released()
        )
    }
}

/// A snapshot of one registered function.
#[pyclass(frozen, module = "fnmesh._native", name = "FunctionInfo")]
pub struct FunctionInfo {
    #[pyo3(get)]
    namespace: String,
    #[pyo3(get)]
    function_id: String,
    #[pyo3(get)]
    kind: &'static str,
    #[pyo3(get)]
    description: Option<String>,
    #[pyo3(get)]
    request_format: Py<PyAny>,
    #[pyo3(get)]
    response_format: Py<PyAny>,
    #[pyo3(get)]
    metadata: Py<PyAny>,
    #[pyo3(get)]
    owners: Py<PyTuple>,
}

impl FunctionInfo {
    fn same(&self, py: Python<'_>, other: &FunctionInfo) -> PyResult<bool> {
        Ok(self.namespace == other.namespace
            && self.function_id == other.function_id
            && self.kind == other.kind
            && self.description == other.description
            && self
                .request_format
                .bind(py)
                .eq(other.request_format.bind(py))?
            && self
                .response_format
                .bind(py)
                .eq(other.response_format.bind(py))?
            && self.metadata.bind(py).eq(other.metadata.bind(py))?
            && self.owners.bind(py).eq(other.owners.bind(py))?)
    }
}

#[pymethods]
impl FunctionInfo {
    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match other.cast::<FunctionInfo>() {
            Ok(other) => Ok(self
                .same(py, other.get())?
                .into_pyobject(py)?
                .to_owned()
                .into_any()
                .unbind()),
            Err(_) => Ok(py.NotImplemented()),
        }
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.namespace, &self.function_id).hash(&mut h);
        h.finish()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "FunctionInfo(namespace={:?}, function_id={:?}, kind={:?}, description={}, owners={})",
            self.namespace,
            self.function_id,
            self.kind,
            match &self.description {
                Some(d) => format!("{d:?}"),
                None => "None".to_owned(),
            },
            self.owners.bind(py).repr()?
        ))
    }
}
