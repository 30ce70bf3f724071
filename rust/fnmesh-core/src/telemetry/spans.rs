//! Engine spans: the engine's own part of a distributed trace (docs/observability.md, "Traces").
//!
//! Every routed invocation, HTTP trigger request, cron run, queue delivery attempt and external
//! function call can be a span. A [`Tracer`] decides whether to record one (parent-based
//! sampling: a caller's sampled flag is honoured, a new root is sampled at the configured ratio),
//! hands out a [`Span`] whose context the engine passes on to whatever serves the call, and
//! collects finished spans into OTLP/JSON `resourceSpans` batches submitted to the telemetry hub
//! ([`super::Telemetry`], [`super::Origin::Engine`]).
//!
//! With no sink on the hub, or a sample ratio of 0 and no sampled parent, [`Tracer::start`]
//! returns `None` after one relaxed load (plus the sampler's arithmetic when a sink listens):
//! nothing is built.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{Batch, Origin, Signal, Telemetry};

/// Spans kept before a batch is handed to the hub (the hub's sinks queue it; they never block).
pub const SPAN_BATCH: usize = 512;

/// The service name when neither the setting nor `OTEL_SERVICE_NAME` gives one.
pub const DEFAULT_SERVICE_NAME: &str = "fnmesh";

/// A W3C trace context: trace id, span id, sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    /// 16 bytes, never zero.
    pub trace_id: u128,
    /// 8 bytes, never zero.
    pub span_id: u64,
    /// The `sampled` bit of the trace flags.
    pub sampled: bool,
}

impl SpanContext {
    /// Parses a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`); `None` when it is not one
    /// (or its ids are all zeros, which the W3C format forbids).
    pub fn parse(traceparent: &str) -> Option<SpanContext> {
        let t = traceparent.trim().as_bytes();
        if t.len() < 55 || t[2] != b'-' || t[35] != b'-' || t[52] != b'-' {
            return None;
        }
        if &t[..2] == b"ff" || (t.len() > 55 && (&t[..2] == b"00" || t[55] != b'-')) {
            return None;
        }
        let hex = |b: &[u8]| -> Option<u128> {
            if !b
                .iter()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            {
                return None;
            }
            u128::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
        };
        hex(&t[..2])?;
        let trace_id = hex(&t[3..35])?;
        let span_id = u64::try_from(hex(&t[36..52])?).ok()?;
        let flags = hex(&t[53..55])?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(SpanContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` header of this context.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

/// OTLP span kinds (`Span.SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Work inside the engine (a cron run).
    Internal = 1,
    /// A request the engine serves (an HTTP trigger request).
    Server = 2,
    /// A request the engine makes (a routed invocation, an external function call).
    Client = 3,
    /// A message the engine delivers (a queue delivery attempt).
    Consumer = 5,
}

/// An attribute value.
#[derive(Debug, Clone)]
pub enum AttrValue {
    /// `stringValue`.
    Str(String),
    /// `intValue`.
    Int(i64),
    /// `boolValue`.
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(s.to_owned())
    }
}
impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(s)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

fn attr_json(key: &str, value: &AttrValue) -> Value {
    let value = match value {
        AttrValue::Str(s) => json!({ "stringValue": s }),
        // OTLP/JSON writes 64-bit integers as strings.
        AttrValue::Int(i) => json!({ "intValue": i.to_string() }),
        AttrValue::Bool(b) => json!({ "boolValue": b }),
    };
    json!({ "key": key, "value": value })
}

/// Nanoseconds since the Unix epoch.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(unix_nanos());
    h.finish() | 1
}

// NOTE: ids come from a per-thread wyrand (one multiply-xor per 64 bits, no lock, no syscall):
// uuid v4 (`getrandom`) costs a syscall per id, which a sampled call would pay twice or three
// times. Trace ids need to be unique, not secret (the W3C spec asks for randomness, not
// unpredictability); the seed comes from the process's random hasher keys.
fn next_u64() -> u64 {
    RNG.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

fn new_span_id() -> u64 {
    loop {
        let id = next_u64();
        if id != 0 {
            return id;
        }
    }
}

fn new_trace_id() -> u128 {
    loop {
        let id = (u128::from(next_u64()) << 64) | u128::from(next_u64());
        if id != 0 {
            return id;
        }
    }
}

/// How new root spans are sampled (parent-based always: a parent's flag is honoured).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    // A root is sampled when the low 64 bits of its trace id fall below this (the
    // TraceIdRatioBased rule); `u64::MAX` with `always` set samples everything.
    threshold: u64,
    always: bool,
    // Honour the parent's sampled flag (parentbased_*); false for the plain samplers, which
    // decide on the trace id alone.
    parent_based: bool,
}

