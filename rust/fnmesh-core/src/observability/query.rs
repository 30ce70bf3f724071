//! The query functions over the telemetry store, with iii's inputs and answers:
//! `engine::traces::list`, `engine::traces::tree`, `engine::logs::list`, `engine::metrics::list`
//! (docs/observability.md, "Worker telemetry and the query functions"). Each reads the records
//! the store flattened at insert; none parses OTLP again.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::telemetry::store::{StoredDataPoint, StoredSpan, TelemetryStore};

// NOTE: the functions scan the store's rings (no index by trace id): with the default 10,000
// spans, `engine::traces::list` with no filter takes 0.41 ms and `engine::traces::tree` 0.13 ms
// (release build, the store full of 1,000 iii-sdk-shaped messages of 10 spans; decoding,
// flattening and storing one such 4.2 KB message took 56 µs). An index would cost every insert
// to save less than a millisecond per query.

/// Input of `engine::traces::list`: filters over the root spans of the stored traces.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TracesListInput {
    /// Only this trace.
    pub trace_id: Option<String>,
    /// Skip this many (default 0).
    pub offset: Option<usize>,
    /// Answer at most this many (default 100).
    pub limit: Option<usize>,
    /// Case-insensitive substring of the service name.
    pub service_name: Option<String>,
    /// Case-insensitive substring of the span name.
    pub name: Option<String>,
    /// Case-insensitive substring of the status (`ok`, `error`, `unset`).
    pub status: Option<String>,
    /// Shortest duration, milliseconds.
    pub min_duration_ms: Option<f64>,
    /// Longest duration, milliseconds.
    pub max_duration_ms: Option<f64>,
    /// Spans ending at or after this time, unix milliseconds.
    pub start_time: Option<u64>,
    /// Spans starting at or before this time, unix milliseconds.
    pub end_time: Option<u64>,
    /// `start_time` (default), `duration` or `name`.
    pub sort_by: Option<String>,
    /// `asc` (default) or `desc`.
    pub sort_order: Option<String>,
    /// `[key, value]` pairs every match carries (exact).
    pub attributes: Option<Vec<Vec<String>>>,
    /// Include the engine's own functions (`engine::*`); default false.
    pub include_internal: Option<bool>,
    /// Match `name` against every span of a trace, not only its root; default false.
    pub search_all_spans: Option<bool>,
}

/// Input of `engine::traces::tree`.
#[derive(Debug, Deserialize)]
pub struct TracesTreeInput {
    /// The trace to build.
    pub trace_id: String,
}

/// Input of `engine::logs::list`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LogsListInput {
    /// From this time, unix milliseconds.
    pub start_time: Option<u64>,
    /// Until this time, unix milliseconds.
    pub end_time: Option<u64>,
    /// Only records of this trace.
    pub trace_id: Option<String>,
    /// Only records of this span.
    pub span_id: Option<String>,
    /// At least this severity number (1-24).
    pub severity_min: Option<i32>,
    /// This severity text, case-insensitive.
    pub severity_text: Option<String>,
    /// Skip this many (default 0).
    pub offset: Option<usize>,
    /// Answer at most this many (default all).
    pub limit: Option<usize>,
}

/// Input of `engine::metrics::list`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct MetricsListInput {
    /// From this time, unix milliseconds (with `end_time`).
    pub start_time: Option<u64>,
    /// Until this time, unix milliseconds (with `start_time`).
    pub end_time: Option<u64>,
    /// Only this metric.
    pub metric_name: Option<String>,
    /// Also answer the number points aggregated in buckets of this many seconds (with
    /// `start_time` and `end_time`).
    pub aggregate_interval: Option<u64>,
}

/// A time in unix milliseconds as nanoseconds, or why it cannot be one.
fn ms_to_ns(ms: u64, field: &str) -> Result<u64, String> {
    ms.checked_mul(1_000_000)
        .ok_or_else(|| format!("{field} value too large"))
}

