//! Trigger types (providers) and trigger bindings (docs/protocol.md 6.1).
//!
//! A *trigger type* is keyed `(namespace, id)` and served by one provider: a built-in of the
//! engine or a worker that sent `registertriggertype`. Re-registering a type replaces its
//! provider. A *binding* is keyed by its id globally and ties a type to a function with a config.
//! A binding whose type has no provider yet is kept *pending* and activated when one appears.
//!
//! The registries store what the engine decided; delivering bindings to providers is the
//! engine's job.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use dashmap::DashMap;

use crate::error::Result;
use crate::protocol::RawJson;
use crate::registry::{check_namespace, FunctionKey, Hasher, KeyView, DEFAULT_NAMESPACE};

/// One trigger type and its provider.
#[derive(Debug, Clone)]
pub struct TriggerType<P> {
    /// Provider namespace.
    pub namespace: String,
    /// Type id (`http`, `cron`, `webhook`, ...).
    pub id: String,
    /// Free text for discovery.
    pub description: String,
    /// Schema of a binding's `config`.
    pub trigger_request_format: Option<RawJson>,
    /// Schema of the payload the trigger sends to the function.
    pub call_request_format: Option<RawJson>,
    /// Who provides it: a worker connection id, or the engine's name for a built-in.
    pub owner: Arc<str>,
    /// How the engine reaches the provider.
    pub provider: P,
}

/// The registry of trigger types.
pub struct TriggerTypeRegistry<P> {
    types: DashMap<FunctionKey, Arc<TriggerType<P>>, Hasher>,
}

impl<P> Default for TriggerTypeRegistry<P> {
    fn default() -> Self {
        TriggerTypeRegistry {
            types: DashMap::with_hasher(Hasher::default()),
        }
    }
}

impl<P> std::fmt::Debug for TriggerTypeRegistry<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerTypeRegistry")
            .field("types", &self.types.len())
            .finish()
    }
}

impl<P> TriggerTypeRegistry<P> {
    /// Registers or replaces a trigger type; returns the type it replaced, if any.
    pub fn register(&self, trigger_type: TriggerType<P>) -> Result<Option<Arc<TriggerType<P>>>> {
        check_namespace(&trigger_type.namespace)?;
        crate::registry::check_non_empty("trigger type id", &trigger_type.id)?;
        let key = FunctionKey::new(&trigger_type.namespace, &trigger_type.id);
        Ok(self.types.insert(key, Arc::new(trigger_type)))
    }

    /// The type `(namespace, id)`, if registered.
    pub fn get(&self, namespace: &str, id: &str) -> Option<Arc<TriggerType<P>>> {
        let view: &dyn KeyView = &(namespace, id);
        self.types.get(view).map(|t| t.value().clone())
    }

    /// Finds the provider of a binding's type: only `trigger_namespace` when the binding names
    /// one, otherwise the registering connection's namespace, then `default` (docs/protocol.md 6.1).
    pub fn resolve(
        &self,
        id: &str,
        trigger_namespace: Option<&str>,
        connection_namespace: &str,
    ) -> Option<Arc<TriggerType<P>>> {
        match trigger_namespace {
            Some(ns) => self.get(ns, id),
            None => self
                .get(connection_namespace, id)
                .or_else(|| self.get(DEFAULT_NAMESPACE, id)),
        }
    }

    /// Removes the type if `owner` provides it. Returns the removed type.
    pub fn unregister(
        &self,
        namespace: &str,
        id: &str,
        owner: &str,
    ) -> Option<Arc<TriggerType<P>>> {
        let view: &dyn KeyView = &(namespace, id);
        self.types
            .remove_if(view, |_, t| &*t.owner == owner)
            .map(|(_, t)| t)
    }

    /// Removes every type `owner` provides (its connection left); returns them sorted.
    pub fn remove_owner(&self, owner: &str) -> Vec<Arc<TriggerType<P>>> {
        let mut removed = Vec::new();
        self.types.retain(|_, t| {
            if &*t.owner == owner {
                removed.push(t.clone());
                false
            } else {
                true
            }
        });
        sort_types(&mut removed);
        removed
    }

    /// Every type, sorted by `(namespace, id)`.
    pub fn list(&self) -> Vec<Arc<TriggerType<P>>> {
        let mut out: Vec<_> = self.types.iter().map(|t| t.value().clone()).collect();
        sort_types(&mut out);
        out
    }

