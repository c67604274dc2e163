//! `flotilla agent`: the node daemon ([`flotilla_agent`]) as a subcommand of the one binary,
//! so a node downloads a single file from its server (`GET /download/flotilla`).
//!
//! Every setting comes from a flag or from the environment variable the node's bootstrap
//! writes to `/etc/flotilla/node.env` (which the systemd unit loads), so the unit's command
//! line is just `flotilla agent`. The agent stops cleanly on Ctrl-C or SIGTERM.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use flotilla_agent::AgentConfig;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The Flotilla server's URL.
    #[arg(long, env = "FLOTILLA_SERVER")]
    server: String,
    /// The node's cluster uuid; without it the node registers as a bring-your-own node
    /// (with a token from `flotilla node byo`).
    #[arg(long, env = "FLOTILLA_CLUSTER", requires_all = ["slot", "first_slot", "count"])]
    cluster: Option<String>,
    /// The node's slot in its cluster.
    #[arg(long, env = "FLOTILLA_SLOT", requires = "cluster")]
    slot: Option<u32>,
    /// First slot of the node's launch batch.
    #[arg(long, env = "FLOTILLA_FIRST_SLOT", requires = "cluster")]
    first_slot: Option<u32>,
    /// Number of nodes in the node's launch batch.
    #[arg(long, env = "FLOTILLA_COUNT", requires = "cluster")]
    count: Option<u32>,
    /// The registration token: the launch batch's, or a bring-your-own-node token (not
    /// needed once a credential is saved).
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where the node's uuid and credential are kept (created with mode 0600).
    #[arg(
        long,
        env = "FLOTILLA_AGENT_STATE",
        default_value = "/var/lib/flotilla/agent.json"
    )]
    state_file: PathBuf,
    /// Source address of connections to the server.
    #[arg(long, env = "FLOTILLA_BIND_IP")]
    bind_ip: Option<IpAddr>,
    /// Seconds between heartbeats.
    #[arg(long, env = "FLOTILLA_HEARTBEAT_SECONDS", default_value_t = 10.0)]
    heartbeat_seconds: f64,
    /// The node's private addresses (repeat; default: the bind address, else the host's).
    #[arg(long = "private-ip")]
    private_ips: Vec<String>,
    /// PEM certificates to trust for an https server, besides the system's roots (for a
    /// private CA or a self-signed server certificate).
    #[arg(long, env = "FLOTILLA_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// The node's Docker engine: `unix:///path/to/docker.sock` (or a socket path).
    #[arg(long, env = "DOCKER_HOST", default_value = flotilla_agent::engine::DEFAULT_DOCKER_HOST)]
    docker_host: String,
    /// Take an engine report every this many heartbeats (sent only when it changed).
    #[arg(long, env = "FLOTILLA_REPORT_EVERY", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    report_every: u32,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if !(args.heartbeat_seconds.is_finite() && args.heartbeat_seconds > 0.0) {
        anyhow::bail!("--heartbeat-seconds must be a positive number");
    }
    let config = AgentConfig {
        server: args.server,
        cluster: args.cluster,
        slot: args.slot.unwrap_or(0),
        first_slot: args.first_slot.unwrap_or(0),
        count: args.count.unwrap_or(0),
        token: args.token.filter(|t| !t.is_empty()),
        state_file: args.state_file,
        bind_ip: args.bind_ip,
        heartbeat_interval: Duration::from_secs_f64(args.heartbeat_seconds),
        private_ips: args.private_ips,
        ca_cert: args.ca_cert,
        docker_host: args.docker_host,
        report_every: args.report_every,
    };
    tokio::select! {
        result = flotilla_agent::run(config) => result.map(|()| ExitCode::SUCCESS),
        () = shutdown_signal() => Ok(ExitCode::SUCCESS),
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = interrupt.await;
        }
    }
}
