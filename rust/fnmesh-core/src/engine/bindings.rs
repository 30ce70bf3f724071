//! Trigger bindings: a binding (from a worker's `registertrigger`, `engine::register_trigger` or
//! the host) delivered to its trigger type's provider, a worker or a native provider, and that
//! provider's verdict; parked while no provider serves its type, handed over when one arrives,
//! retracted when it is removed (docs/protocol.md 6.1-6.2).

use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::state::{raw_null, send_msg, Provider, Shared, WorkerState};
use crate::error::Error;
use crate::protocol::ErrorCode;
use crate::protocol::{
    ErrorBody, Message, RegisterTrigger, TriggerRegistrationResult, UnregisterTrigger,
};
use crate::registry::{check_namespace, DEFAULT_NAMESPACE};
use crate::server::Connection;
use crate::triggers::{
    BindingState, TriggerAck, TriggerBinding, TriggerProvider, TriggerRefusal, TriggerType,
    BUILTIN_TRIGGER_TYPES,
};

impl Shared {
    /// Registers a trigger type served in this process and hands it its bindings.
    pub(crate) fn add_native_trigger_type(
        &self,
        namespace: &str,
        id: &str,
        description: &str,
        provider: Arc<dyn TriggerProvider>,
        owner: &str,
    ) -> crate::Result<()> {
        let previous = self.trigger_types.register(TriggerType {
            namespace: namespace.to_owned(),
            id: id.to_owned(),
            description: description.to_owned(),
            trigger_request_format: None,
            call_request_format: None,
            owner: owner.into(),
            provider: Provider::Native(provider),
        })?;
        info!(
            namespace,
            trigger_type = id,
            "trigger type served in process"
        );
        self.provider_arrived(namespace, id, previous, owner);
        Ok(())
    }

    /// A worker's `registertrigger`: stores the binding (owned by the connection) and delivers it.
    pub(super) fn on_register_trigger(&self, ws: &Arc<WorkerState>, ns: &str, t: RegisterTrigger) {
        let conn = &ws.conn;
        let namespace = t
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        let blank = check_namespace(&namespace).and_then(|_| {
            t.trigger_namespace
                .as_deref()
                .map_or(Ok(()), check_namespace)
        });
        let report = |code: ErrorCode, message: String| {
            send_msg(
                conn,
                &Message::TriggerRegistrationResult(TriggerRegistrationResult {
                    id: t.id.clone(),
                    trigger_type: t.trigger_type.clone(),
                    function_id: t.function_id.clone(),
                    error: Some(ErrorBody::new(code, message)),
                    ..TriggerRegistrationResult::default()
                }),
            );
        };
        if let Err(e) = blank {
            report(e.error_code(), e.to_string());
            return;
        }
        if let Some(existing) = self.bindings.get(&t.id) {
            if !self.may_replace(&existing.binding, ws) {
                warn!(worker = %conn.id(), trigger_id = %t.id, "trigger registration refused: the id belongs to another worker's binding");
                report(
                    ErrorCode::TriggerRegistrationFailed,
                    format!("trigger id '{}' is registered by another worker", t.id),
                );
                return;
            }
        }
        let binding = TriggerBinding {
            id: t.id.clone(),
            trigger_type: t.trigger_type.clone(),
            function_id: t.function_id.clone(),
            namespace,
            trigger_namespace: t.trigger_namespace.clone(),
            config: t.config.clone().unwrap_or_else(raw_null),
            metadata: t.metadata.clone(),
            owner: Some(conn.id().clone()),
            origin_namespace: ns.to_owned(),
        };
        match self.bindings.insert(binding, BindingState::Pending) {
            Ok(previous) => {
                if let Some(prev) = previous {
                    self.retract(&prev.binding, &prev.state);
                }
                if let Some(slot) = self.bindings.get(&t.id) {
                    info!(worker = %conn.id(), trigger_id = %t.id, trigger_type = %t.trigger_type, function_id = %t.function_id, "trigger registered");
                    self.activate_new(&slot.binding);
                }
            }
            Err(e) => report(ErrorCode::TriggerRegistrationFailed, e.to_string()),
        }
    }

