//! The instance runner: a real `flotilla agent` process for every running EC2 instance that
//! moto holds for Flotilla, so end-to-end tests see nodes register as they would on AWS.
//!
//! Design decisions:
//! * The runner reads only what a real node would have: the instance's user data (fetched
//!   with `DescribeInstanceAttribute userData`, base64) and EC2's `AmiLaunchIndex`. It takes
//!   the `FLOTILLA_*=value` assignments at the top of the bootstrap script and computes
//!   slot = `FLOTILLA_FIRST_SLOT` + launch index, exactly as the script does with IMDSv2. So
//!   a wrong token, slot or server URL in the user data fails the test.
//! * Each agent binds its own loopback source address 127.0.0.N (`--bind-ip`; N unique per
//!   instance within a runner), so the server sees a distinct "public IP" per node. The
//!   whole 127.0.0.0/8 block is local on Linux, so no set-up is needed.
//! * Polling (every ~200 ms) rather than hooking into moto: instances started by anything
//!   (the server, a test, a retried launch) get an agent, and one that stops or terminates
//!   loses it, which is how a node's agent dies with its machine.
//! * Agents are plain `std::process::Child`ren, killed and reaped in [`Drop`], with their
//!   output in per-instance log files inside the runner's temporary directory
//!   ([`InstanceRunner::log`]), which goes with it.
//! * This is test-only code, so it may name `aws_sdk_ec2` types; production code reaches
//!   AWS only through `flotilla-aws`.
//!
//! Docker mode ([`RunnerConfig::docker`]): every running instance boots as a
//! [`crate::host::Host`] — a network namespace with the instance's `PrivateIpAddress`, its
//! `PrivateDnsName` as hostname, and its own `dockerd` — on one [`HostNetwork`] per runner,
//! and its agent runs inside the host's namespaces (`nsenter` into the host's network, mount
//! and UTS namespaces), with `DOCKER_HOST` set to the host's engine and `--private-ip` set
//! to the instance's address. Decisions:
//! * The server listens on 127.0.0.1, which inside a host is the host's own loopback. So the
//!   runner forwards: for each distinct server address it listens on the network's gateway
//!   (same port when free) and rewrites the agent's `--server` to it. The forwarder opens the
//!   upstream connection from the agent's own 127.0.0.N (looked up by the connection's source,
//!   the host's private IP), so the server still sees one distinct "public IP" per node, as in
//!   plain mode, and [`InstanceRunner::agents`] and [`InstanceRunner::restart`] mean the same.
//! * Booting takes a few seconds, so it runs on a blocking thread, concurrently for several
//!   instances; the poller does not wait for it. A boot that fails is logged in the
//!   instance's log and not retried (the instance is held).
//! * An instance that stops running loses its agent and its whole host (a power-off: every
//!   process of the host dies at once, then its namespaces, veth, mounts and files go).
//! * The agent itself is not in the host's PID namespace: `nsenter` then execs it directly,
//!   so the runner's `Child` is the agent and killing it is exact.
//! * Limits: a forwarded `https` server URL names the gateway's address, so its certificate
//!   would have to cover that IP; an instance stopped and started again in moto gets a fresh
//!   host (an empty engine), not its old disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{Filter, InstanceAttributeName, InstanceStateName};
use base64::Engine as _;
use tokio::task::JoinHandle;

use crate::FaultProxy;
use crate::host::{Host, HostNetwork, HostSpec};

/// What the runner needs to know.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The EC2 endpoint to watch: moto itself (with `account`) or a proxy already pinned
    /// to the test's account.
    pub endpoint: String,
    /// Pins requests to this moto account (through a proxy of the runner's own).
    pub account: Option<String>,
    pub region: String,
    /// The `flotilla` executable the agents run.
    pub flotilla_bin: PathBuf,
    /// Overrides `FLOTILLA_SERVER` from the user data.
    pub server_url: Option<String>,
    /// The agents' heartbeat interval.
    pub heartbeat: Duration,
    pub poll_interval: Duration,
    /// Docker mode: every instance is a [`Host`] with its own engine (see the module docs).
    pub docker: bool,
}

