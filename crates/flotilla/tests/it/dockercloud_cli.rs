//! The original Docker Cloud CLI (docker-cloud 1.0.9 on python-dockercloud 1.0.12) against
//! the real `flotilla server` binary, with moto behind the testkit proxy as AWS.
//!
//! The CLI is the compatibility contract: every command a Docker Cloud user ran for node
//! clusters is run here as they ran it, its output and exit code checked, and what it did to
//! "AWS" checked in moto. The CLI is installed once per machine by
//! `scripts/install-dockercloud-cli` into `~/.cache/flotilla/dockercloud-venv` (pip from
//! PyPI, pinned), under a file lock so parallel test binaries install it once.
//!
//! Nodes become Deployed when their instance runs (`--node-ready running`): moto runs no
//! user data, so no agent ever registers.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::Filter;
use flotilla_api::uri;
use flotilla_testkit::server::isolate_env;
use flotilla_testkit::{FaultProxy, MotoAccount, ServerProcess};
use serde_json::Value;
use tokio::process::Command;

use crate::support::server;

/// How long one CLI command may take (`--sync` polls every 4 s).
const COMMAND_LIMIT: Duration = Duration::from_secs(180);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `docker-cloud` from the cached venv, installing it first if needed.
fn ensure_cli() -> PathBuf {
    let venv = flotilla_testkit::cache::cache_dir().join("dockercloud-venv");
    let cli = venv.join("bin/docker-cloud");
    let script_path = workspace_root().join("scripts/install-dockercloud-cli");
    let script = fs::read_to_string(&script_path)
        .unwrap_or_else(|e| panic!("cannot read {script_path:?}: {e}"));
    // The stamp holds the script that made the venv: a changed script (new pins) reinstalls.
    let stamp = venv.join(".flotilla-installed");
    let current = || fs::read_to_string(&stamp).is_ok_and(|s| s == script) && cli.exists();
    flotilla_testkit::cache::install_once("dockercloud-venv", current, || {
        if venv.exists() {
            fs::remove_dir_all(&venv).unwrap_or_else(|e| panic!("cannot remove {venv:?}: {e}"));
        }
        let output = std::process::Command::new("bash")
            .arg(&script_path)
            .arg(&venv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script_path:?}: {e}"));
        assert!(
            output.status.success(),
            "installing the docker-cloud CLI failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        fs::write(&stamp, &script).unwrap_or_else(|e| panic!("cannot write {stamp:?}: {e}"));
    });
    cli
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "flotilla-cli-it-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {path:?}: {e}"));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `flotilla server` on a free port, against moto through a proxy, with the CLI's env.
struct Env {
    cli: PathBuf,
    port: u16,
    api_key: String,
    inspect: FaultProxy,
    server: ServerProcess,
    dir: TempDir,
    _proxy: FaultProxy,
}

impl Env {
    async fn start() -> Env {
        let cli = tokio::task::spawn_blocking(ensure_cli)
            .await
            .expect("CLI install");
        let MotoAccount {
            proxy,
            inspector: inspect,
            ..
        } = MotoAccount::start().await;
        let dir = TempDir::new();
        let server = server(&proxy.endpoint())
            .access_key_id("AKIACLI")
            .args(["--node-ready", "running"])
            .start()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let api_key = server
            .credentials()
            .expect("the server prints its API key")
            .key
            .clone();
        Env {
            cli,
            port: server.port(),
            api_key,
            inspect,
            server,
            dir,
            _proxy: proxy,
        }
    }

    /// `program` with the CLI's environment: this server, these credentials, and nothing
    /// from the user's own set-up (`~/.docker/config.json`, `DOCKERCLOUD_*`).
    fn with_cli_env(&self, program: &Path, api_key: &str) -> Command {
        self.with_cli_env_as(program, "admin", api_key)
    }

