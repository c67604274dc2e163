//! The fault proxy: forwarding, call log, latency and fault injection.

use std::time::{Duration, Instant};

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{IamInstanceProfileSpecification, InstanceType, Placement};
use flotilla_testkit::{Fault, FaultProxy, Moto, Rule};

use crate::{ec2, isolated};

const AMI: &str = "ami-12c6146b";

/// The error code of a failed SDK call, panicking if it succeeded.
fn code<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(r: Result<T, E>) -> String {
    let err = r.expect_err("call should have failed");
    err.code()
        .unwrap_or_else(|| panic!("no error code in {err:?}"))
        .to_string()
}

async fn run_in_subnet(client: &aws_sdk_ec2::Client, subnet: &str) -> Result<(), String> {
    client
        .run_instances()
        .image_id(AMI)
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| e.code().unwrap_or("<no code>").to_string())
}

#[tokio::test]
async fn forwards_and_isolates_accounts() {
    let (_a, client_a) = isolated().await;
    let (_b, client_b) = isolated().await;
    let vpc = client_a
        .create_vpc()
        .cidr_block("10.42.0.0/16")
        .send()
        .await
        .expect("create vpc");
    let vpc_id = vpc
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("vpc id")
        .to_string();

    let ids = |out: aws_sdk_ec2::operation::describe_vpcs::DescribeVpcsOutput| -> Vec<String> {
        out.vpcs()
            .iter()
            .filter_map(|v| v.vpc_id().map(str::to_string))
            .collect()
    };
    let seen_a = ids(client_a
        .describe_vpcs()
        .send()
        .await
        .expect("describe via A"));
    let seen_b = ids(client_b
        .describe_vpcs()
        .send()
        .await
        .expect("describe via B"));
    assert!(seen_a.contains(&vpc_id), "{seen_a:?}");
    assert!(
        !seen_b.contains(&vpc_id),
        "account B sees A's VPC: {seen_b:?}"
    );
}

#[tokio::test]
async fn logs_calls_by_action() {
    let (proxy, client) = isolated().await;
    client
        .create_vpc()
        .cidr_block("10.1.0.0/16")
        .send()
        .await
        .expect("create vpc");
    client.describe_vpcs().send().await.expect("describe");
    client.describe_vpcs().send().await.expect("describe");

    assert_eq!(proxy.total(), 3);
    assert_eq!(proxy.count("DescribeVpcs"), 2);
    assert_eq!(proxy.count("CreateVpc"), 1);
    let by_action = proxy.counts_by_action();
    assert_eq!(by_action.get("DescribeVpcs"), Some(&2));
    assert_eq!(by_action.len(), 2);

    let calls = proxy.calls();
    assert_eq!(calls.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3]);
    let create = &calls[0];
    assert_eq!(create.action, "CreateVpc");
    assert_eq!(create.region, "us-east-1");
    assert_eq!(create.status, 200);
    assert_eq!(create.injected, None);
    assert!(
        create
            .params
            .contains(&("CidrBlock".to_string(), "10.1.0.0/16".to_string()))
    );

    proxy.clear_log();
    assert_eq!(proxy.total(), 0);
    client.describe_vpcs().send().await.expect("describe");
    assert_eq!(proxy.calls()[0].seq, 1, "seq restarts after clear_log");
}

