//! An in-memory [`Cloud`] for fast tests of everything above the AWS engine.
//!
//! It follows the same contract as the real engine — find-or-create networks, one launch per
//! call, terminated instances stay listed — and can be told to refuse capacity in an AZ or to
//! fail the K-th launch, so the engine's recovery paths are tested in microseconds. Real AWS
//! behaviour (and moto's quirks) is tested in the `aws` crate, not here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use crate::cloud::{
    AccessKeys, AvailabilityZone, Cloud, CloudError, CredentialReport, Instance,
    InstanceProfileInfo, InstanceState, LaunchRequest, Network, NetworkInventory, NetworkRequest,
    NodeTypeOffering, RegionCheck, RegionOutcome, SecurityGroupInfo, Subnet, SubnetInfo,
    TeardownReport, VpcInfo,
};
use crate::network::{DEFAULT_VPC_CIDR, Ipv4Cidr, plan_subnets};
use crate::plan::lb::{
    self, Applied, LbStep, ObservedLb, ObservedListener, ObservedSecurityGroup, ObservedTargetGroup,
};

/// The regions the fake account can use.
pub const FAKE_REGIONS: [&str; 2] = ["eu-west-1", "us-east-1"];

#[derive(Debug, Default)]
struct State {
    networks: BTreeMap<String, Network>,
    instances: Vec<Instance>,
    no_capacity: BTreeSet<String>,
    fail_launch_after: Option<usize>,
    launches: usize,
    calls: BTreeMap<&'static str, usize>,
    next_id: u64,
    /// No usable credentials until valid keys are linked (`set_no_credentials`).
    no_credentials: bool,
    /// The access key id of the last linked keys.
    linked_key_id: Option<String>,
    /// The user's own VPCs: id → (subnet ids, security group ids).
    user_vpcs: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
    /// The IAM instance profiles that exist.
    instance_profiles: BTreeSet<String>,
    /// Each swarm's load balancer resources, by (region, swarm).
    load_balancers: BTreeMap<(String, String), lb::Observed>,
    /// Load balancer steps applied (or failed) so far.
    lb_steps: usize,
    /// [`Cloud::network_epoch`] per region.
    network_epochs: BTreeMap<String, u64>,
    /// Every load balancer step after this many fails with a transient error; `true`: it
    /// is carried out first (the answer is lost).
    lb_fail_after: Option<(usize, bool)>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct FakeCloud {
    state: Mutex<State>,
}

impl FakeCloud {
    pub fn new() -> Self {
        FakeCloud::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in another test thread must not hide this test's result.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count(&self, operation: &'static str) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        *state.calls.entry(operation).or_default() += 1;
        state
    }

    /// Launches into `availability_zone` fail with a capacity error while `on`.
    pub fn set_no_capacity(&self, availability_zone: &str, on: bool) {
        let mut state = self.lock();
        if on {
            state.no_capacity.insert(availability_zone.to_owned());
        } else {
            state.no_capacity.remove(availability_zone);
        }
    }

    /// Every launch call after the first `k` fails with a transient error (once).
    pub fn fail_launch_after(&self, k: usize) {
        let mut state = self.lock();
        state.fail_launch_after = Some(state.launches + k);
    }

    /// While `on`, the account has no usable credentials (until valid keys are linked).
    pub fn set_no_credentials(&self, on: bool) {
        self.lock().no_credentials = on;
    }

    /// The access key id of the keys last linked, if any.
    pub fn linked_key_id(&self) -> Option<String> {
        self.lock().linked_key_id.clone()
    }

    /// Makes a user's VPC, with these subnets and security groups, exist.
    pub fn add_user_vpc(&self, vpc_id: &str, subnets: &[&str], security_groups: &[&str]) {
        let owned = |ids: &[&str]| ids.iter().map(|id| (*id).to_owned()).collect();
        self.lock()
            .user_vpcs
            .insert(vpc_id.to_owned(), (owned(subnets), owned(security_groups)));
    }

    /// Makes an IAM instance profile exist.
    pub fn add_instance_profile(&self, name: &str) {
        self.lock().instance_profiles.insert(name.to_owned());
    }

    /// How many times an operation was called.
    pub fn calls(&self, operation: &str) -> usize {
        self.lock().calls.get(operation).copied().unwrap_or(0)
    }

