//! The lease-holding work runner: a piece of work that must have one owner among the
//! replicas sharing a database (a cluster's reconciler, the region observer, the swarm
//! worker, the health sweep) runs only while this replica holds its lease
//! ([`crate::store::Lease`]), and every store write it makes carries the lease's fence.
//!
//! Design decisions:
//! * One mechanism for every kind of work: [`Leases::run`] takes the work's name
//!   (`cluster:<uuid>`, `region:<name>`, `swarms`, `health`) and a function that starts the work's
//!   future. It waits for the lease, runs the future inside the lease's fence scope
//!   ([`crate::store::fenced`]), renews every third of the lease time beside it, and drops
//!   the future — stopping the work at its next `.await` — as soon as a renewal finds the
//!   lease taken over, or when renewals have failed for the whole lease time (the replica
//!   cannot tell whether another took over, so it stops before the lease may be reassigned
//!   by the others' clocks). Then it waits for the lease again. Work that ends on its own
//!   (a cluster terminated) releases its lease.
//! * Safety does not depend on promptness: a replica paused past its lease may still run a
//!   step after it resumes, before its renewal notices; its writes are refused by the fence
//!   ([`crate::store::StoreError::StaleLease`]), and its AWS steps are the idempotent,
//!   find-by-tag kind every pass is made of.
//! * Waiting is cheap: a replica that did not get a lease reads when the holder's lease
//!   expires and tries again just after (at most a third of the lease time later, so a
//!   renewed lease is noticed), so a dead holder's work is taken over within about the
//!   lease time of its last renewal.
//! * The work is restarted from nothing on each tenure: workers are level-triggered and
//!   keep nothing between passes that correctness needs, so a new owner (or the same
//!   replica after a lost lease) simply observes again.
//! * A single replica behaves as before: every lease is free, so the work starts at once.
//!   On SQLite (one file, one server) leases left by a previous process are expired at
//!   start ([`crate::store::Store::expire_all_leases`]), so a restart resumes at once.
//! * `/_ping` fails while lease renewals fail (`check`), and `/metrics` shows what this
//!   replica holds.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::{Lease, Store, fenced};

/// The default lease time (issue #14).
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(15);

/// Milliseconds since the Unix epoch: the lease table's clock.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A fresh replica id: the host name and a random suffix.
pub fn generated_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

/// Why a tenure ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The work returned: the lease was released.
    Finished,
    /// The lease was taken over, or could not be renewed within its time.
    Lost,
}

#[derive(Debug, Default)]
struct State {
    /// The leases held now, by work.
    held: BTreeMap<String, Lease>,
    /// Since when every lease call has failed (cleared by any success).
    failing_since: Option<Instant>,
    /// Tenures that ended because the lease was lost.
    lost: u64,
}

/// This replica's leases: its identity, the lease time, and what it holds.
#[derive(Debug)]
pub struct Leases {
    store: Store,
    replica: String,
    ttl: Duration,
    state: Mutex<State>,
}

impl Leases {
    pub fn new(store: Store, replica: impl Into<String>, ttl: Duration) -> Arc<Leases> {
        Arc::new(Leases {
            store,
            replica: replica.into(),
            ttl,
            state: Mutex::new(State::default()),
        })
    }

