//! The network planner: every choice about a cluster's network, from what was described.
//!
//! `aws::network` sequences describes and creates in rounds (five for a network from
//! nothing, each round's calls concurrent) and makes no choice of its own: between rounds
//! it asks the functions here, which AZs are usable, which of several duplicates to keep
//! (a create still in flight when an earlier run crashed can land after the next run
//! looked), which subnets still lack an association, and which security group rules are
//! missing. [`crate::fake::FakeCloud`] uses the same AZ rule.
//!
//! Tie-breaks, so that every run keeps the same resource: the lowest VPC id; the gateway
//! attached to the kept VPC, else an unattached one, else the first; the route table that
//! already routes or is associated, else the first; per AZ, the subnet in the AZ's planned
//! CIDR block, else the first found (lowest id); the first security group.

use std::collections::{BTreeMap, BTreeSet};

use crate::cloud::{AvailabilityZone, CloudError, NetworkRequest};
use crate::network::SubnetPlan;

/// A VPC as described.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DescribedVpc {
    pub id: String,
    pub cidr: String,
}

/// A subnet as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedSubnet {
    pub id: String,
    pub availability_zone: String,
    pub cidr: String,
    pub vpc_id: String,
    /// Carries our owner tag.
    pub owned: bool,
}

/// An internet gateway as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedGateway {
    pub id: String,
    /// The VPCs it is attached to.
    pub attached_to: Vec<String>,
}

/// A route table as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedRouteTable {
    pub id: String,
    pub has_default_route: bool,
    /// (association id, subnet id) of explicit subnet associations.
    pub associations: Vec<(String, String)>,
}

/// An ingress rule: (protocol, from port, to port, CIDR).
pub type Rule = (String, i32, i32, String);

/// A security group as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedSecurityGroup {
    pub id: String,
    pub vpc_id: String,
    pub rules: BTreeSet<Rule>,
}

