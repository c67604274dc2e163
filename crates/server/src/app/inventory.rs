//! The launch wizard's data (issue #13, seed 000): the region's VPCs, subnets and security
//! groups, the account's instance profiles, and the preview of where a cluster's nodes
//! would land.
//!
//! Design decisions:
//! * Answers come from the cloud ([`Cloud::network_inventory`], [`Cloud::instance_profiles`])
//!   and are cached for [`DEFAULT_INVENTORY_TTL`] (`--network-cache`) per region (profiles: per account), so opening
//!   the wizard, switching regions back and forth or previewing costs AWS at most three
//!   describes and one IAM list per region per period. One lock covers a fetch, so
//!   concurrent wizards share one set of calls; failures are not cached. Linking new keys
//!   empties the cache (another account has other VPCs), and a region's entry is dropped
//!   as soon as this server changed that region's network ([`Cloud::network_epoch`]), so
//!   Flotilla's own VPC is offered once it exists, not a period later.
//! * The preview is core's ([`flotilla_core::plan::preview`]): the same placement rule as
//!   the cluster planner, and the network choices checked against the cached inventory, so
//!   a contradictory choice (a subnet or security group of another VPC) is refused with the
//!   field named before anything is created. The create itself still checks with fresh
//!   describes (`check_provider_options`): the cache can be up to a period old.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::{self as api, uri};
use flotilla_core::cloud::{Cloud, CloudError, InstanceProfileInfo, NetworkInventory};
use flotilla_core::plan::preview::preview;
use flotilla_core::spec::ClusterSpec;
use serde_json::Value;
use tokio::sync::Mutex;

use super::{App, AppError, AppResult};
use crate::catalog::PROVIDER;

/// How long a region's inventory is reused unless configured (`--network-cache`).
pub const DEFAULT_INVENTORY_TTL: Duration = Duration::from_secs(30);

type Cached<T> = Option<(Instant, Arc<T>)>;

/// The cached answers (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct InventoryCache {
    /// Region → when fetched, the region's network epoch then, the answer.
    regions: Mutex<HashMap<String, (Instant, u64, Arc<NetworkInventory>)>>,
    profiles: Mutex<Cached<Vec<InstanceProfileInfo>>>,
}

impl InventoryCache {
    /// Forgets everything (new keys were linked).
    pub(crate) async fn clear(&self) {
        self.regions.lock().await.clear();
        *self.profiles.lock().await = None;
    }
}

fn unavailable(what: &str, error: &CloudError) -> AppError {
    AppError::Unavailable(format!("cannot list {what}: {error}"))
}

