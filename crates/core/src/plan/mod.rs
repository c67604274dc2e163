//! Planners: every choice Flotilla makes about the cloud, as pure functions.
//!
//! Each reconciler has three parts and only the middle one decides (Omicron's
//! reconfigurator: "the planner is synchronous, deterministic and makes every choice; the
//! executor makes none"):
//!
//! 1. **observe** — describe what exists (the cloud by tag, the store); no decisions;
//! 2. **plan** — `plan(desired, observed) -> Plan`, a function in this module: synchronous,
//!    no I/O, deterministic (ties broken by names and ids, never by time or hash order);
//! 3. **execute** — carry the plan's steps out (the server's `execute` module), write each to
//!    the action's log, and stop at the first failure. What a step returns — the instances a
//!    launch created, an AZ that refused for capacity — is a *new observation*: the executor
//!    adds it to what it observed and plans again. It never branches on it.
//!
//! Every planner is held to the same promise by property tests: planning again after its
//! plan was applied yields an empty plan, so an executor loops "plan, apply" until nothing
//! is left, and a crash anywhere is recovered by observing and planning again.
//!
//! * [`cluster`] — a node cluster: launch batches, terminations, re-placement after a
//!   capacity refusal, removal and teardown, and the verdict that settles a busy cluster.
//! * [`network`] — the network's choices: usable AZs, which duplicate of a resource to keep,
//!   which security group rules are missing.
//! * [`lb`] — a swarm's network load balancer: listeners that follow the published ports,
//!   target groups of the swarm's nodes, its security group, and their removal. Its plan is
//!   the next *round* (a listener needs the ARN its target group's create returns), so the
//!   promise reads: rounds applied one after the other end in an empty plan, and no round
//!   repeats a step of an earlier one.
//! * [`preview`] — where a cluster not yet created would put its nodes (the launch
//!   wizard's preview), by the same placement rule, with its network choices checked.
//! * [`directory`] — an LDAP directory's sync: which directory users are disabled or
//!   enabled again, which team memberships the directory's groups grant or no longer grant.
//! * [`swarm`] — a Docker Swarm over two node clusters: bootstrap, joins, roles and labels,
//!   how nodes leave, all without ever losing manager quorum.

pub mod cluster;
pub mod directory;
pub mod lb;
pub mod network;
pub mod preview;
pub mod swarm;
