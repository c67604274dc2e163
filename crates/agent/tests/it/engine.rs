//! `flotilla_agent::engine` against a real Docker engine: the report, and the swarm tasks
//! with their idempotence, in one sequence (one engine for the whole binary).

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_agent::engine::Engine;
use flotilla_api::agent::{AgentTask, EngineInfo, TaskOp, TaskResult};

use crate::agent_loop::{self, wait_for};
use crate::dockerd::Dockerd;
use crate::fake_server::FakeServer;

fn task(id: &str, op: TaskOp) -> AgentTask {
    AgentTask { id: id.into(), op }
}

async fn info(engine: &Engine, dockerd: &Dockerd) -> EngineInfo {
    let report = engine.report().await;
    match report.engine {
        Some(info) => info,
        None => panic!(
            "the engine did not answer: {:?}\n{}",
            report.error,
            dockerd.log()
        ),
    }
}

fn assert_ok(result: &TaskResult, dockerd: &Dockerd) {
    assert!(result.ok, "{result:?}\n{}", dockerd.log());
}

#[tokio::test]
async fn reports_the_engine_and_carries_out_swarm_tasks() {
    let dockerd = Dockerd::start();
    let engine = Engine::new(&dockerd.host());

    // The report of a lone engine.
    let lone = info(&engine, &dockerd).await;
    assert!(lone.version.starts_with("20."), "{lone:?}");
    assert_eq!(
        lone.api_version, "1.41",
        "negotiated down to the engine's API"
    );
    assert!(
        lone.cpus > 0 && lone.memory_mib > 0 && lone.disk_gib > 0,
        "{lone:?}"
    );
    assert_eq!(lone.containers_running, 0);
    assert_eq!(lone.swarm.state, "inactive");
    assert_eq!(lone.swarm.nodes, None);
    assert_eq!(
        engine.version().await.as_deref(),
        Some(lone.version.as_str())
    );

    // Leaving no swarm is fine.
    let left = engine
        .run(&task("leave-0", TaskOp::SwarmLeave { force: false }))
        .await;
    assert_ok(&left, &dockerd);

    // Init: join tokens, then a manager's report lists itself.
    let init = task(
        "init-1",
        TaskOp::SwarmInit {
            advertise_addr: "127.0.0.1".into(),
        },
    );
    let first = engine.run(&init).await;
    assert_ok(&first, &dockerd);
    assert_eq!(first.id, "init-1");
    let tokens = first.join_tokens.clone().expect("join tokens");
    assert!(tokens.manager.starts_with("SWMTKN-") && tokens.worker.starts_with("SWMTKN-"));
    assert!(!first.message.contains(&tokens.worker) && !first.message.contains(&tokens.manager));
    assert!(
        !format!("{first:?}").contains("SWMTKN-"),
        "results never print tokens"
    );

    let manager = info(&engine, &dockerd).await;
    let swarm = &manager.swarm;
    assert_eq!(swarm.state, "active", "{swarm:?}");
    let cluster_id = swarm.cluster_id.clone().expect("a cluster id");
    let node_id = swarm.node_id.clone().expect("a node id");
    assert!(swarm.control_available);
    assert_eq!(swarm.node_addr.as_deref(), Some("127.0.0.1"));
    let nodes = swarm.nodes.clone().expect("a manager lists its nodes");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let me = &nodes[0];
    assert_eq!(me.id, node_id);
    assert_eq!((me.role.as_str(), me.leader), ("manager", true), "{me:?}");
    assert_eq!(me.availability, "active");
    assert_eq!(me.reachability.as_deref(), Some("reachable"));
    assert!(me.version > 0);

    // A label and drain; the next report shows both.
    let update = task(
        "update-1",
        TaskOp::NodeUpdate {
            node_id: node_id.clone(),
            role: None,
            availability: Some("drain".into()),
            labels: BTreeMap::from([("flotilla.slot".to_owned(), "0".to_owned())]),
        },
    );
    let updated = engine.run(&update).await;
    assert_ok(&updated, &dockerd);
    let drained = info(&engine, &dockerd).await;
    let me = &drained.swarm.nodes.as_ref().expect("nodes")[0];
    assert_eq!(me.availability, "drain", "{me:?}");
    assert_eq!(
        me.labels.get("flotilla.slot").map(String::as_str),
        Some("0")
    );
    // The same update again changes nothing and succeeds.
    let again = engine.run(&update).await;
    assert_ok(&again, &dockerd);
    assert!(again.message.contains("nothing to do"), "{again:?}");
    // An unknown availability is refused before the engine is asked.
    let bad = engine
        .run(&task(
            "update-2",
            TaskOp::NodeUpdate {
                node_id: node_id.clone(),
                role: None,
                availability: Some("sleepy".into()),
                labels: BTreeMap::new(),
            },
        ))
        .await;
    assert!(!bad.ok && bad.message.contains("sleepy"), "{bad:?}");

    // Init again: no change, the same swarm and its tokens.
    let second = engine.run(&init).await;
    assert_ok(&second, &dockerd);
    assert!(second.message.contains(&cluster_id), "{second:?}");
    assert_eq!(second.join_tokens, Some(tokens.clone()));
    let still = info(&engine, &dockerd).await;
    assert_eq!(still.swarm.cluster_id.as_deref(), Some(cluster_id.as_str()));

    // Joining while in a swarm succeeds without change; the token never shows.
    let join = engine
        .run(&task(
            "join-1",
            TaskOp::SwarmJoin {
                token: tokens.worker.clone(),
                advertise_addr: "127.0.0.1".into(),
                remote_addrs: vec!["127.0.0.1:2377".into()],
            },
        ))
        .await;
    assert_ok(&join, &dockerd);
    assert!(join.message.contains("already in swarm"), "{join:?}");

    // Removing a node that is not there is fine.
    let remove = engine
        .run(&task(
            "remove-1",
            TaskOp::NodeRemove {
                node_id: "nosuchnode0000000000000000".into(),
                force: true,
            },
        ))
        .await;
    assert_ok(&remove, &dockerd);

    // Leave: inactive again.
    let leave = engine
        .run(&task("leave-1", TaskOp::SwarmLeave { force: true }))
        .await;
    assert_ok(&leave, &dockerd);
    let after = info(&engine, &dockerd).await;
    assert_eq!(after.swarm.state, "inactive", "{after:?}");
    assert_eq!(after.swarm.cluster_id, None);

    // A join with a bad token fails, and its message does not carry the token.
    let secret =
        "SWMTKN-1-0000000000000000000000000000000000000000000000000-notarealtoken0000000000";
    let refused = engine
        .run(&task(
            "join-2",
            TaskOp::SwarmJoin {
                token: secret.into(),
                advertise_addr: "127.0.0.1".into(),
                remote_addrs: vec!["127.0.0.1:1".into()],
            },
        ))
        .await;
    assert!(!refused.ok, "{refused:?}");
    assert!(!refused.message.contains(secret), "{refused:?}");

    // A real agent carries out a handed-over init and reports the swarm it made.
    let server = FakeServer::default();
    let url = server.start().await;
    let dir = tempfile::Builder::new()
        .prefix("fla-")
        .tempdir_in("/tmp")
        .expect("dir");
    let agent = tokio::spawn(flotilla_agent::run(agent_loop::config(
        url,
        dockerd.host(),
        dir.path(),
    )));
    server.hand_over(task(
        "init-2",
        TaskOp::SwarmInit {
            advertise_addr: "127.0.0.1".into(),
        },
    ));
    wait_for(
        &server,
        Duration::from_secs(60),
        "the init's result",
        |seen| seen.updates.iter().any(|(_, u)| !u.results.is_empty()),
    )
    .await;
    let (registration, update) = server.seen(|seen| {
        let update = seen
            .updates
            .iter()
            .find(|(_, u)| !u.results.is_empty())
            .map(|(_, u)| u.clone());
        (seen.registrations[0].clone(), update)
    });
    assert_eq!(registration.docker_version, Some(lone.version.clone()));
    let update = update.expect("an update with results");
    assert_eq!(update.results.len(), 1);
    assert_ok(&update.results[0], &dockerd);
    assert!(update.results[0].join_tokens.is_some());
    let swarm = update
        .engine
        .and_then(|r| r.engine)
        .expect("a fresh report")
        .swarm;
    assert_eq!(swarm.state, "active");
    assert_eq!(swarm.nodes.map(|n| n.len()), Some(1));
    agent.abort();

    drop(dockerd);
}

