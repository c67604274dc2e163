//! The engine: one pass from a cluster's desired size to what exists in the cloud.
//!
//! A pass is level-triggered and keeps no memory between calls: it takes the instances the
//! caller observed, plans with [`crate::placement`], and acts. After a crash the next pass
//! observes what the crashed one managed to do (every instance carries its cluster and slot
//! tags) and only does the rest, so recovery is not a special code path.
//!
//! Launches are batched — every node destined for one subnet goes in a single launch call,
//! and the batches for different subnets run concurrently — so the number of cloud calls and
//! round trips does not grow with the node count. A batch refused for capacity marks its AZ
//! unusable for this pass and its nodes are re-placed, one at a time, in the least-populated
//! AZs that are left, keeping the balance among them.

use std::collections::BTreeSet;

use futures::future::join_all;

use crate::cloud::{
    Cloud, CloudError, Instance, LaunchRequest, Network, NetworkRequest, NodeSlot, SkippedAz,
};
use crate::placement::{PlacedNode, Target, choose_removals, place_new_nodes};
use crate::spec::ClusterSpec;
use crate::tags::node_uuid;

/// Everything a pass needs besides the observation.
#[derive(Debug, Clone)]
pub struct ConvergeInput<'a> {
    pub cluster_uuid: &'a str,
    pub generation: u64,
    pub spec: &'a ClusterSpec,
    pub network: &'a Network,
    pub key_name: Option<&'a str>,
    /// Slots below this were used before (the store's high-water mark); never reused.
    pub next_slot: u32,
}

/// What a pass did.
#[derive(Debug, Clone, Default)]
pub struct ConvergeReport {
    pub launched: Vec<Instance>,
    pub terminated: Vec<Instance>,
    /// The cluster's live instances after the pass.
    pub instances: Vec<Instance>,
    /// AZs that refused a launch during this pass.
    pub unusable_azs: Vec<SkippedAz>,
    /// The next unused slot after this pass.
    pub next_slot: u32,
    /// Everything [`run_pass`] observed at its start, terminating instances included.
    pub observed: Vec<Instance>,
}

fn placed(instance: &Instance) -> PlacedNode {
    PlacedNode {
        availability_zone: instance.availability_zone.clone(),
        subnet_id: instance.subnet_id.clone(),
        slot: instance.slot,
        healthy: instance.state == crate::cloud::InstanceState::Running,
    }
}

/// What a whole pass needs: the cluster, its desired state and the network it asks for.
#[derive(Debug, Clone)]
pub struct PassInput<'a> {
    pub cluster_uuid: &'a str,
    pub generation: u64,
    pub spec: &'a ClusterSpec,
    pub network_request: &'a NetworkRequest,
    pub key_name: Option<&'a str>,
    pub next_slot: u32,
    /// Instances the caller has asked to terminate (a node removed by hand): they no longer
    /// count towards the target, even while EC2 still shows them running.
    pub terminating: &'a [String],
}

/// A whole pass: ensure the network and observe the cluster concurrently, then converge.
/// This is what a deploy, a scale and a resumed operation all run.
pub async fn run_pass<C: Cloud>(
    cloud: &C,
    pass: &PassInput<'_>,
    user_data: &(dyn Fn(&[NodeSlot]) -> String + Sync),
    log: &(dyn Fn(String) + Sync),
) -> Result<(Network, ConvergeReport), CloudError> {
    let (network, observed) = futures::join!(
        cloud.ensure_network(pass.network_request),
        cloud.describe_cluster(&pass.spec.region, pass.cluster_uuid)
    );
    let network = network?;
    let all_observed = observed?;
    let observed: Vec<Instance> = all_observed
        .iter()
        .filter(|i| !pass.terminating.contains(&i.instance_id))
        .cloned()
        .collect();
    for change in &network.changes {
        log(change.clone());
    }
    for skipped in &network.skipped_azs {
        log(format!(
            "skipping {}: {}",
            skipped.availability_zone, skipped.reason
        ));
    }
    let input = ConvergeInput {
        cluster_uuid: pass.cluster_uuid,
        generation: pass.generation,
        spec: pass.spec,
        network: &network,
        key_name: pass.key_name,
        next_slot: pass.next_slot,
    };
    let mut report = converge_cluster(cloud, &input, &observed, user_data, log).await?;
    report.observed = all_observed;
    Ok((network, report))
}

