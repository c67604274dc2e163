//! Simulated agents: lightweight tasks in this process, each with its own keep-alive HTTP/1.1
//! connection to the server (as separate machines would have), speaking the agent protocol
//! of `flotilla_api::agent`: register once, then `ping/` on an interval.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// One keep-alive connection to the server, reopened if the server closed it.
#[derive(Debug)]
pub struct AgentConn {
    addr: String,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Close after every request (no keep-alive between heartbeats).
    close_each: bool,
}

impl AgentConn {
    /// `base` is `http://127.0.0.1:PORT`.
    pub fn new(base: &str) -> AgentConn {
        AgentConn {
            addr: base
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
            sender: None,
            close_each: false,
        }
    }

    /// This connection, closed after each request from now on.
    pub fn closing_after_each_request(mut self) -> AgentConn {
        self.close_each = true;
        self.sender = None;
        self
    }

    async fn connect(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        let usable = self.sender.as_ref().is_some_and(|s| !s.is_closed());
        if !usable {
            let stream = TcpStream::connect(&self.addr).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().context("connection")
    }

    /// `POST path` with `Authorization: TutumAgentToken <token>`; status and JSON body.
    pub async fn post(
        &mut self,
        path: &str,
        token: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let host = self.addr.clone();
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, host)
            .header(
                hyper::header::AUTHORIZATION,
                format!("TutumAgentToken {token}"),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
        let sender = self.connect().await?;
        sender.ready().await?;
        let response = match sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(e.into());
            }
        };
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        if self.close_each {
            self.sender = None;
        }
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Closes the connection (a node that went silent).
    pub fn close(&mut self) {
        self.sender = None;
    }
}

/// What registration returned.
#[derive(Debug, Clone)]
pub struct Registered {
    pub uuid: String,
    pub credential: String,
    pub state: String,
}

fn registered(body: &Value) -> anyhow::Result<Registered> {
    let field = |name: &str| body[name].as_str().map(str::to_owned);
    Ok(Registered {
        uuid: field("uuid").context("registration answer without uuid")?,
        credential: field("credential").context("registration answer without credential")?,
        state: field("state").unwrap_or_default(),
    })
}

/// The registration of a cluster node (from its launch batch's user data).
#[derive(Debug, Clone)]
pub struct ClusterBoot {
    pub cluster: String,
    pub first_slot: u32,
    pub count: u32,
    pub token: String,
    pub slot: u32,
}

/// Registers a cluster node, retrying while the server does not know the node yet (its
/// reconciler records launched nodes right after `RunInstances` answers) or is busy.
pub async fn register_cluster_node(
    conn: &mut AgentConn,
    boot: &ClusterBoot,
    private_ip: &str,
    give_up: Duration,
) -> anyhow::Result<Registered> {
    let body = json!({
        "agent_version": "bench",
        "cluster": boot.cluster,
        "slot": boot.slot,
        "first_slot": boot.first_slot,
        "count": boot.count,
        "private_ips": [private_ip],
    });
    let started = Instant::now();
    let mut delay = Duration::from_millis(5);
    loop {
        match conn
            .post(flotilla_api::agent::AGENT_NODES, &boot.token, &body)
            .await
        {
            Ok((201 | 200, answer)) => return registered(&answer),
            Ok((status @ (401 | 403), answer)) => {
                bail!("registration refused ({status}): {answer}")
            }
            Ok(_) | Err(_) if started.elapsed() < give_up => {
                tokio::time::sleep(delay).await;
                // The scout of a batch keeps polling fast; anyone else backs off.
                if boot.slot != boot.first_slot {
                    delay = (delay * 2).min(Duration::from_millis(200));
                }
            }
            Ok((status, answer)) => bail!("registration failed ({status}): {answer}"),
            Err(e) => return Err(e),
        }
    }
}

/// Registers a bring-your-own node with a single-use token from `POST token/`.
pub async fn register_byo_node(
    conn: &mut AgentConn,
    token: &str,
    private_ip: &str,
) -> anyhow::Result<Registered> {
    let body = json!({"agent_version": "bench", "private_ips": [private_ip]});
    match conn
        .post(flotilla_api::agent::AGENT_NODES, token, &body)
        .await?
    {
        (200 | 201, answer) => registered(&answer),
        (status, answer) => bail!("BYO registration failed ({status}): {answer}"),
    }
}

