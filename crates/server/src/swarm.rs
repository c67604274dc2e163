//! The swarm worker: forms and keeps Docker swarms on the nodes of their two node clusters.
//!
//! One level-triggered task for every swarm: read the swarm's row, its nodes and what their
//! engines last reported (the store), ask `flotilla_core::plan::swarm::plan` what to do,
//! and carry the steps out — the two decisions as store writes, everything an engine must
//! do as tasks for the agents.
//!
//! Design decisions:
//! * **The server never talks to an engine.** An engine's API is not exposed off its node;
//!   each agent reports its own engine and carries out the tasks addressed to it. A task
//!   reaches its agent in a heartbeat answer ([`Mailbox`]), so it needs no connection into
//!   the node and no new port, and it is as authenticated as the heartbeat.
//! * **One planner per swarm, any replica for its agents.** A swarm is planned on one
//!   replica at a time, the holder of its lease (`swarm:<uuid>`; every replica keeps a
//!   runner waiting for it, so swarms spread over the replicas and a dead replica's are
//!   taken over).
//! * **Tasks are stored, not held.** Any replica may answer an agent, so a swarm's worker
//!   stores each node's tasks, sealed, when its plan for the node changes
//!   (`agent_tasks`), and every replica follows the table ([`follow_tasks`]); results are
//!   recorded by the replica the agent reports to ([`record_results`]).
//! * **Nothing here is remembered that correctness needs.** The tasks are planned again on
//!   every pass; a new owner of the work stores every node's tasks once and plans again from
//!   the store, which holds the recorded bootstrap manager, the adopted cluster ID, the
//!   sealed tokens and the agents' last reports. A task's id is derived from its step, so a
//!   step planned again after a restart is the same task, and agents run each task
//!   idempotently.
//! * **Bootstrapping is decided, recorded, then done.** The planner picks the manager that
//!   initialises; the pick is written (compare-and-set) before any `Init` is handed out, so
//!   no two managers can each start a swarm, whatever crashes or races.
//! * **Join tokens are sealed** in the store (`secrets::SWARM_TOKENS`) and leave the server
//!   only inside a `SwarmJoin` task, in the heartbeat answer of a node of that swarm that has
//!   not joined — the planner emits `Join` for no other.
//! * Results come back with the agent's next `PATCH`: their messages go into the swarm's
//!   action log, an `Init`'s tokens are sealed and stored, and the swarm is planned again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_api::agent::{AgentTask, EngineReport, JoinTokens, TaskOp, TaskResult};
use flotilla_api::{action_state, date};
use flotilla_core::cloud::{Cloud, Instance, InstanceState, NetworkRequest};
use flotilla_core::plan::lb::{self, PublishedPort};
use flotilla_core::plan::swarm::{
    self as planner, Availability, Desired, EngineState, LocalState, Member, NodeStatus, Observed,
    Role, Step, SwarmNode,
};
use flotilla_core::state::{ClusterState, NodeState};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::lease::Leases;

use crate::secrets::{AGENT_TASK, SWARM_TOKENS, SecretKey};
use crate::store::{NodeRecord, SealedTask, Store, StoreError, SwarmRecord};

/// How long a task handed to an agent is left to it before it is handed out again (its
/// result, or the report showing its effect, normally arrives within a heartbeat or two).
pub const REHAND_AFTER: Duration = Duration::from_secs(30);
/// How soon a task that failed is handed out again (a join refused because the managers
/// are still electing a leader succeeds a moment later).
pub const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How often every swarm is planned again without a nudge.
pub const PASS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Posted {
    task: AgentTask,
    /// When it is handed out (again).
    due: Instant,
}

/// This replica's copy of the tasks waiting for each node's agent, for heartbeat answers.
///
/// The tasks themselves live in the database (`agent_tasks`, written by the holder of the
/// swarm lease): every replica answers heartbeats, and an agent's connection may reach any
/// of them. This copy follows the table ([`follow_tasks`]) and is updated at once on the
/// worker's own replica ([`Mailbox::post`]); when each task is handed out (again) is this
/// replica's own bookkeeping — a task handed out by two replicas is run twice, which every
/// task tolerates (they are idempotent on the engine).
#[derive(Debug)]
pub struct Mailbox {
    tasks: Mutex<Tasks>,
    /// Bumped by every report, so each swarm's worker here plans again at once.
    wake: watch::Sender<()>,
}

impl Default for Mailbox {
    fn default() -> Self {
        Mailbox {
            tasks: Mutex::default(),
            wake: watch::Sender::new(()),
        }
    }
}

#[derive(Debug, Default)]
struct Tasks {
    by_node: HashMap<String, Vec<Posted>>,
    /// Bumped by every local [`Mailbox::post`], so that a copy of the table read before it
    /// cannot undo it ([`Mailbox::replace_all`]).
    version: u64,
}

