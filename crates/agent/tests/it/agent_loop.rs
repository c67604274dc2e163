//! A real agent (`flotilla_agent::run`) against [`FakeServer`]: heartbeats keep their pace
//! while a task waits on an engine that never answers, reports are sent only when they
//! change, and a task's result comes back once.

use std::time::{Duration, Instant};

use flotilla_agent::AgentConfig;
use flotilla_api::agent::{AgentTask, TaskOp};

use crate::fake_server::FakeServer;

pub const HEARTBEAT: Duration = Duration::from_millis(200);

pub fn config(server: String, docker_host: String, dir: &std::path::Path) -> AgentConfig {
    AgentConfig {
        server,
        cluster: Some("cluster-1".into()),
        slot: 0,
        first_slot: 0,
        count: 1,
        token: Some("batch-token".into()),
        state_file: dir.join("agent.json"),
        bind_ip: None,
        heartbeat_interval: HEARTBEAT,
        private_ips: vec!["10.0.0.9".into()],
        ca_cert: None,
        docker_host,
        report_every: 1,
    }
}

/// Waits (up to `limit`) until `check` holds on what the server saw.
pub async fn wait_for(
    server: &FakeServer,
    limit: Duration,
    what: &str,
    check: impl Fn(&crate::fake_server::Seen) -> bool,
) {
    let deadline = Instant::now() + limit;
    while !server.seen(&check) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_their_pace_while_a_task_waits_on_a_hung_engine() {
    let dir = tempfile::Builder::new()
        .prefix("fla-")
        .tempdir_in("/tmp")
        .expect("dir");
    // An engine that accepts connections and never answers.
    let hung = dir.path().join("hung.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&hung).expect("bind");
    let server = FakeServer::default();
    let url = server.start().await;
    let agent = tokio::spawn(flotilla_agent::run(config(
        url,
        format!("unix://{}", hung.display()),
        dir.path(),
    )));

    // The first report says the engine is down.
    wait_for(&server, Duration::from_secs(30), "a report", |seen| {
        !seen.updates.is_empty()
    })
    .await;
    let first = server.seen(|seen| seen.updates[0].1.clone());
    let report = first.engine.expect("a report");
    assert_eq!(report.engine, None);
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("did not answer")),
        "{report:?}"
    );

    // A task handed over in every heartbeat until its result arrives.
    server.hand_over(AgentTask {
        id: "leave-1".into(),
        op: TaskOp::SwarmLeave { force: false },
    });
    let handed = Instant::now();
    wait_for(
        &server,
        Duration::from_secs(30),
        "the task's result",
        |seen| seen.updates.iter().any(|(_, u)| !u.results.is_empty()),
    )
    .await;
    let took = handed.elapsed();
    let (beats, results) = server.seen(|seen| {
        let beats: Vec<Instant> = seen
            .heartbeats
            .iter()
            .copied()
            .filter(|t| *t >= handed)
            .collect();
        let results: Vec<_> = seen
            .updates
            .iter()
            .flat_map(|(_, u)| u.results.clone())
            .collect();
        (beats, results)
    });
    assert!(
        took >= Duration::from_secs(4),
        "the engine call timed out: {took:?}"
    );
    let widest = beats
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        widest < Duration::from_secs(1),
        "heartbeats stalled for {widest:?} while the task ran ({} beats in {took:?})",
        beats.len()
    );
    assert_eq!(
        results.len(),
        1,
        "run once although handed over many times: {results:?}"
    );
    assert_eq!(results[0].id, "leave-1");
    assert!(!results[0].ok && results[0].message.contains("did not answer"));

    // The report did not change: nothing more is sent for a while.
    let count = server.seen(|seen| seen.updates.len());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        server.seen(|seen| seen.updates.len()),
        count,
        "an unchanged report was sent"
    );
    assert!(!agent.is_finished());
    agent.abort();
}
