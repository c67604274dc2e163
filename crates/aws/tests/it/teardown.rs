//! Teardown removes everything Flotilla created, in order, refuses while instances remain,
//! never touches the user's resources, and names what blocks a deletion.

use flotilla_core::CloudError;
use flotilla_core::cloud::Cloud;

use crate::harness::{Env, network_request, pass, spec};

const CLUSTER: &str = "2f9e8d7c-6b5a-4c3d-8e1f-0a9b8c7d6e5f";

#[tokio::test]
async fn teardown_refuses_while_nodes_run_then_leaves_nothing_tagged() {
    let env = Env::new().await;
    let spec = spec(3);
    let request = network_request(&spec);
    let (network, report, _) = pass(&env.aws, CLUSTER, &spec, &request)
        .await
        .expect("deploy");

    let error = env
        .aws
        .teardown_network("us-east-1")
        .await
        .expect_err("nodes still run");
    match &error {
        CloudError::DependencyViolation { blocking, .. } => {
            for instance in &report.launched {
                assert!(blocking.contains(&instance.instance_id), "{blocking}");
            }
        }
        other => panic!("expected a dependency violation, got {other:?}"),
    }
    assert_eq!(
        env.owned("us-east-1", "vpc").await,
        vec![network.vpc_id.clone()],
        "nothing was deleted"
    );

    let ids: Vec<String> = report
        .launched
        .iter()
        .map(|i| i.instance_id.clone())
        .collect();
    env.aws
        .terminate_nodes("us-east-1", &ids)
        .await
        .expect("terminate");
    let torn = env
        .aws
        .teardown_network("us-east-1")
        .await
        .expect("teardown");
    assert!(
        torn.deleted.iter().any(|l| l.contains(&network.vpc_id)),
        "{:?}",
        torn.deleted
    );
    assert!(
        torn.deleted
            .last()
            .is_some_and(|l| l.starts_with("deleted VPC")),
        "the VPC goes last: {:?}",
        torn.deleted
    );
    for kind in [
        "vpc",
        "subnet",
        "internet-gateway",
        "route-table",
        "security-group",
    ] {
        assert!(
            env.owned("us-east-1", kind).await.is_empty(),
            "{kind} left behind"
        );
    }
    // A second teardown has nothing to do.
    assert!(
        env.aws
            .teardown_network("us-east-1")
            .await
            .expect("again")
            .deleted
            .is_empty()
    );
}

#[tokio::test]
async fn user_resources_are_never_touched_and_blockers_are_named() {
    let env = Env::new().await;
    let spec = spec(0);
    let network = env
        .aws
        .ensure_network(&network_request(&spec))
        .await
        .expect("network");
    let ec2 = env.ec2("us-east-1").await;
    // The user adds their own subnet to our VPC, in a block we left free.
    let theirs = ec2
        .create_subnet()
        .vpc_id(&network.vpc_id)
        .cidr_block("10.78.224.0/20")
        .availability_zone("us-east-1a")
        .send()
        .await
        .expect("user subnet");
    let their_subnet = theirs
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("id")
        .to_owned();
    // And a VPC of their own elsewhere.
    let own_vpc = ec2
        .create_vpc()
        .cidr_block("172.16.0.0/16")
        .send()
        .await
        .expect("user vpc");
    let own_vpc = own_vpc
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("id")
        .to_owned();

    let error = env
        .aws
        .teardown_network("us-east-1")
        .await
        .expect_err("their subnet blocks the VPC");
    match &error {
        CloudError::DependencyViolation {
            resource,
            id,
            blocking,
        } => {
            assert_eq!(resource, "VPC");
            assert_eq!(id, &network.vpc_id);
            assert!(blocking.contains(&their_subnet), "{blocking}");
        }
        other => panic!("expected a dependency violation, got {other:?}"),
    }
    let still = ec2
        .describe_subnets()
        .subnet_ids(&their_subnet)
        .send()
        .await
        .expect("their subnet");
    assert_eq!(still.subnets().len(), 1, "the user's subnet is untouched");
    let still = ec2
        .describe_vpcs()
        .vpc_ids(&own_vpc)
        .send()
        .await
        .expect("their vpc");
    assert_eq!(still.vpcs().len(), 1, "the user's VPC is untouched");
    assert!(
        env.owned("us-east-1", "subnet").await.is_empty(),
        "our subnets went before the VPC refused"
    );
}
