//! The measurements behind the `fnmesh-microbench` binary: registry lookups at a given registry
//! size, and the wire codec on one `invokefunction` frame. Each returns a report that the binary
//! prints as one JSON object, for the Python bench scripts to read.
//!
//! Every number is a statistic over *batches*: a batch runs the operation many times between two
//! `Instant` reads and counts as one sample (its mean), so the clock costs nothing measurable
//! per operation however short the operation is.

use std::hash::{Hash, Hasher};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnmesh_core::protocol::{decode, decode_split, decode_text, Message};
use fnmesh_core::registry::{FunctionDef, FunctionsRegistry};
use hashbrown::HashMap;
use serde::Serialize;

use crate::json_payload;

/// The namespace every benchmark function lives in.
pub const NAMESPACE: &str = "default";

const OWNER: &str = "bench-worker";
/// Lookups between two clock reads.
const LOOKUP_BATCH: usize = 1024;
/// Probe keys, drawn at random over the whole registry (a multiple of [`LOOKUP_BATCH`]). At 1M
/// functions, 64Ki keys touch far more entries than any CPU cache holds.
pub const DEFAULT_PROBES: usize = 64 * LOOKUP_BATCH;
/// What one codec batch should last (its size is set from a calibration run).
const CODEC_BATCH_TARGET: Duration = Duration::from_millis(1);
const CALIBRATION: Duration = Duration::from_millis(20);

/// Median, mean and 99th percentile of per-batch means, in nanoseconds per operation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    /// Median batch mean.
    pub median: f64,
    /// Mean over all batches.
    pub mean: f64,
    /// 99th percentile of the batch means (nearest rank).
    pub p99: f64,
}

impl Stats {
    /// The statistics of `samples` (sorted in place). All zero for no samples.
    pub fn of(samples: &mut [f64]) -> Stats {
        if samples.is_empty() {
            return Stats {
                median: 0.0,
                mean: 0.0,
                p99: 0.0,
            };
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2.0
        };
        let rank = ((n as f64) * 0.99).ceil() as usize;
        Stats {
            median,
            mean: samples.iter().sum::<f64>() / n as f64,
            p99: samples[rank.clamp(1, n) - 1],
        }
    }
}

/// The id of the `i`-th benchmark function: a hundred functions per service, like a large
/// deployment's `orders::create`.
pub fn function_id(i: usize) -> String {
    format!("svc{}::fn{i}", i / 100)
}

/// What `fnmesh-microbench lookup` prints.
#[derive(Debug, Serialize)]
pub struct LookupReport {
    /// Functions registered.
    pub functions: usize,
    /// Lookups timed (all of them hits).
    pub lookups: u64,
    /// The registry call timed.
    pub operation: LookupOp,
    /// Distinct probe positions cycled through (few enough stay in cache at any registry size).
    pub probes: usize,
    /// Nanoseconds per lookup over batches of [`LOOKUP_BATCH`].
    pub ns_per_lookup: Stats,
    /// Lookups per batch.
    pub batch: usize,
    /// Seconds spent registering the functions (building their ids included).
    pub fill_seconds: f64,
    /// The process's resident memory once the registry is full (`None` off Linux).
    pub rss_bytes: Option<u64>,
    /// Resident memory the fill added, divided by the functions registered: what one function
    /// costs the registry (or the plain map, for `hashbrown`). `None` off Linux.
    pub bytes_per_function: Option<f64>,
}

/// The registry call `lookup` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LookupOp {
    /// `select`: what routing does (pick a replica, lease it, release the lease).
    Select,
    /// `contains`: a bare probe of the map.
    Contains,
    /// The floor: `get` on a plain `hashbrown::HashMap` of the same `(namespace, function_id)`
    /// keys (owned `String` pairs, probed with borrowed strs), no registry involved.
    Hashbrown,
    /// The floor for `select`: the same plain map holding a shared in-flight counter per key
    /// (`Arc<AtomicUsize>`), each probe leasing it as `select` leases a replica (clone the
    /// `Arc`, count one in flight) and releasing it at once.
    Leased,
}

impl std::str::FromStr for LookupOp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "select" => Ok(LookupOp::Select),
            "contains" => Ok(LookupOp::Contains),
            "hashbrown" => Ok(LookupOp::Hashbrown),
            "leased" => Ok(LookupOp::Leased),
            other => Err(format!(
                "{other:?} is not select, contains, hashbrown or leased"
            )),
        }
    }
}

/// Probe keys stored back to back in one buffer: reading them is sequential and costs the same
/// whatever the registry size, so only the registry's own memory accesses differ between sizes.
struct Probes {
    text: String,
    bounds: Vec<(usize, usize)>,
}