impl RunnerConfig {
    pub fn new(endpoint: impl Into<String>, flotilla_bin: impl Into<PathBuf>) -> RunnerConfig {
        RunnerConfig {
            endpoint: endpoint.into(),
            account: None,
            region: "us-east-1".into(),
            flotilla_bin: flotilla_bin.into(),
            server_url: None,
            heartbeat: Duration::from_millis(500),
            poll_interval: Duration::from_millis(200),
            docker: false,
        }
    }
}

/// The `FLOTILLA_*` values of a bootstrap script, plus the instance's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBoot {
    pub server: String,
    pub cluster: String,
    pub first_slot: u32,
    pub count: u32,
    pub token: String,
    pub slot: u32,
}

/// Reads the `FLOTILLA_X=value` assignments of a bootstrap script (see
/// `flotilla_core::bootstrap`). `None` when one is missing.
pub fn parse_user_data(script: &str, launch_index: u32) -> Option<NodeBoot> {
    let values: HashMap<&str, &str> = script
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(name, value)| name.starts_with("FLOTILLA_") && !value.starts_with("$("))
        .collect();
    let number = |name: &str| values.get(name)?.trim().parse::<u32>().ok();
    let first_slot = number("FLOTILLA_FIRST_SLOT")?;
    Some(NodeBoot {
        server: (*values.get("FLOTILLA_SERVER")?).to_owned(),
        cluster: (*values.get("FLOTILLA_CLUSTER")?).to_owned(),
        first_slot,
        count: number("FLOTILLA_COUNT")?,
        token: (*values.get("FLOTILLA_TOKEN")?).to_owned(),
        slot: first_slot + launch_index,
    })
}

#[derive(Debug)]
struct AgentProcess {
    child: Child,
    ip: Ipv4Addr,
}

#[derive(Debug, Default)]
struct State {
    /// Instance id → its agent (running or exited).
    agents: HashMap<String, AgentProcess>,
    /// Instance id → what its user data says (fetched once).
    boots: HashMap<String, NodeBoot>,
    /// Instances whose agent a test stopped: not restarted by the poller.
    held: HashSet<String>,
    next_host: u32,
    /// Docker mode: instance id → its host.
    hosts: HashMap<String, Host>,
    /// Docker mode: instances whose host is booting.
    booting: HashSet<String>,
    /// Docker mode: instance id → the server URL its agent uses (through the forwarder).
    urls: HashMap<String, String>,
    /// The instances running at the last poll.
    running: HashSet<String>,
    /// The runner was dropped: a host that finishes booting is powered off at once.
    closed: bool,
    /// [`InstanceRunner::pause_boots`]: instances that never had an agent get none yet.
    boots_paused: bool,
}

/// Where an instance is, as EC2 describes it.
#[derive(Debug, Clone)]
struct Running {
    launch_index: u32,
    private_ip: Option<Ipv4Addr>,
    private_dns: Option<String>,
}

/// Docker mode's forwarder from the network's gateway to the server (see the module docs).
#[derive(Debug, Default)]
struct Forwards {
    /// A host's private IP → the loopback address its connections leave from.
    sources: Mutex<HashMap<Ipv4Addr, Ipv4Addr>>,
    /// Upstream → the gateway address that forwards to it, and its accept loop.
    listeners: Mutex<HashMap<SocketAddr, (SocketAddr, JoinHandle<()>)>>,
}

