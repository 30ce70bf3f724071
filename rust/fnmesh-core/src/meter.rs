//! Meters: the counters and histograms the engine and its services keep for the Prometheus
//! `/metrics` endpoint (docs/observability.md), and the text exposition they are written into.
//!
//! Everything here is lock-free and allocation-free to record: a meter is a few atomics,
//! resolved once (when a function or a route is registered, when a queue consumer starts) and
//! then bumped on each call. Label values come only from what is registered or configured
//! (function ids, routes, queue names), never from caller input: anything else is counted under
//! one folded value, [`OTHER`], so the number of series stays bounded.
//!
//! A foundation: it knows no engine. The engine records invocations and connection closes, the
//! services their own meters, and each adds a [`MetricsSource`] that writes its families into an
//! [`Exposition`] when `/metrics` is scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;

/// The label value everything that is not registered folds into (a call of an unknown
/// function, a request no route matches).
pub const OTHER: &str = "_other";

/// Upper bounds of the duration histograms' buckets, in seconds (the last bucket, `+Inf`, is
/// implicit): 100 µs to 10 s, as fnmesh calls range from a local call to a slow remote one.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

// The same bounds in nanoseconds, compared against on each observation.
const BUCKET_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A duration histogram with the [`DURATION_BUCKETS`] bounds: one atomic add for the bucket and
/// one for the sum per observation.
#[derive(Debug, Default)]
pub struct Histogram {
    // Not cumulative: bucket i counts observations in (bound[i-1], bound[i]]; the last one
    // counts those above every bound. Cumulated when written.
    buckets: [AtomicU64; 17],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let index = BUCKET_NS.partition_point(|&bound| bound < ns);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn write(&self, out: &mut Exposition, name: &str, labels: &[(&str, &str)]) {
        let mut cumulative = 0u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = match DURATION_BUCKETS.get(i) {
                Some(bound) => format!("{bound}"),
                None => "+Inf".to_owned(),
            };
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            out.sample(&format!("{name}_bucket"), &with_le, cumulative as f64);
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        out.sample(&format!("{name}_sum"), labels, sum);
        out.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

/// How a call ended, as `fnmesh_invocations_total{outcome}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// A result (or no result) came back.
    Success,
    /// The function failed, or the call could not be routed.
    Error,
    /// The engine's (or the call's) timeout passed first.
    Timeout,
    /// Nobody waits any more: the caller left or stopped waiting.
    Cancelled,
}

impl CallOutcome {
    const ALL: [CallOutcome; 4] = [
        CallOutcome::Success,
        CallOutcome::Error,
        CallOutcome::Timeout,
        CallOutcome::Cancelled,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Success => "success",
            CallOutcome::Error => "error",
            CallOutcome::Timeout => "timeout",
            CallOutcome::Cancelled => "cancelled",
        }
    }
}

/// One function's meters: calls by outcome and their durations. Kept with the function's
/// registry entry, so a call finds it with the lookup that routes it.
#[derive(Debug, Default)]
pub struct FunctionStats {
    outcomes: [AtomicU64; 4],
    duration: Histogram,
}

impl FunctionStats {
    /// Records one finished call.
    pub fn record(&self, outcome: CallOutcome, elapsed: Duration) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(elapsed);
    }

    /// Records a call that failed before it was routed (no duration).
    pub fn record_unrouted(&self, outcome: CallOutcome) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls that ended with `outcome`.
    pub fn count(&self, outcome: CallOutcome) -> u64 {
        self.outcomes[outcome as usize].load(Ordering::Relaxed)
    }
}

/// Why the worker listener closed (or refused) a connection, as
/// `fnmesh_connection_closes_total{reason}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A frame over `max_frame_bytes` (1009).
    Oversize,
    /// The handshake's token was missing or wrong (401).
    Auth,
    /// The handshake took longer than `handshake_timeout`, or the peer was silent past
    /// `peer_timeout`.
    Timeout,
    /// The handshake or the WebSocket stream was malformed.
    ProtocolError,
    /// The peer did not read its frames fast enough (`outbound_queue`, `outbound_bytes`).
    SlowReader,
}

