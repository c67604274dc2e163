//! The store: SQLite (the default) or PostgreSQL through sqlx, holding desired state
//! (clusters), observed state (nodes), the audit trail (actions), users and the installation
//! identity.
//!
//! Design decisions:
//! * SQLite in WAL mode with foreign keys on, migrations embedded in the binary, so a server
//!   is one file to back up and starts on a fresh machine with nothing to install.
//! * PostgreSQL (`postgres://…`) for installations that outgrow one machine. One [`Store`]
//!   type, its database chosen at run time by the URL ([`Store::connect`]).
//! * Both through sqlx's `Any` driver rather than an enum over a `SqlitePool` and a
//!   `PgPool`. Every query here is plain portable SQL over strings, integers, booleans and
//!   bytes, and runs inside transactions that helpers (`insert_action_in`, …) share; with
//!   `Any` each query and each transaction helper is written and compiled once, and moving
//!   from SQLite meant changing placeholders and a pool type. An enum would have needed
//!   every query duplicated per arm or every helper generic over the database with a wall of
//!   `Encode`/`Decode` bounds. What `Any` costs is contained here: it has no connection
//!   options beyond the URL (SQLite's PRAGMAs are set on connect, [`Dialect::on_connect`]),
//!   and it decodes a SQLite boolean (an INTEGER) only as an integer ([`Flag`]).
//! * Portable SQL: `$n` placeholders (both drivers accept them), `ON CONFLICT` instead of
//!   `INSERT OR …`, `IS DISTINCT FROM`, no two-argument `MAX`, booleans bound or written
//!   `TRUE`/`FALSE`, integers bound as `i64` (BIGINT columns on PostgreSQL). Where the
//!   schema must differ the migrations do, one file per version per dialect
//!   (`migrations/sqlite/`, `migrations/postgres/`, the same versions): PostgreSQL's tables
//!   have an explicit `rowid` identity column so `ORDER BY created_at, rowid` means the
//!   same on both.
//! * Only static SQL; every value is bound. Rows are decoded into plain records here and
//!   nothing above this module sees sqlx.
//! * No whole-row writes of a cluster. The API and the reconciler update the same rows
//!   concurrently, so each writes only the columns it owns, and state changes are
//!   compare-and-set on the current state ([`Store::transition_cluster`]): an API call and a
//!   reconciler pass can never both win a race on a cluster's state.
//! * An action is created in the same transaction as the state change it records, so the
//!   audit trail and the state cannot disagree after a crash.
//! * The store is the one publishing point of the events websocket ([`crate::events`]):
//!   every method that changes a cluster's, a node's or an action's state (or labels)
//!   publishes on [`Store::events`] after its transaction commits.

#[macro_use]
pub mod access;
mod agents;
pub mod bundles;
mod credentials;
pub mod directory;
mod leases;
pub mod notify;
mod sessions;
mod swarms;
#[cfg(test)]
pub(crate) mod testing;
pub mod throttle;
mod tokens;

pub use leases::{Fence, Lease, fence_in_scope, fenced};
pub use sessions::SessionRecord;
pub use swarms::{NewSwarm, SealedTask, SwarmRecord};

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_core::ClusterSpec;
use flotilla_core::spec::ProviderOptions;
use flotilla_core::state::{ClusterState, IllegalTransition, NodeEvent, NodeState};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions as _};

use crate::events::{EventBus, Pending, Verb};

pub use agents::{NodeAgentRecord, NodeRegistration, Registered};

/// A store failure. Corrupt rows are reported, not panicked on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A state change the state machine does not allow ([`flotilla_core::state`]).
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    /// A write made for `work` under a lease that another replica has taken over since
    /// ([`Fence`]); nothing was written.
    #[error("the lease on {work} with token {token} was taken over: write refused")]
    StaleLease { work: String, token: i64 },
    #[error("corrupt {table} row {key}: {message}")]
    Corrupt {
        table: &'static str,
        key: String,
        message: String,
    },
}

/// A node cluster: desired state plus the reconciler's bookkeeping.
///
/// Every field is read one way: the cluster's desired state is [`ClusterRecord::spec`]
/// (name, target, tags and `auto_replace` included, always the live values), the rest is
/// bookkeeping. In the store each field lives once: the columns hold what changes or is
/// looked up (`name`, `target_num_nodes`, `tags`, `auto_replace`), the `spec` JSON only the
/// create-time fields that never change ([`StoredSpec`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRecord {
    pub uuid: String,
    pub nickname: String,
    pub spec: ClusterSpec,
    pub state: ClusterState,
    pub generation: u64,
    pub next_slot: u32,
    pub current_action: Option<String>,
    pub created_at: i64,
    pub deployed_at: Option<i64>,
    pub destroyed_at: Option<i64>,
}

/// The `spec` column: the fields of a [`ClusterSpec`] fixed at creation. The others
/// (`name`, `target_num_nodes`, `tags`, `auto_replace`) are columns of their own.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StoredSpec {
    provider: String,
    region: String,
    node_type: String,
    disk_gb: u32,
    #[serde(default)]
    provider_options: ProviderOptions,
}

impl StoredSpec {
    fn of(spec: &ClusterSpec) -> StoredSpec {
        StoredSpec {
            provider: spec.provider.clone(),
            region: spec.region.clone(),
            node_type: spec.node_type.clone(),
            disk_gb: spec.disk_gb,
            provider_options: spec.provider_options.clone(),
        }
    }
}

/// What a `PATCH` of a cluster changes besides its target; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterPatch<'a> {
    pub nickname: Option<&'a str>,
    pub tags: Option<&'a [String]>,
    pub auto_replace: Option<bool>,
}

impl ClusterPatch<'_> {
    fn is_empty(&self) -> bool {
        self.nickname.is_none() && self.tags.is_none() && self.auto_replace.is_none()
    }
}

/// A `PATCH`'s change of the target: compare-and-set on `from`. `to` is `Scaling` (the
/// generation bumped, the patch's action becoming the cluster's current action), or `from`
/// itself for an `Init` cluster, whose target is edited without scaling.
#[derive(Debug, Clone, Copy)]
pub struct TargetChange {
    pub from: ClusterState,
    pub to: ClusterState,
    pub target: u32,
}

/// A node as last observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub uuid: String,
    /// `None` for a bring-your-own node.
    pub cluster_uuid: Option<String>,
    pub slot: u32,
    pub instance_id: String,
    pub state: NodeState,
    pub availability_zone: String,
    pub subnet_id: String,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub nickname: Option<String>,
    pub tags: Vec<String>,
    pub last_seen: Option<i64>,
    pub created_at: i64,
    pub deployed_at: Option<i64>,
    pub destroyed_at: Option<i64>,
    /// What its agent last said about the node's Docker engine (read-only here: written by
    /// [`Store::update_node_agent`]; ignored by [`Store::upsert_nodes`]).
    pub engine: Engine,
    /// Where it is in leaving its swarm (written by [`Store::set_leaving`] and
    /// [`Store::release_node`]; ignored by [`Store::upsert_nodes`]).
    pub swarm: SwarmExit,
}

/// A swarm node's way out: marked leaving by its cluster, released by the swarm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwarmExit {
    pub leaving: bool,
    pub released: bool,
}

/// A node's Docker engine as its agent reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Engine {
    /// The version the agent registered with.
    pub docker_version: Option<String>,
    /// The last report; `None` before the first.
    pub report: Option<flotilla_api::agent::EngineReport>,
    /// The swarm node ID it last reported (kept after it left the swarm).
    pub last_swarm_node_id: Option<String>,
}

/// A node's public IP moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpChange {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// One node as the DNS zone needs it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DnsRow {
    pub node_uuid: String,
    pub public_ip: Option<String>,
    pub state: String,
    pub cluster_name: Option<String>,
    /// The organization that owns the cluster (its DNS name includes it unless `default`).
    pub cluster_org: Option<String>,
}

/// The `user` of actions the system records by itself (history lines).
pub const SYSTEM_USER: &str = "flotilla";