    /// The cluster's live instances, by slot.
    pub fn alive(&self, cluster_uuid: &str) -> Vec<Instance> {
        let mut alive: Vec<Instance> = self
            .lock()
            .instances
            .iter()
            .filter(|i| i.cluster_uuid == cluster_uuid && i.state.is_alive())
            .cloned()
            .collect();
        alive.sort_by_key(|i| i.slot);
        alive
    }

    /// Terminates an instance behind Flotilla's back (the AWS console).
    pub fn terminate_out_of_band(&self, instance_id: &str) {
        for instance in self
            .lock()
            .instances
            .iter_mut()
            .filter(|i| i.instance_id == instance_id)
        {
            instance.state = InstanceState::Terminated;
        }
    }

    /// Every load balancer step after the next `k` fails with a transient error until
    /// [`FakeCloud::heal_lb`]; with `applied`, each of them still takes effect (a lost
    /// answer, or a kill after AWS acted).
    pub fn fail_lb_steps_after(&self, k: usize, applied: bool) {
        let mut state = self.lock();
        state.lb_fail_after = Some((state.lb_steps + k, applied));
    }

    /// Ends [`FakeCloud::fail_lb_steps_after`].
    pub fn heal_lb(&self) {
        self.lock().lb_fail_after = None;
    }

