//! Resource URIs: how objects name each other on the wire.
//!
//! The clients split URIs by position — the CLI takes segment `[-2]` of a region or node
//! type URI as the provider, and the last segment of anything as its id — so every URI is
//! built here, always with the trailing slash. Cluster and node URIs are emitted in the
//! non-namespaced form (as 2016 Docker Cloud did); parsing also accepts the namespaced form
//! `/api/infra/v1/{ns}/nodecluster/{uuid}/`, since the clients may send either back.

/// Prefix of the infra subsystem.
pub const INFRA: &str = "/api/infra/v1";
/// Prefix of the audit subsystem.
pub const AUDIT: &str = "/api/audit/v1";
/// Prefix of the access subsystem: users, API keys, organizations, teams, grants (#15).
pub const ACCESS: &str = "/api/access/v1";

pub fn provider(name: &str) -> String {
    format!("{INFRA}/provider/{name}/")
}

pub fn region(provider: &str, name: &str) -> String {
    format!("{INFRA}/region/{provider}/{name}/")
}

pub fn availability_zone(provider: &str, region: &str, name: &str) -> String {
    format!("{INFRA}/az/{provider}/{region}/{name}/")
}

pub fn node_type(provider: &str, name: &str) -> String {
    format!("{INFRA}/nodetype/{provider}/{name}/")
}

pub fn node_cluster(uuid: &str) -> String {
    format!("{INFRA}/nodecluster/{uuid}/")
}

pub fn node(uuid: &str) -> String {
    format!("{INFRA}/node/{uuid}/")
}

pub fn swarm(uuid: &str) -> String {
    format!("{INFRA}/swarm/{uuid}/")
}

pub fn action(uuid: &str) -> String {
    format!("{AUDIT}/action/{uuid}/")
}

/// Collections and endpoints that are not one object (paths of the typed client,
/// [`crate::client`]). A list path takes Tastypie-style query parameters after it.
pub fn node_clusters() -> String {
    format!("{INFRA}/nodecluster/")
}

/// The web dashboard's login (POST `{"user", "key"}`), session (GET) and logout (DELETE).
pub fn session() -> String {
    "/session".to_owned()
}

pub fn swarms() -> String {
    format!("{INFRA}/swarm/")
}

/// A create in organization `org` (the namespace segment; issue #15); `GET` lists only
/// that organization's clusters.
pub fn node_clusters_in(org: &str) -> String {
    format!("{INFRA}/{org}/nodecluster/")
}

/// A swarm create in organization `org`.
pub fn swarms_in(org: &str) -> String {
    format!("{INFRA}/{org}/swarm/")
}

pub fn nodes() -> String {
    format!("{INFRA}/node/")
}

/// The nodes of organization `org`'s clusters only (a namespaced list).
pub fn nodes_in(org: &str) -> String {
    format!("{INFRA}/{org}/node/")
}

pub fn actions() -> String {
    format!("{AUDIT}/action/")
}

pub fn providers() -> String {
    format!("{INFRA}/provider/")
}

pub fn regions() -> String {
    format!("{INFRA}/region/")
}

pub fn node_types() -> String {
    format!("{INFRA}/nodetype/")
}

pub fn availability_zones() -> String {
    format!("{INFRA}/az/")
}

/// `POST`: a registration token for bring-your-own nodes.
pub fn token() -> String {
    format!("{INFRA}/token/")
}

/// `POST`: deploys a node cluster.
pub fn node_cluster_deploy(uuid: &str) -> String {
    format!("{INFRA}/nodecluster/{uuid}/deploy/")
}

/// `POST`: asks a node's agent for a health check.
pub fn node_health_check(uuid: &str) -> String {
    format!("{INFRA}/node/{uuid}/health-check/")
}

/// `POST`: `cancel` or `retry` an action.
pub fn action_verb(uuid: &str, verb: &str) -> String {
    format!("{AUDIT}/action/{uuid}/{verb}/")
}

/// `GET`/`PUT`: the AWS keys linked to a provider.
pub fn provider_credentials(provider: &str) -> String {
    format!("{INFRA}/provider/{provider}/credentials/")
}

/// `GET`: the VPCs of a region (the launch wizard's VPC dropdown).
pub fn region_vpcs(provider: &str, region: &str) -> String {
    format!("{INFRA}/region/{provider}/{region}/vpc/")
}

/// `GET`: the subnets of a region, with AZ and free addresses (filter `?vpc_id=`).
pub fn region_subnets(provider: &str, region: &str) -> String {
    format!("{INFRA}/region/{provider}/{region}/subnet/")
}

/// `GET`: the security groups of a region (filter `?vpc_id=`).
pub fn region_security_groups(provider: &str, region: &str) -> String {
    format!("{INFRA}/region/{provider}/{region}/securitygroup/")
}

