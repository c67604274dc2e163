//! End to end with the real AWS engine on moto (through the testkit proxy): the whole
//! cluster lifecycle through the API, and a server killed mid-deploy whose successor
//! finishes the work.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use flotilla_api::client::new_node_cluster;
use flotilla_api::uri;
use flotilla_aws::{Aws, AwsSettings, StaticCredentials};
use flotilla_testkit::{FaultProxy, Moto};
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{TestServer, config};

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
const LIMIT: Duration = Duration::from_secs(120);

struct Env {
    proxy: FaultProxy,
    inspect: FaultProxy,
}

impl Env {
    async fn new() -> Env {
        let moto = Moto::shared();
        let account = Moto::new_account_id();
        Env {
            proxy: FaultProxy::start(&moto.endpoint(), Some(account.clone())).await,
            inspect: FaultProxy::start(&moto.endpoint(), Some(account)).await,
        }
    }

    async fn aws(&self, owner: &str) -> Arc<Aws> {
        Arc::new(
            Aws::connect(AwsSettings {
                owner: owner.to_owned(),
                endpoint_url: Some(self.proxy.endpoint()),
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
            })
            .await,
        )
    }

    async fn ec2(&self) -> aws_sdk_ec2::Client {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(self.inspect.endpoint())
            .credentials_provider(Credentials::new(
                "AKIAINSPECT",
                "inspect",
                None,
                None,
                "test",
            ))
            .load()
            .await;
        aws_sdk_ec2::Client::new(&config)
    }

    /// Running or pending instances per AZ.
    async fn live_per_zone(&self) -> std::collections::BTreeMap<String, usize> {
        let output = self
            .ec2()
            .await
            .describe_instances()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("instance-state-name")
                    .values("running")
                    .values("pending")
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

    async fn owned_vpcs(&self, owner: &str) -> usize {
        self.ec2()
            .await
            .describe_vpcs()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("tag:flotilla:owner")
                    .values(owner)
                    .build(),
            )
            .send()
            .await
            .expect("describe vpcs")
            .vpcs()
            .len()
    }
}

fn moto_config(dir: &tempfile::TempDir) -> flotilla_server::ServerConfig {
    let mut config = config(dir);
    config.reconcile.poll_interval = Duration::from_millis(200);
    config.reconcile.allowed_azs = Some(ZONES.iter().map(|z| (*z).to_owned()).collect());
    config
}

fn body(target: u32) -> Value {
    new_node_cluster("web", target, "us-east-1", "t3.micro")
}

fn per_zone(counts: &std::collections::BTreeMap<String, usize>) -> Vec<usize> {
    ZONES
        .iter()
        .map(|z| counts.get(*z).copied().unwrap_or(0))
        .collect()
}