#[tokio::test]
async fn applies_latency() {
    let (proxy, client) = isolated().await;
    proxy.set_latency(Duration::from_millis(300));
    let start = Instant::now();
    client.describe_vpcs().send().await.expect("describe");
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn random_faults_at_full_rate_always_fail() {
    let (proxy, client) = isolated().await;
    proxy.set_random_faults(7, 1.0, 0.0);
    assert_eq!(
        code(client.describe_vpcs().send().await),
        "RequestLimitExceeded"
    );
    proxy.set_random_faults(7, 0.0, 1.0);
    assert_eq!(code(client.describe_vpcs().send().await), "InternalError");
    proxy.set_random_faults(7, 0.0, 0.0);
    client.describe_vpcs().send().await.expect("faults off");

    let calls = proxy.calls();
    assert_eq!(calls[0].status, 503);
    assert_eq!(calls[0].injected.as_deref(), Some("RequestLimitExceeded"));
    assert_eq!(calls[1].status, 500);
    assert_eq!(calls[2].injected, None);
}

#[tokio::test]
async fn random_faults_are_seeded() {
    async fn pattern(seed: u64) -> Vec<bool> {
        let (proxy, client) = isolated().await;
        proxy.set_random_faults(seed, 0.5, 0.0);
        let mut failed = Vec::new();
        for _ in 0..12 {
            failed.push(client.describe_vpcs().send().await.is_err());
        }
        failed
    }
    let first = pattern(42).await;
    assert_eq!(first, pattern(42).await);
    assert!(first.contains(&true) && first.contains(&false), "{first:?}");
}

#[tokio::test]
async fn capacity_rule_hits_only_its_availability_zone() {
    let (proxy, client) = isolated().await;
    let vpc = client
        .create_vpc()
        .cidr_block("10.2.0.0/16")
        .send()
        .await
        .expect("create vpc");
    let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).expect("vpc id");
    let mut subnets = Vec::new();
    for (cidr, az) in [("10.2.1.0/24", "us-east-1a"), ("10.2.2.0/24", "us-east-1b")] {
        let out = client
            .create_subnet()
            .vpc_id(vpc_id)
            .cidr_block(cidr)
            .availability_zone(az)
            .send()
            .await
            .expect("create subnet");
        subnets.push(
            out.subnet()
                .and_then(|s| s.subnet_id())
                .expect("subnet id")
                .to_string(),
        );
    }
    proxy.add_rule(
        Rule::action("RunInstances")
            .in_az("us-east-1a")
            .fault(Fault::InsufficientCapacity),
    );

    assert_eq!(
        run_in_subnet(&client, &subnets[0]).await,
        Err("InsufficientInstanceCapacity".into())
    );
    assert_eq!(run_in_subnet(&client, &subnets[1]).await, Ok(()));
    // Cached subnet AZ; still fails.
    assert_eq!(
        run_in_subnet(&client, &subnets[0]).await,
        Err("InsufficientInstanceCapacity".into())
    );

    // Placement.AvailabilityZone matches too.
    let placed = client
        .run_instances()
        .image_id(AMI)
        .min_count(1)
        .max_count(1)
        .placement(Placement::builder().availability_zone("us-east-1a").build())
        .send()
        .await;
    assert_eq!(code(placed), "InsufficientInstanceCapacity");
    let ri = proxy
        .calls()
        .into_iter()
        .filter(|c| c.action == "RunInstances")
        .collect::<Vec<_>>();
    assert_eq!(
        ri.iter().map(|c| c.status).collect::<Vec<_>>(),
        [500, 200, 500, 500]
    );
}

#[tokio::test]
async fn nth_rule_fires_on_that_call_only() {
    let (proxy, client) = isolated().await;
    client.describe_vpcs().send().await.expect("setup call");
    proxy.clear_log();
    proxy.add_rule(Rule::any().nth(2).fault(Fault::Unsupported));
    client.describe_vpcs().send().await.expect("call 1");
    assert_eq!(code(client.describe_subnets().send().await), "Unsupported");
    client.describe_vpcs().send().await.expect("call 3");
    assert_eq!(proxy.calls()[1].status, 400);
}

#[tokio::test]
async fn times_limits_how_often_a_rule_fires() {
    let (proxy, client) = isolated().await;
    proxy.add_rule(Rule::action("DescribeVpcs").times(2).fault(Fault::Throttle));
    assert_eq!(
        code(client.describe_vpcs().send().await),
        "RequestLimitExceeded"
    );
    client
        .describe_subnets()
        .send()
        .await
        .expect("other actions pass");
    assert_eq!(
        code(client.describe_vpcs().send().await),
        "RequestLimitExceeded"
    );
    client.describe_vpcs().send().await.expect("rule exhausted");
    assert_eq!(proxy.count("DescribeVpcs"), 3);
}

#[tokio::test]
async fn pass_role_denied_only_with_an_instance_profile() {
    let (proxy, client) = isolated().await;
    proxy.add_rule(
        Rule::action("RunInstances")
            .with_param_present("IamInstanceProfile")
            .skip_dry_run()
            .fault(Fault::PassRoleDenied),
    );
    let run = || {
        client
            .run_instances()
            .image_id(AMI)
            .min_count(1)
            .max_count(1)
    };
    run().send().await.expect("no instance profile: allowed");

    let profile = IamInstanceProfileSpecification::builder()
        .name("flotilla-node")
        .build();
    let err = run()
        .iam_instance_profile(profile.clone())
        .send()
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Some("UnauthorizedOperation"));
    assert!(
        err.message().unwrap_or_default().contains("iam:PassRole"),
        "{err:?}"
    );

    // skip_dry_run: the dry run reaches moto (which then fails on the
    // profile it does not know), so nothing is injected.
    let dry = run()
        .iam_instance_profile(profile)
        .dry_run(true)
        .send()
        .await;
    assert_ne!(code(dry), "UnauthorizedOperation");
    assert_eq!(proxy.calls().last().map(|c| c.injected.clone()), Some(None));
}

