//! A real PostgreSQL server for tests: Debian's `initdb` and `postgres` into a temporary
//! directory, listening on 127.0.0.1 on a free port.
//!
//! What the user of the tests needs: PostgreSQL's server binaries — Debian's `postgresql`
//! package (`/usr/lib/postgresql/<version>/bin`, the newest is used; `./scripts/test`
//! installs it), or any directory holding `initdb`, `postgres` and `psql` named by
//! `FLOTILLA_TEST_PG_BIN`. Run as root, the server runs as the `postgres` user that
//! Debian's package creates (PostgreSQL refuses to run as root); otherwise as the caller.
//!
//! Design decisions:
//! * **One server per test process, a fresh database per test.** `initdb` takes about a
//!   second and a half, `CREATE DATABASE` a few milliseconds: [`database`] starts the
//!   process's server on first use ([`shared`]) and gives each caller its own database,
//!   dropped (`WITH (FORCE)`, closing what a panicking test left connected) when its
//!   [`TestDatabase`] is dropped. [`PostgresServer::start`] gives a test a server of its own.
//! * **Stopped even when nobody drops it.** A static is never dropped, and a test process
//!   can panic or be killed. `postgres` is started with a parent-death signal (`setpriv
//!   --pdeathsig INT`: a fast shutdown when its parent dies) by a thread that never ends (the
//!   signal follows the *thread* that forked), so the shared server stops when the test
//!   process ends, however it ends. A [`PostgresServer`] that is dropped stops its server at
//!   once and removes its directory.
//! * **Leftovers of dead processes are swept.** Each server lives in
//!   `$TMPDIR/flotilla-pg/<owner pid>-<n>` (data directory and unix socket). The first start
//!   in a process ([`sweep`]) stops any server whose owner is dead and removes its
//!   directory, as [`crate::host`] does for emulated hosts; a live owner's are never touched.
//! * **Fast and disposable.** `fsync`, `synchronous_commit` and `full_page_writes` are off:
//!   nothing here must survive a power loss. Authentication is `trust` for the superuser
//!   `flotilla`, on the loopback address and the socket only.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::host::{kill, pid_alive, processes_with, run, wait_for};

/// The superuser `initdb` creates; tests connect as it.
const SUPERUSER: &str = "flotilla";
/// How long a fresh server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

static NEXT: AtomicU32 = AtomicU32::new(1);

/// Where every test server's directory is made.
fn servers_dir() -> PathBuf {
    std::env::temp_dir().join("flotilla-pg")
}

/// The directory with `initdb`, `postgres` and `psql`: `FLOTILLA_TEST_PG_BIN`, else the
/// newest `/usr/lib/postgresql/<version>/bin`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FLOTILLA_TEST_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "no PostgreSQL server binaries: install Debian's postgresql package \
             (apt-get install postgresql) or set FLOTILLA_TEST_PG_BIN to a directory with \
             initdb, postgres and psql"
        ),
    }
}

/// Whether this process runs as root (PostgreSQL refuses to), from its effective uid.
fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .to_owned();
            uids.split_whitespace().nth(1).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// `program` run as the user the server runs as (`postgres` when we are root).
fn as_server_user(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A running PostgreSQL server of this process. Dropping it stops the server and removes
/// its directory.
#[derive(Debug)]
pub struct PostgresServer {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    postmaster: Mutex<Child>,
}

impl PostgresServer {
    /// Initialises a cluster in a new directory and starts it on a free port (blocking; about
    /// two seconds). The server gets a parent-death signal from the calling thread: see the
    /// module docs.
    pub fn start() -> anyhow::Result<PostgresServer> {
        sweep_once();
        let bin = bin_dir()?;
        let dir = servers_dir().join(format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir:?}"))?;
        if running_as_root() {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        }
        let data = dir.join("data");
        run(as_server_user(&bin.join("initdb"))
            .current_dir(&dir)
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "--auth=trust", "--no-locale", "-E", "UTF8"])
            .arg("--no-sync"))
        .context("initdb")?;
        let port = crate::free_port();
        let log = fs::File::create(dir.join("postgres.log"))?;
        let mut command = if running_as_root() {
            let mut command = Command::new("setpriv");
            command.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--pdeathsig=INT",
                "--",
            ]);
            command.arg(bin.join("postgres"));
            command
        } else {
            let mut command = Command::new("setpriv");
            command
                .args(["--pdeathsig=INT", "--"])
                .arg(bin.join("postgres"));
            command
        };
        let postmaster = command
            .current_dir(&dir)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(&dir)
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {:?}", bin.join("postgres")))?;
        let server = PostgresServer {
            dir,
            port,
            bin,
            postmaster: Mutex::new(postmaster),
        };
        wait_for("PostgreSQL to accept connections", START_TIMEOUT, || {
            if let Some(status) = server.postmaster().try_wait()? {
                bail!("postgres exited ({status}): {}", server.log());
            }
            Ok(server.psql("postgres", "SELECT 1").is_ok().then_some(()))
        })
        .with_context(|| server.log())?;
        Ok(server)
    }

    fn postmaster(&self) -> std::sync::MutexGuard<'_, Child> {
        self.postmaster
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The server's log so far (for failure messages).
    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id (its backends are its children): what a benchmark reads
    /// PostgreSQL's CPU time and memory from.
    pub fn pid(&self) -> u32 {
        self.postmaster().id()
    }

    /// The URL of `database` on this server, as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs one SQL command in `database` with `psql` over the unix socket.
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        run(Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
            ])
            .args(["-c", sql]))
    }

    /// A new, empty database on this server, dropped with the returned value.
    pub fn create_database(&self) -> anyhow::Result<TestDatabase<'_>> {
        static NEXT_DATABASE: AtomicU32 = AtomicU32::new(1);
        let name = format!("test_{}", NEXT_DATABASE.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(TestDatabase {
            url: self.url(&name),
            name,
            server: self,
        })
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let mut postmaster = self.postmaster();
        // SIGINT: a fast shutdown (clients disconnected, shared memory released).
        kill(postmaster.id(), "INT");
        let _ = postmaster.wait();
        drop(postmaster);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A database of its own for one test; dropped (with anything still connected to it) on
/// drop.
#[derive(Debug)]
pub struct TestDatabase<'a> {
    name: String,
    url: String,
    server: &'a PostgresServer,
}

