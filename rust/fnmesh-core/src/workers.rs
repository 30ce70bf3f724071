//! The worker registry: every live connection, and what it said about itself through
//! `engine::workers::register` (docs/protocol.md 7).
//!
//! A connection is known from the moment it is accepted; it gets a name and a namespace when it
//! registers. One live connection may hold a `(namespace, name)` pair at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::protocol::RawJson;
use crate::registry::{check_namespace, DEFAULT_NAMESPACE};

/// Longest worker name kept, in characters (longer names are cut).
pub const MAX_WORKER_NAME_CHARS: usize = 280;

/// What a worker reports about itself (the `engine::workers::register` payload).
#[derive(Debug, Clone, Default)]
pub struct WorkerMetadata {
    /// Display name; SDKs default it to `hostname:pid`.
    pub name: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// `python`, `node`, `rust`, ...
    pub runtime: Option<String>,
    /// SDK version.
    pub version: Option<String>,
    /// Operating system.
    pub os: Option<String>,
    /// Process id; only workers that report one are listed.
    pub pid: Option<u64>,
    /// Isolation mode the worker reports.
    pub isolation: Option<String>,
    /// The connection's namespace (absent = `default`).
    pub namespace: Option<String>,
    /// Telemetry block, kept as raw JSON.
    pub telemetry: Option<RawJson>,
}

/// One connected worker.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// The id the engine assigned (`workerregistered.worker_id`).
    pub id: Arc<str>,
    /// Peer address of the connection.
    pub remote_addr: Option<String>,
    /// When the connection was accepted, in milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    /// The connection's namespace (`default` until it registers one).
    pub namespace: String,
    /// What it reported; `None` until it called `engine::workers::register`.
    pub metadata: Option<WorkerMetadata>,
}

impl WorkerInfo {
    /// The reported name, if any.
    pub fn name(&self) -> Option<&str> {
        self.metadata.as_ref().and_then(|m| m.name.as_deref())
    }
}

