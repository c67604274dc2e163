//! Seed 000: dry-run a launch in every region; valid when one region succeeds.

use flotilla_core::cloud::{Cloud, RegionOutcome};
use flotilla_testkit::{Fault, Rule};

use crate::harness::Env;

#[tokio::test]
async fn valid_credentials_pass_in_every_region_with_one_dry_run_each() {
    let env = Env::new().await;
    let report = env
        .aws
        .validate_credentials("t3.micro")
        .await
        .expect("report");
    assert!(report.is_valid());
    assert!(
        report.regions.len() >= 20,
        "every region is checked: {}",
        report.regions.len()
    );
    assert!(
        report
            .regions
            .iter()
            .all(|r| r.outcome == RegionOutcome::Ok),
        "{}",
        report.table()
    );
    let dry_runs = env
        .proxy
        .calls()
        .iter()
        .filter(|c| c.action == "RunInstances")
        .count();
    assert_eq!(dry_runs, report.regions.len());
    assert!(
        env.proxy
            .calls()
            .iter()
            .filter(|c| c.action == "RunInstances")
            .all(|c| c.params.iter().any(|(k, v)| k == "DryRun" && v == "true")),
        "only dry runs, nothing launched"
    );
}

#[tokio::test]
async fn one_good_region_is_enough_and_every_region_has_its_reason() {
    let env = Env::new().await;
    env.proxy.add_rule(
        Rule::action("RunInstances")
            .in_region("eu-west-1")
            .fault(Fault::Drop),
    );
    env.proxy.add_rule(
        Rule::action("RunInstances")
            .in_region("us-west-2")
            .fault(Fault::Error {
                status: 403,
                code: "UnauthorizedOperation".into(),
                message: "You are not authorized to perform this operation.".into(),
            }),
    );
    env.proxy.add_rule(
        Rule::action("RunInstances")
            .in_region("us-east-1")
            .fault(Fault::AuthFailure),
    );
    let report = env
        .aws
        .validate_credentials("t3.micro")
        .await
        .expect("report");
    assert!(report.is_valid(), "other regions succeed");
    let outcome = |region: &str| {
        report
            .regions
            .iter()
            .find(|r| r.region == region)
            .map(|r| r.outcome.label())
            .expect("region listed")
    };
    assert_eq!(outcome("eu-west-1"), "unreachable");
    assert_eq!(outcome("us-west-2"), "missing permission");
    assert_eq!(outcome("us-east-1"), "bad credentials");
    assert_eq!(outcome("sa-east-1"), "ok");
}

#[tokio::test]
async fn invalid_everywhere_gives_the_seed_message_with_reasons_and_command() {
    let env = Env::new().await;
    env.proxy.add_rule(Rule::any().fault(Fault::AuthFailure));
    let report = env
        .aws
        .validate_credentials("m3.medium")
        .await
        .expect("report");
    assert!(!report.is_valid());
    let message = report.failure_message();
    assert!(
        message.starts_with("Invalid AWS credentials or insufficient EC2 permissions\n"),
        "{message}"
    );
    assert!(
        message.contains("sa-east-1") && message.contains("bad credentials: AuthFailure"),
        "{message}"
    );
    assert!(
        message.contains("aws ec2 run-instances --dry-run --region "),
        "{message}"
    );
    assert!(
        message.trim_end().ends_with("--instance-type m3.medium"),
        "{message}"
    );
}