/// Heartbeat latencies and errors, shared by every agent of a run.
#[derive(Debug, Default)]
pub struct PingLog {
    /// (seconds since the run's epoch, latency in ms).
    pub samples: Mutex<Vec<(f64, f64)>>,
    pub errors: Mutex<u64>,
}

/// The heartbeat loop of one agent: a first ping after `phase`, then one every `interval`,
/// until `silenced` is set. `last_ok` holds the time of the last answered ping.
#[allow(clippy::too_many_arguments)]
pub async fn heartbeat(
    mut conn: AgentConn,
    node: Registered,
    interval: Duration,
    phase: Duration,
    epoch: Instant,
    log: Arc<PingLog>,
    silenced: Arc<std::sync::atomic::AtomicBool>,
    last_ok: Arc<Mutex<Option<Instant>>>,
) {
    use std::sync::atomic::Ordering;
    let path = flotilla_api::agent::agent_node_ping(&node.uuid);
    let body = json!({});
    let mut next = tokio::time::Instant::now() + phase;
    loop {
        tokio::time::sleep_until(next).await;
        next += interval;
        if silenced.load(Ordering::Relaxed) {
            conn.close();
            return;
        }
        let sent = Instant::now();
        match conn.post(&path, &node.credential, &body).await {
            Ok((200, _)) => {
                let now = Instant::now();
                let ms = (now - sent).as_secs_f64() * 1000.0;
                *last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
                log.samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(((sent - epoch).as_secs_f64(), ms));
            }
            // The node is gone (terminated by a scale-down): its machine would be too.
            Ok((400..=499, _)) => return,
            _ => *log.errors.lock().unwrap_or_else(|p| p.into_inner()) += 1,
        }
    }
}

/// Registers `count` bring-your-own nodes (a fresh token each, from `POST token/` as the
/// admin), `concurrency` at a time. Returns each agent's open connection and node, and the
/// latency of each (token + registration) in ms.
pub async fn register_byo_many(
    server: &crate::server::ServerProcess,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<(Vec<(AgentConn, Registered)>, Vec<f64>)> {
    register_byo_many_then(server, count, concurrency, |conn, node| (conn, node)).await
}

/// [`register_byo_many`], handing each agent to `then` as soon as it is registered (a
/// real agent heartbeats from then on, not once every other node has registered); what
/// `then` returns, in order of registration.
pub async fn register_byo_many_then<T>(
    server: &crate::server::ServerProcess,
    count: usize,
    concurrency: usize,
    then: impl Fn(AgentConn, Registered) -> T,
) -> anyhow::Result<(Vec<T>, Vec<f64>)> {
    register_byo_spread(
        std::slice::from_ref(server),
        count,
        concurrency,
        |conn, node, _| then(conn, node),
    )
    .await
}

/// [`register_byo_many_then`] over several replicas: agent `i` takes its token from and
/// registers with (so keeps its connection to) replica `i % servers.len()`, whose index
/// `then` is given too.
pub async fn register_byo_spread<T>(
    servers: &[crate::server::ServerProcess],
    count: usize,
    concurrency: usize,
    then: impl Fn(AgentConn, Registered, usize) -> T,
) -> anyhow::Result<(Vec<T>, Vec<f64>)> {
    use futures::StreamExt as _;
    anyhow::ensure!(!servers.is_empty(), "no server to register with");
    let mut registrations = futures::stream::iter(0..count)
        .map(|i| async move {
            let replica = i % servers.len();
            let server = &servers[replica];
            let started = Instant::now();
            let (status, body) = server
                .call(reqwest::Method::POST, &flotilla_api::uri::token(), None)
                .await?;
            let token = body["token"]
                .as_str()
                .with_context(|| format!("POST token/: {status} {body}"))?
                .to_owned();
            let mut conn = AgentConn::new(&server.base);
            let ip = format!(
                "10.{}.{}.{}",
                100 + i / 62_500,
                (i / 250) % 250,
                i % 250 + 4
            );
            let node = register_byo_node(&mut conn, &token, &ip).await?;
            anyhow::Ok((
                conn,
                node,
                replica,
                started.elapsed().as_secs_f64() * 1000.0,
            ))
        })
        .buffer_unordered(concurrency);
    let mut agents = Vec::with_capacity(count);
    let mut latencies = Vec::with_capacity(count);
    while let Some(result) = registrations.next().await {
        let (conn, node, replica, ms) = result?;
        agents.push(then(conn, node, replica));
        latencies.push(ms);
    }
    Ok((agents, latencies))
}
