//! `fnmesh-microbench`: single-threaded timings of fnmesh-core's hot-path pieces, each printed as
//! one JSON object for the Python bench scripts (`benches/scale.py`, `benches/codec.py`).
//!
//! ```sh
//! # FunctionsRegistry::select (or ::contains) of random registered ids, N functions registered;
//! # `--op hashbrown`: a plain hashbrown map of the same keys instead (the floor)
//! fnmesh-microbench lookup --functions 1000000 [--seconds 1.0] [--op select|contains|hashbrown]
//!     [--probes 65536]
//!
//! # decode, encode, forward (decode + encode), whole forward (the engine's path before large
//! # frames were split: decode_text, then the frame to the worker written from the message) and
//! # split forward (the engine's path: decode_split, then the frame to the worker written around
//! # the payload) of an invokefunction frame with ~N bytes of data: an object of small records, or
//! # one long string
//! fnmesh-microbench codec [--bytes 1024] [--seconds 1.0] [--payload object|string]
//!
//! # that frame's exact bytes on stdout (no newline), for other codecs to time the same input
//! fnmesh-microbench frame [--bytes 1024]
//! ```
//!
//! Timings are median, mean and p99 of per-batch means, in ns per operation (see
//! `fnmesh_benches::micro`). Exit status: 0 on success, 1 on a usage error, 2 when a measurement
//! fails.

use std::io::Write;

use fnmesh_benches::loadgen::args::Args;
use fnmesh_benches::micro;

const USAGE: &str = "\
usage:
  fnmesh-microbench lookup --functions N [--seconds 1.0] [--op select|contains|hashbrown]
                           [--probes 65536]  (distinct random keys cycled, a multiple of 1024)
  fnmesh-microbench codec  [--bytes 1024] [--seconds 1.0] [--payload object|string]
  fnmesh-microbench frame  [--bytes 1024]      (the codec's frame, raw, on stdout)";

enum Mode {
    Lookup {
        functions: usize,
        seconds: f64,
        op: micro::LookupOp,
        probes: usize,
    },
    Codec {
        bytes: usize,
        seconds: f64,
        payload: micro::PayloadKind,
    },
    Frame {
        bytes: usize,
    },
}

fn seconds(args: &mut Args) -> Result<f64, String> {
    let seconds: f64 = args.take_parsed("seconds", 1.0)?;
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("--seconds must be positive, not {seconds}"));
    }
    Ok(seconds)
}

fn parse(mut args: Args) -> Result<Mode, String> {
    let mode = match args.command.as_str() {
        "lookup" => {
            let functions = args
                .take("functions")?
                .ok_or("lookup needs --functions N")?;
            let functions: usize = functions
                .parse()
                .map_err(|e| format!("--functions {functions:?}: {e}"))?;
            if functions == 0 {
                return Err("--functions must be at least 1".into());
            }
            let probes = args.take_parsed("probes", micro::DEFAULT_PROBES)?;
            if probes == 0 || probes % 1024 != 0 {
                return Err(format!(
                    "--probes must be a positive multiple of 1024, not {probes}"
                ));
            }
            Mode::Lookup {
                functions,
                seconds: seconds(&mut args)?,
                op: args.take_parsed("op", micro::LookupOp::Select)?,
                probes,
            }
        }
        "codec" => Mode::Codec {
            bytes: args.take_parsed("bytes", 1024)?,
            seconds: seconds(&mut args)?,
            payload: args.take_parsed("payload", micro::PayloadKind::Object)?,
        },
        "frame" => Mode::Frame {
            bytes: args.take_parsed("bytes", 1024)?,
        },
        other => return Err(format!("unknown command {other:?}")),
    };
    args.finish()?;
    Ok(mode)
}

fn print_report(report: Result<impl serde::Serialize, String>) {
    let line = report.and_then(|r| serde_json::to_string(&r).map_err(|e| e.to_string()));
    match line {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("fnmesh-microbench: {e}");
            std::process::exit(2);
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return;
    }
    let mode = match Args::parse(argv).and_then(parse) {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("fnmesh-microbench: {e}\n{USAGE}");
            std::process::exit(1);
        }
    };
    match mode {
        Mode::Lookup {
            functions,
            seconds,
            op,
            probes,
        } => print_report(micro::lookup(functions, seconds, op, probes)),
        Mode::Codec {
            bytes,
            seconds,
            payload,
        } => print_report(micro::codec(bytes, seconds, payload)),
        Mode::Frame { bytes } => {
            let mut out = std::io::stdout().lock();
            let written = out
                .write_all(micro::invoke_frame(bytes).as_bytes())
                .and_then(|()| out.flush());
            if let Err(e) = written {
                eprintln!("fnmesh-microbench: cannot write the frame: {e}");
                std::process::exit(2);
            }
        }
    }
}
