//! End to end with the real AWS engine on moto (through the testkit proxy): the whole
//! cluster lifecycle through the API, and a server killed mid-deploy whose successor
//! finishes the work.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
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
    json!({"name": "web", "target_num_nodes": target, "region": "/api/infra/v1/region/aws/us-east-1/",
           "node_type": "/api/infra/v1/nodetype/aws/t3.micro/", "disk": "30"})
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
        .call(Method::POST, "/api/infra/v1/nodecluster/", Some(body(6)))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let uuid = created.body["uuid"].as_str().expect("uuid").to_owned();
    let path = format!("/api/infra/v1/nodecluster/{uuid}/");
    let unknown = server
        .call(
            Method::POST,
            "/api/infra/v1/nodecluster/",
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
    let nodes = server.get("/api/infra/v1/node/").await.body;
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
        .call(Method::POST, "/api/infra/v1/nodecluster/", Some(body(6)))
        .await;
    let uuid = created.body["uuid"].as_str().expect("uuid").to_owned();
    let deploy = server
        .call(
            Method::POST,
            &format!("/api/infra/v1/nodecluster/{uuid}/deploy/"),
            None,
        )
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

/// The logs of the cluster's "Node Cluster Network Check" history entries.
async fn network_checks(server: &TestServer, uuid: &str) -> Vec<String> {
    let object = format!("/api/infra/v1/nodecluster/{uuid}/");
    let listed = server.get("/api/audit/v1/action/?limit=1000").await.body;
    let mut logs = Vec::new();
    for action in listed["objects"].as_array().into_iter().flatten() {
        if action["object"] == object.as_str() && action["action"] == "Node Cluster Network Check" {
            let uri = action["resource_uri"].as_str().unwrap_or_default();
            let detail = server.get(uri).await.body;
            logs.push(detail["logs"].as_str().unwrap_or_default().to_owned());
        }
    }
    logs
}

/// Two clusters in one user VPC, each on its own subnet: when one cluster's subnet is
/// deleted, the periodic network check reports it on that cluster only — each cluster is
/// judged by its own `provider_options`, not by the first cluster's of the VPC.
#[tokio::test]
async fn each_cluster_in_a_shared_vpc_is_judged_by_its_own_subnets() {
    let env = Env::new().await;
    let ec2 = env.ec2().await;
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.40.0.0/16")
        .send()
        .await
        .expect("CreateVpc");
    let vpc_id = vpc
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("vpc id")
        .to_owned();
    let mut subnets = Vec::new();
    for (cidr, zone) in [("10.40.1.0/24", ZONES[0]), ("10.40.2.0/24", ZONES[1])] {
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block(cidr)
            .availability_zone(zone)
            .send()
            .await
            .expect("CreateSubnet");
        subnets.push(
            subnet
                .subnet()
                .and_then(|s| s.subnet_id())
                .expect("subnet id")
                .to_owned(),
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let config = moto_config(&dir);
    let installation = flotilla_server::initialize(&config)
        .await
        .expect("initialize");
    let owner = installation.owner_id.clone();
    let server = TestServer::start(config, env.aws(&owner).await, installation.new_admin).await;

    let mut uuids = Vec::new();
    for (name, subnet) in [("one", &subnets[0]), ("two", &subnets[1])] {
        let mut spec = body(1);
        spec["name"] = json!(name);
        spec["provider_options"] = json!({"vpc": {"id": vpc_id, "subnets": [subnet]}});
        let created = server
            .call(Method::POST, "/api/infra/v1/nodecluster/", Some(spec))
            .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        let uuid = created.body["uuid"].as_str().expect("uuid").to_owned();
        let deploy = server
            .call(
                Method::POST,
                &format!("/api/infra/v1/nodecluster/{uuid}/deploy/"),
                None,
            )
            .await;
        assert_eq!(deploy.status, 202);
        uuids.push(uuid);
    }
    for uuid in &uuids {
        server.wait_for_cluster(uuid, "Deployed", LIMIT).await;
    }

    // Cluster two's instance and then its subnet disappear in the console.
    let instances = ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("subnet-id")
                .values(&subnets[1])
                .build(),
        )
        .send()
        .await
        .expect("DescribeInstances");
    let ids: Vec<String> = instances
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 1, "cluster two's one node");
    ec2.terminate_instances()
        .set_instance_ids(Some(ids))
        .send()
        .await
        .expect("TerminateInstances");
    ec2.delete_subnet()
        .subnet_id(&subnets[1])
        .send()
        .await
        .expect("DeleteSubnet");

    let started = std::time::Instant::now();
    loop {
        let reports = network_checks(&server, &uuids[1]).await;
        if reports
            .iter()
            .any(|log| log.contains("not usable") && log.contains(subnets[1].as_str()))
        {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "cluster two was never told its subnet is gone: {reports:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The check that reported on cluster two judged cluster one in the same observation;
    // two more observation periods make sure no later one blames cluster one either.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let one = network_checks(&server, &uuids[0]).await;
    assert!(
        one.iter().all(|log| !log.contains("not usable")),
        "cluster one was blamed for another cluster's subnet: {one:?}"
    );
    server.stop().await;
}
