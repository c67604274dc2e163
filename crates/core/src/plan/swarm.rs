//! The swarm planner: how the nodes of a swarm's two node clusters (managers, workers) enter
//! and leave a Docker Swarm, safely.
//!
//! The node clusters' own planner ([`super::cluster`]) decides launches and *which* nodes
//! go (surplus, removed by hand, cluster removal: those are marked `leaving`); this planner
//! decides the swarm steps — initialise, join, promote, demote, drain, label, leave, remove —
//! and when a leaving node may be released to be terminated. Steps are carried out by the
//! nodes' agents (or, for [`Step::ChooseBootstrap`] and [`Step::AdoptCluster`], as a store
//! write by the server); what they did comes back as the agents' next engine reports and a
//! manager's node list, and the server plans again.
//!
//! Design decisions (each prevents a known Docker for AWS failure):
//! * **Exactly one manager ever initialises.** The node that runs `swarm init` is recorded
//!   in the store first ([`Step::ChooseBootstrap`]: a deterministic pick, the lowest
//!   (AZ, node) among reachable, staying, live manager nodes whose engine is inactive), and
//!   [`Step::Init`] is only ever addressed to that recorded node while its engine is
//!   inactive. Once it reports a cluster, the cluster id is adopted ([`Step::AdoptCluster`])
//!   and from then on nothing initialises again. A recorded bootstrap that is gone before
//!   its cluster was adopted is replaced by another pick: its instance is terminated, so a
//!   swarm it may have created died with it (it had no other member: nothing joins before
//!   the adoption). A recorded bootstrap that is only unreachable is waited for — it may
//!   still carry out an `Init` in flight.
//! * **Join tokens are recovered, never guessed.** Joins need the cluster id and the stored
//!   join tokens. When tokens are missing (an `Init` answer was lost, the leader died before
//!   they were stored), `Init` is sent to an active manager with control of the adopted
//!   cluster — preferring the leader; on such an engine `Init` changes nothing and returns
//!   the tokens. This is the only `Init` once a cluster id is known.
//! * **Managers change one at a time and never lose quorum.** A join as manager, a promotion
//!   or a demotion is planned only when no manager change is in progress (a manager node
//!   pending its join; a manager in the list that is not yet reachable although its node is
//!   up) — so a plan holds at most one of them — and only when quorum survives even if the
//!   change goes wrong: an added manager counts as unreachable until it reports reachable, so
//!   an addition needs `reachable ≥ quorum(total + 1)`; a demotion needs
//!   `reachable' ≥ quorum(total − 1)` with `reachable'` the reachable managers left. The one
//!   exception is growing a swarm of a single, healthy manager: there is no safer way to
//!   get its second manager, and a lone manager has no fault tolerance to lose.
//!   Reachability is the node list's, and a manager whose node is gone or whose agent is
//!   silent counts as unreachable whatever the list still says (stale lists err on the side
//!   of caution). The manager count never grows past the target ([`Desired::managers`]).
//! * **Unreachable first.** Manager changes are ordered: demotions of unreachable or gone
//!   managers first (they raise the margin), then additions (a replacement joins before a
//!   reachable manager leaves), then demotions of reachable managers.
//! * **Nothing stays `Down` forever.** A node of the list that belongs to a gone member
//!   (found by the node id of its last engine report), or a `Down` node that belongs to no
//!   live member, is removed with `--force` — a manager is demoted first, under the quorum
//!   rule. A `Ready` node that belongs to no member is the user's own and is left alone.
//! * **A leaving node leaves in order**: a manager is demoted (quorum rule); the node is
//!   drained; its running tasks get [`DRAIN_TIMEOUT_MS`] to move (the planner waits and
//!   says so); a reachable engine leaves (`swarm leave`); a node still in the list is removed
//!   with `--force`; only then is it released ([`Step::Release`]) to be terminated. A node
//!   that never joined is released at once.
//! * **Stray swarms are left.** An engine active in a cluster other than the adopted one
//!   is told to `swarm leave --force` (it is not part of our swarm's quorum), then joins.
//! * **Labels are merged**: a joined node gets `flotilla.az`, `flotilla.cluster` and
//!   `flotilla.role` ([`labels_for`]) when any of them is missing or different; other labels
//!   are the user's.
//! * **Plans are sets**: steps are sorted and without duplicates, and no two steps of a plan
//!   depend on each other, so an executor may carry them out in any order and a lost step is
//!   simply planned again. Planning is a few passes over members and nodes with ordered maps
//!   (O(n log n) for n nodes).

