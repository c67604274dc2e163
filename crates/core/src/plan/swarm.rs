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
//!   reachable manager leaves), then demotions of reachable managers — except that once the
//!   swarm has more managers than its target, reachable demotions go before additions, so
//!   replacing every manager (an upgrade) runs at target + 1 managers at most.
//! * **Nothing stays `Down` forever.** A node of the list that belongs to a gone member
//!   (found by the node id of its last engine report), or a `Down` node that belongs to no
//!   live member, is removed with `--force` — a manager is demoted first, under the quorum
//!   rule. A `Ready` node that belongs to no member is the user's own and is left alone.
//! * **A leaving node leaves in order**: a manager is demoted (quorum rule); the node is
//!   drained; its running tasks get [`DRAIN_TIMEOUT_MS`] to move (the planner waits and
//!   says so); a reachable engine leaves (`swarm leave`); a node still in the list is removed
//!   with `--force`; only then is it released ([`Step::Release`]) to be terminated. A node
//!   that never joined is released at once.
//! * **Draining is bounded**: the wait counts from [`Observed::drain_started`], which the
//!   server records when it hands out a `Drain` or first sees a drained node (until then the
//!   planner waits); after [`DRAIN_TIMEOUT_MS`] the node leaves with its tasks still running.
//! * **Settled** means nothing to do and nothing to wait for, the cluster id adopted and the
//!   tokens stored, and every live staying member active in the swarm, `Ready`, with its
//!   role and labels. A silent member or a swarm without quorum is never settled: the plan's
//!   `waiting` says what it waits for.
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
    /// Member node uuid → when its drain was first seen or asked for. The server records it
    /// when it hands out a `Drain` or first sees a drained node; a drained node with running
    /// tasks and no entry yet is waited for.
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

/// A node command waiting for its `via`.
#[derive(Debug, Clone)]
enum ListOp {
    Drain,
    Label(BTreeMap<String, String>),
    /// `node rm --force`.
    Remove,
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
            // A leaving bootstrap that did not initialise is released (above) and, once
            // gone, replaced: it is never sent `Init` in the plan that releases it.
            _ if m.leaving => self.wait(format!(
                "bootstrap {bootstrap}: leaving; another is chosen once it is gone"
            )),
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

