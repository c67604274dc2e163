//! Wire types of the agent protocol: what `flotilla agent` and the server's
//! `/api/agent/v1/node/` endpoints exchange.
//!
//! Adapted from Docker Cloud's agent protocol (`shared/design/dockercloud-api.md` §8): the
//! same base path, the same `Authorization: TutumAgentToken <token>` scheme and the same
//! register / `PATCH` / `ping/` / `GET` steps, but registration names its node. A launch
//! batch's instances share one user data, so the agent sends (cluster, slot) together with
//! the batch (first slot, count) its token was made for; the server answers with a
//! per-node credential that the agent uses from then on. Unlike the other wire types,
//! optional fields here are skipped when absent: only our own agent reads them.

use serde::{Deserialize, Serialize};

/// The base path of the agent API.
pub const AGENT_NODES: &str = "/api/agent/v1/node/";
/// The `Authorization` scheme of every agent call.
pub const TOKEN_SCHEME: &str = "TutumAgentToken";

/// The path of one node in the agent API.
pub fn agent_node(uuid: &str) -> String {
    format!("{AGENT_NODES}{uuid}/")
}

/// The heartbeat path of one node.
pub fn agent_node_ping(uuid: &str) -> String {
    format!("{AGENT_NODES}{uuid}/ping/")
}

/// The path where a swarm manager's agent asks for its Docker API proxy's certificate.
pub fn agent_node_docker_proxy(uuid: &str) -> String {
    format!("{AGENT_NODES}{uuid}/dockerproxy/")
}

/// The path where a manager's proxy asks who a client certificate is and what it may do.
pub fn agent_node_bundle_check(uuid: &str) -> String {
    format!("{AGENT_NODES}{uuid}/bundlecheck/")
}

/// `POST …/dockerproxy/`: a manager's agent asks to serve the client bundles' Docker API
/// proxy. It sends only its public key; the private key never leaves the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerProxyRequest {
    /// The proxy key's public half: an uncompressed ECDSA P-256 point, base64.
    pub public_key: String,
}

/// The answer to [`DockerProxyRequest`]: what the proxy serves with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerProxyConfig {
    /// Flotilla's CA, PEM: client certificates must chain to it.
    pub ca_pem: String,
    /// The proxy's own certificate, PEM, issued by that CA for the node's addresses.
    pub cert_pem: String,
    /// The TCP port to listen on.
    pub port: u16,
}

/// `POST …/bundlecheck/`: who holds the client certificate of one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleCheck {
    /// Hex SHA-256 of the certificate's DER.
    pub fingerprint: String,
}

/// The answer to [`BundleCheck`]: the holder's role on this node's swarm, or why the
/// certificate is refused (unknown, revoked, its user removed, no role on the swarm).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleVerdict {
    #[serde(default)]
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// `POST /api/agent/v1/node/`: first registration (with the batch token, or a
/// bring-your-own-node token) or re-registration (with the node's credential).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub agent_version: String,
    /// The cluster's uuid; absent for a bring-your-own node (which then has no slot or
    /// batch either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default)]
    pub slot: u32,
    /// The batch the token was made for: slots `first_slot .. first_slot + count`.
    #[serde(default)]
    pub first_slot: u32,
    #[serde(default)]
    pub count: u32,
    #[serde(default)]
    pub private_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
    /// A random value the agent keeps for all its attempts at a first registration: the
    /// credential is derived from it, so an attempt whose answer was lost (the server died
    /// after committing it) gets the same credential again on retry, where it would
    /// otherwise be refused for a used-up token. Without it (or shorter than 32
    /// characters) the credential is random and such a retry is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// `PATCH /api/agent/v1/node/{uuid}/`: what the agent learned since it registered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ips: Option<Vec<String>>,
    /// The engine's state, sent when it changed (and with every batch of results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineReport>,
    /// Results of tasks carried out since the last update.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<TaskResult>,
}

/// The server's view of a node, as its agent sees it (answer of register, `PATCH` and
/// `GET`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentNode {
    pub uuid: String,
    pub external_fqdn: String,
    /// The address the server saw the agent's last registration come from.
    pub public_ip: Option<String>,
    pub resource_uri: String,
    /// `Deployed` once registration succeeded.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
    #[serde(default)]
    pub private_ips: Vec<String>,
    /// The node's long-lived credential: present only in the answer to the registration
    /// that issued it (the server keeps only its hash and cannot show it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Answer of `POST /api/agent/v1/node/{uuid}/ping/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingReply {
    pub reachable: bool,
    /// Steps for this node's engine (see [`AgentTask`]); empty almost always.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<AgentTask>,
}

// --- The node's Docker engine and the swarm steps the server hands to agents ---------------
//
// The server never talks to an engine itself: an engine's API is not exposed off its node.
// Each agent reports what its own engine says (`NodeUpdate::engine`, sent when it changed),
// and carries out the swarm steps the server's swarm planner addresses to it, handed over in
// heartbeat answers (`PingReply::tasks`). A task is named by an `id` that the server derives
// from the step, so a step handed out twice (a restarted server, a lost answer) is carried
// out once; every task is also safe to repeat (joining a swarm the node is already in, as
// asked, succeeds). Results come back in the next `PATCH` (`NodeUpdate::results`), with a
// fresh engine report.

/// What a node's Docker engine says, as its agent last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineReport {
    /// `None` when the engine did not answer: the node's Docker is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineInfo>,
    /// Why the engine did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `docker info` and `docker version`, reduced to what Flotilla uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// The engine's version (`20.10.24+dfsg1`).
    pub version: String,
    /// The API version negotiated with it (`1.41`).
    pub api_version: String,
    pub cpus: u32,
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// Size of the filesystem holding the engine's data root, GiB (rounded down).
    pub disk_gib: u64,
    pub containers_running: u32,
    pub swarm: SwarmInfo,
}

