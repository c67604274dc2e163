//! Reconcilers: one level-triggered worker per node cluster that drives the cloud towards
//! the cluster's stored desired state.
//!
//! Design decisions:
//! * One task per cluster, so there is never more than one pass per cluster at a time,
//!   without locks. A task wakes on a nudge (a `Notify`, sent by the API after it changes
//!   desired state) or on its timer: soon while work is under way (instances still pending,
//!   a transient error), rarely once the cluster is settled.
//! * A pass takes no input but the cluster's uuid: it reads the cluster from the store,
//!   observes the cloud and takes the next steps (`flotilla_core::converge::run_pass`). It
//!   keeps nothing in memory between passes except a count of consecutive transient
//!   failures, so a restarted server resumes any busy cluster by simply starting its task.
//! * Every step is written to the log of the cluster's current action as it happens; the
//!   action ends `Success`, `Failed` (with the reason) or `Canceled`.
//! * Tasks live in a `JoinSet` owned by the [`Supervisor`], whose future runs inside the
//!   server's: dropping the server (a test simulating a crash) aborts every pass mid-flight.
//! * With replicas sharing a database, each cluster's task runs its passes only while this
//!   replica holds the lease `cluster:<uuid>` ([`crate::lease`]; each region's observer holds
//!   [`region_work`]), and every replica keeps a task waiting for each live cluster and each
//!   region with one (a scan every third of the lease time finds clusters created
//!   elsewhere), so the work of a dead replica is taken over. The pass memory is lost with a lease, which costs one extra
//!   observation, never correctness.
//! * Passes that use a region's auto network hold that region's lock shared; tearing the
//!   network down holds it exclusively, so a teardown cannot race a deploy's
//!   `ensure_network`.
//! * A node is `Deployed` when its agent registers ([`NodeReady::AgentRegistered`], see
//!   `agent_api`), not when EC2 says its instance runs: a running instance whose bootstrap
//!   failed is no use. A deploy therefore waits (polling, and nudged by each registration)
//!   until every running node has registered, or until the registration timeout, then
//!   settles on what registered. [`NodeReady::InstanceRunning`] keeps the old rule for
//!   set-ups without agents (tests, the CLI-compatibility work).
//! * Settled clusters are observed per region, not per cluster: one task
//!   ([`Supervisor::run`]'s region observer) describes every owned instance of a region in
//!   one call each `resync_interval`, records what changed for every settled cluster of that
//!   region (instances terminated out of band become `Terminated` nodes; a new public IP
//!   after a stop/start or an elastic IP is picked up), and checks the region's network for
//!   drift with the same find-or-create `ensure_network` a deploy uses (an auto network is
//!   repaired and the repair is written to each cluster's history; a user's VPC is only
//!   reported on, since `ensure_network` never changes what it does not own). AWS calls per
//!   period are therefore a constant per region, whatever the number of clusters and nodes.
//!   A settled cluster's own task then only re-evaluates its state from the store.
//! * `auto_replace`: a settled cluster with fewer live nodes than its target and
//!   `auto_replace` on starts a Scaling pass of its own (a system action), which places the
//!   replacements in the least-populated AZs like any scale.
//! * A node removed by hand (`Terminating`) is terminated, no longer counts towards the
//!   target, and becomes `Terminated` only once EC2 shows its instance shutting down or gone.
//! * Each launch batch's user data carries its registration token, derived here from the
//!   installation's agent secret (the reconciler and the agent API share the store, so
//!   whoever builds user data never sees the secret).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::{action_state, date};
use flotilla_core::cloud::{
    Cloud, CloudError, Ingress, Instance, InstanceState, NetworkRequest, NodeSlot,
};
pub use flotilla_core::plan::cluster::NodeReady;
use flotilla_core::plan::cluster::{
    Desired, NetworkUse, NodeProgress, Outcome, Progress, Verdict, node_state_of, settle, verdict,
};
use flotilla_core::state::{ClusterEvent, ClusterState, IllegalTransition, NodeState};
use tokio::sync::{Notify, RwLock, mpsc, watch};
use tokio::task::JoinSet;

use crate::execute;
use crate::store::{
    ActionRecord, ClusterRecord, FinishAction, NodeRecord, Store, StoreError, Transition,
};

/// What a node's bootstrap script is built from.
#[derive(Debug, Clone)]
pub struct UserDataRequest<'a> {
    pub cluster_uuid: &'a str,
    pub cluster_name: &'a str,
    pub region: &'a str,
    pub nodes: &'a [NodeSlot],
    /// The batch's registration token (hex), for `first_slot = nodes[0].slot` and
    /// `count = nodes.len()`; see `agent_api::batch_token`.
    pub registration_token: &'a str,
}

