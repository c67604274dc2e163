//! The executor: carries out what `flotilla_core::plan` decided, against any `Cloud`.
//!
//! It observes, asks the planner, applies the plan's steps and reports; it makes no choice
//! of its own. What a step returns is fed back as an observation — the instances a launch
//! created, an AZ that refused for capacity — and the planner is asked again, until the
//! plan is empty. Planning again after a plan was applied yields nothing (the planner's
//! property tests hold it to that), so the loop ends after one round unless a step was
//! refused; [`MAX_ROUNDS`] only guards against a planner bug.
//!
//! Both `flotilla engine` (no server, no store) and the server's reconcilers run clusters
//! through these two functions, so "converge to N" and "terminate everything, then tear
//! down" exist once.
//!
//! A swarm's load balancer has its own pair, [`converge_load_balancer`] and
//! [`remove_load_balancer`], over `flotilla_core::plan::lb`: observe once, then apply the
//! planner's rounds (each round's steps concurrently), recording what every step returned,
//! until the plan is empty.

use flotilla_core::cloud::{
    Cloud, CloudError, Instance, LaunchRequest, Network, NetworkRequest, NodeSlot, SkippedAz,
    TeardownReport,
};
use flotilla_core::plan::cluster::{
    Desired, NetworkUse, Observed, Plan, Reason, plan, plan_removal,
};
use flotilla_core::plan::lb;
use futures::future::join_all;

/// Rounds of "plan, apply" before the executor calls the planner broken.
pub const MAX_ROUNDS: usize = 8;

/// What [`converge`] did.
#[derive(Debug, Clone)]
pub struct Converged {
    pub network: Network,
    pub launched: Vec<Instance>,
    pub terminated: Vec<Instance>,
    /// Every instance observed, launched or terminated in this pass, with its last state.
    pub observed: Observed,
    /// The next unused slot after this pass.
    pub next_slot: u32,
    /// The nodes that must be leaving their swarm before they go (the last plan's
    /// [`Plan::leaving`]); empty outside swarms.
    pub leaving: std::collections::BTreeSet<String>,
}

impl Converged {
    /// The cluster's live members after the pass, by slot.
    pub fn instances(&self) -> Vec<Instance> {
        self.observed.members().into_iter().cloned().collect()
    }

    pub fn refused_azs(&self) -> &[SkippedAz] {
        &self.observed.refused_azs
    }
}

/// What the store knows about the cluster's nodes that the cloud cannot show.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// Instances of nodes removed by hand.
    pub removed_by_hand: Vec<String>,
    /// Nodes (uuids) marked leaving their swarm, and those the swarm released.
    pub leaving: std::collections::BTreeSet<String>,
    pub released: std::collections::BTreeSet<String>,
}

/// Observes the network and the cluster, then plans and applies until nothing is left.
/// `user_data` builds the bootstrap script of one launch batch; `log` receives every step.
pub async fn converge<C: Cloud>(
    cloud: &C,
    desired: &Desired<'_>,
    network_request: &NetworkRequest,
    recorded: &Recorded,
    user_data: &(dyn Fn(&[NodeSlot]) -> String + Sync),
    log: &(dyn Fn(String) + Sync),
) -> Result<Converged, CloudError> {
    let (network, instances) = futures::join!(
        cloud.ensure_network(network_request),
        cloud.describe_cluster(&desired.spec.region, desired.cluster_uuid)
    );
    let network = network?;
    for change in &network.changes {
        log(change.clone());
    }
    for skipped in &network.skipped_azs {
        log(format!(
            "skipping {}: {}",
            skipped.availability_zone, skipped.reason
        ));
    }
    let mut observed = Observed {
        network: network.clone(),
        instances: instances?,
        removed_by_hand: recorded.removed_by_hand.iter().cloned().collect(),
        refused_azs: Vec::new(),
        leaving: recorded.leaving.clone(),
        released: recorded.released.clone(),
    };
    let mut done = Converged {
        network,
        launched: Vec::new(),
        terminated: Vec::new(),
        observed: observed.clone(),
        next_slot: desired.next_slot,
        leaving: Default::default(),
    };
    for _ in 0..MAX_ROUNDS {
        let plan = plan(desired, &observed).map_err(|error| CloudError::Capacity {
            availability_zone: "every usable AZ".into(),
            instance_type: error.node_type,
            message: error.reasons,
        })?;
        done.next_slot = done.next_slot.max(plan.next_slot);
        done.leaving = plan.leaving.clone();
        if plan.is_empty() {
            done.observed = observed;
            return Ok(done);
        }
        if !plan.launches.is_empty() {
            let refused_before = observed.refused_azs.len();
            launch(cloud, &plan, &mut observed, &mut done, user_data, log).await?;
            if observed.refused_azs.len() > refused_before {
                // A refusal is a new observation: plan again before terminating anything.
                continue;
            }
        }
        terminate(
            cloud,
            &desired.spec.region,
            &plan,
            &mut observed,
            &mut done,
            log,
        )
        .await?;
    }
    Err(CloudError::Other {
        operation: "plan".into(),
        message: format!("the cluster planner did not settle after {MAX_ROUNDS} rounds"),
    })
}

