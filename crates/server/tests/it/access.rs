//! Access control through the HTTP API (issue #15): two organizations, a `view` member of
//! one and a `manage` member of the other. A member sees only its organization's clusters,
//! nodes, swarms, actions and events; a `view` member's change is refused with 403 naming
//! the role; a resource of another organization answers 404 like one that does not exist;
//! keys are shown once, stored hashed, and a revoked key is refused at once. (Every route's
//! rule, enumerated from the route table, is `security.rs`.)

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::uri;
use flotilla_core::fake::FakeCloud;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Reply, TestServer, config};

const LIMIT: Duration = Duration::from_secs(30);

/// Two organizations with a cluster each (deployed, with nodes), a swarm in `blue`, and
/// two members: `alice` views all of `blue`, `bob` manages all of `red`.
pub struct Orgs {
    pub server: TestServer,
    pub _dir: tempfile::TempDir,
    pub alice: (String, String),
    pub bob: (String, String),
    pub blue_cluster: String,
    pub red_cluster: String,
    pub blue_node: String,
    pub red_node: String,
    pub blue_swarm: String,
    pub blue_action: String,
    pub grant: String,
}

pub fn cluster_body(name: &str, nodes: u32) -> Value {
    json!({"name": name, "target_num_nodes": nodes,
        "region": "/api/infra/v1/region/aws/us-east-1/",
        "node_type": "/api/infra/v1/nodetype/aws/t3.micro/"})
}

