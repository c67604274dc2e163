//! What the launch wizard's dropdowns offer: every VPC, subnet and security group of a
//! region, and the account's IAM instance profiles (seed 000's "launch node cluster" view).
//!
//! Describes only, each through [`Aws::send`] (budgeted, retried, counted) and following
//! `NextToken`/`Marker` to the last page. The three EC2 describes run concurrently; nothing
//! is cached here — the server caches the answers briefly per region, so opening the wizard
//! costs AWS three describes (and one IAM list) at most every cache period.

use std::future::Future;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::Tag;
use flotilla_core::cloud::{
    CloudError, InstanceProfileInfo, NetworkInventory, SecurityGroupInfo, SubnetInfo, VpcInfo,
};
use flotilla_core::tags;

use crate::Aws;
use crate::call::Idempotency::Safe;
use crate::call::{CallError, HttpResponse};

fn name_tag(tags_of: &[Tag]) -> Option<String> {
    tags_of
        .iter()
        .find(|t| t.key() == Some("Name"))
        .and_then(|t| t.value())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn ours(aws: &Aws, tags_of: &[Tag]) -> bool {
    tags_of
        .iter()
        .any(|t| t.key() == Some(tags::OWNER) && t.value() == Some(aws.settings.owner.as_str()))
}

fn more(token: Option<&str>) -> Option<String> {
    token.filter(|t| !t.is_empty()).map(str::to_owned)
}

/// Every item of a paginated EC2 describe: `call(token)` sends one page's request,
/// `items(page)` takes its items and next token; each page through [`Aws::send`].
async fn all_pages<P, T, E, Fut>(
    aws: &Aws,
    region: &str,
    operation: &'static str,
    call: impl Fn(Option<String>) -> Fut,
    items: impl Fn(&P) -> (Vec<T>, Option<String>),
) -> Result<Vec<T>, CallError>
where
    Fut: Future<Output = Result<P, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut found = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let token = next.clone();
        let page = aws
            .send(region, operation, Safe, || call(token.clone()))
            .await?;
        let (mut page_items, token) = items(&page);
        found.append(&mut page_items);
        next = more(token.as_deref());
        if next.is_none() {
            return Ok(found);
        }
    }
}

async fn vpcs(aws: &Aws, region: &str) -> Result<Vec<VpcInfo>, CallError> {
    let ec2 = aws.ec2(region);
    let mut found = all_pages(
        aws,
        region,
        "DescribeVpcs",
        |token| ec2.describe_vpcs().set_next_token(token).send(),
        |page| {
            let vpcs = page.vpcs().iter().filter_map(|v| {
                Some(VpcInfo {
                    id: v.vpc_id()?.to_owned(),
                    name: name_tag(v.tags()),
                    cidr: v.cidr_block().unwrap_or_default().to_owned(),
                    is_default: v.is_default().unwrap_or(false),
                    managed: ours(aws, v.tags()),
                })
            });
            (vpcs.collect(), page.next_token().map(str::to_owned))
        },
    )
    .await?;
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

async fn subnets(aws: &Aws, region: &str) -> Result<Vec<SubnetInfo>, CallError> {
    let ec2 = aws.ec2(region);
    let mut found = all_pages(
        aws,
        region,
        "DescribeSubnets",
        |token| ec2.describe_subnets().set_next_token(token).send(),
        |page| {
            let subnets = page.subnets().iter().filter_map(|s| {
                Some(SubnetInfo {
                    id: s.subnet_id()?.to_owned(),
                    vpc_id: s.vpc_id()?.to_owned(),
                    availability_zone: s.availability_zone().unwrap_or_default().to_owned(),
                    cidr: s.cidr_block().unwrap_or_default().to_owned(),
                    available_ips: s
                        .available_ip_address_count()
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(0),
                    name: name_tag(s.tags()),
                    managed: ours(aws, s.tags()),
                })
            });
            (subnets.collect(), page.next_token().map(str::to_owned))
        },
    )
    .await?;
    found.sort_by(|a, b| (&a.availability_zone, &a.id).cmp(&(&b.availability_zone, &b.id)));
    Ok(found)
}

async fn security_groups(aws: &Aws, region: &str) -> Result<Vec<SecurityGroupInfo>, CallError> {
    let ec2 = aws.ec2(region);
    let mut found = all_pages(
        aws,
        region,
        "DescribeSecurityGroups",
        |token| ec2.describe_security_groups().set_next_token(token).send(),
        |page| {
            let groups = page.security_groups().iter().filter_map(|g| {
                Some(SecurityGroupInfo {
                    id: g.group_id()?.to_owned(),
                    // EC2-Classic groups have no VPC; nodes cannot use them.
                    vpc_id: g.vpc_id()?.to_owned(),
                    name: g.group_name().unwrap_or_default().to_owned(),
                    description: g.description().unwrap_or_default().to_owned(),
                    managed: ours(aws, g.tags()),
                })
            });
            (groups.collect(), page.next_token().map(str::to_owned))
        },
    )
    .await?;
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// Every VPC, subnet and security group of `region`: three concurrent describes.
pub(crate) async fn network(aws: &Aws, region: &str) -> Result<NetworkInventory, CloudError> {
    let (vpcs, subnets, security_groups) = tokio::join!(
        vpcs(aws, region),
        subnets(aws, region),
        security_groups(aws, region)
    );
    Ok(NetworkInventory {
        vpcs: vpcs.map_err(CallError::into_cloud_error)?,
        subnets: subnets.map_err(CallError::into_cloud_error)?,
        security_groups: security_groups.map_err(CallError::into_cloud_error)?,
    })
}

/// Every instance profile of the account, sorted by name.
pub(crate) async fn instance_profiles(aws: &Aws) -> Result<Vec<InstanceProfileInfo>, CloudError> {
    let iam = aws.iam();
    let home = aws.settings.home_region.clone();
    let mut found = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let from = marker.clone();
        let page = aws
            .send(&home, "ListInstanceProfiles", Safe, || {
                iam.list_instance_profiles().set_marker(from.clone()).send()
            })
            .await
            .map_err(CallError::into_cloud_error)?;
        found.extend(
            page.instance_profiles()
                .iter()
                .map(|p| InstanceProfileInfo {
                    name: p.instance_profile_name().to_owned(),
                    arn: p.arn().to_owned(),
                    roles: p.roles().iter().map(|r| r.role_name().to_owned()).collect(),
                }),
        );
        marker = if page.is_truncated() {
            more(page.marker())
        } else {
            None
        };
        if marker.is_none() {
            break;
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}