use std::collections::BTreeMap;

/// A node's role in the swarm; also which of the swarm's node clusters a node belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    /// The role as Docker spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
}

/// An engine's swarm state (`docker info`'s `Swarm.LocalNodeState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LocalState {
    Inactive,
    Pending,
    Active,
    Error,
    Locked,
}

/// A swarm node's availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

/// A swarm node's status as a manager sees it (`disconnected` maps to `Down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeStatus {
    Ready,
    Down,
    Unknown,
}

/// The manager counts a swarm may have: odd, so that a split never leaves two halves
/// each believing they have quorum.
pub const MANAGER_COUNTS: [u32; 4] = [1, 3, 5, 7];

/// How long a drained node's running tasks are given to move before it leaves anyway.
pub const DRAIN_TIMEOUT_MS: u64 = 60_000;

/// The port managers listen on for joins.
pub const SWARM_PORT: u16 = 2377;

/// What the store holds about the swarm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// The target manager count (one of [`MANAGER_COUNTS`]).
    pub managers: u32,
    /// The node uuid recorded to run `swarm init`.
    pub bootstrap: Option<String>,
    /// The swarm's Docker cluster id, once adopted.
    pub cluster_id: Option<String>,
    /// Join tokens are stored (sealed).
    pub have_tokens: bool,
}

/// What a node's engine last reported about its swarm membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineState {
    pub state: LocalState,
    pub node_id: Option<String>,
    pub cluster_id: Option<String>,
    /// A manager that can answer for the swarm.
    pub control: bool,
}

/// One node of the swarm's node clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Flotilla node uuid.
    pub node: String,
    /// The node cluster it belongs to: the role it must have.
    pub role: Role,
    pub az: String,
    /// Its node cluster's name (for labels).
    pub cluster: String,
    pub private_ip: Option<String>,
    /// Its agent heartbeats.
    pub reachable: bool,
    /// Its node cluster wants it gone: it must leave the swarm first.
    pub leaving: bool,
    /// Its instance is terminated (it keeps its last engine report).
    pub gone: bool,
    /// Last report; `None`: none yet, or the engine is down.
    pub engine: Option<EngineState>,
    /// The swarm node id this member last reported, kept by the store when its engine
    /// later reports none (an engine that left the swarm has no node id): how the `Down`
    /// node it left behind in the list is still found. (Added to the brief's API.)
    pub last_node_id: Option<String>,
}

impl Member {
    /// The node id the member is known by in the swarm: its engine's, else the last one.
    pub fn swarm_node_id(&self) -> Option<&str> {
        self.engine
            .as_ref()
            .and_then(|e| e.node_id.as_deref())
            .or(self.last_node_id.as_deref())
    }

    fn state(&self) -> Option<LocalState> {
        self.engine.as_ref().map(|e| e.state)
    }

    fn active_in(&self, cluster_id: &str) -> bool {
        self.engine.as_ref().is_some_and(|e| {
            e.state == LocalState::Active && e.cluster_id.as_deref() == Some(cluster_id)
        })
    }

    /// Reachable, live, active in `cluster_id` and a manager with control.
    fn controls(&self, cluster_id: &str) -> bool {
        self.reachable
            && !self.gone
            && self.active_in(cluster_id)
            && self.engine.as_ref().is_some_and(|e| e.control)
    }

    fn up(&self) -> bool {
        self.reachable && !self.gone
    }
}

