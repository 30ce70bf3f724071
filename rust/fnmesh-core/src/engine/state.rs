//! The state every connection shares ([`Shared`]), a worker connection's own ([`WorkerState`]),
//! and what serves a function or a trigger type ([`Target`], [`Provider`]).
//!
//! The behaviour lives beside it, one job per file: [`super::dispatch`] routes calls,
//! [`super::session`] handles a connection's frames and registrations, [`super::bindings`] keeps
//! trigger bindings with their providers, [`super::events`] fires the engine's own trigger types.
//! Each of them adds an `impl Shared` block.

use crate::channels::ChannelHub;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use dashmap::DashMap;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::dispatch::Pending;
use crate::config::EngineConfig;
use crate::external::ExternalFunctions;
use crate::function::{Completer, NativeFunction};
use crate::invocation::PendingTable;
use crate::meter::{CloseCounts, FunctionStats, MetricsSource};
use crate::protocol::{ErrorBody, Message, RawJson};
use crate::registry::{FunctionDef, FunctionsRegistry};
use crate::server::Connection;
use crate::triggers::{TriggerBindingRegistry, TriggerProvider, TriggerTypeRegistry};
use crate::workers::WorkerRegistry;

/// What serves one replica of a function.
#[derive(Clone)]
pub enum Target {
    /// A remote worker connection.
    Worker(Arc<Connection>),
    /// A function inside this process.
    Native(Arc<dyn NativeFunction>),
}

/// Who provides a trigger type.
#[derive(Clone)]
pub(crate) enum Provider {
    Worker(Arc<Connection>),
    /// Served in this process (HTTP, cron, a host's own type).
    Native(Arc<dyn TriggerProvider>),
    /// Fired by the engine itself (`engine::functions-available`, ...).
    Builtin,
}

pub(super) enum NsState {
    // Registrations wait here until `engine::workers::register` names the namespace (3.4), with
    // the bytes of their frames: both bounded (`max_buffered_registrations`,
    // `max_buffered_registration_bytes`).
    Buffering { queue: Vec<Message>, bytes: usize },
    Known(String),
    // Buffered past a bound: the connection is being closed with 1008; nothing more applies.
    Refused,
}

impl NsState {
    pub(super) fn buffering() -> NsState {
        NsState::Buffering {
            queue: Vec::new(),
            bytes: 0,
        }
    }
}

/// One call a worker made, counted in its connection's `calls_in_flight` while the call is
/// pending (docs/protocol.md 11, `max_calls_in_flight_per_connection`); dropping it (the call
/// answered, timed out, failed, or dropped with its connection) gives the slot back.
pub(super) struct InFlightSlot(Arc<AtomicUsize>);