    /// Whether connection `ws` may replace `existing` by registering a binding with its id: its
    /// own binding, or one whose connection is gone or going, or one made by an earlier
    /// connection of the same worker (same name and namespace: a reconnect replaying its
    /// bindings). Never a durable binding (`engine::register_trigger`) nor another live
    /// worker's.
    fn may_replace(&self, existing: &TriggerBinding, ws: &Arc<WorkerState>) -> bool {
        existing
            .owner
            .as_deref()
            .is_some_and(|owner| self.same_worker_or_gone(owner, ws.conn.id()))
    }

    /// Whether binding `newcomer` may take over what binding `current` holds at its provider
    /// (the HTTP trigger: the same method and path): only when `current` is gone, or both were
    /// made by connections of one worker as [`Shared::may_replace`] has it. Never from a
    /// durable or host binding, nor by one.
    pub(crate) fn may_take_over(&self, current: &str, newcomer: &TriggerBinding) -> bool {
        let Some(slot) = self.bindings.get(current) else {
            return true; // nothing holds it any more
        };
        match (slot.binding.owner.as_deref(), newcomer.owner.as_deref()) {
            (Some(owner), Some(new_owner)) => self.same_worker_or_gone(owner, new_owner),
            _ => false,
        }
    }

    /// Connection `newcomer` is connection `owner`, or `owner` is gone or going, or both are
    /// connections of one worker (same name and namespace: a reconnect).
    fn same_worker_or_gone(&self, owner: &str, newcomer: &str) -> bool {
        if owner == newcomer {
            return true;
        }
        let live = self.conns.get(owner).is_some_and(|o| {
            !o.conn.is_closed() && !o.cleaned.load(std::sync::atomic::Ordering::Acquire)
        });
        if !live {
            return true;
        }
        let identity = |id: &str| {
            self.workers
                .get(id)
                .and_then(|w| Some((w.namespace.clone(), w.name()?.to_owned())))
        };
        matches!((identity(owner), identity(newcomer)), (Some(a), Some(b)) if a == b)
    }

    /// Activates a binding just registered: as [`Shared::activate`], except that a binding to one
    /// of iii's built-in trigger types ([`BUILTIN_TRIGGER_TYPES`]) that no provider serves is
    /// refused at once (`trigger_registration_failed` naming the type) instead of parked: no
    /// worker is expected to bring it. Parking stays for every other type, and for a built-in
    /// type's bindings that lose the worker that provided it.
    fn activate_new(&self, binding: &Arc<TriggerBinding>) {
        let default_only = binding
            .trigger_namespace
            .as_deref()
            .is_none_or(|ns| ns == DEFAULT_NAMESPACE);
        let unserved = default_only
            && BUILTIN_TRIGGER_TYPES.contains(&binding.trigger_type.as_str())
            && self
                .trigger_types
                .resolve(
                    &binding.trigger_type,
                    binding.trigger_namespace.as_deref(),
                    &binding.origin_namespace,
                )
                .is_none();
        if unserved {
            let reason = format!(
                "trigger type '{}' is not served by this engine (its module is not implemented \
                 or is turned off) and no worker provides it",
                binding.trigger_type
            );
            self.native_verdict(binding, Err(TriggerRefusal(reason)));
            return;
        }
        self.activate(binding);
    }

    /// Resolves a binding's provider and delivers it, or parks it as pending.
    pub(crate) fn activate(&self, binding: &Arc<TriggerBinding>) {
        let provider = self.trigger_types.resolve(
            &binding.trigger_type,
            binding.trigger_namespace.as_deref(),
            &binding.origin_namespace,
        );
        let Some(provider) = provider else {
            warn!(trigger_id = %binding.id, trigger_type = %binding.trigger_type, "no provider for this trigger type yet: binding parked");
            self.bindings.set_state(&binding.id, BindingState::Pending);
            return;
        };
        if let Provider::Worker(conn) = &provider.provider {
            let delivery = Message::RegisterTrigger(RegisterTrigger {
                id: binding.id.clone(),
                trigger_type: binding.trigger_type.clone(),
                function_id: binding.function_id.clone(),
                config: Some(binding.config.clone()),
                metadata: binding.metadata.clone(),
                namespace: (binding.namespace != DEFAULT_NAMESPACE)
                    .then(|| binding.namespace.clone()),
                trigger_namespace: (provider.namespace != DEFAULT_NAMESPACE)
                    .then(|| provider.namespace.clone()),
                ..RegisterTrigger::default()
            });
            send_msg(conn, &delivery);
        }
        self.bindings.set_state(
            &binding.id,
            BindingState::Active {
                provider_namespace: provider.namespace.clone(),
            },
        );
        if let Provider::Native(native) = &provider.provider {
            let me = self.me.clone();
            let delivered = binding.clone();
            native.register(
                binding.clone(),
                TriggerAck::new(move |verdict| {
                    if let Some(shared) = me.upgrade() {
                        shared.native_verdict(&delivered, verdict);
                    }
                }),
            );
        }
    }

