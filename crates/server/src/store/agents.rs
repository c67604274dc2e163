//! The store's part of agent registration: the installation's agent secret and the
//! `node_agents` rows (one per node whose agent has registered).
//!
//! Design decisions:
//! * A child module of [`crate::store`], so it shares the pool and the row-decoding rules
//!   but keeps the agent tables out of the cluster/node code.
//! * Registration is single-use by construction: the first registration of a node is an
//!   `INSERT` keyed on the node, in the same transaction as the node's compare-and-set
//!   state change, so two agents racing with the same batch token cannot both win.
//! * Heartbeats are not written one by one: the server batches them in memory and flushes
//!   them here in one transaction ([`Store::flush_last_seen`]).

use flotilla_core::state::NodeState;

use super::{Store, StoreError, corrupt, to_json};
use crate::events::{Pending, Verb};

/// A node's registered agent. The credential itself is never stored, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAgentRecord {
    pub node_uuid: String,
    pub credential_hash: String,
    pub agent_version: Option<String>,
    pub docker_version: Option<String>,
    pub private_ips: Vec<String>,
    pub registered_at: i64,
    pub updated_at: i64,
}

#[derive(sqlx::FromRow)]
struct NodeAgentRow {
    node_uuid: String,
    credential_hash: String,
    agent_version: Option<String>,
    docker_version: Option<String>,
    private_ips: String,
    registered_at: i64,
    updated_at: i64,
}

impl TryFrom<NodeAgentRow> for NodeAgentRecord {
    type Error = StoreError;
    fn try_from(row: NodeAgentRow) -> Result<Self, StoreError> {
        let private_ips: Vec<String> = serde_json::from_str(&row.private_ips)
            .map_err(|e| corrupt("node_agents", &row.node_uuid, e))?;
        Ok(NodeAgentRecord {
            node_uuid: row.node_uuid,
            credential_hash: row.credential_hash,
            agent_version: row.agent_version,
            docker_version: row.docker_version,
            private_ips,
            registered_at: row.registered_at,
            updated_at: row.updated_at,
        })
    }
}

/// The node-side change that goes with a registration.
#[derive(Debug, Clone)]
pub struct NodeRegistration<'a> {
    pub cluster_uuid: Option<&'a str>,
    /// Compare-and-set: the node must still be in this state.
    pub from: NodeState,
    pub to: NodeState,
    pub public_ip: &'a str,
    pub now: i64,
}

/// How a registration went in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// Registered; the node's public IP before, when this registration changed it.
    Done(Option<super::IpChange>),
    /// The node already has an agent (first registration) or another credential
    /// (re-registration).
    AlreadyRegistered,
    /// The node's state changed while the request ran.
    StateChanged,
}

