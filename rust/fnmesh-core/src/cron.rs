//! The `cron` trigger's schedule and job loop (PROTOCOL.md 6.4).
//!
//! [`CronSchedule`] parses an expression in the grammar iii uses (the `cron` crate: 6 or 7 fields,
//! seconds first, plus `@hourly`-style shorthands) and computes fire times, in UTC by default or in
//! an IANA zone (a fnmesh extension). [`run_job`] is one job's loop: sleep until the next time,
//! take the [`CronLock`] for that tick ([`LocalLock`] for one engine, [`RedisLock`] for engines
//! sharing one Redis), build the payload and call [`Fire`]. Runs of one job never
//! overlap, and ticks that pass while a run or a stall holds the loop are skipped and logged, never
//! fired late in a burst.
//!
//! The loop reads the wall clock through [`Clock`] so that tests (here and in the engine) can run
//! it on tokio's paused clock with [`TokioClock`]; production uses [`SystemClock`].
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use fnmesh_core::cron::CronSchedule;
//!
//! let every_weekday_at_nine = CronSchedule::parse("0 0 9 * * MON-FRI", Some("Europe/Paris"))?;
//! let saturday = Utc.with_ymd_and_hms(2026, 1, 3, 12, 0, 0).unwrap();
//! let monday_nine_paris = Utc.with_ymd_and_hms(2026, 1, 5, 8, 0, 0).unwrap();
//! assert_eq!(every_weekday_at_nine.next_after(saturday), Some(monday_nine_paris));
//! # Ok::<(), String>(())
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use chrono_tz::Tz;
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::engine::WeakEngineRef;

#[path = "cron/service.rs"]
mod service;
use crate::function::{CallOptions, Outcome};
use crate::triggers::{condition_skips, TriggerAck, TriggerBinding, TriggerProvider};
pub use service::CronService;

/// A parsed cron expression and the zone it is evaluated in.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expression: String,
    schedule: cron::Schedule,
    zone: Tz,
}

impl CronSchedule {
    /// Parses `expression`: 6 or 7 whitespace-separated fields, seconds first
    /// (`sec min hour day-of-month month day-of-week [year]`), as the `cron` crate parses them,
    /// or one of its shorthands (`@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`).
    ///
    /// `timezone`: `None` evaluates the expression in UTC (iii's behaviour); `Some("Europe/Paris")`
    /// evaluates it in that IANA zone (a fnmesh extension). Local times skipped by a daylight-saving
    /// change do not fire that day.
    ///
    /// The error is a one-line message naming the expression (or the zone) and the problem; a
    /// 5-field crontab line gets a message saying that a seconds field comes first.
    pub fn parse(expression: &str, timezone: Option<&str>) -> Result<CronSchedule, String> {
        let expression = expression.trim();
        if expression.is_empty() {
            return Err("cron expression is empty".to_owned());
        }
        let zone = match timezone {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| {
                format!("unknown timezone '{name}' (expected an IANA name such as 'Europe/Paris')")
            })?,
        };
        let schedule = cron::Schedule::from_str(expression)
            .map_err(|e| describe_parse_error(expression, &e.to_string()))?;
        Ok(CronSchedule {
            expression: expression.to_owned(),
            schedule,
            zone,
        })
    }

    /// The first fire time strictly after `after`, in UTC; `None` when the schedule has no future
    /// time (a past year, the 31st of February, or past 2100, the crate's last year).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // A wall time repeated by a daylight-saving change comes out as two instants, the earlier
        // of which can lie before `after` (when `after` is inside the repeated hour): skip it.
        self.schedule
            .after(&after.with_timezone(&self.zone))
            .take(2)
            .map(|t| t.with_timezone(&Utc))
            .find(|t| *t > after)
    }

    /// The expression as parsed (surrounding whitespace removed).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The zone the expression is evaluated in (`"UTC"` unless one was given).
    pub fn timezone(&self) -> &'static str {
        self.zone.name()
    }

    /// How many fire times lie in `(after, until]`, counting at most `limit`.
    fn count_between(&self, after: DateTime<Utc>, until: DateTime<Utc>, limit: u64) -> u64 {
        let mut count = 0;
        let mut cursor = after;
        while count < limit {
            match self.next_after(cursor) {
                Some(t) if t <= until => {
                    count += 1;
                    cursor = t;
                }
                _ => break,
            }
        }
        count
    }
}

/// Turns the `cron` crate's multi-line error (expression, caret line, message) into one line that
/// names the expression, with a plain explanation for a wrong number of fields.
fn describe_parse_error(expression: &str, crate_message: &str) -> String {
    let fields = expression.split_whitespace().count();
    if expression.starts_with('@') {
        return format!(
            "invalid cron expression '{expression}': unknown shorthand \
             (accepted: @yearly, @monthly, @weekly, @daily, @hourly)"
        );
    }
    if fields == 5 {
        return format!(
            "invalid cron expression '{expression}': it has 5 fields, but cron fields must be 6 or 7 \
             with seconds first (sec min hour day-of-month month day-of-week [year]); for a crontab \
             line put a seconds field in front, e.g. '0 {expression}'"
        );
    }
    if !(6..=7).contains(&fields) {
        let noun = if fields == 1 { "field" } else { "fields" };
        return format!(
            "invalid cron expression '{expression}': it has {fields} {noun}, but cron fields must \
             be 6 or 7 with seconds first (sec min hour day-of-month month day-of-week [year])"
        );
    }
    let mut lines = crate_message.lines();
    let _echo = lines.next();
    let caret = lines.next().and_then(|l| l.find('^'));
    let detail = lines
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let problem = match (detail.is_empty(), caret) {
        (false, _) => detail,
        (true, Some(column)) => format!("unexpected text at column {}", column + 1),
        (true, None) => crate_message
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    };
    format!("invalid cron expression '{expression}': {problem}")
}