/// Runs a plan's launches concurrently, recording what each returned.
async fn launch<C: Cloud>(
    cloud: &C,
    plan: &Plan,
    observed: &mut Observed,
    done: &mut Converged,
    user_data: &(dyn Fn(&[NodeSlot]) -> String + Sync),
    log: &(dyn Fn(String) + Sync),
) -> Result<(), CloudError> {
    let requests: Vec<LaunchRequest> = plan
        .launches
        .iter()
        .map(|launch| LaunchRequest {
            user_data: user_data(&launch.nodes),
            ..launch.clone()
        })
        .collect();
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
                done.launched.extend(instances.iter().cloned());
                observed.launched(instances);
            }
            Err(CloudError::Capacity {
                availability_zone,
                message,
                ..
            }) => {
                log(format!(
                    "{availability_zone} has no capacity for {}: {message}; placing its {} node(s) elsewhere",
                    request.node_type,
                    request.nodes.len()
                ));
                observed.refused(&request.availability_zone, &message);
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
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Terminates a plan's instances in one call.
async fn terminate<C: Cloud>(
    cloud: &C,
    region: &str,
    plan: &Plan,
    observed: &mut Observed,
    done: &mut Converged,
    log: &(dyn Fn(String) + Sync),
) -> Result<(), CloudError> {
    if plan.terminations.is_empty() {
        return Ok(());
    }
    for t in &plan.terminations {
        let why = match t.reason {
            Reason::Surplus => "",
            Reason::RemovedByHand => ", removed by hand",
            Reason::ClusterRemoved => ", cluster removed",
        };
        log(format!(
            "terminating {} (node {}, slot {}) in {}{why}",
            t.instance_id, t.node_uuid, t.slot, t.availability_zone
        ));
    }
    let ids = plan.termination_ids();
    cloud.terminate_nodes(region, &ids).await?;
    done.terminated.extend(
        observed
            .instances
            .iter()
            .filter(|i| ids.contains(&i.instance_id) && i.state.is_alive())
            .cloned(),
    );
    observed.terminated(&ids);
    Ok(())
}

/// What [`remove`] did.
#[derive(Debug, Clone, Default)]
pub struct Removed {
    pub terminated: Vec<String>,
    /// Every live instance was terminated (the teardown may still have failed).
    pub instances_terminated: bool,
    /// The teardown's report when the plan tore the network down.
    pub teardown: Option<TeardownReport>,
}

/// Removes a cluster: terminates every live instance, then tears the auto network down when
/// the planner says so. A failed teardown is returned as the error, after the terminations.
pub async fn remove<C: Cloud>(
    cloud: &C,
    region: &str,
    cluster_uuid: &str,
    network: &NetworkUse,
    log: &(dyn Fn(String) + Sync),
) -> Result<Removed, (Removed, CloudError)> {
    let mut removed = Removed::default();
    let instances = cloud
        .describe_cluster(region, cluster_uuid)
        .await
        .map_err(|e| (Removed::default(), e))?;
    let removal = plan_removal(region, &instances, network);
    if !removal.terminations.is_empty() {
        let ids: Vec<String> = removal
            .terminations
            .iter()
            .map(|t| t.instance_id.clone())
            .collect();
        log(format!(
            "terminating {} node(s): {}",
            ids.len(),
            ids.join(", ")
        ));
        cloud
            .terminate_nodes(region, &ids)
            .await
            .map_err(|e| (Removed::default(), e))?;
        removed.terminated = ids;
    }
    removed.instances_terminated = true;
    if let Some(line) = &removal.network_kept_because {
        log(line.clone());
    }
    if removal.teardown_network {
        match cloud.teardown_network(region).await {
            Ok(report) => {
                for line in &report.deleted {
                    log(line.clone());
                }
                removed.teardown = Some(report);
            }
            Err(error) => return Err((removed, error)),
        }
    }
    Ok(removed)
}

/// A swarm's load balancer after [`converge_load_balancer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbState {
    /// `None` until the swarm has a node (a load balancer needs a subnet).
    pub dns_name: Option<String>,
    /// Port → protocol of every listener.
    pub listeners: std::collections::BTreeMap<u16, lb::Protocol>,
}

