//! The typed HTTP client of Flotilla's API (feature `client`): the one place, with [`uri`],
//! that knows the API's paths. The CLI, the agent, the benchmarks and the end-to-end tests
//! all call the server through it.
//!
//! Design decisions:
//! * [`Client`] speaks the Docker Cloud API with Basic authentication; [`AgentClient`] speaks
//!   the agent protocol with `TutumAgentToken` credentials. Both take a finished
//!   `reqwest::Client`, so TLS roots, timeouts and pool sizes stay the caller's choice.
//! * Two levels: [`Client::send`] returns any answer as a [`Reply`] (status, JSON body,
//!   action URI) — what tests that check refusals need; [`Client::call`] and the named calls
//!   turn a non-2xx answer into an [`Error`] carrying the server's `error` message.
//! * Objects are JSON values: callers read the fields they show, so a field the server adds
//!   never breaks an older client (the CLI's promise).
//!
//! [`uri`]: crate::uri

use reqwest::Method;
use serde_json::{Value, json};

use crate::agent::{AGENT_NODES, AgentNode, NodeUpdate, PingReply, Registration, TOKEN_SCHEME};
use crate::uri;

/// The header naming the action a call started.
pub const ACTION_URI_HEADER: &str = "X-DockerCloud-Action-URI";

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer: the server is unreachable, the TLS handshake failed or the answer was cut.
    #[error("cannot reach {base} ({method} {path})")]
    Transport {
        base: String,
        method: Method,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    /// `401`: the credentials were refused.
    #[error("not authorized ({method} {path})")]
    Unauthorized { method: Method, path: String },
    /// Any other non-2xx answer, with the body's `error` (or the body itself).
    #[error("{message} ({status} {method} {path})")]
    Refused {
        status: u16,
        message: String,
        method: Method,
        path: String,
    },
    /// A 2xx answer whose body is not what the call expects.
    #[error("unexpected answer to {method} {path}")]
    Decode {
        method: Method,
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The HTTP status of a refusal; `None` when there was no answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Unauthorized { .. } => Some(401),
            Error::Refused { status, .. } => Some(*status),
            Error::Transport { .. } | Error::Decode { .. } => None,
        }
    }

    /// The transport error behind a failure without an answer (e.g. to name a TLS problem).
    pub fn transport(&self) -> Option<&reqwest::Error> {
        match self {
            Error::Transport { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Any answer: its status, its JSON body (`null` when empty or not JSON) and the action it
/// started (`X-DockerCloud-Action-URI`).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub action_uri: Option<String>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body's `error` message, or the body as text.
    pub fn message(&self) -> String {
        self.body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| self.body.to_string())
    }
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let action_uri = response
        .headers()
        .get(ACTION_URI_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.unwrap_or_default();
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Reply {
        status,
        body,
        action_uri,
    }
}

fn refused(reply: Reply, method: Method, path: &str) -> Error {
    if reply.status == 401 {
        return Error::Unauthorized {
            method,
            path: path.to_owned(),
        };
    }
    Error::Refused {
        status: reply.status,
        message: match &reply.body {
            Value::String(text) => text.clone(),
            _ => reply.message(),
        },
        method,
        path: path.to_owned(),
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The body of `POST nodecluster/` for an AWS cluster.
pub fn new_node_cluster(name: &str, nodes: u32, region: &str, node_type: &str) -> Value {
    json!({
        "name": name,
        "target_num_nodes": nodes,
        "region": uri::region("aws", region),
        "node_type": uri::node_type("aws", node_type),
        "disk": "30",
    })
}

/// A client of one server's Docker Cloud API, authenticated as one user.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    user: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    /// `base` is `http(s)://host:port` (a trailing slash is ignored).
    pub fn new(
        base: impl Into<String>,
        user: impl Into<String>,
        key: impl Into<String>,
        http: reqwest::Client,
    ) -> Client {
        Client {
            base: base.into().trim_end_matches('/').to_owned(),
            user: user.into(),
            key: key.into(),
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The same server and HTTP client with other credentials.
    pub fn with_credentials(&self, user: impl Into<String>, key: impl Into<String>) -> Client {
        Client::new(self.base.clone(), user, key, self.http.clone())
    }

    /// The websocket URL of the events stream (`ws://` or `wss://`).
    pub fn events_url(&self) -> String {
        format!("{}{}", self.base.replacen("http", "ws", 1), uri::events())
    }

    /// One request to `path` (a path of [`uri`], with its query); any answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Error> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.key));
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        match request.send().await {
            Ok(response) => Ok(reply(response).await),
            Err(source) => Err(Error::Transport {
                base: self.base.clone(),
                method,
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// One request that must succeed (2xx).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Error> {
        let reply = self.send(method.clone(), path, body).await?;
        if reply.is_success() {
            Ok(reply)
        } else {
            Err(refused(reply, method, path))
        }
    }

    /// `GET path`: the status and the body's bytes, unparsed (for measuring the wire).
    pub async fn get_bytes(&self, path: &str) -> Result<(u16, Vec<u8>), Error> {
        let transport = |source| Error::Transport {
            base: self.base.clone(),
            method: Method::GET,
            path: path.to_owned(),
            source,
        };
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.key))
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(transport)?;
        Ok((status, body.to_vec()))
    }

    /// The JSON of a successful `GET`.
    pub async fn get(&self, path: &str) -> Result<Value, Error> {
        Ok(self.call(Method::GET, path, None).await?.body)
    }

    /// Every object of a list, following `meta.next`.
    pub async fn list(&self, path: &str) -> Result<Vec<Value>, Error> {
        let mut objects = Vec::new();
        let mut next = Some(path.to_owned());
        while let Some(page) = next {
            let body = self.get(&page).await?;
            if let Some(items) = body.get("objects").and_then(Value::as_array) {
                objects.extend(items.iter().cloned());
            }
            next = body
                .pointer("/meta/next")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        Ok(objects)
    }

    /// `GET /_ping` (no authentication needed); whether the server answered 2xx.
    pub async fn ping(&self) -> Result<bool, Error> {
        Ok(self.send(Method::GET, uri::PING, None).await?.is_success())
    }

    /// `POST nodecluster/` with `body` (see [`new_node_cluster`]); the created cluster.
    pub async fn create_node_cluster(&self, body: &Value) -> Result<Reply, Error> {
        self.call(Method::POST, &uri::node_clusters(), Some(body))
            .await
    }

    pub async fn node_cluster(&self, uuid: &str) -> Result<Value, Error> {
        self.get(&uri::node_cluster(uuid)).await
    }

    /// `POST nodecluster/{uuid}/deploy/`; the answer names the deploy's action.
    pub async fn deploy_node_cluster(&self, uuid: &str) -> Result<Reply, Error> {
        self.call(Method::POST, &uri::node_cluster_deploy(uuid), None)
            .await
    }

    /// `PATCH nodecluster/{uuid}/` with `target_num_nodes`.
    pub async fn scale_node_cluster(&self, uuid: &str, nodes: u32) -> Result<Reply, Error> {
        let body = json!({ "target_num_nodes": nodes });
        self.call(Method::PATCH, &uri::node_cluster(uuid), Some(&body))
            .await
    }

    /// `DELETE nodecluster/{uuid}/`.
    pub async fn delete_node_cluster(&self, uuid: &str) -> Result<Reply, Error> {
        self.call(Method::DELETE, &uri::node_cluster(uuid), None)
            .await
    }

    /// The nodes of the list `query` selects (e.g. `node_cluster=<uuid>`; empty for all).
    pub async fn nodes(&self, query: &str) -> Result<Vec<Value>, Error> {
        self.list(&with_query(&uri::nodes(), query)).await
    }

    pub async fn node(&self, uuid: &str) -> Result<Value, Error> {
        self.get(&uri::node(uuid)).await
    }

    /// `DELETE node/{uuid}/`.
    pub async fn delete_node(&self, uuid: &str) -> Result<Reply, Error> {
        self.call(Method::DELETE, &uri::node(uuid), None).await
    }

    /// An action by its URI (as `X-DockerCloud-Action-URI` names it) or its uuid.
    pub async fn action(&self, uri_or_uuid: &str) -> Result<Value, Error> {
        if uri_or_uuid.starts_with('/') {
            self.get(uri_or_uuid).await
        } else {
            self.get(&uri::action(uri_or_uuid)).await
        }
    }

    /// `POST token/`: a registration token for bring-your-own nodes.
    pub async fn create_token(&self) -> Result<Value, Error> {
        Ok(self.call(Method::POST, &uri::token(), None).await?.body)
    }

    /// `PUT provider/{provider}/credentials/`.
    pub async fn link_credentials(&self, provider: &str, keys: &Value) -> Result<Value, Error> {
        Ok(self
            .call(
                Method::PUT,
                &uri::provider_credentials(provider),
                Some(keys),
            )
            .await?
            .body)
    }

    /// `GET provider/{provider}/credentials/`.
    pub async fn credentials(&self, provider: &str) -> Result<Value, Error> {
        self.get(&uri::provider_credentials(provider)).await
    }
}

/// `path?query`, or `path` when `query` is empty.
pub fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

/// A client of the agent protocol for one server.
#[derive(Debug, Clone)]
pub struct AgentClient {
    base: String,
    http: reqwest::Client,
}

impl AgentClient {
    pub fn new(base: impl Into<String>, http: reqwest::Client) -> AgentClient {
        AgentClient {
            base: base.into().trim_end_matches('/').to_owned(),
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&T>,
    ) -> Result<R, Error> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("Authorization", format!("{TOKEN_SCHEME} {token}"));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|source| Error::Transport {
            base: self.base.clone(),
            method: method.clone(),
            path: path.to_owned(),
            source,
        })?;
        let reply = reply(response).await;
        if !reply.is_success() {
            return Err(refused(reply, method, path));
        }
        serde_json::from_value(reply.body).map_err(|source| Error::Decode {
            method,
            path: path.to_owned(),
            source,
        })
    }

    /// `POST /api/agent/v1/node/`: registers with a batch token or the node's credential.
    pub async fn register(
        &self,
        token: &str,
        registration: &Registration,
    ) -> Result<AgentNode, Error> {
        self.send(Method::POST, AGENT_NODES, token, Some(registration))
            .await
    }

    /// `PATCH /api/agent/v1/node/{uuid}/`: what the agent learned (engine report, task
    /// results), with the node's credential.
    pub async fn update(
        &self,
        uuid: &str,
        credential: &str,
        update: &NodeUpdate,
    ) -> Result<AgentNode, Error> {
        let path = crate::agent::agent_node(uuid);
        self.send(Method::PATCH, &path, credential, Some(update))
            .await
    }

    /// `POST /api/agent/v1/node/{uuid}/ping/`: one heartbeat with the node's credential.
    pub async fn heartbeat(&self, uuid: &str, credential: &str) -> Result<PingReply, Error> {
        let path = crate::agent::agent_node_ping(uuid);
        self.send::<Value, _>(Method::POST, &path, credential, None)
            .await
    }

    /// `POST …/dockerproxy/`: the certificate of a manager's Docker API proxy.
    pub async fn docker_proxy(
        &self,
        uuid: &str,
        credential: &str,
        request: &crate::agent::DockerProxyRequest,
    ) -> Result<crate::agent::DockerProxyConfig, Error> {
        let path = crate::agent::agent_node_docker_proxy(uuid);
        self.send(Method::POST, &path, credential, Some(request))
            .await
    }

    /// `POST …/bundlecheck/`: who holds a client certificate, and its role on the swarm.
    pub async fn bundle_check(
        &self,
        uuid: &str,
        credential: &str,
        check: &crate::agent::BundleCheck,
    ) -> Result<crate::agent::BundleVerdict, Error> {
        let path = crate::agent::agent_node_bundle_check(uuid);
        self.send(Method::POST, &path, credential, Some(check))
            .await
    }

    /// `GET /_ping`: reaches the server (and verifies its certificate) without credentials.
    pub async fn ping(&self) -> Result<(), Error> {
        self.http
            .get(format!("{}{}", self.base, uri::PING))
            .send()
            .await
            .map(drop)
            .map_err(|source| Error::Transport {
                base: self.base.clone(),
                method: Method::GET,
                path: uri::PING.to_owned(),
                source,
            })
    }
}
