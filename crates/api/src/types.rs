//! The objects of the API, one struct per resource, in the contract's field order (§3).
//!
//! Fields are serialized in alphabetical order within each struct for stable diffs of
//! recorded responses; JSON object order carries no meaning for the clients.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `meta` of a list envelope (§2.3). `next` and `previous` are paths starting with `/api/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Meta {
    pub limit: u64,
    pub next: Option<String>,
    pub offset: u64,
    pub previous: Option<String>,
    pub total_count: u64,
}

/// Every list answer: `{"meta": {...}, "objects": [...]}`; an empty result is 200 with `[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListEnvelope<T> {
    pub meta: Meta,
    pub objects: Vec<T>,
}

/// Every error answer: `{"error": "<message naming the field or resource>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ErrorBody {
    pub error: String,
}

/// §3.1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Provider {
    pub available: bool,
    pub label: String,
    pub name: String,
    pub regions: Vec<String>,
    pub resource_uri: String,
}

/// §3.2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Region {
    pub available: bool,
    pub availability_zones: Vec<String>,
    pub label: String,
    pub name: String,
    pub node_types: Vec<String>,
    pub provider: String,
    pub resource_uri: String,
}

/// §3.3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AvailabilityZone {
    pub available: bool,
    pub name: String,
    pub region: String,
    pub resource_uri: String,
}

/// §3.4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeType {
    pub available: bool,
    pub availability_zones: Vec<String>,
    pub label: String,
    pub name: String,
    pub provider: String,
    pub regions: Vec<String>,
    pub resource_uri: String,
}

/// A VPC of a region, for the launch wizard (`region/{provider}/{name}/vpc/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Vpc {
    pub id: String,
    /// Its `Name` tag.
    pub name: Option<String>,
    /// What a dropdown shows: `vpc-1234 (Name)`.
    pub label: String,
    pub cidr: String,
    pub is_default: bool,
    /// Flotilla's own auto VPC (`dc-vpc`) of this installation.
    pub flotilla: bool,
    pub region: String,
}

/// A subnet of a region (`region/{provider}/{name}/subnet/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VpcSubnet {
    pub id: String,
    pub vpc_id: String,
    /// The AZ's name (`us-east-1a`).
    pub availability_zone: String,
    pub cidr: String,
    /// Free IPv4 addresses.
    pub available_ips: u32,
    pub name: Option<String>,
    /// Created by Flotilla.
    pub flotilla: bool,
}

/// A security group of a region (`region/{provider}/{name}/securitygroup/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SecurityGroup {
    pub id: String,
    pub vpc_id: String,
    pub name: String,
    pub description: String,
    /// Created by Flotilla.
    pub flotilla: bool,
}

/// An IAM instance profile (`provider/{name}/instanceprofile/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InstanceProfile {
    pub name: String,
    pub arn: String,
    pub roles: Vec<String>,
}

/// Where a cluster's nodes would land (`POST nodecluster/preview/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ClusterPreview {
    pub region: String,
    pub node_type: String,
    pub target_num_nodes: u32,
    /// `auto`, or the chosen VPC's id.
    pub vpc: String,
    /// One entry per AZ the cluster may use, in AZ order, with how many nodes it gets.
    pub nodes_per_az: Vec<AzPlacement>,
    /// What the preview could not know for sure (an AZ Flotilla will dry-run first).
    pub notes: Vec<String>,
}

/// Nodes planned in one AZ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AzPlacement {
    pub availability_zone: String,
    /// The subnets used there (the chosen ones; empty when Flotilla makes or picks its own).
    pub subnets: Vec<String>,
    pub nodes: u32,
}

/// A tag on a cluster or node. The clients echo back whatever they received, so only
/// `name` is emitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Tag {
    pub name: String,
}

/// A Docker Swarm cluster (Flotilla's own resource, in the conventions of the others): its
/// managers and workers are node clusters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Swarm {
    pub uuid: String,
    pub resource_uri: String,
    pub name: String,
    /// `Deploying` until every node is in the swarm with its role, then `Deployed`;
    /// `Terminating`, `Terminated`.
    pub state: String,
    pub region: String,
    pub manager_count: u32,
    pub worker_count: u32,
    /// The managers' and the workers' node clusters.
    pub manager_cluster: String,
    pub worker_cluster: String,
    /// Docker's ID of the swarm, once it exists.
    pub cluster_id: Option<String>,
    /// The node (resource URI) that initialised the swarm.
    pub bootstrap_node: Option<String>,
    pub nodes: Vec<SwarmMember>,
    /// The swarm's services as a manager last reported them (empty until one did).
    #[serde(default)]
    pub services: Vec<SwarmService>,
    /// The network load balancer in front of the nodes (Docker for AWS's): its listeners
    /// follow the ports the swarm's services publish. `None` until the swarm has a node.
    pub load_balancer: Option<SwarmLoadBalancer>,
    pub created_datetime: Option<String>,
    pub deployed_datetime: Option<String>,
    pub destroyed_datetime: Option<String>,
    pub current_action: Option<String>,
}