impl Probes {
    fn new(functions: usize, count: usize) -> Probes {
        let mut rng = SplitMix64(0x5eed_f00d);
        let mut text = String::with_capacity(count * 16);
        let mut bounds = Vec::with_capacity(count);
        for _ in 0..count {
            let i = (rng.next() % functions as u64) as usize;
            let start = text.len();
            text.push_str(&function_id(i));
            bounds.push((start, text.len()));
        }
        Probes { text, bounds }
    }

    fn batch(&self, index: usize) -> impl Iterator<Item = &str> {
        let first = (index * LOOKUP_BATCH) % self.bounds.len();
        self.bounds[first..first + LOOKUP_BATCH]
            .iter()
            .map(|&(start, end)| &self.text[start..end])
    }
}

/// A `(namespace, function_id)` pair of borrowed strs that finds an owned `(String, String)` key
/// in the plain map: it hashes the same way (a tuple of two strs) and compares part by part.
struct PairView<'a>(&'a str, &'a str);

impl Hash for PairView<'_> {
    fn hash<S: Hasher>(&self, state: &mut S) {
        (self.0, self.1).hash(state);
    }
}

impl hashbrown::Equivalent<(String, String)> for PairView<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// The `leased` floor's lease: one call counted in flight on a shared counter until dropped.
struct Lease(Arc<AtomicUsize>);

impl Lease {
    fn take(counter: Arc<AtomicUsize>) -> Lease {
        counter.fetch_add(1, Ordering::Relaxed);
        Lease(counter)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A small deterministic generator (Steele, Lea and Flood's SplitMix64), so every run probes the
/// same keys.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Fills a registry with `functions` functions, then times `operation` on registered keys for
/// about `seconds`, cycling through `probes` random keys (a positive multiple of 1024).
pub fn lookup(
    functions: usize,
    seconds: f64,
    operation: LookupOp,
    probes: usize,
) -> Result<LookupReport, String> {
    if functions == 0 {
        return Err("--functions must be at least 1".into());
    }
    if probes == 0 || probes % LOOKUP_BATCH != 0 {
        return Err(format!(
            "--probes must be a positive multiple of {LOOKUP_BATCH}"
        ));
    }
    let rss_before = rss_bytes();
    let began = Instant::now();
    let registry = FunctionsRegistry::<u64>::default();
    let mut plain: HashMap<(String, String), u64> = HashMap::default();
    let mut leased: HashMap<(String, String), Arc<AtomicUsize>> = HashMap::default();
    for i in 0..functions {
        match operation {
            LookupOp::Hashbrown => {
                plain.insert((NAMESPACE.to_owned(), function_id(i)), i as u64);
                continue;
            }
            LookupOp::Leased => {
                leased.insert((NAMESPACE.to_owned(), function_id(i)), Arc::default());
                continue;
            }
            LookupOp::Select | LookupOp::Contains => {}
        }
        registry
            .register(
                NAMESPACE,
                &function_id(i),
                OWNER,
                i as u64,
                FunctionDef::default(),
            )
            .map_err(|e| format!("registering function {i}: {e}"))?;
    }
    let fill_seconds = began.elapsed().as_secs_f64();
    let rss_bytes = rss_bytes();
    let bytes_per_function = rss_before
        .zip(rss_bytes)
        .map(|(before, after)| after.saturating_sub(before) as f64 / functions as f64);

    let keys = Probes::new(functions, probes);
    let run_batch = |index: usize| -> usize {
        let mut hits = 0;
        for key in keys.batch(index) {
            let found = match operation {
                // The lease is dropped at once: a select counts with its release, as in routing.
                LookupOp::Select => registry.select(NAMESPACE, black_box(key)).is_some(),
                LookupOp::Contains => registry.contains(NAMESPACE, black_box(key)),
                LookupOp::Hashbrown => plain
                    .get(&PairView(NAMESPACE, black_box(key)))
                    .is_some_and(|v| black_box(*v) < functions as u64),
                LookupOp::Leased => leased
                    .get(&PairView(NAMESPACE, black_box(key)))
                    .map(|counter| Lease::take(counter.clone()))
                    .is_some_and(|lease| black_box(lease).0.load(Ordering::Relaxed) > 0),
            };
            hits += usize::from(found);
        }
        hits
    };
    // Warm-up: one pass over every probe key.
    for index in 0..probes / LOOKUP_BATCH {
        black_box(run_batch(index));
    }

    let seconds = Duration::from_secs_f64(seconds);
    let mut samples = Vec::with_capacity(1 << 16);
    let mut hits = 0;
    let mut index = 0;
    let started = Instant::now();
    let mut now = started;
    while now - started < seconds || samples.is_empty() {
        let before = now;
        hits += run_batch(index);
        now = Instant::now();
        samples.push((now - before).as_nanos() as f64 / LOOKUP_BATCH as f64);
        index += 1;
    }
    let lookups = (samples.len() * LOOKUP_BATCH) as u64;
    if hits as u64 != lookups {
        return Err(format!(
            "{} of {lookups} lookups missed",
            lookups - hits as u64
        ));
    }
    Ok(LookupReport {
        functions,
        lookups,
        operation,
        probes,
        ns_per_lookup: Stats::of(&mut samples),
        batch: LOOKUP_BATCH,
        fill_seconds,
        rss_bytes,
        bytes_per_function,
    })
}

/// `VmRSS` of this process, in bytes (`/proc/self/status` reports kB).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What a codec frame's `data` is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// An object of many small records (ids, short strings, numbers): the default.
    Object,
    /// An object holding one long string (a blob), as E8 sends.
    String,
}

impl std::str::FromStr for PayloadKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "object" => Ok(PayloadKind::Object),
            "string" => Ok(PayloadKind::String),
            other => Err(format!("--payload must be object or string, not {other:?}")),
        }
    }
}

