//! Security properties of the HTTP edge (issue #5, item 5):
//! * every route but `/_ping` (and the public agent binary) refuses every kind of missing or
//!   wrong credential with a 401, `WWW-Authenticate` and `{"error": ...}` — enumerated from
//!   `Route::iter()` and the route table (`routes::endpoint`: paths, methods, which routes
//!   take the agent's token), so a route added later is covered without touching this file;
//! * repeated failed logins are refused with 429 and `Retry-After`, per client address;
//! * no secret of a run (linked AWS keys, the admin's API key, a node credential, a batch
//!   registration token, a bring-your-own-node token) is in the database files or in any
//!   log line. (An agent credential acting only on its own node, and a registration token
//!   working once, are `agents.rs`.)

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use flotilla_api::agent::{AGENT_NODES, agent_node_ping};
use flotilla_api::uri;
use flotilla_core::fake::FakeCloud;
use flotilla_server::routes::{self, Route, concrete, endpoint, parse_path, template};
use flotilla_server::{NodeReady, UserDataRequest};
use reqwest::Method;
use serde_json::{Value, json};
use strum::IntoEnumIterator as _;

use crate::harness::{TestServer, config};

/// A distinct loopback source address per call, so the login throttle (which counts per
/// address) never turns this test's deliberate failures into 429s.
fn next_ip() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    IpAddr::from([
        127,
        1 + (n / 64_516) as u8,
        (n / 254 % 254) as u8 + 1,
        (n % 254) as u8 + 1,
    ])
}

/// reqwest is built without a default TLS crypto provider; plain-HTTP clients still need
/// one installed before they are built.
pub fn crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub fn client_from(ip: IpAddr) -> reqwest::Client {
    crypto_provider();
    reqwest::Client::builder()
        .local_address(ip)
        .build()
        .expect("client")
}

/// What a request presents as its credentials.
#[derive(Debug, Clone)]
enum Auth {
    Nothing,
    /// `Authorization: <verbatim>`.
    Header(String),
}

struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    retry_after: Option<String>,
    body: Value,
}

async fn send(
    server: &TestServer,
    from: IpAddr,
    method: Method,
    path: &str,
    auth: &Auth,
    websocket: bool,
) -> Answer {
    let mut request = client_from(from)
        .request(method.clone(), format!("{}{path}", server.base))
        .header("Content-Type", "application/json");
    if method == Method::POST || method == Method::PATCH || method == Method::PUT {
        // Well-formed for every route that reads a body (the agent registration checks its
        // token against the body's batch), so only the credentials can be wrong.
        request = request.body(
            json!({"agent_version": "x", "cluster": "x", "slot": 0, "first_slot": 0,
                "count": 1, "name": "x"})
            .to_string(),
        );
    }
    if let Auth::Header(value) = auth {
        request = request.header("Authorization", value);
    }
    if websocket {
        request = request
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    }
    let response = request.send().await.expect("request");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let www_authenticate = header("WWW-Authenticate");
    let retry_after = header("Retry-After");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    Answer {
        status,
        www_authenticate,
        retry_after,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

fn basic(user: &str, key: &str) -> Auth {
    use base64::Engine as _;
    Auth::Header(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"))
    ))
}

/// Routes that answer without credentials, and why. Anything else must be a 401.
fn public(route: &Route) -> Option<&'static str> {
    match route {
        Route::Ping => Some("liveness probe for load balancers; says nothing but OK"),
        Route::Download => Some(
            "the open-source flotilla binary itself, no secret in it; bring-your-own nodes \
             fetch it before they hold any credential",
        ),
        Route::Dashboard | Route::DashboardScript | Route::DashboardStyle => Some(
            "the web dashboard's page, script and style sheet, built into the binary; no \
             data in them (the page logs in and calls the API with the session cookie)",
        ),
        _ => None,
    }
}

