//! High-availability placement: which subnet each new node goes to, which node a scale-down
//! removes.
//!
//! Docker Cloud's rule, kept exactly: nodes are added *one at a time* to the least-populated
//! availability zone of the cluster. We rank by (nodes in the AZ, nodes in the subnet, AZ name,
//! subnet id), so with user-chosen subnets that share an AZ the AZs are balanced first and the
//! subnets within them second, and ties always go to the alphabetically first place — the same
//! inputs give the same plan on every run, which is what makes a resumed deploy recognise its
//! own earlier work. A single target takes every node.
//!
//! Removal mirrors it: take from the most-populated AZ (ties: the alphabetically *last*, so an
//! add followed by a remove returns to the same layout), and inside it prefer a node that is not
//! healthy, then the newest slot. Removing from the most-populated zone keeps a balanced cluster
//! balanced, which the property tests below check for every sequence of scale operations.

use std::collections::BTreeMap;

/// A place nodes can be launched into.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub availability_zone: String,
    pub subnet_id: String,
}

impl Target {
    pub fn new(availability_zone: impl Into<String>, subnet_id: impl Into<String>) -> Self {
        Target {
            availability_zone: availability_zone.into(),
            subnet_id: subnet_id.into(),
        }
    }
}

/// An existing node, as far as placement cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedNode {
    pub availability_zone: String,
    pub subnet_id: String,
    pub slot: u32,
    pub healthy: bool,
}

/// For each of `count` new nodes, in order, the index into `targets` it goes to.
/// Nodes already running in places that are not in `targets` (an AZ that is unusable today)
/// still count for their AZ, so the usable AZs are balanced against each other.
pub fn place_new_nodes(targets: &[Target], existing: &[PlacedNode], count: usize) -> Vec<usize> {
    if targets.is_empty() {
        return Vec::new();
    }
    let mut per_az: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_subnet: BTreeMap<&str, usize> = BTreeMap::new();
    for node in existing {
        *per_az.entry(node.availability_zone.as_str()).or_default() += 1;
        *per_subnet.entry(node.subnet_id.as_str()).or_default() += 1;
    }
    let mut chosen = Vec::with_capacity(count);
    for _ in 0..count {
        let index = (0..targets.len())
            .min_by_key(|&i| {
                let target = &targets[i];
                (
                    per_az
                        .get(target.availability_zone.as_str())
                        .copied()
                        .unwrap_or(0),
                    per_subnet
                        .get(target.subnet_id.as_str())
                        .copied()
                        .unwrap_or(0),
                    target,
                )
            })
            .expect("targets is not empty");
        let target = &targets[index];
        *per_az.entry(target.availability_zone.as_str()).or_default() += 1;
        *per_subnet.entry(target.subnet_id.as_str()).or_default() += 1;
        chosen.push(index);
    }
    chosen
}

/// Indices into `nodes` of the `count` nodes a scale-down removes, in removal order.
pub fn choose_removals(nodes: &[PlacedNode], count: usize) -> Vec<usize> {
    let mut remaining: Vec<usize> = (0..nodes.len()).collect();
    let mut removed = Vec::with_capacity(count.min(nodes.len()));
    for _ in 0..count.min(nodes.len()) {
        let mut per_az: BTreeMap<&str, usize> = BTreeMap::new();
        let mut per_subnet: BTreeMap<&str, usize> = BTreeMap::new();
        for &i in &remaining {
            *per_az
                .entry(nodes[i].availability_zone.as_str())
                .or_default() += 1;
            *per_subnet.entry(nodes[i].subnet_id.as_str()).or_default() += 1;
        }
        let position = (0..remaining.len())
            .max_by_key(|&p| {
                let node = &nodes[remaining[p]];
                (
                    per_az[node.availability_zone.as_str()],
                    &node.availability_zone,
                    per_subnet[node.subnet_id.as_str()],
                    &node.subnet_id,
                    !node.healthy,
                    node.slot,
                )
            })
            .expect("remaining is not empty while count <= nodes.len()");
        removed.push(remaining.remove(position));
    }
    removed
}