#[tokio::test]
async fn an_engine_that_does_not_answer_is_reported_down() {
    let dir = tempfile::Builder::new()
        .prefix("fla-")
        .tempdir_in("/tmp")
        .expect("dir");
    // No socket at all.
    let missing = Engine::new(&format!("unix://{}/none.sock", dir.path().display()));
    let report = missing.report().await;
    assert_eq!(report.engine, None);
    assert!(
        report.error.as_deref().is_some_and(|e| !e.is_empty()),
        "{report:?}"
    );
    // A socket file nobody listens on.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let engine = Engine::new(&format!("unix://{}", stale.display()));
    let report = engine.report().await;
    assert_eq!(report.engine, None);
    assert!(report.error.is_some(), "{report:?}");
    assert_eq!(engine.version().await, None);
    let result = engine
        .run(&AgentTask {
            id: "leave".into(),
            op: TaskOp::SwarmLeave { force: false },
        })
        .await;
    assert!(!result.ok && !result.message.is_empty(), "{result:?}");
    // A DOCKER_HOST that is no unix socket: reported down, with the reason.
    let tcp = Engine::new("tcp://10.0.0.1:2375").report().await;
    assert_eq!(tcp.engine, None);
    assert!(
        tcp.error
            .as_deref()
            .is_some_and(|e| e.contains("not a unix socket")),
        "{tcp:?}"
    );
}
