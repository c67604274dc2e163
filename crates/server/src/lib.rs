//! Flotilla's control plane: the Docker Cloud API v1 over HTTP, the store behind it and the
//! reconcilers that carry out what it records.
//!
//! Modules form layers and import downward only (`tests/it/invariants.rs` fails on a
//! cycle): the edge — [`routes`] (the route table), [`http`], [`api_error`], [`stream`],
//! [`openapi`], [`agent_api`] — calls the application layer — [`app`] and its agent
//! channel, [`app::agents`] — which records desired state in the [`store`] and nudges the
//! [`reconcile`] workers; they read desired state from the store and drive a
//! [`flotilla_core::Cloud`] through [`execute`], so no request waits for AWS to act. The
//! batch registration tokens both the agent channel and the workers need live below both
//! ([`tokens`]); the store publishes on the [`events`] bus, below it. A node is `Deployed`
//! once its agent has registered.
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
pub mod api_error;
pub mod app;
pub mod authz;
pub mod backup;
pub mod ca;
pub mod catalog;
pub mod dashboard;
pub mod dns;
pub mod events;
pub mod execute;
pub mod http;
pub mod ldap;
pub mod lease;
pub mod liveness;
pub mod login;
pub mod metrics;
pub mod openapi;
pub mod reconcile;
pub mod replicas;
pub mod routes;
pub mod secrets;
pub mod session;
pub mod store;
pub mod stream;
pub mod swarm;
pub mod tls;
pub mod tokens;
pub mod zone;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use flotilla_core::cloud::Cloud;
use flotilla_core::state::ClusterState;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use app::{CLUSTER_PATCH_FIELDS, Credentials};
pub use reconcile::{NodeReady, ReconcileSettings, UserDataFn, UserDataRequest};

use crate::app::{App, AppSettings};
use crate::store::Store;

/// Everything a server needs besides the cloud.
/// The periodic LDAP sync's default interval.
pub const DEFAULT_LDAP_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where [`serve`] listens.
    pub listen: SocketAddr,
    /// The SQLite file (created if missing), unless `database_url` is set.
    pub database_path: PathBuf,
    /// The database as a URL (`postgres://…`); `None`: SQLite at `database_path`.
    pub database_url: Option<String>,
    /// The user created on first start.
    pub admin_username: String,
    /// The DNS domain: nodes are `<uuid>.node.<domain>`, clusters `<name>.cluster.<domain>`.
    pub dns_domain: String,
    /// Silence after which a node is `Unreachable`.
    pub heartbeat_grace: std::time::Duration,
    /// How long the launch wizard's network lists are reused (`app::inventory`).
    pub inventory_ttl: std::time::Duration,
    /// Where the built-in DNS server answers for the domain (UDP and TCP); `None`: no
    /// DNS server (the zone is still kept, for the mirror).
    pub dns_listen: Option<SocketAddr>,
    /// A DNS address that cannot be bound fails the start; otherwise (the default address)
    /// the server runs without its DNS server and says so.
    pub dns_required: bool,
    /// A copy of the zone kept elsewhere (Route 53).
    pub dns_mirror: Option<zone::Mirror>,
    pub reconcile: ReconcileSettings,
    /// The key that encrypts linked provider keys (`secrets`); created 0600 if missing.
    pub secret_key_path: PathBuf,
    /// Serve HTTPS with this configuration ([`tls::load_server_config`]); `None`: plain
    /// HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// This replica's id among the replicas sharing the database (a lease's owner);
    /// `None`: generated at start (and logged).
    pub replica_id: Option<String>,
    /// How long a lease on single-owner work lasts unrenewed ([`lease`]): a dead replica's
    /// work is taken over after about this long. Renewed every third of it.
    pub lease_time: std::time::Duration,
    /// How often the LDAP directory's users and groups are synced (`app::directory`), when
    /// LDAP is configured.
    pub ldap_sync_interval: std::time::Duration,
}

impl ServerConfig {
    pub fn new(database_path: impl Into<PathBuf>) -> ServerConfig {
        let database_path: PathBuf = database_path.into();
        ServerConfig {
            secret_key_path: database_path.with_file_name("secret.key"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_path,
            database_url: None,
            admin_username: "admin".into(),
            dns_domain: "flotilla.internal".into(),
            heartbeat_grace: app::agents::DEFAULT_HEARTBEAT_GRACE,
            inventory_ttl: app::DEFAULT_INVENTORY_TTL,
            dns_listen: None,
            dns_required: false,
            dns_mirror: None,
            reconcile: ReconcileSettings::default(),
            tls: None,
            replica_id: None,
            lease_time: lease::DEFAULT_LEASE_TIME,
            ldap_sync_interval: DEFAULT_LDAP_SYNC_INTERVAL,
        }
    }
}

impl ServerConfig {
    /// Opens (and migrates) the configured database.
    pub async fn open_store(&self) -> anyhow::Result<Store> {
        let store = match &self.database_url {
            Some(url) => Store::connect(url).await,
            None => Store::open(&self.database_path).await,
        };
        store.with_context(|| format!("opening {}", self.database_label()))
    }