/// Observes the swarm's load balancer, then applies `plan::lb::plan`'s rounds until the plan
/// is empty (three rounds from nothing, none when nothing changed). A failed step ends the
/// pass with its error after the rest of its round; the next pass observes again.
pub async fn converge_load_balancer<C: Cloud>(
    cloud: &C,
    region: &str,
    desired: &lb::Desired,
    log: &(dyn Fn(String) + Sync),
) -> Result<LbState, CloudError> {
    let mut observed = cloud
        .describe_load_balancer(region, &desired.swarm_uuid)
        .await?;
    for _ in 0..MAX_ROUNDS {
        let steps = lb::plan(desired, &observed);
        if steps.is_empty() {
            return Ok(LbState {
                dns_name: observed.dns_name().map(str::to_owned),
                listeners: observed
                    .listeners
                    .iter()
                    .map(|l| (l.port, l.protocol))
                    .collect(),
            });
        }
        apply_lb_round(
            cloud,
            region,
            &desired.swarm_uuid,
            &steps,
            &mut observed,
            log,
        )
        .await?;
    }
    Err(CloudError::Other {
        operation: "plan".into(),
        message: format!("the load balancer planner did not settle after {MAX_ROUNDS} rounds"),
    })
}

/// Removes everything of the swarm's load balancer (`plan::lb::plan_removal`'s rounds):
/// listeners and the nodes' rule, then target groups and the load balancer, then its
/// security group. In AWS the group stays in use for a few minutes after its load balancer
/// is deleted: that is a [`CloudError::DependencyViolation`], and a later call finishes.
pub async fn remove_load_balancer<C: Cloud>(
    cloud: &C,
    region: &str,
    swarm_uuid: &str,
    log: &(dyn Fn(String) + Sync),
) -> Result<(), CloudError> {
    let mut observed = cloud.describe_load_balancer(region, swarm_uuid).await?;
    for _ in 0..MAX_ROUNDS {
        let steps = lb::plan_removal(&observed);
        if steps.is_empty() {
            return Ok(());
        }
        apply_lb_round(cloud, region, swarm_uuid, &steps, &mut observed, log).await?;
    }
    Err(CloudError::Other {
        operation: "plan".into(),
        message: format!("the load balancer removal did not settle after {MAX_ROUNDS} rounds"),
    })
}

