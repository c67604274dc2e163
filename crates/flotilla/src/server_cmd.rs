//! `flotilla server`: the control plane — the Docker Cloud API v1 over HTTP, the SQLite store
//! and the reconcilers — for one AWS account.
//!
//! State lives in `--data-dir` (default `$XDG_DATA_HOME/flotilla`, else
//! `~/.local/share/flotilla`), created owner-only. The first start creates the admin user and
//! prints its API key once; only a hash is stored.
//!
//! AWS credentials: keys linked through the API (`flotilla provider link aws`), stored
//! encrypted with `secret.key` in the data directory, take precedence; without them the
//! server uses `--profile` or the standard chain. A link replaces the keys while the
//! server runs ([`flotilla_aws::AwsAccount`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::launch_options::LaunchOptions;
use anyhow::Context;
use clap::Args;
use flotilla_aws::{AwsAccount, AwsSettings, StaticCredentials};
use flotilla_core::bootstrap::{AgentSource, user_data};
use flotilla_server::{NodeReady, ServerConfig, UserDataRequest};

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "FLOTILLA_LISTEN", default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Directory for the database and keys.
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The URL nodes reach this server at (written into their user data).
    #[arg(long, env = "FLOTILLA_PUBLIC_URL")]
    public_url: Option<String>,
    /// AWS endpoint for every service (an emulator such as moto).
    #[arg(long, env = "FLOTILLA_AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    /// Named AWS profile; without it the standard credential chain is used.
    #[arg(long, env = "AWS_PROFILE")]
    profile: Option<String>,
    #[command(flatten)]
    launch: LaunchOptions,
    /// When a node counts as Deployed: when its agent registers (`agent`), or as soon as its
    /// instance runs (`running`, for set-ups without agents).
    #[arg(long, env = "FLOTILLA_NODE_READY", value_enum, default_value_t = NodeReadyArg::Agent)]
    node_ready: NodeReadyArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum NodeReadyArg {
    Agent,
    Running,
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(base) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(base).join("flotilla"));
    }
    let home =
        std::env::var_os("HOME").context("neither --data-dir, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/flotilla"))
}

fn create_private_dir(path: &PathBuf) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .with_context(|| format!("creating {}", path.display()))?;
    }
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "data directory is readable by others");
    }
    Ok(())
}

pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    create_private_dir(&data_dir)?;
    let mut config = ServerConfig::new(data_dir.join("flotilla.db"));
    config.listen = args.listen;
    let public_url = args
        .public_url
        .unwrap_or_else(|| format!("http://{}", args.listen));
    config.reconcile.user_data = Arc::new(move |request: &UserDataRequest<'_>| {
        let agent = AgentSource {
            server_url: public_url.clone(),
            token: request.registration_token.to_owned(),
        };
        user_data(
            request.cluster_uuid,
            request.nodes.first().map(|n| n.slot).unwrap_or(0),
            u32::try_from(request.nodes.len()).unwrap_or(u32::MAX),
            Some(&agent),
        )
    });
    config.reconcile.node_ready = match args.node_ready {
        NodeReadyArg::Agent => NodeReady::AgentRegistered,
        NodeReadyArg::Running => NodeReady::InstanceRunning,
    };
    config.reconcile.allowed_azs = args.launch.allowed_azs();
    config.reconcile.ingress = args.launch.ingress();
    config.reconcile.image_id = args.launch.image_id;
    config.reconcile.key_name = args.launch.key_name;

    let installation = flotilla_server::initialize(&config).await?;
    let static_credentials = installation.aws_keys.as_ref().map(|keys| {
        // The access key id is not printed: logs are often shipped where keys must not go.
        eprintln!("flotilla server: using the AWS keys linked through the API");
        StaticCredentials {
            access_key_id: keys.access_key_id.clone(),
            secret_access_key: keys.secret_access_key.clone(),
            session_token: keys.session_token.clone(),
        }
    });
    let aws = AwsAccount::connect(AwsSettings {
        owner: installation.owner_id.clone(),
        endpoint_url: args.endpoint_url,
        profile: args.profile,
        static_credentials,
        ..AwsSettings::default()
    })
    .await;
    eprintln!(
        "flotilla server: data in {}, listening on http://{}",
        data_dir.display(),
        config.listen
    );
    flotilla_server::serve(config, installation, Arc::new(aws)).await?;
    Ok(ExitCode::SUCCESS)
}
