//! The access subsystem's operations (issue #15): signing in with an API key or a password,
//! and users, API keys, organizations, teams and grants. Who may call each is decided
//! before, by `crate::authz` from the route table; these validate and change.
//!
//! Design decisions:
//! * **API keys** are 160 random bits, shown once in the answer that creates them; the store
//!   keeps a salted SHA-256 (a fast hash is enough for a random key, and it keeps every API
//!   call cheap). A user has any number of named keys; a revoked key is refused from the
//!   next request on, since keys are read from the store on every request.
//! * **Passwords** (optional, for people) are argon2id PHC strings (the `argon2` crate's
//!   defaults, OWASP's recommendation), verified on a blocking thread. Every failed sign-in
//!   pays one argon2 verification — against the user's hash, or a fixed dummy hash when the
//!   user is unknown or has no password — so the time taken does not tell which user names
//!   exist or which have a password; successful key sign-ins never pay it.
//! * Nothing secret is recorded: changes to users and keys record an action without the
//!   request body, and no answer but the create's ever carries a key.
//! * Names of users, organizations and teams are 1 to 64 of `a-z 0-9 . _ -`, starting with
//!   a letter or digit: they appear in paths and namespaces. An organization cannot take a
//!   user's name (a namespace names either).

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use flotilla_api::{self as api, Role, date, uri};
use flotilla_core::cloud::Cloud;
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::{
    App, AppError, AppResult, Caller, Credentials, Login, SignedInWith, key_hash, random_hex,
};
use crate::authz::{Principal, Viewer};
use crate::store::access::{ALL, AccessUser, ApiKeyRecord, DEFAULT_ORG, GrantRecord};

/// The name of the key a new user (and the bootstrap admin) gets.
pub const FIRST_KEY: &str = "default";

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 12;

fn argon2() -> argon2::Argon2<'static> {
    argon2::Argon2::default()
}

/// The argon2 PHC string of `password`.
pub fn hash_password(password: &str) -> AppResult<String> {
    let salt = SaltString::encode_b64(random_hex(16).as_bytes())
        .map_err(|_| AppError::Unavailable("cannot make a salt".into()))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|_| AppError::Unavailable("cannot hash the password".into()))
}

/// A fixed hash to verify against when there is none, so failures all cost the same.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("no user has this password").unwrap_or_default())
}

/// One argon2 verification against the dummy hash: what a failed sign-in costs whichever
/// way it failed, so the time taken does not tell why.
pub(super) async fn spend_a_verification(password: &str) {
    let password = password.to_owned();
    let _ = tokio::task::spawn_blocking(move || verify_password(dummy_hash(), &password)).await;
}

fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The SHA-256 of a stored password hash: what a session remembers of its password.
fn fingerprint(hash: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(hash.as_bytes()).into()
}

/// A new API key for `username`: the record to store and the key, shown once.
pub fn new_api_key(username: &str, name: &str, now: i64) -> (ApiKeyRecord, String) {
    let key = random_hex(20);
    let salt = random_hex(16);
    let record = ApiKeyRecord {
        id: uuid::Uuid::new_v4().to_string(),
        username: username.to_owned(),
        name: name.to_owned(),
        hash: key_hash(&salt, &key),
        salt,
        created_at: now,
        revoked_at: None,
    };
    (record, key)
}

/// The bootstrap administrator: the user, its first key, and the credentials to print once.
pub fn new_administrator(username: &str, now: i64) -> (AccessUser, ApiKeyRecord, Credentials) {
    let (key, api_key) = new_api_key(username, FIRST_KEY, now);
    let user = AccessUser {
        username: username.to_owned(),
        admin: true,
        password_hash: None,
        created_at: now,
    };
    let credentials = Credentials {
        username: username.to_owned(),
        api_key,
    };
    (user, key, credentials)
}

