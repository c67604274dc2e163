//! Linking AWS keys (`provider/aws/credentials/`) against `FakeCloud`, which accepts keys
//! whose id starts with `AKIA`: validation decides, refused keys change nothing, the secret
//! is never shown, and nothing is stored in clear.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use flotilla_core::cloud::INVALID_CREDENTIALS;
use flotilla_core::fake::FakeCloud;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{TestServer, config};

const PATH: &str = "/api/infra/v1/provider/aws/credentials/";
const KEY_ID: &str = "AKIALINKTEST0001";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYLINKSECRET";

async fn link(server: &TestServer, body: Value) -> crate::harness::Reply {
    server.call(Method::PUT, PATH, Some(body)).await
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[tokio::test]
async fn valid_keys_are_linked_and_the_secret_is_never_shown() {
    let dir = tempfile::tempdir().expect("dir");
    let cloud = Arc::new(FakeCloud::new());
    let server = TestServer::start(config(&dir), cloud.clone(), None).await;

    let before = server.get(PATH).await;
    assert_eq!(before.status, 200, "{:?}", before.body);
    assert_eq!(before.body["linked"], false);
    assert_eq!(before.body["access_key_id"], Value::Null);

    let reply = link(
        &server,
        json!({"access_key_id": KEY_ID, "secret_access_key": SECRET}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["linked"], true);
    assert_eq!(reply.body["access_key_id"], KEY_ID);
    let regions = reply.body["validation"]["regions"]
        .as_array()
        .expect("regions");
    assert!(regions.iter().all(|r| r["result"] == "ok"), "{regions:?}");
    assert!(!reply.body.to_string().contains(SECRET));
    assert_eq!(cloud.linked_key_id().as_deref(), Some(KEY_ID));

    let shown = server.get(PATH).await;
    assert_eq!(shown.status, 200);
    assert_eq!(shown.body["linked"], true);
    assert_eq!(shown.body["access_key_id"], KEY_ID);
    assert!(!shown.body.to_string().contains(SECRET), "{:?}", shown.body);
    server.stop().await;

    // Nothing in clear at rest: the database, its WAL and shared memory.
    for name in ["flotilla.db", "flotilla.db-wal", "flotilla.db-shm"] {
        let Ok(bytes) = std::fs::read(dir.path().join(name)) else {
            continue;
        };
        assert!(!contains(&bytes, SECRET), "{name} holds the secret");
        assert!(!contains(&bytes, KEY_ID), "{name} holds the access key id");
    }
    let mode = std::fs::metadata(dir.path().join("secret.key"))
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The next start decrypts them, for the binary to connect with.
    let installation = flotilla_server::initialize(&config(&dir))
        .await
        .expect("initialize");
    let keys = installation.aws_keys.clone().expect("linked keys");
    assert_eq!(
        (keys.access_key_id.as_str(), keys.secret_access_key.as_str()),
        (KEY_ID, SECRET)
    );
    assert!(!format!("{installation:?}").contains(SECRET));
}

#[tokio::test]
async fn refused_keys_are_a_400_with_the_reasons_and_change_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let cloud = Arc::new(FakeCloud::new());
    let server = TestServer::start(config(&dir), cloud.clone(), None).await;
    let ok = link(
        &server,
        json!({"access_key_id": KEY_ID, "secret_access_key": SECRET}),
    )
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);

    let refused = link(
        &server,
        json!({"access_key_id": "BADKEY", "secret_access_key": "nope", "session_token": "t"}),
    )
    .await;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    let message = refused.body["error"].as_str().expect("error");
    assert!(message.starts_with(INVALID_CREDENTIALS), "{message}");
    assert!(
        message.contains("bad credentials: AuthFailure"),
        "{message}"
    );
    assert!(
        message.contains("aws ec2 run-instances --dry-run"),
        "{message}"
    );

    assert_eq!(cloud.linked_key_id().as_deref(), Some(KEY_ID));
    let shown = server.get(PATH).await;
    assert_eq!(shown.body["access_key_id"], KEY_ID);
    server.stop().await;
    let installation = flotilla_server::initialize(&config(&dir))
        .await
        .expect("initialize");
    assert_eq!(
        installation.aws_keys.map(|k| k.access_key_id).as_deref(),
        Some(KEY_ID)
    );
}

#[tokio::test]
async fn missing_or_empty_fields_are_named() {
    let dir = tempfile::tempdir().expect("dir");
    let cloud = Arc::new(FakeCloud::new());
    let server = TestServer::start(config(&dir), cloud.clone(), None).await;
    for (body, expected) in [
        (
            json!({"secret_access_key": SECRET}),
            "access_key_id: this field is required",
        ),
        (
            json!({"access_key_id": KEY_ID}),
            "secret_access_key: this field is required",
        ),
        (
            json!({"access_key_id": " ", "secret_access_key": SECRET}),
            "access_key_id: this field may not be empty",
        ),
        (
            json!({"access_key_id": KEY_ID, "secret_access_key": ""}),
            "secret_access_key: this field may not be empty",
        ),
        (
            json!({"access_key_id": 12, "secret_access_key": SECRET}),
            "access_key_id: must be a string",
        ),
        (
            json!({"access_key_id": KEY_ID, "secret_access_key": SECRET, "session_token": 1}),
            "session_token: must be a string",
        ),
    ] {
        let reply = link(&server, body).await;
        assert_eq!(reply.status, 400, "{:?}", reply.body);
        assert_eq!(reply.body["error"], expected);
    }
    assert_eq!(cloud.calls("link_credentials"), 0);
    assert_eq!(server.get(PATH).await.body["linked"], false);

    let other = server
        .call(
            Method::PUT,
            "/api/infra/v1/provider/gce/credentials/",
            Some(json!({"access_key_id": KEY_ID, "secret_access_key": SECRET})),
        )
        .await;
    assert_eq!(other.status, 404, "{:?}", other.body);
    let post = server.call(Method::POST, PATH, Some(json!({}))).await;
    assert_eq!(post.status, 405);
    server.stop().await;
}

#[tokio::test]
async fn the_provider_is_available_once_usable_keys_are_linked() {
    let dir = tempfile::tempdir().expect("dir");
    let cloud = Arc::new(FakeCloud::new());
    cloud.set_no_credentials(true);
    let server = TestServer::start(config(&dir), cloud.clone(), None).await;
    let provider = server.get("/api/infra/v1/provider/aws/").await;
    assert_eq!(provider.status, 200, "{:?}", provider.body);
    assert_eq!(provider.body["available"], false);
    let reply = link(
        &server,
        json!({"access_key_id": KEY_ID, "secret_access_key": SECRET}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let provider = server.get("/api/infra/v1/provider/aws/").await;
    assert_eq!(provider.body["available"], true);
    server.stop().await;
}

#[tokio::test]
async fn a_key_file_readable_by_others_stops_the_start() {
    let dir = tempfile::tempdir().expect("dir");
    flotilla_server::initialize(&config(&dir))
        .await
        .expect("first start");
    let key = dir.path().join("secret.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let error = flotilla_server::initialize(&config(&dir))
        .await
        .expect_err("refused");
    assert!(
        format!("{error:#}").contains("group or others"),
        "{error:#}"
    );
}