impl Sampler {
    /// Parent-based, new roots sampled at `ratio` (clamped to 0..=1).
    pub fn ratio(ratio: f64) -> Sampler {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        Sampler {
            threshold: (ratio * u64::MAX as f64) as u64,
            always: ratio >= 1.0,
            parent_based: true,
        }
    }

    /// From the setting, else `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (read through
    /// `env`), else parent-based always on. An unknown sampler name is `Err` with a message.
    pub fn from_settings(
        ratio: Option<f64>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Sampler, String> {
        if let Some(ratio) = ratio {
            return Ok(Sampler::ratio(ratio));
        }
        let arg = || {
            env("OTEL_TRACES_SAMPLER_ARG")
                .and_then(|a| a.trim().parse::<f64>().ok())
                .unwrap_or(1.0)
        };
        let name = env("OTEL_TRACES_SAMPLER").unwrap_or_default();
        let mut sampler = match name.trim() {
            "" | "parentbased_always_on" | "always_on" => Sampler::ratio(1.0),
            "parentbased_always_off" | "always_off" => Sampler::ratio(0.0),
            "parentbased_traceidratio" | "traceidratio" => Sampler::ratio(arg()),
            other => {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER={other} is not a sampler fnmesh knows (always_on, \
                     always_off, traceidratio and their parentbased_ forms)"
                ))
            }
        };
        sampler.parent_based = name.trim().is_empty() || name.trim().starts_with("parentbased_");
        Ok(sampler)
    }

    /// True when no span can ever be recorded without a sampled parent.
    pub fn roots_off(&self) -> bool {
        self.threshold == 0 && !self.always
    }

    #[inline]
    fn sample_root(&self, trace_id: u128) -> bool {
        self.always || (trace_id as u64) < self.threshold
    }
}

struct Inner {
    hub: Telemetry,
    sampler: Sampler,
    resource: Value,
    buffer: Mutex<Vec<Value>>,
    finished: AtomicU64,
}

/// Makes the engine's spans and hands them, batched, to the telemetry hub. Cloning shares it.
#[derive(Clone)]
pub struct Tracer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("sampler", &self.inner.sampler)
            .finish()
    }
}

impl Tracer {
    /// A tracer submitting to `hub`, with this sampler and `service.name`.
    pub fn new(hub: Telemetry, sampler: Sampler, service_name: &str) -> Tracer {
        let resource = json!({
            "attributes": [
                attr_json("service.name", &AttrValue::from(service_name)),
                attr_json("telemetry.sdk.name", &AttrValue::from("fnmesh")),
                attr_json("telemetry.sdk.language", &AttrValue::from("rust")),
                attr_json("telemetry.sdk.version", &AttrValue::from(env!("CARGO_PKG_VERSION"))),
            ]
        });
        Tracer {
            inner: Arc::new(Inner {
                hub,
                sampler,
                resource,
                buffer: Mutex::new(Vec::new()),
                finished: AtomicU64::new(0),
            }),
        }
    }

    /// A tracer for `config`: its `traces_sample_ratio` (else the `OTEL_TRACES_SAMPLER*`
    /// variables) and its `otel_service_name` (else `OTEL_SERVICE_NAME`, else `fnmesh`). An
    /// unknown `OTEL_TRACES_SAMPLER` is logged and sampling falls back to always on, as the
    /// OpenTelemetry SDKs do.
    pub fn from_config(hub: Telemetry, config: &crate::config::EngineConfig) -> Tracer {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let sampler = Sampler::from_settings(config.traces_sample_ratio, env).unwrap_or_else(|e| {
            tracing::warn!("{e}; sampling every trace");
            Sampler::ratio(1.0)
        });
        let name = config
            .otel_service_name
            .clone()
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
        Tracer::new(hub, sampler, &name)
    }