#[tokio::test]
async fn every_route_but_ping_and_the_binary_requires_credentials() {
    crypto_provider();
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(config(&dir), Arc::new(FakeCloud::new()), None).await;
    // This address has logged in, so the admin's failures below from many addresses never
    // throttle it (the per-user counter exempts trusted addresses).
    assert_eq!(server.get(&uri::node_clusters()).await.status, 200);
    let admin = server.credentials.username.clone();
    let key = server.credentials.api_key.clone();

    // Every variant, with its template's parameters, plus every path of the OpenAPI
    // document (the namespaced forms).
    let mut paths: BTreeSet<(String, &'static [&'static str])> = BTreeSet::new();
    let mut variants = 0;
    for route in Route::iter() {
        variants += 1;
        let (path, methods) = template(&route);
        paths.insert((concrete(path), methods));
    }
    assert!(variants >= 28, "Route::iter() yields every variant");
    let document = flotilla_server::openapi::document();
    for path in document["paths"].as_object().expect("paths").keys() {
        let concrete_path = concrete(path).replace("/x/", &format!("/{admin}/"));
        let concrete_path = if path.contains("{namespace}") {
            concrete_path
        } else {
            concrete(path)
        };
        let parsed = parse_path(&concrete_path).expect("a documented path is a route");
        paths.insert((concrete_path, template(&parsed.route).1));
    }

    let mut checked = 0;
    let mut exceptions = BTreeSet::new();
    for (path, methods) in &paths {
        let route = parse_path(path).expect("route").route;
        let agent = endpoint(&route).auth == routes::Auth::Agent;
        // The route table's public routes are exactly the ones this test allows (stated
        // here independently, with the reason).
        assert_eq!(
            endpoint(&route).auth == routes::Auth::Public,
            public(&route).is_some(),
            "{route:?}"
        );
        // Every documented method, plus one the route does not allow: without credentials
        // even a wrong method is a 401, not a 405 that would confirm the path exists.
        let mut all_methods: Vec<Method> = methods
            .iter()
            .map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).expect("method"))
            .collect();
        all_methods.push(Method::PUT);
        all_methods.dedup();
        for (index, method) in all_methods.iter().enumerate() {
            let mut auths = vec![
                Auth::Nothing,
                basic("nobody", "x"),
                Auth::Header("Basic !!not-base64!!".into()),
                Auth::Header(format!("ApiKey {admin}:{key}")),
                Auth::Header(format!("Bearer {key}")),
                Auth::Header("TutumAgentToken not-a-token".into()),
            ];
            if index == 0 {
                // Bounded, so the per-user counter stays under its allowance.
                auths.push(basic(&admin, "wrong-key"));
            }
            if agent {
                // The user's valid Basic key is not an agent credential.
                auths.push(basic(&admin, &key));
            }
            for auth in &auths {
                let websocket = *method == Method::GET;
                let method = if public(&route).is_some() && *method == Method::GET {
                    // HEAD: the binary is large; HEAD proves the same point.
                    Method::HEAD
                } else {
                    method.clone()
                };
                let answer = send(&server, next_ip(), method.clone(), path, auth, websocket).await;
                checked += 1;
                if let Some(why) = public(&route) {
                    if methods.contains(&method.as_str().to_ascii_lowercase().as_str()) {
                        assert_eq!(answer.status, 200, "{method} {path} ({why})");
                        exceptions.insert(format!("{route:?}"));
                    }
                    continue;
                }
                let documented = methods.contains(&method.as_str().to_ascii_lowercase().as_str());
                if agent && !documented && answer.status == 405 {
                    // The agent API checks that a token is present, then the method, then
                    // the token itself; its paths are public knowledge (the contract), so a
                    // 405 to a caller with some token reveals nothing.
                    continue;
                }
                assert_eq!(
                    answer.status, 401,
                    "{method} {path} with {auth:?}: {:?}",
                    answer.body
                );
                assert!(
                    answer.www_authenticate.is_some(),
                    "{method} {path}: a 401 names its scheme"
                );
                assert!(
                    answer.body["error"]
                        .as_str()
                        .is_some_and(|e| !e.trim().is_empty()),
                    "{method} {path}: {:?}",
                    answer.body
                );
            }
        }
    }
    assert_eq!(
        exceptions,
        BTreeSet::from([
            "Dashboard".to_owned(),
            "DashboardScript".to_owned(),
            "DashboardStyle".to_owned(),
            "Download".to_owned(),
            "Ping".to_owned()
        ]),
        "only these answer without credentials"
    );
    assert!(checked > 300, "{checked} requests");
    // The admin was never locked out from its own address.
    assert_eq!(server.get(&uri::node_clusters()).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn repeated_failed_logins_are_refused_with_retry_after() {
    crypto_provider();
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(config(&dir), Arc::new(FakeCloud::new()), None).await;
    let admin = server.credentials.username.clone();
    let right = basic(&admin, &server.credentials.api_key);
    let wrong = basic(&admin, "wrong-key");
    let path = "/api/infra/v1/nodecluster/";
    let attacker = next_ip();
    let bystander = next_ip();

    for attempt in 1..=5 {
        let answer = send(&server, attacker, Method::GET, path, &wrong, false).await;
        assert_eq!(answer.status, 401, "failure {attempt} is an ordinary 401");
    }
    let refused = send(&server, attacker, Method::GET, path, &wrong, false).await;
    assert_eq!(refused.status, 429, "the 6th failure in a row is refused");
    let retry_after: u64 = refused
        .retry_after
        .as_deref()
        .and_then(|s| s.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=300).contains(&retry_after), "{retry_after}");
    let message = refused.body["error"].as_str().expect("error");
    assert!(message.contains("too many failed logins"), "{message}");
    // While blocked, even the right key is refused from that address (it is not checked)…
    let blocked = send(&server, attacker, Method::GET, path, &right, false).await;
    assert_eq!(blocked.status, 429);
    // …but the same user from another address is not slowed down.
    let other = send(&server, bystander, Method::GET, path, &right, false).await;
    assert_eq!(other.status, 200, "{:?}", other.body);
    // Another user name from the blocked address is not blocked either (unknown: 401).
    let ghost = send(
        &server,
        attacker,
        Method::GET,
        path,
        &basic("ghost", "x"),
        false,
    )
    .await;
    assert_eq!(ghost.status, 401);

    // Once the delay has passed, a success resets the count: five more failures are 401s.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let back = send(&server, attacker, Method::GET, path, &right, false).await;
    assert_eq!(back.status, 200, "{:?}", back.body);
    for attempt in 1..=5 {
        let answer = send(&server, attacker, Method::GET, path, &wrong, false).await;
        assert_eq!(answer.status, 401, "failure {attempt} after the reset");
    }
    let again = send(&server, attacker, Method::GET, path, &wrong, false).await;
    assert_eq!(again.status, 429);
    server.stop().await;
}

