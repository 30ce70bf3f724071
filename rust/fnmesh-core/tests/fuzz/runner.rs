//! The time-boxed loop every target runs in: a deterministic PRNG, the settings read from the
//! environment, a watchdog for hangs, and the report of a finding (seed, iteration, the input
//! written to a file and printed).

use std::fmt;
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A finding: what a target's check reports for an input that breaks a property.
#[derive(Debug, thiserror::Error)]
pub enum Finding {
    /// A property of the target does not hold.
    #[error("property broken: {0}")]
    Property(String),
    /// The code under test panicked.
    #[error("panic: {0}")]
    Panic(String),
    /// One input took longer than the per-input bound.
    #[error("slow input: {elapsed:?} (bound {bound:?})")]
    Slow { elapsed: Duration, bound: Duration },
}

/// `Err(Finding::Property)` unless `cond` holds.
pub fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), Finding> {
    if cond {
        Ok(())
    } else {
        Err(Finding::Property(what()))
    }
}

/// A small, fast, deterministic PRNG (splitmix64): same seed, same inputs, on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The generator of iteration `iter` of a run seeded with `seed`, so one input can be
    /// regenerated alone.
    pub fn for_iteration(seed: u64, iter: u64) -> Rng {
        let mut mix = Rng(seed ^ iter.wrapping_mul(0xA076_1D64_78BD_642F));
        Rng(mix.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The settings of a run, read from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `FNMESH_FUZZ_SECONDS` (default 20): the time of all targets together; each target gets
    /// a third.
    pub total: Duration,
    /// `FNMESH_FUZZ_SEED`: the run's seed (decimal or `0x` hex); default from the clock.
    pub seed: u64,
    /// `FNMESH_FUZZ_ITER`: run only this iteration of the seed (replays one generated input).
    pub only_iter: Option<u64>,
    /// `FNMESH_FUZZ_REPLAY`: run only this input file through the target named by the test.
    pub replay: Option<PathBuf>,
    /// `FNMESH_FUZZ_INPUT_MS` (default 2000): the time one input may take (a debug build on a
    /// loaded machine; the inputs are at most a few hundred KiB).
    pub input_bound: Duration,
    /// `FNMESH_FUZZ_HANG_SECONDS` (default 60): past this, the watchdog writes the input out and
    /// aborts the process.
    pub hang_bound: Duration,
    /// `FNMESH_FUZZ_TRACE=1`: print each iteration's number before running it, to find the
    /// input of a crash nothing can catch (a stack overflow aborts the process).
    pub trace: bool,
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    match parsed {
        Ok(v) => Some(v),
        Err(e) => panic!("{name}={text:?}: {e}"),
    }
}

impl Settings {
    pub fn from_env() -> Settings {
        let seed = env_u64("FNMESH_FUZZ_SEED").unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Rng::new(now.as_nanos() as u64 ^ u64::from(std::process::id())).next_u64()
        });
        Settings {
            total: Duration::from_secs(env_u64("FNMESH_FUZZ_SECONDS").unwrap_or(20)),
            seed,
            only_iter: env_u64("FNMESH_FUZZ_ITER"),
            replay: std::env::var_os("FNMESH_FUZZ_REPLAY").map(PathBuf::from),
            input_bound: Duration::from_millis(env_u64("FNMESH_FUZZ_INPUT_MS").unwrap_or(2000)),
            hang_bound: Duration::from_secs(env_u64("FNMESH_FUZZ_HANG_SECONDS").unwrap_or(60)),
            trace: env_u64("FNMESH_FUZZ_TRACE").is_some_and(|v| v != 0),
        }
    }
}

/// One fuzz target: a generator of inputs and the check of its properties on one input.
pub struct Target {
    pub name: &'static str,
    pub generate: fn(&mut Rng) -> Vec<u8>,
    /// Checks one input; `Ok(true)` when the input got past the target's validation (a frame
    /// that decoded, a result read as a reply, a route that parsed), to report how deep the
    /// inputs reach.
    pub check: fn(&[u8]) -> Result<bool, Finding>,
}

