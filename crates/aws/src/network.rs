//! The network a cluster runs on: find-or-create (auto), validate (user VPC), tear down.
//!
//! Auto mode builds Docker Cloud's layout — `dc-vpc` 10.78.0.0/16, a `dc-subnet` per usable AZ,
//! `dc-gateway` attached, `dc-route-table` with the default route and every subnet associated —
//! plus a node security group. The VPC is the anchor: everything else is created only once the
//! VPC exists, and teardown deletes the VPC last, so "no VPC" reliably means "nothing else of
//! ours either" and the first observation round can stay small.
//!
//! Round trips from nothing (each line runs concurrently):
//! 1. describe: zones, image, our VPC, our subnets, our gateway
//! 2. create the VPC and the gateway; dry-run a launch in every AZ that lacks a subnet
//! 3. create subnets (dry run passed), route table, security group; attach the gateway
//! 4. default route, subnet associations, security group rules
//!
//! A repeat finds everything in round 1–2 and creates nothing; a run after a partial one
//! creates exactly what is missing. Only resources with our owner tag are ever changed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, InstanceType, IpPermission, IpRange, Placement, ResourceType};
use flotilla_core::cloud::{
    CloudError, Held, Network, NetworkRequest, SkippedAz, Subnet, TeardownReport,
};
use flotilla_core::network::{DEFAULT_VPC_CIDR, Ipv4Cidr, plan_subnets};
use flotilla_core::plan::network::usable_zones;
use flotilla_core::spec::VpcOptions;
use flotilla_core::tags;
use futures::future::join_all;

use crate::call::CallError;
use crate::call::Idempotency::{CreatesSomething, Safe};
use crate::instances::{filter, tag, tag_filter, tag_spec};
use crate::{Aws, Image};

// What the describes found, in the planner's terms.
use flotilla_core::plan::network::{
    DescribedGateway as FoundGateway, DescribedRouteTable as FoundRouteTable,
    DescribedSecurityGroup as FoundSecurityGroup, DescribedSubnet as FoundSubnet, DescribedVpc,
    Rule, TeardownStep, first_round_duplicates, keep_gateway, keep_route_table, keep_vpc,
    missing_rules, one_per_zone, second_round_duplicates, teardown_phases, unassociated,
    wanted_rules, zones_without_subnet,
};

fn name_tags(aws: &Aws, name: &str, role: &str) -> Vec<aws_sdk_ec2::types::Tag> {
    vec![
        tag("Name", name),
        tag(tags::OWNER, &aws.settings.owner),
        tag(tags::ROLE, role),
    ]
}

fn owner_filter(aws: &Aws) -> Filter {
    tag_filter(tags::OWNER, &aws.settings.owner)
}

/// Only the nodes' security group (`flotilla:role` `security-group`), not a load
/// balancer's.
fn node_group_filter() -> Filter {
    tag_filter(tags::ROLE, "security-group")
}

fn has_owner_tag(aws: &Aws, tags_of: &[aws_sdk_ec2::types::Tag]) -> bool {
    tags_of
        .iter()
        .any(|t| t.key() == Some(tags::OWNER) && t.value() == Some(aws.settings.owner.as_str()))
}

fn cloud_error(error: CallError) -> CloudError {
    error.into_cloud_error()
}

/// The id of a resource AWS just created: its absence is an error, never an empty id.
pub(crate) fn returned_id(id: Option<&str>, operation: &str) -> Result<String, CloudError> {
    id.map(str::to_owned).ok_or_else(|| CloudError::Other {
        operation: operation.to_owned(),
        message: "AWS answered without the new resource's id".to_owned(),
    })
}

/// Finds, creates or validates the network `request` asks for.
pub(crate) async fn ensure(aws: &Aws, request: &NetworkRequest) -> Result<Network, CloudError> {
    match &request.vpc {
        None => {
            // Two clusters deploying at once in a region would otherwise both find no
            // network and each create one; the loser's pass then fails on the gateway
            // attached to the other VPC. One ensure at a time per region: the second one
            // finds what the first made (by tag) and only describes.
            let held = hold_network(aws, &request.region).await;
            let ensured = ensure_auto(aws, request).await;
            release_network(aws, held).await;
            ensured
        }
        Some(vpc) => ensure_user_vpc(aws, request, vpc).await,
    }
}

/// `region`'s own network, held: no other ensure or teardown of it runs in this process (a
/// mutex per region) or among the server's replicas (the
/// [`flotilla_core::cloud::NetworkLock`] the server shared, if any). The work is not
/// passed in but run between [`hold_network`] and [`release_network`], so its (large)
/// future stays where it was.
type HeldNetwork = (tokio::sync::OwnedMutexGuard<()>, Option<Held>);

async fn hold_network(aws: &Aws, region: &str) -> HeldNetwork {
    let here = aws.network_lock(region).lock_owned().await;
    let shared = match aws.settings.network_lock.get() {
        Some(lock) => Some(lock.hold(region).await),
        None => None,
    };
    (here, shared)
}

async fn release_network(aws: &Aws, (here, shared): HeldNetwork) {
    if let (Some(lock), Some(held)) = (aws.settings.network_lock.get(), shared) {
        lock.release(held).await;
    }
    drop(here);
}

/// The AZs the network may use (`flotilla_core::plan::network::usable_zones`).
async fn candidate_zones(
    aws: &Aws,
    request: &NetworkRequest,
) -> Result<(Vec<String>, Vec<String>), CloudError> {
    usable_zones(request, &aws.zones_of(&request.region).await?)
}

async fn describe_subnets(
    aws: &Aws,
    region: &str,
    filters: Vec<Filter>,
) -> Result<Vec<FoundSubnet>, CallError> {
    let ec2 = aws.ec2(region);
    let output = aws
        .send(region, "DescribeSubnets", Safe, || {
            ec2.describe_subnets()
                .set_filters(Some(filters.clone()))
                .send()
        })
        .await?;
    let mut subnets: Vec<FoundSubnet> = output
        .subnets()
        .iter()
        .filter_map(|s| {
            Some(FoundSubnet {
                id: s.subnet_id()?.to_owned(),
                availability_zone: s.availability_zone().unwrap_or_default().to_owned(),
                cidr: s.cidr_block().unwrap_or_default().to_owned(),
                vpc_id: s.vpc_id()?.to_owned(),
                owned: has_owner_tag(aws, s.tags()),
            })
        })
        .collect();
    subnets.sort_by(|a, b| (&a.availability_zone, &a.id).cmp(&(&b.availability_zone, &b.id)));
    Ok(subnets)
}

