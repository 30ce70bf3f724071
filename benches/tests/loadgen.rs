//! `fnmesh-loadgen` end to end: its echo floor, and its worker and caller through an engine
//! embedded in this test. Counts and errors are checked, never timings.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnmesh_core::engine::Engine;
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_fnmesh-loadgen");

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the loadgen with `args` and returns it once a stdout line satisfies `ready`.
fn spawn_until(args: &[&str], ready: impl Fn(&str) -> bool) -> (Proc, String) {
    let mut child = Command::new(LOADGEN)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start fnmesh-loadgen");
    let stdout = child.stdout.take().expect("stdout");
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("fnmesh-loadgen {args:?} never became ready"));
        if ready(&line) {
            return (proc, line);
        }
    }
}

fn call(url: &str, extra: &[&str]) -> Value {
    let mut args = vec!["call", "--url", url, "--warmup", "0s"];
    args.extend_from_slice(extra);
    let out = Command::new(LOADGEN)
        .args(&args)
        .output()
        .expect("run fnmesh-loadgen call");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON report on stdout")
}

#[test]
fn echo_floor_answers_every_call() {
    let (_echo, line) = spawn_until(&["echo", "--addr", "127.0.0.1:0"], |l| {
        l.starts_with("listening ")
    });
    let url = line.trim_start_matches("listening ").to_owned();
    let report = call(
        &url,
        &[
            "--count",
            "500",
            "--concurrency",
            "16",
            "--connections",
            "2",
        ],
    );
    assert_eq!(report["mode"], "call");
    assert_eq!(report["calls"], 500);
    assert_eq!(report["errors"], 0);
    let latency = &report["latency_us"];
    assert!(latency["p50"].as_u64() <= latency["p99"].as_u64());
    assert!(latency["p99"].as_u64() <= latency["max"].as_u64());
}

#[test]
fn worker_serves_calls_through_the_engine_and_errors_are_counted() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let engine = runtime.block_on(async {
        Engine::builder()
            .addr("127.0.0.1:0".parse().expect("addr"))
            .start()
            .await
            .expect("engine starts")
    });
    let url = engine.url();
    let (_worker, _) = spawn_until(&["worker", "--url", &url], |l| l == "ready");

    let echo = call(
        &url,
        &[
            "--count",
            "400",
            "--concurrency",
            "8",
            "--payload-bytes",
            "256",
        ],
    );
    assert_eq!(echo["calls"], 400);
    assert_eq!(echo["errors"], 0);
    assert_eq!(echo["payload_bytes"], 256);

    // bench.sleep holds each call without blocking the others: 16 calls of 200 ms in flight
    // at once all succeed.
    let sleep = call(
        &url,
        &[
            "--function",
            "bench.sleep",
            "--data",
            r#"{"ms":200}"#,
            "--count",
            "16",
            "--concurrency",
            "16",
        ],
    );
    assert_eq!(sleep["calls"], 16);
    assert_eq!(sleep["errors"], 0);
    assert!(sleep["latency_us"]["p50"].as_u64().expect("p50") >= 200_000);

    // An unknown function: every call comes back as an error, none as a success.
    let missing = call(
        &url,
        &[
            "--function",
            "bench.nothing",
            "--count",
            "50",
            "--concurrency",
            "4",
        ],
    );
    assert_eq!(missing["calls"], 0);
    assert_eq!(missing["errors"], 50);

    runtime.block_on(engine.shutdown());
}

/// What an [`http_server`] does with each request.
#[derive(Clone, Copy)]
struct HttpBehaviour {
    status: u16,
    keep_alive: bool,
}