impl InFlightSlot {
    /// Takes a slot of `counter` unless `max` are taken.
    // NOTE: one fetch_add, the fetch_sub of the drop and one Arc clone per call: no measurable
    // cost. fnmesh-loadgen call, 64 in flight over 4 connections to one worker through `fnmesh
    // serve`, 7 alternating rounds of 5 s on 2 shared cores: median 165k calls/s with the slot
    // against 157k with no slot taken (spread 143-191k and 146-183k).
    pub(super) fn take(counter: &Arc<AtomicUsize>, max: usize) -> Option<InFlightSlot> {
        if counter.fetch_add(1, Ordering::AcqRel) >= max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlightSlot(counter.clone()))
    }
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) struct WorkerState {
    pub(crate) conn: Arc<Connection>,
    pub(super) reattach_token: String,
    pub(super) ns: Mutex<NsState>,
    pub(super) cleaned: AtomicBool,
    /// Calls this connection made that are still pending (see [`InFlightSlot`]).
    pub(super) calls_in_flight: Arc<AtomicUsize>,
    // External functions waiting for the host's answer, (namespace, id) -> attempt; an
    // unregistration or a newer registration of the same id makes the answer stale. Held while
    // an answer registers, and by cleanup, so nothing registers after the worker left.
    pub(super) external_pending: Mutex<HashMap<(String, String), u64>>,
    /// Set for a connection of a restricted listener: its grants and its listener's access
    /// control (docs/access-control.md).
    pub(super) access: Option<Arc<super::access::Session>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything the engine shares between connections.
pub(crate) struct Shared {
    pub(crate) config: EngineConfig,
    pub(crate) functions: FunctionsRegistry<Target>,
    pub(crate) trigger_types: TriggerTypeRegistry<Provider>,
    pub(crate) bindings: TriggerBindingRegistry,
    pub(crate) workers: WorkerRegistry,
    // NOTE: foldhash, not SipHash: the reader looks its connection up for every frame (two per
    // routed call), and the keys are ids the engine made (never a peer's choice, so no
    // collision attack): 704 -> 402 instructions per routed call (docs/architecture.md, "The
    // hot path"). The pending table keeps SipHash: its keys are invocation ids callers choose.
    pub(crate) conns: DashMap<Arc<str>, Arc<WorkerState>, crate::registry::Hasher>,
    pub(super) pending: PendingTable<Pending>,
    pub(crate) acks: DashMap<String, oneshot::Sender<Option<ErrorBody>>>,
    pub(super) me: Weak<Shared>,
    pub(super) fn_change_scheduled: AtomicBool,
    pub(super) fn_last_fire: Mutex<Option<Instant>>,
    /// Set by [`super::Engine::shutdown`]: calls made through an [`super::EngineRef`] afterwards
    /// fail at once.
    pub(super) stopped: AtomicBool,
    /// The host serving external HTTP functions, if any.
    pub(super) external: RwLock<Option<Arc<dyn ExternalFunctions>>>,
    pub(super) external_attempts: AtomicU64,
    /// Held while a worker's registrations apply and while a connection is cleaned up, so that a
    /// successor's registrations (a reconnect under the same name) wait until its predecessor's
    /// cleanup is over, and that cleanup never undoes them (docs/architecture.md).
    pub(super) registrations: Mutex<()>,
    /// Data channels waiting for their ends (docs/protocol.md 1.7).
    pub(crate) channels: Arc<ChannelHub>,
    /// Metrics are on (setting `metrics_port`): calls record into their function's meters.
    pub(super) metered: bool,
    /// Calls that failed before they were routed (unknown function, ...), under one label.
    pub(super) unrouted: FunctionStats,
    /// Worker connections closed or refused, by reason (counted whether metrics are on or not:
    /// they are rare).
    pub(super) closes: CloseCounts,
    /// The services' meters, written after the engine's own when `/metrics` is scraped.
    pub(super) metric_sources: Mutex<Vec<Arc<dyn MetricsSource>>>,
    /// The last calls, recorded while the console watches (`engine/recent.rs`).
    pub(crate) recent: super::recent::Recent,
    /// Where the engine's spans and the workers' `/otel` telemetry go (`telemetry/mod.rs`).
    pub(crate) telemetry: crate::telemetry::Telemetry,
    /// The engine's spans, sampled and batched into `telemetry` (`telemetry/spans.rs`).
    pub(crate) tracer: crate::telemetry::spans::Tracer,
}

pub(super) fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(super) fn raw_null() -> RawJson {
    RawValue::NULL.to_owned()
}

pub(super) fn send_msg(conn: &Connection, msg: &Message) -> bool {
    conn.send(msg.encode()).is_ok()
}

impl Shared {
    pub(super) fn new(config: EngineConfig) -> Arc<Shared> {
        let telemetry = crate::telemetry::Telemetry::default();
        let tracer = crate::telemetry::spans::Tracer::from_config(telemetry.clone(), &config);
        Arc::new_cyclic(|me| Shared {
            functions: FunctionsRegistry::new(config.function_conflict).with_replica_batches(true),
            trigger_types: TriggerTypeRegistry::default(),
            bindings: TriggerBindingRegistry::default(),
            workers: WorkerRegistry::default(),
            conns: DashMap::default(),
            pending: PendingTable::new(),
            acks: DashMap::default(),
            me: me.clone(),
            fn_change_scheduled: AtomicBool::new(false),
            fn_last_fire: Mutex::new(None),
            stopped: AtomicBool::new(false),
            external: RwLock::new(None),
            external_attempts: AtomicU64::new(0),
            registrations: Mutex::new(()),
            channels: Arc::new(ChannelHub::default()),
            metered: config.metrics_addr.is_some(),
            unrouted: FunctionStats::default(),
            closes: CloseCounts::default(),
            metric_sources: Mutex::new(Vec::new()),
            recent: super::recent::Recent::default(),
            telemetry,
            tracer,
            config,
        })
    }

    pub(super) fn completer(&self) -> Weak<dyn Completer> {
        self.me.clone()
    }

    /// Calls in flight on worker `id` (as target).
    pub(crate) fn pending_for_worker(&self, id: &str) -> usize {
        self.pending
            .count_where(|p| p.target.as_deref() == Some(id))
    }

    /// Registers a native function under `owner`.
    pub(crate) fn register_native(
        &self,
        namespace: &str,
        function_id: &str,
        owner: &str,
        def: FunctionDef,
        function: Arc<dyn NativeFunction>,
    ) -> crate::Result<()> {
        self.functions
            .register(namespace, function_id, owner, Target::Native(function), def)?;
        self.functions_changed();
        Ok(())
    }
}
