//! The one way tests and benchmarks start a `flotilla server` process: [`ServerBuilder`]
//! configures it, [`ServerProcess`] is the running server (kill it with SIGKILL, stop it with
//! SIGTERM, restart it on the same data directory and port, read what it printed).
//!
//! Design decisions:
//! * The binary's path is an argument (tests pass `env!("CARGO_BIN_EXE_flotilla")`, the
//!   benchmark its `--bin`): the test kit never depends on the binary crate.
//! * One environment block, [`isolate_env`]: every `FLOTILLA_*`, `DOCKERCLOUD_*` and `AWS_*`
//!   variable of the caller's shell is removed, then the test's AWS keys and region and
//!   `FLOTILLA_LOG=info` are set, then the builder's own variables. A developer's
//!   `AWS_PROFILE` or `FLOTILLA_DATA_DIR` can therefore never change what a test does.
//! * Output goes to files, `stdout-<run>.log` and `stderr-<run>.log` in the server's
//!   directory (run 0 is the first start, each restart adds one): nothing has to drain a
//!   pipe, and the logs of every run are there to explain a failure.
//! * The database is SQLite in the data directory, or (`ServerBuilder::database`, or every
//!   server of a test run with `FLOTILLA_TEST_DATABASE=postgres`) a fresh database on the
//!   test process's PostgreSQL server ([`crate::postgres`]), passed as `--database`, kept
//!   across restarts and dropped with the [`ServerProcess`].
//! * "Ready" is "accepts TCP connections on its port", which works the same with and without
//!   TLS; the admin's credentials, which a first start prints before it listens, are read
//!   from `stdout-0.log` then. A process that exits before it listens is reported with its
//!   logs at once rather than after the start limit.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long a start may take before it is reported as failed.
pub const START_LIMIT: Duration = Duration::from_secs(60);

/// The availability zones a test server uses unless told otherwise.
pub const TEST_AZS: &str = "us-east-1a,us-east-1b,us-east-1c";

/// Prefixes of the variables that [`isolate_env`] removes from a child's environment.
pub const ISOLATED_PREFIXES: [&str; 3] = ["FLOTILLA_", "DOCKERCLOUD_", "AWS_"];

/// Removes every `FLOTILLA_*`, `DOCKERCLOUD_*` and `AWS_*` variable the current process would
/// pass on to `command`, so that nothing from the user's shell leaks into a test's process.
/// Use it for the CLI and agent processes a test starts too.
pub fn isolate_env(command: &mut tokio::process::Command) -> &mut tokio::process::Command {
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if ISOLATED_PREFIXES.iter().any(|p| text.starts_with(p)) {
            command.env_remove(&name);
        }
    }
    command
}

/// The admin's user name and API key, as a server's first start prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub key: String,
}

/// Reads the `export DOCKERCLOUD_USER=` and `export DOCKERCLOUD_APIKEY=` lines a server's
/// first start prints; `None` when either is missing.
pub fn printed_credentials(stdout: &str) -> Option<Credentials> {
    let value = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned))
    };
    Some(Credentials {
        user: value("export DOCKERCLOUD_USER=")?,
        key: value("export DOCKERCLOUD_APIKEY=")?,
    })
}

/// Every run's stdout and stderr that a server kept in `dir` (see [`ServerBuilder::dir`]),
/// each under a `--- stdout <run>` heading.
pub fn logs_in(dir: &Path) -> String {
    let mut all = String::new();
    for run in 0.. {
        let read = |stream: &str| std::fs::read_to_string(dir.join(format!("{stream}-{run}.log")));
        let (Ok(stdout), stderr) = (read("stdout"), read("stderr")) else {
            break;
        };
        all.push_str(&format!("--- stdout {run}\n{stdout}\n"));
        all.push_str(&format!(
            "--- stderr {run}\n{}\n",
            stderr.unwrap_or_default()
        ));
    }
    all
}

/// Which database a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// `flotilla.db` in the data directory (the server's default).
    Sqlite,
    /// A fresh database on the test process's PostgreSQL server.
    Postgres,
}

impl DatabaseKind {
    /// `FLOTILLA_TEST_DATABASE` of the test run (`postgres` or `sqlite`, the default).
    pub fn from_env() -> DatabaseKind {
        match std::env::var("FLOTILLA_TEST_DATABASE").as_deref() {
            Ok("postgres") => DatabaseKind::Postgres,
            _ => DatabaseKind::Sqlite,
        }
    }
}

/// The server's certificate and key for `--tls-cert` / `--tls-key`.
#[derive(Debug, Clone)]
struct Tls {
    cert: PathBuf,
    key: PathBuf,
}

/// The configuration of a `flotilla server` process; [`ServerBuilder::start`] starts it.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    bin: PathBuf,
    aws_endpoint: String,
    access_key_id: String,
    port: Option<u16>,
    dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    azs: Option<String>,
    tls: Option<Tls>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    wrapper: Vec<OsString>,
    start_limit: Duration,
    database: DatabaseKind,
}

