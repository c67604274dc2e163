//! `flotilla provider link|show aws`: link an AWS account to a Flotilla server.
//!
//! Design decisions:
//! * The keys are resolved here, where the user's AWS configuration is: from the flags,
//!   else from `--profile`, else from the standard chain (environment, `~/.aws`, SSO). The
//!   server only ever receives a plain key pair, so it needs no access to the user's files,
//!   and temporary keys (SSO, roles) are sent with their session token.
//! * The server validates the keys (a dry-run launch in every region) before it stores
//!   them; this command prints the per-region table on success and the server's failure
//!   message — the reasons per region and the reproducing `aws` command — with exit 1.
//! * The secret is never printed. Prefer the environment or a profile to
//!   `--secret-access-key`, which other local users can see in the process list.

use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use flotilla_api::uri;
use reqwest::Method;
use serde_json::{Value, json};

use super::ApiClient;
use super::commands::Common;
use crate::engine::Format;
use crate::output::print_json;

#[derive(Debug, Args)]
pub struct ProviderArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: ProviderCommand,
}

#[derive(Debug, Subcommand)]
enum ProviderCommand {
    /// Validate AWS keys and make the server use them (stored encrypted).
    Link(LinkArgs),
    /// Show whether keys are linked, and their access key id.
    Show {
        /// The provider (only `aws`).
        provider: String,
    },
}

#[derive(Debug, Args)]
struct LinkArgs {
    /// The provider (only `aws`).
    provider: String,
    /// Access key id to link (with --secret-access-key).
    #[arg(long, requires = "secret_access_key", conflicts_with = "profile")]
    access_key_id: Option<String>,
    /// Secret access key to link (with --access-key-id).
    #[arg(long, requires = "access_key_id")]
    secret_access_key: Option<String>,
    /// Session token of temporary keys.
    #[arg(long, requires = "access_key_id")]
    session_token: Option<String>,
    /// Link the keys of this profile from ~/.aws (resolved here, not on the server).
    #[arg(long)]
    profile: Option<String>,
}

pub async fn provider(args: ProviderArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env(args.common.host.clone())?;
    match args.command {
        ProviderCommand::Show { provider } => {
            let body = client.get(&uri::provider_credentials(&provider)).await?;
            match args.common.format {
                Format::Json => print_json(&body),
                Format::Table => match body.get("access_key_id").and_then(Value::as_str) {
                    Some(id) => println!("{provider}: linked, access key {id}"),
                    None => println!(
                        "{provider}: no keys linked (the server uses its own credential chain)"
                    ),
                },
            }
            Ok(ExitCode::SUCCESS)
        }
        ProviderCommand::Link(link) => {
            if link.provider != "aws" {
                bail!(
                    "unknown provider '{}': only 'aws' can be linked",
                    link.provider
                );
            }
            let keys = match (link.access_key_id, link.secret_access_key) {
                (Some(id), Some(secret)) => flotilla_core::cloud::AccessKeys {
                    access_key_id: id,
                    secret_access_key: secret,
                    session_token: link.session_token,
                },
                _ => flotilla_aws::resolve_keys(link.profile.as_deref())
                    .await
                    .map_err(anyhow::Error::msg)?,
            };
            let body = json!({
                "access_key_id": keys.access_key_id,
                "secret_access_key": keys.secret_access_key,
                "session_token": keys.session_token,
            });
            let answer = match client
                .call(
                    Method::PUT,
                    &uri::provider_credentials(&link.provider),
                    Some(&body),
                )
                .await
            {
                Ok(answer) => answer.body,
                Err(error) => {
                    eprintln!("{error:#}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            match args.common.format {
                Format::Json => print_json(&answer),
                Format::Table => {
                    if let Some(table) = answer.pointer("/validation/table").and_then(Value::as_str)
                    {
                        print!("{table}");
                    }
                    println!(
                        "Linked AWS access key {} to {}",
                        answer["access_key_id"].as_str().unwrap_or(""),
                        client.base()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
