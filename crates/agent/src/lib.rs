//! `flotilla agent`: the daemon on every node. It registers the node with the Flotilla
//! server, keeps telling it the node is alive, reports what the node's Docker engine says
//! and carries out the swarm steps the server hands it ([`engine`], [`worker`]).
//!
//! Design decisions:
//! * The agent talks only to the server's agent API (`flotilla_api::agent`); it never calls
//!   AWS and never opens the database.
//! * Its configuration is what the node's bootstrap wrote to `/etc/flotilla/node.env`
//!   (cluster, slot, the batch's first slot and count, the batch registration token and the
//!   server's URL). The batch token is good once per node; what registration returns (the
//!   node's uuid and its own long-lived credential) is kept in a state file (mode 0600), so
//!   a restarted agent re-registers with its credential and keeps its identity.
//! * A 401 on the credential (the server lost or never had it) falls back to the batch token
//!   once; a refused batch token (401/403) ends the agent with an error — retrying cannot
//!   help. Any other failure is retried with back-off 1, 2, 4 … 60 s, forever: the node is
//!   useless without the server, and the server may simply be restarting.
//! * Heartbeats go every `heartbeat_interval`; a 401, 403 or 404 on one sends the agent back
//!   to registration.
//! * The node's Docker engine is reached through its API on the unix socket of
//!   `DOCKER_HOST` ([`engine`]); registration sends its version, when it answers.
//! * Heartbeats never wait for the engine: a heartbeat answer's tasks go to the session's
//!   engine worker ([`worker`]), which runs them one batch at a time, sends their results
//!   with a fresh engine report, and between batches sends a report every `report_every`
//!   ticks when it differs from the last one the server accepted.
//! * No secret is logged: the credential and the batch token never appear in a tracing
//!   field, and join tokens are redacted by the wire types' `Debug` and scrubbed from error
//!   messages (the binary also keeps `bollard`'s own debug logging, which prints request and
//!   answer bodies, off).
//! * An `https` server is verified against the system's roots plus `ca_cert` ([`tls`]); a
//!   certificate that does not verify ends the agent at start with an error saying so,
//!   rather than being retried forever or skipped.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use flotilla_api::AgentClient;
use flotilla_api::agent::{AgentNode, Registration};
use flotilla_api::client::Error as ApiError;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

pub mod engine;
pub mod proxy;
pub mod tls;
pub mod worker;

use engine::Engine;
use worker::{Inflight, Worker};

/// The version agents report.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Longest wait for the engine's version before a registration goes without it.
pub const REGISTRATION_VERSION_WAIT: Duration = Duration::from_secs(2);
/// Longest pause between registration attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Everything an agent needs.
#[derive(Clone)]
pub struct AgentConfig {
    /// The server's base URL (`FLOTILLA_SERVER`).
    pub server: String,
    /// The node's cluster; `None` for a bring-your-own node (whose token is a single-use
    /// `POST token/` token, and which has no slot or batch).
    pub cluster: Option<String>,
    pub slot: u32,
    pub first_slot: u32,
    pub count: u32,
    /// The batch registration token; not needed once a credential is saved.
    pub token: Option<String>,
    /// Where the node's uuid and credential are kept.
    pub state_file: PathBuf,
    /// Source address of outgoing connections (tests give each agent its own 127.0.0.x).
    pub bind_ip: Option<IpAddr>,
    pub heartbeat_interval: Duration,
    /// Addresses reported as the node's private IPs; empty: the bind address, else the
    /// host's addresses (`hostname -I`).
    pub private_ips: Vec<String>,
    /// A PEM file of certificates to trust besides the system's roots (`FLOTILLA_CA_CERT`),
    /// for a server with a private CA or a self-signed certificate ([`tls`]).
    pub ca_cert: Option<PathBuf>,
    /// The node's Docker engine (`DOCKER_HOST`): `unix:///path` or a path; empty for
    /// [`engine::DEFAULT_DOCKER_HOST`].
    pub docker_host: String,
    /// Take an engine report every this many heartbeat ticks (at least 1); it is sent only
    /// when it changed.
    pub report_every: u32,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field("cluster", &self.cluster)
            .field("slot", &self.slot)
            .field("first_slot", &self.first_slot)
            .field("count", &self.count)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("state_file", &self.state_file)
            .field("bind_ip", &self.bind_ip)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("private_ips", &self.private_ips)
            .field("ca_cert", &self.ca_cert)
            .field("docker_host", &self.docker_host)
            .field("report_every", &self.report_every)
            .finish()
    }
}

/// What the agent keeps between runs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    pub uuid: String,
    pub credential: String,
    pub cluster: String,
    pub slot: u32,
}

impl std::fmt::Debug for SavedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedState")
            .field("uuid", &self.uuid)
            .field("cluster", &self.cluster)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

/// Reads the state file; a missing, unreadable or foreign (other cluster or slot) file
/// counts as no state.
pub fn load_state(path: &Path, cluster: &str, slot: u32) -> Option<SavedState> {
    let text = std::fs::read_to_string(path).ok()?;
    let state: SavedState = match serde_json::from_str(&text) {
        Ok(state) => state,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "ignoring an unreadable state file");
            return None;
        }
    };
    (state.cluster == cluster && state.slot == slot).then_some(state)
}

