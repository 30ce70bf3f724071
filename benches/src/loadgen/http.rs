//! `http` mode: a closed loop of HTTP/1.1 requests over kept-alive connections (HTTP triggers,
//! or any HTTP server), reporting throughput and latency in the shape `call` uses.
//!
//! HTTP/1.1 carries one request at a time per connection (no multiplexing, and nobody pipelines),
//! so the usual closed loop opens one connection per request in flight: `--connections` defaults
//! to `--concurrency`. With fewer connections, the requests given to a connection queue for it,
//! and their latency includes that wait, as it would for a client with that many requests
//! outstanding.
//!
//! Each connection is one task that owns a hyper `SendRequest` and a FIFO of its slots (the time
//! each became ready to send). A connection the server closes, or one abandoned after a timeout
//! or transport error, is replaced by a new one before the next request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::call::Latency;
use super::wire::fatal;

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// A failed reconnect is retried after this pause, so a dead server is not spun on.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// Where requests go: an `http://host[:port]/path[?query]` URL taken apart once.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given (for the report).
    pub url: String,
    host: String,
    port: u16,
    /// The `Host` header (`host:port` as written in the URL).
    authority: HeaderValue,
    /// What goes on the request line: the path and query.
    path: Uri,
}

impl Target {
    /// Parses an `http://` URL (https is not supported: loopback benchmarks only).
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "unsupported URL {url:?}: only http:// is supported"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("URL {url:?} has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let path = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<Uri>()
            .map_err(|e| format!("invalid path in {url:?}: {e}"))?;
        Ok(Target {
            url: url.to_owned(),
            host,
            port: uri.port_u16().unwrap_or(80),
            authority: HeaderValue::from_str(authority.as_str())
                .map_err(|e| format!("invalid host in {url:?}: {e}"))?,
            path,
        })
    }
}

/// Settings of an `http` run.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub target: Target,
    pub method: Method,
    /// Sent as `application/json` when not empty.
    pub body: Bytes,
    pub concurrency: usize,
    pub connections: usize,
    /// Measure for this long (when `count` is `None`).
    pub duration: Duration,
    /// Measure exactly this many requests instead of a duration.
    pub count: Option<u64>,
    pub warmup: Duration,
    /// A request with no complete response after this long counts as an error (and a timeout),
    /// and its connection is replaced.
    pub timeout: Duration,
}

/// State shared by the controller and every connection.
struct Shared {
    phase: AtomicU8,
    /// Requests still to send in the measured phase (`i64::MAX` in duration mode).
    remaining: AtomicI64,
    timeout: Duration,
    method: Method,
    target: Target,
    headers: HeaderMap,
    body: Bytes,
}

impl Shared {
    /// Whether a request may be sent now, and if so whether it is measured.
    fn admit(&self) -> Option<bool> {
        match self.phase.load(Ordering::Acquire) {
            WARMUP => Some(false),
            MEASURE if self.remaining.fetch_sub(1, Ordering::AcqRel) > 0 => Some(true),
            _ => None,
        }
    }

    fn measuring(&self) -> bool {
        self.phase.load(Ordering::Acquire) == MEASURE
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.target.path.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// What one connection measured.
#[derive(Default)]
struct ConnStats {
    latencies_us: Vec<u32>,
    /// Transport errors and timeouts.
    errors: u64,
    timeouts: u64,
    non_2xx: u64,
    /// Connections opened after the first one.
    reconnects: u64,
}

/// How one request ended.
enum Outcome {
    Success,
    Status,
    Transport,
    Timeout,
}

/// Opens a connection with Nagle off (small requests, latency bound) and spawns its driver.
async fn connect(target: &Target) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", target.url))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("cannot set TCP_NODELAY on {}: {e}", target.url))?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {} failed: {e}", target.url))?;
    // The driver ends when the server closes the connection or the sender is dropped; its error
    // also surfaces on the request in flight, which is where it is counted.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request and reads its whole body (the connection is reusable only after that).
async fn exchange(sender: &mut SendRequest<Full<Bytes>>, shared: &Shared) -> Outcome {
    let response = match sender.send_request(shared.request()).await {
        Ok(r) => r,
        Err(_) => return Outcome::Transport,
    };
    let ok = response.status().is_success();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return Outcome::Transport;
        }
    }
    if ok {
        Outcome::Success
    } else {
        Outcome::Status
    }
}

/// One request, on a new connection when the last one is gone or the server closed it.
async fn attempt(
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    shared: &Shared,
    reconnects: &mut u64,
) -> Outcome {
    if let Some(s) = sender.as_mut() {
        // A keep-alive connection the server ended is replaced, not counted as an error.
        if s.ready().await.is_err() {
            *sender = None;
        }
    }
    let s = match sender {
        Some(s) => s,
        None => {
            *reconnects += 1;
            match connect(&shared.target).await {
                Ok(s) => sender.insert(s),
                Err(_) => {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    return Outcome::Transport;
                }
            }
        }
    };
    exchange(s, shared).await
}

