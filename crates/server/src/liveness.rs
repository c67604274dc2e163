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

    /// One check per expected loop: alive when it beat within `limit` (a loop that never
    /// beat counts from the server's start).
    pub fn checks(&self, limit: Duration) -> Vec<Check> {
        let beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        LOOPS
            .iter()
            .map(|name| {
                let (ok, detail) = match beats.get(name) {
                    Some(at) => (
                        at.elapsed() <= limit,
                        format!("last ran {:.1} s ago", at.elapsed().as_secs_f64()),
                    ),
                    None => (
                        self.started.elapsed() <= limit,
                        format!(
                            "has not run since the server started {} s ago",
                            self.started.elapsed().as_secs()
                        ),
                    ),
                };
                Check {
                    name: format!("{name} loop"),
                    ok,
                    detail,
                }
            })
            .collect()
    }
}

/// One health check: what was checked, whether it passed, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Every check behind `/_ping`, as `/readyz` answers it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    /// Every check passed.
    pub ready: bool,
    pub checks: Vec<Check>,
}

impl Readiness {
    pub fn new(checks: Vec<Check>) -> Readiness {
        Readiness {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// The failed checks with their detail, on one line (for the log).
    pub fn problems(&self) -> String {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_never_beat_or_stopped_beating_fails_its_check() {
        let liveness = Liveness::default();
        let all_ok = |checks: &[Check]| checks.iter().all(|c| c.ok);
        let checks = liveness.checks(STALE_AFTER);
        assert_eq!(checks.len(), LOOPS.len());
        assert!(all_ok(&checks), "a start is not a failure: {checks:?}");
        std::thread::sleep(Duration::from_millis(2));
        let checks = liveness.checks(Duration::from_millis(1));
        assert!(checks.iter().all(|c| !c.ok), "{checks:?}");
        assert!(checks[0].detail.contains("has not run"), "{checks:?}");
        for name in LOOPS {
            liveness.beat(name);
        }
        assert!(all_ok(&liveness.checks(STALE_AFTER)));
        let stale = Readiness::new(liveness.checks(Duration::ZERO));
        assert!(!stale.ready);
        assert!(
            stale.problems().contains("reconcilers loop: last ran"),
            "{}",
            stale.problems()
        );
    }
}