    // NOTE: with no sink this is one relaxed load and a branch; the pending call grows by one
    // pointer (`Option<Box<Span>>`). `python benches/routing.py --quick`, C=64, 2 runs on 2 cores
    // shared with other builds (load average 4): tracing on at a 1% sample, exporting to a
    // discarding collector, 122.4k and 141.2k calls/s against 147.3k and 179.2k with metrics
    // and tracing off and 97.5k and 165.5k with metrics on alone: the run-to-run noise (metrics
    // alone measured at 0.66 and 0.92 of off) is larger than the differences; a quiet machine is
    // needed to tell the cost of a 1% sample.
    /// Starts a span named `name` if one is to be recorded: a sink listens on the hub and the
    /// sampler says yes (a `parent` with its sampled flag set, else the root ratio). `parent` is
    /// the caller's `traceparent`; an invalid one starts a new root.
    #[inline]
    pub fn start(&self, name: &str, kind: SpanKind, parent: Option<&str>) -> Option<Span> {
        self.start_with(|| name.to_owned(), kind, parent)
    }

    /// Like [`Tracer::start`], with the name built only for a span that is recorded (most
    /// calls are not sampled).
    pub fn start_with(
        &self,
        name: impl FnOnce() -> String,
        kind: SpanKind,
        parent: Option<&str>,
    ) -> Option<Span> {
        if !self.is_active() {
            return None;
        }
        self.start_active(name, kind, parent.and_then(SpanContext::parse))
    }

    /// Whether spans are recorded at all (an exporter is set); one relaxed load. Names are built
    /// only after it (see `start_with`).
    // NOTE: `start_invocation` formatted `call <function id>` before `start` checked this: one
    // allocation and 604 instructions of every routed call with tracing off
    // (benches/observability_callgrind.py's method).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.inner.hub.is_active()
    }

    /// Like [`Tracer::start_with`], a new root linked to `link` (a queue delivery linked to its
    /// enqueue).
    pub fn start_linked(
        &self,
        name: impl FnOnce() -> String,
        kind: SpanKind,
        link: Option<&str>,
    ) -> Option<Span> {
        if !self.is_active() {
            return None;
        }
        let mut span = self.start_active(name, kind, None)?;
        span.link = link.and_then(SpanContext::parse);
        Some(span)
    }

    #[cold]
    fn start_active(
        &self,
        name: impl FnOnce() -> String,
        kind: SpanKind,
        parent: Option<SpanContext>,
    ) -> Option<Span> {
        let sampler = &self.inner.sampler;
        let (trace_id, parent_span_id) = match parent {
            Some(p) if sampler.parent_based && !p.sampled => return None,
            Some(p) if sampler.parent_based => (p.trace_id, Some(p.span_id)),
            Some(p) => {
                if !sampler.sample_root(p.trace_id) {
                    return None;
                }
                (p.trace_id, Some(p.span_id))
            }
            None => {
                if sampler.roots_off() {
                    return None;
                }
                let trace_id = new_trace_id();
                if !sampler.sample_root(trace_id) {
                    return None;
                }
                (trace_id, None)
            }
        };
        Some(Span {
            tracer: self.clone(),
            context: SpanContext {
                trace_id,
                span_id: new_span_id(),
                sampled: true,
            },
            parent_span_id,
            name: name(),
            kind,
            start: unix_nanos(),
            attributes: Vec::new(),
            link: None,
            error: None,
            ended: false,
        })
    }

    /// Hands the finished spans kept so far to the hub (called by the engine's sweep, about
    /// every 100 ms, and whenever [`SPAN_BATCH`] spans are waiting).
    pub fn flush(&self) {
        let spans = {
            let mut buffer = self.inner.buffer.lock().unwrap_or_else(|e| e.into_inner());
            if buffer.is_empty() {
                return;
            }
            std::mem::take(&mut *buffer)
        };
        self.submit(spans);
    }

    /// Spans finished since the tracer was made (sampled ones only).
    pub fn finished(&self) -> u64 {
        self.inner.finished.load(Ordering::Relaxed)
    }

    fn submit(&self, spans: Vec<Value>) {
        let request = json!({
            "resourceSpans": [{
                "resource": self.inner.resource,
                "scopeSpans": [{
                    "scope": { "name": "fnmesh", "version": env!("CARGO_PKG_VERSION") },
                    "spans": spans,
                }],
            }]
        });
        self.inner.hub.submit(Batch {
            signal: Signal::Traces,
            origin: Origin::Engine,
            request: Arc::new(request),
        });
    }

    fn finish(&self, span: Value) {
        self.inner.finished.fetch_add(1, Ordering::Relaxed);
        let full = {
            let mut buffer = self.inner.buffer.lock().unwrap_or_else(|e| e.into_inner());
            buffer.push(span);
            if buffer.len() >= SPAN_BATCH {
                Some(std::mem::take(&mut *buffer))
            } else {
                None
            }
        };
        if let Some(spans) = full {
            self.submit(spans);
        }
    }
}

