//! [`MemoryStore`]: state in this process only, lost when it exits.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{ops, EventSink, StateEvent, StateResult, StateStore, UpdateOp, Updated};

/// State in a map guarded by one lock, held for a write and its event only (no await inside),
/// so writes are atomic and their events leave in write order.
#[derive(Debug)]
pub struct MemoryStore {
    scopes: Mutex<HashMap<String, BTreeMap<String, Value>>>,
    events: EventSink,
}

impl MemoryStore {
    /// An empty store sending its change events to `events`.
    pub fn new(events: EventSink) -> MemoryStore {
        MemoryStore {
            scopes: Mutex::new(HashMap::new()),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, BTreeMap<String, Value>>> {
        self.scopes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `new` (or deletes the key when `None`) and emits the change, under the lock.
    fn write(&self, scope: &str, key: &str, new: Option<Value>) -> Option<Value> {
        let mut scopes = self.lock();
        let old = match &new {
            Some(value) => scopes
                .entry(scope.to_owned())
                .or_default()
                .insert(key.to_owned(), value.clone()),
            None => {
                let entries = scopes.get_mut(scope)?;
                let old = entries.remove(key);
                if entries.is_empty() {
                    scopes.remove(scope);
                }
                old
            }
        };
        if old.is_some() || new.is_some() {
            self.events
                .emit(StateEvent::new(scope, key, old.as_ref(), new.as_ref()));
        }
        old
    }
}

impl StateStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, StateResult<Option<Value>>> {
        let value = self.lock().get(scope).and_then(|e| e.get(key)).cloned();
        Box::pin(async move { Ok(value) })
    }

    fn set<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        value: Value,
    ) -> BoxFuture<'a, StateResult<Option<Value>>> {
        let old = self.write(scope, key, Some(value));
        Box::pin(async move { Ok(old) })
    }

    fn update<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        ops: Vec<UpdateOp>,
    ) -> BoxFuture<'a, StateResult<Updated>> {
        let mut scopes = self.lock();
        let entries = scopes.entry(scope.to_owned()).or_default();
        let old = entries.get(key).cloned();
        let (new, errors) = ops::apply(old.as_ref(), &ops);
        entries.insert(key.to_owned(), new.clone());
        self.events
            .emit(StateEvent::new(scope, key, old.as_ref(), Some(&new)));
        drop(scopes);
        Box::pin(async move {
            Ok(Updated {
                old_value: old,
                new_value: new,
                errors,
            })
        })
    }

    fn delete<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, StateResult<Option<Value>>> {
        let old = self.write(scope, key, None);
        Box::pin(async move { Ok(old) })
    }

    fn list<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, StateResult<Vec<Value>>> {
        let values = self
            .lock()
            .get(scope)
            .map(|e| e.values().cloned().collect())
            .unwrap_or_default();
        Box::pin(async move { Ok(values) })
    }

    fn list_groups(&self) -> BoxFuture<'_, StateResult<Vec<String>>> {
        let mut groups: Vec<String> = self.lock().keys().cloned().collect();
        groups.sort();
        Box::pin(async move { Ok(groups) })
    }
}