impl ServerBuilder {
    /// `bin server` against the AWS API at `aws_endpoint` (moto or a proxy in front of it),
    /// in us-east-1 with its three test zones, on a free port, with a fresh temporary data
    /// directory.
    pub fn new(bin: impl Into<PathBuf>, aws_endpoint: impl Into<String>) -> ServerBuilder {
        ServerBuilder {
            bin: bin.into(),
            aws_endpoint: aws_endpoint.into(),
            access_key_id: "AKIAE2ETEST".to_owned(),
            port: None,
            dir: None,
            data_dir: None,
            azs: Some(TEST_AZS.to_owned()),
            tls: None,
            args: Vec::new(),
            env: Vec::new(),
            wrapper: Vec::new(),
            start_limit: START_LIMIT,
            database: DatabaseKind::from_env(),
        }
    }

    /// The AWS access key id the server uses (the proxy can tell servers apart by it).
    pub fn access_key_id(mut self, access_key_id: impl Into<String>) -> ServerBuilder {
        self.access_key_id = access_key_id.into();
        self
    }

    /// Listen on `port` rather than a fresh [`crate::free_port`].
    pub fn port(mut self, port: u16) -> ServerBuilder {
        self.port = Some(port);
        self
    }

    /// Keep logs (and, unless [`ServerBuilder::data_dir`] says otherwise, the data directory
    /// `<dir>/data`) in `dir`, which the caller owns, rather than in a temporary directory.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> ServerBuilder {
        self.dir = Some(dir.into());
        self
    }

    /// The server's `--data-dir`.
    pub fn data_dir(mut self, data_dir: impl Into<PathBuf>) -> ServerBuilder {
        self.data_dir = Some(data_dir.into());
        self
    }

    /// `--azs` (comma-separated); `None` leaves the server's default.
    pub fn azs(mut self, azs: Option<&str>) -> ServerBuilder {
        self.azs = azs.map(str::to_owned);
        self
    }

    /// Serve HTTPS with this certificate and key.
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> ServerBuilder {
        self.tls = Some(Tls {
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// One more argument after the standard ones.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> ServerBuilder {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// More arguments after the standard ones (e.g. `["--node-ready", "running"]`).
    pub fn args<I, S>(mut self, args: I) -> ServerBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable, set after the isolation block (so it may set a `FLOTILLA_*`).
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> ServerBuilder {
        self.env
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Run the server through another program that execs it, e.g.
    /// `["prlimit", "--nofile=65536:65536", "--"]` (the pid stays the server's).
    pub fn wrapper<I, S>(mut self, wrapper: I) -> ServerBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.wrapper = wrapper.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    /// Run the server on `database`, whatever `FLOTILLA_TEST_DATABASE` says (a test of
    /// something only one database has, such as the SQLite file's backup, pins it).
    pub fn database(mut self, database: DatabaseKind) -> ServerBuilder {
        self.database = database;
        self
    }

    /// How long a start may take.
    pub fn start_limit(mut self, limit: Duration) -> ServerBuilder {
        self.start_limit = limit;
        self
    }

    /// The `flotilla server` command on `port` with `data_dir`, its environment isolated and
    /// set, stdin closed, killed on drop; its output is left to the caller. For tests that
    /// expect the server to refuse to start (`command.output()`).
    pub fn command(&self, port: u16, data_dir: &Path) -> tokio::process::Command {
        let mut command = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = tokio::process::Command::new(program);
                command.args(rest).arg(&self.bin);
                command
            }
            None => tokio::process::Command::new(&self.bin),
        };
        command
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--endpoint-url", &self.aws_endpoint]);
        if let Some(azs) = &self.azs {
            command.args(["--azs", azs]);
        }
        if let Some(tls) = &self.tls {
            command
                .arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key);
        }
        command.args(&self.args);
        isolate_env(&mut command)
            .env("AWS_ACCESS_KEY_ID", &self.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", "e2e-secret")
            .env("AWS_REGION", "us-east-1")
            .env("FLOTILLA_LOG", "info");
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command.stdin(Stdio::null()).kill_on_drop(true);
        command
    }

    /// Starts the server and waits until it listens; the error names what went wrong and
    /// carries the server's logs.
    pub async fn start(self) -> anyhow::Result<ServerProcess> {
        let (temp, dir) = match &self.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                (None, dir.clone())
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("flotilla-server-")
                    .tempdir()
                    .context("a temporary directory for the server")?;
                let dir = temp.path().to_owned();
                (Some(temp), dir)
            }
        };
        let data_dir = self.data_dir.clone().unwrap_or_else(|| dir.join("data"));
        let port = self.port.unwrap_or_else(crate::free_port);
        let postgres = match self.database {
            DatabaseKind::Sqlite => None,
            DatabaseKind::Postgres => Some(
                tokio::task::spawn_blocking(crate::postgres::database)
                    .await
                    .context("creating the PostgreSQL database")??,
            ),
        };
        let mut builder = self;
        if let Some(database) = &postgres {
            builder = builder.args(["--database", database.url()]);
        }
        let mut server = ServerProcess {
            _postgres: postgres,
            builder,
            port,
            dir,
            data_dir,
            _temp: temp,
            child: None,
            runs: 0,
            credentials: None,
        };
        server.launch().await?;
        server.credentials = printed_credentials(&server.stdout(0));
        Ok(server)
    }
}

