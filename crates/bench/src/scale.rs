//! Item 2: control-plane scale. M simulated bring-your-own agents (tasks in this process,
//! each with its own keep-alive connection) register with one server, then heartbeat every
//! `interval` with random phases. Over `duration`: heartbeat latency as the agents see it,
//! the server's CPU (from `/proc/<pid>/stat`), resident memory (`/proc/<pid>/status`) and
//! database size. Then `silence` random agents stop, and the events websocket tells when
//! each became `Unreachable`, measured from its last answered heartbeat.
//!
//! With `--replicas N --database postgres` (issue #14) the bench starts a PostgreSQL server
//! of its own (the test kit's), N `flotilla server` replicas on one database of it, and
//! spreads the agents round-robin over the replicas (each registers with and heartbeats to
//! its replica); it reports each replica's heartbeats, CPU and memory, and PostgreSQL's (the
//! postmaster and its backends). The events listener watches the first replica: events
//! cross replicas through LISTEN/NOTIFY. With either option the result is named after the
//! set-up (`scale-<agents>-<N>-replica(s)-<database>`) unless `--name` says otherwise, and
//! carries a table per process; without them the run and its output are as before.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_testkit::{FaultProxy, Moto};
use rand::Rng as _;
use rand::seq::SliceRandom as _;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::Ctx;
use crate::agents::{PingLog, heartbeat, register_byo_spread};
use crate::pg::Postgres;
use crate::report::{Table, Target, ms};
use crate::server::{Replica, ServerProcess};
use crate::stats::{Summary, summarize};

/// A false `Unreachable` verdict (see `false_verdicts_whole_run`), for finding its cause.
#[derive(Debug, Clone, Serialize)]
struct FalseVerdict {
    node: String,
    /// The replica its agent registered with and heartbeats to (index; `-1`: unknown).
    replica: i64,
    /// When the verdict was recorded, in whole seconds after the first registration began.
    at_s: i64,
    /// … and after the node's own registration was answered.
    after_registration_s: i64,
}

/// Who held the health sweep's lease (`/metrics` of every replica, polled every 2 s):
/// each change, in seconds after the first registration began.
#[derive(Debug, Clone, Serialize)]
struct LeaseChange {
    at_s: f64,
    /// Replica indexes saying they hold it (none while it moves; two would be a bug).
    holders: Vec<usize>,
}

/// Set to silence one agent.
type SilenceFlag = Arc<AtomicBool>;
/// When the agent's last heartbeat was answered.
type LastAnswer = Arc<Mutex<Option<Instant>>>;
/// One agent as the run sees it: its node, silence flag, last answer, replica (index) and
/// when its registration was answered.
type AgentFlags = (String, SilenceFlag, LastAnswer, usize, Instant);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Numbers of agents, one run (and one fresh server) each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1000usize, 10_000])]
    agents: Vec<usize>,
    /// Seconds of steady heartbeating measured per run.
    #[arg(long, default_value_t = 120)]
    duration: u64,
    /// Seconds between heartbeats of one agent.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Agents silenced after the steady phase.
    #[arg(long, default_value_t = 100)]
    silence: usize,
    /// The server's `--heartbeat-grace` (seconds).
    #[arg(long, default_value_t = 30)]
    grace: u64,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Agents close their connection after each heartbeat instead of keeping it open (to
    /// tell the server's per-connection memory from its per-node memory).
    #[arg(long)]
    reconnect: bool,
    /// Server replicas sharing one database, the agents spread over them round-robin
    /// [default: 1]; more than one needs `--database postgres`.
    #[arg(long)]
    replicas: Option<usize>,
    /// The servers' database: `sqlite` (the file in the data directory) or `postgres` (a
    /// PostgreSQL server this bench starts with Debian's `initdb`, and removes at the end)
    /// [default: sqlite].
    #[arg(long, value_enum)]
    database: Option<Database>,
    /// The result's name (`results/<name>.json`, `notes/<name>.md`) [default: `scale`; with
    /// --replicas or --database, `scale-<agents>-<replicas>-replica(s)-<database>`].
    #[arg(long)]
    name: Option<String>,
    /// The result's title in RESULTS.md [default: from the set-up].
    #[arg(long)]
    title: Option<String>,
    /// Copy each server's log (stdout, stderr) into this directory before it stops, as
    /// `M<agents>-<replica>-stderr.log`.
    #[arg(long)]
    logs: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    Sqlite,
    Postgres,
}

impl Database {
    fn label(self) -> &'static str {
        match self {
            Database::Sqlite => "SQLite",
            Database::Postgres => "PostgreSQL",
        }
    }
}