impl CloseReason {
    const ALL: [CloseReason; 5] = [
        CloseReason::Oversize,
        CloseReason::Auth,
        CloseReason::Timeout,
        CloseReason::ProtocolError,
        CloseReason::SlowReader,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Oversize => "oversize",
            CloseReason::Auth => "auth",
            CloseReason::Timeout => "timeout",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::SlowReader => "slow_reader",
        }
    }
}

/// Connection closes by reason.
#[derive(Debug, Default)]
pub struct CloseCounts([AtomicU64; 5]);

impl CloseCounts {
    /// Counts one close.
    pub fn record(&self, reason: CloseReason) {
        self.0[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Writes `fnmesh_connection_closes_total`.
    pub fn write(&self, out: &mut Exposition) {
        out.family(
            "fnmesh_connection_closes_total",
            "counter",
            "Worker connections the engine closed or refused, by reason.",
        );
        for reason in CloseReason::ALL {
            let n = self.0[reason as usize].load(Ordering::Relaxed);
            out.sample(
                "fnmesh_connection_closes_total",
                &[("reason", reason.as_str())],
                n as f64,
            );
        }
    }
}

/// Writes `fnmesh_invocations_total` and `fnmesh_invocation_duration_seconds` for the given
/// functions (`(namespace, function id, meters)`), the folded [`OTHER`] row included.
pub fn write_invocations<'a>(
    out: &mut Exposition,
    functions: impl IntoIterator<Item = (&'a str, &'a str, &'a FunctionStats)> + Clone,
) {
    out.family(
        "fnmesh_invocations_total",
        "counter",
        "Calls routed by the engine, by function and outcome.",
    );
    for (namespace, function_id, stats) in functions.clone() {
        for outcome in CallOutcome::ALL {
            let labels = [
                ("namespace", namespace),
                ("function_id", function_id),
                ("outcome", outcome.as_str()),
            ];
            out.sample(
                "fnmesh_invocations_total",
                &labels,
                stats.count(outcome) as f64,
            );
        }
    }
    out.family(
        "fnmesh_invocation_duration_seconds",
        "histogram",
        "Time from routing a call to its outcome, by function.",
    );
    for (namespace, function_id, stats) in functions {
        stats.duration.write(
            out,
            "fnmesh_invocation_duration_seconds",
            &[("namespace", namespace), ("function_id", function_id)],
        );
    }
}

/// An HTTP route's meters: requests by status and their durations.
#[derive(Debug, Default)]
pub struct RouteStats {
    // Index: status - 100, for 100..=599; a status outside that range counts at the nearer end.
    statuses: Box<[AtomicU64]>,
    duration: Histogram,
}

const STATUS_MIN: u16 = 100;
const STATUS_SLOTS: usize = 500;

impl RouteStats {
    /// Meters for one route.
    pub fn new() -> RouteStats {
        RouteStats {
            statuses: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            duration: Histogram::default(),
        }
    }

    /// Records one answered request.
    pub fn record(&self, status: u16, elapsed: Duration) {
        let slot = usize::from(status.clamp(STATUS_MIN, 599) - STATUS_MIN);
        if let Some(counter) = self.statuses.get(slot) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(elapsed);
    }
}

/// Writes `fnmesh_http_requests_total` and `fnmesh_http_request_duration_seconds` for the given
/// routes (`(route label, meters)`); statuses never seen are left out.
pub fn write_http<'a>(
    out: &mut Exposition,
    routes: impl IntoIterator<Item = (&'a str, &'a RouteStats)> + Clone,
) {
    out.family(
        "fnmesh_http_requests_total",
        "counter",
        "Requests answered by the HTTP trigger, by route and status.",
    );
    for (route, stats) in routes.clone() {
        for (slot, counter) in stats.statuses.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            if n > 0 {
                let status = (slot as u16 + STATUS_MIN).to_string();
                out.sample(
                    "fnmesh_http_requests_total",
                    &[("route", route), ("status", &status)],
                    n as f64,
                );
            }
        }
    }
    out.family(
        "fnmesh_http_request_duration_seconds",
        "histogram",
        "Time to answer a request of the HTTP trigger, by route.",
    );
    for (route, stats) in routes {
        stats.duration.write(
            out,
            "fnmesh_http_request_duration_seconds",
            &[("route", route)],
        );
    }
}

