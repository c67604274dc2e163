//! A swarm's network load balancer: describe and apply for `flotilla_core::plan::lb`, which
//! makes every choice.
//!
//! Describing costs two rounds of concurrent calls, whatever the number of ports:
//! 1. `DescribeLoadBalancers` (by the swarm's derived name), `DescribeTargetGroups` (the
//!    region's, paginated; kept when the name has the swarm's prefix), `DescribeSecurityGroups`
//!    (everything with our owner tag: the load balancer's group and the nodes' groups);
//! 2. `DescribeTags` (20 ARNs a call: only resources with our owner and swarm tags count),
//!    `DescribeListeners` per load balancer, `DescribeTargetHealth` per target group.
//!
//! Each step is one call. Creates are safe to repeat: load balancer, target group and
//! listener creates are idempotent in ELBv2 (a repeat with the same settings returns the
//! existing resource), and a second `CreateSecurityGroup` of the same name is refused, after
//! which the group is described by name. Deletes and revokes of something already gone
//! succeed. Every create carries the owner and swarm tags in the create call itself.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{IpPermission, IpRange, ResourceType, UserIdGroupPair};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, IpAddressType, LoadBalancerSchemeEnum, LoadBalancerTypeEnum,
    ProtocolEnum, Tag as ElbTag, TargetDescription, TargetGroup, TargetHealthStateEnum,
    TargetTypeEnum,
};
use flotilla_core::cloud::CloudError;
use flotilla_core::plan::lb::{
    Applied, LbStep, Observed, ObservedLb, ObservedListener, ObservedSecurityGroup,
    ObservedTargetGroup, Protocol, PublishedPort, UDP_HEALTH_CHECK_PORT, lb_name,
    security_group_name, target_group_name, target_group_prefix,
};
use flotilla_core::tags;
use futures::future::join_all;

use crate::Aws;
use crate::call::CallError;
use crate::call::Idempotency::{CreatesSomething, Safe};
use crate::instances::{filter, tag, tag_filter, tag_spec};

/// `flotilla:role` of the load balancer's security group (the nodes' is `security-group`).
pub(crate) const ROLE_LB_GROUP: &str = "lb-security-group";
const ROLE_NODE_GROUP: &str = "security-group";
const ANYWHERE: &str = "0.0.0.0/0";

fn cloud_error(error: CallError) -> CloudError {
    error.into_cloud_error()
}

fn elb_tags(aws: &Aws, swarm_uuid: &str, name: &str) -> Vec<ElbTag> {
    [
        ("Name", name),
        (tags::OWNER, aws.settings.owner.as_str()),
        (tags::SWARM, swarm_uuid),
    ]
    .into_iter()
    .map(|(k, v)| ElbTag::builder().key(k).value(v).build())
    .collect()
}

fn protocol_enum(protocol: Protocol) -> ProtocolEnum {
    ProtocolEnum::from(protocol.as_elb())
}

fn protocol_of(protocol: Option<&ProtocolEnum>) -> Option<Protocol> {
    Protocol::parse_elb(protocol?.as_str())
}

/// Everything of the swarm's load balancer (see the module documentation).
pub(crate) async fn describe(
    aws: &Aws,
    region: &str,
    swarm_uuid: &str,
) -> Result<Observed, CloudError> {
    let (lbs, groups, security_groups) = tokio::join!(
        describe_load_balancers(aws, region, swarm_uuid),
        describe_target_groups(aws, region, swarm_uuid),
        describe_security_groups(aws, region),
    );
    let (lbs, groups, security_groups) = (lbs?, groups?, security_groups?);
    let arns: Vec<String> = lbs
        .iter()
        .map(|l| l.arn.clone())
        .chain(groups.iter().map(|g| g.arn.clone()))
        .collect();
    let (owned, listeners, health) = tokio::join!(
        owned_arns(aws, region, swarm_uuid, &arns),
        join_all(lbs.iter().map(|l| describe_listeners(aws, region, &l.arn))),
        join_all(groups.iter().map(|g| registered(aws, region, &g.arn))),
    );
    let owned = owned?;
    let mut observed = Observed::default();
    for (lb, listeners) in lbs.into_iter().zip(listeners) {
        if owned.contains(&lb.arn) {
            observed.listeners.extend(listeners?);
            observed.load_balancers.push(lb);
        }
    }
    for (mut group, targets) in groups.into_iter().zip(health) {
        if owned.contains(&group.arn) {
            group.targets = targets?;
            observed.target_groups.push(group);
        }
    }
    let (lb_groups, node_groups): (Vec<_>, Vec<_>) = security_groups
        .iter()
        .filter(|g| {
            g.tag(tags::ROLE) == Some(ROLE_LB_GROUP) && g.tag(tags::SWARM) == Some(swarm_uuid)
                || g.tag(tags::ROLE) == Some(ROLE_NODE_GROUP)
        })
        .partition(|g| g.tag(tags::ROLE) == Some(ROLE_LB_GROUP));
    for group in &lb_groups {
        observed.security_groups.push(ObservedSecurityGroup {
            id: group.id.clone(),
            ingress: group.open_to_anywhere(),
        });
    }
    for node_group in &node_groups {
        for source in node_group.all_traffic_from() {
            if lb_groups.iter().any(|g| g.id == source) {
                observed
                    .node_rules
                    .insert((node_group.id.clone(), source.clone()));
            }
        }
    }
    Ok(observed)
}

