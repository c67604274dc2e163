//! The agent API against `FakeCloud`: registration with a batch token makes nodes (then the
//! cluster) Deployed; tokens are single-use, bound to their batch and unforgeable; a
//! credential re-registers its own node (from a new address) and nothing else.
//! Agents are played by a plain HTTP client bound to distinct loopback addresses.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::agent::{AGENT_NODES, agent_node, agent_node_ping};
use flotilla_api::uri;
use flotilla_core::fake::FakeCloud;
use flotilla_core::tags::node_uuid;
use flotilla_server::{NodeReady, UserDataRequest};
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{TestServer, config};

const LIMIT: Duration = Duration::from_secs(20);

/// One launch batch as its user data carried it.
#[derive(Debug, Clone)]
struct Batch {
    cluster: String,
    first_slot: u32,
    count: u32,
    token: String,
}

type Batches = Arc<Mutex<Vec<Batch>>>;

/// A server whose nodes count once their agent registers, and the batches it launched.
async fn env() -> (TestServer, Batches, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(&dir);
    config.reconcile.node_ready = NodeReady::AgentRegistered;
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = batches.clone();
    config.reconcile.user_data = Arc::new(move |request: &UserDataRequest<'_>| {
        seen.lock().expect("batches").push(Batch {
            cluster: request.cluster_uuid.to_owned(),
            first_slot: request.nodes[0].slot,
            count: request.nodes.len() as u32,
            token: request.registration_token.to_owned(),
        });
        "#!/bin/sh\n".to_owned()
    });
    let server = TestServer::start(config, Arc::new(FakeCloud::new()), None).await;
    (server, batches, dir)
}