/// Writes the state file owner-only, atomically (temporary file, then rename).
pub fn save_state(path: &Path, state: &SavedState) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.write_all(serde_json::to_string_pretty(state)?.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

async fn host_addresses() -> Vec<String> {
    let Ok(output) = tokio::process::Command::new("hostname")
        .arg("-I")
        .output()
        .await
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter(|a| a.parse::<IpAddr>().is_ok())
        .map(str::to_owned)
        .collect()
}

/// The next pause of the back-off 1, 2, 4 … [`MAX_BACKOFF`].
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(MAX_BACKOFF)
}

/// An answer the agent understood: the status and the body's `error`, if any.
struct Refusal {
    status: StatusCode,
    message: String,
}

struct Agent {
    config: AgentConfig,
    client: AgentClient,
    saved: Option<SavedState>,
    private_ips: Vec<String>,
    engine: Arc<Engine>,
    /// Sent with every registration attempt of this process ([`Registration::nonce`]).
    nonce: String,
}

impl Refusal {
    /// The answer behind `error`; `None` when there was none (the server is unreachable).
    fn of(error: &ApiError) -> Option<Refusal> {
        let status = StatusCode::from_u16(error.status()?).ok()?;
        let message = match error {
            ApiError::Refused { message, .. } => message.clone(),
            _ => error.to_string(),
        };
        Some(Refusal { status, message })
    }
}

impl Agent {
    /// One registration attempt. `Ok(Err(refusal))` is an answer other than success.
    async fn register_once(&self, token: &str) -> anyhow::Result<Result<AgentNode, Refusal>> {
        let body = Registration {
            agent_version: AGENT_VERSION.to_owned(),
            cluster: self.config.cluster.clone(),
            slot: self.config.slot,
            first_slot: self.config.first_slot,
            count: self.config.count,
            private_ips: self.private_ips.clone(),
            // A hung engine delays registration by this much at most; the version also
            // reaches the server with every engine report.
            docker_version: tokio::time::timeout(REGISTRATION_VERSION_WAIT, self.engine.version())
                .await
                .ok()
                .flatten(),
            nonce: Some(self.nonce.clone()),
        };
        match self.client.register(token, &body).await {
            Ok(node) => Ok(Ok(node)),
            Err(error) => match Refusal::of(&error) {
                Some(refusal) => Ok(Err(refusal)),
                None => Err(error.into()),
            },
        }
    }

    /// Registers (or re-registers), retrying until it succeeds or is refused for good.
    async fn register(&mut self) -> anyhow::Result<AgentNode> {
        let mut delay = Duration::from_secs(1);
        let mut fell_back = false;
        loop {
            let (token, with_credential) = match (&self.saved, &self.config.token) {
                (Some(saved), _) => (saved.credential.clone(), true),
                (None, Some(token)) => (token.clone(), false),
                (None, None) => bail!(
                    "no saved credential in {} and no registration token (FLOTILLA_TOKEN)",
                    self.config.state_file.display()
                ),
            };
            let refusal = match self.register_once(&token).await {
                Ok(Ok(node)) => {
                    match (&node.credential, with_credential) {
                        (Some(credential), _) => {
                            let state = SavedState {
                                uuid: node.uuid.clone(),
                                credential: credential.clone(),
                                cluster: self.config.cluster.clone().unwrap_or_default(),
                                slot: self.config.slot,
                            };
                            save_state(&self.config.state_file, &state)?;
                            self.saved = Some(state);
                        }
                        (None, true) => {}
                        (None, false) => {
                            bail!("the server registered the node but sent no credential")
                        }
                    }
                    tracing::info!(node = node.uuid, state = node.state, public_ip = ?node.public_ip, "registered");
                    return Ok(node);
                }
                Ok(Err(refusal)) => refusal,
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "registration failed; retrying in {delay:?}"
                    );
                    tokio::time::sleep(delay).await;
                    delay = next_backoff(delay);
                    continue;
                }
            };
            match refusal.status {
                StatusCode::UNAUTHORIZED if with_credential && !fell_back => {
                    tracing::warn!(
                        message = refusal.message,
                        "the saved credential was refused; registering with the batch token"
                    );
                    fell_back = true;
                    self.saved = None;
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => bail!(
                    "registration refused ({}): {}",
                    refusal.status,
                    refusal.message
                ),
                status => {
                    tracing::warn!(%status, message = refusal.message, "registration failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = next_backoff(delay);
                }
            }
        }
    }

