//! `fnmesh._native`: the thin PyO3 binding over `fnmesh-core`. No engine logic lives here; each
//! module below wraps one core module and maps its errors (see `errors.rs`).

use pyo3::prelude::*;

mod bridge;
mod client;
mod config;
mod engine;
mod errors;
mod external;
mod link;
mod logs;
mod protocol;
mod registry;
mod triggers;

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    protocol::register(m)?;
    registry::register(m)?;
    engine::register(m)?;
    logs::register(m)?;
    bridge::register(m)?;
    client::register(m)?;
    link::register(m)?;
    config::register(m)?;
    triggers::register(m)?;
    external::register(m)?;
    errors::register(m)?;
    Ok(())
}
