//! Shared pieces of the end-to-end tests: a real `flotilla server` process on a free port,
//! an authenticated API client, and reading what a server printed.

use std::ops::Deref;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

pub const LIMIT: Duration = Duration::from_secs(60);

/// An authenticated client of one server's Docker Cloud API.
pub struct Api {
    pub base: String,
    pub user: String,
    pub key: String,
    pub client: reqwest::Client,
}

impl Api {
    /// One call: status and JSON body (`null` when there is none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, body, _) = self.call_with_action(method, path, body).await;
        (status, body)
    }

    /// One call: status, body and the `X-DockerCloud-Action-URI` header.
    pub async fn call_with_action(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, Option<String>) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.key))
            .timeout(Duration::from_secs(20));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let action = response
            .headers()
            .get("X-DockerCloud-Action-URI")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (status, response.json().await.unwrap_or(Value::Null), action)
    }

    /// Creates a cluster of `nodes` t3.micro in us-east-1; its uuid.
    pub async fn create_cluster(&self, name: &str, nodes: u32) -> String {
        let (status, created) = self
            .call(
                reqwest::Method::POST,
                "/api/infra/v1/nodecluster/",
                Some(json!({"name": name, "target_num_nodes": nodes,
                    "region": "/api/infra/v1/region/aws/us-east-1/",
                    "node_type": "/api/infra/v1/nodetype/aws/t3.micro/", "disk": "30"})),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        created["uuid"].as_str().expect("uuid").to_owned()
    }

    /// [`Api::create_cluster`], then deploys it; its uuid.
    pub async fn create_and_deploy(&self, name: &str, nodes: u32) -> String {
        let uuid = self.create_cluster(name, nodes).await;
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/infra/v1/nodecluster/{uuid}/deploy/"),
                None,
            )
            .await;
        assert_eq!(status, 202, "{body}");
        uuid
    }
}

/// The admin's credentials as a server's first start printed them in `stdout`.
pub fn printed_credentials(stdout: &Path) -> (String, String) {
    let text = std::fs::read_to_string(stdout).expect("stdout");
    let value = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
    };
    (
        value("export DOCKERCLOUD_USER="),
        value("export DOCKERCLOUD_APIKEY="),
    )
}

/// The `stdout-<run>.log`/`stderr-<run>.log` files of a server started twice in `dir`.
pub fn run_logs(dir: &Path) -> String {
    let mut all = String::new();
    for run in 0..2 {
        for stream in ["stdout", "stderr"] {
            let path = dir.join(format!("{stream}-{run}.log"));
            all.push_str(&format!(
                "--- {stream} {run}\n{}\n",
                std::fs::read_to_string(path).unwrap_or_default()
            ));
        }
    }
    all
}

/// A `flotilla server` process, killed on drop.
pub struct Server {
    api: Api,
    _process: tokio::process::Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `flotilla server` against `aws_endpoint` with 3 AZs of us-east-1 and `extra`
    /// arguments (e.g. `--node-ready running`), and waits until it answers.
    pub async fn start(aws_endpoint: &str, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = flotilla_testkit::free_port();
        let log = dir.path().join("server.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut process = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--endpoint-url", aws_endpoint])
            .args(extra)
            .args(["--azs", "us-east-1a,us-east-1b,us-east-1c"])
            .env("AWS_ACCESS_KEY_ID", "AKIAE2EAGENTS")
            .env("AWS_SECRET_ACCESS_KEY", "e2e-secret")
            .env("AWS_REGION", "us-east-1")
            .env("FLOTILLA_LOG", "info")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("FLOTILLA_PUBLIC_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start flotilla server");
        let stdout = process.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut user, mut key) = (None, None);
        let started = Instant::now();
        while user.is_none() || key.is_none() {
            let line = tokio::time::timeout(LIMIT, lines.next_line())
                .await
                .expect("the server prints the admin's key")
                .expect("read stdout")
                .unwrap_or_else(|| {
                    panic!(
                        "server exited: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                });
            if let Some(value) = line.trim().strip_prefix("export DOCKERCLOUD_USER=") {
                user = Some(value.to_owned());
            }
            if let Some(value) = line.trim().strip_prefix("export DOCKERCLOUD_APIKEY=") {
                key = Some(value.to_owned());
            }
            assert!(started.elapsed() < LIMIT);
        }
        // Keep draining stdout so the server never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut server = Server {
            api: Api {
                base: format!("http://127.0.0.1:{port}"),
                user: user.expect("user"),
                key: key.expect("key"),
                client: reqwest::Client::new(),
            },
            _process: process,
            log,
            _dir: dir,
        };
        let started = Instant::now();
        while server
            .client
            .get(format!("{}/_ping", server.base))
            .send()
            .await
            .is_err()
        {
            if let Ok(Some(status)) = server._process.try_wait() {
                panic!(
                    "the server exited ({status}) before answering:\n{}",
                    server.log()
                );
            }
            assert!(
                started.elapsed() < LIMIT,
                "server never answered:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// The server's `--data-dir` (database, WAL, `secret.key`).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self._dir.path().join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Deref for Server {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}