    /// A swarm's load balancer resources as they are.
    pub fn load_balancer(&self, region: &str, swarm_uuid: &str) -> lb::Observed {
        self.lock()
            .load_balancers
            .get(&(region.to_owned(), swarm_uuid.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    fn region_azs(region: &str) -> Vec<String> {
        ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|l| format!("{region}{l}"))
            .collect()
    }
}

impl Cloud for FakeCloud {
    /// Keys whose id starts with `AKIA` (and that have a secret) are valid in every region;
    /// any other keys are refused everywhere with `AuthFailure`, like AWS does.
    async fn link_credentials(
        &self,
        keys: &AccessKeys,
        instance_type: &str,
    ) -> Result<CredentialReport, CloudError> {
        let mut state = self.count("link_credentials");
        let valid = keys.access_key_id.starts_with("AKIA") && !keys.secret_access_key.is_empty();
        let outcome = if valid {
            RegionOutcome::Ok
        } else {
            RegionOutcome::BadCredentials(
                "AuthFailure: AWS was not able to validate the provided access credentials".into(),
            )
        };
        if valid {
            state.linked_key_id = Some(keys.access_key_id.clone());
            state.no_credentials = false;
        }
        Ok(CredentialReport {
            instance_type: instance_type.to_owned(),
            regions: FAKE_REGIONS
                .iter()
                .map(|r| RegionCheck {
                    region: (*r).into(),
                    outcome: outcome.clone(),
                    image_id: "ami-fake".into(),
                })
                .collect(),
        })
    }

    async fn has_credentials(&self) -> bool {
        !self.lock().no_credentials
    }

    async fn validate_credentials(
        &self,
        instance_type: &str,
    ) -> Result<CredentialReport, CloudError> {
        let _state = self.count("validate_credentials");
        Ok(CredentialReport {
            instance_type: instance_type.to_owned(),
            regions: FAKE_REGIONS
                .iter()
                .map(|r| RegionCheck {
                    region: (*r).into(),
                    outcome: RegionOutcome::Ok,
                    image_id: "ami-fake".into(),
                })
                .collect(),
        })
    }

    async fn availability_zones(&self, region: &str) -> Result<Vec<AvailabilityZone>, CloudError> {
        let _state = self.count("availability_zones");
        Ok(Self::region_azs(region)
            .into_iter()
            .map(|name| AvailabilityZone {
                name,
                available: true,
            })
            .collect())
    }

    async fn regions(&self) -> Result<Vec<String>, CloudError> {
        let _state = self.count("regions");
        Ok(FAKE_REGIONS.iter().map(|r| (*r).to_owned()).collect())
    }

    /// A few fixed types; `m5.large` is missing from the last AZ, like real offerings that
    /// differ between AZs.
    async fn node_types(&self, region: &str) -> Result<Vec<NodeTypeOffering>, CloudError> {
        let _state = self.count("node_types");
        if !FAKE_REGIONS.contains(&region) {
            return Ok(Vec::new());
        }
        let zones = Self::region_azs(region);
        Ok(["m5.large", "t3.medium", "t3.micro", "t3.small"]
            .iter()
            .map(|name| NodeTypeOffering {
                name: (*name).to_owned(),
                availability_zones: if *name == "m5.large" {
                    zones[..zones.len() - 1].to_vec()
                } else {
                    zones.clone()
                },
            })
            .collect())
    }

    async fn ensure_network(&self, request: &NetworkRequest) -> Result<Network, CloudError> {
        let mut state = self.count("ensure_network");
        if let Some(network) = state.networks.get(&request.region) {
            return Ok(Network {
                changes: Vec::new(),
                ..network.clone()
            });
        }
        let all = Self::region_azs(&request.region);
        let vpc_cidr: Ipv4Cidr =
            DEFAULT_VPC_CIDR
                .parse()
                .map_err(|e: crate::network::CidrError| CloudError::Other {
                    operation: "plan".into(),
                    message: e.to_string(),
                })?;
        let plan = plan_subnets(vpc_cidr, &all).map_err(|e| CloudError::Other {
            operation: "plan".into(),
            message: e.to_string(),
        })?;
        let zones: Vec<AvailabilityZone> = all
            .iter()
            .map(|name| AvailabilityZone {
                name: name.clone(),
                available: true,
            })
            .collect();
        let (_, usable) = crate::plan::network::usable_zones(request, &zones)?;
        let subnets: Vec<Subnet> = plan
            .subnets
            .iter()
            .filter(|p| usable.contains(&p.availability_zone))
            .map(|p| Subnet {
                id: format!("subnet-{}", p.availability_zone),
                availability_zone: p.availability_zone.clone(),
                cidr: p.cidr.to_string(),
                managed: true,
            })
            .collect();
        let network = Network {
            region: request.region.clone(),
            vpc_id: format!("vpc-{}", request.region),
            vpc_cidr,
            managed: true,
            changes: subnets
                .iter()
                .map(|s| format!("created subnet {} in {}", s.id, s.availability_zone))
                .collect(),
            subnets,
            security_groups: vec!["sg-fake".into()],
            image_id: request
                .image_id
                .clone()
                .unwrap_or_else(|| "ami-fake".into()),
            skipped_azs: Vec::new(),
        };
        state
            .networks
            .insert(request.region.clone(), network.clone());
        *state
            .network_epochs
            .entry(request.region.clone())
            .or_default() += 1;
        Ok(network)
    }

    /// A user's VPC, subnet, security group or instance profile exists only once added
    /// ([`FakeCloud::add_user_vpc`], [`FakeCloud::add_instance_profile`]).
    async fn check_network(&self, request: &NetworkRequest) -> Result<(), CloudError> {
        let state = self.count("check_network");
        let invalid = |field: &str, message: String| CloudError::InvalidResource {
            field: field.to_owned(),
            message,
        };
        if let Some(vpc) = &request.vpc {
            let Some((subnets, groups)) = state.user_vpcs.get(&vpc.id) else {
                return Err(invalid(
                    "provider_options.vpc.id",
                    format!("VPC {} does not exist in {}", vpc.id, request.region),
                ));
            };
            if let Some(id) = vpc.subnets.iter().find(|id| !subnets.contains(*id)) {
                return Err(invalid(
                    "provider_options.vpc.subnets",
                    format!("subnet {id} does not exist in {}", vpc.id),
                ));
            }
            if let Some(id) = vpc.security_groups.iter().find(|id| !groups.contains(*id)) {
                return Err(invalid(
                    "provider_options.vpc.security_groups",
                    format!("security group {id} does not exist in {}", vpc.id),
                ));
            }
        }
        match &request.instance_profile_name {
            Some(name) if !state.instance_profiles.contains(name) => Err(invalid(
                "provider_options.iam.instance_profile_name",
                format!("instance profile '{name}' does not exist"),
            )),
            _ => Ok(()),
        }
    }

    /// Flotilla's network of the region once ensured, and every user VPC (added with
    /// [`FakeCloud::add_user_vpc`]; its subnets go round the region's AZs in id order).
    fn network_epoch(&self, region: &str) -> u64 {
        self.lock()
            .network_epochs
            .get(region)
            .copied()
            .unwrap_or_default()
    }

    async fn network_inventory(&self, region: &str) -> Result<NetworkInventory, CloudError> {
        let state = self.count("network_inventory");
        let mut inventory = NetworkInventory::default();
        if let Some(network) = state.networks.get(region) {
            inventory.vpcs.push(VpcInfo {
                id: network.vpc_id.clone(),
                name: Some(crate::tags::NAME_VPC.to_owned()),
                cidr: network.vpc_cidr.to_string(),
                is_default: false,
                managed: true,
            });
            inventory
                .subnets
                .extend(network.subnets.iter().map(|s| SubnetInfo {
                    id: s.id.clone(),
                    vpc_id: network.vpc_id.clone(),
                    availability_zone: s.availability_zone.clone(),
                    cidr: s.cidr.clone(),
                    available_ips: 4091,
                    name: Some("dc-subnet".to_owned()),
                    managed: true,
                }));
            inventory
                .security_groups
                .extend(network.security_groups.iter().map(|id| SecurityGroupInfo {
                    id: id.clone(),
                    vpc_id: network.vpc_id.clone(),
                    name: "flotilla-nodes".to_owned(),
                    description: "Flotilla nodes".to_owned(),
                    managed: true,
                }));
        }
        let zones = Self::region_azs(region);
        for (vpc_id, (subnets, groups)) in &state.user_vpcs {
            inventory.vpcs.push(VpcInfo {
                id: vpc_id.clone(),
                name: None,
                cidr: "10.0.0.0/16".to_owned(),
                is_default: false,
                managed: false,
            });
            for (k, id) in subnets.iter().enumerate() {
                inventory.subnets.push(SubnetInfo {
                    id: id.clone(),
                    vpc_id: vpc_id.clone(),
                    availability_zone: zones[k % zones.len()].clone(),
                    cidr: format!("10.0.{k}.0/24"),
                    available_ips: 251,
                    name: None,
                    managed: false,
                });
            }
            for id in groups {
                inventory.security_groups.push(SecurityGroupInfo {
                    id: id.clone(),
                    vpc_id: vpc_id.clone(),
                    name: id.clone(),
                    description: String::new(),
                    managed: false,
                });
            }
        }
        inventory.vpcs.sort_by(|a, b| a.id.cmp(&b.id));
        inventory
            .subnets
            .sort_by(|a, b| (&a.availability_zone, &a.id).cmp(&(&b.availability_zone, &b.id)));
        inventory.security_groups.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(inventory)
    }

    async fn instance_profiles(&self) -> Result<Vec<InstanceProfileInfo>, CloudError> {
        let state = self.count("instance_profiles");
        Ok(state
            .instance_profiles
            .iter()
            .map(|name| InstanceProfileInfo {
                name: name.clone(),
                arn: format!("arn:aws:iam::123456789012:instance-profile/{name}"),
                roles: Vec::new(),
            })
            .collect())
    }

    async fn launch_nodes(&self, request: &LaunchRequest) -> Result<Vec<Instance>, CloudError> {
        let mut state = self.count("launch_nodes");
        state.launches += 1;
        if state.fail_launch_after.is_some_and(|k| state.launches > k) {
            state.fail_launch_after = None;
            return Err(CloudError::Transient {
                operation: "RunInstances".into(),
                message: "injected".into(),
            });
        }
        if state.no_capacity.contains(&request.availability_zone) {
            return Err(CloudError::Capacity {
                availability_zone: request.availability_zone.clone(),
                instance_type: request.node_type.clone(),
                message: "InsufficientInstanceCapacity".into(),
            });
        }
        let mut launched = Vec::new();
        for node in &request.nodes {
            state.next_id += 1;
            let instance = Instance {
                instance_id: format!("i-{:017x}", state.next_id),
                cluster_uuid: request.cluster_uuid.clone(),
                slot: node.slot,
                node_uuid: node.node_uuid.clone(),
                state: InstanceState::Running,
                availability_zone: request.availability_zone.clone(),
                subnet_id: request.subnet_id.clone(),
                private_ip: Some(format!("10.78.0.{}", state.next_id % 250)),
                public_ip: Some(format!("203.0.113.{}", state.next_id % 250)),
            };
            state.instances.push(instance.clone());
            launched.push(instance);
        }
        Ok(launched)
    }

    async fn describe_cluster(
        &self,
        region: &str,
        cluster_uuid: &str,
    ) -> Result<Vec<Instance>, CloudError> {
        let state = self.count("describe_cluster");
        let network = state.networks.get(region);
        Ok(state
            .instances
            .iter()
            .filter(|i| i.cluster_uuid == cluster_uuid)
            .filter(|i| network.is_none_or(|n| n.subnets.iter().any(|s| s.id == i.subnet_id)))
            .cloned()
            .collect())
    }

    async fn describe_region(&self, region: &str) -> Result<Vec<Instance>, CloudError> {
        let state = self.count("describe_region");
        let network = state.networks.get(region);
        Ok(state
            .instances
            .iter()
            .filter(|i| network.is_some_and(|n| n.subnets.iter().any(|s| s.id == i.subnet_id)))
            .cloned()
            .collect())
    }

    async fn terminate_nodes(
        &self,
        _region: &str,
        instance_ids: &[String],
    ) -> Result<(), CloudError> {
        let mut state = self.count("terminate_nodes");
        for instance in state
            .instances
            .iter_mut()
            .filter(|i| instance_ids.contains(&i.instance_id))
        {
            instance.state = InstanceState::Terminated;
        }
        Ok(())
    }

    async fn teardown_network(&self, region: &str) -> Result<TeardownReport, CloudError> {
        let mut state = self.count("teardown_network");
        let Some(network) = state.networks.get(region).cloned() else {
            return Ok(TeardownReport::default());
        };
        let blocking: Vec<String> = state
            .instances
            .iter()
            .filter(|i| i.state.is_alive() && network.subnets.iter().any(|s| s.id == i.subnet_id))
            .map(|i| i.instance_id.clone())
            .collect();
        if !blocking.is_empty() {
            return Err(CloudError::DependencyViolation {
                resource: "vpc".into(),
                id: network.vpc_id.clone(),
                blocking: format!("instances still running: {}", blocking.join(", ")),
            });
        }
        state.networks.remove(region);
        *state.network_epochs.entry(region.to_owned()).or_default() += 1;
        let mut deleted: Vec<String> = network
            .subnets
            .iter()
            .map(|s| format!("subnet {}", s.id))
            .collect();
        deleted.push(format!("vpc {}", network.vpc_id));
        Ok(TeardownReport { deleted })
    }

    async fn describe_load_balancer(
        &self,
        region: &str,
        swarm_uuid: &str,
    ) -> Result<lb::Observed, CloudError> {
        let state = self.count("describe_load_balancer");
        Ok(state
            .load_balancers
            .get(&(region.to_owned(), swarm_uuid.to_owned()))
            .cloned()
            .unwrap_or_default())
    }

    async fn apply_load_balancer_step(
        &self,
        region: &str,
        swarm_uuid: &str,
        step: &LbStep,
    ) -> Result<Applied, CloudError> {
        let mut state = self.count("apply_load_balancer_step");
        state.lb_steps += 1;
        let failing = state
            .lb_fail_after
            .filter(|(k, _)| state.lb_steps > *k)
            .map(|(_, applied)| applied);
        if failing == Some(false) {
            return Err(CloudError::Transient {
                operation: "load balancer step".into(),
                message: "injected".into(),
            });
        }
        state.next_id += 1;
        let id = state.next_id;
        let world = state
            .load_balancers
            .entry((region.to_owned(), swarm_uuid.to_owned()))
            .or_default();
        let applied = simulate_lb_step(world, region, swarm_uuid, step, id)?;
        if failing == Some(true) {
            return Err(CloudError::Transient {
                operation: "load balancer step".into(),
                message: "injected after the step took effect".into(),
            });
        }
        Ok(applied)
    }
}

/// One load balancer step against `world` (everything of one swarm's load balancer), with
/// the ELBv2 and EC2 rules that matter to the planner: names are unique (a repeated create
/// returns the existing load balancer or target group; a second security group of the same
/// name is refused), one listener per port, a target group in use by a listener or a group
/// in use by a load balancer or a rule cannot be deleted, deleting a load balancer deletes
/// its listeners, and deleting what is gone succeeds. `id` makes new ids unique.
pub fn simulate_lb_step(
    world: &mut lb::Observed,
    region: &str,
    swarm_uuid: &str,
    step: &LbStep,
    id: u64,
) -> Result<Applied, CloudError> {
    let refuse = |operation: &str, message: String| CloudError::Other {
        operation: operation.to_owned(),
        message,
    };
    let applied = match step {
        LbStep::CreateSecurityGroup { .. } => {
            if !world.security_groups.is_empty() {
                return Err(refuse(
                    "CreateSecurityGroup",
                    format!(
                        "InvalidGroup.Duplicate: {} already exists",
                        lb::security_group_name(swarm_uuid)
                    ),
                ));
            }
            Applied::SecurityGroup(ObservedSecurityGroup {
                id: format!("sg-{id:017x}"),
                ingress: BTreeSet::new(),
            })
        }
        LbStep::CreateLoadBalancer {
            security_group,
            subnets,
        } => match world.load_balancers.first() {
            Some(existing) => Applied::LoadBalancer(existing.clone()),
            None => {
                let name = lb::lb_name(swarm_uuid);
                Applied::LoadBalancer(ObservedLb {
                    arn: format!(
                        "arn:aws:elasticloadbalancing:{region}:123456789012:loadbalancer/net/{name}/{id:016x}"
                    ),
                    dns_name: format!("{name}-{id:x}.elb.{region}.amazonaws.com"),
                    subnets: subnets.clone(),
                    state: "active".into(),
                    security_groups: vec![security_group.clone()],
                })
            }
        },
        LbStep::CreateTargetGroup { port, protocol, .. } => {
            match world
                .target_groups
                .iter()
                .find(|g| g.port == *port && g.protocol == *protocol)
            {
                Some(existing) => Applied::TargetGroup(existing.clone()),
                None => Applied::TargetGroup(ObservedTargetGroup {
                    arn: format!(
                        "arn:aws:elasticloadbalancing:{region}:123456789012:targetgroup/{}/{id:016x}",
                        lb::target_group_name(swarm_uuid, *port, *protocol)
                    ),
                    port: *port,
                    protocol: *protocol,
                    targets: BTreeSet::new(),
                }),
            }
        }
        LbStep::CreateListener {
            load_balancer,
            port,
            protocol,
            target_group,
        } => {
            if !world.load_balancers.iter().any(|l| l.arn == *load_balancer)
                || !world.target_groups.iter().any(|g| g.arn == *target_group)
            {
                return Err(refuse(
                    "CreateListener",
                    "LoadBalancerNotFound or TargetGroupNotFound".into(),
                ));
            }
            if world
                .listeners
                .iter()
                .any(|l| l.load_balancer == *load_balancer && l.port == *port)
            {
                return Err(refuse(
                    "CreateListener",
                    format!("DuplicateListener: port {port}"),
                ));
            }
            Applied::Listener(ObservedListener {
                arn: format!("{load_balancer}/listener/{id:016x}"),
                load_balancer: load_balancer.clone(),
                port: *port,
                protocol: *protocol,
                target_group: Some(target_group.clone()),
            })
        }
        LbStep::RegisterTargets { target_group, .. }
        | LbStep::DeregisterTargets { target_group, .. } => {
            if !world.target_groups.iter().any(|g| g.arn == *target_group) {
                return Err(refuse(
                    "RegisterTargets",
                    format!("TargetGroupNotFound: {target_group}"),
                ));
            }
            Applied::Done
        }
        LbStep::AuthorizeIngress { group, .. } | LbStep::RevokeIngress { group, .. } => {
            if !world.security_groups.iter().any(|g| g.id == *group) {
                return Err(refuse(
                    "AuthorizeSecurityGroupIngress",
                    format!("InvalidGroup.NotFound: {group}"),
                ));
            }
            Applied::Done
        }
        LbStep::AdmitToNodes { lb_group, .. } => {
            if !world.security_groups.iter().any(|g| g.id == *lb_group) {
                return Err(refuse(
                    "AuthorizeSecurityGroupIngress",
                    format!("InvalidGroup.NotFound: {lb_group}"),
                ));
            }
            Applied::Done
        }
        LbStep::SetSubnets { load_balancer, .. } => {
            if !world.load_balancers.iter().any(|l| l.arn == *load_balancer) {
                return Err(refuse(
                    "SetSubnets",
                    format!("LoadBalancerNotFound: {load_balancer}"),
                ));
            }
            Applied::Done
        }
        LbStep::DeleteTargetGroup { arn } => {
            if world
                .listeners
                .iter()
                .any(|l| l.target_group.as_deref() == Some(arn.as_str()))
            {
                return Err(CloudError::DependencyViolation {
                    resource: "target group".into(),
                    id: arn.clone(),
                    blocking: "ResourceInUse: a listener forwards to it".into(),
                });
            }
            Applied::Done
        }
        LbStep::DeleteSecurityGroup { id: group } => {
            let used = world
                .load_balancers
                .iter()
                .any(|l| l.security_groups.contains(group))
                || world.node_rules.iter().any(|(_, g)| g == group);
            if used {
                return Err(CloudError::DependencyViolation {
                    resource: "security group".into(),
                    id: group.clone(),
                    blocking: "a load balancer or a rule uses it".into(),
                });
            }
            Applied::Done
        }
        LbStep::RevokeFromNodes { .. }
        | LbStep::DeleteListener { .. }
        | LbStep::DeleteLoadBalancer { .. } => Applied::Done,
    };
    world.record(step, &applied);
    Ok(applied)
}
