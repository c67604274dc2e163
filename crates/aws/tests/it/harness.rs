//! A test environment: a fresh moto account behind a fault proxy, an `Aws` engine pointed at
//! it, and a second, fault-free proxy on the same account to inspect moto directly.

use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use flotilla_aws::{Aws, AwsSettings, StaticCredentials};
use flotilla_core::cloud::{Ingress, Network, NetworkRequest};
use flotilla_core::converge::{ConvergeReport, PassInput, run_pass};
use flotilla_core::{CloudError, ClusterSpec};
use flotilla_testkit::{FaultProxy, Moto};

pub const OWNER: &str = "flotilla-test";
pub const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

pub struct Env {
    pub proxy: FaultProxy,
    /// Same account, no faults, separate call log: for looking at moto.
    pub inspect: FaultProxy,
    pub aws: Aws,
}

pub fn settings(endpoint: &str) -> AwsSettings {
    AwsSettings {
        owner: OWNER.into(),
        endpoint_url: Some(endpoint.to_owned()),
        static_credentials: Some(StaticCredentials {
            access_key_id: "AKIAFLOTILLATEST".into(),
            secret_access_key: "flotilla-test-secret".into(),
            session_token: None,
        }),
        max_attempts: 8,
        retry_base: Duration::from_millis(5),
        retry_cap: Duration::from_millis(80),
        attempt_timeout: Duration::from_secs(20),
        ..AwsSettings::default()
    }
}

impl Env {
    pub async fn new() -> Env {
        let moto = Moto::shared();
        let account = Moto::new_account_id();
        let proxy = FaultProxy::start(&moto.endpoint(), Some(account.clone())).await;
        let inspect = FaultProxy::start(&moto.endpoint(), Some(account.clone())).await;
        let aws = Aws::connect(settings(&proxy.endpoint())).await;
        Env {
            proxy,
            inspect,
            aws,
        }
    }

    /// A raw EC2 client on the inspection proxy.
    pub async fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .endpoint_url(self.inspect.endpoint())
            .credentials_provider(Credentials::new(
                "AKIAINSPECT",
                "inspect-secret",
                None,
                None,
                "test",
            ))
            .load()
            .await;
        aws_sdk_ec2::Client::new(&config)
    }

    pub async fn iam(&self) -> aws_sdk_iam::Client {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(self.inspect.endpoint())
            .credentials_provider(Credentials::new(
                "AKIAINSPECT",
                "inspect-secret",
                None,
                None,
                "test",
            ))
            .load()
            .await;
        aws_sdk_iam::Client::new(&config)
    }

    /// Ids of the existing resources of one kind that carry our owner tag. (Not DescribeTags:
    /// moto keeps the tags of deleted resources.)
    pub async fn owned(&self, region: &str, resource_type: &str) -> Vec<String> {
        let ec2 = self.ec2(region).await;
        let owner = || {
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:flotilla:owner")
                .values(OWNER)
                .build()
        };
        let mut ids: Vec<String> = match resource_type {
            "vpc" => ec2
                .describe_vpcs()
                .filters(owner())
                .send()
                .await
                .expect("vpcs")
                .vpcs()
                .iter()
                .filter_map(|v| v.vpc_id().map(str::to_owned))
                .collect(),
            "subnet" => ec2
                .describe_subnets()
                .filters(owner())
                .send()
                .await
                .expect("subnets")
                .subnets()
                .iter()
                .filter_map(|v| v.subnet_id().map(str::to_owned))
                .collect(),
            "internet-gateway" => ec2
                .describe_internet_gateways()
                .filters(owner())
                .send()
                .await
                .expect("igws")
                .internet_gateways()
                .iter()
                .filter_map(|v| v.internet_gateway_id().map(str::to_owned))
                .collect(),
            "route-table" => ec2
                .describe_route_tables()
                .filters(owner())
                .send()
                .await
                .expect("rts")
                .route_tables()
                .iter()
                .filter_map(|v| v.route_table_id().map(str::to_owned))
                .collect(),
            "security-group" => ec2
                .describe_security_groups()
                .filters(owner())
                .send()
                .await
                .expect("sgs")
                .security_groups()
                .iter()
                .filter_map(|v| v.group_id().map(str::to_owned))
                .collect(),
            other => panic!("unknown resource type {other}"),
        };
        ids.sort();
        ids
    }

    /// Live instances per AZ, as moto sees them.
    pub async fn running_per_zone(
        &self,
        region: &str,
    ) -> std::collections::BTreeMap<String, usize> {
        let output = self
            .ec2(region)
            .await
            .describe_instances()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("instance-state-name")
                    .values("running")
                    .build(),
            )
            .send()
            .await
            .expect("describe instances");
        let mut counts = std::collections::BTreeMap::new();
        for instance in output.reservations().iter().flat_map(|r| r.instances()) {
            let zone = instance
                .placement()
                .and_then(|p| p.availability_zone())
                .unwrap_or("?")
                .to_owned();
            *counts.entry(zone).or_insert(0) += 1;
        }
        counts
    }
}

pub fn spec(target: u32) -> ClusterSpec {
    ClusterSpec::from_json(&serde_json::json!({
        "name": "web", "region": "us-east-1", "node_type": "t3.micro", "target_num_nodes": target, "disk": 30
    }))
    .expect("valid spec")
}

pub fn network_request(spec: &ClusterSpec) -> NetworkRequest {
    NetworkRequest::for_spec(
        spec,
        None,
        Some(ZONES.iter().map(|z| (*z).to_owned()).collect()),
        Ingress::default(),
    )
}

/// Runs one pass of the engine; returns the network, the report and the log lines.
pub async fn pass(
    aws: &Aws,
    cluster: &str,
    spec: &ClusterSpec,
    request: &NetworkRequest,
) -> Result<(Network, ConvergeReport, Vec<String>), CloudError> {
    let lines = Mutex::new(Vec::new());
    let input = PassInput {
        cluster_uuid: cluster,
        generation: 1,
        spec,
        network_request: request,
        key_name: None,
        next_slot: 0,
    };
    let result = run_pass(
        aws,
        &input,
        &|_| "#!/bin/sh\necho flotilla\n".into(),
        &|line| lines.lock().expect("lock").push(line),
    )
    .await;
    let lines = lines.into_inner().expect("lock");
    result.map(|(network, report)| (network, report, lines))
}
