//! Item 1: provisioning through the testkit proxy in front of moto, at fixed per-call latency.
//!
//! For each latency L and size N: a fresh moto account and a fresh server; the clock starts
//! at the API call that creates the cluster (then `deploy/`), and stops when every node's
//! simulated agent has been answered `Deployed` (nodes) and when the cluster reads
//! `Deployed` (cluster). AWS calls are those the server made in that window, by action; the
//! critical path is the longest chain of calls each started after the previous answered.
//! On the N = 30 server, also 30→60, 60→30 and `rm`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use flotilla_testkit::{FaultProxy, Moto};
use serde::Serialize;
use serde_json::json;

use crate::Ctx;
use crate::awsproxy::{TimingProxy, critical_path, critical_path_seconds};
use crate::fleet::Fleet;
use crate::report::{Table, Target};
use flotilla_api::client::new_node_cluster;
use flotilla_api::uri;

use crate::server::ServerProcess;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Per-call AWS latencies, in ms.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0u64, 50])]
    latencies: Vec<u64>,
    /// Cluster sizes.
    #[arg(long, value_delimiter = ',', default_values_t = vec![6u32, 30, 300])]
    nodes: Vec<u32>,
    /// Skip 30→60, 60→30 and rm.
    #[arg(long)]
    no_scale: bool,
    /// When the server counts a node `Deployed`: when its agent registers (`agent`), or
    /// as soon as EC2 says its instance runs (`running`, no agents; results go to
    /// `provisioning-running`).
    #[arg(long, default_value = "agent", value_parser = ["agent", "running"])]
    node_ready: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub latency_ms: u64,
    pub operation: String,
    /// Wall time until every node's agent was answered Deployed (create/scale up).
    pub nodes_deployed_s: Option<f64>,
    /// Wall time until the cluster reached its resting state.
    pub settled_s: f64,
    pub aws_calls: usize,
    pub aws_calls_by_action: BTreeMap<String, usize>,
    /// Calls answered with an error (including dry runs' `DryRunOperation`).
    pub aws_errors: usize,
    /// The `FaultProxy`'s own count over the same window, as a cross-check.
    pub fault_proxy_calls: usize,
    pub critical_path_round_trips: usize,
    /// Time inside AWS calls along the critical path (latency + emulator service time).
    pub critical_path_aws_s: f64,
    pub lower_bound_s: f64,
    /// Wall time (nodes Deployed, else settled) over the lower bound.
    pub ratio: Option<f64>,
    pub agent_errors: Vec<String>,
    /// When the first agent's registration was answered (s after the API call).
    pub first_registration_s: Option<f64>,
    /// Every AWS call of the window: (action, start s, end s, status), times after the API call.
    pub timeline: Vec<(String, f64, f64, u16)>,
}

const POLL: Duration = Duration::from_millis(20);
const LIMIT: Duration = Duration::from_secs(600);

struct Run {
    fault: FaultProxy,
    timing: Arc<TimingProxy>,
    server: ServerProcess,
    fleet: Fleet,
}

async fn start_run(ctx: &Ctx, latency: Duration, node_ready: &str) -> anyhow::Result<Run> {
    let moto = tokio::task::spawn_blocking(Moto::shared).await?;
    let fault = FaultProxy::start(&moto.endpoint(), Some(Moto::new_account_id())).await;
    let timing = Arc::new(TimingProxy::start(fault.endpoint()).await?);
    let server = ServerProcess::start(
        &ctx.bin,
        &timing.endpoint(),
        &["--node-ready".into(), node_ready.into()],
    )
    .await?;
    // The catalogue (regions, zones, node types) is loaded once per server; load it before
    // the clock starts, as any server that has answered one request has.
    server
        .call(reqwest::Method::GET, &uri::regions(), None)
        .await?;
    fault.set_latency(latency);
    let fleet = Fleet::start(server.base.clone(), timing.clone(), Duration::from_secs(10));
    Ok(Run {
        fault,
        timing,
        server,
        fleet,
    })
}