    /// Number of types.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}

fn sort_types<P>(types: &mut [Arc<TriggerType<P>>]) {
    types.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
}

/// The trigger types iii's engine serves itself (docs/protocol.md 6.1). A binding to one of them
/// that no provider serves (fnmesh does not implement it, or its service is off) is refused at
/// once with `trigger_registration_failed` instead of waiting as pending, unless a worker
/// provides the type: a binding that falls back to pending when that worker leaves stays parked.
pub const BUILTIN_TRIGGER_TYPES: &[&str] = &[
    "http",
    "cron",
    "durable:subscriber",
    "state",
    "subscribe",
    "stream",
    "stream:join",
    "stream:leave",
    "log",
    "trace",
    "configuration",
    "engine::functions-available",
    "engine::workers-available",
];

/// True when a condition function's result skips the bound function (docs/protocol.md 6.7): exactly
/// JSON `false`. No result, `null` or any other value lets the call through.
pub fn condition_skips(result: Option<&serde_json::value::RawValue>) -> bool {
    result.is_some_and(|raw| raw.get().trim() == "false")
}

/// A trigger type served inside the engine's process: the HTTP trigger, cron, or an
/// application's own (a file watcher, an MQTT subscriber, ...).
///
/// The engine hands the provider every binding of its type. The provider answers through the
/// [`TriggerAck`], now or later (never blocking the caller), and fires by calling the bound
/// function through the engine with the binding's namespace and metadata.
pub trait TriggerProvider: Send + Sync + 'static {
    /// Takes a binding on (`ack.accept()`) or refuses it (`ack.refuse(reason)`: the binding is
    /// dropped and its registrant gets `trigger_registration_failed` with the reason).
    fn register(&self, binding: Arc<TriggerBinding>, ack: TriggerAck);
    /// Drops a binding it took on: unbound, replaced, or its owner left.
    fn unregister(&self, binding: &TriggerBinding);
}

/// A provider's answer to one [`TriggerProvider::register`]. Dropping it unanswered counts as
/// accepting, as a worker provider's silence does.
pub struct TriggerAck {
    answer: Option<AnswerFn>,
}

/// A provider's refusal of a binding: the reason its registrant gets (with the code
/// `trigger_registration_failed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TriggerRefusal(pub String);

/// Delivers a provider's verdict to the engine: `Ok` accepted, `Err` refused.
type AnswerFn = Box<dyn FnOnce(std::result::Result<(), TriggerRefusal>) + Send>;

impl TriggerAck {
    pub(crate) fn new(
        answer: impl FnOnce(std::result::Result<(), TriggerRefusal>) + Send + 'static,
    ) -> Self {
        TriggerAck {
            answer: Some(Box::new(answer)),
        }
    }

    /// Accepts the binding.
    pub fn accept(mut self) {
        if let Some(answer) = self.answer.take() {
            answer(Ok(()));
        }
    }

    /// Refuses the binding with a reason for its registrant.
    pub fn refuse(mut self, reason: impl Into<String>) {
        if let Some(answer) = self.answer.take() {
            answer(Err(TriggerRefusal(reason.into())));
        }
    }
}

impl Drop for TriggerAck {
    fn drop(&mut self) {
        if let Some(answer) = self.answer.take() {
            answer(Ok(()));
        }
    }
}

impl std::fmt::Debug for TriggerAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerAck")
            .field("answered", &self.answer.is_none())
            .finish()
    }
}

/// One trigger binding.
#[derive(Debug, Clone)]
pub struct TriggerBinding {
    /// Binding id (SDKs send a fresh UUID per binding).
    pub id: String,
    /// The trigger type it binds to.
    pub trigger_type: String,
    /// Function the trigger invokes.
    pub function_id: String,
    /// Namespace the function resolves in.
    pub namespace: String,
    /// Where to look for the provider, when the binding names it.
    pub trigger_namespace: Option<String>,
    /// The binding's configuration (`null` when the worker sent none).
    pub config: RawJson,
    /// Metadata passed to every invocation of this binding.
    pub metadata: Option<RawJson>,
    /// The connection that owns it; `None` for durable bindings made through
    /// `engine::register_trigger`.
    pub owner: Option<Arc<str>>,
    /// Namespace of the connection that registered it (for provider resolution).
    pub origin_namespace: String,
}

/// A binding as a host asks for it ([`crate::engine::EngineRef::register_trigger`]).
#[derive(Debug, Clone)]
pub struct TriggerSpec {
    /// Binding id; `None` makes a fresh UUID. Reusing an id replaces that binding.
    pub id: Option<String>,
    /// The trigger type (`http`, `cron`, a worker's type, ...).
    pub trigger_type: String,
    /// The function each fire invokes.
    pub function_id: String,
    /// The type's configuration (e.g. `{"api_path": "users/:id", "http_method": "GET"}`).
    pub config: RawJson,
    /// Metadata passed to every invocation of the binding.
    pub metadata: Option<RawJson>,
    /// Namespace the function resolves in (and where the provider is looked up first);
    /// `None` is `default`.
    pub namespace: Option<String>,
    /// Only look for the provider in this namespace.
    pub trigger_namespace: Option<String>,
}

