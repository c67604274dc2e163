//! A harness for the crash matrix and the AWS-fault tests: one moto account, a fault proxy
//! the server talks through and a fault-free inspection proxy, and a real `flotilla server`
//! process that can be killed with SIGKILL and restarted on the same data directory and port.
//! The cluster operations of issue #5 (create-and-deploy, scale, node rm, cluster rm) are
//! driven through the HTTP API, and [`Harness::check`] verifies the end state through moto,
//! the API and the database file.
//!
//! Design decisions:
//! * Checks go through the inspection proxy (never counted by, nor faulted by, the proxy the
//!   server uses), filtered by the `flotilla:owner` tag key: each harness has its own moto
//!   account, so every owned resource in it is this server's.
//! * "No instance without an owner in the store" is checked through the API: every running
//!   instance's node (hash of its cluster and slot: the first slot of its launch, tag
//!   `flotilla:slots`, plus its launch index) is a `Deployed` node of the cluster, and every
//!   live node of the cluster has its running instance. No volume is left unattached.
//! * The database check runs `PRAGMA integrity_check` with the `sqlite3` command on a copy
//!   taken while the server is stopped (killed), so it sees exactly what a crash left.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use flotilla_testkit::{FaultProxy, MotoAccount, ServerProcess};
use serde_json::{Value, json};

use flotilla_api::client::new_node_cluster;
use flotilla_api::uri::{self, Resource};

use crate::support::{Api, server};

pub const START_LIMIT: Duration = Duration::from_secs(30);
pub const CONVERGE_LIMIT: Duration = Duration::from_secs(90);

pub const ACCESS_KEY: &str = "AKIAE2EOPS";
pub const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

/// A server under test with its AWS account.
pub struct Harness {
    pub proxy: FaultProxy,
    pub inspector: FaultProxy,
    pub server: ServerProcess,
    api: Api,
}

/// What an operation must end with.
#[derive(Debug, Clone)]
pub struct Expect {
    pub cluster: String,
    /// Running nodes; `None` when the cluster is removed (nothing may be left).
    pub nodes: Option<usize>,
    pub action: String,
}

