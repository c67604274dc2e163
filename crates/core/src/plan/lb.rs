//! The swarm load balancer planner: one ELBv2 *network* load balancer per swarm, whose
//! listeners follow the ports the swarm's services publish and whose targets are the swarm's
//! nodes (what Docker for AWS's `l4controller` did with its ELB).
//!
//! `aws::lb` describes and applies; `server::execute::converge_load_balancer` loops
//! "observe, plan, apply" and feeds what each step returned back into the observation
//! ([`Observed::record`]). Every choice is made here.
//!
//! Design decisions:
//! * **The load balancer lives as long as the swarm**, even while no port is published
//!   (Docker for AWS always had one): its DNS name is stable from the swarm's first node on,
//!   and listeners come and go with the published ports. It is created once the swarm has a
//!   node (an NLB needs at least one subnet).
//! * **Names are derived from the swarm** ([`lb_name`], [`target_group_name`],
//!   [`security_group_name`]), and every resource carries `flotilla:owner` and
//!   `flotilla:swarm` from its create call, so a run killed at any point finds its work again.
//!   Load balancer and target group names are unique per account and region in AWS, and
//!   security group names per VPC, so a repeated create returns the existing resource or
//!   fails without making a twin; should twins exist anyway (moto does not enforce unique
//!   load balancer names), one is kept — the one in use (a load balancer with listeners, a
//!   target group a listener of the kept load balancer forwards to, the group the kept load
//!   balancer uses), else the lowest ARN or id — and the others are deleted.
//! * **One target group per published port**, target type `instance`, protocol TCP, UDP or
//!   TCP_UDP (a port published for both), health check TCP on the traffic port (UDP: TCP on
//!   the swarm's gossip port 7946, which every swarm node listens on). Targets are the
//!   swarm's live nodes that are not leaving; a node leaving the swarm is deregistered before
//!   it goes.
//! * **Order**: a listener is created only once its target group exists, and a target group
//!   is deleted only once no listener forwards to it. A port whose protocol changed loses its
//!   listener first and gets a new one on the new target group.
//! * **Security**: the load balancer has its own security group ([`security_group_name`])
//!   that admits exactly the published ports from anywhere — publishing a port *is* the
//!   user's request to serve it on the internet. The nodes' security group admits traffic
//!   from that group only (AWS lets a target group reference the NLB's group even with
//!   client IP preservation on), so the nodes' own ports, management ports included, stay
//!   closed to the internet. In a user's VPC ([`Desired::node_security_group`] is `None`)
//!   the user's groups are never changed: they must admit the load balancer's group.
//! * **Rounds**: [`plan`] returns the steps that can run now, concurrently; none of them
//!   needs another's result. From nothing: (1) the security group and the target groups,
//!   (2) ingress rules, the node rule, the load balancer and the registrations, (3) the
//!   listeners. A converged swarm plans nothing, and planning again after every step of a
//!   plan was applied never repeats a step (property tests below).
//! * **Subnets** are only ever added (one per AZ the swarm's nodes use): removing one from a
//!   live load balancer would break connections in flight for no gain.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cloud::{Instance, InstanceState, Network};

/// The transport of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    /// Published for both (one listener: ELBv2 allows one listener per port).
    TcpUdp,
}

impl Protocol {
    /// The ELBv2 spelling.
    pub fn as_elb(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::TcpUdp => "TCP_UDP",
        }
    }

    pub fn parse_elb(text: &str) -> Option<Protocol> {
        Some(match text {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "TCP_UDP" => Protocol::TcpUdp,
            _ => return None,
        })
    }

    /// The IP protocols a security group must admit for it.
    fn ip_protocols(self) -> &'static [Protocol] {
        match self {
            Protocol::Tcp => &[Protocol::Tcp],
            Protocol::Udp => &[Protocol::Udp],
            Protocol::TcpUdp => &[Protocol::Tcp, Protocol::Udp],
        }
    }

    /// Lower case, for names and security group rules (`tcp`, `udp`, `tcpudp`).
    pub fn short(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::TcpUdp => "tcpudp",
        }
    }
}

/// A port a service of the swarm publishes (Docker's ingress routing mesh: every node
/// answers on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublishedPort {
    pub port: u16,
    pub protocol: Protocol,
}

impl PublishedPort {
    pub fn tcp(port: u16) -> PublishedPort {
        PublishedPort {
            port,
            protocol: Protocol::Tcp,
        }
    }

    pub fn udp(port: u16) -> PublishedPort {
        PublishedPort {
            port,
            protocol: Protocol::Udp,
        }
    }
}

/// The port a UDP target group's TCP health check uses: Docker Swarm's gossip port.
pub const UDP_HEALTH_CHECK_PORT: u16 = 7946;

/// What the swarm's load balancer should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub swarm_uuid: String,
    /// [`lb_name`] of the swarm.
    pub name: String,
    pub vpc_id: String,
    /// One subnet per AZ the swarm's nodes use: AZ → subnet id.
    pub subnets: BTreeMap<String, String>,
    /// The nodes' security group, which must admit the load balancer's group; `None` in a
    /// user's VPC (never changed: the user's groups must admit it).
    pub node_security_group: Option<String>,
    pub ports: BTreeSet<PublishedPort>,
    /// Instance ids of the swarm's live nodes that are not leaving.
    pub targets: BTreeSet<String>,
}