    /// A native provider's answer on a binding: a refusal drops the binding and tells whoever
    /// registered it (docs/protocol.md 6.2, in-process providers).
    fn native_verdict(&self, binding: &Arc<TriggerBinding>, verdict: Result<(), TriggerRefusal>) {
        let error = verdict
            .err()
            .map(|refusal| ErrorBody::new(ErrorCode::TriggerRegistrationFailed, refusal.0));
        if let Some((_, waiter)) = self.acks.remove(&binding.id) {
            let _ = waiter.send(error.clone());
        }
        let Some(error) = error else {
            return;
        };
        // Only if the binding under this id is still the one refused (not a replacement).
        let current = self
            .bindings
            .get(&binding.id)
            .is_some_and(|slot| Arc::ptr_eq(&slot.binding, binding));
        if !current {
            return;
        }
        self.bindings.remove(&binding.id);
        warn!(trigger_id = %binding.id, trigger_type = %binding.trigger_type, "binding refused: {}", error.message);
        if let Some(owner) = binding.owner.as_ref().and_then(|o| self.conns.get(o)) {
            send_msg(
                &owner.conn,
                &Message::TriggerRegistrationResult(TriggerRegistrationResult {
                    id: binding.id.clone(),
                    trigger_type: binding.trigger_type.clone(),
                    function_id: binding.function_id.clone(),
                    error: Some(error),
                    ..TriggerRegistrationResult::default()
                }),
            );
        }
    }

    /// A provider registered `(tns, tid)` (replacing `previous`, if any): it takes over the
    /// type's bindings, those that waited for a provider, and those of its namespace that had
    /// fallen back to the `default` provider.
    pub(crate) fn provider_arrived(
        &self,
        tns: &str,
        tid: &str,
        previous: Option<Arc<TriggerType<Provider>>>,
        new_owner: &str,
    ) {
        let taken_over = self.bindings.active_for(tns, tid);
        if let Some(previous) = previous.filter(|p| &*p.owner != new_owner) {
            for slot in &taken_over {
                match &previous.provider {
                    Provider::Worker(old) => retract_at(old, &slot.binding),
                    Provider::Native(old) => old.unregister(&slot.binding),
                    Provider::Builtin => {}
                }
            }
        }
        let mut todo = taken_over;
        todo.extend(self.bindings.pending_for(tns, tid));
        if tns != DEFAULT_NAMESPACE {
            for slot in self.bindings.active_for(DEFAULT_NAMESPACE, tid) {
                if slot.binding.trigger_namespace.is_none() && slot.binding.origin_namespace == tns
                {
                    self.retract(&slot.binding, &slot.state);
                    todo.push(slot);
                }
            }
        }
        for slot in todo {
            self.activate(&slot.binding);
        }
    }