/// A row of `docker node ls`, from a manager with control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmNode {
    pub id: String,
    pub role: Role,
    pub availability: Availability,
    pub status: NodeStatus,
    /// Managers: manager reachability (`None` for workers or unknown).
    pub reachable: Option<bool>,
    pub leader: bool,
    pub labels: BTreeMap<String, String>,
    pub running_tasks: u32,
}

/// What the server observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub members: Vec<Member>,
    /// `None`: no manager with control answered.
    pub nodes: Option<Vec<SwarmNode>>,
    pub now_ms: u64,
    /// Member node uuid → when its drain was first seen or asked for.
    pub drain_started: BTreeMap<String, u64>,
}

/// One swarm step.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// Store write: record the node that will run `swarm init` (before any `Init`).
    ChooseBootstrap { node: String },
    /// `swarm init` on the recorded bootstrap, or on an active manager to recover tokens.
    Init {
        node: String,
        advertise_addr: String,
    },
    /// Store write: the swarm's cluster id.
    AdoptCluster { cluster_id: String },
    /// `swarm join`; `managers`: "ip:2377" of active managers with control.
    Join {
        node: String,
        role: Role,
        advertise_addr: String,
        managers: Vec<String>,
    },
    /// `node update --role manager`, run on `via` (a member with control, the leader when
    /// it can).
    Promote { via: String, node_id: String },
    /// `node update --role worker`.
    Demote { via: String, node_id: String },
    /// `node update --availability drain`.
    Drain { via: String, node_id: String },
    /// `node update --label-add` of each label (merge).
    Label {
        via: String,
        node_id: String,
        labels: BTreeMap<String, String>,
    },
    /// `swarm leave`.
    Leave { node: String, force: bool },
    /// `node rm`.
    Remove {
        via: String,
        node_id: String,
        force: bool,
    },
    /// The member has left the swarm: its instance may be terminated.
    Release { node: String },
}

impl Step {
    /// A change of the swarm's manager set (what the one-at-a-time rule counts).
    pub fn is_manager_change(&self) -> bool {
        matches!(
            self,
            Step::Join {
                role: Role::Manager,
                ..
            } | Step::Promote { .. }
                | Step::Demote { .. }
        )
    }
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sorted, no duplicates, independent of each other.
    pub steps: Vec<Step>,
    /// What the swarm waits for, human-readable, sorted.
    pub waiting: Vec<String>,
    /// Nothing to do or wait for, and every live staying member is in the swarm with its
    /// role and labels.
    pub settled: bool,
}

/// The quorum of `managers` managers: a strict majority.
pub fn quorum(managers: u32) -> u32 {
    managers / 2 + 1
}

/// Managers of the swarm and how many of them are reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagerHealth {
    pub total: u32,
    pub reachable: u32,
}

impl ManagerHealth {
    fn quorate(self) -> bool {
        self.total == 0 || self.reachable >= quorum(self.total)
    }

    /// One more manager, counted as unreachable until it reports, keeps quorum (or the swarm
    /// grows from a single healthy manager: the one exception).
    fn can_add(self) -> bool {
        self.quorate()
            && (self.reachable >= quorum(self.total + 1)
                || (self.total <= 1 && self.reachable == self.total))
    }

    /// One manager fewer (reachable or not) keeps quorum and at least one manager.
    fn can_remove(self, reachable: bool) -> bool {
        let left = self.reachable - u32::from(reachable && self.reachable > 0);
        self.quorate() && self.total >= 2 && left >= 1 && left >= quorum(self.total - 1)
    }
}

/// Why a manager count change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct QuorumRefusal {
    pub kind: RefusalKind,
    pub health: ManagerHealth,
    pub target: u32,
}

/// The reason of a [`QuorumRefusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The target is not one of [`MANAGER_COUNTS`].
    NotAllowed,
    /// The swarm has no quorum now.
    QuorumLost,
    /// An added manager that failed would leave the swarm below quorum.
    IncreaseUnsafe,
}

