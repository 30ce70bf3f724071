//! [`EngineBuilder`] and the running [`Engine`] it starts.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};

use super::service::{shutdown_all, EngineService, ServiceEntry};
use super::session::Handler;
use super::state::Shared;
use super::{EngineRef, HOST_OWNER};
use crate::config::EngineConfig;
use crate::function::{NativeFunction, Outcome};
use crate::invocation::SWEEP_INTERVAL;
use crate::protocol::ErrorCode;
use crate::protocol::RawJson;
use crate::registry::{ConflictPolicy, FunctionDef, FunctionKind, DEFAULT_NAMESPACE};
use crate::server::Server;

/// Builds and starts an [`Engine`]. [`Engine::builder`] starts from the default configuration
/// and the standard services; [`EngineBuilder::new`] from no service at all.
pub struct EngineBuilder {
    config: EngineConfig,
    natives: Vec<(String, String, FunctionDef, Arc<dyn NativeFunction>)>,
    services: Vec<ServiceEntry>,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder::new()
    }
}

impl EngineBuilder {
    /// A builder with the default configuration and no service: the worker server, the
    /// registries and the built-in functions only (no HTTP, cron or queues). Add services with
    /// [`EngineBuilder::service`].
    pub fn new() -> EngineBuilder {
        EngineBuilder {
            config: EngineConfig::default(),
            natives: Vec::new(),
            services: Vec::new(),
        }
    }

    /// Adds a service after those already listed: installed in list order at start, shut down
    /// in reverse order.
    pub fn service(mut self, service: impl EngineService) -> Self {
        self.services.push(ServiceEntry::new(service));
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// The worker WebSocket address (port 0 picks a free port).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.config.server.addr = addr;
        self
    }

    /// Requires workers to present this token (docs/protocol.md 11.5).
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.config.server.auth_token = Some(token.into());
        self
    }

    /// Replicas (default) or iii's rejection for a second owner of a function.
    pub fn function_conflict(mut self, policy: ConflictPolicy) -> Self {
        self.config.function_conflict = policy;
        self
    }

    /// Engine-side bound on pending calls.
    pub fn invocation_timeout(mut self, timeout: Duration) -> Self {
        self.config.invocation_timeout = timeout;
        self
    }

    /// Registers a native function in the `default` namespace.
    pub fn function(
        mut self,
        function_id: &str,
        def: FunctionDef,
        function: impl NativeFunction,
    ) -> Self {
        self.natives.push((
            DEFAULT_NAMESPACE.to_owned(),
            function_id.to_owned(),
            FunctionDef {
                kind: FunctionKind::Local,
                ..def
            },
            Arc::new(function),
        ));
        self
    }

    /// Installs the services, binds the listener and starts serving. Must run inside a tokio
    /// runtime.
    pub async fn start(self) -> std::io::Result<Engine> {
        let shared = Shared::new(self.config);
        super::builtins::install(&shared);
        super::access::install_log_builtins(&shared);
        for (ns, id, def, f) in self.natives {
            shared
                .register_native(&ns, &id, HOST_OWNER, def, f)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        }
        let handle = EngineRef {
            shared: shared.clone(),
        };
        let mut services = Vec::with_capacity(self.services.len());
        for entry in self.services {
            if let Err(e) = entry.service.install(&handle).await {
                shutdown_all(&services).await;
                return Err(e.into());
            }
            debug!(service = entry.service.name(), "engine service installed");
            services.push(entry);
        }
        let server = match Server::bind(
            shared.config.server.clone(),
            Arc::new(Handler::new(shared.clone(), None)),
        )
        .await
        {
            Ok(server) => server,
            Err(e) => {
                shutdown_all(&services).await;
                return Err(e);
            }
        };
        // Further listeners, each with its own access control (docs/access-control.md).
        let mut listeners = Vec::with_capacity(shared.config.listeners.len());
        for listener in shared.config.listeners.clone() {
            let handler = Arc::new(Handler::new(shared.clone(), listener.access));
            match Server::bind(listener.server, handler).await {
                Ok(bound) => {
                    info!(addr = %bound.local_addr(), "fnmesh engine listening for workers (extra listener)");
                    listeners.push(bound);
                }
                Err(e) => {
                    for bound in listeners {
                        bound.shutdown().await;
                    }
                    server.shutdown().await;
                    shutdown_all(&services).await;
                    return Err(e);
                }
            }
        }
        let weak = Arc::downgrade(&shared);
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(shared) => shared.sweep(),
                    None => break,
                }
            }
        });
        info!(addr = %server.local_addr(), "fnmesh engine listening for workers");
        Ok(Engine {
            shared,
            server,
            listeners,
            sweeper,
            services,
        })
    }
}

