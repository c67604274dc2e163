//! The `Cloud` trait: what Flotilla needs from a cloud, named by intent.
//!
//! Each operation is idempotent and converges: `ensure_network` finds by tag before it creates,
//! `launch_nodes` is keyed by a client token derived from its inputs, `terminate_nodes` treats
//! "already gone" as success. Callers may therefore repeat any call after a crash or an error.
//!
//! The trait uses `async fn` without naming a runtime, so `core` stays runtime-free; the AWS
//! implementation brings tokio, the in-memory [`crate::fake::FakeCloud`] needs none.

use std::fmt;
use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::network::Ipv4Cidr;
use crate::spec::VpcOptions;

/// An availability zone as the region reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvailabilityZone {
    pub name: String,
    pub available: bool,
}

/// An instance type offered in a region, with the AZs that offer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTypeOffering {
    pub name: String,
    /// Sorted.
    pub availability_zones: Vec<String>,
}

/// Which ports the node security group opens to which outside networks. Everything inside the
/// VPC is always open. No CIDR is opened by default: "no 0.0.0.0/0 unless asked". The
/// default ports are SSH and the client bundles' Docker API proxy on managers
/// ([`crate::docker_access::DOCKER_PROXY_PORT`]), opened only to the CIDRs asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ingress {
    pub ports: Vec<u16>,
    pub cidrs: Vec<String>,
}

impl Default for Ingress {
    fn default() -> Self {
        Ingress {
            ports: vec![22, crate::docker_access::DOCKER_PROXY_PORT],
            cidrs: Vec::new(),
        }
    }
}

/// What network a cluster needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRequest {
    pub region: String,
    /// Dry-run launches of this type decide which AZs get a subnet.
    pub node_type: String,
    /// `None`: the cloud's default image for the region.
    pub image_id: Option<String>,
    /// Restrict the auto network to these AZs (`None`: every AZ of the region).
    pub allowed_azs: Option<Vec<String>>,
    /// The user's own VPC (`provider_options.vpc`); `None` means the auto `dc-vpc`.
    pub vpc: Option<VpcOptions>,
    /// `provider_options.iam`: validated to exist when given.
    pub instance_profile_name: Option<String>,
    pub ingress: Ingress,
}

impl NetworkRequest {
    /// The network a cluster spec asks for, with the installation's settings.
    pub fn for_spec(
        spec: &crate::spec::ClusterSpec,
        image_id: Option<String>,
        allowed_azs: Option<Vec<String>>,
        ingress: Ingress,
    ) -> NetworkRequest {
        NetworkRequest {
            region: spec.region.clone(),
            node_type: spec.node_type.clone(),
            image_id,
            allowed_azs,
            vpc: spec.provider_options.vpc.clone(),
            instance_profile_name: spec
                .provider_options
                .iam
                .as_ref()
                .map(|i| i.instance_profile_name.clone()),
            ingress,
        }
    }
}

/// A subnet nodes can be launched into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub id: String,
    pub availability_zone: String,
    pub cidr: String,
    /// Created and tagged by Flotilla (only those are ever deleted).
    pub managed: bool,
}

/// An AZ that gets no nodes, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedAz {
    pub availability_zone: String,
    pub reason: String,
}

/// The network a cluster's nodes are launched into, ready for use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub region: String,
    pub vpc_id: String,
    pub vpc_cidr: Ipv4Cidr,
    /// The VPC is Flotilla's `dc-vpc`.
    pub managed: bool,
    /// Usable subnets, sorted by (AZ, id).
    pub subnets: Vec<Subnet>,
    pub security_groups: Vec<String>,
    pub image_id: String,
    pub skipped_azs: Vec<SkippedAz>,
    /// One line per resource this call created or repaired, for the action log.
    pub changes: Vec<String>,
}

/// A VPC of the account, as the launch wizard lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpcInfo {
    pub id: String,
    /// Its `Name` tag, if any.
    pub name: Option<String>,
    pub cidr: String,
    /// The region's default VPC.
    pub is_default: bool,
    /// Flotilla's own auto VPC (`dc-vpc`, owner tag of this installation).
    pub managed: bool,
}

