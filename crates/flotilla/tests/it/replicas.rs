//! Three `flotilla server` replicas on one PostgreSQL (a real server the test kit starts)
//! against moto (issue #14): one owner per piece of work, held by a lease with a fencing
//! token.
//!
//! * The crash matrix across replicas: a deploy accepted by replica `a`, and the replica
//!   running it SIGKILLed while the deploy's K-th AWS call is in flight, for a few K; a
//!   survivor takes the cluster's lease over and finishes the deploy with nothing created
//!   twice (the same checks as the single-server crash test, `server_crash.rs`, whose way of
//!   choosing a kill point — the proxy holds the K-th call — this reuses).
//! * A replica SIGSTOPped mid-deploy past its lease: another takes the work over and
//!   finishes it; resumed, the paused one finds its lease lost and stops its work (counted
//!   in `flotilla_leases_lost_total`), and nothing is created twice. (That a stale holder's
//!   write is refused with `StaleLease` is shown on the store, `store::leases` and
//!   `lease` unit tests on both databases: here the resumed replica notices before it
//!   writes.)
//! * Agents spread over the three replicas heartbeat through a SIGKILL of the replica that
//!   owns the health sweep, moving to another replica: no node is ever `Unreachable`
//!   except a sentinel that falls silent on purpose, whose verdict proves the sweep ran a
//!   whole grace period after the takeover. A client of the events stream on a surviving
//!   replica sees the events caused on the others (LISTEN/NOTIFY).
//! * A dashboard session opened on `a` works on `b` (reads, and a change with its CSRF
//!   token), is logged out on `b`, and is then refused on `a` and `c`; failed logins spread
//!   over the three replicas meet the throttle at the same count as on one server (429 on
//!   every replica).
//!
//! The lease time is 3 s here (15 s by default), so takeovers are quick; nothing asserts a
//! duration (the takeover time is measured in bench/).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flotilla_api::agent::Registration;
use flotilla_api::{AgentClient, uri};
use flotilla_testkit::{
    DatabaseKind, Fault, InstanceRunner, MotoAccount, Rule, RunnerConfig, ServerProcess,
};
use prometheus_parse::{Scrape, Value as Metric};

use crate::server_crash::{held_at, six_nodes_and_one_network};
use crate::support::{Api, Events, server};

const LEASE_TIME: &str = "3";
const LIMIT: Duration = Duration::from_secs(90);
const IDS: [&str; 3] = ["a", "b", "c"];

/// Three replicas of one installation: one database, one `secret.key`, one admin.
struct Replicas {
    servers: Vec<ServerProcess>,
    apis: Vec<Api>,
    _dirs: Vec<tempfile::TempDir>,
    _database: flotilla_testkit::postgres::TestDatabase<'static>,
}

impl Replicas {
    async fn start(aws_endpoint: &str, extra: &[&str]) -> Replicas {
        let database = tokio::task::spawn_blocking(flotilla_testkit::postgres::database)
            .await
            .expect("join")
            .expect("a PostgreSQL database");
        let builder = |id: &str| {
            server(aws_endpoint)
                .database(DatabaseKind::Sqlite)
                .access_key_id("AKIAE2EREPLICAS")
                .args(["--database", database.url(), "--replica-id", id])
                .args(["--lease-time", LEASE_TIME, "--no-dns"])
                .args(extra)
                .start_limit(Duration::from_secs(30))
        };
        let first = builder(IDS[0]).start().await.expect("replica a");
        let credentials = first.credentials().cloned().expect("a printed the admin");
        let mut servers = vec![first];
        let mut dirs = Vec::new();
        for id in &IDS[1..] {
            // Every replica needs the installation's secret.key (it seals linked keys and
            // swarm join tokens); the database is shared.
            let dir = tempfile::tempdir().expect("temp dir");
            let data = dir.path().join("data");
            std::fs::create_dir_all(&data).expect("data dir");
            std::fs::copy(
                servers[0].data_dir().join("secret.key"),
                data.join("secret.key"),
            )
            .expect("copy secret.key");
            let replica = builder(id)
                .dir(dir.path())
                .data_dir(&data)
                .start()
                .await
                .unwrap_or_else(|e| panic!("replica {id}: {e:#}"));
            servers.push(replica);
            dirs.push(dir);
        }
        let apis = servers
            .iter()
            .map(|s| {
                Api::new(
                    &s.base(),
                    &credentials.user,
                    &credentials.key,
                    reqwest::Client::new(),
                )
            })
            .collect();
        Replicas {
            servers,
            apis,
            _dirs: dirs,
            _database: database,
        }
    }

