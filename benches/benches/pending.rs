//! The pending-invocation table: the per-call cost (park, then take on reply) and the cost of
//! one timeout sweep over many pending calls, which sets `invocation::SWEEP_INTERVAL`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fnmesh_core::invocation::PendingTable;

fn pending(c: &mut Criterion) {
    let mut group = c.benchmark_group("pending");
    let ids: Vec<String> = (0..1024)
        .map(|i| format!("9b2f0c9e-2c55-4d53-9a57-{i:012}"))
        .collect();
    let table = PendingTable::new();
    let mut i = 0usize;
    group.bench_function("insert_then_take", |b| {
        b.iter(|| {
            let id = &ids[i & 1023];
            i += 1;
            table
                .insert(id.as_str(), 7u64, Duration::from_secs(300))
                .unwrap();
            black_box(table.take(id));
        })
    });
    for n in [10_000usize, 100_000] {
        let table = PendingTable::new();
        for k in 0..n {
            table
                .insert(format!("id-{k}"), k, Duration::from_secs(300))
                .unwrap();
        }
        group.bench_with_input(BenchmarkId::new("sweep_none_expired", n), &table, |b, t| {
            b.iter(|| black_box(t.expired(Instant::now())))
        });
    }
    group.finish();
}

criterion_group!(benches, pending);
criterion_main!(benches);
