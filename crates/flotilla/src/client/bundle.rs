//! `flotilla bundle create|ls|rm`: client bundles for the standard `docker` CLI (issue #15).
//!
//! Design decisions:
//! * The server makes the zip (UCP's layout: `ca.pem`, `cert.pem`, `key.pem`, `cert.pub`,
//!   `env.sh`, `env.ps1`, `env.cmd`), so the API and this command give the same bundle;
//!   the command writes it to `--out` (default `bundle-<user>.zip`) with mode 0600, since
//!   it holds the private key, and refuses to overwrite a file.
//! * A bundle is always the calling user's own (`FLOTILLA_USER`), or `--user`'s for the
//!   server administrator.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::process::ExitCode;

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Args, Subcommand};
use flotilla_api::uri;
use reqwest::Method;
use serde_json::{Value, json};

use super::ApiClient;
use super::access::text;
use super::commands::Common;
use crate::engine::Format;
use crate::output::{print_json, print_table};

#[derive(Debug, Args)]
pub struct BundleArgs {
    #[command(flatten)]
    common: Common,
    /// Whose bundles (the server administrator only; default: yourself).
    #[arg(long, global = true)]
    user: Option<String>,
    #[command(subcommand)]
    command: BundleCommand,
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Create a bundle: a zip with a key, a certificate naming you and env.sh.
    Create {
        /// The swarm (name or uuid) whose manager env.sh points DOCKER_HOST at.
        #[arg(long)]
        swarm: Option<String>,
        /// Where to write the zip (default: bundle-<user>.zip); never overwritten.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// List bundles (never their keys).
    Ls,
    /// Revoke a bundle by id: every swarm refuses it from its next request.
    Rm { id: String },
}

fn row(bundle: &Value) -> Vec<String> {
    vec![
        text(bundle, "id"),
        text(bundle, "swarm"),
        text(bundle, "created_datetime"),
        text(bundle, "expires_datetime"),
        text(bundle, "revoked_datetime"),
    ]
}

const HEADERS: &[&str] = &["ID", "SWARM", "CREATED", "EXPIRES", "REVOKED"];

pub async fn bundle(args: BundleArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env(args.common.host.clone())?;
    let format = args.common.format;
    let user = args.user.unwrap_or_else(|| client.api.user().to_owned());
    match args.command {
        BundleCommand::Create { swarm, out } => {
            let created = client
                .call(
                    Method::POST,
                    &uri::bundles(&user),
                    Some(&json!({"swarm": swarm})),
                )
                .await?
                .body;
            let zip = base64::engine::general_purpose::STANDARD
                .decode(text(&created, "zip"))
                .context("the server's answer holds no readable zip")?;
            let out = out.unwrap_or_else(|| format!("bundle-{user}.zip").into());
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("creating {} (it is never overwritten)", out.display()))?;
            file.write_all(&zip)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", out.display()))?;
            let bundle = &created["bundle"];
            match format {
                Format::Json => print_json(&json!({
                    "bundle": bundle,
                    "docker_host": created["docker_host"],
                    "file": out.display().to_string(),
                })),
                Format::Table => {
                    print_table(HEADERS, &[row(bundle)]);
                    eprintln!(
                        "wrote {}: unzip it into a directory, then `cd` there and `eval \"$(<env.sh)\"`{}",
                        out.display(),
                        match created["docker_host"].as_str() {
                            Some(host) => format!(" (DOCKER_HOST={host})"),
                            None =>
                                " and set DOCKER_HOST to a manager (no --swarm was given)".into(),
                        }
                    );
                }
            }
        }
        BundleCommand::Ls => {
            let bundles = client.list(&uri::bundles(&user)).await?;
            match format {
                Format::Json => print_json(&Value::Array(bundles)),
                Format::Table => print_table(HEADERS, &bundles.iter().map(row).collect::<Vec<_>>()),
            }
        }
        BundleCommand::Rm { id } => {
            let revoked = client
                .call(Method::DELETE, &uri::bundle(&user, &id), None)
                .await?
                .body;
            match format {
                Format::Json => print_json(&revoked),
                Format::Table => print_table(HEADERS, &[row(&revoked)]),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