/// An `invokefunction` frame whose `data` is a JSON object of about `payload_bytes` bytes, with
/// the envelope a traced call carries.
pub fn invoke_frame(payload_bytes: usize) -> String {
    invoke_frame_of(payload_bytes, PayloadKind::Object)
}

/// As [`invoke_frame`], with `data` of the given kind.
pub fn invoke_frame_of(payload_bytes: usize, kind: PayloadKind) -> String {
    let data = match kind {
        PayloadKind::Object => json_payload(payload_bytes),
        PayloadKind::String => format!(r#"{{"blob":"{}"}}"#, "x".repeat(payload_bytes)),
    };
    format!(
        concat!(
            r#"{{"type":"invokefunction","invocation_id":"0f6c3a52-8d1e-4b7a-9e43-2a5d7c1b9e08","#,
            r#""function_id":"orders::create","data":{},"#,
            r#""traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","#,
            r#""metadata":{{"session_id":"s_1"}}}}"#
        ),
        data
    )
}

/// What `fnmesh-microbench codec` prints.
#[derive(Debug, Serialize)]
pub struct CodecReport {
    /// The requested `data` size.
    pub bytes: usize,
    /// The whole frame's size.
    pub frame_bytes: usize,
    /// Operations per batch, per operation (sized so a batch lasts about 1 ms).
    pub batch: CodecBatches,
    /// Batches timed per operation.
    pub batches: usize,
    /// `protocol::decode` of the frame (the envelope; `data` stays raw JSON).
    pub decode_ns: Stats,
    /// `Message::encode_into` a reused buffer.
    pub encode_ns: Stats,
    /// Decode then encode of the whole message.
    pub forward_ns: Stats,
    /// What the engine did per routed call before large frames were split: `decode_text` of the
    /// frame (`data` copied into the message), then the frame to the worker written from the
    /// message (`InvokeFunction::encode_with_caller`, the caller's id spliced in).
    pub whole_ns: Stats,
    /// What the engine does per routed call: `protocol::decode_split` of the frame as text (a
    /// large frame's `data` stays in the frame) then the frame to the worker written around it
    /// (`InvokeFunction::encode_with_payload`, the caller's id spliced in).
    pub split_ns: Stats,
    /// What `data` is made of.
    pub payload: PayloadKind,
}

/// Operations per batch of each codec operation.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CodecBatches {
    /// Decodes per batch.
    pub decode: usize,
    /// Encodes per batch.
    pub encode: usize,
    /// Forwards per batch.
    pub forward: usize,
    /// Whole forwards per batch.
    pub whole: usize,
    /// Split forwards per batch.
    pub split: usize,
}

#[derive(Clone, Copy)]
enum CodecOp {
    Decode,
    Encode,
    Forward,
    Whole,
    Split,
}

struct Codec<'a> {
    frame: &'a str,
    message: Message,
    buf: Vec<u8>,
}