async fn describe_load_balancers(
    aws: &Aws,
    region: &str,
    swarm_uuid: &str,
) -> Result<Vec<ObservedLb>, CloudError> {
    let elb = aws.elb(region);
    let name = lb_name(swarm_uuid);
    let result = aws
        .send(region, "DescribeLoadBalancers", Safe, || {
            elb.describe_load_balancers().names(&name).send()
        })
        .await;
    let output = match result {
        Ok(output) => output,
        Err(error) if error.is("LoadBalancerNotFound") => return Ok(Vec::new()),
        Err(error) => return Err(cloud_error(error)),
    };
    let mut lbs: Vec<ObservedLb> = output
        .load_balancers()
        .iter()
        .filter(|l| l.load_balancer_name() == Some(name.as_str()))
        .filter_map(|l| {
            Some(ObservedLb {
                arn: l.load_balancer_arn()?.to_owned(),
                dns_name: l.dns_name().unwrap_or_default().to_owned(),
                subnets: l
                    .availability_zones()
                    .iter()
                    .filter_map(|z| Some((z.zone_name()?.to_owned(), z.subnet_id()?.to_owned())))
                    .collect(),
                state: l
                    .state()
                    .and_then(|s| s.code())
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default(),
                security_groups: l.security_groups().to_vec(),
            })
        })
        .collect();
    lbs.sort_by(|a, b| a.arn.cmp(&b.arn));
    Ok(lbs)
}

fn observed_target_group(group: &TargetGroup) -> Option<ObservedTargetGroup> {
    Some(ObservedTargetGroup {
        arn: group.target_group_arn()?.to_owned(),
        port: u16::try_from(group.port()?).ok()?,
        protocol: protocol_of(group.protocol())?,
        targets: BTreeSet::new(),
    })
}

/// The region's target groups whose name has the swarm's prefix, every page.
async fn describe_target_groups(
    aws: &Aws,
    region: &str,
    swarm_uuid: &str,
) -> Result<Vec<ObservedTargetGroup>, CloudError> {
    let elb = aws.elb(region);
    let prefix = target_group_prefix(swarm_uuid);
    let mut found = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let output = aws
            .send(region, "DescribeTargetGroups", Safe, || {
                elb.describe_target_groups()
                    .set_marker(marker.clone())
                    .send()
            })
            .await
            .map_err(cloud_error)?;
        found.extend(
            output
                .target_groups()
                .iter()
                .filter(|g| {
                    g.target_group_name()
                        .is_some_and(|n| n.starts_with(&prefix))
                })
                .filter_map(observed_target_group),
        );
        match output.next_marker() {
            Some(next) if !next.is_empty() => marker = Some(next.to_owned()),
            _ => break,
        }
    }
    found.sort_by(|a, b| a.arn.cmp(&b.arn));
    Ok(found)
}

/// Of `arns`, those tagged with our owner and this swarm.
async fn owned_arns(
    aws: &Aws,
    region: &str,
    swarm_uuid: &str,
    arns: &[String],
) -> Result<BTreeSet<String>, CloudError> {
    let elb = aws.elb(region);
    let pages = join_all(arns.chunks(20).map(|chunk| {
        let elb = elb.clone();
        async move {
            aws.send(region, "DescribeTags", Safe, || {
                elb.describe_tags()
                    .set_resource_arns(Some(chunk.to_vec()))
                    .send()
            })
            .await
        }
    }))
    .await;
    let mut owned = BTreeSet::new();
    for page in pages {
        for description in page.map_err(cloud_error)?.tag_descriptions() {
            let has = |key: &str, value: &str| {
                description
                    .tags()
                    .iter()
                    .any(|t| t.key() == Some(key) && t.value() == Some(value))
            };
            if has(tags::OWNER, &aws.settings.owner)
                && has(tags::SWARM, swarm_uuid)
                && let Some(arn) = description.resource_arn()
            {
                owned.insert(arn.to_owned());
            }
        }
    }
    Ok(owned)
}

