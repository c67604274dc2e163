//! The store's part of swarms: the `swarms` rows (migration 0008) and the engine reports
//! agents send.
//!
//! Design decisions:
//! * Creating a swarm is one transaction: the swarm row, its two node clusters (already
//!   `Deploying`, each with its deploy action) and the swarm's own action. A crash leaves
//!   either all of it or none.
//! * The two decisions the swarm planner records are compare-and-set: the bootstrap
//!   manager is written only while none is recorded, the Docker cluster ID only while none
//!   is adopted. Whatever a restarted server or a racing pass does, the first write wins
//!   and every later pass reads it.
//! * Join tokens are stored sealed (the caller seals them; see `crate::secrets`).

use std::collections::BTreeMap;

use flotilla_core::state::ClusterState;

use super::{
    ActionRecord, ClusterRecord, Store, StoreError, action_created, corrupt, insert_action_in,
    insert_cluster_in,
};
use crate::events::{Pending, Verb};

/// A task waiting for an agent, as stored: its id and the sealed task (nonce, ciphertext;
/// hex) — a join task carries a join token, so tasks are sealed like the tokens are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedTask {
    pub id: String,
    pub nonce: String,
    pub sealed: String,
}

/// A swarm as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmRecord {
    pub uuid: String,
    pub name: String,
    pub state: ClusterState,
    pub managers: u32,
    pub manager_cluster: String,
    pub worker_cluster: String,
    pub bootstrap_node: Option<String>,
    pub cluster_id: Option<String>,
    /// The sealed join tokens: (nonce, ciphertext), hex.
    pub tokens: Option<(String, String)>,
    pub current_action: Option<String>,
    /// The load balancer as last converged.
    pub load_balancer: Option<flotilla_api::SwarmLoadBalancer>,
    pub created_at: i64,
    pub deployed_at: Option<i64>,
    pub destroyed_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct SwarmRow {
    uuid: String,
    name: String,
    state: String,
    managers: i64,
    manager_cluster: String,
    worker_cluster: String,
    bootstrap_node: Option<String>,
    cluster_id: Option<String>,
    tokens_nonce: Option<String>,
    tokens_sealed: Option<String>,
    current_action: Option<String>,
    load_balancer: Option<String>,
    created_at: i64,
    deployed_at: Option<i64>,
    destroyed_at: Option<i64>,
}

/// The columns of [`SwarmRow`] (a macro, for `concat!`: sqlx takes only static SQL).
macro_rules! swarm_select {
    () => {
        "SELECT uuid, name, state, managers, manager_cluster, worker_cluster, bootstrap_node, cluster_id, tokens_nonce, tokens_sealed, current_action, load_balancer, created_at, deployed_at, destroyed_at FROM swarms"
    };
}

impl TryFrom<SwarmRow> for SwarmRecord {
    type Error = StoreError;
    fn try_from(row: SwarmRow) -> Result<Self, StoreError> {
        let state = ClusterState::parse(&row.state)
            .ok_or_else(|| corrupt("swarms", &row.uuid, format!("state '{}'", row.state)))?;
        Ok(SwarmRecord {
            name: row.name,
            state,
            managers: u32::try_from(row.managers).map_err(|e| corrupt("swarms", &row.uuid, e))?,
            manager_cluster: row.manager_cluster,
            worker_cluster: row.worker_cluster,
            bootstrap_node: row.bootstrap_node,
            cluster_id: row.cluster_id,
            tokens: row.tokens_nonce.zip(row.tokens_sealed),
            current_action: row.current_action,
            load_balancer: row
                .load_balancer
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| corrupt("swarms", &row.uuid, e))?,
            created_at: row.created_at,
            deployed_at: row.deployed_at,
            destroyed_at: row.destroyed_at,
            uuid: row.uuid,
        })
    }
}

/// What a new swarm consists of: the swarm, its two clusters and their actions.
#[derive(Debug)]
pub struct NewSwarm<'a> {
    pub swarm: &'a SwarmRecord,
    pub managers: &'a ClusterRecord,
    pub workers: &'a ClusterRecord,
    /// The swarm's action, then each cluster's deploy action.
    pub actions: [&'a ActionRecord; 3],
    /// The organization that owns the swarm and its clusters.
    pub org: &'a str,
}