/// `GET /services/{id}` (seed 004's monitoring endpoint): a swarm service's health, read
/// from what a manager of its swarm last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SwarmService {
    pub id: String,
    pub name: String,
    /// The swarm (resource URI).
    pub swarm: String,
    /// `replicated` or `global`.
    pub mode: String,
    /// Replicated services: the replicas asked for.
    pub replicas: Option<u64>,
    /// Tasks running now.
    pub running: u32,
    pub tasks: Vec<SwarmServiceTask>,
    pub ports: Vec<crate::agent::PublishedPortInfo>,
}

/// One task of a service, with the Flotilla node it runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SwarmServiceTask {
    pub id: String,
    /// The node (resource URI), when the task is scheduled on a node of the swarm.
    pub node: Option<String>,
    pub docker_node_id: String,
    pub state: String,
    pub desired_state: String,
    pub error: Option<String>,
}

/// A swarm's load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SwarmLoadBalancer {
    pub dns_name: Option<String>,
    /// One listener per published port.
    pub ports: Vec<SwarmListener>,
}

/// A listener of a swarm's load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SwarmListener {
    pub port: u16,
    /// `TCP`, `UDP` or `TCP_UDP`.
    pub protocol: String,
}

/// One node of a swarm: its role as Flotilla wants it and as Docker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SwarmMember {
    /// The node's resource URI.
    pub node: String,
    /// The node's state (`Deployed`, `Unreachable`, …).
    pub state: String,
    /// `manager` or `worker`: its node cluster's role.
    pub role: String,
    pub availability_zone: String,
    /// Docker's node ID, once the node is in the swarm.
    pub docker_node_id: Option<String>,
    /// As `docker node ls` shows it: `ready`, `down`, …; `None` while not in the swarm.
    pub docker_status: Option<String>,
    /// `active`, `pause` or `drain`.
    pub availability: Option<String>,
    /// Managers: `reachable`, `unreachable`.
    pub manager_status: Option<String>,
    pub leader: bool,
    /// The engine's swarm state (`inactive`, `pending`, `active`, …); `None`: no report.
    pub engine_swarm_state: Option<String>,
}

/// §3.5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeCluster {
    /// Flotilla's addition: replace nodes whose instance disappears out of band.
    #[serde(default)]
    pub auto_replace: bool,
    pub current_num_nodes: u32,
    pub deployed_datetime: Option<String>,
    pub destroyed_datetime: Option<String>,
    pub disk: u32,
    pub name: String,
    pub nickname: String,
    pub node_type: String,
    pub nodes: Vec<String>,
    /// The validated `provider_options` in the Docker Cloud shape (`{}` when none).
    pub provider_options: Value,
    pub region: String,
    pub resource_uri: String,
    pub state: String,
    pub tags: Vec<Tag>,
    pub target_num_nodes: u32,
    pub uuid: String,
}

/// One private address of a node (GO `Network`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PrivateIp {
    pub cidr: String,
    pub name: String,
}

/// §3.6. Fields only an agent can know (Docker version, CPU, memory) are `null` until agents
/// report them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Node {
    pub availability_zone: Option<String>,
    pub cpu: Option<u32>,
    pub current_num_containers: u32,
    pub deployed_datetime: Option<String>,
    pub destroyed_datetime: Option<String>,
    pub disk: u32,
    pub docker_execdriver: Option<String>,
    pub docker_graphdriver: Option<String>,
    pub docker_version: Option<String>,
    /// Flotilla's addition: the node's Docker engine as its agent last saw it — `running`,
    /// or `down: <why>` when the engine does not answer; `None` before the first report.
    pub docker_engine: Option<String>,
    pub external_fqdn: String,
    pub last_seen: Option<String>,
    pub memory: Option<u32>,
    pub nickname: String,
    pub node_cluster: Option<String>,
    pub node_type: String,
    pub private_ips: Vec<PrivateIp>,
    pub public_ip: Option<String>,
    pub region: String,
    pub resource_uri: String,
    pub state: String,
    pub tags: Vec<Tag>,
    pub tunnel: Option<String>,
    pub uuid: String,
}