async fn describe_listeners(
    aws: &Aws,
    region: &str,
    lb_arn: &str,
) -> Result<Vec<ObservedListener>, CloudError> {
    let elb = aws.elb(region);
    let mut found = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let result = aws
            .send(region, "DescribeListeners", Safe, || {
                elb.describe_listeners()
                    .load_balancer_arn(lb_arn)
                    .set_marker(marker.clone())
                    .send()
            })
            .await;
        let output = match result {
            Ok(output) => output,
            // Deleted since it was described.
            Err(error) if error.is("LoadBalancerNotFound") => return Ok(found),
            Err(error) => return Err(cloud_error(error)),
        };
        found.extend(output.listeners().iter().filter_map(|l| {
            Some(ObservedListener {
                arn: l.listener_arn()?.to_owned(),
                load_balancer: lb_arn.to_owned(),
                port: u16::try_from(l.port()?).ok()?,
                protocol: protocol_of(l.protocol())?,
                target_group: l
                    .default_actions()
                    .iter()
                    .find_map(|a| a.target_group_arn().map(str::to_owned)),
            })
        }));
        match output.next_marker() {
            Some(next) if !next.is_empty() => marker = Some(next.to_owned()),
            _ => break,
        }
    }
    found.sort_by(|a, b| a.arn.cmp(&b.arn));
    Ok(found)
}

/// The instances registered in a target group, draining ones left out.
async fn registered(
    aws: &Aws,
    region: &str,
    group_arn: &str,
) -> Result<BTreeSet<String>, CloudError> {
    let elb = aws.elb(region);
    let result = aws
        .send(region, "DescribeTargetHealth", Safe, || {
            elb.describe_target_health()
                .target_group_arn(group_arn)
                .send()
        })
        .await;
    let output = match result {
        Ok(output) => output,
        Err(error) if error.is("TargetGroupNotFound") => return Ok(BTreeSet::new()),
        Err(error) => return Err(cloud_error(error)),
    };
    Ok(output
        .target_health_descriptions()
        .iter()
        .filter(|d| {
            d.target_health().and_then(|h| h.state()) != Some(&TargetHealthStateEnum::Draining)
        })
        .filter_map(|d| d.target().and_then(|t| t.id()).map(str::to_owned))
        .collect())
}

/// A security group with our owner tag, as far as the load balancer cares.
struct Group {
    id: String,
    tags: BTreeMap<String, String>,
    permissions: Vec<IpPermission>,
}

impl Group {
    fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// TCP and UDP ports open to 0.0.0.0/0, one port per rule.
    fn open_to_anywhere(&self) -> BTreeSet<PublishedPort> {
        self.permissions
            .iter()
            .filter(|p| p.ip_ranges().iter().any(|r| r.cidr_ip() == Some(ANYWHERE)))
            .filter_map(|p| {
                let protocol = match p.ip_protocol()? {
                    "tcp" | "6" => Protocol::Tcp,
                    "udp" | "17" => Protocol::Udp,
                    _ => return None,
                };
                let port = u16::try_from(p.from_port()?).ok()?;
                (p.to_port() == p.from_port()).then_some(PublishedPort { port, protocol })
            })
            .collect()
    }

    /// The groups this group admits all traffic from.
    fn all_traffic_from(&self) -> Vec<String> {
        self.permissions
            .iter()
            .filter(|p| p.ip_protocol() == Some("-1"))
            .flat_map(|p| p.user_id_group_pairs())
            .filter_map(|pair| pair.group_id().map(str::to_owned))
            .collect()
    }
}

