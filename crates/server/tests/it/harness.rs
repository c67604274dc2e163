//! A server on port 0 with its own SQLite file (or, with `FLOTILLA_TEST_DATABASE=postgres`,
//! its own database on the test process's PostgreSQL server), the typed API client for it
//! ([`flotilla_api::Client`]), and a raw client for the requests the typed one would never
//! send (malformed bodies, other credentials, no credentials).

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::uri;
use flotilla_core::cloud::Cloud;
use flotilla_server::{Credentials, ServerConfig};
use reqwest::Method;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub base: String,
    pub credentials: Credentials,
    pub client: reqwest::Client,
    pub api: flotilla_api::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<anyhow::Result<()>>,
}

/// A reply: status, JSON body (or `Null`), and the action header if any.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub action_uri: Option<String>,
}

pub fn config(dir: &tempfile::TempDir) -> ServerConfig {
    let mut config = ServerConfig::new(dir.path().join("flotilla.db"));
    if flotilla_testkit::DatabaseKind::from_env() == flotilla_testkit::DatabaseKind::Postgres {
        config.database_url = Some(postgres_database_of(dir.path()));
    }
    config.reconcile.poll_interval = Duration::from_millis(50);
    config.reconcile.resync_interval = Duration::from_secs(2);
    // These servers have no agents; `agents` opts back in to registration.
    config.reconcile.node_ready = flotilla_server::NodeReady::InstanceRunning;
    config
}

impl TestServer {
    /// Initializes the database if needed and starts a server. `credentials` must be given
    /// when the database was initialized before (the key is shown only once).
    pub async fn start<C: Cloud + 'static>(
        config: ServerConfig,
        cloud: Arc<C>,
        credentials: Option<Credentials>,
    ) -> TestServer {
        let installation = flotilla_server::initialize(&config)
            .await
            .expect("initialize");
        let credentials = installation
            .new_admin
            .clone()
            .or(credentials)
            .expect("credentials of a new or given admin");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(flotilla_server::run(listener, config, cloud, async move {
            let _ = stopped.await;
        }));
        // The contract tests check what the server records of its client: the Python one.
        let client = reqwest::Client::builder()
            .user_agent("python-dockercloud/1.0.12")
            .build()
            .expect("HTTP client");
        let api = flotilla_api::Client::new(
            base.clone(),
            credentials.username.clone(),
            credentials.api_key.clone(),
            client.clone(),
        );
        TestServer {
            base,
            credentials,
            client,
            api,
            shutdown: Some(shutdown),
            handle,
        }
    }

    /// Graceful stop; returns the server's result.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(30), &mut self.handle)
            .await
            .expect("server stops in time")
            .expect("server task");
        result.expect("server ran cleanly");
    }

    /// Drops the server mid-flight, like a crash: reconciler passes are cut short.
    pub async fn crash(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        auth: Option<(&str, &str)>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .header("User-Agent", "python-dockercloud/1.0.12");
        if let Some((user, key)) = auth {
            request = request.basic_auth(user, Some(key));
        }
        if let Some(body) = body {
            request = request.body(body.to_owned());
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let action_uri = response
            .headers()
            .get("X-DockerCloud-Action-URI")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            body,
            action_uri,
        }
    }

    /// One call through the typed client, as the admin; any answer.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let reply = self
            .api
            .send(method.clone(), path, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
        Reply {
            status: reply.status,
            body: reply.body,
            action_uri: reply.action_uri,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    /// Polls a cluster until it reaches `state`; panics with the last object and the
    /// action log otherwise.
    pub async fn wait_for_cluster(&self, uuid: &str, state: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let reply = self.get(&uri::node_cluster(uuid)).await;
            assert_eq!(reply.status, 200, "{:?}", reply.body);
            if reply.body["state"] == state {
                return reply.body;
            }
            if started.elapsed() > limit {
                let actions = self.get(&uri::actions()).await;
                let logs: Vec<String> = futures_logs(self, &actions.body).await;
                panic!(
                    "cluster never reached {state}: {:#}\nactions: {logs:#?}",
                    reply.body
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls an action until it is no longer in progress.
    pub async fn wait_for_action(&self, action_uri: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let reply = self.get(action_uri).await;
            assert_eq!(reply.status, 200, "{:?}", reply.body);
            let state = reply.body["state"].as_str().unwrap_or("").to_owned();
            if state != "In progress" && state != "Pending" && state != "Canceling" {
                return reply.body;
            }
            assert!(
                started.elapsed() < limit,
                "action still {state}: {:#}",
                reply.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn futures_logs(server: &TestServer, actions: &Value) -> Vec<String> {
    let mut logs = Vec::new();
    for action in actions["objects"].as_array().into_iter().flatten() {
        let uri = action["resource_uri"].as_str().unwrap_or("");
        let detail = server.get(uri).await.body;
        logs.push(format!(
            "{} {}: {}",
            detail["action"], detail["state"], detail["logs"]
        ));
    }
    logs
}

/// The PostgreSQL database of the server whose directory is `dir`: one per directory, so a
/// restarted server (the same `dir`) finds its data again. The databases live as long as
/// the test process (its PostgreSQL server stops with it).
fn postgres_database_of(dir: &std::path::Path) -> String {
    static DATABASES: std::sync::Mutex<Vec<(std::path::PathBuf, String)>> =
        std::sync::Mutex::new(Vec::new());
    let mut databases = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, url)) = databases.iter().find(|(d, _)| d == dir) {
        return url.clone();
    }
    let database = flotilla_testkit::postgres::database().expect("a PostgreSQL database");
    let url = database.url().to_owned();
    // Kept for the whole process: a restart within the test must find it.
    std::mem::forget(database);
    databases.push((dir.to_owned(), url.clone()));
    url
}
