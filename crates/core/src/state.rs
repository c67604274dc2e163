//! Node and node-cluster state machines, with Docker Cloud's state names.
//!
//! States are closed enums whose `Display` is the exact wire string (`Partly deployed`,
//! `Empty cluster`), so the API never invents a spelling. Every change goes through `apply`,
//! which returns an error for a transition the Docker Cloud documentation does not allow —
//! callers cannot move a `Terminated` node back to life by accident.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node cluster's state (Docker Cloud API, node cluster states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClusterState {
    #[serde(rename = "Init")]
    Init,
    #[serde(rename = "Deploying")]
    Deploying,
    #[serde(rename = "Deployed")]
    Deployed,
    #[serde(rename = "Partly deployed")]
    PartlyDeployed,
    #[serde(rename = "Scaling")]
    Scaling,
    #[serde(rename = "Terminating")]
    Terminating,
    #[serde(rename = "Terminated")]
    Terminated,
    #[serde(rename = "Empty cluster")]
    EmptyCluster,
}

/// What happens to a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterEvent {
    /// `POST nodecluster/{uuid}/deploy/`.
    Deploy,
    /// `PATCH target_num_nodes`.
    Scale,
    /// `DELETE nodecluster/{uuid}/`.
    Terminate,
    /// A reconcile pass observed `deployed` of `target` nodes up and finished its work.
    Settled { deployed: u32, target: u32 },
    /// Every node is gone and the cluster's resources are released.
    TerminationFinished,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {kind} in state '{from}' cannot {event}")]
pub struct IllegalTransition {
    pub kind: &'static str,
    pub from: String,
    pub event: String,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Init => "Init",
            ClusterState::Deploying => "Deploying",
            ClusterState::Deployed => "Deployed",
            ClusterState::PartlyDeployed => "Partly deployed",
            ClusterState::Scaling => "Scaling",
            ClusterState::Terminating => "Terminating",
            ClusterState::Terminated => "Terminated",
            ClusterState::EmptyCluster => "Empty cluster",
        }
    }

    pub fn parse(text: &str) -> Option<ClusterState> {
        ALL_CLUSTER_STATES
            .iter()
            .copied()
            .find(|s| s.as_str() == text)
    }

    /// Work is under way; user operations other than reads must wait.
    pub fn is_busy(self) -> bool {
        matches!(
            self,
            ClusterState::Deploying | ClusterState::Scaling | ClusterState::Terminating
        )
    }

    /// The state a settled cluster with `deployed` of `target` nodes is in. With none
    /// deployed it is `Empty cluster` ("no nodes deployed"), whatever the target: `Partly
    /// deployed` means "some nodes deployed and running".
    pub fn settled(deployed: u32, target: u32) -> ClusterState {
        match (deployed, target) {
            (0, _) => ClusterState::EmptyCluster,
            (d, t) if d >= t => ClusterState::Deployed,
            _ => ClusterState::PartlyDeployed,
        }
    }

    pub fn apply(self, event: ClusterEvent) -> Result<ClusterState, IllegalTransition> {
        use ClusterEvent as E;
        use ClusterState as S;
        let stable = matches!(self, S::Deployed | S::PartlyDeployed | S::EmptyCluster);
        let next = match (self, event) {
            (S::Init, E::Deploy) => Some(S::Deploying),
            (S::Init | S::Deployed | S::PartlyDeployed | S::EmptyCluster, E::Terminate) => {
                Some(S::Terminating)
            }
            (_, E::Scale) if stable => Some(S::Scaling),
            // A settled pass also re-evaluates a stable cluster (a node lost out of band turns
            // Deployed into Partly deployed and back once it is replaced).
            (S::Deploying | S::Scaling, E::Settled { deployed, target }) => {
                Some(S::settled(deployed, target))
            }
            (_, E::Settled { deployed, target }) if stable => Some(S::settled(deployed, target)),
            (S::Terminating, E::TerminationFinished) => Some(S::Terminated),
            _ => None,
        };
        next.ok_or_else(|| IllegalTransition {
            kind: "node cluster",
            from: self.to_string(),
            event: format!("{event:?}").to_lowercase(),
        })
    }
}

pub const ALL_CLUSTER_STATES: [ClusterState; 8] = [
    ClusterState::Init,
    ClusterState::Deploying,
    ClusterState::Deployed,
    ClusterState::PartlyDeployed,
    ClusterState::Scaling,
    ClusterState::Terminating,
    ClusterState::Terminated,
    ClusterState::EmptyCluster,
];

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's state (Docker Cloud API, node states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeState {
    Deploying,
    Deployed,
    Unreachable,
    Upgrading,
    Terminating,
    Terminated,
}

/// What happens to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEvent {
    /// Its agent registered (or re-registered).
    AgentRegistered,
    /// Its agent missed heartbeats for the grace period.
    HeartbeatLost,
    /// Its agent was heard from again.
    HeardFrom,
    UpgradeStarted,
    UpgradeFinished,
    /// `node rm`, a scale-down or a cluster termination chose it.
    TerminateRequested,
    /// AWS says its instance is gone (our termination confirmed, or terminated out of band).
    InstanceGone,
}

