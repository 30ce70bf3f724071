//! The wall clock a job loop reads.

use chrono::{DateTime, TimeDelta, Utc};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_reads_now() {
        let before = Utc::now();
        let read = SystemClock.now();
        assert!(read >= before && read - before < TimeDelta::seconds(5));
    }
}
