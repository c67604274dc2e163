//! The measured `flotilla server`: a separate process (so its CPU time and memory can be
//! read from `/proc`), on a free loopback port, with a fresh data directory, started by the
//! test kit's launcher through `prlimit` so that it may hold tens of thousands of agent
//! connections.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use flotilla_testkit::{DatabaseKind, ServerBuilder};
use serde_json::Value;

/// Open files the server should be allowed (one per agent connection, plus the database);
/// capped at the hard limit, which a container may not let even root raise.
pub const SERVER_NOFILE: u64 = 65_536;

#[derive(Debug)]
pub struct ServerProcess {
    pub base: String,
    pub user: String,
    pub key: String,
    pub pid: u32,
    api: flotilla_api::Client,
    process: flotilla_testkit::ServerProcess,
    /// The data directory of a replica after the first (holding a copy of its
    /// `secret.key`), removed with it.
    _data: Option<tempfile::TempDir>,
}

/// One of several replicas sharing a PostgreSQL database.
#[derive(Debug, Clone, Copy)]
pub struct Replica<'a> {
    /// `postgres://…`, the servers' `--database`.
    pub database_url: &'a str,
    /// The server's `--replica-id`.
    pub id: &'a str,
    /// The replica started first, for every later one: its `secret.key` (every replica of
    /// an installation needs it) and the admin's credentials, which only a first start
    /// prints.
    pub first: Option<&'a ServerProcess>,
}

/// Whether `bin server` knows an option (e.g. `--heartbeat-grace`, which newer servers have).
pub fn supports(bin: &Path, option: &str) -> bool {
    std::process::Command::new(bin)
        .args(["server", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(option))
        .unwrap_or(false)
}

/// Whether the server behind `api` says (`/metrics`, `flotilla_lease_held`) that it holds
/// the lease on `work`; `None` when it does not answer.
pub async fn holds_lease(api: &flotilla_api::Client, work: &str) -> Option<bool> {
    let Ok((200, body)) = api.get_bytes(flotilla_api::uri::METRICS).await else {
        return None;
    };
    let wanted = format!("work=\"{work}\"}} 1");
    Some(
        String::from_utf8_lossy(&body)
            .lines()
            .any(|l| l.starts_with("flotilla_lease_held{") && l.ends_with(&wanted)),
    )
}

impl ServerProcess {
    /// Starts `bin server` against `aws_endpoint` (3 AZs of us-east-1) with `extra` arguments,
    /// through the test kit's launcher (one environment block with the tests).
    pub async fn start(bin: &Path, aws_endpoint: &str, extra: &[String]) -> anyhow::Result<Self> {
        Self::start_replica(bin, aws_endpoint, extra, None).await
    }

    /// [`ServerProcess::start`], as one of several replicas on one PostgreSQL database when
    /// `replica` says so.
    pub async fn start_replica(
        bin: &Path,
        aws_endpoint: &str,
        extra: &[String],
        replica: Option<Replica<'_>>,
    ) -> anyhow::Result<Self> {
        let nofile = SERVER_NOFILE.min(crate::sys::hard_nofile().max(1024));
        let mut builder = ServerBuilder::new(bin, aws_endpoint)
            .access_key_id("AKIABENCH")
            .args(extra)
            // prlimit execs the server, so the pid is the server's.
            .wrapper(["prlimit", &format!("--nofile={nofile}:{nofile}"), "--"]);
        let mut data = None;
        if let Some(replica) = &replica {
            // The database is the one given here, whatever FLOTILLA_TEST_DATABASE says.
            builder = builder.database(DatabaseKind::Sqlite).args([
                "--database",
                replica.database_url,
                "--replica-id",
                replica.id,
            ]);
            if let Some(first) = replica.first {
                let dir = tempfile::Builder::new()
                    .prefix("flotilla-replica-")
                    .tempdir()
                    .context("a data directory for the replica")?;
                std::fs::copy(
                    first.data_dir().join("secret.key"),
                    dir.path().join("secret.key"),
                )
                .context("copying secret.key to the replica")?;
                builder = builder.data_dir(dir.path());
                data = Some(dir);
            }
        }
        let process = builder.start().await?;
        let credentials = match replica.and_then(|r| r.first) {
            Some(first) => flotilla_testkit::Credentials {
                user: first.user.clone(),
                key: first.key.clone(),
            },
            None => process
                .credentials()
                .context("the server never printed the admin's key")?
                .clone(),
        };
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(ServerProcess {
            base: process.base(),
            api: flotilla_api::Client::new(
                process.base(),
                credentials.user.clone(),
                credentials.key.clone(),
                http,
            ),
            user: credentials.user,
            key: credentials.key,
            pid: process.pid().context("server pid")?,
            process,
            _data: data,
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.process.data_dir().to_owned()
    }

    /// The directory of the server's `stdout-<run>.log` and `stderr-<run>.log`.
    pub fn log_dir(&self) -> PathBuf {
        self.process.dir().to_owned()
    }

    /// The last lines the server logged, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Bytes of the database, its WAL and shared-memory file.
    pub fn database_bytes(&self) -> u64 {
        ["flotilla.db", "flotilla.db-wal", "flotilla.db-shm"]
            .iter()
            .filter_map(|f| std::fs::metadata(self.data_dir().join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// The typed client of the server's API, as the admin.
    pub fn api(&self) -> &flotilla_api::Client {
        &self.api
    }

    /// A Basic-authenticated API call; the status and the JSON body (Null if none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let reply = self.api.send(method, path, body.as_ref()).await?;
        Ok((reply.status, reply.body))
    }

    /// Stops the server with SIGTERM (graceful), waiting a few seconds, then kills it.
    pub async fn stop(mut self) {
        self.process.stop(Duration::from_secs(10)).await;
    }
}

/// Copies what servers printed (`stdout-0.log`, `stderr-0.log`: the log at
/// `FLOTILLA_LOG=info`) to `<to>/<name>-stdout.log` and `<to>/<name>-stderr.log` when it is
/// dropped: declared after the servers, it is dropped before them (and their temporary
/// directories), on success and on failure alike.
#[derive(Debug, Default)]
pub struct KeepLogs {
    pub to: Option<PathBuf>,
    pub servers: Vec<(PathBuf, String)>,
}

impl Drop for KeepLogs {
    fn drop(&mut self) {
        let Some(to) = &self.to else { return };
        let _ = std::fs::create_dir_all(to);
        for (dir, name) in &self.servers {
            for stream in ["stdout", "stderr"] {
                let from = dir.join(format!("{stream}-0.log"));
                if let Err(e) = std::fs::copy(&from, to.join(format!("{name}-{stream}.log"))) {
                    eprintln!("cannot keep {}: {e}", from.display());
                }
            }
        }
    }
}