impl Desired {
    /// The load balancer of a swarm whose nodes are `nodes` (not leaving, from every node
    /// cluster of the swarm) on `network`, serving `ports`. Only running instances are
    /// targets (ELBv2 refuses to register others); a node still starting is registered by
    /// a later pass.
    pub fn for_swarm<'a>(
        swarm_uuid: &str,
        network: &Network,
        nodes: impl IntoIterator<Item = &'a Instance>,
        ports: impl IntoIterator<Item = PublishedPort>,
    ) -> Desired {
        let mut subnets = BTreeMap::new();
        let mut targets = BTreeSet::new();
        for node in nodes
            .into_iter()
            .filter(|n| n.state == InstanceState::Running)
        {
            targets.insert(node.instance_id.clone());
            let subnet = subnets
                .entry(node.availability_zone.clone())
                .or_insert_with(|| node.subnet_id.clone());
            // Two subnets in one AZ (a user's VPC): the lowest id, every time.
            if node.subnet_id < *subnet {
                *subnet = node.subnet_id.clone();
            }
        }
        Desired {
            swarm_uuid: swarm_uuid.to_owned(),
            name: lb_name(swarm_uuid),
            vpc_id: network.vpc_id.clone(),
            subnets,
            node_security_group: if network.managed {
                network.security_groups.first().cloned()
            } else {
                None
            },
            ports: ports.into_iter().collect(),
            targets,
        }
    }

    /// The listeners wanted: port → protocol (a port published for TCP and UDP is TCP_UDP).
    pub fn listeners(&self) -> BTreeMap<u16, Protocol> {
        let mut wanted: BTreeMap<u16, Protocol> = BTreeMap::new();
        for p in &self.ports {
            let merged = match wanted.get(&p.port) {
                Some(existing) if *existing != p.protocol => Protocol::TcpUdp,
                _ => p.protocol,
            };
            wanted.insert(p.port, merged);
        }
        wanted
    }

    /// The ingress rules the load balancer's security group must have (TCP or UDP only).
    pub fn ingress(&self) -> BTreeSet<PublishedPort> {
        self.listeners()
            .into_iter()
            .flat_map(|(port, protocol)| {
                protocol
                    .ip_protocols()
                    .iter()
                    .map(move |p| PublishedPort { port, protocol: *p })
            })
            .collect()
    }
}

fn digest(seed: &str, chars: usize) -> String {
    hex::encode(Sha256::digest(seed.as_bytes()))[..chars].to_owned()
}

/// The load balancer's name: `flotilla-` and 20 hex digits of a hash of the swarm (29 of
/// the 32 characters AWS allows, `[a-z0-9-]`).
pub fn lb_name(swarm_uuid: &str) -> String {
    format!(
        "flotilla-{}",
        digest(&format!("flotilla-lb:{swarm_uuid}"), 20)
    )
}

/// Every target group of the swarm starts with this (`flt-` and 12 hex digits, then `-`).
pub fn target_group_prefix(swarm_uuid: &str) -> String {
    format!("flt-{}-", digest(&format!("flotilla-tg:{swarm_uuid}"), 12))
}

/// A target group's name: the swarm's prefix, the port and the protocol (at most 29
/// characters).
pub fn target_group_name(swarm_uuid: &str, port: u16, protocol: Protocol) -> String {
    format!(
        "{}{port}-{}",
        target_group_prefix(swarm_uuid),
        protocol.short()
    )
}

/// The load balancer's security group's name.
pub fn security_group_name(swarm_uuid: &str) -> String {
    format!("flotilla-lb-{swarm_uuid}")
}

/// The load balancer as described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedLb {
    pub arn: String,
    pub dns_name: String,
    /// AZ → subnet id.
    pub subnets: BTreeMap<String, String>,
    /// `provisioning`, `active`, `failed`, …
    pub state: String,
    pub security_groups: Vec<String>,
}

/// A target group of the swarm as described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedTargetGroup {
    pub arn: String,
    pub port: u16,
    pub protocol: Protocol,
    /// Registered instance ids (draining ones left out: they are on their way out).
    pub targets: BTreeSet<String>,
}

/// A listener of one of the swarm's load balancers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedListener {
    pub arn: String,
    pub load_balancer: String,
    pub port: u16,
    pub protocol: Protocol,
    /// The target group it forwards to.
    pub target_group: Option<String>,
}

/// The load balancer's security group as described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedSecurityGroup {
    pub id: String,
    /// Ingress from 0.0.0.0/0, TCP or UDP per port.
    pub ingress: BTreeSet<PublishedPort>,
}

/// Everything of one swarm's load balancer, found by name and tags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// Normally none or one.
    pub load_balancers: Vec<ObservedLb>,
    pub target_groups: Vec<ObservedTargetGroup>,
    pub listeners: Vec<ObservedListener>,
    /// Normally none or one.
    pub security_groups: Vec<ObservedSecurityGroup>,
    /// (node security group, load balancer security group): the node groups that admit
    /// one of the swarm's load balancer groups.
    pub node_rules: BTreeSet<(String, String)>,
}