impl TestDatabase<'_> {
    /// `postgres://…` for this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase<'_> {
    fn drop(&mut self) {
        let _ = self.server.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// The process's shared server, started on first use by a thread that lives as long as the
/// process (so the server's parent-death signal fires only when the process ends).
pub fn shared() -> anyhow::Result<&'static PostgresServer> {
    static SHARED: OnceLock<Result<PostgresServer, String>> = OnceLock::new();
    let server = SHARED.get_or_init(|| {
        let (started, result) = std::sync::mpsc::channel();
        let parent = std::thread::Builder::new()
            .name("postgres-parent".into())
            .spawn(move || {
                let _ = started.send(PostgresServer::start().map_err(|e| format!("{e:#}")));
                loop {
                    std::thread::park();
                }
            });
        match parent {
            Ok(_) => result
                .recv()
                .unwrap_or_else(|_| Err("the postgres-parent thread died".into())),
            Err(e) => Err(format!("cannot spawn the postgres-parent thread: {e}")),
        }
    });
    server
        .as_ref()
        .map_err(|e| anyhow::anyhow!("test PostgreSQL server: {e}"))
}

/// Everything in the database at `url` (schema and rows) as `pg_dump` writes it: what a
/// test searches for secrets that must not be stored in clear.
pub fn dump(url: &str) -> anyhow::Result<String> {
    run(Command::new(bin_dir()?.join("pg_dump")).args(["--no-owner", "-d", url]))
}

/// A fresh database on the process's shared server ([`shared`]).
pub fn database() -> anyhow::Result<TestDatabase<'static>> {
    shared()?.create_database()
}

/// Stops the servers of dead test processes and removes their directories. Only
/// directories whose owner PID is dead are touched. Runs once per process by itself.
pub fn sweep() {
    let Ok(entries) = fs::read_dir(servers_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if owner == std::process::id() || pid_alive(owner) {
            continue;
        }
        // The postmaster's command line names its data directory.
        let needle = format!("{}/", entry.path().display());
        let postmasters = processes_with(&needle);
        for pid in &postmasters {
            kill(*pid, "QUIT");
        }
        let _ = wait_for("dead owners' PostgreSQL to stop", START_TIMEOUT, || {
            Ok(postmasters.iter().all(|pid| !pid_alive(*pid)).then_some(()))
        });
        let _ = fs::remove_dir_all(entry.path());
    }
}

/// [`sweep`], once per process (the first [`PostgresServer::start`] runs it).
pub fn sweep_once() {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(sweep);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn databases_are_separate_and_dropped_and_a_dropped_server_is_gone() {
        let server = PostgresServer::start().expect("start");
        let first = server.create_database().expect("first");
        let second = server.create_database().expect("second");
        server
            .psql(
                first.name(),
                "CREATE TABLE t (x BIGINT); INSERT INTO t VALUES (7)",
            )
            .expect("write");
        assert_eq!(
            server
                .psql(first.name(), "SELECT x FROM t")
                .expect("read")
                .trim(),
            "7"
        );
        assert!(
            server.psql(second.name(), "SELECT x FROM t").is_err(),
            "the second database has no table t"
        );
        let name = first.name().to_owned();
        drop(first);
        let left = server
            .psql("postgres", "SELECT datname FROM pg_database")
            .expect("list");
        assert!(!left.lines().any(|l| l == name), "{name} in {left}");
        drop(second);
        let (dir, pid) = (server.dir.clone(), server.postmaster().id());
        drop(server);
        assert!(!pid_alive(pid), "postmaster {pid} still runs");
        assert!(!dir.exists(), "{dir:?} still exists");
    }

    #[test]
    fn a_dead_processs_server_is_swept() {
        // A stand-in for a test process that died with its server running: a child process
        // whose PID names the directory, killed once the server is up.
        let mut owner = Command::new("sleep").arg("600").spawn().expect("sleep");
        let owner_pid = owner.id();
        let bin = bin_dir().expect("bin");
        let dir = servers_dir().join(format!("{owner_pid}-1"));
        fs::create_dir_all(&dir).expect("dir");
        if running_as_root() {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir)).expect("chown");
        }
        run(as_server_user(&bin.join("initdb"))
            .current_dir(&dir)
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", SUPERUSER, "--auth=trust", "--no-sync"]))
        .expect("initdb");
        let port = crate::free_port();
        let mut postmaster = as_server_user(&bin.join("postgres"))
            .current_dir(&dir)
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        wait_for("the stand-in's server", START_TIMEOUT, || {
            Ok(std::net::TcpStream::connect(("127.0.0.1", port))
                .is_ok()
                .then_some(()))
        })
        .expect("up");
        owner.kill().expect("kill owner");
        owner.wait().expect("reap owner");
        sweep();
        // The sweep stopped it (it is our child here: reap it) and removed its directory.
        postmaster.wait().expect("postmaster ends");
        assert!(!dir.exists(), "{dir:?} still exists");
    }
}
