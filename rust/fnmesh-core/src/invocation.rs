//! Invocations in flight: the pending table that correlates a target's `invocationresult` with
//! the caller waiting for it, the engine-side timeout (docs/protocol.md 11.2), and the payload edit
//! the engine makes on the way (`_caller_worker_id`, section 4.5).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde_json::value::RawValue;

use crate::protocol::RawJson;

/// Default engine-side bound on a pending invocation (docs/protocol.md 11.2).
pub const DEFAULT_INVOCATION_TIMEOUT: Duration = Duration::from_secs(300);

/// How often expired invocations are looked for.
// NOTE: one sweep over 10 000 pending calls takes 133 us (13 ns an entry; 1.3 ms for 100 000),
// so sweeping every 50 ms costs 0.3% of a core per 10 000 calls in flight, while parking and
// taking a call costs 102 ns with no timer work at all (`cargo bench --bench pending`). A
// per-call tokio timer costs a spawn and a cancel on every call, and a heap with lazy deletion
// grows with calls-per-second x timeout. The price: a timeout fires up to one interval late.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(50);

struct Entry<T> {
    deadline: Instant,
    value: T,
}

/// Pending invocations keyed by invocation id.
///
/// `T` is whatever the dispatcher needs to finish the call: who waits for the answer, which
/// connection runs it, the replica lease to release.
pub struct PendingTable<T> {
    // NOTE: `Arc<str>` keys: the engine parks a call under the id it already holds as an
    // `Arc<str>`, so parking allocates nothing for the key (a `Box<str>` key cost one
    // allocation and copy per routed call).
    entries: DashMap<Arc<str>, Entry<T>>,
    inserted: AtomicU64,
}

impl<T> Default for PendingTable<T> {
    fn default() -> Self {
        PendingTable {
            entries: DashMap::new(),
            inserted: AtomicU64::new(0),
        }
    }
}