/// One step; a plan's steps are independent of each other.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LbStep {
    CreateSecurityGroup {
        vpc_id: String,
    },
    AuthorizeIngress {
        group: String,
        ports: Vec<PublishedPort>,
    },
    RevokeIngress {
        group: String,
        ports: Vec<PublishedPort>,
    },
    /// The nodes' group admits everything from the load balancer's group.
    AdmitToNodes {
        node_group: String,
        lb_group: String,
    },
    RevokeFromNodes {
        node_group: String,
        lb_group: String,
    },
    CreateLoadBalancer {
        security_group: String,
        /// AZ → subnet id.
        subnets: BTreeMap<String, String>,
    },
    /// Adds subnets: the full map (AZ → subnet id), old and new.
    SetSubnets {
        load_balancer: String,
        subnets: BTreeMap<String, String>,
    },
    CreateTargetGroup {
        vpc_id: String,
        port: u16,
        protocol: Protocol,
    },
    RegisterTargets {
        target_group: String,
        ids: Vec<String>,
    },
    DeregisterTargets {
        target_group: String,
        ids: Vec<String>,
    },
    CreateListener {
        load_balancer: String,
        port: u16,
        protocol: Protocol,
        target_group: String,
    },
    DeleteListener {
        arn: String,
    },
    DeleteTargetGroup {
        arn: String,
    },
    DeleteLoadBalancer {
        arn: String,
    },
    DeleteSecurityGroup {
        id: String,
    },
}

impl LbStep {
    /// One line for the action log.
    pub fn describe(&self) -> String {
        let ports = |ports: &[PublishedPort]| {
            ports
                .iter()
                .map(|p| format!("{}/{}", p.port, p.protocol.short()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            LbStep::CreateSecurityGroup { vpc_id } => {
                format!("creating the load balancer's security group in {vpc_id}")
            }
            LbStep::AuthorizeIngress { group, ports: p } => {
                format!("opening {} on {group}", ports(p))
            }
            LbStep::RevokeIngress { group, ports: p } => {
                format!("closing {} on {group}", ports(p))
            }
            LbStep::AdmitToNodes {
                node_group,
                lb_group,
            } => format!("admitting {lb_group} to the nodes' {node_group}"),
            LbStep::RevokeFromNodes {
                node_group,
                lb_group,
            } => format!("no longer admitting {lb_group} to {node_group}"),
            LbStep::CreateLoadBalancer { subnets, .. } => format!(
                "creating the load balancer in {}",
                subnets.values().cloned().collect::<Vec<_>>().join(", ")
            ),
            LbStep::SetSubnets {
                load_balancer,
                subnets,
            } => format!(
                "load balancer {load_balancer} now in {}",
                subnets.values().cloned().collect::<Vec<_>>().join(", ")
            ),
            LbStep::CreateTargetGroup { port, protocol, .. } => {
                format!("creating the target group for {port}/{}", protocol.short())
            }
            LbStep::RegisterTargets { target_group, ids } => {
                format!("registering {} in {target_group}", ids.join(", "))
            }
            LbStep::DeregisterTargets { target_group, ids } => {
                format!("deregistering {} from {target_group}", ids.join(", "))
            }
            LbStep::CreateListener { port, protocol, .. } => {
                format!("creating the listener for {port}/{}", protocol.short())
            }
            LbStep::DeleteListener { arn } => format!("deleting listener {arn}"),
            LbStep::DeleteTargetGroup { arn } => format!("deleting target group {arn}"),
            LbStep::DeleteLoadBalancer { arn } => format!("deleting load balancer {arn}"),
            LbStep::DeleteSecurityGroup { id } => format!("deleting security group {id}"),
        }
    }
}

/// What applying a step made (the new resource), as an observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    SecurityGroup(ObservedSecurityGroup),
    LoadBalancer(ObservedLb),
    TargetGroup(ObservedTargetGroup),
    Listener(ObservedListener),
    /// The step did exactly what it says.
    Done,
}

impl Observed {
    /// Adds what a step did to the observation, as if it had been described again.
    pub fn record(&mut self, step: &LbStep, applied: &Applied) {
        match applied {
            Applied::SecurityGroup(group) => {
                if !self.security_groups.iter().any(|g| g.id == group.id) {
                    self.security_groups.push(group.clone());
                }
            }
            Applied::LoadBalancer(lb) => {
                if !self.load_balancers.iter().any(|l| l.arn == lb.arn) {
                    self.load_balancers.push(lb.clone());
                }
            }
            Applied::TargetGroup(group) => {
                if !self.target_groups.iter().any(|g| g.arn == group.arn) {
                    self.target_groups.push(group.clone());
                }
            }
            Applied::Listener(listener) => {
                if !self.listeners.iter().any(|l| l.arn == listener.arn) {
                    self.listeners.push(listener.clone());
                }
            }
            Applied::Done => {}
        }
        match step {
            LbStep::AuthorizeIngress { group, ports } => {
                for g in self.security_groups.iter_mut().filter(|g| g.id == *group) {
                    g.ingress.extend(ports.iter().copied());
                }
            }
            LbStep::RevokeIngress { group, ports } => {
                for g in self.security_groups.iter_mut().filter(|g| g.id == *group) {
                    for port in ports {
                        g.ingress.remove(port);
                    }
                }
            }
            LbStep::AdmitToNodes {
                node_group,
                lb_group,
            } => {
                self.node_rules
                    .insert((node_group.clone(), lb_group.clone()));
            }
            LbStep::RevokeFromNodes {
                node_group,
                lb_group,
            } => {
                self.node_rules
                    .remove(&(node_group.clone(), lb_group.clone()));
            }
            LbStep::SetSubnets {
                load_balancer,
                subnets,
            } => {
                for lb in self
                    .load_balancers
                    .iter_mut()
                    .filter(|l| l.arn == *load_balancer)
                {
                    lb.subnets = subnets.clone();
                }
            }
            LbStep::RegisterTargets { target_group, ids } => {
                for g in self
                    .target_groups
                    .iter_mut()
                    .filter(|g| g.arn == *target_group)
                {
                    g.targets.extend(ids.iter().cloned());
                }
            }
            LbStep::DeregisterTargets { target_group, ids } => {
                for g in self
                    .target_groups
                    .iter_mut()
                    .filter(|g| g.arn == *target_group)
                {
                    for id in ids {
                        g.targets.remove(id);
                    }
                }
            }
            LbStep::DeleteListener { arn } => self.listeners.retain(|l| l.arn != *arn),
            LbStep::DeleteTargetGroup { arn } => self.target_groups.retain(|g| g.arn != *arn),
            LbStep::DeleteLoadBalancer { arn } => {
                // Deleting a load balancer deletes its listeners.
                self.load_balancers.retain(|l| l.arn != *arn);
                self.listeners.retain(|l| l.load_balancer != *arn);
            }
            LbStep::DeleteSecurityGroup { id } => self.security_groups.retain(|g| g.id != *id),
            LbStep::CreateSecurityGroup { .. }
            | LbStep::CreateLoadBalancer { .. }
            | LbStep::CreateTargetGroup { .. }
            | LbStep::CreateListener { .. } => {}
        }
    }

