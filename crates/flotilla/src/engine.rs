//! `flotilla engine`: the provisioning engine as a command-line tool, with no server.
//!
//! `up` is "make the cluster have N nodes" — the same command creates, scales up, scales down
//! and resumes after a crash, because every run observes AWS by tag first. `down` terminates
//! the cluster's nodes and, unless told otherwise, removes the auto network once no instance
//! uses it. The spec goes through the same validation as the API (`ClusterSpec::from_json`),
//! so a bad flag gets the same field-named error a bad API body would.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use flotilla_aws::{Aws, AwsSettings};
use flotilla_core::bootstrap::user_data;
use flotilla_core::cloud::{Cloud, Instance, Network, NetworkRequest};
use flotilla_core::placement::{PlacedNode, nodes_per_az};
use flotilla_core::plan::cluster::{Desired, NetworkUse, placed};
use flotilla_core::tags::engine_cluster_uuid;
use flotilla_core::{CloudError, ClusterSpec};
use flotilla_server::execute;
use serde_json::{Value, json};

use crate::launch_options::LaunchOptions;
use crate::output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Installation id written to the `flotilla:owner` tag of everything created.
    #[arg(
        long,
        env = "FLOTILLA_OWNER",
        default_value = "flotilla",
        global = true
    )]
    owner: String,
    /// AWS endpoint for every service (an emulator such as moto). `AWS_ENDPOINT_URL` works too.
    #[arg(long, env = "FLOTILLA_AWS_ENDPOINT_URL", global = true)]
    endpoint_url: Option<String>,
    /// Named AWS profile; without it the standard credential chain is used.
    #[arg(long, env = "AWS_PROFILE", global = true)]
    profile: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table", global = true)]
    format: Format,
    #[command(subcommand)]
    command: EngineCommand,
}

#[derive(Debug, Subcommand)]
enum EngineCommand {
    /// Dry-run a launch in every region; valid when one region succeeds.
    Validate {
        #[arg(long, default_value = "t3.micro")]
        instance_type: String,
    },
    /// Create the cluster, or bring an existing one to the asked node count.
    Up(Box<UpArgs>),
    /// Show a cluster's network and nodes.
    Show(ClusterRef),
    /// Terminate a cluster's nodes and remove the auto network when nothing uses it.
    Down {
        #[command(flatten)]
        cluster: ClusterRef,
        /// Leave the network in place.
        #[arg(long)]
        keep_network: bool,
    },
}

#[derive(Debug, Args)]
struct ClusterRef {
    /// Cluster name (a DNS label).
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "us-east-1")]
    region: String,
}

#[derive(Debug, Args)]
struct UpArgs {
    #[command(flatten)]
    cluster: ClusterRef,
    /// A Docker Cloud node cluster body (JSON file); flags below override its fields.
    #[arg(long)]
    spec: Option<std::path::PathBuf>,
    #[arg(long, default_value = "t3.micro")]
    node_type: String,
    /// Desired number of nodes (`target_num_nodes`).
    #[arg(long = "nodes", alias = "target-num-nodes")]
    target_num_nodes: Option<String>,
    /// Root volume size in GB (`disk`).
    #[arg(long)]
    disk: Option<String>,
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Use this VPC (`provider_options.vpc.id`).
    #[arg(long)]
    vpc_id: Option<String>,
    /// Subnets of that VPC to spread over (`provider_options.vpc.subnets`).
    #[arg(long = "subnet")]
    subnets: Vec<String>,
    /// Security groups (`provider_options.vpc.security_groups`).
    #[arg(long = "security-group")]
    security_groups: Vec<String>,
    /// IAM instance profile (`provider_options.iam.instance_profile_name`).
    #[arg(long)]
    instance_profile: Option<String>,
    #[command(flatten)]
    launch: LaunchOptions,
}

pub async fn run(args: EngineArgs) -> anyhow::Result<ExitCode> {
    let settings = AwsSettings {
        owner: args.owner.clone(),
        endpoint_url: args.endpoint_url.clone(),
        profile: args.profile.clone(),
        ..AwsSettings::default()
    };
    let aws = Aws::connect(settings).await;
    match args.command {
        EngineCommand::Validate { instance_type } => {
            validate(&aws, &instance_type, args.format).await
        }
        EngineCommand::Up(up_args) => up(&aws, &args.owner, *up_args, args.format).await,
        EngineCommand::Show(cluster) => show(&aws, &args.owner, &cluster, args.format).await,
        EngineCommand::Down {
            cluster,
            keep_network,
        } => down(&aws, &args.owner, &cluster, keep_network, args.format).await,
    }
}

