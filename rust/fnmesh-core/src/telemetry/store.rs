//! The telemetry store: the spans, log records and metrics of every batch the hub hands it,
//! flattened once at insert into the records `engine::traces::list`, `engine::logs::list` and
//! `engine::metrics::list` answer (iii's shapes), and kept in three rings bounded by count and by
//! bytes, the oldest evicted first (settings `telemetry_store_spans`, `telemetry_store_logs`,
//! `telemetry_store_metrics`, `telemetry_store_bytes`; docs/observability.md).
//!
//! The store is a [`TelemetrySink`] that does not ask the engine for its own telemetry: it keeps
//! the workers' `/otel` batches, and the engine's spans while an exporter makes them.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Batch, Signal, TelemetrySink};
use crate::config::TelemetryStoreConfig;

/// The name of the store's sink on the hub.
pub const STORE_SINK: &str = "store";

/// One event of a [`StoredSpan`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredSpanEvent {
    /// The event's name.
    pub name: String,
    /// When it happened, unix nanoseconds.
    pub timestamp_unix_nano: u64,
    /// Its attributes, values as strings.
    pub attributes: Vec<(String, String)>,
}

/// One link of a [`StoredSpan`] to a span of another trace.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredSpanLink {
    /// The linked trace, hex.
    pub trace_id: String,
    /// The linked span, hex.
    pub span_id: String,
    /// Its W3C trace state, when it came with one.
    pub trace_state: Option<String>,
    /// Its attributes, values as strings.
    pub attributes: Vec<(String, String)>,
}

/// One span as the query functions answer it (iii's `StoredSpan`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredSpan {
    /// Its trace, 32 lower-case hex digits.
    pub trace_id: String,
    /// The span, 16 lower-case hex digits.
    pub span_id: String,
    /// Its parent in the trace; `None` for a root.
    pub parent_span_id: Option<String>,
    /// The span's name.
    pub name: String,
    /// Start, unix nanoseconds.
    pub start_time_unix_nano: u64,
    /// End, unix nanoseconds.
    pub end_time_unix_nano: u64,
    /// `unset`, `ok` or `error`.
    pub status: String,
    /// The status message, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_description: Option<String>,
    /// Its attributes, values as strings (nested values as JSON).
    pub attributes: Vec<(String, String)>,
    /// The resource's `service.name` (`unknown` without one).
    pub service_name: String,
    /// Its events.
    pub events: Vec<StoredSpanEvent>,
    /// Its links.
    pub links: Vec<StoredSpanLink>,
    /// The instrumentation scope's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instrumentation_scope_name: Option<String>,
    /// The instrumentation scope's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instrumentation_scope_version: Option<String>,
    /// W3C trace flags, when the sender gave them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<u32>,
}

/// One log record as `engine::logs::list` answers it (iii's `StoredLog`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredLog {
    /// When it happened, unix nanoseconds (0: unknown).
    pub timestamp_unix_nano: u64,
    /// When it was observed, unix nanoseconds.
    pub observed_timestamp_unix_nano: u64,
    /// OTLP severity number, 1-24 (0: unspecified).
    pub severity_number: i32,
    /// `INFO`, `WARN`, ... as the sender wrote it.
    pub severity_text: String,
    /// The body, as a string (nested values as JSON).
    pub body: String,
    /// Its attributes, values as JSON.
    pub attributes: Map<String, Value>,
    /// The trace it was logged in, if any.
    pub trace_id: Option<String>,
    /// The span it was logged in, if any.
    pub span_id: Option<String>,
    /// The resource's attributes, values as strings.
    pub resource: HashMap<String, String>,
    /// The resource's `service.name` (`unknown` without one).
    pub service_name: String,
    /// The instrumentation scope's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instrumentation_scope_name: Option<String>,
    /// The instrumentation scope's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instrumentation_scope_version: Option<String>,
}

/// The kind of a [`StoredMetric`].
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoredMetricType {
    /// A monotonic sum.
    Counter,
    /// A gauge.
    Gauge,
    /// A histogram.
    Histogram,
    /// A non-monotonic sum.
    #[serde(rename = "updowncounter")]
    UpDownCounter,
}