    /// [`Env::with_cli_env`] as another user.
    fn with_cli_env_as(&self, program: &Path, user: &str, api_key: &str) -> Command {
        let mut command = Command::new(program);
        isolate_env(&mut command)
            .env(
                "DOCKERCLOUD_REST_HOST",
                format!("http://127.0.0.1:{}/", self.port),
            )
            .env(
                "DOCKERCLOUD_STREAM_HOST",
                format!("ws://127.0.0.1:{}/", self.port),
            )
            .env("DOCKERCLOUD_USER", user)
            .env("DOCKERCLOUD_APIKEY", api_key)
            .env("HOME", &self.dir.0)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    fn command(&self, args: &[&str], api_key: &str) -> Command {
        let mut command = self.with_cli_env(&self.cli, api_key);
        command.args(args);
        command
    }

    /// An action's log lines through python-dockercloud's logs websocket client and the
    /// CLI's handler (`follow=false`), exactly as `docker-cloud action logs` streams them.
    async fn action_logs(&self, uuid: &str, tail: Option<u32>) -> Vec<String> {
        const SCRIPT: &str = "import sys
from dockercloud.api.base import StreamingLog
from dockercloudcli.utils import action_log_handler
tail = int(sys.argv[2]) if len(sys.argv) > 2 else None
logs = StreamingLog('audit', '/action', sys.argv[1], tail, False)
logs.on_message(action_log_handler)
logs.run_forever()
";
        let mut python = self.with_cli_env(&self.cli.with_file_name("python"), &self.api_key);
        python.args(["-c", SCRIPT, uuid]);
        if let Some(tail) = tail {
            python.arg(tail.to_string());
        }
        let output = tokio::time::timeout(COMMAND_LIMIT, python.output())
            .await
            .expect("action logs in time")
            .expect("python");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stderr.trim().is_empty(),
            "action logs: {stderr}"
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn server_log(&self) -> String {
        self.server.log()
    }

    /// Runs `docker-cloud args` with the given key; its output, whatever the exit code.
    async fn run_with_key(&self, args: &[&str], api_key: &str) -> Output {
        let child = self
            .command(args, api_key)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run docker-cloud");
        match tokio::time::timeout(COMMAND_LIMIT, child.wait_with_output()).await {
            Ok(output) => output.expect("docker-cloud output"),
            Err(_) => panic!(
                "docker-cloud {args:?} did not finish in {COMMAND_LIMIT:?}\nserver log:\n{}",
                self.server_log()
            ),
        }
    }

    /// Runs `program args` as `who` (user, key) with the CLIs' environment (both the
    /// `DOCKERCLOUD_*` and, for `flotilla`, the `FLOTILLA_*` names); its output.
    async fn run_as(&self, program: &Path, who: &(String, String), args: &[&str]) -> Output {
        let mut command = self.with_cli_env_as(program, &who.0, &who.1);
        command
            .args(args)
            .env("FLOTILLA_HOST", format!("http://127.0.0.1:{}", self.port))
            .env("FLOTILLA_USER", &who.0)
            .env("FLOTILLA_APIKEY", &who.1)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = command.spawn().expect("spawn");
        match tokio::time::timeout(COMMAND_LIMIT, child.wait_with_output()).await {
            Ok(output) => output.expect("output"),
            Err(_) => panic!("{program:?} {args:?} did not finish in {COMMAND_LIMIT:?}"),
        }
    }

    /// `flotilla args` as `who`; requires success, returns stdout.
    async fn flotilla(&self, who: &(String, String), args: &[&str]) -> String {
        let output = self
            .run_as(Path::new(env!("CARGO_BIN_EXE_flotilla")), who, args)
            .await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "flotilla {args:?} as {} exited {}:\n{stdout}\n{}\nserver log:\n{}",
            who.0,
            output.status,
            String::from_utf8_lossy(&output.stderr),
            self.server_log()
        );
        stdout
    }

    /// Runs `docker-cloud args`, requires exit code 0, returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.run_with_key(args, &self.api_key).await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success() && stderr.trim().is_empty(),
            "docker-cloud {args:?} exited {}:\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
            output.status,
            self.server_log()
        );
        stdout
    }

    /// Runs a command that prints one JSON document (`inspect`).
    async fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args).await;
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("docker-cloud {args:?} printed no JSON ({e}):\n{stdout}"))
    }

    async fn ec2(&self) -> aws_sdk_ec2::Client {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(self.inspect.endpoint())
            .credentials_provider(Credentials::new("AKIAINSPECT", "x", None, None, "test"))
            .load()
            .await;
        aws_sdk_ec2::Client::new(&config)
    }

    /// Running instances of a cluster per AZ, and the subnets and security groups they use.
    async fn running(&self, cluster_uuid: Option<&str>) -> Running {
        let ec2 = self.ec2().await;
        let mut request = ec2.describe_instances().filters(
            Filter::builder()
                .name("instance-state-name")
                .values("running")
                .values("pending")
                .build(),
        );
        if let Some(uuid) = cluster_uuid {
            request = request.filters(
                Filter::builder()
                    .name("tag:flotilla:cluster")
                    .values(uuid)
                    .build(),
            );
        }
        let reply = request.send().await.expect("describe instances");
        let mut running = Running::default();
        for instance in reply.reservations().iter().flat_map(|r| r.instances()) {
            let az = instance
                .placement()
                .and_then(|p| p.availability_zone())
                .unwrap_or("?")
                .to_owned();
            *running.per_az.entry(az).or_insert(0) += 1;
            running
                .subnets
                .push(instance.subnet_id().unwrap_or("").to_owned());
            // Flotilla attaches the groups to the instance's network interface.
            let groups = instance
                .network_interfaces()
                .iter()
                .flat_map(|i| i.groups())
                .chain(instance.security_groups());
            for group in groups {
                running
                    .security_groups
                    .push(group.group_id().unwrap_or("").to_owned());
            }
        }
        running
    }
}

