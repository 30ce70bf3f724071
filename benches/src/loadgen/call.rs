//! `call` mode: a closed loop that keeps `concurrency` invocations in flight over `connections`
//! WebSocket connections, and reports throughput and latency percentiles as one JSON object.
//!
//! Per connection a reader task owns the in-flight slots: it issues a call (stamping its start
//! time), and when the matching `invocationresult` arrives it records the latency and issues the
//! next one. A writer task sends the frames. Correlation is by `invocation_id`, whose last 12 hex
//! digits encode `(sequence << 16) | slot`, so a reply is matched by parsing the id: no map.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio_tungstenite::tungstenite::Message;

use super::wire::{self, fatal, Frame, Ws};

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Slots per connection are numbered in 16 bits of the id counter.
const MAX_SLOTS_PER_CONNECTION: usize = 1 << 16;

/// Settings of a `call` run.
#[derive(Debug, Clone)]
pub struct CallOptions {
    pub url: String,
    pub function: String,
    /// The `data` JSON sent with every call.
    pub data: String,
    pub concurrency: usize,
    pub connections: usize,
    /// Measure for this long (when `count` is `None`).
    pub duration: Duration,
    /// Measure exactly this many calls instead of a duration.
    pub count: Option<u64>,
    pub warmup: Duration,
    /// A call with no answer after this long counts as an error and its slot moves on.
    pub timeout: Duration,
}

/// State shared by the controller and every connection.
struct Shared {
    phase: AtomicU8,
    /// Calls still to issue in the measured phase (`i64::MAX` in duration mode).
    remaining: AtomicI64,
    counted: bool,
    timeout: Duration,
}

/// What one connection measured.
#[derive(Default)]
struct ConnStats {
    latencies_us: Vec<u32>,
    errors: u64,
    timeouts: u64,
}

#[derive(Clone, Copy)]
struct Slot {
    seq: u64,
    start: Instant,
    busy: bool,
    measured: bool,
}

/// The per-connection driver: issues calls, matches replies, records latencies.
struct Driver {
    shared: Arc<Shared>,
    tx: UnboundedSender<Message>,
    /// `{"type":"invokefunction","function_id":F,"data":D,"invocation_id":"<24-char prefix>`
    head: String,
    prefix: String,
    slots: Vec<Slot>,
    busy: usize,
    stats: ConnStats,
}

impl Driver {
    fn issue(&mut self, i: usize) {
        let phase = self.shared.phase.load(Ordering::Acquire);
        if phase == STOP
            || (phase == MEASURE && self.shared.remaining.fetch_sub(1, Ordering::AcqRel) <= 0)
        {
            return;
        }
        let slot = &mut self.slots[i];
        slot.seq = (slot.seq + 1) & 0xffff_ffff;
        slot.busy = true;
        slot.measured = phase == MEASURE;
        self.busy += 1;
        let mut frame = String::with_capacity(self.head.len() + 14);
        frame.push_str(&self.head);
        wire::push_hex(&mut frame, (slot.seq << 16) | i as u64, 12);
        frame.push_str("\"}");
        slot.start = Instant::now();
        // The writer only goes away with the connection; the reader then sees the failure.
        let _ = self.tx.send(Message::text(frame));
    }

    fn complete(&mut self, i: usize, error: bool, timed_out: bool) {
        let slot = &mut self.slots[i];
        slot.busy = false;
        self.busy -= 1;
        // Calls issued in warm-up, or finishing after the stop, are not measured.
        if slot.measured && self.shared.phase.load(Ordering::Acquire) == MEASURE {
            if timed_out {
                self.stats.timeouts += 1;
                self.stats.errors += 1;
            } else if error {
                self.stats.errors += 1;
            } else {
                let us = slot.start.elapsed().as_micros();
                self.stats
                    .latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
            }
        }
        self.issue(i);
    }

    fn on_frame(&mut self, msg: &Message) {
        let Some(frame) = Frame::decode(msg) else {
            return;
        };
        match &*frame.kind {
            "invocationresult" => {
                let Some(n) = frame
                    .invocation_id
                    .as_deref()
                    .and_then(|id| wire::id_counter(&self.prefix, id))
                else {
                    return;
                };
                let i = (n & 0xffff) as usize;
                // A late reply to a call that already timed out has an older sequence number.
                if self
                    .slots
                    .get(i)
                    .is_some_and(|s| s.busy && s.seq == n >> 16)
                {
                    self.complete(i, frame.error.is_some(), false);
                }
            }
            "ping" => {
                let _ = self.tx.send(Message::text(wire::PONG));
            }
            "error" => fatal(&format!("the engine refused the connection: {msg}")),
            _ => {}
        }
    }

