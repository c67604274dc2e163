//! Item 3: the user API with `nodes` nodes in the store (seeded as bring-your-own nodes):
//! latency of `GET node/` pages of 25 and 1,000, a `uuid__startswith` lookup and a single
//! node; then the events websocket fanned out to `listeners` clients during a deploy of a
//! `deploy`-node cluster on moto (simulated agents), with the same page measured meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use flotilla_testkit::{FaultProxy, Moto};
use rand::Rng as _;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::Ctx;
use crate::awsproxy::TimingProxy;
use crate::fleet::Fleet;
use crate::report::{Table, Target, ms};
use flotilla_api::client::new_node_cluster;
use flotilla_api::uri;

use crate::server::ServerProcess;
use crate::stats::{Summary, summarize};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Nodes seeded in the store.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Requests per measured query (pages of 1,000: a tenth of it).
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Events websocket listeners during the deploy.
    #[arg(long, default_value_t = 100)]
    listeners: usize,
    /// Nodes of the cluster deployed while they listen.
    #[arg(long, default_value_t = 300)]
    deploy: u32,
}

#[derive(Debug, Serialize)]
struct Query {
    name: String,
    path: String,
    latency: Summary,
    rows: usize,
    bytes: usize,
}

async fn measure(server: &ServerProcess, name: &str, paths: &[String]) -> anyhow::Result<Query> {
    let mut samples = Vec::with_capacity(paths.len());
    let (mut rows, mut bytes) = (0, 0);
    for path in paths {
        let started = Instant::now();
        let (status, body) = server.api().get_bytes(path).await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        if status != 200 {
            bail!("{path}: {status} {}", String::from_utf8_lossy(&body));
        }
        bytes = body.len();
        let value: Value = serde_json::from_slice(&body)?;
        rows = value["objects"].as_array().map_or(1, Vec::len);
    }
    let query = Query {
        name: name.to_owned(),
        path: paths.first().cloned().unwrap_or_default(),
        latency: summarize(&samples),
        rows,
        bytes,
    };
    eprintln!(
        "{name}: {:?} ({} rows, {} bytes)",
        query.latency, rows, bytes
    );
    Ok(query)
}

#[derive(Debug, Serialize)]
struct FanOut {
    listeners: usize,
    deploy_nodes: u32,
    deploy_s: f64,
    events_per_listener_min: usize,
    events_per_listener_max: usize,
    /// Per event: last listener's receipt − first listener's receipt.
    spread: Summary,
    /// Per node `Deployed` event: a listener's receipt − the agent's registration answer.
    delivery_after_registration: Summary,
    page_25_during_deploy: Summary,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let moto = tokio::task::spawn_blocking(Moto::shared).await?;
    let fault = FaultProxy::start(&moto.endpoint(), Some(Moto::new_account_id())).await;
    let timing = Arc::new(TimingProxy::start(fault.endpoint()).await?);
    // The seeded nodes do not heartbeat: keep them Deployed for the whole run.
    let extra: Vec<String> = if crate::server::supports(&ctx.bin, "--heartbeat-grace") {
        vec!["--heartbeat-grace".to_owned(), "86400".to_owned()]
    } else {
        Vec::new()
    };
    let server = ServerProcess::start(&ctx.bin, &timing.endpoint(), &extra).await?;
    let started = Instant::now();
    let (agents, _) = crate::agents::register_byo_many(&server, args.nodes, 32).await?;
    let uuids: Vec<String> = agents.iter().map(|(_, n)| n.uuid.clone()).collect();
    drop(agents);
    eprintln!(
        "seeded {} nodes in {:.1} s",
        uuids.len(),
        started.elapsed().as_secs_f64()
    );
    let (_, listed) = server
        .call(
            reqwest::Method::GET,
            &format!("{}?limit=1", uri::nodes()),
            None,
        )
        .await?;
    let total = listed["meta"]["total_count"].as_u64().unwrap_or(0);
    if total < args.nodes as u64 {
        bail!(
            "GET node/ lists {total} nodes, not the {} seeded: {listed}",
            args.nodes
        );
    }

    let mut rng = rand::rng();
    let n = args.requests;
    let pages25: Vec<String> = (0..n)
        .map(|i| {
            let offset = if i % 2 == 0 {
                0
            } else {
                rng.random_range(0..args.nodes - 25)
            };
            format!("{}?limit=25&offset={offset}", uri::nodes())
        })
        .collect();
    let pages1000: Vec<String> = (0..(n / 10).max(5))
        .map(|_| {
            format!(
                "{}?limit=1000&offset={}",
                uri::nodes(),
                rng.random_range(0..args.nodes - 1000)
            )
        })
        .collect();
    let prefixes: Vec<String> = (0..n)
        .map(|_| {
            let uuid = &uuids[rng.random_range(0..uuids.len())];
            format!("{}?uuid__startswith={}", uri::nodes(), &uuid[..8])
        })
        .collect();
    let singles: Vec<String> = (0..n)
        .map(|_| uri::node(&uuids[rng.random_range(0..uuids.len())]))
        .collect();
    let mut queries = Vec::new();
    // Warm-up: connections and caches.
    measure(&server, "warm-up", &pages25[..5]).await?;
    queries.push(measure(&server, "GET node/ page of 25", &pages25).await?);
    queries.push(measure(&server, "GET node/ page of 1,000", &pages1000).await?);
    queries.push(measure(&server, "GET node/?uuid__startswith=<8 hex>", &prefixes).await?);
    queries.push(measure(&server, "GET node/<uuid>/", &singles).await?);

