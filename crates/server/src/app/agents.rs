//! The agent channel's application part: registration, heartbeats and health verdicts of
//! nodes' `flotilla agent`s, as operations of the [`App`]. Its HTTP handlers are the edge's
//! (`agent_api`); the tokens it checks come from [`crate::tokens`].
//!
//! Design decisions:
//! * A child module of `app`: the [`App`] owns the agents' in-memory state ([`AgentState`])
//!   and the user API's node views read it (`last_seen`, health checks), so the two are one
//!   layer; this file keeps the agents' half of it apart.
//! * **Batch registration tokens** ([`crate::tokens::batch_token`]) are good only once per
//!   slot: the first registration of a node inserts its `node_agents` row, and a second one
//!   is refused (403) — unless it is the same agent retrying an attempt whose answer was
//!   lost (a server killed right after committing it): the agent sends a random nonce with
//!   every attempt, the credential is HMAC(installation secret, node, nonce), and a retry
//!   whose nonce gives the stored credential gets it again. A leaked token is therefore
//!   worth at most the not-yet-registered nodes of one batch.
//! * **Node credentials.** Registration issues a 256-bit credential (derived as above, or
//!   random when the agent sends no nonce), shown once and
//!   stored only as its SHA-256 (no salt: it is random and high-entropy, and the hash is the
//!   lookup key). A restarted agent re-registers with it on the same endpoint — the server
//!   tells the two apart by looking the token up as a credential first — and gets the same
//!   node back, with its `public_ip` refreshed from the request's source address. A
//!   credential acts only on its own node (403 elsewhere); a token that is neither a known
//!   credential nor a valid batch token is a 401.
//! * **Heartbeats stay in memory.** `ping/` updates the node's entry in one map (monotonic
//!   time for the verdict, Unix time for `last_seen`); a background task
//!   ([`flush_heartbeats`]) writes the times that moved to the store every few seconds in one
//!   transaction, so heartbeats cost one write per flush, not one per ping. The API shows
//!   the in-memory time, so `last_seen` is exact to the second. Credentials already checked
//!   are cached (hash → node) for the same reason; a node's termination (an event on the
//!   bus) evicts its credential at once.
//! * **Health verdicts** ([`watch_health`]): a sweep every [`HEALTH_TICK`] marks every watched
//!   node not heard from for the grace period (default 3 × 10 s) `Unreachable`; the first
//!   heartbeat or registration after that makes it `Deployed` again. Only transitions write
//!   (the node's state, an event, a line in its history). After a server start every node
//!   gets a full grace period: silence while the server was down proves nothing.
//! * **Across replicas** agents may talk to any replica. Every replica flushes the times
//!   it heard; the sweep runs on one replica (the `health` lease), which merges the stored
//!   times every [`flush_interval`] (a grace period of 30 s tolerates a heartbeat that
//!   reaches it 10 s late), and starts each tenure with a full grace period. Verdicts reach
//!   every replica as events, so whichever one next hears an `Unreachable` node turns it
//!   back. Cost: one read of the watched nodes per interval on the sweep's owner, and each
//!   replica's flush, as before.
//! * **Bring-your-own nodes** register with a single-use token from `POST token/` and no
//!   cluster; the token is used up and the node and its credential created in one
//!   transaction.
//! * Its own small error type ([`AgentError`]), carrying the distinction the agent acts on
//!   (401: wrong token; 403: right token, wrong node or used up), so the user API's error
//!   enum stays as it is; the edge maps it to status codes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::Method;
use flotilla_api::agent::{AgentNode, NodeUpdate, PingReply, Registration};
use flotilla_api::uri;
use flotilla_api::{self as api, date};
use flotilla_core::cloud::Cloud;
use flotilla_core::state::{NodeEvent, NodeState};
use flotilla_core::tags::node_uuid;
use subtle::ConstantTimeEq;
use tokio::sync::{OnceCell, broadcast, watch};

use super::{App, AppError};
use crate::store::{
    IpChange, NodeAgentRecord, NodeRecord, NodeRegistration, Registered, StoreError,
};
use crate::tokens::{batch_token, credential_hash, hmac_sha256, load_secret, random_hex};

