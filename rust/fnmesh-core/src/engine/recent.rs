//! The recent invocations the console shows ([`Recent`]): a bounded ring of the last calls'
//! function, latency and outcome.
//!
//! Recording is off until someone watches: [`Recent::watch`] (each read of the console's feed)
//! turns it on for [`WATCH_WINDOW`], and the engine's 50 ms sweep turns it off again once that
//! window has passed. While off, a call pays one relaxed atomic load (`recording`) and its
//! pending entry carries `None` instead of a start time; while on, one `Instant::now` at dispatch
//! and a short mutex-guarded push at completion.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Calls kept; older ones fall off.
pub const RECENT_CAPACITY: usize = 200;
/// How long one look at the feed keeps recording on.
pub const WATCH_WINDOW: Duration = Duration::from_secs(30);

/// One finished call.
#[derive(Debug, Clone, Serialize)]
pub struct RecentInvocation {
    /// The function called.
    pub function_id: String,
    /// Its namespace.
    pub namespace: String,
    /// When it finished, milliseconds since the Unix epoch.
    pub finished_at_ms: u64,
    /// From dispatch to its outcome, microseconds.
    pub latency_us: u64,
    /// `ok`, or the error code it failed with.
    pub outcome: String,
}

/// The ring and the switch that keeps it off the hot path while nobody looks.
#[derive(Default)]
pub(crate) struct Recent {
    recording: AtomicBool,
    watched_until: Mutex<Option<Instant>>,
    ring: Mutex<VecDeque<RecentInvocation>>,
}

impl Recent {
    /// The start time to keep with a call being dispatched, when recording.
    #[inline]
    pub(crate) fn start(&self, function_id: &str) -> Option<Instant> {
        // The console's own polling goes through `engine::*`; it would bury the user's calls.
        if self.recording.load(Ordering::Relaxed) && !function_id.starts_with("engine::") {
            Some(Instant::now())
        } else {
            None
        }
    }

    /// Records a finished call that [`Recent::start`] timed.
    pub(crate) fn finish(
        &self,
        started: Option<Instant>,
        function_id: &str,
        namespace: &str,
        outcome: Option<&str>,
    ) {
        let Some(started) = started else { return };
        let entry = RecentInvocation {
            function_id: function_id.to_owned(),
            namespace: namespace.to_owned(),
            finished_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            latency_us: started.elapsed().as_micros() as u64,
            outcome: outcome.unwrap_or("ok").to_owned(),
        };
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == RECENT_CAPACITY {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// Turns recording on for [`WATCH_WINDOW`] from now.
    pub(crate) fn watch(&self) {
        *self.watched_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + WATCH_WINDOW);
        self.recording.store(true, Ordering::Relaxed);
    }

    /// Turns recording off once the window has passed (called by the engine's sweep).
    pub(crate) fn sweep(&self, now: Instant) {
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        let mut until = self.watched_until.lock().unwrap_or_else(|p| p.into_inner());
        if until.is_none_or(|t| now >= t) {
            *until = None;
            self.recording.store(false, Ordering::Relaxed);
        }
    }

    /// The calls kept, newest first.
    pub(crate) fn snapshot(&self) -> Vec<RecentInvocation> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_while_watched_and_stays_bounded() {
        let recent = Recent::default();
        assert!(recent.start("math.add").is_none());
        recent.watch();
        assert!(recent.start("engine::functions::list").is_none());
        for i in 0..RECENT_CAPACITY + 5 {
            let started = recent.start("math.add");
            assert!(started.is_some());
            let outcome = if i % 2 == 0 { None } else { Some("boom") };
            recent.finish(started, "math.add", "default", outcome);
        }
        let snapshot = recent.snapshot();
        assert_eq!(snapshot.len(), RECENT_CAPACITY);
        // Newest first: the last call (i = 204, even) succeeded.
        assert_eq!(snapshot[0].outcome, "ok");
        assert_eq!(snapshot[1].outcome, "boom");
        recent.sweep(Instant::now() + WATCH_WINDOW);
        assert!(recent.start("math.add").is_none());
    }
}
