//! [`AwsAccount`]: the account a server drives, whose keys can be replaced while it runs
//! (`PUT /api/infra/v1/provider/aws/credentials/`), and [`resolve_keys`] for clients that
//! link the keys of a local profile or of the standard chain.
//!
//! Design decisions:
//! * The account holds an `Arc<Aws>` behind a lock that is never held across an `.await`:
//!   each call clones the current `Arc` and runs on it, so a call started before a link
//!   finishes with the old keys and every call after it uses the new ones.
//! * Linking builds a fresh [`Aws`] with the new keys (same endpoint, owner and budgets
//!   settings, no profile), validates with it, and swaps only when the report is valid; a
//!   refused link leaves the account exactly as it was.
//! * Per-region budgets and caches belong to an `Aws`, so they start afresh after a link:
//!   new keys may see other regions, images and offerings.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_credential_types::provider::ProvideCredentials;
use flotilla_core::cloud::{
    AccessKeys, AvailabilityZone, Cloud, CloudError, CredentialReport, Instance,
    InstanceProfileInfo, LaunchRequest, Network, NetworkInventory, NetworkRequest,
    NodeTypeOffering, TeardownReport,
};

use crate::{Aws, AwsSettings, StaticCredentials};

/// See the module documentation.
#[derive(Debug)]
pub struct AwsAccount {
    current: RwLock<Arc<Aws>>,
    settings: AwsSettings,
}

impl AwsAccount {
    /// Connects with `settings` (static keys if given, else the profile or the chain).
    pub async fn connect(settings: AwsSettings) -> AwsAccount {
        let aws = Aws::connect(settings.clone()).await;
        AwsAccount {
            current: RwLock::new(Arc::new(aws)),
            settings,
        }
    }

    /// The engine every call uses now.
    pub fn current(&self) -> Arc<Aws> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Validates `keys` with a fresh engine and switches to it when they are valid.
    pub async fn link(
        &self,
        keys: &AccessKeys,
        instance_type: &str,
    ) -> Result<CredentialReport, CloudError> {
        let settings = AwsSettings {
            profile: None,
            static_credentials: Some(StaticCredentials {
                access_key_id: keys.access_key_id.clone(),
                secret_access_key: keys.secret_access_key.clone(),
                session_token: keys.session_token.clone(),
            }),
            ..self.settings.clone()
        };
        let candidate = Aws::connect(settings).await;
        let report = candidate.validate_credentials(instance_type).await?;
        if report.is_valid() {
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(candidate);
            // Neither key is logged, not even the access key id.
            tracing::info!("linked new AWS keys");
        }
        Ok(report)
    }
}

impl Cloud for AwsAccount {
    async fn validate_credentials(
        &self,
        instance_type: &str,
    ) -> Result<CredentialReport, CloudError> {
        self.current().validate_credentials(instance_type).await
    }

    async fn availability_zones(&self, region: &str) -> Result<Vec<AvailabilityZone>, CloudError> {
        self.current().availability_zones(region).await
    }

    async fn regions(&self) -> Result<Vec<String>, CloudError> {
        self.current().regions().await
    }

    async fn node_types(&self, region: &str) -> Result<Vec<NodeTypeOffering>, CloudError> {
        self.current().node_types(region).await
    }

    fn network_epoch(&self, region: &str) -> u64 {
        self.current().network_epoch(region)
    }

    async fn network_inventory(&self, region: &str) -> Result<NetworkInventory, CloudError> {
        self.current().network_inventory(region).await
    }

    async fn instance_profiles(&self) -> Result<Vec<InstanceProfileInfo>, CloudError> {
        self.current().instance_profiles().await
    }

    async fn ensure_network(&self, request: &NetworkRequest) -> Result<Network, CloudError> {
        self.current().ensure_network(request).await
    }

    async fn check_network(&self, request: &NetworkRequest) -> Result<(), CloudError> {
        self.current().check_network(request).await
    }

    async fn launch_nodes(&self, request: &LaunchRequest) -> Result<Vec<Instance>, CloudError> {
        self.current().launch_nodes(request).await
    }

    async fn describe_cluster(
        &self,
        region: &str,
        cluster_uuid: &str,
    ) -> Result<Vec<Instance>, CloudError> {
        self.current().describe_cluster(region, cluster_uuid).await
    }

    async fn describe_region(&self, region: &str) -> Result<Vec<Instance>, CloudError> {
        self.current().describe_region(region).await
    }

    async fn terminate_nodes(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<(), CloudError> {
        self.current().terminate_nodes(region, instance_ids).await
    }

    async fn teardown_network(&self, region: &str) -> Result<TeardownReport, CloudError> {
        self.current().teardown_network(region).await
    }

    async fn link_credentials(
        &self,
        keys: &AccessKeys,
        instance_type: &str,
    ) -> Result<CredentialReport, CloudError> {
        self.link(keys, instance_type).await
    }

    async fn describe_load_balancer(
        &self,
        region: &str,
        swarm_uuid: &str,
    ) -> Result<flotilla_core::plan::lb::Observed, CloudError> {
        self.current()
            .describe_load_balancer(region, swarm_uuid)
            .await
    }

    async fn apply_load_balancer_step(
        &self,
        region: &str,
        swarm_uuid: &str,
        step: &flotilla_core::plan::lb::LbStep,
    ) -> Result<flotilla_core::plan::lb::Applied, CloudError> {
        self.current()
            .apply_load_balancer_step(region, swarm_uuid, step)
            .await
    }

    async fn has_credentials(&self) -> bool {
        self.current().has_credentials().await
    }

    fn call_counts(&self) -> std::collections::BTreeMap<String, u64> {
        self.current().call_counts()
    }

    fn observe_calls(&self, observer: Arc<dyn flotilla_core::cloud::CallObserver>) {
        // The slot is shared by every engine made from these settings, the current one
        // included.
        self.settings.observer.set(observer);
    }

    fn share_network_lock(&self, lock: Arc<dyn flotilla_core::cloud::NetworkLock>) {
        // Shared by every engine made from these settings, like the observer.
        self.settings.network_lock.set(lock);
    }
}

/// Whether an SDK configuration's credentials provider yields keys (within 10 s, so a
/// missing instance role cannot hang the caller).
pub(crate) async fn resolves(config: &aws_config::SdkConfig) -> bool {
    let Some(provider) = config.credentials_provider() else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(10), provider.provide_credentials()).await,
        Ok(Ok(_))
    )
}

/// The keys of a named profile, or of the standard chain (environment, `~/.aws`, SSO,
/// instance role), resolved here, for `flotilla provider link aws`.
pub async fn resolve_keys(profile: Option<&str>) -> Result<AccessKeys, String> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(profile) = profile {
        loader = loader.profile_name(profile);
    }
    let config = loader.load().await;
    let provider = config
        .credentials_provider()
        .ok_or_else(|| "no AWS credentials provider is configured".to_owned())?;
    let keys = provider.provide_credentials().await.map_err(|error| {
        format!(
            "cannot resolve AWS credentials{}: {error}",
            profile
                .map(|p| format!(" of profile '{p}'"))
                .unwrap_or_default()
        )
    })?;
    Ok(AccessKeys {
        access_key_id: keys.access_key_id().to_owned(),
        secret_access_key: keys.secret_access_key().to_owned(),
        session_token: keys.session_token().map(str::to_owned),
    })
}
