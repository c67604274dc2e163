//! The engine worker: one tokio task per heartbeat session that carries out the swarm tasks
//! handed over in heartbeat answers and keeps the server's copy of the engine report fresh.
//!
//! Design decisions:
//! * **Off the heartbeat path.** A swarm step can take tens of seconds (a join waits for the
//!   managers' Raft log) and a dead engine takes a timeout per call; heartbeats are what the
//!   server's health verdicts are built on, so they never wait for the engine. The
//!   heartbeat loop only admits a batch ([`Inflight::admit`]) and hands it over on a channel.
//! * **One engine user at a time.** Batches run one after the other, their tasks in order,
//!   and reports are taken between them: the server's steps for one node are ordered (init
//!   before the tokens are used, drain before leave) and an engine is never asked to do two
//!   swarm changes at once.
//! * **A task id already admitted is not started again** until its result was delivered: a
//!   server re-hands a step until it hears the result, and a second copy of a running join
//!   would only fail or wait. After delivery a re-handed step runs again — harmless, since
//!   every task is idempotent ([`crate::engine`]).
//! * **Reports only on change.** Every `report_every` heartbeat ticks the worker takes a
//!   report and sends it only when it differs from the last one the server accepted
//!   ([`Outbox`]): a steady node costs the server nothing beyond its heartbeats. A failed
//!   `PATCH` changes nothing that was accepted, so it is simply tried again at the next
//!   tick, together with any results still undelivered. A batch's results always go out at
//!   once, with a fresh report (and the engine's version, so an upgraded engine's version
//!   reaches the node's `docker_version` too).
//! * **A session's worker ends with it** (a refused heartbeat sends the agent back to
//!   registration): results it had not delivered are dropped, the server hands those steps
//!   out again, and they are repeated — harmless, since they are idempotent.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::AgentClient;
use flotilla_api::agent::{AgentTask, EngineReport, NodeUpdate, TaskResult};
use tokio::sync::mpsc;

use crate::engine::Engine;

/// Task ids admitted whose results the server has not yet accepted.
#[derive(Debug, Clone, Default)]
pub struct Inflight(Arc<Mutex<HashSet<String>>>);

impl Inflight {
    /// The tasks of `tasks` to start: those not already admitted (nor repeated in `tasks`),
    /// which are now admitted.
    pub fn admit(&self, tasks: Vec<AgentTask>) -> Vec<AgentTask> {
        let mut ids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        tasks
            .into_iter()
            .filter(|task| ids.insert(task.id.clone()))
            .collect()
    }

    /// Forgets tasks whose results were delivered.
    pub fn release<'a>(&self, delivered: impl IntoIterator<Item = &'a str>) {
        let mut ids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for id in delivered {
            ids.remove(id);
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }
}

/// What the server has accepted and what it has yet to hear.
#[derive(Debug, Default)]
pub struct Outbox {
    /// The last report the server accepted.
    accepted: Option<EngineReport>,
    /// Results not yet delivered, in the order they were produced.
    unsent: Vec<TaskResult>,
}

impl Outbox {
    /// Results to deliver with the next update.
    pub fn push(&mut self, results: Vec<TaskResult>) {
        self.unsent.extend(results);
    }

    /// The update that carries `report` and every undelivered result; `None` when there is
    /// nothing new: the report is the accepted one and no result waits.
    pub fn update(&self, report: EngineReport) -> Option<NodeUpdate> {
        if self.unsent.is_empty() && self.accepted.as_ref() == Some(&report) {
            return None;
        }
        Some(NodeUpdate {
            // An upgraded engine's version reaches the node too, not only its report.
            docker_version: report
                .engine
                .as_ref()
                .map(|e| e.version.clone())
                .filter(|v| !v.is_empty()),
            engine: Some(report),
            results: self.unsent.clone(),
            ..NodeUpdate::default()
        })
    }

    /// The server accepted `update`: its report is now the accepted one and its results are
    /// delivered (their ids are returned).
    pub fn delivered(&mut self, update: NodeUpdate) -> Vec<String> {
        if let Some(report) = update.engine {
            self.accepted = Some(report);
        }
        let ids: Vec<String> = update.results.into_iter().map(|r| r.id).collect();
        self.unsent.retain(|r| !ids.contains(&r.id));
        ids
    }

    pub fn accepted(&self) -> Option<&EngineReport> {
        self.accepted.as_ref()
    }

    pub fn unsent(&self) -> &[TaskResult] {
        &self.unsent
    }
}

/// The worker of one heartbeat session.
pub(crate) struct Worker {
    pub engine: Arc<Engine>,
    pub client: AgentClient,
    pub uuid: String,
    pub credential: String,
    pub inflight: Inflight,
    /// Time between reports (heartbeat interval × `report_every`).
    pub report_interval: Duration,
    /// Whether the last report showed a swarm manager (the Docker API proxy runs then).
    pub manager: tokio::sync::watch::Sender<bool>,
}