impl Run {
    /// Runs `op` and waits for `done`; measures the window.
    async fn measure(
        &self,
        latency_ms: u64,
        operation: &str,
        expect_nodes: Option<usize>,
        op: impl std::future::Future<Output = anyhow::Result<String>>,
        settled_state: &str,
        settled_nodes: Option<u32>,
    ) -> anyhow::Result<(Step, String)> {
        self.fault.clear_log();
        let first_call = self.timing.len();
        let t0 = Instant::now();
        let uuid = op.await?;
        let path = uri::node_cluster(&uuid);
        let mut nodes_at: Option<Instant> = None;
        let settled_at = loop {
            if let Some(want) = expect_nodes
                && nodes_at.is_none()
            {
                let (count, last) = self.fleet.deployed(&uuid);
                if count >= want {
                    nodes_at = last;
                }
            }
            let (_, cluster) = self.server.call(reqwest::Method::GET, &path, None).await?;
            let state = cluster["state"].as_str().unwrap_or("");
            let count_ok = settled_nodes.is_none_or(|n| cluster["current_num_nodes"] == json!(n));
            if state == settled_state && count_ok && (expect_nodes.is_none() || nodes_at.is_some())
            {
                break Instant::now();
            }
            if t0.elapsed() > LIMIT {
                bail!(
                    "{operation}: not settled after {LIMIT:?}: {cluster}\nagent errors: {:?}\nserver log:\n{}",
                    self.fleet.errors(),
                    self.server.log_tail(30)
                );
            }
            tokio::time::sleep(POLL).await;
        };
        let fault_proxy_calls = self.fault.total();
        let end = self.timing.at(settled_at);
        let calls: Vec<_> = self
            .timing
            .calls_from(first_call)
            .into_iter()
            .filter(|c| c.start <= end)
            .collect();
        let mut by_action = BTreeMap::new();
        for call in &calls {
            *by_action.entry(call.action.clone()).or_insert(0) += 1;
        }
        let t0_s = self.timing.at(t0);
        let timeline = calls
            .iter()
            .map(|c| {
                (
                    c.action.clone(),
                    round3(c.start - t0_s),
                    round3(c.end - t0_s),
                    c.status,
                )
            })
            .collect();
        let first_registration_s = self
            .fleet
            .registrations_of(&uuid)
            .into_iter()
            .filter(|at| *at >= t0)
            .min()
            .map(|at| round3((at - t0).as_secs_f64()));
        let spans: Vec<(f64, f64)> = calls.iter().map(|c| (c.start, c.end)).collect();
        let rounds = critical_path(&spans);
        let aws_path = critical_path_seconds(&spans);
        let lower = rounds as f64 * latency_ms as f64 / 1000.0;
        let nodes_s = nodes_at.map(|t| (t - t0).as_secs_f64());
        let settled_s = (settled_at - t0).as_secs_f64();
        let wall = nodes_s.unwrap_or(settled_s);
        let step = Step {
            latency_ms,
            operation: operation.to_owned(),
            nodes_deployed_s: nodes_s.map(round3),
            settled_s: round3(settled_s),
            aws_calls: calls.len(),
            aws_calls_by_action: by_action,
            aws_errors: calls.iter().filter(|c| c.status >= 400).count(),
            fault_proxy_calls,
            critical_path_round_trips: rounds,
            critical_path_aws_s: round3(aws_path),
            lower_bound_s: round3(lower),
            ratio: (lower > 0.0).then(|| round3(wall / lower)),
            agent_errors: self.fleet.errors(),
            first_registration_s,
            timeline,
        };
        eprintln!(
            "L={latency_ms}ms {operation}: nodes {:?}s settled {:.3}s, {} AWS calls, {} rounds",
            step.nodes_deployed_s, settled_s, step.aws_calls, rounds
        );
        Ok((step, uuid))
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

async fn create(server: &ServerProcess, n: u32) -> anyhow::Result<String> {
    let (status, created) = server
        .call(
            reqwest::Method::POST,
            &uri::node_clusters(),
            Some(new_node_cluster(
                &format!("bench{n}"),
                n,
                "us-east-1",
                "t3.micro",
            )),
        )
        .await?;
    if status != 201 {
        bail!("create: {status} {created}");
    }
    let uuid = created["uuid"].as_str().context("uuid")?.to_owned();
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            &uri::node_cluster_deploy(&uuid),
            None,
        )
        .await?;
    if status != 202 {
        bail!("deploy: {status} {body}");
    }
    Ok(uuid)
}

async fn patch(server: &ServerProcess, uuid: &str, n: u32) -> anyhow::Result<String> {
    let (status, body) = server
        .call(
            reqwest::Method::PATCH,
            &uri::node_cluster(uuid),
            Some(json!({"target_num_nodes": n})),
        )
        .await?;
    if !(200..300).contains(&status) {
        bail!("scale to {n}: {status} {body}");
    }
    Ok(uuid.to_owned())
}

async fn remove(server: &ServerProcess, uuid: &str) -> anyhow::Result<String> {
    let (status, body) = server
        .call(reqwest::Method::DELETE, &uri::node_cluster(uuid), None)
        .await?;
    if !(200..300).contains(&status) {
        bail!("rm: {status} {body}");
    }
    Ok(uuid.to_owned())
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let mut steps: Vec<Step> = Vec::new();
    for &latency_ms in &args.latencies {
        let latency = Duration::from_millis(latency_ms);
        for &n in &args.nodes {
            let run = start_run(ctx, latency, &args.node_ready).await?;
            // Without agents, "every node Deployed" is the cluster reading Deployed.
            let with_agents = args.node_ready == "agent";
            let expect = |n: usize| with_agents.then_some(n);
            let (step, uuid) = run
                .measure(
                    latency_ms,
                    &format!("create {n}"),
                    expect(n as usize),
                    create(&run.server, n),
                    "Deployed",
                    Some(n),
                )
                .await?;
            steps.push(step);
            if n == 30 && !args.no_scale {
                let (step, _) = run
                    .measure(
                        latency_ms,
                        "scale 30→60",
                        expect(60),
                        patch(&run.server, &uuid, 60),
                        "Deployed",
                        Some(60),
                    )
                    .await?;
                steps.push(step);
                let (step, _) = run
                    .measure(
                        latency_ms,
                        "scale 60→30",
                        None,
                        patch(&run.server, &uuid, 30),
                        "Deployed",
                        Some(30),
                    )
                    .await?;
                steps.push(step);
                let (step, _) = run
                    .measure(
                        latency_ms,
                        "rm (30 nodes)",
                        None,
                        remove(&run.server, &uuid),
                        "Terminated",
                        None,
                    )
                    .await?;
                steps.push(step);
            }
            run.server.stop().await;
        }
    }

    let mut targets = Vec::new();
    let find = |l: u64, op: &str| {
        steps
            .iter()
            .find(|s| s.latency_ms == l && s.operation == op)
    };
    let creates: Vec<&Step> = steps
        .iter()
        .filter(|s| s.operation.starts_with("create"))
        .collect();
    if let Some(s) = find(0, "create 30").or_else(|| find(50, "create 30")) {
        targets.push(Target {
            name: "AWS calls, create N = 30".into(),
            target: "≤ 25".into(),
            value: s.aws_calls.to_string(),
            met: Some(s.aws_calls <= 25),
        });
    }
    if !creates.is_empty() {
        let counts: Vec<String> = creates
            .iter()
            .map(|s| format!("{} at {} ms: {}", s.operation, s.latency_ms, s.aws_calls))
            .collect();
        let mut distinct: Vec<usize> = creates.iter().map(|s| s.aws_calls).collect();
        distinct.sort();
        distinct.dedup();
        targets.push(Target {
            name: "AWS calls do not grow with N".into(),
            target: "same for 6, 30, 300".into(),
            value: counts.join(", "),
            met: Some(distinct.len() == 1),
        });
        let max_rounds = creates
            .iter()
            .map(|s| s.critical_path_round_trips)
            .max()
            .unwrap_or(0);
        targets.push(Target {
            name: "sequential round trips, create".into(),
            target: "≤ 6".into(),
            value: format!("max {max_rounds}"),
            met: Some(max_rounds <= 6),
        });
    }
    for s in steps
        .iter()
        .filter(|s| s.latency_ms == 50 && s.operation.starts_with("create"))
    {
        if let Some(ratio) = s.ratio {
            targets.push(Target {
                name: format!("wall / lower bound, L = 50 ms, {}", s.operation),
                target: "≤ 1.5".into(),
                value: format!(
                    "{ratio:.2} ({:.3} s / {:.3} s)",
                    s.nodes_deployed_s.unwrap_or(s.settled_s),
                    s.lower_bound_s
                ),
                met: Some(ratio <= 1.5),
            });
        }
        // The same ratio against the time actually spent inside AWS calls along the
        // critical path: the bound above leaves out the emulator's service time.
        if s.critical_path_aws_s > 0.0 {
            let wall = s.nodes_deployed_s.unwrap_or(s.settled_s);
            let ratio = wall / s.critical_path_aws_s;
            targets.push(Target {
                name: format!(
                    "wall / AWS time on the critical path, L = 50 ms, {}",
                    s.operation
                ),
                target: "≤ 1.5".into(),
                value: format!("{ratio:.2} ({wall:.3} s / {:.3} s)", s.critical_path_aws_s),
                met: Some(ratio <= 1.5),
            });
        }
    }
    let mut table = Table::new(
        "Wall time, AWS calls and critical path",
        &[
            "L",
            "operation",
            "nodes Deployed (s)",
            "settled (s)",
            "AWS calls",
            "round trips",
            "lower bound (s)",
            "ratio",
            "AWS time on critical path (s)",
            "wall / AWS time",
        ],
    );
    let mut actions = Table::new(
        "AWS calls by action",
        &["L", "operation", "calls by action"],
    );
    for s in &steps {
        table.row(vec![
            format!("{} ms", s.latency_ms),
            s.operation.clone(),
            s.nodes_deployed_s
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "–".into()),
            format!("{:.3}", s.settled_s),
            s.aws_calls.to_string(),
            s.critical_path_round_trips.to_string(),
            if s.latency_ms > 0 {
                format!("{:.3}", s.lower_bound_s)
            } else {
                "–".into()
            },
            s.ratio
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "–".into()),
            format!("{:.3}", s.critical_path_aws_s),
            if s.critical_path_aws_s > 0.0 {
                format!(
                    "{:.2}",
                    s.nodes_deployed_s.unwrap_or(s.settled_s) / s.critical_path_aws_s
                )
            } else {
                "–".into()
            },
        ]);
        actions.row(vec![
            format!("{} ms", s.latency_ms),
            s.operation.clone(),
            s.aws_calls_by_action
                .iter()
                .map(|(a, n)| format!("{a} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    // The part of the wall time that latency explains: (wall at L − wall at 0) / bound.
    let mut attributable = Table::new(
        "Latency-attributable ratio: (wall at 50 ms − wall at 0 ms) / (round trips × 50 ms)",
        &[
            "operation",
            "wall 0 ms (s)",
            "wall 50 ms (s)",
            "round trips",
            "ratio",
        ],
    );
    for s in steps.iter().filter(|s| s.latency_ms == 50) {
        if let Some(z) = find(0, &s.operation) {
            let wall = |s: &Step| s.nodes_deployed_s.unwrap_or(s.settled_s);
            let bound = s.lower_bound_s;
            attributable.row(vec![
                s.operation.clone(),
                format!("{:.3}", wall(z)),
                format!("{:.3}", wall(s)),
                s.critical_path_round_trips.to_string(),
                if bound > 0.0 {
                    format!("{:.2}", (wall(s) - wall(z)) / bound)
                } else {
                    "–".into()
                },
            ]);
        }
    }
    let (name, title) = if args.node_ready == "agent" {
        (
            "provisioning",
            "1. Provisioning (moto behind the testkit proxy, us-east-1, 3 AZs)",
        )
    } else {
        (
            "provisioning-running",
            "1b. Provisioning with `--node-ready running` (no agents: Deployed when EC2 says running)",
        )
    };
    let report = ctx.report(
        name,
        title,
        json!({"latencies_ms": args.latencies, "nodes": args.nodes, "node_ready": args.node_ready, "agents": if args.node_ready == "agent" { "simulated in-process, boot at RunInstances answer" } else { "none" }, "poll_ms": POLL.as_millis() as u64}),
        targets,
        vec![table, attributable, actions],
        json!({"steps": steps}),
    );
    ctx.write(&report)
}