impl Store {
    /// Inserts a swarm with its clusters and actions in one transaction.
    pub async fn insert_swarm(&self, new: &NewSwarm<'_>) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        insert_cluster_in(&mut tx, new.managers).await?;
        insert_cluster_in(&mut tx, new.workers).await?;
        let s = new.swarm;
        sqlx::query(
            "INSERT INTO swarms (uuid, name, state, managers, manager_cluster, worker_cluster, current_action, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&s.uuid)
        .bind(&s.name)
        .bind(s.state.as_str())
        .bind(i64::from(s.managers))
        .bind(&s.manager_cluster)
        .bind(&s.worker_cluster)
        .bind(&s.current_action)
        .bind(s.created_at)
        .execute(&mut *tx)
        .await?;
        for action in new.actions {
            insert_action_in(&mut tx, action).await?;
        }
        super::access::own_in(&mut tx, &s.uuid, "swarm", new.org, None).await?;
        for cluster in [new.managers, new.workers] {
            super::access::own_in(
                &mut tx,
                &cluster.uuid,
                "nodecluster",
                new.org,
                Some(&s.uuid),
            )
            .await?;
        }
        let mut events = Pending::default();
        events.swarm(Verb::Create, &s.uuid, s.state.as_str());
        for cluster in [new.managers, new.workers] {
            events.cluster(Verb::Create, &cluster.uuid, cluster.state.as_str());
        }
        for action in new.actions {
            action_created(&mut events, action);
        }
        self.commit(tx, events).await
    }

    pub async fn swarm(&self, uuid: &str) -> Result<Option<SwarmRecord>, StoreError> {
        let row = sqlx::query_as::<_, SwarmRow>(concat!(swarm_select!(), " WHERE uuid = $1"))
            .bind(uuid)
            .fetch_optional(&self.pool)
            .await?;
        row.map(SwarmRecord::try_from).transpose()
    }

    /// Every swarm, oldest first.
    pub async fn swarms(&self) -> Result<Vec<SwarmRecord>, StoreError> {
        let rows =
            sqlx::query_as::<_, SwarmRow>(concat!(swarm_select!(), " ORDER BY created_at, rowid"))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(SwarmRecord::try_from).collect()
    }

    /// Records the manager that initialises the swarm, unless one is recorded already.
    /// Returns the recorded one.
    pub async fn choose_bootstrap(&self, uuid: &str, node: &str) -> Result<String, StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE swarms SET bootstrap_node = $1 WHERE uuid = $2 AND bootstrap_node IS NULL",
        )
        .bind(node)
        .bind(uuid)
        .execute(&mut *tx)
        .await?;
        let chosen: Option<String> =
            sqlx::query_scalar("SELECT bootstrap_node FROM swarms WHERE uuid = $1")
                .bind(uuid)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        chosen.ok_or_else(|| corrupt("swarms", uuid, "bootstrap_node not recorded"))
    }

    /// Forgets a bootstrap manager that is gone before any swarm existed, so another can be
    /// chosen (compare-and-set on the one that is gone; never once a swarm is adopted).
    pub async fn forget_bootstrap(&self, uuid: &str, node: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE swarms SET bootstrap_node = NULL WHERE uuid = $1 AND bootstrap_node = $2 AND cluster_id IS NULL",
        )
        .bind(uuid)
        .bind(node)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records the swarm's Docker cluster ID, unless one is adopted already.
    pub async fn adopt_cluster_id(&self, uuid: &str, cluster_id: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE swarms SET cluster_id = $1 WHERE uuid = $2 AND cluster_id IS NULL")
            .bind(cluster_id)
            .bind(uuid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores the sealed join tokens (hex nonce and ciphertext).
    pub async fn set_swarm_tokens(
        &self,
        uuid: &str,
        nonce: &str,
        sealed: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE swarms SET tokens_nonce = $1, tokens_sealed = $2 WHERE uuid = $3")
            .bind(nonce)
            .bind(sealed)
            .bind(uuid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves a swarm from `from` to `to` (compare-and-set), stamping `deployed_at` /
    /// `destroyed_at` when given and not yet set, and pointing it at `action` when given.
    /// False when the swarm was not in `from`.
    pub async fn transition_swarm(
        &self,
        uuid: &str,
        from: ClusterState,
        to: ClusterState,
        stamp: Option<i64>,
        action: Option<&ActionRecord>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let (deployed, destroyed) = match to {
            ClusterState::Deployed => (stamp, None),
            ClusterState::Terminated => (None, stamp),
            _ => (None, None),
        };
        let moved = sqlx::query(
            "UPDATE swarms SET state = $1, deployed_at = COALESCE(deployed_at, $2), destroyed_at = COALESCE(destroyed_at, $3), current_action = COALESCE($4, current_action) WHERE uuid = $5 AND state = $6",
        )
        .bind(to.as_str())
        .bind(deployed)
        .bind(destroyed)
        .bind(action.map(|a| a.uuid.as_str()))
        .bind(uuid)
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !moved {
            return Ok(false);
        }
        if let Some(action) = action {
            insert_action_in(&mut tx, action).await?;
        }
        let mut events = Pending::default();
        events.swarm(Verb::for_state(to.as_str()), uuid, to.as_str());
        if let Some(action) = action {
            action_created(&mut events, action);
        }
        self.commit(tx, events).await?;
        Ok(true)
    }

    /// The swarm a node cluster belongs to, if any.
    pub async fn swarm_of_cluster(&self, cluster: &str) -> Result<Option<SwarmRecord>, StoreError> {
        let row = sqlx::query_as::<_, SwarmRow>(concat!(
            swarm_select!(),
            " WHERE manager_cluster = $1 OR worker_cluster = $1"
        ))
        .bind(cluster)
        .fetch_optional(&self.pool)
        .await?;
        row.map(SwarmRecord::try_from).transpose()
    }

    /// Marks exactly `leaving` (node uuids) of `cluster` as leaving their swarm. A node no
    /// longer in the set (the target went up again) stays, released or not: the swarm
    /// planner has it join again.
    pub async fn set_leaving(
        &self,
        cluster: &str,
        leaving: &std::collections::BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let marked: Vec<String> = sqlx::query_scalar(
            "SELECT uuid FROM nodes WHERE cluster_uuid = $1 AND swarm_leaving = TRUE",
        )
        .bind(cluster)
        .fetch_all(&mut *tx)
        .await?;
        for uuid in marked.iter().filter(|u| !leaving.contains(*u)) {
            sqlx::query(
                "UPDATE nodes SET swarm_leaving = FALSE, swarm_released = FALSE WHERE uuid = $1",
            )
            .bind(uuid)
            .execute(&mut *tx)
            .await?;
        }
        for uuid in leaving.iter().filter(|u| !marked.contains(u)) {
            sqlx::query(
                "UPDATE nodes SET swarm_leaving = TRUE WHERE uuid = $1 AND cluster_uuid = $2",
            )
            .bind(uuid)
            .bind(cluster)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The swarm is done with a leaving node: it may be terminated.
    pub async fn release_node(&self, uuid: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE nodes SET swarm_released = TRUE WHERE uuid = $1 AND swarm_leaving = TRUE",
        )
        .bind(uuid)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The swarm's target manager count (its managers' cluster is scaled with it).
    pub async fn set_swarm_managers(&self, uuid: &str, managers: u32) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE swarms SET managers = $1 WHERE uuid = $2")
            .bind(i64::from(managers))
            .bind(uuid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records the swarm's load balancer as last converged (`None`: removed).
    pub async fn set_swarm_load_balancer(
        &self,
        uuid: &str,
        load_balancer: Option<&flotilla_api::SwarmLoadBalancer>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE swarms SET load_balancer = $1 WHERE uuid = $2")
            .bind(load_balancer.map(super::to_json))
            .bind(uuid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the tasks waiting for `node`'s agent with `tasks` (each with its id and its
    /// sealed form, in the planner's order), in one transaction. Called by the holder of the
    /// swarm lease, so it is fenced like every write of that work.
    pub async fn set_agent_tasks(
        &self,
        node: &str,
        tasks: &[SealedTask],
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM agent_tasks WHERE node_uuid = $1")
            .bind(node)
            .execute(&mut *tx)
            .await?;
        for (position, task) in tasks.iter().enumerate() {
            sqlx::query(
                "INSERT INTO agent_tasks (node_uuid, task_id, position, task_nonce, task_sealed) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(node)
            .bind(&task.id)
            .bind(i64::try_from(position).unwrap_or(i64::MAX))
            .bind(&task.nonce)
            .bind(&task.sealed)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every task waiting for an agent: node → its tasks in order.
    pub async fn agent_tasks(&self) -> Result<BTreeMap<String, Vec<SealedTask>>, StoreError> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT node_uuid, task_id, task_nonce, task_sealed FROM agent_tasks \
             ORDER BY node_uuid, position",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut tasks: BTreeMap<String, Vec<SealedTask>> = BTreeMap::new();
        for (node, id, nonce, sealed) in rows {
            tasks
                .entry(node)
                .or_default()
                .push(SealedTask { id, nonce, sealed });
        }
        Ok(tasks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{self, Backend, store_tests};

    fn sealed(id: &str) -> SealedTask {
        SealedTask {
            id: id.into(),
            nonce: format!("nonce-{id}"),
            sealed: format!("sealed-{id}"),
        }
    }

    async fn a_nodes_tasks_are_replaced_whole_and_kept_in_order(backend: Backend) {
        let store = testing::store(backend).await;
        store
            .set_agent_tasks("n1", &[sealed("b"), sealed("a"), sealed("c")])
            .await
            .expect("set n1");
        store
            .set_agent_tasks("n2", &[sealed("x")])
            .await
            .expect("set n2");
        let all = store.agent_tasks().await.expect("read");
        let ids = |node: &str| -> Vec<String> {
            all.get(node)
                .map(|t| t.iter().map(|t| t.id.clone()).collect())
                .unwrap_or_default()
        };
        assert_eq!(ids("n1"), ["b", "a", "c"], "the planner's order");
        assert_eq!(all["n2"], [sealed("x")]);
        store
            .set_agent_tasks("n1", &[sealed("c")])
            .await
            .expect("replace n1");
        store.set_agent_tasks("n2", &[]).await.expect("clear n2");
        let all = store.agent_tasks().await.expect("read");
        assert_eq!(all.len(), 1, "a node without tasks has no rows: {all:?}");
        assert_eq!(all["n1"], [sealed("c")]);
    }

    store_tests!(a_nodes_tasks_are_replaced_whole_and_kept_in_order);
}