impl<C: Cloud + 'static> App<C> {
    /// The region's inventory, from the cache when fresh. The provider and region must be
    /// the catalogue's (else 404).
    async fn network_inventory(
        &self,
        provider: &str,
        region: &str,
    ) -> AppResult<Arc<NetworkInventory>> {
        Self::check_provider(provider)?;
        let region_uri = uri::region(provider, region);
        if !self
            .catalog()
            .await?
            .regions
            .iter()
            .any(|r| r.resource_uri == region_uri)
        {
            return Err(AppError::NotFound(format!(
                "region '{provider}/{region}' not found"
            )));
        }
        let mut cache = self.inventory.regions.lock().await;
        let epoch = self.cloud.network_epoch(region);
        if let Some((at, cached_epoch, inventory)) = cache.get(region)
            && at.elapsed() < self.settings.inventory_ttl
            && *cached_epoch == epoch
        {
            return Ok(inventory.clone());
        }
        let inventory = Arc::new(
            self.cloud
                .network_inventory(region)
                .await
                .map_err(|e| unavailable(&format!("the network of {region}"), &e))?,
        );
        cache.insert(
            region.to_owned(),
            (Instant::now(), epoch, inventory.clone()),
        );
        Ok(inventory)
    }

    async fn cached_instance_profiles(&self) -> AppResult<Arc<Vec<InstanceProfileInfo>>> {
        let mut cache = self.inventory.profiles.lock().await;
        if let Some((at, profiles)) = cache.as_ref()
            && at.elapsed() < self.settings.inventory_ttl
        {
            return Ok(profiles.clone());
        }
        let profiles = Arc::new(
            self.cloud
                .instance_profiles()
                .await
                .map_err(|e| unavailable("the instance profiles", &e))?,
        );
        *cache = Some((Instant::now(), profiles.clone()));
        Ok(profiles)
    }

    /// `GET region/{provider}/{name}/vpc/`.
    pub async fn region_vpcs(&self, provider: &str, region: &str) -> AppResult<Vec<api::Vpc>> {
        let inventory = self.network_inventory(provider, region).await?;
        let region_uri = uri::region(provider, region);
        Ok(inventory
            .vpcs
            .iter()
            .map(|v| api::Vpc {
                id: v.id.clone(),
                name: v.name.clone(),
                label: match &v.name {
                    Some(name) => format!("{} ({name})", v.id),
                    None => v.id.clone(),
                },
                cidr: v.cidr.clone(),
                is_default: v.is_default,
                flotilla: v.managed,
                region: region_uri.clone(),
            })
            .collect())
    }

    /// `GET region/{provider}/{name}/subnet/`.
    pub async fn region_subnets(
        &self,
        provider: &str,
        region: &str,
    ) -> AppResult<Vec<api::VpcSubnet>> {
        let inventory = self.network_inventory(provider, region).await?;
        Ok(inventory
            .subnets
            .iter()
            .map(|s| api::VpcSubnet {
                id: s.id.clone(),
                vpc_id: s.vpc_id.clone(),
                availability_zone: s.availability_zone.clone(),
                cidr: s.cidr.clone(),
                available_ips: s.available_ips,
                name: s.name.clone(),
                flotilla: s.managed,
            })
            .collect())
    }

    /// `GET region/{provider}/{name}/securitygroup/`.
    pub async fn region_security_groups(
        &self,
        provider: &str,
        region: &str,
    ) -> AppResult<Vec<api::SecurityGroup>> {
        let inventory = self.network_inventory(provider, region).await?;
        Ok(inventory
            .security_groups
            .iter()
            .map(|g| api::SecurityGroup {
                id: g.id.clone(),
                vpc_id: g.vpc_id.clone(),
                name: g.name.clone(),
                description: g.description.clone(),
                flotilla: g.managed,
            })
            .collect())
    }

    /// `GET provider/{name}/instanceprofile/`.
    pub async fn instance_profiles(&self, provider: &str) -> AppResult<Vec<api::InstanceProfile>> {
        Self::check_provider(provider)?;
        Ok(self
            .cached_instance_profiles()
            .await?
            .iter()
            .map(|p| api::InstanceProfile {
                name: p.name.clone(),
                arn: p.arn.clone(),
                roles: p.roles.clone(),
            })
            .collect())
    }

    /// `POST nodecluster/preview/`: the body checked as a create would check it (the name
    /// is optional here: the wizard previews before it is typed), answered with the nodes
    /// per AZ. Creates nothing.
    /// `org`: the organization the cluster would go to (its names are the ones checked).
    pub async fn preview_cluster(
        &self,
        body: &Value,
        org: Option<&str>,
    ) -> AppResult<api::ClusterPreview> {
        let named = body
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.trim().is_empty());
        let mut body = body.clone();
        if !named && let Some(object) = body.as_object_mut() {
            object.insert("name".into(), Value::from("preview"));
        }
        let spec =
            ClusterSpec::from_json(&body).map_err(|e| AppError::BadRequest(e.to_string()))?;
        self.check_offered(&spec).await?;
        if named {
            self.check_name_free(&spec, org).await?;
        }
        let unavailable_here =
            |e: CloudError| unavailable(&format!("what {} offers", spec.region), &e);
        let mut zones = self
            .cloud
            .availability_zones(&spec.region)
            .await
            .map_err(unavailable_here)?;
        if let Some(allowed) = &self.settings.allowed_azs {
            zones.retain(|z| allowed.contains(&z.name));
        }
        let offered_in = self
            .cloud
            .node_types(&spec.region)
            .await
            .map_err(|e| unavailable(&format!("the node types of {}", spec.region), &e))?
            .into_iter()
            .find(|t| t.name == spec.node_type)
            .map(|t| t.availability_zones)
            .unwrap_or_default();
        let inventory = match &spec.provider_options.vpc {
            Some(_) => Some(self.network_inventory(PROVIDER, &spec.region).await?),
            None => None,
        };
        let profiles = match &spec.provider_options.iam {
            Some(_) => Some(self.cached_instance_profiles().await?),
            None => None,
        };
        let planned = preview(
            &spec,
            &zones,
            &offered_in,
            inventory.as_deref(),
            profiles.as_deref().map(Vec::as_slice),
        )
        .map_err(|error| match error {
            CloudError::InvalidResource { .. } => AppError::BadRequest(error.to_string()),
            other => unavailable("the placement", &other),
        })?;
        Ok(api::ClusterPreview {
            region: uri::region(&spec.provider, &spec.region),
            node_type: uri::node_type(&spec.provider, &spec.node_type),
            target_num_nodes: spec.target_num_nodes,
            vpc: spec
                .provider_options
                .vpc
                .as_ref()
                .map(|v| v.id.clone())
                .unwrap_or_else(|| "auto".to_owned()),
            nodes_per_az: planned
                .shares
                .into_iter()
                .map(|s| api::AzPlacement {
                    availability_zone: s.availability_zone,
                    subnets: s.subnets,
                    nodes: s.nodes,
                })
                .collect(),
            notes: planned.notes,
        })
    }
}
