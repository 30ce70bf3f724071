//! `fnmesh-loadgen`: a load generator speaking the iii wire protocol, so it measures fnmesh and
//! any compatible engine the same way.
//!
//! ```sh
//! # the benchmark worker: serves bench.echo and bench.sleep, prints `ready`, runs until killed
//! fnmesh-loadgen worker --url ws://127.0.0.1:49134 [--connections 1]
//!
//! # the closed-loop caller: prints one JSON object (throughput, latency percentiles in µs)
//! fnmesh-loadgen call --url ws://127.0.0.1:49134 [--function bench.echo] [--payload-bytes 64]
//!     [--data '{"ms":10}'] [--concurrency 64] [--connections 4]
//!     [--duration 5s | --count N] [--warmup 1s] [--timeout 30s] [--threads N]
//!
//! # the one-hop floor: answers every invokefunction itself; `call` runs against it unchanged
//! fnmesh-loadgen echo --addr 127.0.0.1:0          # prints `listening ws://127.0.0.1:PORT`
//! fnmesh-loadgen relay --addr 127.0.0.1:0 --upstream ws://ECHO  # two hops, frames unread
//!
//! # the closed loop over HTTP/1.1 keep-alive (an HTTP trigger, or any HTTP server)
//! fnmesh-loadgen http --url http://127.0.0.1:3111/echo [--method POST]
//!     [--body JSON | --payload-bytes 64] [--concurrency 64] [--connections C]
//!     [--duration 5s | --count N] [--warmup 1s] [--timeout 30s] [--threads N]
//! ```
//!
//! `--data` replaces the generated `--payload-bytes` object (e.g. `{"ms":10}` for bench.sleep);
//! `--body` does the same for `http`, whose bodies go as `application/json` (none by default for
//! GET and HEAD). HTTP/1.1 carries one request at a time per connection, so `http` opens one
//! connection per request in flight unless `--connections` says fewer (requests then queue for
//! a connection, and the wait counts in their latency). Its report adds `non_2xx` (answers with
//! another status) beside `errors` (transport failures and timeouts).
//! Exit status: 0 on success, 1 on a usage error, 2 when a connection fails.

use std::time::Duration;

use fnmesh_benches::loadgen::args::Args;
use fnmesh_benches::loadgen::call::{self, CallOptions};
use fnmesh_benches::loadgen::http::{self, HttpOptions, Target};
use fnmesh_benches::loadgen::{echo, relay, wire, worker};

const USAGE: &str = "\
usage:
  fnmesh-loadgen worker --url URL [--connections 1]
  fnmesh-loadgen call   --url URL [--function bench.echo] [--payload-bytes 64] [--data JSON]
                        [--concurrency 64] [--connections 4] [--duration 5s | --count N]
                        [--warmup 1s] [--timeout 30s] [--threads N]
  fnmesh-loadgen echo   --addr 127.0.0.1:0
  fnmesh-loadgen relay  --addr 127.0.0.1:0 --upstream ws://HOST:PORT
  fnmesh-loadgen http   --url http://HOST:PORT/PATH [--method POST]
                        [--body JSON | --payload-bytes 64] [--concurrency 64]
                        [--connections C] [--duration 5s | --count N] [--warmup 1s]
                        [--timeout 30s] [--threads N]
                        (one kept-alive HTTP/1.1 connection per request in flight unless
                        --connections says fewer: HTTP/1.1 carries one request at a time)";

const DEFAULT_URL: &str = "ws://127.0.0.1:49134";

enum Mode {
    Worker { url: String, connections: usize },
    Call(CallOptions),
    Echo { addr: String },
    Relay { addr: String, upstream: String },
    Http(HttpOptions),
}

/// `--duration` or `--count` (exclusive), with the 5 s default duration.
fn run_length(args: &mut Args) -> Result<(Duration, Option<u64>), String> {
    let count = args
        .take("count")?
        .map(|c| c.parse().map_err(|e| format!("--count: {e}")))
        .transpose()?;
    let duration = args.take_duration("duration")?;
    if count.is_some() && duration.is_some() {
        return Err("--duration and --count are exclusive".into());
    }
    Ok((duration.unwrap_or(Duration::from_secs(5)), count))
}