/// The wall clock a job loop reads to know which tick is due.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A wall clock that starts at a chosen time and advances with tokio's clock, so that jobs run
/// on tokio's paused clock (`start_paused`, `tokio::time::advance`) see time pass.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin_wall: DateTime<Utc>,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `wall` now.
    pub fn starting_at(wall: DateTime<Utc>) -> TokioClock {
        TokioClock {
            origin_wall: wall,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        TimeDelta::from_std(self.origin.elapsed())
            .ok()
            .and_then(|elapsed| self.origin_wall.checked_add_signed(elapsed))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// Exclusive right to fire one tick of one job: several engines sharing one Redis take it there;
/// [`LocalLock`] is the default for a single engine.
pub trait CronLock: Send + Sync + 'static {
    /// Tries to take the lock for `job_id`'s tick scheduled at `tick` (keyed by the tick, so that
    /// engines firing the same tick agree on one winner); true if this caller won.
    fn try_acquire(
        &self,
        job_id: &str,
        tick: DateTime<Utc>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
}

/// Always wins (one engine).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalLock;

impl CronLock for LocalLock {
    fn try_acquire(
        &self,
        _job_id: &str,
        _tick: DateTime<Utc>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(std::future::ready(true))
    }
}

/// How long a won tick's key lives in Redis: far longer than any stall or clock difference between
/// engines, so an engine that reaches a tick late finds it taken instead of winning it again.
// NOTE: a key costs about 220 bytes in Redis 7.0 (6,000 keys measured with INFO used_memory), so
// an every-second job keeps 600 keys alive, about 130 KB; a shorter TTL saves memory only by
// letting an engine stalled that long win a tick again.
pub const REDIS_LOCK_TTL: Duration = Duration::from_secs(600);

/// Bound on one lock attempt, connecting included: a Redis that hangs delays a tick by at most
/// this much, and the tick is then skipped rather than fired late.
const REDIS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Bounds on one connection attempt and on one reply, inside [`REDIS_ATTEMPT_TIMEOUT`].
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The lock for several engines sharing one Redis: the first engine to `SET` a tick's key wins
/// that tick, so each tick of a job fires on one engine only.
///
/// The key is `fnmesh:cron:<job_id>:<tick in unix milliseconds>` (a job's id is its binding id,
/// so engines agree on it when they bind the same function the same way), the value names the
/// engine that won ([`RedisLock::owner`]), and the key expires after [`REDIS_LOCK_TTL`].
///
/// When Redis cannot be reached, refuses the command or does not answer within 2 s, the tick is
/// skipped on this engine (firing it would fire it on every engine): the first failure, and a
/// failure with another cause, log a warning, the others only at debug, and the first success
/// after them logs at info. All the engine's jobs share one multiplexed connection, reconnected
/// on the next tick after a failure. A tick whose `SET` reached Redis but whose answer was lost
/// is fired by nobody: at most once, never twice.
pub struct RedisLock {
    redis: redis::aio::ConnectionManager,
    /// `host:port` or the socket path (never the credentials), for the logs.
    addr: String,
    owner: String,
    /// The error last warned about, from a failed attempt to the next successful one: a warning
    /// is logged when an outage starts or its cause changes, not for every tick.
    failing: Mutex<Option<String>>,
    skipped_while_failing: AtomicU64,
}

impl RedisLock {
    /// A lock on the Redis at `url`: `redis://[[user]:password@]host[:port][/db]` or
    /// `redis+unix:///path/to/socket` (TLS, `rediss://`, is not built in). Nothing is sent before
    /// the first tick, so an engine starts while Redis is down.
    ///
    /// Must be called inside a tokio runtime, which runs the connection. The error
    /// ([`crate::Error::InvalidArgument`]) says why `url` is not a usable Redis URL; it never
    /// repeats the URL, which may hold a password.
    pub fn new(url: &str) -> crate::Result<RedisLock> {
        let invalid = |e: redis::RedisError| {
            let reason = if e.kind() == redis::ErrorKind::InvalidClientConfig {
                if url.starts_with("rediss:") || url.starts_with("valkeys:") {
                    "TLS (rediss://) is not built in".to_owned()
                } else {
                    // Drop the " - InvalidClientConfig" the crate appends to its message.
                    let text = e.to_string();
                    text.split(" - ").next().unwrap_or(&text).to_owned()
                }
            } else {
                e.to_string()
            };
            crate::Error::InvalidArgument(format!(
                "{reason}; expected redis://[[user]:password@]host[:port][/db] \
                 or redis+unix:///path/to/socket"
            ))
        };
        let client = redis::Client::open(url).map_err(invalid)?;
        let addr = client.get_connection_info().addr().to_string();
        // No retries inside one attempt: the next tick is the retry, and a tick must not wait.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
            .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT));
        let redis =
            redis::aio::ConnectionManager::new_lazy_with_config(client, config).map_err(invalid)?;
        Ok(RedisLock {
            redis,
            addr,
            owner: format!(
                "pid{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            failing: Mutex::new(None),
            skipped_while_failing: AtomicU64::new(0),
        })
    }

    /// The value this engine writes into the keys of the ticks it wins (process id and a random
    /// id), to tell from Redis which engine fired a tick.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// One `SET key owner NX PX ttl`: `Ok(true)` if this engine set the key.
    async fn set_if_absent(&self, key: &str) -> Result<bool, String> {
        let mut set = redis::cmd("SET");
        set.arg(key)
            .arg(&self.owner)
            .arg("NX")
            .arg("PX")
            .arg(REDIS_LOCK_TTL.as_millis() as u64);
        let mut redis = self.redis.clone();
        let mut answer = set.query_async::<redis::Value>(&mut redis).await;
        if matches!(&answer, Err(e) if e.is_unrecoverable_error()) {
            // The connection was dead (Redis restarted): the manager has started a new one, and
            // a second try on it saves this tick. Redis being down fails it just as fast.
            answer = set.query_async::<redis::Value>(&mut redis).await;
        }
        match answer {
            Ok(redis::Value::Okay) => Ok(true),
            Ok(redis::Value::Nil) => Ok(false),
            Ok(other) => Err(format!("unexpected answer to SET NX: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    fn succeeded(&self) {
        let was_failing = lock_failing(&self.failing).take().is_some();
        if was_failing {
            let skipped = self.skipped_while_failing.swap(0, Ordering::Relaxed);
            info!(
                redis = %self.addr,
                skipped,
                "the cron lock in Redis at {} works again ({skipped} tick(s) were skipped)",
                self.addr
            );
        }
    }

    fn failed(&self, key: &str, error: &str) {
        self.skipped_while_failing.fetch_add(1, Ordering::Relaxed);
        let known = {
            let mut failing = lock_failing(&self.failing);
            let known = failing.as_deref() == Some(error);
            if !known {
                *failing = Some(error.to_owned());
            }
            known
        };
        if known {
            debug!(redis = %self.addr, key, "cron tick skipped, the cron lock still fails: {error}");
        } else {
            warn!(
                redis = %self.addr,
                key,
                "cannot take the cron lock in Redis at {}: {error}; this engine skips cron ticks \
                 until it can",
                self.addr
            );
        }
    }
}

impl std::fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLock")
            .field("addr", &self.addr)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

fn lock_failing(failing: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    failing.lock().unwrap_or_else(|p| p.into_inner())
}

/// The Redis key of `job_id`'s tick at `tick`.
fn redis_lock_key(job_id: &str, tick: DateTime<Utc>) -> String {
    format!("fnmesh:cron:{job_id}:{}", tick.timestamp_millis())
}

impl CronLock for RedisLock {
    fn try_acquire(
        &self,
        job_id: &str,
        tick: DateTime<Utc>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        let key = redis_lock_key(job_id, tick);
        Box::pin(async move {
            let answer = tokio::time::timeout(REDIS_ATTEMPT_TIMEOUT, self.set_if_absent(&key))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer within {} s",
                        REDIS_ATTEMPT_TIMEOUT.as_secs()
                    ))
                });
            match answer {
                Ok(won) => {
                    self.succeeded();
                    won
                }
                Err(error) => {
                    self.failed(&key, &error);
                    false
                }
            }
        })
    }
}

