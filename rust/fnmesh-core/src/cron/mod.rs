//! The `cron` trigger's schedule and job loop (docs/protocol.md 6.4).
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
//! [`CronTrigger`] is the trigger provider of the type `cron`; [`CronService`] installs it on an
//! engine (an [`EngineService`](crate::engine::EngineService)).
//!
//! [`CronTrigger`] is the `cron` trigger type the engine installs: one job loop per binding.
//!
//! Files: `schedule.rs` (parsing, next fire time), `error.rs` ([`CronError`]), `clock.rs` (the wall clock), `lock.rs` (who
//! fires a tick), `job.rs` (one job's loop), `trigger.rs` (bindings to jobs).
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use fnmesh_core::cron::CronSchedule;
//!
//! let every_weekday_at_nine = CronSchedule::parse("0 0 9 * * MON-FRI", Some("Europe/Paris"))?;
//! let saturday = Utc.with_ymd_and_hms(2026, 1, 3, 12, 0, 0).unwrap();
//! let monday_nine_paris = Utc.with_ymd_and_hms(2026, 1, 5, 8, 0, 0).unwrap();
//! assert_eq!(every_weekday_at_nine.next_after(saturday), Some(monday_nine_paris));
//! # Ok::<(), fnmesh_core::cron::CronError>(())
//! ```

mod clock;
mod error;
mod job;
mod lock;
mod schedule;
mod service;
#[cfg(test)]
mod test_support;
mod trigger;

pub use clock::{Clock, SystemClock, TokioClock};
pub use error::CronError;
pub use job::{run_job, run_job_with_clock, Fire, JobStats};
pub use lock::{CronLock, LocalLock, RedisLock, REDIS_LOCK_TTL};
pub use schedule::CronSchedule;
pub use service::CronService;
pub use trigger::CronTrigger;