async fn validate(aws: &Aws, instance_type: &str, format: Format) -> anyhow::Result<ExitCode> {
    let report = aws.validate_credentials(instance_type).await?;
    match format {
        Format::Json => output::print_json(&json!({
            "valid": report.is_valid(),
            "regions": report.regions.iter().map(|r| json!({
                "region": r.region, "result": r.outcome.label(), "detail": r.outcome.detail(), "image_id": r.image_id,
            })).collect::<Vec<_>>(),
        })),
        Format::Table => {
            if report.is_valid() {
                print!("{}", report.table());
                let ok = report
                    .regions
                    .iter()
                    .filter(|r| r.outcome.label() == "ok")
                    .count();
                println!(
                    "AWS credentials are valid ({ok} of {} regions accept a dry-run launch)",
                    report.regions.len()
                );
            }
        }
    }
    if report.is_valid() {
        Ok(ExitCode::SUCCESS)
    } else {
        if format == Format::Table {
            eprintln!("{}", report.failure_message());
        }
        Ok(ExitCode::FAILURE)
    }
}

/// The Docker Cloud body the flags describe, validated like an API request.
fn spec_from(args: &UpArgs) -> anyhow::Result<ClusterSpec> {
    let mut body: Value = match &args.spec {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?
        }
        None => json!({}),
    };
    let Some(object) = body.as_object_mut() else {
        bail!("the spec must be a JSON object")
    };
    object.insert("name".into(), json!(args.cluster.name));
    object.insert(
        "region".into(),
        json!(flotilla_api::uri::region("aws", &args.cluster.region)),
    );
    if args.spec.is_none() || !object.contains_key("node_type") {
        object.insert(
            "node_type".into(),
            json!(flotilla_api::uri::node_type("aws", &args.node_type)),
        );
    }
    if let Some(n) = &args.target_num_nodes {
        object.insert("target_num_nodes".into(), json!(n));
    }
    if let Some(disk) = &args.disk {
        object.insert("disk".into(), json!(disk));
    }
    if !args.tags.is_empty() {
        object.insert(
            "tags".into(),
            json!(
                args.tags
                    .iter()
                    .map(|t| json!({"name": t}))
                    .collect::<Vec<_>>()
            ),
        );
    }
    if args.vpc_id.is_some() || !args.subnets.is_empty() || !args.security_groups.is_empty() {
        let mut vpc = serde_json::Map::new();
        if let Some(id) = &args.vpc_id {
            vpc.insert("id".into(), json!(id));
        }
        if !args.subnets.is_empty() {
            vpc.insert("subnets".into(), json!(args.subnets));
        }
        if !args.security_groups.is_empty() {
            vpc.insert("security_groups".into(), json!(args.security_groups));
        }
        object
            .entry("provider_options")
            .or_insert_with(|| json!({}))["vpc"] = Value::Object(vpc);
    }
    if let Some(profile) = &args.instance_profile {
        object
            .entry("provider_options")
            .or_insert_with(|| json!({}))["iam"] = json!({"instance_profile_name": profile});
    }
    ClusterSpec::from_json(&body)
        .map_err(|errors| anyhow::anyhow!("invalid cluster spec: {errors}"))
}

async fn up(aws: &Aws, owner: &str, args: UpArgs, format: Format) -> anyhow::Result<ExitCode> {
    let spec = spec_from(&args)?;
    let cluster_uuid = engine_cluster_uuid(owner, &spec.region, &spec.name);
    let request = NetworkRequest::for_spec(
        &spec,
        args.launch.image_id.clone(),
        args.launch.allowed_azs(),
        args.launch.ingress(),
    );
    let started = Instant::now();
    eprintln!(
        "cluster {} ({cluster_uuid}): {} x {} in {}",
        spec.name, spec.target_num_nodes, spec.node_type, spec.region
    );
    let desired = Desired {
        cluster_uuid: &cluster_uuid,
        generation: 0,
        spec: &spec,
        key_name: args.launch.key_name.as_deref(),
        next_slot: 0,
        leave_first: false,
    };
    let user_data = |nodes: &[flotilla_core::cloud::NodeSlot]| {
        // No server, so no agent: only a server holds the secret that registration
        // tokens are derived from.
        user_data(
            &cluster_uuid,
            nodes.first().map(|n| n.slot).unwrap_or(0),
            u32::try_from(nodes.len()).unwrap_or(u32::MAX),
            None,
        )
    };
    let log = |line: String| eprintln!("  {line}");
    let report = execute::converge(
        aws,
        &desired,
        &request,
        &execute::Recorded::default(),
        &user_data,
        &log,
    )
    .await
    .map_err(explain)?;
    let calls: u64 = aws.call_counts().values().sum();
    let elapsed = started.elapsed();
    eprintln!(
        "  done: {} launched, {} terminated, {calls} AWS calls in {:.1}s",
        report.launched.len(),
        report.terminated.len(),
        elapsed.as_secs_f64()
    );
    print_cluster(
        &spec.name,
        &cluster_uuid,
        &spec.region,
        Some(&report.network),
        &report.instances(),
        calls,
        format,
    );
    Ok(ExitCode::SUCCESS)
}

/// The uuid of a named cluster and its live instances, as AWS has them now.
async fn live_instances(
    aws: &Aws,
    owner: &str,
    cluster: &ClusterRef,
) -> anyhow::Result<(String, Vec<Instance>)> {
    let cluster_uuid = engine_cluster_uuid(owner, &cluster.region, &cluster.name);
    let instances = aws
        .describe_cluster(&cluster.region, &cluster_uuid)
        .await
        .map_err(explain)?;
    Ok((
        cluster_uuid,
        instances
            .into_iter()
            .filter(|i| i.state.is_alive())
            .collect(),
    ))
}