    // Fan-out during a deploy.
    let (sink, mut frames) = mpsc::unbounded_channel();
    let mut listeners = Vec::new();
    for i in 0..args.listeners {
        listeners.push(crate::ws::listen(&server, i, sink.clone()).await?);
    }
    drop(sink);
    let fleet = Fleet::start(server.base.clone(), timing.clone(), Duration::from_secs(10));
    let deploy_started = Instant::now();
    let (status, created) = server
        .call(
            reqwest::Method::POST,
            &uri::node_clusters(),
            Some(new_node_cluster(
                "fanout",
                args.deploy,
                "us-east-1",
                "t3.micro",
            )),
        )
        .await?;
    let uuid = created["uuid"]
        .as_str()
        .with_context(|| format!("create: {status} {created}"))?
        .to_owned();
    let path = uri::node_cluster(&uuid);
    server
        .call(
            reqwest::Method::POST,
            &uri::node_cluster_deploy(&uuid),
            None,
        )
        .await?;
    let mut during = Vec::new();
    loop {
        let page = measure(&server, "page of 25 during deploy", &pages25[..10]).await?;
        during.push(page.latency.max_ms);
        let (_, cluster) = server.call(reqwest::Method::GET, &path, None).await?;
        if cluster["state"] == "Deployed" && fleet.deployed(&uuid).0 >= args.deploy as usize {
            break;
        }
        if deploy_started.elapsed() > Duration::from_secs(600) {
            bail!("the {}-node deploy never finished: {cluster}", args.deploy);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deploy_s = deploy_started.elapsed().as_secs_f64();
    // Let the last events arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for listener in &listeners {
        listener.abort();
    }
    let mut per_listener: Vec<Vec<(Instant, Value)>> = vec![Vec::new(); args.listeners];
    while let Ok((i, at, value)) = frames.try_recv() {
        per_listener[i].push((at, value));
    }
    let counts: Vec<usize> = per_listener.iter().map(Vec::len).collect();
    let shortest = counts.iter().copied().min().unwrap_or(0);
    let mut spread = Vec::new();
    for k in 0..shortest {
        let times: Vec<Instant> = per_listener.iter().map(|l| l[k].0).collect();
        let (lo, hi) = (times.iter().min(), times.iter().max());
        if let (Some(lo), Some(hi)) = (lo, hi) {
            spread.push((*hi - *lo).as_secs_f64() * 1000.0);
        }
    }
    let registrations = fleet.registrations();
    let mut delivery = Vec::new();
    for listener in &per_listener {
        let mut seen: HashMap<&str, Instant> = HashMap::new();
        for (at, event) in listener {
            if event["type"] == "node" && event["state"] == "Deployed" {
                let node = crate::ws::uri_uuid(event["resource_uri"].as_str().unwrap_or(""));
                seen.entry(node).or_insert(*at);
            }
        }
        for (node, at) in seen {
            if let Some(registered) = registrations.get(node) {
                let ms = if at >= *registered {
                    (at - *registered).as_secs_f64() * 1000.0
                } else {
                    -((*registered - at).as_secs_f64() * 1000.0)
                };
                delivery.push(ms);
            }
        }
    }
    let fan_out = FanOut {
        listeners: args.listeners,
        deploy_nodes: args.deploy,
        deploy_s: (deploy_s * 1000.0).round() / 1000.0,
        events_per_listener_min: shortest,
        events_per_listener_max: counts.iter().copied().max().unwrap_or(0),
        spread: summarize(&spread),
        delivery_after_registration: summarize(&delivery),
        page_25_during_deploy: summarize(&during),
    };
    eprintln!("fan-out: {fan_out:?}");
    drop(fleet);
    server.stop().await;

    let mut table = Table::new(
        &format!(
            "Latency with {} nodes in the store (sequential requests, one keep-alive connection)",
            args.nodes
        ),
        &[
            "query", "requests", "rows", "bytes", "p50 (ms)", "p90 (ms)", "p99 (ms)", "max (ms)",
        ],
    );
    for q in &queries {
        table.row(vec![
            q.name.clone(),
            q.latency.count.to_string(),
            q.rows.to_string(),
            q.bytes.to_string(),
            ms(q.latency.p50_ms),
            ms(q.latency.p90_ms),
            ms(q.latency.p99_ms),
            ms(q.latency.max_ms),
        ]);
    }
    let mut fan = Table::new(
        &format!(
            "Events websocket: {} listeners during a {}-node deploy ({:.1} s)",
            args.listeners, args.deploy, deploy_s
        ),
        &["measure", "count", "p50 (ms)", "p99 (ms)", "max (ms)"],
    );
    for (name, s) in [
        ("spread of one event across listeners", &fan_out.spread),
        (
            "node Deployed event after its registration answer",
            &fan_out.delivery_after_registration,
        ),
        (
            "max of 10 pages of 25, during the deploy",
            &fan_out.page_25_during_deploy,
        ),
    ] {
        fan.row(vec![
            name.into(),
            s.count.to_string(),
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.max_ms),
        ]);
    }
    fan.row(vec![
        "events per listener (min / max)".into(),
        format!(
            "{} / {}",
            fan_out.events_per_listener_min, fan_out.events_per_listener_max
        ),
        String::new(),
        String::new(),
        String::new(),
    ]);
    let page = &queries[0].latency;
    let targets = vec![Target {
        name: format!("GET node/ page of 25, {} nodes", args.nodes),
        target: "p99 < 20 ms".into(),
        value: format!("p99 {} ms", ms(page.p99_ms)),
        met: Some(page.p99_ms < 20.0),
    }];
    let report = ctx.report(
        "api",
        "3. API latency and events fan-out",
        json!({"nodes": args.nodes, "requests": args.requests, "listeners": args.listeners, "deploy": args.deploy}),
        targets,
        vec![table, fan],
        json!({"queries": queries, "fan_out": fan_out}),
    );
    ctx.write(&report)
}
