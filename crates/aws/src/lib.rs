//! Flotilla's AWS engine: [`flotilla_core::Cloud`] over the official AWS SDK for Rust.
//!
//! This is the only crate that names `aws_sdk_*` types; everything it returns is a `core`
//! type, so the rest of Flotilla can be tested against `FakeCloud` and cannot grow a
//! dependency on SDK details.
//!
//! Design decisions:
//! * One [`Aws`] per set of AWS keys; [`AwsAccount`] swaps it when a user links new keys.
//! * One [`Aws`] per AWS account. It owns one EC2 client per region and one request budget
//!   per region ([`budget`]), so every cluster of the account shares the budget.
//! * Every request goes through [`Aws::send`](call) — budget, retries, counting — so call
//!   counts and retry behaviour are the same for every operation and visible to tests.
//! * Observation is by tag: the network, the instances and a swarm's load balancer are found
//!   by Flotilla's ownership tags, which every create call sets in the same request
//!   (`TagSpecifications`, or ELBv2's `Tags`).
//! * Independent calls run concurrently (`tokio::join!`/`join_all`); the number of sequential
//!   round trips from nothing to running nodes is fixed, whatever the node count.

mod account;
pub mod budget;
mod call;
mod catalog;
mod credentials;
mod instances;
mod inventory;
mod lb;
mod network;
pub mod route53;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{Credentials, Region};
use flotilla_core::cloud::{
    AvailabilityZone, CallObserver, Cloud, CloudError, CredentialReport, Instance,
    InstanceProfileInfo, LaunchRequest, Network, NetworkInventory, NetworkLock, NetworkRequest,
    NodeTypeOffering, TeardownReport,
};

pub use crate::account::{AwsAccount, resolve_keys};
use crate::budget::TokenBucket;

/// How to reach an AWS account, and how hard to push it.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// The installation id written to the `flotilla:owner` tag; teardown only touches
    /// resources carrying it.
    pub owner: String,
    /// Region for global calls (DescribeRegions, IAM).
    pub home_region: String,
    /// An endpoint for every service (moto in tests); `AWS_ENDPOINT_URL` works too.
    pub endpoint_url: Option<String>,
    /// A named profile from `~/.aws/config`; `None` uses the standard credential chain.
    pub profile: Option<String>,
    /// Static keys, taking precedence over the profile and the chain.
    pub static_credentials: Option<StaticCredentials>,
    /// Attempts per logical call (1 = no retry).
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Request budget per region: sustained rate and burst.
    pub requests_per_second: f64,
    pub burst: u32,
    /// Time limit of one attempt.
    pub attempt_timeout: Duration,
    /// Regions checked at once by the credential validation.
    pub validation_concurrency: usize,
    /// Who hears about every finished call (the server's metrics); shared by every clone
    /// of these settings, so an `Aws` made later for new keys reports to the same place.
    pub observer: Slot<dyn CallObserver>,
    /// What a region's own network is ensured and torn down under, among the server's
    /// replicas ([`NetworkLock`]); shared by every clone like `observer`.
    pub network_lock: Slot<dyn NetworkLock>,
}

/// A hook the server gives an engine once (its metrics, its replicas' network lock),
/// shared by every clone of the settings.
pub struct Slot<T: ?Sized>(Arc<std::sync::OnceLock<Arc<T>>>);

impl<T: ?Sized> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot(self.0.clone())
    }
}

impl<T: ?Sized> Default for Slot<T> {
    fn default() -> Self {
        Slot(Arc::default())
    }
}

impl<T: ?Sized> Slot<T> {
    /// Sets the hook; a second call is ignored (one server, one of each).
    pub fn set(&self, hook: Arc<T>) {
        let _ = self.0.set(hook);
    }

    pub(crate) fn get(&self) -> Option<&Arc<T>> {
        self.0.get()
    }
}

impl<T: ?Sized> std::fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Slot(set)"
        } else {
            "Slot(empty)"
        })
    }
}

/// An access key pair (and session token for temporary credentials).
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret, not even in debug output.
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            owner: "flotilla".into(),
            home_region: "us-east-1".into(),
            endpoint_url: None,
            profile: None,
            static_credentials: None,
            max_attempts: 6,
            retry_base: Duration::from_millis(500),
            retry_cap: Duration::from_secs(20),
            requests_per_second: 20.0,
            burst: 100,
            attempt_timeout: Duration::from_secs(30),
            validation_concurrency: 8,
            observer: Slot::default(),
            network_lock: Slot::default(),
        }
    }
}