impl Tasks {
    /// Sets the tasks of `node`: a task already there keeps when it is due, new ones are due
    /// now, the others are dropped.
    fn set(&mut self, node: &str, tasks: Vec<AgentTask>, now: Instant) {
        let before = self.by_node.remove(node).unwrap_or_default();
        if tasks.is_empty() {
            return;
        }
        let mut due: HashMap<String, Instant> =
            before.into_iter().map(|p| (p.task.id, p.due)).collect();
        let posted = tasks
            .into_iter()
            .map(|task| Posted {
                due: due.remove(&task.id).unwrap_or(now),
                task,
            })
            .collect();
        self.by_node.insert(node.to_owned(), posted);
    }
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the tasks of `node` to `tasks` (the worker, right after storing them): a task
    /// already posted keeps when it is due, new ones are due now, the others are dropped.
    pub fn post(&self, node: &str, tasks: Vec<AgentTask>) {
        let mut all = self.lock();
        all.version += 1;
        all.set(node, tasks, Instant::now());
    }

    /// The version a copy of the table must be read after to replace the posted tasks.
    fn version(&self) -> u64 {
        self.lock().version
    }

    /// Sets every node's tasks to `tasks` (the table as read after [`Mailbox::version`]
    /// answered `read_after`), unless a local post came in between (the next read carries
    /// it).
    fn replace_all(&self, tasks: HashMap<String, Vec<AgentTask>>, read_after: u64) {
        let mut all = self.lock();
        if all.version != read_after {
            return;
        }
        let now = Instant::now();
        let gone: Vec<String> = all
            .by_node
            .keys()
            .filter(|node| !tasks.contains_key(*node))
            .cloned()
            .collect();
        for node in gone {
            all.by_node.remove(&node);
        }
        for (node, tasks) in tasks {
            all.set(&node, tasks, now);
        }
    }

    /// The tasks to hand to `node`'s agent now (a heartbeat): those due. A task handed out
    /// is due again after [`REHAND_AFTER`], in case its answer was lost.
    pub fn take(&self, node: &str) -> Vec<AgentTask> {
        let mut all = self.lock();
        let Some(posted) = all.by_node.get_mut(node) else {
            return Vec::new();
        };
        let now = Instant::now();
        posted
            .iter_mut()
            .filter(|p| p.due <= now)
            .map(|p| {
                p.due = now + REHAND_AFTER;
                p.task.clone()
            })
            .collect()
    }

    /// An agent's results (recorded already, with its fresh report): a task done is not
    /// handed out again unless the worker still plans it [`REHAND_AFTER`] later (its effect
    /// normally shows in the next pass, which drops it), a failed one is due again after
    /// [`RETRY_AFTER`]. Wakes the worker, if it runs here.
    pub fn report(&self, node: &str, results: &[TaskResult]) {
        if !results.is_empty() {
            let now = Instant::now();
            if let Some(posted) = self.lock().by_node.get_mut(node) {
                for result in results {
                    let due = now + if result.ok { REHAND_AFTER } else { RETRY_AFTER };
                    posted
                        .iter_mut()
                        .filter(|p| p.task.id == result.id)
                        .for_each(|p| p.due = due);
                }
            }
        }
        self.wake.send_replace(());
    }
}

/// How often every replica reads the tasks table into its [`Mailbox`].
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Reads the tasks table into `mailbox` once.
pub async fn read_tasks(
    mailbox: &Mailbox,
    store: &Store,
    secret_key: &SecretKey,
) -> anyhow::Result<()> {
    let read_after = mailbox.version();
    let mut tasks = HashMap::new();
    for (node, sealed) in store.agent_tasks().await? {
        let mut opened = Vec::with_capacity(sealed.len());
        for task in sealed {
            let plain = secret_key.open(
                AGENT_TASK,
                &hex::decode(&task.nonce)?,
                &hex::decode(&task.sealed)?,
            )?;
            opened.push(serde_json::from_slice::<AgentTask>(&plain)?);
        }
        tasks.insert(node, opened);
    }
    mailbox.replace_all(tasks, read_after);
    Ok(())
}