/// Every log line of the process while `CAPTURING`, at every level and target.
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| Mutex::new(Vec::new()))
}

static CAPTURING: AtomicBool = AtomicBool::new(false);

struct CaptureWriter;

impl std::io::Write for CaptureWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if CAPTURING.load(Ordering::Relaxed) {
            captured_logs()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per test binary) a global subscriber that formats every event, at TRACE,
/// into [`captured_logs`] while [`CAPTURING`] is set. Events are filtered per call, so
/// other tests pay nothing while nobody captures.
fn capture_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt as _;
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(|| CaptureWriter)
            .with_ansi(false)
            .with_level(true)
            .with_target(true)
            .with_filter(tracing_subscriber::filter::filter_fn(|_| {
                CAPTURING.load(Ordering::Relaxed)
            }));
        let subscriber = tracing_subscriber::registry().with(layer);
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
    CAPTURING.store(true, Ordering::SeqCst);
}

use tracing_subscriber::Layer as _;

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_a_run_is_in_the_database_or_the_logs() {
    capture_logs();
    crypto_provider();
    let dir = tempfile::tempdir().expect("dir");
    let mut config = config(&dir);
    config.reconcile.node_ready = NodeReady::AgentRegistered;
    let tokens: Arc<Mutex<Vec<(u32, u32, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let seen = tokens.clone();
    config.reconcile.user_data = Arc::new(move |request: &UserDataRequest<'_>| {
        seen.lock().expect("tokens").push((
            request.nodes[0].slot,
            request.nodes.len() as u32,
            request.registration_token.to_owned(),
        ));
        "#!/bin/sh\n".to_owned()
    });
    let database_url = config.database_url.clone();
    let server = TestServer::start(config, Arc::new(FakeCloud::new()), None).await;
    let mut secrets: Vec<(&str, String)> =
        vec![("the admin's API key", server.credentials.api_key.clone())];

    // 1. Link AWS keys.
    let key_id = "AKIASECRETSEARCH0001";
    let secret_key = "sEcReT/search+Key0123456789abcdefghijklmn";
    let linked = server
        .call(
            Method::PUT,
            "/api/infra/v1/provider/aws/credentials/",
            Some(json!({"access_key_id": key_id, "secret_access_key": secret_key})),
        )
        .await;
    assert_eq!(linked.status, 200, "{:?}", linked.body);
    secrets.push(("the AWS secret access key", secret_key.to_owned()));
    secrets.push(("the AWS access key id", key_id.to_owned()));

    // 2. A bring-your-own-node token.
    let byo = server.call(Method::POST, &uri::token(), None).await;
    assert_eq!(byo.status, 201, "{:?}", byo.body);
    let byo_token = byo.body["token"].as_str().expect("token").to_owned();
    secrets.push(("a bring-your-own-node token", byo_token));

    // 3. A node: its batch registration token, and the credential registration returns.
    let created = server
        .call(
            Method::POST,
            &uri::node_clusters(),
            Some(json!({"name": "secrets", "target_num_nodes": 1,
                "region": "/api/infra/v1/region/aws/us-east-1/",
                "node_type": "/api/infra/v1/nodetype/aws/t3.micro/"})),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let cluster = created.body["uuid"].as_str().expect("uuid").to_owned();
    let deploy = server
        .call(Method::POST, &uri::node_cluster_deploy(&cluster), None)
        .await;
    assert_eq!(deploy.status, 202, "{:?}", deploy.body);
    let started = std::time::Instant::now();
    let (first_slot, count, batch_token) = loop {
        if let Some(batch) = tokens.lock().expect("tokens").first().cloned() {
            break batch;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no launch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The node is recorded right after its launch.
    loop {
        let nodes = server
            .get(&format!("{}?node_cluster={cluster}", uri::nodes()))
            .await;
        if nodes.body["meta"]["total_count"] == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no node");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let registered = client_from(next_ip())
        .post(format!("{}{AGENT_NODES}", server.base))
        .header("Authorization", format!("TutumAgentToken {batch_token}"))
        .json(
            &json!({"agent_version": "test", "cluster": cluster, "slot": first_slot,
            "first_slot": first_slot, "count": count, "private_ips": ["10.78.0.9"]}),
        )
        .send()
        .await
        .expect("register");
    assert_eq!(registered.status().as_u16(), 201);
    let node: Value = registered.json().await.expect("node");
    let credential = node["credential"].as_str().expect("credential").to_owned();
    let uuid = node["uuid"].as_str().expect("uuid").to_owned();
    let ping = client_from(next_ip())
        .post(format!("{}{}", server.base, agent_node_ping(&uuid)))
        .header("Authorization", format!("TutumAgentToken {credential}"))
        .send()
        .await
        .expect("ping");
    assert_eq!(ping.status().as_u16(), 200);
    secrets.push(("a batch registration token", batch_token));
    secrets.push(("a node credential", credential));
    server
        .wait_for_cluster(&cluster, "Deployed", Duration::from_secs(20))
        .await;

    // At rest while running (the WAL holds the recent writes), and after a clean stop.
    // On PostgreSQL the database is not a file of the directory: search its dump too.
    let search_files = |when: &str| {
        if let Some(url) = &database_url {
            let dump = flotilla_testkit::postgres::dump(url).expect("pg_dump");
            for (what, secret) in &secrets {
                assert!(
                    !dump.contains(secret.as_str()),
                    "the database holds {what} ({when})"
                );
            }
        }
        for entry in std::fs::read_dir(dir.path()).expect("dir") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_owned();
            if name == "secret.key" {
                continue;
            }
            let bytes = std::fs::read(&path).expect("read");
            for (what, secret) in &secrets {
                assert!(!contains(&bytes, secret), "{name} holds {what} ({when})");
            }
        }
    };
    search_files("running");
    server.stop().await;
    search_files("stopped");
    CAPTURING.store(false, Ordering::SeqCst);
    let logs = captured_logs().lock().expect("logs").clone();
    assert!(
        contains(&logs, "flotilla_server"),
        "the capture saw the server's log"
    );
    for (what, secret) in &secrets {
        assert!(
            !contains(&logs, secret),
            "the log holds {what}:\n{}",
            String::from_utf8_lossy(&logs)
        );
    }
    let _ = std::io::stderr().write_all(
        format!(
            "searched {} log bytes and the data directory for {} secrets\n",
            logs.len(),
            secrets.len()
        )
        .as_bytes(),
    );
}

/// A concrete path for `route` among the resources of [`crate::access::Orgs`]: `blue`'s
/// cluster, node, swarm and action, `blue`'s team and grant, and `user` in user paths.
fn fill(route: &Route, orgs: &crate::access::Orgs, user: &str) -> String {
    let template = endpoint(route).template;
    let uuid = match route {
        Route::Cluster(_) | Route::ClusterDeploy(_) => orgs.blue_cluster.as_str(),
        Route::Node(_) | Route::NodeHealthCheck(_) => orgs.blue_node.as_str(),
        Route::Swarm(_) => orgs.blue_swarm.as_str(),
        _ => orgs.blue_action.as_str(),
    };
    let name = match route {
        Route::User(_)
        | Route::ApiKeys(_)
        | Route::ApiKey(..)
        | Route::Bundles(_)
        | Route::Bundle(..) => user,
        Route::Region(..)
        | Route::RegionVpcs(..)
        | Route::RegionSubnets(..)
        | Route::RegionSecurityGroups(..) => "us-east-1",
        Route::AvailabilityZone(..) => "us-east-1a",
        Route::NodeType(..) => "t3.micro",
        _ => "aws",
    };
    template
        .replace("{uuid}", uuid)
        .replace("{org}", "blue")
        .replace("{team}", "viewers")
        .replace("{id}", &orgs.grant)
        .replace("{name}", name)
        .replace("{key}", "default")
        .replace("{provider}", "aws")
        .replace("{region}", "us-east-1")
}

/// Every route and method of the route table, against its declared rule
/// (`routes::access`): `alice` views all of organization `blue`, `bob` belongs to `red`
/// only. For `bob` every resource of `blue` is a 404 (as if it did not exist); for `alice`
/// every change beyond `view` is a 403 naming the role it needs, and every read is allowed;
/// server-administrator routes are a 403 for both; a user's own routes are a 404 for
/// anyone else. No change is ever carried out for them: authorization comes first.
#[tokio::test]
async fn every_route_enforces_its_role_rule_for_members() {
    use flotilla_api::Role;
    use routes::Access;

    crypto_provider();
    let orgs = crate::access::Orgs::start().await;
    let server = &orgs.server;
    let before = server
        .get(&uri::node_cluster(&orgs.blue_cluster))
        .await
        .body;
    let mut checked = 0;
    let mut rules = BTreeSet::new();
    for route in routes::every_route() {
        let auth = endpoint(&route).auth;
        if auth != routes::Auth::Basic {
            continue;
        }
        for method in endpoint(&route).methods {
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("m");
            let rule = routes::access(&route, &method);
            rules.insert(format!("{rule:?}"));
            for (who, member) in [(&orgs.alice, true), (&orgs.bob, false)] {
                // User routes name the other user, so they test "not yours".
                let other = if member { "bob" } else { "alice" };
                let mut path = fill(&route, &orgs, other);
                if let Access::Create(_) = rule
                    && routes::endpoint(&route).namespaced
                {
                    // A create in organization `blue`, named by the namespace (a route
                    // without one — the launch wizard's lists — takes the caller's one
                    // organization).
                    path = path.replacen("/v1/", "/v1/blue/", 1);
                }
                let answer =
                    crate::access::call_as(server, who, method.clone(), &path, Some(json!({})))
                        .await;
                checked += 1;
                let error = answer.body["error"].as_str().unwrap_or("").to_owned();
                let context = format!("{method} {path} as {} ({rule:?}): {:?}", who.0, answer.body);
                match rule {
                    Access::Anyone | Access::Visible => {
                        // `/services/{id}` looks for a service that does not exist.
                        let missing_ok = matches!(route, Route::SwarmService(_));
                        assert!(
                            ![401, 403].contains(&answer.status)
                                && (answer.status != 404 || missing_ok),
                            "{context}"
                        );
                    }
                    Access::ServerAdmin => {
                        assert_eq!(answer.status, 403, "{context}");
                        assert!(error.contains("server administrator"), "{context}");
                    }
                    Access::SelfOrAdmin => {
                        assert_eq!(answer.status, 404, "{context}");
                        assert_eq!(error, format!("user '{other}' not found"), "{context}");
                    }
                    // Without a namespace, `bob`'s lists are for his own organization,
                    // which he manages.
                    Access::Create(_) if !member && !endpoint(&route).namespaced => {
                        assert!(![401, 403, 404].contains(&answer.status), "{context}");
                    }
                    Access::Resource(_) | Access::Org(_) | Access::Create(_) if !member => {
                        assert_eq!(answer.status, 404, "{context}");
                    }
                    Access::Resource(Role::View) | Access::Org(Role::View) => {
                        assert!(![401, 403, 404].contains(&answer.status), "{context}");
                    }
                    Access::Resource(role) | Access::Org(role) | Access::Create(role) => {
                        assert_eq!(answer.status, 403, "{context}");
                        assert!(error.contains(&format!("'{role}'")), "{context}");
                    }
                }
            }
        }
    }
    // Every kind of rule was met (a rule nobody checks would be a hole).
    for rule in [
        "Anyone",
        "Visible",
        "ServerAdmin",
        "SelfOrAdmin",
        "Create(Manage)",
        "Resource(View)",
        "Resource(Operate)",
        "Resource(Manage)",
        "Org(View)",
        "Org(Admin)",
    ] {
        assert!(rules.contains(rule), "{rule} in {rules:?}");
    }
    assert!(checked > 80, "{checked}");
    // Nothing was changed by the refused requests.
    let after = server
        .get(&uri::node_cluster(&orgs.blue_cluster))
        .await
        .body;
    assert_eq!(before["target_num_nodes"], after["target_num_nodes"]);
    assert_eq!(after["state"], "Deployed");
    orgs.server.stop().await;
}