/// An audit action (§3.7).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ActionRecord {
    pub uuid: String,
    pub object_uri: String,
    pub label: String,
    pub method: String,
    pub path: String,
    pub username: String,
    pub user_agent: String,
    pub ip: String,
    pub state: String,
    pub start_date: i64,
    pub end_date: Option<i64>,
    pub body: String,
    pub logs: String,
    #[sqlx(try_from = "Flag")]
    pub can_be_canceled: bool,
    #[sqlx(try_from = "Flag")]
    pub can_be_retried: bool,
}

/// A user's stored credential: a salted hash, never the key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UserRecord {
    pub username: String,
    pub api_key_salt: String,
    pub api_key_hash: String,
}

/// A compare-and-set change of a cluster's state and the columns that go with it.
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    pub from: ClusterState,
    pub to: ClusterState,
    pub target_num_nodes: Option<u32>,
    pub bump_generation: bool,
    /// `Some(Some(uuid))` points the log at an action, `Some(None)` detaches it.
    pub current_action: Option<Option<&'a str>>,
    /// Set when not yet set.
    pub deployed_at: Option<i64>,
    pub destroyed_at: Option<i64>,
    /// Ends the cluster's running action in the same transaction, so no client ever sees
    /// the action finished while the cluster is still busy (nor the reverse after a crash).
    pub finish_action: Option<FinishAction<'a>>,
    /// Made under a lease on the cluster's work: refused ([`StoreError::StaleLease`]) unless
    /// the lease is still this tenure.
    pub fence: Option<Fence<'a>>,
}

/// How [`Transition::finish_action`] ends an action that is still running.
#[derive(Debug, Clone, Copy)]
pub struct FinishAction<'a> {
    pub uuid: &'a str,
    pub state: &'a str,
    pub end_date: i64,
    pub can_be_retried: bool,
}

impl<'a> Transition<'a> {
    pub fn new(from: ClusterState, to: ClusterState) -> Transition<'a> {
        Transition {
            from,
            to,
            target_num_nodes: None,
            bump_generation: false,
            current_action: None,
            deployed_at: None,
            destroyed_at: None,
            finish_action: None,
            fence: None,
        }
    }
}

#[derive(sqlx::FromRow)]
struct ClusterRow {
    uuid: String,
    name: String,
    nickname: String,
    spec: String,
    state: String,
    target_num_nodes: i64,
    generation: i64,
    next_slot: i64,
    tags: String,
    #[sqlx(try_from = "Flag")]
    auto_replace: bool,
    current_action: Option<String>,
    created_at: i64,
    deployed_at: Option<i64>,
    destroyed_at: Option<i64>,
}

/// The node filters `GET node/` pushes into SQL; `None` selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFilter {
    pub cluster_uuid: Option<String>,
    pub state: Option<String>,
    pub uuid: Option<String>,
    /// Case-sensitive prefix of the uuid: a range on the primary key.
    pub uuid_prefix: Option<String>,
    /// Only the nodes this user may view (the `authz` module); `None`: every node (the server
    /// administrator).
    pub viewer: Option<String>,
    /// Only the nodes of this organization's clusters (a namespaced list,
    /// `/api/infra/v1/<org>/node/`); `None`: every organization.
    pub org: Option<String>,
}

/// `NodeFilter` as SQL over parameters $1..$7 (a macro, for `concat!`: sqlx takes only
/// static SQL). The uuid prefix is the range `[$4, $5)` with `$5` = [`prefix_end`]`($4)`:
/// both dialects compare node uuids bytewise (SQLite's BINARY, PostgreSQL's `COLLATE "C"`).
/// The viewer's (`$6`) subquery is evaluated once per query, so a member's page stays an
/// index scan.
macro_rules! node_filter_sql {
    () => {
        concat!(
            "($1 IS NULL OR cluster_uuid = $1)
         AND ($2 IS NULL OR state = $2)
         AND ($3 IS NULL OR uuid = $3)
         AND ($4 IS NULL OR (uuid >= $4 AND uuid < $5))
         AND ($6 IS NULL OR cluster_uuid IN (",
            visible_clusters_sql!("$6"),
            "))
         AND ($7 IS NULL OR cluster_uuid IN (SELECT resource FROM owners WHERE kind = 'nodecluster' AND org = $7))"
        )
    };
}

#[derive(sqlx::FromRow)]
struct NodeRow {
    uuid: String,
    cluster_uuid: Option<String>,
    slot: i64,
    instance_id: String,
    state: String,
    availability_zone: String,
    subnet_id: String,
    public_ip: Option<String>,
    private_ip: Option<String>,
    nickname: Option<String>,
    tags: String,
    last_seen: Option<i64>,
    created_at: i64,
    deployed_at: Option<i64>,
    destroyed_at: Option<i64>,
    /// From `node_agents`: the last engine report (JSON) and the registered Docker version.
    engine: Option<String>,
    docker_version: Option<String>,
    swarm_node_id: Option<String>,
    #[sqlx(try_from = "Flag")]
    swarm_leaving: bool,
    #[sqlx(try_from = "Flag")]
    swarm_released: bool,
}

fn corrupt(table: &'static str, key: &str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        key: key.to_owned(),
        message: message.to_string(),
    }
}

impl TryFrom<ClusterRow> for ClusterRecord {
    type Error = StoreError;
    fn try_from(row: ClusterRow) -> Result<Self, StoreError> {
        let stored: StoredSpec =
            serde_json::from_str(&row.spec).map_err(|e| corrupt("clusters", &row.uuid, e))?;
        let state = ClusterState::parse(&row.state)
            .ok_or_else(|| corrupt("clusters", &row.uuid, format!("state '{}'", row.state)))?;
        let tags: Vec<String> =
            serde_json::from_str(&row.tags).map_err(|e| corrupt("clusters", &row.uuid, e))?;
        Ok(ClusterRecord {
            nickname: row.nickname,
            spec: ClusterSpec {
                name: row.name,
                provider: stored.provider,
                region: stored.region,
                node_type: stored.node_type,
                target_num_nodes: u32::try_from(row.target_num_nodes)
                    .map_err(|e| corrupt("clusters", &row.uuid, e))?,
                disk_gb: stored.disk_gb,
                tags,
                provider_options: stored.provider_options,
                auto_replace: row.auto_replace,
            },
            state,
            generation: u64::try_from(row.generation)
                .map_err(|e| corrupt("clusters", &row.uuid, e))?,
            next_slot: u32::try_from(row.next_slot)
                .map_err(|e| corrupt("clusters", &row.uuid, e))?,
            current_action: row.current_action,
            created_at: row.created_at,
            deployed_at: row.deployed_at,
            destroyed_at: row.destroyed_at,
            uuid: row.uuid,
        })
    }
}

impl TryFrom<NodeRow> for NodeRecord {
    type Error = StoreError;
    fn try_from(row: NodeRow) -> Result<Self, StoreError> {
        let state = NodeState::parse(&row.state)
            .ok_or_else(|| corrupt("nodes", &row.uuid, format!("state '{}'", row.state)))?;
        let tags: Vec<String> =
            serde_json::from_str(&row.tags).map_err(|e| corrupt("nodes", &row.uuid, e))?;
        Ok(NodeRecord {
            cluster_uuid: row.cluster_uuid,
            slot: u32::try_from(row.slot).map_err(|e| corrupt("nodes", &row.uuid, e))?,
            instance_id: row.instance_id,
            state,
            availability_zone: row.availability_zone,
            subnet_id: row.subnet_id,
            public_ip: row.public_ip,
            private_ip: row.private_ip,
            nickname: row.nickname,
            tags,
            last_seen: row.last_seen,
            created_at: row.created_at,
            deployed_at: row.deployed_at,
            destroyed_at: row.destroyed_at,
            swarm: SwarmExit {
                leaving: row.swarm_leaving,
                released: row.swarm_released,
            },
            engine: Engine {
                docker_version: row.docker_version,
                last_swarm_node_id: row.swarm_node_id,
                report: row
                    .engine
                    .as_deref()
                    .map(serde_json::from_str)
                    .transpose()
                    .map_err(|e| corrupt("node_agents", &row.uuid, e))?,
            },
            uuid: row.uuid,
        })
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing plain data structs (strings, numbers, vectors) cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// One node's upsert inside `tx`: the event verb to publish after the commit (if the state
/// or IP changed), the state after, and the IP change.
async fn upsert_node_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    node: &NodeRecord,
) -> Result<(Option<Verb>, String, Option<IpChange>), StoreError> {
    let before: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT state, public_ip FROM nodes WHERE uuid = $1")
            .bind(&node.uuid)
            .fetch_optional(&mut **tx)
            .await?;
    sqlx::query(
            "INSERT INTO nodes (uuid, cluster_uuid, slot, instance_id, state, availability_zone, subnet_id, public_ip, private_ip, nickname, tags, last_seen, created_at, deployed_at, destroyed_at, instance_public_ip)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $8)
             ON CONFLICT(uuid) DO UPDATE SET
                instance_id = excluded.instance_id,
                state = CASE WHEN excluded.state = 'Deploying'
                    AND nodes.state IN ('Deployed', 'Unreachable', 'Upgrading', 'Terminating')
                    THEN nodes.state ELSE excluded.state END,
                availability_zone = excluded.availability_zone,
                subnet_id = excluded.subnet_id,
                public_ip = CASE
                    WHEN excluded.public_ip IS NOT NULL
                        AND excluded.public_ip IS DISTINCT FROM nodes.instance_public_ip THEN excluded.public_ip
                    WHEN EXISTS (SELECT 1 FROM node_agents a WHERE a.node_uuid = nodes.uuid)
                        THEN nodes.public_ip
                    ELSE COALESCE(excluded.public_ip, nodes.public_ip) END,
                instance_public_ip = COALESCE(excluded.public_ip, nodes.instance_public_ip),
                private_ip = COALESCE(excluded.private_ip, nodes.private_ip),
                last_seen = COALESCE(excluded.last_seen, nodes.last_seen),
                deployed_at = COALESCE(nodes.deployed_at, excluded.deployed_at),
                destroyed_at = COALESCE(nodes.destroyed_at, excluded.destroyed_at)",
        )
        .bind(&node.uuid)
        .bind(&node.cluster_uuid)
        .bind(i64::from(node.slot))
        .bind(&node.instance_id)
        .bind(node.state.as_str())
        .bind(&node.availability_zone)
        .bind(&node.subnet_id)
        .bind(&node.public_ip)
        .bind(&node.private_ip)
        .bind(&node.nickname)
        .bind(to_json(&node.tags))
        .bind(node.last_seen)
        .bind(node.created_at)
        .bind(node.deployed_at)
        .bind(node.destroyed_at)
        .execute(&mut **tx)
        .await?;
    let (after, ip_after): (String, Option<String>) =
        sqlx::query_as("SELECT state, public_ip FROM nodes WHERE uuid = $1")
            .bind(&node.uuid)
            .fetch_one(&mut **tx)
            .await?;
    if after == NodeState::Terminated.as_str() {
        revoke_agent_in(tx, &node.uuid, node.destroyed_at.unwrap_or(node.created_at)).await?;
    }
    let (verb, ip_change) = match before {
        None => (Some(Verb::Create), None),
        Some((before, ip_before)) => {
            let ip_change = (ip_before != ip_after).then(|| IpChange {
                from: ip_before,
                to: ip_after.clone(),
            });
            let verb = if before != after {
                Some(Verb::for_state(&after))
            } else {
                ip_change.as_ref().map(|_| Verb::Update)
            };
            (verb, ip_change)
        }
    };
    Ok((verb, after, ip_change))
}

/// Which database a [`Store`] talks to: where the SQL or the connection setup differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The dialect of a database URL: `postgres://`/`postgresql://` or `sqlite:`.
    pub fn of_url(url: &str) -> Option<Dialect> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Dialect::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else {
            None
        }
    }

    /// Session settings every connection gets (`Any` takes no driver options but the URL).
    /// SQLite: WAL, whose NORMAL synchronous mode keeps the database consistent after a
    /// crash or power loss (only the last commits may be lost) without an fsync per
    /// transaction, and a 10 s busy timeout (foreign keys are on by sqlx's default). A
    /// PostgreSQL read connection refuses writes, like SQLite's read-only one.
    fn on_connect(self, writer: bool) -> &'static [&'static str] {
        match (self, writer) {
            (Dialect::Sqlite, true) => &[
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = NORMAL",
                "PRAGMA busy_timeout = 10000",
            ],
            (Dialect::Sqlite, false) => {
                &["PRAGMA synchronous = NORMAL", "PRAGMA busy_timeout = 10000"]
            }
            (Dialect::Postgres, true) => &[],
            (Dialect::Postgres, false) => &["SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"],
        }
    }
}