/// Removes control and bidirectional-override characters and caps the length, so a name is safe
/// to print in logs and listings.
pub fn sanitize_name(name: &str) -> String {
    name.chars()
        .filter(|c| {
            !c.is_control()
                && !matches!(
                    c,
                    '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
                )
        })
        .take(MAX_WORKER_NAME_CHARS)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The registry of connected workers.
#[derive(Debug, Default)]
pub struct WorkerRegistry {
    // Connections come and go at human rates compared to calls; one lock keeps the name index
    // and the workers consistent, which the one-name-per-namespace rule needs.
    inner: Mutex<Workers>,
}

#[derive(Debug, Default)]
struct Workers {
    by_id: HashMap<Arc<str>, WorkerInfo>,
    by_name: HashMap<(String, String), Arc<str>>,
}

impl WorkerRegistry {
    fn lock(&self) -> MutexGuard<'_, Workers> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a newly accepted connection.
    pub fn connect(&self, id: Arc<str>, remote_addr: Option<String>, connected_at_ms: u64) {
        let info = WorkerInfo {
            id: id.clone(),
            remote_addr,
            connected_at_ms,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            metadata: None,
        };
        self.lock().by_id.insert(id, info);
    }

    /// Stores what worker `id` reported. The name is sanitized; a blank namespace is
    /// [`Error::InvalidNamespace`]; a name another live connection holds in that namespace is
    /// [`Error::WorkerConflict`]. Registering again (same connection) updates the metadata.
    /// Returns the stored info.
    pub fn register(&self, id: &str, mut metadata: WorkerMetadata) -> Result<WorkerInfo> {
        let namespace = match metadata.namespace.as_deref() {
            Some(ns) => {
                check_namespace(ns)?;
                ns.to_owned()
            }
            None => DEFAULT_NAMESPACE.to_owned(),
        };
        metadata.name = metadata
            .name
            .as_deref()
            .map(sanitize_name)
            .filter(|n| !n.is_empty());
        let mut workers = self.lock();
        if !workers.by_id.contains_key(id) {
            return Err(Error::InvalidArgument(format!(
                "no connected worker with id '{id}'"
            )));
        }
        if let Some(name) = &metadata.name {
            let key = (namespace.clone(), name.clone());
            if let Some(owner) = workers.by_name.get(&key) {
                if &**owner != id {
                    return Err(Error::WorkerConflict {
                        namespace,
                        name: name.clone(),
                        owner: owner.to_string(),
                    });
                }
            }
        }
        let Workers { by_id, by_name } = &mut *workers;
        let info = by_id
            .get_mut(id)
            .expect("checked above under the same lock");
        if let Some(old) = info.name() {
            by_name.remove(&(info.namespace.clone(), old.to_owned()));
        }
        if let Some(name) = &metadata.name {
            by_name.insert((namespace.clone(), name.clone()), info.id.clone());
        }
        info.namespace = namespace;
        info.metadata = Some(metadata);
        Ok(info.clone())
    }

    /// Forgets a connection; returns what was known of it.
    pub fn disconnect(&self, id: &str) -> Option<WorkerInfo> {
        let mut workers = self.lock();
        let info = workers.by_id.remove(id)?;
        if let Some(name) = info.name() {
            let key = (info.namespace.clone(), name.to_owned());
            if workers
                .by_name
                .get(&key)
                .is_some_and(|owner| &**owner == id)
            {
                workers.by_name.remove(&key);
            }
        }
        Some(info)
    }

    /// The worker `id`, if connected.
    pub fn get(&self, id: &str) -> Option<WorkerInfo> {
        self.lock().by_id.get(id).cloned()
    }

    /// The connection holding `name` in `namespace`, if any.
    pub fn find_by_name(&self, namespace: &str, name: &str) -> Option<WorkerInfo> {
        let workers = self.lock();
        let id = workers
            .by_name
            .get(&(namespace.to_owned(), name.to_owned()))?;
        workers.by_id.get(id).cloned()
    }

    /// The namespace of connection `id` (`default` when unknown or not yet registered).
    pub fn namespace_of(&self, id: &str) -> String {
        self.lock()
            .by_id
            .get(id)
            .map_or_else(|| DEFAULT_NAMESPACE.to_owned(), |w| w.namespace.clone())
    }

    /// Every connection, sorted by name (unnamed last) then id.
    pub fn list(&self) -> Vec<WorkerInfo> {
        let mut out: Vec<_> = self.lock().by_id.values().cloned().collect();
        out.sort_by(|a, b| {
            (a.name().is_none(), a.name(), &a.id).cmp(&(b.name().is_none(), b.name(), &b.id))
        });
        out
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// True when none is connected.
    pub fn is_empty(&self) -> bool {
        self.lock().by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, ns: Option<&str>) -> WorkerMetadata {
        WorkerMetadata {
            name: Some(name.into()),
            namespace: ns.map(str::to_owned),
            runtime: Some("python".into()),
            pid: Some(42),
            ..WorkerMetadata::default()
        }
    }

    #[test]
    fn names_are_unique_per_namespace_among_live_connections() {
        let r = WorkerRegistry::default();
        r.connect("w1".into(), Some("127.0.0.1:5000".into()), 1);
        r.connect("w2".into(), None, 2);
        r.register("w1", meta("billing", None)).unwrap();
        assert_eq!(
            r.register("w2", meta("billing", None)).unwrap_err(),
            Error::WorkerConflict {
                namespace: "default".into(),
                name: "billing".into(),
                owner: "w1".into()
            }
        );
        // Same name elsewhere is fine; re-registering oneself too.
        r.register("w2", meta("billing", Some("eu"))).unwrap();
        r.register("w1", meta("billing", None)).unwrap();
        assert_eq!(r.namespace_of("w2"), "eu");
        assert_eq!(&*r.find_by_name("eu", "billing").unwrap().id, "w2");
        // The name frees up when its holder leaves.
        r.disconnect("w1").unwrap();
        r.connect("w3".into(), None, 3);
        r.register("w3", meta("billing", None)).unwrap();
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn renaming_releases_the_old_name() {
        let r = WorkerRegistry::default();
        r.connect("w1".into(), None, 1);
        r.connect("w2".into(), None, 1);
        r.register("w1", meta("old", None)).unwrap();
        r.register("w1", meta("new", None)).unwrap();
        r.register("w2", meta("old", None)).unwrap();
        let names: Vec<_> = r
            .list()
            .iter()
            .map(|w| w.name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["new", "old"]);
    }

    #[test]
    fn bad_input() {
        let r = WorkerRegistry::default();
        assert!(matches!(
            r.register("ghost", meta("x", None)).unwrap_err(),
            Error::InvalidArgument(_)
        ));
        r.connect("w1".into(), None, 1);
        assert_eq!(
            r.register("w1", meta("x", Some(" \t"))).unwrap_err(),
            Error::InvalidNamespace
        );
        let info = r.register("w1", meta("evil\u{202E}name\n", None)).unwrap();
        assert_eq!(info.name(), Some("evilname"));
        assert_eq!(sanitize_name(&"é".repeat(400)).chars().count(), 280);
        assert!(r.disconnect("nope").is_none());
    }
}