/// One connection's loop: send, wait, record, until the stop or the count runs out.
async fn drive(
    shared: Arc<Shared>,
    first: SendRequest<Full<Bytes>>,
    slots: usize,
    mut stop: watch::Receiver<bool>,
) -> ConnStats {
    let mut stats = ConnStats {
        latencies_us: Vec::with_capacity(1 << 16),
        ..ConnStats::default()
    };
    let mut sender = Some(first);
    let now = Instant::now();
    // When each of this connection's slots became ready to send, oldest first.
    let mut ready: VecDeque<Instant> = std::iter::repeat_n(now, slots).collect();
    while let Some(since) = ready.pop_front() {
        let Some(measured) = shared.admit() else {
            break;
        };
        let request = tokio::time::timeout(
            shared.timeout,
            attempt(&mut sender, &shared, &mut stats.reconnects),
        );
        let outcome = tokio::select! {
            biased;
            _ = stop.changed() => break,
            outcome = request => outcome.unwrap_or(Outcome::Timeout),
        };
        let end = Instant::now();
        if matches!(outcome, Outcome::Transport | Outcome::Timeout) {
            // Whatever the server makes of the abandoned request, this connection is done.
            sender = None;
        }
        // Requests sent in warm-up, or finishing after the stop, are not measured.
        if measured && shared.measuring() {
            match outcome {
                Outcome::Success => {
                    let us = end.duration_since(since).as_micros();
                    stats
                        .latencies_us
                        .push(u32::try_from(us).unwrap_or(u32::MAX));
                }
                Outcome::Status => stats.non_2xx += 1,
                Outcome::Transport => stats.errors += 1,
                Outcome::Timeout => {
                    stats.errors += 1;
                    stats.timeouts += 1;
                }
            }
        }
        ready.push_back(end);
    }
    stats
}

/// Runs the closed loop and returns the report. A failed first connect exits the process
/// (status 2); later failures are counted as errors.
pub async fn run(opts: HttpOptions) -> HttpReport {
    let concurrency = opts.concurrency.max(1);
    let connections = opts.connections.clamp(1, concurrency);
    let mut headers = HeaderMap::new();
    headers.insert(HOST, opts.target.authority.clone());
    if !opts.body.is_empty() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(if opts.warmup.is_zero() {
            MEASURE
        } else {
            WARMUP
        }),
        remaining: AtomicI64::new(
            opts.count
                .map_or(i64::MAX, |c| c.min(i64::MAX as u64) as i64),
        ),
        timeout: opts.timeout,
        method: opts.method.clone(),
        target: opts.target.clone(),
        headers,
        body: opts.body.clone(),
    });

    // Connect everything before any request, so a bad URL fails fast and connects are not
    // measured.
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(&opts.target).await.unwrap_or_else(|e| fatal(&e)));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(c, sender)| {
            let slots = concurrency / connections + usize::from(c < concurrency % connections);
            tokio::spawn(drive(shared.clone(), sender, slots, stop_rx.clone()))
        })
        .collect();

    if !opts.warmup.is_zero() {
        tokio::time::sleep(opts.warmup).await;
        shared.phase.store(MEASURE, Ordering::Release);
    }
    let t0 = Instant::now();
    let mut elapsed = None;
    if opts.count.is_none() {
        tokio::time::sleep(opts.duration).await;
        shared.phase.store(STOP, Ordering::Release);
        elapsed = Some(t0.elapsed());
        let _ = stop_tx.send(true);
    }
    let mut latencies = Vec::new();
    let mut total = ConnStats::default();
    for task in tasks {
        let stats = task
            .await
            .unwrap_or_else(|e| fatal(&format!("a connection task failed: {e}")));
        if latencies.is_empty() {
            latencies = stats.latencies_us;
        } else {
            latencies.extend_from_slice(&stats.latencies_us);
        }
        total.errors += stats.errors;
        total.timeouts += stats.timeouts;
        total.non_2xx += stats.non_2xx;
        total.reconnects += stats.reconnects;
    }
    let elapsed = elapsed.unwrap_or_else(|| t0.elapsed()).as_secs_f64();
    shared.phase.store(STOP, Ordering::Release);

    latencies.sort_unstable();
    let calls = latencies.len();
    HttpReport {
        mode: "http",
        url: opts.target.url,
        method: opts.method.to_string(),
        concurrency,
        connections,
        payload_bytes: opts.body.len(),
        duration_s: (elapsed * 1000.0).round() / 1000.0,
        calls,
        errors: total.errors,
        non_2xx: total.non_2xx,
        timeouts: total.timeouts,
        reconnects: total.reconnects,
        throughput_per_s: (calls as f64 / elapsed.max(1e-9) * 10.0).round() / 10.0,
        latency_us: Latency::from_sorted(&latencies),
    }
}

/// The JSON line `http` prints: `call`'s fields, with `method` for `function` and the HTTP
/// failure counts.
#[derive(Debug, Serialize)]
pub struct HttpReport {
    pub mode: &'static str,
    pub url: String,
    pub method: String,
    pub concurrency: usize,
    pub connections: usize,
    pub payload_bytes: usize,
    pub duration_s: f64,
    /// Measured requests answered with a 2xx status.
    pub calls: usize,
    /// Transport errors (refused or broken connections, malformed responses) plus timeouts.
    pub errors: u64,
    /// Measured requests answered with any other status.
    pub non_2xx: u64,
    pub timeouts: u64,
    /// Connections opened to replace closed or abandoned ones, warm-up included.
    pub reconnects: u64,
    pub throughput_per_s: f64,
    pub latency_us: Latency,
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn parses_http_urls() {
        let t = Target::parse("http://127.0.0.1:8080/echo?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/echo?x=1");
        let t = Target::parse("http://[::1]/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        assert_eq!(Target::parse("http://localhost:1").unwrap().path, "/");
        assert!(Target::parse("https://127.0.0.1/").is_err());
        assert!(Target::parse("ws://127.0.0.1/").is_err());
        assert!(Target::parse("/echo").is_err());
    }
}
