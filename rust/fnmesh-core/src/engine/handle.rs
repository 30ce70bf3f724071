//! [`EngineRef`], the cloneable handle on a running engine that hosts, bindings and services
//! call and register through, and [`WeakEngineRef`], the same without keeping the engine alive.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::state::{uuid, Provider, Shared};
use super::{ENGINE_OWNER, HOST_OWNER};
use crate::config::EngineConfig;
use crate::external::ExternalFunctions;
use crate::function::{CallOptions, NativeFunction, Outcome};
use crate::protocol::{ErrorBody, RawJson};
use crate::registry::{check_namespace, FunctionDef, FunctionKind, DEFAULT_NAMESPACE};
use crate::triggers::{TriggerBinding, TriggerProvider, TriggerSpec};

/// A cloneable handle on a running [`Engine`](super::Engine) (see
/// [`Engine::handle`](super::Engine::handle)). Once the engine has stopped, calls fail at once
/// with `invocation_stopped`.
#[derive(Clone)]
pub struct EngineRef {
    pub(super) shared: Arc<Shared>,
}

impl EngineRef {
    /// Calls any function (local or on a worker) with an optional metadata sidecar and waits
    /// for its outcome, bounded by `timeout` (the engine's `invocation_timeout` when `None`).
    pub async fn call(
        &self,
        namespace: &str,
        function_id: &str,
        data: RawJson,
        metadata: Option<RawJson>,
        timeout: Option<Duration>,
    ) -> Outcome {
        let options = CallOptions {
            namespace: Some(namespace.to_owned()),
            metadata,
            timeout,
            ..CallOptions::default()
        };
        self.call_with(function_id, data, options).await
    }

    /// Calls any function with every option (namespace, metadata, timeout, W3C trace context
    /// handed on to the handler) and waits for its outcome.
    pub async fn call_with(
        &self,
        function_id: &str,
        data: RawJson,
        options: CallOptions,
    ) -> Outcome {
        self.shared.call(function_id, data, options).await
    }

    /// The engine's telemetry hub: services add their sinks (the store, an exporter) here, and
    /// the engine's spans and the workers' `/otel` batches are submitted to it.
    pub fn telemetry(&self) -> &crate::telemetry::Telemetry {
        &self.shared.telemetry
    }

    /// The engine's tracer: services start their spans with it (`telemetry/spans.rs`).
    pub fn tracer(&self) -> &crate::telemetry::spans::Tracer {
        &self.shared.tracer
    }

    /// The last calls, newest first (at most [`super::recent::RECENT_CAPACITY`]), recorded only
    /// while someone watches: see [`EngineRef::watch_invocations`].
    pub fn recent_invocations(&self) -> Vec<super::recent::RecentInvocation> {
        self.shared.recent.snapshot()
    }

    /// Records the calls that finish during the next [`super::recent::WATCH_WINDOW`] (the
    /// console calls it on each look; recording costs the hot path nothing while off).
    pub fn watch_invocations(&self) {
        self.shared.recent.watch();
    }

    /// Invokes a function without waiting for (or receiving) its outcome.
    pub fn send(
        &self,
        namespace: &str,
        function_id: &str,
        data: RawJson,
        metadata: Option<RawJson>,
    ) {
        let options = CallOptions {
            namespace: Some(namespace.to_owned()),
            metadata,
            ..CallOptions::default()
        };
        self.send_with(function_id, data, options);
    }

    /// [`EngineRef::send`] with every option (the timeout does not apply). Dropped silently
    /// after shutdown or for a blank namespace, as nothing would receive an error.
    pub fn send_with(&self, function_id: &str, data: RawJson, options: CallOptions) {
        let namespace = options.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        if !self.shared.stopped.load(Ordering::Acquire) && check_namespace(namespace).is_ok() {
            self.shared.fire(function_id, data, options);
        }
    }

    /// Serves the external HTTP functions workers register (`registerfunction` with an
    /// `invocation`, docs/protocol.md section 5) through `host`; `None` stops accepting new ones (those
    /// registered stay until their workers leave).
    pub fn set_external_functions(&self, host: Option<Arc<dyn ExternalFunctions>>) {
        *self
            .shared
            .external
            .write()
            .unwrap_or_else(|p| p.into_inner()) = host;
    }

    /// Registers a native function (owner [`HOST_OWNER`]), like
    /// [`Engine::register_function`](super::Engine::register_function).
    /// It is listed with kind `local`, or `http` when `def` says so (a host's own external
    /// function).
    pub fn register_function(
        &self,
        namespace: &str,
        function_id: &str,
        def: FunctionDef,
        function: impl NativeFunction,
    ) -> crate::Result<()> {
        self.shared.register_native(
            namespace,
            function_id,
            HOST_OWNER,
            FunctionDef {
                kind: if def.kind == FunctionKind::Http {
                    FunctionKind::Http
                } else {
                    FunctionKind::Local
                },
                ..def
            },
            Arc::new(function),
        )
    }