impl QuorumRefusal {
    fn message(&self) -> String {
        let ManagerHealth { total, reachable } = self.health;
        match self.kind {
            RefusalKind::NotAllowed => format!(
                "a swarm may have 1, 3, 5 or 7 managers, not {}",
                self.target
            ),
            RefusalKind::QuorumLost => format!(
                "the swarm has lost quorum: {reachable} of {total} managers reachable, {} \
                 needed; no manager change is safe. Bring the unreachable managers back, or \
                 recover with `docker swarm init --force-new-cluster` on a healthy manager",
                quorum(total)
            ),
            RefusalKind::IncreaseUnsafe => format!(
                "{} of {total} managers unreachable; adding one now would leave {reachable} of \
                 {} reachable, below the quorum of {}. Wait until the unreachable managers are \
                 replaced or recovered",
                total - reachable,
                total + 1,
                quorum(total + 1)
            ),
        }
    }
}

/// Whether the manager count may change to `target` now. Decreases are allowed whenever the
/// swarm is quorate: the planner demotes unreachable managers first.
pub fn check_manager_change(health: ManagerHealth, target: u32) -> Result<(), QuorumRefusal> {
    let refuse = |kind| {
        Err(QuorumRefusal {
            kind,
            health,
            target,
        })
    };
    if !MANAGER_COUNTS.contains(&target) {
        return refuse(RefusalKind::NotAllowed);
    }
    if !health.quorate() {
        return refuse(RefusalKind::QuorumLost);
    }
    if target > health.total && !health.can_add() {
        return refuse(RefusalKind::IncreaseUnsafe);
    }
    Ok(())
}

/// The labels Flotilla keeps on a member's node.
pub fn labels_for(member: &Member) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("flotilla.az".to_owned(), member.az.clone()),
        ("flotilla.cluster".to_owned(), member.cluster.clone()),
        ("flotilla.role".to_owned(), member.role.as_str().to_owned()),
    ])
}

fn labels_ok(member: &Member, node: &SwarmNode) -> bool {
    labels_for(member)
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
}

/// Members by the node id they are known by in the swarm (the first by uuid on a clash).
fn owners(members: &[&Member]) -> BTreeMap<String, usize> {
    let mut owners = BTreeMap::new();
    for (index, member) in members.iter().enumerate() {
        if let Some(id) = member.swarm_node_id() {
            owners.entry(id.to_owned()).or_insert(index);
        }
    }
    owners
}

/// A manager of the list counts as reachable when the list says so and its member (if any)
/// is live with a heartbeating agent.
fn manager_up(node: &SwarmNode, owner: Option<&Member>) -> bool {
    node.reachable == Some(true) && owner.is_none_or(Member::up)
}

fn health_of(
    members: &[&Member],
    owners: &BTreeMap<String, usize>,
    nodes: &[SwarmNode],
) -> ManagerHealth {
    let mut health = ManagerHealth {
        total: 0,
        reachable: 0,
    };
    for node in nodes.iter().filter(|n| n.role == Role::Manager) {
        health.total += 1;
        let owner = owners.get(&node.id).map(|&i| members[i]);
        if manager_up(node, owner) {
            health.reachable += 1;
        }
    }
    health
}

/// The swarm's managers and how many are reachable: from the node list, or, without one,
/// from the members' last reports (managers are the members with control or of the manager
/// role active in a swarm; reachable ones are live, heartbeating and with control).
pub fn manager_health(observed: &Observed) -> ManagerHealth {
    let members: Vec<&Member> = observed.members.iter().collect();
    match &observed.nodes {
        Some(nodes) => health_of(&members, &owners(&members), nodes),
        None => {
            let mut health = ManagerHealth {
                total: 0,
                reachable: 0,
            };
            for member in &observed.members {
                let Some(engine) = &member.engine else {
                    continue;
                };
                if engine.state == LocalState::Active
                    && (engine.control || member.role == Role::Manager)
                {
                    health.total += 1;
                    if engine.control && member.up() {
                        health.reachable += 1;
                    }
                }
            }
            health
        }
    }
}

fn advertise(member: &Member) -> Option<String> {
    member.private_ip.clone()
}