/// Brings the cluster to `spec.target_num_nodes` live instances, given the instances observed
/// at the start of the pass. `user_data` builds the bootstrap script of one launch batch.
pub async fn converge_cluster<C: Cloud>(
    cloud: &C,
    input: &ConvergeInput<'_>,
    observed: &[Instance],
    user_data: &(dyn Fn(&[NodeSlot]) -> String + Sync),
    log: &(dyn Fn(String) + Sync),
) -> Result<ConvergeReport, CloudError> {
    let spec = input.spec;
    let target = spec.target_num_nodes as usize;
    let mut alive: Vec<Instance> = observed
        .iter()
        .filter(|i| i.state.is_alive())
        .cloned()
        .collect();
    alive.sort_by_key(|i| i.slot);
    let mut next_slot = observed
        .iter()
        .map(|i| i.slot + 1)
        .max()
        .unwrap_or(0)
        .max(input.next_slot);
    let mut report = ConvergeReport::default();

    let mut unusable: BTreeSet<String> = BTreeSet::new();
    while alive.len() < target {
        let targets: Vec<Target> = input
            .network
            .subnets
            .iter()
            .filter(|s| !unusable.contains(&s.availability_zone))
            .map(|s| Target::new(s.availability_zone.clone(), s.id.clone()))
            .collect();
        if targets.is_empty() {
            let reasons: Vec<String> = report
                .unusable_azs
                .iter()
                .map(|s| format!("{}: {}", s.availability_zone, s.reason))
                .collect();
            return Err(CloudError::Capacity {
                availability_zone: "every usable AZ".into(),
                instance_type: spec.node_type.clone(),
                message: if reasons.is_empty() {
                    "the network has no usable subnet".into()
                } else {
                    reasons.join("; ")
                },
            });
        }
        let existing: Vec<PlacedNode> = alive.iter().map(placed).collect();
        let picks = place_new_nodes(&targets, &existing, target - alive.len());
        let mut requests = Vec::new();
        for (index, place) in targets.iter().enumerate() {
            let count = picks.iter().filter(|&&p| p == index).count() as u32;
            if count == 0 {
                continue;
            }
            let nodes: Vec<NodeSlot> = (next_slot..next_slot + count)
                .map(|slot| NodeSlot {
                    slot,
                    node_uuid: node_uuid(input.cluster_uuid, slot),
                })
                .collect();
            next_slot += count;
            requests.push(LaunchRequest {
                region: spec.region.clone(),
                cluster_uuid: input.cluster_uuid.to_owned(),
                generation: input.generation,
                subnet_id: place.subnet_id.clone(),
                availability_zone: place.availability_zone.clone(),
                security_groups: input.network.security_groups.clone(),
                image_id: input.network.image_id.clone(),
                node_type: spec.node_type.clone(),
                disk_gb: spec.disk_gb,
                instance_profile_name: spec
                    .provider_options
                    .iam
                    .as_ref()
                    .map(|iam| iam.instance_profile_name.clone()),
                key_name: input.key_name.map(str::to_owned),
                user_data: user_data(&nodes),
                nodes,
            });
        }
        for request in &requests {
            log(format!(
                "launching {} node(s) (slots {}..{}) in {} ({})",
                request.nodes.len(),
                request.first_slot(),
                request.first_slot() + request.nodes.len() as u32 - 1,
                request.availability_zone,
                request.subnet_id
            ));
        }
        let results = join_all(requests.iter().map(|r| cloud.launch_nodes(r))).await;
        let mut first_error = None;
        for (request, result) in requests.iter().zip(results) {
            match result {
                Ok(instances) => {
                    for instance in &instances {
                        log(format!(
                            "launched {} (node {}, slot {}) in {}",
                            instance.instance_id,
                            instance.node_uuid,
                            instance.slot,
                            instance.availability_zone
                        ));
                    }
                    alive.extend(instances.iter().cloned());
                    report.launched.extend(instances);
                }
                Err(CloudError::Capacity {
                    availability_zone,
                    message,
                    ..
                }) => {
                    log(format!(
                        "{availability_zone} has no capacity for {}: {message}; placing its {} node(s) elsewhere",
                        spec.node_type,
                        request.nodes.len()
                    ));
                    unusable.insert(request.availability_zone.clone());
                    report.unusable_azs.push(SkippedAz {
                        availability_zone: request.availability_zone.clone(),
                        reason: message,
                    });
                }
                Err(error) => {
                    log(format!(
                        "launch in {} failed: {error}",
                        request.availability_zone
                    ));
                    first_error.get_or_insert(error);
                }
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
    }

    if alive.len() > target {
        let existing: Vec<PlacedNode> = alive.iter().map(placed).collect();
        let mut chosen = choose_removals(&existing, alive.len() - target);
        let ids: Vec<String> = chosen
            .iter()
            .map(|&i| alive[i].instance_id.clone())
            .collect();
        for &i in &chosen {
            log(format!(
                "terminating {} (node {}, slot {}) in {}",
                alive[i].instance_id, alive[i].node_uuid, alive[i].slot, alive[i].availability_zone
            ));
        }
        cloud.terminate_nodes(&spec.region, &ids).await?;
        chosen.sort_unstable_by(|a, b| b.cmp(a));
        for i in chosen {
            report.terminated.push(alive.remove(i));
        }
    }

    alive.sort_by_key(|i| i.slot);
    report.instances = alive;
    report.next_slot = next_slot;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::Ingress;
    use crate::fake::FakeCloud;
    use crate::placement::nodes_per_az;
    use futures::executor::block_on;
    use serde_json::json;
    use std::sync::Mutex;

    fn spec(target: u32) -> ClusterSpec {
        ClusterSpec::from_json(
            &json!({"name": "web", "region": "us-east-1", "node_type": "t3.micro",
                                       "target_num_nodes": target}),
        )
        .expect("valid spec")
    }

    fn request() -> NetworkRequest {
        NetworkRequest {
            region: "us-east-1".into(),
            node_type: "t3.micro".into(),
            image_id: None,
            allowed_azs: Some(vec![
                "us-east-1a".into(),
                "us-east-1b".into(),
                "us-east-1c".into(),
            ]),
            vpc: None,
            instance_profile_name: None,
            ingress: Ingress::default(),
        }
    }

    fn pass(cloud: &FakeCloud, target: u32) -> Result<ConvergeReport, CloudError> {
        block_on(async {
            let network = cloud.ensure_network(&request()).await?;
            let observed = cloud.describe_cluster("us-east-1", "c1").await?;
            let spec = spec(target);
            let input = ConvergeInput {
                cluster_uuid: "c1",
                generation: 1,
                spec: &spec,
                network: &network,
                key_name: None,
                next_slot: 0,
            };
            converge_cluster(cloud, &input, &observed, &|_| "#!/bin/sh".into(), &|_| {}).await
        })
    }

    fn per_az(cloud: &FakeCloud) -> Vec<usize> {
        let alive: Vec<PlacedNode> = cloud.alive("c1").iter().map(placed).collect();
        nodes_per_az(["us-east-1a", "us-east-1b", "us-east-1c"], &alive)
            .into_values()
            .collect()
    }

    #[test]
    fn deploy_scale_up_and_down_keep_the_balance_with_one_launch_per_subnet() {
        let cloud = FakeCloud::new();
        let report = pass(&cloud, 6).expect("deploy");
        assert_eq!(report.launched.len(), 6);
        assert_eq!(per_az(&cloud), vec![2, 2, 2]);
        assert_eq!(cloud.calls("launch_nodes"), 3, "one launch per subnet");
        pass(&cloud, 9).expect("scale up");
        assert_eq!(per_az(&cloud), vec![3, 3, 3]);
        let report = pass(&cloud, 4).expect("scale down");
        assert_eq!(report.terminated.len(), 5);
        assert_eq!(per_az(&cloud), vec![2, 1, 1]);
        assert_eq!(
            cloud.calls("terminate_nodes"),
            1,
            "one terminate call for the whole scale-down"
        );
    }

    #[test]
    fn repeating_a_pass_does_nothing_more() {
        let cloud = FakeCloud::new();
        pass(&cloud, 5).expect("deploy");
        let again = pass(&cloud, 5).expect("again");
        assert!(again.launched.is_empty() && again.terminated.is_empty());
        assert_eq!(cloud.alive("c1").len(), 5);
    }

    #[test]
    fn a_capacity_error_moves_the_nodes_to_the_other_azs() {
        let cloud = FakeCloud::new();
        cloud.set_no_capacity("us-east-1b", true);
        let report = pass(&cloud, 6).expect("deploy");
        assert_eq!(report.unusable_azs.len(), 1);
        assert_eq!(per_az(&cloud), vec![3, 0, 3]);
        cloud.set_no_capacity("us-east-1b", false);
        pass(&cloud, 9).expect("scale");
        assert_eq!(
            per_az(&cloud),
            vec![3, 3, 3],
            "the recovered AZ is filled first"
        );
    }

    #[test]
    fn no_capacity_anywhere_is_an_error_naming_the_azs() {
        let cloud = FakeCloud::new();
        for az in ["us-east-1a", "us-east-1b", "us-east-1c"] {
            cloud.set_no_capacity(az, true);
        }
        let error = pass(&cloud, 2).expect_err("nowhere to go").to_string();
        assert!(
            error.contains("us-east-1a") && error.contains("us-east-1c"),
            "{error}"
        );
    }

    #[test]
    fn a_pass_interrupted_after_some_launches_is_finished_by_the_next() {
        let cloud = FakeCloud::new();
        cloud.fail_launch_after(1); // the second launch call fails
        assert!(pass(&cloud, 6).is_err());
        let partial = cloud.alive("c1").len();
        assert!(partial > 0 && partial < 6);
        pass(&cloud, 6).expect("resume");
        assert_eq!(per_az(&cloud), vec![2, 2, 2]);
        let slots: Vec<u32> = cloud.alive("c1").iter().map(|i| i.slot).collect();
        let unique: BTreeSet<u32> = slots.iter().copied().collect();
        assert_eq!(unique.len(), 6, "no slot is used twice: {slots:?}");
    }

    #[test]
    fn the_log_names_every_launch_and_termination() {
        let cloud = FakeCloud::new();
        let lines = Mutex::new(Vec::new());
        block_on(async {
            let network = cloud.ensure_network(&request()).await.expect("network");
            let spec = spec(3);
            let input = ConvergeInput {
                cluster_uuid: "c1",
                generation: 1,
                spec: &spec,
                network: &network,
                key_name: None,
                next_slot: 7,
            };
            let report = converge_cluster(&cloud, &input, &[], &|_| String::new(), &|line| {
                lines.lock().expect("lock").push(line)
            })
            .await
            .expect("pass");
            assert_eq!(report.next_slot, 10);
            assert_eq!(
                report.instances.iter().map(|i| i.slot).collect::<Vec<_>>(),
                vec![7, 8, 9]
            );
        });
        let lines = lines.into_inner().expect("lock");
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("launching 1 node(s)"))
                .count(),
            3
        );
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("launched ")).count(),
            3
        );
    }
}
