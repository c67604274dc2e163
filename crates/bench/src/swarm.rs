//! Swarms of real Docker engines: every emulated EC2 instance boots as a host of its own
//! (network namespace, hostname, `dockerd`, `flotilla agent`; the testkit instance runner in
//! docker mode), and the measured `flotilla server` forms the swarm through the agents.
//!
//! Per worker count W (a fresh moto account, server and runner each):
//! * **create** — from `POST swarm/` (M managers, W workers) until every node reads
//!   `docker_status == "ready"` and the swarm `Deployed` in `GET swarm/{uuid}/`, polled every
//!   200 ms; with the AWS calls the server made in that window (the recording hop of
//!   `awsproxy`, as in `provisioning`), and when the first node registered, when the swarm
//!   had its Docker cluster ID and when each node was first ready.
//! * **memory** — once a `--replicas`-task busybox httpd service runs on the workers: the
//!   resident memory of every host (its holder, `dockerd`, `containerd`, shims, containers,
//!   its agent): the processes in the host's PID or network namespace and their
//!   descendants, `VmRSS` summed and `Pss` (from `smaps_rollup`) summed.
//! * **drain** — from the `PATCH` of the workers' node cluster to W − 1 until the service
//!   runs its replicas again, none on the leaving node, and that node is gone from
//!   `docker node ls` on a manager; plus when the node was seen `Drain`, when the swarm
//!   object settled, and the AWS calls.
//! * **rm** — `DELETE swarm/{uuid}/` until `Terminated`, and until every host is gone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use flotilla_api::uri;
use flotilla_testkit::{FaultProxy, InstanceRunner, Moto, RunnerConfig};
use serde::Serialize;
use serde_json::{Value, json};

use crate::Ctx;
use crate::awsproxy::{TimingProxy, critical_path};
use crate::report::{Table, Target};
use crate::server::ServerProcess;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Managers (1, 3, 5 or 7).
    #[arg(long, default_value_t = 3)]
    managers: u32,
    /// Worker counts, one run each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![2u32, 6])]
    workers: Vec<u32>,
    /// Replicas of the busybox httpd service (raised to W unless `--exact-replicas`, so the
    /// drained worker always has a task to move: the spread scheduler puts one per worker).
    #[arg(long, default_value_t = 4)]
    replicas: u32,
    /// Run exactly `--replicas` tasks even when there are more workers.
    #[arg(long)]
    exact_replicas: bool,
    /// `docker service create --stop-grace-period` (default: Docker's, 10 s). The task's
    /// `sh -c` is its PID 1 and ignores SIGTERM, so a drained task stops only when this
    /// runs out.
    #[arg(long)]
    stop_grace_period: Option<String>,
    /// The agents' heartbeat interval (ms); the end-to-end test's is 500.
    #[arg(long, default_value_t = 500)]
    heartbeat_ms: u64,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    limit_s: u64,
}