/// A subnet of the account, with what the wizard shows next to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetInfo {
    pub id: String,
    pub vpc_id: String,
    pub availability_zone: String,
    pub cidr: String,
    /// Free IPv4 addresses (`AvailableIpAddressCount`).
    pub available_ips: u32,
    pub name: Option<String>,
    /// Created by Flotilla.
    pub managed: bool,
}

/// A security group of the account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupInfo {
    pub id: String,
    pub vpc_id: String,
    /// The group name (`GroupName`).
    pub name: String,
    pub description: String,
    /// Created by Flotilla.
    pub managed: bool,
}

/// An IAM instance profile of the account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceProfileInfo {
    pub name: String,
    pub arn: String,
    /// The roles it carries.
    pub roles: Vec<String>,
}

/// Every VPC, subnet and security group of a region: what the launch wizard's dropdowns
/// offer. Each list is sorted by id (subnets by AZ, then id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInventory {
    pub vpcs: Vec<VpcInfo>,
    pub subnets: Vec<SubnetInfo>,
    pub security_groups: Vec<SecurityGroupInfo>,
}

/// One node to launch: its slot and identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSlot {
    pub slot: u32,
    pub node_uuid: String,
}

/// Nodes destined for one subnet, launched in one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchRequest {
    pub region: String,
    pub cluster_uuid: String,
    pub generation: u64,
    pub subnet_id: String,
    pub availability_zone: String,
    pub security_groups: Vec<String>,
    pub image_id: String,
    pub node_type: String,
    pub disk_gb: u32,
    pub instance_profile_name: Option<String>,
    pub key_name: Option<String>,
    /// Contiguous slots, in launch-index order.
    pub nodes: Vec<NodeSlot>,
    /// The bootstrap script every instance of this launch runs.
    pub user_data: String,
}

impl LaunchRequest {
    pub fn first_slot(&self) -> u32 {
        self.nodes.first().map(|n| n.slot).unwrap_or(0)
    }
}

/// The lifecycle state EC2 reports for an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
}

impl InstanceState {
    /// Still a member of its cluster (counts towards `current_num_nodes`).
    pub fn is_alive(self) -> bool {
        !matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }

    pub fn parse(text: &str) -> Option<InstanceState> {
        Some(match text {
            "pending" => InstanceState::Pending,
            "running" => InstanceState::Running,
            "stopping" => InstanceState::Stopping,
            "stopped" => InstanceState::Stopped,
            "shutting-down" => InstanceState::ShuttingDown,
            "terminated" => InstanceState::Terminated,
            _ => return None,
        })
    }
}

/// An instance of a cluster as observed in the cloud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub instance_id: String,
    pub cluster_uuid: String,
    pub slot: u32,
    pub node_uuid: String,
    pub state: InstanceState,
    pub availability_zone: String,
    pub subnet_id: String,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
}

/// What a teardown removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeardownReport {
    /// One line per deleted resource, in deletion order.
    pub deleted: Vec<String>,
}

/// The outcome of the credential check in one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionOutcome {
    Ok,
    BadCredentials(String),
    MissingPermission(String),
    Unreachable(String),
}

impl RegionOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            RegionOutcome::Ok => "ok",
            RegionOutcome::BadCredentials(_) => "bad credentials",
            RegionOutcome::MissingPermission(_) => "missing permission",
            RegionOutcome::Unreachable(_) => "unreachable",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            RegionOutcome::Ok => "",
            RegionOutcome::BadCredentials(m)
            | RegionOutcome::MissingPermission(m)
            | RegionOutcome::Unreachable(m) => m,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionCheck {
    pub region: String,
    pub outcome: RegionOutcome,
    /// The image the dry run used (part of the reproducing command).
    pub image_id: String,
}

/// The result of dry-running a launch in every region (seed 000).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialReport {
    pub regions: Vec<RegionCheck>,
    pub instance_type: String,
}

/// The one message users of Docker Cloud know.
pub const INVALID_CREDENTIALS: &str = "Invalid AWS credentials or insufficient EC2 permissions";

impl CredentialReport {
    /// Valid when the dry run succeeded in at least one region.
    pub fn is_valid(&self) -> bool {
        self.regions.iter().any(|r| r.outcome == RegionOutcome::Ok)
    }

