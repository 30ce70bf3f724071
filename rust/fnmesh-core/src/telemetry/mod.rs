//! Telemetry: the traces, logs and metrics the engine makes and the ones workers send on
//! `/otel`, handed as OTLP export requests in their JSON form to every sink the engine has (the
//! in-memory store that `engine::traces::*` and friends read, an OTLP exporter).
//!
//! A [`Batch`] is one `ExportTraceServiceRequest`, `ExportLogsServiceRequest` or
//! `ExportMetricsServiceRequest` in OTLP/JSON (trace and span ids as hex strings, as the OTLP
//! specification's JSON encoding writes them). The [`Telemetry`] hub fans each batch out to its
//! sinks; with no sink, [`Telemetry::is_active`] is false and producers skip the work entirely.
//! See docs/observability.md.

pub mod export;
pub mod proto;
pub mod spans;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Which OTLP signal a [`Batch`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `ExportTraceServiceRequest`: `{"resourceSpans": [...]}`.
    Traces,
    /// `ExportLogsServiceRequest`: `{"resourceLogs": [...]}`.
    Logs,
    /// `ExportMetricsServiceRequest`: `{"resourceMetrics": [...]}`.
    Metrics,
}

/// Where a [`Batch`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Made by the engine itself (its spans, its metrics).
    Engine,
    /// Sent by a worker on `/otel`; the string is the peer's address, for logs and errors.
    Worker(String),
}

/// One OTLP export request, in OTLP/JSON, shared by every sink that receives it.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The signal the request carries.
    pub signal: Signal,
    /// Who made it.
    pub origin: Origin,
    /// The export request itself.
    pub request: Arc<serde_json::Value>,
}

/// Something that takes telemetry batches: the store, an exporter. `accept` is called on the
/// producer's thread (possibly a runtime worker thread) and must not block: a sink that does I/O
/// queues the batch (bounded) and does the work elsewhere.
pub trait TelemetrySink: Send + Sync + 'static {
    /// A short name, for logs and for [`Telemetry::remove_sink`].
    fn name(&self) -> &str;
    /// Takes one batch. Must return quickly and never panic.
    fn accept(&self, batch: &Batch);
}

/// The engine's telemetry hub: a list of sinks each batch goes to. Cloning shares the list.
#[derive(Clone, Default)]
pub struct Telemetry {
    sinks: Arc<RwLock<Vec<Arc<dyn TelemetrySink>>>>,
    active: Arc<AtomicBool>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("sinks", &self.sink_names())
            .finish()
    }
}

impl Telemetry {
    /// Adds a sink; every batch submitted from now on reaches it.
    pub fn add_sink(&self, sink: Arc<dyn TelemetrySink>) {
        let mut sinks = self.sinks.write().unwrap_or_else(|e| e.into_inner());
        sinks.push(sink);
        self.active.store(true, Ordering::Release);
    }

    /// Removes every sink named `name`; true when one was there.
    pub fn remove_sink(&self, name: &str) -> bool {
        let mut sinks = self.sinks.write().unwrap_or_else(|e| e.into_inner());
        let before = sinks.len();
        sinks.retain(|s| s.name() != name);
        self.active.store(!sinks.is_empty(), Ordering::Release);
        sinks.len() != before
    }

    /// The sinks' names, in the order they were added.
    pub fn sink_names(&self) -> Vec<String> {
        let sinks = self.sinks.read().unwrap_or_else(|e| e.into_inner());
        sinks.iter().map(|s| s.name().to_owned()).collect()
    }

    /// True when at least one sink listens. One relaxed load: producers check it before they
    /// build anything, so that telemetry with no sink costs nothing on the hot path.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Hands `batch` to every sink.
    pub fn submit(&self, batch: Batch) {
        if !self.is_active() {
            return;
        }
        let sinks: Vec<Arc<dyn TelemetrySink>> = {
            let sinks = self.sinks.read().unwrap_or_else(|e| e.into_inner());
            sinks.clone()
        };
        for sink in sinks {
            sink.accept(&batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Keep(&'static str, Mutex<Vec<Signal>>);
    impl TelemetrySink for Keep {
        fn name(&self) -> &str {
            self.0
        }
        fn accept(&self, batch: &Batch) {
            self.1.lock().unwrap().push(batch.signal);
        }
    }

    fn batch(signal: Signal) -> Batch {
        Batch {
            signal,
            origin: Origin::Engine,
            request: Arc::new(serde_json::json!({})),
        }
    }

    #[test]
    fn batches_reach_every_sink_until_it_is_removed() {
        let hub = Telemetry::default();
        assert!(!hub.is_active());
        hub.submit(batch(Signal::Logs)); // no sink: dropped, no panic
        let a = Arc::new(Keep("store", Mutex::new(Vec::new())));
        let b = Arc::new(Keep("otlp", Mutex::new(Vec::new())));
        hub.add_sink(a.clone());
        hub.clone().add_sink(b.clone()); // clones share the list
        assert!(hub.is_active());
        assert_eq!(hub.sink_names(), ["store", "otlp"]);
        hub.submit(batch(Signal::Traces));
        assert!(hub.remove_sink("otlp"));
        assert!(!hub.remove_sink("otlp"));
        hub.submit(batch(Signal::Metrics));
        assert_eq!(*a.1.lock().unwrap(), [Signal::Traces, Signal::Metrics]);
        assert_eq!(*b.1.lock().unwrap(), [Signal::Traces]);
        assert!(hub.remove_sink("store"));
        assert!(!hub.is_active());
    }
}
