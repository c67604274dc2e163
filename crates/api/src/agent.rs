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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingReply {
    pub reachable: bool,
}
