//! Access control's tables (migration 0009): users' API keys and passwords, organizations,
//! teams and their members, grants, and which organization owns each resource.
//!
//! Design decisions:
//! * Portable SQL with `$1, $2…` placeholders (each first used in numeric order, which is
//!   how SQLite numbers them too), `ON CONFLICT` instead of SQLite's `OR IGNORE`: the same
//!   text runs on PostgreSQL.
//! * The store answers questions, it decides nothing: which grants a user holds
//!   ([`Store::grants_of`]), which organization owns a resource ([`Store::owner`]). The
//!   decision is the `authz` module's. The one place where the rule is also written in SQL
//!   is `visible_clusters_sql!`, the subquery that cuts the node list to what a member may
//!   view (so a page of 25 stays an index scan); `tests/it/access.rs` checks that a member's
//!   nodes are exactly those of the clusters `authz` lets it see.
//! * Ownership is written in the transaction that creates the resource
//!   ([`own_in`]), so no resource ever exists without an owner.

use flotilla_api::Role;

use super::{Store, StoreError};

/// A user as access control knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUser {
    pub username: String,
    /// The server administrator: sees and does everything.
    pub admin: bool,
    /// argon2 PHC string, if the user has a password.
    pub password_hash: Option<String>,
    pub created_at: i64,
}

/// A `users` row as access control reads it: name, admin flag, password hash, creation.
type UserRow = (String, i64, Option<String>, i64);

impl From<UserRow> for AccessUser {
    fn from((username, admin, password_hash, created_at): UserRow) -> AccessUser {
        AccessUser {
            username,
            admin: admin != 0,
            password_hash,
            created_at,
        }
    }
}

/// One API key's stored form: never the key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiKeyRecord {
    pub id: String,
    pub username: String,
    pub name: String,
    pub salt: String,
    pub hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// A team's role on a resource (`resource` = its uuid) or on all of the organization's
/// (`resource` = [`ALL`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub id: String,
    pub org: String,
    pub team: String,
    pub resource: String,
    pub role: Role,
    pub created_at: i64,
}

/// Who owns a resource: the organization, and the swarm a swarm's cluster belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub org: String,
    pub parent: Option<String>,
}

/// A grant's `resource` meaning every resource of the organization.
pub const ALL: &str = "*";
/// The organization existing clusters and swarms went to (migration 0009) and where a
/// server administrator's creates go when they name none.
pub const DEFAULT_ORG: &str = "default";

/// The node clusters the user bound to placeholder `$p` may view: a grant of any role, in
/// the owning organization, on the cluster, its swarm, or everything (`authz`'s
/// `Principal::role_on`, in SQL). A subquery for `cluster_uuid IN (…)`; a macro so that it
/// stays static SQL (`concat!`).
macro_rules! visible_clusters_sql {
    ($p:literal) => {
        concat!(
            "SELECT o.resource FROM owners o JOIN grants g ON g.org = o.org AND (g.resource = '*' OR g.resource = o.resource OR g.resource = o.parent) JOIN team_members m ON m.org = g.org AND m.team = g.team WHERE o.kind = 'nodecluster' AND m.username = ",
            $p
        )
    };
}

#[derive(sqlx::FromRow)]
struct GrantRow {
    id: String,
    org: String,
    team: String,
    resource: String,
    role: String,
    created_at: i64,
}

impl TryFrom<GrantRow> for GrantRecord {
    type Error = StoreError;
    fn try_from(row: GrantRow) -> Result<Self, StoreError> {
        let role = row
            .role
            .parse()
            .map_err(|e: String| super::corrupt("grants", &row.id, e))?;
        Ok(GrantRecord {
            id: row.id,
            org: row.org,
            team: row.team,
            resource: row.resource,
            role,
            created_at: row.created_at,
        })
    }
}

/// A grant's columns, for `concat!` (sqlx takes only static SQL).
macro_rules! grant_columns {
    () => {
        "SELECT g.id, g.org, g.team, g.resource, g.role, g.created_at FROM grants g "
    };
}