/// Runs one round's steps concurrently and records what each returned.
async fn apply_lb_round<C: Cloud>(
    cloud: &C,
    region: &str,
    swarm_uuid: &str,
    steps: &[lb::LbStep],
    observed: &mut lb::Observed,
    log: &(dyn Fn(String) + Sync),
) -> Result<(), CloudError> {
    for step in steps {
        log(step.describe());
    }
    let results = join_all(
        steps
            .iter()
            .map(|step| cloud.apply_load_balancer_step(region, swarm_uuid, step)),
    )
    .await;
    let mut first_error = None;
    for (step, result) in steps.iter().zip(results) {
        match result {
            Ok(applied) => {
                if let lb::Applied::LoadBalancer(made) = &applied {
                    log(format!("load balancer {} ({})", made.dns_name, made.arn));
                }
                observed.record(step, &applied);
            }
            Err(error) => {
                log(format!("{} failed: {error}", step.describe()));
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::ClusterSpec;
    use flotilla_core::cloud::Ingress;
    use flotilla_core::fake::FakeCloud;
    use flotilla_core::placement::{PlacedNode, nodes_per_az};
    use flotilla_core::plan::cluster::placed;
    use futures::executor::block_on;
    use serde_json::json;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    fn spec(target: u32) -> ClusterSpec {
        ClusterSpec::from_json(&json!({"name": "web", "region": "us-east-1",
            "node_type": "t3.micro", "target_num_nodes": target}))
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

    fn pass_from(cloud: &FakeCloud, target: u32, next_slot: u32) -> Result<Converged, CloudError> {
        let spec = spec(target);
        let desired = Desired {
            cluster_uuid: "c1",
            generation: 1,
            spec: &spec,
            key_name: None,
            next_slot,
            leave_first: false,
        };
        block_on(converge(
            cloud,
            &desired,
            &request(),
            &Recorded::default(),
            &|_| "#!/bin/sh".into(),
            &|_| {},
        ))
    }

    fn pass(cloud: &FakeCloud, target: u32) -> Result<Converged, CloudError> {
        pass_from(cloud, target, 0)
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
        assert_eq!(report.refused_azs().len(), 1);
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
    fn the_log_names_every_launch_and_slots_start_at_the_recorded_mark() {
        let cloud = FakeCloud::new();
        let lines = Mutex::new(Vec::new());
        let spec = spec(3);
        let desired = Desired {
            cluster_uuid: "c1",
            generation: 1,
            spec: &spec,
            key_name: None,
            next_slot: 7,
            leave_first: false,
        };
        let report = block_on(converge(
            &cloud,
            &desired,
            &request(),
            &Recorded::default(),
            &|_| String::new(),
            &|line| lines.lock().expect("lock").push(line),
        ))
        .expect("pass");
        assert_eq!(report.next_slot, 10);
        assert_eq!(
            report
                .instances()
                .iter()
                .map(|i| i.slot)
                .collect::<Vec<_>>(),
            vec![7, 8, 9]
        );
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

    #[test]
    fn removal_terminates_then_tears_down_once() {
        let cloud = FakeCloud::new();
        pass(&cloud, 3).expect("deploy");
        let removed = block_on(remove(
            &cloud,
            "us-east-1",
            "c1",
            &NetworkUse::Auto {
                other_clusters: Vec::new(),
            },
            &|_| {},
        ))
        .expect("remove");
        assert_eq!(removed.terminated.len(), 3);
        assert!(removed.teardown.is_some());
        assert!(cloud.alive("c1").is_empty());
        assert_eq!(cloud.calls("teardown_network"), 1);
    }

    mod load_balancer {
        use super::*;
        use flotilla_core::plan::lb::{Desired as LbDesired, PublishedPort};
        use std::collections::BTreeMap;

        const SWARM: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
        const REGION: &str = "us-east-1";

        fn desired(ports: &[u16], targets: &[&str]) -> LbDesired {
            LbDesired {
                swarm_uuid: SWARM.into(),
                name: lb::lb_name(SWARM),
                vpc_id: "vpc-1".into(),
                subnets: BTreeMap::from([
                    ("us-east-1a".to_owned(), "subnet-a".to_owned()),
                    ("us-east-1b".to_owned(), "subnet-b".to_owned()),
                ]),
                node_security_group: Some("sg-nodes".into()),
                ports: ports.iter().map(|p| PublishedPort::tcp(*p)).collect(),
                targets: targets.iter().map(|t| (*t).to_owned()).collect(),
            }
        }

        fn converge(cloud: &FakeCloud, want: &LbDesired) -> Result<LbState, CloudError> {
            block_on(converge_load_balancer(cloud, REGION, want, &|_| {}))
        }

        /// The cloud's state without its generated ids: load balancers, groups with
        /// their ingress, node rules, listeners (port, protocol), target groups (port,
        /// protocol, targets).
        type Shape = (
            usize,
            Vec<Vec<PublishedPort>>,
            usize,
            Vec<(u16, lb::Protocol)>,
            Vec<(u16, lb::Protocol, Vec<String>)>,
        );

        fn shape(cloud: &FakeCloud) -> Shape {
            let world = cloud.load_balancer(REGION, SWARM);
            let mut listeners: Vec<_> = world
                .listeners
                .iter()
                .map(|l| (l.port, l.protocol))
                .collect();
            listeners.sort();
            let mut groups: Vec<_> = world
                .target_groups
                .iter()
                .map(|g| (g.port, g.protocol, g.targets.iter().cloned().collect()))
                .collect();
            groups.sort();
            (
                world.load_balancers.len(),
                world
                    .security_groups
                    .iter()
                    .map(|g| g.ingress.iter().copied().collect())
                    .collect(),
                world.node_rules.len(),
                listeners,
                groups,
            )
        }

        #[test]
        fn converges_changes_and_repeats_without_a_change() {
            let cloud = FakeCloud::new();
            let state = converge(&cloud, &desired(&[80, 8080], &["i-1", "i-2"])).expect("first");
            assert!(state.dns_name.is_some());
            assert_eq!(
                state.listeners.keys().copied().collect::<Vec<_>>(),
                vec![80, 8080]
            );
            let steps = cloud.calls("apply_load_balancer_step");
            let later = desired(&[8080, 9000], &["i-1"]);
            let state = converge(&cloud, &later).expect("change");
            assert_eq!(
                state.listeners.keys().copied().collect::<Vec<_>>(),
                vec![8080, 9000]
            );
            let (_, _, _, _, groups) = shape(&cloud);
            assert_eq!(
                groups
                    .iter()
                    .map(|g| (g.0, g.2.clone()))
                    .collect::<Vec<_>>(),
                vec![
                    (8080, vec!["i-1".to_owned()]),
                    (9000, vec!["i-1".to_owned()])
                ]
            );
            assert!(cloud.calls("apply_load_balancer_step") > steps);
            let (steps, describes) = (
                cloud.calls("apply_load_balancer_step"),
                cloud.calls("describe_load_balancer"),
            );
            let again = converge(&cloud, &later).expect("again");
            assert_eq!(again, state);
            assert_eq!(
                cloud.calls("apply_load_balancer_step"),
                steps,
                "nothing to change"
            );
            assert_eq!(cloud.calls("describe_load_balancer"), describes + 1);
            block_on(remove_load_balancer(&cloud, REGION, SWARM, &|_| {})).expect("remove");
            assert!(cloud.load_balancer(REGION, SWARM).is_empty());
        }

        #[test]
        fn a_swarm_without_nodes_gets_its_load_balancer_with_its_first_node() {
            let cloud = FakeCloud::new();
            let mut want = desired(&[80], &[]);
            want.subnets.clear();
            let state = converge(&cloud, &want).expect("no node yet");
            assert_eq!(state.dns_name, None);
            let state = converge(&cloud, &desired(&[80], &["i-1"])).expect("first node");
            assert!(state.dns_name.is_some());
        }

        /// A pass killed after its k-th step — before AWS acted, or after it acted but
        /// before the answer arrived — is finished by the next pass: for every k, the end
        /// state is the one an uninterrupted pass reaches. The same for a change of ports
        /// and targets, and for the removal.
        #[test]
        fn a_pass_killed_after_any_step_is_finished_by_the_next() {
            let first = desired(&[80, 8080], &["i-1", "i-2"]);
            let second = desired(&[8080, 9000], &["i-1"]);
            let reference = FakeCloud::new();
            converge(&reference, &first).expect("reference");
            let after_first = shape(&reference);
            let steps_first = reference.calls("apply_load_balancer_step");
            converge(&reference, &second).expect("reference change");
            let after_second = shape(&reference);
            let steps_second = reference.calls("apply_load_balancer_step") - steps_first;
            assert!(
                steps_first >= 8 && steps_second >= 4,
                "{steps_first} {steps_second}"
            );
            for applied in [false, true] {
                for k in 0..steps_first {
                    let cloud = FakeCloud::new();
                    cloud.fail_lb_steps_after(k, applied);
                    assert!(converge(&cloud, &first).is_err(), "k = {k}");
                    cloud.heal_lb();
                    converge(&cloud, &first).expect("resumed");
                    assert_eq!(shape(&cloud), after_first, "k = {k}, applied = {applied}");
                }
                for k in 0..steps_second {
                    let cloud = FakeCloud::new();
                    converge(&cloud, &first).expect("first");
                    cloud.fail_lb_steps_after(k, applied);
                    assert!(converge(&cloud, &second).is_err(), "k = {k}");
                    cloud.heal_lb();
                    converge(&cloud, &second).expect("resumed");
                    assert_eq!(shape(&cloud), after_second, "k = {k}, applied = {applied}");
                }
                for k in 0..6 {
                    let cloud = FakeCloud::new();
                    converge(&cloud, &first).expect("first");
                    cloud.fail_lb_steps_after(k, applied);
                    assert!(
                        block_on(remove_load_balancer(&cloud, REGION, SWARM, &|_| {})).is_err()
                    );
                    cloud.heal_lb();
                    block_on(remove_load_balancer(&cloud, REGION, SWARM, &|_| {}))
                        .expect("resumed");
                    assert!(cloud.load_balancer(REGION, SWARM).is_empty(), "k = {k}");
                }
            }
        }
    }
}