/// The database the replicas share on the bench's PostgreSQL server.
const POSTGRES_DATABASE: &str = "flotilla";

impl Args {
    fn replica_count(&self) -> usize {
        self.replicas.unwrap_or(1)
    }

    fn database(&self) -> Database {
        self.database.unwrap_or(Database::Sqlite)
    }

    /// Whether the set-up was asked for (`--replicas` or `--database`): the result then says
    /// which, and has a table per process.
    fn explicit_setup(&self) -> bool {
        self.replicas.is_some() || self.database.is_some()
    }

    fn benchmark_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        if !self.explicit_setup() {
            return "scale".into();
        }
        let agents: Vec<String> = self.agents.iter().map(usize::to_string).collect();
        let n = self.replica_count();
        format!(
            "scale-{}-{n}-{}-{}",
            agents.join("-"),
            if n == 1 { "replica" } else { "replicas" },
            match self.database() {
                Database::Sqlite => "sqlite",
                Database::Postgres => "postgres",
            }
        )
    }

    fn title(&self) -> String {
        if let Some(title) = &self.title {
            return title.clone();
        }
        if !self.explicit_setup() {
            return "2. Control-plane scale (simulated bring-your-own agents)".into();
        }
        let n = self.replica_count();
        let setup = match (n, self.database()) {
            (1, Database::Sqlite) => "one server on SQLite".to_owned(),
            (1, database) => format!("one replica on {}", database.label()),
            (n, database) => format!("{n} replicas on one {}", database.label()),
        };
        format!("2b. Control-plane scale: {setup} (simulated bring-your-own agents)")
    }
}

/// One server process of a run: its agents' heartbeats and its resources.
#[derive(Debug, Serialize)]
struct ReplicaResult {
    /// The replica's `--replica-id` (`server`: the single SQLite server).
    replica: String,
    agents: usize,
    heartbeats: Summary,
    heartbeat_errors: u64,
    heartbeats_per_s: f64,
    cpu_percent: f64,
    rss_mib_end: f64,
    rss_mib_peak: f64,
    threads: u64,
}

/// The PostgreSQL server of a run: the postmaster and its children (backends, checkpointer,
/// WAL writer, autovacuum, …), over the same window as the replicas.
#[derive(Debug, Serialize)]
struct PostgresResult {
    version: String,
    /// `fsync`, `synchronous_commit` and `full_page_writes` are off (the test kit's server,
    /// disposable); `shared_buffers` as configured.
    shared_buffers: String,
    max_connections: String,
    cpu_percent: f64,
    /// Proportional set sizes summed: shared memory counted once.
    pss_mib_end: f64,
    pss_mib_peak: f64,
    /// Resident sets summed: shared pages counted in every process that touched them.
    rss_sum_mib_end: f64,
    processes_end: u64,
}