/// A manager change waiting for its turn, in the order they are taken.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    /// Demote a manager that is unreachable or gone.
    DemoteDown {
        node_id: String,
    },
    /// Join a manager node, or promote a joined one.
    Join {
        member: usize,
    },
    Promote {
        member: usize,
        node_id: String,
    },
    /// Demote a reachable manager.
    DemoteUp {
        node_id: String,
    },
}

struct Planner<'a> {
    desired: &'a Desired,
    observed: &'a Observed,
    members: Vec<&'a Member>,
    steps: Vec<Step>,
    waiting: Vec<String>,
}

impl<'a> Planner<'a> {
    fn wait(&mut self, why: String) {
        self.waiting.push(why);
    }

    fn member(&self, node: &str) -> Option<&'a Member> {
        self.members
            .binary_search_by(|m| m.node.as_str().cmp(node))
            .ok()
            .map(|i| self.members[i])
    }

    /// The reachable, staying, live manager node with an inactive engine that comes first
    /// by (AZ, node), other than `except`.
    fn bootstrap_pick(&self, except: Option<&str>) -> Option<&'a Member> {
        self.members
            .iter()
            .copied()
            .filter(|m| {
                m.role == Role::Manager
                    && m.up()
                    && !m.leaving
                    && m.state() == Some(LocalState::Inactive)
                    && m.private_ip.is_some()
                    && Some(m.node.as_str()) != except
            })
            .min_by(|a, b| (&a.az, &a.node).cmp(&(&b.az, &b.node)))
    }

    fn choose_bootstrap(&mut self, except: Option<&str>) {
        match self.bootstrap_pick(except) {
            Some(m) => self.steps.push(Step::ChooseBootstrap {
                node: m.node.clone(),
            }),
            None => self.wait(
                "the swarm waits for a reachable manager node with an inactive engine to \
                 initialise it"
                    .into(),
            ),
        }
    }

    /// Before a cluster id is adopted: choose, initialise, adopt.
    fn bootstrap(&mut self) {
        // Leaving nodes that never joined anything may go; others wait for the adoption.
        for m in self.members.clone() {
            if m.leaving && !m.gone {
                if m.swarm_node_id().is_none() {
                    self.steps.push(Step::Release {
                        node: m.node.clone(),
                    });
                } else {
                    self.wait(format!(
                        "{}: leaves once the swarm's cluster is adopted",
                        m.node
                    ));
                }
            }
        }
        let Some(bootstrap) = self.desired.bootstrap.clone() else {
            self.choose_bootstrap(None);
            return;
        };
        let Some(m) = self.member(&bootstrap).filter(|m| !m.gone) else {
            self.choose_bootstrap(Some(&bootstrap));
            return;
        };
        let engine = m.engine.as_ref();
        match engine.map(|e| (e.state, e.cluster_id.clone())) {
            Some((LocalState::Active, Some(cluster_id))) => {
                self.steps.push(Step::AdoptCluster { cluster_id });
                if !self.desired.have_tokens {
                    self.init(m);
                }
            }
            Some((LocalState::Inactive, _)) if m.reachable => self.init(m),
            _ if !m.reachable => {
                self.wait(format!("bootstrap {bootstrap}: its agent is unreachable"))
            }
            state => self.wait(format!(
                "bootstrap {bootstrap}: engine {}",
                state.map_or("not reporting".to_owned(), |(s, _)| format!("{s:?}"))
            )),
        }
    }

    fn init(&mut self, m: &Member) {
        match advertise(m) {
            Some(advertise_addr) => self.steps.push(Step::Init {
                node: m.node.clone(),
                advertise_addr,
            }),
            None => self.wait(format!("{}: no private IP to advertise", m.node)),
        }
    }

    fn finish(mut self, settled_members: bool) -> Plan {
        self.steps.sort();
        self.steps.dedup();
        self.waiting.sort();
        self.waiting.dedup();
        let settled = self.steps.is_empty() && self.waiting.is_empty() && settled_members;
        Plan {
            steps: self.steps,
            waiting: self.waiting,
            settled,
        }
    }
}

