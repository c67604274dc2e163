//! The store: SQLite through sqlx, holding desired state (clusters), observed state (nodes),
//! the audit trail (actions), users and the installation identity.
//!
//! Design decisions:
//! * SQLite in WAL mode with foreign keys on, migrations embedded in the binary, so a server
//!   is one file to back up and starts on a fresh machine with nothing to install.
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
mod credentials;
mod swarms;
mod tokens;

pub use swarms::{NewSwarm, SwarmRecord};

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use flotilla_core::ClusterSpec;
use flotilla_core::spec::ProviderOptions;
use flotilla_core::state::{ClusterState, IllegalTransition, NodeEvent, NodeState};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::events::{EventBus, Verb};

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
    pub can_be_canceled: bool,
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
}

/// `NodeFilter` as SQL over parameters ?1..?5 (a macro, for `concat!`: sqlx takes only
/// static SQL). `x'ff'` sorts after every UTF-8 text, so `[prefix, prefix || x'ff')` is
/// exactly the uuids starting with `prefix`. The viewer's subquery is evaluated once per
/// query, so a member's page stays an index scan.
macro_rules! node_filter_sql {
    () => {
        concat!(
            "(?1 IS NULL OR cluster_uuid = ?1)
         AND (?2 IS NULL OR state = ?2)
         AND (?3 IS NULL OR uuid = ?3)
         AND (?4 IS NULL OR (uuid >= ?4 AND uuid < CAST(?4 || x'ff' AS TEXT)))
         AND (?5 IS NULL OR cluster_uuid IN (",
            visible_clusters_sql!("?5"),
            "))"
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
    swarm_leaving: bool,
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
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    node: &NodeRecord,
) -> Result<(Option<Verb>, String, Option<IpChange>), StoreError> {
    let before: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT state, public_ip FROM nodes WHERE uuid = ?")
            .bind(&node.uuid)
            .fetch_optional(&mut **tx)
            .await?;
    sqlx::query(
            "INSERT INTO nodes (uuid, cluster_uuid, slot, instance_id, state, availability_zone, subnet_id, public_ip, private_ip, nickname, tags, last_seen, created_at, deployed_at, destroyed_at, instance_public_ip)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?8)
             ON CONFLICT(uuid) DO UPDATE SET
                instance_id = excluded.instance_id,
                state = CASE WHEN excluded.state = 'Deploying'
                    AND nodes.state IN ('Deployed', 'Unreachable', 'Upgrading', 'Terminating')
                    THEN nodes.state ELSE excluded.state END,
                availability_zone = excluded.availability_zone,
                subnet_id = excluded.subnet_id,
                public_ip = CASE
                    WHEN excluded.public_ip IS NOT NULL
                        AND excluded.public_ip IS NOT nodes.instance_public_ip THEN excluded.public_ip
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
        sqlx::query_as("SELECT state, public_ip FROM nodes WHERE uuid = ?")
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

/// The control plane's database. Cheap to clone (pool handles).
///
/// SQLite has one writer at a time, so writes go through a pool of exactly one connection
/// (`writer`): they queue in the pool, first come first served, instead of several
/// connections polling SQLite's lock in its busy handler (which sleeps up to 100 ms a try)
/// while holding connections that reads need. Reads use `pool`, opened read-only, so a
/// write sent there by mistake fails in the tests instead of contending.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    writer: SqlitePool,
    events: EventBus,
}

impl Store {
    /// Opens (creating if needed) the database file and applies the migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL keeps the database consistent after a crash or power loss
            // (only the last commits may be lost) and avoids an fsync per transaction.
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.create_if_missing(false).read_only(true))
            .await?;
        Ok(Store {
            pool,
            writer,
            events: EventBus::new(),
        })
    }

    /// A write transaction on the writer connection. `BEGIN IMMEDIATE` takes SQLite's write
    /// lock up front, so another process writing the file (`sqlite3`, a backup tool) makes
    /// it wait under the busy timeout rather than fail on a stale snapshot.
    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
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
        sqlx::query(
            "INSERT OR IGNORE INTO installation (id, owner_id, created_at) VALUES (1, ?, ?)",
        )
        .bind(candidate)
        .bind(now)
        .execute(&self.writer)
        .await?;
        self.owner_id()
            .await?
            .ok_or_else(|| corrupt("installation", "1", "missing after insert"))
    }

    /// Inserts a user unless the name is taken; true when inserted.
    pub async fn insert_user(&self, user: &UserRecord, now: i64) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT OR IGNORE INTO users (username, api_key_salt, api_key_hash, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&user.username)
        .bind(&user.api_key_salt)
        .bind(&user.api_key_hash)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn user(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        Ok(sqlx::query_as::<_, UserRecord>(
            "SELECT username, api_key_salt, api_key_hash FROM users WHERE username = ?",
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
        tx.commit().await?;
        self.events
            .cluster(Verb::Create, &cluster.uuid, cluster.state.as_str());
        self.publish_action_created(action);
        Ok(())
    }

    pub async fn cluster(&self, uuid: &str) -> Result<Option<ClusterRecord>, StoreError> {
        let row = sqlx::query_as::<_, ClusterRow>(
            "SELECT uuid, name, nickname, spec, state, target_num_nodes, generation, next_slot, tags, auto_replace, current_action, created_at, deployed_at, destroyed_at FROM clusters WHERE uuid = ?",
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
        let (set_action, action_uuid) = match transition.current_action {
            Some(value) => (true, value),
            None => (false, None),
        };
        let result = sqlx::query(
            "UPDATE clusters SET state = ?1,
                target_num_nodes = COALESCE(?2, target_num_nodes),
                generation = generation + ?3,
                current_action = CASE WHEN ?4 THEN ?5 ELSE current_action END,
                deployed_at = COALESCE(deployed_at, ?6),
                destroyed_at = COALESCE(destroyed_at, ?7)
             WHERE uuid = ?8 AND state = ?9",
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
                "UPDATE actions SET state = ?, end_date = ?, can_be_canceled = 0, can_be_retried = ?
                 WHERE uuid = ? AND state IN (?, ?, ?) RETURNING object_uri",
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
            sqlx::query("UPDATE nodes SET state = ? WHERE uuid = ?")
                .bind(state.as_str())
                .bind(node_uuid)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if let (Some(finish), Some(object_uri)) = (&transition.finish_action, finished) {
            self.events
                .action(Verb::Update, finish.uuid, &object_uri, finish.state);
        }
        if transition.from != transition.to {
            let state = transition.to.as_str();
            self.events.cluster(Verb::for_state(state), uuid, state);
        }
        if let Some(action) = action {
            self.publish_action_created(action);
        }
        if let Some((node_uuid, state)) = node_state {
            self.events.node(
                Verb::for_state(state.as_str()),
                node_uuid,
                Some(uuid),
                state.as_str(),
            );
        }
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
                "UPDATE clusters SET state = ?1, target_num_nodes = ?2,
                    generation = generation + ?3,
                    current_action = CASE WHEN ?3 THEN ?4 ELSE current_action END
                 WHERE uuid = ?5 AND state = ?6",
            )
            .bind(change.to.as_str())
            .bind(i64::from(change.target))
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
                "UPDATE clusters SET nickname = COALESCE(?, nickname), tags = COALESCE(?, tags),
                    auto_replace = COALESCE(?, auto_replace)
                 WHERE uuid = ? RETURNING state",
            )
            .bind(patch.nickname)
            .bind(patch.tags.map(|tags| to_json(&tags)))
            .bind(patch.auto_replace)
            .bind(uuid)
            .fetch_optional(&mut *tx)
            .await?;
        }
        insert_action_in(&mut tx, action).await?;
        tx.commit().await?;
        match target {
            Some(change) if change.from != change.to => {
                let state = change.to.as_str();
                self.events.cluster(Verb::for_state(state), uuid, state);
            }
            _ => {
                if let Some(state) = state {
                    self.events.cluster(Verb::Update, uuid, &state);
                }
            }
        }
        self.publish_action_created(action);
        Ok(true)
    }

    /// The reconciler's slot high-water mark; it only ever grows.
    pub async fn raise_next_slot(&self, uuid: &str, next_slot: u32) -> Result<(), StoreError> {
        sqlx::query("UPDATE clusters SET next_slot = MAX(next_slot, ?) WHERE uuid = ?")
            .bind(i64::from(next_slot))
            .bind(uuid)
            .execute(&self.writer)
            .await?;
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
        tx.commit().await?;
        let mut ip_changes = Vec::with_capacity(nodes.len());
        for (node, (verb, after, ip_change)) in nodes.iter().zip(changes) {
            if let Some(verb) = verb {
                self.events
                    .node(verb, &node.uuid, node.cluster_uuid.as_deref(), &after);
            }
            ip_changes.push(ip_change);
        }
        Ok(ip_changes)
    }

    pub async fn node(&self, uuid: &str) -> Result<Option<NodeRecord>, StoreError> {
        let row = sqlx::query_as::<_, NodeRow>(
            "SELECT uuid, cluster_uuid, slot, instance_id, state, availability_zone, subnet_id, public_ip, private_ip, nickname, tags, last_seen, created_at, deployed_at, destroyed_at, (SELECT a.engine FROM node_agents a WHERE a.node_uuid = nodes.uuid) AS engine, (SELECT a.docker_version FROM node_agents a WHERE a.node_uuid = nodes.uuid) AS docker_version, (SELECT a.swarm_node_id FROM node_agents a WHERE a.node_uuid = nodes.uuid) AS swarm_node_id, swarm_leaving, swarm_released FROM nodes WHERE uuid = ?",
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
            " ORDER BY created_at, rowid LIMIT ?6 OFFSET ?7"
        ))
        .bind(&filter.cluster_uuid)
        .bind(&filter.state)
        .bind(&filter.uuid)
        .bind(&filter.uuid_prefix)
        .bind(&filter.viewer)
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
        .bind(&filter.viewer)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    pub async fn nodes_of(&self, cluster_uuid: &str) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = sqlx::query_as::<_, NodeRow>(
            "SELECT uuid, cluster_uuid, slot, instance_id, state, availability_zone, subnet_id, public_ip, private_ip, nickname, tags, last_seen, created_at, deployed_at, destroyed_at, (SELECT a.engine FROM node_agents a WHERE a.node_uuid = nodes.uuid) AS engine, (SELECT a.docker_version FROM node_agents a WHERE a.node_uuid = nodes.uuid) AS docker_version, (SELECT a.swarm_node_id FROM node_agents a WHERE a.node_uuid = nodes.uuid) AS swarm_node_id, swarm_leaving, swarm_released FROM nodes WHERE cluster_uuid = ? ORDER BY slot",
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
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "UPDATE nodes SET nickname = ?, tags = ? WHERE uuid = ? RETURNING state, cluster_uuid",
        )
        .bind(nickname)
        .bind(to_json(&tags))
        .bind(uuid)
        .fetch_optional(&self.writer)
        .await?;
        if let Some((state, cluster_uuid)) = row {
            self.events
                .node(Verb::Update, uuid, cluster_uuid.as_deref(), &state);
        }
        Ok(())
    }

    /// Marks a node gone (terminated by us, out of band, or a bring-your-own node removed)
    /// and revokes its agent's credential in the same transaction.
    pub async fn set_node_terminated(&self, uuid: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let before: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT state, cluster_uuid FROM nodes WHERE uuid = ?")
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
            "UPDATE nodes SET state = ?, destroyed_at = COALESCE(destroyed_at, ?) WHERE uuid = ?",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(uuid)
        .execute(&mut *tx)
        .await?;
        revoke_agent_in(&mut tx, uuid, now).await?;
        tx.commit().await?;
        self.events
            .node(Verb::Delete, uuid, cluster_uuid.as_deref(), to.as_str());
        Ok(())
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
        let moved: Option<Option<String>> = sqlx::query_scalar(
            "UPDATE nodes SET state = ? WHERE uuid = ? AND state = ? RETURNING cluster_uuid",
        )
        .bind(to.as_str())
        .bind(uuid)
        .bind(from.as_str())
        .fetch_optional(&self.writer)
        .await?;
        if let Some(cluster) = &moved {
            self.events.node(
                Verb::for_state(to.as_str()),
                uuid,
                cluster.as_deref(),
                to.as_str(),
            );
        }
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
            "SELECT n.uuid AS node_uuid, n.public_ip, n.state, c.name AS cluster_name
             FROM nodes n LEFT JOIN clusters c ON c.uuid = n.cluster_uuid
             WHERE n.state != 'Terminated' AND n.public_ip IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    // ---- actions ----

    pub async fn insert_action(&self, action: &ActionRecord) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        insert_action_in(&mut tx, action).await?;
        tx.commit().await?;
        self.publish_action_created(action);
        Ok(())
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

    fn publish_action_created(&self, action: &ActionRecord) {
        self.events.action(
            Verb::Create,
            &action.uuid,
            &action.object_uri,
            &action.state,
        );
    }

    pub async fn action(&self, uuid: &str) -> Result<Option<ActionRecord>, StoreError> {
        Ok(sqlx::query_as::<_, ActionRecord>(
            "SELECT uuid, object_uri, label, method, path, username, user_agent, ip, state, start_date, end_date, body, logs, can_be_canceled, can_be_retried FROM actions WHERE uuid = ?",
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
        sqlx::query("UPDATE actions SET logs = logs || ? WHERE uuid = ?")
            .bind(text)
            .bind(uuid)
            .execute(&self.writer)
            .await?;
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
            let object_uri: Option<String> = sqlx::query_scalar(
                "UPDATE actions SET state = ?, end_date = ?, can_be_canceled = ?, can_be_retried = ? WHERE uuid = ? AND state = ? RETURNING object_uri",
            )
            .bind(to)
            .bind(end_date)
            .bind(can_be_canceled)
            .bind(can_be_retried)
            .bind(uuid)
            .bind(state)
            .fetch_optional(&self.writer)
            .await?;
            if let Some(object_uri) = object_uri {
                self.events.action(Verb::Update, uuid, &object_uri, to);
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// One cluster's insert inside `tx`.
async fn insert_cluster_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    cluster: &ClusterRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO clusters (uuid, name, nickname, spec, state, target_num_nodes, generation, next_slot, tags, auto_replace, current_action, created_at, deployed_at, destroyed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    node_uuid: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE node_agents SET revoked_at = COALESCE(revoked_at, ?) WHERE node_uuid = ?")
        .bind(now)
        .bind(node_uuid)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_action_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    action: &ActionRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO actions (uuid, object_uri, label, method, path, username, user_agent, ip, state, start_date, end_date, body, logs, can_be_canceled, can_be_retried) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        let mut migrator = sqlx::migrate!("./migrations");
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
             VALUES ('c1', 'web', 'my web', ?, 'Deployed', 5, 3, 7, '[\"new\",\"blue\"]', NULL, 10)",
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

    #[tokio::test]
    async fn a_patch_changes_each_field_in_one_place_in_one_transaction() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("old.db");
        old_database(&path).await;
        let store = Store::open(&path).await.expect("upgrade");
        let action = |uuid: &str| ActionRecord {
            uuid: uuid.into(),
            object_uri: "/api/infra/v1/nodecluster/c1/".into(),
            label: "Node Cluster Update".into(),
            method: "PATCH".into(),
            path: "/".into(),
            username: "u".into(),
            user_agent: String::new(),
            ip: String::new(),
            state: "Success".into(),
            start_date: 0,
            end_date: Some(0),
            body: String::new(),
            logs: String::new(),
            can_be_canceled: false,
            can_be_retried: false,
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
}