fn contains(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

fn is_internal(span: &StoredSpan) -> bool {
    span.attributes.iter().any(|(k, v)| {
        (k == "iii.function.kind" && v == "internal")
            || (k == "function_id" && v.starts_with("engine::"))
    })
}

fn duration_ms(span: &StoredSpan) -> f64 {
    span.end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano) as f64
        / 1_000_000.0
}

/// `engine::traces::list`: `{spans, total, offset, limit}`, the root spans that pass every
/// filter, sorted and paged.
pub fn traces_list(store: &TelemetryStore, input: &TracesListInput) -> Result<Value, String> {
    let start_ns = input
        .start_time
        .map(|t| ms_to_ns(t, "start_time"))
        .transpose()?;
    let end_ns = input
        .end_time
        .map(|t| ms_to_ns(t, "end_time"))
        .transpose()?;
    let ring = store.spans.lock().unwrap_or_else(|p| p.into_inner());
    let in_trace = |s: &&StoredSpan| {
        input
            .trace_id
            .as_deref()
            .is_none_or(|t| s.trace_id.eq_ignore_ascii_case(t))
    };
    let search_all = input.search_all_spans.unwrap_or(false);
    let name_matched: Option<HashSet<&str>> = match (&input.name, search_all) {
        (Some(name), true) => Some(
            ring.iter()
                .filter(in_trace)
                .filter(|s| contains(&s.name, name))
                .map(|s| s.trace_id.as_str())
                .collect(),
        ),
        _ => None,
    };
    let include_internal = input.include_internal.unwrap_or(false);
    let mut roots: Vec<&StoredSpan> = ring
        .iter()
        .filter(in_trace)
        .filter(|s| s.parent_span_id.is_none())
        .filter(|s| include_internal || !is_internal(s))
        .filter(|s| {
            input
                .service_name
                .as_deref()
                .is_none_or(|n| contains(&s.service_name, n))
        })
        .filter(|s| match (&input.name, &name_matched) {
            (Some(_), Some(matched)) => matched.contains(s.trace_id.as_str()),
            (Some(name), None) => contains(&s.name, name),
            (None, _) => true,
        })
        .filter(|s| {
            input
                .status
                .as_deref()
                .is_none_or(|st| contains(&s.status, st))
        })
        .filter(|s| input.min_duration_ms.is_none_or(|m| duration_ms(s) >= m))
        .filter(|s| input.max_duration_ms.is_none_or(|m| duration_ms(s) <= m))
        .filter(|s| start_ns.is_none_or(|t| s.end_time_unix_nano >= t))
        .filter(|s| end_ns.is_none_or(|t| s.start_time_unix_nano <= t))
        .filter(|s| {
            input.attributes.as_ref().is_none_or(|pairs| {
                pairs
                    .iter()
                    .filter(|p| p.len() == 2)
                    .all(|p| s.attributes.iter().any(|(k, v)| *k == p[0] && *v == p[1]))
            })
        })
        .collect();
    let ascending = input
        .sort_order
        .as_deref()
        .is_none_or(|o| o.eq_ignore_ascii_case("asc"));
    let by = input.sort_by.as_deref().unwrap_or("start_time");
    roots.sort_by(|a, b| {
        let order = match by {
            "duration" => duration_ms(a).total_cmp(&duration_ms(b)),
            "name" => a.name.cmp(&b.name),
            _ => a.start_time_unix_nano.cmp(&b.start_time_unix_nano),
        };
        if ascending {
            order
        } else {
            order.reverse()
        }
    });
    let total = roots.len();
    let offset = input.offset.unwrap_or(0);
    let limit = input.limit.unwrap_or(100);
    let page: Vec<&StoredSpan> = roots.into_iter().skip(offset).take(limit).collect();
    Ok(json!({ "spans": page, "total": total, "offset": offset, "limit": limit }))
}

#[derive(Serialize)]
struct Node<'a> {
    #[serde(flatten)]
    span: &'a StoredSpan,
    children: Vec<Node<'a>>,
}