/// A queue's deliveries by how they were settled.
#[derive(Debug, Default)]
pub struct DeliveryCounts([AtomicU64; 5]);

/// How a queue delivery was settled, as `fnmesh_queue_deliveries_total{outcome}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The call succeeded; the message is gone.
    Acked,
    /// The call failed; another attempt is scheduled.
    Retried,
    /// The call failed its last attempt; the message is a dead letter.
    Dead,
    /// The call did not run (no worker, stopped); the message waits without using an attempt.
    Released,
    /// No worker serves the function; the message waits for one.
    Parked,
}

impl DeliveryOutcome {
    const ALL: [DeliveryOutcome; 5] = [
        DeliveryOutcome::Acked,
        DeliveryOutcome::Retried,
        DeliveryOutcome::Dead,
        DeliveryOutcome::Released,
        DeliveryOutcome::Parked,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Acked => "acked",
            DeliveryOutcome::Retried => "retried",
            DeliveryOutcome::Dead => "dead",
            DeliveryOutcome::Released => "released",
            DeliveryOutcome::Parked => "parked",
        }
    }
}

impl DeliveryCounts {
    /// Counts one settled delivery.
    pub fn record(&self, outcome: DeliveryOutcome) {
        self.0[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Writes this queue's `fnmesh_queue_deliveries_total` samples (the family header is the
    /// caller's).
    pub fn write(&self, out: &mut Exposition, queue: &str) {
        for outcome in DeliveryOutcome::ALL {
            let n = self.0[outcome as usize].load(Ordering::Relaxed);
            out.sample(
                "fnmesh_queue_deliveries_total",
                &[("queue", queue), ("outcome", outcome.as_str())],
                n as f64,
            );
        }
    }
}

/// Something that writes metric families when `/metrics` is scraped: the engine core, and
/// each service with meters of its own. A family is written by one source only.
pub trait MetricsSource: Send + Sync + 'static {
    /// Appends this source's families.
    fn collect<'a>(&'a self, out: &'a mut Exposition) -> BoxFuture<'a, ()>;
}

/// The Prometheus text exposition format (version 0.0.4), written family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// The `Content-Type` of the text.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample line; label values are escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(key);
                self.text.push_str("=\"");
                for c in value.chars() {
                    match c {
                        '\\' => self.text.push_str("\\\\"),
                        '"' => self.text.push_str("\\\""),
                        '\n' => self.text.push_str("\\n"),
                        c => self.text.push(c),
                    }
                }
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A gauge family with one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    /// The text written so far.
    pub fn into_text(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // exactly the first bound: in it
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(60)); // above every bound
        let mut out = Exposition::default();
        h.write(&mut out, "d", &[]);
        let text = out.into_text();
        assert!(text.contains("d_bucket{le=\"0.0001\"} 1\n"), "{text}");
        assert!(text.contains("d_bucket{le=\"0.00025\"} 2\n"), "{text}");
        assert!(text.contains("d_bucket{le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("d_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("d_count 3\n"), "{text}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.sample("m", &[("route", "a\"b\\c\nd")], 1.0);
        assert_eq!(out.into_text(), "m{route=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn out_of_range_statuses_fold_into_the_edges() {
        let stats = RouteStats::new();
        stats.record(42, Duration::ZERO);
        stats.record(200, Duration::ZERO);
        stats.record(1000, Duration::ZERO);
        let mut out = Exposition::default();
        write_http(&mut out, [("GET /x", &stats)]);
        let text = out.into_text();
        assert!(text.contains("status=\"100\"} 1\n"), "{text}");
        assert!(text.contains("status=\"200\"} 1\n"), "{text}");
        assert!(text.contains("status=\"599\"} 1\n"), "{text}");
    }
}
