//! The node's Docker engine, over its API ([`bollard`] on the engine's unix socket): what
//! the agent reports about it ([`Engine::report`]) and the swarm steps it carries out on it
//! ([`Engine::run`]).
//!
//! Design decisions:
//! * **The API, not the CLI.** Typed answers instead of parsing `docker` output, no
//!   dependency on a CLI being installed, and one connection for reports and tasks. Only the
//!   unix socket transport is compiled in (`bollard` without TLS, SSH or buildkit): the
//!   engine's API is never exposed off its node, so the agent never needs more.
//! * **Version negotiation.** `bollard` speaks a newer API (1.53) than Debian's docker.io
//!   20.10 (1.41). The first call of a connection asks the engine for its version
//!   (`negotiate_version`) and the client then speaks the lower of the two, so a field or
//!   endpoint the engine does not know is never used by accident; the negotiated version is
//!   reported (`EngineInfo::api_version`). A connection that fails at the transport level is
//!   dropped and the next call negotiates again: the engine may have been restarted or
//!   upgraded in between.
//! * **Short timeouts on every call.** A dead or wedged engine must not hang the agent: a
//!   read (`info`, node and task lists, inspections) gets [`READ_TIMEOUT`], a swarm change
//!   (init, join, leave, node update and removal, which wait for Raft) gets
//!   [`STEP_TIMEOUT`]; tasks run off the heartbeat path ([`crate::worker`]), so even a long
//!   one delays no heartbeat. The connection is made lazily, so an
//!   engine that is not up yet when the agent starts is simply reported as down.
//! * **Reports only from what the engine says.** `docker info` gives the version, CPUs,
//!   memory, running containers, data root and swarm membership; a manager whose control
//!   plane answers also lists every node and counts their running tasks. Nodes are sorted
//!   (hostname, then id) so two reports of the same state compare equal — the agent sends a
//!   report only when it changed. The pure part ([`engine_info`], [`swarm_nodes`]) is
//!   separate from the calls, for tests.
//! * **Every task is idempotent.** The server may hand the same step twice (a lost answer, a
//!   restarted server), so each op first looks at the engine and succeeds without change
//!   when the engine is already as asked: init on a manager, join on a member, leave on a
//!   non-member, remove of a missing node, a node update that changes nothing.
//! * **No secret leaves in a message.** Join tokens go to the engine and come back only in
//!   [`TaskResult::join_tokens`] (redacted in `Debug`); every error message of a join is
//!   scrubbed of its token before it is returned or logged.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    Node, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, Service, SwarmInitRequest, SwarmJoinRequest,
    SystemInfo, Task, TaskState,
};
use bollard::query_parameters::{
    DeleteNodeOptions, LeaveSwarmOptions, ListNodesOptions, ListServicesOptions, ListTasksOptions,
    UpdateNodeOptions,
};
use flotilla_api::agent::{
    AgentTask, EngineInfo, EngineReport, JoinTokens, PublishedPortInfo, ServiceInfo, ServiceTask,
    SwarmInfo, SwarmNodeInfo, TaskOp, TaskResult,
};

/// The engine's socket when `DOCKER_HOST` is not set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// Longest wait for one read (`info`, node and task lists, inspections).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one swarm change (init, join and leave wait for the swarm's Raft log;
/// node updates and removals are Raft writes too).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The address swarm managers listen on (`--listen-addr`); the advertised address is the
/// node's own.
pub const SWARM_LISTEN_ADDR: &str = "0.0.0.0:2377";

/// The socket path of a `DOCKER_HOST` value: `unix:///path`, a bare absolute path, or empty
/// (the default socket). Other transports (`tcp://`, `ssh://`) are refused: an engine's API
/// is only ever reached on its own node.
pub fn socket_path(docker_host: &str) -> anyhow::Result<PathBuf> {
    let host = docker_host.trim();
    let path = if host.is_empty() {
        DEFAULT_DOCKER_HOST.trim_start_matches("unix://")
    } else if let Some(path) = host.strip_prefix("unix://") {
        path
    } else if host.starts_with('/') {
        host
    } else {
        anyhow::bail!(
            "DOCKER_HOST {host:?} is not a unix socket: the agent talks to its engine only as unix:///path"
        );
    };
    if !path.starts_with('/') {
        anyhow::bail!("DOCKER_HOST {host:?} is not an absolute unix socket path");
    }
    Ok(PathBuf::from(path))
}

