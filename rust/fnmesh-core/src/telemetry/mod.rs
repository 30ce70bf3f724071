//! Telemetry: the traces, logs and metrics the engine makes and the ones workers send on
//! `/otel`, handed as OTLP export requests in their JSON form to every sink the engine has (the
//! in-memory store that `engine::traces::*` and friends read, an OTLP exporter).
//!
//! A [`Batch`] is one `ExportTraceServiceRequest`, `ExportLogsServiceRequest` or
//! `ExportMetricsServiceRequest` in OTLP/JSON (trace and span ids as hex strings, as the OTLP
//! specification's JSON encoding writes them). The [`Telemetry`] hub fans each batch out to its
//! sinks; with no sink, [`Telemetry::is_active`] is false and producers skip the work entirely.
//! A sink that only keeps what others make (the store) says so with
//! [`TelemetrySink::wants_engine_telemetry`]: it receives every batch submitted, but does not by
//! itself make the engine produce its own telemetry.
//! See docs/observability.md.

pub mod export;
pub mod ingest;
pub mod proto;
pub mod spans;
pub mod store;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Whether the engine should make its own telemetry (its spans) for this sink. `false`: the
    /// sink takes the batches others cause to be made (the store keeps engine spans only while
    /// an exporter is on) and the workers' `/otel` batches.
    fn wants_engine_telemetry(&self) -> bool {
        true
    }
}

/// The engine's telemetry hub: a list of sinks each batch goes to. Cloning shares the list.
#[derive(Clone, Default)]
pub struct Telemetry {
    sinks: Arc<RwLock<Vec<Arc<dyn TelemetrySink>>>>,
    active: Arc<AtomicBool>,
    any_sink: Arc<AtomicBool>,
    rejected: Arc<AtomicU64>,
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
        self.refresh(&sinks);
    }

    fn refresh(&self, sinks: &[Arc<dyn TelemetrySink>]) {
        let engine = sinks.iter().any(|s| s.wants_engine_telemetry());
        self.active.store(engine, Ordering::Release);
        self.any_sink.store(!sinks.is_empty(), Ordering::Release);
    }

    /// Removes every sink named `name`; true when one was there.
    pub fn remove_sink(&self, name: &str) -> bool {
        let mut sinks = self.sinks.write().unwrap_or_else(|e| e.into_inner());
        let before = sinks.len();
        sinks.retain(|s| s.name() != name);
        self.refresh(&sinks);
        sinks.len() != before
    }

    /// The sinks' names, in the order they were added.
    pub fn sink_names(&self) -> Vec<String> {
        let sinks = self.sinks.read().unwrap_or_else(|e| e.into_inner());
        sinks.iter().map(|s| s.name().to_owned()).collect()
    }

    /// True when at least one sink wants the engine's own telemetry
    /// ([`TelemetrySink::wants_engine_telemetry`]). One relaxed load: the engine's producers
    /// check it before they build anything, so that telemetry with no such sink costs nothing on
    /// the hot path.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// True when any sink listens, whatever it wants: what the `/otel` decoder checks before it
    /// decodes a worker's frame.
    #[inline]
    pub fn has_sinks(&self) -> bool {
        self.any_sink.load(Ordering::Relaxed)
    }

    /// Counts one worker frame refused by the `/otel` decoder (malformed, unknown prefix, too
    /// deep); see [`Telemetry::rejected`].
    pub fn note_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// How many worker frames the `/otel` decoder refused since the engine started.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Hands `batch` to every sink.
    pub fn submit(&self, batch: Batch) {
        if !self.has_sinks() {
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

    struct Keeper(Mutex<usize>);
    impl TelemetrySink for Keeper {
        fn name(&self) -> &str {
            "keeper"
        }
        fn accept(&self, _: &Batch) {
            *self.0.lock().unwrap() += 1;
        }
        fn wants_engine_telemetry(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_sink_that_only_keeps_does_not_turn_engine_telemetry_on() {
        let hub = Telemetry::default();
        let keeper = Arc::new(Keeper(Mutex::new(0)));
        hub.add_sink(keeper.clone());
        assert!(
            !hub.is_active(),
            "the engine makes no telemetry for a keeper"
        );
        assert!(hub.has_sinks());
        hub.submit(batch(Signal::Logs)); // a worker batch still reaches it
        assert_eq!(*keeper.0.lock().unwrap(), 1);
        hub.add_sink(Arc::new(Keep("otlp", Mutex::new(Vec::new()))));
        assert!(hub.is_active());
        hub.remove_sink("otlp");
        assert!(!hub.is_active() && hub.has_sinks());
        hub.note_rejected();
        assert_eq!(hub.clone().rejected(), 1);
    }
}