/// `GET`: the account's IAM instance profiles.
pub fn instance_profiles(provider: &str) -> String {
    format!("{INFRA}/provider/{provider}/instanceprofile/")
}

/// `POST`: a node cluster body checked as a create would be, answered with where its
/// nodes would land; nothing is created.
pub fn node_cluster_preview() -> String {
    format!("{INFRA}/nodecluster/preview/")
}

/// The events websocket.
pub fn events() -> String {
    format!("{AUDIT}/events/")
}

/// Organizations (`GET` list, `POST` create).
pub fn orgs() -> String {
    format!("{ACCESS}/org/")
}

pub fn org(name: &str) -> String {
    format!("{ACCESS}/org/{name}/")
}

/// An organization's teams (`GET`, `POST`).
pub fn teams(org: &str) -> String {
    format!("{ACCESS}/org/{org}/team/")
}

/// A team (`GET`, `PATCH` members, `DELETE`).
pub fn team(org: &str, team: &str) -> String {
    format!("{ACCESS}/org/{org}/team/{team}/")
}

/// An organization's grants (`GET`, `POST`).
pub fn grants(org: &str) -> String {
    format!("{ACCESS}/org/{org}/grant/")
}

/// A grant (`DELETE` revokes it).
pub fn grant(org: &str, id: &str) -> String {
    format!("{ACCESS}/org/{org}/grant/{id}/")
}

/// Users (`GET`, `POST`).
pub fn users() -> String {
    format!("{ACCESS}/user/")
}

/// A user (`GET`, `PATCH` its password, `DELETE`).
pub fn user(name: &str) -> String {
    format!("{ACCESS}/user/{name}/")
}

/// A user's API keys (`GET`, `POST` creates one and shows it once).
pub fn api_keys(user: &str) -> String {
    format!("{ACCESS}/user/{user}/apikey/")
}

/// One API key (`DELETE` revokes it); `key` is its id or name.
pub fn api_key(user: &str, key: &str) -> String {
    format!("{ACCESS}/user/{user}/apikey/{key}/")
}

/// A user's client bundles (`GET` lists them, `POST` creates one: a zip shown once).
pub fn bundles(user: &str) -> String {
    format!("{ACCESS}/user/{user}/bundle/")
}

/// One client bundle (`GET`, `DELETE` revokes it); `id` is its certificate's serial.
pub fn bundle(user: &str, id: &str) -> String {
    format!("{ACCESS}/user/{user}/bundle/{id}/")
}

/// The LDAP / Active Directory settings (`GET`, `PUT`; the server administrator's).
pub fn ldap() -> String {
    format!("{ACCESS}/ldap/")
}

/// `POST` syncs the directory's users and groups now.
pub fn ldap_sync() -> String {
    format!("{ACCESS}/ldap/sync/")
}

/// The unauthenticated liveness check.
pub const PING: &str = "/_ping";
/// The Prometheus text exposition of the server's metrics.
pub const METRICS: &str = "/metrics";
/// Every health check with its detail, for an authenticated caller (`/_ping` only says
/// whether the server is healthy).
pub const READYZ: &str = "/readyz";

/// An object a resource URI names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Provider {
        name: String,
    },
    Region {
        provider: String,
        name: String,
    },
    AvailabilityZone {
        provider: String,
        region: String,
        name: String,
    },
    NodeType {
        provider: String,
        name: String,
    },
    NodeCluster {
        uuid: String,
    },
    Node {
        uuid: String,
    },
    Swarm {
        uuid: String,
    },
    Action {
        uuid: String,
    },
}

impl Resource {
    /// Parses a resource URI (trailing slash optional, namespace optional where the API has
    /// one). `None` when it names nothing Flotilla serves.
    pub fn parse(uri: &str) -> Option<Resource> {
        let (prefix, rest) = if let Some(rest) = uri.strip_prefix(INFRA) {
            (INFRA, rest)
        } else {
            (AUDIT, uri.strip_prefix(AUDIT)?)
        };
        let rest = rest.strip_prefix('/')?;
        let segments: Vec<&str> = rest.strip_suffix('/').unwrap_or(rest).split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return None;
        }
        let owned = |s: &str| s.to_owned();
        let resource = match (prefix, segments.as_slice()) {
            (INFRA, ["provider", name]) => Resource::Provider { name: owned(name) },
            (INFRA, ["region", provider, name]) => Resource::Region {
                provider: owned(provider),
                name: owned(name),
            },
            (INFRA, ["az", provider, region, name]) => Resource::AvailabilityZone {
                provider: owned(provider),
                region: owned(region),
                name: owned(name),
            },
            (INFRA, ["nodetype", provider, name]) => Resource::NodeType {
                provider: owned(provider),
                name: owned(name),
            },
            (INFRA, ["nodecluster", uuid] | [_, "nodecluster", uuid]) => {
                Resource::NodeCluster { uuid: owned(uuid) }
            }
            (INFRA, ["node", uuid] | [_, "node", uuid]) => Resource::Node { uuid: owned(uuid) },
            (INFRA, ["swarm", uuid] | [_, "swarm", uuid]) => Resource::Swarm { uuid: owned(uuid) },
            (AUDIT, ["action", uuid]) => Resource::Action { uuid: owned(uuid) },
            _ => return None,
        };
        Some(resource)
    }

    /// The canonical URI of the object.
    pub fn uri(&self) -> String {
        match self {
            Resource::Provider { name } => provider(name),
            Resource::Region { provider, name } => region(provider, name),
            Resource::AvailabilityZone {
                provider,
                region,
                name,
            } => availability_zone(provider, region, name),
            Resource::NodeType { provider, name } => node_type(provider, name),
            Resource::NodeCluster { uuid } => node_cluster(uuid),
            Resource::Node { uuid } => node(uuid),
            Resource::Swarm { uuid } => swarm(uuid),
            Resource::Action { uuid } => action(uuid),
        }
    }
}