    /// The database for messages: the SQLite file, or the URL without its password.
    pub fn database_label(&self) -> String {
        match &self.database_url {
            Some(url) => match url::Url::parse(url) {
                Ok(mut parsed) => {
                    if parsed.password().is_some() {
                        let _ = parsed.set_password(Some("***"));
                    }
                    parsed.to_string()
                }
                Err(_) => "the database URL (unparsable)".into(),
            },
            None => self.database_path.display().to_string(),
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
    let store = config.open_store().await?;
    let now = flotilla_api::date::now_unix();
    let owner_id = store
        .ensure_owner_id(&uuid::Uuid::new_v4().to_string(), now)
        .await?;
    tokens::load_secret(&store).await?;
    let secret_key = secrets::SecretKey::load_or_create(&config.secret_key_path)?;
    let aws_keys = app::linked_keys(&store, &secret_key, catalog::PROVIDER).await?;
    let mut new_admin = None;
    if store.user_count().await? == 0 {
        let (user, key, credentials) = app::access::new_administrator(&config.admin_username, now);
        if store.create_user(&user, Some(&key)).await? {
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
    let store = config.open_store().await?;
    if store.owner_id().await?.is_none() || store.user_count().await? == 0 {
        anyhow::bail!(
            "{} is not initialized (no installation id or no user); call initialize first",
            config.database_label()
        );
    }
    let zone = Arc::new(dns::DnsZone::new(&config.dns_domain)?);
    let dns_sockets = match config.dns_listen {
        Some(address) => match bind_dns(address).await {
            Ok(sockets) => Some(sockets),
            Err(error) if !config.dns_required => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "no built-in DNS server (set --dns-listen to choose another address)"
                );
                None
            }
            Err(error) => return Err(error),
        },
        None => None,
    };
    let metrics = Arc::new(metrics::Metrics::new());
    cloud.observe_calls(metrics.clone());
    let replica = config
        .replica_id
        .clone()
        .unwrap_or_else(lease::generated_replica_id);
    if store.dialect() == store::Dialect::Sqlite {
        // One SQLite file has one server: leases in it are an earlier process's.
        store.expire_all_leases().await?;
    }
    tracing::info!(
        replica,
        lease_seconds = config.lease_time.as_secs_f64(),
        "replica"
    );
    // With several replicas, every write sends its events to the others (`replicas`).
    store.share_events_as(&replica);
    let leases = lease::Leases::new(store.clone(), replica, config.lease_time);
    if store.dialect() == store::Dialect::Postgres {
        // Replicas share a PostgreSQL database; one SQLite file has one server, whose engine
        // already takes its turns per region in-process.
        cloud.share_network_lock(leases.clone());
    }
    let (reconciler, supervisor) = reconcile::reconciler(
        store.clone(),
        cloud.clone(),
        config.reconcile.clone(),
        metrics.clone(),
        leases.clone(),
    );
    let cloud_for_swarms = cloud.clone();
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
                dns_domain: config.dns_domain.clone(),
                heartbeat_grace: config.heartbeat_grace,
                allowed_azs: config.reconcile.allowed_azs.clone(),
                inventory_ttl: config.inventory_ttl,
            },
        )
        .with_secret_key(secret_key.clone(), linked.map(|k| k.access_key_id))
        .with_metrics(metrics)
        .with_leases(leases.clone()),
    );
    let (app_mailbox, tasks_key) = (app.mailbox.clone(), secret_key.clone());
    let swarms = swarm::SwarmWorker {
        store: store.clone(),
        cloud: cloud_for_swarms,
        settings: config.reconcile.clone(),
        reconciler: app.reconciler.clone(),
        mailbox: app.mailbox.clone(),
        secret_key,
        liveness: app.liveness.clone(),
    };
    let liveness = app.liveness.clone();
    let reconciler = app.reconciler.clone();
    let router = http::router_over(app.clone(), config.tls.is_some());
    let (stop_reconcilers, stopped) = watch::channel(false);
    // The directory sync has one runner among replicas, the holder of its lease.
    let directory_sync = {
        let (leases, app, stopped) = (leases.clone(), app.clone(), stopped.clone());
        let interval = config.ldap_sync_interval;
        async move {
            leases
                .run(app::directory::SYNC_WORK, || {
                    app::directory::sync_periodically(app.clone(), interval, stopped.clone())
                })
                .await;
        }
    };
    let heartbeats = futures::future::join(
        app::agents::flush_heartbeats(app.clone(), stopped.clone()),
        app::agents::watch_health(app, stopped.clone()),
    );
    let dns = {
        let mut stop = stopped.clone();
        let zone = zone.clone();
        async move {
            let Some((udp, tcp)) = dns_sockets else {
                return;
            };
            let stopping = async move { while stop.changed().await.is_ok() && !*stop.borrow() {} };
            if let Err(error) = dns::serve(zone, udp, tcp, stopping).await {
                tracing::error!(error = format!("{error:#}"), "the DNS server stopped");
            }
        }
    };
    // Every replica keeps a runner waiting for each swarm's lease (`swarm:<uuid>`).
    let swarms = Arc::new(swarms).run(leases.clone(), stopped.clone());
    let sharing = {
        let url = config
            .database_url
            .clone()
            .filter(|_| store.dialect() == store::Dialect::Postgres);
        let bus = store.events().clone();
        let (replica, stopped) = (leases.replica().to_owned(), stopped.clone());
        async move {
            if let Some(url) = url {
                replicas::share_events(url, bus, reconciler, replica, stopped).await;
            }
        }
    };
    // Every replica answers heartbeats, so every replica follows the agents' tasks.
    let tasks = swarm::follow_tasks(app_mailbox, store.clone(), tasks_key, stopped.clone());
    let heartbeats = futures::future::join3(heartbeats, sharing, tasks);
    // Every replica answers DNS from its own zone; the Route 53 mirror has one writer, the
    // holder of its lease, with a zone of its own (its first round fully syncs the mirror).
    let mirror = {
        let (store, stopped, leases) = (store.clone(), stopped.clone(), leases.clone());
        let (mirror, domain) = (config.dns_mirror.clone(), config.dns_domain.clone());
        async move {
            let Some(mirror) = mirror else { return };
            leases
                .run(zone::MIRROR_WORK, || {
                    let (store, stopped, mirror) = (store.clone(), stopped.clone(), mirror.clone());
                    let zone = dns::DnsZone::new(&domain).map(Arc::new);
                    async move {
                        match zone {
                            Ok(zone) => zone::maintain(store, zone, Some(mirror), stopped).await,
                            Err(error) => tracing::error!(%error, "no DNS mirror"),
                        }
                    }
                })
                .await;
        }
    };
    let zones = futures::future::join(
        zone::maintain(store.clone(), zone, None, stopped.clone()),
        mirror,
    );
    let background = futures::future::join5(heartbeats, directory_sync, swarms, dns, zones);
    let server = serve_http(listener, config.tls.clone(), router, shutdown);
    // Not spawned: if this future is dropped (a crash, in tests), the reconcilers go too.
    let serve_then_stop = async {
        let served = server.await;
        let _ = stop_reconcilers.send(true);
        served
    };
    let (served, (), _) = tokio::join!(
        serve_then_stop,
        supervisor.run(stopped, liveness),
        background
    );
    leases.release_all().await;
    store.close().await;
    served.context("HTTP server")
}

