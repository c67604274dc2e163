//! `flotilla swarm`: Docker swarms on a Flotilla server.
//!
//! A swarm's managers and workers are node clusters, so `scale` is a `PATCH` of the workers'
//! node cluster (what `docker-cloud nodecluster scale` does too); `--sync` follows the action
//! the call started, as the other commands do.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::json;

use flotilla_api::uri;

use super::ApiClient;
use super::commands::{
    Common, inspect, last_segment, maybe_follow, patch_and_follow, remove_each, show_objects, text,
};

#[derive(Debug, Args)]
pub struct SwarmArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: SwarmCommand,
}

#[derive(Debug, Subcommand)]
enum SwarmCommand {
    /// List swarms.
    Ls,
    /// Show swarms as JSON: the Docker cluster ID and every node's role, availability and
    /// Docker status.
    Inspect { identifiers: Vec<String> },
    /// Create a swarm: its manager and worker node clusters are deployed at once, and the
    /// nodes form the swarm as their agents come up.
    Create(CreateArgs),
    /// Change the number of workers (new ones join by themselves).
    Scale {
        identifier: String,
        #[arg(long)]
        workers: u32,
        #[arg(long)]
        sync: bool,
    },
    /// Change the number of managers (1, 3, 5 or 7), live: one manager at a time, refused
    /// when the swarm could lose its Raft quorum.
    Update {
        identifier: String,
        #[arg(long)]
        managers: u32,
        #[arg(long)]
        sync: bool,
    },
    /// Terminate swarms and all their nodes.
    Rm {
        identifiers: Vec<String>,
        #[arg(long)]
        sync: bool,
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
    /// The managers' node type.
    nodetype: String,
    /// 1, 3, 5 or 7.
    #[arg(long, default_value_t = 3)]
    managers: u32,
    #[arg(long, default_value_t = 0)]
    workers: u32,
    /// The workers' node type (default: the managers').
    #[arg(long)]
    worker_nodetype: Option<String>,
    /// Root volume size in GB.
    #[arg(long)]
    disk: Option<u32>,
    #[arg(long)]
    sync: bool,
}

pub async fn swarm(args: SwarmArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env(args.common.host)?;
    let format = args.common.format;
    match args.command {
        SwarmCommand::Ls => {
            let swarms = client.list(&uri::swarms()).await?;
            show_objects(
                &swarms,
                format,
                &[
                    "NAME", "UUID", "REGION", "STATUS", "MANAGERS", "WORKERS", "SWARM ID",
                ],
                |s| {
                    vec![
                        text(s, "name"),
                        text(s, "uuid").chars().take(8).collect(),
                        last_segment(s, "region"),
                        text(s, "state"),
                        text(s, "manager_count"),
                        text(s, "worker_count"),
                        text(s, "cluster_id"),
                    ]
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        SwarmCommand::Inspect { identifiers } => {
            let mut found = Vec::new();
            for id in &identifiers {
                found.push(client.find(&uri::swarms(), "swarm", id, true).await?);
            }
            Ok(inspect(found))
        }
        SwarmCommand::Create(create) => {
            let mut body = json!({
                "name": create.name,
                "region": uri::region(&create.provider, &create.region),
                "manager_node_type": uri::node_type(&create.provider, &create.nodetype),
                "manager_count": create.managers,
                "worker_count": create.workers,
            });
            if let Some(worker_type) = &create.worker_nodetype {
                body["worker_node_type"] = json!(uri::node_type(&create.provider, worker_type));
            }
            if let Some(disk) = create.disk {
                body["disk"] = json!(disk);
            }
            let path = match &create.org {
                Some(org) => uri::swarms_in(org),
                None => uri::swarms(),
            };
            let answer = client.call(Method::POST, &path, Some(&body)).await?;
            crate::out!("{}", text(&answer.body, "uuid"));
            maybe_follow(&client, answer.action_uri, create.sync).await
        }
        SwarmCommand::Scale {
            identifier,
            workers,
            sync,
        } => {
            // docker-cloud's scale: a PATCH of the workers' node cluster.
            let swarm = client
                .find(&uri::swarms(), "swarm", &identifier, true)
                .await?;
            patch_and_follow(
                &client,
                &text(&swarm, "uuid"),
                &text(&swarm, "worker_cluster"),
                &json!({"target_num_nodes": workers}),
                sync,
            )
            .await
        }
        SwarmCommand::Update {
            identifier,
            managers,
            sync,
        } => {
            let swarm = client
                .find(&uri::swarms(), "swarm", &identifier, true)
                .await?;
            patch_and_follow(
                &client,
                &text(&swarm, "uuid"),
                &text(&swarm, "resource_uri"),
                &json!({"manager_count": managers}),
                sync,
            )
            .await
        }
        SwarmCommand::Rm { identifiers, sync } => {
            remove_each(&client, (&uri::swarms(), "swarm", true), &identifiers, sync).await
        }
    }
}