/// True for a version-4 UUID in canonical lowercase form (what the CLI's `is_uuid4` needs).
pub fn is_uuid4(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            14 => b == b'4',
            19 => matches!(b, b'8' | b'9' | b'a' | b'b'),
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "5516c8b6-3d4b-4a52-9a1e-0f8f2d7b9c10";

    #[test]
    fn built_uris_have_the_shapes_the_cli_splits() {
        assert_eq!(provider("aws"), "/api/infra/v1/provider/aws/");
        let region_uri = region("aws", "us-east-1");
        assert_eq!(region_uri, "/api/infra/v1/region/aws/us-east-1/");
        let segments: Vec<&str> = region_uri.trim_matches('/').split('/').collect();
        assert_eq!(segments[segments.len() - 2], "aws");
        assert_eq!(
            availability_zone("aws", "us-east-1", "us-east-1a"),
            "/api/infra/v1/az/aws/us-east-1/us-east-1a/"
        );
        assert_eq!(
            node_type("aws", "t3.micro"),
            "/api/infra/v1/nodetype/aws/t3.micro/"
        );
        assert_eq!(
            node_cluster(UUID),
            format!("/api/infra/v1/nodecluster/{UUID}/")
        );
        assert_eq!(node(UUID), format!("/api/infra/v1/node/{UUID}/"));
        assert_eq!(action(UUID), format!("/api/audit/v1/action/{UUID}/"));
    }

    #[test]
    fn every_built_uri_parses_back() {
        let all = [
            Resource::Provider { name: "aws".into() },
            Resource::Region {
                provider: "aws".into(),
                name: "us-east-1".into(),
            },
            Resource::AvailabilityZone {
                provider: "aws".into(),
                region: "us-east-1".into(),
                name: "us-east-1a".into(),
            },
            Resource::NodeType {
                provider: "aws".into(),
                name: "t3.micro".into(),
            },
            Resource::NodeCluster { uuid: UUID.into() },
            Resource::Node { uuid: UUID.into() },
            Resource::Action { uuid: UUID.into() },
        ];
        for resource in all {
            assert_eq!(Resource::parse(&resource.uri()), Some(resource.clone()));
            let without_slash = resource.uri().trim_end_matches('/').to_owned();
            assert_eq!(Resource::parse(&without_slash), Some(resource));
        }
    }

    #[test]
    fn namespaced_forms_parse_and_garbage_does_not() {
        assert_eq!(
            Resource::parse(&format!("/api/infra/v1/myorg/nodecluster/{UUID}/")),
            Some(Resource::NodeCluster { uuid: UUID.into() })
        );
        assert_eq!(
            Resource::parse(&format!("/api/infra/v1/myorg/node/{UUID}/")),
            Some(Resource::Node { uuid: UUID.into() })
        );
        for bad in [
            "",
            "/api/infra/v1/",
            "/api/infra/v1/region/aws/",
            "/api/infra/v1//nodecluster/x/",
            "/api/audit/v1/myorg/action/x/",
            "/api/infra/v2/provider/aws/",
            "nodecluster/x/",
        ] {
            assert_eq!(Resource::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn uuid4_check_matches_the_cli() {
        assert!(is_uuid4(UUID));
        assert!(!is_uuid4(&UUID.to_uppercase()));
        assert!(
            !is_uuid4("5516c8b6-3d4b-1a52-9a1e-0f8f2d7b9c10"),
            "version 1"
        );
        assert!(
            !is_uuid4("5516c8b6-3d4b-4a52-7a1e-0f8f2d7b9c10"),
            "bad variant"
        );
        assert!(!is_uuid4("5516"));
    }
}