impl Store {
    /// Records the agent secret unless one exists; returns the one in effect.
    pub async fn ensure_agent_secret(
        &self,
        candidate: &str,
        now: i64,
    ) -> Result<String, StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO agent_secret (id, secret, created_at) VALUES (1, $1, $2) ON CONFLICT DO NOTHING",
        )
            .bind(candidate)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        sqlx::query_scalar::<_, String>("SELECT secret FROM agent_secret WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| corrupt("agent_secret", "1", "missing after insert"))
    }

    pub async fn node_agent(&self, node_uuid: &str) -> Result<Option<NodeAgentRecord>, StoreError> {
        let row = sqlx::query_as::<_, NodeAgentRow>(
            "SELECT node_uuid, credential_hash, agent_version, docker_version, private_ips, registered_at, updated_at FROM node_agents WHERE node_uuid = $1",
        )
        .bind(node_uuid)
        .fetch_optional(&self.pool)
        .await?;
        row.map(NodeAgentRecord::try_from).transpose()
    }

    pub async fn node_agent_by_credential(
        &self,
        credential_hash: &str,
    ) -> Result<Option<NodeAgentRecord>, StoreError> {
        let row = sqlx::query_as::<_, NodeAgentRow>(
            "SELECT node_uuid, credential_hash, agent_version, docker_version, private_ips, registered_at, updated_at FROM node_agents WHERE credential_hash = $1 AND revoked_at IS NULL",
        )
        .bind(credential_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(NodeAgentRecord::try_from).transpose()
    }

    /// Records a registration and moves the node to `node.to`, in one transaction.
    /// `first` inserts the agent row (refused if the node has one: registration tokens are
    /// single-use); otherwise the existing row with the same credential hash is updated.
    pub async fn register_agent(
        &self,
        agent: &NodeAgentRecord,
        first: bool,
        node: &NodeRegistration<'_>,
    ) -> Result<Registered, StoreError> {
        let mut tx = self.write().await?;
        let written = if first {
            sqlx::query(
                "INSERT INTO node_agents (node_uuid, credential_hash, agent_version, docker_version, private_ips, registered_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT(node_uuid) DO NOTHING",
            )
            .bind(&agent.node_uuid)
            .bind(&agent.credential_hash)
            .bind(&agent.agent_version)
            .bind(&agent.docker_version)
            .bind(to_json(&agent.private_ips))
            .bind(agent.registered_at)
            .bind(agent.updated_at)
            .execute(&mut *tx)
            .await?
        } else {
            sqlx::query(
                "UPDATE node_agents SET agent_version = COALESCE($1, agent_version),
                    docker_version = COALESCE($2, docker_version), private_ips = $3, updated_at = $4
                 WHERE node_uuid = $5 AND credential_hash = $6",
            )
            .bind(&agent.agent_version)
            .bind(&agent.docker_version)
            .bind(to_json(&agent.private_ips))
            .bind(agent.updated_at)
            .bind(&agent.node_uuid)
            .bind(&agent.credential_hash)
            .execute(&mut *tx)
            .await?
        };
        if written.rows_affected() != 1 {
            return Ok(Registered::AlreadyRegistered);
        }
        let ip_before: Option<String> =
            sqlx::query_scalar("SELECT public_ip FROM nodes WHERE uuid = $1")
                .bind(&agent.node_uuid)
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
        let moved = sqlx::query(
            "UPDATE nodes SET state = $1, public_ip = $2, last_seen = $3,
                deployed_at = COALESCE(deployed_at, $4)
             WHERE uuid = $5 AND state = $6",
        )
        .bind(node.to.as_str())
        .bind(node.public_ip)
        .bind(node.now)
        .bind(node.now)
        .bind(&agent.node_uuid)
        .bind(node.from.as_str())
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Ok(Registered::StateChanged);
        }
        let ip_change = (ip_before.as_deref() != Some(node.public_ip)).then(|| super::IpChange {
            from: ip_before,
            to: Some(node.public_ip.to_owned()),
        });
        let mut events = Pending::default();
        if node.from != node.to || ip_change.is_some() {
            let state = node.to.as_str();
            events.node(
                Verb::for_state(state),
                &agent.node_uuid,
                node.cluster_uuid,
                state,
            );
        }
        self.commit(tx, events).await?;
        Ok(Registered::Done(ip_change))
    }

    /// Registers a bring-your-own node: uses up the token with this hash and inserts the
    /// node and its agent, in one transaction (a crash cannot burn the token without
    /// creating the node). False when the token is unknown or used.
    pub async fn register_byo_node(
        &self,
        token_hash: &str,
        node: &super::NodeRecord,
        agent: &NodeAgentRecord,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let used: Option<String> = sqlx::query_scalar(
            "UPDATE byo_tokens SET used = TRUE, used_at = $1 WHERE token_hash = $2 AND used = FALSE RETURNING username",
        )
        .bind(agent.registered_at)
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        if used.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO nodes (uuid, cluster_uuid, slot, instance_id, state, availability_zone, subnet_id, public_ip, private_ip, nickname, tags, last_seen, created_at, deployed_at, destroyed_at)
             VALUES ($1, NULL, 0, '', $2, '', '', $3, $4, NULL, '[]', $5, $6, $7, NULL)",
        )
        .bind(&node.uuid)
        .bind(node.state.as_str())
        .bind(&node.public_ip)
        .bind(&node.private_ip)
        .bind(node.last_seen)
        .bind(node.created_at)
        .bind(node.deployed_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO node_agents (node_uuid, credential_hash, agent_version, docker_version, private_ips, registered_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&agent.node_uuid)
        .bind(&agent.credential_hash)
        .bind(&agent.agent_version)
        .bind(&agent.docker_version)
        .bind(to_json(&agent.private_ips))
        .bind(agent.registered_at)
        .bind(agent.updated_at)
        .execute(&mut *tx)
        .await?;
        let mut events = Pending::default();
        events.node(Verb::Create, &node.uuid, None, node.state.as_str());
        self.commit(tx, events).await?;
        Ok(true)
    }

    /// Applies a `PATCH` from a node's agent; absent fields keep their value.
    pub async fn update_node_agent(
        &self,
        node_uuid: &str,
        agent_version: Option<&str>,
        docker_version: Option<&str>,
        private_ips: Option<&[String]>,
        engine: Option<&flotilla_api::agent::EngineReport>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE node_agents SET agent_version = COALESCE($1, agent_version),
                docker_version = COALESCE($2, docker_version),
                private_ips = COALESCE($3, private_ips), engine = COALESCE($4, engine),
                swarm_node_id = COALESCE($5, swarm_node_id), updated_at = $6
             WHERE node_uuid = $7",
        )
        .bind(agent_version)
        .bind(docker_version)
        .bind(private_ips.map(|ips| to_json(&ips)))
        .bind(engine.map(to_json))
        .bind(
            engine
                .and_then(|e| e.engine.as_ref())
                .and_then(|e| e.swarm.node_id.as_deref()),
        )
        .bind(now)
        .bind(node_uuid)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes a batch of heartbeats (node uuid, time) in one transaction; a time never
    /// moves backwards.
    pub async fn flush_last_seen(&self, seen: &[(String, i64)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for (uuid, at) in seen {
            sqlx::query(
                "UPDATE nodes SET last_seen = $1 WHERE uuid = $2 AND (last_seen IS NULL OR last_seen < $1)",
            )
            .bind(at)
            .bind(uuid)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use flotilla_core::state::ClusterState;

    use super::*;
    use crate::store::NodeRecord;
    use crate::store::testing::{self, Backend, TestStore, store_tests};

    async fn store_with_node(backend: Backend) -> TestStore {
        let store = testing::store(backend).await;
        let cluster = testing::cluster(ClusterState::Deploying);
        let action = testing::action("a1", "/x/");
        store
            .insert_cluster(&cluster, &action, crate::store::access::DEFAULT_ORG)
            .await
            .expect("cluster");
        store
            .upsert_nodes(&[NodeRecord {
                uuid: "n1".into(),
                cluster_uuid: Some("c1".into()),
                slot: 0,
                instance_id: "i-1".into(),
                state: NodeState::Deploying,
                availability_zone: "us-east-1a".into(),
                subnet_id: "s".into(),
                public_ip: None,
                private_ip: None,
                nickname: None,
                tags: Vec::new(),
                last_seen: None,
                created_at: 0,
                deployed_at: None,
                destroyed_at: None,
                engine: Default::default(),
                swarm: Default::default(),
            }])
            .await
            .expect("node");
        store
    }

    fn agent(hash: &str) -> NodeAgentRecord {
        NodeAgentRecord {
            node_uuid: "n1".into(),
            credential_hash: hash.into(),
            agent_version: Some("1".into()),
            docker_version: None,
            private_ips: vec!["10.0.0.1".into()],
            registered_at: 5,
            updated_at: 5,
        }
    }

    fn change(from: NodeState, ip: &str) -> NodeRegistration<'_> {
        NodeRegistration {
            cluster_uuid: Some("c1"),
            from,
            to: NodeState::Deployed,
            public_ip: ip,
            now: 5,
        }
    }

    async fn a_node_registers_once_then_only_with_its_credential(backend: Backend) {
        let store = store_with_node(backend).await;
        let secret = store.ensure_agent_secret("s1", 0).await.expect("secret");
        assert_eq!(
            store.ensure_agent_secret("s2", 0).await.expect("again"),
            secret
        );

        let first = store
            .register_agent(&agent("h1"), true, &change(NodeState::Deploying, "1.2.3.4"))
            .await
            .expect("register");
        assert!(matches!(first, Registered::Done(_)), "{first:?}");
        let node = store.node("n1").await.expect("read").expect("node");
        assert_eq!(node.state, NodeState::Deployed);
        assert_eq!(node.public_ip.as_deref(), Some("1.2.3.4"));

        // The batch token is used up, whatever credential the second try would get.
        let again = store
            .register_agent(&agent("h2"), true, &change(NodeState::Deployed, "1.2.3.5"))
            .await
            .expect("second");
        assert_eq!(again, Registered::AlreadyRegistered);
        // Re-registration needs the node's own credential.
        let wrong = store
            .register_agent(&agent("h2"), false, &change(NodeState::Deployed, "1.2.3.5"))
            .await
            .expect("wrong");
        assert_eq!(wrong, Registered::AlreadyRegistered);
        let right = store
            .register_agent(&agent("h1"), false, &change(NodeState::Deployed, "1.2.3.6"))
            .await
            .expect("right");
        assert_eq!(
            right,
            Registered::Done(Some(crate::store::IpChange {
                from: Some("1.2.3.4".into()),
                to: Some("1.2.3.6".into()),
            })),
            "the new address is reported"
        );
        let node = store.node("n1").await.expect("read").expect("node");
        assert_eq!(node.public_ip.as_deref(), Some("1.2.3.6"));
        // A stale compare-and-set changes nothing.
        let stale = store
            .register_agent(
                &agent("h1"),
                false,
                &change(NodeState::Deploying, "9.9.9.9"),
            )
            .await
            .expect("stale");
        assert_eq!(stale, Registered::StateChanged);
        assert_eq!(
            store
                .node_agent_by_credential("h1")
                .await
                .expect("lookup")
                .map(|a| a.node_uuid),
            Some("n1".into())
        );
        assert_eq!(
            store.node_agent_by_credential("h2").await.expect("lookup"),
            None
        );
    }

    async fn observations_do_not_demote_registered_nodes_and_heartbeats_only_advance(
        backend: Backend,
    ) {
        let store = store_with_node(backend).await;
        store
            .register_agent(&agent("h1"), true, &change(NodeState::Deploying, "1.2.3.4"))
            .await
            .expect("register");
        let mut observed = store.node("n1").await.expect("read").expect("node");
        observed.state = NodeState::Deploying;
        store
            .upsert_nodes(std::slice::from_ref(&observed))
            .await
            .expect("upsert");
        assert_eq!(
            store.node("n1").await.expect("read").expect("node").state,
            NodeState::Deployed
        );
        store
            .flush_last_seen(&[("n1".into(), 50)])
            .await
            .expect("flush");
        store
            .flush_last_seen(&[("n1".into(), 40)])
            .await
            .expect("flush");
        assert_eq!(
            store
                .node("n1")
                .await
                .expect("read")
                .expect("node")
                .last_seen,
            Some(50)
        );
    }

    async fn node_states_move_only_by_the_state_machine(backend: Backend) {
        use flotilla_core::state::NodeEvent;
        let store = store_with_node(backend).await;
        let state = |store: Store| async move {
            store.node("n1").await.expect("read").expect("node").state
        };
        // A `Deploying` node has no heartbeat to lose: refused, nothing written.
        let refused = store
            .apply_node_event("n1", NodeState::Deploying, NodeEvent::HeartbeatLost)
            .await;
        assert!(
            matches!(refused, Err(StoreError::IllegalTransition(_))),
            "{refused:?}"
        );
        assert_eq!(state(store.clone()).await, NodeState::Deploying);
        // Compare-and-set: an event for a state the node is not in moves nothing.
        let moved = store
            .apply_node_event("n1", NodeState::Deployed, NodeEvent::HeartbeatLost)
            .await
            .expect("apply");
        assert_eq!(moved, None);
        store
            .register_agent(&agent("h1"), true, &change(NodeState::Deploying, "1.2.3.4"))
            .await
            .expect("register");
        let moved = store
            .apply_node_event("n1", NodeState::Deployed, NodeEvent::HeartbeatLost)
            .await
            .expect("apply");
        assert_eq!(moved, Some((NodeState::Unreachable, Some("c1".to_owned()))));
        let moved = store
            .apply_node_event("n1", NodeState::Unreachable, NodeEvent::HeardFrom)
            .await
            .expect("apply");
        assert_eq!(moved, Some((NodeState::Deployed, Some("c1".to_owned()))));
        assert_eq!(state(store.clone()).await, NodeState::Deployed);
    }

    store_tests!(
        a_node_registers_once_then_only_with_its_credential,
        observations_do_not_demote_registered_nodes_and_heartbeats_only_advance,
        node_states_move_only_by_the_state_machine,
    );
}