/// A boolean column: BOOLEAN on PostgreSQL, an INTEGER 0/1 on SQLite, which the `Any`
/// driver hands over only as an integer. Decodes either (`#[sqlx(try_from = "Flag")]`).
#[derive(Debug, Clone, Copy)]
struct Flag(bool);

impl From<Flag> for bool {
    fn from(flag: Flag) -> bool {
        flag.0
    }
}

impl sqlx::Type<sqlx::Any> for Flag {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <bool as sqlx::Type<sqlx::Any>>::type_info()
    }
    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        <bool as sqlx::Type<sqlx::Any>>::compatible(ty)
            || <i64 as sqlx::Type<sqlx::Any>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Any> for Flag {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Flag, sqlx::error::BoxDynError> {
        match <bool as sqlx::Decode<sqlx::Any>>::decode(value.clone()) {
            Ok(flag) => Ok(Flag(flag)),
            Err(_) => Ok(Flag(<i64 as sqlx::Decode<sqlx::Any>>::decode(value)? != 0)),
        }
    }
}

/// The end of the uuid-prefix range `[prefix, prefix_end(prefix))`: `prefix` followed by
/// the greatest code point, which sorts bytewise after any continuation of a uuid.
fn prefix_end(prefix: &str) -> String {
    format!("{prefix}{}", char::MAX)
}

/// The control plane's database. Cheap to clone (pool handles).
///
/// Writes go through a pool of exactly one connection (`writer`). SQLite has one writer at
/// a time: writes queue in the pool, first come first served, instead of several
/// connections polling SQLite's lock in its busy handler (which sleeps up to 100 ms a try)
/// while holding connections that reads need. PostgreSQL keeps the same single writer per
/// server, so the store behaves the same on both (compare-and-set writes do not rely on it:
/// they are single statements or transactions that hold up under concurrent writers).
/// Reads use `pool`, opened read-only, so a write sent there by mistake fails in the tests
/// instead of contending.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    writer: AnyPool,
    dialect: Dialect,
    events: EventBus,
    /// This replica's id once it shares its events with other replicas
    /// ([`Store::share_events_as`]): every write then sends its events inside its
    /// transaction.
    sharing: Arc<std::sync::OnceLock<String>>,
}

/// A `Store::connect` URL that is neither SQLite nor PostgreSQL.
fn unknown_scheme() -> StoreError {
    StoreError::Database(sqlx::Error::Configuration(
        "the database URL must start with postgres://, postgresql:// or sqlite:".into(),
    ))
}