/// An agent's HTTP call from `ip`, with `Authorization: TutumAgentToken <token>`.
async fn agent_call(
    server: &TestServer,
    ip: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().expect("ip"))
        .build()
        .expect("client");
    let mut request = client.request(method, format!("{}{path}", server.base));
    if let Some(token) = token {
        request = request.header("Authorization", format!("TutumAgentToken {token}"));
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn registration(batch: &Batch, slot: u32) -> Value {
    json!({"agent_version": "test", "cluster": batch.cluster, "slot": slot,
           "first_slot": batch.first_slot, "count": batch.count,
           "private_ips": ["10.78.0.9"], "docker_version": "27.0.1"})
}

/// Creates and deploys a cluster; returns its uuid once every node is recorded.
async fn deployed_cluster(server: &TestServer, nodes: u32) -> String {
    let created = server
        .call(
            Method::POST,
            &uri::node_clusters(),
            Some(json!({"name": "agents", "target_num_nodes": nodes,
                "region": "/api/infra/v1/region/aws/us-east-1/",
                "node_type": "/api/infra/v1/nodetype/aws/t3.micro/"})),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let uuid = created.body["uuid"].as_str().expect("uuid").to_owned();
    let deploy = server
        .call(Method::POST, &uri::node_cluster_deploy(&uuid), None)
        .await;
    assert_eq!(deploy.status, 202, "{:?}", deploy.body);
    let started = std::time::Instant::now();
    loop {
        let listed = server
            .get(&format!("{}?node_cluster={uuid}", uri::nodes()))
            .await;
        if listed.body["meta"]["total_count"] == nodes {
            for node in listed.body["objects"].as_array().expect("nodes") {
                assert_eq!(node["state"], "Deploying", "no agent has registered yet");
            }
            return uuid;
        }
        assert!(started.elapsed() < LIMIT, "nodes never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn batch_tokens_register_each_node_once_and_the_cluster_becomes_deployed() {
    let (server, batches, _dir) = env().await;
    let server = &server;
    let uuid = deployed_cluster(server, 3).await;
    let cluster = server.get(&uri::node_cluster(&uuid)).await;
    assert_eq!(cluster.body["state"], "Deploying", "waits for the agents");
    let batches = batches.lock().expect("batches").clone();
    assert_eq!(batches.iter().map(|b| b.count).sum::<u32>(), 3);

    let mut credentials = Vec::new();
    let mut host = 10;
    for batch in &batches {
        for slot in batch.first_slot..batch.first_slot + batch.count {
            host += 1;
            let ip = format!("127.0.0.{host}");
            let (status, body) = agent_call(
                server,
                &ip,
                Method::POST,
                AGENT_NODES,
                Some(&batch.token),
                Some(registration(batch, slot)),
            )
            .await;
            assert_eq!(status, 201, "{body}");
            assert_eq!(body["uuid"], node_uuid(&batch.cluster, slot).as_str());
            assert_eq!(body["state"], "Deployed");
            assert_eq!(body["public_ip"], ip.as_str());
            assert_eq!(body["docker_version"], "27.0.1");
            let credential = body["credential"].as_str().expect("credential").to_owned();
            assert_eq!(credential.len(), 64);
            credentials.push((body["uuid"].as_str().expect("uuid").to_owned(), credential));

            // Single use: the same batch token cannot register the node again.
            let (status, body) = agent_call(
                server,
                "127.0.0.99",
                Method::POST,
                AGENT_NODES,
                Some(&batch.token),
                Some(registration(batch, slot)),
            )
            .await;
            assert_eq!(status, 403, "{body}");
            assert!(
                body["error"]
                    .as_str()
                    .expect("error")
                    .contains("already registered")
            );
        }
    }
    let cluster = server.wait_for_cluster(&uuid, "Deployed", LIMIT).await;
    assert_eq!(cluster["current_num_nodes"], 3);
    let (node, credential) = &credentials[0];
    let shown = server.get(&uri::node(node)).await;
    assert_eq!(shown.body["state"], "Deployed");
    assert_eq!(shown.body["public_ip"], "127.0.0.11");
    let (status, body) = agent_call(
        server,
        "127.0.0.11",
        Method::POST,
        &agent_node_ping(node),
        Some(credential),
        None,
    )
    .await;
    assert_eq!((status, body), (200, json!({"reachable": true})));
}

/// A first registration whose answer was lost (the server died after committing it) is
/// retried by the same agent with the same nonce: it gets the same credential again. Anyone
/// else holding the batch token (another nonce, or none) is still refused.
#[tokio::test]
async fn a_registration_retried_with_its_nonce_gets_the_same_credential() {
    let (server, batches, _dir) = env().await;
    let server = &server;
    deployed_cluster(server, 1).await;
    let batch = batches.lock().expect("batches")[0].clone();
    let slot = batch.first_slot;
    let with_nonce = |nonce: Option<&str>| {
        let mut body = registration(&batch, slot);
        if let Some(nonce) = nonce {
            body["nonce"] = json!(nonce);
        }
        body
    };
    let nonce = "5f0c1e2d3b4a59687766554433221100";
    let token = batch.token.clone();
    let register = |body: Value| {
        let token = token.clone();
        async move {
            agent_call(
                server,
                "127.0.0.21",
                Method::POST,
                AGENT_NODES,
                Some(&token),
                Some(body),
            )
            .await
        }
    };
    let (status, first) = register(with_nonce(Some(nonce))).await;
    assert_eq!(status, 201, "{first}");
    let credential = first["credential"].as_str().expect("a credential");
    let (status, again) = register(with_nonce(Some(nonce))).await;
    assert_eq!(status, 201, "the same agent retrying: {again}");
    assert_eq!(again["credential"].as_str(), Some(credential));
    assert_eq!(again["uuid"], first["uuid"]);
    for other in [Some("00112233445566778899aabbccddeeff"), None] {
        let (status, body) = register(with_nonce(other)).await;
        assert_eq!(status, 403, "{other:?}: {body}");
        assert!(body["credential"].is_null(), "{body}");
    }
}

#[tokio::test]
async fn current_num_nodes_counts_only_nodes_that_are_up() {
    let (server, batches, _dir) = env().await;
    let server = &server;
    let uuid = deployed_cluster(server, 2).await;
    let path = format!("/api/infra/v1/nodecluster/{uuid}/");
    let cluster = server.get(&path).await.body;
    assert_eq!(cluster["state"], "Deploying");
    assert_eq!(cluster["nodes"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        cluster["current_num_nodes"], 0,
        "no node is up while every node is Deploying: {cluster:#}"
    );
    let listed = server
        .get(&format!("/api/infra/v1/nodecluster/?uuid={uuid}"))
        .await
        .body;
    assert_eq!(listed["objects"][0]["current_num_nodes"], 0, "{listed:#}");

    let batches = batches.lock().expect("batches").clone();
    let batch = &batches[0];
    let (status, body) = agent_call(
        server,
        "127.0.0.21",
        Method::POST,
        "/api/agent/v1/node/",
        Some(&batch.token),
        Some(registration(batch, batch.first_slot)),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let cluster = server.get(&path).await.body;
    assert_eq!(cluster["current_num_nodes"], 1, "{cluster:#}");
    assert_eq!(cluster["target_num_nodes"], 2);
}

#[tokio::test]
async fn forged_or_misused_tokens_are_refused() {
    let (server, batches, _dir) = env().await;
    let server = &server;
    deployed_cluster(server, 2).await;
    let batch = batches.lock().expect("batches")[0].clone();
    let slot = batch.first_slot;

    // No token, the user API's scheme, a forged token, a token for another batch shape.
    let (status, body) = agent_call(
        server,
        "127.0.0.1",
        Method::POST,
        AGENT_NODES,
        None,
        Some(registration(&batch, slot)),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].is_string());
    let basic = server
        .call(Method::POST, AGENT_NODES, Some(registration(&batch, slot)))
        .await;
    assert_eq!(basic.status, 401, "Basic auth is not an agent token");
    let mut forged = batch.token.clone();
    forged.replace_range(0..2, if &forged[0..2] == "00" { "11" } else { "00" });
    let (status, body) = agent_call(
        server,
        "127.0.0.1",
        Method::POST,
        AGENT_NODES,
        Some(&forged),
        Some(registration(&batch, slot)),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let mut widened = registration(&batch, slot);
    widened["count"] = json!(batch.count + 5);
    let (status, _) = agent_call(
        server,
        "127.0.0.1",
        Method::POST,
        AGENT_NODES,
        Some(&batch.token),
        Some(widened),
    )
    .await;
    assert_eq!(status, 401, "the token is bound to its batch's count");
    // The right token for a slot outside its batch.
    let (status, body) = agent_call(
        server,
        "127.0.0.1",
        Method::POST,
        AGENT_NODES,
        Some(&batch.token),
        Some(registration(&batch, batch.first_slot + batch.count)),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Another cluster's slots.
    let mut elsewhere = registration(&batch, slot);
    elsewhere["cluster"] = json!("5516c8b6-3d4b-4a52-9a1e-0f8f2d7b9c10");
    let (status, _) = agent_call(
        server,
        "127.0.0.1",
        Method::POST,
        AGENT_NODES,
        Some(&batch.token),
        Some(elsewhere),
    )
    .await;
    assert_eq!(status, 401);
    // Nothing registered.
    let node = server
        .get(&format!(
            "/api/infra/v1/node/{}/",
            node_uuid(&batch.cluster, slot)
        ))
        .await;
    assert_eq!(node.body["state"], "Deploying");
}

#[tokio::test]
async fn credentials_re_register_their_own_node_and_nothing_else() {
    let (server, batches, _dir) = env().await;
    let server = &server;
    deployed_cluster(server, 2).await;
    let batches = batches.lock().expect("batches").clone();
    let slots: Vec<(Batch, u32)> = batches
        .iter()
        .flat_map(|b| (b.first_slot..b.first_slot + b.count).map(move |s| (b.clone(), s)))
        .collect();
    let (batch, slot) = &slots[0];
    let (other_batch, other_slot) = &slots[1];
    let (status, first) = agent_call(
        server,
        "127.0.0.21",
        Method::POST,
        AGENT_NODES,
        Some(&batch.token),
        Some(registration(batch, *slot)),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    let uuid = first["uuid"].as_str().expect("uuid").to_owned();
    let credential = first["credential"].as_str().expect("credential").to_owned();

    // A restarted agent, from a new address, with its saved credential.
    let (status, again) = agent_call(
        server,
        "127.0.0.22",
        Method::POST,
        AGENT_NODES,
        Some(&credential),
        Some(registration(batch, *slot)),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["uuid"], uuid.as_str());
    assert_eq!(again["public_ip"], "127.0.0.22");
    assert!(again.get("credential").is_none(), "shown only once");
    let shown = server.get(&uri::node(&uuid)).await;
    assert_eq!(shown.body["public_ip"], "127.0.0.22");

    // Its own node: GET, PATCH, ping.
    let own = agent_node(&uuid);
    let (status, body) = agent_call(
        server,
        "127.0.0.22",
        Method::GET,
        &own,
        Some(&credential),
        None,
    )
    .await;
    assert_eq!((status, body["state"].clone()), (200, json!("Deployed")));
    let (status, body) = agent_call(
        server,
        "127.0.0.22",
        Method::PATCH,
        &own,
        Some(&credential),
        Some(json!({"docker_version": "28.1.0", "private_ips": ["10.78.1.4"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["docker_version"], "28.1.0");
    assert_eq!(body["private_ips"], json!(["10.78.1.4"]));
    let (status, body) = agent_call(
        server,
        "127.0.0.22",
        Method::POST,
        &format!("{own}ping/"),
        Some(&credential),
        None,
    )
    .await;
    assert_eq!((status, body), (200, json!({"reachable": true})));

    // Another node: every route, and re-registering as it.
    let other = node_uuid(&other_batch.cluster, *other_slot);
    for (method, path) in [
        (Method::GET, agent_node(&other)),
        (Method::PATCH, agent_node(&other)),
        (Method::POST, agent_node_ping(&other)),
    ] {
        let (status, body) = agent_call(
            server,
            "127.0.0.22",
            method,
            &path,
            Some(&credential),
            Some(json!({})),
        )
        .await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, _) = agent_call(
        server,
        "127.0.0.22",
        Method::POST,
        AGENT_NODES,
        Some(&credential),
        Some(registration(other_batch, *other_slot)),
    )
    .await;
    assert_eq!(status, 403);
    // An unknown credential on a node route.
    let (status, _) = agent_call(
        server,
        "127.0.0.22",
        Method::GET,
        &own,
        Some(&"0".repeat(64)),
        None,
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_server_serves_its_own_binary_without_auth() {
    let (server, _, _dir) = env().await;
    let response = server
        .client
        .get(format!("{}/download/flotilla", server.base))
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), 200);
    let expected = std::fs::metadata(std::env::current_exe().expect("exe"))
        .expect("metadata")
        .len();
    assert_eq!(response.content_length(), Some(expected));
    drop(response);
    server.stop().await;
}

#[tokio::test]
async fn a_deploy_settles_without_agents_once_the_registration_timeout_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(&dir);
    config.reconcile.node_ready = NodeReady::AgentRegistered;
    config.reconcile.registration_timeout = Duration::ZERO;
    let server = TestServer::start(config, Arc::new(FakeCloud::new()), None).await;
    let uuid = deployed_cluster(&server, 2).await;
    let cluster = server.wait_for_cluster(&uuid, "Empty cluster", LIMIT).await;
    // Both nodes are still in the cluster, but neither is up.
    assert_eq!(cluster["nodes"].as_array().map(Vec::len), Some(2));
    assert_eq!(cluster["current_num_nodes"], 0);
    let nodes = server
        .get(&format!("{}?node_cluster={uuid}", uri::nodes()))
        .await;
    for node in nodes.body["objects"].as_array().expect("nodes") {
        assert_eq!(node["state"], "Deploying", "still waiting for its agent");
    }
    server.stop().await;
}

/// `node rm` revokes the node's credential: its agent is refused on every route, and its
/// batch token cannot bring the terminated node back.
#[tokio::test]
async fn a_removed_nodes_credential_is_revoked() {
    let (server, batches, _dir) = env().await;
    let server = &server;
    let cluster = deployed_cluster(server, 2).await;
    let batches = batches.lock().expect("batches").clone();
    let mut credentials = Vec::new();
    for batch in &batches {
        for slot in batch.first_slot..batch.first_slot + batch.count {
            let (status, body) = agent_call(
                server,
                "127.0.0.31",
                Method::POST,
                AGENT_NODES,
                Some(&batch.token),
                Some(registration(batch, slot)),
            )
            .await;
            assert_eq!(status, 201, "{body}");
            credentials.push((
                batch.clone(),
                slot,
                body["uuid"].as_str().expect("uuid").to_owned(),
                body["credential"].as_str().expect("credential").to_owned(),
            ));
        }
    }
    server.wait_for_cluster(&cluster, "Deployed", LIMIT).await;
    let (batch, slot, uuid, credential) = credentials[0].clone();
    let removed = server.call(Method::DELETE, &uri::node(&uuid), None).await;
    assert_eq!(removed.status, 202, "{:?}", removed.body);
    let settled = server.wait_for_cluster(&cluster, "Deployed", LIMIT).await;
    assert_eq!(settled["target_num_nodes"], 1);
    let node = server.get(&uri::node(&uuid)).await;
    assert_eq!(node.body["state"], "Terminated");

    for (method, path) in [
        (Method::POST, agent_node_ping(&uuid)),
        (Method::GET, agent_node(&uuid)),
    ] {
        let (status, body) =
            agent_call(server, "127.0.0.31", method, &path, Some(&credential), None).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    let (status, body) = agent_call(
        server,
        "127.0.0.31",
        Method::POST,
        AGENT_NODES,
        Some(&credential),
        Some(registration(&batch, slot)),
    )
    .await;
    assert_eq!(status, 401, "the revoked credential: {body}");
    let (status, body) = agent_call(
        server,
        "127.0.0.31",
        Method::POST,
        AGENT_NODES,
        Some(&batch.token),
        Some(registration(&batch, slot)),
    )
    .await;
    assert_eq!(status, 403, "the batch token of a terminated node: {body}");
    // The other node's credential still works.
    let (_, _, other, other_credential) = credentials[1].clone();
    let (status, _) = agent_call(
        server,
        "127.0.0.32",
        Method::POST,
        &agent_node_ping(&other),
        Some(&other_credential),
        None,
    )
    .await;
    assert_eq!(status, 200);
}