#[derive(Debug, Default)]
struct Running {
    per_az: BTreeMap<String, usize>,
    subnets: Vec<String>,
    security_groups: Vec<String>,
}

impl Running {
    fn total(&self) -> usize {
        self.per_az.values().sum()
    }

    fn counts(&self) -> Vec<usize> {
        self.per_az.values().copied().collect()
    }
}

/// The uuid a `--sync` command prints last, after the action's states.
fn printed_uuid(stdout: &str) -> String {
    let uuid = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("")
        .to_owned();
    assert!(
        flotilla_api::uri::is_uuid4(&uuid),
        "expected a uuid last:\n{stdout}"
    );
    uuid
}

/// `--sync` prints the action's states as they change and ends on `Success`.
fn assert_synced(stdout: &str) {
    assert!(
        stdout.lines().any(|l| l.trim() == "Success"),
        "--sync did not report Success:\n{stdout}"
    );
}

/// The table row (split on runs of spaces) that contains `needle`.
fn row<'a>(table: &'a str, needle: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no row with {needle:?} in:\n{table}"))
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// A VPC of the user's own in moto: two subnets and a security group.
async fn own_vpc(env: &Env) -> (String, Vec<String>, String) {
    let ec2 = env.ec2().await;
    let (vpc_id, subnets) = flotilla_testkit::inspect::create_user_vpc(
        &ec2,
        "10.50.0.0/16",
        &[
            ("10.50.1.0/24", "us-east-1a"),
            ("10.50.2.0/24", "us-east-1b"),
        ],
    )
    .await;
    let group = ec2
        .create_security_group()
        .vpc_id(&vpc_id)
        .group_name("my-nodes")
        .description("the user's own group")
        .send()
        .await
        .expect("create security group");
    let group_id = group.group_id().expect("group id").to_owned();
    (vpc_id, subnets, group_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_docker_cloud_cli_drives_flotilla() {
    let env = Env::start().await;

    // ---- credentials: a wrong key is "Not authorized" (exit 3; 2 for `event`) ----
    let refused = env.run_with_key(&["nodecluster", "ls"], "wrong-key").await;
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Not authorized"));
    let refused = env.run_with_key(&["event"], "wrong-key").await;
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");

    // ---- the catalogue ----
    let providers = env.ok(&["nodecluster", "provider"]).await;
    assert_eq!(row(&providers, "aws"), ["aws", "Amazon Web Services"]);
    assert_eq!(
        env.ok(&["nodecluster", "provider", "-q"]).await.trim(),
        "aws"
    );
    let regions = env.ok(&["nodecluster", "region", "-p", "aws"]).await;
    let us_east = row(&regions, "us-east-1");
    assert_eq!(
        (us_east[0], us_east[us_east.len() - 1]),
        ("us-east-1", "aws")
    );
    let types = env
        .ok(&["nodecluster", "nodetype", "-p", "aws", "-r", "us-east-1"])
        .await;
    let micro = row(&types, "t3.micro");
    assert_eq!((micro[0], micro[2]), ("t3.micro", "aws"), "{types}");
    assert!(micro[3].contains("us-east-1"), "{types}");
    let zones = env.ok(&["nodecluster", "az"]).await;
    for zone in ["us-east-1a", "us-east-1b", "us-east-1c"] {
        let cells = row(&zones, zone);
        assert_eq!(cells[1], "Yes", "{zones}");
        assert_eq!(cells[2], uri::availability_zone("aws", "us-east-1", zone));
    }

    // ---- create --sync, with `event` listening in the background ----
    let events_path = env.dir.0.join("events.out");
    let mut events = env
        .command(&["event"], &env.api_key)
        .stdout(File::create(&events_path).expect("events file"))
        .stderr(File::create(env.dir.0.join("events.err")).expect("events err"))
        .spawn()
        .expect("docker-cloud event");
    // The listener is connected once the server has seen its handshake; give it a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let created = env
        .ok(&[
            "nodecluster",
            "create",
            "--sync",
            "-t",
            "6",
            "web",
            "aws",
            "us-east-1",
            "t3.micro",
        ])
        .await;
    assert_synced(&created);
    let web = printed_uuid(&created);
    let running = env.running(Some(&web)).await;
    assert_eq!(running.counts(), [2, 2, 2], "{running:?}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = events.start_kill();
    let _ = events.wait().await;
    let printed = fs::read_to_string(&events_path).expect("events output");
    let events: Vec<Value> = printed
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let web_uri = uri::node_cluster(&web);
    assert!(
        events.iter().any(|e| e["type"] == "nodecluster"
            && e["resource_uri"] == web_uri.as_str()
            && e["state"] == "Deployed"),
        "no nodecluster event in:\n{printed}"
    );
    let node_events: Vec<&Value> = events.iter().filter(|e| e["type"] == "node").collect();
    assert!(
        node_events.len() >= 6,
        "node events for the 6 nodes:\n{printed}"
    );
    assert!(
        node_events
            .iter()
            .all(|e| e["parents"] == serde_json::json!([web_uri])),
        "{printed}"
    );
    assert!(
        events.iter().all(|e| e["type"] != "auth"),
        "the CLI drops the auth frame"
    );

    // ---- a cluster in the user's own VPC ----
    let (vpc_id, subnets, group_id) = own_vpc(&env).await;
    let created = env
        .ok(&[
            "nodecluster",
            "create",
            "--sync",
            "-t",
            "2",
            "--aws-vpc-id",
            &vpc_id,
            "--aws-vpc-subnet",
            &subnets[0],
            "--aws-vpc-subnet",
            &subnets[1],
            "--aws-vpc-security-group",
            &group_id,
            "own",
            "aws",
            "us-east-1",
            "t3.micro",
        ])
        .await;
    assert_synced(&created);
    let own = printed_uuid(&created);
    let running = env.running(Some(&own)).await;
    assert_eq!(running.counts(), [1, 1], "{running:?}");
    assert!(
        running.subnets.iter().all(|s| subnets.contains(s)),
        "{running:?}"
    );
    assert!(
        running.security_groups.iter().all(|g| *g == group_id)
            && !running.security_groups.is_empty(),
        "{running:?}"
    );

    // ---- ls and inspect ----
    let clusters = env.ok(&["nodecluster", "ls"]).await;
    let cells = row(&clusters, &web[..8]);
    assert_eq!(cells[0], "web", "{clusters}");
    assert!(cells.contains(&"Deployed"), "{clusters}");
    assert_eq!(&cells[cells.len() - 2..], ["6", "6"], "{clusters}");
    assert!(clusters.contains("own"), "{clusters}");
    let quiet = env.ok(&["nodecluster", "ls", "-q"]).await;
    assert!(quiet.contains(&web) && quiet.contains(&own), "{quiet}");
    let inspected = env.json(&["nodecluster", "inspect", "web"]).await;
    assert_eq!(inspected["uuid"], web.as_str());
    assert_eq!(inspected["state"], "Deployed");
    assert_eq!(inspected["current_num_nodes"], 6);
    assert_eq!(inspected["nodes"].as_array().map(Vec::len), Some(6));
    let by_short = env.json(&["nodecluster", "inspect", &web[..8]]).await;
    assert_eq!(by_short["uuid"], web.as_str());
    let own_inspected = env.json(&["nodecluster", "inspect", &own]).await;
    assert_eq!(
        own_inspected["provider_options"]["vpc"]["id"],
        vpc_id.as_str()
    );

    // ---- scale --sync up and down, balanced across the AZs ----
    let scaled = env
        .ok(&["nodecluster", "scale", "--sync", "web", "9"])
        .await;
    assert_synced(&scaled);
    assert_eq!(printed_uuid(&scaled), web);
    assert_eq!(env.running(Some(&web)).await.counts(), [3, 3, 3]);
    let scaled = env
        .ok(&["nodecluster", "scale", "--sync", &web[..8], "4"])
        .await;
    assert_synced(&scaled);
    let running = env.running(Some(&web)).await;
    let counts = running.counts();
    assert_eq!(running.total(), 4, "{running:?}");
    assert!(
        counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0) <= 1
            && counts.len() == 3,
        "{running:?}"
    );

    // ---- tags on a cluster ----
    assert_eq!(
        env.ok(&["tag", "add", "-t", "blue", "-t", "green", "web"])
            .await
            .trim(),
        web
    );
    let tags = env.ok(&["tag", "ls", "web"]).await;
    assert_eq!(
        row(&tags, "web"),
        ["web", "NodeCluster", "blue green"],
        "{tags}"
    );
    assert_eq!(
        env.ok(&["tag", "rm", "-t", "blue", "web"]).await.trim(),
        web
    );
    assert_eq!(env.ok(&["tag", "ls", "-q", "web"]).await.trim(), "green");

    // ---- nodes ----
    // `node ls` also lists the nodes terminated by the scale-down, as Docker Cloud did.
    let nodes = env.ok(&["node", "ls"]).await;
    let deployed: Vec<Vec<&str>> = nodes
        .lines()
        .filter(|l| l.contains("Deployed"))
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    let in_cluster = |name: &str| deployed.iter().filter(|r| r.contains(&name)).count();
    assert_eq!((in_cluster("web"), in_cluster("own")), (4, 2), "{nodes}");
    assert_eq!(
        env.ok(&["node", "ls", "-q"]).await.lines().count(),
        nodes.lines().count() - 1,
        "one uuid per row"
    );
    let mut web_node = None;
    for row in &deployed {
        let node = env.json(&["node", "inspect", row[0]]).await;
        let uuid = node["uuid"].as_str().expect("uuid").to_owned();
        assert!(uuid.starts_with(row[0]), "{node:#}");
        assert_eq!(node["state"], "Deployed");
        assert!(node["public_ip"].is_string(), "{node:#}");
        if node["node_cluster"] == web_uri.as_str() {
            web_node = Some(uuid);
        }
    }
    let web_node = web_node.expect("a node of web");
    let removed = env.ok(&["node", "rm", "--sync", &web_node]).await;
    assert_synced(&removed);
    assert_eq!(printed_uuid(&removed), web_node);
    assert_eq!(env.running(Some(&web)).await.total(), 3);
    let after = env.json(&["nodecluster", "inspect", &web]).await;
    assert_eq!(after["target_num_nodes"], 3);
    assert_eq!(after["current_num_nodes"], 3);

    // ---- bring your own node ----
    let byo = env.ok(&["node", "byo"]).await;
    let command = byo
        .lines()
        .find(|l| l.contains("curl -Ls https://get.cloud.docker.com/"))
        .unwrap_or_else(|| panic!("no install command in:\n{byo}"));
    let token = command.rsplit(' ').next().unwrap_or("").trim();
    assert!(
        token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{byo}"
    );

    // ---- actions ----
    let actions = env.ok(&["action", "ls"]).await;
    for label in [
        "Node Cluster Create",
        "Node Cluster Deploy",
        "Node Cluster Scale",
        "Node Cluster Update",
        "Node Terminate",
    ] {
        assert!(actions.contains(label), "{label} missing:\n{actions}");
    }
    let newest = env.ok(&["action", "ls", "-q", "--last", "1"]).await;
    let newest = newest.trim();
    let action = env.json(&["action", "inspect", &newest[..8]]).await;
    assert_eq!(action["uuid"], newest);
    assert_eq!(action["action"], "Node Terminate", "{action:#}");
    assert_eq!(action["state"], "Success", "{action:#}");
    assert_eq!(action["object"], uri::node(&web_node));
    // The logs websocket, as `action logs` reads it. (The CLI command itself cannot work
    // with any server that returns an action's `logs` field, as the contract says Docker
    // Cloud did: the library copies `logs` onto the object over its `logs()` method.)
    let logs = env.action_logs(newest, None).await;
    assert!(
        logs.first()
            .is_some_and(|l| l.starts_with("terminating i-")),
        "{logs:?}"
    );
    assert_eq!(env.action_logs(newest, Some(1)).await.len(), 1);

    // ---- rm --sync: nothing left running ----
    let removed = env.ok(&["nodecluster", "rm", "--sync", "web", &own]).await;
    assert_eq!(removed.matches("Success").count(), 2, "{removed}");
    assert!(
        removed.contains(&web) && removed.contains(&own),
        "{removed}"
    );
    let running = env.running(None).await;
    assert_eq!(running.total(), 0, "{running:?}");
    let gone = env.json(&["nodecluster", "inspect", &web]).await;
    assert_eq!(gone["state"], "Terminated");
    // Flotilla's own network is gone; the user's VPC is left alone.
    let vpcs = env
        .ec2()
        .await
        .describe_vpcs()
        .send()
        .await
        .expect("describe vpcs");
    let tagged = |key: &str| {
        vpcs.vpcs()
            .iter()
            .filter(|v| v.tags().iter().any(|t| t.key() == Some(key)))
            .count()
    };
    assert_eq!(tagged("flotilla:owner"), 0, "{vpcs:?}");
    assert!(
        vpcs.vpcs()
            .iter()
            .any(|v| v.vpc_id() == Some(vpc_id.as_str())),
        "{vpcs:?}"
    );
}

/// The JSON lines a `docker-cloud event` has printed so far.
fn event_lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until `docker-cloud event`'s output holds an event `matches` accepts.
async fn wait_for_event(path: &Path, what: &str, matches: impl Fn(&Value) -> bool) {
    let started = std::time::Instant::now();
    while !event_lines(path).iter().any(&matches) {
        assert!(
            started.elapsed() < COMMAND_LIMIT,
            "no {what} event in:\n{}",
            fs::read_to_string(path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue #15 end to end: two organizations on one server; `alice` views all of `blue`.
/// Through our CLI, the original `docker-cloud` CLI and its events stream she sees
/// `blue`'s cluster and nodes and nothing of `red`'s; her scale is refused with 403 naming
/// the role; a key is shown once and refused as soon as it is revoked.
#[tokio::test]
async fn a_member_sees_only_its_organization_through_both_clis_and_the_events_stream() {
    let env = Env::start().await;
    let admin = ("admin".to_owned(), env.api_key.clone());
    let flotilla = Path::new(env!("CARGO_BIN_EXE_flotilla"));

    // ---- organizations, users, teams and grants, with our CLI ----
    for org in ["blue", "red"] {
        env.flotilla(&admin, &["org", "create", org]).await;
    }
    let mut keys = Vec::new();
    for user in ["alice", "bob"] {
        let key = env.flotilla(&admin, &["user", "create", user]).await;
        keys.push((user.to_owned(), key.trim().to_owned()));
    }
    let (alice, bob) = (keys[0].clone(), keys[1].clone());
    env.flotilla(
        &admin,
        &["team", "create", "blue", "viewers", "--member", "alice"],
    )
    .await;
    env.flotilla(&admin, &["team", "create", "red", "ops"])
        .await;
    env.flotilla(&admin, &["team", "add", "red", "ops", "bob"])
        .await;
    env.flotilla(&admin, &["grant", "create", "blue", "viewers", "view"])
        .await;
    env.flotilla(&admin, &["grant", "create", "red", "ops", "manage"])
        .await;
    let grants: Value = serde_json::from_str(
        &env.flotilla(&admin, &["grant", "ls", "blue", "--format", "json"])
            .await,
    )
    .expect("json");
    assert_eq!(grants[0]["role"], "view", "{grants}");
    assert_eq!(grants[0]["resource"], "*", "{grants}");

    // ---- a cluster in each organization (the admin names it), on moto ----
    let mut clusters = Vec::new();
    for (org, name) in [("blue", "blue-web"), ("red", "red-web")] {
        let out = env
            .flotilla(
                &admin,
                &[
                    "nodecluster",
                    "create",
                    name,
                    "aws",
                    "us-east-1",
                    "t3.micro",
                    "-t",
                    "1",
                    "--org",
                    org,
                    "--sync",
                ],
            )
            .await;
        let uuid = out
            .lines()
            .map(str::trim)
            .find(|l| uri::is_uuid4(l))
            .unwrap_or_else(|| panic!("no uuid in:\n{out}"))
            .to_owned();
        clusters.push(uuid);
    }
    let (blue, red) = (clusters[0].clone(), clusters[1].clone());
    // Bob, who manages red, creates there without naming it (his only organization).
    env.flotilla(
        &bob,
        &[
            "nodecluster",
            "create",
            "bob-web",
            "aws",
            "us-east-1",
            "t3.micro",
            "-t",
            "1",
        ],
    )
    .await;

    // ---- alice's events stream: blue's changes and nothing of red's ----
    let events_path = env.dir.0.join("alice-events.out");
    let mut events = env
        .with_cli_env_as(&env.cli, &alice.0, &alice.1)
        .arg("event")
        .stdout(File::create(&events_path).expect("events file"))
        .stderr(File::create(env.dir.0.join("alice-events.err")).expect("events err"))
        .spawn()
        .expect("docker-cloud event");
    let blue_uri = uri::node_cluster(&blue);
    let red_uri = uri::node_cluster(&red);
    // Connected once she sees a change of blue: a tag (repeated until she does).
    let started = std::time::Instant::now();
    for probe in 0.. {
        env.ok(&["tag", "add", "-t", &format!("probe{probe}"), &blue])
            .await;
        if event_lines(&events_path)
            .iter()
            .any(|e| e["resource_uri"] == blue_uri.as_str())
        {
            break;
        }
        assert!(
            started.elapsed() < COMMAND_LIMIT,
            "alice's stream never saw blue"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Red gets a node, then blue does: once she has seen blue's new node, every event of
    // red's was published before it on the same stream.
    env.flotilla(&admin, &["nodecluster", "scale", &red, "2", "--sync"])
        .await;
    env.flotilla(&admin, &["nodecluster", "scale", &blue, "2", "--sync"])
        .await;
    wait_for_event(&events_path, "blue's new node", |e| {
        e["type"] == "node"
            && e["action"] == "create"
            && e["parents"] == serde_json::json!([blue_uri])
    })
    .await;
    let _ = events.start_kill();
    let _ = events.wait().await;
    let printed = fs::read_to_string(&events_path).expect("events");
    assert!(
        !printed.contains(&red),
        "alice saw red's events:\n{printed}"
    );
    let red_nodes: Vec<String> = serde_json::from_str::<Value>(
        &env.flotilla(&admin, &["node", "ls", "--format", "json"])
            .await,
    )
    .expect("json")
    .as_array()
    .expect("nodes")
    .iter()
    .filter(|n| n["node_cluster"] == red_uri.as_str())
    .map(|n| n["uuid"].as_str().expect("uuid").to_owned())
    .collect();
    assert_eq!(red_nodes.len(), 2);
    for node in &red_nodes {
        assert!(!printed.contains(node.as_str()), "{printed}");
    }

    // ---- docker-cloud with alice's key lists only blue ----
    let listed = env.run_as(&env.cli, &alice, &["nodecluster", "ls"]).await;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("blue-web") && !listed.contains("red-web"),
        "{listed}"
    );
    assert!(!listed.contains("bob-web"), "{listed}");
    let nodes = env.run_as(&env.cli, &alice, &["node", "ls"]).await;
    let nodes = String::from_utf8_lossy(&nodes.stdout).into_owned();
    assert_eq!(
        nodes.lines().count(),
        3,
        "a header and blue's two nodes:\n{nodes}"
    );
    for node in &red_nodes {
        assert!(!nodes.contains(&node[..8]), "{nodes}");
    }
    let inspect = env
        .run_as(&env.cli, &alice, &["nodecluster", "inspect", &red])
        .await;
    assert!(!inspect.status.success(), "{inspect:?}");
    // Her scale is refused with 403 naming the role, by both CLIs; nothing changes.
    let scale = env
        .run_as(&env.cli, &alice, &["nodecluster", "scale", &blue, "5"])
        .await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&scale.stdout),
        String::from_utf8_lossy(&scale.stderr)
    );
    assert!(said.contains("403") && said.contains("'operate'"), "{said}");
    let ours = env
        .run_as(flotilla, &alice, &["nodecluster", "scale", "blue-web", "5"])
        .await;
    assert!(!ours.status.success());
    let said = String::from_utf8_lossy(&ours.stderr);
    assert!(said.contains("'operate'"), "{said}");
    let ls: Value = serde_json::from_str(
        &env.flotilla(&alice, &["nodecluster", "ls", "--format", "json"])
            .await,
    )
    .expect("json");
    let names: Vec<&str> = ls
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["blue-web"]);
    assert_eq!(ls[0]["target_num_nodes"], 2);

    // ---- a key shown once, refused at once when revoked ----
    let laptop = env
        .flotilla(&alice, &["user", "key", "create", "alice", "laptop"])
        .await
        .trim()
        .to_owned();
    let laptop_key = ("alice".to_owned(), laptop.clone());
    let listed = env
        .flotilla(&alice, &["user", "key", "ls", "alice", "--format", "json"])
        .await;
    assert!(
        listed.contains("laptop") && !listed.contains(&laptop),
        "{listed}"
    );
    let ok = env
        .run_as(&env.cli, &laptop_key, &["nodecluster", "ls"])
        .await;
    assert!(ok.status.success(), "{ok:?}");
    env.flotilla(&alice, &["user", "key", "revoke", "alice", "laptop"])
        .await;
    let refused = env
        .run_as(&env.cli, &laptop_key, &["nodecluster", "ls"])
        .await;
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Not authorized"));
    let still = env.run_as(&env.cli, &alice, &["nodecluster", "ls"]).await;
    assert!(still.status.success(), "her other key still works");
}
