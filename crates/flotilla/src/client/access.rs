//! `flotilla org|team|user|grant|ldap …`: access control on a Flotilla server (issue #15).
//!
//! Design decisions:
//! * One thin command per API call of the access subsystem (`/api/access/v1/`, paths from
//!   `flotilla_api::uri`); the server validates and decides who may do what, and its
//!   refusals (404 for what the caller may not see, 403 naming the role needed) are printed
//!   as they come.
//! * A new API key is printed once, on stdout alone (`user create`, `user key create`), so
//!   `KEY=$(flotilla user key create alice ci)` captures exactly the key; the table form
//!   says on stderr that it will not be shown again. A password is read from stdin
//!   (`--password-stdin`), never from an argument that other local users could see.
//! * A grant's resource is named as the user knows it: `--cluster NAME|UUID` or
//!   `--swarm NAME|UUID` (resolved through the caller's own view), else all of the
//!   organization's resources (`*`).
//! * `flotilla ldap set FILE` sends the settings as a JSON file (several servers and
//!   searches do not fit flags); a server's `ca_file` is read into `ca_pem`, and the bind
//!   password comes from stdin (`--bind-password-stdin`), never from the file or an argument.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use flotilla_api::uri;
use reqwest::Method;
use serde_json::{Value, json};

use super::ApiClient;
use super::commands::Common;
use crate::engine::Format;
use crate::output::{print_json, print_table};

#[derive(Debug, Args)]
pub struct OrgArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: OrgCommand,
}

#[derive(Debug, Subcommand)]
enum OrgCommand {
    /// List the organizations you belong to (all, for the administrator).
    Ls,
    /// Create an organization (server administrator).
    Create { name: String },
    /// Show an organization with its teams and grants.
    Inspect { name: String },
    /// Remove an organization that owns no live node cluster or swarm.
    Rm { name: String },
}

#[derive(Debug, Args)]
pub struct TeamArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: TeamCommand,
}

