//! Shared pieces of the end-to-end tests: a real `flotilla server` process on a free port.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

pub const LIMIT: Duration = Duration::from_secs(60);

/// A `flotilla server` process, killed on drop.
pub struct Server {
    pub base: String,
    pub user: String,
    pub key: String,
    client: reqwest::Client,
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
            base: format!("http://127.0.0.1:{port}"),
            user: user.expect("user"),
            key: key.expect("key"),
            client: reqwest::Client::new(),
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

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.key));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The server's `--data-dir` (database, WAL, `secret.key`).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self._dir.path().join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
