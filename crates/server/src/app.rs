//! The application layer: every operation the API offers, in terms of the store, the cloud
//! catalogue and the reconciler. HTTP handlers call only this.
//!
//! Design decisions:
//! * Operations validate, then change desired state and record an action in one store
//!   transaction, then nudge the cluster's reconciler. They never call the cloud to do
//!   work, so an API call returns in milliseconds and a crash after the commit loses
//!   nothing: the reconciler resumes from the stored state.
//! * State checks go through `flotilla_core::state` and are compare-and-set in the store, so
//!   two concurrent requests (or a request and a reconciler pass) cannot both win.
//! * Errors are a closed enum that the HTTP edge maps to status codes; every message names
//!   the field, the object or the state that is wrong, and store failures never leak their
//!   internals to the caller.
//! * Linking AWS keys is the one operation that waits for the cloud: the caller needs the
//!   validation's verdict. The cloud validates the new keys and switches to them only when
//!   they are valid; then the keys are sealed ([`crate::secrets`]) and stored. Links are
//!   serialized, record no action (its body would hold the secret), and the request body
//!   is never logged. If storing fails after the switch, the server runs with the new keys
//!   until it restarts and the caller gets a 500 telling it to link again.

use std::collections::HashMap;
use std::sync::Arc;

use flotilla_api::{self as api, date, uri};
use flotilla_core::cloud::{AccessKeys, Cloud, CloudError, Ingress, NetworkRequest};
use flotilla_core::spec::{ClusterSpec, MAX_NODES, parse_tags_value};
use flotilla_core::state::{ClusterEvent, ClusterState, NodeState};
use rand::Rng;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex as AsyncMutex;

pub mod access;
pub mod agents;
mod bundles;
pub mod directory;
mod inventory;
pub use inventory::DEFAULT_INVENTORY_TTL;
pub mod sessions;
mod swarms;

use crate::authz::Viewer;
use crate::catalog::{self, Catalog, PROVIDER};
use crate::reconcile::Reconciler;
use crate::store::{
    ActionRecord, ClusterPatch, ClusterRecord, NodeFilter, NodeRecord, Store, StoreError,
    TargetChange, Transition, UserRecord,
};

/// What went wrong, as the caller should hear it.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Not authorized")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    /// The caller may see the resource but lacks the role, which the message names.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The cloud could not be asked (catalogue); worth retrying.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[from] StoreError),
}

pub type AppResult<T> = Result<T, AppError>;

/// Who made a request, for the audit trail.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub username: String,
    pub method: String,
    pub path: String,
    pub user_agent: String,
    pub ip: String,
    /// The request body as received (recorded in the action).
    pub body: String,
    /// What the caller may see and do (`crate::authz`).
    pub principal: crate::authz::Principal,
    /// For a create: the organization `authz` chose for the new resource.
    pub org: Option<String>,
}

impl Caller {
    /// The organization a create goes to (the default one for in-process callers).
    pub fn org(&self) -> &str {
        self.org
            .as_deref()
            .unwrap_or(crate::store::access::DEFAULT_ORG)
    }
}

/// The result of an operation that records an action.
#[derive(Debug, Clone)]
pub struct Outcome<T> {
    pub object: T,
    pub action_uri: String,
    /// Work continues in the background (202) rather than being done (200/201).
    pub accepted: bool,
}

/// The outcome of [`App::login`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// The user, and the credential that signed it in.
    Accepted(String, SignedInWith),
    WrongKey,
    UnknownUser,
}

/// The credential a sign-in used; a dashboard session keeps it and ends as soon as it
/// stops holding ([`App::still_holds`]): a revoked key, a changed password, a disabled
/// directory user.
#[derive(Clone, PartialEq, Eq)]
pub enum SignedInWith {
    /// The API key of this id.
    Key(String),
    /// The password whose stored hash has this SHA-256 (a new password ends the session).
    Password([u8; 32]),
    /// The directory's password (`ldap`): holds while the user is enabled.
    Directory,
}

// The password fingerprint is not secret but stays out of logs anyway.
impl std::fmt::Debug for SignedInWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignedInWith::Key(id) => write!(f, "Key({id})"),
            SignedInWith::Password(_) => f.write_str("Password"),
            SignedInWith::Directory => f.write_str("Directory"),
        }
    }
}

/// A new user's secret, shown once.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub api_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Settings that shape API objects.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// The DNS domain: nodes are `<uuid>.node.<domain>` (`external_fqdn`), clusters
    /// `<name>.cluster.<domain>`.
    pub dns_domain: String,
    /// Silence after which a node is `Unreachable`.
    pub heartbeat_grace: std::time::Duration,
    /// The AZs auto networks may use (`--azs`; `None`: every AZ), for the launch preview.
    pub allowed_azs: Option<Vec<String>>,
    /// How long a region's network lists are reused ([`DEFAULT_INVENTORY_TTL`]).
    pub inventory_ttl: std::time::Duration,
}