    /// A table of every region and its outcome.
    pub fn table(&self) -> String {
        let width = self
            .regions
            .iter()
            .map(|r| r.region.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let mut out = format!("{:<width$}  RESULT\n", "REGION");
        for check in &self.regions {
            let detail = check.outcome.detail();
            let line = if detail.is_empty() {
                format!("{:<width$}  {}", check.region, check.outcome.label())
            } else {
                format!(
                    "{:<width$}  {}: {}",
                    check.region,
                    check.outcome.label(),
                    detail
                )
            };
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// "Invalid AWS credentials or insufficient EC2 permissions", the per-region reasons, and
    /// the `aws ec2 run-instances --dry-run` command that reproduces the check.
    pub fn failure_message(&self) -> String {
        let first = self.regions.first();
        let region = first.map(|r| r.region.as_str()).unwrap_or("us-east-1");
        let image = first.map(|r| r.image_id.as_str()).unwrap_or("ami-4d883350");
        format!(
            "{INVALID_CREDENTIALS}\n{}To reproduce: aws ec2 run-instances --dry-run --region {region} --image-id {image} --instance-type {}",
            self.table(),
            self.instance_type
        )
    }
}

/// An AWS access key pair (and session token for temporary keys), as a user links it.
/// `Debug` never shows the secret or the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

impl fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessKeys")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Errors from a cloud operation, classified by what the caller can do about them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// No capacity (or the type is unsupported) in an AZ: launch elsewhere.
    #[error("no capacity for {instance_type} in {availability_zone}: {message}")]
    Capacity {
        availability_zone: String,
        instance_type: String,
        message: String,
    },
    /// The credentials are not accepted at all.
    #[error("{INVALID_CREDENTIALS}: {message}")]
    InvalidCredentials { message: String },
    /// The credentials work but lack a permission; `hint` says what to add.
    #[error("AWS refused {operation}: {message}{}", hint.as_deref().map(|h| format!(". {h}")).unwrap_or_default())]
    PermissionDenied {
        operation: String,
        message: String,
        hint: Option<String>,
    },
    /// A user-supplied resource does not exist or does not fit (names the id).
    #[error("{field}: {message}")]
    InvalidResource { field: String, message: String },
    /// AWS refused a deletion because something still uses the resource.
    #[error("cannot delete {resource} {id}: {blocking}")]
    DependencyViolation {
        resource: String,
        id: String,
        blocking: String,
    },
    /// Still failing after retries (throttling, 5xx, timeouts); the next pass retries.
    #[error("{operation} failed after retries: {message}")]
    Transient { operation: String, message: String },
    /// Anything else AWS said.
    #[error("{operation} failed: {message}")]
    Other { operation: String, message: String },
}

impl CloudError {
    /// Worth retrying later without any change by the user.
    pub fn is_transient(&self) -> bool {
        matches!(self, CloudError::Transient { .. })
    }
}

/// The operations Flotilla needs from a cloud.
pub trait Cloud: Send + Sync {
    /// Dry-runs a launch in every region the account can see.
    fn validate_credentials(
        &self,
        instance_type: &str,
    ) -> impl Future<Output = Result<CredentialReport, CloudError>> + Send;

    fn availability_zones(
        &self,
        region: &str,
    ) -> impl Future<Output = Result<Vec<AvailabilityZone>, CloudError>> + Send;

    /// The regions the account may use (opted in), sorted by name.
    fn regions(&self) -> impl Future<Output = Result<Vec<String>, CloudError>> + Send;

    /// The instance types offered in a region, sorted by name, each with the AZs offering it.
    fn node_types(
        &self,
        region: &str,
    ) -> impl Future<Output = Result<Vec<NodeTypeOffering>, CloudError>> + Send;

    /// Finds or creates (auto) or validates (user VPC) the network; safe to repeat.
    fn ensure_network(
        &self,
        request: &NetworkRequest,
    ) -> impl Future<Output = Result<Network, CloudError>> + Send;

    /// Checks, with describe calls only, that every resource the request names exists and
    /// fits (the user's VPC, its chosen subnets and security groups, the instance profile),
    /// so a cluster that names a missing one is refused when it is created rather than
    /// failing later in the background. Creates and changes nothing; a resource that is
    /// missing or does not fit is [`CloudError::InvalidResource`] naming the field and id.
    fn check_network(
        &self,
        request: &NetworkRequest,
    ) -> impl Future<Output = Result<(), CloudError>> + Send;

    /// Launches every node of `request` in one call; returns the instances of this launch.
    fn launch_nodes(
        &self,
        request: &LaunchRequest,
    ) -> impl Future<Output = Result<Vec<Instance>, CloudError>> + Send;

    /// Every instance of the cluster, including recently terminated ones.
    fn describe_cluster(
        &self,
        region: &str,
        cluster_uuid: &str,
    ) -> impl Future<Output = Result<Vec<Instance>, CloudError>> + Send;

    /// Every instance Flotilla owns in a region, of every cluster (recently terminated ones
    /// included): one batched observation, whatever the number of clusters and nodes.
    fn describe_region(
        &self,
        region: &str,
    ) -> impl Future<Output = Result<Vec<Instance>, CloudError>> + Send;

    /// Terminates instances; ones already gone are not an error.
    fn terminate_nodes(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> impl Future<Output = Result<(), CloudError>> + Send;

    /// Deletes the auto network of a region, in dependency order. Refuses while any live
    /// instance is still in it; never touches untagged resources.
    fn teardown_network(
        &self,
        region: &str,
    ) -> impl Future<Output = Result<TeardownReport, CloudError>> + Send;

    /// Everything of a swarm's load balancer (`crate::plan::lb`): the load balancer by its
    /// derived name, the swarm's target groups, listeners and security group by name and
    /// owner tag, and the rules of Flotilla's node security groups that admit that group.
    /// Describes only.
    fn describe_load_balancer(
        &self,
        region: &str,
        swarm_uuid: &str,
    ) -> impl Future<Output = Result<crate::plan::lb::Observed, CloudError>> + Send;

    /// Carries out one step of [`crate::plan::lb::plan`] or `plan_removal`; returns what it
    /// made. Safe to repeat: creates find what a lost answer made (names are unique), deletes
    /// of something already gone succeed.
    fn apply_load_balancer_step(
        &self,
        region: &str,
        swarm_uuid: &str,
        step: &crate::plan::lb::LbStep,
    ) -> impl Future<Output = Result<crate::plan::lb::Applied, CloudError>> + Send;

    /// A number that changes whenever this process may have changed the region's network
    /// (an ensure that created or repaired something, or failed part-way; a teardown), so a
    /// cached [`Cloud::network_inventory`] can tell it is out of date — the launch wizard
    /// offers Flotilla's own VPC as soon as it exists. Changes made elsewhere (the console,
    /// another replica) are only caught by the cache's time limit.
    fn network_epoch(&self, region: &str) -> u64;

    /// Every VPC, subnet and security group of a region (the user's and Flotilla's), for
    /// the launch wizard. Describes only; callers cache the answer.
    fn network_inventory(
        &self,
        region: &str,
    ) -> impl Future<Output = Result<NetworkInventory, CloudError>> + Send;

    /// Every IAM instance profile of the account (IAM is global), sorted by name.
    fn instance_profiles(
        &self,
    ) -> impl Future<Output = Result<Vec<InstanceProfileInfo>, CloudError>> + Send;

    /// Validates `keys` (as [`Cloud::validate_credentials`], but with these keys) and, only
    /// when the report is valid, makes every later call use them. An invalid report is
    /// returned as `Ok` and changes nothing. Clouds whose account cannot be switched at run
    /// time keep this default, which refuses.
    fn link_credentials(
        &self,
        keys: &AccessKeys,
        instance_type: &str,
    ) -> impl Future<Output = Result<CredentialReport, CloudError>> + Send {
        let _ = (keys, instance_type);
        async {
            Err(CloudError::Other {
                operation: "link credentials".into(),
                message: "this cloud cannot switch credentials at run time".into(),
            })
        }
    }

    /// Whether the cloud has credentials it can sign requests with (linked keys, or keys
    /// the standard chain resolves). Says nothing about their permissions.
    fn has_credentials(&self) -> impl Future<Output = bool> + Send {
        async { true }
    }

    /// Calls made per operation since the cloud was made (retries excluded), for metrics;
    /// clouds that do not count keep this default.
    fn call_counts(&self) -> std::collections::BTreeMap<String, u64> {
        std::collections::BTreeMap::new()
    }

    /// From now on, tells `observer` about every finished call (for metrics: outcome,
    /// latency, throttling, the request budget). Clouds that make no remote calls keep this
    /// default and never call it.
    fn observe_calls(&self, observer: std::sync::Arc<dyn CallObserver>) {
        let _ = observer;
    }

    /// From now on, ensures and tears down a region's own network only while holding
    /// `lock` for that region (replicas sharing an installation: see [`NetworkLock`]).
    /// Clouds without a network of their own keep this default.
    fn share_network_lock(&self, lock: std::sync::Arc<dyn NetworkLock>) {
        let _ = lock;
    }
}

/// A future that may borrow for `'a`, boxed (a trait object's async method).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Mutual exclusion among the processes of one installation (the server's replicas): a
/// region's own network is ensured or torn down by one of them at a time. Without it, two
/// replicas deploying at once into a region with no network yet would each create a VPC
/// (each process already takes its own turns).
///
/// The holder keeps what [`NetworkLock::hold`] returned while it works and hands it to
/// [`NetworkLock::release`] after; dropping it instead (the work was cancelled) must stop
/// keeping the hold alive, so that it ends by itself.
pub trait NetworkLock: Send + Sync {
    /// Waits until this process holds `region`'s network.
    fn hold<'a>(&'a self, region: &'a str) -> BoxFuture<'a, Held>;
    /// Lets the others have it.
    fn release(&self, held: Held) -> BoxFuture<'_, ()>;
}

/// What a [`NetworkLock`] returns to its holder (its own type inside).
pub type Held = Box<dyn std::any::Any + Send>;

/// How one remote call ended, after its retries (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Ok,
    /// The last attempt was throttled (the budget and the retries could not get it through).
    Throttled,
    /// The cloud refused the request (4xx: bad input, permissions, not found, capacity).
    ClientError,
    /// The cloud failed (5xx).
    ServerError,
    /// No answer: connection refused or reset, timeout.
    Transport,
}

impl CallOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::Throttled => "throttled",
            CallOutcome::ClientError => "client_error",
            CallOutcome::ServerError => "server_error",
            CallOutcome::Transport => "transport",
        }
    }
}

