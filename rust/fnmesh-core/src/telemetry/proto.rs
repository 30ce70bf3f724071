//! OTLP/JSON to OTLP protobuf: the export requests the telemetry hub carries, encoded for an
//! OTLP/HTTP (`application/x-protobuf`) or OTLP/gRPC collector.
//!
//! The encoder walks the JSON with a table of the OTLP messages it knows (field number, wire
//! type, JSON name), from opentelemetry-proto's `trace/v1`, `logs/v1`, `metrics/v1`,
//! `common/v1` and `resource/v1` (v1.x). Fields it does not know are skipped, as a protobuf
//! reader skips unknown fields. JSON names are the lowerCamelCase ones OTLP/JSON writes; the
//! proto's snake_case names are accepted too. Trace and span ids are hex, other bytes base64,
//! 64-bit integers strings or numbers, enums integers (or their names, for the enums a worker's
//! SDK may name).

use serde_json::{Map, Value};

use super::Signal;

// NOTE: a table-driven encoder (this file) instead of `prost` and the generated
// `opentelemetry-proto` types: it adds no crate to the build (the workspace's crate count is
// unchanged by it), where the generated types bring prost, prost-derive and the proto crate with
// its serde layer and their proc macros, only to turn the one JSON shape the hub carries into
// structs and then bytes. This writes the bytes straight from the JSON.

