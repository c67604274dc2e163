//! Node lifecycle end to end (issue #4): the real `flotilla server` on moto with real agent
//! processes (testkit instance runner), its built-in DNS server queried with a real DNS
//! client, and the events websocket. One cluster goes through: an agent killed → node
//! `Unreachable` within the grace period and back to `Deployed` when it restarts on another
//! address (new IP in the API and DNS); its instance stopped and started in moto → the new
//! EC2 public IP in the API and DNS; an instance terminated in moto → `Terminated`,
//! cluster `Partly deployed`, record gone, its agent's credential refused; `auto_replace`
//! → a replacement; the route table deleted in moto → recreated; `node rm` → terminated in
//! EC2, target lowered, credential revoked. A second test covers a bring-your-own node.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use flotilla_api::uri;
use flotilla_testkit::{InstanceRunner, MotoAccount, RunnerConfig};
use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Events, LIMIT, Server};

const DOMAIN: &str = "flotilla.internal";
/// The grace period the servers here run with (seconds).
const GRACE: u64 = 2;

/// Polls `probe` until it returns `Some`, failing with `what` after `limit`.
async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A DNS client of the server's built-in DNS server.
struct Dns {
    client: Client<TokioRuntimeProvider>,
}

impl Dns {
    fn new(address: SocketAddr) -> Dns {
        let stream = UdpClientStream::builder(address, TokioRuntimeProvider::default()).build();
        let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
        tokio::spawn(background);
        Dns { client }
    }

    /// The A records of `name` (empty for NXDOMAIN).
    async fn a(&mut self, name: &str) -> BTreeSet<Ipv4Addr> {
        let response = self
            .client
            .query(
                Name::from_str(name).expect("name"),
                DNSClass::IN,
                RecordType::A,
            )
            .await
            .unwrap_or_else(|e| panic!("DNS query {name}: {e}"));
        response
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }
}

async fn node(server: &Server, uuid: &str) -> Value {
    server.call(Method::GET, &uri::node(uuid), None).await.1
}

async fn nodes_of(server: &Server, cluster: &str) -> Vec<Value> {
    let (_, listed) = server
        .call(
            Method::GET,
            &format!("{}?node_cluster={cluster}", uri::nodes()),
            None,
        )
        .await;
    listed["objects"].as_array().cloned().unwrap_or_default()
}

