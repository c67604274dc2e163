//! Where a new cluster's nodes would land, before it is created: the launch wizard's
//! "nodes per AZ" preview (issue #13), decided by the same [`crate::placement`] rule the
//! cluster planner uses, so the page never guesses.
//!
//! Inputs are what the server already holds or caches: the region's AZs, the AZs offering
//! the node type, and (for a user's VPC) the region's [`NetworkInventory`] and the
//! account's instance profiles. The choices are checked against that inventory the way a
//! create checks them against AWS — a VPC that does not exist, a subnet or security group
//! of another VPC, an unknown instance profile — each an [`CloudError::InvalidResource`]
//! naming the `provider_options` field, so the page can show it next to its dropdown.

use std::collections::BTreeMap;

use crate::cloud::{AvailabilityZone, CloudError, InstanceProfileInfo, NetworkInventory};
use crate::placement::{Target, place_new_nodes};
use crate::spec::ClusterSpec;

/// Nodes planned in one AZ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzShare {
    pub availability_zone: String,
    /// The chosen subnets used there (empty: Flotilla's own subnet of the AZ).
    pub subnets: Vec<String>,
    pub nodes: u32,
}

/// The preview of a cluster's placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub shares: Vec<AzShare>,
    pub notes: Vec<String>,
}

fn invalid(field: &str, message: String) -> CloudError {
    CloudError::InvalidResource {
        field: field.to_owned(),
        message,
    }
}

/// The AZs Flotilla's own subnets would use: available, and offering the node type.
fn auto_targets(zones: &[AvailabilityZone], offered_in: &[String]) -> Vec<Target> {
    zones
        .iter()
        .filter(|z| z.available && offered_in.contains(&z.name))
        .map(|z| Target::new(z.name.clone(), String::new()))
        .collect()
}