/// A resource to delete because another of its kind is kept: (kind, id).
pub type Duplicate = (&'static str, String);

/// The VPC to keep among ours: the lowest id.
pub fn keep_vpc(vpcs: &[DescribedVpc]) -> Option<DescribedVpc> {
    vpcs.iter().min().cloned()
}

/// The gateway to keep: the one attached to `vpc`, else an unattached one, else the first.
pub fn keep_gateway(
    vpc: Option<&DescribedVpc>,
    gateways: &[DescribedGateway],
) -> Option<DescribedGateway> {
    vpc.and_then(|vpc| gateways.iter().find(|g| g.attached_to.contains(&vpc.id)))
        .or_else(|| gateways.iter().find(|g| g.attached_to.is_empty()))
        .or(gateways.first())
        .cloned()
}

/// The route table to keep: one that already routes or is associated, else the first.
pub fn keep_route_table(tables: &[DescribedRouteTable]) -> Option<DescribedRouteTable> {
    tables
        .iter()
        .find(|t| t.has_default_route || !t.associations.is_empty())
        .or(tables.first())
        .cloned()
}

/// One subnet per AZ of `vpc_id`, restricted to `zones`. If an AZ has two (a crashed run,
/// or a subnet the user tagged as ours), the one in the AZ's planned block wins, then the
/// first found.
pub fn one_per_zone(
    found: &[DescribedSubnet],
    vpc_id: &str,
    zones: &[String],
    plan: Option<&SubnetPlan>,
) -> BTreeMap<String, DescribedSubnet> {
    let planned = |s: &DescribedSubnet| {
        plan.and_then(|p| p.for_az(&s.availability_zone))
            .is_some_and(|p| p.cidr.to_string() == s.cidr)
    };
    let mut by_zone: BTreeMap<String, DescribedSubnet> = BTreeMap::new();
    for subnet in found
        .iter()
        .filter(|s| s.vpc_id == vpc_id && zones.contains(&s.availability_zone))
    {
        match by_zone.get(&subnet.availability_zone) {
            Some(kept) if planned(kept) || !planned(subnet) => {}
            _ => {
                by_zone.insert(subnet.availability_zone.clone(), subnet.clone());
            }
        }
    }
    by_zone
}

/// The usable AZs that have no subnet yet.
pub fn zones_without_subnet(
    usable: &[String],
    have: &BTreeMap<String, DescribedSubnet>,
) -> Vec<String> {
    usable
        .iter()
        .filter(|z| !have.contains_key(*z))
        .cloned()
        .collect()
}

/// Duplicates found in the first round: VPCs other than the kept one that hold none of our
/// subnets, and unattached gateways other than the kept one.
pub fn first_round_duplicates(
    vpcs: &[DescribedVpc],
    subnets: &[DescribedSubnet],
    gateways: &[DescribedGateway],
    kept_vpc: Option<&DescribedVpc>,
    kept_gateway: Option<&DescribedGateway>,
) -> Vec<Duplicate> {
    let mut duplicates: Vec<Duplicate> = vpcs
        .iter()
        .filter(|v| Some(*v) != kept_vpc && !subnets.iter().any(|s| s.vpc_id == v.id))
        .map(|v| ("VPC", v.id.clone()))
        .collect();
    duplicates.extend(
        gateways
            .iter()
            .filter(|g| {
                g.attached_to.is_empty() && kept_gateway.is_some_and(|kept| kept.id != g.id)
            })
            .map(|g| ("internet gateway", g.id.clone())),
    );
    duplicates
}

/// Duplicates found once the kept VPC's details are known: unassociated route tables other
/// than the kept one, security groups after the first, and subnets of the kept VPC that lost
/// to another subnet of their AZ.
pub fn second_round_duplicates(
    tables: &[DescribedRouteTable],
    kept_table: Option<&DescribedRouteTable>,
    groups: &[DescribedSecurityGroup],
    subnets: &[DescribedSubnet],
    kept_vpc: Option<&str>,
    kept_subnets: &BTreeMap<String, DescribedSubnet>,
) -> Vec<Duplicate> {
    let mut duplicates: Vec<Duplicate> = tables
        .iter()
        .filter(|t| t.associations.is_empty() && kept_table.is_some_and(|kept| kept.id != t.id))
        .map(|t| ("route table", t.id.clone()))
        .collect();
    duplicates.extend(
        groups
            .iter()
            .skip(1)
            .map(|g| ("security group", g.id.clone())),
    );
    if let Some(vpc_id) = kept_vpc {
        duplicates.extend(
            subnets
                .iter()
                .filter(|s| {
                    s.vpc_id == vpc_id
                        && kept_subnets
                            .get(&s.availability_zone)
                            .is_some_and(|k| k.id != s.id)
                })
                .map(|s| ("subnet", s.id.clone())),
        );
    }
    duplicates
}

/// The rules the node security group must have: everything from inside the VPC, and the
/// management ports from the configured outside networks only ("no 0.0.0.0/0 unless
/// asked").
pub fn wanted_rules(request: &NetworkRequest, vpc_cidr: &str) -> BTreeSet<Rule> {
    let mut rules = BTreeSet::from([("-1".to_owned(), -1, -1, vpc_cidr.to_owned())]);
    for cidr in &request.ingress.cidrs {
        for port in &request.ingress.ports {
            rules.insert((
                "tcp".to_owned(),
                i32::from(*port),
                i32::from(*port),
                cidr.clone(),
            ));
        }
    }
    rules
}

/// The wanted rules the group lacks.
pub fn missing_rules(wanted: &BTreeSet<Rule>, group: &DescribedSecurityGroup) -> Vec<Rule> {
    wanted.difference(&group.rules).cloned().collect()
}

/// The subnets the route table is not associated with yet.
pub fn unassociated<'a, S>(
    subnets: &'a [S],
    subnet_id: impl Fn(&S) -> &str,
    table: &DescribedRouteTable,
) -> Vec<&'a S> {
    subnets
        .iter()
        .filter(|s| !table.associations.iter().any(|(_, id)| id == subnet_id(s)))
        .collect()
}

/// The AZs a network may use: the region's available AZs, limited to the request's
/// `allowed_azs`, in the region's order. Returns every AZ of the region (the CIDR plan is
/// indexed by that list, so an AZ left out keeps its block) and the usable ones; an allowed
/// AZ the region does not have is an error naming it.
pub fn usable_zones(
    request: &NetworkRequest,
    zones: &[AvailabilityZone],
) -> Result<(Vec<String>, Vec<String>), CloudError> {
    let all: Vec<String> = zones.iter().map(|z| z.name.clone()).collect();
    let mut usable: Vec<String> = zones
        .iter()
        .filter(|z| z.available)
        .map(|z| z.name.clone())
        .collect();
    if let Some(allowed) = &request.allowed_azs {
        if let Some(unknown) = allowed.iter().find(|az| !all.contains(az)) {
            return Err(CloudError::InvalidResource {
                field: "availability_zones".into(),
                message: format!(
                    "{unknown} is not an availability zone of {} (it has: {})",
                    request.region,
                    all.join(", ")
                ),
            });
        }
        usable.retain(|az| allowed.contains(az));
    }
    Ok((all, usable))
}