/// Builds the user data of one launch batch.
pub type UserDataFn = Arc<dyn Fn(&UserDataRequest<'_>) -> String + Send + Sync>;

/// How reconcilers behave.
#[derive(Clone)]
pub struct ReconcileSettings {
    /// Pause between passes while work is under way.
    pub poll_interval: Duration,
    /// Pause between observation passes of a settled cluster.
    pub resync_interval: Duration,
    /// Consecutive transient failures before an action is marked `Failed`.
    pub max_transient_failures: u32,
    pub image_id: Option<String>,
    /// Restrict auto networks to these AZs (`None`: every AZ of the region).
    pub allowed_azs: Option<Vec<String>>,
    pub ingress: Ingress,
    pub key_name: Option<String>,
    pub user_data: UserDataFn,
    pub node_ready: NodeReady,
    /// How long a deploy waits for a running node's agent to register before it settles
    /// without it (the node stays `Deploying` and is counted when it registers).
    pub registration_timeout: Duration,
    /// How long a describe may take to show an instance just launched (EC2 is eventually
    /// consistent): a recorded node missing from an observation younger than this is
    /// taken as still starting, not as terminated out of band.
    pub observation_lag: Duration,
}

impl fmt::Debug for ReconcileSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconcileSettings")
            .field("poll_interval", &self.poll_interval)
            .field("resync_interval", &self.resync_interval)
            .field("max_transient_failures", &self.max_transient_failures)
            .field("image_id", &self.image_id)
            .field("allowed_azs", &self.allowed_azs)
            .field("ingress", &self.ingress)
            .field("key_name", &self.key_name)
            .field("node_ready", &self.node_ready)
            .field("registration_timeout", &self.registration_timeout)
            .field("observation_lag", &self.observation_lag)
            .finish_non_exhaustive()
    }
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        ReconcileSettings {
            poll_interval: Duration::from_secs(3),
            resync_interval: Duration::from_secs(60),
            max_transient_failures: 5,
            image_id: None,
            allowed_azs: None,
            ingress: Ingress::default(),
            key_name: None,
            user_data: Arc::new(|_: &UserDataRequest<'_>| {
                "#!/bin/sh\n# flotilla node\n".to_owned()
            }),
            node_ready: NodeReady::default(),
            registration_timeout: Duration::from_secs(600),
            observation_lag: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
struct Shared {
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    start: mpsc::UnboundedSender<(String, Arc<Notify>)>,
}

/// The API's handle: nudges a cluster's reconciler, starting it if needed.
#[derive(Debug, Clone)]
pub struct Reconciler {
    shared: Arc<Shared>,
}

impl Reconciler {
    /// Asks for a pass of this cluster soon. Cheap; never blocks.
    pub fn nudge(&self, cluster_uuid: &str) {
        self.start(cluster_uuid, true);
    }

    /// Makes sure this replica has a task for the cluster (waiting for its lease if another
    /// replica holds it), without asking for a pass: how replicas stand ready to take over.
    pub fn ensure_started(&self, cluster_uuid: &str) {
        self.start(cluster_uuid, false);
    }

    fn start(&self, cluster_uuid: &str, nudge: bool) {
        let mut wakers = self.shared.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(notify) = wakers.get(cluster_uuid) {
            if nudge {
                notify.notify_one();
            }
            return;
        }
        let notify = Arc::new(Notify::new());
        wakers.insert(cluster_uuid.to_owned(), notify.clone());
        // Fails only once the supervisor is gone, i.e. the server is shutting down; the
        // next server resumes the cluster from the store.
        let _ = self.shared.start.send((cluster_uuid.to_owned(), notify));
    }
}

/// Owns the reconciler tasks; run it alongside the HTTP server.
pub struct Supervisor<C> {
    engine: Arc<Engine<C>>,
    starts: mpsc::UnboundedReceiver<(String, Arc<Notify>)>,
}

impl<C> fmt::Debug for Supervisor<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor").finish_non_exhaustive()
    }
}

struct Engine<C> {
    store: Store,
    cloud: Arc<C>,
    settings: ReconcileSettings,
    shared: Arc<Shared>,
    region_locks: Mutex<HashMap<String, Arc<RwLock<()>>>>,
    metrics: Arc<crate::metrics::Metrics>,
    leases: Arc<crate::lease::Leases>,
}

/// What a cluster's worker remembers of its last full pass, and why it needs to.
///
/// A pass is level-triggered and needs none of this to be correct: a restarted server has
/// none and simply observes again. It exists for cost. While a deploy waits for agents,
/// every registration nudges the cluster; without this, each nudge would be a full cloud
/// observation (N registrations, N `DescribeInstances`). With it, a nudge within the window
/// after a full pass that found every instance launched only re-reads the store. And while
/// instances are starting, it counts the observations so far, for the planner's growing
/// re-observation delay.
///
/// After a full pass that launched what it planned and found instances starting, the
/// planner's `ObserveAgain` is carried out as a re-observation: one describe of the
/// cluster, recorded, and the verdict again — no network ensure and no planning, because a
/// describe right after a launch (or a create) may not show it yet, and planning on such an
/// observation would launch (or create) a second time.
#[derive(Debug, Clone, Default)]
struct PassMemory {
    last: Option<LastPass>,
    /// Consecutive observations of this generation that left the work unfinished.
    unfinished: u32,
    /// Set by a full pass whose verdict was `ObserveAgain`: the subnets' CIDRs it used, for
    /// recording nodes' private addresses on a re-observation.
    reobserve: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy)]
struct LastPass {
    generation: u64,
    at: std::time::Instant,
    /// It saw instances still starting.
    pending_instances: bool,
    /// It ended waiting for agents only: nothing more to ask the cloud.
    awaiting_agents_only: bool,
}

/// Creates the handle and the supervisor that serves it.
pub fn reconciler<C: Cloud + 'static>(
    store: Store,
    cloud: Arc<C>,
    settings: ReconcileSettings,
    metrics: Arc<crate::metrics::Metrics>,
    leases: Arc<crate::lease::Leases>,
) -> (Reconciler, Supervisor<C>) {
    let (start, starts) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        wakers: Mutex::new(HashMap::new()),
        start,
    });
    let engine = Arc::new(Engine {
        store,
        cloud,
        settings,
        shared: shared.clone(),
        region_locks: Mutex::new(HashMap::new()),
        metrics,
        leases,
    });
    (Reconciler { shared }, Supervisor { engine, starts })
}