impl Codec<'_> {
    /// Runs `op` `n` times; returns the elapsed time.
    fn run(&mut self, op: CodecOp, n: usize) -> Duration {
        let began = Instant::now();
        for _ in 0..n {
            match op {
                CodecOp::Decode => {
                    black_box(decode(black_box(self.frame.as_bytes())).ok());
                }
                CodecOp::Encode => {
                    self.buf.clear();
                    black_box(&self.message).encode_into(&mut self.buf);
                    black_box(&self.buf);
                }
                CodecOp::Forward => {
                    self.buf.clear();
                    if let Ok(message) = decode(black_box(self.frame.as_bytes())) {
                        message.encode_into(&mut self.buf);
                    }
                    black_box(&self.buf);
                }
                CodecOp::Whole => {
                    if let Ok(Message::InvokeFunction(m)) = decode_text(black_box(self.frame)) {
                        black_box(m.encode_with_caller(Some(SPLICED_CALLER)));
                    }
                }
                CodecOp::Split => {
                    let frame = black_box(self.frame);
                    if let Ok(split) = decode_split(frame) {
                        if let Message::InvokeFunction(m) = &split.message {
                            let data = match split.payload {
                                Some(range) => &frame[range],
                                None => m.data.as_deref().map_or("null", |d| d.get()),
                            };
                            black_box(m.encode_with_payload(data, Some(SPLICED_CALLER)));
                        }
                    }
                }
            }
        }
        began.elapsed()
    }

    /// The batch size that makes `op` last about [`CODEC_BATCH_TARGET`] (also warms it up).
    fn batch_size(&mut self, op: CodecOp) -> usize {
        let mut runs = 0usize;
        let began = Instant::now();
        while began.elapsed() < CALIBRATION {
            self.run(op, 1);
            runs += 1;
        }
        let per_op = began.elapsed().as_nanos() as f64 / runs as f64;
        ((CODEC_BATCH_TARGET.as_nanos() as f64 / per_op) as usize).max(1)
    }
}

/// The calling worker's id the split forward splices into `data`, as the engine does.
const SPLICED_CALLER: &str = "5b1e7c1a-2f44-4d0e-9a61-3c8f0b7d2e19";

/// Times decode, encode, forward and split forward of an `invokefunction` frame with about
/// `payload_bytes` of `data` of `kind`, their batches taking turns for about `seconds` in all.
pub fn codec(payload_bytes: usize, seconds: f64, kind: PayloadKind) -> Result<CodecReport, String> {
    let frame = invoke_frame_of(payload_bytes, kind);
    let message =
        decode(frame.as_bytes()).map_err(|e| format!("the frame does not decode: {e}"))?;
    if !matches!(message, Message::InvokeFunction(_)) {
        return Err(format!("the frame decoded as {}", message.kind()));
    }
    let mut codec = Codec {
        frame: &frame,
        message,
        buf: Vec::with_capacity(frame.len() + 256),
    };
    let ops = [
        CodecOp::Decode,
        CodecOp::Encode,
        CodecOp::Forward,
        CodecOp::Whole,
        CodecOp::Split,
    ];
    let sizes = ops.map(|op| codec.batch_size(op));
    let mut samples: [Vec<f64>; 5] = Default::default();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    // Round-robin, so machine noise hits the three alike.
    while samples[0].is_empty() || Instant::now() < deadline {
        for ((op, n), out) in ops.iter().zip(sizes).zip(samples.iter_mut()) {
            let elapsed = codec.run(*op, n);
            out.push(elapsed.as_nanos() as f64 / n as f64);
        }
    }
    let [mut decode_ns, mut encode_ns, mut forward_ns, mut whole_ns, mut split_ns] = samples;
    Ok(CodecReport {
        bytes: payload_bytes,
        frame_bytes: frame.len(),
        batch: CodecBatches {
            decode: sizes[0],
            encode: sizes[1],
            forward: sizes[2],
            whole: sizes[3],
            split: sizes[4],
        },
        batches: decode_ns.len(),
        decode_ns: Stats::of(&mut decode_ns),
        encode_ns: Stats::of(&mut encode_ns),
        forward_ns: Stats::of(&mut forward_ns),
        whole_ns: Stats::of(&mut whole_ns),
        split_ns: Stats::of(&mut split_ns),
        payload: kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_over_sorted_samples() {
        let mut samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let stats = Stats::of(&mut samples);
        assert_eq!(stats.median, 50.5);
        assert_eq!(stats.mean, 50.5);
        assert_eq!(stats.p99, 99.0);
        assert_eq!(Stats::of(&mut [7.0]).p99, 7.0);
        assert_eq!(Stats::of(&mut []).median, 0.0);
    }

    #[test]
    fn probes_are_registered_ids() {
        let probes = Probes::new(1000, DEFAULT_PROBES);
        let ids: std::collections::HashSet<String> = (0..1000).map(function_id).collect();
        for key in probes.batch(3) {
            assert!(ids.contains(key), "{key}");
        }
    }

    #[test]
    fn frame_is_an_invokefunction_of_about_the_size() {
        let frame = invoke_frame(4096);
        assert!(frame.len() >= 4096 && frame.len() < 4096 + 512);
        assert!(matches!(
            decode(frame.as_bytes()),
            Ok(Message::InvokeFunction(_))
        ));
    }
}