/// How often heartbeats are written to the store (at most; see [`flush_interval`]).
pub const HEARTBEAT_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// How often heartbeats are written to the store, and merged from it by the health sweep's
/// owner: [`HEARTBEAT_FLUSH_INTERVAL`], or a sixth of a shorter grace period, so that a
/// heartbeat received by one replica reaches the sweep on another (one flush and one merge,
/// at most a third of the grace period) well before its node could be judged silent.
pub fn flush_interval(grace: Duration) -> Duration {
    HEARTBEAT_FLUSH_INTERVAL
        .min(grace / 6)
        .max(Duration::from_millis(100))
}
/// How often the health sweep runs: a verdict comes at most this late after the grace
/// period.
pub const HEALTH_TICK: Duration = Duration::from_millis(250);
/// The default grace period: three missed heartbeats of 10 s.
pub const DEFAULT_HEARTBEAT_GRACE: Duration = Duration::from_secs(30);

/// What the server remembers of a watched node between heartbeats.
#[derive(Debug, Clone, Copy)]
struct Watch {
    /// When it was last heard from (monotonic: the verdict must not follow clock jumps).
    heard: Instant,
    /// The same moment as a Unix time (the node's `last_seen`).
    unix: i64,
    /// `unix` is in the store.
    flushed: bool,
    /// The last verdict was `Unreachable`.
    unreachable: bool,
}

/// The agent API's in-memory state, owned by the [`App`].
#[derive(Debug)]
pub struct AgentState {
    secret: OnceCell<String>,
    /// Watched nodes (registered agents of `Deployed`/`Unreachable` nodes): uuid → watch.
    watches: Mutex<HashMap<String, Watch>>,
    /// Credentials already checked: hash → node uuid.
    credentials: Mutex<HashMap<String, String>>,
    /// Silence longer than this makes a node `Unreachable`.
    grace: Duration,
}

impl Default for AgentState {
    fn default() -> Self {
        AgentState::new(DEFAULT_HEARTBEAT_GRACE)
    }
}

impl AgentState {
    pub fn new(grace: Duration) -> AgentState {
        AgentState {
            secret: OnceCell::new(),
            watches: Mutex::new(HashMap::new()),
            credentials: Mutex::new(HashMap::new()),
            grace,
        }
    }

    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `uuid` was heard from now; true when its last verdict was
    /// `Unreachable` (the caller turns it back to `Deployed`).
    fn heard(&self, uuid: &str) -> bool {
        let now = Watch {
            heard: Instant::now(),
            unix: date::now_unix(),
            flushed: false,
            unreachable: false,
        };
        let mut watches = Self::lock(&self.watches);
        match watches.get_mut(uuid) {
            Some(watch) => {
                let was = watch.unreachable;
                *watch = now;
                was
            }
            None => {
                watches.insert(uuid.to_owned(), now);
                false
            }
        }
    }

    /// The heartbeats not yet in the store, marked as written.
    fn take_heartbeats(&self) -> Vec<(String, i64)> {
        let mut watches = Self::lock(&self.watches);
        watches
            .iter_mut()
            .filter(|(_, w)| !w.flushed)
            .map(|(uuid, w)| {
                w.flushed = true;
                (uuid.clone(), w.unix)
            })
            .collect()
    }

    /// Nodes silent for longer than the grace period and not yet judged so; they are
    /// marked `Unreachable` here so that a slow store does not judge them twice.
    fn overdue(&self) -> Vec<String> {
        let mut watches = Self::lock(&self.watches);
        let grace = self.grace;
        watches
            .iter_mut()
            .filter(|(_, w)| !w.unreachable && w.heard.elapsed() > grace)
            .map(|(uuid, w)| {
                w.unreachable = true;
                uuid.clone()
            })
            .collect()
    }

    /// Whether a node [`overdue`](Self::overdue) marked was heard from since (a heartbeat
    /// clears the mark).
    fn heard_since_judged(&self, uuid: &str) -> bool {
        Self::lock(&self.watches)
            .get(uuid)
            .is_some_and(|watch| !watch.unreachable)
    }

    /// A node [`overdue`](Self::overdue) marked whose verdict was not written: the next
    /// sweep judges it again.
    fn judge_again(&self, uuid: &str) {
        self.set_judged(uuid, false);
    }

    /// Sets whether the node's last verdict was `Unreachable`.
    fn set_judged(&self, uuid: &str, unreachable: bool) {
        if let Some(watch) = Self::lock(&self.watches).get_mut(uuid) {
            watch.unreachable = unreachable;
        }
    }

    /// When the node was last heard from (Unix time), if it is watched.
    pub fn last_heard(&self, uuid: &str) -> Option<i64> {
        Self::lock(&self.watches).get(uuid).map(|w| w.unix)
    }