impl AppSettings {
    /// A node's `external_fqdn`.
    pub fn node_fqdn(&self, node_uuid: &str) -> String {
        format!("{node_uuid}.node.{}", self.dns_domain)
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill(buffer.as_mut_slice());
    hex::encode(buffer)
}

fn key_hash(salt: &str, key: &str) -> String {
    hex::encode(Sha256::digest(format!("{salt}{key}").as_bytes()))
}

/// A salted hash of a fresh random API key; the key is returned to be shown once.
pub fn new_user(username: &str) -> (UserRecord, Credentials) {
    let api_key = random_hex(20);
    let salt = random_hex(16);
    let record = UserRecord {
        username: username.to_owned(),
        api_key_hash: key_hash(&salt, &api_key),
        api_key_salt: salt,
    };
    (
        record,
        Credentials {
            username: username.to_owned(),
            api_key,
        },
    )
}

/// The fields a `PATCH nodecluster/{uuid}/` may change (the OpenAPI document's
/// `NodeClusterPatch` names exactly these).
pub const CLUSTER_PATCH_FIELDS: [&str; 4] =
    ["target_num_nodes", "tags", "nickname", "auto_replace"];

/// A node counted in `current_num_nodes`, the cluster's "actual count" of nodes
/// (dockercloud-api.md §3.5): one that is up — `Deployed`, `Unreachable` (up, its agent
/// silent) or `Upgrading` (up, its engine being upgraded). A node still `Deploying` is not
/// up yet and one `Terminating` is on its way out, so a scale from 6 to 8 shows 6 until
/// the new nodes are up.
fn is_up(state: NodeState) -> bool {
    matches!(
        state,
        NodeState::Deployed | NodeState::Unreachable | NodeState::Upgrading
    )
}

fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn integer_like(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn tags_of(names: &[String]) -> Vec<api::Tag> {
    names
        .iter()
        .map(|name| api::Tag { name: name.clone() })
        .collect()
}

/// The application. Shared by every request handler behind an `Arc`.
#[derive(Debug)]
pub struct App<C> {
    pub(crate) store: Store,
    cloud: Arc<C>,
    pub(crate) reconciler: Reconciler,
    pub(crate) settings: AppSettings,
    catalog: AsyncMutex<Option<Arc<Catalog>>>,
    /// The agent channel's in-memory state ([`agents`]).
    pub(crate) agents: agents::AgentState,
    /// Seals linked keys; `None` refuses links (an app built without a key file).
    secret_key: Option<crate::secrets::SecretKey>,
    /// The access key id of the keys linked through the API; the lock serializes links.
    linked: AsyncMutex<Option<String>>,
    /// The swarm worker's tasks for agents and their results ([`crate::swarm`]).
    pub(crate) mailbox: Arc<crate::swarm::Mailbox>,
    /// The background loops' beats, for `/_ping` ([`crate::liveness`]).
    pub(crate) liveness: Arc<crate::liveness::Liveness>,
    /// `/metrics` ([`crate::metrics`]).
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// This replica's leases on single-owner work ([`crate::lease`]).
    pub(crate) leases: Arc<crate::lease::Leases>,
    /// The launch wizard's cached VPCs, subnets, groups and profiles ([`inventory`]).
    inventory: inventory::InventoryCache,
}

/// The instance type of the dry-run launch that validates linked keys.
pub const LINK_INSTANCE_TYPE: &str = "t3.micro";

/// Decrypts the provider's linked keys, if any were stored.
pub async fn linked_keys(
    store: &Store,
    key: &crate::secrets::SecretKey,
    provider: &str,
) -> anyhow::Result<Option<AccessKeys>> {
    let Some((nonce, ciphertext)) = store.provider_credentials(provider).await? else {
        return Ok(None);
    };
    let plaintext = key.open(crate::secrets::PROVIDER_KEYS, &nonce, &ciphertext)?;
    let keys = serde_json::from_slice(&plaintext)
        .map_err(|_| anyhow::anyhow!("the linked {provider} credentials are not readable"))?;
    Ok(Some(keys))
}

/// A required, non-empty string field of a body.
fn required_text(body: &Value, field: &str) -> AppResult<String> {
    match body.get(field) {
        None | Some(Value::Null) => Err(AppError::BadRequest(format!(
            "{field}: this field is required"
        ))),
        Some(Value::String(text)) if text.trim().is_empty() => Err(AppError::BadRequest(format!(
            "{field}: this field may not be empty"
        ))),
        Some(Value::String(text)) => Ok(text.trim().to_owned()),
        Some(_) => Err(AppError::BadRequest(format!("{field}: must be a string"))),
    }
}

impl<C: Cloud + 'static> App<C> {
    pub fn new(store: Store, cloud: Arc<C>, reconciler: Reconciler, settings: AppSettings) -> Self {
        let grace = settings.heartbeat_grace;
        let leases = crate::lease::Leases::new(
            store.clone(),
            crate::lease::generated_replica_id(),
            crate::lease::DEFAULT_LEASE_TIME,
        );
        App {
            store,
            cloud,
            reconciler,
            settings,
            catalog: AsyncMutex::new(None),
            agents: agents::AgentState::new(grace),
            secret_key: None,
            linked: AsyncMutex::new(None),
            mailbox: Arc::default(),
            liveness: Arc::default(),
            metrics: Arc::default(),
            leases,
            inventory: inventory::InventoryCache::default(),
        }
    }

    /// Shares `metrics` with the workers that count into it.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Shares this replica's leases with the workers that hold them.
    pub fn with_leases(mut self, leases: Arc<crate::lease::Leases>) -> Self {
        self.leases = leases;
        self
    }

    /// `GET /metrics`: the Prometheus text exposition, with nodes by state and the cloud's
    /// AWS calls read now.
    pub async fn metrics_text(&self) -> AppResult<String> {
        let nodes = self.store.nodes_by_cluster_and_state().await?;
        self.metrics.set_replica(&crate::metrics::ReplicaView {
            replica: self.leases.replica().to_owned(),
            held: self
                .leases
                .held()
                .into_iter()
                .map(|(work, _)| work)
                .collect(),
            lost: self.leases.lost(),
            pools: self.store.pool_usage(),
        });
        Ok(self.metrics.render(&nodes, &self.cloud.call_counts()))
    }

    /// Enables linking keys: `key` seals them, `linked` is the id of the keys already linked.
    pub fn with_secret_key(
        mut self,
        key: crate::secrets::SecretKey,
        linked: Option<String>,
    ) -> Self {
        self.secret_key = Some(key);
        self.linked = AsyncMutex::new(linked);
        self
    }

    // ---- provider credentials ----

    fn credentials_object(provider: &str, linked: Option<&str>) -> Value {
        serde_json::json!({
            "provider": uri::provider(provider),
            "linked": linked.is_some(),
            "access_key_id": linked,
            "resource_uri": format!("{}credentials/", uri::provider(provider)),
        })
    }

    fn check_provider(provider: &str) -> AppResult<()> {
        if provider == PROVIDER {
            Ok(())
        } else {
            Err(AppError::NotFound(format!(
                "provider '{provider}' not found"
            )))
        }
    }

    /// Whether keys are linked, and their access key id (never the secret).
    pub async fn provider_credentials(&self, provider: &str) -> AppResult<Value> {
        Self::check_provider(provider)?;
        let linked = self.linked.lock().await;
        Ok(Self::credentials_object(provider, linked.as_deref()))
    }

    /// Validates the keys of `body` with the cloud; when valid, the cloud uses them from
    /// now on and they are stored sealed. Invalid keys are a 400 with the validation's
    /// failure message, and nothing changes.
    pub async fn link_provider_credentials(
        &self,
        provider: &str,
        body: &Value,
    ) -> AppResult<Value> {
        Self::check_provider(provider)?;
        if !body.is_object() {
            return Err(AppError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        let keys = AccessKeys {
            access_key_id: required_text(body, "access_key_id")?,
            secret_access_key: required_text(body, "secret_access_key")?,
            session_token: match body.get("session_token") {
                None | Some(Value::Null) => None,
                Some(Value::String(t)) if t.trim().is_empty() => None,
                Some(Value::String(t)) => Some(t.trim().to_owned()),
                Some(_) => {
                    return Err(AppError::BadRequest(
                        "session_token: must be a string".into(),
                    ));
                }
            },
        };
        let Some(secret_key) = &self.secret_key else {
            return Err(AppError::Unavailable(
                "this server has no key to store credentials with".into(),
            ));
        };
        let mut linked = self.linked.lock().await;
        let report = match self.cloud.link_credentials(&keys, LINK_INSTANCE_TYPE).await {
            Ok(report) => report,
            Err(error @ CloudError::InvalidCredentials { .. }) => {
                return Err(AppError::BadRequest(error.to_string()));
            }
            Err(error) => {
                return Err(AppError::Unavailable(format!(
                    "cannot validate the keys: {error}"
                )));
            }
        };
        if !report.is_valid() {
            return Err(AppError::BadRequest(report.failure_message()));
        }
        let plaintext = serde_json::to_vec(&keys)
            .map_err(|_| AppError::Unavailable("cannot encode the keys".into()))?;
        let (nonce, ciphertext) = secret_key
            .seal(crate::secrets::PROVIDER_KEYS, &plaintext)
            .map_err(|error| AppError::Unavailable(error.to_string()))?;
        self.store
            .put_provider_credentials(provider, &nonce, &ciphertext, date::now_unix())
            .await?;
        *linked = Some(keys.access_key_id.clone());
        // Availability, offerings and networks may differ for the new account.
        *self.catalog.lock().await = None;
        self.inventory.clear().await;
        let mut object = Self::credentials_object(provider, linked.as_deref());
        object["validation"] = serde_json::json!({
            "instance_type": report.instance_type,
            "regions": report.regions.iter().map(|r| serde_json::json!({
                "region": r.region, "result": r.outcome.label(), "detail": r.outcome.detail(),
            })).collect::<Vec<_>>(),
            "table": report.table(),
        });
        Ok(object)
    }

    // ---- authentication ----

    /// The user whose API key this is, if any.
    pub async fn authenticate(&self, username: &str, api_key: &str) -> AppResult<Option<String>> {
        Ok(match self.login(username, api_key).await? {
            Login::Accepted(username, _) => Some(username),
            Login::WrongKey | Login::UnknownUser => None,
        })
    }

    // ---- catalogue ----

    pub async fn catalog(&self) -> AppResult<Arc<Catalog>> {
        let mut cached = self.catalog.lock().await;
        if let Some(catalog) = cached.as_ref() {
            return Ok(catalog.clone());
        }
        let catalog = Arc::new(catalog::load(self.cloud.as_ref()).await.map_err(|error| {
            tracing::warn!(%error, "cannot load the catalogue");
            AppError::Unavailable(format!("cannot list what the cloud offers: {error}"))
        })?);
        *cached = Some(catalog.clone());
        Ok(catalog)
    }

    /// Checks that a region exists and offers a node type, naming whichever does not.
    async fn check_offered(&self, spec: &ClusterSpec) -> AppResult<()> {
        let regions =
            self.cloud.regions().await.map_err(|error| {
                AppError::Unavailable(format!("cannot list the regions: {error}"))
            })?;
        if !regions.contains(&spec.region) {
            return Err(AppError::BadRequest(format!(
                "region: unknown region '{}' (available: {})",
                spec.region,
                regions.join(", ")
            )));
        }
        let types = self.cloud.node_types(&spec.region).await.map_err(|error| {
            AppError::Unavailable(format!(
                "cannot list the node types of {}: {error}",
                spec.region
            ))
        })?;
        if !types.iter().any(|t| t.name == spec.node_type) {
            return Err(AppError::BadRequest(format!(
                "node_type: '{}' is not offered in {}",
                spec.node_type, spec.region
            )));
        }
        Ok(())
    }

    /// Refuses a name a live cluster of organization `org` has (409 naming the field).
    /// Names are unique per organization, not per server: a refusal tells the caller only
    /// about its own organization (where it may create, so may view), never that another
    /// organization has a cluster of that name.
    async fn check_name_free(&self, spec: &ClusterSpec, org: Option<&str>) -> AppResult<()> {
        let taken = self.live_names_in(org).await?;
        if taken.contains(&spec.name) {
            return Err(AppError::Conflict(format!(
                "name: a node cluster named '{}' already exists",
                spec.name
            )));
        }
        Ok(())
    }

    /// The names of the live node clusters of organization `org` (`None`: the default).
    pub(crate) async fn live_names_in(
        &self,
        org: Option<&str>,
    ) -> AppResult<std::collections::HashSet<String>> {
        let org = org.unwrap_or(crate::store::access::DEFAULT_ORG);
        let owners = self.store.owners().await?;
        Ok(self
            .store
            .clusters()
            .await?
            .into_iter()
            .filter(|c| c.state != ClusterState::Terminated)
            .filter(|c| {
                owners
                    .get(&c.uuid)
                    .map_or(crate::store::access::DEFAULT_ORG, |o| o.org.as_str())
                    == org
            })
            .map(|c| c.spec.name)
            .collect())
    }

    /// Checks the user's resources `provider_options` names (VPC, subnets, security
    /// groups, instance profile) against the cloud, with describe calls only, so a cluster
    /// naming a missing one is refused at creation (400 naming the field and the id) instead
    /// of failing in the background once deployed.
    async fn check_provider_options(&self, spec: &ClusterSpec) -> AppResult<()> {
        let options = &spec.provider_options;
        if options.vpc.is_none() && options.iam.is_none() {
            return Ok(());
        }
        let request = NetworkRequest::for_spec(spec, None, None, Ingress::default());
        match self.cloud.check_network(&request).await {
            Ok(()) => Ok(()),
            Err(error @ CloudError::InvalidResource { .. }) => {
                Err(AppError::BadRequest(error.to_string()))
            }
            Err(error) => Err(AppError::Unavailable(format!(
                "cannot check provider_options in {}: {error}",
                spec.region
            ))),
        }
    }

    // ---- rendering ----

    fn render_cluster(&self, cluster: &ClusterRecord, nodes: &[NodeRecord]) -> api::NodeCluster {
        let live: Vec<&NodeRecord> = nodes
            .iter()
            .filter(|n| {
                n.cluster_uuid.as_deref() == Some(cluster.uuid.as_str())
                    && n.state != NodeState::Terminated
            })
            .collect();
        let provider_options = serde_json::to_value(&cluster.spec.provider_options)
            .unwrap_or(Value::Object(Map::new()));
        api::NodeCluster {
            auto_replace: cluster.spec.auto_replace,
            current_num_nodes: live.iter().filter(|n| is_up(n.state)).count() as u32,
            deployed_datetime: cluster.deployed_at.map(date::format_unix),
            destroyed_datetime: cluster.destroyed_at.map(date::format_unix),
            disk: cluster.spec.disk_gb,
            name: cluster.spec.name.clone(),
            nickname: cluster.nickname.clone(),
            node_type: uri::node_type(PROVIDER, &cluster.spec.node_type),
            nodes: live.iter().map(|n| uri::node(&n.uuid)).collect(),
            provider_options,
            region: uri::region(PROVIDER, &cluster.spec.region),
            resource_uri: uri::node_cluster(&cluster.uuid),
            state: cluster.state.to_string(),
            tags: tags_of(&cluster.spec.tags),
            target_num_nodes: cluster.spec.target_num_nodes,
            uuid: cluster.uuid.clone(),
        }
    }

    /// A node on the wire; `cluster` is `None` for a bring-your-own node.
    fn render_node(&self, node: &NodeRecord, cluster: Option<&ClusterRecord>) -> api::Node {
        let external_fqdn = self.settings.node_fqdn(&node.uuid);
        let region = cluster
            .map(|c| c.spec.region.as_str())
            .unwrap_or(BYON_REGION);
        // What the node's engine said last; `None` fields until its first report, and while
        // its engine does not answer.
        let engine = node
            .engine
            .report
            .as_ref()
            .and_then(|report| report.engine.as_ref());
        api::Node {
            availability_zone: cluster
                .filter(|_| !node.availability_zone.is_empty())
                .map(|c| uri::availability_zone(PROVIDER, &c.spec.region, &node.availability_zone)),
            cpu: engine.map(|e| e.cpus),
            current_num_containers: engine.map_or(0, |e| e.containers_running),
            deployed_datetime: node.deployed_at.map(date::format_unix),
            destroyed_datetime: node.destroyed_at.map(date::format_unix),
            disk: engine
                .and_then(|e| u32::try_from(e.disk_gib).ok())
                .or(cluster.map(|c| c.spec.disk_gb))
                .unwrap_or(0),
            docker_execdriver: None,
            docker_graphdriver: None,
            docker_version: engine
                .map(|e| e.version.clone())
                .or_else(|| node.engine.docker_version.clone()),
            docker_engine: node
                .engine
                .report
                .as_ref()
                .map(|report| match &report.engine {
                    Some(_) => "running".to_owned(),
                    None => format!(
                        "down: {}",
                        report
                            .error
                            .as_deref()
                            .unwrap_or("the engine does not answer")
                    ),
                }),
            last_seen: self.last_seen(node).map(date::format_unix),
            memory: engine.and_then(|e| u32::try_from(e.memory_mib).ok()),
            nickname: node
                .nickname
                .clone()
                .unwrap_or_else(|| external_fqdn.clone()),
            external_fqdn,
            node_cluster: cluster.map(|c| uri::node_cluster(&c.uuid)),
            node_type: match cluster {
                Some(c) => uri::node_type(PROVIDER, &c.spec.node_type),
                None => uri::node_type(BYON_PROVIDER, BYON_NODE_TYPE),
            },
            private_ips: node
                .private_ip
                .iter()
                .map(|cidr| api::PrivateIp {
                    cidr: cidr.clone(),
                    name: "eth0".into(),
                })
                .collect(),
            public_ip: node.public_ip.clone(),
            region: match cluster {
                Some(_) => uri::region(PROVIDER, region),
                None => uri::region(BYON_PROVIDER, region),
            },
            resource_uri: uri::node(&node.uuid),
            state: node.state.to_string(),
            tags: tags_of(&node.tags),
            tunnel: None,
            uuid: node.uuid.clone(),
        }
    }

    pub fn render_action(action: &ActionRecord) -> api::Action {
        api::Action {
            action: action.label.clone(),
            body: action.body.clone(),
            can_be_canceled: action.can_be_canceled,
            can_be_retried: action.can_be_retried,
            end_date: action.end_date.map(date::format_unix),
            ip: action.ip.clone(),
            is_user_action: true,
            location: String::new(),
            logs: action.logs.clone(),
            method: action.method.clone(),
            object: action.object_uri.clone(),
            path: action.path.clone(),
            resource_uri: uri::action(&action.uuid),
            start_date: Some(date::format_unix(action.start_date)),
            state: action.state.clone(),
            user: action.username.clone(),
            user_agent: action.user_agent.clone(),
            uuid: action.uuid.clone(),
        }
    }

    fn new_action(caller: &Caller, object_uri: &str, label: &str, state: &str) -> ActionRecord {
        let now = date::now_unix();
        let finished = state == api::action_state::SUCCESS;
        ActionRecord {
            uuid: new_uuid(),
            object_uri: object_uri.to_owned(),
            label: label.to_owned(),
            method: caller.method.clone(),
            path: caller.path.clone(),
            username: caller.username.clone(),
            user_agent: caller.user_agent.clone(),
            ip: caller.ip.clone(),
            state: state.to_owned(),
            start_date: now,
            end_date: finished.then_some(now),
            body: caller.body.clone(),
            logs: String::new(),
            can_be_canceled: !finished && label != LABEL_TERMINATE,
            can_be_retried: false,
        }
    }

    /// Records a finished (`Success`) action on `object_uri`, with `log` as its log, and
    /// returns its URI: what every synchronous change leaves in the history.
    async fn record_finished(
        &self,
        caller: &Caller,
        object_uri: &str,
        label: &str,
        log: &str,
    ) -> AppResult<String> {
        let mut action = Self::new_action(caller, object_uri, label, api::action_state::SUCCESS);
        action.logs = log.to_owned();
        self.store.insert_action(&action).await?;
        Ok(uri::action(&action.uuid))
    }

    // ---- clusters ----

    async fn load_cluster(&self, uuid: &str) -> AppResult<ClusterRecord> {
        self.store
            .cluster(uuid)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("node cluster '{uuid}' not found")))
    }

    async fn rendered_cluster(&self, uuid: &str) -> AppResult<api::NodeCluster> {
        let cluster = self.load_cluster(uuid).await?;
        let nodes = self.store.nodes_of(uuid).await?;
        Ok(self.render_cluster(&cluster, &nodes))
    }

    /// `GET nodecluster/`: the clusters `viewer` may view.
    pub async fn clusters(&self, viewer: &Viewer) -> AppResult<Vec<api::NodeCluster>> {
        let mut clusters = self.store.clusters().await?;
        clusters.retain(|c| viewer.sees(&c.uuid));
        let filter = NodeFilter {
            viewer: viewer.member().map(str::to_owned),
            org: viewer.org().map(str::to_owned),
            ..NodeFilter::default()
        };
        let nodes = self.store.find_nodes(&filter, None).await?;
        Ok(clusters
            .iter()
            .map(|c| self.render_cluster(c, &nodes))
            .collect())
    }

    pub async fn cluster(&self, uuid: &str) -> AppResult<api::NodeCluster> {
        self.rendered_cluster(uuid).await
    }

    /// `POST nodecluster/`: validates and stores a cluster in state `Init`.
    pub async fn create_cluster(
        &self,
        caller: &Caller,
        body: &Value,
    ) -> AppResult<Outcome<api::NodeCluster>> {
        let spec = ClusterSpec::from_json(body).map_err(|e| AppError::BadRequest(e.to_string()))?;
        let nickname = match body.get("nickname") {
            None | Some(Value::Null) => spec.name.clone(),
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 255 => s.trim().to_owned(),
            Some(_) => {
                return Err(AppError::BadRequest(
                    "nickname: must be a string of 1 to 255 characters".into(),
                ));
            }
        };
        self.check_offered(&spec).await?;
        self.check_name_free(&spec, caller.org.as_deref()).await?;
        self.check_provider_options(&spec).await?;
        let uuid = new_uuid();
        let action = Self::new_action(
            caller,
            &uri::node_cluster(&uuid),
            "Node Cluster Create",
            api::action_state::SUCCESS,
        );
        let record = ClusterRecord {
            uuid: uuid.clone(),
            nickname,
            spec,
            state: ClusterState::Init,
            generation: 0,
            next_slot: 0,
            current_action: None,
            created_at: date::now_unix(),
            deployed_at: None,
            destroyed_at: None,
        };
        self.store
            .insert_cluster(&record, &action, caller.org())
            .await?;
        Ok(Outcome {
            object: self.render_cluster(&record, &[]),
            action_uri: uri::action(&action.uuid),
            accepted: false,
        })
    }

    /// Applies a state event to a cluster, recording `work.label` as an in-progress action.
    async fn start_cluster_work(
        &self,
        caller: &Caller,
        cluster: &ClusterRecord,
        work: ClusterWork<'_>,
    ) -> AppResult<String> {
        let ClusterWork {
            event,
            label,
            target,
            node_state,
            object_uri,
        } = work;
        let next = cluster
            .state
            .apply(event)
            .map_err(|e| AppError::BadRequest(e.to_string()))?;
        let action = Self::new_action(caller, object_uri, label, api::action_state::IN_PROGRESS);
        let transition = Transition {
            target_num_nodes: target,
            bump_generation: true,
            current_action: Some(Some(&action.uuid)),
            ..Transition::new(cluster.state, next)
        };
        let moved = self
            .store
            .transition_cluster(&cluster.uuid, &transition, Some(&action), node_state)
            .await?;
        if !moved {
            return Err(AppError::Conflict(format!(
                "node cluster '{}' changed state while this request ran; try again",
                cluster.uuid
            )));
        }
        self.reconciler.nudge(&cluster.uuid);
        Ok(uri::action(&action.uuid))
    }

    /// `POST nodecluster/{uuid}/deploy/`.
    pub async fn deploy_cluster(
        &self,
        caller: &Caller,
        uuid: &str,
    ) -> AppResult<Outcome<api::NodeCluster>> {
        let cluster = self.load_cluster(uuid).await?;
        let action_uri = self
            .start_cluster_work(
                caller,
                &cluster,
                ClusterWork {
                    event: ClusterEvent::Deploy,
                    label: "Node Cluster Deploy",
                    target: None,
                    node_state: None,
                    object_uri: &uri::node_cluster(uuid),
                },
            )
            .await?;
        Ok(Outcome {
            object: self.rendered_cluster(uuid).await?,
            action_uri,
            accepted: true,
        })
    }

    /// `PATCH nodecluster/{uuid}/`: `target_num_nodes` (scale), `tags`, `nickname`,
    /// `auto_replace`.
    pub async fn patch_cluster(
        &self,
        caller: &Caller,
        uuid: &str,
        body: &Value,
    ) -> AppResult<Outcome<api::NodeCluster>> {
        let cluster = self.load_cluster(uuid).await?;
        let fields = patch_fields(body, &CLUSTER_PATCH_FIELDS)?;
        let auto_replace = match fields.get("auto_replace") {
            None => None,
            Some(Value::Bool(value)) => Some(*value),
            Some(_) => {
                return Err(AppError::BadRequest(
                    "auto_replace: must be true or false".into(),
                ));
            }
        };
        let target = match fields.get("target_num_nodes") {
            None => None,
            Some(value) => match integer_like(value) {
                Some(n) if (0..=i64::from(MAX_NODES)).contains(&n) => Some(n as u32),
                _ => {
                    return Err(AppError::BadRequest(format!(
                        "target_num_nodes: must be a whole number between 0 and {MAX_NODES}"
                    )));
                }
            },
        };
        let tags = match fields.get("tags") {
            None => None,
            Some(value) => Some(
                parse_tags_value(Some(value)).map_err(|e| AppError::BadRequest(e.to_string()))?,
            ),
        };
        let nickname = parse_nickname(fields.get("nickname"))?;
        if cluster.state == ClusterState::Terminated {
            return Err(AppError::BadRequest(format!(
                "node cluster '{uuid}' is Terminated and cannot be changed"
            )));
        }
        let scaling = target.filter(|t| *t != cluster.spec.target_num_nodes);
        // The target's change (checked before anything is written, so a refused scale
        // changes nothing), then everything in one transaction.
        let change = match scaling {
            None => None,
            Some(target) if cluster.state == ClusterState::Init => Some(TargetChange {
                from: ClusterState::Init,
                to: ClusterState::Init,
                target,
            }),
            Some(target) => Some(TargetChange {
                from: cluster.state,
                to: cluster
                    .state
                    .apply(ClusterEvent::Scale)
                    .map_err(|e| AppError::BadRequest(e.to_string()))?,
                target,
            }),
        };
        let starts_work = change.is_some_and(|c| c.from != c.to);
        let object_uri = uri::node_cluster(uuid);
        let action = if starts_work {
            Self::new_action(
                caller,
                &object_uri,
                "Node Cluster Scale",
                api::action_state::IN_PROGRESS,
            )
        } else {
            Self::new_action(
                caller,
                &object_uri,
                "Node Cluster Update",
                api::action_state::SUCCESS,
            )
        };
        let patch = ClusterPatch {
            nickname: nickname.as_deref(),
            tags: tags.as_deref(),
            auto_replace,
        };
        if !self
            .store
            .patch_cluster(uuid, &patch, change, &action)
            .await?
        {
            return Err(AppError::Conflict(format!(
                "node cluster '{uuid}' changed state while this request ran; try again"
            )));
        }
        if starts_work || auto_replace.is_some() {
            self.reconciler.nudge(uuid);
        }
        Ok(Outcome {
            object: self.rendered_cluster(uuid).await?,
            action_uri: uri::action(&action.uuid),
            accepted: starts_work,
        })
    }

    /// `DELETE nodecluster/{uuid}/`: terminates every node, then the cluster.
    pub async fn delete_cluster(
        &self,
        caller: &Caller,
        uuid: &str,
    ) -> AppResult<Outcome<api::NodeCluster>> {
        let cluster = self.load_cluster(uuid).await?;
        let action_uri = self
            .start_cluster_work(
                caller,
                &cluster,
                ClusterWork {
                    event: ClusterEvent::Terminate,
                    label: LABEL_TERMINATE,
                    target: None,
                    node_state: None,
                    object_uri: &uri::node_cluster(uuid),
                },
            )
            .await?;
        Ok(Outcome {
            object: self.rendered_cluster(uuid).await?,
            action_uri,
            accepted: true,
        })
    }

    // ---- nodes ----

    async fn load_node(&self, uuid: &str) -> AppResult<(NodeRecord, Option<ClusterRecord>)> {
        let node = self
            .store
            .node(uuid)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("node '{uuid}' not found")))?;
        let cluster = match &node.cluster_uuid {
            Some(cluster) => Some(self.load_cluster(cluster).await?),
            None => None,
        };
        Ok((node, cluster))
    }

    /// `GET node/`: the nodes `filter` selects, oldest first, one page of them when `page` =
    /// `(limit, offset)` is given. Only the clusters of the rows returned are loaded.
    pub async fn find_nodes(
        &self,
        filter: &NodeFilter,
        page: Option<(u64, u64)>,
    ) -> AppResult<Vec<api::Node>> {
        let nodes = self.store.find_nodes(filter, page).await?;
        let mut clusters: HashMap<&str, Option<ClusterRecord>> = HashMap::new();
        for uuid in nodes.iter().filter_map(|n| n.cluster_uuid.as_deref()) {
            if !clusters.contains_key(uuid) {
                clusters.insert(uuid, self.store.cluster(uuid).await?);
            }
        }
        Ok(nodes
            .iter()
            .filter_map(|n| match n.cluster_uuid.as_deref() {
                None => Some(self.render_node(n, None)),
                // A foreign key keeps the cluster; a node without one is not listed.
                Some(cluster) => clusters
                    .get(cluster)
                    .and_then(Option::as_ref)
                    .map(|c| self.render_node(n, Some(c))),
            })
            .collect())
    }

    pub async fn count_nodes(&self, filter: &NodeFilter) -> AppResult<u64> {
        Ok(self.store.count_nodes(filter).await?)
    }

    pub async fn node(&self, uuid: &str) -> AppResult<api::Node> {
        let (node, cluster) = self.load_node(uuid).await?;
        Ok(self.render_node(&node, cluster.as_ref()))
    }

    /// `POST node/{uuid}/health-check/`: judges the node's health now from its agent's last
    /// heartbeat (`Deployed` or `Unreachable`), recorded as a finished action.
    pub async fn health_check_node(
        &self,
        caller: &Caller,
        uuid: &str,
    ) -> AppResult<Outcome<api::Node>> {
        let (node, _) = self.load_node(uuid).await?;
        if !matches!(node.state, NodeState::Deployed | NodeState::Unreachable) {
            return Err(AppError::BadRequest(format!(
                "node '{uuid}' is {}; only a Deployed or Unreachable node can be health-checked",
                node.state
            )));
        }
        let line = self.health_check(&node).await?;
        let action_uri = self
            .record_finished(
                caller,
                &uri::node(uuid),
                "Node Health Check",
                &format!("{line}\n"),
            )
            .await?;
        Ok(Outcome {
            object: self.node(uuid).await?,
            action_uri,
            accepted: true,
        })
    }

    /// `PATCH node/{uuid}/`: `tags`, `nickname`.
    pub async fn patch_node(
        &self,
        caller: &Caller,
        uuid: &str,
        body: &Value,
    ) -> AppResult<Outcome<api::Node>> {
        let (node, _) = self.load_node(uuid).await?;
        let fields = patch_fields(body, &["tags", "nickname"])?;
        let tags = match fields.get("tags") {
            None => node.tags.clone(),
            Some(value) => {
                parse_tags_value(Some(value)).map_err(|e| AppError::BadRequest(e.to_string()))?
            }
        };
        let nickname = parse_nickname(fields.get("nickname"))?.or(node.nickname.clone());
        if node.state == NodeState::Terminated {
            return Err(AppError::BadRequest(format!(
                "node '{uuid}' is Terminated and cannot be changed"
            )));
        }
        self.store
            .set_node_labels(uuid, nickname.as_deref(), &tags)
            .await?;
        let action_uri = self
            .record_finished(caller, &uri::node(uuid), "Node Update", "")
            .await?;
        Ok(Outcome {
            object: self.node(uuid).await?,
            action_uri,
            accepted: false,
        })
    }

    /// `DELETE node/{uuid}/`: the node goes and its cluster's target shrinks by one (the
    /// reconciler terminates the instance and waits for EC2 to confirm). A bring-your-own
    /// node is only deregistered: Flotilla cannot terminate a machine it did not create.
    /// Either way the node's credential is revoked when it reaches `Terminated`.
    pub async fn delete_node(&self, caller: &Caller, uuid: &str) -> AppResult<Outcome<api::Node>> {
        let (node, cluster) = self.load_node(uuid).await?;
        node.state
            .apply(flotilla_core::state::NodeEvent::TerminateRequested)
            .map_err(|e| AppError::BadRequest(e.to_string()))?;
        let Some(cluster) = cluster else {
            self.store
                .set_node_terminated(uuid, date::now_unix())
                .await?;
            let action_uri = self
                .record_finished(
                    caller,
                    &uri::node(uuid),
                    "Node Terminate",
                    "Bring-your-own node deregistered; its agent's credential is revoked\n",
                )
                .await?;
            return Ok(Outcome {
                object: self.node(uuid).await?,
                action_uri,
                accepted: true,
            });
        };
        let action_uri = self
            .start_cluster_work(
                caller,
                &cluster,
                ClusterWork {
                    event: ClusterEvent::Scale,
                    label: "Node Terminate",
                    target: Some(cluster.spec.target_num_nodes.saturating_sub(1)),
                    node_state: Some((uuid, NodeState::Terminating)),
                    object_uri: &uri::node(uuid),
                },
            )
            .await
            .map_err(|error| match error {
                AppError::BadRequest(message) => AppError::BadRequest(format!(
                    "node '{uuid}' cannot be terminated now: {message}"
                )),
                other => other,
            })?;
        Ok(Outcome {
            object: self.node(uuid).await?,
            action_uri,
            accepted: true,
        })
    }

    // ---- actions ----

    /// `GET action/`: the actions on objects `viewer` may view.
    pub async fn actions(&self, viewer: &Viewer) -> AppResult<Vec<api::Action>> {
        let mut actions = self.store.actions().await?;
        if !viewer.sees_everything() {
            let mut node_clusters: HashMap<String, Option<String>> = HashMap::new();
            let mut kept = Vec::new();
            for action in actions {
                let visible = match uri::Resource::parse(&action.object_uri) {
                    Some(uri::Resource::NodeCluster { uuid } | uri::Resource::Swarm { uuid }) => {
                        viewer.sees(&uuid)
                    }
                    Some(uri::Resource::Node { uuid }) => {
                        if !node_clusters.contains_key(&uuid) {
                            let cluster = self.store.cluster_of_node(&uuid).await?;
                            node_clusters.insert(uuid.clone(), cluster);
                        }
                        let cluster = node_clusters.get(&uuid).cloned().flatten();
                        viewer.sees_node_of(cluster.as_deref())
                    }
                    _ => false,
                };
                if visible {
                    kept.push(action);
                }
            }
            actions = kept;
        }
        Ok(actions.iter().map(Self::render_action).collect())
    }

    async fn load_action(&self, uuid: &str) -> AppResult<ActionRecord> {
        self.store
            .action(uuid)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("action '{uuid}' not found")))
    }

    pub async fn action(&self, uuid: &str) -> AppResult<api::Action> {
        Ok(Self::render_action(&self.load_action(uuid).await?))
    }

    /// `POST action/{uuid}/cancel/`: the reconciler stops the work at its next step and
    /// settles the cluster on what exists.
    pub async fn cancel_action(&self, uuid: &str) -> AppResult<api::Action> {
        use api::action_state::{CANCELING, IN_PROGRESS, PENDING};
        let action = self.load_action(uuid).await?;
        if !action.can_be_canceled {
            return Err(AppError::BadRequest(format!(
                "action '{uuid}' ({}, {}) cannot be canceled",
                action.label, action.state
            )));
        }
        if !self
            .store
            .transition_action(uuid, &[PENDING, IN_PROGRESS], CANCELING, None, false, false)
            .await?
        {
            return Err(AppError::BadRequest(format!(
                "action '{uuid}' is no longer in progress"
            )));
        }
        if let Some(cluster_uuid) = self.cluster_of_action(&action).await? {
            self.reconciler.nudge(&cluster_uuid);
        }
        self.action(uuid).await
    }

    /// `POST action/{uuid}/retry/`: runs the failed or canceled work again, as the same
    /// action (it goes back to `In progress`).
    pub async fn retry_action(&self, uuid: &str) -> AppResult<api::Action> {
        use api::action_state::{CANCELED, FAILED, IN_PROGRESS};
        let action = self.load_action(uuid).await?;
        let cluster_uuid = self.cluster_of_action(&action).await?;
        let (true, Some(cluster_uuid)) = (action.can_be_retried, cluster_uuid) else {
            return Err(AppError::BadRequest(format!(
                "action '{uuid}' ({}, {}) cannot be retried",
                action.label, action.state
            )));
        };
        let cluster = self.load_cluster(&cluster_uuid).await?;
        if cluster.state == ClusterState::Terminating {
            let transition = Transition {
                current_action: Some(Some(uuid)),
                ..Transition::new(ClusterState::Terminating, ClusterState::Terminating)
            };
            self.store
                .transition_cluster(&cluster_uuid, &transition, None, None)
                .await?;
        } else {
            let next = cluster
                .state
                .apply(ClusterEvent::Scale)
                .map_err(|e| AppError::BadRequest(format!("cannot retry: {e}")))?;
            let transition = Transition {
                bump_generation: true,
                current_action: Some(Some(uuid)),
                ..Transition::new(cluster.state, next)
            };
            if !self
                .store
                .transition_cluster(&cluster_uuid, &transition, None, None)
                .await?
            {
                return Err(AppError::Conflict(format!(
                    "node cluster '{cluster_uuid}' changed state while this request ran; try again"
                )));
            }
        }
        let cancelable = action.label != LABEL_TERMINATE;
        self.store
            .transition_action(
                uuid,
                &[FAILED, CANCELED],
                IN_PROGRESS,
                None,
                cancelable,
                false,
            )
            .await?;
        self.store.append_action_log(uuid, "Retrying\n").await?;
        self.reconciler.nudge(&cluster_uuid);
        self.action(uuid).await
    }

    async fn cluster_of_action(&self, action: &ActionRecord) -> AppResult<Option<String>> {
        Ok(match api::uri::Resource::parse(&action.object_uri) {
            Some(api::uri::Resource::NodeCluster { uuid }) => Some(uuid),
            Some(api::uri::Resource::Node { uuid }) => {
                self.store.node(&uuid).await?.and_then(|n| n.cluster_uuid)
            }
            _ => None,
        })
    }
}

