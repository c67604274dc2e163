//! What can be deployed where: providers, regions, AZs and node types, as API objects.
//!
//! Built from the cloud (`regions()`, `availability_zones()`, `node_types()`) on first use and
//! kept for the server's lifetime, because these lists change on the scale of months and the
//! CLI fetches a region and a node type per cluster on every `nodecluster ls`. A region the
//! cloud cannot describe is listed as unavailable instead of failing the whole list; a
//! failure to list regions at all is not cached, so the next request tries again.
//! The provider is `available` when the cloud has credentials to sign with (linked keys or
//! the standard chain); linking keys drops the cached catalogue.

use std::collections::BTreeMap;

use flotilla_api as api;
use flotilla_api::uri;
use flotilla_core::cloud::{Cloud, CloudError};

/// The one provider Flotilla drives.
pub const PROVIDER: &str = "aws";
const PROVIDER_LABEL: &str = "Amazon Web Services";

/// Everything the catalogue endpoints serve.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub providers: Vec<api::Provider>,
    pub regions: Vec<api::Region>,
    pub availability_zones: Vec<api::AvailabilityZone>,
    pub node_types: Vec<api::NodeType>,
}

/// AWS's display names for the regions people use most; others show their code.
fn region_label(name: &str) -> String {
    let label = match name {
        "us-east-1" => "US East (N. Virginia)",
        "us-east-2" => "US East (Ohio)",
        "us-west-1" => "US West (N. California)",
        "us-west-2" => "US West (Oregon)",
        "ca-central-1" => "Canada (Central)",
        "eu-west-1" => "Europe (Ireland)",
        "eu-west-2" => "Europe (London)",
        "eu-west-3" => "Europe (Paris)",
        "eu-central-1" => "Europe (Frankfurt)",
        "eu-north-1" => "Europe (Stockholm)",
        "ap-northeast-1" => "Asia Pacific (Tokyo)",
        "ap-northeast-2" => "Asia Pacific (Seoul)",
        "ap-southeast-1" => "Asia Pacific (Singapore)",
        "ap-southeast-2" => "Asia Pacific (Sydney)",
        "ap-south-1" => "Asia Pacific (Mumbai)",
        "sa-east-1" => "South America (Sao Paulo)",
        _ => return name.to_owned(),
    };
    label.to_owned()
}

/// Asks the cloud for everything, regions concurrently.
pub async fn load<C: Cloud>(cloud: &C) -> Result<Catalog, CloudError> {
    let regions = cloud.regions().await?;
    let details = futures::future::join_all(regions.iter().map(|region| async move {
        let (zones, types) =
            futures::join!(cloud.availability_zones(region), cloud.node_types(region));
        match (zones, types) {
            (Ok(zones), Ok(types)) => Some((zones, types)),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(region, %error, "region left out of the catalogue");
                None
            }
        }
    }))
    .await;

    let mut catalog = Catalog::default();
    // node type name -> (region URIs, AZ URIs)
    let mut types: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for (region, detail) in regions.iter().zip(details) {
        let region_uri = uri::region(PROVIDER, region);
        let (zones, offerings) = detail.unwrap_or_default();
        let zone_uris: Vec<String> = zones
            .iter()
            .map(|z| uri::availability_zone(PROVIDER, region, &z.name))
            .collect();
        for zone in &zones {
            catalog.availability_zones.push(api::AvailabilityZone {
                available: zone.available,
                name: zone.name.clone(),
                region: region_uri.clone(),
                resource_uri: uri::availability_zone(PROVIDER, region, &zone.name),
            });
        }
        for offering in &offerings {
            let entry = types.entry(offering.name.clone()).or_default();
            entry.0.push(region_uri.clone());
            entry.1.extend(
                offering
                    .availability_zones
                    .iter()
                    .map(|z| uri::availability_zone(PROVIDER, region, z)),
            );
        }
        catalog.regions.push(api::Region {
            available: !offerings.is_empty(),
            availability_zones: zone_uris,
            label: region_label(region),
            name: region.clone(),
            node_types: offerings
                .iter()
                .map(|o| uri::node_type(PROVIDER, &o.name))
                .collect(),
            provider: uri::provider(PROVIDER),
            resource_uri: region_uri,
        });
    }
    catalog.node_types = types
        .into_iter()
        .map(|(name, (regions, availability_zones))| api::NodeType {
            available: true,
            availability_zones,
            label: name.clone(),
            provider: uri::provider(PROVIDER),
            regions,
            resource_uri: uri::node_type(PROVIDER, &name),
            name,
        })
        .collect();
    catalog.providers = vec![api::Provider {
        available: cloud.has_credentials().await,
        label: PROVIDER_LABEL.to_owned(),
        name: PROVIDER.to_owned(),
        regions: catalog
            .regions
            .iter()
            .map(|r| r.resource_uri.clone())
            .collect(),
        resource_uri: uri::provider(PROVIDER),
    }];
    Ok(catalog)
}