    // Strays (engines active in another swarm) leave it: no node list needed.
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
    // Node commands, by node id; each runs on a manager with control (`via`).
    let mut list_ops: Vec<(String, ListOp)> = Vec::new();

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
            list_ops.push((node.id.clone(), ListOp::Remove));
        }
    }

    let mut settled_members = desired.have_tokens;
    for (index, &m) in members.iter().enumerate() {
        let node = m.swarm_node_id().and_then(|id| by_id.get(id).copied());
        if m.leaving {
            settled_members &= m.gone;
            leave(&mut p, m, node, &mut changes, &mut list_ops, cluster_id);
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
                    list_ops.push((n.id.clone(), ListOp::Label(labels_for(m))));
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

    // At most one manager change, the first the quorum rule allows. Once the swarm has
    // more managers than its target, reachable demotions go before additions, so a
    // replacement of every manager grows the swarm by one at most.
    changes.sort();
    changes.dedup();
    if health.total > desired.managers {
        changes.sort_by_key(|c| match c {
            Change::DemoteDown { .. } => 0,
            Change::DemoteUp { .. } => 1,
            Change::Join { .. } | Change::Promote { .. } => 2,
        });
    }
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

    for (node_id, op) in list_ops {
        let Some(via) = via_for(&node_id) else {
            p.wait(format!("{node_id}: no manager with control to run it"));
            continue;
        };
        p.steps.push(match op {
            ListOp::Drain => Step::Drain { via, node_id },
            ListOp::Label(labels) => Step::Label {
                via,
                node_id,
                labels,
            },
            ListOp::Remove => Step::Remove {
                via,
                node_id,
                force: true,
            },
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
    list_ops: &mut Vec<(String, ListOp)>,
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
        list_ops.push((id, ListOp::Drain));
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
    list_ops.push((id, ListOp::Remove));
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    const AZS: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

    fn inactive() -> Option<EngineState> {
        Some(EngineState {
            state: LocalState::Inactive,
            node_id: None,
            cluster_id: None,
            control: false,
        })
    }

    fn member(n: u32, role: Role) -> Member {
        Member {
            node: format!("n{n:04}"),
            role,
            az: AZS[n as usize % AZS.len()].to_owned(),
            cluster: match role {
                Role::Manager => "managers".into(),
                Role::Worker => "workers".into(),
            },
            private_ip: Some(format!("10.0.{}.{}", n / 200, n % 200 + 10)),
            reachable: true,
            leaving: false,
            gone: false,
            engine: inactive(),
            last_node_id: None,
        }
    }

    fn health(total: u32, reachable: u32) -> ManagerHealth {
        ManagerHealth { total, reachable }
    }

    /// Docker, as far as the planner's steps go: one swarm, its node list, each member's
    /// engine. Every rule of the planner that is a promise is asserted where a step lands.
    #[derive(Debug, Clone)]
    struct Sim {
        desired: Desired,
        members: Vec<Member>,
        /// The node list of the swarm created by `Init` (whether adopted or not).
        nodes: Vec<SwarmNode>,
        /// Node id → member uuid: the truth the planner has to infer.
        owner: BTreeMap<String, String>,
        cluster: Option<String>,
        clusters_created: u32,
        now_ms: u64,
        drain_started: BTreeMap<String, u64>,
        next: u32,
        released: BTreeSet<String>,
    }

    impl Sim {
        fn new(managers: u32, workers: u32) -> Sim {
            let mut sim = Sim {
                desired: Desired {
                    managers,
                    ..Desired::default()
                },
                members: Vec::new(),
                nodes: Vec::new(),
                owner: BTreeMap::new(),
                cluster: None,
                clusters_created: 0,
                now_ms: 1_000_000,
                drain_started: BTreeMap::new(),
                next: 0,
                released: BTreeSet::new(),
            };
            for _ in 0..managers {
                sim.add(Role::Manager);
            }
            for _ in 0..workers {
                sim.add(Role::Worker);
            }
            sim
        }

        fn add(&mut self, role: Role) -> usize {
            self.next += 1;
            self.members.push(member(self.next, role));
            self.members.len() - 1
        }

        fn add_stray(&mut self) {
            let i = self.add(Role::Worker);
            let n = self.next;
            self.members[i].engine = Some(EngineState {
                state: LocalState::Active,
                node_id: Some(format!("stray-node-{n}")),
                cluster_id: Some(format!("stray-{n}")),
                control: true,
            });
        }

        fn index(&self, node: &str) -> usize {
            self.members
                .iter()
                .position(|m| m.node == node)
                .expect("a planned step names a member")
        }

        fn up(&self, uuid: &str) -> bool {
            self.members
                .iter()
                .any(|m| m.node == uuid && m.reachable && !m.gone)
        }

        /// Managers in the swarm and how many are reachable (an added one is not until the
        /// next refresh).
        fn health(&self) -> ManagerHealth {
            let managers = self.nodes.iter().filter(|n| n.role == Role::Manager);
            ManagerHealth {
                total: managers.clone().count() as u32,
                reachable: managers.filter(|n| n.reachable == Some(true)).count() as u32,
            }
        }

        fn quorate(&self) -> bool {
            self.health().quorate()
        }

        fn node_of(&self, i: usize) -> Option<usize> {
            let id = self.members[i].engine.as_ref()?.node_id.as_ref()?;
            self.nodes.iter().position(|n| &n.id == id)
        }

        /// Time passes: reachability, status, the leader, control and tasks catch up.
        fn refresh(&mut self) {
            let joined: BTreeMap<String, bool> = self
                .nodes
                .iter()
                .map(|n| {
                    let owner = &self.owner[&n.id];
                    let i = self.index(owner);
                    let m = &self.members[i];
                    let still = m.engine.as_ref().is_some_and(|e| {
                        e.state == LocalState::Active && e.node_id.as_ref() == Some(&n.id)
                    });
                    (n.id.clone(), still && m.reachable && !m.gone)
                })
                .collect();
            for node in &mut self.nodes {
                let up = joined[&node.id];
                node.status = if up {
                    NodeStatus::Ready
                } else {
                    NodeStatus::Down
                };
                if node.role == Role::Manager {
                    node.reachable = Some(up);
                } else {
                    node.reachable = None;
                    node.leader = false;
                }
                if !up {
                    node.leader = false;
                }
            }
            let quorate = self.quorate();
            if !quorate {
                for node in &mut self.nodes {
                    node.leader = false;
                }
            } else if !self.nodes.iter().any(|n| n.leader)
                && let Some(n) = self
                    .nodes
                    .iter_mut()
                    .find(|n| n.role == Role::Manager && n.reachable == Some(true))
            {
                n.leader = true;
            }
            let roles: BTreeMap<String, (Role, bool)> = self
                .nodes
                .iter()
                .map(|n| (n.id.clone(), (n.role, joined[&n.id])))
                .collect();
            for m in &mut self.members {
                if !m.reachable || m.gone {
                    continue;
                }
                if let Some(e) = &mut m.engine {
                    let ours = e.cluster_id.is_some() && e.cluster_id == self.cluster;
                    if ours {
                        e.control = e
                            .node_id
                            .as_ref()
                            .and_then(|id| roles.get(id))
                            .is_some_and(|&(role, up)| role == Role::Manager && up && quorate);
                    }
                }
            }
            // A drained node's tasks move to the first other active, ready node, 10 s after
            // the drain (they stay put when there is none).
            for i in 0..self.nodes.len() {
                let since = self
                    .owner
                    .get(&self.nodes[i].id)
                    .and_then(|o| self.drain_started.get(o))
                    .copied()
                    .unwrap_or(0);
                if self.nodes[i].availability != Availability::Drain
                    || self.nodes[i].running_tasks == 0
                    || self.now_ms < since + 10_000
                {
                    continue;
                }
                if let Some(j) = (0..self.nodes.len()).find(|&j| {
                    j != i
                        && self.nodes[j].availability == Availability::Active
                        && self.nodes[j].status == NodeStatus::Ready
                }) {
                    self.nodes[j].running_tasks += self.nodes[i].running_tasks;
                    self.nodes[i].running_tasks = 0;
                }
            }
            self.nodes.sort_by(|a, b| a.id.cmp(&b.id));
        }

        fn observe(&self) -> Observed {
            let control = self.members.iter().any(|m| {
                m.reachable
                    && !m.gone
                    && m.engine.as_ref().is_some_and(|e| {
                        e.control && e.cluster_id.is_some() && e.cluster_id == self.cluster
                    })
            });
            Observed {
                members: self.members.clone(),
                nodes: control.then(|| self.nodes.clone()),
                now_ms: self.now_ms,
                drain_started: self.drain_started.clone(),
            }
        }

        /// `via` can run a node command: a live manager of the swarm with control.
        fn via_ok(&self, via: &str) -> bool {
            let i = self.index(via);
            self.up(via)
                && self.quorate()
                && self.members[i].engine.as_ref().is_some_and(|e| {
                    e.control && e.cluster_id.is_some() && e.cluster_id == self.cluster
                })
        }

        fn node_mut(&mut self, id: &str) -> Option<&mut SwarmNode> {
            self.nodes.iter_mut().find(|n| n.id == id)
        }

        /// Carries `step` out as Docker would; `answer_lost`: it ran, but what it returned
        /// never reached the store.
        fn apply(&mut self, step: &Step, answer_lost: bool) {
            match step {
                Step::ChooseBootstrap { node } => {
                    assert!(
                        self.desired.cluster_id.is_none(),
                        "bootstrap chosen after adoption"
                    );
                    if let Some(old) = &self.desired.bootstrap {
                        let old = self.members.iter().find(|m| &m.node == old);
                        assert!(old.is_none_or(|m| m.gone), "a live bootstrap was replaced");
                    }
                    self.desired.bootstrap = Some(node.clone());
                }
                Step::Init {
                    node,
                    advertise_addr,
                } => {
                    let i = self.index(node);
                    assert_eq!(self.members[i].private_ip.as_ref(), Some(advertise_addr));
                    if !self.up(node) {
                        return;
                    }
                    let engine = self.members[i].engine.clone().expect("a reporting engine");
                    match engine.state {
                        LocalState::Inactive => {
                            assert_eq!(
                                self.desired.bootstrap.as_ref(),
                                Some(node),
                                "Init to a node that is not the recorded bootstrap"
                            );
                            assert!(self.desired.cluster_id.is_none(), "Init after adoption");
                            assert!(
                                self.owner.values().all(|o| !self.up(o)),
                                "a second swarm while the first has live nodes"
                            );
                            self.clusters_created += 1;
                            let cluster = format!("swarm-{}", self.clusters_created);
                            let id = format!("{node}-id{}", self.now_ms);
                            self.nodes = vec![SwarmNode {
                                id: id.clone(),
                                role: Role::Manager,
                                availability: Availability::Active,
                                status: NodeStatus::Ready,
                                reachable: Some(true),
                                leader: true,
                                labels: BTreeMap::new(),
                                running_tasks: 0,
                            }];
                            self.owner = BTreeMap::from([(id.clone(), node.clone())]);
                            self.cluster = Some(cluster.clone());
                            self.members[i].engine = Some(EngineState {
                                state: LocalState::Active,
                                node_id: Some(id.clone()),
                                cluster_id: Some(cluster),
                                control: true,
                            });
                            self.members[i].last_node_id = Some(id);
                            self.desired.have_tokens |= !answer_lost;
                        }
                        LocalState::Active if engine.control => {
                            let theirs = engine.cluster_id.clone();
                            assert!(
                                theirs == self.desired.cluster_id
                                    || self.desired.bootstrap.as_ref() == Some(node),
                                "token recovery from another swarm"
                            );
                            self.desired.have_tokens |= !answer_lost;
                        }
                        _ => {}
                    }
                }
                Step::AdoptCluster { cluster_id } => {
                    assert!(
                        self.desired.cluster_id.is_none()
                            || self.desired.cluster_id.as_ref() == Some(cluster_id),
                        "the adopted cluster id changed"
                    );
                    assert_eq!(self.cluster.as_ref(), Some(cluster_id));
                    self.desired.cluster_id = Some(cluster_id.clone());
                }
                Step::Join {
                    node,
                    role,
                    advertise_addr,
                    managers,
                } => {
                    let i = self.index(node);
                    let m = &self.members[i];
                    assert_eq!(*role, m.role, "joins with its node cluster's role");
                    assert!(!m.leaving, "a leaving member joins");
                    assert!(self.desired.have_tokens, "a join without tokens");
                    assert!(self.desired.cluster_id.is_some(), "a join before adoption");
                    assert_eq!(m.private_ip.as_ref(), Some(advertise_addr));
                    assert!(!managers.is_empty());
                    let inactive = m.engine.as_ref().map(|e| e.state) == Some(LocalState::Inactive);
                    let reached = self.members.iter().any(|o| {
                        o.reachable
                            && !o.gone
                            && o.private_ip
                                .as_ref()
                                .is_some_and(|ip| managers.contains(&format!("{ip}:2377")))
                            && o.engine
                                .as_ref()
                                .is_some_and(|e| e.control && e.cluster_id == self.cluster)
                    });
                    if !self.up(node) || !inactive || !reached || !self.quorate() {
                        return;
                    }
                    let id = format!("{node}-id{}", self.now_ms);
                    self.nodes.push(SwarmNode {
                        id: id.clone(),
                        role: *role,
                        availability: Availability::Active,
                        status: NodeStatus::Ready,
                        reachable: (*role == Role::Manager).then_some(false),
                        leader: false,
                        labels: BTreeMap::new(),
                        running_tasks: 0,
                    });
                    self.owner.insert(id.clone(), node.clone());
                    self.members[i].engine = Some(EngineState {
                        state: LocalState::Active,
                        node_id: Some(id.clone()),
                        cluster_id: self.cluster.clone(),
                        control: false,
                    });
                    self.members[i].last_node_id = Some(id);
                }
                Step::Promote { via, node_id } => {
                    if !self.via_ok(via) {
                        return;
                    }
                    if let Some(n) = self.node_mut(node_id).filter(|n| n.role == Role::Worker) {
                        n.role = Role::Manager;
                        n.reachable = Some(false);
                    }
                }
                Step::Demote { via, node_id } => {
                    if !self.via_ok(via) || self.health().total <= 1 {
                        return;
                    }
                    if let Some(n) = self.node_mut(node_id).filter(|n| n.role == Role::Manager) {
                        n.role = Role::Worker;
                        n.reachable = None;
                        n.leader = false;
                    }
                }
                Step::Drain { via, node_id } => {
                    if !self.via_ok(via) {
                        return;
                    }
                    let now = self.now_ms;
                    if let Some(n) = self.node_mut(node_id) {
                        n.availability = Availability::Drain;
                    }
                    if let Some(owner) = self.owner.get(node_id) {
                        self.drain_started.entry(owner.clone()).or_insert(now);
                    }
                }
                Step::Label {
                    via,
                    node_id,
                    labels,
                } => {
                    if !self.via_ok(via) {
                        return;
                    }
                    if let Some(n) = self.node_mut(node_id) {
                        n.labels.extend(labels.clone());
                    }
                }
                Step::Leave { node, force } => {
                    let i = self.index(node);
                    if !self.up(node) {
                        return;
                    }
                    let Some(engine) = self.members[i].engine.clone() else {
                        return;
                    };
                    if engine.state == LocalState::Active {
                        let ours = engine.cluster_id.is_some() && engine.cluster_id == self.cluster;
                        let manager = ours
                            && engine.node_id.as_ref().is_some_and(|id| {
                                self.nodes
                                    .iter()
                                    .any(|n| &n.id == id && n.role == Role::Manager)
                            });
                        if manager {
                            assert!(!force, "a manager of the swarm was made to leave by force");
                            return;
                        }
                    }
                    self.members[i].engine = inactive();
                    if let Some(n) = engine.node_id.as_ref().and_then(|id| self.node_mut(id)) {
                        n.status = NodeStatus::Down;
                    }
                }
                Step::Remove {
                    via,
                    node_id,
                    force,
                } => {
                    if !self.via_ok(via) {
                        return;
                    }
                    let Some(k) = self.nodes.iter().position(|n| &n.id == node_id) else {
                        return;
                    };
                    assert_eq!(self.nodes[k].role, Role::Worker, "a manager was removed");
                    if self.nodes[k].status == NodeStatus::Ready && !force {
                        return;
                    }
                    self.nodes.remove(k);
                }
                Step::Release { node } => {
                    let i = self.index(node);
                    assert!(self.members[i].leaving, "a staying member released");
                    let listed: Vec<&String> = self
                        .nodes
                        .iter()
                        .filter(|n| &self.owner[&n.id] == node)
                        .map(|n| &n.id)
                        .collect();
                    assert!(
                        listed.is_empty(),
                        "{node} released while listed: {listed:?}"
                    );
                    self.members[i].gone = true;
                    self.members[i].reachable = false;
                    self.released.insert(node.clone());
                }
            }
        }

        /// One planning round: observe, plan (checked for determinism and shape), apply
        /// every step but a lost one, checking quorum after each.
        fn round(&mut self, lose: Option<(usize, bool)>) -> Plan {
            self.refresh();
            let observed = self.observe();
            let plan = plan(&self.desired, &observed);
            if std::env::var("SWARM_TRACE").is_ok() {
                eprintln!(
                    "desired {:?}\nsteps {:?}\nwaiting {:?}",
                    self.desired, plan.steps, plan.waiting
                );
            }
            assert_eq!(
                plan,
                super::plan(&self.desired, &observed),
                "planning twice"
            );
            let mut shuffled = observed.clone();
            shuffled.members.reverse();
            if let Some(nodes) = &mut shuffled.nodes {
                nodes.reverse();
            }
            assert_eq!(plan, super::plan(&self.desired, &shuffled), "input order");
            assert!(
                plan.steps.windows(2).all(|w| w[0] < w[1]),
                "sorted, no duplicates"
            );
            assert!(
                plan.steps.iter().filter(|s| s.is_manager_change()).count() <= 1,
                "one manager change at a time: {:?}",
                plan.steps
            );
            assert!(!plan.settled || (plan.steps.is_empty() && plan.waiting.is_empty()));
            for step in &plan.steps {
                if let Step::Release { node } = step {
                    assert!(
                        self.nodes.iter().all(|n| &self.owner[&n.id] != node),
                        "Release of {node} while it is in the node list"
                    );
                }
                if let Step::Init { node, .. } = step {
                    let m = &self.members[self.index(node)];
                    let recovery = self
                        .desired
                        .cluster_id
                        .as_deref()
                        .is_some_and(|c| m.controls(c));
                    assert!(
                        self.desired.bootstrap.as_ref() == Some(node) || recovery,
                        "Init to {node}: neither the recorded bootstrap nor a manager of the \
                         adopted swarm"
                    );
                    assert!(
                        self.desired.cluster_id.is_none() || !self.desired.have_tokens,
                        "Init once the cluster id and tokens are known"
                    );
                }
            }
            for (k, step) in plan.steps.iter().enumerate() {
                let (lost, answer_lost) = match lose {
                    Some((l, answer)) => (
                        l % plan.steps.len() == k && !answer,
                        l % plan.steps.len() == k && answer,
                    ),
                    None => (false, false),
                };
                if lost {
                    continue;
                }
                let before = self.health();
                self.apply(step, answer_lost);
                let after = self.health();
                let lone_growth =
                    before.total == 1 && before.reachable == 1 && step.is_manager_change();
                assert!(
                    !before.quorate() || after.quorate() || lone_growth,
                    "{step:?} took the swarm from {before:?} to {after:?}"
                );
            }
            self.now_ms += 5_000;
            self.refresh();
            plan
        }

        /// A member may fail without costing the swarm its quorum.
        fn may_fail(&self, i: usize) -> bool {
            let h = self.health();
            let reachable_manager = self.node_of(i).is_some_and(|k| {
                self.nodes[k].role == Role::Manager && self.nodes[k].reachable == Some(true)
            });
            !reachable_manager || (h.reachable > quorum(h.total) && h.quorate())
        }

        /// A member may be terminated without making quorum unrecoverable: enough managers
        /// are left whose instances still exist (silent ones may come back).
        fn may_go(&self, i: usize) -> bool {
            let total = self.health().total;
            let alive = |n: &SwarmNode| {
                n.role == Role::Manager
                    && self
                        .members
                        .iter()
                        .any(|m| m.node == self.owner[&n.id] && !m.gone)
            };
            let left = self.nodes.iter().filter(|n| alive(n)).count() as u32;
            let mine = self.node_of(i).is_some_and(|k| alive(&self.nodes[k]));
            total == 0 || left - u32::from(mine) >= quorum(total)
        }

        fn staying_managers(&self) -> Vec<usize> {
            (0..self.members.len())
                .filter(|&i| {
                    let m = &self.members[i];
                    m.role == Role::Manager && !m.gone && !m.leaving
                })
                .collect()
        }

        /// What the node clusters' planner does to follow the target manager count.
        fn follow_target(&mut self) {
            let mut staying = self.staying_managers();
            let target = self.desired.managers as usize;
            while staying.len() < target {
                staying.push(self.add(Role::Manager));
            }
            if staying.len() > target {
                staying.sort_by_key(|&i| {
                    (
                        self.members[i].reachable,
                        std::cmp::Reverse(self.members[i].node.clone()),
                    )
                });
                for &i in &staying[..staying.len() - target] {
                    self.members[i].leaving = true;
                }
            }
        }
    }

    #[test]
    fn manager_changes_are_refused_with_the_numbers_and_what_to_do() {
        let increase = check_manager_change(health(3, 2), 5).expect_err("3 → 5, 1 unreachable");
        assert_eq!(increase.kind, RefusalKind::IncreaseUnsafe);
        let text = increase.to_string();
        assert!(text.contains("1 of 3 managers unreachable"), "{text}");
        assert!(
            text.contains("2 of 4 reachable, below the quorum of 3"),
            "{text}"
        );
        assert!(text.contains("replaced or recovered"), "{text}");

        assert_eq!(
            check_manager_change(health(5, 3), 3),
            Ok(()),
            "5 → 3, 2 unreachable"
        );
        assert_eq!(check_manager_change(health(1, 1), 3), Ok(()), "1 → 3");
        assert_eq!(
            check_manager_change(health(0, 0), 3),
            Ok(()),
            "no swarm yet"
        );

        for target in MANAGER_COUNTS {
            let lost = check_manager_change(health(3, 1), target).expect_err("no quorum");
            assert_eq!(lost.kind, RefusalKind::QuorumLost);
            let text = lost.to_string();
            assert!(
                text.contains("lost quorum: 1 of 3 managers reachable, 2 needed"),
                "{text}"
            );
            assert!(
                text.contains("docker swarm init --force-new-cluster"),
                "{text}"
            );
            assert!(text.contains("no manager change is safe"), "{text}");
        }
        let odd = check_manager_change(health(3, 3), 4).expect_err("even");
        assert_eq!(
            odd.to_string(),
            "a swarm may have 1, 3, 5 or 7 managers, not 4"
        );
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(2), 2);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(7), 4);
    }

    fn observed(members: Vec<Member>) -> Observed {
        Observed {
            members,
            ..Observed::default()
        }
    }

    #[test]
    fn the_bootstrap_is_recorded_before_any_init() {
        let mut a = member(1, Role::Manager);
        a.az = "us-east-1b".into();
        let mut b = member(2, Role::Manager);
        b.az = "us-east-1a".into();
        let mut c = member(3, Role::Manager);
        c.az = "us-east-1a".into();
        c.reachable = false;
        let w = member(4, Role::Worker);
        let obs = observed(vec![a, b.clone(), c, w]);
        let desired = Desired {
            managers: 3,
            ..Desired::default()
        };
        let first = plan(&desired, &obs);
        assert_eq!(
            first.steps,
            vec![Step::ChooseBootstrap {
                node: b.node.clone()
            }],
            "lowest (AZ, node) among reachable managers"
        );
        assert!(!first.settled);
        let recorded = Desired {
            bootstrap: Some(b.node.clone()),
            ..desired.clone()
        };
        assert_eq!(
            plan(&recorded, &obs).steps,
            vec![Step::Init {
                node: b.node.clone(),
                advertise_addr: b.private_ip.clone().expect("ip"),
            }]
        );
        // No Init anywhere without a recorded bootstrap, whatever the members.
        assert!(first.steps.iter().all(|s| !matches!(s, Step::Init { .. })));
    }

    #[test]
    fn a_gone_bootstrap_is_chosen_again_and_an_unreachable_one_awaited() {
        let a = member(1, Role::Manager);
        let b = member(2, Role::Manager);
        let desired = Desired {
            managers: 3,
            bootstrap: Some(a.node.clone()),
            ..Desired::default()
        };
        let mut gone = a.clone();
        gone.gone = true;
        gone.reachable = false;
        let plan_gone = plan(&desired, &observed(vec![gone, b.clone()]));
        assert_eq!(
            plan_gone.steps,
            vec![Step::ChooseBootstrap {
                node: b.node.clone()
            }]
        );

        let mut silent = a.clone();
        silent.reachable = false;
        let plan_silent = plan(&desired, &observed(vec![silent, b.clone()]));
        assert!(plan_silent.steps.is_empty(), "{plan_silent:?}");
        assert!(
            plan_silent.waiting[0].contains("unreachable"),
            "{plan_silent:?}"
        );
    }

    #[test]
    fn an_initialised_bootstrap_is_adopted_and_lost_tokens_are_asked_for_again() {
        let mut sim = Sim::new(1, 1);
        sim.round(None); // choose
        sim.round(Some((0, true))); // Init runs, its tokens never reach the store
        assert!(!sim.desired.have_tokens);
        let plan = sim.round(None);
        let node = sim.desired.bootstrap.clone().expect("recorded");
        assert!(plan.steps.contains(&Step::AdoptCluster {
            cluster_id: "swarm-1".into()
        }));
        assert!(
            plan.steps
                .iter()
                .any(|s| matches!(s, Step::Init { node: n, .. } if *n == node))
        );
        assert!(sim.desired.have_tokens);
        assert_eq!(sim.clusters_created, 1);
    }

    #[test]
    fn a_dead_manager_is_demoted_then_removed_and_never_left_down() {
        let mut sim = Sim::new(3, 1);
        for _ in 0..12 {
            sim.round(None);
        }
        assert!(sim.round(None).settled, "{sim:#?}");
        let victim = sim
            .members
            .iter()
            .position(|m| {
                m.role == Role::Manager
                    && sim
                        .node_of(sim.index(&m.node))
                        .is_some_and(|k| !sim.nodes[k].leader)
            })
            .expect("a follower");
        sim.members[victim].gone = true;
        sim.members[victim].reachable = false;
        let id = sim.members[victim].last_node_id.clone().expect("joined");
        let demote = sim.round(None);
        assert!(
            demote
                .steps
                .iter()
                .any(|s| matches!(s, Step::Demote { node_id, .. } if *node_id == id)),
            "{demote:?}"
        );
        let remove = sim.round(None);
        assert!(
            remove
                .steps
                .iter()
                .any(|s| matches!(s, Step::Remove { node_id, force: true, .. } if *node_id == id)),
            "{remove:?}"
        );
        assert!(sim.nodes.iter().all(|n| n.id != id));
    }

    #[test]
    fn a_manager_is_not_added_while_one_is_unreachable_beyond_the_margin() {
        let mut sim = Sim::new(3, 0);
        for _ in 0..12 {
            sim.round(None);
        }
        // One manager's agent and engine fall silent; a replacement arrives.
        let silent = sim.staying_managers()[1];
        sim.members[silent].reachable = false;
        sim.add(Role::Manager);
        sim.desired.managers = 3;
        let plan = sim.round(None);
        assert!(
            plan.steps.iter().all(|s| !s.is_manager_change()),
            "{plan:?}"
        );
        assert!(!plan.settled);
    }

    /// A swarm of `managers` managers and `workers` workers, settled.
    fn settled(managers: u32, workers: u32) -> Sim {
        let mut sim = Sim::new(managers, workers);
        for _ in 0..20 {
            if sim.round(None).settled {
                return sim;
            }
        }
        panic!("did not settle: {sim:#?}");
    }

    #[test]
    fn a_leaving_worker_is_drained_given_time_then_leaves_is_removed_and_released() {
        let mut sim = settled(1, 2);
        let worker = sim
            .members
            .iter()
            .position(|m| m.role == Role::Worker)
            .expect("worker");
        let k = sim.node_of(worker).expect("listed");
        let id = sim.nodes[k].id.clone();
        let uuid = sim.members[worker].node.clone();
        sim.members[worker].leaving = true;
        // The only other node is the manager, which takes no tasks here: they stay put.
        for n in &mut sim.nodes {
            if n.id != id {
                n.availability = Availability::Drain;
            }
        }
        sim.nodes[k].running_tasks = 3;
        let drain = sim.round(None);
        assert!(
            drain
                .steps
                .iter()
                .any(|s| matches!(s, Step::Drain { node_id, .. } if *node_id == id)),
            "{drain:?}"
        );
        let waiting = sim.round(None);
        assert!(waiting.steps.is_empty(), "{waiting:?}");
        assert_eq!(
            waiting.waiting,
            vec![format!("{uuid}: draining, 3 tasks still running")]
        );
        sim.now_ms += DRAIN_TIMEOUT_MS;
        let leave = sim.round(None);
        assert_eq!(
            leave.steps,
            vec![Step::Leave {
                node: uuid.clone(),
                force: false
            }]
        );
        let remove = sim.round(None);
        assert!(
            matches!(&remove.steps[..], [Step::Remove { node_id, force: true, .. }] if *node_id == id),
            "{remove:?}"
        );
        let release = sim.round(None);
        assert_eq!(release.steps, vec![Step::Release { node: uuid }]);
    }

    #[test]
    fn a_stray_leaves_its_swarm_by_force_and_joins_ours() {
        let mut sim = settled(1, 0);
        sim.add_stray();
        let stray = sim.members.last().expect("stray").node.clone();
        let plan = sim.round(None);
        assert_eq!(
            plan.steps,
            vec![Step::Leave {
                node: stray.clone(),
                force: true
            }]
        );
        let join = sim.round(None);
        assert!(
            matches!(&join.steps[..], [Step::Join { node, role: Role::Worker, .. }] if *node == stray),
            "{join:?}"
        );
    }

    #[test]
    fn down_nodes_of_nobody_are_removed_and_ready_ones_left_to_the_user() {
        let sim = settled(1, 0);
        let mut observed = sim.observe();
        let user = |id: &str, status| SwarmNode {
            id: id.into(),
            role: Role::Worker,
            availability: Availability::Active,
            status,
            reachable: None,
            leader: false,
            labels: BTreeMap::new(),
            running_tasks: 0,
        };
        let nodes = observed.nodes.as_mut().expect("a list");
        nodes.push(user("theirs", NodeStatus::Ready));
        nodes.push(user("dead", NodeStatus::Down));
        let plan = plan(&sim.desired, &observed);
        let manager = sim.members[0].node.clone();
        assert_eq!(
            plan.steps,
            vec![Step::Remove {
                via: manager,
                node_id: "dead".into(),
                force: true
            }]
        );
    }

    #[test]
    fn lost_tokens_are_asked_of_the_leader() {
        let mut sim = settled(3, 0);
        sim.desired.have_tokens = false;
        let observed = sim.observe();
        let leader_id = sim
            .nodes
            .iter()
            .find(|n| n.leader)
            .expect("a leader")
            .id
            .clone();
        let leader = sim.owner[&leader_id].clone();
        let plan = plan(&sim.desired, &observed);
        assert!(
            matches!(&plan.steps[..], [Step::Init { node, .. }] if *node == leader),
            "{plan:?}"
        );
        assert!(!plan.settled);
    }

    #[test]
    fn manager_health_counts_gone_managers_as_unreachable_and_falls_back_to_reports() {
        let mut sim = settled(3, 1);
        let observed = sim.observe();
        assert_eq!(manager_health(&observed), health(3, 3));
        let follower = sim
            .members
            .iter()
            .position(|m| {
                m.role == Role::Manager
                    && sim
                        .node_of(sim.index(&m.node))
                        .is_some_and(|k| !sim.nodes[k].leader)
            })
            .expect("a follower");
        sim.members[follower].gone = true;
        // The list still says reachable: the member's termination wins.
        let stale = sim.observe();
        assert_eq!(manager_health(&stale), health(3, 2));
        let without_list = Observed {
            nodes: None,
            ..stale
        };
        assert_eq!(manager_health(&without_list), health(3, 2));
    }

    #[test]
    fn an_upgrade_replaces_every_manager_at_once_without_losing_quorum() {
        let mut sim = settled(3, 2);
        let old: Vec<usize> = sim.staying_managers();
        for &i in &old {
            sim.members[i].leaving = true;
            sim.add(Role::Manager);
        }
        let mut most = 0;
        for _ in 0..60 {
            // `round` asserts that no step leaves the swarm below quorum.
            let plan = sim.round(None);
            most = most.max(sim.health().total);
            if plan.settled {
                break;
            }
        }
        assert!(sim.round(None).settled, "{sim:#?}");
        assert!(
            old.iter()
                .all(|&i| sim.released.contains(&sim.members[i].node))
        );
        assert_eq!(sim.health(), health(3, 3));
        assert_eq!(
            most, 4,
            "a replacement joins before a reachable manager leaves"
        );
    }

    #[test]
    fn planning_a_thousand_nodes_is_cheap() {
        let mut sim = Sim::new(3, 997);
        for _ in 0..12 {
            sim.round(None);
        }
        let plan = sim.round(None);
        assert!(plan.settled, "{:?}", plan.waiting);
        assert_eq!(sim.nodes.len(), 1000);
    }

    /// A random event between planning rounds.
    #[derive(Debug, Clone)]
    enum Event {
        Nothing,
        Unreachable(usize),
        Recover(usize),
        Gone(usize),
        NewWorker,
        Stray,
        Leaving(usize),
        Managers(usize),
        Lose(usize, bool),
        Tasks(usize, u32),
        /// A member falls silent even if that costs the swarm its quorum.
        Disaster(usize),
        /// Someone promotes or demotes a node by hand.
        Misrole(usize),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            3 => Just(Event::Nothing),
            1 => (0usize..64).prop_map(Event::Unreachable),
            1 => (0usize..64).prop_map(Event::Recover),
            1 => (0usize..64).prop_map(Event::Gone),
            1 => Just(Event::NewWorker),
            1 => Just(Event::Stray),
            2 => (0usize..64).prop_map(Event::Leaving),
            1 => (0usize..4).prop_map(Event::Managers),
            2 => (0usize..64, any::<bool>()).prop_map(|(k, a)| Event::Lose(k, a)),
            2 => (0usize..64, 1u32..5).prop_map(|(i, n)| Event::Tasks(i, n)),
            1 => (0usize..64).prop_map(Event::Misrole),
            1 => (0usize..64).prop_map(Event::Disaster),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Through any sequence of failures, arrivals, departures, target changes and lost
        /// steps: only the recorded bootstrap initialises and one swarm is adopted; no step
        /// takes a quorate swarm below quorum (a lone manager's growth aside); plans are
        /// deterministic sets with at most one manager change; Release only once a node is
        /// out of the list. Once failures stop, planning settles with every live staying
        /// member in the swarm with its role and labels, every leaving member released or
        /// gone, and no node left behind.
        #[test]
        fn swarms_keep_quorum_and_converge(
            managers in 0usize..3,
            workers in 0u32..4,
            events in prop::collection::vec(event(), 0..40),
        ) {
            let mut sim = Sim::new(MANAGER_COUNTS[managers], workers);
            for event in events {
                let live: Vec<usize> = (0..sim.members.len()).filter(|&i| !sim.members[i].gone).collect();
                let pick = |i: usize| (!live.is_empty()).then(|| live[i % live.len()]);
                let mut lose = None;
                match event {
                    Event::Nothing => {}
                    Event::Unreachable(i) => {
                        if let Some(i) = pick(i).filter(|&i| sim.may_fail(i)) {
                            sim.members[i].reachable = false;
                        }
                    }
                    Event::Recover(i) => {
                        if let Some(i) = pick(i) {
                            sim.members[i].reachable = true;
                        }
                    }
                    Event::Disaster(i) => {
                        if let Some(i) = pick(i) {
                            sim.members[i].reachable = false;
                        }
                    }
                    Event::Gone(i) => {
                        if let Some(i) = pick(i).filter(|&i| sim.may_fail(i) && sim.may_go(i)) {
                            sim.members[i].gone = true;
                            sim.members[i].reachable = false;
                        }
                    }
                    Event::NewWorker => {
                        sim.add(Role::Worker);
                    }
                    Event::Stray => sim.add_stray(),
                    Event::Leaving(i) => {
                        if let Some(i) = pick(i).filter(|&i| !sim.members[i].leaving) {
                            sim.members[i].leaving = true;
                            if sim.members[i].role == Role::Manager {
                                sim.add(Role::Manager);
                            }
                        }
                    }
                    Event::Managers(k) => {
                        let target = MANAGER_COUNTS[k];
                        sim.refresh();
                        if check_manager_change(manager_health(&sim.observe()), target).is_ok() {
                            sim.desired.managers = target;
                            sim.follow_target();
                        }
                    }
                    Event::Lose(k, answer) => lose = Some((k, answer)),
                    Event::Misrole(i) => {
                        let total = sim.health().total;
                        if let Some((i, k)) = pick(i).and_then(|i| Some((i, sim.node_of(i)?))) {
                            let up = sim.up(&sim.members[i].node);
                            // A role change is a Raft change: only with quorum.
                            let may_fail = sim.may_fail(i) && sim.quorate();
                            let node = &mut sim.nodes[k];
                            if node.role == Role::Worker && up && may_fail {
                                node.role = Role::Manager;
                                node.reachable = Some(true);
                            } else if node.role == Role::Manager && total >= 2 && may_fail {
                                node.role = Role::Worker;
                                node.reachable = None;
                                node.leader = false;
                            }
                        }
                    }
                    Event::Tasks(i, n) => {
                        if let Some(k) = pick(i)
                            .and_then(|i| sim.node_of(i))
                            .filter(|&k| sim.nodes[k].availability == Availability::Active)
                        {
                            sim.nodes[k].running_tasks += n;
                        }
                    }
                }
                sim.round(lose);
                if let Some(c) = &sim.desired.cluster_id {
                    prop_assert_eq!(Some(c), sim.cluster.as_ref(), "one swarm, adopted once");
                }
            }

            // Failures stop: silent nodes come back, or are terminated when quorum can do
            // without them, and the node clusters replace managers.
            for i in 0..sim.members.len() {
                if !sim.members[i].reachable && !sim.members[i].gone {
                    if sim.may_go(i) {
                        sim.members[i].gone = true;
                    } else {
                        sim.members[i].reachable = true;
                    }
                }
            }
            let live_at_end: BTreeSet<String> = sim
                .members
                .iter()
                .filter(|m| m.leaving && !m.gone)
                .map(|m| m.node.clone())
                .collect();
            sim.follow_target();
            let mut settled = false;
            for _ in 0..150 {
                if sim.round(None).settled {
                    settled = true;
                    break;
                }
            }
            let last = sim.round(None);
            prop_assert!(settled, "not settled: {:?}\n{:#?}", last, sim);
            prop_assert!(last.settled && last.steps.is_empty());
            let cluster = sim.desired.cluster_id.clone().expect("adopted");
            prop_assert!(sim.desired.have_tokens);
            for (i, m) in sim.members.iter().enumerate() {
                if m.gone {
                    prop_assert!(sim.owner.iter().all(|(id, o)| o != &m.node || sim.nodes.iter().all(|n| &n.id != id)),
                        "{} is gone but listed", m.node);
                    continue;
                }
                prop_assert!(!m.leaving, "{} leaving but not released", m.node);
                prop_assert!(m.active_in(&cluster));
                let k = sim.node_of(i).expect("listed");
                let n = &sim.nodes[k];
                prop_assert_eq!(n.role, m.role);
                prop_assert_eq!(n.status, NodeStatus::Ready);
                prop_assert!(labels_ok(m, n));
            }
            for node in &live_at_end {
                prop_assert!(sim.released.contains(node), "{} was leaving and live, never released", node);
            }
            prop_assert!(sim.nodes.iter().all(|n| n.status == NodeStatus::Ready), "no Down leftovers");
            let h = sim.health();
            prop_assert_eq!(h.total, sim.desired.managers);
            prop_assert_eq!(h.reachable, h.total);
        }
    }
}