    /// The replica (index) that holds the lease on `work`, from their `/metrics`; `None`
    /// while no live replica says it does. `dead` replicas are not asked.
    async fn holder(&self, work: &str, dead: &[usize]) -> Option<usize> {
        for (index, api) in self.apis.iter().enumerate() {
            if dead.contains(&index) {
                continue;
            }
            if lease_held(api, work).await {
                return Some(index);
            }
        }
        None
    }

    /// Waits until a live replica holds the lease on `work`.
    async fn wait_for_holder(&self, work: &str, dead: &[usize], not: Option<usize>) -> usize {
        let started = Instant::now();
        loop {
            if let Some(holder) = self.holder(work, dead).await
                && Some(holder) != not
            {
                return holder;
            }
            assert!(
                started.elapsed() < LIMIT,
                "no replica took the lease on {work}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        self.servers
            .iter()
            .zip(IDS)
            .map(|(s, id)| format!("=== replica {id}\n{}", s.log_tail(40)))
            .collect()
    }
}

/// One scrape of `api`'s `/metrics`, parsed.
async fn scrape(api: &Api) -> Vec<prometheus_parse::Sample> {
    let Ok((200, body)) = api.api.get_bytes(uri::METRICS).await else {
        return Vec::new();
    };
    let text = String::from_utf8(body).expect("UTF-8");
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition parses as Prometheus text")
        .samples
}

fn gauge(sample: &prometheus_parse::Sample) -> f64 {
    match sample.value {
        Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => v,
        _ => f64::NAN,
    }
}

async fn lease_held(api: &Api, work: &str) -> bool {
    scrape(api).await.iter().any(|s| {
        s.metric == "flotilla_lease_held" && s.labels.get("work") == Some(work) && gauge(s) == 1.0
    })
}

/// Waits until the cluster is `Deployed` with 6 nodes, asking `api`.
async fn wait_deployed(api: &Api, uuid: &str, replicas: &Replicas, what: &str) {
    let started = Instant::now();
    loop {
        let (status, cluster) = api
            .call(reqwest::Method::GET, &uri::node_cluster(uuid), None)
            .await;
        assert_eq!(status, 200, "{what}: {cluster}");
        if cluster["state"] == "Deployed" && cluster["current_num_nodes"] == 6 {
            return;
        }
        assert!(
            started.elapsed() < LIMIT,
            "{what}: never Deployed with 6 nodes: {cluster:#}\n{}",
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts a 6-node deploy on replica `a` with the proxy holding the deploy's K-th AWS call,
/// and waits until every earlier call has finished. The cluster's uuid and the deploy's
/// action URI.
async fn deploy_held_at(
    replicas: &Replicas,
    proxy: &flotilla_testkit::FaultProxy,
    k: u64,
) -> (String, String) {
    let api = &replicas.apis[0];
    let uuid = api.create_cluster(&format!("replicas{k}"), 6).await;
    proxy.clear_log();
    proxy.add_rule(
        Rule::any()
            .nth(k)
            .fault(Fault::Delay(Duration::from_secs(60))),
    );
    let (status, body, action_uri) = api
        .call_with_action(
            reqwest::Method::POST,
            &uri::node_cluster_deploy(&uuid),
            None,
        )
        .await;
    assert_eq!(status, 202, "k={k}: {body}");
    held_at(proxy, k, LIMIT, || replicas.logs()).await;
    let (_, before) = api
        .call(reqwest::Method::GET, &uri::node_cluster(&uuid), None)
        .await;
    assert_eq!(before["state"], "Deploying", "k={k}: {before:#}");
    (uuid, action_uri.expect("the deploy's action"))
}

async fn action_succeeded(api: &Api, action_uri: &str, what: &str) {
    let (_, action) = api.call(reqwest::Method::GET, action_uri, None).await;
    assert_eq!(action["state"], "Success", "{what}: {action:#}");
}

/// One crash point across replicas: the replica running the deploy dies at the K-th call.
async fn replica_killed_at(k: u64) {
    let MotoAccount {
        proxy, inspector, ..
    } = MotoAccount::start().await;
    let mut replicas = Replicas::start(&proxy.endpoint(), &["--node-ready", "running"]).await;
    let (uuid, action_uri) = deploy_held_at(&replicas, &proxy, k).await;
    let work = format!("cluster:{uuid}");
    let owner = replicas.wait_for_holder(&work, &[], None).await;
    replicas.servers[owner].kill().await;
    proxy.clear_rules();
    let taker = replicas.wait_for_holder(&work, &[owner], None).await;
    assert_ne!(taker, owner);
    let survivor = &replicas.apis[taker];
    let what = format!("k={k}, replica {} killed", IDS[owner]);
    wait_deployed(survivor, &uuid, &replicas, &what).await;
    action_succeeded(survivor, &action_uri, &what).await;
    six_nodes_and_one_network(&inspector.endpoint(), &what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_whose_replica_dies_at_each_crash_point_is_finished_by_another() {
    let runs: Vec<_> = [3_u64, 9, 17]
        .into_iter()
        .map(|k| tokio::spawn(replica_killed_at(k)))
        .collect();
    let mut failed = Vec::new();
    for run in runs {
        if let Err(error) = run.await {
            failed.push(error.to_string());
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_loses_the_work_and_stops() {
    let MotoAccount {
        proxy, inspector, ..
    } = MotoAccount::start().await;
    let replicas = Replicas::start(&proxy.endpoint(), &["--node-ready", "running"]).await;
    let (uuid, action_uri) = deploy_held_at(&replicas, &proxy, 9).await;
    let work = format!("cluster:{uuid}");
    let owner = replicas.wait_for_holder(&work, &[], None).await;
    replicas.servers[owner].pause(true).expect("SIGSTOP");
    proxy.clear_rules();
    // While it is frozen, another replica takes the lease over and finishes the deploy.
    let taker = replicas.wait_for_holder(&work, &[owner], None).await;
    let what = format!("replica {} paused", IDS[owner]);
    wait_deployed(&replicas.apis[taker], &uuid, &replicas, &what).await;
    replicas.servers[owner].pause(false).expect("SIGCONT");
    // Resumed, it finds its lease lost and stops the work.
    let started = Instant::now();
    loop {
        let samples = scrape(&replicas.apis[owner]).await;
        let lost = samples
            .iter()
            .find(|s| s.metric == "flotilla_leases_lost_total")
            .map(gauge)
            .unwrap_or(0.0);
        let holds = samples.iter().any(|s| {
            s.metric == "flotilla_lease_held" && s.labels.get("work") == Some(work.as_str())
        });
        if lost >= 1.0 && !holds {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "{what}: the resumed replica did not give the work up:\n{}",
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        replicas.servers[owner]
            .log()
            .contains("lease lost: work stopped"),
        "{}",
        replicas.logs()
    );
    assert_eq!(
        replicas.holder(&work, &[owner]).await,
        Some(taker),
        "the work stays with the replica that took it over"
    );
    action_succeeded(&replicas.apis[taker], &action_uri, &what).await;
    six_nodes_and_one_network(&inspector.endpoint(), &what).await;
}

/// One bring-your-own node's agent, heartbeating to one replica at a time.
struct Agent {
    uuid: String,
    credential: String,
    replica: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_moving_off_a_killed_replica_are_never_unreachable() {
    const GRACE: &str = "9";
    const PER_REPLICA: usize = 6;
    let MotoAccount { proxy, .. } = MotoAccount::start().await;
    let mut replicas = Replicas::start(&proxy.endpoint(), &["--heartbeat-grace", GRACE]).await;
    // The stream's client is on c; the kill picks another replica if c owns the sweep.
    let health_owner = replicas.wait_for_holder("health", &[], None).await;
    let watcher = if health_owner == 2 { 1 } else { 2 };
    let events = Events::listen(&replicas.apis[watcher]).await;
    let http = reqwest::Client::new();
    let clients: Vec<AgentClient> = replicas
        .servers
        .iter()
        .map(|s| AgentClient::new(s.base(), http.clone()))
        .collect();
    // Agents registered on every replica (the sentinel on the sweep's owner).
    let mut agents = Vec::new();
    for index in 0..=3 * PER_REPLICA {
        let replica = if index == 3 * PER_REPLICA {
            health_owner
        } else {
            index % 3
        };
        let token = replicas.apis[replica]
            .api
            .create_token()
            .await
            .expect("POST token/");
        let token = token["token"].as_str().expect("token").to_owned();
        let node = clients[replica]
            .register(
                &token,
                &Registration {
                    agent_version: "test".into(),
                    cluster: None,
                    slot: 0,
                    first_slot: 0,
                    count: 0,
                    private_ips: Vec::new(),
                    docker_version: None,
                    nonce: None,
                },
            )
            .await
            .expect("register");
        agents.push(Agent {
            uuid: node.uuid,
            credential: node.credential.expect("a credential"),
            replica,
        });
    }
    let sentinel = agents.pop().expect("the sentinel");
    let dead = Arc::new(std::sync::Mutex::new(None::<usize>));
    let stop = Arc::new(AtomicBool::new(false));
    // Every agent heartbeats each second; one whose replica fails moves to the next.
    let beating = {
        let (clients, dead, stop) = (clients.clone(), dead.clone(), stop.clone());
        tokio::spawn(async move {
            let mut agents = agents;
            while !stop.load(Ordering::SeqCst) {
                for agent in &mut agents {
                    for _ in 0..3 {
                        let answer = clients[agent.replica]
                            .heartbeat(&agent.uuid, &agent.credential)
                            .await;
                        let down = *dead.lock().expect("dead") == Some(agent.replica);
                        if answer.is_ok() && !down {
                            break;
                        }
                        agent.replica = (agent.replica + 1) % 3;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            agents
        })
    };
    // The sentinel is heard once more, then falls silent.
    clients[sentinel.replica]
        .heartbeat(&sentinel.uuid, &sentinel.credential)
        .await
        .expect("sentinel heartbeat");
    // Kill the sweep's owner: its agents move, and another replica takes the sweep over.
    *dead.lock().expect("dead") = Some(health_owner);
    replicas.servers[health_owner].kill().await;
    let taker = replicas
        .wait_for_holder("health", &[health_owner], None)
        .await;
    // The sentinel's verdict comes a grace period after the takeover at the earliest: by
    // then every other node was judged for as long.
    let survivor = &replicas.apis[taker];
    let started = Instant::now();
    loop {
        let (status, node) = survivor
            .call(reqwest::Method::GET, &uri::node(&sentinel.uuid), None)
            .await;
        assert_eq!(status, 200, "{node}");
        if node["state"] == "Unreachable" {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the silent sentinel was never judged Unreachable: {node:#}\n{}",
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let agents = beating.await.expect("heartbeats");
    let mut states = BTreeMap::new();
    for agent in &agents {
        let (_, node) = survivor
            .call(reqwest::Method::GET, &uri::node(&agent.uuid), None)
            .await;
        states.insert(agent.uuid.clone(), node["state"].clone());
    }
    assert!(
        states.values().all(|s| s == "Deployed"),
        "{states:#?}\n{}",
        replicas.logs()
    );
    // The watcher's stream saw the verdict and registrations made on the other replicas,
    // and no Unreachable but the sentinel's.
    let started = Instant::now();
    while !events.saw(&sentinel.uuid, "Unreachable", None) {
        assert!(
            started.elapsed() < LIMIT,
            "the sentinel's verdict never reached the events stream on replica {}: {}",
            IDS[watcher],
            events.dump()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for agent in agents.iter().filter(|a| a.uuid != sentinel.uuid) {
        assert!(
            !events.saw(&agent.uuid, "Unreachable", None),
            "a false Unreachable: {}\n{}",
            agent.uuid,
            events.dump()
        );
    }
    for (agent, index) in agents.iter().zip(0..) {
        assert!(
            index % 3 == watcher || events.saw(&agent.uuid, "Deployed", None),
            "the registration of {} on replica {} never reached the stream on {}: {}",
            agent.uuid,
            IDS[index % 3],
            IDS[watcher],
            events.dump()
        );
    }
}

/// The value of a counter in `api`'s `/metrics` (0 when absent).
async fn counter(api: &Api, metric: &str) -> f64 {
    scrape(api)
        .await
        .iter()
        .filter(|s| s.metric == metric)
        .map(gauge)
        .sum()
}

/// A swarm whose agents all talk to a replica that does not plan it: the tasks the
/// planning replica (the holder of the swarm's lease) decides reach the agents through the
/// database, the replica they talk to hands them out, and it records their results (the
/// `Init`'s join tokens among them, without which nobody could join). Real engines, as in
/// `swarm.rs`. The agents' replica is paused (SIGSTOP) while the swarm is created, so
/// another takes the swarm's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_forms_with_its_agents_talking_to_a_replica_that_does_not_plan_it() {
    let MotoAccount { proxy, .. } = MotoAccount::start().await;
    let replicas = Replicas::start(&proxy.endpoint(), &["--node-ready", "agent"]).await;
    let other = 2;
    let mut config = RunnerConfig::new(proxy.endpoint(), env!("CARGO_BIN_EXE_flotilla"));
    config.docker = true;
    config.server_url = Some(replicas.servers[other].base());
    let runner = InstanceRunner::start(config).await;

    replicas.servers[other].pause(true).expect("SIGSTOP");
    let api = &replicas.apis[0];
    let body = serde_json::json!({
        "name": "across",
        "region": uri::region("aws", "us-east-1"),
        "manager_node_type": uri::node_type("aws", "t3.micro"),
        "manager_count": 1,
        "worker_count": 1,
    });
    let (status, created) = api
        .call(reqwest::Method::POST, &uri::swarms(), Some(body))
        .await;
    assert!(status == 201 || status == 202, "{status} {created}");
    let uuid = created["uuid"].as_str().expect("uuid").to_owned();
    let work = format!("swarm:{uuid}");
    let planner = replicas.wait_for_holder(&work, &[other], None).await;
    replicas.servers[other].pause(false).expect("SIGCONT");
    let started = Instant::now();
    let swarm = loop {
        let (_, swarm) = api
            .call(reqwest::Method::GET, &uri::swarm(&uuid), None)
            .await;
        if swarm["state"] == "Deployed" && crate::swarm::all_ready(&swarm, 2) {
            break swarm;
        }
        assert!(
            started.elapsed() < crate::swarm::SWARM_LIMIT,
            "the swarm never formed: {swarm:#}\nagents:\n{}\n{}",
            runner.logs(),
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(swarm["cluster_id"].is_string(), "{swarm:#}");
    assert_eq!(
        replicas.holder(&work, &[]).await,
        Some(planner),
        "one replica planned the swarm throughout"
    );
    assert!(
        counter(&replicas.apis[other], "flotilla_swarm_tasks_handed_total").await > 0.0,
        "the agents' replica handed the tasks out"
    );
    assert_eq!(
        counter(&replicas.apis[planner], "flotilla_swarm_tasks_handed_total").await,
        0.0,
        "no agent talked to the planning replica"
    );
}

/// A dashboard request with the session cookie (and the CSRF token, if given).
async fn with_session(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = http.request(method, url).header("Cookie", cookie);
    if let Some(token) = csrf {
        request = request.header("X-CSRF-Token", token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.expect("request");
    let status = answer.status().as_u16();
    (
        status,
        answer.json().await.unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_sessions_and_the_login_throttle_span_the_replicas() {
    use reqwest::Method;
    let MotoAccount { proxy, .. } = MotoAccount::start().await;
    let replicas = Replicas::start(&proxy.endpoint(), &[]).await;
    let credentials = replicas.servers[0].credentials().cloned().expect("admin");
    let base: Vec<String> = replicas.servers.iter().map(|s| s.base()).collect();
    let http = reqwest::Client::new();
    // Log in on a.
    let login = http
        .post(format!("{}{}", base[0], uri::session()))
        .json(&serde_json::json!({"user": credentials.user, "key": credentials.key}))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), 200);
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let opened: serde_json::Value = login.json().await.expect("JSON");
    let csrf = opened["csrf_token"]
        .as_str()
        .expect("a CSRF token")
        .to_owned();
    // b knows the session: it reads, answers the same CSRF token, and takes a change made
    // with it (and refuses one without it).
    let on = |index: usize, path: String| format!("{}{path}", base[index]);
    let (status, body) = with_session(
        &http,
        Method::GET,
        on(1, uri::node_clusters()),
        &cookie,
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, session) = with_session(
        &http,
        Method::GET,
        on(1, uri::session()),
        &cookie,
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["csrf_token"], opened["csrf_token"]);
    assert_eq!(session["user"], credentials.user.as_str());
    let keys = on(1, uri::api_keys(&credentials.user));
    let (status, body) = with_session(
        &http,
        Method::POST,
        keys.clone(),
        &cookie,
        None,
        Some(serde_json::json!({"name": "no-token"})),
    )
    .await;
    assert_eq!(status, 403, "a change without the CSRF token: {body}");
    let (status, body) = with_session(
        &http,
        Method::POST,
        keys,
        &cookie,
        Some(&csrf),
        Some(serde_json::json!({"name": "from-b"})),
    )
    .await;
    assert_eq!(status, 201, "a change with the CSRF token: {body}");
    // Logged out on b: refused on a and c (and b) at the next request.
    let (status, body) = with_session(
        &http,
        Method::DELETE,
        on(1, uri::session()),
        &cookie,
        Some(&csrf),
        None,
    )
    .await;
    assert_eq!(status, 200, "logout: {body}");
    for index in [0, 2, 1] {
        let (status, body) = with_session(
            &http,
            Method::GET,
            on(index, uri::node_clusters()),
            &cookie,
            None,
            None,
        )
        .await;
        assert_eq!(
            status, 401,
            "replica {} after the logout: {body}",
            IDS[index]
        );
    }
    // Wrong keys spread over the replicas: five 401s, then 429 — as on one server — and
    // the block holds on every replica.
    let guess = |index: usize| {
        http.post(on(index, uri::session()))
            .json(&serde_json::json!({"user": credentials.user, "key": "guess"}))
            .send()
    };
    let mut statuses = Vec::new();
    for attempt in 0..8 {
        let answer = guess(attempt % 3).await.expect("login attempt");
        statuses.push(answer.status().as_u16());
        if answer.status() == 429 {
            assert!(answer.headers().get("retry-after").is_some());
            break;
        }
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429], "{statuses:?}");
    for index in 0..3 {
        let answer = guess(index).await.expect("login attempt");
        assert_eq!(answer.status(), 429, "replica {}", IDS[index]);
    }
}