/// What a job does when it fires: the engine calls the condition function (if any) and then the
/// bound function with the payload (PROTOCOL.md 6.4 shape); the future resolves when the call has
/// finished (its result is ignored).
pub type Fire = Arc<dyn Fn(Value) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What one job's loop did, returned when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobStats {
    /// Ticks fired (lock won, [`Fire`] called).
    pub fired: u64,
    /// Ticks whose lock another engine won.
    pub lock_lost: u64,
    /// Ticks that passed while a run or a stall held the loop, and were not fired.
    pub skipped: u64,
}

/// Longest single sleep: the wall clock is re-read at least this often, so a clock step (NTP,
/// suspend) delays a tick by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Skipped ticks counted per occurrence; past this the log says "at least". Bounds the work after
/// a long suspend on a dense schedule (a week of every-second ticks would be 600k steps).
const MAX_COUNTED_SKIPS: u64 = 10_000;

/// Runs one job on the system clock; see [`run_job_with_clock`].
pub async fn run_job(
    job_id: String,
    schedule: CronSchedule,
    lock: Arc<dyn CronLock>,
    fire: Fire,
    stop: watch::Receiver<bool>,
) -> JobStats {
    run_job_with_clock(job_id, schedule, lock, fire, stop, Arc::new(SystemClock)).await
}