/// The history lines (action labels and logs) of an object.
async fn history(server: &Server, object_uri: &str) -> Vec<(String, String)> {
    let (_, listed) = server
        .call(Method::GET, &format!("{}?limit=1000", uri::actions()), None)
        .await;
    let mut lines = Vec::new();
    for action in listed["objects"].as_array().into_iter().flatten() {
        if action["object"] == object_uri {
            let uri = action["resource_uri"].as_str().unwrap_or_default();
            let (_, detail) = server.call(Method::GET, uri, None).await;
            lines.push((
                action["action"].as_str().unwrap_or_default().to_owned(),
                detail["logs"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    lines
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

async fn ec2_public_ip(ec2: &aws_sdk_ec2::Client, instance: &str) -> Option<String> {
    let output = ec2
        .describe_instances()
        .instance_ids(instance)
        .send()
        .await
        .expect("DescribeInstances");
    output
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .and_then(|i| i.public_ip_address().map(str::to_owned))
}

async fn instance_state(ec2: &aws_sdk_ec2::Client, instance: &str) -> String {
    let output = ec2
        .describe_instances()
        .instance_ids(instance)
        .send()
        .await
        .expect("DescribeInstances");
    output
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .and_then(|i| {
            i.state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_owned())
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_their_agents_instances_and_the_network() {
    let MotoAccount {
        proxy,
        inspector: inspect,
        ..
    } = MotoAccount::start().await;
    let ec2 = flotilla_testkit::inspect::ec2_client(&inspect.endpoint(), "us-east-1").await;
    let dns_address = SocketAddr::from(([127, 0, 0, 1], flotilla_testkit::free_port()));
    let grace = GRACE.to_string();
    let dns_listen = dns_address.to_string();
    let server = Server::start(
        &proxy.endpoint(),
        &[
            "--node-ready",
            "agent",
            "--heartbeat-grace",
            &grace,
            "--observe-interval",
            "1",
            "--dns-listen",
            &dns_listen,
        ],
    )
    .await;
    let mut runner_config = RunnerConfig::new(proxy.endpoint(), env!("CARGO_BIN_EXE_flotilla"));
    runner_config.heartbeat = Duration::from_millis(300);
    let runner = InstanceRunner::start(runner_config).await;

    let cluster = server.create_and_deploy("life", 2).await;
    let cluster_path = uri::node_cluster(&cluster);
    let cluster_state = |state: &'static str| {
        let server = &server;
        let path = cluster_path.clone();
        move || {
            let path = path.clone();
            async move {
                let (_, c) = server.call(Method::GET, &path, None).await;
                (c["state"] == state).then_some(c)
            }
        }
    };
    wait_for(LIMIT, "the cluster Deployed", cluster_state("Deployed")).await;
    let events = Events::listen(&server).await;
    let nodes = nodes_of(&server, &cluster).await;
    assert_eq!(nodes.len(), 2);
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    let uuid_a = a["uuid"].as_str().expect("uuid").to_owned();
    let uuid_b = b["uuid"].as_str().expect("uuid").to_owned();
    let agents = runner.agents();
    let instance_of = |public_ip: &str| {
        agents
            .iter()
            .find(|(_, ip)| ip.to_string() == public_ip)
            .map(|(id, _)| id.clone())
            .expect("the node's agent")
    };
    let instance_a = instance_of(a["public_ip"].as_str().expect("ip"));
    let instance_b = instance_of(b["public_ip"].as_str().expect("ip"));

    // DNS: each node's external_fqdn, and the cluster's name with both IPs.
    assert_eq!(a["external_fqdn"], format!("{uuid_a}.node.{DOMAIN}"));
    let fqdn_a = format!("{uuid_a}.node.{DOMAIN}");
    let fqdn_b = format!("{uuid_b}.node.{DOMAIN}");
    let cluster_fqdn = format!("life.cluster.{DOMAIN}");
    let ip_a: Ipv4Addr = a["public_ip"].as_str().expect("ip").parse().expect("ip");
    let ip_b: Ipv4Addr = b["public_ip"].as_str().expect("ip").parse().expect("ip");
    // The zone is rebuilt 100 ms after the registrations' events, which may be just after
    // the cluster settles.
    wait_for(Duration::from_secs(5), "both nodes in DNS", || async {
        let mut dns = Dns::new(dns_address);
        (dns.a(&fqdn_a).await == BTreeSet::from([ip_a])
            && dns.a(&cluster_fqdn).await == BTreeSet::from([ip_a, ip_b]))
        .then_some(())
    })
    .await;

    // 1. A killed agent: Unreachable within the grace period (plus the sweep), then
    //    Deployed again from a new address when it restarts.
    runner.stop(&instance_a);
    let silenced = Instant::now();
    wait_for(
        Duration::from_secs(GRACE + 5),
        "node A Unreachable",
        || async { (node(&server, &uuid_a).await["state"] == "Unreachable").then_some(()) },
    )
    .await;
    let verdict = silenced.elapsed();
    // The last heartbeat came up to one heartbeat interval (300 ms) before the kill.
    assert!(
        verdict >= Duration::from_secs(GRACE) - Duration::from_millis(400),
        "not before the grace period: {verdict:?}"
    );
    wait_for(
        LIMIT,
        "the cluster Partly deployed",
        cluster_state("Partly deployed"),
    )
    .await;
    wait_for(
        Duration::from_secs(2),
        "an Unreachable node out of its cluster's record",
        || async {
            let mut dns = Dns::new(dns_address);
            (dns.a(&cluster_fqdn).await == BTreeSet::from([ip_b])).then_some(())
        },
    )
    .await;
    let moved = Ipv4Addr::new(127, 0, 0, 201);
    runner.restart(&instance_a, Some(moved));
    wait_for(LIMIT, "node A Deployed from its new address", || async {
        let n = node(&server, &uuid_a).await;
        (n["state"] == "Deployed" && n["public_ip"] == "127.0.0.201").then_some(())
    })
    .await;
    wait_for(Duration::from_secs(5), "node A's new IP in DNS", || async {
        let mut dns = Dns::new(dns_address);
        (dns.a(&fqdn_a).await == BTreeSet::from([moved])).then_some(())
    })
    .await;
    let history_a = history(&server, &uri::node(&uuid_a)).await;
    assert!(
        history_a
            .iter()
            .any(|(label, log)| label == "Node Unreachable"
                && log.contains("Deployed -> Unreachable")),
        "{history_a:#?}"
    );
    assert!(
        history_a
            .iter()
            .any(|(label, log)| label == "Node IP Change" && log.contains("-> 127.0.0.201")),
        "{history_a:#?}"
    );
    assert!(
        events.saw(&uuid_a, "Unreachable", Some("update")),
        "{}",
        events.dump()
    );
    assert!(
        events.saw(&uuid_a, "Deployed", Some("update")),
        "{}",
        events.dump()
    );
    wait_for(
        LIMIT,
        "the cluster Deployed again",
        cluster_state("Deployed"),
    )
    .await;

    // 2. The instance stopped and started in AWS: the reconciler picks up EC2's new public
    //    IP (the agent is down meanwhile, as it would be on a stopped machine).
    runner.stop(&instance_b);
    ec2.stop_instances()
        .instance_ids(&instance_b)
        .send()
        .await
        .expect("StopInstances");
    ec2.start_instances()
        .instance_ids(&instance_b)
        .send()
        .await
        .expect("StartInstances");
    let new_ip = ec2_public_ip(&ec2, &instance_b)
        .await
        .expect("a public IP after the start");
    wait_for(LIMIT, "node B with EC2's new public IP", || async {
        (node(&server, &uuid_b).await["public_ip"] == new_ip.as_str()).then_some(())
    })
    .await;
    let new_ip_v4: Ipv4Addr = new_ip.parse().expect("ip");
    wait_for(Duration::from_secs(5), "node B's new IP in DNS", || async {
        let mut dns = Dns::new(dns_address);
        (dns.a(&fqdn_b).await == BTreeSet::from([new_ip_v4])).then_some(())
    })
    .await;

    // 3. Terminated in the console: Terminated within one observation period, the cluster
    //    Partly deployed, the record gone, nothing else touched, its credential refused.
    ec2.terminate_instances()
        .instance_ids(&instance_b)
        .send()
        .await
        .expect("TerminateInstances");
    wait_for(LIMIT, "node B Terminated", || async {
        (node(&server, &uuid_b).await["state"] == "Terminated").then_some(())
    })
    .await;
    let partly = wait_for(
        LIMIT,
        "the cluster Partly deployed",
        cluster_state("Partly deployed"),
    )
    .await;
    assert_eq!(partly["current_num_nodes"], 1, "{partly:#}");
    assert_eq!(partly["target_num_nodes"], 2, "the target is kept");
    assert_eq!(
        instance_state(&ec2, &instance_a).await,
        "running",
        "A untouched"
    );
    wait_for(Duration::from_secs(5), "node B's record gone", || async {
        let mut dns = Dns::new(dns_address);
        dns.a(&fqdn_b).await.is_empty().then_some(())
    })
    .await;
    assert!(
        events.saw(&uuid_b, "Terminated", Some("delete")),
        "{}",
        events.dump()
    );
    // 4. auto_replace: the lost node is replaced in the least-populated AZ.
    let (status, body) = server
        .call(
            Method::PATCH,
            &cluster_path,
            Some(json!({"auto_replace": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let replaced = wait_for(LIMIT, "the cluster Deployed with a replacement", || async {
        let nodes = nodes_of(&server, &cluster).await;
        let deployed: Vec<Value> = nodes
            .into_iter()
            .filter(|n| n["state"] == "Deployed")
            .collect();
        let (_, c) = server.call(Method::GET, &cluster_path, None).await;
        (deployed.len() == 2 && c["state"] == "Deployed").then_some(deployed)
    })
    .await;
    let zones: BTreeSet<String> = replaced
        .iter()
        .map(|n| n["availability_zone"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(zones.len(), 2, "one node per AZ again: {replaced:#?}");

    // 5. Drift: the route table deleted in the console is recreated.
    let tables = ec2
        .describe_route_tables()
        .filters(filter("tag-key", "flotilla:owner"))
        .send()
        .await
        .expect("DescribeRouteTables");
    let table = tables
        .route_tables()
        .first()
        .expect("our route table")
        .clone();
    let table_id = table.route_table_id().expect("id").to_owned();
    // The server's own drift repair may re-associate the table between our disassociation
    // and the delete (DependencyViolation): then disassociate what it added and try again,
    // until the table is gone.
    wait_for(LIMIT, "the route table deleted", || async {
        let current = ec2
            .describe_route_tables()
            .route_table_ids(&table_id)
            .send()
            .await
            .ok()?;
        for association in current.route_tables().iter().flat_map(|t| t.associations()) {
            if let Some(id) = association.route_table_association_id() {
                // Already gone is fine: the repair and this loop race on purpose.
                let _ = ec2
                    .disassociate_route_table()
                    .association_id(id)
                    .send()
                    .await;
            }
        }
        match ec2
            .delete_route_table()
            .route_table_id(&table_id)
            .send()
            .await
        {
            Ok(_) => Some(()),
            Err(error) => {
                let text = format!("{error:?}");
                assert!(
                    text.contains("DependencyViolation"),
                    "DeleteRouteTable: {text}"
                );
                None
            }
        }
    })
    .await;
    wait_for(
        LIMIT,
        "a new route table with the default route",
        || async {
            let tables = ec2
                .describe_route_tables()
                .filters(filter("tag-key", "flotilla:owner"))
                .send()
                .await
                .expect("DescribeRouteTables");
            tables
                .route_tables()
                .iter()
                .any(|t| {
                    t.route_table_id() != Some(table_id.as_str())
                        && t.routes()
                            .iter()
                            .any(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
                        && !t.associations().is_empty()
                })
                .then_some(())
        },
    )
    .await;
    // The repair reaches AWS before its line reaches the cluster's history: wait for it.
    let cluster_uri = uri::node_cluster(&cluster);
    let found = tokio::time::timeout(LIMIT, async {
        loop {
            let repaired = history(&server, &cluster_uri).await;
            if repaired.iter().any(|(label, log)| {
                label == "Node Cluster Network Check"
                    && log.contains("Repaired the network")
                    && log.contains("route table")
            }) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "no repair in the history: {:#?}\n{}",
        history(&server, &cluster_uri).await,
        server
            .log()
            .lines()
            .filter(|l| l.contains("network") || l.contains("route"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // 6. node rm: terminated in EC2, target lowered, credential revoked.
    let (status, body) = server.call(Method::DELETE, &uri::node(&uuid_a), None).await;
    assert_eq!(status, 202, "{body}");
    wait_for(LIMIT, "node A Terminated", || async {
        (node(&server, &uuid_a).await["state"] == "Terminated").then_some(())
    })
    .await;
    assert_ne!(instance_state(&ec2, &instance_a).await, "running");
    let settled = wait_for(LIMIT, "the cluster settled", cluster_state("Deployed")).await;
    assert_eq!(settled["target_num_nodes"], 1, "{settled:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bring_your_own_node_registers_goes_silent_and_is_removed() {
    let MotoAccount { proxy, .. } = MotoAccount::start().await;
    let dns_address = SocketAddr::from(([127, 0, 0, 1], flotilla_testkit::free_port()));
    let grace = GRACE.to_string();
    let dns_listen = dns_address.to_string();
    let server = Server::start(
        &proxy.endpoint(),
        &[
            "--heartbeat-grace",
            &grace,
            "--observe-interval",
            "1",
            "--dns-listen",
            &dns_listen,
        ],
    )
    .await;
    let events = Events::listen(&server).await;

    // `flotilla node byo` prints the one-line install command with a fresh token.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["node", "byo", "--host", &server.base])
        .env("DOCKERCLOUD_USER", &server.user)
        .env("DOCKERCLOUD_APIKEY", &server.key)
        .output()
        .await
        .expect("flotilla node byo");
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{printed}");
    let line = printed
        .lines()
        .find(|l| l.contains("FLOTILLA_TOKEN="))
        .expect("the install command");
    assert!(
        line.contains(&format!("{}/download/flotilla", server.base)),
        "{line}"
    );
    let token = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("FLOTILLA_TOKEN="))
        .expect("token")
        .to_owned();

    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("agent.json");
    let start_agent = |ip: &str, token: &str, state: &std::path::Path| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["agent", "--server", &server.base, "--token", token])
            .arg("--state-file")
            .arg(state)
            .args(["--bind-ip", ip, "--heartbeat-seconds", "0.3"])
            .env_remove("FLOTILLA_CLUSTER")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("flotilla agent")
    };
    let mut agent = start_agent("127.0.0.60", &token, &state);
    let byo = wait_for(LIMIT, "the BYO node registered", || async {
        let (_, listed) = server.call(Method::GET, &uri::nodes(), None).await;
        listed["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["node_cluster"].is_null() && n["state"] == "Deployed")
            .cloned()
    })
    .await;
    let uuid = byo["uuid"].as_str().expect("uuid").to_owned();
    assert_eq!(byo["public_ip"], "127.0.0.60");
    let fqdn = format!("{uuid}.node.{DOMAIN}");
    wait_for(Duration::from_secs(5), "the BYO node in DNS", || async {
        let mut dns = Dns::new(dns_address);
        (dns.a(&fqdn).await == BTreeSet::from([Ipv4Addr::new(127, 0, 0, 60)])).then_some(())
    })
    .await;

    // The token worked once.
    let mut second = start_agent("127.0.0.61", &token, &dir.path().join("second.json"));
    let status = tokio::time::timeout(LIMIT, second.wait())
        .await
        .expect("the second agent gives up")
        .expect("status");
    assert!(!status.success(), "a used token is refused");

    // Silent: Unreachable, and it stays so (never Terminated: Flotilla cannot see it).
    agent.kill().await.expect("kill the agent");
    wait_for(
        Duration::from_secs(GRACE + 5),
        "the BYO node Unreachable",
        || async { (node(&server, &uuid).await["state"] == "Unreachable").then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(node(&server, &uuid).await["state"], "Unreachable", "still");
    assert!(
        events.saw(&uuid, "Unreachable", Some("update")),
        "{}",
        events.dump()
    );
    let mut dns = Dns::new(dns_address);
    assert_eq!(
        dns.a(&fqdn).await,
        BTreeSet::from([Ipv4Addr::new(127, 0, 0, 60)]),
        "an Unreachable node keeps its name"
    );

    // Removed by hand: deregistered and its credential revoked.
    let (status, body) = server.call(Method::DELETE, &uri::node(&uuid), None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(node(&server, &uuid).await["state"], "Terminated");
    let mut revived = start_agent("127.0.0.60", "unused-token", &state);
    let status = tokio::time::timeout(LIMIT, revived.wait())
        .await
        .expect("the revoked agent gives up")
        .expect("status");
    assert!(!status.success(), "a revoked credential is refused");
    assert!(
        events.saw(&uuid, "Terminated", Some("delete")),
        "{}",
        events.dump()
    );
    wait_for(
        Duration::from_secs(5),
        "the BYO node's record gone",
        || async {
            let mut dns = Dns::new(dns_address);
            dns.a(&fqdn).await.is_empty().then_some(())
        },
    )
    .await;
}