/// The span of one routed invocation (`call <function id>`, `faas.*` attributes), a child of
/// the caller's `traceparent`; boxed, as the pending call keeps it. `None` when not recorded.
#[inline]
pub fn start_invocation(
    tracer: &Tracer,
    function_id: &str,
    namespace: &str,
    invocation_id: &str,
    traceparent: Option<&str>,
) -> Option<Box<Span>> {
    // Named and kinded as iii's engine names its span of a call (`call <function id>`, SERVER),
    // so a worker's `execute <function id>` span reads as its child in either engine.
    let mut span = tracer.start_with(
        || format!("call {function_id}"),
        SpanKind::Server,
        traceparent,
    )?;
    span.set("faas.invoked_name", function_id);
    span.set("faas.invocation_id", invocation_id);
    span.set("fnmesh.namespace", namespace);
    Some(Box::new(span))
}

/// Ends a span with its outcome: the error's code as `error.type`, its message as the status.
pub fn end(span: Option<Box<Span>>, error: Option<&crate::protocol::ErrorBody>) {
    if let Some(mut span) = span {
        if let Some(e) = error {
            span.set("error.type", e.code.clone());
            span.fail(e.message.clone());
        }
        span.end();
    }
}

/// The SERVER span of one HTTP trigger request (`http.*` attributes), a child of the
/// request's `traceparent` header, which it replaces with its own so that the call it makes is
/// its child.
#[inline]
pub fn start_http(
    tracer: &Tracer,
    method: &str,
    template: Option<&str>,
    headers: &mut http::HeaderMap,
) -> Option<Box<Span>> {
    // The route and name are built only for a tracer that records.
    if !tracer.is_active() {
        return None;
    }
    let parent = header(headers, "traceparent");
    let route = template.map(|t| format!("/{t}"));
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    };
    let mut span = tracer.start(&name, SpanKind::Server, parent.as_deref())?;
    span.set("http.request.method", method);
    if let Some(route) = route {
        span.set("http.route", route);
    }
    if let Ok(value) = http::HeaderValue::from_str(&span.traceparent()) {
        headers.insert("traceparent", value);
    }
    Some(Box::new(span))
}

/// Ends an HTTP request's span with its status (`ERROR` for a 5xx, as OTel says for servers).
pub fn end_http(span: Option<Box<Span>>, status: u16) {
    if let Some(mut span) = span {
        span.set("http.response.status_code", i64::from(status));
        if status >= 500 {
            span.set("error.type", status.to_string());
            span.fail(format!("HTTP {status}"));
        }
        span.end();
    }
}

/// A header's value as text, if it has one.
pub fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

/// The error of a failed outcome, for [`end`].
pub fn failure(outcome: &crate::function::Outcome) -> Option<&crate::protocol::ErrorBody> {
    match outcome {
        crate::function::Outcome::Failure(e) => Some(e),
        crate::function::Outcome::Success(_) => None,
    }
}

/// The span of one cron run (`faas.trigger` `timer`), a new root.
pub fn start_cron(tracer: &Tracer, job_id: &str, function_id: &str) -> Option<Box<Span>> {
    let mut span = tracer.start_with(|| format!("cron {job_id}"), SpanKind::Internal, None)?;
    span.set("faas.trigger", "timer");
    span.set("faas.cron", job_id);
    span.set("faas.invoked_name", function_id);
    Some(Box::new(span))
}