impl<C: Cloud + 'static> Supervisor<C> {
    /// Runs reconciler tasks until `shutdown` turns true; then aborts them (a pass cut short
    /// is finished by the next server, like after a crash).
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        liveness: Arc<crate::liveness::Liveness>,
    ) {
        let mut tasks = JoinSet::new();
        // Each region's observer runs under a lease of its own, so regions spread over the
        // replicas; a task waits for it on every replica once the region has a live cluster.
        let mut observed_regions = HashSet::new();
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        // Every replica keeps a task for every live cluster, waiting for its lease, so the
        // cluster's work is taken over when its owner dies; clusters created on another
        // replica are found by this scan.
        let mut scan = tokio::time::interval(self.engine.leases.ttl() / 3);
        let reconciler = Reconciler {
            shared: self.engine.shared.clone(),
        };
        loop {
            tokio::select! {
                _ = beat.tick() => liveness.beat("reconcilers"),
                _ = scan.tick() => match self.engine.store.clusters().await {
                    Ok(clusters) => {
                        for cluster in clusters {
                            if !matches!(cluster.state, ClusterState::Init | ClusterState::Terminated) {
                                reconciler.ensure_started(&cluster.uuid);
                                let region = cluster.spec.region;
                                if observed_regions.insert(region.clone()) {
                                    let engine = self.engine.clone();
                                    tasks.spawn(async move {
                                        let leases = engine.leases.clone();
                                        leases
                                            .run(&region_work(&region), || {
                                                region_observer(engine.clone(), region.clone())
                                            })
                                            .await;
                                    });
                                }
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot list the clusters"),
                },
                started = self.starts.recv() => match started {
                    Some((uuid, notify)) => {
                        let engine = self.engine.clone();
                        tasks.spawn(async move {
                            let leases = engine.leases.clone();
                            let work = format!("cluster:{uuid}");
                            leases
                                .run(&work, || worker(engine.clone(), uuid.clone(), notify.clone()))
                                .await;
                        });
                    }
                    None => break,
                },
                Some(finished) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(error) = finished
                        && error.is_panic()
                    {
                        tracing::error!(%error, "a reconciler task panicked");
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        tasks.shutdown().await;
    }
}

/// The lease of a region's observer: `region:<name>`.
pub fn region_work(region: &str) -> String {
    format!("region:{region}")
}

/// When the next pass should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Work under way: poll.
    Soon,
    /// Instances are starting: observe again after this pause (at most the poll interval).
    After(Duration),
    /// A transient failure: poll, counting it.
    Retry,
    /// Settled: observe now and then.
    Idle,
    /// The cluster is gone for good: end the task.
    Done,
}

impl Next {
    /// The pass's outcome, as metrics label it.
    fn label(self) -> &'static str {
        match self {
            Next::Soon => "busy",
            Next::After(_) => "observe_again",
            Next::Retry => "retry",
            Next::Idle => "settled",
            Next::Done => "done",
        }
    }
}

async fn worker<C: Cloud + 'static>(engine: Arc<Engine<C>>, uuid: String, notify: Arc<Notify>) {
    let mut failures = 0u32;
    let mut memory = PassMemory::default();
    loop {
        let started = std::time::Instant::now();
        let next = match engine.pass(&uuid, failures, &mut memory).await {
            Ok(next) => next,
            Err(error) => {
                tracing::warn!(cluster = uuid, %error, "reconcile pass failed on the store");
                Next::Retry
            }
        };
        engine
            .metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
        engine
            .metrics
            .reconcile_passes
            .with_label_values(&[next.label()])
            .inc();
        failures = if next == Next::Retry { failures + 1 } else { 0 };
        let pause = match next {
            Next::Done => break,
            Next::Soon | Next::Retry => engine.settings.poll_interval,
            Next::After(pause) => pause.min(engine.settings.poll_interval),
            Next::Idle => engine.settings.resync_interval,
        };
        // A nudge during the pass left a permit, so it is not lost: the next pass starts
        // at once.
        tokio::select! {
            () = notify.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
    engine
        .shared
        .wakers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&uuid);
}

/// Observes every region with settled clusters, every `resync_interval`, forever.
async fn region_observer<C: Cloud + 'static>(engine: Arc<Engine<C>>, region: String) {
    let mut reported: HashMap<String, String> = HashMap::new();
    loop {
        tokio::time::sleep(engine.settings.resync_interval).await;
        if let Err(error) = engine.observe_region(&region, &mut reported).await {
            tracing::warn!(region, %error, "region observation failed on the store");
        }
    }
}

impl<C: Cloud + 'static> Engine<C> {
    fn region_lock(&self, region: &str) -> Arc<RwLock<()>> {
        self.region_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(region.to_owned())
            .or_default()
            .clone()
    }

    /// Appends a line to the cluster's current action log.
    async fn note(&self, cluster: &ClusterRecord, line: &str) -> Result<(), StoreError> {
        tracing::info!(cluster = cluster.uuid, "{line}");
        if let Some(action) = &cluster.current_action {
            self.store
                .append_action_log(action, &format!("{line}\n"))
                .await?;
        }
        Ok(())
    }

    async fn pass(
        &self,
        uuid: &str,
        failures: u32,
        memory: &mut PassMemory,
    ) -> Result<Next, StoreError> {
        let Some(cluster) = self.store.cluster(uuid).await? else {
            return Ok(Next::Done);
        };
        match cluster.state {
            ClusterState::Terminated => Ok(Next::Done),
            ClusterState::Init => Ok(Next::Idle),
            ClusterState::Deploying | ClusterState::Scaling => {
                self.converge(&cluster, failures, memory).await
            }
            ClusterState::Terminating => self.terminate(&cluster, failures).await,
            ClusterState::Deployed | ClusterState::PartlyDeployed | ClusterState::EmptyCluster => {
                self.resettle(&cluster).await
            }
        }
    }

    async fn action_state(&self, cluster: &ClusterRecord) -> Result<Option<String>, StoreError> {
        Ok(match &cluster.current_action {
            Some(uuid) => self.store.action(uuid).await?.map(|a| a.state),
            None => None,
        })
    }

    /// Deploying or Scaling: observe, plan and apply through `execute::converge`, record
    /// what was observed, then let the planner's verdict settle the cluster or say when to
    /// look again.
    async fn converge(
        &self,
        cluster: &ClusterRecord,
        failures: u32,
        memory: &mut PassMemory,
    ) -> Result<Next, StoreError> {
        if memory
            .last
            .is_some_and(|l| l.generation != cluster.generation)
        {
            *memory = PassMemory::default();
        }
        let canceling =
            self.action_state(cluster).await?.as_deref() == Some(action_state::CANCELING);
        if canceling {
            self.note(cluster, "Canceled; the cluster keeps the nodes it has")
                .await?;
            return self.conclude(cluster, Outcome::Canceled, memory).await;
        }
        if let Some(cidrs) = memory.reobserve.clone()
            && let Some(next) = self.reobserve(cluster, &cidrs, failures, memory).await?
        {
            return Ok(next);
        }
        // See `PassMemory`: registrations nudge the cluster one by one; after a full pass
        // that left only agents to wait for, a nudge re-reads the store, not the cloud.
        let recent = memory.last.filter(|last| {
            let window = if last.pending_instances {
                self.settings.poll_interval
            } else {
                self.settings.resync_interval
            };
            last.awaiting_agents_only && last.at.elapsed() < window
        });
        if let Some(last) = recent {
            let progress = self
                .progress(
                    cluster,
                    last.pending_instances,
                    false,
                    false,
                    memory.unfinished,
                )
                .await?;
            return self.act_on(cluster, verdict(&progress), memory).await;
        }
        let spec = cluster.spec.clone();
        let region = spec.region.clone();

        // Nodes a user removed one by one (`DELETE node/{uuid}/`): out of the count from
        // now on, terminated by the plan, `Terminated` once EC2 confirms (below).
        let nodes = self.store.nodes_of(&cluster.uuid).await?;
        let doomed: Vec<NodeRecord> = nodes
            .iter()
            .filter(|n| n.state == NodeState::Terminating)
            .cloned()
            .collect();
        // A swarm's node leaves the swarm before its instance goes (`plan::cluster`).
        let leave_first = self.store.swarm_of_cluster(&cluster.uuid).await?.is_some();
        let marked = |f: fn(&NodeRecord) -> bool| -> BTreeSet<String> {
            nodes
                .iter()
                .filter(|n| f(n))
                .map(|n| n.uuid.clone())
                .collect()
        };
        let recorded = execute::Recorded {
            removed_by_hand: doomed
                .iter()
                .map(|n| n.instance_id.clone())
                .filter(|id| !id.is_empty())
                .collect(),
            leaving: marked(|n| n.swarm.leaving),
            released: marked(|n| n.swarm.leaving && n.swarm.released),
        };
        let request = NetworkRequest::for_spec(
            &spec,
            self.settings.image_id.clone(),
            self.settings.allowed_azs.clone(),
            self.settings.ingress.clone(),
        );
        let desired = Desired {
            cluster_uuid: &cluster.uuid,
            generation: cluster.generation,
            spec: &spec,
            key_name: self.settings.key_name.as_deref(),
            next_slot: cluster.next_slot,
            leave_first,
        };
        let secret = crate::tokens::load_secret(&self.store).await?;
        let user_data = |nodes: &[NodeSlot]| {
            let first_slot = nodes.first().map(|n| n.slot).unwrap_or(0);
            let count = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
            let token = crate::tokens::batch_token(&secret, &cluster.uuid, first_slot, count);
            (self.settings.user_data)(&UserDataRequest {
                cluster_uuid: &cluster.uuid,
                cluster_name: &cluster.spec.name,
                region: &region,
                nodes,
                registration_token: &token,
            })
        };
        let lock = self.region_lock(&region);
        let _shared = match spec.provider_options.vpc {
            None => Some(lock.read().await),
            Some(_) => None,
        };
        let (desired, request, recorded, user_data) = (&desired, &request, &recorded, &user_data);
        let result = self
            .streamed(cluster, |log| async move {
                execute::converge(
                    self.cloud.as_ref(),
                    desired,
                    request,
                    recorded,
                    user_data,
                    &log,
                )
                .await
            })
            .await?;
        let report = match result {
            Ok(report) => report,
            Err(error) => return self.converge_failed(cluster, error, failures, memory).await,
        };
        self.store
            .raise_next_slot(&cluster.uuid, report.next_slot)
            .await?;
        let cidrs: BTreeMap<&str, &str> = report
            .network
            .subnets
            .iter()
            .map(|s| (s.id.as_str(), s.cidr.as_str()))
            .collect();
        let live = report.instances();
        self.record(cluster, &live, &report.terminated, &cidrs, date::now_unix())
            .await?;
        let mut awaiting_termination = false;
        for node in &doomed {
            let alive = report
                .observed
                .instances
                .iter()
                .any(|i| i.instance_id == node.instance_id && i.state.is_alive());
            if alive {
                awaiting_termination = true;
            } else {
                self.note(
                    cluster,
                    &format!(
                        "node {} ({}) is terminated",
                        node.uuid,
                        if node.instance_id.is_empty() {
                            "no instance"
                        } else {
                            &node.instance_id
                        }
                    ),
                )
                .await?;
                self.store
                    .set_node_terminated(&node.uuid, date::now_unix())
                    .await?;
            }
        }
        if leave_first && report.leaving != recorded.leaving {
            for node in report.leaving.difference(&recorded.leaving) {
                self.note(
                    cluster,
                    &format!("node {node} leaves the swarm before it is terminated"),
                )
                .await?;
            }
            self.store
                .set_leaving(&cluster.uuid, &report.leaving)
                .await?;
        }
        let pending_instances = live.iter().any(|i| i.state == InstanceState::Pending);
        let progress = self
            .progress(
                cluster,
                pending_instances,
                awaiting_termination,
                !report.leaving.is_empty(),
                memory.unfinished,
            )
            .await?;
        let verdict = verdict(&progress);
        memory.last = Some(LastPass {
            generation: cluster.generation,
            at: std::time::Instant::now(),
            pending_instances,
            awaiting_agents_only: verdict == Ok(Verdict::AwaitAgents),
        });
        memory.reobserve = matches!(verdict, Ok(Verdict::ObserveAgain { .. })).then(|| {
            cidrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        });
        self.act_on(cluster, verdict, memory).await
    }

    /// A re-observation (see `PassMemory`): describe the cluster, record it, and ask the
    /// planner's verdict again. `None` when a full pass is needed instead: the cluster has
    /// fewer live or just-launched nodes than its target (an instance died while starting).
    async fn reobserve(
        &self,
        cluster: &ClusterRecord,
        cidrs: &BTreeMap<String, String>,
        failures: u32,
        memory: &mut PassMemory,
    ) -> Result<Option<Next>, StoreError> {
        let observed_at = date::now_unix();
        let observed = match self
            .cloud
            .describe_cluster(&cluster.spec.region, &cluster.uuid)
            .await
        {
            Ok(observed) => observed,
            Err(error) => {
                return self
                    .converge_failed(cluster, error, failures, memory)
                    .await
                    .map(Some);
            }
        };
        let live: Vec<Instance> = observed
            .iter()
            .filter(|i| i.state.is_alive())
            .cloned()
            .collect();
        let cidrs: BTreeMap<&str, &str> = cidrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.record(cluster, &live, &[], &cidrs, observed_at)
            .await?;
        let nodes = self.store.nodes_of(&cluster.uuid).await?;
        let lag = i64::try_from(self.settings.observation_lag.as_secs()).unwrap_or(i64::MAX);
        // Recorded nodes the describe does not show yet: launched, still to appear.
        let unseen = nodes
            .iter()
            .filter(|n| {
                n.state == NodeState::Deploying
                    && observed_at.saturating_sub(n.created_at) <= lag
                    && !live.iter().any(|i| i.node_uuid == n.uuid)
            })
            .count();
        let members = live.len() + unseen;
        // Fewer nodes than the target, or nodes leaving their swarm: a full pass decides.
        if members < cluster.spec.target_num_nodes as usize || nodes.iter().any(|n| n.swarm.leaving)
        {
            memory.reobserve = None;
            memory.last = None;
            return Ok(None);
        }
        let pending = unseen > 0 || live.iter().any(|i| i.state == InstanceState::Pending);
        let progress = self
            .progress(cluster, pending, false, false, memory.unfinished)
            .await?;
        let verdict = verdict(&progress);
        if !matches!(verdict, Ok(Verdict::ObserveAgain { .. })) {
            memory.reobserve = None;
        }
        self.act_on(cluster, verdict, memory).await.map(Some)
    }

    /// Runs `work` with a log function whose lines go to the cluster's action as they come,
    /// not only when the work ends.
    async fn streamed<'a, T, F, Fut>(
        &'a self,
        cluster: &ClusterRecord,
        work: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(Box<dyn Fn(String) + Send + Sync + 'a>) -> Fut,
        Fut: std::future::Future<Output = T> + 'a,
    {
        let (sender, mut lines) = mpsc::unbounded_channel::<String>();
        let log: Box<dyn Fn(String) + Send + Sync + 'a> = Box::new(move |line: String| {
            let _ = sender.send(line);
        });
        // The log (and with it the sender) is dropped when `work` ends, which ends `writer`.
        let work = work(log);
        let writer = async {
            while let Some(line) = lines.recv().await {
                self.note(cluster, &line).await?;
            }
            Ok::<(), StoreError>(())
        };
        let (result, written) = tokio::join!(work, writer);
        written?;
        Ok(result)
    }

    /// Where the cluster's work stands, from the store and the last observation.
    async fn progress(
        &self,
        cluster: &ClusterRecord,
        pending_instances: bool,
        awaiting_termination: bool,
        awaiting_swarm: bool,
        unfinished_observations: u32,
    ) -> Result<Progress, StoreError> {
        let now = date::now_unix();
        let nodes = self
            .store
            .nodes_of(&cluster.uuid)
            .await?
            .iter()
            .map(|n| NodeProgress {
                state: n.state,
                age_secs: now.saturating_sub(n.created_at),
            })
            .collect();
        Ok(Progress {
            state: cluster.state,
            target: cluster.spec.target_num_nodes,
            canceling: false,
            nodes,
            pending_instances,
            awaiting_termination,
            awaiting_swarm,
            node_ready: self.settings.node_ready,
            registration_timeout_secs: i64::try_from(self.settings.registration_timeout.as_secs())
                .unwrap_or(i64::MAX),
            unfinished_observations,
        })
    }

    /// Carries out the planner's verdict on a busy cluster.
    async fn act_on(
        &self,
        cluster: &ClusterRecord,
        verdict: Result<Verdict, IllegalTransition>,
        memory: &mut PassMemory,
    ) -> Result<Next, StoreError> {
        match verdict {
            Ok(Verdict::ObserveAgain { after_ms }) => {
                memory.unfinished = memory.unfinished.saturating_add(1);
                Ok(Next::After(Duration::from_millis(after_ms)))
            }
            Ok(Verdict::AwaitAgents) | Ok(Verdict::AwaitSwarm) => Ok(Next::Soon),
            Ok(Verdict::Settle {
                next,
                deployed,
                outcome,
            }) => {
                self.settle(cluster, next, deployed, outcome).await?;
                *memory = PassMemory::default();
                Ok(Next::Idle)
            }
            Err(illegal) => {
                tracing::warn!(cluster = cluster.uuid, %illegal, "cannot settle the cluster");
                Ok(Next::Idle)
            }
        }
    }

    /// Ends a busy cluster's work with `outcome`, whatever its nodes are doing.
    async fn conclude(
        &self,
        cluster: &ClusterRecord,
        outcome: Outcome,
        memory: &mut PassMemory,
    ) -> Result<Next, StoreError> {
        let progress = self.progress(cluster, false, false, false, 0).await?;
        *memory = PassMemory::default();
        match settle(&progress, outcome) {
            Ok(Verdict::Settle { next, deployed, .. }) => {
                self.settle(cluster, next, deployed, outcome).await?
            }
            Ok(_) => {}
            Err(illegal) => {
                tracing::warn!(cluster = cluster.uuid, %illegal, "cannot settle the cluster");
            }
        }
        Ok(Next::Idle)
    }

    async fn converge_failed(
        &self,
        cluster: &ClusterRecord,
        error: CloudError,
        failures: u32,
        memory: &mut PassMemory,
    ) -> Result<Next, StoreError> {
        if error.is_transient() && failures < self.settings.max_transient_failures {
            self.note(cluster, &format!("{error}; trying again"))
                .await?;
            return Ok(Next::Retry);
        }
        self.note(cluster, &format!("Failed: {error}")).await?;
        self.conclude(cluster, Outcome::Failed, memory).await
    }

    /// Writes what was observed: live instances, ones this pass terminated, and stored
    /// nodes the cloud no longer has (terminated out of band).
    async fn record(
        &self,
        cluster: &ClusterRecord,
        live: &[Instance],
        terminated: &[Instance],
        cidrs: &BTreeMap<&str, &str>,
        observed_at: i64,
    ) -> Result<(), StoreError> {
        let now = date::now_unix();
        let observed: Vec<&Instance> = live.iter().chain(terminated).collect();
        let records: Vec<NodeRecord> = observed
            .iter()
            .map(|instance| {
                let state = if terminated.contains(instance) {
                    NodeState::Terminated
                } else {
                    node_state_of(instance.state, self.settings.node_ready)
                };
                let private_ip = instance.private_ip.as_ref().map(|ip| {
                    match cidrs
                        .get(instance.subnet_id.as_str())
                        .and_then(|c| c.split('/').nth(1))
                    {
                        Some(prefix) => format!("{ip}/{prefix}"),
                        None => format!("{ip}/32"),
                    }
                });
                NodeRecord {
                    uuid: instance.node_uuid.clone(),
                    cluster_uuid: Some(cluster.uuid.clone()),
                    slot: instance.slot,
                    instance_id: instance.instance_id.clone(),
                    state,
                    availability_zone: instance.availability_zone.clone(),
                    subnet_id: instance.subnet_id.clone(),
                    public_ip: instance.public_ip.clone(),
                    private_ip,
                    nickname: None,
                    tags: Vec::new(),
                    last_seen: (state == NodeState::Deployed).then_some(now),
                    created_at: now,
                    deployed_at: (state == NodeState::Deployed).then_some(now),
                    destroyed_at: (state == NodeState::Terminated).then_some(now),
                    engine: Default::default(),
                    swarm: Default::default(),
                }
            })
            .collect();
        let ip_changes = self.store.upsert_nodes(&records).await?;
        for ((instance, record), ip_change) in observed.iter().zip(&records).zip(ip_changes) {
            let state = record.state;
            if let Some(change) = ip_change
                && state != NodeState::Terminated
            {
                let line = format!(
                    "EC2 reports a new public IP for {}: {} -> {}",
                    instance.instance_id,
                    change.from.as_deref().unwrap_or("none"),
                    change.to.as_deref().unwrap_or("none")
                );
                self.note(cluster, &line).await?;
                self.store
                    .record_history(
                        &flotilla_api::uri::node(&instance.node_uuid),
                        "Node IP Change",
                        &line,
                        now,
                    )
                    .await?;
            }
        }
        for node in self.store.nodes_of(&cluster.uuid).await? {
            let seen = live
                .iter()
                .chain(terminated)
                .any(|i| i.node_uuid == node.uuid);
            // Nodes being removed by hand are settled by `converge`; nodes recorded after
            // this observation was taken may simply be too new to be in it.
            if !seen
                && !matches!(node.state, NodeState::Terminated | NodeState::Terminating)
                && node.created_at.saturating_add(
                    i64::try_from(self.settings.observation_lag.as_secs()).unwrap_or(i64::MAX),
                ) < observed_at
            {
                let line = format!(
                    "node {} ({}) is gone: its instance was terminated outside Flotilla",
                    node.uuid, node.instance_id
                );
                self.note(cluster, &line).await?;
                self.store.set_node_terminated(&node.uuid, now).await?;
                self.store
                    .record_history(
                        &flotilla_api::uri::node(&node.uuid),
                        "Node Terminated",
                        &line,
                        now,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// Ends a Deploying/Scaling cluster's work in the state the planner chose: the cluster's
    /// settled state and the end of its action commit together, so a client never sees the
    /// action finished while the cluster is still busy, and a crash leaves either both or
    /// neither.
    async fn settle(
        &self,
        cluster: &ClusterRecord,
        next: ClusterState,
        deployed: u32,
        outcome: Outcome,
    ) -> Result<(), StoreError> {
        let target = cluster.spec.target_num_nodes;
        let outcome = match outcome {
            Outcome::Success => action_state::SUCCESS,
            Outcome::Failed => action_state::FAILED,
            Outcome::Canceled => action_state::CANCELED,
        };
        let now = date::now_unix();
        self.note(
            cluster,
            &format!("Node cluster is {next} ({deployed} of {target} nodes deployed)"),
        )
        .await?;
        let transition = Transition {
            current_action: Some(None),
            deployed_at: (deployed > 0).then_some(now),
            finish_action: cluster.current_action.as_deref().map(|uuid| FinishAction {
                uuid,
                state: outcome,
                end_date: now,
                can_be_retried: outcome != action_state::SUCCESS,
            }),
            ..Transition::new(cluster.state, next)
        };
        self.store
            .transition_cluster(&cluster.uuid, &transition, None, None)
            .await?;
        Ok(())
    }

    async fn finish_action(
        &self,
        cluster: &ClusterRecord,
        outcome: &str,
    ) -> Result<(), StoreError> {
        if let Some(action) = &cluster.current_action {
            let retriable = outcome != action_state::SUCCESS;
            self.store
                .transition_action(
                    action,
                    &[
                        action_state::IN_PROGRESS,
                        action_state::PENDING,
                        action_state::CANCELING,
                    ],
                    outcome,
                    Some(date::now_unix()),
                    false,
                    retriable,
                )
                .await?;
        }
        Ok(())
    }

    /// A settled cluster: re-evaluate its state from the store (the region observer feeds
    /// the store), and start replacing lost nodes when `auto_replace` is on.
    async fn resettle(&self, cluster: &ClusterRecord) -> Result<Next, StoreError> {
        let nodes = self.store.nodes_of(&cluster.uuid).await?;
        let alive = nodes
            .iter()
            .filter(|n| !matches!(n.state, NodeState::Terminated | NodeState::Terminating))
            .count() as u32;
        if cluster.spec.auto_replace && alive < cluster.spec.target_num_nodes {
            return self.start_replacement(cluster, alive).await;
        }
        // What the store says, not what EC2 says: a node counts once it is Deployed by
        // the rule in force (its agent registered, or its instance runs).
        let deployed = nodes
            .iter()
            .filter(|n| n.state == NodeState::Deployed)
            .count() as u32;
        if let Ok(next) = cluster.state.apply(ClusterEvent::Settled {
            deployed,
            target: cluster.spec.target_num_nodes,
        }) && next != cluster.state
        {
            let transition = Transition::new(cluster.state, next);
            self.store
                .transition_cluster(&cluster.uuid, &transition, None, None)
                .await?;
        }
        Ok(Next::Idle)
    }

    /// `auto_replace`: a Scaling pass to the unchanged target, as a system action.
    async fn start_replacement(
        &self,
        cluster: &ClusterRecord,
        alive: u32,
    ) -> Result<Next, StoreError> {
        let Ok(next) = cluster.state.apply(ClusterEvent::Scale) else {
            return Ok(Next::Idle);
        };
        let now = date::now_unix();
        let missing = cluster.spec.target_num_nodes - alive;
        let action = ActionRecord {
            uuid: uuid::Uuid::new_v4().to_string(),
            object_uri: flotilla_api::uri::node_cluster(&cluster.uuid),
            label: "Node Cluster Replace Nodes".into(),
            method: String::new(),
            path: String::new(),
            username: crate::store::SYSTEM_USER.into(),
            user_agent: String::new(),
            ip: String::new(),
            state: action_state::IN_PROGRESS.into(),
            start_date: now,
            end_date: None,
            body: String::new(),
            logs: format!(
                "auto_replace: {alive} of {} nodes are left; replacing {missing}\n",
                cluster.spec.target_num_nodes
            ),
            can_be_canceled: true,
            can_be_retried: false,
        };
        let transition = Transition {
            bump_generation: true,
            current_action: Some(Some(&action.uuid)),
            ..Transition::new(cluster.state, next)
        };
        if self
            .store
            .transition_cluster(&cluster.uuid, &transition, Some(&action), None)
            .await?
        {
            tracing::info!(
                cluster = cluster.uuid,
                missing,
                "replacing nodes lost out of band"
            );
        }
        Ok(Next::Soon)
    }

    /// One observation of every region that has settled clusters: one Describe of all
    /// owned instances per region, recorded for each settled cluster, and a drift check of
    /// the region's networks. `reported` remembers the last drift report per cluster, so an
    /// unchanged problem is not written to the history every period.
    async fn observe_region(
        &self,
        region: &str,
        reported: &mut HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let clusters: Vec<ClusterRecord> = self
            .store
            .clusters()
            .await?
            .into_iter()
            .filter(|cluster| {
                cluster.spec.region == region
                    && matches!(
                        cluster.state,
                        ClusterState::Deployed
                            | ClusterState::PartlyDeployed
                            | ClusterState::EmptyCluster
                    )
            })
            .collect();
        if !clusters.is_empty() {
            let observed_at = date::now_unix();
            let observed = match self.cloud.describe_region(region).await {
                Ok(observed) => observed,
                Err(error) => {
                    tracing::warn!(region, %error, "cannot observe the region");
                    return Ok(());
                }
            };
            for cluster in &clusters {
                // Skip a cluster that became busy meanwhile: its own pass observes it.
                let Some(current) = self.store.cluster(&cluster.uuid).await? else {
                    continue;
                };
                if current.state.is_busy() || current.state == ClusterState::Terminated {
                    continue;
                }
                let live: Vec<Instance> = observed
                    .iter()
                    .filter(|i| i.cluster_uuid == cluster.uuid && i.state.is_alive())
                    .cloned()
                    .collect();
                self.record(&current, &live, &[], &BTreeMap::new(), observed_at)
                    .await?;
                if let Some(current) = self.store.cluster(&cluster.uuid).await?
                    && !current.state.is_busy()
                {
                    self.resettle(&current).await?;
                }
            }
            self.check_drift(region, &clusters, reported).await?;
        }
        Ok(())
    }

    /// Runs the network ensure of each distinct network the region's settled clusters ask
    /// for: the region's auto network once (it is shared, and repaired; the repair is written
    /// to the history of each cluster on it), and a user's VPC once per distinct
    /// `provider_options`, so each cluster is judged by its own subnets, security groups and
    /// instance profile, never by another cluster's.
    async fn check_drift(
        &self,
        region: &str,
        clusters: &[ClusterRecord],
        reported: &mut HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let mut checked: BTreeMap<Option<String>, Result<Vec<String>, String>> = BTreeMap::new();
        for cluster in clusters {
            let request = NetworkRequest::for_spec(
                &cluster.spec,
                self.settings.image_id.clone(),
                self.settings.allowed_azs.clone(),
                self.settings.ingress.clone(),
            );
            let key = request
                .vpc
                .as_ref()
                .map(|vpc| serde_json::json!([vpc, request.instance_profile_name]).to_string());
            let lock = self.region_lock(region);
            let _shared = match key {
                None => Some(lock.read().await),
                Some(_) => None,
            };
            // The clusters were listed before this check; one removed since must not have
            // its network ensured (re-created) after its teardown. A teardown holds the
            // region's lock exclusively until its cluster is Terminated, so under the shared
            // lock the state read here is final for this check.
            let still_settled = self
                .store
                .cluster(&cluster.uuid)
                .await?
                .is_some_and(|c| !c.state.is_busy() && c.state != ClusterState::Terminated);
            if !still_settled {
                continue;
            }
            if !checked.contains_key(&key) {
                let outcome = match self.cloud.ensure_network(&request).await {
                    Ok(network) => Ok(network.changes),
                    Err(error) if error.is_transient() => {
                        tracing::warn!(region, %error, "cannot check the network");
                        continue;
                    }
                    Err(error) => Err(error.to_string()),
                };
                checked.insert(key.clone(), outcome);
            }
            let line = match checked.get(&key) {
                Some(Ok(changes)) if !changes.is_empty() => {
                    format!("Repaired the network: {}", changes.join("; "))
                }
                Some(Err(problem)) => format!("The network is not usable: {problem}"),
                _ => {
                    reported.remove(&cluster.uuid);
                    continue;
                }
            };
            if reported.get(&cluster.uuid) == Some(&line) {
                continue;
            }
            tracing::warn!(cluster = cluster.uuid, region, "{line}");
            self.store
                .record_history(
                    &flotilla_api::uri::node_cluster(&cluster.uuid),
                    "Node Cluster Network Check",
                    &line,
                    date::now_unix(),
                )
                .await?;
            reported.insert(cluster.uuid.clone(), line);
        }
        Ok(())
    }

    /// Terminating: `execute::remove` terminates every instance and tears the region's auto
    /// network down when the planner finds no other cluster on it; then the cluster is
    /// Terminated.
    async fn terminate(&self, cluster: &ClusterRecord, failures: u32) -> Result<Next, StoreError> {
        let region = cluster.spec.region.clone();
        let lock = self.region_lock(&region);
        // Held exclusively for an auto network: a teardown must not race a deploy's
        // `ensure_network`, and the other users are counted under it.
        let (_exclusive, network) = match cluster.spec.provider_options.vpc {
            Some(_) => (None, NetworkUse::UserVpc),
            None => {
                let guard = lock.write().await;
                let other_clusters: Vec<String> = self
                    .store
                    .clusters()
                    .await?
                    .into_iter()
                    .filter(|c| {
                        c.uuid != cluster.uuid
                            && c.spec.region == region
                            && c.spec.provider_options.vpc.is_none()
                            && !matches!(c.state, ClusterState::Init | ClusterState::Terminated)
                    })
                    .map(|c| c.spec.name)
                    .collect();
                (Some(guard), NetworkUse::Auto { other_clusters })
            }
        };
        let (region_ref, network_ref) = (&region, &network);
        let result = self
            .streamed(cluster, |log| async move {
                execute::remove(
                    self.cloud.as_ref(),
                    region_ref,
                    &cluster.uuid,
                    network_ref,
                    &log,
                )
                .await
            })
            .await?;
        let (removed, error) = match result {
            Ok(removed) => (removed, None),
            Err((removed, error)) => (removed, Some(error)),
        };
        if removed.instances_terminated {
            let now = date::now_unix();
            for node in self.store.nodes_of(&cluster.uuid).await? {
                if node.state != NodeState::Terminated {
                    self.store.set_node_terminated(&node.uuid, now).await?;
                }
            }
        }
        if let Some(error) = error {
            return self.terminate_failed(cluster, error, failures).await;
        }

        self.note(cluster, "Node cluster is Terminated").await?;
        let now = date::now_unix();
        let Ok(next) = cluster.state.apply(ClusterEvent::TerminationFinished) else {
            return Ok(Next::Done);
        };
        let transition = Transition {
            current_action: Some(None),
            destroyed_at: Some(now),
            finish_action: cluster.current_action.as_deref().map(|uuid| FinishAction {
                uuid,
                state: action_state::SUCCESS,
                end_date: now,
                can_be_retried: false,
            }),
            ..Transition::new(cluster.state, next)
        };
        self.store
            .transition_cluster(&cluster.uuid, &transition, None, None)
            .await?;
        Ok(Next::Done)
    }

    /// A termination never gives up: after the transient retries the action is marked
    /// `Failed` (retriable), and the cluster stays `Terminating` and is tried again at the
    /// resync interval.
    async fn terminate_failed(
        &self,
        cluster: &ClusterRecord,
        error: CloudError,
        failures: u32,
    ) -> Result<Next, StoreError> {
        let retry_soon =
            error.is_transient() || matches!(error, CloudError::DependencyViolation { .. });
        if retry_soon && failures < self.settings.max_transient_failures {
            self.note(cluster, &format!("{error}; trying again"))
                .await?;
            return Ok(Next::Retry);
        }
        self.note(cluster, &format!("Failed: {error}")).await?;
        self.finish_action(cluster, action_state::FAILED).await?;
        Ok(Next::Idle)
    }
}
