//! Shared pieces of the end-to-end tests: a real `flotilla server` process on a free port,
//! an authenticated API client, and reading what a server printed.

use std::ops::Deref;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_testkit::{ServerBuilder, ServerProcess};
use serde_json::{Value, json};

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
        Api {
            base: server.base(),
            user: credentials.user.clone(),
            key: credentials.key.clone(),
            client,
        }
    }
}

impl Deref for Server {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}