/// One data point of a [`StoredMetric`]: a number, or a histogram's buckets.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum StoredDataPoint {
    /// A counter's or a gauge's value.
    Number {
        /// The value.
        value: f64,
        /// The point's attributes, values as strings.
        attributes: Vec<(String, String)>,
        /// When it was measured, unix nanoseconds.
        timestamp_unix_nano: u64,
    },
    /// A histogram's point.
    Histogram {
        /// How many values.
        count: u64,
        /// Their sum.
        sum: f64,
        /// Values per bucket.
        bucket_counts: Vec<u64>,
        /// The buckets' upper bounds.
        explicit_bounds: Vec<f64>,
        /// The smallest value, if sent.
        min: Option<f64>,
        /// The largest value, if sent.
        max: Option<f64>,
        /// The point's attributes, values as strings.
        attributes: Vec<(String, String)>,
        /// When it was measured, unix nanoseconds.
        timestamp_unix_nano: u64,
    },
}

/// One metric of one batch, with its data points (iii's `StoredMetric`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredMetric {
    /// The metric's name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Its unit.
    pub unit: String,
    /// Counter, gauge, histogram or up-down counter.
    pub metric_type: StoredMetricType,
    /// Its data points.
    pub data_points: Vec<StoredDataPoint>,
    /// The resource's `service.name` (`unknown` without one).
    pub service_name: String,
    /// When the engine received it, unix nanoseconds.
    pub timestamp_unix_nano: u64,
    /// The instrumentation scope's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instrumentation_scope_name: Option<String>,
    /// The instrumentation scope's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instrumentation_scope_version: Option<String>,
}

/// A ring of records bounded by count and by (estimated) bytes; the oldest go first.
#[derive(Debug)]
pub struct Ring<T> {
    records: VecDeque<(T, usize)>,
    bytes: usize,
    max_records: usize,
    max_bytes: usize,
    evicted: u64,
}

impl<T> Ring<T> {
    /// An empty ring holding at most `max_records` records and `max_bytes` bytes.
    pub fn new(max_records: usize, max_bytes: usize) -> Ring<T> {
        Ring {
            records: VecDeque::new(),
            bytes: 0,
            max_records,
            max_bytes,
            evicted: 0,
        }
    }

    /// Adds a record of `weight` bytes, evicting the oldest until it fits. A record larger than
    /// the whole byte bound is not kept (counted as evicted).
    pub fn push(&mut self, record: T, weight: usize) {
        if self.max_records == 0 || weight > self.max_bytes {
            self.evicted += 1;
            return;
        }
        while self.records.len() >= self.max_records || self.bytes + weight > self.max_bytes {
            let Some((_, w)) = self.records.pop_front() else {
                break;
            };
            self.bytes -= w;
            self.evicted += 1;
        }
        self.bytes += weight;
        self.records.push_back((record, weight));
    }

    /// The records, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.records.iter().map(|(r, _)| r)
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The estimated bytes it holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many records it dropped to stay in bounds.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Whether it keeps anything at all.
    pub fn enabled(&self) -> bool {
        self.max_records > 0 && self.max_bytes > 0
    }
}

