//! LDAP / Active Directory sign-in and sync (issue #15, part 2), as seed 004 describes
//! UCP's: one or more directory servers (the first serves the default domain), an ordered
//! list of user searches, passwords forwarded to the directory, users created on their
//! first sign-in, directory groups mapped to teams.
//!
//! Design decisions:
//! * **Who signs in where.** API keys are checked first (a directory user's keys work like
//!   anyone's). Then, with LDAP configured, the name goes to the directory
//!   (`plan::directory::server_for`): found by a search, the password is checked by binding
//!   as the user, and only by that — a directory user has no local password; not found, a
//!   local user of that name signs in with its own password as before (seed 004: "manually
//!   created users whose usernames don't match any LDAP search results are still
//!   available"). A local user whose name a search finds becomes the directory's.
//! * **Same answer, same path.** A wrong password and an unknown name both take one
//!   search, one bind (as a DN that cannot exist, for the unknown name) and one argon2
//!   verification, and both answer the same 401; so neither the message nor the work done
//!   tells whether the name exists.
//! * **Losing access.** A directory user the directory no longer finds (deleted, disabled by
//!   a search filter, moved) is disabled at its next sign-in attempt or the next sync; a
//!   disabled user is invisible to `access_user`, so its keys, sessions and grants stop at
//!   the next request. Found again, it is enabled again.
//! * **Sync** (periodic, `--ldap-sync-interval`, and `POST /api/access/v1/ldap/sync/`):
//!   observe (every directory user looked up, every mapped team's group read), plan
//!   (`flotilla_core::plan::directory::plan`), apply. A directory that cannot be reached
//!   fails the sync and changes nothing, so an outage never disables everyone. Sign-in runs
//!   the same sync for its one user, so a new user has its teams at once.
//! * **Administrators stay local.** A local server administrator is never adopted by the
//!   directory, even when a search finds its name: adding an entry named `admin` to the
//!   directory must not make anyone the server administrator.
//! * Bind passwords are sealed at rest like linked AWS keys (`crate::secrets`), opened only
//!   to bind, never answered (`bind_password_set` says whether one is stored) and never
//!   logged; settings changes record an action without the request body.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_api::{self as api, date, uri};
use flotilla_core::cloud::Cloud;
use flotilla_core::plan::directory::{self as planner, DirectoryUser, Observed};
use serde_json::Value;

use super::access::check_name;
use super::{App, AppError, AppResult, Caller, Login, SignedInWith, random_hex};
use crate::ldap::{self, Search, Server, Tls};
use crate::store::directory::{LdapSearchRow, LdapServerRow};

/// The directory as configured: servers (passwords opened) and searches.
#[derive(Debug, Clone)]
pub struct Directory {
    pub servers: Vec<Server>,
    pub searches: Vec<Search>,
}

impl Directory {
    fn domains(&self) -> Vec<Option<String>> {
        self.servers.iter().map(|s| s.domain.clone()).collect()
    }
}

fn unavailable(error: ldap::LdapError) -> AppError {
    tracing::warn!(error = %error, "LDAP directory");
    AppError::Unavailable("the LDAP directory cannot be reached; try again later".into())
}

/// Checks a Flotilla user name the directory gave: `name` or `name@domain`.
fn check_directory_name(username: &str) -> AppResult<()> {
    let (name, domain) = match username.split_once('@') {
        Some((name, domain)) => (name, Some(domain)),
        None => (username, None),
    };
    check_name("username", name)?;
    if let Some(domain) = domain {
        check_name("domain", &domain.replace('.', "-"))?;
    }
    Ok(())
}

fn key(org: &str, team: &str, user: &str) -> String {
    format!("{org}/{team}/{user}")
}