/// Calls and attempts per operation, since the `Aws` was made.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    calls: Mutex<BTreeMap<&'static str, u64>>,
    attempts: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, operation: &'static str) {
        *map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(operation)
            .or_default() += 1;
    }
    pub(crate) fn count_call(&self, operation: &'static str) {
        Self::bump(&self.calls, operation);
    }
    pub(crate) fn count_attempt(&self, operation: &'static str) {
        Self::bump(&self.attempts, operation);
    }
}

/// A default image for a region, with the device name its root volume uses.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    pub id: String,
    pub root_device_name: String,
}

/// The AWS engine for one account. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Aws {
    settings: AwsSettings,
    sdk_config: aws_config::SdkConfig,
    ec2_clients: Mutex<HashMap<String, aws_sdk_ec2::Client>>,
    elb_clients: Mutex<HashMap<String, aws_sdk_elasticloadbalancingv2::Client>>,
    budgets: Mutex<HashMap<String, Arc<TokenBucket>>>,
    /// One auto-network ensure per region at a time (see `network::ensure`).
    network_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    counters: Counters,
    zones: Mutex<HashMap<String, Vec<AvailabilityZone>>>,
    images: Mutex<HashMap<(String, Option<String>), Image>>,
    /// Opted-in regions, once asked (see `catalog`).
    regions: Mutex<Option<Vec<String>>>,
    /// Instance type offerings per region, once asked.
    node_types: Mutex<HashMap<String, Vec<NodeTypeOffering>>>,
    /// [`Cloud::network_epoch`] per region.
    network_epochs: Mutex<HashMap<String, u64>>,
}

impl Aws {
    fn network_changed(&self, region: &str) {
        let mut epochs = self
            .network_epochs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *epochs.entry(region.to_owned()).or_default() += 1;
    }

    /// Loads credentials (static keys, a profile, or the standard chain) and prepares clients.
    pub async fn connect(settings: AwsSettings) -> Aws {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(settings.attempt_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.home_region.clone()))
            // Retries are ours (see `call`): each attempt takes a budget token and is counted.
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts);
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(profile) = &settings.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(keys) = &settings.static_credentials {
            loader = loader.credentials_provider(Credentials::new(
                keys.access_key_id.clone(),
                keys.secret_access_key.clone(),
                keys.session_token.clone(),
                None,
                "flotilla-static",
            ));
        }
        let sdk_config = loader.load().await;
        Aws {
            settings,
            sdk_config,
            ec2_clients: Mutex::new(HashMap::new()),
            elb_clients: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            network_locks: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            zones: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
            regions: Mutex::new(None),
            node_types: Mutex::new(HashMap::new()),
            network_epochs: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &AwsSettings {
        &self.settings
    }

    /// The EC2 client of a region (SigV4 signs with the region, so each region needs its own).
    pub(crate) fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        let mut clients = self.ec2_clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let config = aws_sdk_ec2::config::Builder::from(&self.sdk_config)
                    .region(Region::new(region.to_owned()))
                    .build();
                aws_sdk_ec2::Client::from_conf(config)
            })
            .clone()
    }

    /// The ELBv2 client of a region.
    pub(crate) fn elb(&self, region: &str) -> aws_sdk_elasticloadbalancingv2::Client {
        let mut clients = self.elb_clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let config =
                    aws_sdk_elasticloadbalancingv2::config::Builder::from(&self.sdk_config)
                        .region(Region::new(region.to_owned()))
                        .build();
                aws_sdk_elasticloadbalancingv2::Client::from_conf(config)
            })
            .clone()
    }

    pub(crate) fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.sdk_config)
    }

    pub(crate) fn network_lock(&self, region: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.network_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(region.to_owned())
            .or_default()
            .clone()
    }

    pub(crate) fn budget(&self, region: &str) -> Arc<TokenBucket> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        budgets
            .entry(region.to_owned())
            .or_insert_with(|| {
                Arc::new(TokenBucket::new(
                    self.settings.requests_per_second,
                    self.settings.burst,
                ))
            })
            .clone()
    }

    /// Logical calls per AWS operation since this `Aws` was made.
    pub fn call_counts(&self) -> BTreeMap<String, u64> {
        let calls = self
            .counters
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        calls.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    /// Wire attempts per AWS operation (calls plus retries).
    pub fn attempt_counts(&self) -> BTreeMap<String, u64> {
        let attempts = self
            .counters
            .attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        attempts
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect()
    }

    /// Every instance Flotilla owns in a region, by cluster — one paginated call, whatever the
    /// number of clusters (what a periodic reconciler needs).
    pub async fn describe_owned_instances(
        &self,
        region: &str,
    ) -> Result<Vec<Instance>, CloudError> {
        self.describe_instances_by_tag(region, None).await
    }
}