/// Bring-your-own-node tokens, health and the event stream.
impl<C: Cloud + 'static> App<C> {
    /// `GET /_ping` and `/readyz`: the database takes a write (within 5 s), and every
    /// background loop is beating.
    pub async fn readiness(&self) -> crate::liveness::Readiness {
        use crate::liveness::Check;
        let started = std::time::Instant::now();
        let (ok, detail) = match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.store.check_writable(),
        )
        .await
        {
            Ok(Ok(())) => (
                true,
                format!(
                    "a write took {:.1} ms",
                    started.elapsed().as_secs_f64() * 1000.0
                ),
            ),
            Ok(Err(error)) => (false, format!("not writable: {error}")),
            Err(_) => (false, "did not take a write within 5 s".to_owned()),
        };
        let mut checks = vec![Check {
            name: "database".to_owned(),
            ok,
            detail,
        }];
        checks.push(self.leases.check());
        checks.extend(self.liveness.checks(crate::liveness::STALE_AFTER));
        crate::liveness::Readiness::new(checks)
    }

    /// The bus of every committed change (the events websocket listens here).
    pub fn events(&self) -> &crate::events::EventBus {
        self.store.events()
    }

    /// `POST token/`: a new single-use token for registering a node of one's own. Only its
    /// hash is stored; the token is returned to be shown once.
    pub async fn create_byo_token(&self, caller: &Caller) -> AppResult<api::Token> {
        let token = random_hex(16);
        self.store
            .insert_byo_token(&token_hash(&token), &caller.username, date::now_unix())
            .await?;
        Ok(api::Token { token })
    }

    /// Checks a BYO token and uses it up: the user who created it when it was valid and
    /// unused, `None` otherwise (unknown, or used before). For agent registration.
    pub async fn consume_byo_token(&self, token: &str) -> AppResult<Option<String>> {
        Ok(self
            .store
            .consume_byo_token(&token_hash(token.trim()), date::now_unix())
            .await?)
    }
}