async fn describe_security_groups(aws: &Aws, region: &str) -> Result<Vec<Group>, CloudError> {
    let ec2 = aws.ec2(region);
    let owner = tag_filter(tags::OWNER, &aws.settings.owner);
    let output = aws
        .send(region, "DescribeSecurityGroups", Safe, || {
            ec2.describe_security_groups().filters(owner.clone()).send()
        })
        .await
        .map_err(cloud_error)?;
    let mut groups: Vec<Group> = output
        .security_groups()
        .iter()
        .filter_map(|g| {
            Some(Group {
                id: g.group_id()?.to_owned(),
                tags: g
                    .tags()
                    .iter()
                    .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                    .collect(),
                permissions: g.ip_permissions().to_vec(),
            })
        })
        .collect();
    groups.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(groups)
}

fn ingress_permissions(ports: &[PublishedPort]) -> Vec<IpPermission> {
    ports
        .iter()
        .map(|p| {
            IpPermission::builder()
                .ip_protocol(p.protocol.short())
                .from_port(i32::from(p.port))
                .to_port(i32::from(p.port))
                .ip_ranges(
                    IpRange::builder()
                        .cidr_ip(ANYWHERE)
                        .description("flotilla: a port the swarm publishes")
                        .build(),
                )
                .build()
        })
        .collect()
}

fn from_group_permission(lb_group: &str) -> IpPermission {
    IpPermission::builder()
        .ip_protocol("-1")
        .user_id_group_pairs(
            UserIdGroupPair::builder()
                .group_id(lb_group)
                .description("flotilla: the swarm's load balancer")
                .build(),
        )
        .build()
}

/// `Ok` also when AWS says the call's work is already done (`codes`).
fn done_if<T>(result: Result<T, CallError>, codes: &[&str]) -> Result<(), CloudError> {
    match result {
        Ok(_) => Ok(()),
        Err(error) if codes.iter().any(|c| error.is(c)) => Ok(()),
        Err(error) => Err(cloud_error(error)),
    }
}

fn in_use(resource: &str, id: &str, error: CallError) -> CloudError {
    CloudError::DependencyViolation {
        resource: resource.to_owned(),
        id: id.to_owned(),
        blocking: format!("{}: {}", error.code(), error.message),
    }
}