impl Store {
    /// Opens (creating if needed) the SQLite database file and applies the migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let url = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .to_url_lossy();
        Store::connect(url.as_str()).await
    }

    /// Connects to the database at `url` (`postgres://…` or `sqlite:…`; a SQLite file is
    /// created if the URL's `mode` allows) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(url).ok_or_else(unknown_scheme)?;
        let options = AnyConnectOptions::from_str(url)?;
        let writer = Store::pool_options(dialect, true, 1)
            .connect_with(options.clone())
            .await?;
        match dialect {
            Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&writer).await?,
            Dialect::Postgres => sqlx::migrate!("./migrations/postgres").run(&writer).await?,
        }
        let read_options = match dialect {
            // The file exists now; readers open it read-only.
            Dialect::Sqlite => {
                let sqlite = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(false)
                    .read_only(true);
                AnyConnectOptions::from_str(sqlite.to_url_lossy().as_str())?
            }
            Dialect::Postgres => options,
        };
        let pool = Store::pool_options(dialect, false, 4)
            .connect_with(read_options)
            .await?;
        Ok(Store {
            pool,
            writer,
            dialect,
            events: EventBus::new(),
            sharing: Arc::default(),
        })
    }

    fn pool_options(dialect: Dialect, writer: bool, connections: u32) -> AnyPoolOptions {
        AnyPoolOptions::new()
            .max_connections(connections)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    for statement in dialect.on_connect(writer) {
                        sqlx::raw_sql(*statement).execute(&mut *connection).await?;
                    }
                    Ok(())
                })
            })
    }

    /// Which database this store talks to.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// A write transaction on the writer connection. On SQLite `BEGIN IMMEDIATE` takes the
    /// write lock up front, so another process writing the file (`sqlite3`, a backup tool)
    /// makes it wait under the busy timeout rather than fail on a stale snapshot.
    ///
    /// Inside a lease's scope ([`leases::fenced`]) the transaction first checks the fence:
    /// a replica that lost the lease gets [`StoreError::StaleLease`] and writes nothing.
    /// Every write of the store begins here (only the leases' own statements do not).
    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let mut tx = match self.dialect {
            Dialect::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.writer.begin().await?,
        };
        if let Some(lease) = leases::fence_in_scope() {
            leases::check_fence_in(&mut tx, &lease.fence()).await?;
        }
        Ok(tx)
    }

    /// From now on every write sends its events to the other replicas as `replica`, inside
    /// its transaction (PostgreSQL only: `notify`). Set once, before the first write.
    pub fn share_events_as(&self, replica: &str) {
        if self.dialect == Dialect::Postgres {
            let _ = self.sharing.set(replica.to_owned());
        }
    }

    /// Commits a write and publishes its events: sent to the other replicas inside the
    /// transaction when they share them (so an event is shared exactly when its change
    /// commits), then on this replica's bus.
    async fn commit(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Any>,
        events: Pending,
    ) -> Result<(), StoreError> {
        if let Some(replica) = self.sharing.get() {
            notify::send_in(&mut tx, replica, events.events()).await?;
        }
        tx.commit().await?;
        self.events.publish_all(events);
        Ok(())
    }

    /// The pools' connections: (pool, open, idle), for `/metrics`.
    pub fn pool_usage(&self) -> Vec<(&'static str, u32, u32)> {
        vec![
            (
                "writer",
                self.writer.size(),
                u32::try_from(self.writer.num_idle()).unwrap_or(u32::MAX),
            ),
            (
                "reader",
                self.pool.size(),
                u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            ),
        ]
    }

    /// The bus every committed change is published on.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Closes every connection (the WAL is checkpointed by SQLite on the last close).
    /// Copies the database file `database` to `snapshot` with `VACUUM INTO`: a consistent
    /// copy even while a server writes to it (the backup's snapshot).
    pub async fn snapshot_file(database: &Path, snapshot: &str) -> Result<(), StoreError> {
        use sqlx::{ConnectOptions as _, Connection as _};
        let mut connection = SqliteConnectOptions::from_str("sqlite:")?
            .filename(database)
            .read_only(true)
            .busy_timeout(Duration::from_secs(30))
            .connect()
            .await?;
        let vacuumed = sqlx::query("VACUUM INTO ?")
            .bind(snapshot)
            .execute(&mut connection)
            .await;
        let _ = connection.close().await;
        vacuumed?;
        Ok(())
    }

    /// SQLite's integrity check of the database file at `path` ("ok" when sound), without
    /// migrating it.
    pub async fn integrity_check(path: &Path) -> Result<String, StoreError> {
        use sqlx::{ConnectOptions as _, Connection as _};
        let mut connection = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .connect()
            .await?;
        let verdict = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut connection)
            .await;
        let _ = connection.close().await;
        Ok(verdict?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    // ---- installation and users ----

    /// How many nodes are in each state.
    /// Nodes that are not `Terminated`, counted by (cluster uuid — empty for a node of
    /// one's own —, state).
    pub async fn nodes_by_cluster_and_state(
        &self,
    ) -> Result<std::collections::BTreeMap<(String, String), i64>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT COALESCE(cluster_uuid, ''), state, COUNT(*) FROM nodes \
             WHERE state != 'Terminated' GROUP BY cluster_uuid, state",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(cluster, state, count)| ((cluster, state), count))
            .collect())
    }

    /// A write transaction that changes nothing: proves the database takes writes.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE installation SET id = id WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn owner_id(&self) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT owner_id FROM installation WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Records the installation id unless one exists; returns the one in effect.
    pub async fn ensure_owner_id(&self, candidate: &str, now: i64) -> Result<String, StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO installation (id, owner_id, created_at) VALUES (1, $1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(candidate)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.owner_id()
            .await?
            .ok_or_else(|| corrupt("installation", "1", "missing after insert"))
    }

    /// Inserts a user unless the name is taken; true when inserted.
    pub async fn insert_user(&self, user: &UserRecord, now: i64) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let result = sqlx::query(
            "INSERT INTO users (username, api_key_salt, api_key_hash, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&user.username)
        .bind(&user.api_key_salt)
        .bind(&user.api_key_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn user(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        Ok(sqlx::query_as::<_, UserRecord>(
            "SELECT username, api_key_salt, api_key_hash FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn user_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?)
    }

    // ---- clusters ----

    /// Inserts a new cluster, owned by organization `org`, and its create action in one
    /// transaction.
    pub async fn insert_cluster(
        &self,
        cluster: &ClusterRecord,
        action: &ActionRecord,
        org: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        insert_cluster_in(&mut tx, cluster).await?;
        access::own_in(&mut tx, &cluster.uuid, "nodecluster", org, None).await?;
        insert_action_in(&mut tx, action).await?;
        let mut events = Pending::default();
        events.cluster(Verb::Create, &cluster.uuid, cluster.state.as_str());
        action_created(&mut events, action);
        self.commit(tx, events).await
    }

    pub async fn cluster(&self, uuid: &str) -> Result<Option<ClusterRecord>, StoreError> {
        let row = sqlx::query_as::<_, ClusterRow>(
            "SELECT uuid, name, nickname, spec, state, target_num_nodes, generation, next_slot, tags, auto_replace, current_action, created_at, deployed_at, destroyed_at FROM clusters WHERE uuid = $1",
        )
        .bind(uuid)
        .fetch_optional(&self.pool)
        .await?;
        row.map(ClusterRecord::try_from).transpose()
    }

    /// Every cluster, oldest first.
    pub async fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        let rows = sqlx::query_as::<_, ClusterRow>(
            "SELECT uuid, name, nickname, spec, state, target_num_nodes, generation, next_slot, tags, auto_replace, current_action, created_at, deployed_at, destroyed_at FROM clusters ORDER BY created_at, rowid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ClusterRecord::try_from).collect()
    }

    /// Moves a cluster from `transition.from` to `transition.to` if it is still in `from`,
    /// inserting `action` and changing `node_state` in the same transaction. False (and no
    /// change at all) when the cluster was not in `from`.
    pub async fn transition_cluster(
        &self,
        uuid: &str,
        transition: &Transition<'_>,
        action: Option<&ActionRecord>,
        node_state: Option<(&str, NodeState)>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        if let Some(fence) = &transition.fence {
            leases::check_fence_in(&mut tx, fence).await?;
        }
        let (set_action, action_uuid) = match transition.current_action {
            Some(value) => (true, value),
            None => (false, None),
        };
        let result = sqlx::query(
            "UPDATE clusters SET state = $1,
                target_num_nodes = COALESCE($2, target_num_nodes),
                generation = generation + $3,
                current_action = CASE WHEN $4 THEN $5 ELSE current_action END,
                deployed_at = COALESCE(deployed_at, $6),
                destroyed_at = COALESCE(destroyed_at, $7)
             WHERE uuid = $8 AND state = $9",
        )
        .bind(transition.to.as_str())
        .bind(transition.target_num_nodes.map(i64::from))
        .bind(i64::from(transition.bump_generation))
        .bind(set_action)
        .bind(action_uuid)
        .bind(transition.deployed_at)
        .bind(transition.destroyed_at)
        .bind(uuid)
        .bind(transition.from.as_str())
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() != 1 {
            return Ok(false);
        }
        if let Some(action) = action {
            insert_action_in(&mut tx, action).await?;
        }
        let mut finished = None;
        if let Some(finish) = &transition.finish_action {
            finished = sqlx::query_scalar::<_, String>(
                "UPDATE actions SET state = $1, end_date = $2, can_be_canceled = FALSE, can_be_retried = $3
                 WHERE uuid = $4 AND state IN ($5, $6, $7) RETURNING object_uri",
            )
            .bind(finish.state)
            .bind(finish.end_date)
            .bind(finish.can_be_retried)
            .bind(finish.uuid)
            .bind(flotilla_api::action_state::IN_PROGRESS)
            .bind(flotilla_api::action_state::PENDING)
            .bind(flotilla_api::action_state::CANCELING)
            .fetch_optional(&mut *tx)
            .await?;
        }
        if let Some((node_uuid, state)) = node_state {
            sqlx::query("UPDATE nodes SET state = $1 WHERE uuid = $2")
                .bind(state.as_str())
                .bind(node_uuid)
                .execute(&mut *tx)
                .await?;
        }
        let mut events = Pending::default();
        if let (Some(finish), Some(object_uri)) = (&transition.finish_action, finished) {
            events.action(Verb::Update, finish.uuid, &object_uri, finish.state);
        }
        if transition.from != transition.to {
            let state = transition.to.as_str();
            events.cluster(Verb::for_state(state), uuid, state);
        }
        if let Some(action) = action {
            action_created(&mut events, action);
        }
        if let Some((node_uuid, state)) = node_state {
            events.node(
                Verb::for_state(state.as_str()),
                node_uuid,
                Some(uuid),
                state.as_str(),
            );
        }
        self.commit(tx, events).await?;
        Ok(true)
    }

    /// A `PATCH` of a cluster in one transaction: the target's change if any
    /// (compare-and-set on its state), the labels and `auto_replace`, and the patch's
    /// `action` (in progress and made the cluster's current action when it scales, else
    /// finished). False, and nothing changed, when the cluster left `target.from`.
    pub async fn patch_cluster(
        &self,
        uuid: &str,
        patch: &ClusterPatch<'_>,
        target: Option<TargetChange>,
        action: &ActionRecord,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        if let Some(change) = target {
            let scaling = change.from != change.to;
            let result = sqlx::query(
                "UPDATE clusters SET state = $1, target_num_nodes = $2,
                    generation = generation + $3,
                    current_action = CASE WHEN $4 THEN $5 ELSE current_action END
                 WHERE uuid = $6 AND state = $7",
            )
            .bind(change.to.as_str())
            .bind(i64::from(change.target))
            .bind(i64::from(scaling))
            .bind(scaling)
            .bind(&action.uuid)
            .bind(uuid)
            .bind(change.from.as_str())
            .execute(&mut *tx)
            .await?;
            if result.rows_affected() != 1 {
                return Ok(false);
            }
        }
        let mut state: Option<String> = None;
        if !patch.is_empty() {
            state = sqlx::query_scalar(
                "UPDATE clusters SET nickname = COALESCE($1, nickname), tags = COALESCE($2, tags),
                    auto_replace = COALESCE($3, auto_replace)
                 WHERE uuid = $4 RETURNING state",
            )
            .bind(patch.nickname)
            .bind(patch.tags.map(|tags| to_json(&tags)))
            .bind(patch.auto_replace)
            .bind(uuid)
            .fetch_optional(&mut *tx)
            .await?;
        }
        insert_action_in(&mut tx, action).await?;
        let mut events = Pending::default();
        match target {
            Some(change) if change.from != change.to => {
                let state = change.to.as_str();
                events.cluster(Verb::for_state(state), uuid, state);
            }
            _ => {
                if let Some(state) = state {
                    events.cluster(Verb::Update, uuid, &state);
                }
            }
        }
        action_created(&mut events, action);
        self.commit(tx, events).await?;
        Ok(true)
    }

    /// The reconciler's slot high-water mark; it only ever grows.
    pub async fn raise_next_slot(&self, uuid: &str, next_slot: u32) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE clusters SET next_slot = $1 WHERE uuid = $2 AND next_slot < $1")
            .bind(i64::from(next_slot))
            .bind(uuid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- nodes ----

    /// Inserts or refreshes a node from an observation. Dates already set are kept; the
    /// user's nickname and tags are never touched. Observing a node as `Deploying` (its
    /// instance is up but no agent has said so) never demotes a node its agent brought up.
    ///
    /// The public IP follows whichever source changed last: EC2 reporting an address other
    /// than the one it reported before (a stop/start, an elastic IP) wins; otherwise the
    /// address a registered agent connected from stays. Returns the IP change, if any.
    pub async fn upsert_nodes(
        &self,
        nodes: &[NodeRecord],
    ) -> Result<Vec<Option<IpChange>>, StoreError> {
        // One transaction for the whole observation: a pass over 300 nodes is one commit,
        // not 300, and registrations wait for the writer once rather than 300 times.
        let mut tx = self.write().await?;
        let mut changes = Vec::with_capacity(nodes.len());
        for node in nodes {
            changes.push(upsert_node_in(&mut tx, node).await?);
        }
        let mut events = Pending::default();
        let mut ip_changes = Vec::with_capacity(nodes.len());
        for (node, (verb, after, ip_change)) in nodes.iter().zip(changes) {
            if let Some(verb) = verb {
                events.node(verb, &node.uuid, node.cluster_uuid.as_deref(), &after);
            }
            ip_changes.push(ip_change);
        }
        self.commit(tx, events).await?;
        Ok(ip_changes)
    }

    pub async fn node(&self, uuid: &str) -> Result<Option<NodeRecord>, StoreError> {
        let row = sqlx::query_as::<_, NodeRow>(
            "SELECT uuid, cluster_uuid, slot, instance_id, state, availability_zone, subnet_id, public_ip, private_ip, nickname, tags, last_seen, created_at, deployed_at, destroyed_at, (SELECT a.engine FROM node_agents a WHERE a.node_uuid = nodes.uuid) AS engine, (SELECT a.docker_version FROM node_agents a WHERE a.node_uuid = nodes.uuid) AS docker_version, (SELECT a.swarm_node_id FROM node_agents a WHERE a.node_uuid = nodes.uuid) AS swarm_node_id, swarm_leaving, swarm_released FROM nodes WHERE uuid = $1",
        )
        .bind(uuid)
        .fetch_optional(&self.pool)
        .await?;
        row.map(NodeRecord::try_from).transpose()
    }

    /// Every node, by cluster creation and slot (bring-your-own nodes by registration).
    /// The nodes `filter` selects, oldest first (creation time, then insertion order: the
    /// "chronological order" of Docker Cloud's lists, and an index scan — see migration
    /// 0006); `page` = `(limit, offset)` cuts one page in SQL, so a page costs its rows, not
    /// the table.
    pub async fn find_nodes(
        &self,
        filter: &NodeFilter,
        page: Option<(u64, u64)>,
    ) -> Result<Vec<NodeRecord>, StoreError> {
        let (limit, offset) = page.unwrap_or((u64::MAX >> 1, 0));
        let rows = sqlx::query_as::<_, NodeRow>(concat!(
            "SELECT uuid, cluster_uuid, slot, instance_id, state, availability_zone, subnet_id, public_ip, private_ip, nickname, tags, last_seen, created_at, deployed_at, destroyed_at, (SELECT a.engine FROM node_agents a WHERE a.node_uuid = nodes.uuid) AS engine, (SELECT a.docker_version FROM node_agents a WHERE a.node_uuid = nodes.uuid) AS docker_version, (SELECT a.swarm_node_id FROM node_agents a WHERE a.node_uuid = nodes.uuid) AS swarm_node_id, swarm_leaving, swarm_released
             FROM nodes WHERE ",
            node_filter_sql!(),
            " ORDER BY created_at, rowid LIMIT $8 OFFSET $9"
        ))
        .bind(&filter.cluster_uuid)
        .bind(&filter.state)
        .bind(&filter.uuid)
        .bind(&filter.uuid_prefix)
        .bind(filter.uuid_prefix.as_deref().map(prefix_end))
        .bind(&filter.viewer)
        .bind(&filter.org)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(NodeRecord::try_from).collect()
    }

    /// How many nodes `filter` selects (a page's `total_count`).
    pub async fn count_nodes(&self, filter: &NodeFilter) -> Result<u64, StoreError> {
        let (count,): (i64,) = sqlx::query_as(concat!(
            "SELECT COUNT(*) FROM nodes WHERE ",
            node_filter_sql!()
        ))
        .bind(&filter.cluster_uuid)
        .bind(&filter.state)
        .bind(&filter.uuid)
        .bind(&filter.uuid_prefix)
        .bind(filter.uuid_prefix.as_deref().map(prefix_end))
        .bind(&filter.viewer)
        .bind(&filter.org)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    pub async fn nodes_of(&self, cluster_uuid: &str) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = sqlx::query_as::<_, NodeRow>(
            "SELECT uuid, cluster_uuid, slot, instance_id, state, availability_zone, subnet_id, public_ip, private_ip, nickname, tags, last_seen, created_at, deployed_at, destroyed_at, (SELECT a.engine FROM node_agents a WHERE a.node_uuid = nodes.uuid) AS engine, (SELECT a.docker_version FROM node_agents a WHERE a.node_uuid = nodes.uuid) AS docker_version, (SELECT a.swarm_node_id FROM node_agents a WHERE a.node_uuid = nodes.uuid) AS swarm_node_id, swarm_leaving, swarm_released FROM nodes WHERE cluster_uuid = $1 ORDER BY slot",
        )
        .bind(cluster_uuid)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(NodeRecord::try_from).collect()
    }

    pub async fn set_node_labels(
        &self,
        uuid: &str,
        nickname: Option<&str>,
        tags: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "UPDATE nodes SET nickname = $1, tags = $2 WHERE uuid = $3 RETURNING state, cluster_uuid",
        )
        .bind(nickname)
        .bind(to_json(&tags))
        .bind(uuid)
        .fetch_optional(&mut *tx)
        .await?;
        let mut events = Pending::default();
        if let Some((state, cluster_uuid)) = row {
            events.node(Verb::Update, uuid, cluster_uuid.as_deref(), &state);
        }
        self.commit(tx, events).await
    }

    /// Marks a node gone (terminated by us, out of band, or a bring-your-own node removed)
    /// and revokes its agent's credential in the same transaction.
    pub async fn set_node_terminated(&self, uuid: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let before: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT state, cluster_uuid FROM nodes WHERE uuid = $1")
                .bind(uuid)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((state, cluster_uuid)) = before else {
            return Ok(());
        };
        // Already Terminated: nothing changes (the state machine refuses every event there).
        let from = NodeState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            table: "nodes",
            key: uuid.to_owned(),
            message: format!("unknown state {state:?}"),
        })?;
        if from == NodeState::Terminated {
            return Ok(());
        }
        let to = from.apply(NodeEvent::InstanceGone)?;
        sqlx::query(
            "UPDATE nodes SET state = $1, destroyed_at = COALESCE(destroyed_at, $2) WHERE uuid = $3",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(uuid)
        .execute(&mut *tx)
        .await?;
        revoke_agent_in(&mut tx, uuid, now).await?;
        let mut events = Pending::default();
        events.node(Verb::Delete, uuid, cluster_uuid.as_deref(), to.as_str());
        self.commit(tx, events).await
    }

    /// Applies `event` to a node that is in `from` (compare-and-set; health verdicts between
    /// `Deployed` and `Unreachable`). The next state comes from [`NodeState::apply`], so an
    /// event the state machine refuses in `from` is an error and writes nothing. `None` when
    /// the node was not in `from`; otherwise its new state and its cluster (`None` for a
    /// bring-your-own node).
    pub async fn apply_node_event(
        &self,
        uuid: &str,
        from: NodeState,
        event: NodeEvent,
    ) -> Result<Option<(NodeState, Option<String>)>, StoreError> {
        let to = from.apply(event)?;
        let mut tx = self.write().await?;
        let moved: Option<Option<String>> = sqlx::query_scalar(
            "UPDATE nodes SET state = $1 WHERE uuid = $2 AND state = $3 RETURNING cluster_uuid",
        )
        .bind(to.as_str())
        .bind(uuid)
        .bind(from.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let mut events = Pending::default();
        if let Some(cluster) = &moved {
            events.node(
                Verb::for_state(to.as_str()),
                uuid,
                cluster.as_deref(),
                to.as_str(),
            );
        }
        self.commit(tx, events).await?;
        Ok(moved.map(|cluster| (to, cluster)))
    }

    /// Nodes whose health is watched: an agent with a live credential, and `Deployed` or
    /// `Unreachable`. (uuid, state, last_seen.)
    pub async fn watched_nodes(&self) -> Result<Vec<(String, NodeState, Option<i64>)>, StoreError> {
        let rows: Vec<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT n.uuid, n.state, n.last_seen FROM nodes n JOIN node_agents a ON a.node_uuid = n.uuid
             WHERE a.revoked_at IS NULL AND n.state IN ('Deployed', 'Unreachable')",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(uuid, state, seen)| match NodeState::parse(&state) {
                Some(state) => Ok((uuid, state, seen)),
                None => Err(corrupt("nodes", &uuid, format!("state '{state}'"))),
            })
            .collect()
    }

    /// What the DNS zone is built from: every node that is not terminated and has a public
    /// IP, with its cluster's name (`None` for a bring-your-own node).
    pub async fn dns_rows(&self) -> Result<Vec<DnsRow>, StoreError> {
        Ok(sqlx::query_as::<_, DnsRow>(
            "SELECT n.uuid AS node_uuid, n.public_ip, n.state, c.name AS cluster_name, o.org AS cluster_org
             FROM nodes n LEFT JOIN clusters c ON c.uuid = n.cluster_uuid
             LEFT JOIN owners o ON o.resource = n.cluster_uuid
             WHERE n.state != 'Terminated' AND n.public_ip IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    // ---- actions ----

    pub async fn insert_action(&self, action: &ActionRecord) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        insert_action_in(&mut tx, action).await?;
        let mut events = Pending::default();
        action_created(&mut events, action);
        self.commit(tx, events).await
    }

    /// Adds a line to an object's history: a finished action by the system (health
    /// verdicts, IP changes, out-of-band terminations, network repairs).
    pub async fn record_history(
        &self,
        object_uri: &str,
        label: &str,
        line: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.insert_action(&ActionRecord {
            uuid: uuid::Uuid::new_v4().to_string(),
            object_uri: object_uri.to_owned(),
            label: label.to_owned(),
            method: String::new(),
            path: String::new(),
            username: SYSTEM_USER.to_owned(),
            user_agent: String::new(),
            ip: String::new(),
            state: flotilla_api::action_state::SUCCESS.to_owned(),
            start_date: now,
            end_date: Some(now),
            body: String::new(),
            logs: format!("{line}\n"),
            can_be_canceled: false,
            can_be_retried: false,
        })
        .await
    }

    pub async fn action(&self, uuid: &str) -> Result<Option<ActionRecord>, StoreError> {
        Ok(sqlx::query_as::<_, ActionRecord>(
            "SELECT uuid, object_uri, label, method, path, username, user_agent, ip, state, start_date, end_date, body, logs, can_be_canceled, can_be_retried FROM actions WHERE uuid = $1",
        )
        .bind(uuid)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Every action, newest first.
    pub async fn actions(&self) -> Result<Vec<ActionRecord>, StoreError> {
        Ok(sqlx::query_as::<_, ActionRecord>(
            "SELECT uuid, object_uri, label, method, path, username, user_agent, ip, state, start_date, end_date, body, '' AS logs, can_be_canceled, can_be_retried FROM actions ORDER BY seq DESC",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn append_action_log(&self, uuid: &str, text: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE actions SET logs = logs || $1 WHERE uuid = $2")
            .bind(text)
            .bind(uuid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves an action to `to` if it is in one of `from`; true when it did.
    pub async fn transition_action(
        &self,
        uuid: &str,
        from: &[&str],
        to: &str,
        end_date: Option<i64>,
        can_be_canceled: bool,
        can_be_retried: bool,
    ) -> Result<bool, StoreError> {
        for state in from {
            let mut tx = self.write().await?;
            let object_uri: Option<String> = sqlx::query_scalar(
                "UPDATE actions SET state = $1, end_date = $2, can_be_canceled = $3, can_be_retried = $4 WHERE uuid = $5 AND state = $6 RETURNING object_uri",
            )
            .bind(to)
            .bind(end_date)
            .bind(can_be_canceled)
            .bind(can_be_retried)
            .bind(uuid)
            .bind(state)
            .fetch_optional(&mut *tx)
            .await?;
            let mut events = Pending::default();
            if let Some(object_uri) = &object_uri {
                events.action(Verb::Update, uuid, object_uri, to);
            }
            self.commit(tx, events).await?;
            if object_uri.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The `create` event of a new action.
fn action_created(events: &mut Pending, action: &ActionRecord) {
    events.action(
        Verb::Create,
        &action.uuid,
        &action.object_uri,
        &action.state,
    );
}

/// One cluster's insert inside `tx`.
async fn insert_cluster_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    cluster: &ClusterRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO clusters (uuid, name, nickname, spec, state, target_num_nodes, generation, next_slot, tags, auto_replace, current_action, created_at, deployed_at, destroyed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&cluster.uuid)
    .bind(&cluster.spec.name)
    .bind(&cluster.nickname)
    .bind(to_json(&StoredSpec::of(&cluster.spec)))
    .bind(cluster.state.as_str())
    .bind(i64::from(cluster.spec.target_num_nodes))
    .bind(cluster.generation as i64)
    .bind(i64::from(cluster.next_slot))
    .bind(to_json(&cluster.spec.tags))
    .bind(cluster.spec.auto_replace)
    .bind(&cluster.current_action)
    .bind(cluster.created_at)
    .bind(cluster.deployed_at)
    .bind(cluster.destroyed_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Revokes a node's agent credential (no-op without an agent).
async fn revoke_agent_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    node_uuid: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE node_agents SET revoked_at = COALESCE(revoked_at, $1) WHERE node_uuid = $2",
    )
    .bind(now)
    .bind(node_uuid)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_action_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    action: &ActionRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO actions (uuid, object_uri, label, method, path, username, user_agent, ip, state, start_date, end_date, body, logs, can_be_canceled, can_be_retried) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(&action.uuid)
    .bind(&action.object_uri)
    .bind(&action.label)
    .bind(&action.method)
    .bind(&action.path)
    .bind(&action.username)
    .bind(&action.user_agent)
    .bind(&action.ip)
    .bind(&action.state)
    .bind(action.start_date)
    .bind(action.end_date)
    .bind(&action.body)
    .bind(&action.logs)
    .bind(action.can_be_canceled)
    .bind(action.can_be_retried)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use sqlx::sqlite::SqlitePoolOptions;

    use super::testing::{self, Backend, store_tests};
    use super::*;

    /// A database made by the schema before every cluster field was stored once
    /// (migrations 1 to 6), with a cluster whose target and tags were patched (so the spec
    /// JSON's copies are stale) and `auto_replace` on (in the JSON only).
    async fn old_database(path: &Path) {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .expect("options")
            .filename(path)
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("connect");
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.migrations = Cow::Owned(
            migrator
                .migrations
                .iter()
                .filter(|m| m.version <= 6)
                .cloned()
                .collect(),
        );
        migrator.run(&pool).await.expect("old migrations");
        let spec = serde_json::json!({
            "name": "web", "provider": "aws", "region": "us-east-1", "node_type": "t3.micro",
            "target_num_nodes": 2, "disk_gb": 60, "tags": ["old"],
            "provider_options": {"vpc": {"id": "vpc-0000000a", "subnets": ["subnet-0000000a"],
                "security_groups": []}},
            "auto_replace": true
        });
        sqlx::query(
            "INSERT INTO clusters (uuid, name, nickname, spec, state, target_num_nodes, generation, next_slot, tags, current_action, created_at)
             VALUES ('c1', 'web', 'my web', $1, 'Deployed', 5, 3, 7, '[\"new\",\"blue\"]', NULL, 10)",
        )
        .bind(spec.to_string())
        .execute(&pool)
        .await
        .expect("old cluster");
        pool.close().await;
    }

    #[tokio::test]
    async fn an_old_database_upgrades_to_one_copy_of_every_cluster_field() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("old.db");
        old_database(&path).await;
        let store = Store::open(&path).await.expect("upgrade");
        let cluster = store.cluster("c1").await.expect("read").expect("cluster");
        assert_eq!(cluster.spec.name, "web");
        assert_eq!(cluster.nickname, "my web");
        assert_eq!(cluster.spec.target_num_nodes, 5, "the live target");
        assert_eq!(cluster.spec.tags, ["new", "blue"], "the live tags");
        assert!(cluster.spec.auto_replace, "moved from the JSON");
        assert_eq!(cluster.spec.region, "us-east-1");
        assert_eq!(cluster.spec.disk_gb, 60);
        assert_eq!(
            cluster.spec.provider_options.vpc.map(|v| v.subnets),
            Some(vec!["subnet-0000000a".to_owned()])
        );
        assert_eq!((cluster.generation, cluster.next_slot), (3, 7));
        // The JSON keeps only the create-time fields.
        let spec: String = sqlx::query_scalar("SELECT spec FROM clusters WHERE uuid = 'c1'")
            .fetch_one(&store.pool)
            .await
            .expect("spec");
        let spec: serde_json::Value = serde_json::from_str(&spec).expect("json");
        for field in ["name", "target_num_nodes", "tags", "auto_replace"] {
            assert!(spec.get(field).is_none(), "{field} still in {spec}");
        }
    }

    /// A cluster `c1` as [`old_database`] leaves it, written through the store.
    async fn deployed_cluster(store: &Store) {
        let spec = ClusterSpec::from_json(&serde_json::json!({
            "name": "web", "target_num_nodes": 5, "region": "/api/infra/v1/region/aws/us-east-1/",
            "node_type": "/api/infra/v1/nodetype/aws/t3.micro/", "tags": ["new", "blue"],
            "auto_replace": true
        }))
        .expect("spec");
        let cluster = ClusterRecord {
            uuid: "c1".into(),
            nickname: "my web".into(),
            spec,
            state: ClusterState::Deployed,
            generation: 3,
            next_slot: 7,
            current_action: None,
            created_at: 10,
            deployed_at: None,
            destroyed_at: None,
        };
        store
            .insert_cluster(
                &cluster,
                &testing::action("a0", "/api/infra/v1/nodecluster/c1/"),
                access::DEFAULT_ORG,
            )
            .await
            .expect("cluster");
    }

    async fn a_patch_changes_each_field_in_one_place_in_one_transaction(backend: Backend) {
        let store = testing::store(backend).await;
        deployed_cluster(&store).await;
        let action = |uuid: &str| ActionRecord {
            state: "Success".into(),
            end_date: Some(0),
            ..testing::action(uuid, "/api/infra/v1/nodecluster/c1/")
        };
        let tags = vec!["green".to_owned()];
        let patch = ClusterPatch {
            nickname: None,
            tags: Some(&tags),
            auto_replace: Some(false),
        };
        // A scale from a state the cluster has left changes nothing at all.
        let stale = TargetChange {
            from: ClusterState::EmptyCluster,
            to: ClusterState::Scaling,
            target: 9,
        };
        assert!(
            !store
                .patch_cluster("c1", &patch, Some(stale), &action("a1"))
                .await
                .expect("patch")
        );
        let cluster = store.cluster("c1").await.expect("read").expect("cluster");
        assert_eq!(cluster.spec.tags, ["new", "blue"]);
        assert!(cluster.spec.auto_replace);
        assert_eq!(store.action("a1").await.expect("read"), None);

        let scale = TargetChange {
            from: ClusterState::Deployed,
            to: ClusterState::Scaling,
            target: 9,
        };
        assert!(
            store
                .patch_cluster("c1", &patch, Some(scale), &action("a2"))
                .await
                .expect("patch")
        );
        let cluster = store.cluster("c1").await.expect("read").expect("cluster");
        assert_eq!(cluster.spec.tags, ["green"]);
        assert!(!cluster.spec.auto_replace);
        assert_eq!(cluster.spec.target_num_nodes, 9);
        assert_eq!(cluster.state, ClusterState::Scaling);
        assert_eq!(cluster.generation, 4);
        assert_eq!(cluster.current_action.as_deref(), Some("a2"));
        assert_eq!(cluster.nickname, "my web", "untouched");
    }

    fn node(uuid: &str, slot: u32, public_ip: Option<&str>) -> NodeRecord {
        NodeRecord {
            uuid: uuid.into(),
            cluster_uuid: Some("c1".into()),
            slot,
            instance_id: format!("i-{slot}"),
            state: NodeState::Deploying,
            availability_zone: "us-east-1a".into(),
            subnet_id: "subnet-1".into(),
            public_ip: public_ip.map(str::to_owned),
            private_ip: None,
            nickname: None,
            tags: Vec::new(),
            last_seen: None,
            created_at: 20,
            deployed_at: None,
            destroyed_at: None,
            engine: Engine::default(),
            swarm: SwarmExit::default(),
        }
    }

    /// The statements whose SQL had to be made portable, each checked on both databases:
    /// insertion order, the uuid-prefix range, paging, `IS DISTINCT FROM`, the only-raise
    /// updates, `ON CONFLICT DO NOTHING`, booleans both ways, bytes, `RETURNING`.
    async fn the_portable_statements_mean_the_same_on_both(backend: Backend) {
        let store = testing::store(backend).await;
        store
            .check_writable()
            .await
            .expect("writable (no installation row yet)");
        assert_eq!(store.ensure_owner_id("o1", 1).await.expect("owner"), "o1");
        assert_eq!(store.ensure_owner_id("o2", 2).await.expect("owner"), "o1");
        let user = UserRecord {
            username: "admin".into(),
            api_key_salt: "s".into(),
            api_key_hash: "h".into(),
        };
        assert!(store.insert_user(&user, 1).await.expect("user"));
        assert!(
            !store.insert_user(&user, 1).await.expect("again"),
            "name taken"
        );
        deployed_cluster(&store).await;

        // Same creation time: listed in insertion order (`rowid`), not by uuid.
        let nodes = [
            node("cc-2", 0, None),
            node("aa-1", 1, None),
            node("ab-3", 2, None),
        ];
        store.upsert_nodes(&nodes).await.expect("nodes");
        let uuids = |found: Vec<NodeRecord>| found.into_iter().map(|n| n.uuid).collect::<Vec<_>>();
        let all = NodeFilter::default();
        assert_eq!(
            uuids(store.find_nodes(&all, None).await.expect("all")),
            ["cc-2", "aa-1", "ab-3"]
        );
        assert_eq!(
            uuids(store.find_nodes(&all, Some((1, 1))).await.expect("page")),
            ["aa-1"]
        );
        let prefix = NodeFilter {
            uuid_prefix: Some("a".into()),
            ..NodeFilter::default()
        };
        assert_eq!(
            uuids(store.find_nodes(&prefix, None).await.expect("prefix")),
            ["aa-1", "ab-3"]
        );
        assert_eq!(store.count_nodes(&prefix).await.expect("count"), 2);
        let exact = NodeFilter {
            uuid_prefix: Some("ab-3".into()),
            state: Some("Deploying".into()),
            cluster_uuid: Some("c1".into()),
            ..NodeFilter::default()
        };
        assert_eq!(store.count_nodes(&exact).await.expect("count"), 1);
        assert_eq!(
            store
                .nodes_by_cluster_and_state()
                .await
                .expect("by cluster and state")
                .get(&("c1".to_owned(), "Deploying".to_owned())),
            Some(&3)
        );

        // EC2 reporting a new address moves the public IP; the same address again does not.
        let moved = store
            .upsert_nodes(&[node("aa-1", 1, Some("1.1.1.1"))])
            .await
            .expect("ip");
        assert_eq!(
            moved,
            [Some(IpChange {
                from: None,
                to: Some("1.1.1.1".into())
            })]
        );
        let again = store
            .upsert_nodes(&[node("aa-1", 1, Some("1.1.1.1"))])
            .await
            .expect("same ip");
        assert_eq!(again, [None]);

        // Only-raise updates.
        store.raise_next_slot("c1", 9).await.expect("raise");
        store.raise_next_slot("c1", 8).await.expect("lower");
        let cluster = store.cluster("c1").await.expect("read").expect("cluster");
        assert_eq!(cluster.next_slot, 9);
        store
            .flush_last_seen(&[("aa-1".into(), 50), ("cc-2".into(), 7)])
            .await
            .expect("seen");
        store
            .flush_last_seen(&[("aa-1".into(), 40)])
            .await
            .expect("older");
        let seen = store.node("aa-1").await.expect("read").expect("node");
        assert_eq!(seen.last_seen, Some(50));

        // Booleans: written bound and as TRUE/FALSE literals, read back as bool.
        let leaving: std::collections::BTreeSet<String> = ["ab-3".to_owned()].into();
        store.set_leaving("c1", &leaving).await.expect("leaving");
        store.release_node("ab-3").await.expect("release");
        let left = store.node("ab-3").await.expect("read").expect("node");
        assert_eq!(
            left.swarm,
            SwarmExit {
                leaving: true,
                released: true
            }
        );
        store
            .set_leaving("c1", &Default::default())
            .await
            .expect("back");
        let back = store.node("ab-3").await.expect("read").expect("node");
        assert_eq!(back.swarm, SwarmExit::default());
        assert!(
            store
                .transition_action(
                    "a0",
                    &[flotilla_api::action_state::IN_PROGRESS],
                    "Failed",
                    Some(3),
                    false,
                    true
                )
                .await
                .expect("action")
        );
        store.append_action_log("a0", "one\n").await.expect("log");
        store.append_action_log("a0", "two\n").await.expect("log");
        let action = store.action("a0").await.expect("read").expect("action");
        assert!(action.can_be_retried && !action.can_be_canceled);
        assert_eq!(
            (action.state.as_str(), action.end_date),
            ("Failed", Some(3))
        );
        assert_eq!(action.logs, "one\ntwo\n");
        store
            .record_history("/x/", "Later", "line", 5)
            .await
            .expect("history");
        let newest_first: Vec<String> = store
            .actions()
            .await
            .expect("actions")
            .into_iter()
            .map(|a| a.label)
            .collect();
        assert_eq!(newest_first, ["Later", "l"]);

        // Single-use tokens and sealed bytes.
        store
            .insert_byo_token("t1", "admin", 1)
            .await
            .expect("token");
        assert_eq!(
            store.consume_byo_token("t1", 2).await.expect("use"),
            Some("admin".into())
        );
        assert_eq!(store.consume_byo_token("t1", 3).await.expect("reuse"), None);
        for (nonce, sealed) in [(vec![0_u8, 255, 7], vec![1_u8; 40]), (vec![9], vec![0])] {
            store
                .put_provider_credentials("aws", &nonce, &sealed, 1)
                .await
                .expect("put");
            assert_eq!(
                store.provider_credentials("aws").await.expect("get"),
                Some((nonce, sealed))
            );
        }
    }

    store_tests!(
        a_patch_changes_each_field_in_one_place_in_one_transaction,
        the_portable_statements_mean_the_same_on_both,
    );
}