/// A running engine. Stop it with [`Engine::shutdown`].
pub struct Engine {
    shared: Arc<Shared>,
    server: Server,
    listeners: Vec<Server>,
    sweeper: tokio::task::JoinHandle<()>,
    services: Vec<ServiceEntry>,
}

impl Engine {
    /// Where workers connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Where each of [`EngineConfig::listeners`] listens, in their order.
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(Server::local_addr).collect()
    }

    /// `ws://host:port` for workers.
    pub fn url(&self) -> String {
        format!("ws://{}", self.local_addr())
    }

    /// The installed service of type `S`, if the engine runs one.
    pub fn service<S: EngineService>(&self) -> Option<&S> {
        self.services.iter().find_map(ServiceEntry::downcast::<S>)
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Registers a native function (owner [`HOST_OWNER`]) while running.
    pub fn register_function(
        &self,
        namespace: &str,
        function_id: &str,
        def: FunctionDef,
        function: impl NativeFunction,
    ) -> crate::Result<()> {
        self.handle()
            .register_function(namespace, function_id, def, function)
    }

    /// Removes a native function registered with [`Engine::register_function`].
    pub fn unregister_function(&self, namespace: &str, function_id: &str) -> crate::Result<bool> {
        self.handle().unregister_function(namespace, function_id)
    }

    /// Calls any function (local or on a worker) and waits for its outcome.
    pub async fn call(
        &self,
        namespace: &str,
        function_id: &str,
        data: RawJson,
        timeout: Option<Duration>,
    ) -> Outcome {
        self.handle()
            .call(namespace, function_id, data, None, timeout)
            .await
    }

    /// A cheap, cloneable handle that calls and registers functions on this engine from any
    /// task, for as long as it runs (a host binding keeps one per caller).
    pub fn handle(&self) -> EngineRef {
        EngineRef {
            shared: self.shared.clone(),
        }
    }

    /// Number of connected workers.
    pub fn worker_count(&self) -> usize {
        self.shared.conns.len()
    }

    /// Number of calls waiting for an answer.
    pub fn pending_count(&self) -> usize {
        self.shared.pending.len()
    }

    /// Number of data channels with an end nobody claimed yet (docs/protocol.md 1.7): a request
    /// in flight holds its own until it is over; swept ones and spent ones are not counted.
    pub fn channel_count(&self) -> usize {
        self.shared.channels.len()
    }

    /// Shuts the services down (in reverse order), stops accepting, closes every connection
    /// (their pending calls fail with `invocation_stopped`) and waits for the cleanup.
    pub async fn shutdown(self) {
        self.shared.stopped.store(true, Ordering::Release);
        shutdown_all(&self.services).await;
        for listener in self.listeners {
            listener.shutdown().await;
        }
        self.server.shutdown().await;
        self.sweeper.abort();
        for (id, pending) in self.shared.pending.drain_where(|_| true) {
            self.shared.abandon(&id, &pending);
            self.shared.deliver(
                &id,
                pending,
                Outcome::failure(ErrorCode::InvocationStopped, "engine shutting down"),
            );
        }
        info!("fnmesh engine stopped");
    }
}
