//! Whether the server's background loops are alive, for `GET /_ping` (seed 004's monitoring
//! endpoint: 200 only when the server is healthy).
//!
//! Design decisions:
//! * Each loop that must keep running (the reconcilers' supervisor, the node-health watcher,
//!   the swarm worker) beats here at least every second; `/_ping` calls a loop dead when it
//!   has not beaten for [`STALE_AFTER`]. A beat is a map write in memory: nothing to
//!   configure, nothing for a loop to forget to report except by stopping.
//! * The database half of the check (a write transaction) lives in the store; this module
//!   only knows loops.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A loop silent this long is reported dead.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// The loops `/_ping` expects to beat.
pub const LOOPS: [&str; 3] = ["reconcilers", "node health", "swarm worker"];

/// The last beat of every loop.
#[derive(Debug)]
pub struct Liveness {
    /// When the server started: a loop that has not beaten yet counts from here.
    started: Instant,
    beats: Mutex<BTreeMap<&'static str, Instant>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            started: Instant::now(),
            beats: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Liveness {
    /// `name` is alive now.
    pub fn beat(&self, name: &'static str) {
        self.beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, Instant::now());
    }

    /// The expected loops that have not beaten within `limit` (counting from the start for
    /// a loop that never beat), with how long ago they last did.
    pub fn stale(&self, limit: Duration) -> Vec<(&'static str, Option<Duration>)> {
        let beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        LOOPS
            .iter()
            .filter_map(|name| match beats.get(name) {
                Some(at) if at.elapsed() <= limit => None,
                Some(at) => Some((*name, Some(at.elapsed()))),
                None if self.started.elapsed() <= limit => None,
                None => Some((*name, None)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_never_beat_or_stopped_beating_is_stale() {
        let liveness = Liveness::default();
        assert!(
            liveness.stale(STALE_AFTER).is_empty(),
            "a start is not a failure"
        );
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(liveness.stale(Duration::from_millis(1)).len(), LOOPS.len());
        for name in LOOPS {
            liveness.beat(name);
        }
        assert!(liveness.stale(STALE_AFTER).is_empty());
        assert_eq!(liveness.stale(Duration::ZERO).len(), LOOPS.len());
    }
}
