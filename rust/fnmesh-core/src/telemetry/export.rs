//! The OTLP exporter: a [`TelemetrySink`] that sends every batch the hub carries (the engine's
//! spans and the traces, logs and metrics workers send on `/otel`) to an OpenTelemetry collector
//! over OTLP/HTTP, as protobuf (the specification's default) or JSON, or over OTLP/gRPC
//! (docs/observability.md, "Traces").
//!
//! [`ExportConfig::from_settings`] reads the standard `OTEL_EXPORTER_OTLP_*` variables. The sink
//! never blocks the engine: [`OtlpExporter::accept`] puts the batch on a bounded queue, or drops
//! and counts it when the queue is full (the collector is down or slow). One task sends: it takes
//! what is queued, merges batches of the same signal into one request, and retries a request
//! answered 429, 502, 503 or 504 (or a refused connection) a few times with exponential backoff,
//! honouring `Retry-After`, before dropping it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{proto, Batch, Signal, TelemetrySink};

// NOTE: the exporter lives in Rust, not in the Python process that hosts the engine: a plain-Rust
// engine exports too, no batch crosses into Python (no GIL on the export path), and the build
// barely grows. It sends with hyper's HTTP/1 client (hyper is already a dependency for the HTTP
// trigger; its `client` feature adds 2 small crates, `want` and `try-lock`: `cargo tree -p
// fnmesh-core -e normal` lists 153 crates against 151 on main) and encodes protobuf with the
// table in `proto.rs` (no crate). The Python route (`opentelemetry-exporter-otlp-proto-http`)
// would add no Rust build time but takes SDK span objects, not OTLP/JSON, so it would mean a
// conversion in Python per batch on the GIL. OTLP/gRPC is hyper's HTTP/2 client with the gRPC
// framing written here (one unary call: a 5-byte prefix and the same protobuf): hyper's `http2`
// feature adds `h2`, `indexmap`, `equivalent` and `fnv` (distinct crates in `cargo tree -p
// fnmesh-core -e normal`: 131 against 127 with HTTP/1 only), where `tonic` would add its codegen,
// `prost` and a tower stack.

/// Batches waiting to be sent; one more is dropped and counted.
pub const EXPORT_QUEUE: usize = 256;
/// Batches of one signal merged into one request, at most.
const MERGE: usize = 64;
/// Tries of one request (the first and the retries).
const TRIES: u32 = 4;
/// The first retry's delay; doubled at each retry.
const BACKOFF: Duration = Duration::from_millis(250);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// How requests are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf` (the default).
    HttpProtobuf,
    /// `http/json`.
    HttpJson,
    /// `grpc`: the collector's `Export` method over HTTP/2 (port 4317 by convention).
    Grpc,
}

/// The gRPC method of each signal's collector service.
fn grpc_path(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    }
}

/// Where one signal goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`.
    pub authority: String,
    /// The request path (`/v1/traces`).
    pub path: String,
    /// The encoding.
    pub protocol: Protocol,
}

/// The exporter's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    /// Where traces go (`None`: not exported).
    pub traces: Option<Endpoint>,
    /// Where logs go.
    pub logs: Option<Endpoint>,
    /// Where metrics go.
    pub metrics: Option<Endpoint>,
    /// Headers added to every request (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, String)>,
    /// Bound on one request (`OTEL_EXPORTER_OTLP_TIMEOUT`, milliseconds; default 10 s).
    pub timeout: Duration,
}