/// One step of tearing a network down.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TeardownStep {
    Disassociate { association: String, subnet: String },
    DetachGateway { gateway: String, vpc: String },
    DeleteSecurityGroup(String),
    DeleteRouteTable(String),
    DeleteSubnet(String),
    DeleteGateway(String),
    DeleteVpc(String),
}

impl TeardownStep {
    /// What must be gone or detached before this step can succeed.
    pub fn depends_on(&self, other: &TeardownStep) -> bool {
        use TeardownStep as T;
        match (self, other) {
            (T::DeleteRouteTable(_), T::Disassociate { .. }) => true,
            (T::DeleteSubnet(subnet), T::Disassociate { subnet: s, .. }) => subnet == s,
            (T::DeleteGateway(gateway), T::DetachGateway { gateway: g, .. }) => gateway == g,
            (T::DeleteVpc(vpc), T::DetachGateway { vpc: v, .. }) => vpc == v,
            (
                T::DeleteVpc(_),
                T::DeleteSecurityGroup(_) | T::DeleteRouteTable(_) | T::DeleteSubnet(_),
            ) => true,
            _ => false,
        }
    }
}

/// The teardown of everything of ours in a region, as phases: the steps of one phase run
/// concurrently, and a phase starts once the one before it succeeded. A step comes only
/// after every step it depends on (associations before route tables and subnets,
/// attachments before gateways, everything inside a VPC before the VPC).
pub fn teardown_phases(
    vpcs: &[String],
    subnets: &[DescribedSubnet],
    gateways: &[DescribedGateway],
    tables: &[DescribedRouteTable],
    groups: &[DescribedSecurityGroup],
) -> Vec<Vec<TeardownStep>> {
    let first: Vec<TeardownStep> = tables
        .iter()
        .flat_map(|t| t.associations.iter())
        .map(|(association, subnet)| TeardownStep::Disassociate {
            association: association.clone(),
            subnet: subnet.clone(),
        })
        .chain(
            groups
                .iter()
                .map(|g| TeardownStep::DeleteSecurityGroup(g.id.clone())),
        )
        .chain(gateways.iter().flat_map(|g| {
            g.attached_to.iter().map(|vpc| TeardownStep::DetachGateway {
                gateway: g.id.clone(),
                vpc: vpc.clone(),
            })
        }))
        .collect();
    let second: Vec<TeardownStep> = tables
        .iter()
        .map(|t| TeardownStep::DeleteRouteTable(t.id.clone()))
        .chain(
            subnets
                .iter()
                .map(|s| TeardownStep::DeleteSubnet(s.id.clone())),
        )
        .chain(
            gateways
                .iter()
                .map(|g| TeardownStep::DeleteGateway(g.id.clone())),
        )
        .collect();
    let third: Vec<TeardownStep> = vpcs
        .iter()
        .map(|v| TeardownStep::DeleteVpc(v.clone()))
        .collect();
    [first, second, third]
        .into_iter()
        .filter(|phase| !phase.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::Ingress;
    use crate::network::{Ipv4Cidr, plan_subnets};

    fn subnet(id: &str, az: &str, cidr: &str) -> DescribedSubnet {
        DescribedSubnet {
            id: id.into(),
            availability_zone: az.into(),
            cidr: cidr.into(),
            vpc_id: "vpc-1".into(),
            owned: true,
        }
    }

    #[test]
    fn duplicates_keep_one_of_each_and_the_subnet_in_its_planned_block() {
        let zones: Vec<String> = ["us-east-1a", "us-east-1b"].map(String::from).to_vec();
        let plan =
            plan_subnets("10.78.0.0/16".parse::<Ipv4Cidr>().expect("cidr"), &zones).expect("plan");
        let planned_a = plan.for_az("us-east-1a").expect("a").cidr.to_string();
        let subnets = vec![
            subnet("subnet-1", "us-east-1a", "10.78.250.0/24"),
            subnet("subnet-2", "us-east-1a", &planned_a),
            subnet("subnet-3", "us-east-1b", "10.78.251.0/24"),
        ];
        let kept = one_per_zone(&subnets, "vpc-1", &zones, Some(&plan));
        assert_eq!(kept["us-east-1a"].id, "subnet-2", "the planned block wins");
        assert_eq!(kept["us-east-1b"].id, "subnet-3");
        let vpcs = vec![
            DescribedVpc {
                id: "vpc-2".into(),
                cidr: "10.78.0.0/16".into(),
            },
            DescribedVpc {
                id: "vpc-1".into(),
                cidr: "10.78.0.0/16".into(),
            },
        ];
        let vpc = keep_vpc(&vpcs);
        assert_eq!(vpc.as_ref().map(|v| v.id.as_str()), Some("vpc-1"));
        let gateways = vec![
            DescribedGateway {
                id: "igw-1".into(),
                attached_to: vec![],
            },
            DescribedGateway {
                id: "igw-2".into(),
                attached_to: vec!["vpc-1".into()],
            },
        ];
        let gateway = keep_gateway(vpc.as_ref(), &gateways);
        assert_eq!(gateway.as_ref().map(|g| g.id.as_str()), Some("igw-2"));
        let first =
            first_round_duplicates(&vpcs, &subnets, &gateways, vpc.as_ref(), gateway.as_ref());
        assert_eq!(
            first,
            vec![
                ("VPC", "vpc-2".to_owned()),
                ("internet gateway", "igw-1".to_owned())
            ]
        );
        let tables = vec![
            DescribedRouteTable {
                id: "rtb-1".into(),
                has_default_route: false,
                associations: vec![],
            },
            DescribedRouteTable {
                id: "rtb-2".into(),
                has_default_route: true,
                associations: vec![],
            },
        ];
        let table = keep_route_table(&tables);
        assert_eq!(table.as_ref().map(|t| t.id.as_str()), Some("rtb-2"));
        let second =
            second_round_duplicates(&tables, table.as_ref(), &[], &subnets, Some("vpc-1"), &kept);
        assert_eq!(
            second,
            vec![
                ("route table", "rtb-1".to_owned()),
                ("subnet", "subnet-1".to_owned())
            ]
        );
        assert_eq!(zones_without_subnet(&zones, &kept), Vec::<String>::new());
    }

    /// What a teardown describes: VPC ids, subnets, gateways, route tables, groups.
    type Described = (
        Vec<String>,
        Vec<DescribedSubnet>,
        Vec<DescribedGateway>,
        Vec<DescribedRouteTable>,
        Vec<DescribedSecurityGroup>,
    );

    fn described() -> impl proptest::strategy::Strategy<Value = Described> {
        use proptest::prelude::*;
        (1usize..3, 0usize..4, 0usize..3, 0usize..3, 0usize..3).prop_map(
            |(vpcs, subnets, gateways, tables, groups)| {
                let vpc_ids: Vec<String> = (0..vpcs).map(|i| format!("vpc-{i}")).collect();
                let subnet_list: Vec<DescribedSubnet> = (0..subnets)
                    .map(|i| DescribedSubnet {
                        vpc_id: vpc_ids[i % vpcs].clone(),
                        ..subnet(&format!("subnet-{i}"), "us-east-1a", "10.0.0.0/24")
                    })
                    .collect();
                let gateway_list = (0..gateways)
                    .map(|i| DescribedGateway {
                        id: format!("igw-{i}"),
                        attached_to: if i == 0 {
                            vec![vpc_ids[0].clone()]
                        } else {
                            vec![]
                        },
                    })
                    .collect();
                let table_list = (0..tables)
                    .map(|i| DescribedRouteTable {
                        id: format!("rtb-{i}"),
                        has_default_route: i == 0,
                        associations: subnet_list
                            .iter()
                            .filter(|_| i == 0)
                            .enumerate()
                            .map(|(k, s)| (format!("rtbassoc-{k}"), s.id.clone()))
                            .collect(),
                    })
                    .collect();
                let group_list = (0..groups)
                    .map(|i| DescribedSecurityGroup {
                        id: format!("sg-{i}"),
                        vpc_id: vpc_ids[0].clone(),
                        rules: BTreeSet::new(),
                    })
                    .collect();
                (vpc_ids, subnet_list, gateway_list, table_list, group_list)
            },
        )
    }

    proptest::proptest! {
        /// Every resource is in the teardown exactly once, and no step runs in a phase
        /// before (or beside) a step it depends on.
        #[test]
        fn teardown_order_respects_dependencies((vpcs, subnets, gateways, tables, groups) in described()) {
            let phases = teardown_phases(&vpcs, &subnets, &gateways, &tables, &groups);
            let steps: Vec<(usize, &TeardownStep)> = phases
                .iter()
                .enumerate()
                .flat_map(|(i, phase)| phase.iter().map(move |s| (i, s)))
                .collect();
            for (phase, step) in &steps {
                for (other_phase, other) in &steps {
                    if step.depends_on(other) {
                        proptest::prop_assert!(other_phase < phase, "{:?} runs with or before {:?}", step, other);
                    }
                }
            }
            let deletions = steps.iter().filter(|(_, s)| matches!(s,
                TeardownStep::DeleteVpc(_) | TeardownStep::DeleteSubnet(_) | TeardownStep::DeleteGateway(_)
                | TeardownStep::DeleteRouteTable(_) | TeardownStep::DeleteSecurityGroup(_))).count();
            proptest::prop_assert_eq!(deletions, vpcs.len() + subnets.len() + gateways.len() + tables.len() + groups.len());
            let unique: BTreeSet<&TeardownStep> = steps.iter().map(|(_, s)| *s).collect();
            proptest::prop_assert_eq!(unique.len(), steps.len());
        }
    }

    #[test]
    fn only_missing_rules_are_added_and_no_outside_network_unless_asked() {
        let mut request = request(None);
        let wanted = wanted_rules(&request, "10.78.0.0/16");
        assert_eq!(wanted.len(), 1, "inside the VPC only: {wanted:?}");
        request.ingress.cidrs = vec!["203.0.113.0/24".into()];
        let wanted = wanted_rules(&request, "10.78.0.0/16");
        let group = DescribedSecurityGroup {
            id: "sg-1".into(),
            vpc_id: "vpc-1".into(),
            rules: BTreeSet::from([("-1".to_owned(), -1, -1, "10.78.0.0/16".to_owned())]),
        };
        // SSH and the bundles' Docker API proxy, to the network asked for and nothing else.
        assert_eq!(
            missing_rules(&wanted, &group),
            vec![
                ("tcp".to_owned(), 22, 22, "203.0.113.0/24".to_owned()),
                ("tcp".to_owned(), 2376, 2376, "203.0.113.0/24".to_owned())
            ]
        );
        assert!(
            wanted.iter().all(|rule| rule.3 != "0.0.0.0/0"),
            "{wanted:?}"
        );
    }

    fn zone(name: &str, available: bool) -> AvailabilityZone {
        AvailabilityZone {
            name: name.into(),
            available,
        }
    }

    fn request(allowed: Option<&[&str]>) -> NetworkRequest {
        NetworkRequest {
            region: "us-east-1".into(),
            node_type: "t3.micro".into(),
            image_id: None,
            allowed_azs: allowed.map(|a| a.iter().map(|z| (*z).to_owned()).collect()),
            vpc: None,
            instance_profile_name: None,
            ingress: Ingress::default(),
        }
    }

    #[test]
    fn unavailable_and_unallowed_azs_are_left_out_but_keep_their_place() {
        let zones = [
            zone("us-east-1a", true),
            zone("us-east-1b", false),
            zone("us-east-1c", true),
        ];
        let (all, usable) = usable_zones(&request(None), &zones).expect("ok");
        assert_eq!(all.len(), 3);
        assert_eq!(usable, vec!["us-east-1a", "us-east-1c"]);
        let (_, usable) =
            usable_zones(&request(Some(&["us-east-1b", "us-east-1c"])), &zones).expect("ok");
        assert_eq!(usable, vec!["us-east-1c"]);
        let error = usable_zones(&request(Some(&["us-east-1z"])), &zones)
            .expect_err("unknown")
            .to_string();
        assert!(
            error.contains("us-east-1z is not an availability zone"),
            "{error}"
        );
    }
}
