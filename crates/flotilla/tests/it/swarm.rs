//! Swarms with real Docker engines: every emulated instance boots as a host of its own (a
//! network namespace with the private IP moto gave it, its own hostname, its own `dockerd`
//! and `flotilla agent`; `flotilla_testkit::host`). A 3-manager, 2-worker swarm made with
//! `flotilla swarm create` forms (one cluster ID on every engine, one leader), runs a
//! 4-replica busybox httpd service published in host mode that answers on the workers,
//! takes two more workers that join by themselves, and scales its workers down to one with
//! the tasks moved before each node goes and no node left `Down` in `docker node ls`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::{Duration, Instant};

use flotilla_api::uri;
use flotilla_testkit::docker::httpd_service;
use flotilla_testkit::server::isolate_env;
use flotilla_testkit::{FaultProxy, InstanceRunner, MotoAccount, RunnerConfig};
use serde_json::Value;

use crate::support::Server;

/// Booting engines and forming a swarm takes longer than an API round trip.
pub(crate) const SWARM_LIMIT: Duration = Duration::from_secs(240);

pub(crate) struct Env {
    pub(crate) server: Server,
    pub(crate) runner: InstanceRunner,
    /// The server's way to moto: it must live as long as the server.
    _proxy: FaultProxy,
}

impl Env {
    /// moto, a server (`--node-ready agent` and `extra`) and the instance runner in docker
    /// mode: every instance a host with its own engine and agent.
    pub(crate) async fn start(extra: &[&str]) -> (Env, FaultProxy) {
        let MotoAccount {
            proxy, inspector, ..
        } = MotoAccount::start().await;
        let mut args = vec!["--node-ready", "agent"];
        args.extend_from_slice(extra);
        let server = Server::start(&proxy.endpoint(), &args).await;
        let mut runner_config = RunnerConfig::new(proxy.endpoint(), env!("CARGO_BIN_EXE_flotilla"));
        runner_config.heartbeat = Duration::from_millis(500);
        runner_config.docker = true;
        let runner = InstanceRunner::start(runner_config).await;
        (
            Env {
                server,
                runner,
                _proxy: proxy,
            },
            inspector,
        )
    }

    pub(crate) async fn cli(&self, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
        isolate_env(&mut command)
            .args(args)
            .env("FLOTILLA_HOST", &self.server.base)
            .env("FLOTILLA_USER", &self.server.user)
            .env("FLOTILLA_APIKEY", &self.server.key);
        command.output().await.expect("run flotilla")
    }

