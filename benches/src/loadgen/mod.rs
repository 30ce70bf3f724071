//! The iii wire-protocol load generator behind the `fnmesh-loadgen` binary: a benchmark worker
//! (`worker`), a closed-loop caller that measures latency and throughput (`call`), and a plain
//! WebSocket echo server that is the one-hop floor no engine can beat (`echo`), and a relay in
//! front of it that is the two-hop floor of an engine's path (`relay`).
//!
//! It speaks only the wire protocol (docs/protocol.md sections 1-4), so it measures fnmesh and any
//! compatible engine the same way.

pub mod args;
pub mod call;
pub mod echo;
pub mod http;
pub mod relay;
pub mod wire;
pub mod worker;