impl Forwards {
    fn sources(&self) -> std::sync::MutexGuard<'_, HashMap<Ipv4Addr, Ipv4Addr>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn listeners(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, (SocketAddr, JoinHandle<()>)>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `server` rewritten to an address on `gateway` that forwards to it.
    async fn forward(self: &Arc<Self>, gateway: Ipv4Addr, server: &str) -> anyhow::Result<String> {
        let mut url = url::Url::parse(server)?;
        let upstream = *url
            .socket_addrs(|| None)?
            .first()
            .ok_or_else(|| anyhow::anyhow!("{server} has no address"))?;
        let existing = self.listeners().get(&upstream).map(|(addr, _)| *addr);
        let local = match existing {
            Some(addr) => addr,
            None => {
                let listener = match tokio::net::TcpListener::bind((gateway, upstream.port())).await
                {
                    Ok(listener) => listener,
                    Err(_) => tokio::net::TcpListener::bind((gateway, 0)).await?,
                };
                let local = listener.local_addr()?;
                let task = tokio::spawn(accept_loop(self.clone(), listener, upstream));
                let mut listeners = self.listeners();
                match listeners.get(&upstream) {
                    // Another boot won the race: use its listener.
                    Some((addr, _)) => {
                        task.abort();
                        *addr
                    }
                    None => {
                        listeners.insert(upstream, (local, task));
                        local
                    }
                }
            }
        };
        url.set_ip_host(local.ip())
            .map_err(|()| anyhow::anyhow!("cannot rewrite {server}"))?;
        url.set_port(Some(local.port()))
            .map_err(|()| anyhow::anyhow!("cannot rewrite {server}"))?;
        Ok(url.as_str().trim_end_matches('/').to_owned())
    }
}

