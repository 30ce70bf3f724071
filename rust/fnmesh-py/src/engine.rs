//! Python view of the engine: start an `fnmesh_core::engine::Engine` on a tokio runtime owned by
//! the handle and stop it; its `link()` registers Python functions and calls any function. The
//! engine never calls into Python: Python functions and awaited outcomes go through a
//! `Bridge`. The GIL is released while the engine starts and stops.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fnmesh_core::engine::{Engine, EngineRef};
use pyo3::prelude::*;

use crate::config::EngineSettings;
use crate::errors::InvalidArgument;
use crate::link::{Opened, PyLink};

/// Registers the classes and functions on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<EngineHandle>()?;
    Ok(())
}

/// A running engine and the tokio runtime it runs on.
#[pyclass(frozen, module = "fnmesh._native", name = "EngineHandle")]
pub struct EngineHandle {
    state: Mutex<Option<(tokio::runtime::Runtime, Engine)>>,
    addr: SocketAddr,
    /// What this engine's links reach it through; emptied by `stop()`.
    opened: Arc<Opened>,
}

#[pymethods]
impl EngineHandle {
    /// Binds the listener and starts the engine with `config` (an `fnmesh.EngineConfig`, read
    /// attribute by attribute). Raises `OSError` when the address is taken and
    /// `InvalidArgument` for a bad setting.
    #[staticmethod]
    fn start(py: Python<'_>, config: EngineSettings) -> PyResult<EngineHandle> {
        let (config, worker_threads) = config.into_core()?;
        let (worker_addr, http_addr, metrics_addr) =
            (config.server.addr, config.http.addr, config.metrics_addr);
        let streams_addr = config.streams.as_ref().map(|s| s.addr);
        py.detach(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(worker_threads)
                .thread_name("fnmesh-engine")
                .enable_all()
                .build()?;
            let engine = runtime.block_on(Engine::builder().config(config).start())?;
            let addr = engine.local_addr();
            let opened = Opened::new(
                runtime.handle().clone(),
                Arc::new(engine.handle()),
                "the engine is not running",
            );
            Ok::<_, std::io::Error>(EngineHandle {
                state: Mutex::new(Some((runtime, engine))),
                addr,
                opened,
            })
        })
        .map_err(|e| {
            if e.kind() != std::io::ErrorKind::AddrInUse {
                return PyErr::from(e);
            }
            // Name the setting whose port is taken: the worker listener's message names its
            // address, the metrics listener's too; anything else that binds at start is the HTTP
            // listener.
            let text = e.to_string();
            let (addr, setting) = match metrics_addr {
                _ if worker_addr.port() != 0 && text.contains(&worker_addr.to_string()) => {
                    (worker_addr, "port")
                }
                Some(m) if text.contains("/metrics") => (m, "metrics_port"),
                _ => match streams_addr.filter(|_| text.contains("streams_port")) {
                    Some(addr) => (addr, "streams_port"),
                    None => (http_addr, "http_port"),
                },
            };
            crate::errors::address_in_use(&e, &addr.ip().to_string(), addr.port(), setting)
        })
    }

    /// The way to the engine's functions (registering Python functions, calling any function
    /// through a bridge), in `namespace`. Every link closes when the engine stops.
    #[pyo3(signature = (namespace = "default"))]
    fn link(&self, namespace: &str) -> PyLink {
        PyLink::new(self.opened.clone(), Some(namespace.to_owned()))
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

    /// `host:port` of each further listener (setting `listeners`), in their order.
    #[getter]
    fn listener_addrs(&self) -> Vec<String> {
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        state.as_ref().map_or_else(Vec::new, |(_, engine)| {
            engine
                .listener_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect()
        })
    }

    /// `host:port` of the `/metrics` endpoint, when metrics are on.
    #[getter]
    fn metrics_addr(&self) -> Option<String> {
        let state = self.state.lock().ok()?;
        let (_, engine) = state.as_ref()?;
        engine.metrics_addr().map(|a| a.to_string())
    }

    /// `host:port` of the client stream WebSocket (`None` when streams are off).
    #[getter]
    fn streams_addr(&self) -> Option<String> {
        let state = self.state.lock().ok()?;
        let (_, engine) = state.as_ref()?;
        engine.streams_addr().map(|a| a.to_string())
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

    /// Data channels the engine holds (docs/protocol.md 1.7).
    #[getter]
    fn channel_count(&self) -> usize {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|(_, e)| e.channel_count()))
            .unwrap_or(0)
    }

    /// Closes every connection and stops the engine. Idempotent.
    fn stop(&self, py: Python<'_>) {
        self.opened.close();
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
    /// Offers the HTTP trigger's connections to `host` from now on (`None`: the runtime serves
    /// them), or `InvalidArgument` once stopped.
    pub(crate) fn set_http_host(
        &self,
        host: Option<Arc<dyn fnmesh_core::http::HttpHost>>,
    ) -> PyResult<()> {
        let state = self
            .state
            .lock()
            .map_err(|_| InvalidArgument::new_err("the engine is not running"))?;
        let (_, engine) = state
            .as_ref()
            .ok_or_else(|| InvalidArgument::new_err("the engine is not running"))?;
        if let Some(http) = engine.service::<fnmesh_core::http::HttpService>() {
            http.set_host(host);
        }
        Ok(())
    }

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
        self.opened.close();
        let taken = self.state.lock().map(|mut s| s.take()).unwrap_or(None);
        if let Some((runtime, engine)) = taken {
            crate::errors::without_gil(move || {
                runtime.block_on(engine.shutdown());
                runtime.shutdown_timeout(Duration::from_secs(5));
            });
        }
    }
}