    /// The load balancer kept: one with listeners (its DNS name is the one in use), then
    /// the lowest ARN. AWS allows one per name; twins come only from an emulator.
    pub fn kept_load_balancer(&self) -> Option<&ObservedLb> {
        self.load_balancers.iter().min_by_key(|lb| {
            let serving = self.listeners.iter().any(|l| l.load_balancer == lb.arn);
            (!serving, &lb.arn)
        })
    }

    /// The security group kept: the one the kept load balancer uses, else the lowest id.
    pub fn kept_security_group(&self) -> Option<&ObservedSecurityGroup> {
        let lb = self.kept_load_balancer();
        self.security_groups
            .iter()
            .find(|g| lb.is_some_and(|lb| lb.security_groups.contains(&g.id)))
            .or_else(|| self.security_groups.iter().min_by(|a, b| a.id.cmp(&b.id)))
    }

    /// The target group kept for each (port, protocol): the one a listener of the kept load
    /// balancer forwards to, else the lowest ARN.
    pub fn kept_target_groups(&self) -> BTreeMap<(u16, Protocol), &ObservedTargetGroup> {
        let lb = self.kept_load_balancer().map(|l| l.arn.as_str());
        let in_use = |g: &ObservedTargetGroup| {
            self.listeners.iter().any(|l| {
                Some(l.load_balancer.as_str()) == lb && l.target_group.as_deref() == Some(&g.arn)
            })
        };
        let mut kept: BTreeMap<(u16, Protocol), &ObservedTargetGroup> = BTreeMap::new();
        for group in &self.target_groups {
            let key = (group.port, group.protocol);
            let better = match kept.get(&key) {
                None => true,
                Some(current) => (!in_use(current), &current.arn) > (!in_use(group), &group.arn),
            };
            if better {
                kept.insert(key, group);
            }
        }
        kept
    }

    /// The DNS name of the kept load balancer.
    pub fn dns_name(&self) -> Option<&str> {
        self.kept_load_balancer().map(|l| l.dns_name.as_str())
    }

