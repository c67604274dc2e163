//! A swarm's network load balancer against moto: created for the published ports with the
//! swarm's nodes as targets, changed when ports and nodes change, a repeat that only
//! describes, and a removal that leaves nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use aws_sdk_elasticloadbalancingv2::types::{LoadBalancerSchemeEnum, LoadBalancerTypeEnum};
use flotilla_core::cloud::Instance;
use flotilla_core::plan::lb::{self, Desired, PublishedPort};
use flotilla_server::execute::{LbState, converge_load_balancer, remove_load_balancer};
use flotilla_testkit::inspect;

use crate::harness::{Env, network_request, pass, spec};

const CLUSTER: &str = "3f2b8c1e-9d4a-4e6b-8a7c-5d1e2f3a4b5c";
const SWARM: &str = "a4e1c2d3-5b6f-4a7e-9c8d-0e1f2a3b4c5d";
const REGION: &str = "us-east-1";

async fn elb(env: &Env) -> aws_sdk_elasticloadbalancingv2::Client {
    aws_sdk_elasticloadbalancingv2::Client::new(
        &inspect::sdk_config(&env.inspect.endpoint(), REGION).await,
    )
}

async fn converge(env: &Env, desired: &Desired) -> (LbState, Vec<String>) {
    let lines = Mutex::new(Vec::new());
    let state = converge_load_balancer(&env.aws, REGION, desired, &|line| {
        lines.lock().expect("lock").push(line)
    })
    .await
    .expect("converge the load balancer");
    (state, lines.into_inner().expect("lock"))
}

