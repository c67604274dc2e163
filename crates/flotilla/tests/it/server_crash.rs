//! A `flotilla server` killed with SIGKILL finishes the work it had accepted.
//!
//! For a handful of crash points K, a fresh moto account and a fresh server deploy a 6-node
//! cluster through the HTTP API; the proxy holds the deploy's K-th AWS call, and once every
//! earlier call has finished the server is killed with SIGKILL while that call is in flight.
//! A new server process on the same data directory and port, with no faults, must resume the
//! busy cluster on its own (nothing is called again by the test) and end with it `Deployed`
//! with 6 nodes, one network and 6 running instances balanced 2/2/2, and the deploy action
//! `Success`. The restart itself proves the SQLite database survives a SIGKILL. Two of the
//! crash points run again with the server on PostgreSQL (`--database postgres://…`, a real
//! server the test kit starts): the store's other dialect, end to end against moto.
//!
//! Design decisions:
//! * The server is the test kit's `ServerProcess`: it kills the process and restarts it on the
//!   same data directory and port, keeping the credentials only the first start printed.
//! * The crash points are a sample (not every call as in `engine.rs`): each costs a server
//!   start, a partial deploy and a restart, and the engine's every-call matrix already covers
//!   the pass itself; this test covers the server's resume-on-start path.
//! * Crash points run two at a time, each in its own moto account, to stay well under the
//!   time budget on two cores.

use std::time::{Duration, Instant};

use flotilla_api::uri;
use flotilla_testkit::inspect::{self, Kind};
use flotilla_testkit::{DatabaseKind, Fault, MotoAccount, Rule};

use crate::support::{Api, server};

/// Crash points: the K-th AWS call of the deploy (a deploy from nothing makes about 25).
const CRASH_POINTS: &[u64] = &[2, 5, 9, 13, 17, 20];
const CONVERGE_LIMIT: Duration = Duration::from_secs(60);

/// One crash point, from a fresh account to the checks; panics with the reason on failure.
async fn crash_at(k: u64) {
    crash_at_on(k, DatabaseKind::from_env()).await;
}

/// [`crash_at`] with the server on `database`.
async fn crash_at_on(k: u64, database: DatabaseKind) {
    let MotoAccount {
        proxy, inspector, ..
    } = MotoAccount::start().await;
    let mut server = server(&proxy.endpoint())
        .database(database)
        .access_key_id("AKIAE2ECRASH")
        .args(["--node-ready", "running"])
        .start_limit(Duration::from_secs(30))
        .start()
        .await
        .unwrap_or_else(|e| panic!("k={k}: {e:#}"));
    let api = Api::of(&server, reqwest::Client::new());
    let uuid = api.create_cluster(&format!("crash{k}"), 6).await;
    let path = uri::node_cluster(&uuid);

    proxy.clear_log();
    proxy.add_rule(
        Rule::any()
            .nth(k)
            .fault(Fault::Delay(Duration::from_secs(60))),
    );
    let (status, body, action_uri) = api
        .call_with_action(reqwest::Method::POST, &format!("{path}deploy/"), None)
        .await;
    assert_eq!(status, 202, "k={k}: {body}");
    let action_uri = action_uri.expect("the deploy's action");
    held_at(&proxy, k, CONVERGE_LIMIT, || server.log()).await;
    // The held call keeps the deploy from finishing: this is a crash mid-deploy.
    let (_, before) = api.call(reqwest::Method::GET, &path, None).await;
    assert_eq!(before["state"], "Deploying", "k={k}: {before:#}");
    server.kill().await;
    proxy.clear_rules();

    // A new process on the same database and port resumes the deploy by itself.
    server
        .restart()
        .await
        .unwrap_or_else(|e| panic!("k={k}: {e:#}"));
    let started = Instant::now();
    let cluster = loop {
        let (status, cluster) = api.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "k={k}: {cluster}");
        if cluster["state"] == "Deployed" && cluster["current_num_nodes"] == 6 {
            break cluster;
        }
        assert!(
            started.elapsed() < CONVERGE_LIMIT,
            "k={k}: never Deployed with 6 nodes: {cluster:#}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(cluster["target_num_nodes"], 6, "k={k}");
    let (_, action) = api.call(reqwest::Method::GET, &action_uri, None).await;
    assert_eq!(action["state"], "Success", "k={k}: {action:#}");

    six_nodes_and_one_network(&inspector.endpoint(), &format!("k={k}")).await;
}

/// What a 6-node deploy from nothing leaves in the account when nothing was created twice:
/// 6 running instances balanced 2/2/2, and one VPC, 3 subnets, one gateway, one route table
/// and one security group of the installation. `what` names the run in failures.
/// Waits until every call before the K-th (which `proxy` holds) has finished and nothing
/// moves any more; fails with `logs()` after `limit`.
pub(crate) async fn held_at(
    proxy: &flotilla_testkit::FaultProxy,
    k: u64,
    limit: Duration,
    logs: impl Fn() -> String,
) {
    let started = Instant::now();
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let done = proxy.total();
        if done as u64 >= k - 1 && done == last {
            return;
        }
        last = done;
        assert!(
            started.elapsed() < limit,
            "k={k}: the deploy stalled at {done} calls:\n{}",
            logs()
        );
    }
}

pub(crate) async fn six_nodes_and_one_network(inspector: &str, what: &str) {
    let ec2 = inspect::ec2_client(inspector, "us-east-1").await;
    let per_zone = inspect::instances_per_zone(&ec2, &["running"]).await;
    assert_eq!(
        per_zone.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{what}: {per_zone:?}"
    );
    let owner = owner_of_instances(&ec2).await;
    for (kind, count) in [
        (Kind::Vpc, 1),
        (Kind::Subnet, 3),
        (Kind::InternetGateway, 1),
        (Kind::RouteTable, 1),
        (Kind::SecurityGroup, 1),
    ] {
        let ids = inspect::owned(&ec2, &owner, kind).await;
        assert_eq!(ids.len(), count, "{what}: {kind:?} {ids:?}");
    }
}

/// The `flotilla:owner` tag of the account's running instances (exactly one installation).
async fn owner_of_instances(ec2: &aws_sdk_ec2::Client) -> String {
    let output = ec2
        .describe_instances()
        .send()
        .await
        .expect("DescribeInstances");
    let owners: std::collections::BTreeSet<String> = output
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| i.tags())
        .filter(|t| t.key() == Some("flotilla:owner"))
        .filter_map(|t| t.value().map(str::to_owned))
        .collect();
    assert_eq!(owners.len(), 1, "{owners:?}");
    owners.into_iter().next().expect("one owner")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_deploy_finishes_it_after_a_restart() {
    let mut converged = 0;
    for pair in CRASH_POINTS.chunks(2) {
        let runs: Vec<_> = pair.iter().map(|&k| tokio::spawn(crash_at(k))).collect();
        for (run, k) in runs.into_iter().zip(pair) {
            match run.await {
                Ok(()) => converged += 1,
                Err(error) => eprintln!("crash point {k} failed: {error}"),
            }
        }
    }
    assert_eq!(
        converged,
        CRASH_POINTS.len(),
        "{converged} of {} crash points converged",
        CRASH_POINTS.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgres_killed_mid_deploy_finishes_it_after_a_restart() {
    let runs: Vec<_> = [5, 13]
        .into_iter()
        .map(|k| tokio::spawn(crash_at_on(k, DatabaseKind::Postgres)))
        .collect();
    for run in runs {
        run.await.expect("the crash point converged on PostgreSQL");
    }
}