/// One finished remote call, as a cloud reports it to its [`CallObserver`].
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedCall<'a> {
    /// The API (`ec2`, `elasticloadbalancingv2`, `iam`, `sts`, `route53`).
    pub service: &'a str,
    pub operation: &'a str,
    pub region: &'a str,
    pub outcome: CallOutcome,
    /// From the first attempt to the last answer, waits for the budget and backoff included.
    pub seconds: f64,
    /// Attempts the cloud answered with a throttling error.
    pub throttled_attempts: u32,
    /// The region's request budget after the call, in requests per second (it shrinks
    /// when throttled and recovers after successes).
    pub budget_rate: f64,
}

/// Receives every finished call of a cloud (the server's metrics).
pub trait CallObserver: Send + Sync {
    fn finished(&self, call: &FinishedCall<'_>);
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
        };
        f.write_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_message_has_the_reasons_and_the_reproducing_command() {
        let report = CredentialReport {
            instance_type: "t3.micro".into(),
            regions: vec![
                RegionCheck {
                    region: "sa-east-1".into(),
                    outcome: RegionOutcome::BadCredentials("AuthFailure".into()),
                    image_id: "ami-1".into(),
                },
                RegionCheck {
                    region: "us-east-1".into(),
                    outcome: RegionOutcome::Unreachable("timed out".into()),
                    image_id: "ami-2".into(),
                },
            ],
        };
        assert!(!report.is_valid());
        let message = report.failure_message();
        assert!(message.starts_with("Invalid AWS credentials or insufficient EC2 permissions\n"));
        assert!(message.contains("sa-east-1  bad credentials: AuthFailure"));
        assert!(message.contains("us-east-1  unreachable: timed out"));
        assert!(message.ends_with(
            "aws ec2 run-instances --dry-run --region sa-east-1 --image-id ami-1 --instance-type t3.micro"
        ));
    }
}