/// A call as `who` (user, key).
pub async fn call_as(
    server: &TestServer,
    who: &(String, String),
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Reply {
    server
        .raw(
            method,
            path,
            body.map(|b| b.to_string()).as_deref(),
            Some((&who.0, &who.1)),
        )
        .await
}

async fn ok(reply: Reply, status: u16) -> Value {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    reply.body
}

/// A user created by the admin, with its first key (shown once).
pub async fn new_user(server: &TestServer, name: &str) -> (String, String) {
    let created = ok(
        server
            .call(Method::POST, &uri::users(), Some(json!({"username": name})))
            .await,
        201,
    )
    .await;
    let key = created["api_key"]["key"]
        .as_str()
        .expect("key shown")
        .to_owned();
    (name.to_owned(), key)
}

async fn create_cluster_in(server: &TestServer, org: &str, name: &str) -> (String, String) {
    let created = ok(
        server
            .call(
                Method::POST,
                &uri::node_clusters_in(org),
                Some(cluster_body(name, 2)),
            )
            .await,
        201,
    )
    .await;
    let uuid = created["uuid"].as_str().expect("uuid").to_owned();
    let deploy = server
        .call(Method::POST, &uri::node_cluster_deploy(&uuid), None)
        .await;
    assert_eq!(deploy.status, 202, "{:?}", deploy.body);
    server.wait_for_cluster(&uuid, "Deployed", LIMIT).await;
    let nodes = server
        .api
        .nodes(&format!("node_cluster={uuid}"))
        .await
        .expect("nodes");
    let node = nodes[0]["uuid"].as_str().expect("node").to_owned();
    let action = deploy.action_uri.expect("action uri");
    (uuid, format!("{node}|{action}"))
}

impl Orgs {
    pub async fn start() -> Orgs {
        let dir = tempfile::tempdir().expect("dir");
        let server = TestServer::start(config(&dir), Arc::new(FakeCloud::new()), None).await;
        for org in ["blue", "red"] {
            ok(
                server
                    .call(Method::POST, &uri::orgs(), Some(json!({"name": org})))
                    .await,
                201,
            )
            .await;
        }
        let alice = new_user(&server, "alice").await;
        let bob = new_user(&server, "bob").await;
        for (org, team, user) in [("blue", "viewers", "alice"), ("red", "ops", "bob")] {
            ok(
                server
                    .call(
                        Method::POST,
                        &uri::teams(org),
                        Some(json!({"name": team, "members": [user]})),
                    )
                    .await,
                201,
            )
            .await;
        }
        let grant = ok(
            server
                .call(
                    Method::POST,
                    &uri::grants("blue"),
                    Some(json!({"team": "viewers", "role": "view"})),
                )
                .await,
            201,
        )
        .await["id"]
            .as_str()
            .expect("grant id")
            .to_owned();
        ok(
            server
                .call(
                    Method::POST,
                    &uri::grants("red"),
                    Some(json!({"team": "ops", "role": "manage", "resource": "*"})),
                )
                .await,
            201,
        )
        .await;
        let (blue_cluster, blue) = create_cluster_in(&server, "blue", "blue-web").await;
        let (red_cluster, red) = create_cluster_in(&server, "red", "red-web").await;
        let (blue_node, blue_action) = blue.split_once('|').expect("pair");
        let red_node = red.split_once('|').expect("pair").0.to_owned();
        let swarm = ok(
            server
                .call(
                    Method::POST,
                    &uri::swarms_in("blue"),
                    Some(json!({"name": "blue-swarm", "region": "/api/infra/v1/region/aws/us-east-1/",
                        "manager_node_type": "/api/infra/v1/nodetype/aws/t3.micro/",
                        "manager_count": 1, "worker_count": 0})),
                )
                .await,
            201,
        )
        .await;
        let blue_action = blue_action
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .expect("uuid")
            .to_owned();
        Orgs {
            server,
            _dir: dir,
            alice,
            bob,
            blue_cluster,
            red_cluster,
            blue_node: blue_node.to_owned(),
            red_node,
            blue_swarm: swarm["uuid"].as_str().expect("swarm uuid").to_owned(),
            blue_action,
            grant,
        }
    }
}

fn uuids(list: &Value, field: &str) -> Vec<String> {
    list["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|o| o[field].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn a_member_lists_only_its_organizations_resources() {
    let orgs = Orgs::start().await;
    let server = &orgs.server;
    let list = |who: &(String, String), path: String| {
        let who = who.clone();
        async move { ok(call_as(server, &who, Method::GET, &path, None).await, 200).await }
    };
    // Clusters: alice sees blue's and its swarm's two, bob red's only.
    let alice_clusters = uuids(&list(&orgs.alice, uri::node_clusters()).await, "uuid");
    assert!(
        alice_clusters.contains(&orgs.blue_cluster),
        "{alice_clusters:?}"
    );
    assert!(
        !alice_clusters.contains(&orgs.red_cluster),
        "{alice_clusters:?}"
    );
    assert_eq!(
        alice_clusters.len(),
        3,
        "blue-web and the swarm's managers and workers"
    );
    let bob_clusters = uuids(&list(&orgs.bob, uri::node_clusters()).await, "uuid");
    assert_eq!(bob_clusters, vec![orgs.red_cluster.clone()]);
    // The node list's SQL filter agrees with `authz`: alice's nodes are exactly the nodes of
    // the clusters she sees.
    let mut expected = Vec::new();
    for cluster in &alice_clusters {
        for node in server
            .api
            .nodes(&format!("node_cluster={cluster}"))
            .await
            .expect("nodes")
        {
            expected.push(node["uuid"].as_str().expect("uuid").to_owned());
        }
    }
    let mut seen = uuids(
        &list(&orgs.alice, format!("{}?limit=1000", uri::nodes())).await,
        "uuid",
    );
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected);
    // Nodes, through the SQL path (a page) and the in-memory path (another filter).
    for path in [
        uri::nodes(),
        format!("{}?limit=1000", uri::nodes()),
        format!("{}?region=us-east-1", uri::nodes()),
    ] {
        let alice_nodes = list(&orgs.alice, path.clone()).await;
        let nodes = uuids(&alice_nodes, "uuid");
        assert!(nodes.contains(&orgs.blue_node), "{path}: {nodes:?}");
        assert!(!nodes.contains(&orgs.red_node), "{path}: {nodes:?}");
        assert_eq!(
            alice_nodes["meta"]["total_count"].as_u64(),
            Some(nodes.len() as u64),
            "{path}: the count is of what she may see"
        );
        let bob_nodes = uuids(&list(&orgs.bob, path.clone()).await, "uuid");
        assert!(bob_nodes.contains(&orgs.red_node) && !bob_nodes.contains(&orgs.blue_node));
    }
    // Swarms and actions.
    assert_eq!(
        uuids(&list(&orgs.alice, uri::swarms()).await, "uuid"),
        vec![orgs.blue_swarm.clone()]
    );
    assert!(uuids(&list(&orgs.bob, uri::swarms()).await, "uuid").is_empty());
    let alice_actions = list(&orgs.alice, uri::actions()).await;
    let objects: Vec<String> = uuids(&alice_actions, "object");
    assert!(!objects.is_empty());
    assert!(
        objects
            .iter()
            .all(|o| !o.contains(&orgs.red_cluster) && !o.contains(&orgs.red_node)),
        "{objects:?}"
    );
    // Actions record who did what.
    assert!(
        alice_actions["objects"]
            .as_array()
            .expect("objects")
            .iter()
            .all(|a| a["user"] == "admin" || a["user"] == "flotilla"),
        "{alice_actions:?}"
    );
    // Another organization's resources are 404, word for word like a missing one.
    let red = call_as(
        server,
        &orgs.alice,
        Method::GET,
        &uri::node_cluster(&orgs.red_cluster),
        None,
    )
    .await;
    assert_eq!(red.status, 404);
    assert_eq!(
        red.body["error"],
        format!("node cluster '{}' not found", orgs.red_cluster)
    );
    let missing = "5516c8b6-3d4b-4a52-9a1e-0f8f2d7b9c10";
    let none = call_as(
        server,
        &orgs.alice,
        Method::GET,
        &uri::node_cluster(missing),
        None,
    )
    .await;
    assert_eq!(none.status, 404);
    assert_eq!(
        none.body["error"],
        format!("node cluster '{missing}' not found")
    );
    // Organizations: each sees its own.
    assert_eq!(
        uuids(&list(&orgs.alice, uri::orgs()).await, "name"),
        vec!["blue".to_owned()]
    );
    orgs.server.stop().await;
}

#[tokio::test]
async fn a_view_member_is_refused_changes_with_403_naming_the_role() {
    let orgs = Orgs::start().await;
    let server = &orgs.server;
    let scale = call_as(
        server,
        &orgs.alice,
        Method::PATCH,
        &uri::node_cluster(&orgs.blue_cluster),
        Some(json!({"target_num_nodes": 3})),
    )
    .await;
    assert_eq!(scale.status, 403, "{:?}", scale.body);
    let message = scale.body["error"].as_str().expect("error");
    assert!(
        message.contains("'operate'") && message.contains("'view'"),
        "{message}"
    );
    let create = call_as(
        server,
        &orgs.alice,
        Method::POST,
        &uri::node_clusters_in("blue"),
        Some(cluster_body("alice-web", 1)),
    )
    .await;
    assert_eq!(create.status, 403, "{:?}", create.body);
    assert!(
        create.body["error"]
            .as_str()
            .expect("error")
            .contains("'manage'")
    );
    // Nothing changed.
    let cluster = server.get(&uri::node_cluster(&orgs.blue_cluster)).await;
    assert_eq!(cluster.body["target_num_nodes"], 2);
    // Bob manages red: he scales his own cluster and creates in his organization (his only
    // one, so without naming it), and gets 404 for blue's.
    let scaled = call_as(
        server,
        &orgs.bob,
        Method::PATCH,
        &uri::node_cluster(&orgs.red_cluster),
        Some(json!({"target_num_nodes": 3})),
    )
    .await;
    assert_eq!(scaled.status, 202, "{:?}", scaled.body);
    let created = call_as(
        server,
        &orgs.bob,
        Method::POST,
        &uri::node_clusters(),
        Some(cluster_body("bob-web", 1)),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let visible = ok(
        call_as(server, &orgs.bob, Method::GET, &uri::node_clusters(), None).await,
        200,
    )
    .await;
    assert_eq!(uuids(&visible, "name").len(), 2, "bob-web went to red");
    let blue = call_as(
        server,
        &orgs.bob,
        Method::PATCH,
        &uri::node_cluster(&orgs.blue_cluster),
        Some(json!({"target_num_nodes": 3})),
    )
    .await;
    assert_eq!(blue.status, 404, "{:?}", blue.body);
    // Revoking alice's grant takes effect at her next request.
    ok(
        server
            .call(Method::DELETE, &uri::grant("blue", &orgs.grant), None)
            .await,
        200,
    )
    .await;
    let gone = call_as(
        server,
        &orgs.alice,
        Method::GET,
        &uri::node_cluster(&orgs.blue_cluster),
        None,
    )
    .await;
    assert_eq!(gone.status, 404);
    orgs.server.stop().await;
}

/// What the database of the server in `dir` holds: everything `pg_dump` writes of its
/// PostgreSQL database (`url`), else the bytes of its SQLite files.
fn stored_database(dir: &tempfile::TempDir, url: Option<&str>) -> String {
    match url {
        Some(url) => flotilla_testkit::postgres::dump(url).expect("pg_dump"),
        None => {
            let mut stored = Vec::new();
            for entry in std::fs::read_dir(dir.path()).expect("dir") {
                let path = entry.expect("entry").path();
                if path.is_file() {
                    stored.extend(std::fs::read(&path).expect("read"));
                }
            }
            String::from_utf8_lossy(&stored).into_owned()
        }
    }
}

#[tokio::test]
async fn keys_are_shown_once_stored_hashed_and_refused_once_revoked() {
    let dir = tempfile::tempdir().expect("dir");
    let config = config(&dir);
    // The database the server used: its PostgreSQL database, else the SQLite files in `dir`.
    let database_url = config.database_url.clone();
    let server = TestServer::start(config, Arc::new(FakeCloud::new()), None).await;
    let carol = new_user(&server, "carol").await;
    let second = ok(
        call_as(
            &server,
            &carol,
            Method::POST,
            &uri::api_keys("carol"),
            Some(json!({"name": "ci"})),
        )
        .await,
        201,
    )
    .await;
    let ci = (
        "carol".to_owned(),
        second["key"].as_str().expect("key").to_owned(),
    );
    assert_ne!(ci.1, carol.1);
    // Both keys work; listing them shows names, never keys.
    for who in [&carol, &ci] {
        ok(
            call_as(&server, who, Method::GET, &uri::user("carol"), None).await,
            200,
        )
        .await;
    }
    let keys = ok(
        call_as(&server, &carol, Method::GET, &uri::api_keys("carol"), None).await,
        200,
    )
    .await;
    let text = keys.to_string();
    assert!(!text.contains(&ci.1) && !text.contains(&carol.1), "{text}");
    let mut names = uuids(&keys, "name");
    names.sort();
    assert_eq!(names, vec!["ci", "default"]);
    // Another user's keys are not carol's to see (404 as if there were no such user).
    let admins = call_as(&server, &carol, Method::GET, &uri::api_keys("admin"), None).await;
    assert_eq!(admins.status, 404, "{:?}", admins.body);
    // Revoked: refused at the very next request, the other key still works.
    ok(
        call_as(
            &server,
            &carol,
            Method::DELETE,
            &uri::api_key("carol", "ci"),
            None,
        )
        .await,
        200,
    )
    .await;
    let refused = call_as(&server, &ci, Method::GET, &uri::user("carol"), None).await;
    assert_eq!(refused.status, 401, "{:?}", refused.body);
    ok(
        call_as(&server, &carol, Method::GET, &uri::user("carol"), None).await,
        200,
    )
    .await;
    // A password signs in too; a short one is refused naming the field.
    let short = call_as(
        &server,
        &carol,
        Method::PATCH,
        &uri::user("carol"),
        Some(json!({"password": "short"})),
    )
    .await;
    assert_eq!(short.status, 400);
    assert!(
        short.body["error"]
            .as_str()
            .expect("error")
            .starts_with("password:")
    );
    ok(
        call_as(
            &server,
            &carol,
            Method::PATCH,
            &uri::user("carol"),
            Some(json!({"password": "a long enough password"})),
        )
        .await,
        200,
    )
    .await;
    let by_password = (carol.0.clone(), "a long enough password".to_owned());
    ok(
        call_as(
            &server,
            &by_password,
            Method::GET,
            &uri::user("carol"),
            None,
        )
        .await,
        200,
    )
    .await;
    let before_removal = stored_database(&dir, database_url.as_deref());
    // A removed user is refused at once, with its key and its password.
    ok(
        server.call(Method::DELETE, &uri::user("carol"), None).await,
        200,
    )
    .await;
    for who in [&carol, &by_password] {
        let gone = call_as(&server, who, Method::GET, &uri::user("carol"), None).await;
        assert_eq!(gone.status, 401, "{:?}", gone.body);
    }
    // A dashboard session's id and CSRF token are not stored either.
    let admin = server.credentials.clone();
    let (status, cookie, _) = dashboard_login(&server, &admin.username, &admin.api_key).await;
    assert_eq!(status, 200);
    let cookie = cookie.expect("cookie");
    let session_id = cookie.trim_start_matches("flotilla_session=").to_owned();
    let session: Value = server
        .client
        .get(format!("{}{}", server.base, uri::session()))
        .header("Cookie", &cookie)
        .send()
        .await
        .expect("GET /session")
        .json()
        .await
        .expect("JSON");
    let csrf_token = session["csrf_token"].as_str().expect("token").to_owned();
    server.stop().await;
    // Neither key nor password is in the database (its files, or everything `pg_dump`
    // writes of it, before carol's removal and after).
    let stored = before_removal + &stored_database(&dir, database_url.as_deref());
    for secret in [&carol.1, &ci.1, &by_password.1, &session_id, &csrf_token] {
        assert!(
            !stored.contains(secret.as_str()),
            "a secret is in the database"
        );
    }
    assert!(
        stored.contains("$argon2id$"),
        "the password is stored as argon2"
    );
}

#[tokio::test]
async fn a_namespaced_list_shows_only_that_organizations_part() {
    let orgs = Orgs::start().await;
    let server = &orgs.server;
    // carol is in both organizations.
    let carol = new_user(server, "carol").await;
    for (org, team) in [("blue", "viewers"), ("red", "ops")] {
        ok(
            server
                .call(
                    Method::PATCH,
                    &uri::team(org, team),
                    Some(json!({"add_members": ["carol"]})),
                )
                .await,
            200,
        )
        .await;
    }
    let list = |path: String| {
        let carol = carol.clone();
        async move { ok(call_as(server, &carol, Method::GET, &path, None).await, 200).await }
    };
    let everything = uuids(&list(uri::node_clusters()).await, "uuid");
    assert!(everything.contains(&orgs.blue_cluster) && everything.contains(&orgs.red_cluster));
    assert_eq!(
        uuids(&list(uri::node_clusters_in("red")).await, "uuid"),
        vec![orgs.red_cluster.clone()]
    );
    let blue = uuids(&list(uri::node_clusters_in("blue")).await, "uuid");
    assert!(blue.contains(&orgs.blue_cluster) && !blue.contains(&orgs.red_cluster));
    // The node page (cut in SQL) and the swarms follow the namespace.
    let red_nodes = list(uri::nodes_in("red")).await;
    let red_node_clusters: Vec<String> = red_nodes["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|n| n["node_cluster"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(!red_node_clusters.is_empty());
    assert!(
        red_node_clusters
            .iter()
            .all(|c| c.contains(&orgs.red_cluster)),
        "{red_node_clusters:?}"
    );
    let red_node_uuids = uuids(&red_nodes, "uuid");
    assert!(red_node_uuids.contains(&orgs.red_node));
    assert!(!red_node_uuids.contains(&orgs.blue_node));
    assert!(uuids(&list(uri::swarms_in("red")).await, "uuid").is_empty());
    assert_eq!(
        uuids(&list(uri::swarms_in("blue")).await, "uuid"),
        vec![orgs.blue_swarm.clone()]
    );
    // The administrator's namespaced list is cut the same way.
    let admin_red = ok(server.get(&uri::node_clusters_in("red")).await, 200).await;
    assert_eq!(uuids(&admin_red, "uuid"), vec![orgs.red_cluster.clone()]);
    // An organization the caller is not in is a namespace that does not exist.
    let foreign = call_as(
        server,
        &orgs.alice,
        Method::GET,
        &uri::node_clusters_in("red"),
        None,
    )
    .await;
    assert_eq!(foreign.status, 404, "{:?}", foreign.body);
    orgs.server.stop().await;
}

/// A dashboard login (`POST /session`) as `user` with `secret`: the status and the cookie.
async fn dashboard_login(
    server: &TestServer,
    user: &str,
    secret: &str,
) -> (u16, Option<String>, Option<String>) {
    let answer = server
        .client
        .post(format!("{}{}", server.base, uri::session()))
        .json(&json!({"user": user, "key": secret}))
        .send()
        .await
        .expect("login");
    let header = |name: &str| {
        answer
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let cookie = header("set-cookie").map(|c| c.split(';').next().unwrap_or("").to_owned());
    (answer.status().as_u16(), cookie, header("retry-after"))
}

async fn with_cookie(server: &TestServer, cookie: &str) -> u16 {
    server
        .client
        .get(format!("{}{}", server.base, uri::node_clusters()))
        .header("Cookie", cookie)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_dashboard_session_ends_with_the_credential_that_opened_it() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(config(&dir), Arc::new(FakeCloud::new()), None).await;
    let dana = new_user(&server, "dana").await;
    let password = "dana's long password";
    ok(
        call_as(
            &server,
            &dana,
            Method::PATCH,
            &uri::user("dana"),
            Some(json!({"password": password})),
        )
        .await,
        200,
    )
    .await;
    // A session opened with a key ends when that key is revoked…
    let (status, cookie, _) = dashboard_login(&server, "dana", &dana.1).await;
    assert_eq!(status, 200);
    let by_key = cookie.expect("cookie");
    let (_, by_password, _) = dashboard_login(&server, "dana", password).await;
    let by_password = by_password.expect("cookie");
    assert_eq!(with_cookie(&server, &by_key).await, 200);
    assert_eq!(with_cookie(&server, &by_password).await, 200);
    let ci = ok(
        call_as(
            &server,
            &dana,
            Method::POST,
            &uri::api_keys("dana"),
            Some(json!({"name": "ci"})),
        )
        .await,
        201,
    )
    .await["key"]
        .as_str()
        .expect("key")
        .to_owned();
    ok(
        server
            .call(Method::DELETE, &uri::api_key("dana", "default"), None)
            .await,
        200,
    )
    .await;
    assert_eq!(with_cookie(&server, &by_key).await, 401, "revoked key");
    // …while one opened with the password lives on, until the password changes.
    assert_eq!(with_cookie(&server, &by_password).await, 200);
    ok(
        server
            .call(
                Method::PATCH,
                &uri::user("dana"),
                Some(json!({"password": "another long password"})),
            )
            .await,
        200,
    )
    .await;
    assert_eq!(
        with_cookie(&server, &by_password).await,
        401,
        "new password"
    );
    // A removed user's sessions end too.
    let (_, by_ci, _) = dashboard_login(&server, "dana", &ci).await;
    let by_ci = by_ci.expect("cookie");
    assert_eq!(with_cookie(&server, &by_ci).await, 200);
    ok(
        server.call(Method::DELETE, &uri::user("dana"), None).await,
        200,
    )
    .await;
    assert_eq!(with_cookie(&server, &by_ci).await, 401, "removed user");
    server.stop().await;
}

#[tokio::test]
async fn dashboard_sign_in_with_a_password_is_throttled_with_retry_after() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(config(&dir), Arc::new(FakeCloud::new()), None).await;
    let erin = new_user(&server, "erin").await;
    ok(
        call_as(
            &server,
            &erin,
            Method::PATCH,
            &uri::user("erin"),
            Some(json!({"password": "erin's long password"})),
        )
        .await,
        200,
    )
    .await;
    for attempt in 1..=5 {
        let (status, _, _) = dashboard_login(&server, "erin", "a wrong password").await;
        assert_eq!(status, 401, "failure {attempt}");
    }
    let (status, cookie, retry_after) = dashboard_login(&server, "erin", "a wrong password").await;
    assert_eq!(status, 429);
    assert!(cookie.is_none());
    let seconds: u64 = retry_after
        .and_then(|s| s.parse().ok())
        .expect("Retry-After");
    assert!((1..=300).contains(&seconds));
    // While it lasts even the right password is refused from this address (not checked).
    let (status, _, _) = dashboard_login(&server, "erin", "erin's long password").await;
    assert_eq!(status, 429);
    // Another user from the same address is not blocked by erin's counter.
    let (status, _, _) = dashboard_login(&server, "admin", &server.credentials.api_key).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn cluster_names_are_unique_per_organization_and_do_not_reveal_anothers() {
    let orgs = Orgs::start().await;
    let server = &orgs.server;
    // `blue-web` exists in blue, which bob cannot see: his create of the same name in red
    // succeeds, where a server-wide check would have answered 409 and told him it exists.
    let created = call_as(
        server,
        &orgs.bob,
        Method::POST,
        &uri::node_clusters(),
        Some(cluster_body("blue-web", 1)),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_ne!(
        created.body["uuid"].as_str(),
        Some(orgs.blue_cluster.as_str())
    );
    // Inside one organization the name is taken: 409 naming the field.
    let again = call_as(
        server,
        &orgs.bob,
        Method::POST,
        &uri::node_clusters(),
        Some(cluster_body("blue-web", 1)),
    )
    .await;
    assert_eq!(again.status, 409, "{:?}", again.body);
    assert!(
        again.body["error"]
            .as_str()
            .expect("error")
            .starts_with("name:")
    );
    // A swarm named like blue's, in red: allowed as well.
    let swarm = call_as(
        server,
        &orgs.bob,
        Method::POST,
        &uri::swarms(),
        Some(
            json!({"name": "blue-swarm", "region": "/api/infra/v1/region/aws/us-east-1/",
            "manager_node_type": "/api/infra/v1/nodetype/aws/t3.micro/",
            "manager_count": 1, "worker_count": 0}),
        ),
    )
    .await;
    assert_eq!(swarm.status, 201, "{:?}", swarm.body);
    orgs.server.stop().await;
}

/// Client bundles (issue #15): a user's own, the zip (with the key) only in the answer that
/// creates it, an unknown swarm named in the error, revoked once.
#[tokio::test]
async fn bundles_are_a_users_own_shown_once_and_revoked_once() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(config(&dir), Arc::new(FakeCloud::new()), None).await;
    let dave = new_user(&server, "dave").await;
    let missing = call_as(
        &server,
        &dave,
        Method::POST,
        &uri::bundles("dave"),
        Some(json!({"swarm": "nope"})),
    )
    .await;
    assert_eq!(missing.status, 404, "{:?}", missing.body);
    assert!(
        missing.body["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("swarm:"),
        "{:?}",
        missing.body
    );
    let created = ok(
        call_as(
            &server,
            &dave,
            Method::POST,
            &uri::bundles("dave"),
            Some(json!({})),
        )
        .await,
        201,
    )
    .await;
    let id = created["bundle"]["id"].as_str().expect("id").to_owned();
    assert_eq!(
        created["docker_host"],
        Value::Null,
        "no swarm: no DOCKER_HOST"
    );
    let zip = base64::engine::general_purpose::STANDARD
        .decode(created["zip"].as_str().expect("zip"))
        .expect("base64");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("a zip");
    let mut key = String::new();
    std::io::Read::read_to_string(&mut archive.by_name("key.pem").expect("key.pem"), &mut key)
        .expect("read");
    assert!(key.contains("PRIVATE KEY"), "{key}");
    // Listed without the key; not another user's to see.
    let listed = ok(
        call_as(&server, &dave, Method::GET, &uri::bundles("dave"), None).await,
        200,
    )
    .await;
    assert_eq!(uuids(&listed, "id"), vec![id.clone()]);
    assert!(!listed.to_string().contains("PRIVATE"), "{listed}");
    let other = new_user(&server, "erin").await;
    let theirs = call_as(&server, &other, Method::GET, &uri::bundles("dave"), None).await;
    assert_eq!(theirs.status, 404, "{:?}", theirs.body);
    // Revoked once.
    let revoked = ok(
        call_as(
            &server,
            &dave,
            Method::DELETE,
            &uri::bundle("dave", &id),
            None,
        )
        .await,
        200,
    )
    .await;
    assert!(revoked["revoked_datetime"].is_string(), "{revoked}");
    let again = call_as(
        &server,
        &dave,
        Method::DELETE,
        &uri::bundle("dave", &id),
        None,
    )
    .await;
    assert_eq!(again.status, 404, "{:?}", again.body);
}
