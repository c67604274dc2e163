//! `flotilla server backup` and `flotilla server restore` end to end on moto.
//!
//! A server deploys a 2-node cluster; a backup is taken while it runs and while clusters are
//! being created through the API; the server is killed and the backup restored into a fresh
//! data directory. A server started there with the same AWS account keeps managing the
//! cluster: the API lists it with its nodes, a scale to 3 launches exactly one instance (the
//! restored server recognises the running ones by their tags) and a removal terminates them
//! all. Restore refuses a non-empty directory without `--force`, and a corrupted or
//! truncated backup file.
//!
//! Design decisions:
//! * The restored server runs on a directory this test prepared and prints no credentials
//!   (the admin already exists, and the restored key is the one the first server printed):
//!   each server keeps its logs in its own directory, shown together on a failure.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use flotilla_api::client::new_node_cluster;
use flotilla_api::uri;
use flotilla_testkit::inspect::instances_per_zone;
use flotilla_testkit::server::{isolate_env, logs_in};
use flotilla_testkit::{DatabaseKind, MotoAccount};
use serde_json::{Value, json};

use crate::support::{Api, server};

const LIMIT: Duration = Duration::from_secs(90);

/// The cluster once `done` holds for it and its nodes.
async fn wait_for(
    api: &Api,
    uuid: &str,
    what: &str,
    done: impl Fn(&Value, &[Value]) -> bool,
    logs: &dyn Fn() -> String,
) -> (Value, Vec<Value>) {
    let started = Instant::now();
    loop {
        let (_, cluster) = api
            .call(reqwest::Method::GET, &uri::node_cluster(uuid), None)
            .await;
        let (_, listed) = api
            .call(
                reqwest::Method::GET,
                &format!("{}?node_cluster={uuid}", uri::nodes()),
                None,
            )
            .await;
        let nodes: Vec<Value> = listed["objects"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n["state"] != "Terminated")
            .collect();
        if done(&cluster, &nodes) {
            return (cluster, nodes);
        }
        assert!(
            started.elapsed() < LIMIT,
            "{what}: cluster {cluster:#}\nnodes {nodes:#?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn flotilla(args: &[&str], paths: &[&Path]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
    isolate_env(&mut command).args(args);
    for path in paths {
        command.arg(path);
    }
    tokio::time::timeout(LIMIT, command.output())
        .await
        .expect("flotilla exits in time")
        .expect("run flotilla")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

async fn running_instances(ec2: &aws_sdk_ec2::Client) -> usize {
    instances_per_zone(ec2, &["running", "pending"])
        .await
        .values()
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_server_keeps_managing_the_clusters_it_had() {
    let account = MotoAccount::start().await;
    let ec2 = account.ec2("us-east-1").await;
    let dir = tempfile::tempdir().expect("dir");
    let dir = dir.path();
    let original = dir.join("original");
    // `flotilla server backup` copies the SQLite file: this test is SQLite's.
    let builder = server(&account.proxy.endpoint())
        .database(DatabaseKind::Sqlite)
        .access_key_id("AKIAE2EBACKUP")
        .args(["--node-ready", "running"]);
    let mut first = builder
        .clone()
        .dir(dir.join("first-server"))
        .data_dir(&original)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let api = Api::of(&first, reqwest::Client::new());
    let (user, key) = (api.user.clone(), api.key.clone());
    let show_logs = || logs_in(&dir.join("first-server")) + &logs_in(&dir.join("restored-server"));

    let uuid = api.create_and_deploy("kept", 2).await;
    let (_, nodes) = wait_for(
        &api,
        &uuid,
        "deployed",
        |c, n| c["state"] == "Deployed" && n.len() == 2,
        &show_logs,
    )
    .await;
    let mut node_uuids: Vec<String> = nodes
        .iter()
        .map(|n| n["uuid"].as_str().unwrap_or_default().to_owned())
        .collect();
    node_uuids.sort();
    assert_eq!(running_instances(&ec2).await, 2);

    // The backup, while the server runs and clusters are being created.
    let writer = {
        let api = Api::new(&api.base, &user, &key, reqwest::Client::new());
        tokio::spawn(async move {
            let mut created = 0u32;
            while created < 100_000 {
                let (status, _) = api
                    .call(
                        reqwest::Method::POST,
                        &uri::node_clusters(),
                        Some(new_node_cluster(
                            &format!("churn-{created}"),
                            1,
                            "us-east-1",
                            "t3.micro",
                        )),
                    )
                    .await;
                assert_eq!(status, 201);
                created += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let backup = dir.join("flotilla.backup");
    let output = flotilla(
        &["server", "backup", "--data-dir"],
        &[&original, Path::new("--output"), &backup],
    )
    .await;
    assert!(
        output.status.success(),
        "backup: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    writer.abort();
    let joined = writer.await;
    assert!(
        joined.as_ref().is_err_and(|e| e.is_cancelled()),
        "the writer failed: {joined:?}"
    );
    assert_eq!(mode(&backup), 0o600, "the backup holds secret.key");
    let envelope: Value =
        serde_json::from_slice(&std::fs::read(&backup).expect("backup")).expect("JSON envelope");
    assert_eq!(envelope["format"], "flotilla-backup");
    assert_eq!(envelope["secret_key"]["size"], 32);

    first.kill().await;

    // Restore into a fresh directory.
    let restored = dir.join("restored");
    let output = flotilla(
        &["server", "restore", "--data-dir"],
        &[&restored, Path::new("--input"), &backup],
    )
    .await;
    assert!(
        output.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(mode(&restored), 0o700);
    assert_eq!(mode(&restored.join("flotilla.db")), 0o600);
    assert_eq!(mode(&restored.join("secret.key")), 0o600);
    assert_eq!(
        std::fs::read(restored.join("secret.key")).expect("key"),
        std::fs::read(original.join("secret.key")).expect("key"),
    );

    // Not again over it without --force; with --force, yes.
    let output = flotilla(
        &["server", "restore", "--data-dir"],
        &[&restored, Path::new("--input"), &backup],
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--force"), "{stderr}");
    let output = flotilla(
        &["server", "restore", "--force", "--data-dir"],
        &[&restored, Path::new("--input"), &backup],
    )
    .await;
    assert!(
        output.status.success(),
        "restore --force: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A corrupted or truncated backup is refused, and nothing is written.
    let text = std::fs::read_to_string(&backup).expect("backup");
    let data_at = text.find("\"data\":\"").expect("data") + 8 + 200;
    let mut altered = text.clone().into_bytes();
    altered[data_at] = if altered[data_at] == b'A' { b'B' } else { b'A' };
    let bad: [(&str, Vec<u8>); 2] = [
        ("altered", altered),
        ("truncated", text.as_bytes()[..text.len() / 2].to_vec()),
    ];
    for (name, bytes) in bad {
        let file = dir.join(format!("{name}.backup"));
        std::fs::write(&file, bytes).expect("write");
        let target = dir.join(format!("from-{name}"));
        let output = flotilla(
            &["server", "restore", "--data-dir"],
            &[&target, Path::new("--input"), &file],
        )
        .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains("not a usable Flotilla backup"),
            "{name}: {stderr}"
        );
        assert!(
            !target.join("flotilla.db").exists() && !target.join("secret.key").exists(),
            "{name}: nothing restored"
        );
    }

    // The restored server: same account, same credentials, same clusters.
    let second = builder
        .dir(dir.join("restored-server"))
        .data_dir(&restored)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(second.credentials().is_none(), "the admin already exists");
    let api = Api::new(&second.base(), &user, &key, reqwest::Client::new());
    let (status, listed) = api
        .call(
            reqwest::Method::GET,
            &format!("{}?limit=1000", uri::node_clusters()),
            None,
        )
        .await;
    assert_eq!(status, 200, "the admin's key still works: {listed}");
    let clusters = listed["objects"].as_array().cloned().unwrap_or_default();
    assert!(
        clusters.iter().any(|c| c["uuid"] == uuid.as_str()),
        "{listed:#}"
    );
    assert!(
        clusters
            .iter()
            .any(|c| c["name"].as_str().is_some_and(|n| n.starts_with("churn-"))),
        "the backup caught writes made while it ran: {listed:#}"
    );
    let (_, nodes) = wait_for(
        &api,
        &uuid,
        "restored",
        |c, n| c["state"] == "Deployed" && n.len() == 2,
        &show_logs,
    )
    .await;
    let mut restored_uuids: Vec<String> = nodes
        .iter()
        .map(|n| n["uuid"].as_str().unwrap_or_default().to_owned())
        .collect();
    restored_uuids.sort();
    assert_eq!(restored_uuids, node_uuids, "the same nodes");

    // Scale to 3: one more instance, none duplicated.
    let (status, body) = api
        .call(
            reqwest::Method::PATCH,
            &uri::node_cluster(&uuid),
            Some(json!({"target_num_nodes": 3})),
        )
        .await;
    assert!((200..300).contains(&status), "{status} {body}");
    wait_for(
        &api,
        &uuid,
        "scaled",
        |c, n| c["state"] == "Deployed" && n.len() == 3,
        &show_logs,
    )
    .await;
    assert_eq!(running_instances(&ec2).await, 3, "no duplicate instances");

    // Remove: every instance goes.
    let (status, body) = api
        .call(reqwest::Method::DELETE, &uri::node_cluster(&uuid), None)
        .await;
    assert_eq!(status, 202, "{body}");
    wait_for(
        &api,
        &uuid,
        "terminated",
        |c, _| c["state"] == "Terminated",
        &show_logs,
    )
    .await;
    let started = Instant::now();
    while running_instances(&ec2).await != 0 {
        assert!(started.elapsed() < LIMIT, "instances left running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_postgresql_installation_is_refused_with_what_to_use_instead() {
    let dir = tempfile::tempdir().expect("dir");
    let url = "postgres://flotilla:s3cret-password@127.0.0.1:1/flotilla";
    let backup = dir.path().join("flotilla.backup");
    for (command, tool) in [("backup", "pg_dump"), ("restore", "pg_restore")] {
        let io = if command == "backup" { "-o" } else { "-i" };
        let output = flotilla(
            &["server", command, "--database", url, io],
            &[&backup, Path::new("--data-dir"), dir.path()],
        )
        .await;
        assert!(!output.status.success(), "{command} refused");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(tool), "{command}: {stderr}");
        let key = dir.path().join("secret.key");
        assert!(
            stderr.contains(&key.display().to_string()),
            "{command} names the key file: {stderr}"
        );
        assert!(!stderr.contains("s3cret"), "no password: {stderr}");
        assert!(!backup.exists(), "nothing written");
    }
}