async fn accept_loop(
    forwards: Arc<Forwards>,
    listener: tokio::net::TcpListener,
    upstream: SocketAddr,
) {
    loop {
        let Ok((mut inbound, peer)) = listener.accept().await else {
            continue;
        };
        let source = match peer.ip() {
            std::net::IpAddr::V4(ip) => forwards.sources().get(&ip).copied(),
            std::net::IpAddr::V6(_) => None,
        };
        tokio::spawn(async move {
            let connect = async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                if let Some(source) = source {
                    socket.bind(SocketAddr::from((source, 0)))?;
                }
                socket.connect(upstream).await
            };
            if let Ok(mut outbound) = connect.await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[derive(Debug)]
struct Shared {
    config: RunnerConfig,
    dir: tempfile::TempDir,
    state: Mutex<State>,
    /// Docker mode: the hosts' network (taken in [`Drop`]).
    network: Mutex<Option<HostNetwork>>,
    forwards: Arc<Forwards>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_ip(state: &mut State) -> Ipv4Addr {
        // 127.0.0.2, 127.0.0.3, … skipping .0, .1 and .255 of every /24.
        loop {
            state.next_host += 1;
            let n = state.next_host + 1;
            let ip = Ipv4Addr::new(127, 0, (n >> 8) as u8, (n & 0xff) as u8);
            if !matches!(n & 0xff, 0 | 1 | 255) {
                return ip;
            }
        }
    }

    fn state_file(&self, instance_id: &str) -> PathBuf {
        self.dir.path().join(format!("{instance_id}.json"))
    }

    fn log_file(&self, instance_id: &str) -> PathBuf {
        self.dir.path().join(format!("{instance_id}.log"))
    }

    fn spawn(
        &self,
        state: &State,
        instance_id: &str,
        boot: &NodeBoot,
        ip: Ipv4Addr,
    ) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(instance_id))?;
        let mut server = self.config.server_url.as_deref().unwrap_or(&boot.server);
        let mut own_flags: Vec<String> = Vec::new();
        let mut command = match state.hosts.get(instance_id) {
            Some(host) => {
                // Inside the host: its connections leave from its private IP and come out
                // of the forwarder from `ip`.
                server = state
                    .urls
                    .get(instance_id)
                    .map(String::as_str)
                    .unwrap_or(server);
                self.forwards.sources().insert(host.private_ip(), ip);
                own_flags.extend(["--private-ip".into(), host.private_ip().to_string()]);
                let mut command = host.enter(false)?;
                command
                    .arg(&self.config.flotilla_bin)
                    .env("DOCKER_HOST", host.docker_host());
                command
            }
            None => {
                own_flags.extend(["--bind-ip".into(), ip.to_string()]);
                Command::new(&self.config.flotilla_bin)
            }
        };
        Ok(command
            .arg("agent")
            .args(["--server", server, "--cluster", &boot.cluster])
            .args(["--slot", &boot.slot.to_string()])
            .args(["--first-slot", &boot.first_slot.to_string()])
            .args(["--count", &boot.count.to_string()])
            .arg("--state-file")
            .arg(self.state_file(instance_id))
            .args(&own_flags)
            .args([
                "--heartbeat-seconds",
                &self.config.heartbeat.as_secs_f64().to_string(),
            ])
            // The token stays off the command line, as on a node (EnvironmentFile).
            .env("FLOTILLA_TOKEN", &boot.token)
            .env("FLOTILLA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?)
    }

    fn start_agent(&self, instance_id: &str, ip: Option<Ipv4Addr>) {
        let mut state = self.state();
        let Some(boot) = state.boots.get(instance_id).cloned() else {
            return;
        };
        // In docker mode an agent runs only inside its host (booted first), and only once.
        if self.config.docker
            && (!state.hosts.contains_key(instance_id) || state.agents.contains_key(instance_id))
        {
            return;
        }
        let ip = ip.unwrap_or_else(|| Self::next_ip(&mut state));
        match self.spawn(&state, instance_id, &boot, ip) {
            Ok(child) => {
                state
                    .agents
                    .insert(instance_id.to_owned(), AgentProcess { child, ip });
            }
            Err(error) => {
                eprintln!("instance runner: cannot start an agent for {instance_id}: {error}")
            }
        }
    }

    fn kill(&self, instance_id: &str) {
        let agent = self.state().agents.remove(instance_id);
        if let Some(mut agent) = agent {
            let _ = agent.child.kill();
            let _ = agent.child.wait();
        }
    }

    /// Kills an instance's agent and, in docker mode, powers its host off.
    fn power_off(&self, instance_id: &str) {
        self.kill(instance_id);
        let host = {
            let mut state = self.state();
            state.urls.remove(instance_id);
            state.hosts.remove(instance_id)
        };
        if let Some(host) = host {
            self.forwards.sources().remove(&host.private_ip());
            drop(host);
        }
    }

    fn network(&self) -> Option<HostNetwork> {
        self.network
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Docker mode: boots the instance's host in the background, then starts its agent.
    fn boot_host(self: &Arc<Self>, instance_id: &str, running: &Running) {
        let id = instance_id.to_owned();
        let Some(private_ip) = running.private_ip else {
            host_failed(self, &id, "the instance has no private IP");
            return;
        };
        let spec = match &running.private_dns {
            Some(name) if !name.is_empty() => HostSpec {
                private_ip,
                hostname: name.clone(),
            },
            _ => HostSpec::new(private_ip),
        };
        let Some(network) = self.network() else {
            return;
        };
        let server = {
            let state = self.state();
            let Some(boot) = state.boots.get(&id) else {
                return;
            };
            self.config
                .server_url
                .clone()
                .unwrap_or_else(|| boot.server.clone())
        };
        self.state().booting.insert(id.clone());
        let shared = self.clone();
        tokio::spawn(async move {
            let url = match shared.forwards.forward(network.gateway(), &server).await {
                Ok(url) => url,
                Err(error) => {
                    shared.state().booting.remove(&id);
                    host_failed(
                        &shared,
                        &id,
                        &format!("cannot forward to {server}: {error}"),
                    );
                    return;
                }
            };
            // Booting blocks for seconds; everything after it happens on that thread too,
            // so a runner being dropped (which waits for boots) never waits on the runtime.
            let _ = tokio::task::spawn_blocking(move || {
                let booted = network.boot(spec);
                let mut state = shared.state();
                state.booting.remove(&id);
                match booted {
                    Ok(host) if state.closed || !state.running.contains(&id) => {
                        drop(state);
                        drop(host);
                    }
                    Ok(host) => {
                        state.hosts.insert(id.clone(), host);
                        state.urls.insert(id.clone(), url);
                        let held = state.held.contains(&id);
                        drop(state);
                        if !held {
                            shared.start_agent(&id, None);
                        }
                    }
                    Err(error) => {
                        drop(state);
                        host_failed(&shared, &id, &format!("{error:#}"));
                    }
                }
            })
            .await;
        });
    }
}

/// A host that cannot boot: said in the instance's log, and not tried again.
fn host_failed(shared: &Shared, instance_id: &str, why: &str) {
    use std::io::Write as _;
    eprintln!("instance runner: cannot boot a host for {instance_id}: {why}");
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(shared.log_file(instance_id))
    {
        let _ = writeln!(log, "instance runner: cannot boot a host: {why}");
    }
    shared.state().held.insert(instance_id.to_owned());
}

/// See the module docs. Kills every agent when dropped.
#[derive(Debug)]
pub struct InstanceRunner {
    shared: Arc<Shared>,
    poller: JoinHandle<()>,
    _proxy: Option<FaultProxy>,
}

impl InstanceRunner {
    /// Starts watching moto. Needs a tokio runtime.
    pub async fn start(config: RunnerConfig) -> InstanceRunner {
        let proxy = match &config.account {
            Some(account) => Some(FaultProxy::start(&config.endpoint, Some(account.clone())).await),
            None => None,
        };
        let endpoint = proxy
            .as_ref()
            .map(FaultProxy::endpoint)
            .unwrap_or_else(|| config.endpoint.clone());
        let sdk_config = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new(
                "AKIARUNNER",
                "runner-secret",
                None,
                None,
                "instance-runner",
            ))
            .load()
            .await;
        let ec2 = aws_sdk_ec2::Client::new(&sdk_config);
        let network = config
            .docker
            .then(|| HostNetwork::new().expect("a host network for docker mode (needs root)"));
        let shared = Arc::new(Shared {
            network: Mutex::new(network),
            forwards: Arc::new(Forwards::default()),
            config,
            dir: tempfile::Builder::new()
                .prefix("flotilla-runner-")
                .tempdir()
                .expect("a temporary directory for the agents"),
            state: Mutex::new(State::default()),
        });
        let poller = tokio::spawn(poll(shared.clone(), ec2));
        InstanceRunner {
            shared,
            poller,
            _proxy: proxy,
        }
    }

    /// Instances with a live agent, and the agent's address.
    pub fn agents(&self) -> BTreeMap<String, Ipv4Addr> {
        let mut state = self.shared.state();
        state
            .agents
            .iter_mut()
            .filter_map(|(id, agent)| {
                matches!(agent.child.try_wait(), Ok(None)).then(|| (id.clone(), agent.ip))
            })
            .collect()
    }

    /// Instances whose agent exited on its own (for example, refused registration).
    pub fn exited(&self) -> Vec<String> {
        let mut state = self.shared.state();
        state
            .agents
            .iter_mut()
            .filter_map(|(id, agent)| {
                matches!(agent.child.try_wait(), Ok(Some(_))).then(|| id.clone())
            })
            .collect()
    }

    /// Kills an instance's agent and keeps it down (the node goes silent). In docker mode its
    /// host and engine keep running, as when only the agent's service dies.
    pub fn stop(&self, instance_id: &str) {
        self.shared.state().held.insert(instance_id.to_owned());
        self.shared.kill(instance_id);
    }

    /// Restarts an instance's agent (in docker mode inside the same host, once booted), with
    /// its saved state, from a new address as the server sees it (`None`: the next free one).
    pub fn restart(&self, instance_id: &str, new_ip: Option<Ipv4Addr>) {
        self.shared.state().held.insert(instance_id.to_owned());
        self.shared.kill(instance_id);
        self.shared.start_agent(instance_id, new_ip);
        self.shared.state().held.remove(instance_id);
    }

    /// While paused, an instance that never had an agent (or a host) gets none: its boot
    /// waits, as an instance that is slow to boot does, so a test can watch an action that
    /// is waiting for its nodes. Unpaused, they boot at the next poll.
    pub fn pause_boots(&self, paused: bool) {
        self.shared.state().boots_paused = paused;
    }

    /// Docker mode: instances with a booted host, and the host's private IP.
    pub fn hosts(&self) -> BTreeMap<String, Ipv4Addr> {
        self.shared
            .state()
            .hosts
            .iter()
            .map(|(id, host)| (id.clone(), host.private_ip()))
            .collect()
    }

    /// Docker mode: `unix://…` of an instance's engine (for `DOCKER_HOST` or `docker -H`).
    pub fn docker_host(&self, instance_id: &str) -> Option<String> {
        self.shared
            .state()
            .hosts
            .get(instance_id)
            .map(Host::docker_host)
    }

    /// Docker mode: the name of an instance's network namespace (`/run/netns/<name>`), for
    /// a client that must connect from inside the hosts' network.
    pub fn netns(&self, instance_id: &str) -> Option<String> {
        self.shared
            .state()
            .hosts
            .get(instance_id)
            .map(|host| host.netns().to_owned())
    }

    /// Docker mode: runs `docker <args>` against an instance's engine; its stdout.
    pub fn docker(&self, instance_id: &str, args: &[&str]) -> anyhow::Result<String> {
        let socket = self
            .shared
            .state()
            .hosts
            .get(instance_id)
            .map(Host::socket)
            .ok_or_else(|| anyhow::anyhow!("{instance_id} has no host"))?;
        crate::docker::docker(&socket, args)
    }

    /// Docker mode: the hosts' network (its gateway reaches them; see [`HostNetwork`]).
    pub fn network(&self) -> Option<HostNetwork> {
        self.shared.network()
    }

    /// What an instance's agent wrote so far.
    pub fn log(&self, instance_id: &str) -> String {
        std::fs::read_to_string(self.shared.log_file(instance_id)).unwrap_or_default()
    }

    /// Every agent's log, for a failing test's message.
    pub fn logs(&self) -> String {
        let ids: Vec<String> = self.shared.state().boots.keys().cloned().collect();
        ids.iter()
            .map(|id| format!("--- {id}\n{}", self.log(id)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for InstanceRunner {
    fn drop(&mut self) {
        self.poller.abort();
        self.shared.state().closed = true;
        let agents: Vec<String> = self.shared.state().agents.keys().cloned().collect();
        for id in agents {
            self.shared.kill(&id);
        }
        // Hosts still booting are powered off by their boot thread once it sees `closed`;
        // wait for them (bounded), so nothing outlives the runner.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !self.shared.state().booting.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let hosts: Vec<Host> = self.shared.state().hosts.drain().map(|(_, h)| h).collect();
        std::thread::scope(|s| {
            for host in hosts {
                s.spawn(move || drop(host));
            }
        });
        for (_, (_, task)) in self.shared.forwards.listeners().drain() {
            task.abort();
        }
        self.shared
            .network
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

async fn poll(shared: Arc<Shared>, ec2: aws_sdk_ec2::Client) {
    loop {
        if let Err(error) = poll_once(&shared, &ec2).await {
            eprintln!("instance runner: {error}");
        }
        tokio::time::sleep(shared.config.poll_interval).await;
    }
}

async fn user_data(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> anyhow::Result<String> {
    let attribute = ec2
        .describe_instance_attribute()
        .instance_id(instance_id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await?;
    let encoded = attribute
        .user_data()
        .and_then(|v| v.value())
        .unwrap_or_default();
    Ok(
        match base64::engine::general_purpose::STANDARD.decode(encoded.trim()) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => encoded.to_owned(),
        },
    )
}

async fn poll_once(shared: &Arc<Shared>, ec2: &aws_sdk_ec2::Client) -> anyhow::Result<()> {
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let page = ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag-key")
                    .values("flotilla:cluster")
                    .build(),
            )
            .set_next_token(token.take())
            .send()
            .await?;
        for instance in page.reservations().iter().flat_map(|r| r.instances()) {
            let (Some(id), Some(state)) = (
                instance.instance_id(),
                instance.state().and_then(|s| s.name()),
            ) else {
                continue;
            };
            if *state == InstanceStateName::Running {
                let index = instance.ami_launch_index().unwrap_or(0);
                running.insert(
                    id.to_owned(),
                    Running {
                        launch_index: u32::try_from(index).unwrap_or(0),
                        private_ip: instance.private_ip_address().and_then(|ip| ip.parse().ok()),
                        private_dns: instance.private_dns_name().map(str::to_owned),
                    },
                );
            }
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    // Agents (and hosts) of instances that are no longer running die with them.
    let gone: Vec<String> = {
        let mut state = shared.state();
        state.running = running.keys().cloned().collect();
        state
            .agents
            .keys()
            .chain(state.hosts.keys())
            .filter(|id| !running.contains_key(*id))
            .cloned()
            .collect::<HashSet<String>>()
            .into_iter()
            .collect()
    };
    if !gone.is_empty() {
        let shared = shared.clone();
        // A power-off blocks for a moment; not on the poller's thread.
        tokio::task::spawn_blocking(move || {
            for id in gone {
                shared.power_off(&id);
            }
        })
        .await?;
    }
    for (id, instance) in running {
        let index = instance.launch_index;
        let (known, has_agent, held, has_host, booting, paused) = {
            let state = shared.state();
            (
                state.boots.contains_key(&id),
                state.agents.contains_key(&id),
                state.held.contains(&id),
                state.hosts.contains_key(&id),
                state.booting.contains(&id),
                state.boots_paused,
            )
        };
        if has_agent || held || booting || (paused && !has_host) {
            continue;
        }
        if !known {
            let script = user_data(ec2, &id).await?;
            let Some(boot) = parse_user_data(&script, index) else {
                // Not a node with an agent (no server in its user data): nothing to run.
                shared.state().held.insert(id.clone());
                continue;
            };
            shared.state().boots.insert(id.clone(), boot);
        }
        if shared.config.docker && !has_host {
            shared.boot_host(&id, &instance);
        } else {
            shared.start_agent(&id, None);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_values_and_the_slot_are_read_from_the_script() {
        let script = "#!/bin/sh\nset -eu\nFLOTILLA_CLUSTER=c-1\nFLOTILLA_FIRST_SLOT=4\nFLOTILLA_COUNT=3\nFLOTILLA_SERVER=http://127.0.0.1:9\nFLOTILLA_TOKEN=ab\nFLOTILLA_SLOT=$(( FLOTILLA_FIRST_SLOT + $(imds ami-launch-index) ))\n";
        assert_eq!(
            parse_user_data(script, 2),
            Some(NodeBoot {
                server: "http://127.0.0.1:9".into(),
                cluster: "c-1".into(),
                first_slot: 4,
                count: 3,
                token: "ab".into(),
                slot: 6,
            })
        );
        assert_eq!(parse_user_data("#!/bin/sh\nFLOTILLA_CLUSTER=c\n", 0), None);
    }

    #[test]
    fn addresses_are_distinct_loopback_hosts() {
        let mut state = State::default();
        let ips: Vec<Ipv4Addr> = (0..600).map(|_| Shared::next_ip(&mut state)).collect();
        assert_eq!(ips[0], Ipv4Addr::new(127, 0, 0, 2));
        let unique: HashSet<&Ipv4Addr> = ips.iter().collect();
        assert_eq!(unique.len(), ips.len());
        assert!(
            ips.iter()
                .all(|ip| ip.octets()[3] != 0 && ip.octets()[3] != 255)
        );
    }
}
