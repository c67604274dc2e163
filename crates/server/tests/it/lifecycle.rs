//! End to end with the real AWS engine on moto (through the testkit proxy): the whole
//! cluster lifecycle through the API, and a server killed mid-deploy whose successor
//! finishes the work.

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::client::new_node_cluster;
use flotilla_api::uri;
use flotilla_aws::{Aws, AwsSettings, StaticCredentials};
use flotilla_testkit::{FaultProxy, Moto, inspect};
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

    /// A fresh installation in `dir`, on this account, served in-process; and its owner id.
    async fn server(&self, dir: &tempfile::TempDir) -> (TestServer, String) {
        let config = moto_config(dir);
        let installation = flotilla_server::initialize(&config)
            .await
            .expect("initialize");
        let owner = installation.owner_id.clone();
        let server =
            TestServer::start(config, self.aws(&owner).await, installation.new_admin).await;
        (server, owner)
    }

    /// Running or pending instances per AZ.
    async fn live_per_zone(&self) -> std::collections::BTreeMap<String, usize> {
        let ec2 = inspect::ec2_client(&self.inspect.endpoint(), "us-east-1").await;
        inspect::instances_per_zone(&ec2, &["running", "pending"]).await
    }

    async fn owned_vpcs(&self, owner: &str) -> usize {
        let ec2 = inspect::ec2_client(&self.inspect.endpoint(), "us-east-1").await;
        inspect::owned(&ec2, owner, inspect::Kind::Vpc).await.len()
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

/// The launch wizard's VPC list (`region/…/vpc/`): Flotilla's own VPCs in it.
async fn flotilla_vpcs(server: &TestServer) -> Vec<String> {
    let listed = server.get(&uri::region_vpcs("aws", "us-east-1")).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    let vpcs = listed.body["objects"]
        .as_array()
        .or(listed.body.as_array())
        .cloned()
        .unwrap_or_else(|| panic!("a list of VPCs: {}", listed.body));
    assert!(
        vpcs.iter().any(|v| v["is_default"] == true),
        "moto's default VPC is listed: {vpcs:?}"
    );
    vpcs.iter()
        .filter(|v| v["flotilla"] == true)
        .map(|v| v["label"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn create_deploy_scale_and_delete_on_moto_leave_nothing_behind() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // The wizard's network lists are cached for an hour here: Flotilla's own VPC must still
    // appear as soon as it exists, and go when it is torn down (the network epoch).
    let mut config = moto_config(&dir);
    config.inventory_ttl = Duration::from_secs(3600);
    let installation = flotilla_server::initialize(&config)
        .await
        .expect("initialize");
    let owner = installation.owner_id.clone();
    let server = TestServer::start(config, env.aws(&owner).await, installation.new_admin).await;
    assert_eq!(flotilla_vpcs(&server).await, Vec::<String>::new());

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
    let ours = flotilla_vpcs(&server).await;
    assert!(
        ours.len() == 1 && ours[0].ends_with("(dc-vpc)"),
        "Flotilla's VPC offered at once: {ours:?}"
    );
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
    assert_eq!(
        flotilla_vpcs(&server).await,
        Vec::<String>::new(),
        "and no longer offered"
    );
    server.stop().await;
}

#[tokio::test]
async fn provider_options_naming_missing_resources_are_refused_at_create_and_nothing_is_stored() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, _owner) = env.server(&dir).await;

    // The user's own VPC with one subnet, and a security group of another VPC.
    let ec2 = inspect::ec2_client(&env.inspect.endpoint(), "us-east-1").await;
    let create_vpc = |cidr: &'static str| {
        let ec2 = ec2.clone();
        async move {
            let vpc = ec2.create_vpc().cidr_block(cidr).send().await.expect("vpc");
            vpc.vpc().and_then(|v| v.vpc_id()).expect("id").to_owned()
        }
    };
    let vpc = create_vpc("172.31.0.0/16").await;
    let other = create_vpc("172.30.0.0/16").await;
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("172.31.0.0/24")
        .availability_zone("us-east-1a")
        .send()
        .await
        .expect("subnet")
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("id")
        .to_owned();
    let foreign_group = ec2
        .create_security_group()
        .vpc_id(&other)
        .group_name("elsewhere")
        .description("a group of another VPC")
        .send()
        .await
        .expect("group")
        .group_id()
        .expect("id")
        .to_owned();

    let with = |options: Value| {
        let mut body = body(1);
        body["provider_options"] = options;
        body
    };
    let missing = "vpc-0123456789abcdef0";
    let cases = [
        (
            with(json!({"vpc": {"id": missing}})),
            "provider_options.vpc.id",
            missing.to_owned(),
        ),
        (
            with(json!({"vpc": {"id": vpc, "subnets": ["subnet-0123456789abcdef0"]}})),
            "provider_options.vpc.subnets",
            "subnet-0123456789abcdef0".to_owned(),
        ),
        (
            with(
                json!({"vpc": {"id": vpc, "subnets": [subnet], "security_groups": ["sg-0123456789abcdef0"]}}),
            ),
            "provider_options.vpc.security_groups",
            "sg-0123456789abcdef0".to_owned(),
        ),
        (
            with(
                json!({"vpc": {"id": vpc, "subnets": [subnet], "security_groups": [foreign_group]}}),
            ),
            "provider_options.vpc.security_groups",
            foreign_group.clone(),
        ),
        (
            with(json!({"iam": {"instance_profile_name": "no-such-profile"}})),
            "provider_options.iam.instance_profile_name",
            "no-such-profile".to_owned(),
        ),
    ];
    for (body, field, id) in cases {
        let reply = server
            .call(
                Method::POST,
                "/api/infra/v1/nodecluster/",
                Some(body.clone()),
            )
            .await;
        assert_eq!(reply.status, 400, "{body}: {:?}", reply.body);
        let error = reply.body["error"].as_str().expect("error message");
        assert!(
            error.starts_with(&format!("{field}: ")) && error.contains(&id),
            "{field} and {id} not in {error}"
        );
        assert_eq!(reply.action_uri, None, "no action for a refused create");
    }
    let listed = server.get("/api/infra/v1/nodecluster/").await.body;
    assert_eq!(
        listed["meta"]["total_count"], 0,
        "nothing stored: {listed:#}"
    );
    let actions = server.get("/api/audit/v1/action/").await.body;
    assert_eq!(actions["meta"]["total_count"], 0, "no action: {actions:#}");

    // The same VPC and subnet, all existing: accepted.
    let good = with(json!({"vpc": {"id": vpc, "subnets": [subnet]}}));
    let created = server
        .call(Method::POST, "/api/infra/v1/nodecluster/", Some(good))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let listed = server.get("/api/infra/v1/nodecluster/").await.body;
    assert_eq!(listed["meta"]["total_count"], 1);
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

/// The cluster's state straight from the server's database (the server is gone).
async fn server_state(dir: &tempfile::TempDir) -> String {
    let store = config(dir).open_store().await.expect("open store");
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
    let ec2 = inspect::ec2_client(&env.inspect.endpoint(), "us-east-1").await;
    let (vpc_id, subnets) = inspect::create_user_vpc(
        &ec2,
        "10.40.0.0/16",
        &[("10.40.1.0/24", ZONES[0]), ("10.40.2.0/24", ZONES[1])],
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, _owner) = env.server(&dir).await;

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
    let ids = inspect::instances_in_subnet(&ec2, &subnets[1]).await;
    assert_eq!(ids.len(), 1, "cluster two's one node");
    inspect::terminate_instances(&ec2, &ids).await;
    inspect::delete_subnet(&ec2, &subnets[1]).await;

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