#[tokio::test]
async fn only_dry_run_rule_spares_real_calls() {
    let (proxy, client) = isolated().await;
    proxy.add_rule(
        Rule::action("RunInstances")
            .only_dry_run()
            .fault(Fault::Unsupported),
    );
    let run = || {
        client
            .run_instances()
            .image_id(AMI)
            .min_count(1)
            .max_count(1)
    };
    assert_eq!(code(run().dry_run(true).send().await), "Unsupported");
    run().send().await.expect("real call passes");
}

#[tokio::test]
async fn param_and_region_conditions() {
    let (proxy, client) = isolated().await;
    proxy.add_rule(
        Rule::action("DescribeVpcs")
            .in_region("eu-west-1")
            .fault(Fault::AuthFailure),
    );
    proxy.add_rule(
        Rule::any()
            .with_param("CidrBlock", "10.9.0.0/16")
            .fault(Fault::Unsupported),
    );
    client
        .describe_vpcs()
        .send()
        .await
        .expect("rule is for another region");
    assert_eq!(
        code(client.create_vpc().cidr_block("10.9.0.0/16").send().await),
        "Unsupported"
    );
    client
        .create_vpc()
        .cidr_block("10.8.0.0/16")
        .send()
        .await
        .expect("other value passes");

    let eu = aws_sdk_ec2::Client::from_conf(
        client
            .config()
            .to_builder()
            .region(aws_sdk_ec2::config::Region::new("eu-west-1"))
            .build(),
    );
    assert_eq!(code(eu.describe_vpcs().send().await), "AuthFailure");
    assert_eq!(
        proxy.calls().last().map(|c| c.region.as_str()),
        Some("eu-west-1")
    );
}

#[tokio::test]
async fn drop_and_delay_faults() {
    let (proxy, client) = isolated().await;
    proxy.add_rule(Rule::action("DescribeVpcs").times(1).fault(Fault::Drop));
    proxy.add_rule(Rule::action("DescribeSubnets").fault(Fault::Delay(Duration::from_millis(200))));
    let err = client
        .describe_vpcs()
        .send()
        .await
        .expect_err("connection dropped");
    assert_eq!(
        err.code(),
        None,
        "a dropped connection has no error code: {err:?}"
    );
    let start = Instant::now();
    client
        .describe_subnets()
        .send()
        .await
        .expect("delayed, then forwarded");
    assert!(start.elapsed() >= Duration::from_millis(200));
    let calls = proxy.calls();
    assert_eq!(
        (calls[0].status, calls[0].injected.as_deref()),
        (0, Some("Drop"))
    );
    assert_eq!((calls[1].status, calls[1].injected.as_deref()), (200, None));
}

#[tokio::test]
async fn moto_html_500_becomes_a_non_retryable_error() {
    let (proxy, client) = isolated().await;
    let err = client
        .describe_capacity_block_offerings()
        .instance_type("p5.48xlarge")
        .instance_count(1)
        .capacity_duration_hours(24)
        .send()
        .await
        .expect_err("moto does not implement this");
    assert_eq!(err.code(), Some("MotoUnsupported"), "{err:?}");
    let message = err.message().unwrap_or_default();
    assert!(
        message.contains("DescribeCapacityBlockOfferings"),
        "{message}"
    );
    assert!(message.contains("Internal Server Error"), "{message}");
    assert_eq!(proxy.calls()[0].status, 400);
}

#[tokio::test]
async fn without_account_requests_use_the_callers_account() {
    // No account pinning: moto's default account. Only forwarding is checked,
    // since other tests in other processes may share that account's state.
    let proxy = FaultProxy::start(&Moto::shared().endpoint(), None).await;
    ec2(&proxy.endpoint())
        .describe_vpcs()
        .send()
        .await
        .expect("forwarded");
    assert_eq!(proxy.count("DescribeVpcs"), 1);
}