/// Runs `check` on one input, turning a panic into a finding and timing it.
pub fn run_one(
    target: &Target,
    input: &[u8],
    bound: Duration,
) -> Result<(bool, Duration), Finding> {
    let start = Instant::now();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| (target.check)(input)));
    let elapsed = start.elapsed();
    match outcome {
        Ok(Ok(_)) if elapsed > bound => Err(Finding::Slow { elapsed, bound }),
        Ok(Ok(deep)) => Ok((deep, elapsed)),
        Ok(Err(finding)) => Err(finding),
        Err(payload) => Err(Finding::Panic(panic_message(payload.as_ref()))),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

/// Where failing inputs are written (under the target dir, outside the repo).
fn findings_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-findings")
}

/// Shows an input as text with non-printable bytes escaped, cut at 2,000 bytes.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 2000;
        for chunk in self.0[..self.0.len().min(MAX)].utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        if self.0.len() > MAX {
            write!(f, "... ({} bytes in all)", self.0.len())?;
        }
        Ok(())
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The input to replay could not be read.
    #[error("{path}: {source}")]
    Replay {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An input broke a property: the report names it and where it was written.
    #[error("{0}")]
    Found(Box<Report>),
}

/// A finding with its input, written to a file so it can be replayed.
#[derive(Debug)]
pub struct Report {
    target: &'static str,
    /// `seed=... iter=...`, `replay` or `corpus <file>`.
    origin: String,
    finding: Finding,
    input: Vec<u8>,
    path: PathBuf,
    /// Why the input could not be written, if it could not.
    unsaved: Option<std::io::Error>,
}

impl Report {
    /// Writes the failing input under `target/tmp/fuzz-findings/`.
    pub fn new(target: &'static str, origin: String, input: &[u8], finding: Finding) -> Report {
        let dir = findings_dir();
        let path = dir.join(format!("{target}-{}.bin", origin.replace([' ', '='], "-")));
        let unsaved = fs::create_dir_all(&dir)
            .and_then(|()| fs::write(&path, input))
            .err();
        Report {
            target,
            origin,
            finding,
            input: input.to_vec(),
            path,
            unsaved,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (target, path) = (self.target, self.path.display());
        writeln!(
            f,
            "fuzz target `{target}` ({}): {}",
            self.origin, self.finding
        )?;
        match &self.unsaved {
            None => writeln!(f, "  input ({} bytes) written to {path}", self.input.len())?,
            Some(e) => writeln!(
                f,
                "  input ({} bytes) not written to {path}: {e}",
                self.input.len()
            )?,
        }
        writeln!(
            f,
            "  replay: FNMESH_FUZZ_REPLAY={path} cargo test -p fnmesh-core --test fuzz -- {target}"
        )?;
        write!(f, "  input: {}", Escaped(&self.input))
    }
}

impl From<Report> for Failure {
    fn from(report: Report) -> Failure {
        Failure::Found(Box::new(report))
    }
}

/// Statistics of a finished run.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub iterations: u64,
    /// Inputs that got past the target's validation.
    pub deep: u64,
    pub elapsed: Duration,
    pub slowest: Duration,
}