/// Plans the swarm steps that bring the observed swarm closer to the desired one.
pub fn plan(desired: &Desired, observed: &Observed) -> Plan {
    let mut members: Vec<&Member> = observed.members.iter().collect();
    members.sort_by(|a, b| a.node.cmp(&b.node));
    let mut p = Planner {
        desired,
        observed,
        members,
        steps: Vec::new(),
        waiting: Vec::new(),
    };
    let Some(cluster_id) = desired.cluster_id.as_deref() else {
        p.bootstrap();
        return p.finish(false);
    };
    let members = p.members.clone();
    let control: Vec<&Member> = members
        .iter()
        .copied()
        .filter(|m| m.controls(cluster_id))
        .collect();

    // Strays, and leaving members that never joined: no node list needed.
    for m in &members {
        if m.gone {
            continue;
        }
        let stray = m.engine.as_ref().is_some_and(|e| {
            e.state == LocalState::Active
                && e.cluster_id.is_some()
                && e.cluster_id.as_deref() != Some(cluster_id)
        });
        if stray && m.reachable && !m.leaving {
            p.steps.push(Step::Leave {
                node: m.node.clone(),
                force: true,
            });
        }
    }

    let Some(nodes) = observed.nodes.as_deref() else {
        for m in &members {
            if m.leaving && !m.gone && m.swarm_node_id().is_none() {
                p.steps.push(Step::Release {
                    node: m.node.clone(),
                });
            }
        }
        p.wait("no manager with control answered with the swarm's node list".into());
        return p.finish(false);
    };
    let owners = owners(&members);
    let by_id: BTreeMap<&str, &SwarmNode> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let owner_of = |node: &SwarmNode| owners.get(&node.id).map(|&i| members[i]);
    let health = health_of(&members, &owners, nodes);

    // The manager every list change goes through: the leader when it has control.
    let leader = nodes
        .iter()
        .filter(|n| n.leader)
        .filter_map(&owner_of)
        .find(|m| m.controls(cluster_id));
    let via_for = |node_id: &str| -> Option<String> {
        let not_target = |m: &&Member| m.swarm_node_id() != Some(node_id);
        leader
            .filter(not_target)
            .or_else(|| control.iter().copied().find(not_target))
            .or(leader)
            .or_else(|| control.first().copied())
            .map(|m| m.node.clone())
    };
    let join_addrs: Vec<String> = {
        let mut addrs: Vec<String> = control
            .iter()
            .filter_map(|m| m.private_ip.as_ref())
            .map(|ip| format!("{ip}:{SWARM_PORT}"))
            .collect();
        addrs.sort();
        addrs.dedup();
        addrs
    };

    if !desired.have_tokens {
        match leader.or_else(|| control.first().copied()) {
            Some(m) => p.init(m),
            None => p.wait("join tokens: no manager with control to ask".into()),
        }
    }

    let mut changes: Vec<Change> = Vec::new();
    let mut in_progress: Vec<String> = Vec::new();
    let mut list_steps: Vec<(String, Step)> = Vec::new(); // (node id, step) needing a `via`

    // Nodes that belong to no live member, or to a gone one.
    for node in nodes {
        let owner = owner_of(node);
        let stale = match owner {
            Some(m) => m.gone && !m.leaving,
            None => node.status == NodeStatus::Down,
        };
        if !stale {
            if node.role == Role::Manager
                && node.reachable != Some(true)
                && node.status != NodeStatus::Down
                && owner.is_some_and(|m| m.up() && !m.leaving)
            {
                in_progress.push(node.id.clone());
            }
            continue;
        }
        if node.role == Role::Manager {
            changes.push(if manager_up(node, owner) {
                Change::DemoteUp {
                    node_id: node.id.clone(),
                }
            } else {
                Change::DemoteDown {
                    node_id: node.id.clone(),
                }
            });
        } else {
            list_steps.push((
                node.id.clone(),
                Step::Remove {
                    via: String::new(),
                    node_id: node.id.clone(),
                    force: true,
                },
            ));
        }
    }

    let mut settled_members = desired.have_tokens;
    for (index, &m) in members.iter().enumerate() {
        let node = m.swarm_node_id().and_then(|id| by_id.get(id).copied());
        if m.leaving {
            settled_members &= m.gone;
            leave(&mut p, m, node, &mut changes, &mut list_steps, cluster_id);
            continue;
        }
        if m.gone {
            continue;
        }
        let state = m.state();
        let in_cluster = m.active_in(cluster_id);
        let good = in_cluster
            && m.reachable
            && node.is_some_and(|n| {
                n.role == m.role && n.status == NodeStatus::Ready && labels_ok(m, n)
            });
        settled_members &= good;
        if !m.reachable {
            p.wait(format!("{}: agent unreachable", m.node));
            continue;
        }
        match state {
            None => p.wait(format!("{}: engine not reporting", m.node)),
            Some(LocalState::Active) if in_cluster => {
                let Some(n) = node else {
                    p.wait(format!(
                        "{}: active in the swarm but not in its node list yet",
                        m.node
                    ));
                    continue;
                };
                match (m.role, n.role) {
                    (Role::Manager, Role::Worker) => changes.push(Change::Promote {
                        member: index,
                        node_id: n.id.clone(),
                    }),
                    (Role::Worker, Role::Manager) => changes.push(if manager_up(n, Some(m)) {
                        Change::DemoteUp {
                            node_id: n.id.clone(),
                        }
                    } else {
                        Change::DemoteDown {
                            node_id: n.id.clone(),
                        }
                    }),
                    _ => {}
                }
                if !labels_ok(m, n) {
                    list_steps.push((
                        n.id.clone(),
                        Step::Label {
                            via: String::new(),
                            node_id: n.id.clone(),
                            labels: labels_for(m),
                        },
                    ));
                }
            }
            // A stray: its `Leave` is planned above.
            Some(LocalState::Active) => {}
            Some(LocalState::Inactive) => {
                if !desired.have_tokens {
                    p.wait(format!("{}: joins once the join tokens are stored", m.node));
                } else if m.role == Role::Manager {
                    changes.push(Change::Join { member: index });
                } else {
                    join(&mut p, m, Role::Worker, &join_addrs);
                }
            }
            Some(LocalState::Pending) => {
                if m.role == Role::Manager {
                    in_progress.push(m.node.clone());
                }
                p.wait(format!("{}: joining", m.node));
            }
            Some(LocalState::Error) => {
                if node.is_some_and(|n| n.role == Role::Manager) {
                    p.wait(format!(
                        "{}: engine in error while a manager of the swarm: needs attention",
                        m.node
                    ));
                } else {
                    p.steps.push(Step::Leave {
                        node: m.node.clone(),
                        force: true,
                    });
                }
            }
            Some(LocalState::Locked) => p.wait(format!(
                "{}: engine locked (autolock): unlock it by hand",
                m.node
            )),
        }
    }

    // At most one manager change, the first the quorum rule allows.
    changes.sort();
    changes.dedup();
    let kept = nodes
        .iter()
        .filter(|n| n.role == Role::Manager)
        .filter(|n| owner_of(n).is_some_and(|m| !m.gone && !m.leaving && m.role == Role::Manager))
        .count() as u32;
    let mut done = false;
    for change in changes {
        let what = match &change {
            Change::DemoteDown { node_id } | Change::DemoteUp { node_id } => {
                format!("demoting {node_id}")
            }
            Change::Join { member } => format!("{}: joining as manager", members[*member].node),
            Change::Promote { member, .. } => {
                format!("{}: promotion to manager", members[*member].node)
            }
        };
        if done {
            p.wait(format!("{what} waits: one manager change at a time"));
            continue;
        }
        if let Some(first) = in_progress.first() {
            p.wait(format!(
                "{what} waits: the manager change of {first} is in progress"
            ));
            continue;
        }
        let adding = matches!(change, Change::Join { .. } | Change::Promote { .. });
        if adding && kept >= desired.managers {
            p.wait(format!(
                "{what} waits: the swarm has its {} managers",
                desired.managers
            ));
            continue;
        }
        let allowed = match change {
            Change::DemoteDown { .. } => health.can_remove(false),
            Change::DemoteUp { .. } => health.can_remove(true),
            _ => health.can_add(),
        };
        if !allowed {
            p.wait(format!(
                "{what} waits: quorum ({} of {} managers reachable, {} needed)",
                health.reachable,
                health.total,
                quorum(health.total)
            ));
            continue;
        }
        let emitted = match change {
            Change::Join { member } => join(&mut p, members[member], Role::Manager, &join_addrs),
            Change::Promote { node_id, .. } => match via_for(&node_id) {
                Some(via) => {
                    p.steps.push(Step::Promote { via, node_id });
                    true
                }
                None => false,
            },
            Change::DemoteDown { node_id } | Change::DemoteUp { node_id } => {
                match via_for(&node_id) {
                    Some(via) => {
                        p.steps.push(Step::Demote { via, node_id });
                        true
                    }
                    None => false,
                }
            }
        };
        done = emitted;
    }

    for (node_id, step) in list_steps {
        let Some(via) = via_for(&node_id) else {
            p.wait(format!("{node_id}: no manager with control to run it"));
            continue;
        };
        p.steps.push(match step {
            Step::Remove { node_id, force, .. } => Step::Remove {
                via,
                node_id,
                force,
            },
            Step::Label {
                node_id, labels, ..
            } => Step::Label {
                via,
                node_id,
                labels,
            },
            Step::Drain { node_id, .. } => Step::Drain { via, node_id },
            other => other,
        });
    }
    p.finish(settled_members)
}

