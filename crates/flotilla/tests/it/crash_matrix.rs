//! Crash at every step (issue #5, item 1): a `flotilla server` killed with SIGKILL right
//! after the K-th AWS call of a cluster operation, for every K, converges after a restart.
//!
//! Operations: create-and-deploy of 6 nodes across 3 AZs, scale 6→9, scale 9→4, node rm
//! (6→5), cluster rm. For each, a dry run counts the operation's AWS calls T and checks its
//! end state; then for each crash point K: a fresh moto account and data directory, the
//! precondition built with nothing held (e.g. the deployed 6-node cluster for a scale), the
//! proxy armed to let exactly K calls through and hold the next ones
//! ([`FaultProxy::hold_after`]), the operation started through the API, the server killed
//! with SIGKILL once the K-th call is answered, the held calls dropped (never forwarded),
//! `PRAGMA integrity_check` on the database the kill left, a restart on the same data
//! directory and port, and — once the operation's action has ended — every check of
//! [`Harness::check`]: one VPC, gateway, route table and security group, a subnet per AZ,
//! exactly the target number of running instances balanced across the AZs, each one a
//! `Deployed` node of the cluster in the store, no loose volume, the cluster `Deployed` (or
//! `Terminated`) with the right counts and the action `Success`. Each test prints
//! "<operation>: K of K crash points converged".
//!
//! By default (`./scripts/test`) every third crash point runs (1, 4, 7, …, and T), to stay
//! within a few minutes on two cores. The full matrix, every K from 1 to T:
//!
//! ```text
//! FLOTILLA_FULL_CRASH_MATRIX=1 cargo test -p flotilla --test it crash_matrix -- --nocapture
//! ```
//!
//! Design decisions:
//! * "Right after the K-th call" is made deterministic by the proxy rather than by timing:
//!   the first K calls (by arrival) are answered, later ones wait at the proxy and never
//!   reach moto, so the kill always lands with exactly K calls done. The server gets 100 ms
//!   to act on the K-th answer (write to its database, start the next step) before the kill.
//! * Crash points run two at a time (`FLOTILLA_CRASH_MATRIX_PARALLEL` changes it), and the
//!   operations one at a time (a process-wide lock), each point in its own moto account.
//! * Failures are collected, not raised at once, so one run reports every crash point that
//!   did not converge, with the problems found.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ops::{CONVERGE_LIMIT, Expect, Harness};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create6,
    Scale6To9,
    Scale9To4,
    NodeRm,
    ClusterRm,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create6 => "create-and-deploy 6",
            Op::Scale6To9 => "scale 6→9",
            Op::Scale9To4 => "scale 9→4",
            Op::NodeRm => "node rm",
            Op::ClusterRm => "cluster rm",
        }
    }
}

/// What the operation starts from.
struct Precondition {
    cluster: String,
    /// The node a node rm removes.
    node: Option<String>,
}

async fn prepare(h: &Harness, op: Op) -> Precondition {
    let size = if op == Op::Scale9To4 { 9 } else { 6 };
    let cluster = h.create_cluster("matrix", size).await;
    if op == Op::Create6 {
        return Precondition {
            cluster,
            node: None,
        };
    }
    let action = h.deploy(&cluster).await;
    h.wait_success(&action, "the precondition's deploy").await;
    h.settled(&cluster).await;
    let node = if op == Op::NodeRm {
        let mut nodes: Vec<String> = h
            .nodes_of(&cluster)
            .await
            .iter()
            .filter(|n| n["state"] == "Deployed")
            .filter_map(|n| n["resource_uri"].as_str().map(str::to_owned))
            .collect();
        nodes.sort();
        nodes.into_iter().next()
    } else {
        None
    };
    Precondition { cluster, node }
}

/// Starts the operation; its action's path and the expected end.
async fn begin(h: &Harness, op: Op, pre: &Precondition) -> Expect {
    let (action, nodes) = match op {
        Op::Create6 => (h.deploy(&pre.cluster).await, Some(6)),
        Op::Scale6To9 => (h.scale(&pre.cluster, 9).await, Some(9)),
        Op::Scale9To4 => (h.scale(&pre.cluster, 4).await, Some(4)),
        Op::NodeRm => (
            h.remove(pre.node.as_deref().expect("a node to remove"))
                .await,
            Some(5),
        ),
        Op::ClusterRm => (h.remove(&pre.cluster).await, None),
    };
    Expect {
        cluster: pre.cluster.clone(),
        nodes,
        action,
    }
}