impl ExportConfig {
    /// The exporter for `endpoint` (the engine's `otlp_endpoint` setting) and the
    /// `OTEL_EXPORTER_OTLP_*` variables read through `env`; `Ok(None)` when no signal has an
    /// endpoint or `OTEL_SDK_DISABLED=true`. `Err` names a variable or setting with a value
    /// fnmesh cannot use.
    pub fn from_settings(
        endpoint: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ExportConfig>, String> {
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let base = endpoint
            .map(str::to_owned)
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let general_protocol = env("OTEL_EXPORTER_OTLP_PROTOCOL");
        let signal = |upper: &str, path: &str, kind: Signal| -> Result<Option<Endpoint>, String> {
            if env(&format!("OTEL_{upper}_EXPORTER"))
                .is_some_and(|v| v.split(',').any(|e| e.trim() == "none"))
            {
                return Ok(None);
            }
            let protocol = env(&format!("OTEL_EXPORTER_OTLP_{upper}_PROTOCOL"))
                .or_else(|| general_protocol.clone());
            let protocol = match protocol.as_deref().map(str::trim) {
                None | Some("http/protobuf") => Protocol::HttpProtobuf,
                Some("http/json") => Protocol::HttpJson,
                Some("grpc") => Protocol::Grpc,
                Some(other) => {
                    return Err(format!(
                        "OTLP protocol {other:?} is not supported (fnmesh exports http/protobuf, \
                         http/json and grpc)"
                    ))
                }
            };
            // gRPC endpoints are the collector's address; the method names the signal.
            let url = match env(&format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")) {
                Some(url) => url,
                None => match &base {
                    Some(base) if protocol == Protocol::Grpc => base.clone(),
                    Some(base) => format!("{}/v1/{path}", base.trim_end_matches('/')),
                    None => return Ok(None),
                },
            };
            let rest = url.strip_prefix("http://").ok_or_else(|| {
                format!("OTLP endpoint {url:?}: only plain http:// endpoints are supported")
            })?;
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if authority.is_empty() {
                return Err(format!("OTLP endpoint {url:?} names no host"));
            }
            let authority = if authority.contains(':') {
                authority.to_owned()
            } else {
                format!("{authority}:80")
            };
            let path = match protocol {
                Protocol::Grpc => grpc_path(kind).to_owned(),
                _ => path.to_owned(),
            };
            Ok(Some(Endpoint {
                authority,
                path,
                protocol,
            }))
        };
        let config = ExportConfig {
            traces: signal("TRACES", "traces", Signal::Traces)?,
            logs: signal("LOGS", "logs", Signal::Logs)?,
            metrics: signal("METRICS", "metrics", Signal::Metrics)?,
            headers: env("OTEL_EXPORTER_OTLP_HEADERS")
                .map(|h| parse_headers(&h))
                .unwrap_or_default(),
            timeout: env("OTEL_EXPORTER_OTLP_TIMEOUT")
                .and_then(|t| t.trim().parse::<u64>().ok())
                .map_or(Duration::from_secs(10), Duration::from_millis),
        };
        if config.traces.is_none() && config.logs.is_none() && config.metrics.is_none() {
            return Ok(None);
        }
        Ok(Some(config))
    }

    fn endpoint(&self, signal: Signal) -> Option<&Endpoint> {
        match signal {
            Signal::Traces => self.traces.as_ref(),
            Signal::Logs => self.logs.as_ref(),
            Signal::Metrics => self.metrics.as_ref(),
        }
    }
}

/// `key1=value1,key2=value2`, values percent-decoded (the W3C baggage format the variable uses).
fn parse_headers(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_owned(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the exporter has done, for tests and logs.
#[derive(Debug, Default)]
pub struct ExportCounts {
    /// Requests the collector accepted.
    pub exported: AtomicU64,
    /// Batches dropped: the queue was full, or the collector refused or never answered.
    pub dropped: AtomicU64,
}

/// The exporter sink. Made with [`OtlpExporter::start`] on a Tokio runtime.
pub struct OtlpExporter {
    config: ExportConfig,
    queue: mpsc::Sender<Batch>,
    counts: Arc<ExportCounts>,
}

impl OtlpExporter {
    /// Starts the sending task (on the current Tokio runtime) and returns the sink to add to the
    /// hub, and the task (it ends once the sink is dropped and its queue sent).
    pub fn start(config: ExportConfig) -> (Arc<OtlpExporter>, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(EXPORT_QUEUE);
        let counts = Arc::new(ExportCounts::default());
        let task = tokio::spawn(send_loop(config.clone(), rx, counts.clone()));
        (
            Arc::new(OtlpExporter {
                config,
                queue,
                counts,
            }),
            task,
        )
    }

    /// Requests exported and batches dropped so far.
    pub fn counts(&self) -> &ExportCounts {
        &self.counts
    }
}

impl TelemetrySink for OtlpExporter {
    fn name(&self) -> &str {
        "otlp"
    }

    fn accept(&self, batch: &Batch) {
        if self.config.endpoint(batch.signal).is_none() {
            return;
        }
        if self.queue.try_send(batch.clone()).is_err() {
            let dropped = self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            if dropped.is_power_of_two() {
                warn!(
                    dropped = dropped + 1,
                    "OTLP export queue full (is the collector down?): telemetry dropped"
                );
            }
        }
    }
}

async fn send_loop(config: ExportConfig, mut rx: mpsc::Receiver<Batch>, counts: Arc<ExportCounts>) {
    let mut waiting = Vec::with_capacity(MERGE);
    while rx.recv_many(&mut waiting, MERGE).await > 0 {
        for signal in [Signal::Traces, Signal::Logs, Signal::Metrics] {
            let batches: Vec<&Batch> = waiting.iter().filter(|b| b.signal == signal).collect();
            let Some(endpoint) = config.endpoint(signal) else {
                continue;
            };
            if batches.is_empty() {
                continue;
            }
            let request = merge(signal, &batches);
            let body = match endpoint.protocol {
                Protocol::HttpProtobuf | Protocol::Grpc => proto::encode(signal, &request),
                Protocol::HttpJson => serde_json::to_vec(&request).unwrap_or_default(),
            };
            if export(&config, endpoint, Bytes::from(body)).await {
                counts.exported.fetch_add(1, Ordering::Relaxed);
            } else {
                counts
                    .dropped
                    .fetch_add(batches.len() as u64, Ordering::Relaxed);
            }
        }
        waiting.clear();
    }
}

/// One export request out of several batches of `signal` (their resource lists concatenated).
fn merge(signal: Signal, batches: &[&Batch]) -> Value {
    let key = match signal {
        Signal::Traces => "resourceSpans",
        Signal::Logs => "resourceLogs",
        Signal::Metrics => "resourceMetrics",
    };
    if let [one] = batches {
        return (*one.request).clone();
    }
    let all: Vec<Value> = batches
        .iter()
        .filter_map(|b| b.request.get(key).and_then(Value::as_array))
        .flatten()
        .cloned()
        .collect();
    serde_json::json!({ key: all })
}

/// Sends one request, retrying as the OTLP specification says; true once accepted.
async fn export(config: &ExportConfig, endpoint: &Endpoint, body: Bytes) -> bool {
    let mut delay = BACKOFF;
    for attempt in 1..=TRIES {
        let sent = match endpoint.protocol {
            Protocol::Grpc => {
                tokio::time::timeout(config.timeout, grpc_call(config, endpoint, &body)).await
            }
            _ => tokio::time::timeout(config.timeout, post(config, endpoint, body.clone())).await,
        };
        match sent {
            Ok(Ok((status, _))) if (200..300).contains(&status) => return true,
            Ok(Ok((status, retry_after))) if matches!(status, 429 | 502 | 503 | 504) => {
                debug!(status, attempt, endpoint = %endpoint.authority, "OTLP export refused for now; retrying");
                if let Some(after) = retry_after {
                    delay = after.min(MAX_RETRY_AFTER);
                }
            }
            Ok(Ok((status, _))) => {
                warn!(status, endpoint = %endpoint.authority, path = %endpoint.path, "OTLP export rejected: telemetry dropped");
                return false;
            }
            Ok(Err(e)) => {
                debug!(attempt, endpoint = %endpoint.authority, "OTLP export failed: {e}")
            }
            Err(_) => debug!(attempt, endpoint = %endpoint.authority, "OTLP export timed out"),
        }
        if attempt < TRIES {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    warn!(endpoint = %endpoint.authority, "OTLP collector unreachable: telemetry dropped");
    false
}

type PostError = Box<dyn std::error::Error + Send + Sync>;

/// One POST on a new connection: the status and the `Retry-After` seconds, if any.
async fn post(
    config: &ExportConfig,
    endpoint: &Endpoint,
    body: Bytes,
) -> Result<(u16, Option<Duration>), PostError> {
    let stream = tokio::net::TcpStream::connect(&endpoint.authority).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let content_type = match endpoint.protocol {
        Protocol::HttpProtobuf | Protocol::Grpc => "application/x-protobuf",
        Protocol::HttpJson => "application/json",
    };
    let mut request = hyper::Request::post(endpoint.path.as_str())
        .header(hyper::header::HOST, endpoint.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header(
            hyper::header::USER_AGENT,
            concat!("fnmesh/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in &config.headers {
        request = request.header(k.as_str(), v.as_str());
    }
    let response = sender.send_request(request.body(Full::new(body))?).await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // The body is read so the connection closes cleanly; a collector's partial-success message
    // is not inspected.
    let _ = response.into_body().collect().await;
    driver.abort();
    Ok((status, retry_after))
}

/// One unary gRPC call of the collector's `Export` on a new HTTP/2 connection, its outcome told
/// as an HTTP status so that [`export`] retries it alike: 200 for `OK`, 503 for the codes the
/// OTLP specification calls retryable (CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
/// ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS), 400 for the others.
async fn grpc_call(
    config: &ExportConfig,
    endpoint: &Endpoint,
    message: &Bytes,
) -> Result<(u16, Option<Duration>), PostError> {
    let stream = tokio::net::TcpStream::connect(&endpoint.authority).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await?;
    let driver = tokio::spawn(connection);
    // A length-prefixed message: not compressed (0), then its length, big-endian.
    let length = u32::try_from(message.len())?;
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    let uri = format!("http://{}{}", endpoint.authority, endpoint.path);
    let mut request = hyper::Request::post(uri)
        .header(hyper::header::CONTENT_TYPE, "application/grpc")
        .header(hyper::header::TE, "trailers")
        .header(
            hyper::header::USER_AGENT,
            concat!("fnmesh/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in &config.headers {
        request = request.header(k.to_ascii_lowercase().as_str(), v.as_str());
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(framed)))?)
        .await?;
    let http_status = response.status().as_u16();
    // grpc-status comes in the trailers, or in the headers of a trailers-only answer.
    let in_headers = grpc_status(response.headers());
    let collected = response.into_body().collect().await?;
    driver.abort();
    if http_status != 200 {
        return Ok((http_status, None));
    }
    let code = collected
        .trailers()
        .and_then(grpc_status)
        .or(in_headers)
        .unwrap_or(2); // UNKNOWN: an answer without a status
    let status = match code {
        0 => 200,
        1 | 4 | 8 | 10 | 11 | 14 | 15 => 503,
        _ => 400,
    };
    Ok((status, None))
}

fn grpc_status(headers: &hyper::HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn endpoints_follow_the_otel_variables() {
        assert_eq!(ExportConfig::from_settings(None, env(&[])), Ok(None));
        let c = ExportConfig::from_settings(
            None,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                (
                    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                    "http://logs:9000/custom",
                ),
                ("OTEL_METRICS_EXPORTER", "none"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b, x=1"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
            ]),
        )
        .unwrap()
        .unwrap();
        let traces = c.traces.unwrap();
        assert_eq!(
            (traces.authority.as_str(), traces.path.as_str()),
            ("collector:4318", "/v1/traces")
        );
        assert_eq!(traces.protocol, Protocol::HttpJson);
        assert_eq!(c.logs.unwrap().path, "/custom");
        assert_eq!(c.metrics, None);
        assert_eq!(
            c.headers,
            [("api-key".into(), "a b".into()), ("x".into(), "1".into())]
        );
        assert_eq!(c.timeout, Duration::from_millis(500));
        // The setting wins over the variable; OTEL_SDK_DISABLED turns everything off.
        let c = ExportConfig::from_settings(
            Some("http://h"),
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:1")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.traces.unwrap().authority, "h:80");
        assert_eq!(
            ExportConfig::from_settings(Some("http://h:1"), env(&[("OTEL_SDK_DISABLED", "true")])),
            Ok(None)
        );
        // gRPC: the base address, the method naming the signal.
        let c = ExportConfig::from_settings(
            Some("http://collector:4317"),
            env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
        )
        .unwrap()
        .unwrap();
        let traces = c.traces.unwrap();
        assert_eq!(traces.protocol, Protocol::Grpc);
        assert_eq!(
            (traces.authority.as_str(), traces.path.as_str()),
            (
                "collector:4317",
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
            )
        );
        assert_eq!(
            c.logs.unwrap().path,
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
        );
        for bad in [
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://h:1")][..],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:1"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
            ][..],
        ] {
            let vars: &'static [(&'static str, &'static str)] = bad;
            assert!(ExportConfig::from_settings(None, env(vars)).is_err());
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_blocking() {
        // Nothing listens on port 9 of a closed loopback: every send fails and retries slowly.
        let config = ExportConfig::from_settings(Some("http://127.0.0.1:9"), env(&[]))
            .unwrap()
            .unwrap();
        let (sink, task) = OtlpExporter::start(config);
        let batch = Batch {
            signal: Signal::Traces,
            origin: super::super::Origin::Engine,
            request: Arc::new(serde_json::json!({"resourceSpans": []})),
        };
        for _ in 0..EXPORT_QUEUE + MERGE + 10 {
            sink.accept(&batch);
        }
        assert!(sink.counts().dropped.load(Ordering::Relaxed) >= 10);
        assert_eq!(sink.counts().exported.load(Ordering::Relaxed), 0);
        task.abort();
    }
}
