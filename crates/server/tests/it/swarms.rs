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
    AGENT_NODES, AgentTask, EngineInfo, EngineReport, JoinTokens, NodeUpdate, ServiceInfo,
    ServiceTask, SwarmInfo, SwarmNodeInfo, TaskOp, TaskResult, agent_node, agent_node_ping,
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
    // Deployed already when the fake cloud was quick; never Init: the create deploys it.
    assert!(
        ["Deploying", "Deployed"].contains(&managers.body["state"].as_str().unwrap_or("")),
        "{:?}",
        managers.body
    );

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

/// A model of the Docker engines of every node: what `swarm init`, `join`, `leave` and the
/// manager's `node update`/`node rm` do, how many swarms were ever created, and every
/// operation in order.
#[derive(Debug, Default)]
struct Docker {
    engines: HashMap<String, Engine>,
    /// Every cluster ID ever created by an `Init`.
    swarms_created: Vec<String>,
    /// Every `Init` the agents were asked to carry out, by node.
    inits: Vec<String>,
    /// Nodes that were handed a join token although already in a swarm.
    token_seen_by: Vec<String>,
    /// (node the operation is about, operation), in order.
    ops: Vec<(String, &'static str)>,
}

#[derive(Debug, Clone, Default)]
struct Engine {
    /// The swarm the engine is in (`None`: inactive).
    cluster: Option<String>,
    /// The swarm whose node list shows it (until `node rm`, also after it left: `Down`).
    listed_in: Option<String>,
    manager: bool,
    drained: bool,
    addr: String,
    labels: BTreeMap<String, String>,
}

const MANAGER_TOKEN: &str = "SWMTKN-1-manager";
const WORKER_TOKEN: &str = "SWMTKN-1-worker";

impl Docker {
    fn report(&self, node: &str) -> EngineReport {
        let engine = self.engines.get(node).cloned().unwrap_or_default();
        let control = engine.manager && engine.cluster.is_some();
        let nodes = control.then(|| {
            let mut members: Vec<(&String, &Engine)> = self
                .engines
                .iter()
                .filter(|(_, e)| e.listed_in.is_some() && e.listed_in == engine.cluster)
                .collect();
            members.sort_by_key(|(n, _)| n.to_owned());
            let leader = members
                .iter()
                .find(|(_, e)| e.manager && e.cluster.is_some())
                .map(|(n, _)| n.to_owned());
            members
                .iter()
                .map(|(n, e)| {
                    let ready = e.cluster == e.listed_in;
                    SwarmNodeInfo {
                        id: format!("id-{n}"),
                        hostname: n.to_string(),
                        role: if e.manager { "manager" } else { "worker" }.into(),
                        availability: if e.drained { "drain" } else { "active" }.into(),
                        status: if ready { "ready" } else { "down" }.into(),
                        addr: e.addr.clone(),
                        reachability: e
                            .manager
                            .then(|| if ready { "reachable" } else { "unreachable" }.into()),
                        leader: Some(*n) == leader,
                        labels: e.labels.clone(),
                        running_tasks: u32::from(ready && !e.drained && !e.manager),
                        version: 1,
                    }
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
                    // As Docker: only a manager's `docker info` knows the cluster ID.
                    cluster_id: engine.cluster.clone().filter(|_| engine.manager),
                    node_addr: Some(engine.addr.clone()),
                    control_available: control,
                    error: None,
                    services: nodes.as_ref().map(|nodes: &Vec<SwarmNodeInfo>| {
                        // One service, "web": a task on every ready worker.
                        vec![ServiceInfo {
                            id: "svc-web-0001".into(),
                            name: "web".into(),
                            mode: "replicated".into(),
                            replicas: Some(nodes.len() as u64),
                            tasks: nodes
                                .iter()
                                .filter(|n| n.role == "worker" && n.status == "ready")
                                .map(|n| ServiceTask {
                                    id: format!("task-{}", n.id),
                                    node_id: n.id.clone(),
                                    state: "running".into(),
                                    desired_state: "running".into(),
                                    error: None,
                                })
                                .collect(),
                            ports: Vec::new(),
                        }]
                    }),
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
                self.ops.push((node.to_owned(), "init"));
                let engine = self.engines.entry(node.to_owned()).or_default();
                if engine.cluster.is_none() {
                    let id = format!("cluster-{}", self.swarms_created.len() + 1);
                    engine.cluster = Some(id.clone());
                    engine.listed_in = Some(id.clone());
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
                self.ops.push((node.to_owned(), "join"));
                let target = self
                    .engines
                    .values()
                    .find(|e| e.manager && remote_addrs.contains(&format!("{}:2377", e.addr)))
                    .and_then(|e| e.cluster.clone());
                let engine = self.engines.entry(node.to_owned()).or_default();
                match (&engine.cluster, target) {
                    (Some(_), _) => {}
                    (None, Some(cluster)) if token == MANAGER_TOKEN || token == WORKER_TOKEN => {
                        engine.cluster = Some(cluster.clone());
                        engine.listed_in = Some(cluster);
                        engine.manager = token == MANAGER_TOKEN;
                        engine.drained = false;
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
                availability,
            } => {
                let target = node_id.trim_start_matches("id-").to_owned();
                let engine = self.engines.entry(target.clone()).or_default();
                engine.labels.extend(labels.clone());
                if let Some(role) = role {
                    engine.manager = role == "manager";
                    self.ops.push((target.clone(), "role"));
                }
                if let Some(availability) = availability {
                    engine.drained = availability == "drain";
                    self.ops.push((target, "drain"));
                }
            }
            TaskOp::SwarmLeave { .. } => {
                self.ops.push((node.to_owned(), "leave"));
                let engine = self.engines.entry(node.to_owned()).or_default();
                engine.cluster = None;
                engine.manager = false;
            }
            TaskOp::NodeRemove { node_id, .. } => {
                let target = node_id.trim_start_matches("id-").to_owned();
                self.ops.push((target.clone(), "remove"));
                if let Some(engine) = self.engines.get_mut(&target) {
                    engine.listed_in = None;
                }
            }
        }
        result
    }
}

/// The launch batches a server made: (cluster, first slot, count, registration token).
type Batches = Arc<Mutex<Vec<(String, u32, u32, String)>>>;

/// A server whose nodes count once their agent registers; its batches go to `batches`.
fn agent_config(dir: &tempfile::TempDir, batches: &Batches) -> flotilla_server::ServerConfig {
    let mut config = config(dir);
    config.reconcile.node_ready = NodeReady::AgentRegistered;
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
    config
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

/// A server on `FakeCloud` and the agents of every node it launched, played on the model.
struct Sim {
    dir: tempfile::TempDir,
    cloud: Arc<FakeCloud>,
    batches: Batches,
    server: Option<TestServer>,
    credentials: flotilla_server::Credentials,
    docker: Mutex<Docker>,
    /// Every registered node: (uuid, credential, private ip).
    agents: Vec<(String, String, String)>,
    registered: std::collections::HashSet<(String, u32)>,
}

impl Sim {
    async fn start() -> Sim {
        let dir = tempfile::tempdir().expect("temp dir");
        let batches = Batches::default();
        let cloud = Arc::new(FakeCloud::new());
        let server = TestServer::start(agent_config(&dir, &batches), cloud.clone(), None).await;
        Sim {
            credentials: server.credentials.clone(),
            server: Some(server),
            dir,
            cloud,
            batches,
            docker: Mutex::new(Docker::default()),
            agents: Vec::new(),
            registered: Default::default(),
        }
    }

    fn server(&self) -> &TestServer {
        self.server.as_ref().expect("a server")
    }

    /// Kills the server mid-flight and starts it again on the same database.
    async fn crash_and_restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.crash().await;
        }
        let config = agent_config(&self.dir, &self.batches);
        self.server = Some(
            TestServer::start(config, self.cloud.clone(), Some(self.credentials.clone())).await,
        );
    }

    /// Registers every node launched and not registered yet.
    async fn register(&mut self) {
        let batches = self.batches.lock().expect("batches").clone();
        for (cluster, first, count, token) in batches {
            for slot in first..first + count {
                if self.registered.contains(&(cluster.clone(), slot)) {
                    continue;
                }
                let (status, body) = agent_call(
                    self.server(),
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
                self.registered.insert((cluster.clone(), slot));
                let uuid = body["uuid"].as_str().expect("uuid").to_owned();
                let credential = body["credential"].as_str().expect("credential").to_owned();
                let node = self.server().get(&uri::node(&uuid)).await;
                let ip = node.body["private_ips"][0]["cidr"]
                    .as_str()
                    .unwrap_or("10.0.0.1/24")
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                self.agents.push((uuid, credential, ip));
            }
        }
    }

    /// One round of every agent: registration, a heartbeat, the tasks it brought carried
    /// out on the model, and a PATCH with the results and a fresh report. An agent whose
    /// node is gone (its credential refused) does nothing.
    async fn round(&mut self) {
        self.register().await;
        let server = self.server();
        for (uuid, credential, ip) in &self.agents {
            self.docker
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
                let mut docker = self.docker.lock().expect("docker");
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

    /// Plays rounds until `done` holds for what `path` shows, killing and restarting the
    /// server before each round listed in `crashes`.
    async fn until(
        &mut self,
        path: &str,
        crashes: &[usize],
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        let mut round = 0;
        loop {
            if crashes.contains(&round) {
                self.crash_and_restart().await;
            }
            round += 1;
            self.round().await;
            let shown = self.server().get(path).await;
            if done(&shown.body) {
                return shown.body;
            }
            assert!(
                started.elapsed() < LIMIT,
                "never reached: {:#}\n{:#?}",
                shown.body,
                self.docker.lock().expect("docker")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) -> Docker {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        self.docker.into_inner().expect("docker")
    }
}

/// Creates a 3-manager, 2-worker swarm and plays its agents until it is `Deployed`.
async fn formed_swarm(crashes: &[usize]) -> (Sim, String, Value) {
    let mut sim = Sim::start().await;
    let created = sim
        .server()
        .call(Method::POST, &uri::swarms(), Some(body("s")))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let uuid = created.body["uuid"].as_str().expect("uuid").to_owned();
    let swarm = sim
        .until(&uri::swarm(&uuid), crashes, |s| s["state"] == "Deployed")
        .await;
    (sim, uuid, swarm)
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
    assert_eq!(nodes.iter().filter(|n| n["leader"] == true).count(), 1);
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
    let (sim, _, swarm) = formed_swarm(&[]).await;
    // Seed 004's monitoring endpoints: the server is healthy, and a service's tasks are
    // shown with the nodes they run on, by name or id.
    assert_eq!(sim.server().get("/_ping").await.status, 200);
    for id in ["web", "svc-web-0001", "svc-web"] {
        let service = sim.server().get(&format!("/services/{id}")).await;
        assert_eq!(service.status, 200, "{id}: {:?}", service.body);
        assert_eq!(service.body["name"], "web");
        assert_eq!(service.body["swarm"], swarm["resource_uri"]);
        assert_eq!(service.body["running"], 2, "{:#}", service.body);
        for task in service.body["tasks"].as_array().expect("tasks") {
            assert!(
                task["node"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("/api/infra/v1/node/"))
            );
        }
    }
    assert_eq!(sim.server().get("/services/nope").await.status, 404);
    // A node whose engine stops answering is shown so, with why.
    let (node, credential, _) = sim.agents[0].clone();
    let shown = sim.server().get(&uri::node(&node)).await;
    assert_eq!(shown.body["docker_engine"], "running");
    assert_eq!(shown.body["docker_version"], "20.10.24");
    assert_eq!(shown.body["cpu"], 2);
    assert_eq!(shown.body["memory"], 1024);
    let down = NodeUpdate {
        engine: Some(EngineReport {
            engine: None,
            error: Some("connection refused".into()),
        }),
        ..NodeUpdate::default()
    };
    let (status, _) = agent_call(
        sim.server(),
        Method::PATCH,
        &agent_node(&node),
        &credential,
        Some(serde_json::to_value(&down).expect("json")),
    )
    .await;
    assert_eq!(status, 200);
    let shown = sim.server().get(&uri::node(&node)).await;
    assert_eq!(shown.body["docker_engine"], "down: connection refused");
    let docker = sim.stop().await;
    check_one_swarm(&docker, &swarm);
}

#[tokio::test]
async fn a_server_killed_at_any_step_of_creating_a_swarm_finishes_with_exactly_one() {
    // Rounds 0..8 cover: before any node registered, the bootstrap choice, the Init handed
    // out but not answered, the Init answered but the tokens not yet stored, the joins.
    for crash in 0..8 {
        let (sim, _, swarm) = formed_swarm(&[crash, crash + 2]).await;
        let docker = sim.stop().await;
        check_one_swarm(&docker, &swarm);
    }
}

#[tokio::test]
async fn workers_leave_the_swarm_before_their_instances_go_and_new_ones_join() {
    let (mut sim, _, swarm) = formed_swarm(&[]).await;
    let workers = swarm["worker_cluster"].as_str().expect("uri").to_owned();

    // 2 → 3: the new worker joins by itself.
    let scaled = sim
        .server()
        .call(
            Method::PATCH,
            &workers,
            Some(json!({"target_num_nodes": 3})),
        )
        .await;
    assert_eq!(scaled.status, 202, "{:?}", scaled.body);
    let swarm_path = swarm["resource_uri"].as_str().expect("uri").to_owned();
    sim.until(&swarm_path, &[], |s| {
        let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
        nodes.len() == 6 && nodes.iter().all(|n| n["docker_status"] == "ready")
    })
    .await;

    // 3 → 1: two workers drain, leave and are removed from the swarm, then terminated.
    let scaled = sim
        .server()
        .call(
            Method::PATCH,
            &workers,
            Some(json!({"target_num_nodes": 1})),
        )
        .await;
    assert_eq!(scaled.status, 202, "{:?}", scaled.body);
    sim.until(&workers, &[], |c| {
        c["state"] == "Deployed" && c["current_num_nodes"] == 1
    })
    .await;
    let docker = sim.stop().await;
    let gone: Vec<&String> = docker
        .engines
        .iter()
        .filter(|(_, e)| e.listed_in.is_none())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(gone.len(), 2, "two nodes left the list: {docker:#?}");
    for node in gone {
        // A step may be carried out twice (its effect not yet reported when the worker
        // planned again): every task is idempotent, so repeats are folded.
        let mut ops: Vec<&str> = docker
            .ops
            .iter()
            .filter(|(n, _)| n == node)
            .map(|(_, op)| *op)
            .collect();
        ops.dedup();
        let tail: Vec<&str> = ops.iter().rev().take(3).rev().copied().collect();
        assert_eq!(tail, ["drain", "leave", "remove"], "{node}: {ops:?}");
    }
    let listed = docker.engines.values().filter(|e| e.listed_in.is_some());
    for engine in listed {
        assert!(
            engine.cluster.is_some(),
            "no node stays Down in the list: {docker:#?}"
        );
    }
}

#[tokio::test]
async fn managers_change_live_and_an_unsafe_change_is_refused() {
    let (mut sim, uuid, swarm) = formed_swarm(&[]).await;
    let path = uri::swarm(&uuid);
    let managers = |s: &Value| {
        s["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter(|n| n["role"] == "manager" && n["docker_status"] == "ready")
                    .count()
            })
            .unwrap_or(0)
    };
    for (change, error) in [
        (json!({"manager_count": 4}), "1, 3, 5 or 7"),
        (json!({"worker_count": 4}), "worker_count"),
        (json!({}), "manager_count"),
    ] {
        let refused = sim.server().call(Method::PATCH, &path, Some(change)).await;
        assert_eq!(refused.status, 400, "{:?}", refused.body);
        assert!(
            refused.body["error"]
                .as_str()
                .expect("error")
                .contains(error)
        );
    }

    // 3 → 5 → 3, live.
    for target in [5, 3] {
        let changed = sim
            .server()
            .call(Method::PATCH, &path, Some(json!({"manager_count": target})))
            .await;
        assert_eq!(changed.status, 202, "{:?}", changed.body);
        let shown = sim
            .until(&path, &[], |s| {
                managers(s) == target
                    && s["nodes"].as_array().is_some_and(|n| n.len() == target + 2)
            })
            .await;
        assert_eq!(shown["manager_count"], target);
    }
    let manager_cluster = swarm["manager_cluster"].as_str().expect("uri").to_owned();
    sim.until(&manager_cluster, &[], |c| {
        c["state"] == "Deployed" && c["current_num_nodes"] == 3
    })
    .await;

    // Two of three managers unreachable: the swarm has lost quorum, no change is safe.
    let silent: Vec<String> = {
        let docker = sim.docker.lock().expect("docker");
        let mut managers: Vec<String> = docker
            .engines
            .iter()
            .filter(|(_, e)| e.manager && e.cluster.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        managers.sort();
        managers.into_iter().take(2).collect()
    };
    {
        let mut docker = sim.docker.lock().expect("docker");
        for node in &silent {
            // The engine is still listed but down, as a manager that lost its machine.
            if let Some(engine) = docker.engines.get_mut(node) {
                engine.cluster = None;
            }
        }
    }
    let survivor_reports = sim
        .until(&path, &[], |s| {
            s["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .filter(|n| n["manager_status"] == "unreachable")
                    .count()
                    >= 1
            }) || managers(s) < 3
        })
        .await;
    let refused = sim
        .server()
        .call(Method::PATCH, &path, Some(json!({"manager_count": 5})))
        .await;
    assert_eq!(
        refused.status, 409,
        "{:?}\n{survivor_reports:#}",
        refused.body
    );
    let error = refused.body["error"].as_str().expect("error");
    assert!(error.contains("quorum"), "{error}");
    sim.stop().await;
}