/// The store: three rings behind their own locks.
#[derive(Debug)]
pub struct TelemetryStore {
    /// The spans.
    pub spans: Mutex<Ring<StoredSpan>>,
    /// The log records.
    pub logs: Mutex<Ring<StoredLog>>,
    /// The metrics.
    pub metrics: Mutex<Ring<StoredMetric>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TelemetryStore {
    /// An empty store with `config`'s bounds.
    pub fn new(config: &TelemetryStoreConfig) -> TelemetryStore {
        TelemetryStore {
            spans: Mutex::new(Ring::new(config.spans, config.bytes)),
            logs: Mutex::new(Ring::new(config.logs, config.bytes)),
            metrics: Mutex::new(Ring::new(config.metrics, config.bytes)),
        }
    }

    /// Flattens `batch` and keeps its records.
    pub fn insert(&self, batch: &Batch) {
        match batch.signal {
            Signal::Traces => {
                if !lock(&self.spans).enabled() {
                    return;
                }
                let spans = flatten_spans(&batch.request);
                let mut ring = lock(&self.spans);
                for (span, weight) in spans {
                    ring.push(span, weight);
                }
            }
            Signal::Logs => {
                if !lock(&self.logs).enabled() {
                    return;
                }
                let logs = flatten_logs(&batch.request);
                let mut ring = lock(&self.logs);
                for (log, weight) in logs {
                    ring.push(log, weight);
                }
            }
            Signal::Metrics => {
                if !lock(&self.metrics).enabled() {
                    return;
                }
                let metrics = flatten_metrics(&batch.request, now_unix_nano());
                let mut ring = lock(&self.metrics);
                for (metric, weight) in metrics {
                    ring.push(metric, weight);
                }
            }
        }
    }
}

/// The store on the hub.
pub struct StoreSink(pub std::sync::Arc<TelemetryStore>);

impl TelemetrySink for StoreSink {
    fn name(&self) -> &str {
        STORE_SINK
    }

    fn accept(&self, batch: &Batch) {
        self.0.insert(batch);
    }

    fn wants_engine_telemetry(&self) -> bool {
        false
    }
}

/// Now, unix nanoseconds.
pub fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

// ---- flattening OTLP/JSON ----

/// Fixed bytes counted per record beside its strings (the struct, the ring's slot).
const RECORD_OVERHEAD: usize = 256;
/// Fixed bytes counted per attribute, event, link or data point beside its strings.
const ITEM_OVERHEAD: usize = 48;

fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_owned()
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// An OTLP/JSON 64-bit integer: a decimal string (the encoding's rule) or a bare number.
fn uint(v: &Value, key: &str) -> u64 {
    match v.get(key) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .unwrap_or(0),
        _ => 0,
    }
}

