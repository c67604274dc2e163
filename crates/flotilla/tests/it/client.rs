//! Flotilla's own client commands (`flotilla nodecluster|node|action|event`) against the real
//! server on moto: the whole infra flow, `--sync` success and failure, lookups by name and
//! prefix, bad input and bad credentials.

use std::process::Output;
use std::time::Duration;

use flotilla_testkit::inspect::{ec2_client, instances_per_zone};
use flotilla_testkit::server::isolate_env;
use flotilla_testkit::{Fault, FaultProxy, MotoAccount, Rule};
use serde_json::Value;

use crate::support::Server;

struct Env {
    proxy: FaultProxy,
    inspect: FaultProxy,
    server: Server,
}

impl Env {
    async fn start() -> Env {
        let MotoAccount {
            proxy,
            inspector: inspect,
            ..
        } = MotoAccount::start().await;
        let server = Server::start(&proxy.endpoint(), &["--node-ready", "running"]).await;
        Env {
            proxy,
            inspect,
            server,
        }
    }

    fn command(&self, args: &[&str], api_key: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
        isolate_env(&mut command)
            .args(args)
            .env("FLOTILLA_HOST", &self.server.base)
            .env("FLOTILLA_USER", &self.server.user)
            .env("FLOTILLA_APIKEY", api_key);
        command
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.command(args, &self.server.key)
            .output()
            .await
            .expect("run flotilla")
    }

    /// Runs a command that must succeed; returns its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(
            output.status.success(),
            "flotilla {args:?} failed ({:?}): {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--format", "json"]);
        serde_json::from_str(&self.ok(&all).await).expect("JSON output")
    }

    async fn per_zone(&self) -> Vec<usize> {
        let ec2 = ec2_client(&self.inspect.endpoint(), "us-east-1").await;
        instances_per_zone(&ec2, &["running", "pending"])
            .await
            .into_values()
            .collect()
    }
}