/// The engine's swarm membership (`docker info`'s `Swarm`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmInfo {
    /// `inactive`, `pending`, `active`, `error` or `locked`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_addr: Option<String>,
    /// A manager that can answer for the swarm (it is in a Raft quorum).
    #[serde(default)]
    pub control_available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every node of the swarm as `docker node ls` shows it: only from a manager with
    /// `control_available`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<SwarmNodeInfo>>,
    /// Every service of the swarm with its tasks: only from a manager with
    /// `control_available`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceInfo>>,
}

/// One service of a swarm, as a manager sees it (`docker service ps`, reduced).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ServiceInfo {
    pub id: String,
    pub name: String,
    /// `replicated` or `global`.
    pub mode: String,
    /// Replicated services: the replicas asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
    /// Its tasks whose desired state is `running` (or that still run).
    #[serde(default)]
    pub tasks: Vec<ServiceTask>,
    /// Ports published on the nodes (`--publish`).
    #[serde(default)]
    pub ports: Vec<PublishedPortInfo>,
}

/// One task of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ServiceTask {
    pub id: String,
    /// The swarm node it was scheduled on (empty while unscheduled).
    #[serde(default)]
    pub node_id: String,
    /// `running`, `pending`, `failed`, …
    pub state: String,
    pub desired_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A published port of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PublishedPortInfo {
    /// The container's port.
    pub target: u16,
    /// The port on the node (host mode: 0 when Docker picks one per task).
    pub published: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// `ingress` or `host`.
    pub mode: String,
}

/// One node of a swarm, as a manager sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmNodeInfo {
    pub id: String,
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// `active`, `pause` or `drain`.
    pub availability: String,
    /// `ready`, `down`, `unknown` or `disconnected`.
    pub status: String,
    #[serde(default)]
    pub addr: String,
    /// Managers only: `reachable`, `unreachable` or `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachability: Option<String>,
    #[serde(default)]
    pub leader: bool,
    /// The node's labels (`docker node update --label-add`).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Tasks on the node whose current state is `running`.
    #[serde(default)]
    pub running_tasks: u32,
    /// The version of the node object, for updates (`docker node update` needs it).
    #[serde(default)]
    pub version: u64,
}

/// One step for an agent to carry out on its engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentTask {
    /// Derived from the step by the server: the same step has the same id.
    pub id: String,
    #[serde(flatten)]
    pub op: TaskOp,
}

/// What an agent can be asked to do. Each is idempotent on the engine.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TaskOp {
    /// `docker swarm init --advertise-addr <advertise_addr>`. On an engine that is already
    /// a manager of a swarm it succeeds without change; either way the result carries that
    /// swarm's join tokens.
    SwarmInit { advertise_addr: String },
    /// `docker swarm join --token <token> --advertise-addr <advertise_addr> <remote_addrs>`.
    /// Succeeds without change on an engine already in a swarm.
    SwarmJoin {
        token: String,
        advertise_addr: String,
        /// Managers' `address:2377`.
        remote_addrs: Vec<String>,
    },
    /// `docker swarm leave` (`--force` for a manager). Succeeds on an engine in no swarm.
    SwarmLeave { force: bool },
    /// `docker node update` of any node, run on a manager: role (`manager`/`worker`: promote,
    /// demote), availability (`active`/`drain`), labels to set (others are kept). Only what is
    /// `Some` changes.
    NodeUpdate {
        node_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        availability: Option<String>,
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        labels: std::collections::BTreeMap<String, String>,
    },
    /// `docker node rm [--force] <node_id>`, run on a manager. Succeeds when the node is
    /// already gone.
    NodeRemove { node_id: String, force: bool },
}

impl std::fmt::Debug for TaskOp {
    /// Join tokens are secrets: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskOp::SwarmInit { advertise_addr } => f
                .debug_struct("SwarmInit")
                .field("advertise_addr", advertise_addr)
                .finish(),
            TaskOp::SwarmJoin {
                advertise_addr,
                remote_addrs,
                ..
            } => f
                .debug_struct("SwarmJoin")
                .field("advertise_addr", advertise_addr)
                .field("remote_addrs", remote_addrs)
                .finish_non_exhaustive(),
            TaskOp::SwarmLeave { force } => {
                f.debug_struct("SwarmLeave").field("force", force).finish()
            }
            TaskOp::NodeUpdate {
                node_id,
                role,
                availability,
                labels,
            } => f
                .debug_struct("NodeUpdate")
                .field("node_id", node_id)
                .field("role", role)
                .field("availability", availability)
                .field("labels", labels)
                .finish(),
            TaskOp::NodeRemove { node_id, force } => f
                .debug_struct("NodeRemove")
                .field("node_id", node_id)
                .field("force", force)
                .finish(),
        }
    }
}

/// How a task ended.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub id: String,
    pub ok: bool,
    /// What happened, for the action's log; the engine's error when not `ok`.
    #[serde(default)]
    pub message: String,
    /// `SwarmInit` only: the swarm's join tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_tokens: Option<JoinTokens>,
}

impl std::fmt::Debug for TaskResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskResult")
            .field("id", &self.id)
            .field("ok", &self.ok)
            .field("message", &self.message)
            .field(
                "join_tokens",
                &self.join_tokens.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A swarm's join tokens (secrets: kept sealed by the server).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokens {
    pub manager: String,
    pub worker: String,
}

impl std::fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinTokens(<redacted>)")
    }
}
