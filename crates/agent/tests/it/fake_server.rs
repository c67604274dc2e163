//! A stand-in for the server's agent API, enough to drive a real agent: registration,
//! heartbeats that hand over tasks until their results arrive (as the server does), and
//! `PATCH`es that are recorded.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Path, State};
use axum::routing::{patch, post};
use axum::{Json, Router};
use flotilla_api::agent::{AgentNode, AgentTask, NodeUpdate, PingReply, Registration};

pub const UUID: &str = "node-1";
pub const CREDENTIAL: &str = "node-credential-secret";

#[derive(Default)]
pub struct Seen {
    /// Every registration.
    pub registrations: Vec<Registration>,
    /// When each heartbeat arrived.
    pub heartbeats: Vec<Instant>,
    /// Every `PATCH`, with when it arrived.
    pub updates: Vec<(Instant, NodeUpdate)>,
    /// Tasks handed over in every heartbeat answer until their result is patched.
    pub tasks: Vec<AgentTask>,
}

#[derive(Clone, Default)]
pub struct FakeServer(pub Arc<Mutex<Seen>>);

impl FakeServer {
    /// Serves on a free local port; returns the base URL.
    pub async fn start(&self) -> String {
        let app = Router::new()
            .route("/api/agent/v1/node/", post(register))
            .route("/api/agent/v1/node/{uuid}/ping/", post(ping))
            .route("/api/agent/v1/node/{uuid}/", patch(update))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    pub fn seen<T>(&self, look: impl FnOnce(&Seen) -> T) -> T {
        look(&self.0.lock().expect("lock"))
    }

    pub fn hand_over(&self, task: AgentTask) {
        self.0.lock().expect("lock").tasks.push(task);
    }
}

fn node() -> AgentNode {
    AgentNode {
        uuid: UUID.into(),
        external_fqdn: "node-1.example".into(),
        public_ip: None,
        resource_uri: format!("/api/infra/v1/node/{UUID}/"),
        state: "Deployed".into(),
        agent_version: None,
        docker_version: None,
        private_ips: Vec::new(),
        credential: None,
    }
}

async fn register(
    State(server): State<FakeServer>,
    Json(registration): Json<Registration>,
) -> Json<AgentNode> {
    server
        .0
        .lock()
        .expect("lock")
        .registrations
        .push(registration);
    Json(AgentNode {
        credential: Some(CREDENTIAL.into()),
        ..node()
    })
}

async fn ping(State(server): State<FakeServer>, Path(_): Path<String>) -> Json<PingReply> {
    let mut seen = server.0.lock().expect("lock");
    seen.heartbeats.push(Instant::now());
    Json(PingReply {
        reachable: true,
        tasks: seen.tasks.clone(),
    })
}

async fn update(
    State(server): State<FakeServer>,
    Path(_): Path<String>,
    Json(update): Json<NodeUpdate>,
) -> Json<AgentNode> {
    let mut seen = server.0.lock().expect("lock");
    seen.tasks
        .retain(|task| !update.results.iter().any(|r| r.id == task.id));
    seen.updates.push((Instant::now(), update));
    Json(node())
}
