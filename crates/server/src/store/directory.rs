//! The store's side of LDAP sign-in (issue #15, part 2; migration 0012): the directory
//! settings (servers with their sealed bind passwords, ordered searches), teams' group
//! DNs, and the users the directory created.
//!
//! Design decisions:
//! * Settings are replaced whole in one transaction (`PUT` semantics): positions are the
//!   order, so "the first server is the default domain's" and "searches run in order" are
//!   the rows' order, nothing else.
//! * The bind passwords are stored only as a nonce and a ciphertext; sealing and opening
//!   is the application's (`crate::secrets`), as for linked AWS keys.
//! * A disabled user is filtered out by `access_user` (`disabled_at IS NULL`), so its keys,
//!   sessions and grants stop working at the next request without anything else changing.

use flotilla_core::plan::directory::MappedTeam;

use super::{Store, StoreError};

/// A directory server as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LdapServerRow {
    pub url: String,
    pub tls: String,
    pub ca_pem: Option<String>,
    pub bind_dn: String,
    pub password_nonce: Vec<u8>,
    pub password_sealed: Vec<u8>,
    pub domain: Option<String>,
}

/// A user search as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LdapSearchRow {
    pub base_dn: String,
    pub scope: String,
    pub filter: String,
    pub username_attribute: String,
    pub full_name_attribute: Option<String>,
}

/// A user the directory created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUserRow {
    pub username: String,
    pub dn: String,
    pub disabled: bool,
}

impl Store {
    /// The directory servers (in order) and searches (in order); both empty: LDAP is off.
    pub async fn ldap_settings(
        &self,
    ) -> Result<(Vec<LdapServerRow>, Vec<LdapSearchRow>), StoreError> {
        let servers = sqlx::query_as::<_, LdapServerRow>(
            "SELECT url, tls, ca_pem, bind_dn, password_nonce, password_sealed, domain FROM ldap_servers ORDER BY position",
        )
        .fetch_all(&self.pool)
        .await?;
        let searches = sqlx::query_as::<_, LdapSearchRow>(
            "SELECT base_dn, scope, filter, username_attribute, full_name_attribute FROM ldap_searches ORDER BY position",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok((servers, searches))
    }

    /// Replaces the directory settings.
    pub async fn put_ldap_settings(
        &self,
        servers: &[LdapServerRow],
        searches: &[LdapSearchRow],
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM ldap_servers")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM ldap_searches")
            .execute(&mut *tx)
            .await?;
        for (position, server) in (0i64..).zip(servers) {
            sqlx::query(
                "INSERT INTO ldap_servers (position, url, tls, ca_pem, bind_dn, password_nonce, password_sealed, domain) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(position)
            .bind(&server.url)
            .bind(&server.tls)
            .bind(&server.ca_pem)
            .bind(&server.bind_dn)
            .bind(&server.password_nonce)
            .bind(&server.password_sealed)
            .bind(&server.domain)
            .execute(&mut *tx)
            .await?;
        }
        for (position, search) in (0i64..).zip(searches) {
            sqlx::query(
                "INSERT INTO ldap_searches (position, base_dn, scope, filter, username_attribute, full_name_attribute) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(position)
            .bind(&search.base_dn)
            .bind(&search.scope)
            .bind(&search.filter)
            .bind(&search.username_attribute)
            .bind(&search.full_name_attribute)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The users the directory created, disabled ones included.
    pub async fn directory_users(&self) -> Result<Vec<DirectoryUserRow>, StoreError> {
        let rows: Vec<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT username, directory_dn, disabled_at FROM users WHERE directory_dn IS NOT NULL AND deleted_at IS NULL ORDER BY username",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(username, dn, disabled)| DirectoryUserRow {
                username,
                dn,
                disabled: disabled.is_some(),
            })
            .collect())
    }

    /// The directory user `username` (disabled or not); `None` for a local or unknown user.
    pub async fn directory_user(
        &self,
        username: &str,
    ) -> Result<Option<DirectoryUserRow>, StoreError> {
        Ok(self
            .directory_users()
            .await?
            .into_iter()
            .find(|u| u.username == username))
    }

    /// Creates the user the directory found at sign-in, or makes an existing one (a local
    /// user of that name, or a disabled directory user) the directory's, enabled. False when
    /// the name belongs to a removed user (names are not reused).
    pub async fn adopt_directory_user(
        &self,
        username: &str,
        dn: &str,
        full_name: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let result = sqlx::query(
            "INSERT INTO users (username, api_key_salt, api_key_hash, created_at, admin, directory_dn, full_name) VALUES ($1, '', '', $2, 0, $3, $4)
             ON CONFLICT (username) DO UPDATE SET directory_dn = excluded.directory_dn, full_name = excluded.full_name, disabled_at = NULL
             WHERE users.deleted_at IS NULL",
        )
        .bind(username)
        .bind(now)
        .bind(dn)
        .bind(full_name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    /// Disables (`Some(time)`) or enables (`None`) a directory user.
    pub async fn set_user_disabled(
        &self,
        username: &str,
        disabled_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE users SET disabled_at = $1 WHERE username = $2 AND directory_dn IS NOT NULL",
        )
        .bind(disabled_at)
        .bind(username)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Teams mapped to a directory group.
    pub async fn mapped_teams(&self) -> Result<Vec<MappedTeam>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT org, name, ldap_group_dn FROM teams WHERE ldap_group_dn IS NOT NULL ORDER BY org, name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(org, team, group_dn)| MappedTeam {
                org,
                team,
                group_dn,
            })
            .collect())
    }