async fn describe_gateways(
    aws: &Aws,
    region: &str,
    filters: Vec<Filter>,
) -> Result<Vec<FoundGateway>, CallError> {
    let ec2 = aws.ec2(region);
    let output = aws
        .send(region, "DescribeInternetGateways", Safe, || {
            ec2.describe_internet_gateways()
                .set_filters(Some(filters.clone()))
                .send()
        })
        .await?;
    let mut gateways: Vec<FoundGateway> = output
        .internet_gateways()
        .iter()
        .filter_map(|g| {
            Some(FoundGateway {
                id: g.internet_gateway_id()?.to_owned(),
                attached_to: g
                    .attachments()
                    .iter()
                    .filter_map(|a| a.vpc_id().map(str::to_owned))
                    .collect(),
            })
        })
        .collect();
    gateways.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(gateways)
}

async fn describe_route_tables(
    aws: &Aws,
    region: &str,
    filters: Vec<Filter>,
) -> Result<Vec<FoundRouteTable>, CallError> {
    let ec2 = aws.ec2(region);
    let output = aws
        .send(region, "DescribeRouteTables", Safe, || {
            ec2.describe_route_tables()
                .set_filters(Some(filters.clone()))
                .send()
        })
        .await?;
    let mut tables: Vec<FoundRouteTable> = output
        .route_tables()
        .iter()
        .filter_map(|t| {
            Some(FoundRouteTable {
                id: t.route_table_id()?.to_owned(),
                has_default_route: t.routes().iter().any(|r| {
                    r.destination_cidr_block() == Some("0.0.0.0/0")
                        && r.gateway_id().is_some_and(|g| g.starts_with("igw-"))
                }),
                associations: t
                    .associations()
                    .iter()
                    .filter(|a| a.main() != Some(true))
                    .filter_map(|a| {
                        Some((
                            a.route_table_association_id()?.to_owned(),
                            a.subnet_id()?.to_owned(),
                        ))
                    })
                    .collect(),
            })
        })
        .collect();
    tables.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(tables)
}