/// Where a binding stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingState {
    /// No provider for its type yet (or the provider refused it): nothing delivered.
    Pending,
    /// Delivered to the provider of `(namespace, trigger_type)`.
    Active {
        /// The provider's namespace.
        provider_namespace: String,
    },
}

/// A binding with its state, as stored.
#[derive(Debug, Clone)]
pub struct BindingSlot {
    /// The binding.
    pub binding: Arc<TriggerBinding>,
    /// Its state.
    pub state: BindingState,
}

/// The registry of trigger bindings, keyed by binding id.
///
/// Bindings are few and change rarely compared to invocations; one lock keeps the id map and
/// the per-type index consistent.
#[derive(Debug, Default)]
pub struct TriggerBindingRegistry {
    inner: RwLock<Bindings>,
}

#[derive(Debug, Default)]
struct Bindings {
    by_id: HashMap<String, BindingSlot>,
}

impl TriggerBindingRegistry {
    fn read(&self) -> RwLockReadGuard<'_, Bindings> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Bindings> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a binding, or replaces the one with the same id; returns the replaced slot.
    pub fn insert(
        &self,
        binding: TriggerBinding,
        state: BindingState,
    ) -> Result<Option<BindingSlot>> {
        crate::registry::check_non_empty("trigger id", &binding.id)?;
        crate::registry::check_non_empty("trigger type", &binding.trigger_type)?;
        check_namespace(&binding.namespace)?;
        if let Some(ns) = &binding.trigger_namespace {
            check_namespace(ns)?;
        }
        let slot = BindingSlot {
            binding: Arc::new(binding),
            state,
        };
        Ok(self.write().by_id.insert(slot.binding.id.clone(), slot))
    }

    /// The binding `id`, if any.
    pub fn get(&self, id: &str) -> Option<BindingSlot> {
        self.read().by_id.get(id).cloned()
    }

    /// Removes the binding `id`; returns it.
    pub fn remove(&self, id: &str) -> Option<BindingSlot> {
        self.write().by_id.remove(id)
    }

    /// Removes the binding `id` only if connection `owner` made it: `Ok(None)` when there is
    /// none, `Err(its owner)` (`None` for a durable binding) when someone else made it.
    pub fn remove_if_owned(
        &self,
        id: &str,
        owner: &str,
    ) -> std::result::Result<Option<BindingSlot>, Option<Arc<str>>> {
        let mut bindings = self.write();
        match bindings.by_id.get(id) {
            None => Ok(None),
            Some(slot) if slot.binding.owner.as_deref() == Some(owner) => {
                Ok(bindings.by_id.remove(id))
            }
            Some(slot) => Err(slot.binding.owner.clone()),
        }
    }

    /// Changes a binding's state; false when the id is unknown.
    pub fn set_state(&self, id: &str, state: BindingState) -> bool {
        match self.write().by_id.get_mut(id) {
            Some(slot) => {
                slot.state = state;
                true
            }
            None => false,
        }
    }

    /// Removes every binding `owner` made (its connection left); returns them sorted by id.
    /// Durable bindings are never removed this way.
    pub fn remove_owner(&self, owner: &str) -> Vec<BindingSlot> {
        let mut removed = Vec::new();
        self.write().by_id.retain(|_, slot| {
            if slot.binding.owner.as_deref() == Some(owner) {
                removed.push(slot.clone());
                false
            } else {
                true
            }
        });
        sort_slots(&mut removed);
        removed
    }

    /// Active bindings delivered to the provider of `(provider_namespace, trigger_type)`, sorted
    /// by id.
    pub fn active_for(&self, provider_namespace: &str, trigger_type: &str) -> Vec<BindingSlot> {
        self.matching(|slot| {
            slot.binding.trigger_type == trigger_type
                && matches!(&slot.state, BindingState::Active { provider_namespace: ns } if ns == provider_namespace)
        })
    }

    /// Pending bindings of `trigger_type` that a provider in `provider_namespace` may serve
    /// (their `trigger_namespace` is that namespace, or they name none), sorted by id.
    pub fn pending_for(&self, provider_namespace: &str, trigger_type: &str) -> Vec<BindingSlot> {
        self.matching(|slot| {
            slot.state == BindingState::Pending
                && slot.binding.trigger_type == trigger_type
                && slot
                    .binding
                    .trigger_namespace
                    .as_deref()
                    .is_none_or(|ns| ns == provider_namespace)
        })
    }

    /// Every binding, sorted by id.
    pub fn list(&self) -> Vec<BindingSlot> {
        self.matching(|_| true)
    }