/// Checks a user, organization or team name; `field` names it in the error.
pub fn check_name(field: &str, name: &str) -> AppResult<()> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || (i > 0 && matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(AppError::BadRequest(format!(
            "{field}: '{name}' is not a name: 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        )))
    }
}

fn object(body: &Value) -> AppResult<&serde_json::Map<String, Value>> {
    body.as_object()
        .ok_or_else(|| AppError::BadRequest("the body must be a JSON object".into()))
}

fn text_field(body: &Value, field: &str) -> AppResult<Option<String>> {
    match object(body)?.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(AppError::BadRequest(format!("{field}: must be a string"))),
    }
}

fn required(body: &Value, field: &str) -> AppResult<String> {
    text_field(body, field)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AppError::BadRequest(format!("{field}: this field is required")))
}

fn names_field(body: &Value, field: &str) -> AppResult<Vec<String>> {
    match object(body)?.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str().map(str::to_owned).ok_or_else(|| {
                    AppError::BadRequest(format!("{field}: must be a list of user names"))
                })
            })
            .collect(),
        Some(_) => Err(AppError::BadRequest(format!(
            "{field}: must be a list of user names"
        ))),
    }
}

fn check_password(password: &str) -> AppResult<()> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(AppError::BadRequest(format!(
            "password: must be at least {MIN_PASSWORD} characters"
        )));
    }
    Ok(())
}

/// Checks a new password and hashes it on a blocking thread (argon2 takes CPU time).
async fn checked_hash(password: String) -> AppResult<String> {
    check_password(&password)?;
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|_| AppError::Unavailable("cannot hash the password".into()))?
}

/// The caller without its request body: what access changes record (bodies may hold a
/// password).
fn without_body(caller: &Caller) -> Caller {
    Caller {
        body: String::new(),
        ..caller.clone()
    }
}

fn render_key(key: &ApiKeyRecord, secret: Option<String>) -> api::ApiKey {
    api::ApiKey {
        id: key.id.clone(),
        name: key.name.clone(),
        username: key.username.clone(),
        created_datetime: date::format_unix(key.created_at),
        revoked_datetime: key.revoked_at.map(date::format_unix),
        key: secret,
        resource_uri: uri::api_key(&key.username, &key.id),
    }
}

fn render_grant(grant: &GrantRecord) -> api::Grant {
    api::Grant {
        id: grant.id.clone(),
        organization: grant.org.clone(),
        team: grant.team.clone(),
        resource: grant.resource.clone(),
        role: grant.role,
        created_datetime: date::format_unix(grant.created_at),
        resource_uri: uri::grant(&grant.org, &grant.id),
    }
}

