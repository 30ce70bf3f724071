//! One cron job's loop: sleep until the next tick, take its lock, fire.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::clock::{Clock, SystemClock};
use super::lock::CronLock;
use super::schedule::CronSchedule;

/// What a job does when it fires: the engine calls the condition function (if any) and then the
/// bound function with the payload (docs/protocol.md 6.4 shape); the future resolves when the call has
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron::clock::TokioClock;
    use crate::cron::lock::LocalLock;
    use crate::cron::test_support::{sleep_ms, utc, Captured, JOB};
    use chrono::TimeDelta;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

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
}