async fn show(
    aws: &Aws,
    owner: &str,
    cluster: &ClusterRef,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let (cluster_uuid, alive) = live_instances(aws, owner, cluster).await?;
    let calls: u64 = aws.call_counts().values().sum();
    print_cluster(
        &cluster.name,
        &cluster_uuid,
        &cluster.region,
        None,
        &alive,
        calls,
        format,
    );
    Ok(ExitCode::SUCCESS)
}

async fn down(
    aws: &Aws,
    owner: &str,
    cluster: &ClusterRef,
    keep_network: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let cluster_uuid = engine_cluster_uuid(owner, &cluster.region, &cluster.name);
    eprintln!("cluster {} ({cluster_uuid}): removing", cluster.name);
    // The engine keeps no list of clusters: the teardown itself refuses while another
    // cluster's instances use the network, and that refusal only means "kept".
    let network = if keep_network {
        NetworkUse::Keep
    } else {
        NetworkUse::Auto {
            other_clusters: Vec::new(),
        }
    };
    let log = |line: String| eprintln!("  {line}");
    let removed = match execute::remove(aws, &cluster.region, &cluster_uuid, &network, &log).await {
        Ok(removed) => removed,
        Err((removed, CloudError::DependencyViolation { blocking, .. })) => {
            eprintln!("  network kept: {blocking}");
            removed
        }
        Err((_, error)) => return Err(explain(error)),
    };
    let ids = removed.terminated;
    let deleted = removed.teardown.map(|t| t.deleted).unwrap_or_default();
    let calls: u64 = aws.call_counts().values().sum();
    match format {
        Format::Json => output::print_json(&json!({
            "cluster": {"name": cluster.name, "uuid": cluster_uuid, "region": cluster.region},
            "terminated": ids, "deleted": deleted, "aws_calls": calls,
        })),
        Format::Table => println!(
            "cluster {} removed: {} node(s) terminated, {} network resource(s) deleted",
            cluster.name,
            ids.len(),
            deleted.len()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Adds what the user can do about an error to its message.
fn explain(error: CloudError) -> anyhow::Error {
    match &error {
        CloudError::InvalidCredentials { .. } => {
            anyhow::anyhow!("{error}\nRun `flotilla engine validate` for the per-region reasons.")
        }
        CloudError::Transient { .. } => {
            anyhow::anyhow!("{error}\nNothing is lost: run the same command again to resume.")
        }
        _ => anyhow::Error::new(error),
    }
}

fn print_cluster(
    name: &str,
    uuid: &str,
    region: &str,
    network: Option<&Network>,
    instances: &[Instance],
    calls: u64,
    format: Format,
) {
    let placed: Vec<PlacedNode> = instances.iter().map(placed).collect();
    let zones: Vec<&str> = network
        .map(|n| {
            n.subnets
                .iter()
                .map(|s| s.availability_zone.as_str())
                .collect()
        })
        .unwrap_or_default();
    let per_az: BTreeMap<String, usize> = nodes_per_az(zones, &placed);
    match format {
        Format::Json => output::print_json(&json!({
            "cluster": {"name": name, "uuid": uuid, "region": region, "current_num_nodes": instances.len()},
            "network": network,
            "nodes": instances,
            "nodes_per_az": per_az,
            "aws_calls": calls,
        })),
        Format::Table => {
            if let Some(network) = network {
                let kind = if network.managed {
                    "dc-vpc, created by Flotilla"
                } else {
                    "your VPC"
                };
                println!("VPC     {} ({}, {kind})", network.vpc_id, network.vpc_cidr);
                let rows: Vec<Vec<String>> = network
                    .subnets
                    .iter()
                    .map(|s| vec![s.id.clone(), s.availability_zone.clone(), s.cidr.clone()])
                    .collect();
                output::print_table(&["SUBNET", "AZ", "CIDR"], &rows);
                for skipped in &network.skipped_azs {
                    println!("skipped {}: {}", skipped.availability_zone, skipped.reason);
                }
                println!();
            }
            let rows: Vec<Vec<String>> = instances
                .iter()
                .map(|i| {
                    vec![
                        i.node_uuid.clone(),
                        i.slot.to_string(),
                        i.instance_id.clone(),
                        i.availability_zone.clone(),
                        i.state.to_string(),
                        i.public_ip.clone().unwrap_or_default(),
                        i.private_ip.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            output::print_table(
                &[
                    "NODE",
                    "SLOT",
                    "INSTANCE",
                    "AZ",
                    "STATE",
                    "PUBLIC IP",
                    "PRIVATE IP",
                ],
                &rows,
            );
            let spread: Vec<String> = per_az.iter().map(|(az, n)| format!("{az}={n}")).collect();
            println!(
                "\n{name}: {} node(s); per AZ: {}",
                instances.len(),
                spread.join(" ")
            );
        }
    }
}
