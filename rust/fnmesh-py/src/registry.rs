//! Python view of `fnmesh_core::registry` (owned by the registry work; placeholder).

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