fn field<'a>(value: &'a Value, name: &str) -> &'a str {
    value.get(name).and_then(Value::as_str).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_infra_commands_drive_a_cluster_through_its_life() {
    let env = Env::start().await;

    // Catalog.
    assert!(env.ok(&["nodecluster", "provider"]).await.contains("aws"));
    assert!(
        env.ok(&["nodecluster", "region", "-p", "aws"])
            .await
            .contains("us-east-1")
    );
    assert!(
        env.ok(&["nodecluster", "nodetype", "-p", "aws", "-r", "us-east-1"])
            .await
            .contains("t3.micro")
    );
    let zones = env.json(&["nodecluster", "az", "-r", "us-east-1"]).await;
    assert!(
        zones
            .as_array()
            .is_some_and(|z| z.iter().any(|z| field(z, "name") == "us-east-1a"))
    );

    // Create with --sync: the log and the final state are printed, exit 0.
    let create = env
        .run(&[
            "nodecluster",
            "create",
            "web",
            "aws",
            "us-east-1",
            "t3.micro",
            "-t",
            "3",
            "--sync",
        ])
        .await;
    assert!(
        create.status.success(),
        "{}",
        String::from_utf8_lossy(&create.stderr)
    );
    let uuid = String::from_utf8_lossy(&create.stdout).trim().to_owned();
    assert!(
        flotilla_api::uri::is_uuid4(&uuid),
        "create prints the uuid: {uuid}"
    );
    let progress = String::from_utf8_lossy(&create.stderr);
    assert!(
        progress.contains("launching"),
        "the action log is shown: {progress}"
    );
    assert!(progress.contains("Success"), "{progress}");
    assert_eq!(env.per_zone().await, vec![1, 1, 1]);

    // ls, inspect by name and by prefix.
    let clusters = env.json(&["nodecluster", "ls"]).await;
    assert_eq!(clusters[0]["state"], "Deployed");
    assert_eq!(clusters[0]["current_num_nodes"], 3);
    let by_name: Value =
        serde_json::from_str(&env.ok(&["nodecluster", "inspect", "web"]).await).expect("json");
    assert_eq!(field(&by_name, "uuid"), uuid);
    let by_prefix: Value =
        serde_json::from_str(&env.ok(&["nodecluster", "inspect", &uuid[..8]]).await).expect("json");
    assert_eq!(field(&by_prefix, "uuid"), uuid);

    // Scale with the events stream listening.
    let mut events = env.command(&["event"], &env.server.key);
    events
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let events = events.spawn().expect("event");
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.ok(&["nodecluster", "scale", "web", "6", "--sync"])
        .await;
    assert_eq!(env.per_zone().await, vec![2, 2, 2]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut events = events;
    events.start_kill().expect("stop event");
    let printed = events.wait_with_output().await.expect("event output");
    let printed = String::from_utf8_lossy(&printed.stdout);
    let frames: Vec<Value> = printed
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        frames.iter().any(|f| f["type"] == "node"),
        "node events: {printed}"
    );
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "nodecluster" && f["state"] == "Scaling"),
        "{printed}"
    );

    // Nodes: ls, inspect by prefix, rm one.
    let nodes = env.json(&["node", "ls", "--cluster", "web"]).await;
    let nodes = nodes.as_array().expect("nodes");
    assert_eq!(nodes.len(), 6);
    let node = field(&nodes[0], "uuid").to_owned();
    let inspected: Value =
        serde_json::from_str(&env.ok(&["node", "inspect", &node[..8]]).await).expect("json");
    assert_eq!(field(&inspected, "uuid"), node);
    env.ok(&["node", "rm", &node, "--sync"]).await;
    assert_eq!(env.per_zone().await.iter().sum::<usize>(), 5);
    let cluster: Value =
        serde_json::from_str(&env.ok(&["nodecluster", "inspect", &uuid]).await).expect("json");
    assert_eq!(cluster["target_num_nodes"], 5, "node rm lowers the target");

    // Actions: ls, inspect, logs.
    let actions = env.json(&["action", "ls"]).await;
    let labels: Vec<&str> = actions
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| field(a, "action"))
        .collect();
    assert!(
        labels.contains(&"Node Cluster Create") && labels.contains(&"Node Cluster Deploy"),
        "{labels:?}"
    );
    let deploy = actions
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|a| field(a, "action") == "Node Cluster Deploy")
        })
        .expect("deploy action");
    let deploy_uuid = field(deploy, "uuid");
    let inspected: Value =
        serde_json::from_str(&env.ok(&["action", "inspect", deploy_uuid]).await).expect("json");
    assert_eq!(inspected["state"], "Success");
    assert!(
        env.ok(&["action", "logs", &deploy_uuid[..8]])
            .await
            .contains("launched")
    );

    // BYO: a one-time token and the install command.
    let byo = env.ok(&["node", "byo"]).await;
    assert!(
        byo.contains("FLOTILLA_TOKEN=") && byo.contains("/download/flotilla"),
        "{byo}"
    );

    // rm --sync: nothing left in AWS.
    env.ok(&["nodecluster", "rm", "web", "--sync"]).await;
    assert!(env.per_zone().await.is_empty());
    let ec2 = ec2_client(&env.inspect.endpoint(), "us-east-1").await;
    let dc_vpcs = ec2
        .describe_vpcs()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:Name")
                .values("dc-vpc")
                .build(),
        )
        .send()
        .await
        .expect("vpcs");
    assert!(dc_vpcs.vpcs().is_empty(), "the auto network is gone");
    let clusters = env.json(&["nodecluster", "ls"]).await;
    assert_eq!(clusters[0]["state"], "Terminated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_named_and_a_failed_sync_exits_3() {
    let env = Env::start().await;

    let bad_region = env
        .run(&["nodecluster", "create", "x", "aws", "us-east-9", "t3.micro"])
        .await;
    assert_eq!(bad_region.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad_region.stderr).contains("region: unknown region 'us-east-9'")
    );

    let unknown = env
        .run(&["nodecluster", "inspect", "nothing-like-this"])
        .await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("cannot find a node cluster with the identifier 'nothing-like-this'")
    );

    let denied = env
        .command(&["nodecluster", "ls"], "wrong-key")
        .output()
        .await
        .expect("run");
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("not authorized"));

    // No capacity anywhere: the deploy fails, --sync says so and exits 3.
    env.proxy.add_rule(
        Rule::action("RunInstances")
            .skip_dry_run()
            .fault(Fault::InsufficientCapacity),
    );
    let failed = env
        .run(&[
            "nodecluster",
            "create",
            "full",
            "aws",
            "us-east-1",
            "t3.micro",
            "-t",
            "2",
            "--sync",
        ])
        .await;
    assert_eq!(
        failed.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("Failed"), "{stderr}");
    assert!(
        stderr.contains("no capacity"),
        "the reason is in the log: {stderr}"
    );
}