impl Harness {
    /// A fresh account, proxies and data directory; the server is started with `env`.
    pub async fn start(env: &[(&str, &str)]) -> Harness {
        // reqwest is built without a default TLS crypto provider; any installed one will do.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let MotoAccount {
            proxy, inspector, ..
        } = MotoAccount::start().await;
        let mut builder = server(&proxy.endpoint())
            .access_key_id(ACCESS_KEY)
            .args(["--node-ready", "running"])
            .start_limit(START_LIMIT);
        for (name, value) in env {
            builder = builder.env(name, value);
        }
        let server = builder.start().await.unwrap_or_else(|e| panic!("{e:#}"));
        let api = Api::of(&server, reqwest::Client::new());
        Harness {
            proxy,
            inspector,
            server,
            api,
        }
    }

    fn data(&self) -> PathBuf {
        self.server.data_dir().to_owned()
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill(&mut self) {
        self.server.kill().await;
    }

    /// A new server process on the same data directory and port.
    pub async fn restart(&mut self) {
        self.server
            .restart()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The tail of every run's logs: what explains a failure without drowning the report.
    pub fn logs(&self) -> String {
        self.server.log_tail(60)
    }

    /// One API call: status, body and the `X-DockerCloud-Action-URI` header.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, Option<String>) {
        self.api.call_with_action(method, path, body).await
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body, _) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// `POST nodecluster/` (3 AZs of us-east-1, t3.micro); the cluster's path.
    pub async fn create_cluster(&self, name: &str, nodes: u32) -> String {
        let body = new_node_cluster(name, nodes, "us-east-1", "t3.micro");
        let (status, created, _) = self
            .call(reqwest::Method::POST, &uri::node_clusters(), Some(body))
            .await;
        assert_eq!(status, 201, "{created}");
        uri::node_cluster(created["uuid"].as_str().expect("cluster uuid"))
    }

    /// `POST deploy/`; the action's path.
    pub async fn deploy(&self, cluster: &str) -> String {
        let Some(Resource::NodeCluster { uuid }) = Resource::parse(cluster) else {
            panic!("{cluster} is not a node cluster's path");
        };
        self.act(
            reqwest::Method::POST,
            &uri::node_cluster_deploy(&uuid),
            None,
        )
        .await
    }

    /// `PATCH {"target_num_nodes": n}`; the action's path.
    pub async fn scale(&self, cluster: &str, nodes: u32) -> String {
        self.act(
            reqwest::Method::PATCH,
            cluster,
            Some(json!({"target_num_nodes": nodes})),
        )
        .await
    }

    /// `DELETE`; the action's path.
    pub async fn remove(&self, path: &str) -> String {
        self.act(reqwest::Method::DELETE, path, None).await
    }

    async fn act(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> String {
        let (status, answer, action) = self.call(method.clone(), path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        action.unwrap_or_else(|| panic!("{method} {path} named no action: {answer}"))
    }

    /// Waits until the action has ended; its final JSON.
    pub async fn wait_action(&self, action: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let value = self.get(action).await;
            let state = value["state"].as_str().unwrap_or("");
            if !matches!(state, "Pending" | "In progress" | "Canceling") {
                return value;
            }
            assert!(
                started.elapsed() < limit,
                "action {action} still {state} after {limit:?}: {}\n{}",
                value["logs"],
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the action ends in `Success`; panics with its log otherwise.
    pub async fn wait_success(&self, action: &str, what: &str) {
        let value = self.wait_action(action, CONVERGE_LIMIT).await;
        assert_eq!(
            value["state"],
            "Success",
            "{what}: {}\n{}",
            value["logs"].as_str().unwrap_or(""),
            self.logs()
        );
    }

    /// Waits (bounded) until the cluster is in no busy state: a reconciler ends the action
    /// first and then moves the cluster, so an action's `Success` may briefly precede it.
    pub async fn settled(&self, cluster: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.get(cluster).await;
            let busy = matches!(
                value["state"].as_str().unwrap_or(""),
                "Deploying" | "Scaling" | "Terminating"
            );
            if !busy || started.elapsed() > Duration::from_secs(10) {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The cluster's nodes as the API lists them (terminated ones too).
    pub async fn nodes_of(&self, cluster: &str) -> Vec<Value> {
        let list = self.get(&format!("{}?limit=1000", uri::nodes())).await;
        list["objects"]
            .as_array()
            .expect("objects")
            .iter()
            .filter(|n| n["node_cluster"].as_str() == Some(cluster))
            .cloned()
            .collect()
    }

    /// An EC2 client on the inspection proxy.
    pub async fn ec2(&self) -> aws_sdk_ec2::Client {
        flotilla_testkit::inspect::ec2_client(&self.inspector.endpoint(), "us-east-1").await
    }

    /// Everything the issue lists, after an operation: one network, the target number of
    /// running instances balanced across the AZs, each owned by a Deployed node of the
    /// cluster, no loose volume, the cluster's and the action's states, and a sound
    /// database. Returns the problems found (empty: converged).
    pub async fn check(&self, expect: &Expect) -> Vec<String> {
        let mut problems = Vec::new();
        self.settled(&expect.cluster).await;
        let ec2 = self.ec2().await;
        let owned = owned_counts(&ec2).await;
        let running = running_instances(&ec2).await;
        match expect.nodes {
            Some(n) => {
                for (kind, want) in [
                    ("vpc", 1),
                    ("subnet", 3),
                    ("internet gateway", 1),
                    ("route table", 1),
                    ("security group", 1),
                ] {
                    let have = owned.get(kind).map_or(0, Vec::len);
                    if have != want {
                        problems.push(format!("{have} {kind}s, want {want}: {:?}", owned[kind]));
                    }
                }
                if running.len() != n {
                    problems.push(format!("{} running instances, want {n}", running.len()));
                }
                let mut per_zone: BTreeMap<&str, usize> = ZONES.iter().map(|z| (*z, 0)).collect();
                for instance in &running {
                    *per_zone.entry(instance.zone.as_str()).or_insert(0) += 1;
                }
                let (lo, hi) = (
                    per_zone.values().min().copied().unwrap_or(0),
                    per_zone.values().max().copied().unwrap_or(0),
                );
                if hi - lo > 1 {
                    problems.push(format!("unbalanced: {per_zone:?}"));
                }
                let cluster = self.get(&expect.cluster).await;
                if cluster["state"] != "Deployed" {
                    problems.push(format!("cluster is {}", cluster["state"]));
                }
                if cluster["current_num_nodes"] != n || cluster["target_num_nodes"] != n {
                    problems.push(format!(
                        "cluster has {} of {} nodes, want {n}",
                        cluster["current_num_nodes"], cluster["target_num_nodes"]
                    ));
                }
            }
            None => {
                for (kind, ids) in &owned {
                    if !ids.is_empty() {
                        problems.push(format!("{kind}s left: {ids:?}"));
                    }
                }
                if !running.is_empty() {
                    problems.push(format!("{} instances left", running.len()));
                }
                let cluster = self.get(&expect.cluster).await;
                if cluster["state"] != "Terminated" {
                    problems.push(format!("cluster is {}", cluster["state"]));
                }
            }
        }
        // Every running instance is a Deployed node of the cluster, and the reverse.
        let nodes = self.nodes_of(&expect.cluster).await;
        let live: BTreeMap<&str, &str> = nodes
            .iter()
            .filter(|n| n["state"] != "Terminated")
            .map(|n| {
                (
                    n["uuid"].as_str().unwrap_or(""),
                    n["state"].as_str().unwrap_or(""),
                )
            })
            .collect();
        let cluster_uuid = expect.cluster.trim_end_matches('/').rsplit('/').next();
        for instance in &running {
            if instance.cluster.as_deref() != cluster_uuid {
                problems.push(format!(
                    "instance {} of cluster {:?}",
                    instance.id, instance.cluster
                ));
            }
            match instance.node.as_deref().and_then(|n| live.get(n)) {
                Some(&"Deployed") => {}
                Some(state) => problems.push(format!("instance {}'s node is {state}", instance.id)),
                None => problems.push(format!("instance {} has no node in the store", instance.id)),
            }
        }
        let running_nodes: BTreeSet<&str> =
            running.iter().filter_map(|i| i.node.as_deref()).collect();
        for (uuid, state) in &live {
            if !running_nodes.contains(uuid) {
                problems.push(format!("node {uuid} ({state}) has no running instance"));
            }
        }
        if running_nodes.len() != running.len() {
            problems.push("two running instances share a node".to_owned());
        }
        let loose = loose_volumes(&ec2).await;
        if !loose.is_empty() {
            problems.push(format!("volumes without an instance: {loose:?}"));
        }
        let action = self.get(&expect.action).await;
        if action["state"] != "Success" {
            problems.push(format!(
                "action {} is {}: {}",
                expect.action, action["state"], action["logs"]
            ));
        }
        problems
    }

    /// `PRAGMA integrity_check` on the database as it is now (call while the server is
    /// stopped for "what a crash left"); `None` when the `sqlite3` command is missing.
    pub fn integrity_check(&self) -> Option<Result<(), String>> {
        integrity_check(&self.data())
    }
}

/// See [`Harness::integrity_check`].
pub fn integrity_check(data: &Path) -> Option<Result<(), String>> {
    let copy = tempfile::tempdir().ok()?;
    for name in ["flotilla.db", "flotilla.db-wal"] {
        let from = data.join(name);
        if from.exists() {
            std::fs::copy(&from, copy.path().join(name)).ok()?;
        }
    }
    let output = std::process::Command::new("sqlite3")
        .arg(copy.path().join("flotilla.db"))
        .arg("PRAGMA integrity_check;")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Some(if output.status.success() && text == "ok" {
        Ok(())
    } else {
        Err(format!(
            "{text} {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    })
}

fn tag_key_filter() -> Filter {
    Filter::builder()
        .name("tag-key")
        .values(flotilla_core::tags::OWNER)
        .build()
}

/// Ids of the network resources carrying an owner tag, by kind.
pub async fn owned_counts(ec2: &aws_sdk_ec2::Client) -> BTreeMap<&'static str, Vec<String>> {
    let mut owned = BTreeMap::new();
    let vpcs = ec2
        .describe_vpcs()
        .filters(tag_key_filter())
        .send()
        .await
        .expect("DescribeVpcs");
    owned.insert(
        "vpc",
        vpcs.vpcs()
            .iter()
            .filter_map(|v| v.vpc_id().map(str::to_owned))
            .collect(),
    );
    let subnets = ec2
        .describe_subnets()
        .filters(tag_key_filter())
        .send()
        .await
        .expect("DescribeSubnets");
    owned.insert(
        "subnet",
        subnets
            .subnets()
            .iter()
            .filter_map(|s| s.subnet_id().map(str::to_owned))
            .collect(),
    );
    let gateways = ec2
        .describe_internet_gateways()
        .filters(tag_key_filter())
        .send()
        .await
        .expect("DescribeInternetGateways");
    owned.insert(
        "internet gateway",
        gateways
            .internet_gateways()
            .iter()
            .filter_map(|g| g.internet_gateway_id().map(str::to_owned))
            .collect(),
    );
    let tables = ec2
        .describe_route_tables()
        .filters(tag_key_filter())
        .send()
        .await
        .expect("DescribeRouteTables");
    owned.insert(
        "route table",
        tables
            .route_tables()
            .iter()
            .filter_map(|t| t.route_table_id().map(str::to_owned))
            .collect(),
    );
    let groups = ec2
        .describe_security_groups()
        .filters(tag_key_filter())
        .send()
        .await
        .expect("DescribeSecurityGroups");
    owned.insert(
        "security group",
        groups
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_owned))
            .collect(),
    );
    owned
}

/// A running (or pending) instance as the checks see it.
#[derive(Debug, Clone)]
pub struct Running {
    pub id: String,
    pub zone: String,
    pub node: Option<String>,
    pub cluster: Option<String>,
}

/// Every pending or running instance of the account.
pub async fn running_instances(ec2: &aws_sdk_ec2::Client) -> Vec<Running> {
    let output = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .build(),
        )
        .send()
        .await
        .expect("DescribeInstances");
    let tag = |i: &aws_sdk_ec2::types::Instance, key: &str| {
        i.tags()
            .iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value().map(str::to_owned))
    };
    output
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            let cluster = tag(i, flotilla_core::tags::CLUSTER);
            // A node's identity: hash(cluster, first slot of the launch + launch index).
            let first: Option<u32> = tag(i, "flotilla:slots")
                .and_then(|s| s.split('-').next().and_then(|f| f.parse().ok()));
            let index = u32::try_from(i.ami_launch_index().unwrap_or(0)).unwrap_or(0);
            let node = match (&cluster, first) {
                (Some(cluster), Some(first)) => {
                    Some(flotilla_core::tags::node_uuid(cluster, first + index))
                }
                _ => None,
            };
            Running {
                id: i.instance_id().unwrap_or("?").to_owned(),
                zone: i
                    .placement()
                    .and_then(|p| p.availability_zone())
                    .unwrap_or("?")
                    .to_owned(),
                node,
                cluster,
            }
        })
        .collect()
}

/// Every instance ever launched in the account (terminated ones too).
pub async fn all_instances(ec2: &aws_sdk_ec2::Client) -> usize {
    ec2.describe_instances()
        .send()
        .await
        .expect("DescribeInstances")
        .reservations()
        .iter()
        .map(|r| r.instances().len())
        .sum()
}

/// Volumes attached to nothing.
pub async fn loose_volumes(ec2: &aws_sdk_ec2::Client) -> Vec<String> {
    ec2.describe_volumes()
        .send()
        .await
        .expect("DescribeVolumes")
        .volumes()
        .iter()
        .filter(|v| v.attachments().is_empty())
        .filter_map(|v| v.volume_id().map(str::to_owned))
        .collect()
}