/// Keeps `mailbox` following the tasks table, every [`FOLLOW_INTERVAL`], until `stop`
/// (every replica runs it: any of them may answer an agent's heartbeat).
pub async fn follow_tasks(
    mailbox: Arc<Mailbox>,
    store: Store,
    secret_key: SecretKey,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        if let Err(error) = read_tasks(&mailbox, &store, &secret_key).await {
            tracing::warn!(error = format!("{error:#}"), "reading the agents' tasks");
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Records an agent's task results (any replica, as the agent's `PATCH` arrives): each
/// result's message goes into its swarm's action log, and an `Init`'s join tokens are
/// sealed and stored (only from the recorded bootstrap manager).
pub async fn record_results(
    store: &Store,
    secret_key: &SecretKey,
    node: &str,
    results: &[TaskResult],
) -> anyhow::Result<()> {
    if results.is_empty() {
        return Ok(());
    }
    let Some(record) = store.node(node).await? else {
        return Ok(());
    };
    let Some(cluster) = record.cluster_uuid.as_deref() else {
        return Ok(());
    };
    let Some(swarm) = store
        .swarms()
        .await?
        .into_iter()
        .find(|s| s.manager_cluster == cluster || s.worker_cluster == cluster)
    else {
        return Ok(());
    };
    for result in results {
        let outcome = if result.ok { "done" } else { "failed" };
        log_to(
            store,
            &swarm,
            &format!(
                "node {node}: task {} {outcome}: {}",
                result.id, result.message
            ),
        )
        .await;
        if let Some(tokens) = &result.join_tokens
            && result.ok
            && swarm.bootstrap_node.as_deref() == Some(node)
        {
            let (nonce, sealed) = secret_key.seal(SWARM_TOKENS, &serde_json::to_vec(tokens)?)?;
            store
                .set_swarm_tokens(&swarm.uuid, &hex::encode(nonce), &hex::encode(sealed))
                .await?;
        }
    }
    Ok(())
}

/// Writes one line into the swarm's current action log (and the server's log).
async fn log_to(store: &Store, swarm: &SwarmRecord, line: &str) {
    tracing::info!(swarm = swarm.uuid, "{line}");
    if let Some(action) = &swarm.current_action {
        let stamped = format!("{} {line}\n", date::format_iso_unix(date::now_unix()));
        if let Err(error) = store.append_action_log(action, &stamped).await {
            tracing::warn!(error = %error, "writing the swarm's action log");
        }
    }
}

/// The id of the task that carries out `step` of `swarm`: the same step, the same id.
fn task_id(swarm: &str, step: &Step) -> String {
    let digest = Sha256::digest(format!("{swarm}:{step:?}").as_bytes());
    hex::encode(&digest[..12])
}

fn local_state(state: &str) -> LocalState {
    match state {
        "active" => LocalState::Active,
        "pending" => LocalState::Pending,
        "error" => LocalState::Error,
        "locked" => LocalState::Locked,
        _ => LocalState::Inactive,
    }
}

fn role(role: &str) -> Role {
    if role == "manager" {
        Role::Manager
    } else {
        Role::Worker
    }
}

fn swarm_node(node: &flotilla_api::agent::SwarmNodeInfo) -> SwarmNode {
    SwarmNode {
        id: node.id.clone(),
        role: role(&node.role),
        availability: match node.availability.as_str() {
            "drain" => Availability::Drain,
            "pause" => Availability::Pause,
            _ => Availability::Active,
        },
        status: match node.status.as_str() {
            "ready" => NodeStatus::Ready,
            "down" | "disconnected" => NodeStatus::Down,
            _ => NodeStatus::Unknown,
        },
        reachable: node.reachability.as_deref().map(|r| r == "reachable"),
        leader: node.leader,
        labels: node.labels.clone(),
        running_tasks: node.running_tasks,
    }
}

/// The address a node advertises to the swarm: its private IP, without the prefix.
fn address(node: &NodeRecord) -> Option<String> {
    let ip = node.private_ip.as_deref()?;
    Some(ip.split('/').next().unwrap_or(ip).to_owned())
}

/// A swarm's nodes as the planner sees them.
#[derive(Debug)]
pub struct SwarmView {
    pub swarm: SwarmRecord,
    /// Every node of the two clusters with its role (terminated ones included).
    pub nodes: Vec<(NodeRecord, Role)>,
}

impl SwarmView {
    pub async fn load(store: &Store, swarm: SwarmRecord) -> Result<SwarmView, StoreError> {
        let mut nodes = Vec::new();
        for (cluster, role) in [
            (&swarm.manager_cluster, Role::Manager),
            (&swarm.worker_cluster, Role::Worker),
        ] {
            nodes.extend(
                store
                    .nodes_of(cluster)
                    .await?
                    .into_iter()
                    .map(|n| (n, role)),
            );
        }
        Ok(SwarmView { swarm, nodes })
    }

    /// The swarm's node list from the freshest manager that can answer for it: the
    /// leader's report when there is one.
    pub fn node_list(&self) -> Option<&[flotilla_api::agent::SwarmNodeInfo]> {
        let lists: Vec<&Vec<flotilla_api::agent::SwarmNodeInfo>> = self
            .reports()
            .filter(|(node, _)| node.state == NodeState::Deployed)
            .filter_map(|(_, report)| {
                let swarm = &report.engine.as_ref()?.swarm;
                (swarm.control_available
                    && swarm.cluster_id.is_some()
                    && swarm.cluster_id == self.swarm.cluster_id)
                    .then_some(swarm.nodes.as_ref()?)
            })
            .collect();
        lists
            .iter()
            .find(|list| list.iter().any(|n| n.leader))
            .or(lists.first())
            .map(|l| l.as_slice())
    }

    /// The swarm's services from the same manager report as [`SwarmView::node_list`].
    pub fn services(&self) -> Option<&[flotilla_api::agent::ServiceInfo]> {
        let list = self.node_list()?;
        self.reports()
            .filter_map(|(_, report)| report.engine.as_ref())
            .find(|e| e.swarm.nodes.as_deref() == Some(list))
            .and_then(|e| e.swarm.services.as_deref())
    }

    /// The swarm an engine is in. A worker's `docker info` has no cluster ID (only managers
    /// know it), so an active engine whose node ID is in the swarm's node list is in the
    /// swarm.
    pub fn cluster_of(&self, swarm: &flotilla_api::agent::SwarmInfo) -> Option<String> {
        if swarm.cluster_id.is_some() {
            return swarm.cluster_id.clone();
        }
        let id = swarm.node_id.as_deref()?;
        let listed = self.node_list()?.iter().any(|n| n.id == id);
        listed.then(|| self.swarm.cluster_id.clone()).flatten()
    }

    fn reports(&self) -> impl Iterator<Item = (&NodeRecord, &EngineReport)> {
        self.nodes
            .iter()
            .filter_map(|(node, _)| Some((node, node.engine.report.as_ref()?)))
    }

    /// The planner's observation.
    pub fn observed(&self, now_ms: u64, drain_started: &BTreeMap<String, u64>) -> Observed {
        let members = self
            .nodes
            .iter()
            .filter(|(node, _)| {
                node.state != NodeState::Terminated || node.engine.last_swarm_node_id.is_some()
            })
            .map(|(node, role)| {
                let engine = node
                    .engine
                    .report
                    .as_ref()
                    .and_then(|r| r.engine.as_ref())
                    .map(|e| EngineState {
                        state: local_state(&e.swarm.state),
                        node_id: e.swarm.node_id.clone(),
                        cluster_id: self.cluster_of(&e.swarm),
                        control: e.swarm.control_available,
                    });
                Member {
                    node: node.uuid.clone(),
                    role: *role,
                    az: node.availability_zone.clone(),
                    cluster: String::new(),
                    private_ip: address(node),
                    reachable: node.state == NodeState::Deployed,
                    leaving: node.swarm.leaving,
                    gone: node.state == NodeState::Terminated,
                    engine,
                    last_node_id: node.engine.last_swarm_node_id.clone(),
                }
            })
            .collect();
        Observed {
            members,
            nodes: self.node_list().map(|l| l.iter().map(swarm_node).collect()),
            now_ms,
            drain_started: drain_started.clone(),
        }
    }
}

/// What the worker needs.
#[derive(Debug, Clone)]
pub struct SwarmWorker<C> {
    pub store: Store,
    pub cloud: Arc<C>,
    /// How the swarm's network is asked for (image, AZs, ingress), as the clusters ask.
    pub settings: crate::reconcile::ReconcileSettings,
    /// Nudged when a node is released, so its cluster terminates it at once.
    pub reconciler: crate::reconcile::Reconciler,
    pub mailbox: Arc<Mailbox>,
    pub secret_key: SecretKey,
    pub liveness: Arc<crate::liveness::Liveness>,
}

/// What one swarm's passes remember: only what makes logs readable and drains bounded.
#[derive(Debug, Default)]
struct Memory {
    /// The steps already logged (by task id), so a step waiting for its agent is logged once.
    logged: HashSet<String>,
    /// The last `waiting` lines logged.
    waiting: Vec<String>,
    /// When each leaving member's drain was first asked.
    drain_started: BTreeMap<String, u64>,
    /// The task ids last stored for each node (see [`SwarmWorker::deliver`]).
    delivered: HashMap<String, Vec<String>>,
    /// The load balancer's last converged inputs and when (see [`SwarmWorker::balance`]).
    balanced: Option<(LbInputs, Instant)>,
}

/// What a swarm's load balancer follows: its nodes (instance, subnet) and published ports.
type LbInputs = (BTreeSet<(String, String)>, BTreeSet<PublishedPort>);

/// A swarm's lease: one replica plans it (`swarm:<uuid>`).
pub fn swarm_work(uuid: &str) -> String {
    format!("swarm:{uuid}")
}

/// How often a swarm's load balancer is converged again although nothing changed (repairs
/// drift: a listener deleted by hand).
pub const LB_RESYNC: Duration = Duration::from_secs(60);

impl<C: Cloud + 'static> SwarmWorker<C> {
    /// Keeps a runner waiting for the lease of every live swarm (found every
    /// [`PASS_INTERVAL`]), which plans that swarm while this replica holds it
    /// ([`SwarmWorker::run_one`]), until `stop` turns true. Every replica runs this, so a
    /// dead replica's swarms are taken over, and swarms spread over the replicas.
    pub async fn run(self: Arc<Self>, leases: Arc<Leases>, mut stop: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        let mut waiting: HashSet<String> = HashSet::new();
        loop {
            if *stop.borrow() {
                break;
            }
            self.liveness.beat("swarm worker");
            match self.store.swarms().await {
                Ok(swarms) => {
                    for swarm in swarms {
                        if swarm.state == ClusterState::Terminated
                            || !waiting.insert(swarm.uuid.clone())
                        {
                            continue;
                        }
                        let (worker, leases, stop) = (self.clone(), leases.clone(), stop.clone());
                        tasks.spawn(async move {
                            let uuid = swarm.uuid;
                            leases
                                .run(&swarm_work(&uuid), || {
                                    worker.clone().run_one(uuid.clone(), stop.clone())
                                })
                                .await;
                            uuid
                        });
                    }
                }
                Err(error) => tracing::warn!(error = %error, "reading swarms"),
            }
            while let Some(ended) = tasks.try_join_next() {
                match ended {
                    Ok(uuid) => {
                        waiting.remove(&uuid);
                    }
                    Err(error) => tracing::error!(%error, "a swarm's worker failed"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(PASS_INTERVAL) => {}
                _ = stop.changed() => {}
            }
        }
        tasks.shutdown().await;
    }

    /// Plans one swarm on every report here and at least every [`PASS_INTERVAL`], while
    /// this replica holds its lease; returns once the swarm is terminated (or at `stop`).
    async fn run_one(self: Arc<Self>, uuid: String, mut stop: watch::Receiver<bool>) {
        let started = Instant::now();
        let mut memory = Memory::default();
        let mut woken = self.mailbox.wake.subscribe();
        loop {
            if *stop.borrow() {
                return;
            }
            match self.store.swarm(&uuid).await {
                Ok(Some(swarm)) if swarm.state != ClusterState::Terminated => {
                    let now_ms = started.elapsed().as_millis() as u64;
                    if let Err(error) = self.pass(swarm, now_ms, &mut memory).await {
                        tracing::warn!(
                            swarm = uuid,
                            error = format!("{error:#}"),
                            "swarm pass failed"
                        );
                    }
                }
                Ok(_) => return,
                Err(error) => tracing::warn!(swarm = uuid, error = %error, "reading the swarm"),
            }
            tokio::select! {
                _ = woken.changed() => {}
                _ = tokio::time::sleep(PASS_INTERVAL) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn log(&self, swarm: &SwarmRecord, line: &str) {
        log_to(&self.store, swarm, line).await;
    }

    /// Makes `tasks` the ones waiting for `node`'s agent: stored (sealed) for every replica
    /// when they differ from what this tenure last stored — so an unchanged plan costs no
    /// write, and a new tenure stores each node's tasks once — and posted here at once.
    async fn deliver(
        &self,
        node: &str,
        tasks: Vec<AgentTask>,
        memory: &mut Memory,
    ) -> anyhow::Result<()> {
        let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
        if memory.delivered.get(node) != Some(&ids) {
            let mut sealed = Vec::with_capacity(tasks.len());
            for task in &tasks {
                let (nonce, ciphertext) = self
                    .secret_key
                    .seal(AGENT_TASK, &serde_json::to_vec(task)?)?;
                sealed.push(SealedTask {
                    id: task.id.clone(),
                    nonce: hex::encode(nonce),
                    sealed: hex::encode(ciphertext),
                });
            }
            self.store.set_agent_tasks(node, &sealed).await?;
            memory.delivered.insert(node.to_owned(), ids);
        }
        self.mailbox.post(node, tasks);
        Ok(())
    }

    fn tokens(&self, swarm: &SwarmRecord) -> anyhow::Result<Option<JoinTokens>> {
        let Some((nonce, sealed)) = &swarm.tokens else {
            return Ok(None);
        };
        let plain =
            self.secret_key
                .open(SWARM_TOKENS, &hex::decode(nonce)?, &hex::decode(sealed)?)?;
        Ok(Some(serde_json::from_slice(&plain)?))
    }

    /// One pass over one swarm: observe, plan, carry out.
    async fn pass(
        &self,
        swarm: SwarmRecord,
        now_ms: u64,
        memory: &mut Memory,
    ) -> anyhow::Result<()> {
        let view = SwarmView::load(&self.store, swarm).await?;
        let swarm = &view.swarm;
        if swarm.state == ClusterState::Terminating {
            return self.finish_termination(&view, memory).await;
        }
        let desired = Desired {
            managers: swarm.managers,
            bootstrap: swarm.bootstrap_node.clone(),
            cluster_id: swarm.cluster_id.clone(),
            have_tokens: swarm.tokens.is_some(),
        };
        let mut observed = view.observed(now_ms, &memory.drain_started);
        let clusters = [
            (Role::Manager, &swarm.manager_cluster),
            (Role::Worker, &swarm.worker_cluster),
        ];
        let mut names = HashMap::new();
        for (role, uuid) in clusters {
            if let Some(cluster) = self.store.cluster(uuid).await? {
                names.insert(role, cluster.spec.name);
            }
        }
        for member in &mut observed.members {
            member.cluster = names.get(&member.role).cloned().unwrap_or_default();
        }
        let plan = planner::plan(&desired, &observed);
        let tokens = self.tokens(swarm)?;
        let mut tasks: BTreeMap<String, Vec<AgentTask>> = BTreeMap::new();
        for step in &plan.steps {
            let id = task_id(&swarm.uuid, step);
            let first = memory.logged.insert(id.clone());
            if first {
                self.log(swarm, &describe(step, &view)).await;
            }
            let (node, op) = match step {
                Step::ChooseBootstrap { node } => {
                    self.store.choose_bootstrap(&swarm.uuid, node).await?;
                    continue;
                }
                Step::AdoptCluster { cluster_id } => {
                    self.store.adopt_cluster_id(&swarm.uuid, cluster_id).await?;
                    continue;
                }
                Step::Init {
                    node,
                    advertise_addr,
                } => (
                    node,
                    TaskOp::SwarmInit {
                        advertise_addr: advertise_addr.clone(),
                    },
                ),
                Step::Join {
                    node,
                    role,
                    advertise_addr,
                    managers,
                } => {
                    let Some(tokens) = &tokens else { continue };
                    let token = match role {
                        Role::Manager => tokens.manager.clone(),
                        Role::Worker => tokens.worker.clone(),
                    };
                    (
                        node,
                        TaskOp::SwarmJoin {
                            token,
                            advertise_addr: advertise_addr.clone(),
                            remote_addrs: managers.clone(),
                        },
                    )
                }
                Step::Promote { via, node_id } | Step::Demote { via, node_id } => (
                    via,
                    TaskOp::NodeUpdate {
                        node_id: node_id.clone(),
                        role: Some(
                            if matches!(step, Step::Promote { .. }) {
                                "manager"
                            } else {
                                "worker"
                            }
                            .into(),
                        ),
                        availability: None,
                        labels: BTreeMap::new(),
                    },
                ),
                Step::Drain { via, node_id } => {
                    if let Some(member) = view.nodes.iter().find(|(n, _)| {
                        n.engine
                            .report
                            .as_ref()
                            .and_then(|r| r.engine.as_ref())
                            .and_then(|e| e.swarm.node_id.as_deref())
                            == Some(node_id)
                    }) {
                        memory
                            .drain_started
                            .entry(member.0.uuid.clone())
                            .or_insert(now_ms);
                    }
                    (
                        via,
                        TaskOp::NodeUpdate {
                            node_id: node_id.clone(),
                            role: None,
                            availability: Some("drain".into()),
                            labels: BTreeMap::new(),
                        },
                    )
                }
                Step::Label {
                    via,
                    node_id,
                    labels,
                } => (
                    via,
                    TaskOp::NodeUpdate {
                        node_id: node_id.clone(),
                        role: None,
                        availability: None,
                        labels: labels.clone(),
                    },
                ),
                Step::Leave { node, force } => (node, TaskOp::SwarmLeave { force: *force }),
                Step::Remove {
                    via,
                    node_id,
                    force,
                } => (
                    via,
                    TaskOp::NodeRemove {
                        node_id: node_id.clone(),
                        force: *force,
                    },
                ),
                Step::Release { node } => {
                    self.store.release_node(node).await?;
                    if let Some((record, _)) = view.nodes.iter().find(|(n, _)| &n.uuid == node)
                        && let Some(cluster) = &record.cluster_uuid
                    {
                        self.reconciler.nudge(cluster);
                    }
                    continue;
                }
            };
            tasks
                .entry(node.clone())
                .or_default()
                .push(AgentTask { id, op });
        }
        for (node, _) in &view.nodes {
            let tasks = tasks.remove(&node.uuid).unwrap_or_default();
            self.deliver(&node.uuid, tasks, memory).await?;
        }
        if plan.waiting != memory.waiting {
            for line in &plan.waiting {
                self.log(swarm, &format!("waiting: {line}")).await;
            }
            memory.waiting = plan.waiting.clone();
        }
        if plan.settled && swarm.state == ClusterState::Deploying {
            self.conclude(
                swarm,
                ClusterState::Deploying,
                ClusterState::Deployed,
                "every node is in the swarm with its role",
            )
            .await?;
        }
        if swarm.cluster_id.is_some() {
            self.balance(&view, memory).await?;
        }
        Ok(())
    }

    /// The swarm's load balancer (`plan::lb`, carried out by `execute`): listeners for the
    /// ports its services publish on the nodes, targeting the nodes that are in the swarm
    /// and not leaving. Converged when its inputs change, and every [`LB_RESYNC`].
    async fn balance(&self, view: &SwarmView, memory: &mut Memory) -> anyhow::Result<()> {
        let swarm = &view.swarm;
        let Some(managers) = self.store.cluster(&swarm.manager_cluster).await? else {
            return Ok(());
        };
        let nodes: Vec<Instance> = view
            .nodes
            .iter()
            .filter(|(n, _)| {
                n.state == NodeState::Deployed && !n.swarm.leaving && !n.instance_id.is_empty()
            })
            .map(|(n, _)| Instance {
                instance_id: n.instance_id.clone(),
                cluster_uuid: n.cluster_uuid.clone().unwrap_or_default(),
                slot: n.slot,
                node_uuid: n.uuid.clone(),
                state: InstanceState::Running,
                availability_zone: n.availability_zone.clone(),
                subnet_id: n.subnet_id.clone(),
                private_ip: n.private_ip.clone(),
                public_ip: n.public_ip.clone(),
            })
            .collect();
        if nodes.is_empty() {
            return Ok(());
        }
        let ports: BTreeSet<PublishedPort> = view
            .services()
            .unwrap_or_default()
            .iter()
            .flat_map(|s| &s.ports)
            .filter(|p| p.published != 0)
            .map(|p| PublishedPort {
                port: p.published,
                protocol: if p.protocol == "udp" {
                    lb::Protocol::Udp
                } else {
                    lb::Protocol::Tcp
                },
            })
            .collect();
        let inputs: LbInputs = (
            nodes
                .iter()
                .map(|n| (n.instance_id.clone(), n.subnet_id.clone()))
                .collect(),
            ports.clone(),
        );
        let due = match &memory.balanced {
            Some((last, at)) => *last != inputs || at.elapsed() >= LB_RESYNC,
            None => true,
        };
        if !due {
            return Ok(());
        }
        // The network's identity (VPC, the nodes' security group) for the load balancer:
        // the same request the clusters make, which on a network that exists only describes.
        let request = NetworkRequest::for_spec(
            &managers.spec,
            self.settings.image_id.clone(),
            self.settings.allowed_azs.clone(),
            self.settings.ingress.clone(),
        );
        let network = self.cloud.ensure_network(&request).await?;
        let desired = lb::Desired::for_swarm(&swarm.uuid, &network, &nodes, ports);
        let lines = Mutex::new(Vec::new());
        let state = crate::execute::converge_load_balancer(
            self.cloud.as_ref(),
            &managers.spec.region,
            &desired,
            &|line| lines.lock().unwrap_or_else(|p| p.into_inner()).push(line),
        )
        .await;
        self.log_lines(swarm, "load balancer: ", lines).await;
        let state = state?;
        let rendered = flotilla_api::SwarmLoadBalancer {
            dns_name: state.dns_name.clone(),
            ports: state
                .listeners
                .iter()
                .map(|(port, protocol)| flotilla_api::SwarmListener {
                    port: *port,
                    protocol: protocol.as_elb().to_owned(),
                })
                .collect(),
        };
        if swarm.load_balancer.as_ref() != Some(&rendered) {
            self.store
                .set_swarm_load_balancer(&swarm.uuid, Some(&rendered))
                .await?;
        }
        memory.balanced = Some((inputs, Instant::now()));
        Ok(())
    }

    /// Ends the swarm's busy state (`from` → `to`) and its current action with success,
    /// logging `line`.
    async fn conclude(
        &self,
        swarm: &SwarmRecord,
        from: ClusterState,
        to: ClusterState,
        line: &str,
    ) -> anyhow::Result<()> {
        let now = date::now_unix();
        if !self
            .store
            .transition_swarm(&swarm.uuid, from, to, Some(now), None)
            .await?
        {
            return Ok(());
        }
        self.log(swarm, line).await;
        if let Some(action) = &swarm.current_action {
            self.store
                .transition_action(
                    action,
                    &[action_state::IN_PROGRESS],
                    action_state::SUCCESS,
                    Some(now),
                    false,
                    false,
                )
                .await?;
        }
        Ok(())
    }

    /// Writes the lines an executor logged into the swarm's action, prefixed.
    async fn log_lines(&self, swarm: &SwarmRecord, prefix: &str, lines: Mutex<Vec<String>>) {
        for line in lines.into_inner().unwrap_or_else(|p| p.into_inner()) {
            self.log(swarm, &format!("{prefix}{line}")).await;
        }
    }

    /// A terminating swarm: its load balancer goes first (its subnets and security group
    /// keep the network from being torn down); the swarm is terminated once both its
    /// clusters are.
    async fn finish_termination(
        &self,
        view: &SwarmView,
        memory: &mut Memory,
    ) -> anyhow::Result<()> {
        let swarm = &view.swarm;
        for (node, _) in &view.nodes {
            self.deliver(&node.uuid, Vec::new(), memory).await?;
        }
        if swarm.load_balancer.is_some() {
            let Some(managers) = self.store.cluster(&swarm.manager_cluster).await? else {
                return Ok(());
            };
            let lines = Mutex::new(Vec::new());
            let removed = crate::execute::remove_load_balancer(
                self.cloud.as_ref(),
                &managers.spec.region,
                &swarm.uuid,
                &|line| lines.lock().unwrap_or_else(|p| p.into_inner()).push(line),
            )
            .await;
            self.log_lines(swarm, "load balancer: ", lines).await;
            removed?;
            self.store
                .set_swarm_load_balancer(&swarm.uuid, None)
                .await?;
        }
        for uuid in [&swarm.manager_cluster, &swarm.worker_cluster] {
            if let Some(cluster) = self.store.cluster(uuid).await?
                && cluster.state != ClusterState::Terminated
            {
                return Ok(());
            }
        }
        self.conclude(
            swarm,
            ClusterState::Terminating,
            ClusterState::Terminated,
            "both node clusters are terminated",
        )
        .await
    }
}

/// A step as the action log shows it (never with a token).
fn describe(step: &Step, view: &SwarmView) -> String {
    let name = |uuid: &str| {
        view.nodes
            .iter()
            .find(|(n, _)| n.uuid == uuid)
            .map(|(n, _)| format!("{} ({})", n.uuid, n.availability_zone))
            .unwrap_or_else(|| uuid.to_owned())
    };
    match step {
        Step::ChooseBootstrap { node } => {
            format!("chose manager {} to initialise the swarm", name(node))
        }
        Step::Init { node, .. } => format!("asking manager {} to initialise the swarm", name(node)),
        Step::AdoptCluster { cluster_id } => format!("the swarm exists: cluster ID {cluster_id}"),
        Step::Join { node, role, .. } => {
            format!("asking {} to join as a {}", name(node), role.as_str())
        }
        Step::Promote { node_id, .. } => format!("promoting swarm node {node_id} to manager"),
        Step::Demote { node_id, .. } => format!("demoting swarm node {node_id} to worker"),
        Step::Drain { node_id, .. } => format!("draining swarm node {node_id}"),
        Step::Label {
            node_id, labels, ..
        } => format!("labelling swarm node {node_id}: {labels:?}"),
        Step::Leave { node, force } => format!(
            "asking {} to leave the swarm{}",
            name(node),
            if *force { " (forced)" } else { "" }
        ),
        Step::Remove { node_id, .. } => format!("removing swarm node {node_id} from the swarm"),
        Step::Release { node } => format!("{} has left the swarm", name(node)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> AgentTask {
        AgentTask {
            id: id.into(),
            op: TaskOp::SwarmLeave { force: false },
        }
    }

    #[test]
    fn a_task_is_handed_out_once_until_it_is_due_again_or_done() {
        let mailbox = Mailbox::default();
        mailbox.post("n", vec![task("a"), task("b")]);
        assert_eq!(mailbox.take("n").len(), 2);
        assert!(mailbox.take("n").is_empty(), "handed out already");
        mailbox.post("n", vec![task("b"), task("c")]);
        let next: Vec<String> = mailbox.take("n").into_iter().map(|t| t.id).collect();
        assert_eq!(next, ["c"], "a re-posted task keeps when it is due");
        let result = |id: &str, ok| TaskResult {
            id: id.into(),
            ok,
            message: String::new(),
            join_tokens: None,
        };
        mailbox.report("n", &[result("b", true), result("c", false)]);
        assert!(
            mailbox.take("n").is_empty(),
            "b is done; c waits RETRY_AFTER"
        );
        mailbox.post("n", vec![]);
        assert!(mailbox.take("n").is_empty());
    }

    #[test]
    fn a_copy_of_the_table_read_before_a_local_post_does_not_undo_it() {
        let mailbox = Mailbox::default();
        mailbox.post("n", vec![task("a")]);
        let read_after = mailbox.version();
        mailbox.replace_all(
            HashMap::from([("n".to_owned(), vec![task("a"), task("b")])]),
            read_after,
        );
        assert_eq!(mailbox.take("n").len(), 2, "the table's copy is followed");
        let stale = mailbox.version();
        mailbox.post("n", vec![task("c")]);
        mailbox.replace_all(HashMap::new(), stale);
        let ids: Vec<String> = mailbox.take("n").into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["c"], "read before the post: ignored");
        mailbox.replace_all(HashMap::new(), mailbox.version());
        mailbox.post("m", vec![]);
        assert!(
            mailbox.lock().by_node.is_empty(),
            "a node gone from the table"
        );
    }

    #[test]
    fn the_same_step_is_the_same_task() {
        let step = Step::Leave {
            node: "n".into(),
            force: true,
        };
        assert_eq!(task_id("s", &step), task_id("s", &step));
        assert_ne!(task_id("s", &step), task_id("t", &step));
    }
}