/// An HTTP/1.1 server on a free loopback port: answers a JSON request with `status` and the
/// request's body, anything without `content-type: application/json` with 415. Returns its
/// address and the number of connections it accepted.
fn http_server(
    runtime: &tokio::runtime::Runtime,
    behaviour: HttpBehaviour,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response, StatusCode};

    let accepted = Arc::new(AtomicUsize::new(0));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let counter = accepted.clone();
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                let json = req
                    .headers()
                    .get(hyper::header::CONTENT_TYPE)
                    .is_some_and(|v| v == "application/json");
                let body = req.into_body().collect().await?.to_bytes();
                let status = if json {
                    behaviour.status
                } else {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE.as_u16()
                };
                let mut response = Response::new(Full::<Bytes>::new(body));
                *response.status_mut() = StatusCode::from_u16(status).expect("status");
                Ok::<_, hyper::Error>(response)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .keep_alive(behaviour.keep_alive)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (addr, accepted)
}

fn http(url: &str, extra: &[&str]) -> Value {
    let mut args = vec!["http", "--url", url, "--warmup", "0s"];
    args.extend_from_slice(extra);
    let out = Command::new(LOADGEN)
        .args(&args)
        .output()
        .expect("run fnmesh-loadgen http");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON report on stdout")
}

#[test]
fn http_mode_keeps_connections_alive_and_counts_statuses() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ok = HttpBehaviour {
        status: 200,
        keep_alive: true,
    };

    // One kept-alive connection per request in flight by default.
    let (addr, accepted) = http_server(&runtime, ok);
    let url = format!("http://{addr}/echo");
    let report = http(&url, &["--count", "300", "--concurrency", "8"]);
    assert_eq!(report["mode"], "http");
    assert_eq!(report["method"], "POST");
    assert_eq!(report["calls"], 300);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["non_2xx"], 0);
    assert_eq!(report["reconnects"], 0);
    assert_eq!(report["connections"], 8);
    assert_eq!(report["payload_bytes"], 64);
    assert_eq!(accepted.load(Ordering::SeqCst), 8);
    let latency = &report["latency_us"];
    assert!(latency["p50"].as_u64() <= latency["p99"].as_u64());
    assert!(latency["p99"].as_u64() <= latency["max"].as_u64());

    // Fewer connections than requests in flight: the requests share them.
    let (addr, accepted) = http_server(&runtime, ok);
    let body = r#"{"hello":"world"}"#;
    let url = format!("http://{addr}/echo");
    let args = [
        "--count",
        "200",
        "--concurrency",
        "8",
        "--connections",
        "2",
        "--body",
        body,
    ];
    let report = http(&url, &args);
    assert_eq!(report["calls"], 200);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["connections"], 2);
    assert_eq!(report["payload_bytes"], body.len());
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // A server that closes every connection after one answer: replaced, not counted as errors.
    let closing = HttpBehaviour {
        status: 200,
        keep_alive: false,
    };
    let (addr, _) = http_server(&runtime, closing);
    let report = http(
        &format!("http://{addr}/echo"),
        &["--count", "50", "--concurrency", "2"],
    );
    assert_eq!(report["calls"], 50);
    assert_eq!(report["errors"], 0);
    assert!(report["reconnects"].as_u64().expect("reconnects") >= 40);
}

#[test]
fn http_mode_counts_non_2xx_apart_from_transport_errors() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let failing = HttpBehaviour {
        status: 500,
        keep_alive: true,
    };
    let (addr, _) = http_server(&runtime, failing);
    let report = http(
        &format!("http://{addr}/echo"),
        &["--count", "120", "--concurrency", "4"],
    );
    assert_eq!(report["calls"], 0);
    assert_eq!(report["non_2xx"], 120);
    assert_eq!(report["errors"], 0);

    // Nobody listening: the first connect fails, which is exit status 2, not a measurement.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("address").port();
    drop(closed);
    let out = Command::new(LOADGEN)
        .args([
            "http",
            "--url",
            &format!("http://127.0.0.1:{port}/"),
            "--count",
            "1",
        ])
        .output()
        .expect("run fnmesh-loadgen http");
    assert_eq!(out.status.code(), Some(2));
}
