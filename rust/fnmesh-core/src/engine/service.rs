//! The seam between the engine and its services: [`EngineService`].
//!
//! A service is a part of the engine that brings its own functions, trigger types and tasks:
//! the HTTP trigger, cron, the queues, and the modules to come (state, pubsub, streams, data
//! channels, observability). The engine core knows none of them by name. It installs the
//! services of its list in order on a starting engine, through the same [`EngineRef`] a host
//! uses, and shuts them down in reverse order when it stops.
//!
//! Adding one: implement [`EngineService`] in the service's own folder (reading its settings
//! from [`EngineRef::config`], registering with [`EngineRef::register_engine_function`] and
//! [`EngineRef::register_engine_trigger_type`]), then add it to the standard list in
//! [`crate::services`] (or hand it to one engine with [`EngineBuilder::service`]).
//!
//! [`EngineBuilder::service`]: super::EngineBuilder::service

use std::any::Any;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::EngineRef;
use crate::function::Call;
use crate::registry::{FunctionDef, FunctionKind, DEFAULT_NAMESPACE};

/// A part of the engine with its own functions, trigger types and tasks, installed when the
/// engine starts and shut down when it stops.
///
/// An installed service usually keeps what it started (its trigger provider, its tasks) and a
/// [`WeakEngineRef`](super::WeakEngineRef) to call functions with: a strong [`EngineRef`] held
/// by something the engine owns would keep the engine alive in a cycle.
pub trait EngineService: Send + Sync + 'static {
    /// A short name for logs and errors (`http`, `cron`, `queues`).
    fn name(&self) -> &'static str;

    /// Installs the service on a starting engine, before it accepts workers: reads its settings
    /// from [`EngineRef::config`], registers its functions and trigger types, starts its tasks.
    /// Called once, in list order; an error stops the start (the services installed before
    /// this one are shut down).
    fn install<'a>(&'a self, engine: &'a EngineRef) -> BoxFuture<'a, Result<(), ServiceError>>;

    /// Stops the service's tasks (engine shutdown, in reverse list order, before the worker
    /// connections close). Does nothing for a service that was not installed.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// Why a service could not be installed. Converted into the [`std::io::Error`] that
/// [`EngineBuilder::start`](super::EngineBuilder::start) returns, with the same message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// A setting the service reads is invalid; the message names it
    /// ([`std::io::ErrorKind::InvalidInput`]).
    #[error("{0}")]
    InvalidConfig(String),
    /// A listener the service opens at start could not be opened
    /// ([`std::io::ErrorKind::AddrInUse`]).
    #[error("{0}")]
    Listen(String),
    /// One of the service's functions or trigger types could not be registered
    /// ([`std::io::ErrorKind::InvalidInput`]).
    #[error(transparent)]
    Registration(#[from] crate::Error),
}

impl ServiceError {
    /// The kind of the [`std::io::Error`] this becomes.
    pub fn kind(&self) -> std::io::ErrorKind {
        match self {
            ServiceError::InvalidConfig(_) | ServiceError::Registration(_) => {
                std::io::ErrorKind::InvalidInput
            }
            ServiceError::Listen(_) => std::io::ErrorKind::AddrInUse,
        }
    }
}

impl From<ServiceError> for std::io::Error {
    fn from(e: ServiceError) -> std::io::Error {
        std::io::Error::new(e.kind(), e)
    }
}

/// One function a service serves: its id, its description, and the handler spawned for each
/// call with the service's state (which answers through the call's reply).
pub type ServiceFunction<S> = (
    &'static str,
    &'static str,
    fn(Arc<S>, Call) -> BoxFuture<'static, ()>,
);

/// Registers a service's functions as engine functions (listed like built-ins, never shadowed
/// by a worker), each call run as its own task with `state`.
pub fn register_service_functions<S: Send + Sync + 'static>(
    engine: &EngineRef,
    state: &Arc<S>,
    functions: Vec<ServiceFunction<S>>,
) -> crate::Result<()> {
    for (id, description, handler) in functions {
        let state = state.clone();
        let native = move |call: Call| {
            tokio::spawn(handler(state.clone(), call));
        };
        let def = FunctionDef {
            kind: FunctionKind::Local,
            description: Some(description.to_owned()),
            ..FunctionDef::default()
        };
        engine.register_engine_function(DEFAULT_NAMESPACE, id, def, native)?;
    }
    Ok(())
}

/// One service of an engine's list, kept both as a service and as `Any` so that
/// [`Engine::service`](super::Engine::service) can hand it back by type.
#[derive(Clone)]
pub(super) struct ServiceEntry {
    pub(super) service: Arc<dyn EngineService>,
    any: Arc<dyn Any + Send + Sync>,
}

impl ServiceEntry {
    pub(super) fn new<S: EngineService>(service: S) -> ServiceEntry {
        let service = Arc::new(service);
        ServiceEntry {
            service: service.clone(),
            any: service,
        }
    }

    pub(super) fn downcast<S: EngineService>(&self) -> Option<&S> {
        self.any.downcast_ref::<S>()
    }
}

/// Shuts services down, last installed first.
pub(super) async fn shutdown_all(services: &[ServiceEntry]) {
    for entry in services.iter().rev() {
        entry.service.shutdown().await;
    }
}
