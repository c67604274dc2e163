//! Looking at moto directly, to check what the code under test did in "AWS".
//!
//! Tests inspect through their own fault-free proxy on the same moto account, so inspection
//! calls never count in, or get faults from, the proxy the code under test uses. Counting is
//! done with real describe calls filtered by tag: moto keeps the tags of deleted resources in
//! `DescribeTags`, so that call cannot tell what still exists.

use std::collections::BTreeMap;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::Filter;

/// SDK configuration for any AWS client on `endpoint` (usually an inspection proxy).
pub async fn sdk_config(endpoint: &str, region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "AKIAINSPECT",
            "inspect-secret",
            None,
            None,
            "flotilla-testkit",
        ))
        .load()
        .await
}

/// A plain EC2 client on `endpoint` in `region`.
pub async fn ec2_client(endpoint: &str, region: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config(endpoint, region).await)
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| (*v).to_owned()).collect()))
        .build()
}

/// Instances in the given states (e.g. `["running"]`), counted per AZ.
pub async fn instances_per_zone(
    ec2: &aws_sdk_ec2::Client,
    states: &[&str],
) -> BTreeMap<String, usize> {
    let output = ec2
        .describe_instances()
        .filters(filter("instance-state-name", states))
        .send()
        .await
        .expect("DescribeInstances on moto");
    let mut counts = BTreeMap::new();
    for instance in output.reservations().iter().flat_map(|r| r.instances()) {
        let zone = instance
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or("?")
            .to_owned();
        *counts.entry(zone).or_insert(0) += 1;
    }
    counts
}

/// A kind of network resource Flotilla creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Vpc,
    Subnet,
    InternetGateway,
    RouteTable,
    SecurityGroup,
}

/// Ids of the existing resources of one kind whose `flotilla:owner` tag is `owner`, sorted.
pub async fn owned(ec2: &aws_sdk_ec2::Client, owner: &str, kind: Kind) -> Vec<String> {
    let by_owner = filter("tag:flotilla:owner", &[owner]);
    let mut ids: Vec<String> = match kind {
        Kind::Vpc => ec2
            .describe_vpcs()
            .filters(by_owner)
            .send()
            .await
            .expect("DescribeVpcs")
            .vpcs()
            .iter()
            .filter_map(|v| v.vpc_id().map(str::to_owned))
            .collect(),
        Kind::Subnet => ec2
            .describe_subnets()
            .filters(by_owner)
            .send()
            .await
            .expect("DescribeSubnets")
            .subnets()
            .iter()
            .filter_map(|s| s.subnet_id().map(str::to_owned))
            .collect(),
        Kind::InternetGateway => ec2
            .describe_internet_gateways()
            .filters(by_owner)
            .send()
            .await
            .expect("DescribeInternetGateways")
            .internet_gateways()
            .iter()
            .filter_map(|g| g.internet_gateway_id().map(str::to_owned))
            .collect(),
        Kind::RouteTable => ec2
            .describe_route_tables()
            .filters(by_owner)
            .send()
            .await
            .expect("DescribeRouteTables")
            .route_tables()
            .iter()
            .filter_map(|t| t.route_table_id().map(str::to_owned))
            .collect(),
        Kind::SecurityGroup => ec2
            .describe_security_groups()
            .filters(by_owner)
            .send()
            .await
            .expect("DescribeSecurityGroups")
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_owned))
            .collect(),
    };
    ids.sort();
    ids
}

/// A user's own VPC, as a person would make it in the console: the VPC and one subnet per
/// `(cidr, availability zone)`. Returns the VPC id and the subnet ids, in order.
pub async fn create_user_vpc(
    ec2: &aws_sdk_ec2::Client,
    cidr: &str,
    subnets: &[(&str, &str)],
) -> (String, Vec<String>) {
    let vpc = ec2
        .create_vpc()
        .cidr_block(cidr)
        .send()
        .await
        .expect("CreateVpc on moto");
    let vpc_id = vpc
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("a VPC id")
        .to_owned();
    let mut ids = Vec::new();
    for (cidr, zone) in subnets {
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block(*cidr)
            .availability_zone(*zone)
            .send()
            .await
            .expect("CreateSubnet on moto");
        ids.push(
            subnet
                .subnet()
                .and_then(|s| s.subnet_id())
                .expect("a subnet id")
                .to_owned(),
        );
    }
    (vpc_id, ids)
}

/// Tags a resource `Name=<name>`, as the console's name field does.
pub async fn name_resource(ec2: &aws_sdk_ec2::Client, id: &str, name: &str) {
    ec2.create_tags()
        .resources(id)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("Name")
                .value(name)
                .build(),
        )
        .send()
        .await
        .expect("CreateTags on moto");
}

/// A user's security group in `vpc_id`; its id.
pub async fn create_security_group(ec2: &aws_sdk_ec2::Client, vpc_id: &str, name: &str) -> String {
    ec2.create_security_group()
        .group_name(name)
        .description(format!("{name} (made by a test)"))
        .vpc_id(vpc_id)
        .send()
        .await
        .expect("CreateSecurityGroup on moto")
        .group_id()
        .expect("a group id")
        .to_owned()
}

/// Makes an instance profile, as the account's administrator would for the nodes' role.
pub async fn create_instance_profile(endpoint: &str, name: &str) {
    aws_sdk_iam::Client::new(&sdk_config(endpoint, "us-east-1").await)
        .create_instance_profile()
        .instance_profile_name(name)
        .send()
        .await
        .expect("CreateInstanceProfile on moto");
}

/// The ARN of the instance profile an instance was launched with, if any.
pub async fn instance_profile_of(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Option<String> {
    let output = ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .expect("DescribeInstances on moto");
    output
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| {
            i.iam_instance_profile()
                .and_then(|p| p.arn())
                .map(str::to_owned)
        })
}

/// The ids of the instances in a subnet, in any state.
pub async fn instances_in_subnet(ec2: &aws_sdk_ec2::Client, subnet_id: &str) -> Vec<String> {
    let output = ec2
        .describe_instances()
        .filters(filter("subnet-id", &[subnet_id]))
        .send()
        .await
        .expect("DescribeInstances on moto");
    output
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect()
}

/// Terminates instances out of band, as a person in the console would.
pub async fn terminate_instances(ec2: &aws_sdk_ec2::Client, ids: &[String]) {
    ec2.terminate_instances()
        .set_instance_ids(Some(ids.to_vec()))
        .send()
        .await
        .expect("TerminateInstances on moto");
}

/// Deletes a subnet out of band.
pub async fn delete_subnet(ec2: &aws_sdk_ec2::Client, subnet_id: &str) {
    ec2.delete_subnet()
        .subnet_id(subnet_id)
        .send()
        .await
        .expect("DeleteSubnet on moto");
}