/// `engine::traces::tree`: `{roots}`, the spans of one trace nested under their parents
/// (`children`), each level in start order. A span whose parent is not stored is a root.
pub fn traces_tree(store: &TelemetryStore, input: &TracesTreeInput) -> Value {
    let ring = store.spans.lock().unwrap_or_else(|p| p.into_inner());
    let mut spans: Vec<&StoredSpan> = ring
        .iter()
        .filter(|s| s.trace_id.eq_ignore_ascii_case(&input.trace_id))
        .collect();
    spans.sort_by_key(|s| s.start_time_unix_nano);
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&StoredSpan>> = HashMap::new();
    let mut roots = Vec::new();
    for span in spans {
        match span.parent_span_id.as_deref() {
            Some(parent) if ids.contains(parent) && parent != span.span_id => {
                children.entry(parent).or_default().push(span)
            }
            _ => roots.push(span),
        }
    }
    // Iterative over an explicit stack of levels would be longer; recursion is bounded by the
    // store's span count, and each span is visited once (removed from `children` when taken),
    // so a parent cycle cannot loop.
    fn build<'a>(
        span: &'a StoredSpan,
        children: &mut HashMap<&str, Vec<&'a StoredSpan>>,
    ) -> Node<'a> {
        let kids = children.remove(span.span_id.as_str()).unwrap_or_default();
        Node {
            span,
            children: kids.into_iter().map(|k| build(k, children)).collect(),
        }
    }
    let roots: Vec<Node> = roots.into_iter().map(|r| build(r, &mut children)).collect();
    json!({ "roots": roots })
}

/// `engine::logs::list`: `{logs, total, query, timestamp}`, newest first.
pub fn logs_list(
    store: &TelemetryStore,
    input: &LogsListInput,
    now_ms: u64,
) -> Result<Value, String> {
    let start_ns = input
        .start_time
        .map(|t| ms_to_ns(t, "start_time"))
        .transpose()?;
    let end_ns = input
        .end_time
        .map(|t| ms_to_ns(t, "end_time"))
        .transpose()?;
    let ring = store.logs.lock().unwrap_or_else(|p| p.into_inner());
    let mut logs: Vec<_> = ring
        .iter()
        .filter(|l| {
            input.trace_id.as_deref().is_none_or(|t| {
                l.trace_id
                    .as_deref()
                    .is_some_and(|x| x.eq_ignore_ascii_case(t))
            })
        })
        .filter(|l| {
            input.span_id.as_deref().is_none_or(|t| {
                l.span_id
                    .as_deref()
                    .is_some_and(|x| x.eq_ignore_ascii_case(t))
            })
        })
        .filter(|l| input.severity_min.is_none_or(|m| l.severity_number >= m))
        .filter(|l| {
            input
                .severity_text
                .as_deref()
                .is_none_or(|t| l.severity_text.eq_ignore_ascii_case(t))
        })
        .filter(|l| start_ns.is_none_or(|t| l.timestamp_unix_nano >= t))
        .filter(|l| end_ns.is_none_or(|t| l.timestamp_unix_nano <= t))
        .collect();
    // Newest first; records of one instant keep their arrival order reversed as well.
    logs.reverse();
    logs.sort_by_key(|l| std::cmp::Reverse(l.timestamp_unix_nano));
    let total = logs.len();
    let page: Vec<_> = logs
        .into_iter()
        .skip(input.offset.unwrap_or(0))
        .take(input.limit.unwrap_or(usize::MAX))
        .collect();
    Ok(json!({
        "logs": page,
        "total": total,
        "query": {
            "trace_id": input.trace_id,
            "span_id": input.span_id,
            "severity_min": input.severity_min,
            "severity_text": input.severity_text,
            "start_time": input.start_time,
            "end_time": input.end_time,
            "offset": input.offset,
            "limit": input.limit,
        },
        "timestamp": now_ms,
    }))
}

