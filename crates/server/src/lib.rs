//! Flotilla's control plane: the Docker Cloud API v1 over HTTP, the store behind it and the
//! reconcilers that carry out what it records.
//!
//! Layers, each only calling the next: [`http`] (paths, auth, status codes) → [`app`]
//! (operations, validation, actions) → [`store`] (SQLite). The [`reconcile`] workers read
//! desired state from the store and drive a [`flotilla_core::Cloud`]; the API only nudges
//! them, so no request waits for AWS to act. Nodes' agents use their own endpoints and
//! credentials ([`agent_api`]); a node is `Deployed` once its agent has registered.
//!
//! Design decisions:
//! * [`run`] takes a bound listener and a shutdown future (as in mini-redis), so tests run
//!   servers on port 0 and stop them explicitly; [`serve`] is the binary's wrapper around it.
//! * Set-up is a separate, idempotent step ([`initialize`]): the installation id (the
//!   `flotilla:owner` tag value) is needed to build the cloud client before the server
//!   runs, and the admin's API key can only be shown by whoever creates it.
//! * The server is generic over the cloud, so the whole API runs against `FakeCloud` in
//!   milliseconds and against the real engine (on moto) in the end-to-end tests.
//! * AWS keys linked through the API are sealed with the installation's `secret.key`
//!   ([`secrets`]); [`initialize`] creates the key (0600) and returns the decrypted keys so
//!   the binary can build its cloud client with them, and [`run`] hands the key to the app
//!   for later links.

pub mod agent_api;
pub mod app;
pub mod catalog;
pub mod events;
pub mod http;
pub mod openapi;
pub mod reconcile;
pub mod secrets;
pub mod store;
pub mod stream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use flotilla_core::cloud::Cloud;
use flotilla_core::state::ClusterState;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use app::Credentials;
pub use reconcile::{NodeReady, ReconcileSettings, UserDataFn, UserDataRequest};

use crate::app::{App, AppSettings};
use crate::store::Store;

/// Everything a server needs besides the cloud.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where [`serve`] listens.
    pub listen: SocketAddr,
    /// The SQLite file (created if missing).
    pub database_path: PathBuf,
    /// The user created on first start.
    pub admin_username: String,
    /// Nodes are named `<uuid>.<node_domain>`.
    pub node_domain: String,
    pub reconcile: ReconcileSettings,
    /// The key that encrypts linked provider keys (`secrets`); created 0600 if missing.
    pub secret_key_path: PathBuf,
}

impl ServerConfig {
    pub fn new(database_path: impl Into<PathBuf>) -> ServerConfig {
        let database_path: PathBuf = database_path.into();
        ServerConfig {
            secret_key_path: database_path.with_file_name("secret.key"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_path,
            admin_username: "admin".into(),
            node_domain: "node.flotilla.internal".into(),
            reconcile: ReconcileSettings::default(),
        }
    }
}

/// The identity of an installation.
#[derive(Debug, Clone)]
pub struct Installation {
    /// The `flotilla:owner` tag value of everything this installation creates.
    pub owner_id: String,
    /// The admin's credentials when this call created the admin (first start only); the
    /// key is not stored anywhere and cannot be shown again.
    pub new_admin: Option<Credentials>,
    /// AWS keys linked through the API, decrypted (`None`: use the standard chain).
    pub aws_keys: Option<flotilla_core::cloud::AccessKeys>,
}

/// Creates the database, the installation id and the admin user if missing. Safe to call
/// on every start.
pub async fn initialize(config: &ServerConfig) -> anyhow::Result<Installation> {
    let store = Store::open(&config.database_path)
        .await
        .with_context(|| format!("opening {}", config.database_path.display()))?;
    let now = flotilla_api::date::now_unix();
    let owner_id = store
        .ensure_owner_id(&uuid::Uuid::new_v4().to_string(), now)
        .await?;
    agent_api::load_secret(&store).await?;
    let secret_key = secrets::SecretKey::load_or_create(&config.secret_key_path)?;
    let aws_keys = app::linked_keys(&store, &secret_key, catalog::PROVIDER).await?;
    let mut new_admin = None;
    if store.user_count().await? == 0 {
        let (record, credentials) = app::new_user(&config.admin_username);
        if store.insert_user(&record, now).await? {
            new_admin = Some(credentials);
        }
    }
    store.close().await;
    Ok(Installation {
        owner_id,
        new_admin,
        aws_keys,
    })
}

/// Serves the API on `listener` until `shutdown` completes, then stops the reconcilers
/// (their unfinished passes are resumed by the next start). Busy clusters found in the
/// store are resumed at once. Requires [`initialize`] to have run on the database.
pub async fn run<C: Cloud + 'static>(
    listener: TcpListener,
    config: ServerConfig,
    cloud: Arc<C>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = Store::open(&config.database_path)
        .await
        .with_context(|| format!("opening {}", config.database_path.display()))?;
    if store.owner_id().await?.is_none() || store.user_count().await? == 0 {
        anyhow::bail!(
            "{} is not initialized (no installation id or no user); call initialize first",
            config.database_path.display()
        );
    }
    let (reconciler, supervisor) =
        reconcile::reconciler(store.clone(), cloud.clone(), config.reconcile.clone());
    let secret_key = secrets::SecretKey::load(&config.secret_key_path)?;
    let linked = app::linked_keys(&store, &secret_key, catalog::PROVIDER).await?;
    for cluster in store.clusters().await? {
        if !matches!(cluster.state, ClusterState::Init | ClusterState::Terminated) {
            if cluster.state.is_busy() {
                tracing::info!(cluster = cluster.uuid, state = %cluster.state, "resuming");
            }
            reconciler.nudge(&cluster.uuid);
        }
    }
    let app = Arc::new(
        App::new(
            store.clone(),
            cloud,
            reconciler,
            AppSettings {
                node_domain: config.node_domain.clone(),
            },
        )
        .with_secret_key(secret_key, linked.map(|k| k.access_key_id)),
    );
    let router = http::router(app.clone());
    let (stop_reconcilers, stopped) = watch::channel(false);
    let heartbeats = agent_api::flush_heartbeats(app, stopped.clone());
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown);
    // Not spawned: if this future is dropped (a crash, in tests), the reconcilers go too.
    let serve_then_stop = async {
        let served = server.await;
        let _ = stop_reconcilers.send(true);
        served
    };
    let (served, (), ()) = tokio::join!(serve_then_stop, supervisor.run(stopped), heartbeats);
    store.close().await;
    served.context("HTTP server")
}

/// The binary's entry point: prints the admin's credentials if this start created them,
/// listens on `config.listen` and serves until Ctrl-C or SIGTERM.
pub async fn serve<C: Cloud + 'static>(
    config: ServerConfig,
    installation: Installation,
    cloud: Arc<C>,
) -> anyhow::Result<()> {
    if let Some(admin) = &installation.new_admin {
        println!(
            "Created user '{}'. Its API key is shown only this once:\n\n  export DOCKERCLOUD_USER={}\n  export DOCKERCLOUD_APIKEY={}\n",
            admin.username, admin.username, admin.api_key
        );
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(address = %config.listen, "serving the Docker Cloud API");
    run(listener, config, cloud, shutdown_signal()).await
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