/// Why an engine call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError {
    /// What was being done (`info`, `swarm init`, …).
    pub what: &'static str,
    /// The engine's HTTP status, when it answered.
    pub status: Option<u16>,
    pub message: String,
}

impl EngineError {
    /// The engine never answered (no socket, refused, timed out): the connection is dropped.
    fn is_transport(&self) -> bool {
        self.status.is_none()
    }

    fn not_found(&self) -> bool {
        self.status == Some(404) || self.message.contains("not found")
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.message)
    }
}

impl std::error::Error for EngineError {}

/// `error` and its sources, joined with `: `.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

fn engine_error(what: &'static str, error: bollard::errors::Error) -> EngineError {
    match error {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => EngineError {
            what,
            status: Some(status_code),
            message: message.trim().to_owned(),
        },
        other => EngineError {
            what,
            status: None,
            message: chain(&other),
        },
    }
}

/// A node's Docker engine.
pub struct Engine {
    /// The socket, or why `DOCKER_HOST` names none (then every call fails with that).
    socket: Result<PathBuf, String>,
    /// The connection, once made and its API version negotiated.
    docker: tokio::sync::Mutex<Option<Docker>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// The engine at `docker_host` (see [`socket_path`]). Nothing is connected yet. A
    /// `docker_host` that names no unix socket does not stop the agent: the engine is then
    /// reported as down with that reason, and the node still registers and heartbeats.
    pub fn new(docker_host: &str) -> Engine {
        Engine {
            socket: socket_path(docker_host).map_err(|e| format!("{e:#}")),
            docker: tokio::sync::Mutex::new(None),
        }
    }

    /// The engine's socket, or why `DOCKER_HOST` names none.
    pub fn socket(&self) -> Result<&Path, &str> {
        self.socket.as_deref().map_err(String::as_str)
    }

    /// The connection, made and negotiated on first use.
    async fn client(&self) -> Result<Docker, EngineError> {
        let mut cached = self.docker.lock().await;
        if let Some(docker) = cached.as_ref() {
            return Ok(docker.clone());
        }
        let socket = self.socket().map_err(|why| EngineError {
            what: "connecting",
            status: None,
            message: why.to_owned(),
        })?;
        let path = socket.to_string_lossy();
        let docker =
            Docker::connect_with_unix(&path, STEP_TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)
                .map_err(|e| engine_error("connecting", e))?;
        let docker = match tokio::time::timeout(READ_TIMEOUT, docker.negotiate_version()).await {
            Ok(Ok(docker)) => docker,
            Ok(Err(error)) => return Err(engine_error("negotiating the API version", error)),
            Err(_) => return Err(timed_out("negotiating the API version", READ_TIMEOUT)),
        };
        *cached = Some(docker.clone());
        Ok(docker)
    }