impl<T> PendingTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parks `value` under `id` until it is taken or `timeout` passes. Gives the value back if
    /// the id is already pending (a caller reusing an id must not steal another call's reply).
    pub fn insert(&self, id: impl Into<Arc<str>>, value: T, timeout: Duration) -> Result<(), T> {
        self.insert_until(id, value, Instant::now() + timeout)
    }

    /// As [`Self::insert`], expiring at `deadline` (for a caller that read the clock already).
    pub fn insert_until(
        &self,
        id: impl Into<Arc<str>>,
        value: T,
        deadline: Instant,
    ) -> Result<(), T> {
        match self.entries.entry(id.into()) {
            dashmap::Entry::Occupied(_) => Err(value),
            dashmap::Entry::Vacant(slot) => {
                slot.insert(Entry { deadline, value });
                self.inserted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Removes and returns the entry for `id`.
    pub fn take(&self, id: &str) -> Option<T> {
        self.entries.remove(id).map(|(_, e)| e.value)
    }

    /// Removes and returns the entry for `id` only if `accept` says so (for example: only when
    /// the reply comes from the connection the call was routed to).
    pub fn take_if(&self, id: &str, accept: impl FnOnce(&T) -> bool) -> Option<T> {
        self.entries
            .remove_if(id, |_, e| accept(&e.value))
            .map(|(_, e)| e.value)
    }

    /// Whether `id` is pending.
    pub fn contains(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    /// Counts the entries `select` picks.
    pub fn count_where(&self, mut select: impl FnMut(&T) -> bool) -> usize {
        self.entries
            .iter()
            .filter(|e| select(&e.value().value))
            .count()
    }

    /// Removes every entry `select` picks (a connection went away), returning them.
    pub fn drain_where(&self, mut select: impl FnMut(&T) -> bool) -> Vec<(Arc<str>, T)> {
        let ids: Vec<Arc<str>> = self
            .entries
            .iter()
            .filter(|e| select(&e.value().value))
            .map(|e| e.key().clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| self.entries.remove(&id).map(|(k, e)| (k, e.value)))
            .collect()
    }

    /// Removes every entry whose deadline is at or before `now`, returning them.
    pub fn expired(&self, now: Instant) -> Vec<(Arc<str>, T)> {
        let ids: Vec<Arc<str>> = self
            .entries
            .iter()
            .filter(|e| e.value().deadline <= now)
            .map(|e| e.key().clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                self.entries
                    .remove_if(&id, |_, e| e.deadline <= now)
                    .map(|(k, e)| (k, e.value))
            })
            .collect()
    }

    /// Number of pending invocations.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total number of invocations ever parked (a metrics counter).
    pub fn inserted_total(&self) -> u64 {
        self.inserted.load(Ordering::Relaxed)
    }
}

/// Returns `data` with `"_caller_worker_id": worker_id` added when it is a JSON object, or
/// `None` when it is not an object (the payload is then forwarded untouched). See
/// [`crate::protocol::splice_caller_worker_id`]; a call routed to a worker gets the same edit
/// while its frame is encoded ([`crate::protocol::InvokeFunction::encode_with_caller`]).
pub fn inject_caller_worker_id(data: &RawValue, worker_id: &str) -> Option<RawJson> {
    let mut out = String::new();
    if !crate::protocol::splice_caller_worker_id(data.get(), worker_id, &mut out) {
        return None;
    }
    // The splice keeps valid JSON valid; from_string only re-checks it.
    RawValue::from_string(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn raw(s: &str) -> RawJson {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn injects_into_objects_only() {
        let out = inject_caller_worker_id(&raw(r#"{"a": 1}"#), "w-1").unwrap();
        assert_eq!(out.get(), r#"{"a": 1,"_caller_worker_id":"w-1"}"#);
        let out = inject_caller_worker_id(&raw(" { } "), "w-1").unwrap();
        assert_eq!(out.get(), r#"{"_caller_worker_id":"w-1"}"#);
        for not_object in ["[1,2]", "\"{}\"", "null", "3", "true"] {
            assert!(
                inject_caller_worker_id(&raw(not_object), "w").is_none(),
                "{not_object}"
            );
        }
    }

    #[test]
    fn an_id_that_needs_escaping_is_escaped() {
        for id in ["a\"b", "back\\slash", "line\nbreak", "tab\there", "é✓"] {
            let out = inject_caller_worker_id(&raw(r#"{"a":1}"#), id).unwrap();
            let v: Value = serde_json::from_str(out.get()).unwrap();
            assert_eq!(v["_caller_worker_id"], id, "{id}");
            assert_eq!(v["a"], 1);
        }
    }

    #[test]
    fn engine_value_wins_over_a_forged_one() {
        let out = inject_caller_worker_id(
            &raw(r#"{"_caller_worker_id":"forged","x":{"y":"}"}}"#),
            "real",
        )
        .unwrap();
        let v: Value = serde_json::from_str(out.get()).unwrap();
        assert_eq!(v["_caller_worker_id"], "real");
        assert_eq!(v["x"]["y"], "}");
    }

    #[test]
    fn pending_insert_take_and_duplicates() {
        let t = PendingTable::new();
        t.insert("a", 1, Duration::from_secs(5)).unwrap();
        assert_eq!(t.insert("a", 2, Duration::from_secs(5)), Err(2));
        assert!(t.contains("a"));
        assert_eq!(t.take_if("a", |v| *v == 9), None);
        assert_eq!(t.take_if("a", |v| *v == 1), Some(1));
        assert_eq!(t.take("a"), None);
        assert!(t.is_empty());
        assert_eq!(t.inserted_total(), 1);
    }

    #[test]
    fn pending_expiry_and_drain() {
        let t = PendingTable::new();
        t.insert("soon", "x", Duration::from_millis(0)).unwrap();
        t.insert("later", "y", Duration::from_secs(60)).unwrap();
        t.insert("other", "z", Duration::from_secs(60)).unwrap();
        let expired = t.expired(Instant::now());
        assert_eq!(expired.len(), 1);
        assert_eq!(&*expired[0].0, "soon");
        let drained = t.drain_where(|v| *v == "z");
        assert_eq!(drained.len(), 1);
        assert_eq!(t.len(), 1);
        assert!(t.contains("later"));
    }
}