    pub(crate) async fn ok(&self, args: &[&str]) -> String {
        let output = self.cli(args).await;
        assert!(
            output.status.success(),
            "flotilla {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `flotilla swarm create NAME aws us-east-1 t3.micro --managers M --workers W`: its uuid.
    pub(crate) async fn create_swarm(&self, name: &str, managers: u32, workers: u32) -> String {
        let (managers, workers) = (managers.to_string(), workers.to_string());
        self.ok(&[
            "swarm",
            "create",
            name,
            "aws",
            "us-east-1",
            "t3.micro",
            "--managers",
            &managers,
            "--workers",
            &workers,
        ])
        .await
        .trim()
        .to_owned()
    }

    pub(crate) async fn swarm(&self, uuid: &str) -> Value {
        let (status, swarm) = self
            .server
            .call(reqwest::Method::GET, &uri::swarm(uuid), None)
            .await;
        assert_eq!(status, 200, "{swarm}");
        swarm
    }

    /// Waits until `done` holds for the swarm; fails with everything known when it never
    /// does.
    pub(crate) async fn wait(
        &self,
        uuid: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let swarm = self.swarm(uuid).await;
            if done(&swarm) {
                return swarm;
            }
            assert!(
                started.elapsed() < SWARM_LIMIT,
                "{what}: never happened: {swarm:#}\nagents:\n{}\nserver:\n{}",
                self.runner.logs(),
                self.server.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The instance of a node, from its `node/` object.
    pub(crate) async fn instance_of(&self, node_uri: &str) -> String {
        let (_, node) = self.server.call(reqwest::Method::GET, node_uri, None).await;
        let ip = node["private_ips"][0]["cidr"]
            .as_str()
            .unwrap_or_default()
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        self.runner
            .hosts()
            .into_iter()
            .find(|(_, host_ip)| host_ip.to_string() == ip)
            .map(|(instance, _)| instance)
            .unwrap_or_else(|| panic!("no host with {ip}: {:?}", self.runner.hosts()))
    }

    /// `docker node ls` on a manager: (hostname, status, availability, manager status).
    fn node_ls(&self, manager: &str) -> Vec<Vec<String>> {
        let text = self
            .runner
            .docker(
                manager,
                &[
                    "node",
                    "ls",
                    "--format",
                    "{{.Hostname}}|{{.Status}}|{{.Availability}}|{{.ManagerStatus}}",
                ],
            )
            .unwrap_or_else(|e| panic!("docker node ls: {e:#}"));
        text.lines()
            .map(|l| l.split('|').map(str::to_owned).collect())
            .collect()
    }
}

pub(crate) fn members(swarm: &Value, role: &str) -> Vec<Value> {
    swarm["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["role"] == role)
        .cloned()
        .collect()
}

pub(crate) fn all_ready(swarm: &Value, count: usize) -> bool {
    let nodes = swarm["nodes"].as_array().cloned().unwrap_or_default();
    nodes.len() == count && nodes.iter().all(|n| n["docker_status"] == "ready")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_of_real_engines_forms_runs_a_service_and_scales() {
    let (env, _) = Env::start(&[]).await;

    let uuid = env.create_swarm("web", 3, 2).await;
    let swarm = env
        .wait(&uuid, "the swarm forms", |s| s["state"] == "Deployed")
        .await;

    // One swarm: the same cluster ID on every engine, three managers, one leader.
    let cluster_id = swarm["cluster_id"]
        .as_str()
        .expect("a cluster ID")
        .to_owned();
    assert!(all_ready(&swarm, 5), "{swarm:#}");
    assert_eq!(members(&swarm, "manager").len(), 3);
    assert_eq!(
        swarm["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter(|n| n["leader"] == true)
            .count(),
        1
    );
    let mut instances = BTreeMap::new();
    let mut swarm_node_ids = BTreeSet::new();
    for node in swarm["nodes"].as_array().expect("nodes") {
        let node_uri = node["node"].as_str().expect("uri");
        let instance = env.instance_of(node_uri).await;
        let state = env
            .runner
            .docker(
                &instance,
                &[
                    "info",
                    "--format",
                    "{{.Swarm.LocalNodeState}} {{.Swarm.NodeID}}",
                ],
            )
            .expect("docker info");
        let (local, node_id) = state.trim().split_once(' ').expect("state and node ID");
        assert_eq!(local, "active", "{instance} is in a swarm");
        swarm_node_ids.insert(node_id.to_owned());
        if node["role"] == "manager" {
            // Only a manager's `docker info` knows the cluster ID.
            let id = env
                .runner
                .docker(&instance, &["info", "--format", "{{.Swarm.Cluster.ID}}"])
                .expect("docker info");
            assert_eq!(id.trim(), cluster_id, "{instance} is in the swarm");
        }
        instances.insert(node_uri.to_owned(), (instance, node["role"].clone()));
        // The node object carries what its engine reports.
        let (_, shown) = env.server.call(reqwest::Method::GET, node_uri, None).await;
        assert!(
            shown["docker_version"]
                .as_str()
                .is_some_and(|v| v.starts_with("20.")),
            "{shown:#}"
        );
        assert!(shown["cpu"].as_u64().is_some_and(|c| c > 0), "{shown:#}");
        assert!(shown["memory"].as_u64().is_some_and(|m| m > 0), "{shown:#}");
    }
    let manager = instances
        .values()
        .find(|(_, role)| role == "manager")
        .map(|(i, _)| i.clone())
        .expect("a manager");
    let listed = env.node_ls(&manager);
    assert_eq!(listed.len(), 5, "{listed:?}");
    // Every engine is a node of the one swarm the manager lists: one swarm.
    let ids: BTreeSet<String> = env
        .runner
        .docker(&manager, &["node", "ls", "-q"])
        .expect("node ls")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids, swarm_node_ids);
    let hostnames: BTreeSet<&str> = listed.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(hostnames.len(), 5, "each host has its own name: {listed:?}");
    assert!(listed.iter().all(|r| r[1] == "Ready"), "{listed:?}");
    assert_eq!(listed.iter().filter(|r| r[3] == "Leader").count(), 1);
    // Engine labels let services be constrained to an AZ.
    let labels = env
        .runner
        .docker(
            &manager,
            &[
                "node",
                "inspect",
                "self",
                "--format",
                "{{json .Spec.Labels}}",
            ],
        )
        .expect("node inspect");
    let labels: Value = serde_json::from_str(labels.trim()).expect("labels JSON");
    assert!(
        labels["flotilla.az"]
            .as_str()
            .is_some_and(|az| az.starts_with("us-east-1"))
    );

    // `flotilla swarm inspect --format json` shows the cluster ID and each node's role.
    let inspected: Value = serde_json::from_str(
        &env.ok(&["swarm", "inspect", &uuid, "--format", "json"])
            .await,
    )
    .expect("JSON");
    assert_eq!(inspected["cluster_id"], cluster_id.as_str());
    assert_eq!(members(&inspected, "worker").len(), 2);

    // A 4-replica busybox httpd on the workers, published in host mode (no routing mesh on
    // this kernel), answering on the workers.
    env.runner
        .docker(
            &manager,
            &httpd_service(
                "web",
                &[
                    "--replicas",
                    "4",
                    "--endpoint-mode",
                    "dnsrr",
                    "--constraint",
                    "node.role==worker",
                    "--publish",
                    "mode=host,target=80",
                ],
            ),
        )
        .expect("service create");
    let running = |env: &Env| {
        env.runner
            .docker(
                &manager,
                &[
                    "service",
                    "ps",
                    "web",
                    "--filter",
                    "desired-state=running",
                    "--format",
                    "{{.Node}}|{{.CurrentState}}",
                ],
            )
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("|Running"))
            .map(|l| l.split('|').next().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let started = Instant::now();
    while running(&env).len() < 4 {
        assert!(
            started.elapsed() < SWARM_LIMIT,
            "the service never ran 4 tasks: {:?}",
            env.runner.docker(&manager, &["service", "ps", "web"])
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut answered = 0;
    for (instance, role) in instances.values() {
        if role != "worker" {
            continue;
        }
        let ports = env
            .runner
            .docker(instance, &["ps", "--format", "{{.Ports}}"])
            .expect("docker ps");
        // `0.0.0.0:49153->80/tcp, :::49153->80/tcp`: one port, listed per address family.
        let ports: BTreeSet<u16> = ports
            .split([',', '\n'])
            .filter_map(|p| {
                p.trim()
                    .split("->")
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse::<u16>()
                    .ok()
            })
            .collect();
        for port in ports {
            let ip = env.runner.hosts()[instance];
            let page = env
                .runner
                .network()
                .expect("network")
                .http_get(std::net::SocketAddrV4::new(ip, port), "/")
                .await
                .expect("the service answers");
            assert!(!page.trim().is_empty());
            answered += 1;
        }
    }
    assert_eq!(answered, 4, "every task answers on its worker");

    // The load balancer (ELBv2 on moto) follows the published ports: a service published
    // on a fixed port gets a listener, which goes with the service. (`web` publishes a port
    // Docker picks per task: nothing to balance.)
    let listeners = |s: &Value| -> Vec<u64> {
        s["load_balancer"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_u64())
            .collect()
    };
    let swarm = env
        .wait(&uuid, "a load balancer", |s| {
            s["load_balancer"]["dns_name"].is_string()
        })
        .await;
    assert!(listeners(&swarm).is_empty(), "{swarm:#}");
    env.runner
        .docker(
            &manager,
            &httpd_service(
                "edge",
                &[
                    "--mode",
                    "global",
                    "--constraint",
                    "node.role==worker",
                    "--publish",
                    "mode=host,target=80,published=8080",
                ],
            ),
        )
        .expect("service create");
    env.wait(&uuid, "a listener on 8080", |s| listeners(s) == [8080])
        .await;
    env.runner
        .docker(&manager, &["service", "rm", "edge"])
        .expect("service rm");
    env.wait(&uuid, "the listener goes with the service", |s| {
        listeners(s).is_empty()
    })
    .await;

    // Seed 004's monitoring endpoint: the service's tasks and where they run.
    let (status, service) = env
        .server
        .call(reqwest::Method::GET, "/services/web", None)
        .await;
    assert_eq!(status, 200, "{service}");
    assert_eq!(service["replicas"], 4);
    assert_eq!(service["running"], 4, "{service:#}");
    let workers: BTreeSet<String> = members(&inspected, "worker")
        .iter()
        .map(|n| n["node"].as_str().unwrap_or_default().to_owned())
        .collect();
    for task in service["tasks"].as_array().expect("tasks") {
        let node = task["node"].as_str().unwrap_or_default();
        assert!(workers.contains(node), "{task} runs on a worker");
    }

    // The dashboard's swarms page shows the same: managers, workers, the leader and the
    // service with its four running tasks on the workers.
    let browser = crate::dashboard::signed_in(&env.server).await;
    browser.click("#nav-swarms").await;
    let card = browser
        .wait(
            "the swarm with its leader and its service on the swarms page",
            crate::dashboard::PAGE_LIMIT,
            &format!(
                "const card = document.querySelector(\"article.swarm[data-uuid='{uuid}']\");
                 if (!card) return null;
                 const row = card.querySelector(\"tr[data-service='web']\");
                 const text = card.textContent;
                 return row && row.cells[2].textContent === '4 / 4' && text.includes('(leader)')
                    ? {{summary: card.querySelector('dl').textContent, service: row.textContent}} : null"
            ),
        )
        .await;
    assert!(
        card["summary"]
            .as_str()
            .is_some_and(|s| s.contains("Managers3 / 3") && s.contains("Workers2 / 2")),
        "{card}"
    );
    browser.window(1280, 1150).await;
    browser.screenshot("swarms").await;
    browser.quit().await;

    // Workers 2 → 4 (docker-cloud's scale: a PATCH of the workers' node cluster): the new
    // nodes join by themselves.
    env.ok(&["swarm", "scale", &uuid, "--workers", "4"]).await;
    env.wait(&uuid, "two more workers join", |s| all_ready(s, 7))
        .await;

    // Workers 4 → 1: each leaving worker drains first (its tasks run elsewhere), leaves
    // and is removed from the swarm before its instance goes: none stays Down.
    env.ok(&["swarm", "scale", &uuid, "--workers", "1", "--sync"])
        .await;
    let swarm = env
        .wait(&uuid, "three workers leave", |s| all_ready(s, 4))
        .await;
    assert_eq!(members(&swarm, "worker").len(), 1);
    let listed = env.node_ls(&manager);
    assert_eq!(
        listed.len(),
        4,
        "no node stays in `docker node ls`: {listed:?}"
    );
    assert!(listed.iter().all(|r| r[1] == "Ready"), "{listed:?}");
    let started = Instant::now();
    while running(&env).len() < 4 {
        assert!(
            started.elapsed() < SWARM_LIMIT,
            "the tasks never all ran again: {:?}",
            env.runner.docker(&manager, &["service", "ps", "web"])
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Removal terminates both clusters; the swarm is Terminated when they are.
    let (status, body) = env
        .server
        .call(reqwest::Method::DELETE, &uri::swarm(&uuid), None)
        .await;
    assert_eq!(status, 202, "{body}");
    env.wait(&uuid, "the swarm is removed", |s| {
        s["state"] == "Terminated"
    })
    .await;
}

/// A manager's `docker node ls` shows a leader, or it does not (or does not answer).
fn has_leader(runner: &InstanceRunner, manager: &str) -> bool {
    runner
        .docker(manager, &["node", "ls", "--format", "{{.ManagerStatus}}"])
        .is_ok_and(|text| text.lines().any(|l| l.trim() == "Leader"))
}

fn ready_managers(swarm: &Value) -> usize {
    members(swarm, "manager")
        .iter()
        .filter(|n| n["docker_status"] == "ready" && n["manager_status"] == "reachable")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_change_live_and_a_lost_manager_is_replaced_without_losing_the_leader() {
    let (env, inspector) = Env::start(&["--observe-interval", "2"]).await;

    let uuid = env.create_swarm("mgr", 3, 0).await;
    let swarm = env
        .wait(&uuid, "the swarm forms", |s| s["state"] == "Deployed")
        .await;
    let original: Vec<Value> = members(&swarm, "manager");
    assert_eq!(original.len(), 3);
    // The managers spread one per AZ.
    let azs: BTreeSet<&str> = original
        .iter()
        .map(|n| n["availability_zone"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(azs.len(), 3, "{swarm:#}");
    // Watch from a manager that stays: the leader of the original three.
    let leader = original
        .iter()
        .find(|n| n["leader"] == true)
        .expect("a leader")
        .clone();
    let watched = env.instance_of(leader["node"].as_str().expect("uri")).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // How many times the watch has looked; each phase below waits for one more look, so
    // the watch covers every phase however fast the phases go.
    let looks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watch_covers = |since: usize| {
        let looks = looks.clone();
        async move {
            let started = Instant::now();
            while looks.load(std::sync::atomic::Ordering::Relaxed) <= since {
                assert!(started.elapsed() < SWARM_LIMIT, "the watch stopped looking");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let watch = {
        let stop = stop.clone();
        let looks = looks.clone();
        let socket = env
            .runner
            .docker_host(&watched)
            .expect("the leader's socket");
        let socket = std::path::PathBuf::from(socket.trim_start_matches("unix://"));
        std::thread::spawn(move || {
            let (mut samples, mut leaderless) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let listed = flotilla_testkit::docker::docker(
                    &socket,
                    &["node", "ls", "--format", "{{.ManagerStatus}}"],
                );
                samples += 1;
                looks.store(samples, std::sync::atomic::Ordering::Relaxed);
                let ok = listed
                    .as_ref()
                    .is_ok_and(|text| text.lines().any(|l| l.trim() == "Leader"));
                if !ok {
                    leaderless.push(format!("{listed:?}"));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            (samples, leaderless)
        })
    };
    assert!(has_leader(&env.runner, &watched));

    // 3 → 5 → 3, live.
    for target in [5usize, 3] {
        let since = looks.load(std::sync::atomic::Ordering::Relaxed);
        env.ok(&["swarm", "update", &uuid, "--managers", &target.to_string()])
            .await;
        let swarm = env
            .wait(&uuid, &format!("{target} managers"), |s| {
                ready_managers(s) == target && members(s, "manager").len() == target
            })
            .await;
        assert_eq!(swarm["manager_count"], target);
        let listed = env.node_ls(&watched);
        assert_eq!(listed.len(), target, "no node left Down: {listed:?}");
        assert!(listed.iter().all(|r| r[1] == "Ready"), "{listed:?}");
        watch_covers(since).await;
    }

    // A manager's instance is terminated behind Flotilla's back (not the watched leader):
    // it is removed from the swarm and replaced, in its AZ.
    let swarm = env.swarm(&uuid).await;
    let victim = members(&swarm, "manager")
        .into_iter()
        .find(|n| n["leader"] != true)
        .expect("a follower");
    let victim_instance = env.instance_of(victim["node"].as_str().expect("uri")).await;
    let since = looks.load(std::sync::atomic::Ordering::Relaxed);
    let ec2 = flotilla_testkit::inspect::ec2_client(&inspector.endpoint(), "us-east-1").await;
    flotilla_testkit::inspect::terminate_instances(&ec2, &[victim_instance]).await;
    let replaced = env
        .wait(&uuid, "the lost manager is replaced", |s| {
            let managers = members(s, "manager");
            ready_managers(s) == 3
                && managers.len() == 3
                && managers.iter().all(|n| n["node"] != victim["node"])
        })
        .await;
    let azs_after: BTreeSet<String> = members(&replaced, "manager")
        .iter()
        .map(|n| {
            n["availability_zone"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        azs_after.len(),
        3,
        "the replacement is in the lost manager's AZ"
    );
    let started = Instant::now();
    loop {
        let listed = env.node_ls(&watched);
        if listed.len() == 3 && listed.iter().all(|r| r[1] == "Ready") {
            break;
        }
        assert!(
            started.elapsed() < SWARM_LIMIT,
            "the lost manager stays in the list: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    watch_covers(since).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (samples, leaderless) = watch.join().expect("the watch");
    assert!(
        samples >= 3,
        "the watch looked in every phase ({samples} samples)"
    );
    assert!(
        leaderless.is_empty(),
        "the swarm was seen without a leader {} of {samples} times: {leaderless:?}",
        leaderless.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_at_each_step_of_creating_a_swarm_of_real_engines_makes_exactly_one() {
    let (mut env, _) = Env::start(&[]).await;

    let uuid = env.create_swarm("once", 3, 0).await;
    // SIGKILL right after the create, once the bootstrap manager is recorded, and once the
    // swarm's cluster ID is adopted; each time a new server finishes the work.
    type Reached = fn(&Value) -> bool;
    let steps: [(&str, Reached); 3] = [
        ("created", |_| true),
        ("bootstrap chosen", |s| s["bootstrap_node"].is_string()),
        ("cluster adopted", |s| s["cluster_id"].is_string()),
    ];
    for (step, reached) in steps {
        env.wait(&uuid, step, reached).await;
        env.server.process.kill().await;
        env.server
            .process
            .restart()
            .await
            .unwrap_or_else(|e| panic!("restart after '{step}': {e:#}"));
    }
    let swarm = env
        .wait(&uuid, "the swarm forms", |s| {
            s["state"] == "Deployed" && all_ready(s, 3)
        })
        .await;
    let cluster_id = swarm["cluster_id"].as_str().expect("a cluster ID");
    for node in members(&swarm, "manager") {
        let instance = env.instance_of(node["node"].as_str().expect("uri")).await;
        let id = env
            .runner
            .docker(&instance, &["info", "--format", "{{.Swarm.Cluster.ID}}"])
            .expect("docker info");
        assert_eq!(
            id.trim(),
            cluster_id,
            "{instance}: one swarm on every manager"
        );
        assert_eq!(env.node_ls(&instance).len(), 3);
    }
}