    fn matching(&self, keep: impl Fn(&BindingSlot) -> bool) -> Vec<BindingSlot> {
        let mut out: Vec<_> = self
            .read()
            .by_id
            .values()
            .filter(|s| keep(s))
            .cloned()
            .collect();
        sort_slots(&mut out);
        out
    }

    /// Number of bindings, pending ones included.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.read().by_id.is_empty()
    }
}

fn sort_slots(slots: &mut [BindingSlot]) {
    slots.sort_by(|a, b| a.binding.id.cmp(&b.binding.id));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn raw(text: &str) -> RawJson {
        serde_json::value::RawValue::from_string(text.to_owned()).unwrap()
    }

    fn ty(ns: &str, id: &str, owner: &str) -> TriggerType<u8> {
        TriggerType {
            namespace: ns.into(),
            id: id.into(),
            description: format!("{id} trigger"),
            trigger_request_format: None,
            call_request_format: None,
            owner: owner.into(),
            provider: 0,
        }
    }

    fn binding(id: &str, ty: &str, owner: Option<&str>) -> TriggerBinding {
        TriggerBinding {
            id: id.into(),
            trigger_type: ty.into(),
            function_id: "jobs::tick".into(),
            namespace: "default".into(),
            trigger_namespace: None,
            config: raw(r#"{"expression":"* * * * * *"}"#),
            metadata: None,
            owner: owner.map(Arc::from),
            origin_namespace: "default".into(),
        }
    }

    #[test]
    fn types_replace_resolve_and_leave_with_their_owner() {
        let r = TriggerTypeRegistry::default();
        assert!(r
            .register(ty("default", "webhook", "w1"))
            .unwrap()
            .is_none());
        let old = r.register(ty("default", "webhook", "w2")).unwrap().unwrap();
        assert_eq!(&*old.owner, "w1");
        r.register(ty("eu", "webhook", "w3")).unwrap();
        // Connection namespace first, then default; an explicit namespace only there.
        assert_eq!(&*r.resolve("webhook", None, "eu").unwrap().owner, "w3");
        assert_eq!(&*r.resolve("webhook", None, "us").unwrap().owner, "w2");
        assert!(r.resolve("webhook", Some("us"), "default").is_none());
        // Only the current provider can unregister.
        assert!(r.unregister("default", "webhook", "w1").is_none());
        assert_eq!(r.remove_owner("w2").len(), 1);
        assert_eq!(r.list().len(), 1);
        assert_eq!(
            r.register(ty(" ", "x", "w")).unwrap_err(),
            Error::InvalidNamespace
        );
        assert!(matches!(
            r.register(ty("default", "", "w")).unwrap_err(),
            Error::InvalidArgument(_)
        ));
    }

    #[test]
    fn bindings_park_activate_and_die_with_their_owner() {
        let r = TriggerBindingRegistry::default();
        r.insert(binding("b1", "webhook", Some("w1")), BindingState::Pending)
            .unwrap();
        r.insert(binding("b2", "webhook", None), BindingState::Pending)
            .unwrap();
        let mut other_ns = binding("b3", "webhook", Some("w1"));
        other_ns.trigger_namespace = Some("eu".into());
        r.insert(other_ns, BindingState::Pending).unwrap();
        let ids = |slots: Vec<BindingSlot>| {
            slots
                .into_iter()
                .map(|s| s.binding.id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(r.pending_for("default", "webhook")), ["b1", "b2"]);
        assert_eq!(ids(r.pending_for("eu", "webhook")), ["b1", "b2", "b3"]);
        let active = BindingState::Active {
            provider_namespace: "default".into(),
        };
        assert!(r.set_state("b1", active.clone()));
        assert!(!r.set_state("nope", active));
        assert_eq!(ids(r.active_for("default", "webhook")), ["b1"]);
        // Re-registering an id replaces it.
        let replaced = r
            .insert(binding("b1", "cron", Some("w1")), BindingState::Pending)
            .unwrap()
            .unwrap();
        assert_eq!(replaced.binding.trigger_type, "webhook");
        assert_eq!(r.len(), 3);
        // The durable one survives its creator's connection.
        assert_eq!(ids(r.remove_owner("w1")), ["b1", "b3"]);
        assert_eq!(ids(r.list()), ["b2"]);
        assert!(r.remove("b2").is_some());
        assert!(r.remove("b2").is_none());
        let mut blank = binding("b4", "webhook", None);
        blank.trigger_namespace = Some("  ".into());
        assert_eq!(
            r.insert(blank, BindingState::Pending).unwrap_err(),
            Error::InvalidNamespace
        );
        assert!(r.is_empty());
    }
}