    /// Sends heartbeats until the server no longer accepts the credential; the session's
    /// engine worker runs beside them and ends with them.
    async fn heartbeats(&self, uuid: &str) -> anyhow::Result<()> {
        let Some(saved) = &self.saved else {
            return Ok(());
        };
        let inflight = Inflight::default();
        let (batches, receiver) = tokio::sync::mpsc::unbounded_channel();
        let (manager, is_manager) = tokio::sync::watch::channel(false);
        let worker = Worker {
            engine: self.engine.clone(),
            client: self.client.clone(),
            uuid: uuid.to_owned(),
            credential: saved.credential.clone(),
            inflight: inflight.clone(),
            report_interval: self.config.heartbeat_interval * self.config.report_every.max(1),
            manager,
        };
        let _worker = AbortOnDrop(tokio::spawn(worker.run(receiver)));
        // The client bundles' Docker API proxy, while this engine is a swarm manager.
        let _proxy = match self.engine.socket() {
            Ok(socket) => Some(AbortOnDrop(tokio::spawn(proxy::supervise(
                proxy::ProxyContext {
                    client: self.client.clone(),
                    uuid: uuid.to_owned(),
                    credential: saved.credential.clone(),
                    socket: socket.to_owned(),
                    addresses: self.private_ips.clone(),
                },
                is_manager,
            )))),
            Err(_) => None,
        };
        let mut ticker = tokio::time::interval(self.config.heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.client.heartbeat(uuid, &saved.credential).await {
                Ok(reply) => {
                    let batch = inflight.admit(reply.tasks);
                    if !batch.is_empty() {
                        let ids: Vec<&str> = batch.iter().map(|t| t.id.as_str()).collect();
                        tracing::info!(tasks = ?ids, "the server handed over tasks");
                        if batches.send(batch).is_err() {
                            tracing::error!(
                                "the engine worker has stopped; tasks are not carried out"
                            );
                        }
                    }
                }
                Err(error @ ApiError::Decode { .. }) => {
                    tracing::warn!(error = format!("{error:#}"), "unexpected heartbeat answer");
                }
                Err(error) => {
                    let Some(refusal) = Refusal::of(&error) else {
                        tracing::warn!(error = format!("{error:#}"), "heartbeat failed");
                        continue;
                    };
                    if matches!(
                        refusal.status,
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
                    ) {
                        tracing::warn!(status = %refusal.status, message = refusal.message, "heartbeat refused; registering again");
                        return Ok(());
                    }
                    tracing::warn!(status = %refusal.status, message = refusal.message, "heartbeat failed");
                }
            }
        }
    }
}

/// Aborts a spawned task when dropped: a session's worker ends with its session.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Ends the agent when the server's certificate does not verify: retrying cannot help, and
/// verification is never skipped. Any other failure (the server is down) is left to the
/// registration loop and its back-off.
async fn check_certificate(client: &AgentClient, server: &str) -> anyhow::Result<()> {
    if !server.starts_with("https:") {
        return Ok(());
    }
    if let Err(error) = client.ping().await
        && let Some(reason) = tls::certificate_error(&error)
    {
        bail!(
            "the server's TLS certificate at {server} is not trusted ({reason}); give the CA that signed it with --ca-cert (FLOTILLA_CA_CERT)"
        );
    }
    Ok(())
}

/// Runs the agent until a registration is refused for good (an error); otherwise forever.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let engine = Arc::new(Engine::new(&config.docker_host));
    match engine.socket() {
        Ok(socket) => tracing::debug!(socket = %socket.display(), "the Docker engine's socket"),
        Err(why) => tracing::error!(why, "no Docker engine: it is reported as down"),
    }
    let mut builder = reqwest::Client::builder()
        .user_agent(format!("flotilla-agent/{AGENT_VERSION}"))
        .timeout(Duration::from_secs(30))
        .use_preconfigured_tls(tls::client_config(config.ca_cert.as_deref())?);
    if let Some(ip) = config.bind_ip {
        builder = builder.local_address(ip);
    }
    let http = builder.build().context("building the HTTP client")?;
    let client = AgentClient::new(config.server.clone(), http);
    check_certificate(&client, &config.server).await?;
    let private_ips = if !config.private_ips.is_empty() {
        config.private_ips.clone()
    } else if let Some(ip) = config.bind_ip {
        vec![ip.to_string()]
    } else {
        host_addresses().await
    };
    let saved = load_state(
        &config.state_file,
        config.cluster.as_deref().unwrap_or_default(),
        config.slot,
    );
    let mut agent = Agent {
        config,
        client,
        saved,
        private_ips,
        engine,
        nonce: uuid::Uuid::new_v4().simple().to_string(),
    };
    loop {
        let node = agent.register().await?;
        agent.heartbeats(&node.uuid).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let mut delay = Duration::from_secs(1);
        let mut seen = vec![delay.as_secs()];
        for _ in 0..8 {
            delay = next_backoff(delay);
            seen.push(delay.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn state_is_private_and_belongs_to_its_node() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sub/agent.json");
        let state = SavedState {
            uuid: "u".into(),
            credential: "secret".into(),
            cluster: "c".into(),
            slot: 2,
        };
        save_state(&path, &state).expect("save");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_state(&path, "c", 2), Some(state.clone()));
        assert_eq!(load_state(&path, "c", 3), None, "another slot's state");
        assert!(!format!("{state:?}").contains("secret"));
    }
}