#[tokio::test]
async fn create_deploy_scale_and_delete_on_moto_leave_nothing_behind() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = moto_config(&dir);
    let installation = flotilla_server::initialize(&config)
        .await
        .expect("initialize");
    let owner = installation.owner_id.clone();
    let server = TestServer::start(config, env.aws(&owner).await, installation.new_admin).await;

    let created = server
        .call(Method::POST, &uri::node_clusters(), Some(body(6)))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let uuid = created.body["uuid"].as_str().expect("uuid").to_owned();
    let path = uri::node_cluster(&uuid);
    let unknown = server
        .call(
            Method::POST,
            &uri::node_clusters(),
            Some(json!({"name": "x", "region": "us-east-1", "node_type": "t9.nothing"})),
        )
        .await;
    assert_eq!(unknown.status, 400, "{:?}", unknown.body);

    let deploy = server
        .call(Method::POST, &format!("{path}deploy/"), None)
        .await;
    assert_eq!(deploy.status, 202);
    let action = server
        .wait_for_action(&deploy.action_uri.expect("header"), LIMIT)
        .await;
    assert_eq!(action["state"], "Success", "{action:#}");
    let cluster = server.wait_for_cluster(&uuid, "Deployed", LIMIT).await;
    assert_eq!(cluster["current_num_nodes"], 6);
    assert_eq!(per_zone(&env.live_per_zone().await), vec![2, 2, 2]);
    let nodes = server.get(&uri::nodes()).await.body;
    assert_eq!(nodes["meta"]["total_count"], 6);
    assert!(
        nodes["objects"]
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| n["state"] == "Deployed")
    );

    for (target, expected) in [(9, vec![3, 3, 3]), (4, vec![2, 1, 1])] {
        let scale = server
            .call(
                Method::PATCH,
                &path,
                Some(json!({"target_num_nodes": target})),
            )
            .await;
        assert_eq!(scale.status, 202, "{:?}", scale.body);
        let action = server
            .wait_for_action(&scale.action_uri.expect("header"), LIMIT)
            .await;
        assert_eq!(action["state"], "Success", "{action:#}");
        let cluster = server.wait_for_cluster(&uuid, "Deployed", LIMIT).await;
        assert_eq!(cluster["current_num_nodes"], target);
        let mut counts = per_zone(&env.live_per_zone().await);
        counts.sort_unstable();
        let mut expected = expected;
        expected.sort_unstable();
        assert_eq!(counts, expected, "balanced after scaling to {target}");
    }

    let delete = server.call(Method::DELETE, &path, None).await;
    assert_eq!(delete.status, 202);
    let action = server
        .wait_for_action(&delete.action_uri.expect("header"), LIMIT)
        .await;
    assert_eq!(action["state"], "Success", "{action:#}");
    assert!(
        action["logs"].as_str().expect("logs").contains("VPC"),
        "{action:#}"
    );
    server.wait_for_cluster(&uuid, "Terminated", LIMIT).await;
    assert!(
        env.live_per_zone().await.is_empty(),
        "instances left behind"
    );
    assert_eq!(env.owned_vpcs(&owner).await, 0, "the auto network is gone");
    server.stop().await;
}

#[tokio::test]
async fn a_server_killed_mid_deploy_is_finished_by_the_next_one() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = moto_config(&dir);
    let installation = flotilla_server::initialize(&config)
        .await
        .expect("initialize");
    let owner = installation.owner_id.clone();
    let credentials = installation.new_admin.clone();
    // Slow AWS down so the deploy is still under way when the server dies.
    env.proxy.set_latency(Duration::from_millis(150));
    let server =
        TestServer::start(config.clone(), env.aws(&owner).await, credentials.clone()).await;
    let created = server
        .call(Method::POST, &uri::node_clusters(), Some(body(6)))
        .await;
    let uuid = created.body["uuid"].as_str().expect("uuid").to_owned();
    let deploy = server
        .call(Method::POST, &uri::node_cluster_deploy(&uuid), None)
        .await;
    assert_eq!(deploy.status, 202);
    let action_uri = deploy.action_uri.expect("header");
    // Wait until the network is being built, then kill the server.
    let started = std::time::Instant::now();
    while env.proxy.total() < 3 && started.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.crash().await;
    let mid = server_state(&dir).await;
    assert_eq!(mid, "Deploying", "the deploy was interrupted");

    env.proxy.set_latency(Duration::ZERO);
    let server = TestServer::start(config, env.aws(&owner).await, credentials).await;
    let action = server.wait_for_action(&action_uri, LIMIT).await;
    assert_eq!(action["state"], "Success", "{action:#}");
    let cluster = server.wait_for_cluster(&uuid, "Deployed", LIMIT).await;
    assert_eq!(cluster["current_num_nodes"], 6);
    assert_eq!(
        per_zone(&env.live_per_zone().await),
        vec![2, 2, 2],
        "no node launched twice"
    );
    assert_eq!(env.owned_vpcs(&owner).await, 1, "one network, not two");
    server.stop().await;
}

/// The cluster's state straight from the database file (the server is gone).
async fn server_state(dir: &tempfile::TempDir) -> String {
    let store = flotilla_server::store::Store::open(&dir.path().join("flotilla.db"))
        .await
        .expect("open store");
    let clusters = store.clusters().await.expect("clusters");
    store.close().await;
    clusters
        .first()
        .map(|c| c.state.to_string())
        .unwrap_or_default()
}
