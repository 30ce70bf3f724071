//! The engine's own metrics (docs/observability.md): calls by function and outcome with their
//! durations, calls in flight, connected workers, registered functions and connection closes,
//! then the families of the services' [`MetricsSource`]s, as one Prometheus text exposition.

use std::sync::Arc;

use super::state::{lock, Shared};
use super::EngineRef;
use crate::meter::CloseReason;
use crate::meter::{self, Exposition, MetricsSource, OTHER};

impl Shared {
    /// Counts a worker connection closed or refused by the listener.
    pub(super) fn connection_closed(&self, reason: CloseReason) {
        self.closes.record(reason);
    }

    fn write_metrics(&self, out: &mut Exposition) {
        let functions = self.functions.stats();
        let rows = functions
            .iter()
            .map(|(key, stats)| (key.namespace(), key.function_id(), &**stats))
            .chain(std::iter::once((OTHER, OTHER, &self.unrouted)));
        meter::write_invocations(out, rows);
        out.gauge(
            "fnmesh_invocations_in_flight",
            "Calls routed and not answered yet.",
            self.pending.len() as f64,
        );
        out.gauge(
            "fnmesh_workers_connected",
            "Worker connections open.",
            self.conns.len() as f64,
        );
        out.gauge(
            "fnmesh_functions_registered",
            "Functions registered, the engine's own included.",
            self.functions.len() as f64,
        );
        self.closes.write(out);
    }
}

impl EngineRef {
    /// True when metrics are on (setting `metrics_port`): services keep their meters only then.
    pub fn metrics_enabled(&self) -> bool {
        self.shared.metered
    }

    /// Adds a service's meters to what `/metrics` shows.
    pub fn add_metrics_source(&self, source: Arc<dyn MetricsSource>) {
        lock(&self.shared.metric_sources).push(source);
    }

    /// Every metric of the engine and its services, in the Prometheus text format.
    pub async fn render_metrics(&self) -> String {
        let mut out = Exposition::default();
        self.shared.write_metrics(&mut out);
        let sources = lock(&self.shared.metric_sources).clone();
        for source in sources {
            source.collect(&mut out).await;
        }
        out.into_text()
    }
}