    /// See [`App::merge_stored_heartbeats`]. A stored time is in seconds; the moment it
    /// names is placed on the monotonic clock by its age (rounded towards older).
    fn merge_stored(
        &self,
        stored: &[(String, NodeState, Option<i64>)],
        now_unix: i64,
        now: Instant,
    ) -> Vec<String> {
        let mut watches = Self::lock(&self.watches);
        let mut heard_again = Vec::new();
        for (uuid, state, last_seen) in stored {
            let Some(watch) = watches.get_mut(uuid) else {
                watches.insert(
                    uuid.clone(),
                    Watch {
                        heard: now,
                        unix: last_seen.unwrap_or(now_unix),
                        flushed: true,
                        unreachable: *state == NodeState::Unreachable,
                    },
                );
                continue;
            };
            let Some(seen) = *last_seen else { continue };
            if seen <= watch.unix {
                continue;
            }
            let age =
                Duration::from_secs(u64::try_from(now_unix.saturating_sub(seen)).unwrap_or(0));
            let heard = now.checked_sub(age).unwrap_or(now);
            if heard > watch.heard {
                watch.heard = heard;
                watch.unix = seen;
                if watch.unreachable && heard.elapsed() <= self.grace {
                    heard_again.push(uuid.clone());
                }
            }
        }
        heard_again
    }

    /// Forgets a node: it stops being watched and its credential must be looked up again.
    fn forget(&self, uuid: &str) {
        Self::lock(&self.watches).remove(uuid);
        Self::lock(&self.credentials).retain(|_, node| node != uuid);
    }
}

/// What went wrong, as an agent should hear it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No token, or one that is neither a credential nor a valid batch token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token used for something it does not allow (403).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(Method),
    #[error("internal error")]
    Internal(#[from] StoreError),
}

impl From<AppError> for AgentError {
    fn from(error: AppError) -> Self {
        match error {
            AppError::Internal(error) => AgentError::Internal(error),
            AppError::NotFound(message) => AgentError::NotFound(message),
            AppError::Unauthorized => AgentError::Unauthorized("Not authorized".into()),
            AppError::Conflict(message) => AgentError::Conflict(message),
            other => AgentError::BadRequest(other.to_string()),
        }
    }
}

/// The shortest [`Registration::nonce`] a credential is derived from (128 bits of hex).
const MIN_NONCE: usize = 32;

pub type AgentResult<T> = Result<T, AgentError>;

/// The outcome of a registration: the node, and whether this call created its credential.
#[derive(Debug, Clone)]
pub struct RegisteredNode {
    pub node: AgentNode,
    pub first: bool,
}