/// Serves `router` on `listener`, over TLS when `tls` is set (see [`tls`]), until `shutdown`
/// completes; either way the handlers see the peer's address (`ConnectInfo<SocketAddr>`).
fn serve_http(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> {
    use axum::serve::ListenerExt as _;
    use std::future::IntoFuture as _;
    let make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => Box::pin(
            axum::serve(listener, make_service)
                .with_graceful_shutdown(shutdown)
                .into_future(),
        ),
        // `tap_io` is what gives a custom listener axum's `ConnectInfo<SocketAddr>`.
        Some(tls) => Box::pin(
            axum::serve(
                tls::TlsListener::new(listener, tls).tap_io(|_| {}),
                make_service,
            )
            .with_graceful_shutdown(shutdown)
            .into_future(),
        ),
    }
}

async fn bind_dns(address: SocketAddr) -> anyhow::Result<(tokio::net::UdpSocket, TcpListener)> {
    Ok((
        tokio::net::UdpSocket::bind(address)
            .await
            .with_context(|| format!("DNS: listening on udp {address}"))?,
        TcpListener::bind(address)
            .await
            .with_context(|| format!("DNS: listening on tcp {address}"))?,
    ))
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
    tracing::info!(address = %config.listen, tls = config.tls.is_some(), "serving the Docker Cloud API");
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