const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Serialize)]
pub struct Calls {
    pub total: usize,
    pub by_action: BTreeMap<String, usize>,
    pub errors: usize,
    pub round_trips: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Create {
    /// The first node `Deployed` (its agent registered).
    pub first_node_registered_s: Option<f64>,
    pub cluster_id_s: Option<f64>,
    /// Each node's first `ready`, sorted.
    pub nodes_ready_s: Vec<f64>,
    pub all_ready_s: f64,
    pub deployed_s: f64,
    pub aws: Calls,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostMemory {
    pub hostname: String,
    pub role: String,
    pub processes: usize,
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// RSS by process name (`comm`), KiB.
    pub rss_by_process_kib: BTreeMap<String, u64>,
    /// Tasks of the service on this host.
    pub tasks: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    pub removed_node: String,
    /// Tasks the removed node ran when the PATCH was made.
    pub tasks_on_removed_node: usize,
    pub drain_seen_s: Option<f64>,
    /// The replicas run again, none on the removed node.
    pub tasks_elsewhere_s: f64,
    /// The removed node is gone from `docker node ls`.
    pub node_gone_s: f64,
    /// Both of the above.
    pub done_s: f64,
    /// The swarm object: every remaining node ready, and the workers' node cluster
    /// `Deployed` at W − 1.
    pub swarm_settled_s: Option<f64>,
    pub aws: Calls,
}

#[derive(Debug, Clone, Serialize)]
pub struct Remove {
    pub terminated_s: Option<f64>,
    pub hosts_gone_s: Option<f64>,
    pub aws: Calls,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub managers: u32,
    pub workers: u32,
    pub create: Create,
    pub replicas: u32,
    /// How long `docker service create --detach` took to answer.
    pub service_create_cli_s: f64,
    /// From `docker service create` until every replica runs.
    pub service_start_s: f64,
    pub memory: Vec<HostMemory>,
    pub server_rss_kib: Option<u64>,
    pub drain: Drain,
    pub remove: Remove,
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn secs(since: Instant) -> f64 {
    round3(since.elapsed().as_secs_f64())
}

struct Run {
    _fault: FaultProxy,
    timing: Arc<TimingProxy>,
    server: ServerProcess,
    runner: Option<InstanceRunner>,
    limit: Duration,
}

impl Run {
    fn runner(&self) -> &InstanceRunner {
        self.runner
            .as_ref()
            .expect("the runner lives until the run ends")
    }

    async fn swarm(&self, uuid: &str) -> anyhow::Result<Value> {
        let (status, swarm) = self
            .server
            .call(reqwest::Method::GET, &uri::swarm(uuid), None)
            .await?;
        if status != 200 {
            bail!("GET swarm: {status} {swarm}");
        }
        Ok(swarm)
    }

    /// `docker <args>` on an instance's engine, off the runtime's worker (the runner's
    /// forwarder carries the agents' traffic on it).
    fn docker(&self, instance: &str, args: &[&str]) -> anyhow::Result<String> {
        tokio::task::block_in_place(|| self.runner().docker(instance, args))
    }

    fn calls(&self, from: usize, end: Instant) -> Calls {
        let end = self.timing.at(end);
        let calls: Vec<_> = self
            .timing
            .calls_from(from)
            .into_iter()
            .filter(|c| c.start <= end)
            .collect();
        let mut by_action = BTreeMap::new();
        for call in &calls {
            *by_action.entry(call.action.clone()).or_insert(0) += 1;
        }
        let spans: Vec<(f64, f64)> = calls.iter().map(|c| (c.start, c.end)).collect();
        Calls {
            total: calls.len(),
            by_action,
            errors: calls.iter().filter(|c| c.status >= 400).count(),
            round_trips: critical_path(&spans),
        }
    }

    fn failed(&self, what: &str, state: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{what}: not done after {:?}: {state}\nserver log:\n{}\nagents:\n{}",
            self.limit,
            self.server.log_tail(40),
            tail(&self.runner().logs(), 60)
        )
    }

    /// The instance whose host has the node's private IP.
    async fn instance_of(&self, node_uri: &str) -> anyhow::Result<String> {
        let (_, node) = self
            .server
            .call(reqwest::Method::GET, node_uri, None)
            .await?;
        let ip = node["private_ips"][0]["cidr"]
            .as_str()
            .unwrap_or_default()
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        self.runner()
            .hosts()
            .into_iter()
            .find(|(_, host_ip)| host_ip.to_string() == ip)
            .map(|(instance, _)| instance)
            .with_context(|| format!("no host with {ip:?} for {node_uri}"))
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn all_ready(swarm: &Value, count: usize) -> bool {
    let nodes = swarm["nodes"].as_array().cloned().unwrap_or_default();
    nodes.len() == count && nodes.iter().all(|n| n["docker_status"] == "ready")
}

async fn start_run(ctx: &Ctx, args: &Args) -> anyhow::Result<Run> {
    let moto = tokio::task::spawn_blocking(Moto::shared).await?;
    let account = Moto::new_account_id();
    let fault = FaultProxy::start(&moto.endpoint(), Some(account.clone())).await;
    let timing = Arc::new(TimingProxy::start(fault.endpoint()).await?);
    let server = ServerProcess::start(
        &ctx.bin,
        &timing.endpoint(),
        &["--node-ready".into(), "agent".into()],
    )
    .await?;
    server
        .call(reqwest::Method::GET, &uri::regions(), None)
        .await?;
    // The runner watches moto through a proxy of its own, pinned to the same account: its
    // polling is not counted with the server's calls.
    let mut config = RunnerConfig::new(moto.endpoint(), &ctx.bin);
    config.account = Some(account);
    config.heartbeat = Duration::from_millis(args.heartbeat_ms);
    config.docker = true;
    let runner = InstanceRunner::start(config).await;
    Ok(Run {
        _fault: fault,
        timing,
        server,
        runner: Some(runner),
        limit: Duration::from_secs(args.limit_s),
    })
}

async fn measure_create(
    run: &Run,
    managers: u32,
    workers: u32,
) -> anyhow::Result<(String, Create)> {
    let count = (managers + workers) as usize;
    let first_call = run.timing.len();
    let t0 = Instant::now();
    let (status, created) = run
        .server
        .call(
            reqwest::Method::POST,
            &uri::swarms(),
            Some(json!({
                "name": format!("bench{workers}"),
                "region": uri::region("aws", "us-east-1"),
                "manager_node_type": uri::node_type("aws", "t3.micro"),
                "manager_count": managers,
                "worker_count": workers,
            })),
        )
        .await?;
    if status != 201 && status != 202 {
        bail!("POST swarm/: {status} {created}");
    }
    let uuid = created["uuid"].as_str().context("uuid")?.to_owned();
    let mut first_node: Option<f64> = None;
    let mut cluster_id: Option<f64> = None;
    let mut ready: HashMap<String, f64> = HashMap::new();
    let mut all_ready_at: Option<f64> = None;
    loop {
        let swarm = run.swarm(&uuid).await?;
        let now = secs(t0);
        let nodes = swarm["nodes"].as_array().cloned().unwrap_or_default();
        if first_node.is_none() && nodes.iter().any(|n| n["state"] == "Deployed") {
            first_node = Some(now);
        }
        if cluster_id.is_none() && swarm["cluster_id"].is_string() {
            cluster_id = Some(now);
        }
        for node in &nodes {
            if node["docker_status"] == "ready" {
                let key = node["node"].as_str().unwrap_or_default().to_owned();
                ready.entry(key).or_insert(now);
            }
        }
        let every = all_ready(&swarm, count);
        if every && all_ready_at.is_none() {
            all_ready_at = Some(now);
        }
        if every && swarm["state"] == "Deployed" {
            let end = Instant::now();
            let mut nodes_ready_s: Vec<f64> = ready.into_values().collect();
            nodes_ready_s.sort_by(f64::total_cmp);
            let create = Create {
                first_node_registered_s: first_node,
                cluster_id_s: cluster_id,
                nodes_ready_s,
                all_ready_s: all_ready_at.unwrap_or(now),
                deployed_s: now,
                aws: run.calls(first_call, end),
            };
            eprintln!(
                "{managers}+{workers}: all ready {:.1}s, Deployed {:.1}s, {} AWS calls",
                create.all_ready_s, create.deployed_s, create.aws.total
            );
            return Ok((uuid, create));
        }
        if t0.elapsed() > run.limit {
            return Err(run.failed("the swarm forms", &swarm.to_string()));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `docker node ls` on a manager: hostname → (status, availability, manager status).
fn node_ls(run: &Run, manager: &str) -> anyhow::Result<BTreeMap<String, (String, String, String)>> {
    let text = run.docker(
        manager,
        &[
            "node",
            "ls",
            "--format",
            "{{.Hostname}}|{{.Status}}|{{.Availability}}|{{.ManagerStatus}}",
        ],
    )?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('|').map(str::to_owned);
            Some((
                f.next()?,
                (f.next()?, f.next()?, f.next().unwrap_or_default()),
            ))
        })
        .collect())
}

/// Hostnames of the service's tasks that run (desired and current state running).
fn running_tasks(run: &Run, manager: &str) -> Vec<String> {
    run.docker(
        manager,
        &[
            "service",
            "ps",
            "web",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}}|{{.CurrentState}}",
        ],
    )
    .unwrap_or_default()
    .lines()
    .filter(|l| l.contains("|Running"))
    .map(|l| l.split('|').next().unwrap_or_default().to_owned())
    .collect()
}

async fn start_service(
    run: &Run,
    manager: &str,
    replicas: u32,
    stop_grace_period: Option<&str>,
) -> anyhow::Result<(f64, f64)> {
    let t0 = Instant::now();
    let grace: Vec<&str> = stop_grace_period
        .map(|g| vec!["--stop-grace-period", g])
        .unwrap_or_default();
    run.docker(
        manager,
        &[
            &["service", "create", "--detach"][..],
            &grace,
            &[
                "--name",
                "web",
                "--replicas",
                &replicas.to_string(),
                "--endpoint-mode",
                "dnsrr",
                "--constraint",
                "node.role==worker",
                "--publish",
                "mode=host,target=80",
                flotilla_testkit::BUSYBOX_IMAGE,
                "sh",
                "-c",
                "mkdir -p /www && hostname > /www/index.html && httpd -f -p 80 -h /www",
            ],
        ]
        .concat(),
    )?;
    let cli = secs(t0);
    while running_tasks(run, manager).len() < replicas as usize {
        if t0.elapsed() > run.limit {
            return Err(run.failed(
                "the service runs",
                &run.docker(manager, &["service", "ps", "web"])
                    .unwrap_or_default(),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok((cli, secs(t0)))
}

async fn measure_drain(
    run: &Run,
    uuid: &str,
    manager: &str,
    workers: u32,
    replicas: u32,
) -> anyhow::Result<Drain> {
    let swarm = run.swarm(uuid).await?;
    let worker_cluster = swarm["worker_cluster"]
        .as_str()
        .context("worker_cluster")?
        .to_owned();
    let before = node_ls(run, manager)?;
    let managers: BTreeSet<String> = before
        .iter()
        .filter(|(_, (_, _, m))| !m.is_empty())
        .map(|(h, _)| h.clone())
        .collect();
    let worker_hosts: BTreeSet<String> = before
        .keys()
        .filter(|h| !managers.contains(*h))
        .cloned()
        .collect();
    let tasks_before = running_tasks(run, manager);
    let remaining_count = managers.len() + worker_hosts.len() - 1;

    let first_call = run.timing.len();
    let t0 = Instant::now();
    let (status, body) = run
        .server
        .call(
            reqwest::Method::PATCH,
            &worker_cluster,
            Some(json!({"target_num_nodes": workers - 1})),
        )
        .await?;
    if !(200..300).contains(&status) {
        bail!("PATCH workers to {}: {status} {body}", workers - 1);
    }
    let mut removed: Option<String> = None;
    let mut drain_seen: Option<f64> = None;
    let mut tasks_at: Option<f64> = None;
    let mut gone_at: Option<f64> = None;
    let mut done_at: Option<(f64, Instant)> = None;
    let mut settled_at: Option<f64> = None;
    loop {
        let listed = node_ls(run, manager).unwrap_or_default();
        let now = secs(t0);
        if removed.is_none() {
            removed = listed
                .iter()
                .find(|(h, (_, avail, _))| worker_hosts.contains(*h) && avail == "Drain")
                .map(|(h, _)| h.clone())
                .or_else(|| {
                    (!listed.is_empty())
                        .then(|| {
                            worker_hosts
                                .iter()
                                .find(|h| !listed.contains_key(*h))
                                .cloned()
                        })
                        .flatten()
                });
        }
        if let Some(gone) = &removed {
            if drain_seen.is_none()
                && listed
                    .get(gone)
                    .is_some_and(|(_, avail, _)| avail == "Drain")
            {
                drain_seen = Some(now);
            }
            if tasks_at.is_none() {
                let tasks = running_tasks(run, manager);
                if tasks.len() == replicas as usize && tasks.iter().all(|h| h != gone) {
                    tasks_at = Some(secs(t0));
                }
            }
            if gone_at.is_none() && !listed.is_empty() && !listed.contains_key(gone) {
                gone_at = Some(now);
            }
        }
        if done_at.is_none()
            && let (Some(a), Some(b)) = (tasks_at, gone_at)
        {
            done_at = Some((a.max(b), Instant::now()));
        }
        if settled_at.is_none() {
            let swarm = run.swarm(uuid).await?;
            let (_, cluster) = run
                .server
                .call(reqwest::Method::GET, &worker_cluster, None)
                .await?;
            if all_ready(&swarm, remaining_count)
                && cluster["state"] == "Deployed"
                && cluster["current_num_nodes"] == json!(workers - 1)
            {
                settled_at = Some(secs(t0));
            }
        }
        if let (Some((done, end)), Some(_)) = (done_at, settled_at) {
            let gone = removed.unwrap_or_default();
            let drain = Drain {
                tasks_on_removed_node: tasks_before.iter().filter(|h| **h == gone).count(),
                removed_node: gone,
                drain_seen_s: drain_seen,
                tasks_elsewhere_s: tasks_at.unwrap_or(done),
                node_gone_s: gone_at.unwrap_or(done),
                done_s: done,
                swarm_settled_s: settled_at,
                aws: run.calls(first_call, end.max(Instant::now())),
            };
            eprintln!(
                "workers {workers}→{}: {} ({} tasks) drained; tasks elsewhere {:.1}s, gone {:.1}s, settled {:?}s",
                workers - 1,
                drain.removed_node,
                drain.tasks_on_removed_node,
                drain.tasks_elsewhere_s,
                drain.node_gone_s,
                drain.swarm_settled_s
            );
            return Ok(drain);
        }
        if t0.elapsed() > run.limit {
            return Err(run.failed(
                "a worker drains and leaves",
                &format!(
                    "removed {removed:?}, tasks {tasks_at:?}, gone {gone_at:?}, settled {settled_at:?}, node ls {listed:?}"
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn measure_remove(run: &mut Run, uuid: &str) -> Remove {
    let first_call = run.timing.len();
    let t0 = Instant::now();
    let mut remove = Remove {
        terminated_s: None,
        hosts_gone_s: None,
        aws: run.calls(first_call, t0),
        error: None,
    };
    match run
        .server
        .call(reqwest::Method::DELETE, &uri::swarm(uuid), None)
        .await
    {
        Ok((status, _)) if (200..300).contains(&status) => {}
        Ok((status, body)) => {
            remove.error = Some(format!("DELETE swarm: {status} {body}"));
            return remove;
        }
        Err(e) => {
            remove.error = Some(format!("DELETE swarm: {e:#}"));
            return remove;
        }
    }
    let mut end = Instant::now();
    loop {
        if remove.terminated_s.is_none()
            && let Ok(swarm) = run.swarm(uuid).await
            && swarm["state"] == "Terminated"
        {
            remove.terminated_s = Some(secs(t0));
            end = Instant::now();
        }
        if remove.hosts_gone_s.is_none() && run.runner().hosts().is_empty() {
            remove.hosts_gone_s = Some(secs(t0));
        }
        if remove.terminated_s.is_some() && remove.hosts_gone_s.is_some() {
            break;
        }
        if t0.elapsed() > run.limit {
            remove.error = Some(format!("not removed after {:?}", run.limit));
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    remove.aws = run.calls(first_call, end);
    eprintln!(
        "rm: Terminated {:?}s, hosts gone {:?}s",
        remove.terminated_s, remove.hosts_gone_s
    );
    remove
}

/// One process as `/proc` shows it.
#[derive(Debug, Clone)]
struct Proc {
    pid: u32,
    ppid: u32,
    comm: String,
    cmdline: String,
    pid_ns: String,
    net_ns: String,
}

fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
            let close = stat.rfind(')')?;
            let comm = stat.get(stat.find('(')? + 1..close)?.to_owned();
            let ppid = stat
                .get(close + 2..)?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let link = |ns: &str| {
                std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            Some(Proc {
                pid,
                ppid,
                comm,
                cmdline: std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
                    .unwrap_or_default(),
                pid_ns: link("pid"),
                net_ns: link("net"),
            })
        })
        .collect()
}

fn kib(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|t| crate::sys::status_kib(&t, field))
        .unwrap_or(0)
}

/// Every emulated host of this process: its hostname and its processes (see the module docs).
fn host_processes() -> Vec<(String, Vec<Proc>)> {
    let all = processes();
    let own = std::process::id();
    let own_ns = all
        .iter()
        .find(|p| p.pid == own)
        .map(|p| (p.pid_ns.clone(), p.net_ns.clone()))
        .unwrap_or_default();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in &all {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let by_pid: HashMap<u32, &Proc> = all.iter().map(|p| (p.pid, p)).collect();
    // A host's `unshare` (the holder's parent) names the host's directory, `<pid>-<n>`, in
    // its script and ends with the hostname.
    let marker = format!("flotilla-host {own}-");
    let mut hosts = Vec::new();
    for unshare in all
        .iter()
        .filter(|p| p.comm == "unshare" && p.cmdline.contains(&marker))
    {
        let Some(holder) = children
            .get(&unshare.pid)
            .and_then(|c| c.first())
            .and_then(|pid| by_pid.get(pid))
        else {
            continue;
        };
        let hostname = unshare
            .cmdline
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_owned();
        let (pid_ns, net_ns) = (holder.pid_ns.clone(), holder.net_ns.clone());
        if pid_ns == own_ns.0 || net_ns == own_ns.1 {
            continue;
        }
        let mut members: BTreeSet<u32> = all
            .iter()
            .filter(|p| p.pid_ns == pid_ns || p.net_ns == net_ns)
            .map(|p| p.pid)
            .collect();
        members.insert(unshare.pid);
        // Containers have namespaces of their own: take descendants too.
        let mut stack: Vec<u32> = members.iter().copied().collect();
        while let Some(pid) = stack.pop() {
            for child in children.get(&pid).into_iter().flatten() {
                if members.insert(*child) {
                    stack.push(*child);
                }
            }
        }
        let procs = members
            .into_iter()
            .filter(|pid| *pid != own)
            .filter_map(|pid| by_pid.get(&pid).map(|p| (*p).clone()))
            .collect();
        hosts.push((hostname, procs));
    }
    hosts
}

fn memory(roles: &BTreeMap<String, String>, tasks: &[String]) -> Vec<HostMemory> {
    let mut found: Vec<HostMemory> = host_processes()
        .into_iter()
        .map(|(hostname, procs)| {
            let mut by = BTreeMap::new();
            let mut rss = 0;
            let mut pss = 0;
            for p in &procs {
                let r = kib(p.pid, "status", "VmRSS");
                rss += r;
                pss += kib(p.pid, "smaps_rollup", "Pss");
                // `flotilla` is the agent; shims and `sleep` (the holder) by their name.
                *by.entry(p.comm.clone()).or_insert(0) += r;
            }
            HostMemory {
                role: roles.get(&hostname).cloned().unwrap_or_else(|| "?".into()),
                tasks: tasks.iter().filter(|h| **h == hostname).count(),
                hostname,
                processes: procs.len(),
                rss_kib: rss,
                pss_kib: pss,
                rss_by_process_kib: by,
            }
        })
        .collect();
    found.sort_by(|a, b| (&a.role, &a.hostname).cmp(&(&b.role, &b.hostname)));
    found
}

async fn one_run(ctx: &Ctx, args: &Args, workers: u32) -> anyhow::Result<RunResult> {
    if workers == 0 {
        bail!("--workers must be at least 1 (one is drained)");
    }
    let replicas = if args.exact_replicas {
        args.replicas
    } else {
        args.replicas.max(workers)
    };
    let mut run = start_run(ctx, args).await?;
    let result = async {
        let (uuid, create) = measure_create(&run, args.managers, workers).await?;
        let swarm = run.swarm(&uuid).await?;
        let mut manager = None;
        for node in swarm["nodes"].as_array().into_iter().flatten() {
            if node["role"] == "manager" && manager.is_none() {
                manager = Some(
                    run.instance_of(node["node"].as_str().unwrap_or_default())
                        .await?,
                );
            }
        }
        let manager = manager.context("a manager")?;
        let (cli_s, service_s) =
            start_service(&run, &manager, replicas, args.stop_grace_period.as_deref()).await?;
        eprintln!("service of {replicas} replicas running after {service_s:.1}s (CLI {cli_s:.1}s)");
        // Let the engines settle after the tasks started before reading memory.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let roles: BTreeMap<String, String> = node_ls(&run, &manager)?
            .into_iter()
            .map(|(h, (_, _, m))| (h, if m.is_empty() { "worker" } else { "manager" }.into()))
            .collect();
        let tasks = running_tasks(&run, &manager);
        let memory = tokio::task::block_in_place(|| memory(&roles, &tasks));
        let server_rss_kib = crate::sys::sample(run.server.pid).map(|s| s.rss_kib);
        let drain = measure_drain(&run, &uuid, &manager, workers, replicas).await?;
        Ok::<_, anyhow::Error>((
            uuid,
            create,
            (cli_s, service_s),
            memory,
            server_rss_kib,
            drain,
        ))
    }
    .await;
    let outcome = match result {
        Ok((
            uuid,
            create,
            (service_create_cli_s, service_start_s),
            memory,
            server_rss_kib,
            drain,
        )) => {
            let remove = measure_remove(&mut run, &uuid).await;
            Ok(RunResult {
                managers: args.managers,
                workers,
                create,
                replicas,
                service_create_cli_s,
                service_start_s,
                memory,
                server_rss_kib,
                drain,
                remove,
            })
        }
        Err(e) => Err(e),
    };
    // Every host is powered off with the runner (blocking: off the runtime).
    if let Some(runner) = run.runner.take() {
        tokio::task::spawn_blocking(move || drop(runner)).await?;
    }
    run.server.stop().await;
    outcome
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn by_action(calls: &Calls) -> String {
    calls
        .by_action
        .iter()
        .map(|(a, n)| format!("{a} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for &workers in &args.workers {
        runs.push(one_run(ctx, &args, workers).await?);
    }

    let mut create = Table::new(
        "Create: POST swarm/ → every node ready and the swarm Deployed",
        &[
            "managers + workers",
            "first node registered (s)",
            "swarm initialised (s)",
            "first ready (s)",
            "all ready (s)",
            "Deployed (s)",
            "AWS calls",
            "round trips",
            "R replicas",
            "docker service create answered (s)",
            "R replicas running (s)",
        ],
    );
    let mut drain = Table::new(
        "Scale workers W → W − 1: a drained worker's tasks run elsewhere and it leaves",
        &[
            "managers + workers",
            "tasks on the removed worker",
            "Drain seen (s)",
            "replicas running elsewhere (s)",
            "gone from docker node ls (s)",
            "both (s)",
            "swarm object settled (s)",
            "AWS calls",
        ],
    );
    let mut memory = Table::new(
        "Resident memory per emulated host (service running; MiB)",
        &[
            "managers + workers",
            "role",
            "hosts",
            "RSS per host (mean)",
            "PSS per host (mean)",
            "dockerd",
            "containerd",
            "shims",
            "agent",
            "docker-proxy",
            "tasks' processes",
            "other (holder, nsenter)",
        ],
    );
    let mut remove = Table::new(
        "rm: DELETE swarm/ → Terminated, and every host powered off",
        &[
            "managers + workers",
            "Terminated (s)",
            "hosts gone (s)",
            "AWS calls",
        ],
    );
    let mut actions = Table::new(
        "AWS calls by action",
        &["managers + workers", "operation", "calls by action"],
    );
    // The issue sets no targets for swarms: figures only.
    let targets: Vec<Target> = Vec::new();
    for r in &runs {
        let label = format!("{} + {}", r.managers, r.workers);
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "–".into());
        create.row(vec![
            label.clone(),
            opt(r.create.first_node_registered_s),
            opt(r.create.cluster_id_s),
            opt(r.create.nodes_ready_s.first().copied()),
            format!("{:.1}", r.create.all_ready_s),
            format!("{:.1}", r.create.deployed_s),
            r.create.aws.total.to_string(),
            r.create.aws.round_trips.to_string(),
            r.replicas.to_string(),
            format!("{:.1}", r.service_create_cli_s),
            format!("{:.1}", r.service_start_s),
        ]);
        drain.row(vec![
            label.clone(),
            r.drain.tasks_on_removed_node.to_string(),
            opt(r.drain.drain_seen_s),
            format!("{:.1}", r.drain.tasks_elsewhere_s),
            format!("{:.1}", r.drain.node_gone_s),
            format!("{:.1}", r.drain.done_s),
            opt(r.drain.swarm_settled_s),
            r.drain.aws.total.to_string(),
        ]);
        for role in ["manager", "worker"] {
            let hosts: Vec<&HostMemory> = r.memory.iter().filter(|h| h.role == role).collect();
            if hosts.is_empty() {
                continue;
            }
            let n = hosts.len() as u64;
            let part = |names: &[&str]| {
                hosts
                    .iter()
                    .flat_map(|h| h.rss_by_process_kib.iter())
                    .filter(|(k, _)| names.iter().any(|n| k.starts_with(n)))
                    .map(|(_, v)| *v)
                    .sum::<u64>()
                    / n
            };
            let total = hosts.iter().map(|h| h.rss_kib).sum::<u64>() / n;
            let dockerd = part(&["dockerd"]);
            // `containerd-shim-runc-v2` and friends start with `containerd-shim`.
            let shims = part(&["containerd-shim"]);
            let containerd = part(&["containerd"]) - shims;
            let agent = part(&["flotilla"]);
            let proxy = part(&["docker-proxy"]);
            let tasks = part(&["httpd"]);
            memory.row(vec![
                label.clone(),
                role.into(),
                n.to_string(),
                mib(total),
                mib(hosts.iter().map(|h| h.pss_kib).sum::<u64>() / n),
                mib(dockerd),
                mib(containerd),
                mib(shims),
                mib(agent),
                mib(proxy),
                mib(tasks),
                mib(total.saturating_sub(dockerd + containerd + shims + agent + proxy + tasks)),
            ]);
        }
        remove.row(vec![
            label.clone(),
            opt(r.remove.terminated_s),
            opt(r.remove.hosts_gone_s),
            r.remove.aws.total.to_string(),
        ]);
        for (op, calls) in [
            ("create", &r.create.aws),
            ("scale workers −1", &r.drain.aws),
            ("rm", &r.remove.aws),
        ] {
            actions.row(vec![label.clone(), op.into(), by_action(calls)]);
        }
    }
    let report = ctx.report(
        "swarm",
        "5. Swarms of real Docker engines (moto; every instance a host with its own dockerd and agent)",
        json!({
            "managers": args.managers,
            "workers": args.workers,
            "replicas": args.replicas,
            "exact_replicas": args.exact_replicas,
            "stop_grace_period": args.stop_grace_period.as_deref().unwrap_or("Docker's default (10s)"),
            "agent_heartbeat_ms": args.heartbeat_ms,
            "poll_ms": POLL.as_millis() as u64,
            "aws_latency_ms": 0,
            "node_type": "t3.micro",
            "region": "us-east-1",
            "service": "docker service create --replicas R --endpoint-mode dnsrr --constraint node.role==worker --publish mode=host,target=80 flotilla/busybox:latest sh -c 'mkdir -p /www && hostname > /www/index.html && httpd -f -p 80 -h /www'",
            "memory": "per host: processes in the host's PID or network namespace (holder, dockerd, containerd, shims, agent, the forked nsenter) and their descendants (containers); VmRSS summed (shared pages counted once per process) and Pss from smaps_rollup summed",
        }),
        targets,
        vec![create, drain, memory, remove, actions],
        json!({"runs": runs}),
    );
    ctx.write(&report)
}