/// Records who owns a new resource, inside the transaction that creates it.
pub(super) async fn own_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    resource: &str,
    kind: &str,
    org: &str,
    parent: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO owners (resource, kind, org, parent) VALUES ($1, $2, $3, $4)")
        .bind(resource)
        .bind(kind)
        .bind(org)
        .bind(parent)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    // ---- users and keys ----

    /// Creates a user with its first key (if any), in one transaction; false (and nothing
    /// written) when the name is taken.
    pub async fn create_user(
        &self,
        user: &AccessUser,
        key: Option<&ApiKeyRecord>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO users (username, api_key_salt, api_key_hash, created_at, password_hash, admin) VALUES ($1, '', '', $2, $3, $4) ON CONFLICT (username) DO NOTHING",
        )
        .bind(&user.username)
        .bind(user.created_at)
        .bind(&user.password_hash)
        .bind(i64::from(user.admin))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            return Ok(false);
        }
        if let Some(key) = key {
            insert_key_in(&mut tx, key).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn access_user(&self, username: &str) -> Result<Option<AccessUser>, StoreError> {
        let row: Option<UserRow> = sqlx::query_as(
            "SELECT username, admin, password_hash, created_at FROM users WHERE username = $1 AND deleted_at IS NULL AND disabled_at IS NULL",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(AccessUser::from))
    }

    pub async fn access_users(&self) -> Result<Vec<AccessUser>, StoreError> {
        let rows: Vec<UserRow> = sqlx::query_as(
            "SELECT username, admin, password_hash, created_at FROM users WHERE deleted_at IS NULL AND disabled_at IS NULL ORDER BY username",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(AccessUser::from).collect())
    }

    /// Sets (or with `None` removes) a user's password hash; false for an unknown user.
    pub async fn set_password(
        &self,
        username: &str,
        password_hash: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let result = sqlx::query("UPDATE users SET password_hash = $1 WHERE username = $2")
            .bind(password_hash)
            .bind(username)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    /// Removes a user: its keys are revoked (kept for the audit trail) and its team
    /// memberships dropped; actions keep its name. False for an unknown user.
    pub async fn delete_user(&self, username: &str, now: i64) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        for statement in [
            "DELETE FROM team_members WHERE username = $1",
            "DELETE FROM dashboard_sessions WHERE username = $1",
        ] {
            sqlx::query(statement)
                .bind(username)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE username = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(username)
        .execute(&mut *tx)
        .await?;
        // The row stays (keys and byo tokens refer to it), marked removed: no sign-in, no
        // session (a dashboard session of the user ends at its next request).
        let result = sqlx::query(
            "UPDATE users SET password_hash = NULL, admin = 0, api_key_hash = '', deleted_at = $1 WHERE username = $2 AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(username)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let inserted = insert_key_in(&mut tx, key).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// A user's keys, revoked ones included, oldest first.
    pub async fn api_keys(&self, username: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        Ok(sqlx::query_as::<_, ApiKeyRecord>(
            "SELECT id, username, name, salt, hash, created_at, revoked_at FROM api_keys WHERE username = $1 ORDER BY created_at, id",
        )
        .bind(username)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The keys that may sign in as `username` now.
    pub async fn active_api_keys(&self, username: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        Ok(sqlx::query_as::<_, ApiKeyRecord>(
            "SELECT id, username, name, salt, hash, created_at, revoked_at FROM api_keys WHERE username = $1 AND revoked_at IS NULL",
        )
        .bind(username)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes a key by id or name; false when the user has no such active key.
    pub async fn revoke_api_key(
        &self,
        username: &str,
        key: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let result = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE username = $2 AND (id = $3 OR name = $3) AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(username)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(result.rows_affected() > 0)
    }

    // ---- organizations and teams ----

    /// False when the name is taken.
    pub async fn create_org(&self, name: &str, now: i64) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let result = sqlx::query(
            "INSERT INTO organizations (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    /// Every organization, by name, with its creation time.
    pub async fn orgs(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT name, created_at FROM organizations ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// How many resources the organization owns (an organization that owns some cannot be
    /// removed).
    pub async fn owned_count(&self, org: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM owners o WHERE o.org = $1 AND NOT EXISTS (SELECT 1 FROM clusters c WHERE c.uuid = o.resource AND c.state = 'Terminated') AND NOT EXISTS (SELECT 1 FROM swarms s WHERE s.uuid = o.resource AND s.state = 'Terminated')")
                .bind(org)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Removes an organization with its teams, members and grants; its terminated
    /// resources stay owned by it in the audit trail's terms. False when it did not exist.
    pub async fn delete_org(&self, org: &str) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        for sql in [
            "DELETE FROM grants WHERE org = $1",
            "DELETE FROM team_members WHERE org = $1",
            "DELETE FROM teams WHERE org = $1",
        ] {
            sqlx::query(sql).bind(org).execute(&mut *tx).await?;
        }
        // Owner rows of terminated resources move to the default organization, so the
        // organization's name can be reused without inheriting them.
        sqlx::query("UPDATE owners SET org = $1 WHERE org = $2")
            .bind(DEFAULT_ORG)
            .bind(org)
            .execute(&mut *tx)
            .await?;
        let result = sqlx::query("DELETE FROM organizations WHERE name = $1")
            .bind(org)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    /// False when the team exists already.
    pub async fn create_team(&self, org: &str, name: &str, now: i64) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let result = sqlx::query(
            "INSERT INTO teams (org, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (org, name) DO NOTHING",
        )
        .bind(org)
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    /// An organization's teams with their members, by name.
    pub async fn teams(&self, org: &str) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT t.name, m.username FROM teams t LEFT JOIN team_members m ON m.org = t.org AND m.team = t.name WHERE t.org = $1 ORDER BY t.name, m.username",
        )
        .bind(org)
        .fetch_all(&self.pool)
        .await?;
        let mut teams: Vec<(String, Vec<String>)> = Vec::new();
        for (team, member) in rows {
            if teams.last().is_none_or(|(name, _)| *name != team) {
                teams.push((team, Vec::new()));
            }
            if let (Some(member), Some((_, members))) = (member, teams.last_mut()) {
                members.push(member);
            }
        }
        Ok(teams)
    }

    /// Removes a team with its members and grants; false when it did not exist.
    pub async fn delete_team(&self, org: &str, team: &str) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        for sql in [
            "DELETE FROM grants WHERE org = $1 AND team = $2",
            "DELETE FROM team_members WHERE org = $1 AND team = $2",
        ] {
            sqlx::query(sql)
                .bind(org)
                .bind(team)
                .execute(&mut *tx)
                .await?;
        }
        let result = sqlx::query("DELETE FROM teams WHERE org = $1 AND name = $2")
            .bind(org)
            .bind(team)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    /// Adds and removes members in one transaction (the caller checked that the team and
    /// the users exist).
    pub async fn change_members(
        &self,
        org: &str,
        team: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        for username in add {
            sqlx::query(
                "INSERT INTO team_members (org, team, username) VALUES ($1, $2, $3) ON CONFLICT (org, team, username) DO NOTHING",
            )
            .bind(org)
            .bind(team)
            .bind(username)
            .execute(&mut *tx)
            .await?;
        }
        for username in remove {
            sqlx::query("DELETE FROM team_members WHERE org = $1 AND team = $2 AND username = $3")
                .bind(org)
                .bind(team)
                .bind(username)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- grants and ownership ----

    /// Adds a grant, or changes the role of the team's grant on the same resource.
    pub async fn put_grant(&self, grant: &GrantRecord) -> Result<GrantRecord, StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO grants (id, org, team, resource, role, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (org, team, resource) DO UPDATE SET role = excluded.role",
        )
        .bind(&grant.id)
        .bind(&grant.org)
        .bind(&grant.team)
        .bind(&grant.resource)
        .bind(grant.role.as_str())
        .bind(grant.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let row = sqlx::query_as::<_, GrantRow>(concat!(
            grant_columns!(),
            "WHERE g.org = $1 AND g.team = $2 AND g.resource = $3"
        ))
        .bind(&grant.org)
        .bind(&grant.team)
        .bind(&grant.resource)
        .fetch_one(&self.pool)
        .await?;
        row.try_into()
    }

    /// An organization's grants, by team and resource.
    pub async fn grants(&self, org: &str) -> Result<Vec<GrantRecord>, StoreError> {
        let rows = sqlx::query_as::<_, GrantRow>(concat!(
            grant_columns!(),
            "WHERE g.org = $1 ORDER BY g.team, g.resource"
        ))
        .bind(org)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Removes a grant by id; false when the organization has no such grant.
    pub async fn delete_grant(&self, org: &str, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let result = sqlx::query("DELETE FROM grants WHERE org = $1 AND id = $2")
            .bind(org)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    /// Every grant `username` holds through its teams: what `authz` decides with.
    pub async fn grants_of(&self, username: &str) -> Result<Vec<GrantRecord>, StoreError> {
        let rows = sqlx::query_as::<_, GrantRow>(concat!(
            grant_columns!(),
            "JOIN team_members m ON m.org = g.org AND m.team = g.team WHERE m.username = $1"
        ))
        .bind(username)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// The organizations `username` is a member of (through any team).
    pub async fn orgs_of(&self, username: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT org FROM team_members WHERE username = $1 ORDER BY org",
        )
        .bind(username)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Who owns a node cluster or a swarm; `None` for an unknown uuid.
    pub async fn owner(&self, resource: &str) -> Result<Option<Owner>, StoreError> {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT org, parent FROM owners WHERE resource = $1")
                .bind(resource)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(org, parent)| Owner { org, parent }))
    }

    /// The kind (`nodecluster` or `swarm`) of an owned resource of `org`.
    pub async fn owned_kind(
        &self,
        org: &str,
        resource: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT kind FROM owners WHERE org = $1 AND resource = $2")
                .bind(org)
                .bind(resource)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The owner of every node cluster and swarm (for filtering lists).
    pub async fn owners(&self) -> Result<std::collections::HashMap<String, Owner>, StoreError> {
        let rows: Vec<(String, String, Option<String>)> =
            sqlx::query_as("SELECT resource, org, parent FROM owners")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(resource, org, parent)| (resource, Owner { org, parent }))
            .collect())
    }

    /// The cluster of each of the given nodes that has one (for filtering actions).
    pub async fn cluster_of_node(&self, node: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT cluster_uuid FROM nodes WHERE uuid = $1")
                .bind(node)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }
}

async fn insert_key_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    key: &ApiKeyRecord,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "INSERT INTO api_keys (id, username, name, salt, hash, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (username, name) DO NOTHING",
    )
    .bind(&key.id)
    .bind(&key.username)
    .bind(&key.name)
    .bind(&key.salt)
    .bind(&key.hash)
    .bind(key.created_at)
    .bind(key.revoked_at)
    .execute(&mut **tx)
    .await?;
    Ok(result.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::str::FromStr as _;

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

    use super::*;

    async fn migrate_to(pool: &SqlitePool, version: i64) {
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.migrations = Cow::Owned(
            migrator
                .migrations
                .iter()
                .filter(|m| m.version <= version)
                .cloned()
                .collect(),
        );
        migrator.run(pool).await.expect("migrations");
    }

    /// An installation from before access control (migrations 1 to 8): the bootstrap admin
    /// with its one key, a node cluster and a swarm with its two clusters. After migration
    /// 0009 the admin is the server administrator with the same key (named `default`), and
    /// every resource belongs to the `default` organization (a swarm's clusters under it).
    #[tokio::test]
    async fn an_installation_from_before_access_control_keeps_its_admin_and_its_resources() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("old.db");
        let options = SqliteConnectOptions::from_str("sqlite:")
            .expect("options")
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("connect");
        migrate_to(&pool, 8).await;
        sqlx::query("INSERT INTO users (username, api_key_salt, api_key_hash, created_at) VALUES ('admin', 'salt', 'hash', 5)")
            .execute(&pool)
            .await
            .expect("admin");
        for uuid in ["c1", "m1", "w1"] {
            sqlx::query("INSERT INTO clusters (uuid, name, nickname, spec, state, target_num_nodes, tags, created_at) VALUES ($1, $1, $1, '{}', 'Deployed', 1, '[]', 10)")
                .bind(uuid)
                .execute(&pool)
                .await
                .expect("cluster");
        }
        sqlx::query("INSERT INTO swarms (uuid, name, state, managers, manager_cluster, worker_cluster, created_at) VALUES ('s1', 'prod', 'Deployed', 1, 'm1', 'w1', 10)")
            .execute(&pool)
            .await
            .expect("swarm");
        pool.close().await;

        let store = Store::open(&path).await.expect("upgrade");
        let admin = store
            .access_user("admin")
            .await
            .expect("read")
            .expect("admin");
        assert!(
            admin.admin,
            "the bootstrap admin is the server administrator"
        );
        let keys = store.active_api_keys("admin").await.expect("keys");
        assert_eq!(keys.len(), 1);
        assert_eq!(
            (
                keys[0].name.as_str(),
                keys[0].salt.as_str(),
                keys[0].hash.as_str()
            ),
            ("default", "salt", "hash"),
            "the same key still signs in"
        );
        let owner = |org: &str, parent: Option<&str>| Owner {
            org: org.to_owned(),
            parent: parent.map(str::to_owned),
        };
        assert_eq!(
            store.owner("c1").await.expect("owner"),
            Some(owner(DEFAULT_ORG, None))
        );
        assert_eq!(
            store.owner("s1").await.expect("owner"),
            Some(owner(DEFAULT_ORG, None))
        );
        for cluster in ["m1", "w1"] {
            assert_eq!(
                store.owner(cluster).await.expect("owner"),
                Some(owner(DEFAULT_ORG, Some("s1")))
            );
        }
        assert_eq!(
            store
                .owned_kind(DEFAULT_ORG, "s1")
                .await
                .expect("kind")
                .as_deref(),
            Some("swarm")
        );
        store.close().await;
    }
}