    /// One call with a deadline; a transport failure drops the connection.
    async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        limit: Duration,
        call: F,
    ) -> Result<T, EngineError>
    where
        F: FnOnce(Docker) -> Fut,
        Fut: Future<Output = Result<T, bollard::errors::Error>>,
    {
        let docker = self.client().await?;
        let result = match tokio::time::timeout(limit, call(docker)).await {
            Ok(result) => result.map_err(|e| engine_error(what, e)),
            Err(_) => Err(timed_out(what, limit)),
        };
        if let Err(error) = &result
            && error.is_transport()
        {
            self.docker.lock().await.take();
        }
        result
    }

    async fn info(&self) -> Result<SystemInfo, EngineError> {
        self.call("info", READ_TIMEOUT, |d| async move { d.info().await })
            .await
    }

    /// The API version in use (negotiated), once connected.
    async fn api_version(&self) -> Option<String> {
        let docker = self.docker.lock().await.clone()?;
        let version = docker.client_version();
        Some(format!(
            "{}.{}",
            version.major_version, version.minor_version
        ))
    }

    /// The engine's version, for registration; `None` when it does not answer.
    pub async fn version(&self) -> Option<String> {
        match self.info().await {
            Ok(info) => info.server_version.filter(|v| !v.is_empty()),
            Err(error) => {
                tracing::debug!(%error, "the Docker engine did not tell its version");
                None
            }
        }
    }

    /// What the engine says now; an engine that does not answer is reported as down with
    /// the reason.
    pub async fn report(&self) -> EngineReport {
        match self.info_with_lists().await {
            Ok(engine) => EngineReport {
                engine: Some(engine),
                error: None,
            },
            Err(error) => EngineReport {
                engine: None,
                error: Some(error.to_string()),
            },
        }
    }

    async fn info_with_lists(&self) -> Result<EngineInfo, EngineError> {
        let info = self.info().await?;
        let api_version = self.api_version().await.unwrap_or_default();
        let disk_gib = info
            .docker_root_dir
            .as_deref()
            .and_then(|root| match disk_gib(Path::new(root)) {
                Ok(gib) => Some(gib),
                Err(error) => {
                    tracing::warn!(root, %error, "cannot measure the engine's data root");
                    None
                }
            })
            .unwrap_or(0);
        let control_available = info
            .swarm
            .as_ref()
            .and_then(|s| s.control_available)
            .unwrap_or(false);
        let lists = if control_available {
            Some(self.swarm_lists().await.map_err(|e| e.to_string()))
        } else {
            None
        };
        let lists = match &lists {
            Some(Ok((nodes, tasks, services))) => SwarmLists::Listed {
                nodes,
                tasks,
                services,
            },
            Some(Err(why)) => SwarmLists::Failed(why),
            None => SwarmLists::NotAManager,
        };
        Ok(engine_info(&info, &api_version, disk_gib, lists))
    }

    async fn swarm_lists(&self) -> Result<(Vec<Node>, Vec<Task>, Vec<Service>), EngineError> {
        let nodes = self
            .call("listing the swarm's nodes", READ_TIMEOUT, |d| async move {
                d.list_nodes(None::<ListNodesOptions>).await
            })
            .await?;
        let tasks = self
            .call("listing the swarm's tasks", READ_TIMEOUT, |d| async move {
                d.list_tasks(None::<ListTasksOptions>).await
            })
            .await?;
        let services = self
            .call(
                "listing the swarm's services",
                READ_TIMEOUT,
                |d| async move { d.list_services(None::<ListServicesOptions>).await },
            )
            .await?;
        Ok((nodes, tasks, services))
    }

    /// Carries out one task; never fails, the result says how it went.
    pub async fn run(&self, task: &AgentTask) -> TaskResult {
        let outcome = match &task.op {
            TaskOp::SwarmInit { advertise_addr } => self.swarm_init(advertise_addr).await,
            TaskOp::SwarmJoin {
                token,
                advertise_addr,
                remote_addrs,
            } => self
                .swarm_join(token, advertise_addr, remote_addrs)
                .await
                .map_err(|message| message.replace(token.as_str(), "<redacted>")),
            TaskOp::SwarmLeave { force } => self.swarm_leave(*force).await.map(done),
            TaskOp::NodeUpdate {
                node_id,
                role,
                availability,
                labels,
            } => self
                .node_update(node_id, role.as_deref(), availability.as_deref(), labels)
                .await
                .map(done),
            TaskOp::NodeRemove { node_id, force } => {
                self.node_remove(node_id, *force).await.map(done)
            }
        };
        match outcome {
            Ok((message, join_tokens)) => TaskResult {
                id: task.id.clone(),
                ok: true,
                message,
                join_tokens,
            },
            Err(message) => TaskResult {
                id: task.id.clone(),
                ok: false,
                message,
                join_tokens: None,
            },
        }
    }

    /// The swarm's join tokens and id, from a manager.
    async fn inspect_swarm(&self) -> Result<(String, JoinTokens), EngineError> {
        let swarm = self
            .call("inspecting the swarm", READ_TIMEOUT, |d| async move {
                d.inspect_swarm().await
            })
            .await?;
        let tokens = swarm.join_tokens.unwrap_or_default();
        match (tokens.manager, tokens.worker) {
            (Some(manager), Some(worker)) if !manager.is_empty() && !worker.is_empty() => {
                Ok((swarm.id.unwrap_or_default(), JoinTokens { manager, worker }))
            }
            _ => Err(EngineError {
                what: "inspecting the swarm",
                status: None,
                message: "the engine returned no join tokens".into(),
            }),
        }
    }

    async fn swarm_init(&self, advertise_addr: &str) -> Outcome {
        let info = self.info().await.map_err(|e| e.to_string())?;
        let swarm = info.swarm.unwrap_or_default();
        let state = swarm
            .local_node_state
            .map(|s| s.to_string())
            .unwrap_or_default();
        if state == "active" {
            return match self.inspect_swarm().await {
                Ok((id, tokens)) => Ok((
                    format!("already a manager of swarm {id}; nothing to do"),
                    Some(tokens),
                )),
                Err(error) => Err(format!(
                    "the engine is already in a swarm (node {}) but cannot answer as its manager: {error}",
                    swarm.node_id.unwrap_or_default()
                )),
            };
        }
        let request = SwarmInitRequest {
            listen_addr: Some(SWARM_LISTEN_ADDR.to_owned()),
            advertise_addr: Some(advertise_addr.to_owned()),
            ..Default::default()
        };
        let node_id = self
            .call("swarm init", STEP_TIMEOUT, |d| async move {
                d.init_swarm(request).await
            })
            .await
            .map_err(|e| e.to_string())?;
        let (id, tokens) = self.inspect_swarm().await.map_err(|e| e.to_string())?;
        Ok((
            format!("initialised swarm {id} advertising {advertise_addr}; this node is {node_id}"),
            Some(tokens),
        ))
    }

    async fn swarm_join(
        &self,
        token: &str,
        advertise_addr: &str,
        remote_addrs: &[String],
    ) -> Outcome {
        let info = self.info().await.map_err(|e| e.to_string())?;
        let swarm = info.swarm.unwrap_or_default();
        let state = swarm
            .local_node_state
            .map(|s| s.to_string())
            .unwrap_or_default();
        match state.as_str() {
            "active" => {
                let cluster = swarm
                    .cluster
                    .and_then(|c| c.id)
                    .filter(|id| !id.is_empty())
                    .map(|id| format!("already in swarm {id}"))
                    .unwrap_or_else(|| {
                        format!(
                            "already in a swarm as node {}",
                            swarm.node_id.unwrap_or_default()
                        )
                    });
                return Ok((cluster, None));
            }
            "pending" => {
                return Err(
                    "the engine is still joining a swarm (state pending); try again later"
                        .to_owned(),
                );
            }
            _ => {}
        }
        if remote_addrs.is_empty() {
            return Err("no manager address to join".to_owned());
        }
        let request = SwarmJoinRequest {
            listen_addr: Some(SWARM_LISTEN_ADDR.to_owned()),
            advertise_addr: Some(advertise_addr.to_owned()),
            remote_addrs: Some(remote_addrs.to_vec()),
            join_token: Some(token.to_owned()),
            ..Default::default()
        };
        self.call("swarm join", STEP_TIMEOUT, |d| async move {
            d.join_swarm(request).await
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok((
            format!(
                "joined the swarm of {} advertising {advertise_addr}",
                remote_addrs.join(", ")
            ),
            None,
        ))
    }

    async fn swarm_leave(&self, force: bool) -> Result<String, String> {
        let info = self.info().await.map_err(|e| e.to_string())?;
        let swarm = info.swarm.unwrap_or_default();
        let state = swarm
            .local_node_state
            .map(|s| s.to_string())
            .unwrap_or_default();
        if state == "inactive" || state.is_empty() {
            return Ok("not in a swarm; nothing to do".to_owned());
        }
        let options = LeaveSwarmOptions { force };
        self.call("swarm leave", STEP_TIMEOUT, |d| async move {
            d.leave_swarm(Some(options)).await
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(match swarm.cluster.and_then(|c| c.id) {
            Some(id) if !id.is_empty() => format!("left swarm {id}"),
            _ => "left the swarm".to_owned(),
        })
    }

    async fn node_update(
        &self,
        node_id: &str,
        role: Option<&str>,
        availability: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<String, String> {
        let role = role
            .map(|r| match r {
                "manager" => Ok(NodeSpecRoleEnum::MANAGER),
                "worker" => Ok(NodeSpecRoleEnum::WORKER),
                other => Err(format!("unknown node role {other:?} (manager or worker)")),
            })
            .transpose()?;
        let availability = availability
            .map(|a| match a {
                "active" => Ok(NodeSpecAvailabilityEnum::ACTIVE),
                "pause" => Ok(NodeSpecAvailabilityEnum::PAUSE),
                "drain" => Ok(NodeSpecAvailabilityEnum::DRAIN),
                other => Err(format!(
                    "unknown node availability {other:?} (active, pause or drain)"
                )),
            })
            .transpose()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let id = node_id.to_owned();
            let node = self
                .call("inspecting the node", READ_TIMEOUT, |d| async move {
                    d.inspect_node(&id).await
                })
                .await
                .map_err(|e| e.to_string())?;
            let version = node.version.and_then(|v| v.index).unwrap_or(0);
            let current = node.spec.unwrap_or_default();
            let mut spec = current.clone();
            if let Some(role) = role {
                spec.role = Some(role);
            }
            if let Some(availability) = availability {
                spec.availability = Some(availability);
            }
            if !labels.is_empty() {
                let merged = spec.labels.get_or_insert_with(HashMap::new);
                for (key, value) in labels {
                    merged.insert(key.clone(), value.clone());
                }
            }
            let change = describe_update(role, availability, labels);
            if spec == current {
                return Ok(format!("node {node_id} is already {change}; nothing to do"));
            }
            let id = node_id.to_owned();
            let options = UpdateNodeOptions {
                version: i64::try_from(version).unwrap_or(i64::MAX),
            };
            match self
                .call("updating the node", STEP_TIMEOUT, |d| async move {
                    d.update_node(&id, spec, options).await
                })
                .await
            {
                Ok(()) => return Ok(format!("node {node_id} updated: {change}")),
                Err(error) if attempt == 1 && error.message.contains("out of sequence") => {
                    tracing::info!(node_id, "node changed while updating it; trying again");
                }
                Err(error) => return Err(error.to_string()),
            }
        }
    }

    async fn node_remove(&self, node_id: &str, force: bool) -> Result<String, String> {
        let id = node_id.to_owned();
        let options = DeleteNodeOptions { force };
        match self
            .call("removing the node", STEP_TIMEOUT, |d| async move {
                d.delete_node(&id, Some(options)).await
            })
            .await
        {
            Ok(()) => Ok(format!("node {node_id} removed from the swarm")),
            Err(error) if error.not_found() => {
                Ok(format!("node {node_id} is not in the swarm; nothing to do"))
            }
            Err(error) => Err(error.to_string()),
        }
    }
}

/// What a task did (message, join tokens) or why it failed.
type Outcome = Result<(String, Option<JoinTokens>), String>;

fn done(message: String) -> (String, Option<JoinTokens>) {
    (message, None)
}

fn timed_out(what: &'static str, limit: Duration) -> EngineError {
    EngineError {
        what,
        status: None,
        message: format!("the engine did not answer within {limit:?}"),
    }
}

fn describe_update(
    role: Option<NodeSpecRoleEnum>,
    availability: Option<NodeSpecAvailabilityEnum>,
    labels: &BTreeMap<String, String>,
) -> String {
    let mut parts = Vec::new();
    if let Some(role) = role {
        parts.push(format!("role {role}"));
    }
    if let Some(availability) = availability {
        parts.push(format!("availability {availability}"));
    }
    if !labels.is_empty() {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.push(format!("labels {}", labels.join(",")));
    }
    if parts.is_empty() {
        "as asked".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Size of the filesystem holding `path`, GiB rounded down.
pub fn disk_gib(path: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_blocks.saturating_mul(stat.f_frsize) >> 30)
}

fn count(value: Option<i64>) -> u32 {
    value
        .and_then(|v| u32::try_from(v.max(0)).ok())
        .unwrap_or(u32::MAX)
}

/// A manager's node and task lists, for [`engine_info`].
#[derive(Debug, Clone, Copy)]
pub enum SwarmLists<'a> {
    /// Not a manager with `control_available`: no lists.
    NotAManager,
    Listed {
        nodes: &'a [Node],
        tasks: &'a [Task],
        services: &'a [Service],
    },
    /// Listing failed (why): reported as the swarm's error.
    Failed(&'a str),
}

/// The report of an engine from its `docker info`, the negotiated API version, the size of
/// its data root's filesystem and — for a manager with `control_available` — its node and
/// task lists (or why they could not be listed). Pure: what [`Engine::report`] sends.
pub fn engine_info(
    info: &SystemInfo,
    api_version: &str,
    disk_gib: u64,
    lists: SwarmLists<'_>,
) -> EngineInfo {
    let swarm = info.swarm.clone().unwrap_or_default();
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let mut error = non_empty(swarm.error);
    let (nodes, services) = match lists {
        SwarmLists::Listed {
            nodes,
            tasks,
            services,
        } => (
            Some(swarm_nodes(nodes, tasks)),
            Some(swarm_services(services, tasks)),
        ),
        SwarmLists::Failed(why) => {
            error.get_or_insert_with(|| why.to_owned());
            (None, None)
        }
        SwarmLists::NotAManager => (None, None),
    };
    EngineInfo {
        version: info.server_version.clone().unwrap_or_default(),
        api_version: api_version.to_owned(),
        cpus: if info.ncpu.is_some() {
            count(info.ncpu)
        } else {
            0
        },
        memory_mib: info
            .mem_total
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(0)
            >> 20,
        disk_gib,
        containers_running: if info.containers_running.is_some() {
            count(info.containers_running)
        } else {
            0
        },
        swarm: SwarmInfo {
            state: swarm
                .local_node_state
                .map(|s| s.to_string().to_lowercase())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "inactive".to_owned()),
            node_id: non_empty(swarm.node_id),
            cluster_id: non_empty(swarm.cluster.and_then(|c| c.id)),
            node_addr: non_empty(swarm.node_addr),
            control_available: swarm.control_available.unwrap_or(false),
            error,
            nodes,
            services,
        },
    }
}

/// Every service with its live tasks (desired `running`, or still running) and published
/// ports; sorted by name, tasks by id.
pub fn swarm_services(services: &[Service], tasks: &[Task]) -> Vec<ServiceInfo> {
    let text = |s: Option<String>| s.unwrap_or_default();
    let mut out: Vec<ServiceInfo> = services
        .iter()
        .map(|service| {
            let id = text(service.id.clone());
            let spec = service.spec.clone().unwrap_or_default();
            let mode = spec.mode.clone().unwrap_or_default();
            let mut live: Vec<ServiceTask> = tasks
                .iter()
                .filter(|t| t.service_id.as_deref() == Some(id.as_str()))
                .filter_map(|t| {
                    let state = t.status.as_ref().and_then(|s| s.state);
                    let desired = t.desired_state;
                    let live =
                        desired == Some(TaskState::RUNNING) || state == Some(TaskState::RUNNING);
                    live.then(|| ServiceTask {
                        id: text(t.id.clone()),
                        node_id: text(t.node_id.clone()),
                        state: state.map(|s| s.to_string()).unwrap_or_default(),
                        desired_state: desired.map(|s| s.to_string()).unwrap_or_default(),
                        error: t
                            .status
                            .as_ref()
                            .and_then(|s| s.err.clone())
                            .filter(|e| !e.is_empty()),
                    })
                })
                .collect();
            live.sort_by(|a, b| a.id.cmp(&b.id));
            let ports = service
                .endpoint
                .as_ref()
                .and_then(|e| e.spec.as_ref())
                .or(spec.endpoint_spec.as_ref())
                .and_then(|e| e.ports.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|p| PublishedPortInfo {
                    target: p
                        .target_port
                        .and_then(|v| u16::try_from(v).ok())
                        .unwrap_or(0),
                    published: p
                        .published_port
                        .and_then(|v| u16::try_from(v).ok())
                        .unwrap_or(0),
                    protocol: p
                        .protocol
                        .map(|v| v.to_string())
                        .filter(|v| !v.is_empty())
                        .unwrap_or_else(|| "tcp".into()),
                    mode: p
                        .publish_mode
                        .map(|v| v.to_string())
                        .filter(|v| !v.is_empty())
                        .unwrap_or_else(|| "ingress".into()),
                })
                .collect();
            ServiceInfo {
                id,
                name: text(spec.name),
                mode: if mode.global.is_some() {
                    "global"
                } else {
                    "replicated"
                }
                .into(),
                replicas: mode
                    .replicated
                    .and_then(|r| r.replicas)
                    .and_then(|n| u64::try_from(n).ok()),
                tasks: live,
                ports,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    out
}

/// Every node of a swarm as a manager lists it, with its running tasks counted from
/// `tasks`; sorted by hostname, then id.
pub fn swarm_nodes(nodes: &[Node], tasks: &[Task]) -> Vec<SwarmNodeInfo> {
    let mut running: HashMap<&str, u32> = HashMap::new();
    for task in tasks {
        let is_running = task
            .status
            .as_ref()
            .and_then(|s| s.state)
            .is_some_and(|s| s == TaskState::RUNNING);
        if let (true, Some(node)) = (is_running, task.node_id.as_deref()) {
            *running.entry(node).or_default() += 1;
        }
    }
    let text = |s: Option<String>| s.unwrap_or_default();
    let mut out: Vec<SwarmNodeInfo> = nodes
        .iter()
        .map(|node| {
            let id = text(node.id.clone());
            let spec = node.spec.clone().unwrap_or_default();
            let status = node.status.clone().unwrap_or_default();
            let manager = node.manager_status.clone();
            SwarmNodeInfo {
                running_tasks: running.get(id.as_str()).copied().unwrap_or(0),
                id,
                hostname: text(node.description.as_ref().and_then(|d| d.hostname.clone())),
                role: spec.role.map(|r| r.to_string()).unwrap_or_default(),
                availability: spec.availability.map(|a| a.to_string()).unwrap_or_default(),
                status: status.state.map(|s| s.to_string()).unwrap_or_default(),
                addr: text(status.addr),
                reachability: manager
                    .as_ref()
                    .and_then(|m| m.reachability)
                    .map(|r| r.to_string())
                    .filter(|r| !r.is_empty()),
                leader: manager.and_then(|m| m.leader).unwrap_or(false),
                labels: spec.labels.unwrap_or_default().into_iter().collect(),
                version: node.version.as_ref().and_then(|v| v.index).unwrap_or(0),
            }
        })
        .collect();
    out.sort_by(|a, b| a.hostname.cmp(&b.hostname).then_with(|| a.id.cmp(&b.id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ClusterInfo, LocalNodeState, ManagerStatus, NodeDescription, NodeSpec, NodeState,
        NodeStatus, ObjectVersion, Reachability, SwarmInfo as DockerSwarm, TaskStatus,
    };

    #[test]
    fn docker_host_is_a_unix_socket() {
        assert_eq!(
            socket_path("").expect("default"),
            PathBuf::from("/var/run/docker.sock")
        );
        assert_eq!(
            socket_path("unix:///tmp/x/d.sock").expect("unix"),
            PathBuf::from("/tmp/x/d.sock")
        );
        assert_eq!(
            socket_path("/run/d.sock").expect("path"),
            PathBuf::from("/run/d.sock")
        );
        assert!(socket_path("tcp://10.0.0.1:2375").is_err());
        assert!(socket_path("unix://relative.sock").is_err());
    }

    fn node(id: &str, host: &str, role: NodeSpecRoleEnum, leader: Option<bool>) -> Node {
        Node {
            id: Some(id.into()),
            version: Some(ObjectVersion { index: Some(9) }),
            spec: Some(NodeSpec {
                role: Some(role),
                availability: Some(NodeSpecAvailabilityEnum::ACTIVE),
                labels: Some(HashMap::from([("zone".into(), "a".into())])),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: Some(host.into()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: Some(NodeState::READY),
                addr: Some("10.0.0.1".into()),
                ..Default::default()
            }),
            manager_status: leader.map(|leader| ManagerStatus {
                leader: Some(leader),
                reachability: Some(Reachability::REACHABLE),
                addr: Some("10.0.0.1:2377".into()),
            }),
            ..Default::default()
        }
    }

    fn task(node: &str, state: TaskState) -> Task {
        Task {
            id: Some(format!("t-{node}-{state}")),
            service_id: Some("s1".into()),
            desired_state: Some(if state == TaskState::SHUTDOWN {
                TaskState::SHUTDOWN
            } else {
                TaskState::RUNNING
            }),
            node_id: Some(node.into()),
            status: Some(TaskStatus {
                state: Some(state),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn manager_info() -> SystemInfo {
        SystemInfo {
            server_version: Some("20.10.24+dfsg1".into()),
            ncpu: Some(2),
            mem_total: Some(4 * 1024 * 1024 * 1024 + 5),
            containers_running: Some(3),
            docker_root_dir: Some("/var/lib/docker".into()),
            swarm: Some(DockerSwarm {
                node_id: Some("n1".into()),
                node_addr: Some("10.0.0.1".into()),
                local_node_state: Some(LocalNodeState::ACTIVE),
                control_available: Some(true),
                error: Some(String::new()),
                cluster: Some(ClusterInfo {
                    id: Some("c1".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_managers_report_lists_nodes_with_running_tasks() {
        let nodes = [
            node("n2", "b", NodeSpecRoleEnum::WORKER, None),
            node("n1", "a", NodeSpecRoleEnum::MANAGER, Some(true)),
        ];
        let tasks = [
            task("n2", TaskState::RUNNING),
            task("n2", TaskState::RUNNING),
            task("n2", TaskState::SHUTDOWN),
            task("n1", TaskState::PREPARING),
        ];
        let info = engine_info(
            &manager_info(),
            "1.41",
            30,
            SwarmLists::Listed {
                nodes: &nodes,
                tasks: &tasks,
                services: &[web_service()],
            },
        );
        assert_eq!(info.version, "20.10.24+dfsg1");
        assert_eq!(info.api_version, "1.41");
        assert_eq!((info.cpus, info.memory_mib, info.disk_gib), (2, 4096, 30));
        assert_eq!(info.containers_running, 3);
        let swarm = &info.swarm;
        assert_eq!(swarm.state, "active");
        assert_eq!(swarm.node_id.as_deref(), Some("n1"));
        assert_eq!(swarm.cluster_id.as_deref(), Some("c1"));
        assert_eq!(swarm.node_addr.as_deref(), Some("10.0.0.1"));
        assert!(swarm.control_available);
        assert_eq!(swarm.error, None, "an empty error is no error");
        let nodes = swarm.nodes.as_ref().expect("a manager lists nodes");
        assert_eq!(
            nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["n1", "n2"],
            "sorted by hostname"
        );
        let (manager, worker) = (&nodes[0], &nodes[1]);
        assert_eq!(
            (manager.role.as_str(), manager.leader, manager.running_tasks),
            ("manager", true, 0)
        );
        assert_eq!(manager.reachability.as_deref(), Some("reachable"));
        assert_eq!(
            (manager.status.as_str(), manager.addr.as_str()),
            ("ready", "10.0.0.1")
        );
        assert_eq!(
            (worker.role.as_str(), worker.availability.as_str()),
            ("worker", "active")
        );
        assert_eq!(
            (worker.leader, worker.reachability.as_deref()),
            (false, None)
        );
        assert_eq!(worker.running_tasks, 2);
        assert_eq!(worker.version, 9);
        assert_eq!(worker.labels.get("zone").map(String::as_str), Some("a"));
        let services = swarm.services.as_ref().expect("a manager lists services");
        assert_eq!(services.len(), 1);
        let web = &services[0];
        assert_eq!(
            (web.name.as_str(), web.mode.as_str(), web.replicas),
            ("web", "replicated", Some(3))
        );
        assert_eq!(
            web.tasks.len(),
            3,
            "the shut-down task is not live: {web:?}"
        );
        assert_eq!(web.tasks.iter().filter(|t| t.state == "running").count(), 2);
        assert_eq!(
            web.ports,
            [PublishedPortInfo {
                target: 80,
                published: 0,
                protocol: "tcp".into(),
                mode: "host".into()
            }]
        );
    }

    fn web_service() -> Service {
        use bollard::models::{
            EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
            EndpointSpec, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
        };
        Service {
            id: Some("s1".into()),
            spec: Some(ServiceSpec {
                name: Some("web".into()),
                mode: Some(ServiceSpecMode {
                    replicated: Some(ServiceSpecModeReplicated { replicas: Some(3) }),
                    ..Default::default()
                }),
                endpoint_spec: Some(EndpointSpec {
                    ports: Some(vec![EndpointPortConfig {
                        protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                        target_port: Some(80),
                        publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_worker_or_a_lone_engine_lists_no_nodes() {
        let lone = SystemInfo {
            server_version: Some("20.10.24".into()),
            swarm: Some(DockerSwarm {
                local_node_state: Some(LocalNodeState::INACTIVE),
                node_id: Some(String::new()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let info = engine_info(&lone, "1.41", 1, SwarmLists::NotAManager);
        assert_eq!(info.swarm.state, "inactive");
        assert_eq!(info.swarm.node_id, None);
        assert_eq!(info.swarm.nodes, None);
        assert_eq!((info.cpus, info.memory_mib), (0, 0));
        let no_swarm = engine_info(&SystemInfo::default(), "1.41", 1, SwarmLists::NotAManager);
        assert_eq!(no_swarm.swarm.state, "inactive");
    }

    #[test]
    fn a_failed_listing_is_the_swarm_error() {
        let info = engine_info(
            &manager_info(),
            "1.41",
            1,
            SwarmLists::Failed("listing: timed out"),
        );
        assert_eq!(info.swarm.nodes, None);
        assert_eq!(info.swarm.error.as_deref(), Some("listing: timed out"));
    }

    #[test]
    fn updates_are_described_without_secrets() {
        let labels = BTreeMap::from([("a".to_owned(), "1".to_owned())]);
        assert_eq!(
            describe_update(
                Some(NodeSpecRoleEnum::MANAGER),
                Some(NodeSpecAvailabilityEnum::DRAIN),
                &labels
            ),
            "role manager, availability drain, labels a=1"
        );
        assert_eq!(describe_update(None, None, &BTreeMap::new()), "as asked");
    }
}
