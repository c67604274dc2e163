//! The websockets (events §6, action logs §2.2) and BYO tokens (§3.8) against `FakeCloud`,
//! through a real websocket client.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use flotilla_api::uri;
use flotilla_core::fake::FakeCloud;
use futures::{SinkExt as _, StreamExt as _};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::{TestServer, config};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const LIMIT: Duration = Duration::from_secs(20);

async fn server() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(config(&dir), Arc::new(FakeCloud::new()), None).await;
    (server, dir)
}

/// Opens a websocket with the server's credentials (or `auth`); the handshake's status
/// when it is refused.
async fn connect(
    server: &TestServer,
    path: &str,
    auth: Option<(&str, &str)>,
) -> Result<Socket, u16> {
    let url = format!("{}{path}", server.base.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().expect("request");
    let (user, key) = auth.unwrap_or((&server.credentials.username, &server.credentials.api_key));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"));
    request.headers_mut().insert(
        "Authorization",
        format!("Basic {basic}").parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("websocket {path}: {other}"),
    }
}

/// The next JSON text frame; `None` once the server closed the socket.
async fn next_json(socket: &mut Socket) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(LIMIT, socket.next())
            .await
            .expect("a frame in time")?;
        match message.expect("frame") {
            Message::Text(text) => return Some(serde_json::from_str(&text).expect("JSON frame")),
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

async fn create_and_deploy(server: &TestServer, name: &str, nodes: u32) -> (String, String) {
    let body = json!({"name": name, "target_num_nodes": nodes,
        "region": "/api/infra/v1/region/aws/us-east-1/",
        "node_type": "/api/infra/v1/nodetype/aws/t3.micro/"});
    let created = server
        .call(Method::POST, &uri::node_clusters(), Some(body))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let uuid = created.body["uuid"].as_str().expect("uuid").to_owned();
    let deploy = server
        .call(Method::POST, &uri::node_cluster_deploy(&uuid), None)
        .await;
    assert_eq!(deploy.status, 202, "{:?}", deploy.body);
    (uuid, deploy.action_uri.expect("action header"))
}

#[tokio::test]
async fn events_need_credentials_before_the_upgrade() {
    let (server, _dir) = server().await;
    let user = server.credentials.username.clone();
    for path in ["/api/audit/v1/events", "/api/audit/v1/events/"] {
        assert_eq!(
            connect(&server, path, Some((&user, "wrong"))).await.err(),
            Some(401)
        );
    }
    assert_eq!(
        connect(&server, "/api/audit/v1/someone-else/events", None)
            .await
            .err(),
        Some(404)
    );
    let plain = server.get("/api/audit/v1/events").await;
    assert!(plain.status >= 400, "{plain:?}");
    server.stop().await;
}

#[tokio::test]
async fn events_describe_every_change_with_parents_and_answer_pings() {
    let (server, _dir) = server().await;
    let user = server.credentials.username.clone();
    let mut all = connect(&server, &format!("/api/audit/v1/{user}/events"), None)
        .await
        .expect("events");
    let mut nodes = connect(&server, "/api/audit/v1/events/?type=node", None)
        .await
        .expect("node events");
    let auth = next_json(&mut all).await.expect("auth frame");
    assert_eq!(auth["type"], "auth");
    assert_eq!(next_json(&mut nodes).await.expect("auth")["type"], "auth");

    all.send(Message::Ping(b"hi".to_vec().into()))
        .await
        .expect("ping");
    let (uuid, action_uri) = create_and_deploy(&server, "web", 3).await;
    let cluster_uri = uri::node_cluster(&uuid);

    let mut seen = Vec::new();
    let mut pong = false;
    while !seen.iter().any(|e: &Value| {
        e["type"] == "nodecluster" && e["action"] == "update" && e["state"] == "Deployed"
    }) {
        let message = tokio::time::timeout(LIMIT, all.next())
            .await
            .expect("events in time")
            .expect("open")
            .expect("frame");
        match message {
            Message::Pong(data) => pong = data.as_ref() == b"hi",
            Message::Text(text) => seen.push(serde_json::from_str(&text).expect("JSON")),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert!(pong, "the ping was answered");
    for event in &seen {
        let keys: Vec<&str> = event
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "action",
                "datetime",
                "parents",
                "resource_uri",
                "state",
                "type",
                "uuid"
            ],
            "{event}"
        );
        let datetime = event["datetime"].as_str().expect("datetime");
        assert!(
            datetime.len() == 20 && datetime.ends_with('Z') && &datetime[10..11] == "T",
            "ISO 8601: {datetime}"
        );
        assert!(uri::is_uuid4(event["uuid"].as_str().expect("uuid")));
    }
    let find = |kind: &str, action: &str, state: &str| {
        seen.iter()
            .find(|e| e["type"] == kind && e["action"] == action && e["state"] == state)
            .unwrap_or_else(|| panic!("no {kind} {action} {state} in {seen:#?}"))
    };
    let created = find("nodecluster", "create", "Init");
    assert_eq!(created["resource_uri"], cluster_uri.as_str());
    assert_eq!(created["parents"], json!([]));
    find("nodecluster", "update", "Deploying");
    let deploy_action = find("action", "create", "In progress");
    assert_eq!(deploy_action["resource_uri"], action_uri.as_str());
    assert_eq!(deploy_action["parents"], json!([cluster_uri]));
    find("action", "update", "Success");
    let node_events: Vec<&Value> = seen.iter().filter(|e| e["type"] == "node").collect();
    assert!(
        node_events
            .iter()
            .filter(|e| e["action"] == "create")
            .count()
            >= 3,
        "{node_events:#?}"
    );
    for event in &node_events {
        assert_eq!(event["parents"], json!([cluster_uri]), "{event}");
    }

    // The filtered listener saw the node events only.
    for expected in node_events.iter().take(3) {
        let event = next_json(&mut nodes).await.expect("node event");
        assert_eq!(event["type"], "node");
        assert_eq!(event["resource_uri"], expected["resource_uri"]);
    }

    // Termination: delete events for the nodes and the cluster.
    let deleted = server.call(Method::DELETE, &cluster_uri, None).await;
    assert_eq!(deleted.status, 202, "{:?}", deleted.body);
    loop {
        let event = next_json(&mut all).await.expect("event");
        if event["type"] == "nodecluster" && event["action"] == "delete" {
            assert_eq!(event["state"], "Terminated");
            break;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn action_logs_tail_and_follow_until_the_action_ends() {
    let (server, _dir) = server().await;
    let (_, action_uri) = create_and_deploy(&server, "logs", 2).await;
    let action_uuid = action_uri
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .expect("uuid");
    let user = server.credentials.username.clone();
    let mut follow = connect(
        &server,
        &format!("/api/audit/v1/{user}/action/{action_uuid}/logs/?follow=true"),
        None,
    )
    .await
    .expect("logs");
    let mut followed = Vec::new();
    while let Some(frame) = next_json(&mut follow).await {
        assert_eq!(frame["type"], "log", "{frame}");
        assert!(frame["timestamp"].as_i64().is_some(), "{frame}");
        followed.push(frame["log"].as_str().expect("line").to_owned());
    }
    let action = server.get(&action_uri).await.body;
    assert_eq!(action["state"], "Success", "closed once the action ended");
    let stored: Vec<&str> = action["logs"]
        .as_str()
        .expect("logs")
        .lines()
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(followed, stored);

    let mut tail = connect(
        &server,
        &format!("/api/audit/v1/action/{action_uuid}/logs/?follow=false&tail=2"),
        None,
    )
    .await
    .expect("logs");
    let mut last = Vec::new();
    while let Some(frame) = next_json(&mut tail).await {
        last.push(frame["log"].as_str().expect("line").to_owned());
    }
    assert_eq!(last, stored[stored.len() - 2..]);

    assert_eq!(
        connect(
            &server,
            "/api/audit/v1/action/5516c8b6-3d4b-4a52-9a1e-0f8f2d7b9c10/logs/",
            None
        )
        .await
        .err(),
        Some(404)
    );
    server.stop().await;
}

#[tokio::test]
async fn byo_tokens_are_created_once_and_consumed_once() {
    let (server, dir) = server().await;
    let user = server.credentials.username.clone();
    let mut tokens = Vec::new();
    for path in [
        "/api/infra/v1/token/",
        &format!("/api/infra/v1/{user}/token"),
    ] {
        let reply = server.call(Method::POST, path, None).await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        let token = reply.body["token"].as_str().expect("token").to_owned();
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(reply.body.as_object().map(|o| o.len()), Some(1));
        tokens.push(token);
    }
    assert_ne!(tokens[0], tokens[1]);
    assert_eq!(
        server.get(&uri::token()).await.status,
        405,
        "tokens cannot be listed"
    );
    server.stop().await;

    // A token is kept only as its SHA-256 and works once (what agent registration uses).
    let store = config(&dir).open_store().await.expect("store");
    use sha2::Digest as _;
    let hash = hex::encode(sha2::Sha256::digest(tokens[0].as_bytes()));
    let consume = |key: String| {
        let store = store.clone();
        async move { store.consume_byo_token(&key, 1).await.expect("consume") }
    };
    assert_eq!(consume(tokens[0].clone()).await, None, "not stored as is");
    assert_eq!(consume(hash.clone()).await, Some(user));
    assert_eq!(consume(hash).await, None, "used up");
    store.close().await;
}

#[tokio::test]
async fn an_organizations_events_stream_shows_only_that_organization() {
    let (server, _dir) = server().await;
    for org in ["blue", "red"] {
        let created = server
            .call(Method::POST, &uri::orgs(), Some(json!({"name": org})))
            .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
    }
    // The administrator's stream in red's namespace.
    let mut red_events = connect(&server, "/api/audit/v1/red/events", None)
        .await
        .expect("events");
    assert_eq!(
        next_json(&mut red_events).await.expect("auth")["type"],
        "auth"
    );
    let cluster = |name: &str| {
        json!({"name": name, "target_num_nodes": 1,
            "region": "/api/infra/v1/region/aws/us-east-1/",
            "node_type": "/api/infra/v1/nodetype/aws/t3.micro/"})
    };
    // blue's cluster first: its events are published before red's.
    let blue = server
        .call(
            Method::POST,
            &uri::node_clusters_in("blue"),
            Some(cluster("b")),
        )
        .await;
    assert_eq!(blue.status, 201, "{:?}", blue.body);
    let red = server
        .call(
            Method::POST,
            &uri::node_clusters_in("red"),
            Some(cluster("r")),
        )
        .await;
    assert_eq!(red.status, 201, "{:?}", red.body);
    let red_uri = uri::node_cluster(red.body["uuid"].as_str().expect("uuid"));
    let first = loop {
        let event = next_json(&mut red_events).await.expect("an event");
        if event["type"] == "nodecluster" {
            break event;
        }
    };
    assert_eq!(first["resource_uri"], json!(red_uri), "{first}");
    server.stop().await;
}