pub const ALL_NODE_STATES: [NodeState; 6] = [
    NodeState::Deploying,
    NodeState::Deployed,
    NodeState::Unreachable,
    NodeState::Upgrading,
    NodeState::Terminating,
    NodeState::Terminated,
];

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Deploying => "Deploying",
            NodeState::Deployed => "Deployed",
            NodeState::Unreachable => "Unreachable",
            NodeState::Upgrading => "Upgrading",
            NodeState::Terminating => "Terminating",
            NodeState::Terminated => "Terminated",
        }
    }

    pub fn parse(text: &str) -> Option<NodeState> {
        ALL_NODE_STATES.iter().copied().find(|s| s.as_str() == text)
    }

    pub fn apply(self, event: NodeEvent) -> Result<NodeState, IllegalTransition> {
        use NodeEvent as E;
        use NodeState as S;
        let next = match (self, event) {
            (S::Deploying | S::Unreachable | S::Deployed, E::AgentRegistered) => Some(S::Deployed),
            (S::Deployed, E::HeartbeatLost) => Some(S::Unreachable),
            (S::Unreachable, E::HeardFrom) => Some(S::Deployed),
            (S::Deployed, E::UpgradeStarted) => Some(S::Upgrading),
            (S::Upgrading, E::UpgradeFinished) => Some(S::Deployed),
            (S::Deploying | S::Deployed | S::Unreachable | S::Upgrading, E::TerminateRequested) => {
                Some(S::Terminating)
            }
            (S::Terminated, _) => None,
            (_, E::InstanceGone) => Some(S::Terminated),
            _ => None,
        };
        next.ok_or_else(|| IllegalTransition {
            kind: "node",
            from: self.to_string(),
            event: format!("{event:?}").to_lowercase(),
        })
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ClusterEvent as CE;
    use ClusterState as CS;
    use NodeEvent as NE;
    use NodeState as NS;

    #[test]
    fn a_cluster_deploys_scales_and_terminates() {
        let s = CS::Init.apply(CE::Deploy).expect("deploy");
        assert_eq!(s, CS::Deploying);
        let s = s
            .apply(CE::Settled {
                deployed: 5,
                target: 6,
            })
            .expect("settle");
        assert_eq!(s, CS::PartlyDeployed);
        let s = s
            .apply(CE::Settled {
                deployed: 6,
                target: 6,
            })
            .expect("recover");
        assert_eq!(s, CS::Deployed);
        let s = s.apply(CE::Scale).expect("scale");
        assert_eq!(
            s.apply(CE::Settled {
                deployed: 0,
                target: 0
            }),
            Ok(CS::EmptyCluster)
        );
        assert_eq!(
            CS::Deploying.apply(CE::Settled {
                deployed: 0,
                target: 2
            }),
            Ok(CS::EmptyCluster),
            "a deploy with no node up is not Partly deployed"
        );
        let s = CS::Deployed.apply(CE::Terminate).expect("terminate");
        assert_eq!(s.apply(CE::TerminationFinished), Ok(CS::Terminated));
    }

    #[test]
    fn busy_and_finished_clusters_refuse_operations() {
        for busy in [CS::Deploying, CS::Scaling, CS::Terminating] {
            assert!(busy.is_busy());
            assert!(busy.apply(CE::Scale).is_err());
            assert!(busy.apply(CE::Deploy).is_err());
        }
        assert!(CS::Deploying.apply(CE::Terminate).is_err());
        let error = CS::Deployed
            .apply(CE::Deploy)
            .expect_err("already deployed");
        assert_eq!(
            error.to_string(),
            "a node cluster in state 'Deployed' cannot deploy"
        );
        for event in [
            CE::Deploy,
            CE::Scale,
            CE::Terminate,
            CE::TerminationFinished,
        ] {
            assert!(CS::Terminated.apply(event).is_err());
        }
        assert!(CS::Init.apply(CE::Scale).is_err());
    }

    #[test]
    fn wire_names_round_trip() {
        for state in ALL_CLUSTER_STATES {
            assert_eq!(CS::parse(state.as_str()), Some(state));
            assert_eq!(serde_json::to_value(state).expect("json"), state.as_str());
        }
        for state in ALL_NODE_STATES {
            assert_eq!(NS::parse(state.as_str()), Some(state));
        }
        assert_eq!(CS::PartlyDeployed.to_string(), "Partly deployed");
    }

    #[test]
    fn a_node_lives_and_dies() {
        let s = NS::Deploying.apply(NE::AgentRegistered).expect("register");
        let s = s.apply(NE::HeartbeatLost).expect("lost");
        assert_eq!(s, NS::Unreachable);
        let s = s.apply(NE::HeardFrom).expect("back");
        let s = s
            .apply(NE::UpgradeStarted)
            .and_then(|s| s.apply(NE::UpgradeFinished))
            .expect("upgrade");
        let s = s.apply(NE::TerminateRequested).expect("terminate");
        assert_eq!(s.apply(NE::InstanceGone), Ok(NS::Terminated));
    }

    #[test]
    fn out_of_band_termination_ends_any_live_node_but_nothing_revives_the_dead() {
        for state in [
            NS::Deploying,
            NS::Deployed,
            NS::Unreachable,
            NS::Upgrading,
            NS::Terminating,
        ] {
            assert_eq!(state.apply(NE::InstanceGone), Ok(NS::Terminated));
        }
        for event in [
            NE::AgentRegistered,
            NE::HeardFrom,
            NE::TerminateRequested,
            NE::InstanceGone,
        ] {
            assert!(NS::Terminated.apply(event).is_err());
        }
        assert!(NS::Deploying.apply(NE::HeartbeatLost).is_err());
        assert!(NS::Upgrading.apply(NE::UpgradeStarted).is_err());
    }
}