/// Runs `target` for its share of the time budget (or the one input or iteration the settings
/// name) and returns the statistics, or the report of the first finding.
pub fn run(target: &Target, settings: &Settings) -> Result<Stats, Failure> {
    if let Some(path) = &settings.replay {
        let input = fs::read(path).map_err(|source| Failure::Replay {
            path: path.clone(),
            source,
        })?;
        let (deep, elapsed) = run_one(target, &input, settings.input_bound)
            .map_err(|f| Report::new(target.name, "replay".to_owned(), &input, f))?;
        println!(
            "fuzz {}: {} passes in {elapsed:.1?} (got past validation: {deep})",
            target.name,
            path.display()
        );
        return Ok(Stats {
            iterations: 1,
            deep: u64::from(deep),
            elapsed,
            slowest: elapsed,
        });
    }
    let budget = settings.total / 3;
    let seed = settings.seed;
    println!(
        "fuzz {}: seed=0x{seed:016x} budget={budget:?} (FNMESH_FUZZ_SEED=0x{seed:016x} replays it)",
        target.name
    );
    let watchdog = Watchdog::start(target, seed, settings.hang_bound);
    let start = Instant::now();
    let mut stats = Stats {
        iterations: 0,
        deep: 0,
        elapsed: Duration::ZERO,
        slowest: Duration::ZERO,
    };
    let mut iter = settings.only_iter.unwrap_or(0);
    loop {
        let input = (target.generate)(&mut Rng::for_iteration(seed, iter));
        watchdog.entering(iter);
        if settings.trace {
            eprintln!("fuzz {}: seed=0x{seed:016x} iter={iter}", target.name);
        }
        let outcome = run_one(target, &input, settings.input_bound);
        stats.iterations += 1;
        match outcome {
            Ok((deep, elapsed)) => {
                stats.deep += u64::from(deep);
                stats.slowest = stats.slowest.max(elapsed);
            }
            Err(finding) => {
                watchdog.stop();
                let origin = format!("seed=0x{seed:016x} iter={iter}");
                return Err(Report::new(target.name, origin, &input, finding).into());
            }
        }
        iter += 1;
        if settings.only_iter.is_some() || start.elapsed() >= budget {
            break;
        }
    }
    watchdog.stop();
    stats.elapsed = start.elapsed();
    let rate = stats.iterations as f64 / stats.elapsed.as_secs_f64().max(1e-9);
    let deep = 100.0 * stats.deep as f64 / stats.iterations.max(1) as f64;
    println!(
        "fuzz {}: {} iterations in {:.1?} ({rate:.0}/s, {deep:.0}% past validation), slowest \
         input {:.1?}",
        target.name, stats.iterations, stats.elapsed, stats.slowest
    );
    Ok(stats)
}

/// A thread that notices an input running past the hang bound (an infinite loop cannot be
/// interrupted): it regenerates that input, reports it and aborts the process.
struct Watchdog {
    origin: Instant,
    /// The iteration running (`u64::MAX`: none yet).
    iter: Arc<AtomicU64>,
    /// When it started, in milliseconds since `origin`.
    since_ms: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(target: &Target, seed: u64, bound: Duration) -> Watchdog {
        let watchdog = Watchdog {
            origin: Instant::now(),
            iter: Arc::new(AtomicU64::new(u64::MAX)),
            since_ms: Arc::new(AtomicU64::new(0)),
            done: Arc::new(AtomicBool::new(false)),
        };
        let (name, generate, origin) = (target.name, target.generate, watchdog.origin);
        let (iter, since_ms, done) = (
            watchdog.iter.clone(),
            watchdog.since_ms.clone(),
            watchdog.done.clone(),
        );
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(200));
                let current = iter.load(Ordering::SeqCst);
                let since = Duration::from_millis(since_ms.load(Ordering::SeqCst));
                let running = origin.elapsed().saturating_sub(since);
                if current == u64::MAX || running <= bound || done.load(Ordering::SeqCst) {
                    continue;
                }
                let input = generate(&mut Rng::for_iteration(seed, current));
                let finding = Finding::Slow {
                    elapsed: running,
                    bound,
                };
                let origin = format!("seed=0x{seed:016x} iter={current} hang");
                eprintln!("{}", Report::new(name, origin, &input, finding));
                std::process::abort();
            }
        });
        watchdog
    }

    fn entering(&self, iter: u64) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.since_ms.store(ms, Ordering::SeqCst);
        self.iter.store(iter, Ordering::SeqCst);
    }

    fn stop(&self) {
        self.done.store(true, Ordering::SeqCst);
    }
}