fn float(v: &Value, key: &str) -> Option<f64> {
    match v.get(key) {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
}

/// A trace or span id: lower-cased; empty or all zeros is none.
fn id(v: &Value, key: &str) -> Option<String> {
    let s = v.get(key).and_then(Value::as_str)?;
    if s.is_empty() || s.bytes().all(|b| b == b'0') {
        return None;
    }
    Some(s.to_ascii_lowercase())
}

/// An `AnyValue` as JSON: strings, numbers (`intValue` as a decimal string or a number), bools,
/// arrays and key-value lists; anything else is null.
fn any_json(v: &Value) -> Value {
    if let Some(s) = v.get("stringValue").and_then(Value::as_str) {
        return Value::String(s.to_owned());
    }
    if let Some(i) = v.get("intValue") {
        return match i {
            Value::String(s) => s
                .parse::<i64>()
                .map_or_else(|_| Value::String(s.clone()), Value::from),
            other => other.clone(),
        };
    }
    if let Some(d) = v.get("doubleValue") {
        return match d {
            Value::String(s) => s.parse::<f64>().ok().map_or(Value::Null, Value::from),
            other => other.clone(),
        };
    }
    if let Some(b) = v.get("boolValue").and_then(Value::as_bool) {
        return Value::Bool(b);
    }
    if let Some(b) = v.get("bytesValue").and_then(Value::as_str) {
        return Value::String(b.to_owned());
    }
    if let Some(a) = v.get("arrayValue") {
        return Value::Array(items(a, "values").iter().map(any_json).collect());
    }
    if let Some(kv) = v.get("kvlistValue") {
        return Value::Object(
            items(kv, "values")
                .iter()
                .map(|e| (text(e, "key"), e.get("value").map_or(Value::Null, any_json)))
                .collect(),
        );
    }
    Value::Null
}

/// An `AnyValue` as a string: a primitive as itself, a nested value as JSON.
fn any_string(v: &Value) -> String {
    match any_json(v) {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A `KeyValue` list as `(key, string)` pairs and their byte weight.
fn string_attributes(v: &Value, weight: &mut usize) -> Vec<(String, String)> {
    items(v, "attributes")
        .iter()
        .map(|kv| {
            let pair = (
                text(kv, "key"),
                kv.get("value").map_or_else(String::new, any_string),
            );
            *weight += pair.0.len() + pair.1.len() + ITEM_OVERHEAD;
            pair
        })
        .collect()
}

struct Scope {
    service_name: String,
    scope_name: Option<String>,
    scope_version: Option<String>,
}

/// Visits every `(resource, scope, record)` of an export request: `resource` is the key of the
/// resource list (`resourceSpans`), `scopes` of the scope list (`scopeSpans`), `records` of
/// the record list (`spans`).
fn each_record<'a>(
    request: &'a Value,
    resource: &str,
    scopes: &str,
    records: &str,
    mut visit: impl FnMut(&'a Value, &'a Value, &Scope),
) {
    for r in items(request, resource) {
        let res = r.get("resource").unwrap_or(&Value::Null);
        let service_name = items(res, "attributes")
            .iter()
            .find(|kv| kv.get("key").and_then(Value::as_str) == Some("service.name"))
            .and_then(|kv| kv.get("value"))
            .map(any_string)
            .unwrap_or_else(|| "unknown".to_owned());
        for s in items(r, scopes) {
            let scope = s.get("scope").unwrap_or(&Value::Null);
            let scope = Scope {
                service_name: service_name.clone(),
                scope_name: non_empty(text(scope, "name")),
                scope_version: non_empty(text(scope, "version")),
            };
            for record in items(s, records) {
                visit(res, record, &scope);
            }
        }
    }
}

/// The spans of an `ExportTraceServiceRequest`, with their byte weights. Spans without a
/// trace or span id are skipped.
pub fn flatten_spans(request: &Value) -> Vec<(StoredSpan, usize)> {
    let mut out = Vec::new();
    each_record(
        request,
        "resourceSpans",
        "scopeSpans",
        "spans",
        |_, s, scope| {
            let (Some(trace_id), Some(span_id)) = (id(s, "traceId"), id(s, "spanId")) else {
                return;
            };
            let mut weight = RECORD_OVERHEAD;
            let attributes = string_attributes(s, &mut weight);
            let events = items(s, "events")
                .iter()
                .map(|e| {
                    let name = text(e, "name");
                    weight += name.len() + ITEM_OVERHEAD;
                    StoredSpanEvent {
                        timestamp_unix_nano: uint(e, "timeUnixNano"),
                        attributes: string_attributes(e, &mut weight),
                        name,
                    }
                })
                .collect();
            let links = items(s, "links")
                .iter()
                .filter_map(|l| {
                    weight += ITEM_OVERHEAD + 48;
                    Some(StoredSpanLink {
                        trace_id: id(l, "traceId")?,
                        span_id: id(l, "spanId")?,
                        trace_state: non_empty(text(l, "traceState")),
                        attributes: string_attributes(l, &mut weight),
                    })
                })
                .collect();
            let status = s.get("status").unwrap_or(&Value::Null);
            let code = match status.get("code") {
                Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
                // The JSON encoding may also spell enums by name.
                Some(Value::String(name)) => match name.as_str() {
                    "STATUS_CODE_OK" => 1,
                    "STATUS_CODE_ERROR" => 2,
                    _ => 0,
                },
                _ => 0,
            };
            let name = text(s, "name");
            let status_description = non_empty(text(status, "message"));
            weight += name.len()
                + scope.service_name.len()
                + status_description.as_ref().map_or(0, String::len);
            out.push((
                StoredSpan {
                    trace_id,
                    span_id,
                    parent_span_id: id(s, "parentSpanId"),
                    name,
                    start_time_unix_nano: uint(s, "startTimeUnixNano"),
                    end_time_unix_nano: uint(s, "endTimeUnixNano"),
                    status: match code {
                        1 => "ok",
                        2 => "error",
                        _ => "unset",
                    }
                    .to_owned(),
                    status_description,
                    attributes,
                    service_name: scope.service_name.clone(),
                    events,
                    links,
                    instrumentation_scope_name: scope.scope_name.clone(),
                    instrumentation_scope_version: scope.scope_version.clone(),
                    flags: s.get("flags").and_then(Value::as_u64).map(|f| f as u32),
                },
                weight,
            ));
        },
    );
    out
}

/// The log records of an `ExportLogsServiceRequest`, with their byte weights.
pub fn flatten_logs(request: &Value) -> Vec<(StoredLog, usize)> {
    let mut out = Vec::new();
    each_record(
        request,
        "resourceLogs",
        "scopeLogs",
        "logRecords",
        |res, l, scope| {
            let mut weight = RECORD_OVERHEAD;
            let resource: HashMap<String, String> =
                string_attributes(res, &mut weight).into_iter().collect();
            let attributes: Map<String, Value> = items(l, "attributes")
                .iter()
                .map(|kv| {
                    let key = text(kv, "key");
                    let value = kv.get("value").map_or(Value::Null, any_json);
                    // Serialized size: an upper bound of what the value holds.
                    weight += key.len() + value.to_string().len() + ITEM_OVERHEAD;
                    (key, value)
                })
                .collect();
            let body = l.get("body").map_or_else(String::new, any_string);
            let severity_text = text(l, "severityText");
            weight += body.len() + severity_text.len() + scope.service_name.len();
            let severity_number = match l.get("severityNumber") {
                Some(Value::Number(n)) => n.as_i64().unwrap_or(0).clamp(0, 24) as i32,
                _ => 0,
            };
            out.push((
                StoredLog {
                    timestamp_unix_nano: uint(l, "timeUnixNano"),
                    observed_timestamp_unix_nano: uint(l, "observedTimeUnixNano"),
                    severity_number,
                    severity_text,
                    body,
                    attributes,
                    trace_id: id(l, "traceId"),
                    span_id: id(l, "spanId"),
                    resource,
                    service_name: scope.service_name.clone(),
                    instrumentation_scope_name: scope.scope_name.clone(),
                    instrumentation_scope_version: scope.scope_version.clone(),
                },
                weight,
            ));
        },
    );
    out
}

/// The metrics of an `ExportMetricsServiceRequest` received at `now` (unix nanoseconds), with
/// their byte weights. A metric that is neither a gauge, a sum nor a histogram is skipped.
pub fn flatten_metrics(request: &Value, now: u64) -> Vec<(StoredMetric, usize)> {
    let mut out = Vec::new();
    each_record(
        request,
        "resourceMetrics",
        "scopeMetrics",
        "metrics",
        |_, m, scope| {
            let mut weight = RECORD_OVERHEAD;
            let number = |dp: &Value, weight: &mut usize| {
                *weight += ITEM_OVERHEAD;
                StoredDataPoint::Number {
                    value: float(dp, "asDouble")
                        .or_else(|| float(dp, "asInt"))
                        .unwrap_or(0.0),
                    attributes: string_attributes(dp, weight),
                    timestamp_unix_nano: uint(dp, "timeUnixNano"),
                }
            };
            let (metric_type, data_points) = if let Some(g) = m.get("gauge") {
                let points = items(g, "dataPoints")
                    .iter()
                    .map(|dp| number(dp, &mut weight))
                    .collect();
                (StoredMetricType::Gauge, points)
            } else if let Some(sum) = m.get("sum") {
                let points = items(sum, "dataPoints")
                    .iter()
                    .map(|dp| number(dp, &mut weight))
                    .collect();
                let monotonic = sum.get("isMonotonic").and_then(Value::as_bool) == Some(true);
                let kind = if monotonic {
                    StoredMetricType::Counter
                } else {
                    StoredMetricType::UpDownCounter
                };
                (kind, points)
            } else if let Some(h) = m.get("histogram") {
                let points = items(h, "dataPoints")
                    .iter()
                    .map(|dp| {
                        let bucket_counts: Vec<u64> = items(dp, "bucketCounts")
                            .iter()
                            .map(|c| match c {
                                Value::String(s) => s.parse().unwrap_or(0),
                                other => other.as_u64().unwrap_or(0),
                            })
                            .collect();
                        let explicit_bounds: Vec<f64> = items(dp, "explicitBounds")
                            .iter()
                            .filter_map(Value::as_f64)
                            .collect();
                        weight += ITEM_OVERHEAD + 8 * (bucket_counts.len() + explicit_bounds.len());
                        StoredDataPoint::Histogram {
                            count: uint(dp, "count"),
                            sum: float(dp, "sum").unwrap_or(0.0),
                            bucket_counts,
                            explicit_bounds,
                            min: float(dp, "min"),
                            max: float(dp, "max"),
                            attributes: string_attributes(dp, &mut weight),
                            timestamp_unix_nano: uint(dp, "timeUnixNano"),
                        }
                    })
                    .collect();
                (StoredMetricType::Histogram, points)
            } else {
                return;
            };
            let (name, description, unit) =
                (text(m, "name"), text(m, "description"), text(m, "unit"));
            weight += name.len() + description.len() + unit.len() + scope.service_name.len();
            out.push((
                StoredMetric {
                    name,
                    description,
                    unit,
                    metric_type,
                    data_points,
                    service_name: scope.service_name.clone(),
                    timestamp_unix_nano: now,
                    instrumentation_scope_name: scope.scope_name.clone(),
                    instrumentation_scope_version: scope.scope_version.clone(),
                },
                weight,
            ));
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Origin;
    use serde_json::json;
    use std::sync::Arc;

    fn span(trace: &str, id: &str, parent: Option<&str>, name: &str) -> Value {
        let mut s = json!({
            "traceId": trace, "spanId": id, "name": name, "kind": 1,
            "startTimeUnixNano": "1000000000", "endTimeUnixNano": "3500000000",
            "attributes": [{"key": "function_id", "value": {"stringValue": "orders::place"}},
                           {"key": "n", "value": {"intValue": 3}},
                           {"key": "nested", "value": {"kvlistValue": {"values": [
                               {"key": "a", "value": {"boolValue": true}}]}}}],
            "events": [{"name": "e", "timeUnixNano": "2000000000", "attributes": []}],
            "links": [],
            "status": {"code": 2, "message": "boom"},
        });
        if let Some(p) = parent {
            s["parentSpanId"] = json!(p);
        }
        s
    }

    fn traces(spans: Vec<Value>) -> Value {
        json!({"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "billing"}}]},
            "scopeSpans": [{"scope": {"name": "iii", "version": "0.25"}, "spans": spans}],
        }]})
    }

    #[test]
    fn spans_are_flattened_into_iiis_shape() {
        let t = "0af7651916cd43dd8448eb211c80319c";
        let request = traces(vec![
            span(t, "b7ad6b7169203331", None, "root"),
            span(t, "00f067aa0ba902b7", Some("b7ad6b7169203331"), "child"),
            span("", "00f067aa0ba902b8", None, "no trace id: skipped"),
        ]);
        let spans = flatten_spans(&request);
        assert_eq!(spans.len(), 2);
        let (root, weight) = &spans[0];
        assert!(*weight > RECORD_OVERHEAD);
        assert_eq!(root.trace_id, t);
        assert_eq!(root.parent_span_id, None);
        assert_eq!(
            spans[1].0.parent_span_id.as_deref(),
            Some("b7ad6b7169203331")
        );
        assert_eq!(root.service_name, "billing");
        assert_eq!(root.status, "error");
        assert_eq!(root.status_description.as_deref(), Some("boom"));
        assert_eq!(root.start_time_unix_nano, 1_000_000_000);
        assert_eq!(
            root.attributes,
            [
                ("function_id".to_owned(), "orders::place".to_owned()),
                ("n".to_owned(), "3".to_owned()),
                ("nested".to_owned(), r#"{"a":true}"#.to_owned()),
            ]
        );
        assert_eq!(root.events[0].timestamp_unix_nano, 2_000_000_000);
        assert_eq!(root.instrumentation_scope_name.as_deref(), Some("iii"));
        let wire = serde_json::to_value(root).unwrap();
        assert_eq!(
            wire["attributes"][0],
            json!(["function_id", "orders::place"])
        );
        assert!(wire.get("flags").is_none());
    }

    #[test]
    fn logs_and_metrics_are_flattened() {
        let logs = json!({"resourceLogs": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "w"}}]},
            "scopeLogs": [{"scope": {"name": "iii.logger"}, "logRecords": [{
                "timeUnixNano": "5", "observedTimeUnixNano": "6", "severityNumber": 17,
                "severityText": "ERROR", "body": {"stringValue": "it broke"},
                "attributes": [{"key": "log.data", "value": {"kvlistValue": {"values": [
                    {"key": "order", "value": {"intValue": "42"}}]}}}],
                "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "0000000000000000",
            }]}],
        }]});
        let logs = flatten_logs(&logs);
        let log = &logs[0].0;
        assert_eq!(log.body, "it broke");
        assert_eq!(log.severity_number, 17);
        assert_eq!(log.attributes["log.data"], json!({"order": 42}));
        assert_eq!(log.span_id, None, "an all-zero id is no id");
        assert_eq!(log.resource["service.name"], "w");
        assert_eq!(log.instrumentation_scope_version, None);

        let metrics = json!({"resourceMetrics": [{"resource": {}, "scopeMetrics": [{"metrics": [
            {"name": "calls", "sum": {"isMonotonic": true, "dataPoints": [
                {"asInt": "7", "timeUnixNano": "9", "attributes": []}]}},
            {"name": "lat", "histogram": {"dataPoints": [
                {"count": "2", "sum": 3.5, "bucketCounts": ["1", "1"], "explicitBounds": [1.0]}]}},
            {"name": "mystery", "summary": {}},
        ]}]}]});
        let metrics = flatten_metrics(&metrics, 77);
        assert_eq!(metrics.len(), 2);
        assert_eq!(metrics[0].0.metric_type, StoredMetricType::Counter);
        assert_eq!(metrics[0].0.service_name, "unknown");
        assert_eq!(
            serde_json::to_value(&metrics[0].0.data_points[0]).unwrap(),
            json!({"value": 7.0, "attributes": [], "timestamp_unix_nano": 9})
        );
        let wire = serde_json::to_value(&metrics[1].0).unwrap();
        assert_eq!(wire["metric_type"], "histogram");
        assert_eq!(wire["data_points"][0]["bucket_counts"], json!([1, 1]));
        assert_eq!(wire["timestamp_unix_nano"], 77);
    }

    #[test]
    fn rings_evict_the_oldest_by_count_and_by_bytes() {
        let mut ring = Ring::new(3, 100);
        for i in 0..5 {
            ring.push(i, 10);
        }
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!((ring.evicted(), ring.bytes()), (2, 30));
        ring.push(5, 80); // 30 + 80 > 100: the oldest goes, 20 + 80 fits exactly
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(ring.bytes(), 100);
        ring.push(6, 95); // everything older must go
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [6]);
        assert_eq!((ring.bytes(), ring.evicted()), (95, 6));
        ring.push(7, 101); // larger than the whole bound: not kept, nothing else lost
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [6]);
        assert_eq!(ring.evicted(), 7);
        let mut off = Ring::new(0, 100);
        off.push(1, 1);
        assert!(off.is_empty() && !off.enabled());
    }

    #[test]
    fn the_store_stays_within_its_bounds_under_a_flood() {
        let config = TelemetryStoreConfig {
            spans: 50,
            logs: 0,
            metrics: 10,
            bytes: 64 * 1024,
        };
        let store = TelemetryStore::new(&config);
        let t = "0af7651916cd43dd8448eb211c80319c";
        for i in 0..200u64 {
            let spans = (0..10)
                .map(|j| span(t, &format!("{:016x}", i * 10 + j + 1), None, "s"))
                .collect();
            store.insert(&Batch {
                signal: Signal::Traces,
                origin: Origin::Worker("peer".into()),
                request: Arc::new(traces(spans)),
            });
        }
        let ring = lock(&store.spans);
        assert_eq!(ring.len(), 50);
        assert!(ring.bytes() <= 64 * 1024);
        // The newest are the ones kept.
        assert_eq!(
            ring.iter().last().unwrap().span_id,
            format!("{:016x}", 2000)
        );
        drop(ring);
        store.insert(&Batch {
            signal: Signal::Logs,
            origin: Origin::Engine,
            request: Arc::new(json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{}]}]}]})),
        });
        assert!(lock(&store.logs).is_empty(), "logs off: nothing kept");
    }
}