/// The span of one queue delivery attempt (`messaging.*`), a new root linked to the enqueue's
/// context when the message carries one.
pub fn start_delivery(
    tracer: &Tracer,
    queue: &str,
    message_id: &str,
    attempt: u32,
    enqueued_by: Option<&str>,
) -> Option<Box<Span>> {
    let mut span = tracer.start_linked(
        || format!("process {queue}"),
        SpanKind::Consumer,
        enqueued_by,
    )?;
    span.set("messaging.system", "fnmesh");
    span.set("messaging.operation.type", "process");
    span.set("messaging.destination.name", queue);
    span.set("messaging.message.id", message_id);
    span.set("fnmesh.queue.attempt", i64::from(attempt));
    Some(Box::new(span))
}

/// A recorded span in progress. Ended by [`Span::end`]; dropped unended, it ends with an error
/// status ("abandoned").
pub struct Span {
    tracer: Tracer,
    context: SpanContext,
    parent_span_id: Option<u64>,
    name: String,
    kind: SpanKind,
    start: u64,
    attributes: Vec<(&'static str, AttrValue)>,
    link: Option<SpanContext>,
    error: Option<String>,
    ended: bool,
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Span")
            .field("name", &self.name)
            .field("context", &self.context)
            .finish()
    }
}

impl Span {
    /// This span's context, handed on to what it calls.
    pub fn context(&self) -> SpanContext {
        self.context
    }

    /// This span's `traceparent`, for the frame or request the engine forwards.
    pub fn traceparent(&self) -> String {
        self.context.traceparent()
    }

    /// Sets an attribute (OTel semantic-convention names where one exists).
    pub fn set(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        self.attributes.push((key, value.into()));
    }

    /// Marks the span failed (status `ERROR` with this message).
    pub fn fail(&mut self, message: impl Into<String>) {
        self.error = Some(message.into());
    }