/// §3.7. `object` is always a string (the CLI splits it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Action {
    pub action: String,
    pub body: String,
    pub can_be_canceled: bool,
    pub can_be_retried: bool,
    pub end_date: Option<String>,
    pub ip: String,
    pub is_user_action: bool,
    pub location: String,
    pub logs: String,
    pub method: String,
    pub object: String,
    pub path: String,
    pub resource_uri: String,
    pub start_date: Option<String>,
    pub state: String,
    pub user: String,
    pub user_agent: String,
    pub uuid: String,
}

/// Action states (§4.3), spelled as on the wire.
pub mod action_state {
    pub const PENDING: &str = "Pending";
    pub const IN_PROGRESS: &str = "In progress";
    pub const CANCELING: &str = "Canceling";
    pub const CANCELED: &str = "Canceled";
    pub const SUCCESS: &str = "Success";
    pub const FAILED: &str = "Failed";
}

/// §3.8: the BYO-node token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub token: String,
}

/// One message of the events websocket (§6). Unlike REST objects, `datetime` is ISO 8601
/// (`2016-02-01T16:47:28Z`) and `uuid` names the event, not the object. The CLI prints
/// these frames verbatim, so the fields keep the documented order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `nodecluster`, `node` or `action`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `create`, `update` or `delete`.
    pub action: String,
    pub resource_uri: String,
    pub state: String,
    /// Node: its cluster; action: the object it acts on; cluster: none.
    pub parents: Vec<String>,
    pub uuid: String,
    pub datetime: String,
}

/// One frame of the action logs websocket (§2.2): `{"type": "log", "log", "timestamp"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFrame {
    #[serde(rename = "type")]
    pub kind: String,
    pub log: String,
    /// Seconds since the Unix epoch.
    pub timestamp: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_envelope_has_the_documented_shape() {
        let envelope = ListEnvelope {
            meta: Meta {
                limit: 25,
                next: Some("/api/infra/v1/nodecluster/?limit=25&offset=25".into()),
                offset: 0,
                previous: None,
                total_count: 30,
            },
            objects: vec![Tag { name: "web".into() }],
        };
        assert_eq!(
            serde_json::to_value(&envelope).expect("json"),
            json!({"meta": {"limit": 25, "next": "/api/infra/v1/nodecluster/?limit=25&offset=25",
                            "offset": 0, "previous": null, "total_count": 30},
                   "objects": [{"name": "web"}]})
        );
    }

    #[test]
    fn unknown_values_are_null_not_missing() {
        let node = Node {
            availability_zone: None,
            cpu: None,
            current_num_containers: 0,
            deployed_datetime: None,
            destroyed_datetime: None,
            disk: 60,
            docker_execdriver: None,
            docker_graphdriver: None,
            docker_version: None,
            docker_engine: None,
            external_fqdn: "x".into(),
            last_seen: None,
            memory: None,
            nickname: "x".into(),
            node_cluster: None,
            node_type: "/api/infra/v1/nodetype/aws/t3.micro/".into(),
            private_ips: vec![],
            public_ip: None,
            region: "/api/infra/v1/region/aws/us-east-1/".into(),
            resource_uri: "/api/infra/v1/node/x/".into(),
            state: "Deploying".into(),
            tags: vec![],
            tunnel: None,
            uuid: "x".into(),
        };
        let value = serde_json::to_value(&node).expect("json");
        for field in [
            "uuid",
            "external_fqdn",
            "last_seen",
            "state",
            "node_cluster",
            "docker_version",
        ] {
            assert!(value.get(field).is_some(), "node ls reads {field}");
        }
        assert_eq!(value["docker_version"], Value::Null);
    }
}

/// A team's role on a resource or an organization (issue #15), weakest first: each role can
/// do what the ones before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read: list and inspect.
    View,
    /// Change what runs: scale, redeploy, remove a node, update a swarm.
    Operate,
    /// Create and delete too.
    Manage,
    /// Members and grants of the organization too.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::View, Role::Operate, Role::Manage, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::View => "view",
            Role::Operate => "operate",
            Role::Manage => "manage",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| format!("'{text}' is not a role: view, operate, manage or admin"))
    }
}

/// An organization (issue #15): owns node clusters and swarms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Organization {
    pub name: String,
    pub created_datetime: String,
    pub resource_uri: String,
}

/// A team of an organization and its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Team {
    pub name: String,
    pub organization: String,
    pub members: Vec<String>,
    /// The directory group whose members are the team's directory users (LDAP sync).
    #[serde(default)]
    pub ldap_group_dn: Option<String>,
    pub resource_uri: String,
}

