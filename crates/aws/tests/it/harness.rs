//! A test environment: a fresh moto account behind a fault proxy, an `Aws` engine pointed at
//! it, and a second, fault-free proxy on the same account to inspect moto directly.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use flotilla_aws::{Aws, AwsSettings, StaticCredentials};
use flotilla_core::cloud::{Ingress, Network, NetworkRequest};
use flotilla_core::plan::cluster::Desired;
use flotilla_core::{CloudError, ClusterSpec};
use flotilla_server::execute::{Converged, converge};
use flotilla_testkit::inspect::{self, Kind};
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
        inspect::ec2_client(&self.inspect.endpoint(), region).await
    }

    pub async fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&inspect::sdk_config(&self.inspect.endpoint(), "us-east-1").await)
    }

    /// Ids of the existing resources of one kind that carry our owner tag.
    pub async fn owned(&self, region: &str, resource_type: &str) -> Vec<String> {
        let kind = match resource_type {
            "vpc" => Kind::Vpc,
            "subnet" => Kind::Subnet,
            "internet-gateway" => Kind::InternetGateway,
            "route-table" => Kind::RouteTable,
            "security-group" => Kind::SecurityGroup,
            other => panic!("unknown resource type {other}"),
        };
        inspect::owned(&self.ec2(region).await, OWNER, kind).await
    }

    /// Running instances per AZ, as moto sees them.
    pub async fn running_per_zone(&self, region: &str) -> BTreeMap<String, usize> {
        inspect::instances_per_zone(&self.ec2(region).await, &["running"]).await
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
) -> Result<(Network, Converged, Vec<String>), CloudError> {
    let lines = Mutex::new(Vec::new());
    let desired = Desired {
        cluster_uuid: cluster,
        generation: 1,
        spec,
        key_name: None,
        next_slot: 0,
        leave_first: false,
    };
    let result = converge(
        aws,
        &desired,
        request,
        &Default::default(),
        &|_| "#!/bin/sh\necho flotilla\n".into(),
        &|line| lines.lock().expect("lock").push(line),
    )
    .await;
    let lines = lines.into_inner().expect("lock");
    result.map(|report| (report.network.clone(), report, lines))
}
