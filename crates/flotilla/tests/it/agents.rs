//! Agents end to end: the real `flotilla server` (nodes count once their agent registers) on
//! moto, and the testkit instance runner starting a real `flotilla agent` for each emulated
//! instance from its user data. A 3-node cluster deployed through the HTTP API ends with
//! three Deployed nodes, each with its agent's own loopback address as public IP; deleting
//! the cluster takes the agents with the instances. A restarted agent keeps its node.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flotilla_api::uri;
use flotilla_testkit::{InstanceRunner, MotoAccount, RunnerConfig};

use crate::support::{LIMIT, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployed_cluster_has_a_registered_agent_on_every_node() {
    let MotoAccount { proxy, .. } = MotoAccount::start().await;
    let server = Server::start(&proxy.endpoint(), &["--node-ready", "agent"]).await;
    let mut runner_config = RunnerConfig::new(proxy.endpoint(), env!("CARGO_BIN_EXE_flotilla"));
    runner_config.heartbeat = Duration::from_millis(300);
    let runner = InstanceRunner::start(runner_config).await;

    let uuid = server.create_and_deploy("agents", 3).await;
    let path = uri::node_cluster(&uuid);

    let started = Instant::now();
    let nodes = loop {
        let (_, listed) = server
            .call(
                reqwest::Method::GET,
                &format!("{}?node_cluster={uuid}", uri::nodes()),
                None,
            )
            .await;
        let nodes = listed["objects"].as_array().cloned().unwrap_or_default();
        if nodes.len() == 3 && nodes.iter().all(|n| n["state"] == "Deployed") {
            break nodes;
        }
        assert!(
            started.elapsed() < LIMIT,
            "nodes never all Deployed: {nodes:#?}\nagents: {:?}\n{}\nserver:\n{}",
            runner.agents(),
            runner.logs(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ips: BTreeSet<String> = nodes
        .iter()
        .map(|n| n["public_ip"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(ips.len(), 3, "distinct public IPs: {ips:?}");
    assert!(ips.iter().all(|ip| ip.starts_with("127.0.0.")), "{ips:?}");
    let agent_ips: BTreeSet<String> = runner.agents().values().map(|ip| ip.to_string()).collect();
    assert_eq!(
        ips, agent_ips,
        "each node's public IP is its agent's address"
    );

    // The cluster settles once every node's agent is in.
    let started = Instant::now();
    loop {
        let (_, cluster) = server.call(reqwest::Method::GET, &path, None).await;
        if cluster["state"] == "Deployed" {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "cluster never Deployed: {cluster:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A restarted agent (same state file, new address) re-registers with its credential:
    // same node, new public IP.
    let (instance, _) = runner.agents().into_iter().next().expect("an agent");
    let moved = std::net::Ipv4Addr::new(127, 0, 0, 200);
    runner.restart(&instance, Some(moved));
    let started = Instant::now();
    loop {
        let (_, listed) = server
            .call(
                reqwest::Method::GET,
                &format!("{}?node_cluster={uuid}", uri::nodes()),
                None,
            )
            .await;
        let ips: BTreeSet<String> = listed["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| n["public_ip"].as_str().unwrap_or("").to_owned())
            .collect();
        if ips.contains("127.0.0.200") {
            assert_eq!(listed["meta"]["total_count"], 3, "the same nodes");
            assert_eq!(ips.len(), 3);
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "never re-registered: {ips:?}\n{}",
            runner.log(&instance)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (status, body) = server.call(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 202, "{body}");
    let started = Instant::now();
    loop {
        let (_, cluster) = server.call(reqwest::Method::GET, &path, None).await;
        if cluster["state"] == "Terminated" && runner.agents().is_empty() {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "cluster {} with agents {:?}",
            cluster["state"],
            runner.agents()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        runner.exited().is_empty(),
        "no agent gave up: {}",
        runner.logs()
    );
}