    /// Serves the trigger type `(namespace, id)` from this process (owner [`HOST_OWNER`]): the
    /// provider receives every binding of that type, including those that waited for one.
    pub fn register_trigger_type(
        &self,
        namespace: &str,
        id: &str,
        description: &str,
        provider: impl TriggerProvider,
    ) -> crate::Result<()> {
        self.shared.add_native_trigger_type(
            namespace,
            id,
            description,
            Arc::new(provider),
            HOST_OWNER,
        )
    }

    /// Stops serving a trigger type registered by the host; its bindings wait for another
    /// provider. False when the host did not provide it.
    pub fn unregister_trigger_type(&self, namespace: &str, id: &str) -> bool {
        let Some(removed) = self
            .shared
            .trigger_types
            .unregister(namespace, id, HOST_OWNER)
        else {
            return false;
        };
        for slot in self.shared.bindings.active_for(namespace, id) {
            if let Provider::Native(native) = &removed.provider {
                native.unregister(&slot.binding);
            }
            self.shared.activate(&slot.binding);
        }
        true
    }

    /// Binds a function to a trigger type, like `engine::register_trigger` (the binding is not
    /// tied to a connection). Waits for the provider's verdict; returns the binding id, or the
    /// provider's refusal (`trigger_registration_failed`).
    pub async fn register_trigger(&self, spec: TriggerSpec) -> Result<String, ErrorBody> {
        let namespace = spec
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        let binding = TriggerBinding {
            id: spec.id.unwrap_or_else(uuid),
            trigger_type: spec.trigger_type,
            function_id: spec.function_id,
            origin_namespace: namespace.clone(),
            namespace,
            trigger_namespace: spec.trigger_namespace,
            config: spec.config,
            metadata: spec.metadata,
            owner: None,
        };
        self.shared.bind(binding).await
    }

    /// Removes a binding (made by anyone); false when there was none.
    pub fn unregister_trigger(&self, id: &str) -> bool {
        self.shared.unbind(id)
    }

    /// Whether the provider of binding `newcomer` may hand it what binding `current` holds (an
    /// HTTP route with the same method and path): see `Shared::may_take_over`.
    pub(crate) fn may_take_over_binding(&self, current: &str, newcomer: &TriggerBinding) -> bool {
        self.shared.may_take_over(current, newcomer)
    }

    /// Removes binding `id`, whose provider handed what it held to a later binding of the same
    /// worker.
    pub(crate) fn drop_replaced_binding(&self, id: &str) {
        self.shared.unbind(id);
    }

    /// Removes a function registered by the host.
    pub fn unregister_function(&self, namespace: &str, function_id: &str) -> crate::Result<bool> {
        let removed = self
            .shared
            .functions
            .unregister(namespace, function_id, HOST_OWNER)?;
        if removed {
            self.shared.functions_changed();
        }
        Ok(removed)
    }

    /// Whether something serves `function_id` in `namespace` right now (a call would be
    /// routed, not fail with `function_not_found`).
    pub fn serves(&self, namespace: &str, function_id: &str) -> bool {
        self.shared.functions.is_served(namespace, function_id)
    }

    /// The data channels (docs/protocol.md 1.7): a service makes the channels it hands out here.
    pub fn channels(&self) -> &Arc<crate::channels::ChannelHub> {
        &self.shared.channels
    }

    /// The configuration the engine started with (a service reads its settings here).
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Registers a function of the engine itself (owner [`ENGINE_OWNER`]), as a service does
    /// for its own (`engine::queue::enqueue`, ...): listed like a built-in, and no worker may
    /// shadow it. `def` is kept as given.
    pub fn register_engine_function(
        &self,
        namespace: &str,
        function_id: &str,
        def: FunctionDef,
        function: impl NativeFunction,
    ) -> crate::Result<()> {
        self.shared.register_native(
            namespace,
            function_id,
            ENGINE_OWNER,
            def,
            Arc::new(function),
        )
    }

    /// Serves a trigger type of the engine itself (owner [`ENGINE_OWNER`]) from this process, as
    /// a service does for its own (`http`, `cron`, ...): the provider receives every binding of
    /// that type, including those that waited for one.
    pub fn register_engine_trigger_type(
        &self,
        namespace: &str,
        id: &str,
        description: &str,
        provider: impl TriggerProvider,
    ) -> crate::Result<()> {
        self.shared.add_native_trigger_type(
            namespace,
            id,
            description,
            Arc::new(provider),
            ENGINE_OWNER,
        )
    }

    /// True once the engine has stopped.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// A handle that does not keep the engine alive (for what the engine itself owns, like a
    /// trigger provider, which would otherwise hold it in a cycle).
    pub fn downgrade(&self) -> WeakEngineRef {
        WeakEngineRef {
            shared: Arc::downgrade(&self.shared),
        }
    }
}

/// An [`EngineRef`] that does not keep the engine alive; see [`EngineRef::downgrade`].
#[derive(Clone)]
pub struct WeakEngineRef {
    pub(super) shared: Weak<Shared>,
}

impl WeakEngineRef {
    /// The engine, while it exists.
    pub fn upgrade(&self) -> Option<EngineRef> {
        self.shared.upgrade().map(|shared| EngineRef { shared })
    }
}

impl std::fmt::Debug for WeakEngineRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakEngineRef").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EngineRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineRef")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}
