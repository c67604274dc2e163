//! The measured `flotilla server`: a separate process (so its CPU time and memory can be
//! read from `/proc`), on a free loopback port, with a fresh data directory, started through
//! `prlimit` so that it may hold tens of thousands of agent connections.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Open files the server should be allowed (one per agent connection, plus the database);
/// capped at the hard limit, which a container may not let even root raise.
pub const SERVER_NOFILE: u64 = 65_536;

#[derive(Debug)]
pub struct ServerProcess {
    pub base: String,
    pub user: String,
    pub key: String,
    pub pid: u32,
    client: reqwest::Client,
    process: tokio::process::Child,
    dir: tempfile::TempDir,
}

/// Whether `bin server` knows an option (e.g. `--heartbeat-grace`, which newer servers have).
pub fn supports(bin: &Path, option: &str) -> bool {
    std::process::Command::new(bin)
        .args(["server", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(option))
        .unwrap_or(false)
}

impl ServerProcess {
    /// Starts `bin server` against `aws_endpoint` (3 AZs of us-east-1) with `extra` arguments.
    pub async fn start(bin: &Path, aws_endpoint: &str, extra: &[String]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-bench-")
            .tempdir()?;
        let port = flotilla_testkit::free_port();
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let mut args: Vec<String> = vec![
            "server".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--endpoint-url".into(),
            aws_endpoint.into(),
            "--azs".into(),
            "us-east-1a,us-east-1b,us-east-1c".into(),
        ];
        args.extend(extra.iter().cloned());
        let nofile = SERVER_NOFILE.min(crate::sys::hard_nofile().max(1024));
        let mut process = tokio::process::Command::new("prlimit")
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(bin)
            .args(&args)
            .env("AWS_ACCESS_KEY_ID", "AKIABENCH")
            .env("AWS_SECRET_ACCESS_KEY", "bench-secret")
            .env("AWS_REGION", "us-east-1")
            .env("FLOTILLA_LOG", "info")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("FLOTILLA_PUBLIC_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} server (through prlimit)", bin.display()))?;
        // prlimit execs the server, so the pid is the server's.
        let pid = process.id().context("server pid")?;
        let stdout = process.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut user, mut key) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while user.is_none() || key.is_none() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = tokio::time::timeout(remaining, lines.next_line())
                .await
                .context("the server never printed the admin's key")??;
            let Some(line) = line else {
                bail!(
                    "the server exited: {}",
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
                );
            };
            if let Some(v) = line.trim().strip_prefix("export DOCKERCLOUD_USER=") {
                user = Some(v.to_owned());
            }
            if let Some(v) = line.trim().strip_prefix("export DOCKERCLOUD_APIKEY=") {
                key = Some(v.to_owned());
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let server = ServerProcess {
            base: format!("http://127.0.0.1:{port}"),
            user: user.unwrap_or_default(),
            key: key.unwrap_or_default(),
            pid,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            process,
            dir,
        };
        while server
            .client
            .get(format!("{}/_ping", server.base))
            .send()
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("the server never answered /_ping");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(server)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The last lines the server logged, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Bytes of the database, its WAL and shared-memory file.
    pub fn database_bytes(&self) -> u64 {
        ["flotilla.db", "flotilla.db-wal", "flotilla.db-shm"]
            .iter()
            .filter_map(|f| std::fs::metadata(self.data_dir().join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// A Basic-authenticated API call; the status and the JSON body (Null if none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.key));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Stops the server with SIGTERM (graceful), waiting a few seconds, then kills it.
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(10), self.process.wait())
            .await
            .is_err()
        {
            let _ = self.process.kill().await;
        }
    }
}