/// `engine::metrics::list`: `{sdk_metrics, timestamp}` (plus `aggregated_metrics` and `query`
/// when asked). `engine_metrics` is added by the service.
pub fn metrics_list(
    store: &TelemetryStore,
    input: &MetricsListInput,
    now_ms: u64,
) -> Result<Value, String> {
    let range = match (input.start_time, input.end_time) {
        (Some(start), Some(end)) => {
            Some((ms_to_ns(start, "start_time")?, ms_to_ns(end, "end_time")?))
        }
        _ => None,
    };
    let ring = store.metrics.lock().unwrap_or_else(|p| p.into_inner());
    let metrics: Vec<_> = ring
        .iter()
        .filter(|m| input.metric_name.as_deref().is_none_or(|n| m.name == n))
        .filter(|m| {
            range.is_none_or(|(start, end)| {
                m.timestamp_unix_nano >= start && m.timestamp_unix_nano <= end
            })
        })
        .collect();
    let mut answer = json!({ "sdk_metrics": metrics, "timestamp": now_ms });
    if let (Some(interval), Some((start, end))) = (input.aggregate_interval, range) {
        let step = interval
            .checked_mul(1_000_000_000)
            .filter(|s| *s > 0)
            .ok_or("aggregate_interval must be between 1 and 18446744073 seconds")?;
        // (name, bucket start) -> count, sum, min, max of the number points in it. Only buckets
        // holding a point exist, so there are at most as many as the store holds points.
        let mut buckets: std::collections::BTreeMap<(&str, u64), (u64, f64, f64, f64)> =
            Default::default();
        for m in &metrics {
            for p in &m.data_points {
                let StoredDataPoint::Number {
                    value,
                    timestamp_unix_nano: t,
                    ..
                } = p
                else {
                    continue;
                };
                if *t < start || *t > end {
                    continue;
                }
                let bucket = start + (t - start) / step * step;
                let e = buckets.entry((m.name.as_str(), bucket)).or_insert((
                    0,
                    0.0,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                ));
                e.0 += 1;
                e.1 += value;
                e.2 = e.2.min(*value);
                e.3 = e.3.max(*value);
            }
        }
        let aggregated: Vec<Value> = buckets
            .into_iter()
            .map(|((name, bucket), (count, sum, min, max))| {
                json!({
                    "name": name,
                    "bucket_start_ns": bucket,
                    "bucket_end_ns": bucket + step,
                    "count": count,
                    "sum": sum,
                    "min": min,
                    "max": max,
                    "avg": sum / count as f64,
                })
            })
            .collect();
        if !aggregated.is_empty() {
            answer["aggregated_metrics"] = json!(aggregated);
        }
    }
    if input.start_time.is_some() || input.end_time.is_some() || input.aggregate_interval.is_some()
    {
        answer["query"] = json!(input);
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TelemetryStoreConfig;
    use crate::telemetry::{Batch, Origin, Signal};
    use std::sync::Arc;

    const T: &str = "0af7651916cd43dd8448eb211c80319c";

    fn span(
        trace: &str,
        id: &str,
        parent: Option<&str>,
        name: &str,
        start_ms: u64,
        ms: u64,
    ) -> Value {
        json!({
            "traceId": trace, "spanId": id, "parentSpanId": parent.unwrap_or(""), "name": name,
            "startTimeUnixNano": (start_ms * 1_000_000).to_string(),
            "endTimeUnixNano": ((start_ms + ms) * 1_000_000).to_string(),
            "attributes": [{"key": "function_id", "value": {"stringValue": name}}],
            "status": {"code": if name.contains("fail") { 2 } else { 1 }},
        })
    }

    fn store_with(service: &str, spans: Vec<Value>) -> TelemetryStore {
        let store = TelemetryStore::new(&TelemetryStoreConfig::default());
        insert(&store, service, spans);
        store
    }

    fn insert(store: &TelemetryStore, service: &str, spans: Vec<Value>) {
        store.insert(&Batch {
            signal: Signal::Traces,
            origin: Origin::Worker("p".into()),
            request: Arc::new(json!({"resourceSpans": [{
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeSpans": [{"spans": spans}],
            }]})),
        });
    }

    fn names(answer: &Value) -> Vec<&str> {
        answer["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn traces_list_filters_sorts_and_pages_root_spans() {
        let other = "1af7651916cd43dd8448eb211c80319c";
        let store = store_with(
            "orders",
            vec![
                span(T, "a000000000000001", None, "place", 1000, 50),
                span(
                    T,
                    "a000000000000002",
                    Some("a000000000000001"),
                    "charge",
                    1010,
                    20,
                ),
                span(other, "b000000000000001", None, "refund-fail", 2000, 5),
                span(
                    other,
                    "b000000000000002",
                    None,
                    "engine::functions::list",
                    3000,
                    1,
                ),
            ],
        );
        insert(
            &store,
            "billing",
            vec![span(
                "2af7651916cd43dd8448eb211c80319c",
                "c000000000000001",
                None,
                "invoice",
                500,
                500,
            )],
        );
        let list =
            |input: Value| traces_list(&store, &serde_json::from_value(input).unwrap()).unwrap();
        let all = list(json!({}));
        assert_eq!(names(&all), ["invoice", "place", "refund-fail"]);
        assert_eq!(
            (all["total"].as_u64(), all["limit"].as_u64()),
            (Some(3), Some(100))
        );
        assert_eq!(
            names(&list(json!({"include_internal": true})))[3],
            "engine::functions::list"
        );
        assert_eq!(names(&list(json!({"service_name": "BILL"}))), ["invoice"]);
        assert_eq!(names(&list(json!({"trace_id": T}))), ["place"]);
        assert_eq!(names(&list(json!({"status": "error"}))), ["refund-fail"]);
        assert_eq!(names(&list(json!({"name": "charge"}))), Vec::<&str>::new());
        assert_eq!(
            names(&list(json!({"name": "charge", "search_all_spans": true}))),
            ["place"]
        );
        assert_eq!(
            names(&list(json!({"min_duration_ms": 40.0}))),
            ["invoice", "place"]
        );
        assert_eq!(
            names(&list(json!({"start_time": 1040, "end_time": 2500}))),
            ["place", "refund-fail"]
        );
        assert_eq!(
            names(&list(json!({"sort_by": "duration", "sort_order": "desc"}))),
            ["invoice", "place", "refund-fail"]
        );
        let page = list(json!({"offset": 1, "limit": 1}));
        assert_eq!(
            (names(&page), page["total"].as_u64()),
            (vec!["place"], Some(3))
        );
        assert_eq!(
            names(&list(json!({"attributes": [["function_id", "invoice"]]}))),
            ["invoice"]
        );
        let err = traces_list(
            &store,
            &serde_json::from_value(json!({"start_time": u64::MAX})).unwrap(),
        );
        assert_eq!(err.unwrap_err(), "start_time value too large");
    }

    #[test]
    fn traces_tree_nests_children_under_their_parents() {
        let store = store_with(
            "w",
            vec![
                span(
                    T,
                    "0000000000000003",
                    Some("0000000000000002"),
                    "grandchild",
                    1002,
                    1,
                ),
                span(T, "0000000000000001", None, "root", 1000, 10),
                span(
                    T,
                    "0000000000000002",
                    Some("0000000000000001"),
                    "child",
                    1001,
                    5,
                ),
                span(
                    T,
                    "0000000000000004",
                    Some("0000000000000001"),
                    "second",
                    1003,
                    1,
                ),
                span(
                    T,
                    "0000000000000005",
                    Some("00000000000000ff"),
                    "orphan",
                    1004,
                    1,
                ),
            ],
        );
        let tree = traces_tree(
            &store,
            &TracesTreeInput {
                trace_id: T.to_uppercase(),
            },
        );
        let roots = tree["roots"].as_array().unwrap();
        assert_eq!(
            roots.len(),
            2,
            "the root and the span whose parent is missing"
        );
        assert_eq!(roots[0]["name"], "root");
        assert_eq!(roots[0]["children"][0]["name"], "child");
        assert_eq!(roots[0]["children"][0]["children"][0]["name"], "grandchild");
        assert_eq!(roots[0]["children"][1]["name"], "second");
        assert_eq!(roots[1]["name"], "orphan");
        assert_eq!(roots[0]["trace_id"], T);
        let none = traces_tree(
            &store,
            &TracesTreeInput {
                trace_id: "ff".into(),
            },
        );
        assert_eq!(none, json!({"roots": []}));
    }

    #[test]
    fn logs_list_filters_newest_first() {
        let store = TelemetryStore::new(&TelemetryStoreConfig::default());
        let record = |ms: u64, sev: i32, text: &str, trace: &str| {
            json!({"timeUnixNano": (ms * 1_000_000).to_string(), "severityNumber": sev,
                   "severityText": text, "body": {"stringValue": format!("at {ms}")},
                   "traceId": trace, "spanId": "a000000000000001"})
        };
        store.insert(&Batch {
            signal: Signal::Logs,
            origin: Origin::Worker("p".into()),
            request: Arc::new(json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [
                record(1, 9, "INFO", T), record(3, 17, "ERROR", T), record(2, 13, "WARN", "")]}]}]})),
        });
        let list =
            |input: Value| logs_list(&store, &serde_json::from_value(input).unwrap(), 0).unwrap();
        let bodies = |a: &Value| -> Vec<String> {
            a["logs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["body"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(bodies(&list(json!({}))), ["at 3", "at 2", "at 1"]);
        assert_eq!(bodies(&list(json!({"trace_id": T}))), ["at 3", "at 1"]);
        assert_eq!(bodies(&list(json!({"severity_min": 13}))), ["at 3", "at 2"]);
        assert_eq!(bodies(&list(json!({"severity_text": "warn"}))), ["at 2"]);
        assert_eq!(
            bodies(&list(json!({"start_time": 2, "end_time": 2}))),
            ["at 2"]
        );
        let page = list(json!({"offset": 1, "limit": 1}));
        assert_eq!(
            (bodies(&page), page["total"].as_u64()),
            (vec!["at 2".to_owned()], Some(3))
        );
        assert_eq!(page["query"]["limit"], 1);
    }

    #[test]
    fn metrics_list_filters_and_aggregates() {
        let store = TelemetryStore::new(&TelemetryStoreConfig::default());
        store.insert(&Batch {
            signal: Signal::Metrics,
            origin: Origin::Worker("p".into()),
            request: Arc::new(json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [
                {"name": "calls", "gauge": {"dataPoints": [
                    {"asDouble": 1.0, "timeUnixNano": "1000000000"},
                    {"asDouble": 3.0, "timeUnixNano": "1500000000"},
                    {"asDouble": 10.0, "timeUnixNano": "2500000000"}]}},
                {"name": "other", "gauge": {"dataPoints": []}}]}]}]})),
        });
        let list = |input: Value| metrics_list(&store, &serde_json::from_value(input).unwrap(), 0);
        assert_eq!(
            list(json!({})).unwrap()["sdk_metrics"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let one = list(json!({"metric_name": "calls"})).unwrap();
        assert_eq!(one["sdk_metrics"][0]["name"], "calls");
        assert!(one.get("query").is_none());
        let agg = list(json!({"start_time": 0, "end_time": 4_000_000_000_000u64, "metric_name": "calls", "aggregate_interval": 1})).unwrap();
        // The metric was received now, within the range; its points fall in buckets 1 s wide.
        let buckets = agg["aggregated_metrics"].as_array().unwrap();
        assert_eq!(buckets.len(), 2);
        assert_eq!(
            (buckets[0]["count"].as_u64(), buckets[0]["sum"].as_f64()),
            (Some(2), Some(4.0))
        );
        assert_eq!(buckets[1]["max"].as_f64(), Some(10.0));
        assert_eq!(agg["query"]["aggregate_interval"], 1);
        assert!(list(json!({"start_time": 0, "end_time": 1, "aggregate_interval": 0})).is_err());
        assert!(list(json!({"start_time": u64::MAX, "end_time": 1})).is_err());
    }
}