#[derive(Debug, Subcommand)]
enum TeamCommand {
    /// List an organization's teams and their members.
    Ls { org: String },
    /// Create a team.
    Create {
        org: String,
        name: String,
        /// A first member (repeat).
        #[arg(long = "member")]
        members: Vec<String>,
        /// Map the team to this LDAP group: its directory users are the group's members.
        #[arg(long)]
        ldap_group: Option<String>,
    },
    /// Map a team to an LDAP group (its directory users become the group's members at the
    /// next sync), or unmap it with --unmap.
    Map {
        org: String,
        team: String,
        #[arg(required_unless_present = "unmap")]
        group_dn: Option<String>,
        #[arg(long)]
        unmap: bool,
    },
    /// Show a team.
    Inspect { org: String, name: String },
    /// Remove a team with its grants.
    Rm { org: String, name: String },
    /// Add members to a team.
    Add {
        org: String,
        team: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove members from a team.
    Remove {
        org: String,
        team: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// List users (yourself, unless you are the administrator).
    Ls,
    /// Create a user (server administrator); prints its first API key once.
    Create {
        name: String,
        /// Make the user a server administrator.
        #[arg(long)]
        admin: bool,
        /// Read a password (12 characters or more) from stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Show a user.
    Inspect { name: String },
    /// Remove a user: its keys stop working at once.
    Rm { name: String },
    /// Set a user's password from stdin (or remove it with --remove).
    Passwd {
        name: String,
        #[arg(long)]
        remove: bool,
    },
    /// A user's API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// List a user's keys (names and dates; keys are never shown again).
    Ls { user: String },
    /// Create a named key; prints it once.
    Create { user: String, name: String },
    /// Revoke a key by name or id: refused from the next request on.
    Revoke { user: String, key: String },
}

#[derive(Debug, Args)]
pub struct GrantArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: GrantCommand,
}

#[derive(Debug, Subcommand)]
enum GrantCommand {
    /// List an organization's grants.
    Ls { org: String },
    /// Give a team a role (view, operate, manage, admin) on a resource or on all.
    Create {
        org: String,
        team: String,
        role: String,
        /// On this node cluster only.
        #[arg(long, conflicts_with = "swarm")]
        cluster: Option<String>,
        /// On this swarm (and its node clusters) only.
        #[arg(long)]
        swarm: Option<String>,
    },
    /// Revoke a grant by id.
    #[command(alias = "revoke")]
    Rm { org: String, id: String },
}

/// A field of an answer as text (`""` when absent).
pub(super) fn text(value: &Value, field: &str) -> String {
    match &value[field] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn show(format: Format, value: &Value, table: impl FnOnce(&Value)) {
    match format {
        Format::Json => print_json(value),
        Format::Table => table(value),
    }
}

fn show_list(
    format: Format,
    items: Vec<Value>,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) {
    match format {
        Format::Json => print_json(&Value::Array(items)),
        Format::Table => {
            let rows: Vec<Vec<String>> = items.iter().map(row).collect();
            print_table(headers, &rows);
        }
    }
}

fn team_row(team: &Value) -> Vec<String> {
    let members: Vec<String> = team["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    vec![
        text(team, "organization"),
        text(team, "name"),
        members.join(","),
        text(team, "ldap_group_dn"),
    ]
}

fn grant_row(grant: &Value) -> Vec<String> {
    vec![
        text(grant, "id"),
        text(grant, "team"),
        text(grant, "role"),
        text(grant, "resource"),
    ]
}

fn user_row(user: &Value) -> Vec<String> {
    let orgs: Vec<String> = user["organizations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    vec![
        text(user, "username"),
        text(user, "admin"),
        text(user, "has_password"),
        orgs.join(","),
    ]
}

fn key_row(key: &Value) -> Vec<String> {
    vec![
        text(key, "name"),
        text(key, "id"),
        text(key, "created_datetime"),
        text(key, "revoked_datetime"),
    ]
}

/// Prints a key shown once: alone on stdout (table form), the whole object with `--format json`.
fn print_new_key(format: Format, key: &Value) {
    match format {
        Format::Json => print_json(key),
        Format::Table => {
            crate::out!("{}", text(key, "key"));
            eprintln!(
                "API key '{}' of {}: shown once; store it now",
                text(key, "name"),
                text(key, "username")
            );
        }
    }
}

fn read_password() -> anyhow::Result<String> {
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("reading the password from stdin")?;
    let password = password.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("no password on stdin");
    }
    Ok(password)
}

pub async fn org(args: OrgArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env(args.common.host.clone())?;
    let format = args.common.format;
    match args.command {
        OrgCommand::Ls => {
            let orgs = client.list(&uri::orgs()).await?;
            show_list(format, orgs, &["NAME", "CREATED"], |o| {
                vec![text(o, "name"), text(o, "created_datetime")]
            });
        }
        OrgCommand::Create { name } => {
            let org = client
                .call(Method::POST, &uri::orgs(), Some(&json!({"name": name})))
                .await?
                .body;
            show(format, &org, |o| crate::out!("{}", text(o, "name")));
        }
        OrgCommand::Inspect { name } => {
            let mut org = client.get(&uri::org(&name)).await?;
            org["teams"] = Value::Array(client.list(&uri::teams(&name)).await?);
            org["grants"] = Value::Array(client.list(&uri::grants(&name)).await?);
            show(format, &org, |o| {
                crate::out!("organization {}", text(o, "name"));
                let teams: Vec<Vec<String>> = o["teams"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(team_row)
                    .collect();
                print_table(&["ORG", "TEAM", "MEMBERS", "LDAP GROUP"], &teams);
                let grants: Vec<Vec<String>> = o["grants"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(grant_row)
                    .collect();
                print_table(&["GRANT", "TEAM", "ROLE", "RESOURCE"], &grants);
            });
        }
        OrgCommand::Rm { name } => {
            client.call(Method::DELETE, &uri::org(&name), None).await?;
            crate::out!("{name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn team(args: TeamArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env(args.common.host.clone())?;
    let format = args.common.format;
    let headers = &["ORG", "TEAM", "MEMBERS", "LDAP GROUP"];
    let team = match args.command {
        TeamCommand::Ls { org } => {
            let teams = client.list(&uri::teams(&org)).await?;
            show_list(format, teams, headers, team_row);
            return Ok(ExitCode::SUCCESS);
        }
        TeamCommand::Map {
            org,
            team,
            group_dn,
            unmap,
        } => {
            let group = if unmap { None } else { group_dn };
            let body = json!({"ldap_group_dn": group});
            client
                .call(Method::PATCH, &uri::team(&org, &team), Some(&body))
                .await?
                .body
        }
        TeamCommand::Create {
            org,
            name,
            members,
            ldap_group,
        } => {
            let body = json!({"name": name, "members": members, "ldap_group_dn": ldap_group});
            client
                .call(Method::POST, &uri::teams(&org), Some(&body))
                .await?
                .body
        }
        TeamCommand::Inspect { org, name } => client.get(&uri::team(&org, &name)).await?,
        TeamCommand::Rm { org, name } => {
            client
                .call(Method::DELETE, &uri::team(&org, &name), None)
                .await?
                .body
        }
        TeamCommand::Add { org, team, users } => {
            let body = json!({"add_members": users});
            client
                .call(Method::PATCH, &uri::team(&org, &team), Some(&body))
                .await?
                .body
        }
        TeamCommand::Remove { org, team, users } => {
            let body = json!({"remove_members": users});
            client
                .call(Method::PATCH, &uri::team(&org, &team), Some(&body))
                .await?
                .body
        }
    };
    show(format, &team, |t| print_table(headers, &[team_row(t)]));
    Ok(ExitCode::SUCCESS)
}

pub async fn user(args: UserArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env(args.common.host.clone())?;
    let format = args.common.format;
    let headers = &["USER", "ADMIN", "PASSWORD", "ORGANIZATIONS"];
    let user = match args.command {
        UserCommand::Ls => {
            let users = client.list(&uri::users()).await?;
            show_list(format, users, headers, user_row);
            return Ok(ExitCode::SUCCESS);
        }
        UserCommand::Create {
            name,
            admin,
            password_stdin,
        } => {
            let mut body = json!({"username": name, "admin": admin});
            if password_stdin {
                body["password"] = json!(read_password()?);
            }
            let created = client
                .call(Method::POST, &uri::users(), Some(&body))
                .await?
                .body;
            match format {
                Format::Json => print_json(&created),
                Format::Table => print_new_key(format, &created["api_key"]),
            }
            return Ok(ExitCode::SUCCESS);
        }
        UserCommand::Inspect { name } => client.get(&uri::user(&name)).await?,
        UserCommand::Rm { name } => {
            client
                .call(Method::DELETE, &uri::user(&name), None)
                .await?
                .body
        }
        UserCommand::Passwd { name, remove } => {
            let password = if remove {
                Value::Null
            } else {
                json!(read_password()?)
            };
            client
                .call(
                    Method::PATCH,
                    &uri::user(&name),
                    Some(&json!({"password": password})),
                )
                .await?
                .body
        }
        UserCommand::Key { command } => return key(&client, format, command).await,
    };
    show(format, &user, |u| print_table(headers, &[user_row(u)]));
    Ok(ExitCode::SUCCESS)
}

async fn key(client: &ApiClient, format: Format, command: KeyCommand) -> anyhow::Result<ExitCode> {
    let headers = &["NAME", "ID", "CREATED", "REVOKED"];
    match command {
        KeyCommand::Ls { user } => {
            let keys = client.list(&uri::api_keys(&user)).await?;
            show_list(format, keys, headers, key_row);
        }
        KeyCommand::Create { user, name } => {
            let key = client
                .call(
                    Method::POST,
                    &uri::api_keys(&user),
                    Some(&json!({"name": name})),
                )
                .await?
                .body;
            print_new_key(format, &key);
        }
        KeyCommand::Revoke { user, key } => {
            let revoked = client
                .call(Method::DELETE, &uri::api_key(&user, &key), None)
                .await?
                .body;
            show(format, &revoked, |k| print_table(headers, &[key_row(k)]));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn grant(args: GrantArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env(args.common.host.clone())?;
    let format = args.common.format;
    let headers = &["ID", "TEAM", "ROLE", "RESOURCE"];
    let grant = match args.command {
        GrantCommand::Ls { org } => {
            let grants = client.list(&uri::grants(&org)).await?;
            show_list(format, grants, headers, grant_row);
            return Ok(ExitCode::SUCCESS);
        }
        GrantCommand::Create {
            org,
            team,
            role,
            cluster,
            swarm,
        } => {
            let resource = match (cluster, swarm) {
                (Some(cluster), _) => text(
                    &client
                        .find(&uri::node_clusters(), "node cluster", &cluster, true)
                        .await?,
                    "uuid",
                ),
                (None, Some(swarm)) => text(
                    &client.find(&uri::swarms(), "swarm", &swarm, true).await?,
                    "uuid",
                ),
                (None, None) => "*".to_owned(),
            };
            let body = json!({"team": team, "role": role, "resource": resource});
            client
                .call(Method::POST, &uri::grants(&org), Some(&body))
                .await?
                .body
        }
        GrantCommand::Rm { org, id } => {
            client
                .call(Method::DELETE, &uri::grant(&org, &id), None)
                .await?
                .body
        }
    };
    show(format, &grant, |g| print_table(headers, &[grant_row(g)]));
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct LdapArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: LdapCommand,
}

#[derive(Debug, Subcommand)]
enum LdapCommand {
    /// Show the LDAP settings (bind passwords are never shown).
    Show,
    /// Replace the LDAP settings with a JSON file: {"servers": [{"url", "tls", "ca_file" or
    /// "ca_pem", "bind_dn", "domain"}], "searches": [{"base_dn", "scope", "filter",
    /// "username_attribute", "full_name_attribute"}]}.
    Set {
        file: std::path::PathBuf,
        /// Read the bind password of every server from stdin (else each keeps its stored one).
        #[arg(long)]
        bind_password_stdin: bool,
    },
    /// Turn LDAP off (directory users stay, but can no longer sign in with a password).
    Off,
    /// Sync directory users and group-mapped teams now.
    Sync,
}

/// The settings file with each `ca_file` read into `ca_pem` and the bind password set.
fn ldap_body(file: &std::path::Path, password: Option<&str>) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut body: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let base = file.parent().unwrap_or(std::path::Path::new("."));
    for server in body["servers"].as_array_mut().into_iter().flatten() {
        let Some(server) = server.as_object_mut() else {
            bail!("servers: each must be an object");
        };
        if let Some(ca_file) = server.remove("ca_file") {
            let path = base.join(ca_file.as_str().context("ca_file: must be a path")?);
            let pem = std::fs::read_to_string(&path)
                .with_context(|| format!("ca_file: reading {}", path.display()))?;
            server.insert("ca_pem".into(), json!(pem));
        }
        if server.contains_key("bind_password") {
            bail!("bind_password: give it on stdin with --bind-password-stdin, not in the file");
        }
        if let Some(password) = password {
            server.insert("bind_password".into(), json!(password));
        }
    }
    Ok(body)
}

pub async fn ldap(args: LdapArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env(args.common.host.clone())?;
    let format = args.common.format;
    let settings = match args.command {
        LdapCommand::Show => client.get(&uri::ldap()).await?,
        LdapCommand::Set {
            file,
            bind_password_stdin,
        } => {
            let password = if bind_password_stdin {
                Some(read_password()?)
            } else {
                None
            };
            let body = ldap_body(&file, password.as_deref())?;
            client
                .call(Method::PUT, &uri::ldap(), Some(&body))
                .await?
                .body
        }
        LdapCommand::Off => {
            let body = json!({"servers": [], "searches": []});
            client
                .call(Method::PUT, &uri::ldap(), Some(&body))
                .await?
                .body
        }
        LdapCommand::Sync => {
            let report = client
                .call(Method::POST, &uri::ldap_sync(), None)
                .await?
                .body;
            show(format, &report, |r| {
                let list = |field: &str| {
                    r[field]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                crate::out!("users checked: {}", text(r, "users"));
                for field in ["disabled", "enabled", "added", "removed"] {
                    crate::out!("{field}: {}", list(field));
                }
            });
            return Ok(ExitCode::SUCCESS);
        }
    };
    show(format, &settings, |s| {
        let servers: Vec<Vec<String>> = s["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|server| {
                vec![
                    text(server, "url"),
                    text(server, "tls"),
                    text(server, "bind_dn"),
                    text(server, "bind_password_set"),
                    text(server, "domain"),
                ]
            })
            .collect();
        print_table(
            &["URL", "TLS", "BIND DN", "PASSWORD SET", "DOMAIN"],
            &servers,
        );
        let searches: Vec<Vec<String>> = s["searches"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|search| {
                vec![
                    text(search, "base_dn"),
                    text(search, "scope"),
                    text(search, "filter"),
                    text(search, "username_attribute"),
                    text(search, "full_name_attribute"),
                ]
            })
            .collect();
        print_table(
            &["BASE DN", "SCOPE", "FILTER", "USERNAME", "FULL NAME"],
            &searches,
        );
    });
    Ok(ExitCode::SUCCESS)
}