async fn describe_security_groups(
    aws: &Aws,
    region: &str,
    filters: Vec<Filter>,
    ids: Vec<String>,
) -> Result<Vec<FoundSecurityGroup>, CallError> {
    let ec2 = aws.ec2(region);
    let output = aws
        .send(region, "DescribeSecurityGroups", Safe, || {
            ec2.describe_security_groups()
                .set_filters((!filters.is_empty()).then(|| filters.clone()))
                .set_group_ids((!ids.is_empty()).then(|| ids.clone()))
                .send()
        })
        .await?;
    let mut groups: Vec<FoundSecurityGroup> = output
        .security_groups()
        .iter()
        .filter_map(|g| {
            Some(FoundSecurityGroup {
                id: g.group_id()?.to_owned(),
                vpc_id: g.vpc_id()?.to_owned(),
                rules: g
                    .ip_permissions()
                    .iter()
                    .flat_map(|p| {
                        let protocol = p.ip_protocol().unwrap_or("-1").to_owned();
                        let (from, to) = (p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1));
                        p.ip_ranges()
                            .iter()
                            .filter_map(move |r| {
                                Some((protocol.clone(), from, to, r.cidr_ip()?.to_owned()))
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect(),
            })
        })
        .collect();
    groups.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(groups)
}

/// Dry-runs a launch of the node type in one AZ: `Ok(None)` when it would succeed,
/// `Ok(Some(reason))` when the AZ cannot take this node type, `Err` for problems that are not
/// about the AZ (credentials, permissions, throttling that outlasted the retries).
async fn dry_run_in_zone(
    aws: &Aws,
    request: &NetworkRequest,
    image: &Image,
    zone: &str,
) -> Result<Option<String>, CloudError> {
    let ec2 = aws.ec2(&request.region);
    let result = aws
        .send(&request.region, "RunInstances", Safe, || {
            let mut call = ec2
                .run_instances()
                .dry_run(true)
                .image_id(&image.id)
                .instance_type(InstanceType::from(request.node_type.as_str()))
                .min_count(1)
                .max_count(1)
                .placement(Placement::builder().availability_zone(zone).build());
            if let Some(profile) = &request.instance_profile_name {
                call = call.iam_instance_profile(
                    aws_sdk_ec2::types::IamInstanceProfileSpecification::builder()
                        .name(profile)
                        .build(),
                );
            }
            call.send()
        })
        .await;
    match result {
        Ok(_) => Ok(None),
        Err(error) if error.is("DryRunOperation") => Ok(None),
        // Accounts without a default VPC answer this once permissions and the type were
        // accepted: the AZ is fine, it just needs the subnet we are about to create.
        Err(error) if error.is("VPCIdNotSpecified") => Ok(None),
        Err(error)
            if matches!(
                error.code(),
                "Unsupported"
                    | "InsufficientInstanceCapacity"
                    | "InvalidParameterValue"
                    | "InvalidParameterCombination"
            ) =>
        {
            Ok(Some(format!(
                "dry-run launch of {} failed: {}: {}",
                request.node_type,
                error.code(),
                error.message
            )))
        }
        Err(error) => Err(cloud_error(error)),
    }
}

/// Dry-runs every zone concurrently; returns the zones that passed and the skipped ones.
async fn dry_run_zones(
    aws: &Aws,
    request: &NetworkRequest,
    image: &Image,
    zones: &[String],
) -> Result<(Vec<String>, Vec<SkippedAz>), CloudError> {
    let results = join_all(
        zones
            .iter()
            .map(|z| dry_run_in_zone(aws, request, image, z)),
    )
    .await;
    let mut passed = Vec::new();
    let mut skipped = Vec::new();
    for (zone, result) in zones.iter().zip(results) {
        match result? {
            None => passed.push(zone.clone()),
            Some(reason) => skipped.push(SkippedAz {
                availability_zone: zone.clone(),
                reason,
            }),
        }
    }
    Ok((passed, skipped))
}

/// Creates a `dc-subnet` per zone from the plan; a zone whose subnet AWS refuses (a CIDR
/// conflict with a subnet the user made) is skipped with AWS's reason.
async fn create_subnets(
    aws: &Aws,
    region: &str,
    vpc_id: &str,
    vpc_cidr: Ipv4Cidr,
    region_zones: &[String],
    zones: &[String],
) -> Result<(Vec<Subnet>, Vec<SkippedAz>), CloudError> {
    let plan = plan_subnets(vpc_cidr, region_zones).map_err(|e| CloudError::InvalidResource {
        field: "provider_options.vpc.id".into(),
        message: e.to_string(),
    })?;
    let ec2 = aws.ec2(region);
    let creations = zones
        .iter()
        .filter_map(|zone| plan.for_az(zone))
        .map(|planned| {
            let ec2 = ec2.clone();
            async move {
                let cidr = planned.cidr.to_string();
                let result = aws
                    .send(region, "CreateSubnet", CreatesSomething, || {
                        ec2.create_subnet()
                            .vpc_id(vpc_id)
                            .cidr_block(&cidr)
                            .availability_zone(&planned.availability_zone)
                            .tag_specifications(tag_spec(
                                ResourceType::Subnet,
                                name_tags(aws, tags::NAME_SUBNET, "subnet"),
                            ))
                            .send()
                    })
                    .await;
                (planned, result)
            }
        });
    let mut created = Vec::new();
    let mut skipped = Vec::new();
    for (planned, result) in join_all(creations).await {
        match result {
            Ok(output) => {
                let id = returned_id(output.subnet().and_then(|s| s.subnet_id()), "CreateSubnet")?;
                created.push(Subnet {
                    id,
                    availability_zone: planned.availability_zone.clone(),
                    cidr: planned.cidr.to_string(),
                    managed: true,
                });
            }
            Err(error)
                if error.starts_with("InvalidSubnet") || error.is("InvalidParameterValue") =>
            {
                skipped.push(SkippedAz {
                    availability_zone: planned.availability_zone.clone(),
                    reason: format!(
                        "cannot create subnet {}: {}: {}",
                        planned.cidr,
                        error.code(),
                        error.message
                    ),
                });
            }
            Err(error) => return Err(cloud_error(error)),
        }
    }
    Ok((created, skipped))
}

async fn authorize_missing(
    aws: &Aws,
    region: &str,
    group: &FoundSecurityGroup,
    wanted: &BTreeSet<Rule>,
) -> Result<Vec<String>, CloudError> {
    let missing = missing_rules(wanted, group);
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let permissions: Vec<IpPermission> = missing
        .iter()
        .map(|(protocol, from, to, cidr)| {
            let mut permission = IpPermission::builder().ip_protocol(protocol).ip_ranges(
                IpRange::builder()
                    .cidr_ip(cidr)
                    .description("flotilla")
                    .build(),
            );
            if protocol != "-1" {
                permission = permission.from_port(*from).to_port(*to);
            }
            permission.build()
        })
        .collect();
    let ec2 = aws.ec2(region);
    let result = aws
        .send(region, "AuthorizeSecurityGroupIngress", Safe, || {
            ec2.authorize_security_group_ingress()
                .group_id(&group.id)
                .set_ip_permissions(Some(permissions.clone()))
                .send()
        })
        .await;
    match result {
        Ok(_) => {}
        Err(error) if error.is("InvalidPermission.Duplicate") => {}
        Err(error) => return Err(cloud_error(error)),
    }
    Ok(missing
        .iter()
        .map(|(protocol, from, _, cidr)| {
            let what = if protocol == "-1" {
                "all traffic".to_owned()
            } else {
                format!("{protocol}/{from}")
            };
            format!("security group {}: allowed {what} from {cidr}", group.id)
        })
        .collect())
}

async fn create_security_group(
    aws: &Aws,
    region: &str,
    vpc_id: &str,
) -> Result<FoundSecurityGroup, CloudError> {
    let ec2 = aws.ec2(region);
    let name = format!("{}-{}", tags::NAME_SECURITY_GROUP, vpc_id);
    let result = aws
        .send(region, "CreateSecurityGroup", CreatesSomething, || {
            ec2.create_security_group()
                .group_name(&name)
                .description("Flotilla nodes: open inside the VPC, management ports only from configured networks")
                .vpc_id(vpc_id)
                .tag_specifications(tag_spec(
                    ResourceType::SecurityGroup,
                    name_tags(aws, tags::NAME_SECURITY_GROUP, "security-group"),
                ))
                .send()
        })
        .await;
    let output = match result {
        Ok(output) => output,
        // Another deploy into the same VPC created it since we looked (the name is ours
        // and deterministic): use that one.
        Err(error) if error.is("InvalidGroup.Duplicate") => {
            let found = describe_security_groups(
                aws,
                region,
                vec![filter("vpc-id", &[vpc_id]), filter("group-name", &[&name])],
                Vec::new(),
            )
            .await
            .map_err(cloud_error)?;
            return found.into_iter().next().ok_or_else(|| CloudError::Other {
                operation: format!("CreateSecurityGroup in {region}"),
                message: format!("{name} exists in {vpc_id} but cannot be described"),
            });
        }
        Err(error) => return Err(cloud_error(error)),
    };
    Ok(FoundSecurityGroup {
        id: returned_id(output.group_id(), "CreateSecurityGroup")?,
        vpc_id: vpc_id.to_owned(),
        rules: BTreeSet::new(),
    })
}

async fn ensure_auto(aws: &Aws, request: &NetworkRequest) -> Result<Network, CloudError> {
    let region = request.region.as_str();
    let ec2 = aws.ec2(region);
    let mut changes = Vec::new();

    // Round 1: what exists.
    let vpc_filters = vec![owner_filter(aws), tag_filter("Name", tags::NAME_VPC)];
    let (zones, image, vpcs, subnets, gateways, profile) = tokio::join!(
        candidate_zones(aws, request),
        aws.image_for(region, request.image_id.as_deref()),
        aws.send(region, "DescribeVpcs", Safe, || ec2
            .describe_vpcs()
            .set_filters(Some(vpc_filters.clone()))
            .send()),
        describe_subnets(
            aws,
            region,
            vec![owner_filter(aws), tag_filter("Name", tags::NAME_SUBNET)]
        ),
        describe_gateways(aws, region, vec![owner_filter(aws)]),
        async {
            match &request.instance_profile_name {
                Some(name) => check_instance_profile(aws, name).await,
                None => Ok(()),
            }
        },
    );
    profile?;
    let (region_zones, candidates) = zones?;
    let image = image?;
    let vpcs = vpcs.map_err(cloud_error)?;
    let subnets = subnets.map_err(cloud_error)?;
    let gateways = gateways.map_err(cloud_error)?;
    let existing_vpcs: Vec<DescribedVpc> = vpcs
        .vpcs()
        .iter()
        .filter_map(|v| {
            Some(DescribedVpc {
                id: v.vpc_id()?.to_owned(),
                cidr: v.cidr_block()?.to_owned(),
            })
        })
        .collect();
    let kept_vpc = keep_vpc(&existing_vpcs);
    let existing_vpc = kept_vpc.as_ref().map(|v| (v.id.clone(), v.cidr.clone()));
    // A create still in flight when an earlier run crashed can land after this run looked:
    // then there are two. The planner keeps one; the others go in round 4 if unused.
    let gateway = keep_gateway(kept_vpc.as_ref(), &gateways);
    let existing_plan = existing_vpc
        .as_ref()
        .and_then(|(_, cidr)| cidr.parse::<Ipv4Cidr>().ok())
        .and_then(|cidr| plan_subnets(cidr, &region_zones).ok());
    let mut duplicates = first_round_duplicates(
        &existing_vpcs,
        &subnets,
        &gateways,
        kept_vpc.as_ref(),
        gateway.as_ref(),
    );

    // Round 2: the VPC and the gateway; dry runs; details of what hangs off an existing VPC.
    let missing_zones: Vec<String> = match &existing_vpc {
        Some((vpc_id, _)) => zones_without_subnet(
            &candidates,
            &one_per_zone(&subnets, vpc_id, &candidates, existing_plan.as_ref()),
        ),
        None => candidates.clone(),
    };
    let vpc_known = existing_vpc.as_ref().map(|(id, _)| id.clone());
    let (vpc, gateway, dry_runs, tables, groups) = tokio::join!(
        async {
            if let Some(found) = &existing_vpc {
                return Ok((found.0.clone(), found.1.clone(), false));
            }
            let output = aws
                .send(region, "CreateVpc", CreatesSomething, || {
                    ec2.create_vpc()
                        .cidr_block(DEFAULT_VPC_CIDR)
                        .tag_specifications(tag_spec(
                            ResourceType::Vpc,
                            name_tags(aws, tags::NAME_VPC, "vpc"),
                        ))
                        .send()
                })
                .await
                .map_err(cloud_error)?;
            let id = output.vpc().and_then(|v| v.vpc_id());
            let id = returned_id(id, "CreateVpc")?;
            Ok::<_, CloudError>((id, DEFAULT_VPC_CIDR.to_owned(), true))
        },
        async {
            if let Some(found) = &gateway {
                return Ok((found.clone(), false));
            }
            let output = aws
                .send(region, "CreateInternetGateway", CreatesSomething, || {
                    ec2.create_internet_gateway()
                        .tag_specifications(tag_spec(
                            ResourceType::InternetGateway,
                            name_tags(aws, tags::NAME_GATEWAY, "gateway"),
                        ))
                        .send()
                })
                .await
                .map_err(cloud_error)?;
            let id = output
                .internet_gateway()
                .and_then(|g| g.internet_gateway_id());
            let id = returned_id(id, "CreateInternetGateway")?;
            Ok::<_, CloudError>((
                FoundGateway {
                    id,
                    attached_to: Vec::new(),
                },
                true,
            ))
        },
        dry_run_zones(aws, request, &image, &missing_zones),
        async {
            match &vpc_known {
                Some(vpc_id) => {
                    describe_route_tables(
                        aws,
                        region,
                        vec![owner_filter(aws), filter("vpc-id", &[vpc_id])],
                    )
                    .await
                }
                None => Ok(Vec::new()),
            }
        },
        async {
            match &vpc_known {
                Some(vpc_id) => {
                    // The nodes' group only: a swarm's load balancer has its own group in
                    // the VPC (`lb`), which is neither the node group nor a twin of it.
                    describe_security_groups(
                        aws,
                        region,
                        vec![
                            owner_filter(aws),
                            node_group_filter(),
                            filter("vpc-id", &[vpc_id]),
                        ],
                        Vec::new(),
                    )
                    .await
                }
                None => Ok(Vec::new()),
            }
        },
    );
    let (vpc_id, vpc_cidr_text, vpc_created) = vpc?;
    let (gateway, gateway_created) = gateway?;
    let (zones_to_create, mut skipped) = dry_runs?;
    let tables = tables.map_err(cloud_error)?;
    let groups = groups.map_err(cloud_error)?;
    let table = keep_route_table(&tables);
    let group = groups.first().cloned();
    let kept_subnets = match &existing_vpc {
        Some((vpc_id, _)) => one_per_zone(&subnets, vpc_id, &candidates, existing_plan.as_ref()),
        None => BTreeMap::new(),
    };
    duplicates.extend(second_round_duplicates(
        &tables,
        table.as_ref(),
        &groups,
        &subnets,
        existing_vpc.as_ref().map(|(id, _)| id.as_str()),
        &kept_subnets,
    ));
    if vpc_created {
        changes.push(format!(
            "created VPC {vpc_id} ({vpc_cidr_text}, {})",
            tags::NAME_VPC
        ));
    }
    if gateway_created {
        changes.push(format!(
            "created internet gateway {} ({})",
            gateway.id,
            tags::NAME_GATEWAY
        ));
    }
    let vpc_cidr: Ipv4Cidr =
        vpc_cidr_text
            .parse()
            .map_err(|e: flotilla_core::network::CidrError| CloudError::Other {
                operation: "DescribeVpcs".into(),
                message: e.to_string(),
            })?;
    if let Some(attached) = gateway.attached_to.iter().find(|v| **v != vpc_id) {
        return Err(CloudError::Other {
            operation: format!("AttachInternetGateway in {region}"),
            message: format!(
                "internet gateway {} is attached to {attached}, not to {vpc_id}",
                gateway.id
            ),
        });
    }

    // Round 3: subnets, route table, security group, gateway attachment.
    let (created_subnets, table, group, attach) = tokio::join!(
        create_subnets(
            aws,
            region,
            &vpc_id,
            vpc_cidr,
            &region_zones,
            &zones_to_create
        ),
        async {
            if let Some(table) = &table {
                return Ok((table.clone(), false));
            }
            let output = aws
                .send(region, "CreateRouteTable", CreatesSomething, || {
                    ec2.create_route_table()
                        .vpc_id(&vpc_id)
                        .tag_specifications(tag_spec(
                            ResourceType::RouteTable,
                            name_tags(aws, tags::NAME_ROUTE_TABLE, "route-table"),
                        ))
                        .send()
                })
                .await
                .map_err(cloud_error)?;
            let id = output.route_table().and_then(|t| t.route_table_id());
            let id = returned_id(id, "CreateRouteTable")?;
            Ok::<_, CloudError>((
                FoundRouteTable {
                    id,
                    has_default_route: false,
                    associations: Vec::new(),
                },
                true,
            ))
        },
        async {
            match &group {
                Some(group) => Ok((group.clone(), false)),
                None => create_security_group(aws, region, &vpc_id)
                    .await
                    .map(|g| (g, true)),
            }
        },
        async {
            if gateway.attached_to.contains(&vpc_id) {
                return Ok(false);
            }
            let result = aws
                .send(region, "AttachInternetGateway", Safe, || {
                    ec2.attach_internet_gateway()
                        .internet_gateway_id(&gateway.id)
                        .vpc_id(&vpc_id)
                        .send()
                })
                .await;
            match result {
                Ok(_) => Ok(true),
                Err(error) if error.is("Resource.AlreadyAssociated") => Ok(false),
                Err(error) => Err(cloud_error(error)),
            }
        },
    );
    let (created_subnets, refused) = created_subnets?;
    skipped.extend(refused);
    let (table, table_created) = table?;
    let (group, group_created) = group?;
    if attach? {
        changes.push(format!(
            "attached internet gateway {} to {vpc_id}",
            gateway.id
        ));
    }
    if table_created {
        changes.push(format!(
            "created route table {} ({})",
            table.id,
            tags::NAME_ROUTE_TABLE
        ));
    }
    if group_created {
        changes.push(format!(
            "created security group {} ({})",
            group.id,
            tags::NAME_SECURITY_GROUP
        ));
    }
    for subnet in &created_subnets {
        changes.push(format!(
            "created subnet {} ({}) in {}",
            subnet.id, subnet.cidr, subnet.availability_zone
        ));
    }
    let mut usable: Vec<Subnet> =
        one_per_zone(&subnets, &vpc_id, &candidates, existing_plan.as_ref())
            .into_values()
            .map(|s| Subnet {
                id: s.id,
                availability_zone: s.availability_zone,
                cidr: s.cidr,
                managed: true,
            })
            .chain(created_subnets)
            .collect();
    usable.sort_by(|a, b| (&a.availability_zone, &a.id).cmp(&(&b.availability_zone, &b.id)));

    // Round 4: default route, associations, security group rules.
    let wanted = wanted_rules(request, &vpc_cidr_text);
    let unassociated: Vec<&Subnet> = unassociated(&usable, |s| s.id.as_str(), &table);
    let (route, associations, rules, removed) = tokio::join!(
        async {
            if table.has_default_route {
                return Ok(false);
            }
            let result = aws
                .send(region, "CreateRoute", Safe, || {
                    ec2.create_route()
                        .route_table_id(&table.id)
                        .destination_cidr_block("0.0.0.0/0")
                        .gateway_id(&gateway.id)
                        .send()
                })
                .await;
            match result {
                Ok(_) => Ok(true),
                Err(error) if error.is("RouteAlreadyExists") => Ok(false),
                Err(error) => Err(cloud_error(error)),
            }
        },
        join_all(unassociated.iter().map(|subnet| {
            let ec2 = ec2.clone();
            let table_id = table.id.clone();
            async move {
                let result = aws
                    .send(region, "AssociateRouteTable", Safe, || {
                        ec2.associate_route_table()
                            .route_table_id(&table_id)
                            .subnet_id(&subnet.id)
                            .send()
                    })
                    .await;
                match result {
                    Ok(_) => Ok(Some(format!(
                        "associated route table {table_id} with {}",
                        subnet.id
                    ))),
                    Err(error) if error.is("Resource.AlreadyAssociated") => Ok(None),
                    Err(error) => Err(cloud_error(error)),
                }
            }
        })),
        authorize_missing(aws, region, &group, &wanted),
        remove_duplicates(aws, region, &duplicates),
    );
    changes.extend(removed);
    if route? {
        changes.push(format!(
            "added route 0.0.0.0/0 -> {} to {}",
            gateway.id, table.id
        ));
    }
    for association in associations {
        changes.extend(association?);
    }
    changes.extend(rules?);

    Ok(Network {
        region: region.to_owned(),
        vpc_id,
        vpc_cidr,
        managed: true,
        subnets: usable,
        security_groups: vec![group.id],
        image_id: image.id,
        skipped_azs: skipped,
        changes,
    })
}

/// Deletes duplicates left by a crashed run; one that is still in use (an instance in a
/// duplicate subnet, a route table association) is left alone and reported, never forced.
async fn remove_duplicates(
    aws: &Aws,
    region: &str,
    duplicates: &[(&'static str, String)],
) -> Vec<String> {
    let results = join_all(
        duplicates
            .iter()
            .map(|(kind, id)| delete_simple(aws, region, kind, id)),
    )
    .await;
    duplicates
        .iter()
        .zip(results)
        .map(|((kind, id), result)| match result {
            Ok(_) => format!("removed duplicate {kind} {id} (left by an interrupted run)"),
            Err(error) => format!("kept duplicate {kind} {id}: {error}"),
        })
        .collect()
}

fn invalid(field: &str, message: String) -> CloudError {
    CloudError::InvalidResource {
        field: field.to_owned(),
        message,
    }
}

/// Checks that the instance profile exists (IAM is global).
async fn check_instance_profile(aws: &Aws, name: &str) -> Result<(), CloudError> {
    let iam = aws.iam();
    let home = aws.settings.home_region.clone();
    let result = aws
        .send(&home, "GetInstanceProfile", Safe, || {
            iam.get_instance_profile()
                .instance_profile_name(name)
                .send()
        })
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(error) if error.is("NoSuchEntity") => Err(invalid(
            "provider_options.iam.instance_profile_name",
            format!("instance profile '{name}' does not exist"),
        )),
        Err(error) => Err(cloud_error(error)),
    }
}

/// Checks, with describe calls only, that every resource `request` names exists and fits:
/// the user's VPC with its chosen subnets and security groups, and the instance profile.
pub(crate) async fn check(aws: &Aws, request: &NetworkRequest) -> Result<(), CloudError> {
    match &request.vpc {
        Some(options) => check_user_vpc(aws, request, options).await.map(|_| ()),
        None => match &request.instance_profile_name {
            Some(name) => check_instance_profile(aws, name).await,
            None => Ok(()),
        },
    }
}

/// A user's VPC in which everything the request names exists and belongs to it.
struct CheckedUserVpc {
    cidr: Ipv4Cidr,
    /// The chosen security groups, or (none chosen) ours in this VPC, if any.
    groups: Vec<FoundSecurityGroup>,
    subnets: UserSubnets,
}

/// Which subnets of a user's VPC nodes go to.
enum UserSubnets {
    /// The chosen ones, or ours from an earlier pass.
    Use(Vec<Subnet>),
    /// The VPC has no subnet at all: plan and create dc-subnets in it.
    CreateInEmptyVpc,
}

/// The describe-only half of [`ensure_user_vpc`], shared with [`check`]: the VPC, its
/// subnets, the chosen or our security groups and the instance profile, each missing or
/// misplaced id named in a [`CloudError::InvalidResource`].
async fn check_user_vpc(
    aws: &Aws,
    request: &NetworkRequest,
    options: &VpcOptions,
) -> Result<CheckedUserVpc, CloudError> {
    let region = request.region.as_str();
    let ec2 = aws.ec2(region);
    let chosen_groups = &options.security_groups;
    let (vpcs, subnets, groups, profile) = tokio::join!(
        aws.send(region, "DescribeVpcs", Safe, || ec2
            .describe_vpcs()
            .vpc_ids(&options.id)
            .send()),
        describe_subnets(aws, region, vec![filter("vpc-id", &[&options.id])]),
        async {
            if chosen_groups.is_empty() {
                describe_security_groups(
                    aws,
                    region,
                    vec![
                        owner_filter(aws),
                        node_group_filter(),
                        filter("vpc-id", &[&options.id]),
                    ],
                    Vec::new(),
                )
                .await
            } else {
                describe_security_groups(aws, region, Vec::new(), chosen_groups.clone()).await
            }
        },
        async {
            match &request.instance_profile_name {
                Some(name) => check_instance_profile(aws, name).await,
                None => Ok(()),
            }
        },
    );
    let vpc = match vpcs {
        Ok(output) => output.vpcs().first().cloned(),
        Err(error) if error.starts_with("InvalidVpcID") => None,
        Err(error) => return Err(cloud_error(error)),
    };
    let Some(vpc) = vpc else {
        return Err(invalid(
            "provider_options.vpc.id",
            format!("VPC {} does not exist in {region}", options.id),
        ));
    };
    let vpc_cidr: Ipv4Cidr = vpc.cidr_block().unwrap_or_default().parse().map_err(
        |e: flotilla_core::network::CidrError| invalid("provider_options.vpc.id", e.to_string()),
    )?;
    let subnets = subnets.map_err(cloud_error)?;
    profile?;
    let groups = match groups {
        Ok(groups) => groups,
        Err(error) if error.starts_with("InvalidGroup") => {
            let message = if error.message.is_empty() {
                error.code().to_owned()
            } else {
                error.message.clone()
            };
            return Err(invalid(
                "provider_options.vpc.security_groups",
                format!("security group does not exist: {message}"),
            ));
        }
        Err(error) => return Err(cloud_error(error)),
    };
    for id in chosen_groups {
        match groups.iter().find(|g| &g.id == id) {
            None => {
                return Err(invalid(
                    "provider_options.vpc.security_groups",
                    format!("security group {id} does not exist in {region}"),
                ));
            }
            Some(group) if group.vpc_id != options.id => {
                return Err(invalid(
                    "provider_options.vpc.security_groups",
                    format!(
                        "security group {id} belongs to {}, not to {}",
                        group.vpc_id, options.id
                    ),
                ));
            }
            Some(_) => {}
        }
    }

    // The subnets: the chosen ones, or ours in this VPC, or new dc-subnets in an empty VPC.
    let chosen = if !options.subnets.is_empty() {
        let mut chosen = Vec::new();
        for id in &options.subnets {
            match subnets.iter().find(|s| &s.id == id) {
                Some(s) => chosen.push(Subnet {
                    id: s.id.clone(),
                    availability_zone: s.availability_zone.clone(),
                    cidr: s.cidr.clone(),
                    managed: s.owned,
                }),
                None => {
                    // Say whether it is missing or in another VPC.
                    let elsewhere = describe_subnets(aws, region, vec![filter("subnet-id", &[id])])
                        .await
                        .map_err(cloud_error)?;
                    let message = match elsewhere.first() {
                        Some(other) => format!(
                            "subnet {id} belongs to {}, not to {}",
                            other.vpc_id, options.id
                        ),
                        None => format!("subnet {id} does not exist in {region}"),
                    };
                    return Err(invalid("provider_options.vpc.subnets", message));
                }
            }
        }
        UserSubnets::Use(chosen)
    } else if subnets.iter().any(|s| s.owned) {
        UserSubnets::Use(
            subnets
                .iter()
                .filter(|s| s.owned)
                .map(|s| Subnet {
                    id: s.id.clone(),
                    availability_zone: s.availability_zone.clone(),
                    cidr: s.cidr.clone(),
                    managed: true,
                })
                .collect(),
        )
    } else if subnets.is_empty() {
        UserSubnets::CreateInEmptyVpc
    } else {
        let ids: Vec<&str> = subnets.iter().map(|s| s.id.as_str()).collect();
        return Err(invalid(
            "provider_options.vpc.subnets",
            format!(
                "{} already has subnets ({}); choose the ones to use",
                options.id,
                ids.join(", ")
            ),
        ));
    };
    Ok(CheckedUserVpc {
        cidr: vpc_cidr,
        groups,
        subnets: chosen,
    })
}

async fn ensure_user_vpc(
    aws: &Aws,
    request: &NetworkRequest,
    options: &VpcOptions,
) -> Result<Network, CloudError> {
    let region = request.region.as_str();
    let mut changes = Vec::new();
    let chosen_groups = options.security_groups.clone();

    // Round 1: the zones and the image, with the checks of everything the user named.
    let (zones, image, checked) = tokio::join!(
        candidate_zones(aws, request),
        aws.image_for(region, request.image_id.as_deref()),
        check_user_vpc(aws, request, options),
    );
    let CheckedUserVpc {
        cidr: vpc_cidr,
        groups,
        subnets,
    } = checked?;
    let (region_zones, candidates) = zones?;
    let image = image?;

    let mut skipped = Vec::new();
    let usable: Vec<Subnet> = match subnets {
        UserSubnets::Use(subnets) => subnets,
        UserSubnets::CreateInEmptyVpc => {
            let (passed, dry_run_skipped) =
                dry_run_zones(aws, request, &image, &candidates).await?;
            skipped.extend(dry_run_skipped);
            let (created, refused) =
                create_subnets(aws, region, &options.id, vpc_cidr, &region_zones, &passed).await?;
            skipped.extend(refused);
            for subnet in &created {
                changes.push(format!(
                    "created subnet {} ({}) in {} of {}",
                    subnet.id, subnet.cidr, subnet.availability_zone, options.id
                ));
            }
            created
        }
    };

    // Security groups: the chosen ones, else ours in this VPC (created when missing).
    let security_groups = if !chosen_groups.is_empty() {
        chosen_groups
    } else {
        let (group, created) = match groups.into_iter().next() {
            Some(group) => (group, false),
            None => (create_security_group(aws, region, &options.id).await?, true),
        };
        if created {
            changes.push(format!(
                "created security group {} in {}",
                group.id, options.id
            ));
        }
        changes.extend(
            authorize_missing(
                aws,
                region,
                &group,
                &wanted_rules(request, &vpc_cidr.to_string()),
            )
            .await?,
        );
        vec![group.id]
    };

    let mut usable = usable;
    usable.sort_by(|a, b| (&a.availability_zone, &a.id).cmp(&(&b.availability_zone, &b.id)));
    Ok(Network {
        region: region.to_owned(),
        vpc_id: options.id.clone(),
        vpc_cidr,
        managed: false,
        subnets: usable,
        security_groups,
        image_id: image.id,
        skipped_azs: skipped,
        changes,
    })
}

/// States in which an instance still occupies a subnet.
const LIVE_STATES: &[&str] = &["pending", "running", "stopping", "stopped", "shutting-down"];

/// Deletes every network resource with our owner tag in the region, in dependency order,
/// one ensure or teardown of the region at a time.
pub(crate) async fn teardown(aws: &Aws, region: &str) -> Result<TeardownReport, CloudError> {
    let held = hold_network(aws, region).await;
    let report = teardown_now(aws, region).await;
    release_network(aws, held).await;
    report
}

async fn teardown_now(aws: &Aws, region: &str) -> Result<TeardownReport, CloudError> {
    let ec2 = aws.ec2(region);
    let (vpcs, subnets, gateways, tables, groups) = tokio::join!(
        aws.send(region, "DescribeVpcs", Safe, || ec2
            .describe_vpcs()
            .filters(owner_filter(aws))
            .send()),
        describe_subnets(aws, region, vec![owner_filter(aws)]),
        describe_gateways(aws, region, vec![owner_filter(aws)]),
        describe_route_tables(aws, region, vec![owner_filter(aws)]),
        describe_security_groups(aws, region, vec![owner_filter(aws)], Vec::new()),
    );
    let vpcs: Vec<String> = vpcs
        .map_err(cloud_error)?
        .vpcs()
        .iter()
        .filter_map(|v| v.vpc_id().map(str::to_owned))
        .collect();
    let subnets = subnets.map_err(cloud_error)?;
    let gateways = gateways.map_err(cloud_error)?;
    let tables = tables.map_err(cloud_error)?;
    let groups = groups.map_err(cloud_error)?;
    if vpcs.is_empty()
        && subnets.is_empty()
        && gateways.is_empty()
        && tables.is_empty()
        && groups.is_empty()
    {
        return Ok(TeardownReport::default());
    }

    // Nothing is deleted while an instance (ours or anyone's) still sits in what we would
    // delete; instances that are shutting down are waited for.
    let subnet_ids: Vec<&str> = subnets.iter().map(|s| s.id.as_str()).collect();
    let vpc_ids: Vec<&str> = vpcs.iter().map(String::as_str).collect();
    let mut waited = Duration::ZERO;
    loop {
        let mut blocking = Vec::new();
        for (name, ids) in [("subnet-id", &subnet_ids), ("vpc-id", &vpc_ids)] {
            if ids.is_empty() {
                continue;
            }
            let output = aws
                .send(region, "DescribeInstances", Safe, || {
                    ec2.describe_instances()
                        .filters(filter(name, ids))
                        .filters(filter("instance-state-name", LIVE_STATES))
                        .send()
                })
                .await
                .map_err(cloud_error)?;
            for instance in output.reservations().iter().flat_map(|r| r.instances()) {
                let Some(id) = instance.instance_id().map(str::to_owned) else {
                    continue;
                };
                let state = instance
                    .state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_default();
                if !blocking.iter().any(|(b, _): &(String, String)| *b == id) {
                    blocking.push((id, state));
                }
            }
        }
        if blocking.is_empty() {
            break;
        }
        let all_leaving = blocking.iter().all(|(_, state)| state == "shutting-down");
        if !all_leaving || waited >= Duration::from_secs(600) {
            let list: Vec<String> = blocking
                .iter()
                .map(|(id, state)| format!("{id} ({state})"))
                .collect();
            return Err(CloudError::DependencyViolation {
                resource: "network".into(),
                id: vpcs
                    .first()
                    .cloned()
                    .unwrap_or_else(|| subnet_ids.join(",")),
                blocking: format!("instances still use it: {}", list.join(", ")),
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        waited += Duration::from_secs(2);
    }

    // The order is the planner's: phases whose steps run concurrently.
    let mut deleted = Vec::new();
    for phase in teardown_phases(&vpcs, &subnets, &gateways, &tables, &groups) {
        let results = join_all(phase.iter().map(|step| teardown_step(aws, region, step))).await;
        for result in results {
            deleted.push(result?);
        }
    }
    Ok(TeardownReport { deleted })
}

/// Carries out one teardown step; "already gone" is success.
async fn teardown_step(aws: &Aws, region: &str, step: &TeardownStep) -> Result<String, CloudError> {
    let ec2 = aws.ec2(region);
    match step {
        TeardownStep::Disassociate {
            association,
            subnet,
        } => {
            let result = aws
                .send(region, "DisassociateRouteTable", Safe, || {
                    ec2.disassociate_route_table()
                        .association_id(association)
                        .send()
                })
                .await;
            ignore_missing(result, "InvalidAssociationID").map_err(cloud_error)?;
            Ok(format!(
                "detached route table association {association} ({subnet})"
            ))
        }
        TeardownStep::DetachGateway { gateway, vpc } => {
            let result = aws
                .send(region, "DetachInternetGateway", Safe, || {
                    ec2.detach_internet_gateway()
                        .internet_gateway_id(gateway)
                        .vpc_id(vpc)
                        .send()
                })
                .await;
            ignore_missing(result, "Gateway.NotAttached")
                .or_else(|e| {
                    if e.starts_with("InvalidInternetGatewayID") {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(cloud_error)?;
            Ok(format!("detached gateway attachment {gateway} -> {vpc}"))
        }
        TeardownStep::DeleteSecurityGroup(id) => {
            delete_simple(aws, region, "security group", id).await
        }
        TeardownStep::DeleteRouteTable(id) => delete_simple(aws, region, "route table", id).await,
        TeardownStep::DeleteSubnet(id) => delete_simple(aws, region, "subnet", id).await,
        TeardownStep::DeleteGateway(id) => delete_simple(aws, region, "internet gateway", id).await,
        TeardownStep::DeleteVpc(id) => delete_simple(aws, region, "VPC", id).await,
    }
}

fn ignore_missing<T>(result: Result<T, CallError>, code_prefix: &str) -> Result<(), CallError> {
    match result {
        Ok(_) => Ok(()),
        Err(error) if error.starts_with(code_prefix) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Deletes one resource by id; "not found" is success, a dependency violation names what
/// still uses the resource.
async fn delete_simple(
    aws: &Aws,
    region: &str,
    kind: &'static str,
    id: &str,
) -> Result<String, CloudError> {
    let ec2 = aws.ec2(region);
    let result = match kind {
        "route table" => aws
            .send(region, "DeleteRouteTable", Safe, || {
                ec2.delete_route_table().route_table_id(id).send()
            })
            .await
            .map(|_| ()),
        "subnet" => aws
            .send(region, "DeleteSubnet", Safe, || {
                ec2.delete_subnet().subnet_id(id).send()
            })
            .await
            .map(|_| ()),
        "internet gateway" => aws
            .send(region, "DeleteInternetGateway", Safe, || {
                ec2.delete_internet_gateway().internet_gateway_id(id).send()
            })
            .await
            .map(|_| ()),
        "security group" => aws
            .send(region, "DeleteSecurityGroup", Safe, || {
                ec2.delete_security_group().group_id(id).send()
            })
            .await
            .map(|_| ()),
        _ => aws
            .send(region, "DeleteVpc", Safe, || {
                ec2.delete_vpc().vpc_id(id).send()
            })
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => Ok(format!("deleted {kind} {id}")),
        Err(error) if error.code().contains("NotFound") => {
            Ok(format!("{kind} {id} was already gone"))
        }
        Err(error) if error.is("DependencyViolation") => Err(CloudError::DependencyViolation {
            resource: kind.to_owned(),
            id: id.to_owned(),
            blocking: describe_blockers(aws, region, kind, id)
                .await
                .unwrap_or(error.message),
        }),
        Err(error) => Err(cloud_error(error)),
    }
}

/// Names what keeps a subnet, security group or VPC alive: network interfaces (with their
/// descriptions), and for a VPC the subnets and security groups that are not ours.
async fn describe_blockers(aws: &Aws, region: &str, kind: &str, id: &str) -> Option<String> {
    let ec2 = aws.ec2(region);
    let key = match kind {
        "subnet" => "subnet-id",
        "security group" => "group-id",
        "VPC" => "vpc-id",
        _ => return None,
    };
    let mut blockers = Vec::new();
    let interfaces = aws
        .send(region, "DescribeNetworkInterfaces", Safe, || {
            ec2.describe_network_interfaces()
                .filters(filter(key, &[id]))
                .send()
        })
        .await
        .ok()?;
    for interface in interfaces.network_interfaces() {
        blockers.push(format!(
            "network interface {} ({})",
            interface.network_interface_id().unwrap_or("?"),
            interface
                .description()
                .filter(|d| !d.is_empty())
                .unwrap_or("no description")
        ));
    }
    if kind == "VPC" {
        let subnets = describe_subnets(aws, region, vec![filter("vpc-id", &[id])])
            .await
            .ok()?;
        blockers.extend(
            subnets
                .iter()
                .filter(|s| !s.owned)
                .map(|s| format!("subnet {} (not Flotilla's)", s.id)),
        );
        let output = aws
            .send(region, "DescribeSecurityGroups", Safe, || {
                ec2.describe_security_groups()
                    .filters(filter("vpc-id", &[id]))
                    .send()
            })
            .await
            .ok()?;
        blockers.extend(
            output
                .security_groups()
                .iter()
                .filter(|g| !has_owner_tag(aws, g.tags()) && g.group_name() != Some("default"))
                .map(|g| {
                    format!(
                        "security group {} (not Flotilla's)",
                        g.group_id().unwrap_or("?")
                    )
                }),
        );
    }
    if blockers.is_empty() {
        None
    } else {
        Some(format!("still used by {}", blockers.join(", ")))
    }
}
