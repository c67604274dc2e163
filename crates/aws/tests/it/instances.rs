//! Launch (one call per subnet, tags, volume, IMDSv2, capacity fallback, PassRole diagnosis),
//! observe (one paginated describe) and terminate (tolerant of "already gone").

use std::collections::BTreeMap;

use base64::Engine;
use flotilla_core::CloudError;
use flotilla_core::cloud::Cloud;
use flotilla_testkit::{Fault, Rule};

use crate::harness::{Env, network_request, pass, spec};

const CLUSTER: &str = "0b3c62c4-1c1d-4a51-9b1e-7a2f3c4d5e6f";

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn six_nodes_from_nothing_take_one_launch_per_subnet_and_few_calls() {
    let env = Env::new().await;
    let spec = spec(6);
    let (network, report, log) = pass(&env.aws, CLUSTER, &spec, &network_request(&spec))
        .await
        .expect("deploy");
    assert_eq!(report.launched.len(), 6);
    assert_eq!(
        env.running_per_zone("us-east-1")
            .await
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    assert!(log.iter().any(|l| l.starts_with("created VPC")), "{log:?}");

    let launches: Vec<_> = env
        .proxy
        .calls()
        .into_iter()
        .filter(|c| c.action == "RunInstances" && param(&c.params, "DryRun") != Some("true"))
        .collect();
    assert_eq!(launches.len(), 3, "one RunInstances per subnet");
    for launch in &launches {
        let p = &launch.params;
        assert_eq!(param(p, "MinCount"), Some("2"));
        assert_eq!(param(p, "MaxCount"), Some("2"));
        assert!(param(p, "ClientToken").is_some_and(|t| t.starts_with("flotilla-")));
        assert_eq!(param(p, "BlockDeviceMapping.1.Ebs.VolumeSize"), Some("30"));
        assert_eq!(param(p, "BlockDeviceMapping.1.Ebs.VolumeType"), Some("gp2"));
        assert_eq!(
            param(p, "BlockDeviceMapping.1.Ebs.DeleteOnTermination"),
            Some("true")
        );
        assert_eq!(param(p, "MetadataOptions.HttpTokens"), Some("required"));
        let user_data = base64::engine::general_purpose::STANDARD
            .decode(param(p, "UserData").expect("user data"))
            .expect("base64");
        assert!(String::from_utf8_lossy(&user_data).starts_with("#!/bin/sh"));
    }
    let tokens: std::collections::BTreeSet<&str> = launches
        .iter()
        .filter_map(|l| param(&l.params, "ClientToken"))
        .collect();
    assert_eq!(tokens.len(), 3, "each batch has its own token");
    // And the instances as EC2 describes them: IMDSv2 only.
    let ec2 = env.ec2("us-east-1").await;
    let described = ec2.describe_instances().send().await.expect("describe");
    let instances: Vec<_> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .collect();
    assert_eq!(instances.len(), 6);
    for instance in instances {
        let options = instance.metadata_options().expect("metadata options");
        assert_eq!(
            options.http_tokens(),
            Some(&aws_sdk_ec2::types::HttpTokensState::Required),
            "{:?}",
            instance.instance_id()
        );
    }

    // Observation rebuilds every node's identity from tags and launch index.
    env.proxy.clear_log();
    let observed = env
        .aws
        .describe_cluster("us-east-1", CLUSTER)
        .await
        .expect("describe");
    assert_eq!(env.proxy.count("DescribeInstances"), 1);
    let slots: Vec<u32> = observed.iter().map(|i| i.slot).collect();
    assert_eq!(slots, vec![0, 1, 2, 3, 4, 5]);
    let launched: BTreeMap<&str, &str> = report
        .launched
        .iter()
        .map(|i| (i.instance_id.as_str(), i.node_uuid.as_str()))
        .collect();
    for instance in &observed {
        assert_eq!(
            launched.get(instance.instance_id.as_str()),
            Some(&instance.node_uuid.as_str())
        );
        assert!(instance.public_ip.is_some() && instance.private_ip.is_some());
        assert!(network.subnets.iter().any(
            |s| s.id == instance.subnet_id && s.availability_zone == instance.availability_zone
        ));
    }

    // The root volume is gp2, sized, deleted with the instance, and tagged with its owner.
    let ec2 = env.ec2("us-east-1").await;
    let volumes = ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:flotilla:cluster")
                .values(CLUSTER)
                .build(),
        )
        .send()
        .await
        .expect("volumes");
    assert_eq!(volumes.volumes().len(), 6);
    assert!(
        volumes
            .volumes()
            .iter()
            .all(|v| v.size() == Some(30) && v.volume_type().map(|t| t.as_str()) == Some("gp2"))
    );
    let described = ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:flotilla:cluster")
                .values(CLUSTER)
                .build(),
        )
        .send()
        .await
        .expect("instances");
    for instance in described.reservations().iter().flat_map(|r| r.instances()) {
        let root = &instance.block_device_mappings()[0];
        assert_eq!(
            root.ebs().and_then(|e| e.delete_on_termination()),
            Some(true),
            "root volume goes with the instance"
        );
    }
}

#[tokio::test]
async fn from_nothing_to_thirty_nodes_stays_within_the_call_budget() {
    let env = Env::new().await;
    let spec = spec(30);
    pass(&env.aws, CLUSTER, &spec, &network_request(&spec))
        .await
        .expect("deploy");
    let total: u64 = env.aws.call_counts().values().sum();
    assert!(total <= 25, "{total} calls: {:?}", env.aws.call_counts());
    assert_eq!(
        env.running_per_zone("us-east-1")
            .await
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![10, 10, 10]
    );
}