#[derive(Clone, Copy)]
enum Ty {
    /// UTF-8 string (wire type 2).
    Str,
    /// Bytes written as hex in OTLP/JSON (trace and span ids).
    Hex,
    /// Bytes written as base64.
    Base64,
    /// `fixed64` / `sfixed64` (wire type 1).
    Fixed64,
    /// `fixed32` (wire type 5).
    Fixed32,
    /// `double` (wire type 1).
    Double,
    /// `int64`, `uint64`, `uint32`, `int32` (varint).
    Varint,
    /// `sint32` (zigzag varint).
    SInt,
    /// `bool` (varint).
    Bool,
    /// An enum (varint); names resolved with [`enum_name`].
    Enum,
    /// A nested message.
    Msg(&'static [F]),
    /// Packed `repeated fixed64`.
    PackedFixed64,
    /// Packed `repeated double`.
    PackedDouble,
    /// Packed `repeated uint64` (varints).
    PackedVarint,
}

/// One field: JSON name, number, type. Repeated fields are JSON arrays of that type.
struct F(&'static str, u32, Ty);

static KEY_VALUE: [F; 2] = [F("key", 1, Ty::Str), F("value", 2, Ty::Msg(&ANY_VALUE))];
static ANY_VALUE: [F; 7] = [
    F("stringValue", 1, Ty::Str),
    F("boolValue", 2, Ty::Bool),
    F("intValue", 3, Ty::Varint),
    F("doubleValue", 4, Ty::Double),
    F("arrayValue", 5, Ty::Msg(&ARRAY_VALUE)),
    F("kvlistValue", 6, Ty::Msg(&KVLIST_VALUE)),
    F("bytesValue", 7, Ty::Base64),
];
static ARRAY_VALUE: [F; 1] = [F("values", 1, Ty::Msg(&ANY_VALUE))];
static KVLIST_VALUE: [F; 1] = [F("values", 1, Ty::Msg(&KEY_VALUE))];
static RESOURCE: [F; 2] = [
    F("attributes", 1, Ty::Msg(&KEY_VALUE)),
    F("droppedAttributesCount", 2, Ty::Varint),
];
static SCOPE: [F; 4] = [
    F("name", 1, Ty::Str),
    F("version", 2, Ty::Str),
    F("attributes", 3, Ty::Msg(&KEY_VALUE)),
    F("droppedAttributesCount", 4, Ty::Varint),
];

// trace/v1
static TRACES_REQUEST: [F; 1] = [F("resourceSpans", 1, Ty::Msg(&RESOURCE_SPANS))];
static RESOURCE_SPANS: [F; 3] = [
    F("resource", 1, Ty::Msg(&RESOURCE)),
    F("scopeSpans", 2, Ty::Msg(&SCOPE_SPANS)),
    F("schemaUrl", 3, Ty::Str),
];
static SCOPE_SPANS: [F; 3] = [
    F("scope", 1, Ty::Msg(&SCOPE)),
    F("spans", 2, Ty::Msg(&SPAN)),
    F("schemaUrl", 3, Ty::Str),
];
static SPAN: [F; 16] = [
    F("traceId", 1, Ty::Hex),
    F("spanId", 2, Ty::Hex),
    F("traceState", 3, Ty::Str),
    F("parentSpanId", 4, Ty::Hex),
    F("flags", 16, Ty::Fixed32),
    F("name", 5, Ty::Str),
    F("kind", 6, Ty::Enum),
    F("startTimeUnixNano", 7, Ty::Fixed64),
    F("endTimeUnixNano", 8, Ty::Fixed64),
    F("attributes", 9, Ty::Msg(&KEY_VALUE)),
    F("droppedAttributesCount", 10, Ty::Varint),
    F("events", 11, Ty::Msg(&EVENT)),
    F("droppedEventsCount", 12, Ty::Varint),
    F("links", 13, Ty::Msg(&LINK)),
    F("droppedLinksCount", 14, Ty::Varint),
    F("status", 15, Ty::Msg(&STATUS)),
];
static EVENT: [F; 4] = [
    F("timeUnixNano", 1, Ty::Fixed64),
    F("name", 2, Ty::Str),
    F("attributes", 3, Ty::Msg(&KEY_VALUE)),
    F("droppedAttributesCount", 4, Ty::Varint),
];
static LINK: [F; 6] = [
    F("traceId", 1, Ty::Hex),
    F("spanId", 2, Ty::Hex),
    F("traceState", 3, Ty::Str),
    F("attributes", 4, Ty::Msg(&KEY_VALUE)),
    F("droppedAttributesCount", 5, Ty::Varint),
    F("flags", 6, Ty::Fixed32),
];
static STATUS: [F; 2] = [F("message", 2, Ty::Str), F("code", 3, Ty::Enum)];

// logs/v1
static LOGS_REQUEST: [F; 1] = [F("resourceLogs", 1, Ty::Msg(&RESOURCE_LOGS))];
static RESOURCE_LOGS: [F; 3] = [
    F("resource", 1, Ty::Msg(&RESOURCE)),
    F("scopeLogs", 2, Ty::Msg(&SCOPE_LOGS)),
    F("schemaUrl", 3, Ty::Str),
];
static SCOPE_LOGS: [F; 3] = [
    F("scope", 1, Ty::Msg(&SCOPE)),
    F("logRecords", 2, Ty::Msg(&LOG_RECORD)),
    F("schemaUrl", 3, Ty::Str),
];
static LOG_RECORD: [F; 11] = [
    F("timeUnixNano", 1, Ty::Fixed64),
    F("observedTimeUnixNano", 11, Ty::Fixed64),
    F("severityNumber", 2, Ty::Enum),
    F("severityText", 3, Ty::Str),
    F("body", 5, Ty::Msg(&ANY_VALUE)),
    F("attributes", 6, Ty::Msg(&KEY_VALUE)),
    F("droppedAttributesCount", 7, Ty::Varint),
    F("flags", 8, Ty::Fixed32),
    F("traceId", 9, Ty::Hex),
    F("spanId", 10, Ty::Hex),
    F("eventName", 12, Ty::Str),
];

// metrics/v1
static METRICS_REQUEST: [F; 1] = [F("resourceMetrics", 1, Ty::Msg(&RESOURCE_METRICS))];
static RESOURCE_METRICS: [F; 3] = [
    F("resource", 1, Ty::Msg(&RESOURCE)),
    F("scopeMetrics", 2, Ty::Msg(&SCOPE_METRICS)),
    F("schemaUrl", 3, Ty::Str),
];
static SCOPE_METRICS: [F; 3] = [
    F("scope", 1, Ty::Msg(&SCOPE)),
    F("metrics", 2, Ty::Msg(&METRIC)),
    F("schemaUrl", 3, Ty::Str),
];
static METRIC: [F; 9] = [
    F("name", 1, Ty::Str),
    F("description", 2, Ty::Str),
    F("unit", 3, Ty::Str),
    F("gauge", 5, Ty::Msg(&GAUGE)),
    F("sum", 7, Ty::Msg(&SUM)),
    F("histogram", 9, Ty::Msg(&HISTOGRAM)),
    F("exponentialHistogram", 10, Ty::Msg(&EXP_HISTOGRAM)),
    F("summary", 11, Ty::Msg(&SUMMARY)),
    F("metadata", 12, Ty::Msg(&KEY_VALUE)),
];
static GAUGE: [F; 1] = [F("dataPoints", 1, Ty::Msg(&NUMBER_POINT))];
static SUM: [F; 3] = [
    F("dataPoints", 1, Ty::Msg(&NUMBER_POINT)),
    F("aggregationTemporality", 2, Ty::Enum),
    F("isMonotonic", 3, Ty::Bool),
];
static HISTOGRAM: [F; 2] = [
    F("dataPoints", 1, Ty::Msg(&HISTOGRAM_POINT)),
    F("aggregationTemporality", 2, Ty::Enum),
];
static EXP_HISTOGRAM: [F; 2] = [
    F("dataPoints", 1, Ty::Msg(&EXP_HISTOGRAM_POINT)),
    F("aggregationTemporality", 2, Ty::Enum),
];
static SUMMARY: [F; 1] = [F("dataPoints", 1, Ty::Msg(&SUMMARY_POINT))];
static NUMBER_POINT: [F; 7] = [
    F("attributes", 7, Ty::Msg(&KEY_VALUE)),
    F("startTimeUnixNano", 2, Ty::Fixed64),
    F("timeUnixNano", 3, Ty::Fixed64),
    F("asDouble", 4, Ty::Double),
    F("asInt", 6, Ty::Fixed64),
    F("exemplars", 5, Ty::Msg(&EXEMPLAR)),
    F("flags", 8, Ty::Varint),
];
static HISTOGRAM_POINT: [F; 11] = [
    F("attributes", 9, Ty::Msg(&KEY_VALUE)),
    F("startTimeUnixNano", 2, Ty::Fixed64),
    F("timeUnixNano", 3, Ty::Fixed64),
    F("count", 4, Ty::Fixed64),
    F("sum", 5, Ty::Double),
    F("bucketCounts", 6, Ty::PackedFixed64),
    F("explicitBounds", 7, Ty::PackedDouble),
    F("exemplars", 8, Ty::Msg(&EXEMPLAR)),
    F("flags", 10, Ty::Varint),
    F("min", 11, Ty::Double),
    F("max", 12, Ty::Double),
];
static EXP_HISTOGRAM_POINT: [F; 14] = [
    F("attributes", 1, Ty::Msg(&KEY_VALUE)),
    F("startTimeUnixNano", 2, Ty::Fixed64),
    F("timeUnixNano", 3, Ty::Fixed64),
    F("count", 4, Ty::Fixed64),
    F("sum", 5, Ty::Double),
    F("scale", 6, Ty::SInt),
    F("zeroCount", 7, Ty::Fixed64),
    F("positive", 8, Ty::Msg(&BUCKETS)),
    F("negative", 9, Ty::Msg(&BUCKETS)),
    F("flags", 10, Ty::Varint),
    F("exemplars", 11, Ty::Msg(&EXEMPLAR)),
    F("min", 12, Ty::Double),
    F("max", 13, Ty::Double),
    F("zeroThreshold", 14, Ty::Double),
];
static BUCKETS: [F; 2] = [
    F("offset", 1, Ty::SInt),
    F("bucketCounts", 2, Ty::PackedVarint),
];
static SUMMARY_POINT: [F; 7] = [
    F("attributes", 7, Ty::Msg(&KEY_VALUE)),
    F("startTimeUnixNano", 2, Ty::Fixed64),
    F("timeUnixNano", 3, Ty::Fixed64),
    F("count", 4, Ty::Fixed64),
    F("sum", 5, Ty::Double),
    F("quantileValues", 6, Ty::Msg(&QUANTILE)),
    F("flags", 8, Ty::Varint),
];
static QUANTILE: [F; 2] = [F("quantile", 1, Ty::Double), F("value", 2, Ty::Double)];
static EXEMPLAR: [F; 6] = [
    F("filteredAttributes", 7, Ty::Msg(&KEY_VALUE)),
    F("timeUnixNano", 2, Ty::Fixed64),
    F("asDouble", 3, Ty::Double),
    F("asInt", 6, Ty::Fixed64),
    F("spanId", 4, Ty::Hex),
    F("traceId", 5, Ty::Hex),
];

/// Encodes one OTLP/JSON export request of `signal` as the protobuf of its
/// `Export*ServiceRequest`.
pub fn encode(signal: Signal, request: &Value) -> Vec<u8> {
    let table: &[F] = match signal {
        Signal::Traces => &TRACES_REQUEST,
        Signal::Logs => &LOGS_REQUEST,
        Signal::Metrics => &METRICS_REQUEST,
    };
    let mut out = Vec::new();
    if let Value::Object(obj) = request {
        message(table, obj, &mut out);
    }
    out
}

fn snake(camel: &str) -> String {
    let mut s = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            s.push('_');
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

fn message(table: &[F], obj: &Map<String, Value>, out: &mut Vec<u8>) {
    for F(name, num, ty) in table {
        let value = match obj.get(*name) {
            Some(v) => v,
            None => match obj.get(&snake(name)) {
                Some(v) => v,
                None => continue,
            },
        };
        match (value, ty) {
            (Value::Null, _) => {}
            (Value::Array(items), Ty::PackedFixed64 | Ty::PackedDouble | Ty::PackedVarint) => {
                let mut packed = Vec::with_capacity(items.len() * 8);
                for item in items {
                    match ty {
                        Ty::PackedFixed64 => packed.extend(as_u64(item).to_le_bytes()),
                        Ty::PackedDouble => packed.extend(as_f64(item).to_le_bytes()),
                        _ => varint(as_u64(item), &mut packed),
                    }
                }
                bytes_field(*num, &packed, out);
            }
            (Value::Array(items), _) => {
                for item in items {
                    field(*num, *ty, item, out);
                }
            }
            _ => field(*num, *ty, value, out),
        }
    }
}

fn field(num: u32, ty: Ty, value: &Value, out: &mut Vec<u8>) {
    match ty {
        Ty::Str => {
            if let Some(s) = value.as_str() {
                bytes_field(num, s.as_bytes(), out);
            }
        }
        Ty::Hex => {
            if let Some(bytes) = value.as_str().and_then(hex) {
                if !bytes.is_empty() {
                    bytes_field(num, &bytes, out);
                }
            }
        }
        Ty::Base64 => {
            if let Some(bytes) = value.as_str().and_then(base64) {
                bytes_field(num, &bytes, out);
            }
        }
        Ty::Fixed64 => {
            tag(num, 1, out);
            out.extend(as_u64(value).to_le_bytes());
        }
        Ty::Double => {
            tag(num, 1, out);
            out.extend(as_f64(value).to_le_bytes());
        }
        Ty::Fixed32 => {
            tag(num, 5, out);
            out.extend((as_u64(value) as u32).to_le_bytes());
        }
        Ty::Varint => {
            tag(num, 0, out);
            varint(as_u64(value), out);
        }
        Ty::SInt => {
            let v = as_u64(value) as i64 as i32;
            tag(num, 0, out);
            varint(u64::from(((v << 1) ^ (v >> 31)) as u32), out);
        }
        Ty::Bool => {
            tag(num, 0, out);
            varint(u64::from(value.as_bool().unwrap_or(false)), out);
        }
        Ty::Enum => {
            let v = match value {
                Value::String(name) => enum_name(name),
                other => as_u64(other),
            };
            tag(num, 0, out);
            varint(v, out);
        }
        Ty::Msg(table) => {
            if let Value::Object(obj) = value {
                let mut inner = Vec::new();
                message(table, obj, &mut inner);
                bytes_field(num, &inner, out);
            }
        }
        Ty::PackedFixed64 | Ty::PackedDouble | Ty::PackedVarint => {}
    }
}

/// The value of an enum written by name (OTLP/JSON asks for integers; some SDKs write names).
fn enum_name(name: &str) -> u64 {
    const NAMES: [(&str, u64); 12] = [
        ("SPAN_KIND_INTERNAL", 1),
        ("SPAN_KIND_SERVER", 2),
        ("SPAN_KIND_CLIENT", 3),
        ("SPAN_KIND_PRODUCER", 4),
        ("SPAN_KIND_CONSUMER", 5),
        ("STATUS_CODE_OK", 1),
        ("STATUS_CODE_ERROR", 2),
        ("AGGREGATION_TEMPORALITY_DELTA", 1),
        ("AGGREGATION_TEMPORALITY_CUMULATIVE", 2),
        ("SEVERITY_NUMBER_DEBUG", 5),
        ("SEVERITY_NUMBER_INFO", 9),
        ("SEVERITY_NUMBER_WARN", 13),
    ];
    if let Some((_, v)) = NAMES.iter().find(|(n, _)| *n == name) {
        return *v;
    }
    match name {
        "SEVERITY_NUMBER_ERROR" => 17,
        "SEVERITY_NUMBER_FATAL" => 21,
        "SEVERITY_NUMBER_TRACE" => 1,
        _ => name.parse().unwrap_or(0),
    }
}

fn as_u64(value: &Value) -> u64 {
    match value {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_i64().map(|i| i as u64))
            .or_else(|| n.as_f64().map(|f| f as u64))
            .unwrap_or(0),
        Value::String(s) => s
            .parse::<u64>()
            .or_else(|_| s.parse::<i64>().map(|i| i as u64))
            .unwrap_or(0),
        Value::Bool(b) => u64::from(*b),
        _ => 0,
    }
}

fn as_f64(value: &Value) -> f64 {
    match value {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::String(s) => match s.as_str() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            other => other.parse().unwrap_or(0.0),
        },
        _ => 0.0,
    }
}

fn tag(num: u32, wire: u32, out: &mut Vec<u8>) {
    varint(u64::from((num << 3) | wire), out);
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(num: u32, bytes: &[u8], out: &mut Vec<u8>) {
    tag(num, 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_span_encodes_as_protobuf_field_by_field() {
        let request = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
            "traceId": "0102", "spanId": "ff", "name": "f", "kind": 3,
            "startTimeUnixNano": "1", "flags": 257,
            "attributes": [{"key": "k", "value": {"intValue": "-1"}}],
        }]}]}]});
        let bytes = encode(Signal::Traces, &request);
        // ExportTraceServiceRequest.resource_spans (1) > ResourceSpans.scope_spans (2) >
        // ScopeSpans.spans (2) > Span.
        let span: Vec<u8> = [
            vec![0x0a, 2, 1, 2],                // trace_id
            vec![0x12, 1, 0xff],                // span_id
            vec![0x85, 0x01, 1, 1, 0, 0],       // flags (16, fixed32)
            vec![0x2a, 1, b'f'],                // name
            vec![0x30, 3],                      // kind
            vec![0x39, 1, 0, 0, 0, 0, 0, 0, 0], // start_time_unix_nano (fixed64)
            // attributes: KeyValue{key "k", value AnyValue{int_value -1 (10-byte varint)}}
            [
                vec![0x4a, 16, 0x0a, 1, b'k', 0x12, 11, 0x18],
                vec![0xff; 9],
                vec![1],
            ]
            .concat(),
        ]
        .concat();
        let scope_spans = [vec![0x12, span.len() as u8], span].concat();
        let resource_spans = [vec![0x12, scope_spans.len() as u8], scope_spans].concat();
        let expected = [vec![0x0a, resource_spans.len() as u8], resource_spans].concat();
        assert_eq!(bytes, expected);
    }

    #[test]
    fn packed_sint_base64_and_snake_case_fields() {
        let request = json!({"resource_metrics": [{"scopeMetrics": [{"metrics": [{
            "histogram": {"dataPoints": [{"bucketCounts": ["1", 2], "explicitBounds": [0.5]}]},
            "exponentialHistogram": {"dataPoints": [{"scale": -1}]},
        }]}]}]});
        let bytes = encode(Signal::Metrics, &request);
        let hist_point = [
            vec![0x32, 16],
            1u64.to_le_bytes().to_vec(),
            2u64.to_le_bytes().to_vec(),
            vec![0x3a, 8],
            0.5f64.to_le_bytes().to_vec(),
        ]
        .concat();
        let hist = [vec![0x0a, hist_point.len() as u8], hist_point].concat();
        let exp = vec![0x0a, 2, 0x30, 1]; // data_points { scale: zigzag(-1) = 1 }
        let metric = [
            vec![0x4a, hist.len() as u8],
            hist,
            vec![0x52, exp.len() as u8],
            exp,
        ]
        .concat();
        let scope = [vec![0x12, metric.len() as u8], metric].concat();
        let resource = [vec![0x12, scope.len() as u8], scope].concat();
        assert_eq!(bytes, [vec![0x0a, resource.len() as u8], resource].concat());
        assert_eq!(base64("aGk=").unwrap(), b"hi");
        assert_eq!(base64("aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(hex("zz"), None);
    }
}
