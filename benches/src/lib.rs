//! Shared helpers for fnmesh's benchmarks (payload builders used by several benches) and the
//! wire-protocol load generator behind the `fnmesh-loadgen` binary.

pub mod loadgen;
pub mod micro;

/// A JSON object of roughly `size` bytes, shaped like a typical function payload.
pub fn json_payload(size: usize) -> String {
    let mut out = String::with_capacity(size + 64);
    out.push_str("{\"items\":[");
    let mut i = 0usize;
    while out.len() < size {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"id\":{i},\"sku\":\"SKU-{i:06}\",\"name\":\"Produit n°{i}\",\"qty\":{}}}",
            i % 7 + 1
        ));
        i += 1;
    }
    out.push_str("]}");
    out
}
