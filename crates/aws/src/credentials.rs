//! Credential validation, exactly as Docker Cloud did it (seed 000): dry-run an instance launch
//! in every region, concurrently with a bound; the credentials are valid when at least one
//! region says the launch would have succeeded.
//!
//! The result keeps every region's outcome — ok, bad credentials, missing permission,
//! unreachable — because "invalid credentials" alone never told anyone what to fix.

use flotilla_core::cloud::{CloudError, CredentialReport, RegionCheck, RegionOutcome};
use futures::StreamExt;

use crate::Aws;
use crate::call::Idempotency::Safe;
use crate::call::{CREDENTIAL_CODES, PERMISSION_CODES};

/// Used when DescribeRegions itself is refused, so the report still lists the regions.
const STANDARD_REGIONS: &[&str] = &[
    "af-south-1",
    "ap-east-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ca-central-1",
    "eu-central-1",
    "eu-north-1",
    "eu-south-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "me-south-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
];

/// The image of the seed's reproducing command, when a region's own image cannot be looked up.
const SEED_IMAGE: &str = "ami-4d883350";

pub(crate) async fn validate(
    aws: &Aws,
    instance_type: &str,
) -> Result<CredentialReport, CloudError> {
    let home = aws.settings.home_region.clone();
    let ec2 = aws.ec2(&home);
    let regions: Vec<String> = match aws
        .send(&home, "DescribeRegions", Safe, || {
            ec2.describe_regions().send()
        })
        .await
    {
        Ok(output) => output
            .regions()
            .iter()
            .filter(|r| r.opt_in_status() != Some("not-opted-in"))
            .filter_map(|r| r.region_name().map(str::to_owned))
            .collect(),
        Err(error) => {
            tracing::info!(
                code = error.code(),
                "DescribeRegions refused; checking the standard regions"
            );
            STANDARD_REGIONS.iter().map(|r| (*r).to_owned()).collect()
        }
    };
    let mut checks: Vec<RegionCheck> = futures::stream::iter(regions)
        .map(|region| check_region(aws, region, instance_type))
        .buffer_unordered(aws.settings.validation_concurrency.max(1))
        .collect()
        .await;
    checks.sort_by(|a, b| a.region.cmp(&b.region));
    Ok(CredentialReport {
        regions: checks,
        instance_type: instance_type.to_owned(),
    })
}

async fn check_region(aws: &Aws, region: String, instance_type: &str) -> RegionCheck {
    let image_id = match aws.image_for(&region, None).await {
        Ok(image) => image.id,
        Err(_) => SEED_IMAGE.to_owned(),
    };
    let ec2 = aws.ec2(&region);
    let result = aws
        .send(&region, "RunInstances", Safe, || {
            ec2.run_instances()
                .dry_run(true)
                .image_id(&image_id)
                .instance_type(aws_sdk_ec2::types::InstanceType::from(instance_type))
                .min_count(1)
                .max_count(1)
                .send()
        })
        .await;
    let outcome = match result {
        Ok(_) => RegionOutcome::Ok,
        Err(error) => {
            let detail = match &error.code {
                Some(code) => format!("{code}: {}", error.message),
                None => error.message.clone(),
            };
            match error.code() {
                "DryRunOperation" => RegionOutcome::Ok,
                code if CREDENTIAL_CODES.contains(&code) => RegionOutcome::BadCredentials(detail),
                code if PERMISSION_CODES.contains(&code) => {
                    RegionOutcome::MissingPermission(detail)
                }
                _ => RegionOutcome::Unreachable(detail),
            }
        }
    };
    RegionCheck {
        region,
        outcome,
        image_id,
    }
}
