//! The network planner's choices that do not depend on the order of AWS calls.
//!
//! `aws::network` sequences its describes and creates in rounds (five for a network from
//! nothing); the choices it makes between rounds are here, as pure functions of what it
//! described, so the AWS crate and [`crate::fake::FakeCloud`] make them the same way.
//! (Still in `aws::network`: which of several duplicate VPCs, gateways and route tables to
//! keep — moving those here is the next step of the planner work.)

use crate::cloud::{AvailabilityZone, CloudError, NetworkRequest};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::Ingress;

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
        assert!(error.contains("us-east-1z is not an availability zone"), "{error}");
    }
}