impl<C: Cloud + 'static> App<C> {
    async fn agent_secret(&self) -> Result<&str, StoreError> {
        self.agents
            .secret
            .get_or_try_init(|| load_secret(&self.store))
            .await
            .map(String::as_str)
    }

    fn render_agent_node(&self, node: &NodeRecord, agent: Option<&NodeAgentRecord>) -> AgentNode {
        AgentNode {
            uuid: node.uuid.clone(),
            external_fqdn: self.settings.node_fqdn(&node.uuid),
            public_ip: node.public_ip.clone(),
            resource_uri: api::agent::agent_node(&node.uuid),
            state: node.state.to_string(),
            agent_version: agent.and_then(|a| a.agent_version.clone()),
            docker_version: agent.and_then(|a| a.docker_version.clone()),
            private_ips: agent.map(|a| a.private_ips.clone()).unwrap_or_default(),
            credential: None,
        }
    }

    /// The node a credential belongs to, if it is one.
    async fn node_of_credential(&self, credential: &str) -> AgentResult<Option<String>> {
        let hash = credential_hash(credential);
        if let Some(uuid) = AgentState::lock(&self.agents.credentials).get(&hash) {
            return Ok(Some(uuid.clone()));
        }
        let Some(agent) = self.store.node_agent_by_credential(&hash).await? else {
            return Ok(None);
        };
        AgentState::lock(&self.agents.credentials).insert(hash, agent.node_uuid.clone());
        Ok(Some(agent.node_uuid))
    }

    /// Checks that `credential` is the credential of node `uuid`.
    pub async fn agent_authenticate(&self, credential: &str, uuid: &str) -> AgentResult<()> {
        match self.node_of_credential(credential).await? {
            None => Err(AgentError::Unauthorized(
                "the agent token is not a node credential".into(),
            )),
            Some(own) if own == uuid => Ok(()),
            Some(own) => Err(AgentError::Forbidden(format!(
                "the credential of node '{own}' cannot act on node '{uuid}'"
            ))),
        }
    }

    async fn agent_load_node(&self, uuid: &str) -> AgentResult<NodeRecord> {
        self.store
            .node(uuid)
            .await?
            .ok_or_else(|| AgentError::NotFound(format!("node '{uuid}' not found")))
    }

    /// `POST /api/agent/v1/node/`: first registration (with the batch token, or with a
    /// bring-your-own-node token when the body names no cluster), or re-registration with
    /// the node's credential.
    pub async fn agent_register(
        &self,
        token: &str,
        registration: &Registration,
        public_ip: &str,
    ) -> AgentResult<RegisteredNode> {
        let claimed = registration
            .cluster
            .as_deref()
            .map(|cluster| node_uuid(cluster, registration.slot));
        let (node_uuid, credential, first) = match self.node_of_credential(token).await? {
            Some(own) if claimed.as_ref().is_some_and(|claimed| *claimed != own) => {
                return Err(AgentError::Forbidden(format!(
                    "this credential belongs to node '{own}', not to slot {} of cluster '{}'",
                    registration.slot,
                    registration.cluster.as_deref().unwrap_or_default()
                )));
            }
            Some(own) => (own, None, false),
            None => match &claimed {
                Some(claimed) => {
                    self.check_batch_token(token, registration).await?;
                    let credential = match registration.nonce.as_deref() {
                        Some(nonce) if nonce.len() >= MIN_NONCE => {
                            let secret = self.agent_secret().await?;
                            let message = format!("agent credential:{claimed}:{nonce}");
                            hex::encode(hmac_sha256(secret.as_bytes(), message.as_bytes()))
                        }
                        _ => random_hex(32),
                    };
                    (claimed.clone(), Some(credential), true)
                }
                None => return self.register_byo(token, registration, public_ip).await,
            },
        };
        let node = self.agent_load_node(&node_uuid).await?;
        if node.cluster_uuid != registration.cluster {
            return Err(AgentError::Forbidden(match &registration.cluster {
                Some(cluster) => format!("node '{node_uuid}' is not in cluster '{cluster}'"),
                None => format!(
                    "node '{node_uuid}' belongs to a cluster; its agent must name it and its slot"
                ),
            }));
        }
        if node.state == NodeState::Terminated {
            return Err(AgentError::Forbidden(format!(
                "node '{node_uuid}' is terminated; it cannot register again"
            )));
        }
        let next = node.state.apply(NodeEvent::AgentRegistered).map_err(|e| {
            AgentError::Conflict(format!("node '{node_uuid}' cannot register now: {e}"))
        })?;
        let previous = match first {
            true => None,
            false => self.store.node_agent(&node_uuid).await?,
        };
        let now = date::now_unix();
        let hash = match &credential {
            Some(credential) => credential_hash(credential),
            None => credential_hash(token),
        };
        let record = NodeAgentRecord {
            node_uuid: node_uuid.clone(),
            credential_hash: hash,
            agent_version: Some(registration.agent_version.clone()),
            docker_version: registration.docker_version.clone(),
            private_ips: registration.private_ips.clone(),
            registered_at: now,
            updated_at: now,
        };
        let change = NodeRegistration {
            cluster_uuid: node.cluster_uuid.as_deref(),
            from: node.state,
            to: next,
            public_ip,
            now,
        };
        let ip_change = match self.store.register_agent(&record, first, &change).await? {
            Registered::Done(ip_change) => ip_change,
            Registered::AlreadyRegistered if first => {
                // The same agent again (its nonce gives the stored credential): an earlier
                // attempt committed and its answer was lost; it gets its credential again.
                let same = match (&credential, self.store.node_agent(&node_uuid).await?) {
                    (Some(credential), Some(stored)) => {
                        registration.nonce.is_some()
                            && stored.credential_hash == credential_hash(credential)
                    }
                    _ => false,
                };
                if !same {
                    return Err(AgentError::Forbidden(format!(
                        "node '{node_uuid}' has already registered; its registration token is used up"
                    )));
                }
                None
            }
            Registered::AlreadyRegistered => {
                return Err(AgentError::Unauthorized(
                    "the agent token is not a node credential".into(),
                ));
            }
            Registered::StateChanged => {
                return Err(AgentError::Conflict(format!(
                    "node '{node_uuid}' changed state while it registered; try again"
                )));
            }
        };
        self.agents.heard(&node_uuid);
        tracing::info!(
            node = node_uuid,
            public_ip,
            first,
            "agent registered; node is {next}"
        );
        let mut changes = Vec::new();
        if let (false, Some(IpChange { from, to })) = (first, &ip_change) {
            changes.push(format!(
                "public IP {} -> {}",
                from.as_deref().unwrap_or("none"),
                to.as_deref().unwrap_or("none")
            ));
        }
        if let Some(previous) = &previous
            && previous.private_ips != registration.private_ips
        {
            changes.push(format!(
                "private IPs {} -> {}",
                previous.private_ips.join(","),
                registration.private_ips.join(",")
            ));
        }
        if !changes.is_empty() {
            let line = format!("Agent re-registered: {}", changes.join("; "));
            self.store
                .record_history(&uri::node(&node_uuid), LABEL_IP_CHANGE, &line, now)
                .await?;
        }
        if node.state != next {
            self.note_health(&node_uuid, node.state, next, "its agent registered")
                .await?;
        }
        if let Some(cluster) = &node.cluster_uuid {
            self.reconciler.nudge(cluster);
        }
        let node = self.agent_load_node(&node_uuid).await?;
        let agent = self.store.node_agent(&node_uuid).await?;
        let mut rendered = self.render_agent_node(&node, agent.as_ref());
        rendered.credential = credential;
        Ok(RegisteredNode {
            node: rendered,
            first,
        })
    }

    /// A bring-your-own node's first registration: `token` must be an unused token from
    /// `POST token/`.
    async fn register_byo(
        &self,
        token: &str,
        registration: &Registration,
        public_ip: &str,
    ) -> AgentResult<RegisteredNode> {
        let now = date::now_unix();
        let uuid = uuid::Uuid::new_v4().to_string();
        let credential = random_hex(32);
        // A bring-your-own node is born by its agent's registration.
        let state = NodeState::Deploying
            .apply(NodeEvent::AgentRegistered)
            .map_err(|e| AgentError::Conflict(e.to_string()))?;
        let node = NodeRecord {
            uuid: uuid.clone(),
            cluster_uuid: None,
            slot: 0,
            instance_id: String::new(),
            state,
            availability_zone: String::new(),
            subnet_id: String::new(),
            public_ip: Some(public_ip.to_owned()),
            private_ip: None,
            nickname: None,
            tags: Vec::new(),
            last_seen: Some(now),
            created_at: now,
            deployed_at: Some(now),
            destroyed_at: None,
            engine: Default::default(),
            swarm: Default::default(),
        };
        let agent = NodeAgentRecord {
            node_uuid: uuid.clone(),
            credential_hash: credential_hash(&credential),
            agent_version: Some(registration.agent_version.clone()),
            docker_version: registration.docker_version.clone(),
            private_ips: registration.private_ips.clone(),
            registered_at: now,
            updated_at: now,
        };
        if !self
            .store
            .register_byo_node(&super::token_hash(token.trim()), &node, &agent)
            .await?
        {
            return Err(AgentError::Unauthorized(
                "the agent token is neither a node credential nor an unused bring-your-own-node token (POST /api/infra/v1/token/)"
                    .into(),
            ));
        }
        self.agents.heard(&uuid);
        tracing::info!(node = uuid, public_ip, "bring-your-own node registered");
        self.store
            .record_history(
                &uri::node(&uuid),
                LABEL_BYO_REGISTERED,
                &format!("Bring-your-own node registered from {public_ip}"),
                now,
            )
            .await?;
        let stored = self.agent_load_node(&uuid).await?;
        let mut rendered = self.render_agent_node(&stored, Some(&agent));
        rendered.credential = Some(credential);
        Ok(RegisteredNode {
            node: rendered,
            first: true,
        })
    }

    async fn check_batch_token(&self, token: &str, registration: &Registration) -> AgentResult<()> {
        let secret = self.agent_secret().await?;
        let expected = batch_token(
            secret,
            registration.cluster.as_deref().unwrap_or_default(),
            registration.first_slot,
            registration.count,
        );
        if !bool::from(expected.as_bytes().ct_eq(token.as_bytes())) {
            return Err(AgentError::Unauthorized(
                "the agent token is neither a node credential nor this batch's registration token"
                    .into(),
            ));
        }
        let end = u64::from(registration.first_slot) + u64::from(registration.count);
        if !(registration.first_slot..).contains(&registration.slot)
            || u64::from(registration.slot) >= end
        {
            return Err(AgentError::Forbidden(format!(
                "slot {} is not in the batch of this token (slots {} to {})",
                registration.slot,
                registration.first_slot,
                end.saturating_sub(1)
            )));
        }
        Ok(())
    }

    /// `GET /api/agent/v1/node/{uuid}/`.
    pub async fn agent_node(&self, uuid: &str) -> AgentResult<AgentNode> {
        let node = self.agent_load_node(uuid).await?;
        let agent = self.store.node_agent(uuid).await?;
        Ok(self.render_agent_node(&node, agent.as_ref()))
    }

    /// `PATCH /api/agent/v1/node/{uuid}/`.
    pub async fn agent_update(&self, uuid: &str, update: &NodeUpdate) -> AgentResult<AgentNode> {
        self.store
            .update_node_agent(
                uuid,
                update.agent_version.as_deref(),
                update.docker_version.as_deref(),
                update.private_ips.as_deref(),
                update.engine.as_ref(),
                date::now_unix(),
            )
            .await?;
        // A result that cannot be recorded is not taken as done here (its task is handed
        // out again), so a failure is only logged.
        let recorded = match &self.secret_key {
            Some(key) => crate::swarm::record_results(&self.store, key, uuid, &update.results)
                .await
                .inspect_err(|error| {
                    tracing::warn!(
                        node = uuid,
                        error = format!("{error:#}"),
                        "recording task results"
                    );
                })
                .is_ok(),
            None => true,
        };
        if update.engine.is_some() || !update.results.is_empty() {
            let results: &[_] = if recorded { &update.results } else { &[] };
            self.mailbox.report(uuid, results);
        }
        self.agent_node(uuid).await
    }

    /// `POST /api/agent/v1/node/{uuid}/ping/`: remembered in memory, written by
    /// [`flush_heartbeats`]; an `Unreachable` node is `Deployed` again at once.
    pub async fn agent_ping(&self, uuid: &str) -> AgentResult<PingReply> {
        if self.agents.heard(uuid) {
            self.set_reachability(uuid, NodeState::Unreachable, NodeEvent::HeardFrom)
                .await?;
        }
        self.metrics.heartbeats.inc();
        let tasks = self.mailbox.take(uuid);
        self.metrics.swarm_tasks_handed.inc_by(tasks.len() as u64);
        Ok(PingReply {
            reachable: true,
            tasks,
        })
    }

    /// Writes the heartbeats received since the last flush.
    pub async fn flush_heartbeats_once(&self) -> Result<(), StoreError> {
        let seen = self.agents.take_heartbeats();
        self.store.flush_last_seen(&seen).await
    }

    /// When the node was last heard from: the in-memory heartbeat, else the store's.
    pub fn last_seen(&self, node: &NodeRecord) -> Option<i64> {
        match (self.agents.last_heard(&node.uuid), node.last_seen) {
            (Some(heard), Some(stored)) => Some(heard.max(stored)),
            (heard, stored) => heard.or(stored),
        }
    }

    /// Starts watching the health of every node that has a live agent, each with a full
    /// grace period from now (a server start, or this replica taking the sweep over: what
    /// it did not hear proves nothing). A heartbeat this replica has not flushed yet is kept.
    pub async fn load_watches(&self) -> Result<usize, StoreError> {
        let nodes = self.store.watched_nodes().await?;
        let started = Instant::now();
        let mut watches = AgentState::lock(&self.agents.watches);
        for (uuid, state, last_seen) in &nodes {
            let unreachable = *state == NodeState::Unreachable;
            watches
                .entry(uuid.clone())
                .and_modify(|watch| {
                    watch.heard = started;
                    watch.unreachable = unreachable;
                })
                .or_insert(Watch {
                    heard: started,
                    unix: last_seen.unwrap_or_else(date::now_unix),
                    flushed: true,
                    unreachable,
                });
        }
        Ok(nodes.len())
    }

    /// Takes in the last-heard times every replica wrote ([`flush_heartbeats`]): a node
    /// whose agent talks to another replica is heard from here through the store. Nodes
    /// that registered elsewhere start being watched (with a full grace period). Returns
    /// the nodes this sweep judged `Unreachable` that were heard from since, to be turned
    /// back.
    pub async fn merge_stored_heartbeats(&self) -> Result<Vec<String>, StoreError> {
        let nodes = self.store.watched_nodes().await?;
        Ok(self
            .agents
            .merge_stored(&nodes, date::now_unix(), Instant::now()))
    }

    /// One health sweep: every node silent for longer than the grace period becomes
    /// `Unreachable`.
    /// A verdict that cannot be written is judged again by the next sweep; the others
    /// of this sweep are still written.
    ///
    /// A heartbeat may arrive between [`AgentState::overdue`] marking a node and the
    /// verdict's write: it finds the node still `Deployed` in the store (nothing to undo)
    /// and clears the mark, and the write then makes the node `Unreachable` although it is
    /// heard from. So after the write, a cleared mark turns the node back at once;
    /// otherwise a heartbeating node would stay `Unreachable` for good (the 18,000-agent
    /// benchmark found one). A node heard from before its verdict is written gets none.
    pub async fn sweep_health(&self) -> Result<(), StoreError> {
        let mut failed = None;
        for uuid in self.agents.overdue() {
            // Heard from since `overdue` marked it (a sweep with thousands of verdicts to
            // write takes a while): no verdict, rather than one taken back at once — a flap
            // that would drop and re-add the node's DNS records.
            if self.agents.heard_since_judged(&uuid) {
                continue;
            }
            let lost = self
                .set_reachability(&uuid, NodeState::Deployed, NodeEvent::HeartbeatLost)
                .await;
            let verdict = match lost {
                Err(error) => {
                    self.agents.judge_again(&uuid);
                    Err(error)
                }
                Ok(()) if self.agents.heard_since_judged(&uuid) => self
                    .set_reachability(&uuid, NodeState::Unreachable, NodeEvent::HeardFrom)
                    .await
                    // Not written: the next heartbeat turns it back.
                    .inspect_err(|_| self.agents.set_judged(&uuid, true)),
                Ok(()) => Ok(()),
            };
            if let Err(error) = verdict {
                failed.get_or_insert(error);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// `POST node/{uuid}/health-check/`: the verdict now, from the last heartbeat. Returns
    /// the line written to the action's log.
    pub async fn health_check(&self, node: &NodeRecord) -> Result<String, StoreError> {
        let silent_for = {
            let watches = AgentState::lock(&self.agents.watches);
            watches.get(&node.uuid).map(|w| w.heard.elapsed())
        };
        let Some(silent_for) = silent_for else {
            return Ok(format!(
                "Node is {}: it has no agent reporting to this server",
                node.state
            ));
        };
        let healthy = silent_for <= self.agents.grace;
        let event = if healthy {
            NodeEvent::HeardFrom
        } else {
            NodeEvent::HeartbeatLost
        };
        // Only a verdict the state machine accepts moves the node: `HeardFrom` an
        // `Unreachable` one, `HeartbeatLost` a `Deployed` one; any other state stays.
        let now = match node.state.apply(event) {
            Ok(next) => {
                if let Some(watch) = AgentState::lock(&self.agents.watches).get_mut(&node.uuid) {
                    watch.unreachable = !healthy;
                }
                self.set_reachability(&node.uuid, node.state, event).await?;
                next
            }
            Err(_) => node.state,
        };
        Ok(format!(
            "Agent last heard from {} s ago (grace {} s): node is {now}",
            silent_for.as_secs(),
            self.agents.grace.as_secs(),
        ))
    }

    /// Applies a health verdict (`HeartbeatLost`, `HeardFrom`) to a node if it is still in
    /// `from`: its state (through the state machine), an event, a line in its history, and
    /// its cluster re-evaluated.
    async fn set_reachability(
        &self,
        uuid: &str,
        from: NodeState,
        event: NodeEvent,
    ) -> Result<(), StoreError> {
        match self.store.apply_node_event(uuid, from, event).await? {
            Some((to, cluster)) => {
                let reason = match event {
                    NodeEvent::HeartbeatLost => format!(
                        "no heartbeat for more than {} s",
                        self.agents.grace.as_secs()
                    ),
                    _ => "its agent is heard from again".to_owned(),
                };
                self.note_health(uuid, from, to, &reason).await?;
                if let Some(cluster) = cluster {
                    self.reconciler.nudge(&cluster);
                }
            }
            None => {
                // Not in `from` any more: terminated nodes are no longer watched.
                if let Some(node) = self.store.node(uuid).await?
                    && !matches!(node.state, NodeState::Deployed | NodeState::Unreachable)
                {
                    self.agents.forget(uuid);
                }
            }
        }
        Ok(())
    }

    /// A line in the node's history for a state change.
    async fn note_health(
        &self,
        uuid: &str,
        from: NodeState,
        to: NodeState,
        reason: &str,
    ) -> Result<(), StoreError> {
        tracing::info!(node = uuid, %from, %to, reason, "node health");
        self.store
            .record_history(
                &uri::node(uuid),
                &format!("Node {to}"),
                &format!("Node {from} -> {to}: {reason}"),
                date::now_unix(),
            )
            .await
    }
}

/// The health sweep's lease: one replica judges every node.
pub const HEALTH_WORK: &str = "health";

/// Runs the health sweep every [`HEALTH_TICK`] until `stop` turns true, while this replica
/// holds the sweep's lease ([`HEALTH_WORK`]; every replica records the heartbeats it
/// receives and the sweep's owner merges them from the store every
/// [`flush_interval`]). Beside it, on every replica, follows the verdicts:
/// forgets nodes as they terminate (their credential stops working at once) and keeps
/// each node's last verdict, so a heartbeat reaching any replica turns an `Unreachable`
/// node back.
pub async fn watch_health<C: Cloud + 'static>(app: Arc<App<C>>, stop: watch::Receiver<bool>) {
    let leases = app.leases.clone();
    let liveness = app.liveness.clone();
    let sweep = leases.run_beating(
        HEALTH_WORK,
        || sweep_while_held(app.clone(), stop.clone()),
        &liveness,
        "node health",
    );
    let follow = follow_verdicts(app.clone(), stop.clone());
    tokio::select! {
        () = sweep => {}
        () = follow => {}
    }
}

/// The sweep itself, from a full grace period (see [`App::load_watches`]).
async fn sweep_while_held<C: Cloud + 'static>(app: Arc<App<C>>, mut stop: watch::Receiver<bool>) {
    match app.load_watches().await {
        Ok(count) => tracing::info!(nodes = count, "watching node health"),
        Err(error) => tracing::warn!(%error, "cannot load the watched nodes"),
    }
    let mut ticker = tokio::time::interval(HEALTH_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut merge = tokio::time::interval(flush_interval(app.agents.grace));
    merge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                app.liveness.beat("node health");
                if let Err(error) = app.sweep_health().await {
                    tracing::warn!(%error, "health sweep failed");
                }
            }
            _ = merge.tick() => match app.merge_stored_heartbeats().await {
                Ok(heard_again) => {
                    for uuid in heard_again {
                        app.agents.set_judged(&uuid, false);
                        if let Err(error) = app
                            .set_reachability(&uuid, NodeState::Unreachable, NodeEvent::HeardFrom)
                            .await
                        {
                            app.agents.set_judged(&uuid, true);
                            tracing::warn!(%error, "cannot turn a node back");
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot read the stored heartbeats"),
            },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
}

/// Follows node events (every replica's, see `crate::replicas`): terminations and
/// verdicts.
async fn follow_verdicts<C: Cloud + 'static>(app: Arc<App<C>>, mut stop: watch::Receiver<bool>) {
    let mut events = app.events().subscribe();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    if event.kind == "node"
                        && let Some(uri::Resource::Node { uuid }) =
                            uri::Resource::parse(&event.resource_uri)
                    {
                        if event.state == NodeState::Terminated.as_str() {
                            app.agents.forget(&uuid);
                        } else if event.state == NodeState::Unreachable.as_str() {
                            app.agents.set_judged(&uuid, true);
                        } else if event.state == NodeState::Deployed.as_str() {
                            app.agents.set_judged(&uuid, false);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Some terminations may have been missed: check every credential again.
                    AgentState::lock(&app.agents.credentials).clear();
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
}

/// Flushes heartbeats every [`flush_interval`] until `stop` turns true, then once
/// more.
pub async fn flush_heartbeats<C: Cloud + 'static>(
    app: std::sync::Arc<App<C>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(flush_interval(app.agents.grace)) => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
        if let Err(error) = app.flush_heartbeats_once().await {
            tracing::warn!(%error, "cannot write heartbeats");
        }
    }
    if let Err(error) = app.flush_heartbeats_once().await {
        tracing::warn!(%error, "cannot write heartbeats");
    }
}

/// History labels.
const LABEL_IP_CHANGE: &str = "Node IP Change";
const LABEL_BYO_REGISTERED: &str = "Node Register";