/// `flotilla ldap set|show|sync|off` and `flotilla team create --ldap-group|map` against a
/// real OpenLDAP (`flotilla_testkit::slapd`, LDAPS with its own CA): the settings go in
/// from a file with the CA as a path and the bind password on stdin, never come back out,
/// and a directory user signs in with our CLI using its directory password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ldap_commands_connect_a_directory() {
    use flotilla_testkit::slapd::{self, Slapd};
    use tokio::io::AsyncWriteExt as _;

    let directory = tokio::task::spawn_blocking(Slapd::start)
        .await
        .expect("join")
        .expect("slapd");
    let alice = directory
        .add_user("alice", "Alice Smith", "alice-password-1")
        .expect("alice");
    let ops = directory.add_group("ops", &[&alice]).expect("ops");
    let env = Env::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let settings = dir.path().join("ldap.json");
    std::fs::copy(directory.ca_path(), dir.path().join("ca.pem")).expect("ca");
    std::fs::write(
        &settings,
        serde_json::json!({
            "servers": [{"url": directory.ldaps_url(), "tls": "ldaps", "ca_file": "ca.pem",
                "bind_dn": slapd::ADMIN_DN}],
            "searches": [{"base_dn": slapd::PEOPLE, "scope": "sub",
                "filter": "(objectClass=inetOrgPerson)", "username_attribute": "uid",
                "full_name_attribute": "cn"}],
        })
        .to_string(),
    )
    .expect("settings");
    let settings = settings.to_str().expect("path");
    let mut set = env
        .command(
            &["ldap", "set", settings, "--bind-password-stdin"],
            &env.server.key,
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("flotilla ldap set");
    let mut stdin = set.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{}\n", slapd::ADMIN_PASSWORD).as_bytes())
        .await
        .expect("password");
    drop(stdin);
    let output = set.wait_with_output().await.expect("ldap set");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains(slapd::ADMIN_PASSWORD));
    let shown = env.json(&["ldap", "show"]).await;
    assert_eq!(shown["servers"][0]["bind_password_set"], Value::Bool(true));
    assert!(
        !shown.to_string().contains(slapd::ADMIN_PASSWORD),
        "{shown}"
    );
    assert!(field(&shown["servers"][0], "ca_pem").contains("BEGIN CERTIFICATE"));

    env.ok(&["org", "create", "corp"]).await;
    env.ok(&["team", "create", "corp", "ops", "--ldap-group", &ops])
        .await;
    env.ok(&["grant", "create", "corp", "ops", "view"]).await;
    // alice signs in with her directory password through our CLI.
    let mut as_alice = env.command(&["nodecluster", "ls"], "alice-password-1");
    as_alice.env("FLOTILLA_USER", "alice");
    let signed_in = as_alice.output().await.expect("run");
    assert!(
        signed_in.status.success(),
        "{}",
        String::from_utf8_lossy(&signed_in.stderr)
    );
    let team = env.json(&["team", "inspect", "corp", "ops"]).await;
    assert_eq!(team["members"], serde_json::json!(["alice"]), "{team}");
    let report = env.json(&["ldap", "sync"]).await;
    assert_eq!(report["users"], serde_json::json!(1), "{report}");
    let unmapped = env.json(&["team", "map", "corp", "ops", "--unmap"]).await;
    assert_eq!(unmapped["ldap_group_dn"], Value::Null);
    env.ok(&["ldap", "off"]).await;
    assert_eq!(
        env.json(&["ldap", "show"]).await["servers"],
        serde_json::json!([])
    );
}