/// A running (or killed) `flotilla server`; killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    builder: ServerBuilder,
    port: u16,
    dir: PathBuf,
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    child: Option<tokio::process::Child>,
    runs: u32,
    credentials: Option<Credentials>,
    /// Declared after `child`: dropped once the server is killed.
    _postgres: Option<crate::postgres::TestDatabase<'static>>,
}

impl ServerProcess {
    async fn launch(&mut self) -> anyhow::Result<()> {
        let run = self.runs;
        self.runs += 1;
        let stdout = std::fs::File::create(self.dir.join(format!("stdout-{run}.log")))
            .context("the server's stdout log")?;
        let stderr = std::fs::File::create(self.dir.join(format!("stderr-{run}.log")))
            .context("the server's stderr log")?;
        let mut child = self
            .builder
            .command(self.port, &self.data_dir)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {} server", self.builder.bin.display()))?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().context("polling the server")? {
                bail!(
                    "the server exited ({status}) before it listened on port {}:\n{}",
                    self.port,
                    self.log()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                break;
            }
            if started.elapsed() > self.builder.start_limit {
                let _ = child.start_kill();
                bail!(
                    "the server did not listen on port {} within {:?}:\n{}",
                    self.port,
                    self.builder.start_limit,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// `http://127.0.0.1:<port>`, or `https://` with TLS.
    pub fn base(&self) -> String {
        let scheme = if self.builder.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the logs (and, by default, of the data directory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's `--data-dir` (database, WAL, `secret.key`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id of the running server (of the wrapper, which execs it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    /// The admin's credentials the first start printed; `None` when it printed none (a data
    /// directory that already had an admin).
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// What run `run` (0 = the first start) printed on stdout.
    pub fn stdout(&self, run: u32) -> String {
        std::fs::read_to_string(self.dir.join(format!("stdout-{run}.log"))).unwrap_or_default()
    }

    /// What run `run` printed on stderr (its log).
    pub fn stderr(&self, run: u32) -> String {
        std::fs::read_to_string(self.dir.join(format!("stderr-{run}.log"))).unwrap_or_default()
    }

    /// Every run's stdout and stderr, each under a `--- stdout <run>` heading.
    pub fn log(&self) -> String {
        logs_in(&self.dir)
    }

    /// The last `lines` lines of each run's stdout and stderr: what explains a failure
    /// without drowning the report.
    pub fn log_tail(&self, lines: usize) -> String {
        let tail = |text: String| {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        let mut all = String::new();
        for run in 0..self.runs {
            all.push_str(&format!("--- stdout {run}\n{}\n", tail(self.stdout(run))));
            all.push_str(&format!("--- stderr {run}\n{}\n", tail(self.stderr(run))));
        }
        all
    }

    /// SIGSTOP (`pause`) or SIGCONT (`resume`) to the running server, by its PID: a replica
    /// frozen in the middle of its work, as a long GC pause or a suspended VM would.
    pub fn pause(&self, pause: bool) -> anyhow::Result<()> {
        let pid = self.pid().context("the server is not running")?;
        let signal = if pause { "-STOP" } else { "-CONT" };
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill {signal} {pid}: {status}");
        Ok(())
    }

    /// SIGKILL, and wait until the process is gone (a crash: nothing is flushed or closed).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM (a graceful shutdown), waiting up to `limit` before a SIGKILL.
    pub async fn stop(&mut self, limit: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(limit, child.wait()).await.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Kills the server (if it runs) and starts a new process on the same data directory and
    /// port, with the same arguments; waits until it listens.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.launch().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_from_the_printed_exports() {
        let printed =
            "Admin created.\n  export DOCKERCLOUD_USER=admin\n  export DOCKERCLOUD_APIKEY=k3y\n";
        assert_eq!(
            printed_credentials(printed),
            Some(Credentials {
                user: "admin".into(),
                key: "k3y".into()
            })
        );
        assert_eq!(printed_credentials("export DOCKERCLOUD_USER=admin"), None);
    }

    #[test]
    fn the_isolated_environment_drops_the_callers_variables() {
        let mut command = tokio::process::Command::new("env");
        isolate_env(&mut command);
        let removed: Vec<String> = command
            .as_std()
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        for (name, _) in std::env::vars() {
            if ISOLATED_PREFIXES.iter().any(|p| name.starts_with(p)) {
                assert!(removed.contains(&name), "{name} leaks");
            }
        }
    }
}
