//! `flotilla`: the one binary.
//!
//! `flotilla server` runs the control plane. The engine commands (`flotilla engine …`) drive
//! AWS directly with no server and no database: a cluster is named by (owner, region, name)
//! and everything about it is rediscovered from AWS tags on every run, so each command is an
//! idempotent "make it so". The agent and the Docker Cloud-style client commands join this
//! binary as their own subcommands.

mod agent_cmd;
mod client;
mod engine;
mod launch_options;
mod lifecycle_options;
mod output;
mod server_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "A self-hosted control plane for Docker node clusters on AWS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane: the Docker Cloud API v1, the store and the reconcilers.
    Server(Box<server_cmd::ServerArgs>),
    /// Drive AWS directly, with no server: validate credentials, create, scale and remove clusters.
    Engine(engine::EngineArgs),
    /// Run a node's agent: register the node with its server and send heartbeats.
    Agent(agent_cmd::AgentArgs),
    /// Node clusters on a Flotilla server (like `docker-cloud nodecluster`).
    Nodecluster(client::commands::NodeClusterArgs),
    /// Docker swarms on a Flotilla server: managers and workers as node clusters.
    Swarm(client::swarm::SwarmArgs),
    /// Nodes on a Flotilla server (like `docker-cloud node`).
    Node(client::commands::NodeArgs),
    /// The audit trail: actions and their logs (like `docker-cloud action`).
    Action(client::commands::ActionArgs),
    /// Print the events stream (like `docker-cloud event`).
    Event(client::commands::EventArgs),
    /// Link an AWS account to a Flotilla server (`provider link aws`).
    Provider(client::provider::ProviderArgs),
    /// Organizations: they own node clusters and swarms.
    Org(client::access::OrgArgs),
    /// Teams of an organization and their members.
    Team(client::access::TeamArgs),
    /// Users, their passwords and API keys.
    User(client::access::UserArgs),
    /// Grants of a role (view, operate, manage, admin) to a team.
    Grant(client::access::GrantArgs),
    /// Client bundles: certificates with which your own `docker` CLI reaches a swarm.
    Bundle(client::bundle::BundleArgs),
    /// LDAP / Active Directory sign-in: settings and sync (server administrator).
    Ldap(client::access::LdapArgs),
}

/// The most `bollard` (the agent's Docker API client) may log; see `main`.
const BOLLARD_LOG: &str = "bollard=warn";

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,aws_config=error"))
                // bollard logs request and answer bodies at debug level, and a swarm join's
                // body carries its join token: never let it log below warnings.
                .add_directive(BOLLARD_LOG.parse().expect("a valid directive")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server_cmd::run(*args).await,
            Command::Engine(args) => engine::run(args).await,
            Command::Agent(args) => agent_cmd::run(args).await,
            Command::Nodecluster(args) => client::commands::nodecluster(args).await,
            Command::Node(args) => client::commands::node(args).await,
            Command::Swarm(args) => client::swarm::swarm(args).await,
            Command::Action(args) => client::commands::action(args).await,
            Command::Event(args) => client::commands::event(args).await,
            Command::Provider(args) => client::provider::provider(args).await,
            Command::Org(args) => client::access::org(args).await,
            Command::Team(args) => client::access::team(args).await,
            Command::User(args) => client::access::user(args).await,
            Command::Grant(args) => client::access::grant(args).await,
            Command::Bundle(args) => client::bundle::bundle(args).await,
            Command::Ldap(args) => client::access::ldap(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