    /// This replica's id (a lease's owner).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    fn succeeded(&self) {
        self.lock().failing_since = None;
    }

    fn failed(&self, work: &str, error: &crate::store::StoreError) {
        tracing::warn!(work, %error, "lease call failed");
        self.lock().failing_since.get_or_insert_with(Instant::now);
    }

    /// The works this replica holds now, with their tokens.
    pub fn held(&self) -> Vec<(String, i64)> {
        self.lock()
            .held
            .values()
            .map(|l| (l.work.clone(), l.token))
            .collect()
    }

    /// Tenures ended by a lost lease since the start.
    pub fn lost(&self) -> u64 {
        self.lock().lost
    }

    /// `/_ping`'s lease check: failing when lease calls have failed for a renewal period.
    pub fn check(&self) -> crate::liveness::Check {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> crate::liveness::Check {
        let state = self.lock();
        let failing_for = state
            .failing_since
            .map(|since| now.saturating_duration_since(since));
        let (ok, detail) = match failing_for {
            Some(failing_for) if failing_for >= self.renew_every() => (
                false,
                format!(
                    "lease renewals have failed for {:.1} s",
                    failing_for.as_secs_f64()
                ),
            ),
            _ => (
                true,
                format!(
                    "replica {} holds {} leases (lease time {} s)",
                    self.replica,
                    state.held.len(),
                    self.ttl.as_secs_f64()
                ),
            ),
        };
        crate::liveness::Check {
            name: "leases".to_owned(),
            ok,
            detail,
        }
    }

    /// Runs the work `start()` returns whenever this replica holds the lease on `work`,
    /// until it returns (the lease is then released). Never returns otherwise: drop it to
    /// stop (then call [`Leases::release_all`]).
    pub async fn run<F, Fut>(&self, work: &str, mut start: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            let lease = self.acquire(work).await;
            // Boxed: a worker's future is large, and moving it through the runner's frames
            // would cost its size in stack at each step.
            match self.hold(lease, Box::pin(start())).await {
                Ended::Finished => return,
                Ended::Lost => {
                    tracing::warn!(work, replica = self.replica, "lease lost: work stopped");
                }
            }
        }
    }

    /// [`Leases::run`] for a loop `/_ping` watches ([`crate::liveness`]): while another
    /// replica holds the work, the runner beats for the loop (it is alive, waiting); while
    /// this one holds it, the work beats itself.
    pub async fn run_beating<F, Fut>(
        &self,
        work: &str,
        start: F,
        liveness: &crate::liveness::Liveness,
        loop_name: &'static str,
    ) where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        let beat = async {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticker.tick().await;
                if !self.holds(work) {
                    liveness.beat(loop_name);
                }
            }
        };
        tokio::select! {
            () = self.run(work, start) => {}
            () = beat => {}
        }
    }

    /// Whether this replica holds the lease on `work` now.
    pub fn holds(&self, work: &str) -> bool {
        self.lock().held.contains_key(work)
    }

    /// Waits until this replica holds the lease on `work`.
    async fn acquire(&self, work: &str) -> Lease {
        loop {
            match self
                .store
                .acquire_lease(work, &self.replica, now_ms(), self.ttl_ms())
                .await
            {
                Ok(Some(lease)) => {
                    self.succeeded();
                    if lease.token > 1 {
                        tracing::info!(work, token = lease.token, "lease acquired");
                    }
                    return lease;
                }
                Ok(None) => {
                    self.succeeded();
                    // Try again just after the holder's lease would expire, at most a
                    // renewal period from now (it is probably renewed meanwhile).
                    let wait = match self.store.lease(work).await {
                        Ok(Some(holder)) => Duration::from_millis(
                            u64::try_from(holder.expires_at.saturating_sub(now_ms())).unwrap_or(0),
                        ),
                        _ => Duration::ZERO,
                    };
                    let wait =
                        (wait + Duration::from_millis(20)).clamp(self.ttl / 20, self.renew_every());
                    tokio::time::sleep(wait).await;
                }
                Err(error) => {
                    self.failed(work, &error);
                    tokio::time::sleep(self.renew_every()).await;
                }
            }
        }
    }

    /// Runs `work` under `lease`, renewing it, until the work ends or the lease is lost.
    async fn hold(
        &self,
        mut lease: Lease,
        work: std::pin::Pin<Box<impl Future<Output = ()>>>,
    ) -> Ended {
        let name = lease.work.clone();
        self.lock().held.insert(name.clone(), lease.clone());
        // Measured from before the call that took the lease: the others count its time
        // from later.
        let mut valid_until = Instant::now() + self.ttl - Duration::from_millis(1);
        let mut next_renewal = Instant::now() + self.renew_every();
        let work = fenced(lease.clone(), work);
        let mut work = std::pin::pin!(work);
        let ended = loop {
            tokio::select! {
                // Renewal first: after a pause, the lease is checked before the work goes on.
                biased;
                () = tokio::time::sleep_until(next_renewal.min(valid_until).into()) => {
                    if Instant::now() >= valid_until {
                        // Not renewed within its time (or this replica was paused): another
                        // replica may own the work by now.
                        break Ended::Lost;
                    }
                    let before = Instant::now();
                    match self.store.renew_lease(&mut lease, now_ms(), self.ttl_ms()).await {
                        Ok(true) => {
                            self.succeeded();
                            valid_until = before + self.ttl;
                            next_renewal = before + self.renew_every();
                        }
                        Ok(false) => {
                            self.succeeded();
                            break Ended::Lost;
                        }
                        Err(error) => {
                            self.failed(&name, &error);
                            if Instant::now() >= valid_until {
                                break Ended::Lost;
                            }
                            next_renewal = Instant::now() + (self.ttl / 15).max(Duration::from_millis(50));
                        }
                    }
                }
                () = &mut work => break Ended::Finished,
            }
        };
        {
            let mut state = self.lock();
            state.held.remove(&name);
            if ended == Ended::Lost {
                state.lost += 1;
            }
        }
        if ended == Ended::Finished
            && let Err(error) = self.store.release_lease(&lease).await
        {
            self.failed(&name, &error);
        }
        ended
    }

    /// Releases every lease held (a graceful stop: the others take the work over at once
    /// instead of after the lease time).
    pub async fn release_all(&self) {
        let held: Vec<Lease> = std::mem::take(&mut self.lock().held)
            .into_values()
            .collect();
        for lease in held {
            if let Err(error) = self.store.release_lease(&lease).await {
                self.failed(&lease.work, &error);
            }
        }
    }
}

