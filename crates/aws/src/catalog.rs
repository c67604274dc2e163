//! The catalogue of what an account can use: its regions and the instance types on offer in
//! each region's AZs.
//!
//! Design decisions:
//! * Both answers change on the scale of months, so they are cached in the [`Aws`] for its
//!   lifetime (a restart refreshes them). The API serves `region/` and `nodetype/` lists from
//!   this, so listing never costs an AWS call after the first.
//! * Offerings are asked per AZ (`LocationType=availability-zone`) because a type can be
//!   offered in some AZs of a region and not others; the region-level view is the union.
//! * Every page goes through [`Aws::send`] (budget, retries, counting), in one sequential
//!   loop over `NextToken` — pages cannot be fetched concurrently.
//! * Regions not opted in are left out: nothing can be launched there.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::LocationType;
use flotilla_core::cloud::{CloudError, NodeTypeOffering};

use crate::Aws;
use crate::call::Idempotency::Safe;

/// The largest page DescribeInstanceTypeOfferings allows.
const PAGE_SIZE: i32 = 1000;

pub(crate) async fn regions(aws: &Aws) -> Result<Vec<String>, CloudError> {
    if let Some(cached) = aws
        .regions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    {
        return Ok(cached);
    }
    let home = aws.settings.home_region.clone();
    let ec2 = aws.ec2(&home);
    let output = aws
        .send(&home, "DescribeRegions", Safe, || {
            ec2.describe_regions().send()
        })
        .await
        .map_err(|e| e.into_cloud_error())?;
    let mut names: Vec<String> = output
        .regions()
        .iter()
        .filter(|r| r.opt_in_status() != Some("not-opted-in"))
        .filter_map(|r| r.region_name().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    *aws.regions.lock().unwrap_or_else(|p| p.into_inner()) = Some(names.clone());
    Ok(names)
}

pub(crate) async fn node_types(
    aws: &Aws,
    region: &str,
) -> Result<Vec<NodeTypeOffering>, CloudError> {
    if let Some(cached) = aws
        .node_types
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(region)
    {
        return Ok(cached.clone());
    }
    let ec2 = aws.ec2(region);
    let mut zones_by_type: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut next_token: Option<String> = None;
    loop {
        let token = next_token.clone();
        let page = aws
            .send(region, "DescribeInstanceTypeOfferings", Safe, || {
                ec2.describe_instance_type_offerings()
                    .location_type(LocationType::AvailabilityZone)
                    .max_results(PAGE_SIZE)
                    .set_next_token(token.clone())
                    .send()
            })
            .await
            .map_err(|e| e.into_cloud_error())?;
        for offering in page.instance_type_offerings() {
            if let (Some(instance_type), Some(zone)) =
                (offering.instance_type(), offering.location())
            {
                zones_by_type
                    .entry(instance_type.as_str().to_owned())
                    .or_default()
                    .push(zone.to_owned());
            }
        }
        next_token = page
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        if next_token.is_none() {
            break;
        }
    }
    let offerings: Vec<NodeTypeOffering> = zones_by_type
        .into_iter()
        .map(|(name, mut availability_zones)| {
            availability_zones.sort();
            availability_zones.dedup();
            NodeTypeOffering {
                name,
                availability_zones,
            }
        })
        .collect();
    aws.node_types
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(region.to_owned(), offerings.clone());
    Ok(offerings)
}