/// A join of `m` as `role`; false (and a wait) when it cannot be addressed.
fn join(p: &mut Planner<'_>, m: &Member, role: Role, managers: &[String]) -> bool {
    let Some(advertise_addr) = advertise(m) else {
        p.wait(format!("{}: no private IP to advertise", m.node));
        return false;
    };
    if managers.is_empty() {
        p.wait(format!(
            "{}: joins once a manager with control has a private IP",
            m.node
        ));
        return false;
    }
    p.steps.push(Step::Join {
        node: m.node.clone(),
        role,
        advertise_addr,
        managers: managers.to_vec(),
    });
    true
}

/// The next step of a leaving member: demote, drain, let tasks move, leave, remove, release.
fn leave(
    p: &mut Planner<'_>,
    m: &Member,
    node: Option<&SwarmNode>,
    changes: &mut Vec<Change>,
    list_steps: &mut Vec<(String, Step)>,
    cluster_id: &str,
) {
    let Some(n) = node else {
        if !m.gone {
            if m.state() == Some(LocalState::Pending) && m.up() {
                p.wait(format!("{}: joining; leaves once joined", m.node));
            } else {
                p.steps.push(Step::Release {
                    node: m.node.clone(),
                });
            }
        }
        return;
    };
    let id = n.id.clone();
    if n.role == Role::Manager {
        changes.push(if manager_up(n, Some(m)) {
            Change::DemoteUp { node_id: id }
        } else {
            Change::DemoteDown { node_id: id }
        });
        return;
    }
    let up = m.up();
    if up && n.availability != Availability::Drain {
        list_steps.push((
            id.clone(),
            Step::Drain {
                via: String::new(),
                node_id: id,
            },
        ));
        return;
    }
    if up && n.running_tasks > 0 && n.status == NodeStatus::Ready {
        let started = p
            .observed
            .drain_started
            .get(&m.node)
            .copied()
            .unwrap_or(p.observed.now_ms);
        if p.observed.now_ms.saturating_sub(started) < DRAIN_TIMEOUT_MS {
            p.wait(format!(
                "{}: draining, {} tasks still running",
                m.node, n.running_tasks
            ));
            return;
        }
    }
    if up && m.active_in(cluster_id) {
        p.steps.push(Step::Leave {
            node: m.node.clone(),
            force: false,
        });
        return;
    }
    list_steps.push((
        id.clone(),
        Step::Remove {
            via: String::new(),
            node_id: id,
            force: true,
        },
    ));
}
