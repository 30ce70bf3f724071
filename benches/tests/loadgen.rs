//! `fnmesh-loadgen` end to end: its echo floor, and its worker and caller through an engine
//! embedded in this test. Counts and errors are checked, never timings.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
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