impl<C: Cloud + 'static> App<C> {
    /// The directory, if LDAP is configured.
    pub async fn directory(&self) -> AppResult<Option<Directory>> {
        let (servers, searches) = self.store.ldap_settings().await?;
        if servers.is_empty() {
            return Ok(None);
        }
        let Some(secret_key) = &self.secret_key else {
            return Err(AppError::Unavailable(
                "this server has no key to open the LDAP bind password with".into(),
            ));
        };
        let mut opened = Vec::new();
        for row in servers {
            let password = secret_key
                .open(
                    crate::secrets::LDAP_BIND_PASSWORD,
                    &row.password_nonce,
                    &row.password_sealed,
                )
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    AppError::Unavailable("the LDAP bind password cannot be opened".into())
                })?;
            opened.push(Server {
                tls: Tls::parse(&row.tls).unwrap_or(Tls::Ldaps),
                url: row.url,
                ca_pem: row.ca_pem,
                bind_dn: row.bind_dn,
                bind_password: password,
                domain: row.domain,
            });
        }
        Ok(Some(Directory {
            servers: opened,
            searches: searches
                .into_iter()
                .map(|s| Search {
                    base_dn: s.base_dn,
                    scope: s.scope,
                    filter: s.filter,
                    username_attribute: s.username_attribute,
                    full_name_attribute: s.full_name_attribute,
                })
                .collect(),
        }))
    }

    /// `GET ldap/`: the settings, without passwords.
    pub async fn ldap_settings(&self) -> AppResult<api::LdapSettings> {
        let (servers, searches) = self.store.ldap_settings().await?;
        Ok(api::LdapSettings {
            servers: servers
                .into_iter()
                .map(|s| api::LdapServer {
                    url: s.url,
                    tls: s.tls,
                    ca_pem: s.ca_pem,
                    bind_dn: s.bind_dn,
                    bind_password: None,
                    bind_password_set: !s.password_sealed.is_empty(),
                    domain: s.domain,
                })
                .collect(),
            searches: searches
                .into_iter()
                .map(|s| api::LdapSearch {
                    base_dn: s.base_dn,
                    scope: s.scope,
                    filter: s.filter,
                    username_attribute: s.username_attribute,
                    full_name_attribute: s.full_name_attribute,
                })
                .collect(),
        })
    }

    /// `PUT ldap/`: replaces the settings (`{"servers": [], "searches": []}` turns LDAP
    /// off). Each error names its field (`servers[1].domain: …`).
    pub async fn put_ldap_settings(
        &self,
        caller: &Caller,
        body: &Value,
    ) -> AppResult<api::LdapSettings> {
        let settings: api::LdapSettings = serde_json::from_value(body.clone())
            .map_err(|e| AppError::BadRequest(format!("the LDAP settings: {e}")))?;
        let Some(secret_key) = &self.secret_key else {
            return Err(AppError::Unavailable(
                "this server has no key to seal the LDAP bind password with".into(),
            ));
        };
        let (stored, _) = self.store.ldap_settings().await?;
        let mut servers = Vec::new();
        for (i, server) in settings.servers.iter().enumerate() {
            let field = |name: &str| format!("servers[{i}].{name}");
            let bad =
                |name: &str, why: &str| AppError::BadRequest(format!("{}: {why}", field(name)));
            let tls = Tls::parse(&server.tls)
                .ok_or_else(|| bad("tls", "must be 'ldaps', 'starttls' or 'none'"))?;
            let scheme_ok = match tls {
                Tls::Ldaps => server.url.starts_with("ldaps://"),
                Tls::StartTls | Tls::None => server.url.starts_with("ldap://"),
            };
            if !scheme_ok || server.url.len() <= "ldaps://".len() {
                return Err(bad(
                    "url",
                    "must be ldaps://host[:port] with tls 'ldaps', or ldap://host[:port] with 'starttls' or 'none'",
                ));
            }
            if let Some(pem) = &server.ca_pem {
                ldap::check_ca(pem).map_err(|e| bad("ca_pem", &e))?;
            }
            if server.bind_dn.trim().is_empty() {
                return Err(bad("bind_dn", "this field is required"));
            }
            let domain = server.domain.clone().filter(|d| !d.is_empty());
            if i > 0 && domain.is_none() {
                return Err(bad(
                    "domain",
                    "every server but the first (the default domain's) serves a domain",
                ));
            }
            let (password_nonce, password_sealed) = match &server.bind_password {
                Some(password) if !password.is_empty() => secret_key
                    .seal(crate::secrets::LDAP_BIND_PASSWORD, password.as_bytes())
                    .map_err(|_| AppError::Unavailable("cannot seal the bind password".into()))?,
                _ => match stored
                    .iter()
                    .find(|s| s.url == server.url && s.bind_dn == server.bind_dn)
                {
                    Some(kept) => (kept.password_nonce.clone(), kept.password_sealed.clone()),
                    None => return Err(bad("bind_password", "this field is required")),
                },
            };
            servers.push(LdapServerRow {
                url: server.url.clone(),
                tls: tls.as_str().to_owned(),
                ca_pem: server.ca_pem.clone(),
                bind_dn: server.bind_dn.clone(),
                password_nonce,
                password_sealed,
                domain,
            });
        }
        let mut searches = Vec::new();
        for (i, search) in settings.searches.iter().enumerate() {
            let bad = |name: &str, why: &str| {
                AppError::BadRequest(format!("searches[{i}].{name}: {why}"))
            };
            if search.base_dn.trim().is_empty() {
                return Err(bad("base_dn", "this field is required"));
            }
            if !matches!(search.scope.as_str(), "base" | "one" | "sub") {
                return Err(bad("scope", "must be 'base', 'one' or 'sub'"));
            }
            let depth = search.filter.chars().try_fold(0i32, |depth, c| {
                let depth = depth + i32::from(c == '(') - i32::from(c == ')');
                (depth >= 0).then_some(depth)
            });
            if search.filter.trim().is_empty() || depth != Some(0) {
                return Err(bad(
                    "filter",
                    "must be an LDAP filter with balanced parentheses",
                ));
            }
            let attribute_ok =
                |a: &str| !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !attribute_ok(&search.username_attribute) {
                return Err(bad("username_attribute", "must be an attribute name"));
            }
            if let Some(full) = &search.full_name_attribute
                && !attribute_ok(full)
            {
                return Err(bad("full_name_attribute", "must be an attribute name"));
            }
            searches.push(LdapSearchRow {
                base_dn: search.base_dn.clone(),
                scope: search.scope.clone(),
                filter: search.filter.clone(),
                username_attribute: search.username_attribute.clone(),
                full_name_attribute: search.full_name_attribute.clone(),
            });
        }
        if !servers.is_empty() && searches.is_empty() {
            return Err(AppError::BadRequest(
                "searches: at least one user search is needed with a server".into(),
            ));
        }
        self.store.put_ldap_settings(&servers, &searches).await?;
        let quiet = Caller {
            body: String::new(),
            ..caller.clone()
        };
        self.record_finished(
            &quiet,
            &uri::ldap(),
            "LDAP Settings Update",
            &format!("{} servers, {} searches", servers.len(), searches.len()),
        )
        .await?;
        self.ldap_settings().await
    }

    /// Signs in through the directory; `None` when the directory has nothing to say (LDAP
    /// off, or a name no search finds that is no directory user's): the caller goes on with
    /// the local password. See the module docs.
    pub(super) async fn directory_login(
        &self,
        login: &str,
        password: &str,
    ) -> AppResult<Option<Login>> {
        let Some(directory) = self.directory().await? else {
            return Ok(None);
        };
        let Some((index, name, username)) = planner::server_for(login, &directory.domains()) else {
            return Ok(None);
        };
        let server = &directory.servers[index];
        let known = self.store.directory_user(&username).await?;
        let found = match server.find(&directory.searches, &name).await {
            Ok(found) => found,
            // A local user still signs in while the directory is down.
            Err(error) if known.is_none() => {
                tracing::warn!(error = %error, "LDAP search failed; trying local users");
                return Ok(None);
            }
            Err(error) => return Err(unavailable(error)),
        };
        // The directory never takes over a local server administrator: whoever can add an
        // entry of that name to the directory must not become one. Its name signs in with
        // its local password, as if no search had found it.
        if found.is_some()
            && known.is_none()
            && self
                .store
                .access_user(&username)
                .await?
                .is_some_and(|user| user.admin)
        {
            return Ok(None);
        }
        let Some(found) = found else {
            // Not found: the same bind a wrong password costs, as a DN that cannot exist.
            let base = directory
                .searches
                .first()
                .map(|s| s.base_dn.as_str())
                .unwrap_or("");
            let _ = server
                .bind(&format!("cn=flotilla-{},{base}", random_hex(16)), password)
                .await;
            if known.is_some() {
                // A directory user the directory no longer finds: disabled now.
                self.sync_users(&directory, Some(&username)).await?;
                super::access::spend_a_verification(password).await;
                return Ok(Some(Login::UnknownUser));
            }
            return Ok(None);
        };
        if !server
            .bind(&found.dn, password)
            .await
            .map_err(unavailable)?
        {
            super::access::spend_a_verification(password).await;
            return Ok(Some(Login::WrongKey));
        }
        if check_directory_name(&username).is_err() {
            tracing::warn!(
                dn = found.dn,
                "the directory's user name is not a Flotilla user name (a-z, 0-9, '.', '_', '-')"
            );
            return Ok(Some(Login::UnknownUser));
        }
        let adopted = self
            .store
            .adopt_directory_user(
                &username,
                &found.dn,
                found.full_name.as_deref(),
                date::now_unix(),
            )
            .await?;
        if !adopted {
            // The name of a removed user: names are not reused.
            return Ok(Some(Login::UnknownUser));
        }
        self.sync_users(&directory, Some(&username)).await?;
        Ok(Some(Login::Accepted(username, SignedInWith::Directory)))
    }

    /// `POST ldap/sync/` and the periodic sync: every directory user and mapped team.
    pub async fn sync_directory(&self) -> AppResult<api::LdapSyncReport> {
        let Some(directory) = self.directory().await? else {
            return Err(AppError::BadRequest(
                "LDAP is not configured (PUT the settings first)".into(),
            ));
        };
        self.sync_users(&directory, None).await
    }

    /// Observes, plans (`plan::directory`) and applies a sync of every directory user, or
    /// of `only`.
    async fn sync_users(
        &self,
        directory: &Directory,
        only: Option<&str>,
    ) -> AppResult<api::LdapSyncReport> {
        let domains = directory.domains();
        let mut users = Vec::new();
        for user in self.store.directory_users().await? {
            if only.is_some_and(|only| only != user.username) {
                continue;
            }
            let Some((index, name, _)) = planner::server_for(&user.username, &domains) else {
                continue;
            };
            let found = directory.servers[index]
                .find(&directory.searches, &name)
                .await
                .map_err(unavailable)?;
            users.push(DirectoryUser {
                username: user.username,
                disabled: user.disabled,
                found: found.map(|f| f.dn),
            });
        }
        let teams = self.store.mapped_teams().await?;
        let mut group_members = BTreeMap::new();
        for team in &teams {
            if group_members.contains_key(&team.group_dn) {
                continue;
            }
            let mut members = None;
            for server in &directory.servers {
                members = server
                    .group_members(&team.group_dn)
                    .await
                    .map_err(unavailable)?;
                if members.is_some() {
                    break;
                }
            }
            group_members.insert(team.group_dn.clone(), members);
        }
        let names: BTreeSet<&str> = users.iter().map(|u| u.username.as_str()).collect();
        let memberships = self
            .store
            .mapped_memberships()
            .await?
            .into_iter()
            .filter(|(_, _, user)| names.contains(user.as_str()))
            .collect();
        let observed = Observed {
            users: users.clone(),
            teams,
            group_members,
            memberships,
        };
        let plan = planner::plan(&observed);
        let now = date::now_unix();
        for username in &plan.disable {
            self.store.set_user_disabled(username, Some(now)).await?;
            tracing::info!(
                user = username,
                "disabled: the directory no longer finds it"
            );
        }
        for username in &plan.enable {
            self.store.set_user_disabled(username, None).await?;
        }
        for (org, team, user) in &plan.add {
            self.store
                .change_members(org, team, std::slice::from_ref(user), &[])
                .await?;
        }
        for (org, team, user) in &plan.remove {
            self.store
                .change_members(org, team, &[], std::slice::from_ref(user))
                .await?;
        }
        Ok(api::LdapSyncReport {
            users: users.len(),
            disabled: plan.disable.clone(),
            enabled: plan.enable.clone(),
            added: plan.add.iter().map(|(o, t, u)| key(o, t, u)).collect(),
            removed: plan.remove.iter().map(|(o, t, u)| key(o, t, u)).collect(),
        })
    }

    /// `ldap_group_dn` of a team body: `Some(None)` unmaps, `None` leaves it.
    pub(super) async fn set_team_group_from(
        &self,
        org: &str,
        team: &str,
        body: &Value,
    ) -> AppResult<()> {
        let group = match body.get("ldap_group_dn") {
            None => return Ok(()),
            Some(Value::Null) => None,
            Some(Value::String(dn)) if dn.contains('=') => Some(dn.as_str()),
            Some(_) => {
                return Err(AppError::BadRequest(
                    "ldap_group_dn: must be a group's DN (cn=ops,ou=groups,dc=example,dc=com) or null"
                        .into(),
                ));
            }
        };
        self.store.set_team_group(org, team, group).await?;
        Ok(())
    }
}

/// The periodic sync's lease ([`crate::lease`]): one replica syncs the directory.
pub const SYNC_WORK: &str = "ldap-sync";

/// The periodic sync: every `interval` while LDAP is configured, until `stop` turns true.
/// A failed sync (the directory unreachable) changes nothing and is tried again next time.
pub async fn sync_periodically<C: Cloud + 'static>(
    app: std::sync::Arc<App<C>>,
    interval: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval.max(std::time::Duration::from_secs(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
        }
        match app.directory().await {
            Ok(Some(directory)) => match app.sync_users(&directory, None).await {
                Ok(report) => tracing::info!(
                    users = report.users,
                    disabled = report.disabled.len(),
                    added = report.added.len(),
                    removed = report.removed.len(),
                    "LDAP sync"
                ),
                Err(error) => tracing::warn!(error = %error, "LDAP sync failed; nothing changed"),
            },
            Ok(None) => {}
            Err(error) => tracing::warn!(error = %error, "LDAP sync: cannot read the settings"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_are_checked() {
        assert!(check_directory_name("alice").is_ok());
        assert!(check_directory_name("alice@corp.example").is_ok());
        assert!(check_directory_name("Alice Smith").is_err());
        assert!(check_directory_name("alice@corp/x").is_err());
    }
}
