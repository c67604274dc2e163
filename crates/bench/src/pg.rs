//! The PostgreSQL server of a benchmark run: the test kit's ([`PostgresServer`]: Debian's
//! `initdb` and `postgres` in a temporary directory, on a free port), started on a thread of
//! its own that lives until the run drops it. The server's parent-death signal follows the
//! thread that started it, so it must not be a pooled (blocking) thread that may end early;
//! if the bench process dies, the thread dies with it and the server shuts down. Dropping a
//! [`Postgres`] stops the server and removes its directory.

use std::sync::Arc;
use std::sync::mpsc;

use anyhow::Context as _;
use flotilla_testkit::postgres::PostgresServer;

#[derive(Debug)]
pub struct Postgres {
    server: Option<Arc<PostgresServer>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Postgres {
    /// Starts a fresh server (blocking, a few seconds).
    pub fn start() -> anyhow::Result<Postgres> {
        let (started, result) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-postgres".into())
            .spawn(move || match PostgresServer::start() {
                Ok(server) => {
                    let server = Arc::new(server);
                    let _ = started.send(Ok(server.clone()));
                    // Until the run drops its handle (or the sender is gone).
                    let _ = stopped.recv();
                    // The last reference: stops the server and removes its directory.
                    drop(server);
                }
                Err(e) => {
                    let _ = started.send(Err(e));
                }
            })
            .context("spawning the postgres thread")?;
        let server = result
            .recv()
            .context("the postgres thread died")?
            .context("starting PostgreSQL")?;
        Ok(Postgres {
            server: Some(server),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn server(&self) -> &PostgresServer {
        self.server.as_ref().expect("a running server")
    }

    /// Creates `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        self.server()
            .psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.server().url(name))
    }

    /// `pg_database_size` of `name`, in bytes.
    pub fn database_bytes(&self, name: &str) -> u64 {
        self.server()
            .psql(name, "SELECT pg_database_size(current_database())")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> u32 {
        self.server().pid()
    }

    /// `SHOW <setting>`, for the record.
    pub fn setting(&self, setting: &str) -> String {
        self.server()
            .psql("postgres", &format!("SHOW {setting}"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The thread holds the last reference once this one is gone.
        self.server.take();
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
