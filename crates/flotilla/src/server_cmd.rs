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
//!
//! HTTPS: `--tls-cert` and `--tls-key` (both or neither) make the server speak TLS only
//! (rustls, [`flotilla_server::tls`]); a bad file stops the start with an error naming it.
//! Nodes then reach the server at `https://…` (the default `--public-url` follows the
//! scheme). When the certificate comes from a private CA, `--agent-ca-cert` names the PEM
//! the nodes must trust: it travels in their user data to `/etc/flotilla/ca.pem`
//! ([`flotilla_core::bootstrap`]). It is a flag of its own rather than guessed from the
//! chain: the last certificate of a chain is usually an intermediate, not the root nodes
//! should trust, and a public CA needs nothing at all.
//!
//! `flotilla server backup` and `flotilla server restore` copy a data directory's database
//! and key to one file and back ([`flotilla_server::backup`]); they are subcommands, so
//! `flotilla server [flags]` still runs the server. With a PostgreSQL `--database` they
//! refuse, saying to use `pg_dump`/`pg_restore` and to keep `secret.key`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::launch_options::LaunchOptions;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use flotilla_aws::{AwsAccount, AwsSettings, StaticCredentials};
use flotilla_core::bootstrap::{AgentSource, user_data};
use flotilla_server::{NodeReady, ServerConfig, UserDataRequest};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    command: Option<ServerCommand>,
    /// Address to listen on.
    #[arg(long, env = "FLOTILLA_LISTEN", default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Directory for the database and keys.
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The database: `postgres://user:password@host/db` for PostgreSQL. Without it the
    /// SQLite file `flotilla.db` in the data directory (which keeps secret.key either way).
    #[arg(long = "database", env = "FLOTILLA_DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
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
    #[command(flatten)]
    lifecycle: crate::lifecycle_options::LifecycleOptions,
    /// When a node counts as Deployed: when its agent registers (`agent`), or as soon as its
    /// instance runs (`running`, for set-ups without agents).
    #[arg(long, env = "FLOTILLA_NODE_READY", value_enum, default_value_t = NodeReadyArg::Agent)]
    node_ready: NodeReadyArg,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, env = "FLOTILLA_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "FLOTILLA_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM certificate(s) launched nodes must trust to reach --public-url (a private CA);
    /// written into their user data.
    #[arg(long, env = "FLOTILLA_AGENT_CA_CERT")]
    agent_ca_cert: Option<PathBuf>,
    /// AWS request budget per region: sustained requests per second (EC2 allows ~20).
    #[arg(long, env = "FLOTILLA_AWS_REQUESTS_PER_SECOND", default_value_t = 20.0)]
    aws_requests_per_second: f64,
    /// AWS request budget per region: burst.
    #[arg(long, env = "FLOTILLA_AWS_BURST", default_value_t = 100)]
    aws_burst: u32,
    /// This replica's id among replicas sharing a PostgreSQL database (the owner of its
    /// leases); unique per replica [default: generated at start, and logged].
    #[arg(long, env = "FLOTILLA_REPLICA_ID")]
    replica_id: Option<String>,
    /// Seconds a lease on single-owner work (a cluster's reconciler, the swarm worker, the
    /// health sweep, …) lasts unrenewed: a dead replica's work is taken over after about
    /// this long. Renewed every third of it.
    #[arg(long, env = "FLOTILLA_LEASE_TIME", default_value_t = 15.0)]
    lease_time: f64,
}

