//! The simulated fleet of cluster nodes: the in-process equivalent of the testkit's
//! `InstanceRunner`. Instead of polling moto for instances, it takes every successful
//! `RunInstances` from the recording proxy with its user data and `MaxCount`, and boots
//! `count` simulated agents at once (launch index 0..count, slot = `FLOTILLA_FIRST_SLOT` +
//! index, exactly as the bootstrap script computes it), so that instances "boot" in zero
//! time and the measured wall time is the control plane's. It reads only what a real node
//! has: its launch's user data and its launch index.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_testkit::runner::parse_user_data;
use rand::Rng as _;
use tokio::task::JoinHandle;

use crate::agents::{AgentConn, ClusterBoot, PingLog, heartbeat, register_cluster_node};
use crate::awsproxy::TimingProxy;

#[derive(Debug, Default)]
struct State {
    /// Node uuid → (cluster, when its registration was answered, state it reported).
    registered: HashMap<String, (String, Instant, String)>,
    errors: Vec<String>,
    launches: usize,
}

/// See the module docs. Stops its agents when dropped.
#[derive(Debug)]
pub struct Fleet {
    state: Arc<Mutex<State>>,
    watcher: JoinHandle<()>,
    agents: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.watcher.abort();
        for agent in self
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            agent.abort();
        }
    }
}

impl Fleet {
    pub fn start(server: String, timing: Arc<TimingProxy>, heartbeat_every: Duration) -> Fleet {
        let state = Arc::new(Mutex::new(State::default()));
        let agents = Arc::new(Mutex::new(Vec::new()));
        let pings = Arc::new(PingLog::default());
        let epoch = Instant::now();
        let watcher = {
            let (state, agents) = (state.clone(), agents.clone());
            tokio::spawn(async move {
                let mut seen = 0;
                let mut host = 0u32;
                loop {
                    let calls = timing.calls_from(seen);
                    seen += calls.len();
                    for call in calls {
                        let Some((script, count)) = call.launch else {
                            continue;
                        };
                        state.lock().unwrap_or_else(|p| p.into_inner()).launches += 1;
                        // The server records a batch's nodes together once `RunInstances`
                        // has answered; until then registration is a 404. One scout per
                        // batch retries every 5 ms; the others wait for it, so the retries
                        // do not load the server being measured.
                        let (open_tx, open_rx) = tokio::sync::watch::channel(false);
                        let open_tx = Arc::new(open_tx);
                        for index in 0..count {
                            let Some(boot) = parse_user_data(&script, index) else {
                                continue;
                            };
                            host += 1;
                            let boot = ClusterBoot {
                                cluster: boot.cluster,
                                first_slot: boot.first_slot,
                                count: boot.count,
                                token: boot.token,
                                slot: boot.slot,
                            };
                            let ip = format!("10.{}.{}.{}", 78, host / 250, host % 250 + 4);
                            let (state, pings) = (state.clone(), pings.clone());
                            let server = server.clone();
                            let (open_tx, mut open_rx) = (open_tx.clone(), open_rx.clone());
                            let task = tokio::spawn(async move {
                                let mut conn = AgentConn::new(&server);
                                if index > 0 {
                                    let _ = open_rx.wait_for(|open| *open).await;
                                }
                                let registered = register_cluster_node(
                                    &mut conn,
                                    &boot,
                                    &ip,
                                    Duration::from_secs(300),
                                )
                                .await;
                                if index == 0 {
                                    open_tx.send_replace(true);
                                }
                                match registered {
                                    Ok(node) => {
                                        state
                                            .lock()
                                            .unwrap_or_else(|p| p.into_inner())
                                            .registered
                                            .insert(
                                                node.uuid.clone(),
                                                (
                                                    boot.cluster.clone(),
                                                    Instant::now(),
                                                    node.state.clone(),
                                                ),
                                            );
                                        let phase =
                                            Duration::from_millis(rand::rng().random_range(
                                                0..heartbeat_every.as_millis().max(1) as u64,
                                            ));
                                        heartbeat(
                                            conn,
                                            node,
                                            heartbeat_every,
                                            phase,
                                            epoch,
                                            pings,
                                            Arc::new(AtomicBool::new(false)),
                                            Arc::new(Mutex::new(None)),
                                        )
                                        .await;
                                    }
                                    Err(e) => state
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .errors
                                        .push(format!("slot {}: {e:#}", boot.slot)),
                                }
                            });
                            agents.lock().unwrap_or_else(|p| p.into_inner()).push(task);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        Fleet {
            state,
            watcher,
            agents,
        }
    }

    /// Nodes of `cluster` whose registration was answered `Deployed`, and the last such time.
    pub fn deployed(&self, cluster: &str) -> (usize, Option<Instant>) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mine = state
            .registered
            .values()
            .filter(|(c, _, s)| c == cluster && s == "Deployed");
        let mut count = 0;
        let mut last = None;
        for (_, at, _) in mine {
            count += 1;
            last = last.max(Some(*at));
        }
        (count, last)
    }

    /// Registration times of every node, per uuid.
    pub fn registrations(&self) -> HashMap<String, Instant> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .registered
            .iter()
            .map(|(u, (_, at, _))| (u.clone(), *at))
            .collect()
    }

    /// Registration times of the nodes of one cluster.
    pub fn registrations_of(&self, cluster: &str) -> Vec<Instant> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .registered
            .values()
            .filter(|(c, _, _)| c == cluster)
            .map(|(_, at, _)| *at)
            .collect()
    }

    pub fn errors(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .errors
            .clone()
    }
}