#[tokio::test]
async fn hold_after_lets_k_calls_through_and_drops_the_held_ones() {
    let (proxy, client) = isolated().await;
    client.describe_vpcs().send().await.expect("setup call");
    proxy.hold_after(2);
    assert!(!proxy.wait_held(Duration::from_millis(50)).await);
    client.describe_vpcs().send().await.expect("call 1");
    let vpc = client
        .create_vpc()
        .cidr_block("10.9.0.0/16")
        .send()
        .await
        .expect("call 2");
    assert!(proxy.wait_held(Duration::from_secs(5)).await);
    assert_eq!(proxy.held_progress(), Some(2));
    // The third call is held: it does not reach moto while held, and is dropped on release.
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.create_vpc().cidr_block("10.10.0.0/16").send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a held call is not answered");
    proxy.release_held();
    let dropped = held.await.expect("joined");
    assert!(
        dropped.is_err(),
        "a released held call is dropped: {dropped:?}"
    );
    let calls = proxy.calls();
    let last = calls.last().expect("logged");
    assert_eq!(last.injected.as_deref(), Some("Held"));
    assert_eq!(last.status, 0);
    // Only one VPC was created: the held CreateVpc never reached moto.
    let vpcs = client.describe_vpcs().send().await.expect("after release");
    let ours: Vec<_> = vpcs
        .vpcs()
        .iter()
        .filter(|v| v.cidr_block().is_some_and(|c| c.starts_with("10.")))
        .filter(|v| v.vpc_id() != Some("") && !v.is_default().unwrap_or(false))
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(
        ours[0].vpc_id(),
        vpc.vpc().and_then(|v| v.vpc_id()),
        "the VPC of call 2"
    );
}

#[tokio::test]
async fn eventual_consistency_hides_new_resources_from_describes() {
    let (proxy, client) = isolated().await;
    let old = client
        .create_vpc()
        .cidr_block("10.20.0.0/16")
        .send()
        .await
        .expect("old vpc");
    let old_id = old.vpc().and_then(|v| v.vpc_id()).expect("id").to_string();
    proxy.set_eventual_consistency(Duration::from_secs(2));
    let new = client
        .create_vpc()
        .cidr_block("10.21.0.0/16")
        .send()
        .await
        .expect("new vpc");
    let new_id = new.vpc().and_then(|v| v.vpc_id()).expect("id").to_string();
    let subnet = client
        .create_subnet()
        .vpc_id(&old_id)
        .cidr_block("10.20.1.0/24")
        .send()
        .await
        .expect("subnet");
    let subnet_id = subnet
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("id")
        .to_string();
    let launched = client
        .run_instances()
        .image_id(AMI)
        .instance_type(InstanceType::T3Micro)
        .min_count(2)
        .max_count(2)
        .send()
        .await
        .expect("launch");
    assert_eq!(launched.instances().len(), 2);
    assert_eq!(proxy.hidden_ids().len(), 4, "{:?}", proxy.hidden_ids());

    let vpc_ids = |out: aws_sdk_ec2::operation::describe_vpcs::DescribeVpcsOutput| -> Vec<String> {
        out.vpcs()
            .iter()
            .filter_map(|v| v.vpc_id().map(str::to_string))
            .collect()
    };
    let seen = vpc_ids(client.describe_vpcs().send().await.expect("describe"));
    assert!(seen.contains(&old_id), "{seen:?}");
    assert!(!seen.contains(&new_id), "the new VPC is hidden: {seen:?}");
    let subnets = client.describe_subnets().send().await.expect("subnets");
    assert!(
        subnets
            .subnets()
            .iter()
            .all(|s| s.subnet_id() != Some(subnet_id.as_str())),
        "the new subnet is hidden"
    );
    let running = client.describe_instances().send().await.expect("instances");
    assert_eq!(
        running
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .count(),
        0,
        "new instances are hidden"
    );

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let seen = vpc_ids(client.describe_vpcs().send().await.expect("describe"));
    assert!(seen.contains(&new_id), "visible after the delay: {seen:?}");
    let running = client.describe_instances().send().await.expect("instances");
    assert_eq!(
        running
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .count(),
        2
    );
    assert!(proxy.hidden_ids().is_empty());
}

#[tokio::test]
async fn access_key_rule_and_call_timestamps() {
    let (proxy, client) = isolated().await;
    proxy.add_rule(
        Rule::any()
            .with_access_key("AKIDOTHER")
            .fault(Fault::AuthFailure),
    );
    let before = Instant::now();
    client
        .describe_vpcs()
        .send()
        .await
        .expect("other keys pass");
    proxy.clear_rules();
    proxy.add_rule(
        Rule::any()
            .with_access_key("AKIDTESTKIT")
            .fault(Fault::AuthFailure),
    );
    assert_eq!(code(client.describe_vpcs().send().await), "AuthFailure");
    let calls = proxy.calls();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c.access_key == "AKIDTESTKIT"));
    assert!(calls[0].at >= before && calls[1].at >= calls[0].at);
}