#[tokio::test]
async fn scaling_up_and_down_keeps_the_balance_and_repeats_do_nothing() {
    let env = Env::new().await;
    let cluster_spec = spec(6);
    let request = network_request(&cluster_spec);
    pass(&env.aws, CLUSTER, &cluster_spec, &request)
        .await
        .expect("deploy");
    pass(&env.aws, CLUSTER, &spec(9), &request)
        .await
        .expect("scale up");
    assert_eq!(
        env.running_per_zone("us-east-1")
            .await
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![3, 3, 3]
    );
    env.proxy.clear_log();
    let (_, report, _) = pass(&env.aws, CLUSTER, &spec(4), &request)
        .await
        .expect("scale down");
    assert_eq!(report.terminated.len(), 5);
    assert_eq!(env.proxy.count("TerminateInstances"), 1);
    let counts: Vec<usize> = env
        .running_per_zone("us-east-1")
        .await
        .values()
        .copied()
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 4);
    assert!(
        counts.iter().max().copied().unwrap_or(0) - counts.iter().min().copied().unwrap_or(0) <= 1,
        "{counts:?}"
    );
    env.proxy.clear_log();
    let (_, report, _) = pass(&env.aws, CLUSTER, &spec(4), &request)
        .await
        .expect("repeat");
    assert!(report.launched.is_empty() && report.terminated.is_empty());
    assert_eq!(
        env.proxy
            .calls()
            .iter()
            .filter(|c| c.action.starts_with("Create") || c.action == "RunInstances")
            .count(),
        0
    );
}

#[tokio::test]
async fn a_capacity_error_in_one_az_moves_its_nodes_to_the_others() {
    let env = Env::new().await;
    env.proxy.add_rule(
        Rule::action("RunInstances")
            .skip_dry_run()
            .in_az("us-east-1b")
            .fault(Fault::InsufficientCapacity),
    );
    let spec = spec(6);
    let (_, report, log) = pass(&env.aws, CLUSTER, &spec, &network_request(&spec))
        .await
        .expect("deploy");
    assert_eq!(report.launched.len(), 6);
    assert_eq!(report.refused_azs().len(), 1);
    let counts = env.running_per_zone("us-east-1").await;
    assert_eq!(counts.get("us-east-1a"), Some(&3));
    assert_eq!(counts.get("us-east-1b"), None);
    assert_eq!(counts.get("us-east-1c"), Some(&3));
    assert!(
        log.iter().any(|l| l.contains("us-east-1b has no capacity")),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_pass_role_denial_says_what_permission_to_add() {
    let env = Env::new().await;
    env.iam()
        .await
        .create_instance_profile()
        .instance_profile_name("admin-nodes")
        .send()
        .await
        .expect("profile");
    env.proxy.add_rule(
        Rule::action("RunInstances")
            .with_param_present("IamInstanceProfile")
            .fault(Fault::PassRoleDenied),
    );
    let body = serde_json::json!({"name": "web", "region": "us-east-1", "node_type": "t3.micro", "target_num_nodes": 2,
        "provider_options": {"iam": {"instance_profile_name": "admin-nodes"}}});
    let spec = flotilla_core::ClusterSpec::from_json(&body).expect("spec");
    let error = pass(&env.aws, CLUSTER, &spec, &network_request(&spec))
        .await
        .expect_err("denied");
    assert!(
        matches!(error, CloudError::PermissionDenied { hint: Some(_), .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("iam:PassRole"), "{text}");
    assert!(
        text.contains("add \"Action\": \"iam:PassRole\" to the IAM policy"),
        "{text}"
    );
}

#[tokio::test]
async fn throttling_and_internal_errors_are_survived_by_retrying() {
    let env = Env::new().await;
    env.proxy.set_random_faults(7, 0.2, 0.05);
    let spec = spec(6);
    let request = network_request(&spec);
    pass(&env.aws, CLUSTER, &spec, &request)
        .await
        .expect("deploy despite faults");
    let injected = env
        .proxy
        .calls()
        .iter()
        .filter(|c| c.injected.is_some())
        .count();
    assert!(injected > 0, "the proxy did inject faults");
    let attempts: u64 = env.aws.attempt_counts().values().sum();
    let calls: u64 = env.aws.call_counts().values().sum();
    assert!(
        attempts > calls,
        "retries happened: {attempts} attempts for {calls} calls"
    );
    env.proxy.set_random_faults(7, 0.0, 0.0);
    assert_eq!(env.owned("us-east-1", "vpc").await.len(), 1);
    assert_eq!(env.owned("us-east-1", "subnet").await.len(), 3);
    assert_eq!(
        env.running_per_zone("us-east-1")
            .await
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
}

#[tokio::test]
async fn terminating_an_instance_that_is_already_gone_is_not_an_error() {
    let env = Env::new().await;
    let spec = spec(2);
    let (_, report, _) = pass(&env.aws, CLUSTER, &spec, &network_request(&spec))
        .await
        .expect("deploy");
    let ids: Vec<String> = report
        .launched
        .iter()
        .map(|i| i.instance_id.clone())
        .collect();
    env.aws
        .terminate_nodes("us-east-1", &ids[..1])
        .await
        .expect("first");
    let mut with_ghost = ids.clone();
    with_ghost.push("i-0123456789abcdef0".into());
    env.aws
        .terminate_nodes("us-east-1", &with_ghost)
        .await
        .expect("again, with an unknown id");
    assert!(env.running_per_zone("us-east-1").await.is_empty());
}