/// Among replicas, a region's own network is ensured and torn down under the lease
/// `network:<region>`: mutual exclusion, not single-owner work. The lease is renewed by a
/// task of its own while held and released after; if the holder is cancelled instead, the
/// renewals stop with it ([`NetworkHold`]'s drop) and the lease expires by itself. What runs
/// under it tolerates a holder paused past its lease (the network ensure keeps one of any
/// duplicate).
impl flotilla_core::cloud::NetworkLock for Leases {
    fn hold<'a>(
        &'a self,
        region: &'a str,
    ) -> flotilla_core::cloud::BoxFuture<'a, flotilla_core::cloud::Held> {
        Box::pin(async move {
            let lease = self.acquire(&format!("network:{region}")).await;
            let renewer = {
                let (store, mut lease, every, ttl) = (
                    self.store.clone(),
                    lease.clone(),
                    self.renew_every(),
                    self.ttl_ms(),
                );
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        match store.renew_lease(&mut lease, now_ms(), ttl).await {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::warn!(work = lease.work, "a network lease was lost");
                                return;
                            }
                            Err(error) => tracing::warn!(%error, "renewing a network lease"),
                        }
                    }
                })
            };
            Box::new(NetworkHold { lease, renewer }) as flotilla_core::cloud::Held
        })
    }

    fn release(&self, held: flotilla_core::cloud::Held) -> flotilla_core::cloud::BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Ok(hold) = held.downcast::<NetworkHold>() {
                hold.renewer.abort();
                if let Err(error) = self.store.release_lease(&hold.lease).await {
                    self.failed(&hold.lease.work, &error);
                }
            }
        })
    }
}