fn parse(mut args: Args) -> Result<(Mode, Option<usize>), String> {
    let threads = args
        .take("threads")?
        .map(|t| t.parse::<usize>())
        .transpose();
    let threads = threads.map_err(|e| format!("--threads: {e}"))?;
    let mode = match args.command.as_str() {
        "worker" => Mode::Worker {
            url: args.take("url")?.unwrap_or_else(|| DEFAULT_URL.into()),
            connections: args.take_parsed("connections", 1)?,
        },
        "call" => {
            let payload_bytes: usize = args.take_parsed("payload-bytes", 64)?;
            let data = match args.take("data")? {
                Some(d) => {
                    serde_json::from_str::<serde_json::Value>(&d)
                        .map_err(|e| format!("--data is not JSON: {e}"))?;
                    d
                }
                None => wire::padded_payload(payload_bytes),
            };
            let (duration, count) = run_length(&mut args)?;
            Mode::Call(CallOptions {
                url: args.take("url")?.unwrap_or_else(|| DEFAULT_URL.into()),
                function: args
                    .take("function")?
                    .unwrap_or_else(|| "bench.echo".into()),
                data,
                concurrency: args.take_parsed("concurrency", 64)?,
                // NOTE: concurrency 64 through the fnmesh engine (2 cores): 117k calls/s over 1
                // connection, 179k over 2, 188k over 4, 159k over 8, 126k over 16; one
                // connection's reader is a single task, so 1 caps the caller itself.
                connections: args.take_parsed("connections", 4)?,
                duration,
                count,
                warmup: args
                    .take_duration("warmup")?
                    .unwrap_or(Duration::from_secs(1)),
                timeout: args
                    .take_duration("timeout")?
                    .unwrap_or(Duration::from_secs(30)),
            })
        }
        "echo" => Mode::Echo {
            addr: args.take("addr")?.unwrap_or_else(|| "127.0.0.1:0".into()),
        },
        "relay" => Mode::Relay {
            addr: args.take("addr")?.unwrap_or_else(|| "127.0.0.1:0".into()),
            upstream: args.take("upstream")?.ok_or("relay needs --upstream")?,
        },
        "http" => {
            let target = Target::parse(&args.take("url")?.ok_or("http needs --url")?)?;
            let method = args.take("method")?.unwrap_or_else(|| "POST".into());
            let method = hyper::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .map_err(|e| format!("--method {method:?}: {e}"))?;
            let payload_bytes = args
                .take("payload-bytes")?
                .map(|n| n.parse::<usize>())
                .transpose()
                .map_err(|e| format!("--payload-bytes: {e}"))?;
            let body = match (args.take("body")?, payload_bytes) {
                (Some(_), Some(_)) => return Err("--body and --payload-bytes are exclusive".into()),
                (Some(b), None) => {
                    serde_json::from_str::<serde_json::Value>(&b)
                        .map_err(|e| format!("--body is not JSON: {e}"))?;
                    b
                }
                (None, Some(n)) => wire::padded_payload(n),
                (None, None) if matches!(method, hyper::Method::GET | hyper::Method::HEAD) => {
                    String::new()
                }
                (None, None) => wire::padded_payload(64),
            };
            let concurrency = args.take_parsed("concurrency", 64)?;
            let (duration, count) = run_length(&mut args)?;
            Mode::Http(HttpOptions {
                target,
                method,
                body: body.into(),
                concurrency,
                connections: args.take_parsed("connections", concurrency)?,
                duration,
                count,
                warmup: args
                    .take_duration("warmup")?
                    .unwrap_or(Duration::from_secs(1)),
                timeout: args
                    .take_duration("timeout")?
                    .unwrap_or(Duration::from_secs(30)),
            })
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    args.finish()?;
    Ok((mode, threads))
}

fn print_report(report: &impl serde::Serialize) {
    match serde_json::to_string(report) {
        Ok(line) => println!("{line}"),
        Err(e) => wire::fatal(&format!("cannot encode the report: {e}")),
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() || argv.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return;
    }
    let (mode, threads) = match Args::parse(argv).and_then(parse) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("fnmesh-loadgen: {e}\n{USAGE}");
            std::process::exit(1);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder
        .build()
        .unwrap_or_else(|e| wire::fatal(&format!("cannot start the tokio runtime: {e}")));
    runtime.block_on(async move {
        match mode {
            Mode::Worker { url, connections } => worker::run(&url, connections).await,
            Mode::Echo { addr } => echo::run(&addr).await,
            Mode::Relay { addr, upstream } => relay::run(&addr, &upstream).await,
            Mode::Call(opts) => print_report(&call::run(opts).await),
            Mode::Http(opts) => print_report(&http::run(opts).await),
        }
    });
}