#[derive(Debug, Serialize)]
struct RunResult {
    agents: usize,
    registration: Summary,
    registration_s: f64,
    heartbeats: Summary,
    heartbeat_errors: u64,
    heartbeats_per_s: f64,
    /// The server's CPU (percent of one core), memory and threads; with several replicas,
    /// the sums over the replicas (each one's figures are in `replicas`).
    server_cpu_percent: f64,
    server_rss_mib_end: f64,
    server_rss_mib_peak: f64,
    server_threads: u64,
    /// SQLite: the file, its WAL and shared memory; PostgreSQL: `pg_database_size`.
    database_mib: f64,
    silenced: usize,
    unreachable_seen: usize,
    unreachable_delay: Summary,
    /// Silenced nodes never reported `Unreachable` within grace + 30 s.
    unreachable_missing: usize,
    /// Nodes that kept heartbeating but were reported `Unreachable`.
    false_unreachable: usize,
    /// What `GET node/{uuid}/` says of the silenced nodes never seen on the stream.
    missing_states: std::collections::BTreeMap<String, usize>,
    /// For each silenced node never seen, when the server recorded its `Unreachable`
    /// verdict, in seconds after the silencing (none: no verdict was recorded). A verdict
    /// before the deadline with no event means the event was lost; after it, it was late.
    missing_verdicts_s: Vec<i64>,
    /// Frames the events listener received while it waited.
    frames_received: usize,
    /// Events the server said this listener missed (`missed` frames: it fell behind).
    events_missed: u64,
    /// Silenced nodes found `Unreachable` by listing them again after a `missed` frame.
    unreachable_resynced: usize,
    /// The events stream closed before the deadline.
    listener_ended: bool,
    /// `Unreachable` verdicts recorded over the whole run (every `Node Unreachable` line of
    /// the server's history) for agents that were heartbeating (each from its
    /// registration): of a node never silenced, or of a silenced one before its silencing.
    /// The events listener only watches after the silencing; this catches a false verdict
    /// at any time, registration included.
    false_verdicts_whole_run: usize,
    /// Nodes `Unreachable` just before the silencing, while every agent heartbeats: a
    /// verdict that was never taken back (must be 0).
    unreachable_before_silencing: u64,
    /// With --replicas or --database: each server process.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    replicas: Vec<ReplicaResult>,
    /// With --database postgres.
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres: Option<PostgresResult>,
    /// The false verdicts over the whole run, each (at most 500).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    false_verdicts_detail: Vec<FalseVerdict>,
    /// With several replicas: the health lease's holders over the run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    health_lease_holders: Vec<LeaseChange>,
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

async fn one_run(ctx: &Ctx, args: &Args, m: usize) -> anyhow::Result<RunResult> {
    let moto = tokio::task::spawn_blocking(Moto::shared).await?;
    let fault = FaultProxy::start(&moto.endpoint(), Some(Moto::new_account_id())).await;
    let grace: Vec<String> = if crate::server::supports(&ctx.bin, "--heartbeat-grace") {
        vec!["--heartbeat-grace".to_owned(), args.grace.to_string()]
    } else {
        eprintln!("this server has no --heartbeat-grace; its default applies");
        Vec::new()
    };
    // Declared before the servers, so dropped after them if the run fails half-way.
    let mut postgres: Option<Postgres> = None;
    let mut servers: Vec<ServerProcess> = Vec::new();
    match args.database() {
        Database::Sqlite => {
            servers.push(ServerProcess::start(&ctx.bin, &fault.endpoint(), &grace).await?);
        }
        Database::Postgres => {
            let (pg, url) = tokio::task::spawn_blocking(|| {
                let pg = Postgres::start()?;
                let url = pg.create_database(POSTGRES_DATABASE)?;
                anyhow::Ok((pg, url))
            })
            .await??;
            postgres = Some(pg);
            for index in 0..args.replica_count() {
                let id = format!("r{index}");
                let replica = Replica {
                    database_url: &url,
                    id: &id,
                    first: servers.first(),
                };
                let server = ServerProcess::start_replica(
                    &ctx.bin,
                    &fault.endpoint(),
                    &grace,
                    Some(replica),
                )
                .await?;
                servers.push(server);
            }
        }
    }
    let keep_logs = crate::server::KeepLogs {
        to: args.logs.clone(),
        servers: servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let name = match args.database() {
                    Database::Sqlite => "server".to_owned(),
                    Database::Postgres => format!("r{i}"),
                };
                (s.log_dir(), format!("M{m}-{name}"))
            })
            .collect(),
    };
    let server = &servers[0];
    let n = servers.len();
    eprintln!("M = {m}: registering with {n} server(s)");
    let epoch_unix = flotilla_api::date::now_unix();
    let lease_epoch = Instant::now();
    let lease_changes: Arc<Mutex<Vec<LeaseChange>>> = Arc::default();
    let lease_poller = (n > 1).then(|| {
        let bases: Vec<(String, String, String)> = servers
            .iter()
            .map(|s| (s.base.clone(), s.user.clone(), s.key.clone()))
            .collect();
        let changes = lease_changes.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let clients: Vec<flotilla_api::Client> = bases
                .into_iter()
                .map(|(base, user, key)| flotilla_api::Client::new(base, user, key, http.clone()))
                .collect();
            let mut last: Option<Vec<usize>> = None;
            loop {
                let mut holders = Vec::new();
                for (index, api) in clients.iter().enumerate() {
                    if crate::server::holds_lease(api, "health").await == Some(true) {
                        holders.push(index);
                    }
                }
                if last.as_ref() != Some(&holders) {
                    let at_s = (lease_epoch.elapsed().as_secs_f64() * 10.0).round() / 10.0;
                    eprintln!("M = {m}: health lease held by {holders:?} at {at_s} s");
                    changes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(LeaseChange {
                            at_s,
                            holders: holders.clone(),
                        });
                    last = Some(holders);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    });
    // Each agent heartbeats from its registration on, as a real one does: a node is never
    // silent for longer than an interval, so every Unreachable verdict before the
    // silencing is a false one.
    let interval = Duration::from_secs(args.interval);
    let epoch = Instant::now();
    // One log per replica.
    let logs: Vec<Arc<PingLog>> = (0..n).map(|_| Arc::new(PingLog::default())).collect();
    let start_heartbeating = |conn: crate::agents::AgentConn,
                              node: crate::agents::Registered,
                              replica: usize| {
        let silenced = Arc::new(AtomicBool::new(false));
        let last_ok = Arc::new(Mutex::new(Some(Instant::now())));
        let flag = (
            node.uuid.clone(),
            silenced.clone(),
            last_ok.clone(),
            replica,
            Instant::now(),
        );
        let phase = Duration::from_millis(rand::rng().random_range(0..interval.as_millis() as u64));
        let conn = if args.reconnect {
            conn.closing_after_each_request()
        } else {
            conn
        };
        let task = tokio::spawn(heartbeat(
            conn,
            node,
            interval,
            phase,
            epoch,
            logs[replica].clone(),
            silenced,
            last_ok,
        ));
        (flag, task)
    };
    let (agents, registration) =
        register_byo_spread(&servers, m, args.concurrency, start_heartbeating).await?;
    let registration_s = epoch.elapsed().as_secs_f64();
    eprintln!("M = {m}: {m} registered in {registration_s:.1} s");
    let (flags, tasks): (Vec<AgentFlags>, Vec<_>) = agents.into_iter().unzip();
    // One interval to warm up (every agent has pinged once), then the measured window.
    tokio::time::sleep(interval).await;
    let window_start = epoch.elapsed().as_secs_f64();
    let pg_pid = postgres.as_ref().map(Postgres::pid);
    let sample_all = || -> Vec<Option<crate::sys::ProcSample>> {
        servers.iter().map(|s| crate::sys::sample(s.pid)).collect()
    };
    let before = sample_all();
    let pg_before = pg_pid.and_then(crate::sys::sample_tree);
    let t_window = Instant::now();
    let mut peak_rss = vec![0; n];
    let mut pg_peak_pss = 0;
    while t_window.elapsed() < Duration::from_secs(args.duration) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        for (peak, s) in peak_rss.iter_mut().zip(sample_all()) {
            if let Some(s) = s {
                *peak = (*peak).max(s.rss_kib);
            }
        }
        if let Some(tree) = pg_pid.and_then(crate::sys::sample_tree) {
            pg_peak_pss = pg_peak_pss.max(tree.pss_kib);
        }
    }
    let after = sample_all();
    let pg_after = pg_pid.and_then(crate::sys::sample_tree);
    let seconds = t_window.elapsed().as_secs_f64();
    let windowed = |log: &PingLog| -> Vec<f64> {
        log.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(at, _)| *at >= window_start && *at <= window_start + seconds)
            .map(|(_, ms)| *ms)
            .collect()
    };
    let per_replica_samples: Vec<Vec<f64>> = logs.iter().map(|l| windowed(l)).collect();
    let samples: Vec<f64> = per_replica_samples.concat();
    let heartbeats = summarize(&samples);
    let errors_of = |log: &PingLog| *log.errors.lock().unwrap_or_else(|p| p.into_inner());
    let heartbeat_errors: u64 = logs.iter().map(|l| errors_of(l)).sum();
    let cpu_of = |i: usize| match (&before[i], &after[i]) {
        (Some(b), Some(a)) => crate::sys::cpu_percent(b, a, seconds),
        _ => 0.0,
    };
    let database_bytes = match &postgres {
        Some(pg) => pg.database_bytes(POSTGRES_DATABASE),
        None => server.database_bytes(),
    };
    let database_mib = (database_bytes as f64 / 1_048_576.0 * 10.0).round() / 10.0;
    let replicas: Vec<ReplicaResult> = (0..n)
        .map(|i| {
            let end = after[i].map(|a| a.rss_kib).unwrap_or(0);
            ReplicaResult {
                replica: match args.database() {
                    Database::Sqlite => "server".into(),
                    Database::Postgres => format!("r{i}"),
                },
                agents: (0..m).filter(|a| a % n == i).count(),
                heartbeats: summarize(&per_replica_samples[i]),
                heartbeat_errors: errors_of(&logs[i]),
                heartbeats_per_s: ((per_replica_samples[i].len() as f64 / seconds) * 10.0).round()
                    / 10.0,
                cpu_percent: cpu_of(i),
                rss_mib_end: mib(end),
                rss_mib_peak: mib(peak_rss[i].max(after[i].map(|a| a.hwm_kib).unwrap_or(0))),
                threads: after[i].map(|a| a.threads).unwrap_or(0),
            }
        })
        .collect();
    let cpu = (replicas.iter().map(|r| r.cpu_percent).sum::<f64>() * 10.0).round() / 10.0;
    let postgres_result = match (&postgres, pg_before, pg_after) {
        (Some(pg), Some(b), Some(a)) => Some(PostgresResult {
            version: pg.setting("server_version"),
            shared_buffers: pg.setting("shared_buffers"),
            max_connections: pg.setting("max_connections"),
            cpu_percent: crate::sys::ticks_percent(b.cpu_ticks, a.cpu_ticks, seconds),
            pss_mib_end: mib(a.pss_kib),
            pss_mib_peak: mib(pg_peak_pss.max(a.pss_kib)),
            rss_sum_mib_end: mib(a.rss_kib),
            processes_end: a.processes,
        }),
        _ => None,
    };
    for r in &replicas {
        eprintln!(
            "M = {m}: {}: {} agents, heartbeats {:?}, {} errors, CPU {} %, RSS {} MiB",
            r.replica, r.agents, r.heartbeats, r.heartbeat_errors, r.cpu_percent, r.rss_mib_end
        );
    }
    if let Some(pg) = &postgres_result {
        eprintln!("M = {m}: PostgreSQL: {pg:?}");
    }
    eprintln!(
        "M = {m}: heartbeats {heartbeats:?}, CPU {cpu} %, RSS {} MiB",
        replicas.iter().map(|r| r.rss_mib_end).sum::<f64>()
    );

    // Every agent heartbeats now: none may be Unreachable.
    let (_, unreachable_now) = server
        .call(
            reqwest::Method::GET,
            &format!("{}?state=Unreachable&limit=1", flotilla_api::uri::nodes()),
            None,
        )
        .await?;
    let unreachable_before_silencing = unreachable_now["meta"]["total_count"].as_u64().unwrap_or(0);

    // Silence some agents and watch the events stream.
    let (sink, mut events) = mpsc::unbounded_channel();
    let listener = crate::ws::listen(server, 0, sink).await?;
    let mut chosen: Vec<usize> = (0..flags.len()).collect();
    chosen.shuffle(&mut rand::rng());
    chosen.truncate(args.silence.min(flags.len()));
    let silenced: HashSet<String> = chosen.iter().map(|&i| flags[i].0.clone()).collect();
    for &i in &chosen {
        flags[i].1.store(true, Ordering::Relaxed);
    }
    let silenced_at = Instant::now();
    let by_uuid: HashMap<&str, &Arc<Mutex<Option<Instant>>>> = flags
        .iter()
        .map(|(u, _, l, _, _)| (u.as_str(), l))
        .collect();
    let mut delays: HashMap<String, f64> = HashMap::new();
    let mut false_unreachable: HashSet<String> = HashSet::new();
    let deadline = silenced_at + Duration::from_secs(args.grace + 30);
    let mut frames_received = 0;
    let mut events_missed = 0u64;
    let mut listener_ended = false;
    // Silenced nodes found `Unreachable` by listing them again after a `missed` frame
    // (what a client of the stream must do): seen, but with no delay to measure.
    let mut resynced: HashSet<String> = HashSet::new();
    while delays.len() + resynced.len() < silenced.len() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let (at, event) = match tokio::time::timeout(remaining, events.recv()).await {
            Ok(Some((_, at, event))) => (at, event),
            Ok(None) => {
                listener_ended = true;
                eprintln!("M = {m}: the events stream ended before the deadline");
                break;
            }
            Err(_) => break,
        };
        frames_received += 1;
        if event["type"] == "missed" {
            events_missed += event["count"].as_u64().unwrap_or(0);
            eprintln!("M = {m}: the events stream says this listener missed: {event}; resyncing");
            let unseen: Vec<String> = silenced
                .iter()
                .filter(|u| !delays.contains_key(*u) && !resynced.contains(*u))
                .cloned()
                .collect();
            for uuid in unseen {
                let (_, node) = server
                    .call(reqwest::Method::GET, &flotilla_api::uri::node(&uuid), None)
                    .await?;
                if node["state"] == "Unreachable" {
                    resynced.insert(uuid);
                }
            }
            continue;
        }
        if event["type"] != "node" || event["state"] != "Unreachable" {
            continue;
        }
        let uuid = crate::ws::uri_uuid(event["resource_uri"].as_str().unwrap_or("")).to_owned();
        if silenced.contains(&uuid) && !resynced.contains(&uuid) {
            // The last heartbeat the agent had answered before it went silent.
            let last = by_uuid
                .get(uuid.as_str())
                .and_then(|l| *l.lock().unwrap_or_else(|p| p.into_inner()))
                .unwrap_or(silenced_at);
            delays
                .entry(uuid)
                .or_insert((at - last).as_secs_f64() * 1000.0);
        } else {
            false_unreachable.insert(uuid);
        }
    }
    listener.abort();
    // A node never seen: its state now, and when the server recorded its verdict (the
    // `Node Unreachable` line of its history), which tells a late verdict from a lost event.
    let mut missing_states = std::collections::BTreeMap::new();
    let mut missing_verdicts_s = Vec::new();
    for uuid in silenced
        .iter()
        .filter(|u| !delays.contains_key(*u) && !resynced.contains(*u))
    {
        let node_uri = flotilla_api::uri::node(uuid);
        let (_, node) = server.call(reqwest::Method::GET, &node_uri, None).await?;
        let state = node["state"].as_str().unwrap_or("?").to_owned();
        *missing_states.entry(state).or_insert(0) += 1;
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("object", &node_uri)
            .append_pair("action", "Node Unreachable")
            .finish();
        let (_, history) = server
            .call(
                reqwest::Method::GET,
                &format!("{}?{query}", flotilla_api::uri::actions()),
                None,
            )
            .await?;
        let verdict = history["objects"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|a| a["start_date"].as_str())
            .and_then(|d| flotilla_api::date::parse(d).ok());
        if let Some(verdict) = verdict {
            let silenced_unix =
                flotilla_api::date::now_unix() - silenced_at.elapsed().as_secs() as i64;
            missing_verdicts_s.push(verdict.unix_timestamp() - silenced_unix);
        }
    }
    let false_ones = false_verdicts(server, &silenced, silenced_at).await?;
    let false_verdicts_whole_run = false_ones.len();
    let registered: HashMap<&str, (usize, Instant)> = flags
        .iter()
        .map(|(u, _, _, replica, at)| (u.as_str(), (*replica, *at)))
        .collect();
    let now_unix = flotilla_api::date::now_unix();
    let false_verdicts_detail: Vec<FalseVerdict> = false_ones
        .iter()
        .take(500)
        .map(|(node, at)| {
            let (replica, after_registration_s) = match registered.get(node.as_str()) {
                Some((replica, when)) => {
                    let registered_unix = now_unix - when.elapsed().as_secs() as i64;
                    (*replica as i64, at - registered_unix)
                }
                None => (-1, 0),
            };
            FalseVerdict {
                node: node.clone(),
                replica,
                at_s: at - epoch_unix,
                after_registration_s,
            }
        })
        .collect();
    if let Some(poller) = lease_poller {
        poller.abort();
    }
    let health_lease_holders = lease_changes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for task in tasks {
        task.abort();
    }
    let delay_samples: Vec<f64> = delays.values().copied().collect();
    let result = RunResult {
        agents: m,
        registration: summarize(&registration),
        registration_s: (registration_s * 10.0).round() / 10.0,
        heartbeats,
        heartbeat_errors,
        heartbeats_per_s: ((samples.len() as f64 / seconds) * 10.0).round() / 10.0,
        server_cpu_percent: cpu,
        server_rss_mib_end: (replicas.iter().map(|r| r.rss_mib_end).sum::<f64>() * 10.0).round()
            / 10.0,
        server_rss_mib_peak: (replicas.iter().map(|r| r.rss_mib_peak).sum::<f64>() * 10.0).round()
            / 10.0,
        server_threads: replicas.iter().map(|r| r.threads).sum(),
        database_mib,
        silenced: silenced.len(),
        unreachable_seen: delays.len() + resynced.len(),
        unreachable_delay: summarize(&delay_samples),
        unreachable_missing: silenced.len() - delays.len() - resynced.len(),
        false_unreachable: false_unreachable.len(),
        missing_states,
        missing_verdicts_s,
        frames_received,
        events_missed,
        unreachable_resynced: resynced.len(),
        listener_ended,
        false_verdicts_whole_run,
        unreachable_before_silencing,
        replicas: if args.explicit_setup() {
            replicas
        } else {
            Vec::new()
        },
        postgres: postgres_result,
        false_verdicts_detail,
        health_lease_holders,
    };
    eprintln!("M = {m}: unreachable after {:?}", result.unreachable_delay);
    drop(keep_logs);
    for server in servers {
        server.stop().await;
    }
    if let Some(pg) = postgres {
        // Stops PostgreSQL and removes its directory (blocking: a fast shutdown).
        tokio::task::spawn_blocking(move || drop(pg)).await?;
    }
    Ok(result)
}