/// The operation without a crash: its number of AWS calls T.
async fn dry_run(op: Op) -> u64 {
    let h = Harness::start(&[]).await;
    let pre = prepare(&h, op).await;
    h.proxy.clear_log();
    let expect = begin(&h, op, &pre).await;
    h.wait_success(&expect.action, op.name()).await;
    // Let anything still in flight finish before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = h.proxy.total() as u64;
    let problems = h.check(&expect).await;
    assert!(
        problems.is_empty(),
        "{} without a crash: {problems:#?}\n{}",
        op.name(),
        h.logs()
    );
    eprintln!(
        "{}: {total} AWS calls without a crash: {:?}",
        op.name(),
        h.proxy.counts_by_action()
    );
    total
}

/// One crash point; the problems found (empty: converged).
async fn crash_at(op: Op, k: u64) -> Vec<String> {
    let mut h = Harness::start(&[]).await;
    let pre = prepare(&h, op).await;
    h.proxy.hold_after(k);
    let expect = begin(&h, op, &pre).await;
    let mut problems = Vec::new();
    if !h.proxy.wait_held(CONVERGE_LIMIT).await {
        // Fewer calls than the dry run made; crash anyway, at the end.
        problems.push(format!(
            "only {:?} calls were made (wanted {k}); killed at the end instead",
            h.proxy.held_progress()
        ));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.kill().await;
    h.proxy.release_held();
    match h.integrity_check() {
        Some(Ok(())) => {}
        Some(Err(e)) => problems.push(format!("integrity_check after the kill: {e}")),
        None => eprintln!("sqlite3 is missing: the database check is skipped"),
    }
    h.restart().await;
    let started = Instant::now();
    let action = h.wait_action(&expect.action, CONVERGE_LIMIT).await;
    if action["state"] != "Success" {
        problems.push(format!(
            "the action ended {} after {:?}: {}",
            action["state"],
            started.elapsed(),
            action["logs"]
        ));
    } else {
        problems.extend(h.check(&expect).await);
    }
    if !problems.is_empty() {
        // Only the problems count; the logs help explain them.
        eprintln!("--- {} K={k}: {problems:#?}\n{}", op.name(), h.logs());
    }
    problems
}

/// The crash points to run for an operation of `total` calls.
fn crash_points(total: u64) -> Vec<u64> {
    let full = std::env::var("FLOTILLA_FULL_CRASH_MATRIX").is_ok_and(|v| v == "1");
    let mut points: Vec<u64> = if full {
        (1..=total).collect()
    } else {
        (1..=total).step_by(3).collect()
    };
    if points.last() != Some(&total) && total > 0 {
        points.push(total);
    }
    points
}

/// Runs the matrix of one operation and asserts every crash point converged.
async fn matrix(op: Op) {
    // One operation at a time in this process, whatever the test threads.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let total = dry_run(op).await;
    let points = crash_points(total);
    let parallel: usize = std::env::var("FLOTILLA_CRASH_MATRIX_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .max(1);
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    for chunk in points.chunks(parallel) {
        let runs: Vec<_> = chunk
            .iter()
            .map(|&k| (k, tokio::spawn(crash_at(op, k))))
            .collect();
        for (k, run) in runs {
            let problems = match run.await {
                Ok(problems) => problems,
                Err(error) => vec![format!("panicked: {error}")],
            };
            if !problems.is_empty() {
                failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((k, problems));
            }
        }
    }
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let converged = points.len() - failures.len();
    eprintln!(
        "{}: {converged} of {} crash points converged (T = {total} AWS calls; K = {}) in {:.0?}",
        op.name(),
        points.len(),
        if points.len() as u64 == total {
            "every call".to_owned()
        } else {
            format!("{points:?}")
        },
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{}: {converged} of {} crash points converged; failed: {failures:#?}",
        op.name(),
        points.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_deploy_6() {
    matrix(Op::Create6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_6_to_9() {
    matrix(Op::Scale6To9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_9_to_4() {
    matrix(Op::Scale9To4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_rm() {
    matrix(Op::NodeRm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_rm() {
    matrix(Op::ClusterRm).await;
}