    fn expire(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let s = self.slots[i];
            if s.busy && now.duration_since(s.start) >= self.shared.timeout {
                self.complete(i, true, true);
            }
        }
    }

    fn done(&self) -> bool {
        match self.shared.phase.load(Ordering::Acquire) {
            STOP => true,
            MEASURE => {
                self.shared.counted
                    && self.busy == 0
                    && self.shared.remaining.load(Ordering::Acquire) <= 0
            }
            _ => false,
        }
    }

    async fn run(mut self, mut read: SplitStream<Ws>) -> ConnStats {
        for i in 0..self.slots.len() {
            self.issue(i);
        }
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.done() {
            tokio::select! {
                biased;
                msg = read.next() => match msg {
                    Some(Ok(Message::Close(frame))) => {
                        if self.shared.phase.load(Ordering::Acquire) != STOP {
                            fatal(&format!("the engine closed the connection: {frame:?}"));
                        }
                    }
                    Some(Ok(msg)) => self.on_frame(&msg),
                    Some(Err(e)) => {
                        if self.shared.phase.load(Ordering::Acquire) != STOP {
                            fatal(&format!("connection lost: {e}"));
                        }
                        break;
                    }
                    None => {
                        if self.shared.phase.load(Ordering::Acquire) != STOP {
                            fatal("the engine closed the connection");
                        }
                        break;
                    }
                },
                _ = tick.tick() => self.expire(Instant::now()),
            }
        }
        self.stats
    }
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the closed loop and returns the report. Connection failures exit the process (status 2).
pub async fn run(opts: CallOptions) -> Report {
    let concurrency = opts.concurrency.max(1);
    let connections = opts.connections.clamp(1, concurrency);
    if concurrency.div_ceil(connections) > MAX_SLOTS_PER_CONNECTION {
        fatal("too many calls in flight per connection: raise --connections");
    }
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(if opts.warmup.is_zero() {
            MEASURE
        } else {
            WARMUP
        }),
        remaining: AtomicI64::new(
            opts.count
                .map_or(i64::MAX, |c| c.min(i64::MAX as u64) as i64),
        ),
        counted: opts.count.is_some(),
        timeout: opts.timeout,
    });

    // Connect everything before any call, so a bad URL fails fast and connects are not measured.
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        sockets.push(wire::connect(&opts.url).await.unwrap_or_else(|e| fatal(&e)));
    }

    let run = wire::run_id();
    let mut head_base = String::from(r#"{"type":"invokefunction","function_id":"#);
    wire::push_json_str(&mut head_base, &opts.function);
    head_base.push_str(r#","data":"#);
    head_base.push_str(&opts.data);
    head_base.push_str(r#","invocation_id":""#);

    let mut readers = Vec::with_capacity(connections);
    let mut writers = Vec::with_capacity(connections);
    for (c, ws) in sockets.into_iter().enumerate() {
        let slots = concurrency / connections + usize::from(c < concurrency % connections);
        let (sink, read) = ws.split();
        let (tx, rx) = mpsc::unbounded_channel();
        writers.push(tokio::spawn(async move {
            if let Err(e) = wire::write_loop(sink, rx).await {
                eprintln!("fnmesh-loadgen: {e}");
            }
        }));
        let prefix = wire::id_prefix(run, c as u16);
        let driver = Driver {
            shared: shared.clone(),
            tx,
            head: format!("{head_base}{prefix}"),
            prefix,
            slots: vec![
                Slot {
                    seq: 0,
                    start: Instant::now(),
                    busy: false,
                    measured: false,
                };
                slots
            ],
            busy: 0,
            stats: ConnStats {
                latencies_us: Vec::with_capacity(1 << 16),
                ..ConnStats::default()
            },
        };
        readers.push(tokio::spawn(driver.run(read)));
    }

    if !opts.warmup.is_zero() {
        tokio::time::sleep(opts.warmup).await;
        shared.phase.store(MEASURE, Ordering::Release);
    }
    let t0 = Instant::now();
    if opts.count.is_none() {
        tokio::time::sleep(opts.duration).await;
        shared.phase.store(STOP, Ordering::Release);
    }
    let mut latencies = Vec::new();
    let (mut errors, mut timeouts) = (0u64, 0u64);
    for r in readers {
        let stats = r
            .await
            .unwrap_or_else(|e| fatal(&format!("a connection task failed: {e}")));
        if latencies.is_empty() {
            latencies = stats.latencies_us;
        } else {
            latencies.extend_from_slice(&stats.latencies_us);
        }
        errors += stats.errors;
        timeouts += stats.timeouts;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    shared.phase.store(STOP, Ordering::Release);
    // Readers are gone, so each writer sees its channel close and sends a Close frame.
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(1), w).await;
    }

    latencies.sort_unstable();
    let calls = latencies.len();
    let round1 = |x: f64| (x * 10.0).round() / 10.0;
    Report {
        mode: "call",
        url: opts.url,
        function: opts.function,
        concurrency,
        connections,
        payload_bytes: opts.data.len(),
        duration_s: (elapsed * 1000.0).round() / 1000.0,
        calls,
        errors,
        timeouts,
        throughput_per_s: round1(calls as f64 / elapsed.max(1e-9)),
        latency_us: Latency::from_sorted(&latencies),
    }
}

/// The JSON line `call` prints (field order is the documented one).
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub url: String,
    pub function: String,
    pub concurrency: usize,
    pub connections: usize,
    pub payload_bytes: usize,
    pub duration_s: f64,
    /// Successful measured calls.
    pub calls: usize,
    /// Error results plus timeouts.
    pub errors: u64,
    pub timeouts: u64,
    pub throughput_per_s: f64,
    pub latency_us: Latency,
}

/// Latency of successful measured calls, in microseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: u32,
    pub p90: u32,
    pub p99: u32,
    pub max: u32,
    pub mean: f64,
}

impl Latency {
    /// Nearest-rank percentiles, maximum and mean of latencies sorted in ascending order (all
    /// zero when there are none); `call` and `http` report them the same way.
    pub fn from_sorted(sorted: &[u32]) -> Latency {
        let mean = if sorted.is_empty() {
            0.0
        } else {
            sorted.iter().map(|&v| u64::from(v)).sum::<u64>() as f64 / sorted.len() as f64
        };
        Latency {
            p50: percentile(sorted, 0.50),
            p90: percentile(sorted, 0.90),
            p99: percentile(sorted, 0.99),
            max: sorted.last().copied().unwrap_or(0),
            mean: (mean * 10.0).round() / 10.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[7], 0.9), 7);
        assert_eq!(percentile(&[], 0.9), 0);
    }
}