/// A held network lease and the task renewing it (stopped when this is dropped).
struct NetworkHold {
    lease: Lease,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for NetworkHold {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use crate::store::testing::{self, Backend, store_tests};

    const TTL: Duration = Duration::from_millis(600);

    /// Work that records a write per round until it is stopped; the rounds it made.
    async fn writing_work(store: Store, rounds: Arc<std::sync::atomic::AtomicU32>) {
        loop {
            match store.ensure_agent_secret("x", 0).await {
                Ok(_) => rounds.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                Err(StoreError::StaleLease { .. }) => return,
                Err(error) => panic!("{error}"),
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn a_taken_over_lease_stops_the_work_and_the_holder_changes(backend: Backend) {
        let store = testing::store(backend).await;
        let a = Leases::new((*store).clone(), "a", TTL);
        let b = Leases::new((*store).clone(), "b", TTL);
        let rounds_a = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let rounds_b = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let run_a = {
            let (a, store, rounds) = (a.clone(), (*store).clone(), rounds_a.clone());
            tokio::spawn(async move {
                a.run("work:1", || writing_work(store.clone(), rounds.clone()))
                    .await
            })
        };
        while a.held().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let run_b = {
            let (b, store, rounds) = (b.clone(), (*store).clone(), rounds_b.clone());
            tokio::spawn(async move {
                b.run("work:1", || writing_work(store.clone(), rounds.clone()))
                    .await
            })
        };
        // b waits while a renews.
        while rounds_a.load(std::sync::atomic::Ordering::SeqCst) < 40 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(b.held().is_empty(), "held by a: {:?}", b.held());
        assert_eq!(rounds_b.load(std::sync::atomic::Ordering::SeqCst), 0);
        // a dies (its runner dropped without a release): b takes over after the expiry.
        // (On a loaded machine a may have missed a renewal and taken the lease again
        // meanwhile, with a new token: b's must be newer than any of a's.)
        let a_token = a.held().first().map_or(1, |(_, token)| *token);
        run_a.abort();
        let _ = run_a.await;
        while b.held().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            b.held()[0].1 > a_token,
            "the next tenure's token: {:?} after a's {a_token}",
            b.held()
        );
        while rounds_b.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // a stale tenure's fenced write is refused.
        let stale = Lease {
            work: "work:1".into(),
            owner: "a".into(),
            token: 1,
            expires_at: i64::MAX,
        };
        let refused = fenced(stale, store.ensure_agent_secret("y", 0)).await;
        assert!(
            matches!(refused, Err(StoreError::StaleLease { token: 1, .. })),
            "{refused:?}"
        );
        run_b.abort();
        let _ = run_b.await;
        b.release_all().await;
        assert_eq!(
            store
                .lease("work:1")
                .await
                .expect("read")
                .map(|l| l.expires_at),
            Some(0),
            "released"
        );
    }

    async fn finished_work_releases_its_lease(backend: Backend) {
        let store = testing::store(backend).await;
        let a = Leases::new((*store).clone(), "a", TTL);
        a.run("work:2", || async {}).await;
        let stored = store.lease("work:2").await.expect("read").expect("taken");
        assert_eq!(stored.expires_at, 0);
        assert!(a.held().is_empty());
        assert!(a.check().ok);
    }

    async fn lease_calls_failing_for_a_renewal_period_fail_the_check(backend: Backend) {
        let store = testing::store(backend).await;
        let a = Leases::new((*store).clone(), "a", TTL);
        assert!(a.check().ok);
        let error = StoreError::StaleLease {
            work: "work:3".into(),
            token: 1,
        };
        a.failed("work:3", &error);
        assert!(a.check().ok, "a failure is not yet stuck");
        let stuck = a.check_at(Instant::now() + TTL / 3 + Duration::from_millis(1));
        assert!(!stuck.ok, "{stuck:?}");
        assert!(stuck.detail.contains("renewals have failed"), "{stuck:?}");
        a.succeeded();
        assert!(a.check_at(Instant::now() + TTL).ok, "a success clears it");
    }

    /// Two replicas' network locks on one database: b waits while a holds the region,
    /// across several renewals, and gets it once a releases; a cancelled holder's lease
    /// ends by itself.
    async fn a_regions_network_is_held_by_one_replica_at_a_time(backend: Backend) {
        use flotilla_core::cloud::NetworkLock;
        let store = testing::store(backend).await;
        let a = Leases::new((*store).clone(), "a", TTL);
        let b = Leases::new((*store).clone(), "b", TTL);
        let held = NetworkLock::hold(&*a, "us-east-1").await;
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move {
                let held = NetworkLock::hold(&*b, "us-east-1").await;
                NetworkLock::release(&*b, held).await;
            })
        };
        tokio::time::sleep(TTL * 3).await;
        assert!(
            !waiting.is_finished(),
            "b waits while a holds (and renews) it"
        );
        NetworkLock::release(&*a, held).await;
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("b gets it once a releases")
            .expect("join");
        // A holder dropped without a release (its work was cancelled): the lease expires.
        drop(NetworkLock::hold(&*a, "eu-west-1").await);
        let held =
            tokio::time::timeout(Duration::from_secs(30), NetworkLock::hold(&*b, "eu-west-1"))
                .await
                .expect("the dropped hold expires");
        NetworkLock::release(&*b, held).await;
    }

    store_tests!(
        a_taken_over_lease_stops_the_work_and_the_holder_changes,
        finished_work_releases_its_lease,
        lease_calls_failing_for_a_renewal_period_fail_the_check,
        a_regions_network_is_held_by_one_replica_at_a_time,
    );
}