/// Every `Node Unreachable` verdict in the server's history that was false: of a node
/// never silenced, or of a silenced one from before its silencing. Each as (node, Unix
/// time of the verdict).
async fn false_verdicts(
    server: &ServerProcess,
    silenced: &HashSet<String>,
    silenced_at: Instant,
) -> anyhow::Result<Vec<(String, i64)>> {
    let silenced_unix = flotilla_api::date::now_unix() - silenced_at.elapsed().as_secs() as i64;
    let mut false_ones = Vec::new();
    let mut offset = 0;
    loop {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("action", "Node Unreachable")
            .append_pair("limit", "1000")
            .append_pair("offset", &offset.to_string())
            .finish();
        let (_, page) = server
            .call(
                reqwest::Method::GET,
                &format!("{}?{query}", flotilla_api::uri::actions()),
                None,
            )
            .await?;
        let objects = page["objects"].as_array().cloned().unwrap_or_default();
        for action in &objects {
            let uuid = crate::ws::uri_uuid(action["object"].as_str().unwrap_or(""));
            let at = action["start_date"]
                .as_str()
                .and_then(|d| flotilla_api::date::parse(d).ok())
                .map(|d| d.unix_timestamp())
                .unwrap_or(i64::MAX);
            // A second's slack: the history's times are whole seconds.
            if !silenced.contains(uuid) || at < silenced_unix - 1 {
                false_ones.push((uuid.to_owned(), at));
            }
        }
        if objects.len() < 1000 {
            return Ok(false_ones);
        }
        offset += objects.len();
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.replica_count() >= 1, "--replicas must be at least 1");
    anyhow::ensure!(
        args.replica_count() == 1 || args.database() == Database::Postgres,
        "several replicas share a PostgreSQL database: add --database postgres"
    );
    let explicit = args.explicit_setup();
    let n = args.replica_count();
    let mut runs = Vec::new();
    for &m in &args.agents {
        runs.push(one_run(ctx, &args, m).await?);
    }
    let mut columns = vec!["agents"];
    if explicit {
        columns.extend(["database", "replicas"]);
    }
    columns.extend([
        "heartbeats/s",
        "p50 (ms)",
        "p99 (ms)",
        "max (ms)",
        "errors",
        if n > 1 {
            "server CPU % (sum of replicas)"
        } else {
            "server CPU %"
        },
        if n > 1 {
            "RSS end / peak (MiB, sum of replicas)"
        } else {
            "RSS end / peak (MiB)"
        },
        "DB (MiB)",
        "registration (s, p99 ms)",
    ]);
    let mut table = Table::new("Heartbeats and server resources", &columns);
    let mut processes = Table::new(
        "Each process (agents round-robin over the replicas; PostgreSQL: the postmaster and \
         its children, memory as the sum of their proportional set sizes)",
        &[
            "agents",
            "process",
            "its agents",
            "heartbeats/s",
            "p50 (ms)",
            "p99 (ms)",
            "max (ms)",
            "errors",
            "CPU %",
            "RSS end / peak (MiB)",
            "threads",
        ],
    );
    let mut silence = Table::new(
        "Silenced agents until Unreachable (from the last answered heartbeat)",
        &[
            "agents",
            "grace (s)",
            "silenced",
            "seen Unreachable",
            "p50 (s)",
            "p99 (s)",
            "max (s)",
            "false Unreachable (stream)",
            "false verdicts (whole run)",
            "Unreachable before silencing",
        ],
    );
    for r in &runs {
        let mut row = vec![r.agents.to_string()];
        if explicit {
            row.extend([args.database().label().to_owned(), n.to_string()]);
        }
        row.extend([
            format!("{:.1}", r.heartbeats_per_s),
            ms(r.heartbeats.p50_ms),
            ms(r.heartbeats.p99_ms),
            ms(r.heartbeats.max_ms),
            r.heartbeat_errors.to_string(),
            format!("{:.1}", r.server_cpu_percent),
            format!("{:.1} / {:.1}", r.server_rss_mib_end, r.server_rss_mib_peak),
            format!("{:.1}", r.database_mib),
            format!("{:.1}, {}", r.registration_s, ms(r.registration.p99_ms)),
        ]);
        table.row(row);
        for replica in &r.replicas {
            processes.row(vec![
                r.agents.to_string(),
                replica.replica.clone(),
                replica.agents.to_string(),
                format!("{:.1}", replica.heartbeats_per_s),
                ms(replica.heartbeats.p50_ms),
                ms(replica.heartbeats.p99_ms),
                ms(replica.heartbeats.max_ms),
                replica.heartbeat_errors.to_string(),
                format!("{:.1}", replica.cpu_percent),
                format!("{:.1} / {:.1}", replica.rss_mib_end, replica.rss_mib_peak),
                replica.threads.to_string(),
            ]);
        }
        if let Some(pg) = &r.postgres {
            processes.row(vec![
                r.agents.to_string(),
                format!("PostgreSQL {} ({} processes)", pg.version, pg.processes_end),
                "–".into(),
                "–".into(),
                "–".into(),
                "–".into(),
                "–".into(),
                "–".into(),
                format!("{:.1}", pg.cpu_percent),
                format!("{:.1} / {:.1} (PSS)", pg.pss_mib_end, pg.pss_mib_peak),
                "–".into(),
            ]);
        }
        silence.row(vec![
            r.agents.to_string(),
            args.grace.to_string(),
            r.silenced.to_string(),
            r.unreachable_seen.to_string(),
            format!("{:.2}", r.unreachable_delay.p50_ms / 1000.0),
            format!("{:.2}", r.unreachable_delay.p99_ms / 1000.0),
            format!("{:.2}", r.unreachable_delay.max_ms / 1000.0),
            r.false_unreachable.to_string(),
            r.false_verdicts_whole_run.to_string(),
            r.unreachable_before_silencing.to_string(),
        ]);
    }
    let mut targets = Vec::new();
    if let Some(r) = runs.iter().find(|r| r.agents == 10_000) {
        targets.push(Target {
            name: "heartbeat p99, M = 10,000".into(),
            target: "< 25 ms".into(),
            value: format!("{} ms", ms(r.heartbeats.p99_ms)),
            met: Some(r.heartbeats.p99_ms < 25.0),
        });
        targets.push(Target {
            name: if n > 1 {
                format!("server RSS, M = 10,000 (sum of {n} replicas)")
            } else {
                "server RSS, M = 10,000".into()
            },
            target: "< 300 MB".into(),
            value: format!("{:.1} MiB peak", r.server_rss_mib_peak),
            met: Some(r.server_rss_mib_peak * 1.048_576 < 300.0),
        });
    }
    for r in &runs {
        let limit_ms = (args.grace as f64 + 1.0) * 1000.0;
        targets.push(Target {
            name: format!("silent → Unreachable, M = {}", r.agents),
            target: format!("≤ grace + 1 s = {} s, all {}", args.grace + 1, r.silenced),
            value: format!(
                "max {:.2} s, {} of {} seen, {} false ({} over the whole run)",
                r.unreachable_delay.max_ms / 1000.0,
                r.unreachable_seen,
                r.silenced,
                r.false_unreachable,
                r.false_verdicts_whole_run
            ),
            met: Some(
                r.unreachable_missing == 0
                    && r.unreachable_delay.max_ms <= limit_ms
                    && r.false_unreachable == 0
                    && r.false_verdicts_whole_run == 0
                    && r.unreachable_before_silencing == 0,
            ),
        });
    }
    let mut settings = json!({"reconnect": args.reconnect, "agents": args.agents, "duration_s": args.duration, "interval_s": args.interval, "silence": args.silence, "grace_s": args.grace, "registration_concurrency": args.concurrency, "connections": "one keep-alive HTTP/1.1 connection per agent"});
    let mut tables = vec![table];
    if explicit {
        settings["database"] = json!(args.database());
        settings["replicas"] = json!(n);
        settings["agents_spread"] =
            json!("round-robin: agent i registers with and heartbeats to replica i mod replicas");
        settings["events_listener"] = json!("the first replica");
        tables.push(processes);
    }
    tables.push(silence);
    let report = ctx.report(
        &args.benchmark_name(),
        &args.title(),
        settings,
        targets,
        tables,
        json!({"runs": runs}),
    );
    ctx.write(&report)?;
    // A verdict that never reached the stream is a failure of the run, not a figure.
    let missing: Vec<String> = runs
        .iter()
        .filter(|r| {
            r.unreachable_missing > 0
                || r.false_unreachable > 0
                || r.false_verdicts_whole_run > 0
                || r.unreachable_before_silencing > 0
        })
        .map(|r| {
            format!(
                "M = {}: {} of {} silenced agents never seen Unreachable (their state now: {:?}; verdicts recorded at {:?} s after the silencing), {} false Unreachable on the stream, {} false verdicts over the whole run, {} nodes Unreachable before the silencing, {} events missed by the listener{}",
                r.agents,
                r.unreachable_missing,
                r.silenced,
                r.missing_states,
                r.missing_verdicts_s,
                r.false_unreachable,
                r.false_verdicts_whole_run,
                r.unreachable_before_silencing,
                r.events_missed,
                if r.listener_ended { ", and the events stream closed early" } else { "" }
            )
        })
        .collect();
    if !missing.is_empty() {
        anyhow::bail!("missing or false verdicts:\n{}", missing.join("\n"));
    }
    Ok(())
}
