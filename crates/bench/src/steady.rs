//! Item 4: the AWS calls idle reconcilers make. Clusters of `nodes` nodes (simulated agents
//! heartbeating every 10 s) are created until there are as many as each step of `clusters`
//! asks; once all are Deployed and a settling pause has passed, the proxy's log is cleared
//! and the calls of a `window` are counted by action and region, per minute.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use flotilla_testkit::{FaultProxy, Moto};
use serde::Serialize;
use serde_json::json;

use crate::Ctx;
use crate::awsproxy::TimingProxy;
use crate::fleet::Fleet;
use crate::report::{Table, Target};
use flotilla_api::client::new_node_cluster;
use flotilla_api::uri;

use crate::server::ServerProcess;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Numbers of idle clusters to measure at, in increasing order (created as needed).
    #[arg(long, value_delimiter = ',', default_values_t = vec![5u32, 50])]
    clusters: Vec<u32>,
    /// Nodes per cluster.
    #[arg(long, default_value_t = 20)]
    nodes: u32,
    /// Seconds of idle time counted at each step.
    #[arg(long, default_value_t = 120)]
    window: u64,
    /// Seconds to wait after the last cluster is Deployed before counting.
    #[arg(long, default_value_t = 20)]
    settle: u64,
    /// Clusters created concurrently. One at a time by default: with ~1,000 instances moto
    /// (one Python process) takes seconds per `DescribeInstances`, and five concurrent
    /// deploys push it past the SDK's timeouts (bench/notes/steady.md).
    #[arg(long, default_value_t = 1)]
    parallel: usize,
}

#[derive(Debug, Serialize)]
struct Window {
    clusters: u32,
    nodes: u32,
    window_s: f64,
    calls: usize,
    calls_per_minute: f64,
    by_action_per_minute: BTreeMap<String, f64>,
    by_region: BTreeMap<String, usize>,
    server_rss_kib: u64,
}

async fn create_deployed(
    server: &ServerProcess,
    fleet: &Fleet,
    name: &str,
    n: u32,
) -> anyhow::Result<()> {
    let (status, created) = server
        .call(
            reqwest::Method::POST,
            &uri::node_clusters(),
            Some(new_node_cluster(name, n, "us-east-1", "t3.micro")),
        )
        .await?;
    if status != 201 {
        bail!("create {name}: {status} {created}");
    }
    let uuid = created["uuid"].as_str().context("uuid")?.to_owned();
    let path = uri::node_cluster(&uuid);
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            &uri::node_cluster_deploy(&uuid),
            None,
        )
        .await?;
    if status != 202 {
        bail!("deploy {name}: {status} {body}");
    }
    let started = Instant::now();
    loop {
        let (_, cluster) = server.call(reqwest::Method::GET, &path, None).await?;
        if cluster["state"] == "Deployed" && fleet.deployed(&uuid).0 >= n as usize {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("{name} never Deployed: {cluster}\n{:?}", fleet.errors());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let moto = tokio::task::spawn_blocking(Moto::shared).await?;
    let fault = FaultProxy::start(&moto.endpoint(), Some(Moto::new_account_id())).await;
    let timing = Arc::new(TimingProxy::start(fault.endpoint()).await?);
    let server = ServerProcess::start(&ctx.bin, &timing.endpoint(), &[]).await?;
    let fleet = Fleet::start(server.base.clone(), timing.clone(), Duration::from_secs(10));
    let mut created = 0u32;
    let mut windows = Vec::new();
    for &want in &args.clusters {
        let t = Instant::now();
        while created < want {
            let batch = (want - created).min(args.parallel as u32);
            let jobs: Vec<_> =
                (created..created + batch)
                    .map(|i| {
                        let (server, fleet) = (&server, &fleet);
                        async move {
                            create_deployed(server, fleet, &format!("idle{i}"), args.nodes).await
                        }
                    })
                    .collect();
            for result in futures::future::join_all(jobs).await {
                result?;
            }
            created += batch;
            eprintln!(
                "{created} clusters Deployed ({:.0} s)",
                t.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        fault.clear_log();
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.window)).await;
        let minutes = started.elapsed().as_secs_f64() / 60.0;
        let calls = fault.calls();
        let mut by_action: BTreeMap<String, f64> = BTreeMap::new();
        let mut by_region: BTreeMap<String, usize> = BTreeMap::new();
        for call in &calls {
            *by_action.entry(call.action.clone()).or_insert(0.0) += 1.0 / minutes;
            *by_region.entry(call.region.clone()).or_insert(0) += 1;
        }
        for v in by_action.values_mut() {
            *v = (*v * 100.0).round() / 100.0;
        }
        let window = Window {
            clusters: created,
            nodes: created * args.nodes,
            window_s: (minutes * 60.0 * 10.0).round() / 10.0,
            calls: calls.len(),
            calls_per_minute: ((calls.len() as f64 / minutes) * 100.0).round() / 100.0,
            by_action_per_minute: by_action,
            by_region,
            server_rss_kib: crate::sys::sample(server.pid)
                .map(|s| s.rss_kib)
                .unwrap_or(0),
        };
        eprintln!(
            "{} clusters idle: {:.2} AWS calls/min {:?}",
            created, window.calls_per_minute, window.by_action_per_minute
        );
        windows.push(window);
    }
    let mut table = Table::new(
        "AWS calls of idle reconcilers",
        &[
            "clusters",
            "nodes",
            "window (s)",
            "calls",
            "calls / min",
            "by action (per min)",
        ],
    );
    for w in &windows {
        table.row(vec![
            w.clusters.to_string(),
            w.nodes.to_string(),
            format!("{:.0}", w.window_s),
            w.calls.to_string(),
            format!("{:.2}", w.calls_per_minute),
            w.by_action_per_minute
                .iter()
                .map(|(a, n)| format!("{a} {n:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    let rates: Vec<f64> = windows.iter().map(|w| w.calls_per_minute).collect();
    let (lo, hi) = rates
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    let constant = !rates.is_empty() && hi - lo <= 2.0f64.max(0.1 * hi);
    let targets = vec![Target {
        name: "idle AWS calls / min: constant per region".into(),
        target: "independent of clusters and nodes".into(),
        value: windows
            .iter()
            .map(|w| format!("{} clusters: {:.1}/min", w.clusters, w.calls_per_minute))
            .collect::<Vec<_>>()
            .join(", "),
        met: (windows.len() > 1).then_some(constant),
    }];
    server.stop().await;
    let report = ctx.report(
        "steady",
        "4. Steady state (idle clusters, us-east-1, L = 0)",
        json!({"clusters": args.clusters, "nodes_per_cluster": args.nodes, "window_s": args.window, "settle_s": args.settle, "heartbeat_s": 10}),
        targets,
        vec![table],
        json!({"windows": windows}),
    );
    ctx.write(&report)
}