impl Worker {
    /// Runs until `batches` is closed (the session ended).
    pub async fn run(self, mut batches: mpsc::UnboundedReceiver<Vec<AgentTask>>) {
        let mut outbox = Outbox::default();
        let mut ticker = tokio::time::interval(self.report_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = batches.recv() => {
                    let Some(batch) = batch else { return };
                    let mut results = Vec::with_capacity(batch.len());
                    for task in &batch {
                        tracing::info!(task = task.id, op = ?task.op, "carrying out a task");
                        let result = self.engine.run(task).await;
                        if result.ok {
                            tracing::info!(task = result.id, message = result.message, "task done");
                        } else {
                            tracing::warn!(task = result.id, message = result.message, "task failed");
                        }
                        results.push(result);
                    }
                    outbox.push(results);
                    let report = self.engine.report().await;
                    self.manager.send_replace(crate::proxy::is_manager(&report));
                    if let Some(update) = outbox.update(report) {
                        self.send(&mut outbox, update).await;
                    }
                }
                _ = ticker.tick() => {
                    let report = self.engine.report().await;
                    self.manager.send_replace(crate::proxy::is_manager(&report));
                    if let Some(update) = outbox.update(report) {
                        self.send(&mut outbox, update).await;
                    }
                }
            }
        }
    }

    async fn send(&self, outbox: &mut Outbox, update: NodeUpdate) {
        let results = update.results.len();
        match self
            .client
            .update(&self.uuid, &self.credential, &update)
            .await
        {
            Ok(_) => {
                if let Some(report) = &update.engine {
                    match &report.engine {
                        Some(engine) => tracing::debug!(
                            results,
                            swarm = engine.swarm.state,
                            "engine report sent"
                        ),
                        None => tracing::warn!(
                            results,
                            error = report.error.as_deref().unwrap_or_default(),
                            "the Docker engine does not answer; reported"
                        ),
                    }
                }
                let ids = outbox.delivered(update);
                self.inflight.release(ids.iter().map(String::as_str));
            }
            Err(error) => tracing::warn!(
                results,
                error = format!("{error:#}"),
                "sending the engine report failed; trying again at the next tick"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::agent::{EngineInfo, TaskOp};

    fn task(id: &str) -> AgentTask {
        AgentTask {
            id: id.into(),
            op: TaskOp::SwarmLeave { force: false },
        }
    }

    fn result(id: &str) -> TaskResult {
        TaskResult {
            id: id.into(),
            ok: true,
            message: "done".into(),
            join_tokens: None,
        }
    }

    fn report(version: &str) -> EngineReport {
        EngineReport {
            engine: Some(EngineInfo {
                version: version.into(),
                ..EngineInfo::default()
            }),
            error: None,
        }
    }

    fn ids(tasks: &[AgentTask]) -> Vec<&str> {
        tasks.iter().map(|t| t.id.as_str()).collect()
    }

    #[test]
    fn a_task_is_not_started_twice_until_its_result_is_delivered() {
        let inflight = Inflight::default();
        let first = inflight.admit(vec![task("a"), task("b"), task("a")]);
        assert_eq!(ids(&first), ["a", "b"], "a repeat within one answer");
        let second = inflight.admit(vec![task("b"), task("c")]);
        assert_eq!(ids(&second), ["c"], "b is still running");
        inflight.release(["a", "b"]);
        assert!(!inflight.contains("a") && inflight.contains("c"));
        assert_eq!(
            ids(&inflight.admit(vec![task("a")])),
            ["a"],
            "handed out again"
        );
    }

    #[test]
    fn reports_are_sent_only_when_they_change() {
        let mut outbox = Outbox::default();
        let first = outbox
            .update(report("20.10"))
            .expect("the first report is news");
        assert_eq!(first.engine, Some(report("20.10")));
        assert_eq!(first.docker_version.as_deref(), Some("20.10"));
        assert!(first.results.is_empty());
        // Not accepted (the PATCH failed): the same report goes again.
        let again = outbox.update(report("20.10")).expect("not accepted yet");
        assert!(outbox.delivered(again).is_empty());
        assert_eq!(outbox.accepted(), Some(&report("20.10")));
        assert_eq!(outbox.update(report("20.10")), None, "nothing changed");
        let changed = outbox.update(report("24.0")).expect("a change");
        assert_eq!(changed.engine, Some(report("24.0")));
        let down = EngineReport {
            engine: None,
            error: Some("connection refused".into()),
        };
        let down = outbox.update(down).expect("an engine going down is news");
        assert_eq!(down.docker_version, None, "a down engine has no version");
    }

    #[test]
    fn results_wait_until_delivered_and_go_with_the_report() {
        let mut outbox = Outbox::default();
        outbox.delivered(outbox.update(report("20.10")).expect("first"));
        outbox.push(vec![result("t1"), result("t2")]);
        let update = outbox.update(report("20.10")).expect("results are news");
        assert_eq!(update.engine, Some(report("20.10")), "with a fresh report");
        assert_eq!(update.results.len(), 2);
        // The PATCH failed; a later result joins the waiting ones.
        outbox.push(vec![result("t3")]);
        let retry = outbox.update(report("20.10")).expect("retried");
        assert_eq!(
            retry
                .results
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["t1", "t2", "t3"]
        );
        assert_eq!(outbox.delivered(retry), ["t1", "t2", "t3"]);
        assert!(outbox.unsent().is_empty());
        assert_eq!(outbox.update(report("20.10")), None);
    }
}
