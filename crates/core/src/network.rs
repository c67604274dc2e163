//! IPv4 CIDR arithmetic and the subnet plan of an auto-managed VPC.
//!
//! The layout is Docker Cloud's: the VPC CIDR (10.78.0.0/16 by default) is split into
//! (#AZ + 1) equal blocks, the count rounded up to a power of two so the blocks are valid CIDRs,
//! and AZ number *i* (in the region's sorted AZ list) gets block *i*. The remaining blocks stay
//! free for the user's own subnets. Indexing by the region's full AZ list — not by the AZs that
//! happen to be usable today — keeps every AZ's block stable: an AZ skipped now (failed dry
//! run) gets the same block when it becomes usable later, and no two plans ever overlap.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The VPC CIDR Docker Cloud used for `dc-vpc`.
pub const DEFAULT_VPC_CIDR: &str = "10.78.0.0/16";

/// AWS allows subnets from /16 to /28.
const SMALLEST_SUBNET_PREFIX: u8 = 28;

/// An IPv4 network in CIDR notation, always aligned (host bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    network: u32,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("'{0}' is not an IPv4 CIDR (expected a.b.c.d/n)")]
    Syntax(String),
    #[error("'{0}' has host bits set; did you mean {1}?")]
    NotAligned(String, String),
    #[error("cannot split {cidr} into {blocks} subnets of at least /{SMALLEST_SUBNET_PREFIX}")]
    TooSmall { cidr: String, blocks: usize },
}

impl Ipv4Cidr {
    pub fn new(address: Ipv4Addr, prefix: u8) -> Result<Self, CidrError> {
        let text = format!("{address}/{prefix}");
        if prefix > 32 {
            return Err(CidrError::Syntax(text));
        }
        let network = u32::from(address);
        let masked = network & Self::mask(prefix);
        if masked != network {
            let aligned = Ipv4Cidr {
                network: masked,
                prefix,
            };
            return Err(CidrError::NotAligned(text, aligned.to_string()));
        }
        Ok(Ipv4Cidr { network, prefix })
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network | !Self::mask(self.prefix))
    }

    pub fn contains(&self, other: &Ipv4Cidr) -> bool {
        other.prefix >= self.prefix && (other.network & Self::mask(self.prefix)) == self.network
    }

    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// Splits into `2^bits` equal blocks, in address order.
    pub fn split(&self, bits: u8) -> Result<Vec<Ipv4Cidr>, CidrError> {
        let prefix = self.prefix + bits;
        if prefix > SMALLEST_SUBNET_PREFIX {
            return Err(CidrError::TooSmall {
                cidr: self.to_string(),
                blocks: 1 << bits,
            });
        }
        let size = 1u64 << (32 - u32::from(prefix));
        Ok((0..(1u64 << bits))
            .map(|i| Ipv4Cidr {
                network: self.network + (i * size) as u32,
                prefix,
            })
            .collect())
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.first(), self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| CidrError::Syntax(text.into()))?;
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| CidrError::Syntax(text.into()))?;
        let prefix: u8 = prefix.parse().map_err(|_| CidrError::Syntax(text.into()))?;
        Ipv4Cidr::new(address, prefix)
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = CidrError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(cidr: Ipv4Cidr) -> String {
        cidr.to_string()
    }
}

/// The subnet an AZ gets in the auto layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSubnet {
    pub availability_zone: String,
    pub cidr: Ipv4Cidr,
}

/// The whole layout: one block per AZ of the region, plus the blocks left for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetPlan {
    pub subnets: Vec<PlannedSubnet>,
    pub free_blocks: Vec<Ipv4Cidr>,
}

impl SubnetPlan {
    pub fn for_az(&self, availability_zone: &str) -> Option<&PlannedSubnet> {
        self.subnets
            .iter()
            .find(|s| s.availability_zone == availability_zone)
    }
}

