//! `fnmesh-microbench`'s command line: usage errors, and the shape of each report. Timings are
//! never checked.

use std::process::{Command, Output};

use fnmesh_core::protocol::{decode, Message};
use serde_json::Value;

const MICROBENCH: &str = env!("CARGO_BIN_EXE_fnmesh-microbench");

fn run(args: &[&str]) -> Output {
    Command::new(MICROBENCH)
        .args(args)
        .output()
        .expect("run fnmesh-microbench")
}

fn report(args: &[&str]) -> Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[test]
fn usage_errors_exit_1_with_the_usage() {
    for args in [
        &[][..],
        &["lookup"],
        &["lookup", "--functions", "0"],
        &["lookup", "--functions", "10", "--probes", "1000"],
        &["lookup", "--op", "get"],
        &["codec", "--bites", "10"],
        &["codec", "--seconds", "-1"],
        &["frame", "--bytes"],
        &["decode"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("usage:"), "{args:?}: {stderr}");
    }
}

#[test]
fn lookup_reports_every_probe_as_a_hit() {
    let r = report(&["lookup", "--functions", "1000", "--seconds", "0.05"]);
    assert_eq!(r["functions"], 1000);
    assert_eq!(r["operation"], "select");
    assert!(r["lookups"].as_u64().expect("lookups") >= 1024);
    let ns = &r["ns_per_lookup"];
    assert!(ns["median"].as_f64().expect("median") > 0.0);
    assert!(ns["median"].as_f64() <= ns["p99"].as_f64());
    assert!(r["fill_seconds"].as_f64().is_some());
}

#[test]
fn every_lookup_op_finds_the_same_keys_and_reports_memory() {
    // Every probe must hit, in the plain maps too (a miss fails the run with exit status 2); the
    // `leased` floor counts a hit only while its lease holds the counter above zero.
    for op in ["select", "contains", "hashbrown", "leased"] {
        let r = report(&[
            "lookup",
            "--functions",
            "20000",
            "--seconds",
            "0.05",
            "--op",
            op,
        ]);
        assert_eq!(r["operation"], op);
        assert!(r["lookups"].as_u64().expect("lookups") >= 1024, "{op}");
        // Linux only, as the rest of the bench scripts: resident memory grew with the fill.
        assert!(
            r["bytes_per_function"].as_f64().expect("bytes") > 0.0,
            "{r}"
        );
    }
}

#[test]
fn codec_times_the_frame_that_frame_prints() {
    let out = run(&["frame", "--bytes", "2048"]);
    assert!(out.status.success());
    assert!(matches!(
        decode(&out.stdout),
        Ok(Message::InvokeFunction(_))
    ));
    let r = report(&["codec", "--bytes", "2048", "--seconds", "0.05"]);
    assert_eq!(r["bytes"], 2048);
    assert_eq!(r["frame_bytes"], out.stdout.len());
    for op in ["decode_ns", "encode_ns", "forward_ns"] {
        assert!(r[op]["median"].as_f64().expect(op) > 0.0, "{op}");
    }
}
