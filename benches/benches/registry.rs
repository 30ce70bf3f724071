//! FunctionsRegistry lookups at 1, 10k and 1M registered functions, hits and misses.
//!
//! `select` is the routing hot path (pick a replica, count a call, release it); `contains` is a
//! bare probe. The baseline is what a naive registry pays: a `HashMap<(String, String), _>`
//! probed with a key built per lookup (two `String` allocations).

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fnmesh_core::registry::{FunctionDef, FunctionsRegistry};

fn function_id(i: usize) -> String {
    format!("service{}::function_{i}", i % 97)
}

/// 1024 probe keys spread over the whole key space, so big registries are not probed in cache.
fn probes(n: usize, hit: bool) -> Vec<String> {
    (0..1024)
        .map(|k| {
            let i = (k * 7919 + 13) % n;
            if hit {
                function_id(i)
            } else {
                format!("missing::{}", function_id(i))
            }
        })
        .collect()
}

fn registry(c: &mut Criterion) {
    for n in [1usize, 10_000, 1_000_000] {
        let reg = FunctionsRegistry::<u64>::default();
        let mut naive: HashMap<(String, String), u64> = HashMap::with_capacity(n);
        for i in 0..n {
            let id = function_id(i);
            reg.register("default", &id, "worker", i as u64, FunctionDef::default())
                .unwrap();
            naive.insert(("default".to_owned(), id), i as u64);
        }
        let label = match n {
            1 => "1".to_owned(),
            10_000 => "10k".to_owned(),
            _ => "1M".to_owned(),
        };
        let mut group = c.benchmark_group(format!("registry_{label}"));
        for hit in [true, false] {
            let keys = probes(n, hit);
            let case = if hit { "hit" } else { "miss" };
            let mut k = 0usize;
            group.bench_function(BenchmarkId::new("fnmesh_select", case), |b| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    black_box(
                        reg.select("default", black_box(&keys[k]))
                            .map(|l| *l.handler()),
                    )
                })
            });
            group.bench_function(BenchmarkId::new("fnmesh_contains", case), |b| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    black_box(reg.contains("default", black_box(&keys[k])))
                })
            });
            group.bench_function(BenchmarkId::new("baseline_hashmap_owned_key", case), |b| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    let key = ("default".to_owned(), black_box(&keys[k]).clone());
                    black_box(naive.get(&key).copied())
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, registry);
criterion_main!(benches);