impl<C: Cloud + 'static> App<C> {
    // ---- signing in ----

    /// Checks a user name and a secret (an API key, else the password), telling a wrong
    /// secret from an unknown user (for the login throttle, `crate::login`; callers answer
    /// both with the same 401).
    pub async fn login(&self, username: &str, secret: &str) -> AppResult<Login> {
        let user = self.store.access_user(username).await?;
        if user.is_some() {
            for key in self.store.active_api_keys(username).await? {
                let hash = key_hash(&key.salt, secret);
                // Constant time: the time taken does not reveal a matching prefix.
                if bool::from(hash.as_bytes().ct_eq(key.hash.as_bytes())) {
                    return Ok(Login::Accepted(
                        username.to_owned(),
                        SignedInWith::Key(key.id),
                    ));
                }
            }
        }
        // With LDAP on, the directory answers for the names its searches find
        // (`app::directory`); the others sign in with their local password.
        if let Some(outcome) = self.directory_login(username, secret).await? {
            return Ok(outcome);
        }
        let hash = user
            .as_ref()
            .and_then(|u| u.password_hash.clone())
            .unwrap_or_else(|| dummy_hash().to_owned());
        let password = secret.to_owned();
        let matched = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
            .await
            .unwrap_or(false);
        Ok(match user {
            Some(AccessUser {
                username,
                password_hash: Some(hash),
                ..
            }) if matched => Login::Accepted(username, SignedInWith::Password(fingerprint(&hash))),
            Some(_) => Login::WrongKey,
            None => Login::UnknownUser,
        })
    }

    /// The failed-login throttle (`crate::login`) with `limits`, on this installation's
    /// database: shared with every replica.
    pub fn login_throttle(&self, limits: crate::login::Limits) -> crate::login::LoginThrottle {
        crate::login::LoginThrottle::new(limits, self.store.clone())
    }

    /// Whether the credential a dashboard session was opened with still holds: its key is
    /// not revoked, its password not changed or removed, its user not removed or disabled.
    pub async fn still_holds(&self, username: &str, via: &SignedInWith) -> AppResult<bool> {
        let Some(user) = self.store.access_user(username).await? else {
            return Ok(false);
        };
        Ok(match via {
            SignedInWith::Key(id) => self
                .store
                .active_api_keys(username)
                .await?
                .iter()
                .any(|k| k.id == *id),
            SignedInWith::Password(print) => user
                .password_hash
                .is_some_and(|hash| fingerprint(&hash) == *print),
            SignedInWith::Directory => true,
        })
    }

    /// The principal of a signed-in user (`None`: the user was removed meanwhile).
    pub async fn principal(&self, username: &str) -> AppResult<Option<Principal>> {
        Ok(Principal::load(&self.store, username).await?)
    }

    /// What `principal` may view, for lists (cut to `org` in a namespaced list).
    pub async fn viewer(&self, principal: &Principal, org: Option<&str>) -> AppResult<Viewer> {
        Ok(Viewer::of(&self.store, principal, org).await?)
    }

    /// Decides a request (`crate::authz::authorize`) against the store.
    pub async fn authorize(
        &self,
        principal: &Principal,
        route: &crate::routes::Route,
        access: crate::routes::Access,
        namespace: Option<&str>,
    ) -> AppResult<Option<String>> {
        use crate::authz::Refusal;
        match crate::authz::authorize(&self.store, principal, route, access, namespace).await? {
            Ok(allowed) => Ok(allowed.org),
            Err(Refusal::NotFound(message)) => Err(AppError::NotFound(message)),
            Err(Refusal::Forbidden(message)) => Err(AppError::Forbidden(message)),
            Err(Refusal::BadRequest(message)) => Err(AppError::BadRequest(message)),
        }
    }

    /// Whether `principal` may see `event` (`crate::authz::sees_event`), in organization
    /// `org`'s namespace if one is given.
    pub async fn sees_event(
        &self,
        principal: &Principal,
        event: &api::Event,
        org: Option<&str>,
    ) -> AppResult<bool> {
        Ok(crate::authz::sees_event(&self.store, principal, event, org).await?)
    }

    // ---- users and keys ----

    async fn render_user(&self, user: &AccessUser) -> AppResult<api::User> {
        Ok(api::User {
            username: user.username.clone(),
            admin: user.admin,
            has_password: user.password_hash.is_some(),
            organizations: self.store.orgs_of(&user.username).await?,
            created_datetime: date::format_unix(user.created_at),
            resource_uri: uri::user(&user.username),
        })
    }

    async fn load_user(&self, username: &str) -> AppResult<AccessUser> {
        self.store
            .access_user(username)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("user '{username}' not found")))
    }

    /// `GET user/`: every user for the server administrator, else oneself.
    pub async fn users(&self, viewer: &Viewer) -> AppResult<Vec<api::User>> {
        let mut users = Vec::new();
        for user in self.store.access_users().await? {
            if viewer.is_admin() || user.username == viewer.username() {
                users.push(self.render_user(&user).await?);
            }
        }
        Ok(users)
    }

    pub async fn user(&self, username: &str) -> AppResult<api::User> {
        let user = self.load_user(username).await?;
        self.render_user(&user).await
    }

    /// `POST user/` `{"username", "password"?, "admin"?}`: the user and its first API key,
    /// shown once.
    pub async fn create_user(
        &self,
        caller: &Caller,
        body: &Value,
    ) -> AppResult<(api::User, api::ApiKey)> {
        let username = required(body, "username")?;
        check_name("username", &username)?;
        let password_hash = match text_field(body, "password")? {
            Some(password) => Some(checked_hash(password).await?),
            None => None,
        };
        let admin = match object(body)?.get("admin") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(AppError::BadRequest("admin: must be true or false".into())),
        };
        if self.store.orgs().await?.iter().any(|(o, _)| *o == username) {
            return Err(AppError::Conflict(format!(
                "username: '{username}' is the name of an organization"
            )));
        }
        let now = date::now_unix();
        let user = AccessUser {
            username: username.clone(),
            admin,
            password_hash,
            created_at: now,
        };
        let (key, secret) = new_api_key(&username, FIRST_KEY, now);
        if !self.store.create_user(&user, Some(&key)).await? {
            return Err(AppError::Conflict(format!(
                "username: a user named '{username}' exists or existed (names of removed users are not reused)"
            )));
        }
        self.record_finished(
            &without_body(caller),
            &uri::user(&username),
            "User Create",
            &format!("user {username} created (admin: {admin}) with API key '{FIRST_KEY}'"),
        )
        .await?;
        Ok((
            self.render_user(&user).await?,
            render_key(&key, Some(secret)),
        ))
    }

    /// `PATCH user/{name}/` `{"password": "…"}` sets it, `{"password": null}` removes it.
    pub async fn patch_user(
        &self,
        caller: &Caller,
        username: &str,
        body: &Value,
    ) -> AppResult<api::User> {
        self.load_user(username).await?;
        let fields = object(body)?;
        if let Some(unknown) = fields.keys().find(|k| *k != "password") {
            return Err(AppError::BadRequest(format!(
                "{unknown}: not a field a PATCH may change (password)"
            )));
        }
        let hash = match fields.get("password") {
            None => return self.user(username).await,
            Some(Value::Null) => None,
            Some(Value::String(password)) => Some(checked_hash(password.clone()).await?),
            Some(_) => return Err(AppError::BadRequest("password: must be a string".into())),
        };
        self.store.set_password(username, hash.as_deref()).await?;
        self.record_finished(
            &without_body(caller),
            &uri::user(username),
            "User Update",
            if hash.is_some() {
                "password set"
            } else {
                "password removed"
            },
        )
        .await?;
        self.user(username).await
    }

    /// `DELETE user/{name}/`: its keys are revoked and its memberships dropped at once.
    pub async fn delete_user(&self, caller: &Caller, username: &str) -> AppResult<api::User> {
        let user = self.load_user(username).await?;
        if username == caller.username {
            return Err(AppError::BadRequest(
                "username: you cannot remove yourself".into(),
            ));
        }
        let rendered = self.render_user(&user).await?;
        self.store.delete_user(username, date::now_unix()).await?;
        self.record_finished(
            &without_body(caller),
            &uri::user(username),
            "User Delete",
            "keys revoked, memberships removed",
        )
        .await?;
        Ok(rendered)
    }

    /// `GET user/{name}/apikey/`: names and dates, never the keys.
    pub async fn api_keys(&self, username: &str) -> AppResult<Vec<api::ApiKey>> {
        self.load_user(username).await?;
        Ok(self
            .store
            .api_keys(username)
            .await?
            .iter()
            .map(|k| render_key(k, None))
            .collect())
    }

    /// `POST user/{name}/apikey/` `{"name"}`: a new key, shown once.
    pub async fn create_api_key(
        &self,
        caller: &Caller,
        username: &str,
        body: &Value,
    ) -> AppResult<api::ApiKey> {
        self.load_user(username).await?;
        let name = required(body, "name")?;
        check_name("name", &name)?;
        let (key, secret) = new_api_key(username, &name, date::now_unix());
        if !self.store.insert_api_key(&key).await? {
            return Err(AppError::Conflict(format!(
                "name: user '{username}' already has a key named '{name}' (revoked keys keep their names)"
            )));
        }
        self.record_finished(
            &without_body(caller),
            &uri::user(username),
            "API Key Create",
            &format!("API key '{name}' ({}) created", key.id),
        )
        .await?;
        Ok(render_key(&key, Some(secret)))
    }

    /// `DELETE user/{name}/apikey/{id or name}/`: refused from the next request on.
    pub async fn revoke_api_key(
        &self,
        caller: &Caller,
        username: &str,
        key: &str,
    ) -> AppResult<api::ApiKey> {
        self.load_user(username).await?;
        if !self
            .store
            .revoke_api_key(username, key, date::now_unix())
            .await?
        {
            return Err(AppError::NotFound(format!(
                "API key '{key}' of user '{username}' not found (or already revoked)"
            )));
        }
        let revoked = self
            .store
            .api_keys(username)
            .await?
            .into_iter()
            .find(|k| k.id == key || k.name == key)
            .ok_or_else(|| AppError::NotFound(format!("API key '{key}' not found")))?;
        self.record_finished(
            &without_body(caller),
            &uri::user(username),
            "API Key Revoke",
            &format!("API key '{}' ({}) revoked", revoked.name, revoked.id),
        )
        .await?;
        Ok(render_key(&revoked, None))
    }

    // ---- organizations, teams, grants ----

    fn render_org(name: &str, created_at: i64) -> api::Organization {
        api::Organization {
            name: name.to_owned(),
            created_datetime: date::format_unix(created_at),
            resource_uri: uri::org(name),
        }
    }

    /// `GET org/`: the organizations `viewer` belongs to (all for the administrator).
    pub async fn orgs(&self, viewer: &Viewer) -> AppResult<Vec<api::Organization>> {
        Ok(self
            .store
            .orgs()
            .await?
            .iter()
            .filter(|(name, _)| viewer.sees_org(name))
            .map(|(name, at)| Self::render_org(name, *at))
            .collect())
    }

    pub async fn org(&self, name: &str) -> AppResult<api::Organization> {
        self.store
            .orgs()
            .await?
            .iter()
            .find(|(o, _)| o == name)
            .map(|(o, at)| Self::render_org(o, *at))
            .ok_or_else(|| AppError::NotFound(format!("organization '{name}' not found")))
    }

    /// `POST org/` `{"name"}`.
    pub async fn create_org(&self, caller: &Caller, body: &Value) -> AppResult<api::Organization> {
        let name = required(body, "name")?;
        check_name("name", &name)?;
        if self.store.access_user(&name).await?.is_some() {
            return Err(AppError::Conflict(format!(
                "name: '{name}' is the name of a user"
            )));
        }
        if !self.store.create_org(&name, date::now_unix()).await? {
            return Err(AppError::Conflict(format!(
                "name: an organization named '{name}' already exists"
            )));
        }
        self.record_finished(caller, &uri::org(&name), "Organization Create", "")
            .await?;
        self.org(&name).await
    }

    /// `DELETE org/{name}/`: refused while it owns a live node cluster or swarm.
    pub async fn delete_org(&self, caller: &Caller, name: &str) -> AppResult<api::Organization> {
        let org = self.org(name).await?;
        if name == DEFAULT_ORG {
            return Err(AppError::BadRequest(format!(
                "organization: '{DEFAULT_ORG}' is where unassigned resources go; it cannot be removed"
            )));
        }
        let owned = self.store.owned_count(name).await?;
        if owned > 0 {
            return Err(AppError::Conflict(format!(
                "organization '{name}' still owns {owned} node clusters or swarms; remove them first"
            )));
        }
        self.store.delete_org(name).await?;
        self.record_finished(caller, &uri::org(name), "Organization Delete", "")
            .await?;
        Ok(org)
    }

    async fn teams_of(&self, org: &str) -> AppResult<Vec<api::Team>> {
        let groups: Vec<_> = self
            .store
            .mapped_teams()
            .await?
            .into_iter()
            .filter(|g| g.org == org)
            .collect();
        Ok(self
            .store
            .teams(org)
            .await?
            .into_iter()
            .map(|(name, members)| api::Team {
                resource_uri: uri::team(org, &name),
                ldap_group_dn: groups
                    .iter()
                    .find(|g| g.team == name)
                    .map(|g| g.group_dn.clone()),
                name,
                organization: org.to_owned(),
                members,
            })
            .collect())
    }

    pub async fn teams(&self, org: &str) -> AppResult<Vec<api::Team>> {
        self.org(org).await?;
        self.teams_of(org).await
    }

    pub async fn team(&self, org: &str, team: &str) -> AppResult<api::Team> {
        self.teams_of(org)
            .await?
            .into_iter()
            .find(|t| t.name == team)
            .ok_or_else(|| {
                AppError::NotFound(format!("team '{team}' of organization '{org}' not found"))
            })
    }

    /// `POST org/{org}/team/` `{"name", "members"?, "ldap_group_dn"?}`.
    pub async fn create_team(
        &self,
        caller: &Caller,
        org: &str,
        body: &Value,
    ) -> AppResult<api::Team> {
        self.org(org).await?;
        let name = required(body, "name")?;
        check_name("name", &name)?;
        let members = names_field(body, "members")?;
        self.check_users("members", &members).await?;
        if !self.store.create_team(org, &name, date::now_unix()).await? {
            return Err(AppError::Conflict(format!(
                "name: organization '{org}' already has a team named '{name}'"
            )));
        }
        self.store.change_members(org, &name, &members, &[]).await?;
        self.set_team_group_from(org, &name, body).await?;
        self.record_finished(
            caller,
            &uri::team(org, &name),
            "Team Create",
            &format!("members: {}", members.join(", ")),
        )
        .await?;
        self.team(org, &name).await
    }

    async fn check_users(&self, field: &str, names: &[String]) -> AppResult<()> {
        for name in names {
            if self.store.access_user(name).await?.is_none() {
                return Err(AppError::BadRequest(format!(
                    "{field}: user '{name}' not found"
                )));
            }
        }
        Ok(())
    }

    /// `PATCH org/{org}/team/{team}/` `{"add_members": […], "remove_members": […],
    /// "ldap_group_dn": "…" | null}`.
    pub async fn patch_team(
        &self,
        caller: &Caller,
        org: &str,
        team: &str,
        body: &Value,
    ) -> AppResult<api::Team> {
        self.team(org, team).await?;
        let fields = object(body)?;
        if let Some(unknown) = fields.keys().find(|k| {
            !matches!(
                k.as_str(),
                "add_members" | "remove_members" | "ldap_group_dn"
            )
        }) {
            return Err(AppError::BadRequest(format!(
                "{unknown}: not a field a PATCH may change (add_members, remove_members, ldap_group_dn)"
            )));
        }
        let add = names_field(body, "add_members")?;
        let remove = names_field(body, "remove_members")?;
        self.check_users("add_members", &add).await?;
        self.set_team_group_from(org, team, body).await?;
        self.store.change_members(org, team, &add, &remove).await?;
        self.record_finished(
            caller,
            &uri::team(org, team),
            "Team Update",
            &format!("added: {}; removed: {}", add.join(", "), remove.join(", ")),
        )
        .await?;
        self.team(org, team).await
    }

    pub async fn delete_team(
        &self,
        caller: &Caller,
        org: &str,
        team: &str,
    ) -> AppResult<api::Team> {
        let found = self.team(org, team).await?;
        self.store.delete_team(org, team).await?;
        self.record_finished(caller, &uri::team(org, team), "Team Delete", "")
            .await?;
        Ok(found)
    }

    pub async fn grants(&self, org: &str) -> AppResult<Vec<api::Grant>> {
        self.org(org).await?;
        Ok(self
            .store
            .grants(org)
            .await?
            .iter()
            .map(render_grant)
            .collect())
    }

    /// `POST org/{org}/grant/` `{"team", "role", "resource"}`: `resource` is `*` (all of the
    /// organization's), or a node cluster's or swarm's uuid or resource URI; a team's second
    /// grant on the same resource changes its role.
    pub async fn create_grant(
        &self,
        caller: &Caller,
        org: &str,
        body: &Value,
    ) -> AppResult<api::Grant> {
        self.org(org).await?;
        let team = required(body, "team")?;
        self.team(org, &team).await.map_err(|_| {
            AppError::BadRequest(format!("team: organization '{org}' has no team '{team}'"))
        })?;
        let role: Role = required(body, "role")?
            .parse()
            .map_err(|e: String| AppError::BadRequest(format!("role: {e}")))?;
        let resource = text_field(body, "resource")?.unwrap_or_else(|| ALL.to_owned());
        let resource = match uri::Resource::parse(&resource) {
            Some(uri::Resource::NodeCluster { uuid } | uri::Resource::Swarm { uuid }) => uuid,
            _ => resource,
        };
        if resource != ALL && self.store.owned_kind(org, &resource).await?.is_none() {
            return Err(AppError::BadRequest(format!(
                "resource: organization '{org}' owns no node cluster or swarm '{resource}' (use '*' for all of its resources)"
            )));
        }
        let grant = self
            .store
            .put_grant(&GrantRecord {
                id: uuid::Uuid::new_v4().to_string(),
                org: org.to_owned(),
                team: team.clone(),
                resource: resource.clone(),
                role,
                created_at: date::now_unix(),
            })
            .await?;
        self.record_finished(
            caller,
            &uri::grant(org, &grant.id),
            "Grant Create",
            &format!("team {team}: {role} on {resource}"),
        )
        .await?;
        Ok(render_grant(&grant))
    }

    pub async fn delete_grant(
        &self,
        caller: &Caller,
        org: &str,
        id: &str,
    ) -> AppResult<api::Grant> {
        let grant = self
            .store
            .grants(org)
            .await?
            .into_iter()
            .find(|g| g.id == id)
            .ok_or_else(|| {
                AppError::NotFound(format!("grant '{id}' of organization '{org}' not found"))
            })?;
        self.store.delete_grant(org, id).await?;
        self.record_finished(
            caller,
            &uri::grant(org, id),
            "Grant Delete",
            &format!("team {}: {} on {}", grant.team, grant.role, grant.resource),
        )
        .await?;
        Ok(render_grant(&grant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_argon2_and_verify_only_themselves() {
        let hash = hash_password("correct horse battery").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&hash, "correct horse battery"));
        assert!(!verify_password(&hash, "correct horse batterx"));
        assert!(!verify_password("not a hash", "x"));
        assert!(!verify_password(dummy_hash(), ""));
    }

    #[test]
    fn names_are_checked_and_the_error_names_the_field() {
        assert!(check_name("name", "team-1.a_b").is_ok());
        for bad in ["", "-x", "Upper", "a/b", &"x".repeat(65)] {
            let error = check_name("name", bad).expect_err(bad).to_string();
            assert!(error.starts_with("name: "), "{error}");
        }
    }

    #[test]
    fn keys_are_stored_as_salted_hashes() {
        let (record, key) = new_api_key("alice", "ci", 0);
        assert_ne!(record.hash, key);
        assert_eq!(key_hash(&record.salt, &key), record.hash);
        let (other, _) = new_api_key("alice", "ci", 0);
        assert_ne!(record.salt, other.salt);
    }
}