    /// Maps a team to a directory group (`None`: unmaps it); false for an unknown team.
    pub async fn set_team_group(
        &self,
        org: &str,
        team: &str,
        group_dn: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let result =
            sqlx::query("UPDATE teams SET ldap_group_dn = $1 WHERE org = $2 AND name = $3")
                .bind(group_dn)
                .bind(org)
                .bind(team)
                .execute(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    /// A team's group DN, if it is mapped.
    pub async fn team_group(&self, org: &str, team: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT ldap_group_dn FROM teams WHERE org = $1 AND name = $2")
                .bind(org)
                .bind(team)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(dn,)| dn))
    }

    /// Every (org, team, username) membership in a mapped team.
    pub async fn mapped_memberships(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT m.org, m.team, m.username FROM team_members m JOIN teams t ON t.org = m.org AND t.name = m.team WHERE t.ldap_group_dn IS NOT NULL ORDER BY m.org, m.team, m.username",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{Backend, store, store_tests};

    store_tests!(settings_directory_users_and_mapped_teams);

    async fn settings_directory_users_and_mapped_teams(backend: Backend) {
        let store = store(backend).await;
        {
            let server = LdapServerRow {
                url: "ldaps://127.0.0.1:6360".into(),
                tls: "ldaps".into(),
                ca_pem: Some("PEM".into()),
                bind_dn: "cn=admin,dc=example".into(),
                password_nonce: vec![1; 12],
                password_sealed: vec![2; 20],
                domain: None,
            };
            let search = LdapSearchRow {
                base_dn: "ou=people,dc=example".into(),
                scope: "sub".into(),
                filter: "(objectClass=person)".into(),
                username_attribute: "uid".into(),
                full_name_attribute: Some("cn".into()),
            };
            store
                .put_ldap_settings(&[server.clone()], &[search.clone()])
                .await
                .expect("put");
            assert_eq!(
                store.ldap_settings().await.expect("get"),
                (vec![server], vec![search])
            );
            assert!(
                store
                    .adopt_directory_user("alice", "uid=alice,dc=example", Some("Alice"), 1)
                    .await
                    .expect("adopt")
            );
            assert!(store.access_user("alice").await.expect("user").is_some());
            store
                .set_user_disabled("alice", Some(2))
                .await
                .expect("disable");
            assert!(store.access_user("alice").await.expect("user").is_none());
            assert_eq!(
                store.directory_users().await.expect("users"),
                vec![DirectoryUserRow {
                    username: "alice".into(),
                    dn: "uid=alice,dc=example".into(),
                    disabled: true,
                }]
            );
            // Found again: enabled.
            store
                .adopt_directory_user("alice", "uid=alice,dc=example", None, 3)
                .await
                .expect("adopt");
            assert!(store.access_user("alice").await.expect("user").is_some());
            assert!(store.create_org("corp", 1).await.expect("org"));
            assert!(store.create_team("corp", "ops", 1).await.expect("team"));
            assert!(
                store
                    .set_team_group("corp", "ops", Some("cn=ops,dc=example"))
                    .await
                    .expect("map")
            );
            store
                .change_members("corp", "ops", &["alice".into()], &[])
                .await
                .expect("members");
            assert_eq!(
                store.mapped_teams().await.expect("teams"),
                vec![MappedTeam {
                    org: "corp".into(),
                    team: "ops".into(),
                    group_dn: "cn=ops,dc=example".into(),
                }]
            );
            assert_eq!(
                store.mapped_memberships().await.expect("members"),
                vec![("corp".into(), "ops".into(), "alice".into())]
            );
        }
    }
}