/// The LDAP / Active Directory settings (`GET`/`PUT /api/access/v1/ldap/`). Empty
/// `servers`: LDAP is off.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LdapSettings {
    /// In order; the first serves the default domain, the others the `domain` they name.
    pub servers: Vec<LdapServer>,
    /// The user searches, in order: the first that finds a name wins.
    pub searches: Vec<LdapSearch>,
}

/// One LDAP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LdapServer {
    /// `ldaps://host:636` or `ldap://host:389`.
    pub url: String,
    /// `ldaps`, `starttls` or `none`.
    pub tls: String,
    /// The CA that signed the server's certificate (PEM); without it, the system's roots.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// The account the searches bind as.
    pub bind_dn: String,
    /// Write-only: never answered. On a `PUT`, leaving it out keeps the stored password of
    /// the server with the same URL and bind DN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_password: Option<String>,
    /// Answered: whether a bind password is stored.
    #[serde(default)]
    pub bind_password_set: bool,
    /// The domain this server serves (`alice@domain` signs in here); the first server's is
    /// the default.
    #[serde(default)]
    pub domain: Option<String>,
}

/// One user search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LdapSearch {
    pub base_dn: String,
    /// `base`, `one` or `sub`.
    pub scope: String,
    /// An LDAP filter, such as `(objectClass=inetOrgPerson)`.
    pub filter: String,
    /// The attribute holding the user name (`uid`, `sAMAccountName`).
    pub username_attribute: String,
    /// The attribute holding the full name (`cn`, `displayName`).
    #[serde(default)]
    pub full_name_attribute: Option<String>,
}

/// What a directory sync did (`POST /api/access/v1/ldap/sync/`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LdapSyncReport {
    /// Directory users looked up.
    pub users: usize,
    pub disabled: Vec<String>,
    pub enabled: Vec<String>,
    /// `org/team/user` memberships the directory's groups granted.
    pub added: Vec<String>,
    /// `org/team/user` memberships the directory no longer grants.
    pub removed: Vec<String>,
}

/// A team's role on one resource of its organization, or on all of them (`resource` = `*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Grant {
    pub id: String,
    pub organization: String,
    pub team: String,
    /// `*`, or the uuid of a node cluster or swarm of the organization.
    pub resource: String,
    pub role: Role,
    pub created_datetime: String,
    pub resource_uri: String,
}

/// A user. Secrets are never part of it: `has_password` says whether one is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct User {
    pub username: String,
    /// The server administrator: sees and does everything.
    pub admin: bool,
    pub has_password: bool,
    /// The organizations the user is a member of.
    pub organizations: Vec<String>,
    pub created_datetime: String,
    pub resource_uri: String,
}

/// An API key: `key` is present only in the answer that created it (shown once); `Debug`
/// leaves it out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub username: String,
    pub created_datetime: String,
    pub revoked_datetime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub resource_uri: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("username", &self.username)
            .field("revoked_datetime", &self.revoked_datetime)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.id)
    }
}

/// A client bundle (issue #15): a certificate issued by Flotilla's CA for a user, with
/// which the user's own `docker` CLI reaches a swarm's managers. The private key is only
/// in the zip of the answer that created it ([`BundleCreated`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Bundle {
    /// The certificate's serial number, hex: how the bundle is named in `rm`.
    pub id: String,
    pub username: String,
    /// The swarm whose manager `env.sh` points at, if one was chosen.
    pub swarm: Option<String>,
    /// Hex SHA-256 of the certificate.
    pub fingerprint: String,
    pub created_datetime: String,
    pub expires_datetime: String,
    pub revoked_datetime: Option<String>,
    pub resource_uri: String,
}

/// The answer to `POST user/{name}/bundle/`: the bundle and its zip (base64), shown once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BundleCreated {
    pub bundle: Bundle,
    /// `DOCKER_HOST` as `env.sh` sets it (`None`: no swarm with a manager was chosen).
    pub docker_host: Option<String>,
    /// The zip in UCP's client-bundle layout (`ca.pem`, `cert.pem`, `key.pem`, `cert.pub`,
    /// `env.sh`, `env.ps1`, `env.cmd`), base64.
    pub zip: String,
}

impl std::fmt::Debug for BundleCreated {
    /// The zip holds the private key: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleCreated")
            .field("bundle", &self.bundle)
            .field("docker_host", &self.docker_host)
            .finish_non_exhaustive()
    }
}
