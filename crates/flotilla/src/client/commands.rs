//! `flotilla nodecluster|node|action|event`: the docker-cloud infra commands, against a
//! Flotilla server.
//!
//! Each command maps to the same API calls the original CLI makes (create = POST then
//! `deploy/`, scale = PATCH `target_num_nodes`, …), so both clients leave the same audit
//! trail. `--sync` follows the action the call started: a progress line with the object's
//! state and node count, and the action's log as it grows; it exits 3 when the action fails,
//! like docker-cloud.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};

use flotilla_api::uri;

use super::ApiClient;
use crate::engine::Format;
use crate::output::{print_json, print_table};

/// Options every client command takes.
#[derive(Debug, Args)]
pub struct Common {
    /// Server URL (default: FLOTILLA_HOST, DOCKERCLOUD_REST_HOST, or http://127.0.0.1:8000).
    #[arg(long, global = true)]
    pub(crate) host: Option<String>,
    #[arg(long, value_enum, default_value = "table", global = true)]
    pub(crate) format: Format,
}

#[derive(Debug, Args)]
pub struct NodeClusterArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: NodeClusterCommand,
}

#[derive(Debug, Subcommand)]
enum NodeClusterCommand {
    /// List node clusters.
    Ls,
    /// Show node clusters as JSON.
    Inspect { identifiers: Vec<String> },
    /// Create a node cluster and deploy it.
    Create(Box<CreateArgs>),
    /// Change a node cluster's number of nodes.
    Scale {
        identifier: String,
        target_num_nodes: u32,
        #[arg(long)]
        sync: bool,
    },
    /// Terminate node clusters and all their nodes.
    Rm {
        identifiers: Vec<String>,
        #[arg(long)]
        sync: bool,
    },
    /// List providers.
    Provider,
    /// List regions.
    Region {
        #[arg(short = 'p', long)]
        provider: Option<String>,
    },
    /// List node types.
    Nodetype {
        #[arg(short = 'p', long)]
        provider: Option<String>,
        #[arg(short = 'r', long)]
        region: Option<String>,
    },
    /// List availability zones.
    Az {
        #[arg(short = 'r', long)]
        region: Option<String>,
    },
}

#[derive(Debug, Args)]
struct CreateArgs {
    name: String,
    /// The organization that will own it (default: your only one; `default` for the
    /// server administrator).
    #[arg(long)]
    org: Option<String>,
    provider: String,
    region: String,
    nodetype: String,
    #[arg(short = 't', long = "target-num-nodes", default_value_t = 1)]
    target_num_nodes: u32,
    /// Root volume size in GB.
    #[arg(long)]
    disk: Option<u32>,
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[arg(long)]
    aws_vpc_id: Option<String>,
    #[arg(long = "aws-vpc-subnet")]
    aws_vpc_subnets: Vec<String>,
    #[arg(long = "aws-vpc-security-group")]
    aws_vpc_security_groups: Vec<String>,
    #[arg(long)]
    aws_iam_instance_profile_name: Option<String>,
    #[arg(long)]
    sync: bool,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List nodes.
    Ls {
        /// Only the nodes of this cluster (uuid, prefix or name).
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Show nodes as JSON.
    Inspect { identifiers: Vec<String> },
    /// Terminate nodes (the cluster's target goes down by one each).
    Rm {
        identifiers: Vec<String>,
        #[arg(long)]
        sync: bool,
    },
    /// Print the command that brings a host you run under Flotilla's management.
    Byo,
    /// Judge nodes' health now from their agents' last heartbeats.
    HealthCheck { identifiers: Vec<String> },
}

#[derive(Debug, Args)]
pub struct ActionArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: ActionCommand,
}