    /// Nothing of the swarm's load balancer exists.
    pub fn is_empty(&self) -> bool {
        self.load_balancers.is_empty()
            && self.target_groups.is_empty()
            && self.listeners.is_empty()
            && self.security_groups.is_empty()
            && self.node_rules.is_empty()
    }
}

/// The next round of steps towards `desired`: every step of it can run concurrently. Empty
/// when the load balancer is as desired.
pub fn plan(desired: &Desired, observed: &Observed) -> Vec<LbStep> {
    let mut steps = Vec::new();
    let listeners = desired.listeners();
    let lb = observed.kept_load_balancer();
    let group = observed.kept_security_group();
    let kept_groups = observed.kept_target_groups();

    // The security group, its rules, and the nodes' rule admitting it.
    match group {
        None => steps.push(LbStep::CreateSecurityGroup {
            vpc_id: desired.vpc_id.clone(),
        }),
        Some(group) => {
            let wanted = desired.ingress();
            let missing: Vec<PublishedPort> = wanted.difference(&group.ingress).copied().collect();
            let extra: Vec<PublishedPort> = group.ingress.difference(&wanted).copied().collect();
            if !missing.is_empty() {
                steps.push(LbStep::AuthorizeIngress {
                    group: group.id.clone(),
                    ports: missing,
                });
            }
            if !extra.is_empty() {
                steps.push(LbStep::RevokeIngress {
                    group: group.id.clone(),
                    ports: extra,
                });
            }
            if let Some(node_group) = &desired.node_security_group
                && !observed
                    .node_rules
                    .contains(&(node_group.clone(), group.id.clone()))
            {
                steps.push(LbStep::AdmitToNodes {
                    node_group: node_group.clone(),
                    lb_group: group.id.clone(),
                });
            }
        }
    }
    // Rules admitting a group that is not kept go, then the group itself (once no load
    // balancer uses it).
    for (node_group, lb_group) in &observed.node_rules {
        if group.is_none_or(|g| g.id != *lb_group) {
            steps.push(LbStep::RevokeFromNodes {
                node_group: node_group.clone(),
                lb_group: lb_group.clone(),
            });
        }
    }
    for other in &observed.security_groups {
        if group.is_some_and(|g| g.id != other.id)
            && !observed.node_rules.iter().any(|(_, g)| *g == other.id)
            && !observed
                .load_balancers
                .iter()
                .any(|l| l.security_groups.contains(&other.id))
        {
            steps.push(LbStep::DeleteSecurityGroup {
                id: other.id.clone(),
            });
        }
    }

    // The load balancer and its subnets; twins go (with their listeners).
    match (lb, group) {
        (None, Some(group)) if !desired.subnets.is_empty() => {
            steps.push(LbStep::CreateLoadBalancer {
                security_group: group.id.clone(),
                subnets: desired.subnets.clone(),
            })
        }
        (Some(lb), _) => {
            let new: Vec<(&String, &String)> = desired
                .subnets
                .iter()
                .filter(|(az, _)| !lb.subnets.contains_key(*az))
                .collect();
            if !new.is_empty() {
                let mut subnets = lb.subnets.clone();
                subnets.extend(new.into_iter().map(|(az, id)| (az.clone(), id.clone())));
                steps.push(LbStep::SetSubnets {
                    load_balancer: lb.arn.clone(),
                    subnets,
                });
            }
        }
        _ => {}
    }
    for other in &observed.load_balancers {
        if lb.is_some_and(|l| l.arn != other.arn) {
            steps.push(LbStep::DeleteLoadBalancer {
                arn: other.arn.clone(),
            });
        }
    }

    // Target groups and their targets.
    for (port, protocol) in &listeners {
        match kept_groups.get(&(*port, *protocol)) {
            None => steps.push(LbStep::CreateTargetGroup {
                vpc_id: desired.vpc_id.clone(),
                port: *port,
                protocol: *protocol,
            }),
            Some(tg) => {
                let register: Vec<String> =
                    desired.targets.difference(&tg.targets).cloned().collect();
                let deregister: Vec<String> =
                    tg.targets.difference(&desired.targets).cloned().collect();
                if !register.is_empty() {
                    steps.push(LbStep::RegisterTargets {
                        target_group: tg.arn.clone(),
                        ids: register,
                    });
                }
                if !deregister.is_empty() {
                    steps.push(LbStep::DeregisterTargets {
                        target_group: tg.arn.clone(),
                        ids: deregister,
                    });
                }
            }
        }
    }

    // Listeners: each wanted port forwards to its kept group; anything else goes.
    let wanted_group = |port: u16, protocol: Protocol| {
        listeners
            .get(&port)
            .filter(|p| **p == protocol)
            .and_then(|_| kept_groups.get(&(port, protocol)))
            .map(|g| g.arn.as_str())
    };
    if let Some(lb) = lb {
        let on_lb: Vec<&ObservedListener> = observed
            .listeners
            .iter()
            .filter(|l| l.load_balancer == lb.arn)
            .collect();
        for listener in &on_lb {
            let right = wanted_group(listener.port, listener.protocol).is_some()
                && listener.target_group.as_deref()
                    == wanted_group(listener.port, listener.protocol);
            if !right {
                steps.push(LbStep::DeleteListener {
                    arn: listener.arn.clone(),
                });
            }
        }
        for (port, protocol) in &listeners {
            let taken = on_lb.iter().any(|l| l.port == *port);
            if let (false, Some(tg)) = (taken, kept_groups.get(&(*port, *protocol))) {
                steps.push(LbStep::CreateListener {
                    load_balancer: lb.arn.clone(),
                    port: *port,
                    protocol: *protocol,
                    target_group: tg.arn.clone(),
                });
            }
        }
    }

    // Target groups no longer wanted (or twins), once no listener forwards to them.
    for tg in &observed.target_groups {
        let kept = listeners.get(&tg.port) == Some(&tg.protocol)
            && kept_groups
                .get(&(tg.port, tg.protocol))
                .is_some_and(|k| k.arn == tg.arn);
        // Not in the round that deletes its listener: the deletion must have happened.
        let referenced = observed
            .listeners
            .iter()
            .any(|l| l.target_group.as_deref() == Some(tg.arn.as_str()));
        if !kept && !referenced {
            steps.push(LbStep::DeleteTargetGroup {
                arn: tg.arn.clone(),
            });
        }
    }
    steps
}

/// The next round of removing everything of the swarm's load balancer: listeners and the
/// nodes' rules first, then target groups and load balancers, then security groups. Empty
/// once nothing is left.
pub fn plan_removal(observed: &Observed) -> Vec<LbStep> {
    let mut steps: Vec<LbStep> = observed
        .listeners
        .iter()
        .map(|l| LbStep::DeleteListener { arn: l.arn.clone() })
        .collect();
    steps.extend(observed.node_rules.iter().map(|(node_group, lb_group)| {
        LbStep::RevokeFromNodes {
            node_group: node_group.clone(),
            lb_group: lb_group.clone(),
        }
    }));
    for tg in &observed.target_groups {
        if !observed
            .listeners
            .iter()
            .any(|l| l.target_group.as_deref() == Some(tg.arn.as_str()))
        {
            steps.push(LbStep::DeleteTargetGroup {
                arn: tg.arn.clone(),
            });
        }
    }
    for lb in &observed.load_balancers {
        if !observed.listeners.iter().any(|l| l.load_balancer == lb.arn) {
            steps.push(LbStep::DeleteLoadBalancer {
                arn: lb.arn.clone(),
            });
        }
    }
    for group in &observed.security_groups {
        let used = observed
            .load_balancers
            .iter()
            .any(|l| l.security_groups.contains(&group.id))
            || observed.node_rules.iter().any(|(_, g)| *g == group.id);
        if !used {
            steps.push(LbStep::DeleteSecurityGroup {
                id: group.id.clone(),
            });
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::simulate_lb_step;
    use proptest::prelude::*;

    const SWARM: &str = "5d0e7a52-3b9c-4f0e-8d2a-1c2b3c4d5e6f";
    const REGION: &str = "us-east-1";

    fn desired(ports: &[PublishedPort], targets: &[&str]) -> Desired {
        Desired {
            swarm_uuid: SWARM.into(),
            name: lb_name(SWARM),
            vpc_id: "vpc-1".into(),
            subnets: BTreeMap::from([
                ("us-east-1a".to_owned(), "subnet-a".to_owned()),
                ("us-east-1b".to_owned(), "subnet-b".to_owned()),
            ]),
            node_security_group: Some("sg-nodes".into()),
            ports: ports.iter().copied().collect(),
            targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    /// What a pass does: observe `world`, then plan and apply rounds until the plan is
    /// empty or a step loses its answer. `lost(n)` decides whether the n-th step of the run loses its
    /// answer (it still takes effect) — the pass then ends with an error, like a kill.
    /// Returns whether the pass converged, and checks the invariants after every step.
    fn pass(
        world: &mut Observed,
        desired: Option<&Desired>,
        next_id: &mut u64,
        lost: &mut dyn FnMut() -> bool,
    ) -> Result<bool, TestCaseError> {
        let mut view = world.clone();
        let mut done: BTreeSet<LbStep> = BTreeSet::new();
        for _ in 0..8 {
            let steps = match desired {
                Some(d) => plan(d, &view),
                None => plan_removal(&view),
            };
            if steps.is_empty() {
                return Ok(true);
            }
            let unique: BTreeSet<&LbStep> = steps.iter().collect();
            prop_assert_eq!(unique.len(), steps.len(), "a step twice in one round");
            // A round's steps run concurrently, so any order must do: the last first here
            // (the plan's order in `from_nothing_in_three_rounds_then_nothing`).
            for step in steps.iter().rev() {
                prop_assert!(done.insert(step.clone()), "{:?} repeated in one pass", step);
                *next_id += 1;
                let applied = simulate_lb_step(world, REGION, SWARM, step, *next_id);
                // With an accurate view, no step is refused.
                let applied = match applied {
                    Ok(applied) => applied,
                    Err(error) => {
                        return Err(TestCaseError::fail(format!(
                            "{step:?} refused: {error}\nview: {view:?}"
                        )));
                    }
                };
                check_world(world)?;
                if lost() {
                    return Ok(false);
                }
                view.record(step, &applied);
            }
        }
        Err(TestCaseError::fail("no convergence in 8 rounds"))
    }

    fn check_world(world: &Observed) -> Result<(), TestCaseError> {
        for listener in &world.listeners {
            prop_assert!(
                world
                    .target_groups
                    .iter()
                    .any(|g| Some(&g.arn) == listener.target_group.as_ref()),
                "listener {} without its target group",
                listener.arn
            );
            prop_assert!(
                world
                    .load_balancers
                    .iter()
                    .any(|l| l.arn == listener.load_balancer)
            );
        }
        Ok(())
    }

    /// The world is exactly as desired.
    fn check_converged(world: &Observed, desired: &Desired) -> Result<(), TestCaseError> {
        prop_assert_eq!(world.load_balancers.len(), 1);
        prop_assert_eq!(world.security_groups.len(), 1);
        let lb = &world.load_balancers[0];
        let group = &world.security_groups[0];
        prop_assert_eq!(&lb.subnets, &desired.subnets);
        prop_assert_eq!(&group.ingress, &desired.ingress());
        prop_assert_eq!(
            &world.node_rules,
            &BTreeSet::from([("sg-nodes".to_owned(), group.id.clone())])
        );
        let listeners: BTreeMap<u16, Protocol> = world
            .listeners
            .iter()
            .map(|l| (l.port, l.protocol))
            .collect();
        prop_assert_eq!(&listeners, &desired.listeners());
        prop_assert_eq!(world.listeners.len(), listeners.len());
        prop_assert_eq!(world.target_groups.len(), listeners.len());
        for group in &world.target_groups {
            prop_assert_eq!(&group.targets, &desired.targets);
        }
        prop_assert!(plan(desired, world).is_empty());
        Ok(())
    }

    #[test]
    fn from_nothing_in_three_rounds_then_nothing() {
        let want = desired(
            &[PublishedPort::tcp(80), PublishedPort::tcp(8080)],
            &["i-1", "i-2"],
        );
        let mut view = Observed::default();
        let mut world = Observed::default();
        let mut rounds = Vec::new();
        let mut id = 0;
        loop {
            let steps = plan(&want, &view);
            if steps.is_empty() {
                break;
            }
            for step in &steps {
                id += 1;
                let applied = simulate_lb_step(&mut world, REGION, SWARM, step, id).expect("step");
                view.record(step, &applied);
            }
            rounds.push(steps);
        }
        assert_eq!(rounds.len(), 3, "{rounds:#?}");
        assert!(matches!(rounds[0][0], LbStep::CreateSecurityGroup { .. }));
        assert!(
            rounds[2]
                .iter()
                .all(|s| matches!(s, LbStep::CreateListener { .. }))
        );
        assert_eq!(
            view, world,
            "what the steps returned is what a describe shows"
        );
        check_converged(&world, &want).expect("converged");
    }

    #[test]
    fn a_removed_port_loses_its_listener_before_its_target_group() {
        let mut world = Observed::default();
        let mut id = 0;
        let first = desired(
            &[PublishedPort::tcp(80), PublishedPort::tcp(8080)],
            &["i-1"],
        );
        assert!(pass(&mut world, Some(&first), &mut id, &mut || false).expect("pass"));
        let second = desired(&[PublishedPort::tcp(8080)], &["i-1"]);
        let round = plan(&second, &world);
        assert!(
            round
                .iter()
                .any(|s| matches!(s, LbStep::DeleteListener { .. }))
                && !round
                    .iter()
                    .any(|s| matches!(s, LbStep::DeleteTargetGroup { .. })),
            "{round:?}"
        );
        assert!(pass(&mut world, Some(&second), &mut id, &mut || false).expect("pass"));
        check_converged(&world, &second).expect("converged");
    }

    #[test]
    fn tcp_and_udp_on_one_port_are_one_tcp_udp_listener() {
        let want = desired(&[PublishedPort::tcp(53), PublishedPort::udp(53)], &[]);
        assert_eq!(want.listeners(), BTreeMap::from([(53, Protocol::TcpUdp)]));
        assert_eq!(
            want.ingress(),
            BTreeSet::from([PublishedPort::tcp(53), PublishedPort::udp(53)])
        );
    }

    #[test]
    fn a_swarm_is_balanced_over_its_running_nodes_one_subnet_per_az() {
        let node = |id: &str, az: &str, subnet: &str, state: InstanceState| Instance {
            instance_id: id.into(),
            cluster_uuid: "c".into(),
            slot: 0,
            node_uuid: "n".into(),
            state,
            availability_zone: az.into(),
            subnet_id: subnet.into(),
            private_ip: None,
            public_ip: None,
        };
        let nodes = [
            node("i-1", "us-east-1a", "subnet-a2", InstanceState::Running),
            node("i-2", "us-east-1a", "subnet-a1", InstanceState::Running),
            node("i-3", "us-east-1b", "subnet-b", InstanceState::Pending),
            node("i-4", "us-east-1c", "subnet-c", InstanceState::Terminated),
        ];
        let mut network = Network {
            region: REGION.into(),
            vpc_id: "vpc-1".into(),
            vpc_cidr: "10.78.0.0/16".parse().expect("cidr"),
            managed: true,
            subnets: Vec::new(),
            security_groups: vec!["sg-nodes".into()],
            image_id: "ami-1".into(),
            skipped_azs: Vec::new(),
            changes: Vec::new(),
        };
        let want = Desired::for_swarm(SWARM, &network, &nodes, [PublishedPort::tcp(80)]);
        assert_eq!(want.name, lb_name(SWARM));
        assert_eq!(
            want.subnets,
            BTreeMap::from([("us-east-1a".to_owned(), "subnet-a1".to_owned())])
        );
        assert_eq!(
            want.targets,
            BTreeSet::from(["i-1".to_owned(), "i-2".to_owned()])
        );
        assert_eq!(want.node_security_group.as_deref(), Some("sg-nodes"));
        network.managed = false;
        let in_users_vpc = Desired::for_swarm(SWARM, &network, &nodes, []);
        assert_eq!(
            in_users_vpc.node_security_group, None,
            "a user's group is never changed"
        );
    }

    #[test]
    fn names_fit_aws_and_are_stable() {
        let name = lb_name(SWARM);
        assert_eq!(name, lb_name(SWARM));
        assert_ne!(name, lb_name("another"));
        assert!(name.len() <= 32 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        let group = target_group_name(SWARM, 65535, Protocol::TcpUdp);
        assert!(group.len() <= 32, "{group}");
        assert!(group.starts_with(&target_group_prefix(SWARM)));
        assert!(!group.ends_with('-') && !group.contains("--"));
    }

    #[test]
    fn twins_are_resolved_keeping_the_one_in_use() {
        let mut world = Observed::default();
        let mut id = 0;
        let want = desired(&[PublishedPort::tcp(80)], &["i-1"]);
        assert!(pass(&mut world, Some(&want), &mut id, &mut || false).expect("pass"));
        let used = world.target_groups[0].arn.clone();
        // A twin with a lower ARN, and a twin load balancer (an emulator allows both).
        let mut twin = world.target_groups[0].clone();
        twin.arn = "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/a/0".into();
        world.target_groups.push(twin);
        let serving = world.load_balancers[0].clone();
        world.load_balancers.push(ObservedLb {
            arn: "arn:0".into(),
            ..serving.clone()
        });
        assert!(pass(&mut world, Some(&want), &mut id, &mut || false).expect("pass"));
        check_converged(&world, &want).expect("converged");
        assert_eq!(world.target_groups[0].arn, used, "the group in use is kept");
        assert_eq!(
            world.load_balancers[0], serving,
            "the serving load balancer is kept"
        );
    }

    #[test]
    fn removal_deletes_everything_in_order() {
        let mut world = Observed::default();
        let mut id = 0;
        let want = desired(
            &[PublishedPort::tcp(80), PublishedPort::udp(5000)],
            &["i-1"],
        );
        assert!(pass(&mut world, Some(&want), &mut id, &mut || false).expect("pass"));
        let first = plan_removal(&world);
        assert!(
            first.iter().all(|s| matches!(
                s,
                LbStep::DeleteListener { .. } | LbStep::RevokeFromNodes { .. }
            )),
            "{first:?}"
        );
        assert!(pass(&mut world, None, &mut id, &mut || false).expect("pass"));
        assert!(world.is_empty(), "{world:?}");
    }

    fn port() -> impl Strategy<Value = PublishedPort> {
        (
            prop::sample::select(vec![80u16, 443, 53, 8080, 9000]),
            prop::bool::ANY,
        )
            .prop_map(|(port, udp)| {
                if udp {
                    PublishedPort::udp(port)
                } else {
                    PublishedPort::tcp(port)
                }
            })
    }

    #[derive(Debug, Clone)]
    struct Change {
        ports: Vec<PublishedPort>,
        targets: Vec<&'static str>,
        third_az: bool,
        /// Every n-th step loses its answer (0: none).
        lose_every: usize,
        /// Twins appear first (an emulator without unique names, a crash in between).
        twins: bool,
    }

    fn change() -> impl Strategy<Value = Change> {
        (
            prop::collection::vec(port(), 0..5),
            prop::collection::vec(prop::sample::select(vec!["i-1", "i-2", "i-3", "i-4"]), 0..4),
            prop::bool::ANY,
            0usize..5,
            prop::bool::weighted(0.2),
        )
            .prop_map(|(ports, targets, third_az, lose_every, twins)| Change {
                ports,
                targets,
                third_az,
                lose_every,
                twins,
            })
    }

    proptest! {
        /// Through any sequence of port and target sets, with steps whose answers are lost
        /// (the pass ends; the next one observes afresh): every pass's steps are accepted,
        /// no listener ever lacks its target group, passes end in an empty plan, and the
        /// end state is exactly the desired one — removed ports' listeners and groups gone.
        /// Removal then leaves nothing.
        #[test]
        fn converges_through_any_changes_and_lost_answers(changes in prop::collection::vec(change(), 1..8)) {
            let mut world = Observed::default();
            let mut id = 0;
            for change in &changes {
                let mut want = desired(&change.ports, &change.targets);
                if change.third_az {
                    want.subnets.insert("us-east-1c".into(), "subnet-c".into());
                }
                if change.twins {
                    let twins: Vec<ObservedTargetGroup> = world
                        .target_groups
                        .iter()
                        .map(|g| ObservedTargetGroup {
                            arn: format!("arn:0-twin-{}", g.arn),
                            targets: BTreeSet::new(),
                            ..g.clone()
                        })
                        .collect();
                    world.target_groups.extend(twins);
                    if let Some(lb) = world.load_balancers.first().cloned() {
                        world.load_balancers.push(ObservedLb {
                            arn: format!("arn:0-twin-{}", lb.arn),
                            ..lb
                        });
                    }
                }
                let mut count = 0;
                let mut lose = || {
                    count += 1;
                    change.lose_every > 0 && count % change.lose_every == 0
                };
                let mut converged = false;
                for _ in 0..50 {
                    if pass(&mut world, Some(&want), &mut id, &mut lose)? {
                        converged = true;
                        break;
                    }
                }
                prop_assert!(converged);
                // Subnets are only ever added.
                let mut expected = want.clone();
                expected.subnets = world.load_balancers[0].subnets.clone();
                prop_assert!(want.subnets.keys().all(|az| expected.subnets.contains_key(az)));
                check_converged(&world, &expected)?;
            }
            let mut count = 0;
            let mut lose = || { count += 1; count % 3 == 0 };
            let mut removed = false;
            for _ in 0..50 {
                if pass(&mut world, None, &mut id, &mut lose)? {
                    removed = true;
                    break;
                }
            }
            prop_assert!(removed);
            prop_assert!(world.is_empty(), "left over: {:?}", world);
        }
    }
}