/// How a BYO token is stored (128 random bits need no salt).
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What [`App::start_cluster_work`] starts.
struct ClusterWork<'a> {
    event: ClusterEvent,
    label: &'a str,
    target: Option<u32>,
    node_state: Option<(&'a str, NodeState)>,
    object_uri: &'a str,
}

/// What bring-your-own nodes show as their provider, region and node type: Flotilla knows
/// nothing of the machine.
pub const BYON_PROVIDER: &str = "byon";
pub const BYON_REGION: &str = "unknown";
pub const BYON_NODE_TYPE: &str = "unknown";

/// The label of a cluster termination (not cancelable: nodes already terminated stay so).
pub const LABEL_TERMINATE: &str = "Node Cluster Terminate";

/// The keys of a PATCH body, refusing anything not in `allowed`.
fn patch_fields<'a>(body: &'a Value, allowed: &[&str]) -> AppResult<&'a Map<String, Value>> {
    let Some(fields) = body.as_object() else {
        return Err(AppError::BadRequest("body: must be a JSON object".into()));
    };
    if let Some(key) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(AppError::BadRequest(format!(
            "{key}: cannot be changed (changeable: {})",
            allowed.join(", ")
        )));
    }
    Ok(fields)
}

fn parse_nickname(value: Option<&Value>) -> AppResult<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 255 => {
            Ok(Some(s.trim().to_owned()))
        }
        Some(_) => Err(AppError::BadRequest(
            "nickname: must be a string of 1 to 255 characters".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hashed_with_their_salt_and_compared_in_full() {
        let (record, credentials) = new_user("admin");
        assert_ne!(record.api_key_hash, credentials.api_key);
        assert_eq!(
            key_hash(&record.api_key_salt, &credentials.api_key),
            record.api_key_hash
        );
        let (other, _) = new_user("admin");
        assert_ne!(record.api_key_salt, other.api_key_salt);
        assert!(!format!("{credentials:?}").contains(&credentials.api_key));
    }
}