#[derive(Debug, Subcommand)]
enum ServerCommand {
    /// Copy the database (consistently, while the server runs) and secret.key into one
    /// file, written with mode 0600: it holds the key to the linked AWS credentials.
    Backup {
        /// The server's data directory.
        #[arg(long, env = "FLOTILLA_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// The server's `--database`: a PostgreSQL installation is refused, with how to
        /// back it up (`pg_dump` and secret.key).
        #[arg(long = "database", env = "FLOTILLA_DATABASE_URL", value_name = "URL")]
        database_url: Option<String>,
        /// The backup file to write (replaced if it exists).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Restore a backup into a data directory (the server must be stopped).
    Restore {
        /// The data directory to restore into; created if missing.
        #[arg(long, env = "FLOTILLA_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// The server's `--database`: a PostgreSQL installation is refused, with how to
        /// restore it (`pg_restore` and secret.key).
        #[arg(long = "database", env = "FLOTILLA_DATABASE_URL", value_name = "URL")]
        database_url: Option<String>,
        /// The backup file.
        #[arg(long, short)]
        input: PathBuf,
        /// Replace the database and key the directory already holds.
        #[arg(long)]
        force: bool,
    },
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

/// `flotilla server backup|restore`.
async fn maintenance(command: ServerCommand) -> anyhow::Result<ExitCode> {
    match command {
        ServerCommand::Backup {
            data_dir,
            database_url,
            output,
        } => {
            let data_dir = match data_dir {
                Some(dir) => dir,
                None => default_data_dir()?,
            };
            flotilla_server::backup::refuse_postgres("backup", database_url.as_deref(), &data_dir)?;
            let summary = flotilla_server::backup::backup(&data_dir, &output).await?;
            println!(
                "Backed up installation {} ({} node clusters, {} bytes of database) from {} to {}",
                summary.owner_id,
                summary.clusters,
                summary.database_bytes,
                data_dir.display(),
                output.display()
            );
        }
        ServerCommand::Restore {
            data_dir,
            database_url,
            input,
            force,
        } => {
            let data_dir = match data_dir {
                Some(dir) => dir,
                None => default_data_dir()?,
            };
            flotilla_server::backup::refuse_postgres(
                "restore",
                database_url.as_deref(),
                &data_dir,
            )?;
            let summary = flotilla_server::backup::restore(&data_dir, &input, force).await?;
            println!(
                "Restored installation {} ({} node clusters) into {}; start `flotilla server --data-dir {}` with access to the same AWS account",
                summary.owner_id,
                summary.clusters,
                data_dir.display(),
                data_dir.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The TLS configuration of `--tls-cert`/`--tls-key`: both or neither.
fn tls_config(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(_), None) => {
            bail!("--tls-cert (FLOTILLA_TLS_CERT) needs --tls-key (FLOTILLA_TLS_KEY) too")
        }
        (None, Some(_)) => {
            bail!("--tls-key (FLOTILLA_TLS_KEY) needs --tls-cert (FLOTILLA_TLS_CERT) too")
        }
        (Some(cert), Some(key)) => Ok(Some(Arc::new(flotilla_server::tls::load_server_config(
            cert, key,
        )?))),
    }
}

/// The largest CA bundle sent in user data (capped at 16 KiB with the script).
const MAX_AGENT_CA_BYTES: usize = 8 * 1024;

/// `--agent-ca-cert` as clean PEM: parsed, then re-encoded, so only certificates reach the
/// nodes' user data.
fn agent_ca_pem(path: &Path) -> anyhow::Result<String> {
    use base64::Engine as _;
    let mut pem = String::new();
    for cert in flotilla_agent::tls::load_certificates(path)? {
        let encoded = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in encoded.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    if pem.len() > MAX_AGENT_CA_BYTES {
        bail!(
            "--agent-ca-cert {} is {} bytes of PEM; nodes' user data has room for {MAX_AGENT_CA_BYTES}: give only the root CA",
            path.display(),
            pem.len()
        );
    }
    Ok(pem)
}

pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    if let Some(command) = args.command {
        return maintenance(command).await;
    }
    let tls = tls_config(args.tls_cert.as_deref(), args.tls_key.as_deref())?;
    let agent_ca = args
        .agent_ca_cert
        .as_deref()
        .map(agent_ca_pem)
        .transpose()?;
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    create_private_dir(&data_dir)?;
    let mut config = ServerConfig::new(data_dir.join("flotilla.db"));
    config.database_url = args.database_url;
    config.listen = args.listen;
    if !(args.lease_time.is_finite() && args.lease_time >= 0.3 && args.lease_time < 1e6) {
        anyhow::bail!("--lease-time must be a number of seconds from 0.3 to 1000000");
    }
    config.lease_time = std::time::Duration::from_secs_f64(args.lease_time);
    if let Some(id) = &args.replica_id
        && (id.trim().is_empty() || id.len() > 200)
    {
        anyhow::bail!("--replica-id must be a non-empty name of at most 200 characters");
    }
    config.replica_id = args.replica_id;
    args.lifecycle.apply(&mut config)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    config.tls = tls;
    let public_url = args
        .public_url
        .unwrap_or_else(|| format!("{scheme}://{}", args.listen));
    config.reconcile.user_data = Arc::new(move |request: &UserDataRequest<'_>| {
        let agent = AgentSource {
            server_url: public_url.clone(),
            token: request.registration_token.to_owned(),
            ca_cert_pem: agent_ca.clone(),
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
        requests_per_second: args.aws_requests_per_second,
        burst: args.aws_burst,
        ..AwsSettings::default()
    })
    .await;
    args.lifecycle.connect_mirror(&aws, &mut config).await?;
    eprintln!(
        "flotilla server: data in {} (database {}), listening on {scheme}://{}",
        data_dir.display(),
        config.database_label(),
        config.listen
    );
    eprintln!(
        "flotilla server: web dashboard at {scheme}://{}/ (log in with your user and API key)",
        config.listen
    );
    flotilla_server::serve(config, installation, Arc::new(aws)).await?;
    Ok(ExitCode::SUCCESS)
}
