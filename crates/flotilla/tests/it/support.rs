//! Shared pieces of the end-to-end tests: a real `flotilla server` process on a free port,
//! an authenticated API client, and reading what a server printed.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;

use flotilla_api::client::new_node_cluster;
use flotilla_api::uri;
use flotilla_testkit::{ServerBuilder, ServerProcess};
use serde_json::Value;

pub const LIMIT: Duration = Duration::from_secs(60);

/// An authenticated client of one server's Docker Cloud API: the typed client
/// ([`flotilla_api::Client`]) with the tests' panicking shorthands.
pub struct Api {
    pub base: String,
    pub user: String,
    pub key: String,
    pub api: flotilla_api::Client,
}

impl Api {
    pub fn new(base: &str, user: &str, key: &str, http: reqwest::Client) -> Api {
        let api = flotilla_api::Client::new(base, user, key, http);
        Api {
            base: api.base().to_owned(),
            user: user.to_owned(),
            key: key.to_owned(),
            api,
        }
    }

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
        let sent = self.api.send(method.clone(), path, body.as_ref());
        let reply = tokio::time::timeout(Duration::from_secs(20), sent)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer in 20 s"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        (reply.status, reply.body, reply.action_uri)
    }

    /// Creates a cluster of `nodes` t3.micro in us-east-1; its uuid.
    pub async fn create_cluster(&self, name: &str, nodes: u32) -> String {
        let body = new_node_cluster(name, nodes, "us-east-1", "t3.micro");
        let (status, created) = self
            .call(reqwest::Method::POST, &uri::node_clusters(), Some(body))
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
                &uri::node_cluster_deploy(&uuid),
                None,
            )
            .await;
        assert_eq!(status, 202, "{body}");
        uuid
    }
}

/// The `flotilla server` of these tests against `aws_endpoint`: the test kit's one launcher
/// with this crate's binary.
pub fn server(aws_endpoint: &str) -> ServerBuilder {
    ServerBuilder::new(env!("CARGO_BIN_EXE_flotilla"), aws_endpoint)
}

/// A `flotilla server` process with a client of its API; killed on drop.
pub struct Server {
    api: Api,
    pub process: ServerProcess,
}

impl Server {
    /// Starts `flotilla server` against `aws_endpoint` with 3 AZs of us-east-1 and `extra`
    /// arguments (e.g. `--node-ready running`), and waits until it answers.
    pub async fn start(aws_endpoint: &str, extra: &[&str]) -> Server {
        Server::start_with(server(aws_endpoint).args(extra), reqwest::Client::new()).await
    }

    /// Starts the server `builder` describes; `client` is the HTTP client of its [`Api`].
    pub async fn start_with(builder: ServerBuilder, client: reqwest::Client) -> Server {
        let process = builder.start().await.unwrap_or_else(|e| panic!("{e:#}"));
        let api = Api::of(&process, client);
        Server { api, process }
    }

    /// The server's `--data-dir` (database, WAL, `secret.key`).
    pub fn data_dir(&self) -> PathBuf {
        self.process.data_dir().to_owned()
    }

    /// Everything the server printed and logged, every run.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

impl Api {
    /// A client of `server`'s API with the admin credentials its first start printed.
    pub fn of(server: &ServerProcess, client: reqwest::Client) -> Api {
        let credentials = server
            .credentials()
            .unwrap_or_else(|| panic!("the server printed no credentials:\n{}", server.log()));
        Api::new(&server.base(), &credentials.user, &credentials.key, client)
    }
}

impl Deref for Server {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Events from the events websocket, collected in the background.
#[derive(Clone, Default)]
pub struct Events(pub Arc<Mutex<Vec<Value>>>);

impl Events {
    pub async fn listen(server: &Api) -> Events {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let url = server.api.events_url();
        let mut request = url.into_client_request().expect("request");
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", server.user, server.key));
        request.headers_mut().insert(
            "Authorization",
            format!("Basic {basic}").parse().expect("header"),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("events websocket");
        let events = Events::default();
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = socket.next().await {
                if let Ok(event) = serde_json::from_str::<Value>(frame.to_text().unwrap_or("")) {
                    sink.0.lock().expect("events").push(event);
                }
            }
        });
        events
    }

    /// Whether a node event for `uuid` with `state` (and `action`, if given) arrived.
    pub fn saw(&self, uuid: &str, state: &str, action: Option<&str>) -> bool {
        self.0.lock().expect("events").iter().any(|e| {
            e["type"] == "node"
                && e["resource_uri"].as_str().is_some_and(|u| u.contains(uuid))
                && e["state"] == state
                && action.is_none_or(|a| e["action"] == a)
        })
    }

    pub fn dump(&self) -> String {
        format!("{:#?}", self.0.lock().expect("events"))
    }
}
