//! Ownership tags and the identities derived from them.
//!
//! Tags are Flotilla's memory in AWS: every resource is created with them in the same call, so
//! after a crash the next pass finds its own work by tag and nothing is ever untraceable. Node
//! identities are *derived* from (cluster, slot) rather than generated at random, so a node
//! launched just before a crash gets the same uuid when the restarted control plane finds it.

use sha2::{Digest, Sha256};

/// Installation that owns a resource; teardown only ever touches resources with our owner.
pub const OWNER: &str = "flotilla:owner";
/// Cluster uuid on instances (and on resources made for one cluster).
pub const CLUSTER: &str = "flotilla:cluster";
/// Swarm uuid on a swarm's load balancer, its target groups, listeners and security group.
pub const SWARM: &str = "flotilla:swarm";
/// Node uuid on instances.
pub const NODE: &str = "flotilla:node";
/// Node slot (a per-cluster number never reused) on instances.
pub const SLOT: &str = "flotilla:slot";
/// Which part of the network a resource is: `vpc`, `subnet`, `gateway`, `route-table`,
/// `security-group`.
pub const ROLE: &str = "flotilla:role";

/// Docker Cloud's `Name` tags for the auto network.
pub const NAME_VPC: &str = "dc-vpc";
pub const NAME_SUBNET: &str = "dc-subnet";
pub const NAME_GATEWAY: &str = "dc-gateway";
pub const NAME_ROUTE_TABLE: &str = "dc-route-table";
pub const NAME_SECURITY_GROUP: &str = "dc-node-security-group";

/// A uuid4-shaped, deterministic node id: the docker-cloud CLI only accepts version-4 uuids.
pub fn node_uuid(cluster_uuid: &str, slot: u32) -> String {
    uuid4_from(&format!("flotilla-node:{cluster_uuid}:{slot}"))
}

/// The id of a cluster that lives only in AWS (the store-less `flotilla engine` commands):
/// the same (owner, region, name) always names the same cluster.
pub fn engine_cluster_uuid(owner: &str, region: &str, name: &str) -> String {
    uuid4_from(&format!("flotilla-cluster:{owner}:{region}:{name}"))
}

fn uuid4_from(seed: &str) -> String {
    let digest = Sha256::digest(seed.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The `ClientToken` of a launch: the same (cluster, generation, subnet, slots) always gives
/// the same token, so AWS returns the original reservation instead of launching twice when a
/// launch is retried after a lost response. The subnet is part of it because a launch that
/// failed for lack of capacity is retried with the same slots in another AZ. AWS allows 64
/// ASCII characters.
pub fn launch_client_token(
    cluster_uuid: &str,
    generation: u64,
    subnet_id: &str,
    slots: &[u32],
) -> String {
    let slots: Vec<String> = slots.iter().map(u32::to_string).collect();
    let digest = Sha256::digest(
        format!(
            "{cluster_uuid}/{generation}/{subnet_id}/{}",
            slots.join(",")
        )
        .as_bytes(),
    );
    format!("flotilla-{}", &hex::encode(digest)[..48])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_uuids_are_stable_and_version_4() {
        let a = node_uuid("c1", 3);
        assert_eq!(a, node_uuid("c1", 3));
        assert_ne!(a, node_uuid("c1", 4));
        assert_ne!(a, node_uuid("c2", 3));
        let chars: Vec<char> = a.chars().collect();
        assert_eq!(chars.len(), 36);
        assert_eq!(chars[14], '4');
        assert!("89ab".contains(chars[19]));
    }

    #[test]
    fn client_tokens_depend_on_every_input_and_fit_aws_limits() {
        let token = launch_client_token("c1", 2, "s1", &[4, 5]);
        assert!(token.len() <= 64 && token.is_ascii());
        assert_eq!(token, launch_client_token("c1", 2, "s1", &[4, 5]));
        assert_ne!(token, launch_client_token("c1", 3, "s1", &[4, 5]));
        assert_ne!(token, launch_client_token("c1", 2, "s1", &[4, 6]));
        assert_ne!(token, launch_client_token("c1", 2, "s2", &[4, 5]));
        assert_ne!(token, launch_client_token("c2", 2, "s1", &[4, 5]));
    }
}