/// Nodes per AZ, including AZs with none among `azs`.
pub fn nodes_per_az<'a>(
    azs: impl IntoIterator<Item = &'a str>,
    nodes: &[PlacedNode],
) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> =
        azs.into_iter().map(|az| (az.to_owned(), 0)).collect();
    for node in nodes {
        *counts.entry(node.availability_zone.clone()).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn targets(azs: &[&str]) -> Vec<Target> {
        azs.iter()
            .map(|az| Target::new(*az, format!("subnet-{az}")))
            .collect()
    }

    fn add(targets: &[Target], nodes: &mut Vec<PlacedNode>, count: usize) {
        let next = nodes.iter().map(|n| n.slot + 1).max().unwrap_or(0);
        for (k, i) in place_new_nodes(targets, nodes, count)
            .into_iter()
            .enumerate()
        {
            nodes.push(PlacedNode {
                availability_zone: targets[i].availability_zone.clone(),
                subnet_id: targets[i].subnet_id.clone(),
                slot: next + k as u32,
                healthy: true,
            });
        }
    }

    fn remove(nodes: &mut Vec<PlacedNode>, count: usize) {
        let mut chosen = choose_removals(nodes, count);
        chosen.sort_unstable_by(|a, b| b.cmp(a));
        for i in chosen {
            nodes.remove(i);
        }
    }

    fn spread(azs: &[&str], nodes: &[PlacedNode]) -> usize {
        let counts = nodes_per_az(azs.iter().copied(), nodes);
        let max = counts.values().max().copied().unwrap_or(0);
        let min = counts.values().min().copied().unwrap_or(0);
        max - min
    }

    #[test]
    fn six_nodes_over_three_azs_round_robin_in_name_order() {
        let t = targets(&["c", "a", "b"]);
        let order: Vec<&str> = place_new_nodes(&t, &[], 4)
            .into_iter()
            .map(|i| t[i].availability_zone.as_str())
            .collect();
        assert_eq!(order, vec!["a", "b", "c", "a"]);
    }

    #[test]
    fn scale_up_fills_the_least_populated_az_first() {
        let t = targets(&["a", "b", "c"]);
        let mut nodes = Vec::new();
        add(&t, &mut nodes, 1);
        add(&t[..1], &mut nodes, 2); // a got 3 while b and c were unusable
        let order: Vec<&str> = place_new_nodes(&t, &nodes, 4)
            .into_iter()
            .map(|i| t[i].availability_zone.as_str())
            .collect();
        assert_eq!(order, vec!["b", "c", "b", "c"]);
    }

    #[test]
    fn scale_down_takes_from_the_fullest_az_and_prefers_unhealthy_then_newest() {
        let t = targets(&["a", "b", "c"]);
        let mut nodes = Vec::new();
        add(&t, &mut nodes, 7); // a:3 b:2 c:2
        nodes[2].healthy = false; // slot 2 in c
        let first = choose_removals(&nodes, 1)[0];
        assert_eq!(nodes[first].availability_zone, "a");
        assert_eq!(nodes[first].slot, 6, "newest node of the fullest AZ");
        let two = choose_removals(&nodes, 2);
        assert_eq!(
            nodes[two[1]].slot, 2,
            "then, from c (a tie of three, c is last), the unhealthy node"
        );
    }

    #[test]
    fn user_subnets_in_one_az_share_the_nodes() {
        let t = vec![Target::new("a", "subnet-1"), Target::new("a", "subnet-2")];
        let picks = place_new_nodes(&t, &[], 5);
        assert_eq!(picks, vec![0, 1, 0, 1, 0]);
    }

    #[test]
    fn a_single_subnet_takes_every_node_and_no_target_takes_none() {
        assert_eq!(place_new_nodes(&targets(&["a"]), &[], 3), vec![0, 0, 0]);
        assert!(place_new_nodes(&[], &[], 3).is_empty());
        assert!(choose_removals(&[], 3).is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Up(usize),
        Down(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                (1usize..20).prop_map(Op::Up),
                (1usize..20).prop_map(Op::Down)
            ],
            1..15,
        )
    }

    proptest! {
        #[test]
        fn balanced_clusters_stay_balanced_through_any_scaling(az_count in 1usize..=6, start in 0usize..30, ops in ops()) {
            let names = ["a", "b", "c", "d", "e", "f"];
            let t = targets(&names[..az_count]);
            let mut nodes = Vec::new();
            add(&t, &mut nodes, start);
            prop_assert!(spread(&names[..az_count], &nodes) <= 1);
            for op in ops {
                match op {
                    Op::Up(k) => add(&t, &mut nodes, k),
                    Op::Down(k) => remove(&mut nodes, k),
                }
                prop_assert!(spread(&names[..az_count], &nodes) <= 1, "after {:?}", nodes);
            }
        }

        #[test]
        fn unusable_azs_are_skipped_and_the_rest_stay_balanced(
            az_count in 2usize..=6, unusable_mask in any::<u8>(), start in 0usize..20, ops in ops(),
        ) {
            let names = ["a", "b", "c", "d", "e", "f"];
            let all = targets(&names[..az_count]);
            let usable: Vec<Target> = all.iter().enumerate()
                .filter(|(i, _)| unusable_mask & (1 << i) == 0).map(|(_, t)| t.clone()).collect();
            prop_assume!(!usable.is_empty());
            let usable_names: Vec<&str> = usable.iter().map(|t| t.availability_zone.as_str()).collect();
            let mut nodes = Vec::new();
            for op in ops {
                match op {
                    Op::Up(k) => add(&usable, &mut nodes, k + start),
                    Op::Down(k) => remove(&mut nodes, k),
                }
                prop_assert!(nodes.iter().all(|n| usable_names.contains(&n.availability_zone.as_str())));
                prop_assert!(spread(&usable_names, &nodes) <= 1);
            }
        }

        #[test]
        fn adding_never_widens_an_unbalanced_cluster(counts in prop::collection::vec(0usize..8, 1..6), k in 0usize..30) {
            let names = ["a", "b", "c", "d", "e", "f"];
            let azs = &names[..counts.len()];
            let t = targets(azs);
            let mut nodes = Vec::new();
            for (i, &c) in counts.iter().enumerate() {
                add(&t[i..=i], &mut nodes, c);
            }
            let before = spread(azs, &nodes);
            add(&t, &mut nodes, k);
            prop_assert!(spread(azs, &nodes) <= before.max(1));
        }
    }
}