    /// Stores a binding made by the host or through `engine::register_trigger` (not tied to a
    /// connection) and delivers it; waits for the provider's verdict (up to
    /// `trigger_ack_timeout`, silence counting as acceptance). Returns the binding id.
    pub(crate) async fn bind(&self, binding: TriggerBinding) -> Result<String, ErrorBody> {
        let id = binding.id.clone();
        match self.bindings.insert(binding, BindingState::Pending) {
            Ok(Some(previous)) => self.retract(&previous.binding, &previous.state),
            Ok(None) => {}
            Err(e) => {
                let code = if e == Error::InvalidNamespace {
                    e.error_code()
                } else {
                    ErrorCode::TriggerRegistrationFailed
                };
                return Err(ErrorBody::new(code, e.to_string()));
            }
        }
        let Some(slot) = self.bindings.get(&id) else {
            return Err(ErrorBody::new(
                ErrorCode::TriggerRegistrationFailed,
                "the binding was replaced while it was being registered",
            ));
        };
        let (tx, mut rx) = oneshot::channel();
        self.acks.insert(id.clone(), tx);
        self.activate_new(&slot.binding);
        let verdict = match rx.try_recv() {
            Ok(verdict) => verdict,
            Err(_) if self.answers_for(&id) => {
                match tokio::time::timeout(self.config.trigger_ack_timeout, rx).await {
                    Ok(Ok(verdict)) => verdict,
                    _ => None,
                }
            }
            Err(_) => None,
        };
        self.acks.remove(&id);
        info!(trigger_id = %id, trigger_type = %slot.binding.trigger_type, function_id = %slot.binding.function_id, accepted = verdict.is_none(), "durable trigger registered");
        match verdict {
            Some(error) => {
                self.bindings.remove(&id);
                Err(ErrorBody::new(
                    ErrorCode::TriggerRegistrationFailed,
                    error.message,
                ))
            }
            None => Ok(id),
        }
    }

    /// True when binding `id` was delivered to a provider that answers (a worker or a native
    /// provider), so a verdict may still come.
    fn answers_for(&self, id: &str) -> bool {
        self.bindings.get(id).is_some_and(|slot| match &slot.state {
            BindingState::Active { provider_namespace } => self
                .trigger_types
                .get(provider_namespace, &slot.binding.trigger_type)
                .is_some_and(|t| !matches!(t.provider, Provider::Builtin)),
            BindingState::Pending => false,
        })
    }

    /// Removes a binding and tells its provider; false when there was none.
    pub(crate) fn unbind(&self, id: &str) -> bool {
        match self.bindings.remove(id) {
            Some(slot) => {
                self.retract(&slot.binding, &slot.state);
                true
            }
            None => false,
        }
    }

    /// Tells the provider of a removed binding to drop it.
    pub(crate) fn retract(&self, binding: &TriggerBinding, state: &BindingState) {
        let BindingState::Active { provider_namespace } = state else {
            return;
        };
        if let Some(t) = self
            .trigger_types
            .get(provider_namespace, &binding.trigger_type)
        {
            match &t.provider {
                Provider::Worker(conn) => retract_at(conn, binding),
                Provider::Native(native) => native.unregister(binding),
                Provider::Builtin => {}
            }
        }
    }

    /// A worker provider's `triggerregistrationresult` on a binding delivered to it.
    pub(super) fn on_trigger_ack(&self, ws: &Arc<WorkerState>, ack: TriggerRegistrationResult) {
        let Some(slot) = self.bindings.get(&ack.id) else {
            return;
        };
        let BindingState::Active { provider_namespace } = &slot.state else {
            return;
        };
        // Only the provider that owns the type may report on it.
        let from_provider = self
            .trigger_types
            .get(provider_namespace, &slot.binding.trigger_type)
            .is_some_and(|t| t.owner == *ws.conn.id());
        if !from_provider {
            return;
        }
        if let Some((_, waiter)) = self.acks.remove(&ack.id) {
            let _ = waiter.send(ack.error.clone());
        }
        let Some(error) = ack.error else {
            return;
        };
        warn!(trigger_id = %ack.id, code = %error.code, "provider refused the binding: {}", error.message);
        self.bindings.set_state(&ack.id, BindingState::Pending);
        if let Some(owner) = slot.binding.owner.as_ref().and_then(|o| self.conns.get(o)) {
            send_msg(
                &owner.conn,
                &Message::TriggerRegistrationResult(TriggerRegistrationResult {
                    id: slot.binding.id.clone(),
                    trigger_type: slot.binding.trigger_type.clone(),
                    function_id: slot.binding.function_id.clone(),
                    error: Some(error),
                    ..TriggerRegistrationResult::default()
                }),
            );
        }
    }
}

pub(super) fn retract_at(provider: &Connection, binding: &TriggerBinding) {
    send_msg(
        provider,
        &Message::UnregisterTrigger(UnregisterTrigger {
            id: binding.id.clone(),
            trigger_type: Some(binding.trigger_type.clone()),
            ..UnregisterTrigger::default()
        }),
    );
}