/// Carries out one step.
pub(crate) async fn apply(
    aws: &Aws,
    region: &str,
    swarm_uuid: &str,
    step: &LbStep,
) -> Result<Applied, CloudError> {
    let ec2 = aws.ec2(region);
    let elb = aws.elb(region);
    match step {
        LbStep::CreateSecurityGroup { vpc_id } => {
            let name = security_group_name(swarm_uuid);
            let result = aws
                .send(region, "CreateSecurityGroup", CreatesSomething, || {
                    ec2.create_security_group()
                        .group_name(&name)
                        .description("Flotilla: a swarm's load balancer, open on the ports its services publish")
                        .vpc_id(vpc_id)
                        .tag_specifications(tag_spec(
                            ResourceType::SecurityGroup,
                            vec![
                                tag("Name", &name),
                                tag(tags::OWNER, &aws.settings.owner),
                                tag(tags::ROLE, ROLE_LB_GROUP),
                                tag(tags::SWARM, swarm_uuid),
                            ],
                        ))
                        .send()
                })
                .await;
            match result {
                Ok(output) => Ok(Applied::SecurityGroup(ObservedSecurityGroup {
                    id: crate::network::returned_id(output.group_id(), "CreateSecurityGroup")?,
                    ingress: BTreeSet::new(),
                })),
                // A lost answer: the group exists (names are unique in a VPC).
                Err(error) if error.is("InvalidGroup.Duplicate") => {
                    let output = aws
                        .send(region, "DescribeSecurityGroups", Safe, || {
                            ec2.describe_security_groups()
                                .filters(filter("vpc-id", &[vpc_id]))
                                .filters(filter("group-name", &[&name]))
                                .send()
                        })
                        .await
                        .map_err(cloud_error)?;
                    let group = output
                        .security_groups()
                        .first()
                        .and_then(|g| {
                            Some(Group {
                                id: g.group_id()?.to_owned(),
                                tags: BTreeMap::new(),
                                permissions: g.ip_permissions().to_vec(),
                            })
                        })
                        .ok_or_else(|| CloudError::Other {
                            operation: format!("CreateSecurityGroup in {region}"),
                            message: format!("{name} exists in {vpc_id} but cannot be described"),
                        })?;
                    Ok(Applied::SecurityGroup(ObservedSecurityGroup {
                        ingress: group.open_to_anywhere(),
                        id: group.id,
                    }))
                }
                Err(error) => Err(cloud_error(error)),
            }
        }
        LbStep::AuthorizeIngress { group, ports } => {
            let permissions = ingress_permissions(ports);
            let result = aws
                .send(region, "AuthorizeSecurityGroupIngress", Safe, || {
                    ec2.authorize_security_group_ingress()
                        .group_id(group)
                        .set_ip_permissions(Some(permissions.clone()))
                        .send()
                })
                .await;
            done_if(result, &["InvalidPermission.Duplicate"]).map(|()| Applied::Done)
        }
        LbStep::RevokeIngress { group, ports } => {
            let permissions = ingress_permissions(ports);
            let result = aws
                .send(region, "RevokeSecurityGroupIngress", Safe, || {
                    ec2.revoke_security_group_ingress()
                        .group_id(group)
                        .set_ip_permissions(Some(permissions.clone()))
                        .send()
                })
                .await;
            done_if(result, &["InvalidPermission.NotFound"]).map(|()| Applied::Done)
        }
        LbStep::AdmitToNodes {
            node_group,
            lb_group,
        } => {
            let result = aws
                .send(region, "AuthorizeSecurityGroupIngress", Safe, || {
                    ec2.authorize_security_group_ingress()
                        .group_id(node_group)
                        .ip_permissions(from_group_permission(lb_group))
                        .send()
                })
                .await;
            done_if(result, &["InvalidPermission.Duplicate"]).map(|()| Applied::Done)
        }
        LbStep::RevokeFromNodes {
            node_group,
            lb_group,
        } => {
            let result = aws
                .send(region, "RevokeSecurityGroupIngress", Safe, || {
                    ec2.revoke_security_group_ingress()
                        .group_id(node_group)
                        .ip_permissions(from_group_permission(lb_group))
                        .send()
                })
                .await;
            done_if(
                result,
                &["InvalidPermission.NotFound", "InvalidGroup.NotFound"],
            )
            .map(|()| Applied::Done)
        }
        LbStep::CreateLoadBalancer {
            security_group,
            subnets,
        } => {
            let name = lb_name(swarm_uuid);
            let subnet_ids: Vec<String> = subnets.values().cloned().collect();
            let output = aws
                .send(region, "CreateLoadBalancer", Safe, || {
                    elb.create_load_balancer()
                        .name(&name)
                        .r#type(LoadBalancerTypeEnum::Network)
                        .scheme(LoadBalancerSchemeEnum::InternetFacing)
                        .ip_address_type(IpAddressType::Ipv4)
                        .set_subnets(Some(subnet_ids.clone()))
                        .security_groups(security_group)
                        .set_tags(Some(elb_tags(aws, swarm_uuid, &name)))
                        .send()
                })
                .await
                .map_err(cloud_error)?;
            let lb = output
                .load_balancers()
                .first()
                .ok_or_else(|| CloudError::Other {
                    operation: format!("CreateLoadBalancer in {region}"),
                    message: "AWS answered without the load balancer".into(),
                })?;
            Ok(Applied::LoadBalancer(ObservedLb {
                arn: crate::network::returned_id(lb.load_balancer_arn(), "CreateLoadBalancer")?,
                dns_name: lb.dns_name().unwrap_or_default().to_owned(),
                subnets: subnets.clone(),
                state: lb
                    .state()
                    .and_then(|s| s.code())
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default(),
                security_groups: vec![security_group.clone()],
            }))
        }
        LbStep::SetSubnets {
            load_balancer,
            subnets,
        } => {
            let subnet_ids: Vec<String> = subnets.values().cloned().collect();
            let result = aws
                .send(region, "SetSubnets", Safe, || {
                    elb.set_subnets()
                        .load_balancer_arn(load_balancer)
                        .set_subnets(Some(subnet_ids.clone()))
                        .send()
                })
                .await;
            result.map(|_| Applied::Done).map_err(cloud_error)
        }
        LbStep::CreateTargetGroup {
            vpc_id,
            port,
            protocol,
        } => {
            let name = target_group_name(swarm_uuid, *port, *protocol);
            let health_port = match protocol {
                Protocol::Udp => UDP_HEALTH_CHECK_PORT.to_string(),
                Protocol::Tcp | Protocol::TcpUdp => "traffic-port".to_owned(),
            };
            let output = aws
                .send(region, "CreateTargetGroup", Safe, || {
                    elb.create_target_group()
                        .name(&name)
                        .protocol(protocol_enum(*protocol))
                        .port(i32::from(*port))
                        .vpc_id(vpc_id)
                        .target_type(TargetTypeEnum::Instance)
                        .health_check_protocol(ProtocolEnum::Tcp)
                        .health_check_port(&health_port)
                        .set_tags(Some(elb_tags(aws, swarm_uuid, &name)))
                        .send()
                })
                .await
                .map_err(cloud_error)?;
            output
                .target_groups()
                .first()
                .and_then(observed_target_group)
                .map(Applied::TargetGroup)
                .ok_or_else(|| CloudError::Other {
                    operation: format!("CreateTargetGroup in {region}"),
                    message: "AWS answered without the target group".into(),
                })
        }
        LbStep::RegisterTargets { target_group, ids } => {
            let targets: Vec<TargetDescription> = ids
                .iter()
                .map(|id| TargetDescription::builder().id(id).build())
                .collect();
            aws.send(region, "RegisterTargets", Safe, || {
                elb.register_targets()
                    .target_group_arn(target_group)
                    .set_targets(Some(targets.clone()))
                    .send()
            })
            .await
            .map(|_| Applied::Done)
            .map_err(cloud_error)
        }
        LbStep::DeregisterTargets { target_group, ids } => {
            let targets: Vec<TargetDescription> = ids
                .iter()
                .map(|id| TargetDescription::builder().id(id).build())
                .collect();
            let result = aws
                .send(region, "DeregisterTargets", Safe, || {
                    elb.deregister_targets()
                        .target_group_arn(target_group)
                        .set_targets(Some(targets.clone()))
                        .send()
                })
                .await;
            // Already deregistered (or the instance is gone).
            done_if(result, &["InvalidTarget"]).map(|()| Applied::Done)
        }
        LbStep::CreateListener {
            load_balancer,
            port,
            protocol,
            target_group,
        } => {
            let name = format!("{}-{port}", lb_name(swarm_uuid));
            let output = aws
                .send(region, "CreateListener", Safe, || {
                    elb.create_listener()
                        .load_balancer_arn(load_balancer)
                        .protocol(protocol_enum(*protocol))
                        .port(i32::from(*port))
                        .default_actions(
                            Action::builder()
                                .r#type(ActionTypeEnum::Forward)
                                .target_group_arn(target_group)
                                .build(),
                        )
                        .set_tags(Some(elb_tags(aws, swarm_uuid, &name)))
                        .send()
                })
                .await
                .map_err(cloud_error)?;
            let arn = output.listeners().first().and_then(|l| l.listener_arn());
            Ok(Applied::Listener(ObservedListener {
                arn: crate::network::returned_id(arn, "CreateListener")?,
                load_balancer: load_balancer.clone(),
                port: *port,
                protocol: *protocol,
                target_group: Some(target_group.clone()),
            }))
        }
        LbStep::DeleteListener { arn } => {
            let result = aws
                .send(region, "DeleteListener", Safe, || {
                    elb.delete_listener().listener_arn(arn).send()
                })
                .await;
            done_if(result, &["ListenerNotFound"]).map(|()| Applied::Done)
        }
        LbStep::DeleteTargetGroup { arn } => {
            let result = aws
                .send(region, "DeleteTargetGroup", Safe, || {
                    elb.delete_target_group().target_group_arn(arn).send()
                })
                .await;
            match result {
                Err(error) if error.is("ResourceInUse") => Err(in_use("target group", arn, error)),
                other => done_if(other, &["TargetGroupNotFound"]).map(|()| Applied::Done),
            }
        }
        LbStep::DeleteLoadBalancer { arn } => {
            let result = aws
                .send(region, "DeleteLoadBalancer", Safe, || {
                    elb.delete_load_balancer().load_balancer_arn(arn).send()
                })
                .await;
            done_if(result, &["LoadBalancerNotFound"]).map(|()| Applied::Done)
        }
        LbStep::DeleteSecurityGroup { id } => {
            let result = aws
                .send(region, "DeleteSecurityGroup", Safe, || {
                    ec2.delete_security_group().group_id(id).send()
                })
                .await;
            match result {
                // In AWS, a deleted load balancer's network interfaces keep its group in use
                // for a few minutes: the next pass deletes it.
                Err(error) if error.is("DependencyViolation") => {
                    Err(in_use("security group", id, error))
                }
                other => done_if(other, &["InvalidGroup.NotFound"]).map(|()| Applied::Done),
            }
        }
    }
}