/// Runs one job until `stop` holds `true` (or its sender is dropped), or until the schedule has no
/// future time (logged at info).
///
/// Each round: compute the next time from `clock`, sleep until it (`tokio::time::sleep_until`,
/// re-reading the clock at least every minute), take `lock` for that tick (lost ⇒ no fire), then
/// await `fire` with `{"trigger":"cron","job_id","scheduled_time","actual_time"}` (RFC 3339, UTC,
/// milliseconds). Runs never overlap: the next time is computed after the run has finished,
/// strictly after the later of now and the tick just handled, so no tick fires twice. Ticks that
/// came due in between (a long run, a stall, a clock step) are not fired late: each such
/// occurrence logs one warning naming the job and the number skipped. The tick the loop was
/// sleeping for still fires when the wake-up is late; its `actual_time` shows by how much.
///
/// Stopping interrupts a sleep or a lock attempt at once; a run already in progress finishes
/// first (abort the task to cut it short).
pub async fn run_job_with_clock(
    job_id: String,
    schedule: CronSchedule,
    lock: Arc<dyn CronLock>,
    fire: Fire,
    mut stop: watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
) -> JobStats {
    let mut stats = JobStats::default();
    // The latest tick already handled (fired or lost to another engine).
    let mut handled: Option<DateTime<Utc>> = None;
    loop {
        if stop_requested(&stop) {
            debug!(job_id = %job_id, "cron job stopped");
            break;
        }
        let now = clock.now();
        let mut from = now;
        if let Some(previous) = handled {
            let skipped = schedule.count_between(previous, now, MAX_COUNTED_SKIPS);
            if skipped > 0 {
                stats.skipped += skipped;
                let at_least = if skipped == MAX_COUNTED_SKIPS {
                    "at least "
                } else {
                    ""
                };
                warn!(
                    job_id = %job_id,
                    skipped,
                    "cron job {job_id}: skipped {at_least}{skipped} tick(s) that came due while \
                     the previous run or a stall held the loop"
                );
            }
            // The clock may have stepped back: never go back to a tick already handled.
            from = from.max(previous);
        }
        let Some(tick) = schedule.next_after(from) else {
            info!(
                job_id = %job_id,
                expression = %schedule.expression(),
                "cron job {job_id} has no future fire time: stopping it"
            );
            break;
        };
        if !sleep_until_wall(clock.as_ref(), tick, &mut stop).await {
            debug!(job_id = %job_id, "cron job stopped");
            break;
        }
        let won = tokio::select! {
            won = lock.try_acquire(&job_id, tick) => won,
            () = stopped(&mut stop) => {
                debug!(job_id = %job_id, "cron job stopped");
                break;
            }
        };
        handled = Some(tick);
        if !won {
            stats.lock_lost += 1;
            debug!(job_id = %job_id, tick = %tick, "cron tick taken by another engine");
            continue;
        }
        let payload = json!({
            "trigger": "cron",
            "job_id": job_id,
            "scheduled_time": rfc3339(tick),
            "actual_time": rfc3339(clock.now()),
        });
        stats.fired += 1;
        fire(payload).await;
    }
    stats
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn stop_requested(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Resolves once `stop` holds `true` or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped: nobody can restart the job, so stop too.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Sleeps until `clock` reads `at` or later; false if stopped first.
async fn sleep_until_wall(
    clock: &dyn Clock,
    at: DateTime<Utc>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        // A negative remainder (the tick is due) fails the conversion.
        let left = match (at - clock.now()).to_std() {
            Ok(left) if !left.is_zero() => left,
            _ => return true,
        };
        let deadline = tokio::time::Instant::now() + left.min(MAX_SLEEP);
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = stopped(stop) => return false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The trigger type
// ---------------------------------------------------------------------------------------------

/// A binding's config (PROTOCOL.md 6.4, plus fnmesh's `timezone`).
#[derive(serde::Deserialize)]
struct CronConfig {
    expression: Option<String>,
    condition_function_id: Option<String>,
    timezone: Option<String>,
}

struct Job {
    stop: watch::Sender<bool>,
}

/// The `cron` trigger type: one [`run_job`] loop per binding, stopped when the binding goes.
pub struct CronTrigger {
    engine: WeakEngineRef,
    lock: Arc<dyn CronLock>,
    jobs: Mutex<HashMap<String, Job>>,
}

impl CronTrigger {
    pub(crate) fn new(engine: WeakEngineRef, lock: Arc<dyn CronLock>) -> Arc<CronTrigger> {
        Arc::new(CronTrigger {
            engine,
            lock,
            jobs: Mutex::new(HashMap::new()),
        })
    }

    /// Stops every job (engine shutdown); a run in progress finishes on its own.
    pub(crate) fn shutdown(&self) {
        for (_, job) in lock_jobs(&self.jobs).drain() {
            let _ = job.stop.send(true);
        }
    }

    /// Number of running jobs.
    pub fn job_count(&self) -> usize {
        lock_jobs(&self.jobs).len()
    }

    fn start(&self, binding: Arc<TriggerBinding>) -> Result<(), String> {
        let config: CronConfig = serde_json::from_str(binding.config.get())
            .map_err(|e| format!("invalid cron trigger config: {e}"))?;
        let expression = config
            .expression
            .ok_or_else(|| "invalid cron trigger config: expression is required".to_owned())?;
        let schedule = CronSchedule::parse(&expression, config.timezone.as_deref())?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "cron jobs need the engine's runtime".to_owned())?;
        let fire = fire_binding(
            self.engine.clone(),
            binding.clone(),
            config.condition_function_id,
        );
        let (stop, stopped) = watch::channel(false);
        let previous = lock_jobs(&self.jobs).insert(binding.id.clone(), Job { stop });
        if let Some(previous) = previous {
            let _ = previous.stop.send(true);
        }
        info!(job_id = %binding.id, expression = %schedule.expression(), timezone = schedule.timezone(), function_id = %binding.function_id, "cron job scheduled");
        runtime.spawn(run_job(
            binding.id.clone(),
            schedule,
            self.lock.clone(),
            fire,
            stopped,
        ));
        Ok(())
    }
}

impl TriggerProvider for Arc<CronTrigger> {
    fn register(&self, binding: Arc<TriggerBinding>, ack: TriggerAck) {
        match self.start(binding) {
            Ok(()) => ack.accept(),
            Err(reason) => ack.refuse(reason),
        }
    }

    fn unregister(&self, binding: &TriggerBinding) {
        if let Some(job) = lock_jobs(&self.jobs).remove(&binding.id) {
            let _ = job.stop.send(true);
            info!(job_id = %binding.id, "cron job removed");
        }
    }
}

/// One fire of a binding: its condition (JSON `false` or an error skips), then its function,
/// in the binding's namespace with its metadata. Results are ignored; failures are logged.
fn fire_binding(
    engine: WeakEngineRef,
    binding: Arc<TriggerBinding>,
    condition: Option<String>,
) -> Fire {
    Arc::new(move |payload: Value| {
        let engine = engine.clone();
        let binding = binding.clone();
        let condition = condition.clone();
        Box::pin(async move {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let Ok(data) = serde_json::value::to_raw_value(&payload) else {
                return;
            };
            let options = || CallOptions {
                namespace: Some(binding.namespace.clone()),
                metadata: binding.metadata.clone(),
                ..CallOptions::default()
            };
            if let Some(condition) = &condition {
                match engine.call_with(condition, data.clone(), options()).await {
                    Outcome::Success(result) if condition_skips(result.as_deref()) => {
                        debug!(job_id = %binding.id, "cron run skipped by its condition");
                        return;
                    }
                    Outcome::Success(_) => {}
                    Outcome::Failure(e) => {
                        warn!(job_id = %binding.id, code = %e.code, "cron condition failed, run skipped: {}", e.message);
                        return;
                    }
                }
            }
            if let Outcome::Failure(e) = engine
                .call_with(&binding.function_id, data, options())
                .await
            {
                warn!(job_id = %binding.id, function_id = %binding.function_id, code = %e.code, "cron run failed: {}", e.message);
            }
        })
    })
}

fn lock_jobs(
    jobs: &Mutex<HashMap<String, Job>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
    jobs.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn next(expression: &str, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        CronSchedule::parse(expression, None)
            .unwrap()
            .next_after(after)
    }

    // ---- parsing and next times ----

    #[test]
    fn six_fields_seconds_first() {
        let after = utc(2026, 3, 10, 12, 0, 0);
        assert_eq!(
            next("*/15 * * * * *", after),
            Some(utc(2026, 3, 10, 12, 0, 15))
        );
        assert_eq!(
            next("0 30 9 * * *", after),
            Some(utc(2026, 3, 11, 9, 30, 0))
        );
        let s = CronSchedule::parse("  0 30 9 * * *\n", None).unwrap();
        assert_eq!(s.expression(), "0 30 9 * * *");
        assert_eq!(s.timezone(), "UTC");
    }

    #[test]
    fn seven_fields_with_year() {
        let after = utc(2026, 3, 10, 12, 0, 0);
        assert_eq!(
            next("0 0 0 1 1 * 2027", after),
            Some(utc(2027, 1, 1, 0, 0, 0))
        );
        // A past year parses but never fires.
        assert_eq!(next("0 0 0 1 1 * 2020", after), None);
        assert_eq!(next("0 0 0 31 2 *", after), None);
    }

    #[test]
    fn shorthands() {
        let after = utc(2026, 3, 10, 12, 34, 56);
        assert_eq!(next("@hourly", after), Some(utc(2026, 3, 10, 13, 0, 0)));
        assert_eq!(next("@daily", after), Some(utc(2026, 3, 11, 0, 0, 0)));
        assert_eq!(next("@monthly", after), Some(utc(2026, 4, 1, 0, 0, 0)));
        assert_eq!(next("@yearly", after), Some(utc(2027, 1, 1, 0, 0, 0)));
        // 2026-03-15 is a Sunday.
        assert_eq!(next("@weekly", after), Some(utc(2026, 3, 15, 0, 0, 0)));
        let e = CronSchedule::parse("@every 5s", None).unwrap_err();
        assert!(e.contains("'@every 5s'") && e.contains("@hourly"), "{e}");
    }

    #[test]
    fn names_of_days_and_months() {
        // 2026-03-13 is a Friday.
        let friday_noon = utc(2026, 3, 13, 12, 0, 0);
        assert_eq!(
            next("0 0 9 * * MON-FRI", friday_noon),
            Some(utc(2026, 3, 16, 9, 0, 0))
        );
        assert_eq!(
            next("0 0 9 * * Sat,Sun", friday_noon),
            Some(utc(2026, 3, 14, 9, 0, 0))
        );
        assert_eq!(
            next("0 0 9 1 JAN *", friday_noon),
            Some(utc(2027, 1, 1, 9, 0, 0))
        );
        assert_eq!(
            next("0 0 9 1 JUN-AUG ?", friday_noon),
            Some(utc(2026, 6, 1, 9, 0, 0))
        );
    }

    #[test]
    fn five_field_crontab_line_is_refused_with_a_clear_message() {
        let e = CronSchedule::parse("*/5 * * * *", None).unwrap_err();
        assert!(e.contains("'*/5 * * * *'"), "{e}");
        assert!(e.contains("6 or 7"), "{e}");
        assert!(e.contains("seconds first"), "{e}");
        assert!(e.contains("'0 */5 * * * *'"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        // Names in a 5-field line would otherwise give the crate's month-name complaint.
        let e = CronSchedule::parse("0 9 * * MON-FRI", None).unwrap_err();
        assert!(e.contains("6 or 7"), "{e}");
    }

    #[test]
    fn blank_and_garbage_are_refused() {
        for blank in ["", "   ", "\t\n"] {
            let e = CronSchedule::parse(blank, None).unwrap_err();
            assert_eq!(e, "cron expression is empty");
        }
        let e = CronSchedule::parse("garbage", None).unwrap_err();
        assert!(e.starts_with("invalid cron expression 'garbage': "), "{e}");
        assert!(e.contains("has 1 field,") && e.contains("6 or 7"), "{e}");

        let e = CronSchedule::parse("0 61 * * * *", None).unwrap_err();
        assert!(
            e.starts_with("invalid cron expression '0 61 * * * *': "),
            "{e}"
        );
        assert!(e.contains("Minutes") && e.contains("61"), "{e}");
        assert!(!e.contains('\n'), "{e}");

        let e = CronSchedule::parse("0 0 9 * * FUNDAY", None).unwrap_err();
        assert!(e.contains("FUNDAY"), "{e}");

        let e = CronSchedule::parse("0 0 9 * * * 2026 1", None).unwrap_err();
        assert!(e.contains("8 fields"), "{e}");

        // Six fields whose syntax is wrong: the crate only points at the place.
        let e = CronSchedule::parse("0 0 9 * * %", None).unwrap_err();
        assert!(e.contains("column 11"), "{e}");
    }

    #[test]
    fn timezone_paris_winter_and_summer() {
        let s = CronSchedule::parse("0 0 9 * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(s.timezone(), "Europe/Paris");
        // Winter: CET, UTC+1.
        assert_eq!(
            s.next_after(utc(2026, 1, 15, 12, 0, 0)),
            Some(utc(2026, 1, 16, 8, 0, 0))
        );
        // Summer: CEST, UTC+2.
        assert_eq!(
            s.next_after(utc(2026, 7, 15, 12, 0, 0)),
            Some(utc(2026, 7, 16, 7, 0, 0))
        );
        // Across the spring change (2026-03-29).
        assert_eq!(
            s.next_after(utc(2026, 3, 28, 8, 0, 0)),
            Some(utc(2026, 3, 29, 7, 0, 0))
        );
    }

    #[test]
    fn timezone_repeated_hour_stays_strictly_after() {
        // 2026-10-25 02:30 happens twice in Paris: 00:30Z (CEST) and 01:30Z (CET).
        let s = CronSchedule::parse("0 30 2 * * *", Some("Europe/Paris")).unwrap();
        let first = utc(2026, 10, 25, 0, 30, 0);
        assert_eq!(s.next_after(utc(2026, 10, 25, 0, 0, 0)), Some(first));
        // From inside the repeated hour, the earlier 02:30 is already past.
        assert_eq!(
            s.next_after(utc(2026, 10, 25, 1, 10, 0)),
            Some(utc(2026, 10, 25, 1, 30, 0))
        );
        // Right after the first one, the next is the next day.
        assert_eq!(s.next_after(first), Some(utc(2026, 10, 26, 1, 30, 0)));
    }

    #[test]
    fn unknown_timezone_is_named() {
        let e = CronSchedule::parse("0 0 9 * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(e.contains("'Mars/Olympus'"), "{e}");
        let e = CronSchedule::parse("0 0 9 * * *", Some("")).unwrap_err();
        assert!(e.contains("unknown timezone ''"), "{e}");
        // The expression is still checked when the zone is fine.
        assert!(CronSchedule::parse("nope", Some("UTC")).is_err());
    }

    #[test]
    fn next_after_is_strictly_after() {
        let on_tick = utc(2026, 3, 10, 12, 0, 0);
        assert_eq!(
            next("* * * * * *", on_tick),
            Some(utc(2026, 3, 10, 12, 0, 1))
        );
        assert_eq!(
            next("0 0 12 * * *", on_tick),
            Some(utc(2026, 3, 11, 12, 0, 0))
        );
        // Between two ticks, the following one (not a second later).
        let mid = on_tick + TimeDelta::milliseconds(500);
        assert_eq!(next("* * * * * *", mid), Some(utc(2026, 3, 10, 12, 0, 1)));
        let just_before = on_tick - TimeDelta::milliseconds(1);
        assert_eq!(next("0 0 12 * * *", just_before), Some(on_tick));
    }

    #[test]
    fn count_between_is_half_open() {
        let s = CronSchedule::parse("* * * * * *", None).unwrap();
        let t = utc(2026, 3, 10, 12, 0, 0);
        assert_eq!(s.count_between(t, t, 100), 0);
        assert_eq!(s.count_between(t, t + TimeDelta::seconds(3), 100), 3);
        assert_eq!(s.count_between(t, t + TimeDelta::seconds(3), 2), 2);
    }

    // ---- the job loop, on tokio's paused clock ----

    const JOB: &str = "job-1";

    type Payloads = Arc<Mutex<Vec<Value>>>;

    /// A `Fire` that records each payload and then takes `run_for`.
    fn recording_fire(run_for: Duration) -> (Fire, Payloads) {
        let payloads: Payloads = Arc::default();
        let sink = payloads.clone();
        let fire: Fire = Arc::new(move |payload| {
            sink.lock().unwrap().push(payload);
            Box::pin(tokio::time::sleep(run_for))
        });
        (fire, payloads)
    }

    fn field(payload: &Value, name: &str) -> String {
        payload[name].as_str().unwrap().to_owned()
    }

    fn scheduled(payloads: &Payloads) -> Vec<String> {
        let payloads = payloads.lock().unwrap();
        payloads
            .iter()
            .map(|p| field(p, "scheduled_time"))
            .collect()
    }

    fn start(
        expression: &str,
        wall: DateTime<Utc>,
        lock: Arc<dyn CronLock>,
        fire: Fire,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<JobStats>) {
        start_with_clock(
            expression,
            Arc::new(TokioClock::starting_at(wall)),
            lock,
            fire,
        )
    }

    fn start_with_clock(
        expression: &str,
        clock: Arc<dyn Clock>,
        lock: Arc<dyn CronLock>,
        fire: Fire,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<JobStats>) {
        let schedule = CronSchedule::parse(expression, None).unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let job = run_job_with_clock(JOB.to_owned(), schedule, lock, fire, stop_rx, clock);
        (stop_tx, tokio::spawn(job))
    }

    async fn sleep_ms(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Captures the events emitted on this thread (the tests run on a current-thread runtime).
    #[derive(Default, Clone)]
    struct Captured(Arc<Mutex<Vec<(tracing::Level, String)>>>);

    impl Captured {
        fn lines(&self, level: tracing::Level) -> Vec<String> {
            let events = self.0.lock().unwrap();
            events
                .iter()
                .filter(|(l, _)| *l == level)
                .map(|(_, text)| text.clone())
                .collect()
        }
    }

    struct Fields(String);

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            use std::fmt::Write;
            let _ = write!(self.0, " {}={:?}", field.name(), value);
        }
    }

    impl tracing::Subscriber for Captured {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            let level = *event.metadata().level();
            self.0.lock().unwrap().push((level, fields.0));
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[tokio::test(start_paused = true)]
    async fn fires_every_second_with_the_payload() {
        let (fire, payloads) = recording_fire(Duration::ZERO);
        let wall = utc(2026, 3, 10, 12, 0, 0) + TimeDelta::milliseconds(250);
        let (stop, job) = start("* * * * * *", wall, Arc::new(LocalLock), fire);
        sleep_ms(3_500).await;
        stop.send(true).unwrap();
        let stats = job.await.unwrap();

        assert_eq!(
            stats,
            JobStats {
                fired: 3,
                lock_lost: 0,
                skipped: 0
            }
        );
        let payloads = payloads.lock().unwrap();
        let expected = [
            "2026-03-10T12:00:01.000Z",
            "2026-03-10T12:00:02.000Z",
            "2026-03-10T12:00:03.000Z",
        ];
        assert_eq!(payloads.len(), expected.len());
        for (payload, time) in payloads.iter().zip(expected) {
            assert_eq!(payload.as_object().unwrap().len(), 4, "{payload}");
            assert_eq!(payload["trigger"], "cron");
            assert_eq!(payload["job_id"], JOB);
            assert_eq!(field(payload, "scheduled_time"), time);
            // Paused time wakes the loop exactly on the tick.
            assert_eq!(field(payload, "actual_time"), time);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn runs_never_overlap_and_skipped_ticks_are_logged() {
        let captured = Captured::default();
        let _guard = tracing::subscriber::set_default(captured.clone());

        let in_flight = Arc::new(AtomicUsize::new(0));
        let most_in_flight = Arc::new(AtomicUsize::new(0));
        let payloads: Payloads = Arc::default();
        let fire: Fire = {
            let (in_flight, most, payloads) =
                (in_flight.clone(), most_in_flight.clone(), payloads.clone());
            Arc::new(move |payload| {
                let (in_flight, most) = (in_flight.clone(), most.clone());
                payloads.lock().unwrap().push(payload);
                Box::pin(async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    sleep_ms(2_500).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                })
            })
        };
        let (stop, job) = start(
            "* * * * * *",
            utc(2026, 3, 10, 12, 0, 0),
            Arc::new(LocalLock),
            fire,
        );
        // Runs at :01, :04 and :07 (each ends 2.5 s later); :02 :03, :05 :06, :08 :09 are skipped.
        sleep_ms(9_800).await;
        stop.send(true).unwrap();
        let stats = job.await.unwrap();

        assert_eq!(most_in_flight.load(Ordering::SeqCst), 1);
        assert_eq!(
            scheduled(&payloads),
            [
                "2026-03-10T12:00:01.000Z",
                "2026-03-10T12:00:04.000Z",
                "2026-03-10T12:00:07.000Z",
            ]
        );
        assert_eq!(
            stats,
            JobStats {
                fired: 3,
                lock_lost: 0,
                skipped: 6
            }
        );
        let warnings = captured.lines(tracing::Level::WARN);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        for line in &warnings {
            assert!(line.contains("job_id=job-1"), "{line}");
            assert!(line.contains("skipped=2"), "{line}");
            assert!(line.contains("cron job job-1: skipped 2 tick(s)"), "{line}");
        }
    }

    /// A lock that wins only even seconds, and records the ticks it was asked about.
    #[derive(Default)]
    struct EvenSecondsLock(Mutex<Vec<(String, DateTime<Utc>)>>);

    impl CronLock for EvenSecondsLock {
        fn try_acquire(
            &self,
            job_id: &str,
            tick: DateTime<Utc>,
        ) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
            self.0.lock().unwrap().push((job_id.to_owned(), tick));
            Box::pin(async move {
                // A lock that takes time (a Redis round trip).
                sleep_ms(5).await;
                chrono::Timelike::second(&tick) % 2 == 0
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lock_means_no_fire() {
        let (fire, payloads) = recording_fire(Duration::ZERO);
        let lock = Arc::new(EvenSecondsLock::default());
        let (stop, job) = start(
            "* * * * * *",
            utc(2026, 3, 10, 12, 0, 0),
            lock.clone(),
            fire,
        );
        sleep_ms(4_500).await;
        stop.send(true).unwrap();
        let stats = job.await.unwrap();

        let asked = lock.0.lock().unwrap().clone();
        let expected_asks: Vec<_> = (1..=4)
            .map(|s| (JOB.to_owned(), utc(2026, 3, 10, 12, 0, s)))
            .collect();
        assert_eq!(asked, expected_asks);
        assert_eq!(
            scheduled(&payloads),
            ["2026-03-10T12:00:02.000Z", "2026-03-10T12:00:04.000Z"]
        );
        assert_eq!(
            stats,
            JobStats {
                fired: 2,
                lock_lost: 2,
                skipped: 0
            }
        );
        // The lock's round trip shows in actual_time, not in scheduled_time.
        let first = payloads.lock().unwrap()[0].clone();
        assert_eq!(field(&first, "actual_time"), "2026-03-10T12:00:02.005Z");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lock_that_always_refuses_never_fires() {
        struct Never;
        impl CronLock for Never {
            fn try_acquire(
                &self,
                _: &str,
                _: DateTime<Utc>,
            ) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
                Box::pin(std::future::ready(false))
            }
        }
        let (fire, payloads) = recording_fire(Duration::ZERO);
        let (stop, job) = start(
            "*/2 * * * * *",
            utc(2026, 3, 10, 12, 0, 0),
            Arc::new(Never),
            fire,
        );
        sleep_ms(10_500).await;
        stop.send(true).unwrap();
        let stats = job.await.unwrap();
        assert!(payloads.lock().unwrap().is_empty());
        assert_eq!(stats.fired, 0);
        assert_eq!(stats.lock_lost, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_a_sleeping_loop_at_once() {
        let (fire, payloads) = recording_fire(Duration::ZERO);
        let (stop, job) = start(
            "@daily",
            utc(2026, 3, 10, 12, 0, 0),
            Arc::new(LocalLock),
            fire,
        );
        sleep_ms(1_000).await;
        let asked = tokio::time::Instant::now();
        stop.send(true).unwrap();
        let stats = job.await.unwrap();
        // Had the loop missed the stop, the paused clock would have jumped to its next timer.
        assert_eq!(asked.elapsed(), Duration::ZERO);
        assert_eq!(stats, JobStats::default());
        assert!(payloads.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_stop_sender_stops_too() {
        let (fire, _payloads) = recording_fire(Duration::ZERO);
        let (stop, job) = start(
            "@hourly",
            utc(2026, 3, 10, 12, 0, 0),
            Arc::new(LocalLock),
            fire,
        );
        sleep_ms(10).await;
        let asked = tokio::time::Instant::now();
        drop(stop);
        job.await.unwrap();
        assert_eq!(asked.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn already_stopped_fires_nothing() {
        let (fire, payloads) = recording_fire(Duration::ZERO);
        let schedule = CronSchedule::parse("* * * * * *", None).unwrap();
        let (_stop_tx, stop_rx) = watch::channel(true);
        let clock = Arc::new(TokioClock::starting_at(utc(2026, 3, 10, 12, 0, 0)));
        let job = run_job_with_clock(
            JOB.to_owned(),
            schedule,
            Arc::new(LocalLock),
            fire,
            stop_rx,
            clock,
        );
        assert_eq!(job.await, JobStats::default());
        assert!(payloads.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_in_progress_finishes_before_the_loop_stops() {
        let (fire, payloads) = recording_fire(Duration::from_secs(2));
        let (stop, job) = start(
            "* * * * * *",
            utc(2026, 3, 10, 12, 0, 0),
            Arc::new(LocalLock),
            fire,
        );
        sleep_ms(1_500).await;
        let asked = tokio::time::Instant::now();
        stop.send(true).unwrap();
        let stats = job.await.unwrap();
        // The run started at :01 and ends at :03, 1.5 s after the stop.
        assert_eq!(asked.elapsed(), Duration::from_millis(1_500));
        assert_eq!(stats.fired, 1);
        assert_eq!(payloads.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_future_time_ends_the_loop() {
        let captured = Captured::default();
        let _guard = tracing::subscriber::set_default(captured.clone());
        let (fire, payloads) = recording_fire(Duration::ZERO);
        // The last tick of a 7-field schedule, then nothing.
        let (_stop, job) = start(
            "0 0 0 1 1 * 2027",
            utc(2026, 12, 31, 23, 59, 58),
            Arc::new(LocalLock),
            fire,
        );
        let stats = job.await.unwrap();
        assert_eq!(stats.fired, 1);
        assert_eq!(scheduled(&payloads), ["2027-01-01T00:00:00.000Z"]);
        let infos = captured.lines(tracing::Level::INFO);
        assert_eq!(infos.len(), 1, "{infos:?}");
        assert!(
            infos[0].contains("job-1 has no future fire time"),
            "{infos:?}"
        );
    }

    /// A wall clock on tokio time that a test can step, like NTP or a suspend would.
    struct SteppedClock {
        base: TokioClock,
        step: Mutex<TimeDelta>,
    }

    impl SteppedClock {
        fn new(wall: DateTime<Utc>) -> Arc<SteppedClock> {
            Arc::new(SteppedClock {
                base: TokioClock::starting_at(wall),
                step: Mutex::new(TimeDelta::zero()),
            })
        }
        fn step(&self, by: TimeDelta) {
            *self.step.lock().unwrap() += by;
        }
    }

    impl Clock for SteppedClock {
        fn now(&self) -> DateTime<Utc> {
            self.base.now() + *self.step.lock().unwrap()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_forward_clock_step_fires_the_awaited_tick_once_and_skips_the_rest() {
        let (fire, payloads) = recording_fire(Duration::ZERO);
        let clock = SteppedClock::new(utc(2026, 3, 10, 12, 0, 0));
        let (stop, job) = start_with_clock("* * * * * *", clock.clone(), Arc::new(LocalLock), fire);
        sleep_ms(1_500).await;
        clock.step(TimeDelta::seconds(10));
        // Wall 12:00:12.0 when the loop wakes for :02; then :13 on time.
        sleep_ms(1_800).await;
        stop.send(true).unwrap();
        let stats = job.await.unwrap();

        let payloads = payloads.lock().unwrap();
        let times: Vec<_> = payloads
            .iter()
            .map(|p| (field(p, "scheduled_time"), field(p, "actual_time")))
            .collect();
        let pair = |s: &str, a: &str| (s.to_owned(), a.to_owned());
        assert_eq!(
            times,
            [
                pair("2026-03-10T12:00:01.000Z", "2026-03-10T12:00:01.000Z"),
                pair("2026-03-10T12:00:02.000Z", "2026-03-10T12:00:12.000Z"),
                pair("2026-03-10T12:00:13.000Z", "2026-03-10T12:00:13.000Z"),
            ]
        );
        // :03 to :12 came due while the loop was asleep.
        assert_eq!(stats.skipped, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backward_clock_step_does_not_fire_a_tick_twice() {
        let (fire, payloads) = recording_fire(Duration::from_millis(500));
        let clock = SteppedClock::new(utc(2026, 3, 10, 12, 0, 0));
        let (stop, job) = start_with_clock("* * * * * *", clock.clone(), Arc::new(LocalLock), fire);
        // During the run of :02 the wall clock goes back 5 s; the run ends at wall 11:59:57.5.
        sleep_ms(2_250).await;
        clock.step(TimeDelta::seconds(-5));
        // :03 comes 5.5 s later on tokio's clock (8.0), :04 would be at 9.0.
        sleep_ms(6_250).await;
        stop.send(true).unwrap();
        let stats = job.await.unwrap();
        assert_eq!(
            scheduled(&payloads),
            [
                "2026-03-10T12:00:01.000Z",
                "2026-03-10T12:00:02.000Z",
                "2026-03-10T12:00:03.000Z",
            ]
        );
        assert_eq!(stats.skipped, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_sleep_rereads_the_clock() {
        let (fire, payloads) = recording_fire(Duration::ZERO);
        let clock = SteppedClock::new(utc(2026, 3, 10, 8, 0, 0));
        let (stop, job) = start_with_clock("0 0 9 * * *", clock.clone(), Arc::new(LocalLock), fire);
        sleep_ms(10_000).await;
        // A resume from suspend: the wall clock is now past 09:00, the sleep had 59 min to go.
        clock.step(TimeDelta::hours(2));
        sleep_ms(MAX_SLEEP.as_millis() as u64).await;
        stop.send(true).unwrap();
        job.await.unwrap();
        let payloads = payloads.lock().unwrap();
        assert_eq!(payloads.len(), 1);
        assert_eq!(
            field(&payloads[0], "scheduled_time"),
            "2026-03-10T09:00:00.000Z"
        );
        assert_eq!(
            field(&payloads[0], "actual_time"),
            "2026-03-10T10:01:00.000Z"
        );
    }

    #[test]
    fn system_clock_reads_now() {
        let before = Utc::now();
        let read = SystemClock.now();
        assert!(read >= before && read - before < TimeDelta::seconds(5));
    }

    // ---- the Redis lock, against a stand-in server ----

    /// A stand-in for Redis speaking just enough RESP for the lock: `SET key value NX ...` answers
    /// `+OK` the first time a key is set and a null reply after; any other command (the client's
    /// `CLIENT SETINFO` on connecting) answers `+OK`. It records every command.
    #[derive(Clone, Default)]
    struct FakeRedis {
        commands: Arc<Mutex<Vec<Vec<String>>>>,
        keys: Arc<Mutex<HashMap<String, String>>>,
        /// Answers `SET` with an error while true, as a read-only replica does.
        read_only: Arc<AtomicBool>,
    }

    impl FakeRedis {
        /// Serves on a free loopback port; returns the `redis://` URL.
        async fn start(&self) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("redis://{}", listener.local_addr().unwrap());
            tokio::spawn(self.clone().serve(listener));
            url
        }

        async fn serve(self, listener: tokio::net::TcpListener) {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(self.clone().answer(socket));
            }
        }

        async fn answer(self, socket: tokio::net::TcpStream) {
            use tokio::io::AsyncWriteExt;
            let (read, mut write) = socket.into_split();
            let mut read = tokio::io::BufReader::new(read);
            while let Some(command) = read_command(&mut read).await {
                let set = command[0].eq_ignore_ascii_case("SET");
                let reply: &[u8] = if set && self.read_only.load(Ordering::SeqCst) {
                    b"-READONLY You can't write against a read only replica.\r\n"
                } else if set {
                    let mut keys = self.keys.lock().unwrap();
                    if keys.contains_key(&command[1]) {
                        b"$-1\r\n"
                    } else {
                        keys.insert(command[1].clone(), command[2].clone());
                        b"+OK\r\n"
                    }
                } else {
                    b"+OK\r\n"
                };
                self.commands.lock().unwrap().push(command);
                if write.write_all(reply).await.is_err() {
                    return;
                }
            }
        }

        fn sets(&self) -> Vec<Vec<String>> {
            let commands = self.commands.lock().unwrap();
            commands
                .iter()
                .filter(|c| c[0].eq_ignore_ascii_case("SET"))
                .cloned()
                .collect()
        }
    }

    /// One RESP command (an array of bulk strings); `None` at the end of the stream.
    async fn read_command(
        read: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    ) -> Option<Vec<String>> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let mut line = String::new();
        if read.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let count: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
        let mut args = Vec::with_capacity(count);
        for _ in 0..count {
            line.clear();
            read.read_line(&mut line).await.ok()?;
            let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
            let mut bytes = vec![0; len + 2];
            read.read_exact(&mut bytes).await.ok()?;
            bytes.truncate(len);
            args.push(String::from_utf8(bytes).ok()?);
        }
        (!args.is_empty()).then_some(args)
    }

    #[test]
    fn redis_lock_key_names_the_job_and_the_tick_in_unix_milliseconds() {
        assert_eq!(
            redis_lock_key("job-1", utc(2026, 3, 10, 12, 0, 1)),
            "fnmesh:cron:job-1:1773144001000"
        );
    }

    #[tokio::test]
    async fn redis_lock_refuses_what_is_not_a_redis_url() {
        for url in [
            "notaurl",
            "",
            "http://localhost:6379",
            "redis://localhost:6379/not-a-db",
            "rediss://localhost:6379",
        ] {
            let e = RedisLock::new(url).unwrap_err();
            assert!(matches!(e, crate::Error::InvalidArgument(_)), "{url}: {e}");
            assert!(e.to_string().contains("; expected redis://"), "{url}: {e}");
        }
        let e = RedisLock::new("rediss://localhost:6379").unwrap_err();
        assert!(
            e.to_string().contains("TLS (rediss://) is not built in"),
            "{e}"
        );
        let e = RedisLock::new("notaurl").unwrap_err();
        assert!(e.to_string().contains(": Redis URL did not parse; "), "{e}");
        let e = RedisLock::new("redis://:s3cret@localhost:6379/x").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[tokio::test]
    async fn redis_lock_starts_without_reaching_redis() {
        for url in [
            "redis://127.0.0.1:1",
            "redis://user:pw@localhost/2",
            "redis+unix:///nowhere/redis.sock",
        ] {
            let lock = RedisLock::new(url).unwrap();
            assert!(!format!("{lock:?}").contains("pw"));
        }
    }

    #[tokio::test]
    async fn the_first_engine_to_set_a_ticks_key_wins_the_tick() {
        let redis = FakeRedis::default();
        let url = redis.start().await;
        let a = RedisLock::new(&url).unwrap();
        let b = RedisLock::new(&url).unwrap();
        assert_ne!(a.owner(), b.owner());
        let tick = utc(2026, 3, 10, 12, 0, 1);
        assert!(a.try_acquire(JOB, tick).await);
        assert!(!b.try_acquire(JOB, tick).await);
        assert!(!a.try_acquire(JOB, tick).await);
        // The next tick and another job are other keys.
        assert!(b.try_acquire(JOB, tick + TimeDelta::seconds(1)).await);
        assert!(b.try_acquire("job-2", tick).await);

        let sets = redis.sets();
        assert_eq!(sets.len(), 5, "{sets:?}");
        assert_eq!(
            sets[0],
            [
                "SET",
                "fnmesh:cron:job-1:1773144001000",
                a.owner(),
                "NX",
                "PX",
                "600000"
            ]
        );
        assert_eq!(sets[1][2], b.owner());
    }

    #[tokio::test]
    async fn a_failing_redis_skips_ticks_warns_once_per_cause_and_recovers() {
        let captured = Captured::default();
        let _guard = tracing::subscriber::set_default(captured.clone());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let lock = RedisLock::new(&format!("redis://127.0.0.1:{port}")).unwrap();
        let tick = utc(2026, 3, 10, 12, 0, 1);
        let mut second = 0;
        let mut next_tick = || {
            second += 1;
            tick + TimeDelta::seconds(second)
        };
        let mut skipped = 0;
        // Nothing listens on the port.
        for _ in 0..3 {
            assert!(!lock.try_acquire(JOB, next_tick()).await);
            skipped += 1;
        }
        let warnings = captured.lines(tracing::Level::WARN);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains(&format!(
                "cannot take the cron lock in Redis at 127.0.0.1:{port}"
            )),
            "{warnings:?}"
        );

        // A Redis comes up there but refuses writes: another cause, one more warning.
        let redis = FakeRedis::default();
        redis.read_only.store(true, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::spawn(redis.clone().serve(listener));
        while redis.sets().len() < 3 {
            assert!(!lock.try_acquire(JOB, next_tick()).await);
            skipped += 1;
            assert!(skipped < 10, "the lock did not reconnect");
            sleep_ms(20).await;
        }
        let warnings = captured.lines(tracing::Level::WARN);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[1].contains("read only replica"), "{warnings:?}");
        assert!(captured.lines(tracing::Level::INFO).is_empty());

        // It accepts writes again: the next tick is won, and that is logged once.
        redis.read_only.store(false, Ordering::SeqCst);
        assert!(lock.try_acquire(JOB, next_tick()).await);
        assert!(lock.try_acquire(JOB, next_tick()).await);
        assert_eq!(captured.lines(tracing::Level::WARN).len(), 2);
        let infos = captured.lines(tracing::Level::INFO);
        assert_eq!(infos.len(), 1, "{infos:?}");
        assert!(infos[0].contains("works again"), "{infos:?}");
        assert!(
            infos[0].contains(&format!("skipped={skipped}")),
            "{infos:?}"
        );
    }
}