impl Cloud for Aws {
    fn observe_calls(&self, observer: Arc<dyn CallObserver>) {
        self.settings.observer.set(observer);
    }

    fn share_network_lock(&self, lock: Arc<dyn NetworkLock>) {
        self.settings.network_lock.set(lock);
    }

    fn call_counts(&self) -> BTreeMap<String, u64> {
        self.counters
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(operation, count)| ((*operation).to_owned(), *count))
            .collect()
    }

    async fn validate_credentials(
        &self,
        instance_type: &str,
    ) -> Result<CredentialReport, CloudError> {
        credentials::validate(self, instance_type).await
    }

    async fn availability_zones(&self, region: &str) -> Result<Vec<AvailabilityZone>, CloudError> {
        self.zones_of(region).await
    }

    async fn regions(&self) -> Result<Vec<String>, CloudError> {
        catalog::regions(self).await
    }

    async fn node_types(&self, region: &str) -> Result<Vec<NodeTypeOffering>, CloudError> {
        catalog::node_types(self, region).await
    }

    async fn network_inventory(&self, region: &str) -> Result<NetworkInventory, CloudError> {
        inventory::network(self, region).await
    }

    async fn instance_profiles(&self) -> Result<Vec<InstanceProfileInfo>, CloudError> {
        inventory::instance_profiles(self).await
    }

    fn network_epoch(&self, region: &str) -> u64 {
        let epochs = self
            .network_epochs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        epochs.get(region).copied().unwrap_or_default()
    }

    async fn ensure_network(&self, request: &NetworkRequest) -> Result<Network, CloudError> {
        let ensured = network::ensure(self, request).await;
        // A failed ensure may have created something before it failed.
        if ensured.as_ref().map_or(true, |n| !n.changes.is_empty()) {
            self.network_changed(&request.region);
        }
        ensured
    }

    async fn check_network(&self, request: &NetworkRequest) -> Result<(), CloudError> {
        network::check(self, request).await
    }

    async fn launch_nodes(&self, request: &LaunchRequest) -> Result<Vec<Instance>, CloudError> {
        instances::launch(self, request).await
    }

    async fn describe_cluster(
        &self,
        region: &str,
        cluster_uuid: &str,
    ) -> Result<Vec<Instance>, CloudError> {
        self.describe_instances_by_tag(region, Some(cluster_uuid))
            .await
    }

    async fn describe_region(&self, region: &str) -> Result<Vec<Instance>, CloudError> {
        self.describe_owned_instances(region).await
    }

    async fn terminate_nodes(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<(), CloudError> {
        instances::terminate(self, region, instance_ids).await
    }

    async fn teardown_network(&self, region: &str) -> Result<TeardownReport, CloudError> {
        let report = network::teardown(self, region).await;
        self.network_changed(region);
        report
    }

    async fn describe_load_balancer(
        &self,
        region: &str,
        swarm_uuid: &str,
    ) -> Result<flotilla_core::plan::lb::Observed, CloudError> {
        lb::describe(self, region, swarm_uuid).await
    }

    async fn apply_load_balancer_step(
        &self,
        region: &str,
        swarm_uuid: &str,
        step: &flotilla_core::plan::lb::LbStep,
    ) -> Result<flotilla_core::plan::lb::Applied, CloudError> {
        lb::apply(self, region, swarm_uuid, step).await
    }

    async fn has_credentials(&self) -> bool {
        account::resolves(&self.sdk_config).await
    }
}