/// What moto holds for the swarm: listeners (port → registered instance ids of the target
/// group it forwards to), and the load balancer's security group ingress ports.
async fn moto_view(env: &Env, swarm: &str) -> BTreeMap<u16, BTreeSet<String>> {
    let elb = elb(env).await;
    let lbs = elb
        .describe_load_balancers()
        .names(lb::lb_name(swarm))
        .send()
        .await
        .expect("one load balancer");
    assert_eq!(lbs.load_balancers().len(), 1);
    let found = &lbs.load_balancers()[0];
    assert_eq!(found.r#type(), Some(&LoadBalancerTypeEnum::Network));
    assert_eq!(
        found.scheme(),
        Some(&LoadBalancerSchemeEnum::InternetFacing)
    );
    assert_eq!(found.security_groups().len(), 1);
    let listeners = elb
        .describe_listeners()
        .load_balancer_arn(found.load_balancer_arn().expect("arn"))
        .send()
        .await
        .expect("listeners");
    let mut view = BTreeMap::new();
    for listener in listeners.listeners() {
        assert_eq!(listener.protocol().map(|p| p.as_str()), Some("TCP"));
        let group = listener.default_actions()[0]
            .target_group_arn()
            .expect("forwards to a target group")
            .to_owned();
        let described = elb
            .describe_target_groups()
            .target_group_arns(&group)
            .send()
            .await
            .expect("its target group");
        let tg = &described.target_groups()[0];
        assert_eq!(tg.port(), listener.port());
        assert_eq!(tg.target_type().map(|t| t.as_str()), Some("instance"));
        assert_eq!(tg.health_check_protocol().map(|p| p.as_str()), Some("TCP"));
        let health = elb
            .describe_target_health()
            .target_group_arn(&group)
            .send()
            .await
            .expect("health");
        let targets = health
            .target_health_descriptions()
            .iter()
            .filter_map(|d| d.target().and_then(|t| t.id()).map(str::to_owned))
            .collect();
        view.insert(
            u16::try_from(listener.port().expect("port")).expect("u16"),
            targets,
        );
    }
    let all_groups = elb.describe_target_groups().send().await.expect("groups");
    let ours = all_groups
        .target_groups()
        .iter()
        .filter(|g| {
            g.target_group_name()
                .is_some_and(|n| n.starts_with(&lb::target_group_prefix(swarm)))
        })
        .count();
    assert_eq!(ours, view.len(), "no target group without its listener");
    view
}

/// The load balancer's group's open ports, and whether the nodes' group admits it.
async fn security(env: &Env, swarm: &str, node_group: &str) -> (BTreeSet<i32>, bool) {
    let ec2 = env.ec2(REGION).await;
    let groups = ec2
        .describe_security_groups()
        .send()
        .await
        .expect("security groups");
    let lb_group = groups.security_groups().iter().find(|g| {
        g.tags()
            .iter()
            .any(|t| t.key() == Some("flotilla:swarm") && t.value() == Some(swarm))
    });
    let twins = groups
        .security_groups()
        .iter()
        .filter(|g| {
            g.tags()
                .iter()
                .any(|t| t.key() == Some("flotilla:swarm") && t.value() == Some(swarm))
        })
        .count();
    assert!(twins <= 1, "{twins} security groups for one load balancer");
    let Some(lb_group) = lb_group else {
        return (BTreeSet::new(), false);
    };
    let lb_group_id = lb_group.group_id().expect("id");
    let open = lb_group
        .ip_permissions()
        .iter()
        .filter(|p| {
            p.ip_ranges()
                .iter()
                .any(|r| r.cidr_ip() == Some("0.0.0.0/0"))
        })
        .filter_map(|p| p.from_port())
        .collect();
    let nodes = groups
        .security_groups()
        .iter()
        .find(|g| g.group_id() == Some(node_group))
        .expect("the nodes' group");
    let admitted = nodes.ip_permissions().iter().any(|p| {
        p.user_id_group_pairs()
            .iter()
            .any(|pair| pair.group_id() == Some(lb_group_id))
    });
    // Management ports stay closed to the internet: the nodes' group opens nothing to
    // 0.0.0.0/0.
    assert!(
        !nodes.ip_permissions().iter().any(|p| p
            .ip_ranges()
            .iter()
            .any(|r| r.cidr_ip() == Some("0.0.0.0/0"))),
        "the nodes' group is open to the internet"
    );
    (open, admitted)
}

/// The cluster's nodes as a describe shows them (a launch answers `pending`).
async fn running(env: &Env, count: usize) -> Vec<Instance> {
    let mut nodes: Vec<Instance> =
        flotilla_core::cloud::Cloud::describe_cluster(&env.aws, REGION, CLUSTER)
            .await
            .expect("describe the nodes")
            .into_iter()
            .filter(|i| i.state == flotilla_core::cloud::InstanceState::Running)
            .collect();
    nodes.sort_by_key(|i| i.slot);
    assert_eq!(nodes.len(), count);
    nodes
}

fn ids(instances: &[Instance]) -> BTreeSet<String> {
    instances.iter().map(|i| i.instance_id.clone()).collect()
}

/// Calls that change something, per operation.
fn changes(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<String> {
    after
        .iter()
        .filter(|(op, n)| !op.starts_with("Describe") && before.get(*op) != Some(n))
        .map(|(op, _)| op.clone())
        .collect()
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(op, n)| (op.clone(), n - before.get(op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test]
async fn listeners_follow_the_published_ports_and_targets_follow_the_nodes() {
    let env = Env::new().await;
    let spec = spec(2);
    let (network, report, _) = pass(&env.aws, CLUSTER, &spec, &network_request(&spec))
        .await
        .expect("two nodes");
    let nodes = running(&env, report.instances().len()).await;
    assert_eq!(nodes.len(), 2);
    let node_group = network.security_groups[0].clone();

    // Ports {80, 8080} on both nodes.
    let first = Desired::for_swarm(
        SWARM,
        &network,
        &nodes,
        [PublishedPort::tcp(80), PublishedPort::tcp(8080)],
    );
    assert_eq!(first.subnets.len(), 2, "one subnet per AZ of the nodes");
    let before = env.aws.call_counts();
    let (state, log) = converge(&env, &first).await;
    let created = delta(&before, &env.aws.call_counts());
    println!("from nothing: {created:?}");
    assert!(state.dns_name.is_some(), "{log:?}");
    assert_eq!(
        state.listeners.keys().copied().collect::<Vec<_>>(),
        vec![80, 8080]
    );
    let view = moto_view(&env, SWARM).await;
    assert_eq!(
        view,
        BTreeMap::from([(80, ids(&nodes)), (8080, ids(&nodes))])
    );
    assert_eq!(
        security(&env, SWARM, &node_group).await,
        (BTreeSet::from([80, 8080]), true)
    );
    assert_eq!(created.get("CreateLoadBalancer"), Some(&1));
    assert_eq!(created.get("CreateTargetGroup"), Some(&2));
    assert_eq!(created.get("CreateListener"), Some(&2));

    // The network's next ensure keeps the nodes' group as the node group and leaves the
    // load balancer's group alone (it is neither the node group nor a twin of it).
    let again = flotilla_core::cloud::Cloud::ensure_network(&env.aws, &network_request(&spec))
        .await
        .expect("ensure again");
    assert_eq!(again.security_groups, vec![node_group.clone()]);
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert_eq!(
        security(&env, SWARM, &node_group).await,
        (BTreeSet::from([80, 8080]), true)
    );

    // Ports {8080, 9000}, one node less.
    let second = Desired::for_swarm(
        SWARM,
        &network,
        &nodes[1..],
        [PublishedPort::tcp(8080), PublishedPort::tcp(9000)],
    );
    let before = env.aws.call_counts();
    let (state, _) = converge(&env, &second).await;
    println!("change: {:?}", delta(&before, &env.aws.call_counts()));
    assert_eq!(
        state.listeners.keys().copied().collect::<Vec<_>>(),
        vec![8080, 9000]
    );
    let view = moto_view(&env, SWARM).await;
    assert_eq!(
        view,
        BTreeMap::from([(8080, ids(&nodes[1..])), (9000, ids(&nodes[1..]))])
    );
    assert_eq!(
        security(&env, SWARM, &node_group).await,
        (BTreeSet::from([8080, 9000]), true)
    );

    // A repeat only describes.
    let before = env.aws.call_counts();
    let (again, _) = converge(&env, &second).await;
    let after = env.aws.call_counts();
    assert_eq!(again, state);
    assert_eq!(changes(&before, &after), Vec::<String>::new());
    let repeat = delta(&before, &after);
    println!("repeat: {repeat:?}");
    assert_eq!(repeat.values().sum::<u64>(), 7, "{repeat:?}");

    // Removal leaves nothing: the describes, then three rounds.
    let before = env.aws.call_counts();
    remove_load_balancer(&env.aws, REGION, SWARM, &|_| {})
        .await
        .expect("remove");
    let removal = delta(&before, &env.aws.call_counts());
    println!("removal: {removal:?}");
    assert_eq!(removal.get("DeleteListener"), Some(&2));
    assert_eq!(removal.get("DeleteTargetGroup"), Some(&2));
    assert_eq!(removal.get("DeleteLoadBalancer"), Some(&1));
    assert_eq!(removal.get("DeleteSecurityGroup"), Some(&1));
    assert_eq!(removal.get("RevokeSecurityGroupIngress"), Some(&1));
    let elb = elb(&env).await;
    let gone = elb
        .describe_load_balancers()
        .names(lb::lb_name(SWARM))
        .send()
        .await;
    assert!(gone.is_err_and(|e| format!("{e:?}").contains("LoadBalancerNotFound")));
    let groups = elb.describe_target_groups().send().await.expect("groups");
    assert!(groups.target_groups().is_empty(), "{groups:?}");
    assert_eq!(
        security(&env, SWARM, &node_group).await,
        (BTreeSet::new(), false)
    );
    let observed = flotilla_core::cloud::Cloud::describe_load_balancer(&env.aws, REGION, SWARM)
        .await
        .expect("describe");
    assert!(observed.is_empty(), "{observed:?}");
    // The network can go now that nothing of the load balancer uses it.
}

/// A converge killed right after its k-th AWS call (the calls after it never reach AWS;
/// calls of the same round before it did), for every k, is finished by the next converge:
/// the same listeners, targets and rules, and no twin.
#[tokio::test]
async fn a_converge_killed_after_any_call_is_finished_by_the_next() {
    let env = Env::new().await;
    let spec = spec(2);
    let (network, report, _) = pass(&env.aws, CLUSTER, &spec, &network_request(&spec))
        .await
        .expect("two nodes");
    let nodes = running(&env, report.instances().len()).await;
    let node_group = network.security_groups[0].clone();
    let ports = [PublishedPort::tcp(80), PublishedPort::tcp(8080)];
    let expected = BTreeMap::from([(80, ids(&nodes)), (8080, ids(&nodes))]);

    let before = env.proxy.total();
    let reference = Desired::for_swarm(SWARM, &network, &nodes, ports);
    converge(&env, &reference).await;
    let calls = (env.proxy.total() - before) as u64;
    assert!(calls >= 10, "{calls} calls from nothing");

    for k in 1..calls {
        let swarm = format!("{k:08x}-0000-4000-8000-000000000000");
        let desired = Desired::for_swarm(&swarm, &network, &nodes, ports);
        env.proxy.hold_after(k);
        tokio::select! {
            _ = converge_load_balancer(&env.aws, REGION, &desired, &|_| {}) => {
                panic!("k = {k}: the converge ended before the kill")
            }
            held = env.proxy.wait_held(std::time::Duration::from_secs(20)) => {
                assert!(held, "k = {k}: the first calls were not answered");
            }
        }
        // The converge future is dropped here: killed after its k-th call.
        env.proxy.release_held();
        let (state, log) = converge(&env, &desired).await;
        assert_eq!(
            state.listeners.keys().copied().collect::<Vec<_>>(),
            vec![80, 8080],
            "k = {k}: {log:?}"
        );
        assert_eq!(moto_view(&env, &swarm).await, expected, "k = {k}");
        assert_eq!(
            security(&env, &swarm, &node_group).await,
            (BTreeSet::from([80, 8080]), true),
            "k = {k}"
        );
    }
}

/// UDP ports get UDP listeners whose target groups are health-checked over TCP on the
/// swarm's gossip port; a port published for TCP and UDP gets one TCP_UDP listener; the
/// load balancer's group opens each protocol.
#[tokio::test]
async fn udp_and_tcp_udp_ports() {
    let env = Env::new().await;
    let spec = spec(1);
    let (network, report, _) = pass(&env.aws, CLUSTER, &spec, &network_request(&spec))
        .await
        .expect("one node");
    let nodes = running(&env, report.instances().len()).await;
    let desired = Desired::for_swarm(
        SWARM,
        &network,
        &nodes,
        [
            PublishedPort::udp(5000),
            PublishedPort::tcp(53),
            PublishedPort::udp(53),
        ],
    );
    let (state, _) = converge(&env, &desired).await;
    assert_eq!(
        state.listeners,
        BTreeMap::from([(53, lb::Protocol::TcpUdp), (5000, lb::Protocol::Udp)])
    );
    let elb = elb(&env).await;
    let groups = elb.describe_target_groups().send().await.expect("groups");
    let mut health: Vec<(i32, String, String)> = groups
        .target_groups()
        .iter()
        .map(|g| {
            (
                g.port().expect("port"),
                g.protocol().expect("protocol").as_str().to_owned(),
                g.health_check_port().expect("health check port").to_owned(),
            )
        })
        .collect();
    health.sort();
    assert_eq!(
        health,
        vec![
            (53, "TCP_UDP".into(), "traffic-port".into()),
            (5000, "UDP".into(), "7946".into()),
        ]
    );
    let ec2 = env.ec2(REGION).await;
    let described = ec2
        .describe_security_groups()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:flotilla:swarm")
                .values(SWARM)
                .build(),
        )
        .send()
        .await
        .expect("the load balancer's group");
    let mut open: Vec<(String, i32)> = described.security_groups()[0]
        .ip_permissions()
        .iter()
        .map(|p| {
            (
                p.ip_protocol().expect("protocol").to_owned(),
                p.from_port().expect("port"),
            )
        })
        .collect();
    open.sort();
    assert_eq!(
        open,
        vec![("tcp".into(), 53), ("udp".into(), 53), ("udp".into(), 5000)]
    );
    let before = env.aws.call_counts();
    converge(&env, &desired).await;
    assert_eq!(
        changes(&before, &env.aws.call_counts()),
        Vec::<String>::new()
    );
    remove_load_balancer(&env.aws, REGION, SWARM, &|_| {})
        .await
        .expect("remove");
    let observed = flotilla_core::cloud::Cloud::describe_load_balancer(&env.aws, REGION, SWARM)
        .await
        .expect("describe");
    assert!(observed.is_empty(), "{observed:?}");
}