/// Plans the auto layout of `vpc_cidr` over every AZ of the region (`region_azs`, any order;
/// the plan sorts them by name so the result does not depend on the order AWS returned).
pub fn plan_subnets(vpc_cidr: Ipv4Cidr, region_azs: &[String]) -> Result<SubnetPlan, CidrError> {
    let mut azs: Vec<&String> = region_azs.iter().collect();
    azs.sort();
    azs.dedup();
    let blocks_needed = azs.len() + 1;
    let bits = blocks_needed.next_power_of_two().trailing_zeros() as u8;
    let blocks = vpc_cidr.split(bits).map_err(|_| CidrError::TooSmall {
        cidr: vpc_cidr.to_string(),
        blocks: blocks_needed,
    })?;
    let subnets = azs
        .iter()
        .zip(&blocks)
        .map(|(az, cidr)| PlannedSubnet {
            availability_zone: (*az).clone(),
            cidr: *cidr,
        })
        .collect();
    Ok(SubnetPlan {
        subnets,
        free_blocks: blocks[azs.len()..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn azs(region: &str, letters: &str) -> Vec<String> {
        letters.chars().map(|l| format!("{region}{l}")).collect()
    }

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().expect("valid cidr")
    }

    #[test]
    fn three_azs_get_quarters_of_the_default_vpc() {
        let plan = plan_subnets(cidr(DEFAULT_VPC_CIDR), &azs("us-west-2", "cab")).expect("plan");
        let got: Vec<(String, String)> = plan
            .subnets
            .iter()
            .map(|s| (s.availability_zone.clone(), s.cidr.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("us-west-2a".into(), "10.78.0.0/18".into()),
                ("us-west-2b".into(), "10.78.64.0/18".into()),
                ("us-west-2c".into(), "10.78.128.0/18".into()),
            ]
        );
        assert_eq!(plan.free_blocks, vec![cidr("10.78.192.0/18")]);
    }

    #[test]
    fn six_azs_get_eighths_and_two_are_left_free() {
        let plan = plan_subnets(cidr(DEFAULT_VPC_CIDR), &azs("us-east-1", "abcdef")).expect("plan");
        assert_eq!(plan.subnets.len(), 6);
        assert!(plan.subnets.iter().all(|s| s.cidr.prefix() == 19));
        assert_eq!(
            plan.for_az("us-east-1f").map(|s| s.cidr),
            Some(cidr("10.78.160.0/19"))
        );
        assert_eq!(plan.free_blocks.len(), 2);
    }

    #[test]
    fn two_azs_skip_letters_and_keep_a_free_block() {
        let plan =
            plan_subnets(cidr(DEFAULT_VPC_CIDR), &azs("ap-northeast-1", "cd")).expect("plan");
        assert_eq!(plan.subnets.len(), 2);
        assert_eq!(plan.subnets[0].availability_zone, "ap-northeast-1c");
        assert_eq!(plan.free_blocks.len(), 2);
    }

    #[test]
    fn a_tiny_user_vpc_is_refused_with_the_reason() {
        let error =
            plan_subnets(cidr("192.168.0.0/27"), &azs("eu-west-1", "abc")).expect_err("too small");
        assert_eq!(
            error.to_string(),
            "cannot split 192.168.0.0/27 into 4 subnets of at least /28"
        );
    }

    #[test]
    fn cidr_parsing_names_the_problem() {
        assert!(
            matches!("10.78.1.0/16".parse::<Ipv4Cidr>(), Err(CidrError::NotAligned(_, s)) if s == "10.78.0.0/16")
        );
        assert!(matches!(
            "10.78.0.0".parse::<Ipv4Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            "10.78.0.0/33".parse::<Ipv4Cidr>(),
            Err(CidrError::Syntax(_))
        ));
    }

    proptest! {
        #[test]
        fn plans_never_overlap_and_stay_inside_the_vpc(
            octet in 0u8..=255, prefix in 16u8..=24, az_count in 1usize..=10,
        ) {
            let vpc = Ipv4Cidr::new(Ipv4Addr::new(10, octet, 0, 0), 16).expect("aligned");
            let vpc = vpc.split(prefix - 16).expect("split")[0];
            let names: Vec<String> = (0..az_count).map(|i| format!("r-{i}")).collect();
            if let Ok(plan) = plan_subnets(vpc, &names) {
                prop_assert_eq!(plan.subnets.len(), az_count);
                let all: Vec<Ipv4Cidr> =
                    plan.subnets.iter().map(|s| s.cidr).chain(plan.free_blocks.iter().copied()).collect();
                prop_assert!(all.len() > az_count, "at least one block is left for the user");
                for (i, a) in all.iter().enumerate() {
                    prop_assert!(vpc.contains(a));
                    for b in &all[i + 1..] {
                        prop_assert!(!a.overlaps(b), "{} overlaps {}", a, b);
                    }
                }
            } else {
                prop_assert!(prefix + (az_count + 1).next_power_of_two().trailing_zeros() as u8 > 28);
            }
        }

        #[test]
        fn an_azs_block_does_not_depend_on_input_order(seed in any::<u64>()) {
            let mut names = azs("us-east-1", "abcdef");
            let k = (seed % 6) as usize;
            names.rotate_left(k);
            let plan = plan_subnets(cidr(DEFAULT_VPC_CIDR), &names).expect("plan");
            prop_assert_eq!(plan.for_az("us-east-1c").map(|s| s.cidr), Some(cidr("10.78.64.0/19")));
        }
    }
}
