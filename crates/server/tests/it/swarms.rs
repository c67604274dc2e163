//! Swarms through the API against `FakeCloud`, with agents played by a model of Docker
//! engines: the create body's validation names the field; a swarm's node clusters are
//! ordinary node clusters; the server bootstraps the swarm through the agents — one `Init`,
//! to one recorded manager, tokens only in joins — and a server killed at any point of the
//! creation and restarted finishes with exactly one swarm. (The same protocol against real
//! engines is `crates/flotilla/tests/it/swarm.rs`.)

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_api::agent::{
    AGENT_NODES, AgentTask, EngineInfo, EngineReport, JoinTokens, NodeUpdate, SwarmInfo,
    SwarmNodeInfo, TaskOp, TaskResult, agent_node, agent_node_ping,
};
use flotilla_api::uri;
use flotilla_core::fake::FakeCloud;
use flotilla_server::{NodeReady, UserDataRequest};
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{TestServer, config};

const LIMIT: Duration = Duration::from_secs(30);

fn body(name: &str) -> Value {
    json!({"name": name, "region": "/api/infra/v1/region/aws/us-east-1/",
        "manager_node_type": "/api/infra/v1/nodetype/aws/t3.micro/",
        "manager_count": 3, "worker_count": 2})
}

#[tokio::test]
async fn a_swarm_is_validated_like_a_node_cluster_and_made_of_two() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(config(&dir), Arc::new(FakeCloud::new()), None).await;

    for (change, field) in [
        (json!({"manager_count": 4}), "manager_count"),
        (json!({"manager_count": "three"}), "manager_count"),
        (json!({"manager_node_type": null}), "manager_node_type"),
        (
            json!({"worker_node_type": "/api/infra/v1/nodetype/aws/nope/"}),
            "worker_node_type",
        ),
        (json!({"worker_count": -1}), "worker_count"),
        (json!({"name": "bad_name"}), "name"),
        (json!({"node_type": "t3.micro"}), "node_type"),
    ] {
        let mut bad = body("s1");
        for (key, value) in change.as_object().expect("object") {
            bad[key] = value.clone();
        }
        let reply = server.call(Method::POST, &uri::swarms(), Some(bad)).await;
        assert_eq!(reply.status, 400, "{change}: {:?}", reply.body);
        let error = reply.body["error"].as_str().expect("error");
        assert!(error.contains(field), "{change}: '{error}' names {field}");
    }

    let created = server
        .call(Method::POST, &uri::swarms(), Some(body("s1")))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert!(created.action_uri.is_some(), "the create is an action");
    let swarm = &created.body;
    assert_eq!(swarm["state"], "Deploying");
    assert_eq!(swarm["manager_count"], 3);
    assert_eq!(swarm["worker_count"], 2);
    let clusters = server.get(&uri::node_clusters()).await;
    let names: Vec<&str> = clusters.body["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["s1-managers", "s1-workers"]);
    let managers = server
        .get(swarm["manager_cluster"].as_str().expect("uri"))
        .await;
    assert_eq!(managers.body["target_num_nodes"], 3);
    assert_eq!(managers.body["state"], "Deploying");

    let again = server
        .call(Method::POST, &uri::swarms(), Some(body("s1")))
        .await;
    assert_eq!(again.status, 409, "{:?}", again.body);

    let uuid = swarm["uuid"].as_str().expect("uuid");
    // A swarm is removed once its node clusters may be (a cluster still deploying may not).
    for cluster in ["manager_cluster", "worker_cluster"] {
        let cluster = swarm[cluster].as_str().expect("uri");
        let cluster = cluster
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .expect("uuid");
        server.wait_for_cluster(cluster, "Deployed", LIMIT).await;
    }
    let listed = server.get(&format!("{}?name=s1", uri::swarms())).await;
    assert_eq!(listed.body["meta"]["total_count"], 1, "{:?}", listed.body);
    let removed = server.call(Method::DELETE, &uri::swarm(uuid), None).await;
    assert_eq!(removed.status, 202, "{:?}", removed.body);
    let started = Instant::now();
    loop {
        let shown = server.get(&uri::swarm(uuid)).await;
        if shown.body["state"] == "Terminated" {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "never Terminated: {:?}",
            shown.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// A model of the Docker engines of every node: what `swarm init`, `join` and `node update`
/// do, and how many swarms were ever created.
#[derive(Debug, Default)]
struct Docker {
    engines: HashMap<String, Engine>,
    /// Every cluster ID ever created by an `Init`.
    swarms_created: Vec<String>,
    /// Every `Init` the agents were asked to carry out, by node.
    inits: Vec<String>,
    /// Whether a token ever showed up where it should not.
    token_seen_by: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Engine {
    cluster: Option<String>,
    manager: bool,
    addr: String,
    labels: BTreeMap<String, String>,
}

const MANAGER_TOKEN: &str = "SWMTKN-1-manager";
const WORKER_TOKEN: &str = "SWMTKN-1-worker";

impl Docker {
    fn report(&self, node: &str) -> EngineReport {
        let engine = self.engines.get(node).cloned().unwrap_or_default();
        let nodes = engine.manager.then(|| {
            let mut members: Vec<(&String, &Engine)> = self
                .engines
                .iter()
                .filter(|(_, e)| e.cluster.is_some() && e.cluster == engine.cluster)
                .collect();
            members.sort_by_key(|(n, _)| n.to_owned());
            let leader = members
                .iter()
                .find(|(_, e)| e.manager)
                .map(|(n, _)| n.to_owned());
            members
                .iter()
                .map(|(n, e)| SwarmNodeInfo {
                    id: format!("id-{n}"),
                    hostname: n.to_string(),
                    role: if e.manager { "manager" } else { "worker" }.into(),
                    availability: "active".into(),
                    status: "ready".into(),
                    addr: e.addr.clone(),
                    reachability: e.manager.then(|| "reachable".into()),
                    leader: Some(*n) == leader,
                    labels: e.labels.clone(),
                    running_tasks: 0,
                    version: 1,
                })
                .collect()
        });
        EngineReport {
            engine: Some(EngineInfo {
                version: "20.10.24".into(),
                api_version: "1.41".into(),
                cpus: 2,
                memory_mib: 1024,
                disk_gib: 8,
                containers_running: 0,
                swarm: SwarmInfo {
                    state: if engine.cluster.is_some() {
                        "active"
                    } else {
                        "inactive"
                    }
                    .into(),
                    node_id: engine.cluster.as_ref().map(|_| format!("id-{node}")),
                    cluster_id: engine.cluster.clone(),
                    node_addr: Some(engine.addr.clone()),
                    control_available: engine.manager,
                    error: None,
                    nodes,
                },
            }),
            error: None,
        }
    }

    /// Carries out one task on `node`'s engine.
    fn run(&mut self, node: &str, task: &AgentTask) -> TaskResult {
        let mut result = TaskResult {
            id: task.id.clone(),
            ok: true,
            message: String::new(),
            join_tokens: None,
        };
        match &task.op {
            TaskOp::SwarmInit { advertise_addr } => {
                self.inits.push(node.to_owned());
                let engine = self.engines.entry(node.to_owned()).or_default();
                if engine.cluster.is_none() {
                    let id = format!("cluster-{}", self.swarms_created.len() + 1);
                    engine.cluster = Some(id.clone());
                    engine.manager = true;
                    engine.addr = advertise_addr.clone();
                    self.swarms_created.push(id);
                }
                result.join_tokens = Some(JoinTokens {
                    manager: MANAGER_TOKEN.into(),
                    worker: WORKER_TOKEN.into(),
                });
            }
            TaskOp::SwarmJoin {
                token,
                advertise_addr,
                remote_addrs,
            } => {
                let target = self
                    .engines
                    .values()
                    .find(|e| e.manager && remote_addrs.contains(&format!("{}:2377", e.addr)))
                    .and_then(|e| e.cluster.clone());
                let engine = self.engines.entry(node.to_owned()).or_default();
                match (&engine.cluster, target) {
                    (Some(_), _) => {}
                    (None, Some(cluster)) if token == MANAGER_TOKEN || token == WORKER_TOKEN => {
                        engine.cluster = Some(cluster);
                        engine.manager = token == MANAGER_TOKEN;
                        engine.addr = advertise_addr.clone();
                    }
                    _ => {
                        result.ok = false;
                        result.message = "no manager at those addresses".into();
                    }
                }
            }
            TaskOp::NodeUpdate {
                node_id,
                labels,
                role,
                ..
            } => {
                let target = node_id.trim_start_matches("id-").to_owned();
                let engine = self.engines.entry(target).or_default();
                engine.labels.extend(labels.clone());
                if let Some(role) = role {
                    engine.manager = role == "manager";
                }
            }
            TaskOp::SwarmLeave { .. } => {
                let engine = self.engines.entry(node.to_owned()).or_default();
                engine.cluster = None;
                engine.manager = false;
            }
            TaskOp::NodeRemove { .. } => {}
        }
        result
    }
}

/// The launch batches a server made: (cluster, first slot, count, registration token).
type Batches = Arc<Mutex<Vec<(String, u32, u32, String)>>>;

/// A server whose nodes count once their agent registers, and its batches.
fn agent_config(dir: &tempfile::TempDir) -> (flotilla_server::ServerConfig, Batches) {
    let mut config = config(dir);
    config.reconcile.node_ready = NodeReady::AgentRegistered;
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = batches.clone();
    config.reconcile.user_data = Arc::new(move |request: &UserDataRequest<'_>| {
        seen.lock().expect("batches").push((
            request.cluster_uuid.to_owned(),
            request.nodes[0].slot,
            request.nodes.len() as u32,
            request.registration_token.to_owned(),
        ));
        "#!/bin/sh\n".to_owned()
    });
    (config, batches)
}

async fn agent_call(
    server: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = server
        .client
        .request(method, format!("{}{path}", server.base))
        .header("Authorization", format!("TutumAgentToken {token}"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Every registered node's (uuid, credential, private ip).
type Agents = Vec<(String, String, String)>;

/// Registers every node of every batch not registered yet.
async fn register_all(
    server: &TestServer,
    batches: &Mutex<Vec<(String, u32, u32, String)>>,
    agents: &mut Agents,
    done: &mut std::collections::HashSet<(String, u32)>,
) {
    let batches = batches.lock().expect("batches").clone();
    for (cluster, first, count, token) in batches {
        for slot in first..first + count {
            if done.contains(&(cluster.clone(), slot)) {
                continue;
            }
            let (status, body) = agent_call(
                server,
                Method::POST,
                AGENT_NODES,
                &token,
                Some(
                    json!({"agent_version": "test", "cluster": cluster, "slot": slot,
                    "first_slot": first, "count": count}),
                ),
            )
            .await;
            if status != 201 {
                continue;
            }
            done.insert((cluster.clone(), slot));
            let uuid = body["uuid"].as_str().expect("uuid").to_owned();
            let credential = body["credential"].as_str().expect("credential").to_owned();
            let node = server.get(&uri::node(&uuid)).await;
            let ip = node.body["private_ips"][0]["cidr"]
                .as_str()
                .unwrap_or("10.0.0.1/24")
                .split('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            agents.push((uuid, credential, ip));
        }
    }
}

/// One round of every agent: a heartbeat, the tasks it brought carried out on the model,
/// and a PATCH with the results and a fresh report.
async fn agents_round(server: &TestServer, agents: &Agents, docker: &Mutex<Docker>) {
    for (uuid, credential, ip) in agents {
        docker
            .lock()
            .expect("docker")
            .engines
            .entry(uuid.clone())
            .or_insert_with(|| Engine {
                addr: ip.clone(),
                ..Engine::default()
            });
        let (status, reply) = agent_call(
            server,
            Method::POST,
            &agent_node_ping(uuid),
            credential,
            None,
        )
        .await;
        if status != 200 {
            continue;
        }
        let tasks: Vec<AgentTask> =
            serde_json::from_value(reply["tasks"].clone()).unwrap_or_default();
        let update = {
            let mut docker = docker.lock().expect("docker");
            let results: Vec<TaskResult> = tasks
                .iter()
                .map(|task| {
                    if matches!(&task.op, TaskOp::SwarmJoin { .. })
                        && docker
                            .engines
                            .get(uuid)
                            .is_some_and(|e| e.cluster.is_some())
                    {
                        docker.token_seen_by.push(uuid.clone());
                    }
                    docker.run(uuid, task)
                })
                .collect();
            NodeUpdate {
                engine: Some(docker.report(uuid)),
                results,
                ..NodeUpdate::default()
            }
        };
        agent_call(
            server,
            Method::PATCH,
            &agent_node(uuid),
            credential,
            Some(serde_json::to_value(&update).expect("json")),
        )
        .await;
    }
}

/// Creates a 3-manager, 2-worker swarm and plays its agents until it is `Deployed`,
/// killing the server (and starting it again on the same database) at each of `crashes`
/// (counted in agent rounds). Returns the model and the swarm as last shown.
async fn form_swarm(crashes: &[usize]) -> (Docker, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (config_a, batches) = agent_config(&dir);
    let cloud = Arc::new(FakeCloud::new());
    let mut server = TestServer::start(config_a, cloud.clone(), None).await;
    let credentials = server.credentials.clone();
    let created = server
        .call(Method::POST, &uri::swarms(), Some(body("s")))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let uuid = created.body["uuid"].as_str().expect("uuid").to_owned();
    let docker = Mutex::new(Docker::default());
    let mut agents = Agents::new();
    let mut registered = std::collections::HashSet::new();
    let started = Instant::now();
    let mut round = 0;
    loop {
        if crashes.contains(&round) {
            server.crash().await;
            let (config_b, _) = agent_config(&dir);
            let mut config_b = config_b;
            let seen = batches.clone();
            config_b.reconcile.user_data = Arc::new(move |request: &UserDataRequest<'_>| {
                seen.lock().expect("batches").push((
                    request.cluster_uuid.to_owned(),
                    request.nodes[0].slot,
                    request.nodes.len() as u32,
                    request.registration_token.to_owned(),
                ));
                "#!/bin/sh\n".to_owned()
            });
            server = TestServer::start(config_b, cloud.clone(), Some(credentials.clone())).await;
        }
        round += 1;
        register_all(&server, &batches, &mut agents, &mut registered).await;
        agents_round(&server, &agents, &docker).await;
        let shown = server.get(&uri::swarm(&uuid)).await;
        if shown.body["state"] == "Deployed" {
            server.stop().await;
            return (docker.into_inner().expect("docker"), shown.body);
        }
        assert!(
            started.elapsed() < LIMIT,
            "the swarm never formed: {:#}\n{:#?}",
            shown.body,
            docker.lock().expect("docker")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn check_one_swarm(docker: &Docker, swarm: &Value) {
    assert_eq!(
        docker.swarms_created.len(),
        1,
        "exactly one swarm was ever created: {docker:#?}"
    );
    let cluster = &docker.swarms_created[0];
    assert_eq!(swarm["cluster_id"], cluster.as_str());
    let initialisers: std::collections::BTreeSet<&String> = docker.inits.iter().collect();
    assert_eq!(
        initialisers.len(),
        1,
        "one manager was ever asked to init: {docker:#?}"
    );
    assert!(
        docker.token_seen_by.is_empty(),
        "tokens went only to nodes not yet joined"
    );
    let nodes = swarm["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 5, "{swarm:#}");
    for node in nodes {
        assert_eq!(node["engine_swarm_state"], "active", "{node:#}");
        assert_eq!(node["docker_status"], "ready", "{node:#}");
    }
    let managers = nodes.iter().filter(|n| n["role"] == "manager").count();
    assert_eq!(managers, 3);
    for (uuid, engine) in &docker.engines {
        assert_eq!(
            engine.cluster.as_ref(),
            Some(cluster),
            "{uuid} is in the swarm"
        );
        assert!(
            engine.labels.contains_key("flotilla.az"),
            "{uuid} is labelled: {engine:?}"
        );
    }
    let text = swarm.to_string();
    assert!(
        !text.contains(MANAGER_TOKEN) && !text.contains(WORKER_TOKEN),
        "no token is ever shown"
    );
}

#[tokio::test]
async fn the_server_bootstraps_one_swarm_through_the_agents() {
    let (docker, swarm) = form_swarm(&[]).await;
    check_one_swarm(&docker, &swarm);
}

#[tokio::test]
async fn a_server_killed_at_any_step_of_creating_a_swarm_finishes_with_exactly_one() {
    // Rounds 0..8 cover: before any node registered, the bootstrap choice, the Init handed
    // out but not answered, the Init answered but the tokens not yet stored, the joins.
    for crash in 0..8 {
        let (docker, swarm) = form_swarm(&[crash, crash + 2]).await;
        check_one_swarm(&docker, &swarm);
    }
}
