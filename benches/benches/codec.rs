//! Decode and encode of an `invokefunction` frame, fnmesh's codec against the baseline of a
//! full `serde_json::Value` parse (what a codec that builds a tree per payload would pay).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fnmesh_benches::json_payload;
use fnmesh_core::protocol::{decode, Message};

fn invoke_frame(payload_bytes: usize) -> String {
    format!(
        concat!(
            r#"{{"type":"invokefunction","invocation_id":"9b2f0c9e-2c55-4d53-9a57-0f1f0f6b8a11","#,
            r#""function_id":"orders::create","data":{},"#,
            r#""traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","#,
            r#""metadata":{{"session_id":"s_1"}}}}"#
        ),
        json_payload(payload_bytes)
    )
}

fn codec(c: &mut Criterion) {
    for size in [1024usize, 64 * 1024] {
        let frame = invoke_frame(size);
        let mut group = c.benchmark_group(format!("invokefunction_{}", size / 1024) + "KB");
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(BenchmarkId::new("decode", "fnmesh"), |b| {
            b.iter(|| decode(black_box(frame.as_bytes())).unwrap())
        });
        group.bench_function(BenchmarkId::new("decode", "serde_json::Value"), |b| {
            b.iter(|| {
                serde_json::from_slice::<serde_json::Value>(black_box(frame.as_bytes())).unwrap()
            })
        });
        let msg = decode(frame.as_bytes()).unwrap();
        let tree: serde_json::Value = serde_json::from_str(&frame).unwrap();
        let mut buf = Vec::with_capacity(frame.len() + 64);
        group.bench_function(BenchmarkId::new("encode", "fnmesh"), |b| {
            b.iter(|| {
                buf.clear();
                black_box(&msg).encode_into(&mut buf);
            })
        });
        group.bench_function(BenchmarkId::new("encode", "serde_json::Value"), |b| {
            b.iter(|| {
                buf.clear();
                serde_json::to_writer(&mut buf, black_box(&tree)).unwrap();
            })
        });
        group.bench_function(BenchmarkId::new("forward", "fnmesh"), |b| {
            // What the engine does per routed call: decode, then re-encode toward the target.
            b.iter(|| {
                buf.clear();
                let m: Message = decode(black_box(frame.as_bytes())).unwrap();
                m.encode_into(&mut buf);
            })
        });
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