#[derive(Debug, Subcommand)]
enum ActionCommand {
    /// List actions, newest first.
    Ls {
        #[arg(short = 'l', long, default_value_t = 25)]
        last: usize,
    },
    /// Show actions as JSON.
    Inspect { identifiers: Vec<String> },
    /// Print an action's log; with --follow, until the action ends.
    Logs {
        identifier: String,
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Cancel a pending or running action.
    Cancel { identifiers: Vec<String> },
    /// Run a finished action again.
    Retry { identifiers: Vec<String> },
}

#[derive(Debug, Args)]
pub struct EventArgs {
    #[command(flatten)]
    common: Common,
}

pub(super) fn text(value: &Value, field: &str) -> String {
    match value.get(field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// The last path segment of a resource URI (`/api/infra/v1/region/aws/us-east-1/` → us-east-1).
pub(super) fn last_segment(value: &Value, field: &str) -> String {
    text(value, field)
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

pub(super) fn show_objects(
    objects: &[Value],
    format: Format,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) {
    match format {
        Format::Json => print_json(&Value::Array(objects.to_vec())),
        Format::Table => print_table(headers, &objects.iter().map(row).collect::<Vec<_>>()),
    }
}

pub(super) fn inspect(objects: Vec<Value>) -> ExitCode {
    for object in &objects {
        print_json(object);
    }
    ExitCode::SUCCESS
}

/// Follows an action until it ends: a spinner with the object's progress and the log lines
/// as they arrive. Exit code 3 on failure, as docker-cloud.
async fn follow_action(client: &ApiClient, action_uri: &str) -> anyhow::Result<ExitCode> {
    // A spinner on a terminal; plain lines (log lines and state changes) otherwise.
    let interactive = std::io::stderr().is_terminal();
    let mut last_message = String::new();
    let bar = if interactive {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut printed = 0usize;
    loop {
        let action = client.get(action_uri).await?;
        let logs = text(&action, "logs");
        let lines: Vec<&str> = logs.lines().collect();
        for line in lines.iter().skip(printed) {
            if interactive {
                bar.println(format!("  {line}"));
            } else {
                eprintln!("  {line}");
            }
        }
        printed = lines.len();
        let state = text(&action, "state");
        let object_uri = text(&action, "object");
        let progress = match client.get(&object_uri).await {
            Ok(object) if object.get("target_num_nodes").is_some() => format!(
                "{} — {}: {} of {} nodes",
                text(&action, "action"),
                text(&object, "state"),
                text(&object, "current_num_nodes"),
                text(&object, "target_num_nodes")
            ),
            Ok(object) => format!("{} — {}", text(&action, "action"), text(&object, "state")),
            Err(_) => text(&action, "action"),
        };
        let message = format!("{state}: {progress}");
        if !interactive && message != last_message {
            eprintln!("{message}");
        }
        bar.set_message(message.clone());
        last_message = message;
        match state.as_str() {
            "Success" => {
                bar.finish_with_message(format!("Success: {progress}"));
                return Ok(ExitCode::SUCCESS);
            }
            "Failed" | "Canceled" => {
                bar.finish_with_message(format!("{state}: {progress}"));
                return Ok(ExitCode::from(3));
            }
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// A `PATCH` of `path` with `body`; prints `uuid` (the object the user named) and, with
/// `sync`, follows the action it started.
pub(super) async fn patch_and_follow(
    client: &ApiClient,
    uuid: &str,
    path: &str,
    body: &Value,
    sync: bool,
) -> anyhow::Result<ExitCode> {
    let answer = client.call(Method::PATCH, path, Some(body)).await?;
    crate::out!("{uuid}");
    maybe_follow(client, answer.action_uri, sync).await
}

/// `rm` of each of `identifiers` in `collection` (found by uuid, prefix or — `by_name` —
/// name): a `DELETE` of its resource URI, its uuid printed, its action followed with
/// `sync`. Exit code 3 when any followed action failed.
pub(super) async fn remove_each(
    client: &ApiClient,
    (collection, what, by_name): (&str, &str, bool),
    identifiers: &[String],
    sync: bool,
) -> anyhow::Result<ExitCode> {
    let mut code = ExitCode::SUCCESS;
    for id in identifiers {
        let object = client.find(collection, what, id, by_name).await?;
        let answer = client
            .call(Method::DELETE, &text(&object, "resource_uri"), None)
            .await?;
        crate::out!("{}", text(&object, "uuid"));
        if maybe_follow(client, answer.action_uri, sync).await? != ExitCode::SUCCESS {
            code = ExitCode::from(3);
        }
    }
    Ok(code)
}

pub(super) async fn maybe_follow(
    client: &ApiClient,
    action_uri: Option<String>,
    sync: bool,
) -> anyhow::Result<ExitCode> {
    match (sync, action_uri) {
        (true, Some(uri)) => follow_action(client, &uri).await,
        (true, None) => bail!("the server did not say which action to follow"),
        (false, _) => Ok(ExitCode::SUCCESS),
    }
}

pub async fn nodecluster(args: NodeClusterArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env(args.common.host)?;
    let format = args.common.format;
    match args.command {
        NodeClusterCommand::Ls => {
            let clusters = client.list(&uri::node_clusters()).await?;
            show_objects(
                &clusters,
                format,
                &[
                    "NAME",
                    "UUID",
                    "REGION",
                    "TYPE",
                    "DEPLOYED",
                    "STATUS",
                    "CURRENT#NODES",
                    "TARGET#NODES",
                ],
                |c| {
                    vec![
                        text(c, "name"),
                        text(c, "uuid").chars().take(8).collect(),
                        last_segment(c, "region"),
                        last_segment(c, "node_type"),
                        text(c, "deployed_datetime"),
                        text(c, "state"),
                        text(c, "current_num_nodes"),
                        text(c, "target_num_nodes"),
                    ]
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        NodeClusterCommand::Inspect { identifiers } => {
            let mut found = Vec::new();
            for id in &identifiers {
                found.push(
                    client
                        .find(&uri::node_clusters(), "node cluster", id, true)
                        .await?,
                );
            }
            Ok(inspect(found))
        }
        NodeClusterCommand::Create(create) => {
            let mut body = json!({
                "name": create.name,
                "region": uri::region(&create.provider, &create.region),
                "node_type": uri::node_type(&create.provider, &create.nodetype),
                "target_num_nodes": create.target_num_nodes,
            });
            if let Some(disk) = create.disk {
                body["disk"] = json!(disk);
            }
            if !create.tags.is_empty() {
                body["tags"] = json!(
                    create
                        .tags
                        .iter()
                        .map(|t| json!({"name": t}))
                        .collect::<Vec<_>>()
                );
            }
            let mut options = serde_json::Map::new();
            if create.aws_vpc_id.is_some()
                || !create.aws_vpc_subnets.is_empty()
                || !create.aws_vpc_security_groups.is_empty()
            {
                let mut vpc = serde_json::Map::new();
                if let Some(id) = &create.aws_vpc_id {
                    vpc.insert("id".into(), json!(id));
                }
                if !create.aws_vpc_subnets.is_empty() {
                    vpc.insert("subnets".into(), json!(create.aws_vpc_subnets));
                }
                if !create.aws_vpc_security_groups.is_empty() {
                    vpc.insert(
                        "security_groups".into(),
                        json!(create.aws_vpc_security_groups),
                    );
                }
                options.insert("vpc".into(), Value::Object(vpc));
            }
            if let Some(profile) = &create.aws_iam_instance_profile_name {
                options.insert("iam".into(), json!({"instance_profile_name": profile}));
            }
            if !options.is_empty() {
                body["provider_options"] = Value::Object(options);
            }
            let path = match &create.org {
                Some(org) => uri::node_clusters_in(org),
                None => uri::node_clusters(),
            };
            let created = client.call(Method::POST, &path, Some(&body)).await?.body;
            let uuid = text(&created, "uuid");
            let deployed = client
                .call(Method::POST, &uri::node_cluster_deploy(&uuid), None)
                .await?;
            crate::out!("{uuid}");
            maybe_follow(&client, deployed.action_uri, create.sync).await
        }
        NodeClusterCommand::Scale {
            identifier,
            target_num_nodes,
            sync,
        } => {
            let cluster = client
                .find(&uri::node_clusters(), "node cluster", &identifier, true)
                .await?;
            patch_and_follow(
                &client,
                &text(&cluster, "uuid"),
                &text(&cluster, "resource_uri"),
                &json!({"target_num_nodes": target_num_nodes}),
                sync,
            )
            .await
        }
        NodeClusterCommand::Rm { identifiers, sync } => {
            remove_each(
                &client,
                (&uri::node_clusters(), "node cluster", true),
                &identifiers,
                sync,
            )
            .await
        }
        NodeClusterCommand::Provider => {
            let providers = client.list(&uri::providers()).await?;
            show_objects(&providers, format, &["NAME", "LABEL", "AVAILABLE"], |p| {
                vec![text(p, "name"), text(p, "label"), text(p, "available")]
            });
            Ok(ExitCode::SUCCESS)
        }
        NodeClusterCommand::Region { provider } => {
            let mut regions = client.list(&uri::regions()).await?;
            if let Some(provider) = provider {
                regions.retain(|r| last_segment(r, "provider") == provider);
            }
            show_objects(
                &regions,
                format,
                &["NAME", "LABEL", "PROVIDER", "AVAILABLE"],
                |r| {
                    vec![
                        text(r, "name"),
                        text(r, "label"),
                        last_segment(r, "provider"),
                        text(r, "available"),
                    ]
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        NodeClusterCommand::Nodetype { provider, region } => {
            let mut types = client.list(&uri::node_types()).await?;
            if let Some(provider) = provider {
                types.retain(|t| last_segment(t, "provider") == provider);
            }
            if let Some(region) = &region {
                types.retain(|t| {
                    t.get("regions")
                        .and_then(Value::as_array)
                        .is_some_and(|rs| {
                            rs.iter().any(|r| {
                                r.as_str().is_some_and(|r| {
                                    r.trim_end_matches('/').ends_with(&format!("/{region}"))
                                })
                            })
                        })
                });
            }
            show_objects(
                &types,
                format,
                &["NAME", "LABEL", "PROVIDER", "AVAILABLE"],
                |t| {
                    vec![
                        text(t, "name"),
                        text(t, "label"),
                        last_segment(t, "provider"),
                        text(t, "available"),
                    ]
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        NodeClusterCommand::Az { region } => {
            let mut zones = client.list(&uri::availability_zones()).await?;
            if let Some(region) = region {
                zones.retain(|z| last_segment(z, "region") == region);
            }
            show_objects(&zones, format, &["NAME", "REGION", "AVAILABLE"], |z| {
                vec![
                    text(z, "name"),
                    last_segment(z, "region"),
                    text(z, "available"),
                ]
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The one line that installs and starts the agent of a bring-your-own node.
pub fn byo_install_command(server: &str, token: &str) -> String {
    format!(
        "curl -fsSL {server}/download/flotilla -o /usr/local/bin/flotilla && chmod 0755 /usr/local/bin/flotilla && mkdir -p /var/lib/flotilla && FLOTILLA_SERVER={server} FLOTILLA_TOKEN={token} FLOTILLA_AGENT_STATE=/var/lib/flotilla/agent.json nohup /usr/local/bin/flotilla agent >>/var/log/flotilla-agent.log 2>&1 &"
    )
}

pub async fn node(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env(args.common.host)?;
    let format = args.common.format;
    match args.command {
        NodeCommand::Ls { cluster } => {
            let path = match cluster {
                Some(id) => {
                    let cluster = client
                        .find(&uri::node_clusters(), "node cluster", &id, true)
                        .await?;
                    format!("{}?node_cluster={}", uri::nodes(), text(&cluster, "uuid"))
                }
                None => uri::nodes(),
            };
            let nodes = client.list(&path).await?;
            show_objects(
                &nodes,
                format,
                &[
                    "UUID",
                    "FQDN",
                    "LASTSEEN",
                    "STATUS",
                    "CLUSTER",
                    "AZ",
                    "PUBLIC IP",
                ],
                |n| {
                    vec![
                        text(n, "uuid").chars().take(8).collect(),
                        text(n, "external_fqdn"),
                        text(n, "last_seen"),
                        text(n, "state"),
                        last_segment(n, "node_cluster").chars().take(8).collect(),
                        last_segment(n, "availability_zone"),
                        text(n, "public_ip"),
                    ]
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Inspect { identifiers } => {
            let mut found = Vec::new();
            for id in &identifiers {
                found.push(client.find(&uri::nodes(), "node", id, false).await?);
            }
            Ok(inspect(found))
        }
        NodeCommand::Rm { identifiers, sync } => {
            remove_each(&client, (&uri::nodes(), "node", false), &identifiers, sync).await
        }
        NodeCommand::HealthCheck { identifiers } => {
            for id in &identifiers {
                let node = client.find(&uri::nodes(), "node", id, false).await?;
                let uuid = text(&node, "uuid");
                let answer = client
                    .call(Method::POST, &uri::node_health_check(&uuid), None)
                    .await?;
                crate::out!("{uuid} {}", text(&answer.body, "state"));
            }
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Byo => {
            let answer = client.call(Method::POST, &uri::token(), None).await?;
            let token = text(&answer.body, "token");
            if token.is_empty() {
                bail!("the server returned no token");
            }
            crate::out!(
                "Run this on the host (Linux, with Docker or able to install it) as root:\n"
            );
            crate::out!("  {}\n", byo_install_command(client.base(), &token));
            crate::out!(
                "The token works once. The host appears in `flotilla node ls` when its agent registers."
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn action(args: ActionArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env(args.common.host)?;
    let format = args.common.format;
    match args.command {
        ActionCommand::Ls { last } => {
            let mut actions = Vec::new();
            let mut next = Some(format!("{}?limit={}", uri::actions(), last.clamp(1, 1000)));
            while let Some(page) = next.filter(|_| actions.len() < last) {
                let body = client.get(&page).await?;
                actions.extend(
                    body.get("objects")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
                next = body
                    .pointer("/meta/next")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            actions.truncate(last);
            show_objects(
                &actions,
                format,
                &["UUID", "ACTION", "START", "END", "TARGET", "IP", "STATE"],
                |a| {
                    vec![
                        text(a, "uuid").chars().take(8).collect(),
                        text(a, "action"),
                        text(a, "start_date"),
                        text(a, "end_date"),
                        text(a, "object")
                            .trim_end_matches('/')
                            .rsplit('/')
                            .next()
                            .unwrap_or_default()
                            .chars()
                            .take(8)
                            .collect(),
                        text(a, "ip"),
                        text(a, "state"),
                    ]
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        ActionCommand::Inspect { identifiers } => {
            let mut found = Vec::new();
            for id in &identifiers {
                found.push(client.find(&uri::actions(), "action", id, false).await?);
            }
            Ok(inspect(found))
        }
        ActionCommand::Logs { identifier, follow } => {
            let action = client
                .find(&uri::actions(), "action", &identifier, false)
                .await?;
            let uri = text(&action, "resource_uri");
            let mut printed = 0usize;
            loop {
                let current = client.get(&uri).await?;
                let logs = text(&current, "logs");
                for line in logs.lines().skip(printed) {
                    crate::out!("{line}");
                }
                printed = logs.lines().count();
                let done = matches!(
                    text(&current, "state").as_str(),
                    "Success" | "Failed" | "Canceled"
                );
                if !follow || done {
                    return Ok(ExitCode::SUCCESS);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        ActionCommand::Cancel { identifiers } => {
            act_on_actions(&client, &identifiers, "cancel").await
        }
        ActionCommand::Retry { identifiers } => {
            act_on_actions(&client, &identifiers, "retry").await
        }
    }
}

async fn act_on_actions(
    client: &ApiClient,
    identifiers: &[String],
    verb: &str,
) -> anyhow::Result<ExitCode> {
    for id in identifiers {
        let action = client.find(&uri::actions(), "action", id, false).await?;
        let uuid = text(&action, "uuid");
        client
            .call(Method::POST, &uri::action_verb(&uuid, verb), None)
            .await?;
        crate::out!("{uuid}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the events stream (one JSON object per line) until interrupted, reconnecting with
/// a growing pause when the connection drops.
pub async fn event(args: EventArgs) -> anyhow::Result<ExitCode> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::{Message, http::HeaderValue};

    let client = ApiClient::from_env(args.common.host)?;
    let url = client.api.events_url();
    let authorization = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{}", client.api.user(), client.api.key())
        )
    );
    let mut pause = Duration::from_millis(500);
    loop {
        let mut request = url.as_str().into_client_request().context("events URL")?;
        request
            .headers_mut()
            .insert("Authorization", HeaderValue::from_str(&authorization)?);
        match tokio_tungstenite::connect_async(request).await {
            Ok((mut socket, _)) => {
                pause = Duration::from_millis(500);
                while let Some(message) = socket.next().await {
                    match message {
                        Ok(Message::Text(text)) => {
                            let is_auth =
                                serde_json::from_str::<Value>(&text).ok().is_some_and(|v| {
                                    v.get("type").and_then(Value::as_str) == Some("auth")
                                });
                            if !is_auth {
                                crate::out!("{text}");
                            }
                        }
                        Ok(Message::Ping(payload)) => {
                            let _ = socket.send(Message::Pong(payload)).await;
                        }
                        Ok(Message::Close(_)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response))
                if response.status() == 401 =>
            {
                bail!("not authorized: check FLOTILLA_USER and FLOTILLA_APIKEY");
            }
            Err(error) => eprintln!("events stream: {error}; reconnecting"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}