/// Where `spec`'s nodes would land. `inventory` is needed when the spec names a VPC,
/// `profiles` when it names an instance profile; `None` skips that check.
pub fn preview(
    spec: &ClusterSpec,
    zones: &[AvailabilityZone],
    offered_in: &[String],
    inventory: Option<&NetworkInventory>,
    profiles: Option<&[InstanceProfileInfo]>,
) -> Result<Preview, CloudError> {
    let mut notes = Vec::new();
    if let (Some(iam), Some(profiles)) = (&spec.provider_options.iam, profiles) {
        let name = &iam.instance_profile_name;
        if !profiles.iter().any(|p| &p.name == name) {
            return Err(invalid(
                "provider_options.iam.instance_profile_name",
                format!("instance profile '{name}' does not exist"),
            ));
        }
    }
    let region = &spec.region;
    let targets = match (&spec.provider_options.vpc, inventory) {
        (None, _) | (Some(_), None) => {
            notes.push(format!(
                "Flotilla dry-runs a {} launch in each AZ before using it; an AZ that refuses gets no nodes and the others share them.",
                spec.node_type
            ));
            auto_targets(zones, offered_in)
        }
        (Some(vpc), Some(inventory)) => {
            if !inventory.vpcs.iter().any(|v| v.id == vpc.id) {
                return Err(invalid(
                    "provider_options.vpc.id",
                    format!("VPC {} does not exist in {region}", vpc.id),
                ));
            }
            for id in &vpc.security_groups {
                match inventory.security_groups.iter().find(|g| &g.id == id) {
                    None => {
                        return Err(invalid(
                            "provider_options.vpc.security_groups",
                            format!("security group {id} does not exist in {region}"),
                        ));
                    }
                    Some(group) if group.vpc_id != vpc.id => {
                        return Err(invalid(
                            "provider_options.vpc.security_groups",
                            format!(
                                "security group {id} belongs to {}, not to {}",
                                group.vpc_id, vpc.id
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
            let in_vpc: Vec<_> = inventory
                .subnets
                .iter()
                .filter(|s| s.vpc_id == vpc.id)
                .collect();
            if !vpc.subnets.is_empty() {
                let mut targets = Vec::new();
                for id in &vpc.subnets {
                    match inventory.subnets.iter().find(|s| &s.id == id) {
                        None => {
                            return Err(invalid(
                                "provider_options.vpc.subnets",
                                format!("subnet {id} does not exist in {region}"),
                            ));
                        }
                        Some(s) if s.vpc_id != vpc.id => {
                            return Err(invalid(
                                "provider_options.vpc.subnets",
                                format!("subnet {id} belongs to {}, not to {}", s.vpc_id, vpc.id),
                            ));
                        }
                        Some(s) => {
                            if !offered_in.contains(&s.availability_zone) {
                                notes.push(format!(
                                    "{} is not offered in {} (subnet {id}).",
                                    spec.node_type, s.availability_zone
                                ));
                            }
                            targets.push(Target::new(s.availability_zone.clone(), s.id.clone()));
                        }
                    }
                }
                targets
            } else if in_vpc.iter().any(|s| s.managed) {
                in_vpc
                    .iter()
                    .filter(|s| s.managed)
                    .map(|s| Target::new(s.availability_zone.clone(), s.id.clone()))
                    .collect()
            } else if in_vpc.is_empty() {
                notes.push(format!(
                    "{} has no subnets: Flotilla creates one per AZ.",
                    vpc.id
                ));
                auto_targets(zones, offered_in)
            } else {
                let ids: Vec<&str> = in_vpc.iter().map(|s| s.id.as_str()).collect();
                return Err(invalid(
                    "provider_options.vpc.subnets",
                    format!(
                        "{} already has subnets ({}); choose the ones to use",
                        vpc.id,
                        ids.join(", ")
                    ),
                ));
            }
        }
    };
    if targets.is_empty() {
        return Err(invalid(
            "node_type",
            format!("{} is offered in no usable AZ of {region}", spec.node_type),
        ));
    }
    let mut targets = targets;
    targets.sort();
    targets.dedup();
    let placed = place_new_nodes(&targets, &[], spec.target_num_nodes as usize);
    let mut shares: BTreeMap<&str, AzShare> = BTreeMap::new();
    for target in &targets {
        let share = shares
            .entry(target.availability_zone.as_str())
            .or_insert_with(|| AzShare {
                availability_zone: target.availability_zone.clone(),
                subnets: Vec::new(),
                nodes: 0,
            });
        if !target.subnet_id.is_empty() {
            share.subnets.push(target.subnet_id.clone());
        }
    }
    for index in placed {
        if let Some(share) = shares.get_mut(targets[index].availability_zone.as_str()) {
            share.nodes += 1;
        }
    }
    Ok(Preview {
        shares: shares.into_values().collect(),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{SecurityGroupInfo, SubnetInfo, VpcInfo};
    use crate::spec::{ProviderOptions, VpcOptions};

    fn spec(nodes: u32, vpc: Option<VpcOptions>) -> ClusterSpec {
        ClusterSpec {
            name: "web".into(),
            provider: "aws".into(),
            region: "us-east-1".into(),
            node_type: "t3.micro".into(),
            target_num_nodes: nodes,
            disk_gb: 30,
            tags: Vec::new(),
            provider_options: ProviderOptions { vpc, iam: None },
            auto_replace: false,
        }
    }

    fn zones(names: &[&str]) -> Vec<AvailabilityZone> {
        names
            .iter()
            .map(|n| AvailabilityZone {
                name: (*n).into(),
                available: true,
            })
            .collect()
    }

    fn inventory() -> NetworkInventory {
        let subnet = |id: &str, vpc: &str, az: &str| SubnetInfo {
            id: id.into(),
            vpc_id: vpc.into(),
            availability_zone: az.into(),
            cidr: "10.0.0.0/24".into(),
            available_ips: 250,
            name: None,
            managed: false,
        };
        let vpc = |id: &str| VpcInfo {
            id: id.into(),
            name: None,
            cidr: "10.0.0.0/16".into(),
            is_default: false,
            managed: false,
        };
        NetworkInventory {
            vpcs: vec![vpc("vpc-a"), vpc("vpc-b")],
            subnets: vec![
                subnet("subnet-a1", "vpc-a", "us-east-1a"),
                subnet("subnet-a2", "vpc-a", "us-east-1b"),
                subnet("subnet-b1", "vpc-b", "us-east-1a"),
            ],
            security_groups: vec![SecurityGroupInfo {
                id: "sg-b".into(),
                vpc_id: "vpc-b".into(),
                name: "b".into(),
                description: String::new(),
                managed: false,
            }],
        }
    }

    fn counts(preview: &Preview) -> Vec<(String, u32)> {
        preview
            .shares
            .iter()
            .map(|s| (s.availability_zone.clone(), s.nodes))
            .collect()
    }

    #[test]
    fn auto_spreads_over_the_azs_that_offer_the_type() {
        let all = zones(&["us-east-1a", "us-east-1b", "us-east-1c"]);
        let offered = vec!["us-east-1a".to_owned(), "us-east-1c".to_owned()];
        let preview = preview(&spec(5, None), &all, &offered, None, None).expect("preview");
        assert_eq!(
            counts(&preview),
            [("us-east-1a".into(), 3), ("us-east-1c".into(), 2)]
        );
    }

    #[test]
    fn chosen_subnets_take_the_nodes_and_foreign_ones_are_refused_by_field() {
        let all = zones(&["us-east-1a", "us-east-1b"]);
        let offered: Vec<String> = all.iter().map(|z| z.name.clone()).collect();
        let inventory = inventory();
        let vpc = |subnets: &[&str], groups: &[&str]| VpcOptions {
            id: "vpc-a".into(),
            subnets: subnets.iter().map(|s| (*s).to_owned()).collect(),
            security_groups: groups.iter().map(|s| (*s).to_owned()).collect(),
        };
        let ok = preview(
            &spec(3, Some(vpc(&["subnet-a1", "subnet-a2"], &[]))),
            &all,
            &offered,
            Some(&inventory),
            None,
        )
        .expect("preview");
        assert_eq!(
            counts(&ok),
            [("us-east-1a".into(), 2), ("us-east-1b".into(), 1)]
        );
        assert_eq!(ok.shares[0].subnets, ["subnet-a1"]);
        for (options, field) in [
            (vpc(&["subnet-b1"], &[]), "provider_options.vpc.subnets"),
            (vpc(&[], &["sg-b"]), "provider_options.vpc.security_groups"),
            (vpc(&[], &[]), "provider_options.vpc.subnets"),
        ] {
            let error = preview(
                &spec(3, Some(options)),
                &all,
                &offered,
                Some(&inventory),
                None,
            )
            .expect_err("refused");
            assert!(
                matches!(&error, CloudError::InvalidResource { field: f, .. } if f == field),
                "{error}"
            );
        }
    }
}