    /// Ends the span now and queues it for the next batch.
    pub fn end(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        let mut span = json!({
            "traceId": format!("{:032x}", self.context.trace_id),
            "spanId": format!("{:016x}", self.context.span_id),
            "name": std::mem::take(&mut self.name),
            "kind": self.kind as i32,
            "startTimeUnixNano": self.start.to_string(),
            "endTimeUnixNano": unix_nanos().to_string(),
            "flags": 0x101,
            "attributes": self.attributes.iter().map(|(k, v)| attr_json(k, v)).collect::<Vec<_>>(),
            "status": match &self.error {
                None => json!({}),
                Some(message) => json!({ "code": 2, "message": message }),
            },
        });
        if let Some(parent) = self.parent_span_id {
            span["parentSpanId"] = json!(format!("{parent:016x}"));
            // The parent is in another process (the caller's SDK).
            span["flags"] = json!(0x301);
        }
        if let Some(link) = self.link {
            span["links"] = json!([{
                "traceId": format!("{:032x}", link.trace_id),
                "spanId": format!("{:016x}", link.span_id),
                "flags": if link.sampled { 0x301 } else { 0x300 },
            }]);
        }
        self.tracer.finish(span);
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if !self.ended {
            if self.error.is_none() {
                self.error = Some("abandoned".to_owned());
            }
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::TelemetrySink;

    struct Keep(Mutex<Vec<Value>>);
    impl TelemetrySink for Keep {
        fn name(&self) -> &str {
            "keep"
        }
        fn accept(&self, batch: &Batch) {
            assert_eq!(batch.origin, Origin::Engine);
            self.0.lock().unwrap().push((*batch.request).clone());
        }
    }

    fn spans_of(keep: &Keep) -> Vec<Value> {
        keep.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .unwrap()
                    .clone()
            })
            .collect()
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips_and_rejects_malformed_headers() {
        let ctx = SpanContext::parse(PARENT).unwrap();
        assert_eq!(ctx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(ctx.span_id, 0x00f067aa0ba902b7);
        assert!(ctx.sampled);
        assert_eq!(ctx.traceparent(), PARENT);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(SpanContext::parse(bad), None, "{bad}");
        }
        // A later version may append fields after a dash.
        assert!(SpanContext::parse(&format!("01{}-extra", &PARENT[2..])).is_some());
    }

    #[test]
    fn no_sink_means_no_span() {
        let tracer = Tracer::new(Telemetry::default(), Sampler::ratio(1.0), "svc");
        assert!(tracer.start("f", SpanKind::Client, Some(PARENT)).is_none());
    }

    #[test]
    fn spans_are_children_of_the_caller_and_batched_as_otlp_json() {
        let hub = Telemetry::default();
        let keep = Arc::new(Keep(Mutex::new(Vec::new())));
        hub.add_sink(keep.clone());
        let tracer = Tracer::new(hub, Sampler::ratio(1.0), "svc");
        let mut span = tracer
            .start("orders::create", SpanKind::Client, Some(PARENT))
            .unwrap();
        let ctx = span.context();
        assert_eq!(ctx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_ne!(ctx.span_id, 0x00f067aa0ba902b7);
        assert_eq!(SpanContext::parse(&span.traceparent()), Some(ctx));
        span.set("faas.invoked_name", "orders::create");
        span.set("fnmesh.attempt", 2i64);
        span.fail("boom");
        span.end();
        assert!(spans_of(&keep).is_empty(), "kept until a flush");
        tracer.flush();
        let requests = keep.0.lock().unwrap().clone();
        let rs = &requests[0]["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "svc"
        );
        let spans = spans_of(&keep);
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(s["spanId"], format!("{:016x}", ctx.span_id));
        assert_eq!(s["kind"], 3);
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(s["attributes"][1]["value"]["intValue"], "2");
        let start: u64 = s["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u64 = s["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(start > 1_600_000_000_000_000_000 && end >= start);
        // A dropped span ends as abandoned; a full batch goes out without a flush.
        drop(tracer.start("x", SpanKind::Internal, None).unwrap());
        for _ in 0..SPAN_BATCH - 1 {
            tracer.start("y", SpanKind::Internal, None).unwrap().end();
        }
        let spans = spans_of(&keep);
        assert_eq!(spans.len(), 1 + SPAN_BATCH);
        assert_eq!(spans[1]["status"]["message"], "abandoned");
        assert!(spans[1].get("parentSpanId").is_none());
    }

    #[test]
    fn sampling_is_parent_based_with_a_root_ratio() {
        let hub = Telemetry::default();
        hub.add_sink(Arc::new(Keep(Mutex::new(Vec::new()))));
        let off = Tracer::new(hub.clone(), Sampler::ratio(0.0), "svc");
        assert!(off.start("f", SpanKind::Client, None).is_none());
        assert!(off.start("f", SpanKind::Client, Some(PARENT)).is_some());
        let unsampled = PARENT.replace("-01", "-00");
        let on = Tracer::new(hub.clone(), Sampler::ratio(1.0), "svc");
        assert!(on.start("f", SpanKind::Client, Some(&unsampled)).is_none());
        assert!(on.start("f", SpanKind::Client, None).is_some());
        let tenth = Tracer::new(hub, Sampler::ratio(0.1), "svc");
        let n = (0..10_000)
            .filter_map(|_| tenth.start("f", SpanKind::Client, None))
            .count();
        assert!((700..1300).contains(&n), "{n} of 10000 sampled at 0.1");
    }

    #[test]
    fn sampler_reads_the_otel_variables_unless_the_setting_is_set() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            Sampler::from_settings(None, env(&[])).unwrap(),
            Sampler::ratio(1.0)
        );
        let s = Sampler::from_settings(
            None,
            env(&[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ]),
        )
        .unwrap();
        assert_eq!(s, Sampler::ratio(0.25));
        let s =
            Sampler::from_settings(None, env(&[("OTEL_TRACES_SAMPLER", "always_off")])).unwrap();
        assert!(s.roots_off() && !s.parent_based);
        let s = Sampler::from_settings(Some(0.5), env(&[("OTEL_TRACES_SAMPLER", "always_off")]))
            .unwrap();
        assert_eq!(s, Sampler::ratio(0.5));
        assert!(
            Sampler::from_settings(None, env(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")])).is_err()
        );
    }
}
