-- Docker Swarm clusters and what each node's engine reports.
--
-- * A swarm owns two node clusters, its managers and its workers (`manager_cluster`,
--   `worker_cluster`): they are ordinary node clusters (listed, scaled and observed like any
--   other), and the swarm row holds only what is the swarm's own: the target manager
--   count, the manager the server chose to initialise it (recorded before the init is sent,
--   so two managers can never each start a swarm), the Docker cluster ID once adopted, and
--   the join tokens, sealed like linked AWS keys (nonce + ciphertext, hex).
-- * `node_agents.engine` is the agent's last engine report (flotilla_api::agent::EngineReport
--   as JSON): the node object's Docker fields and the swarm planner's observation both read
--   it. It changes only when the engine's state does.

CREATE TABLE swarms (
    uuid               TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    state              TEXT NOT NULL,
    managers           INTEGER NOT NULL,
    manager_cluster    TEXT NOT NULL REFERENCES clusters(uuid),
    worker_cluster     TEXT NOT NULL REFERENCES clusters(uuid),
    bootstrap_node     TEXT,            -- the node uuid chosen to run `swarm init`
    cluster_id         TEXT,            -- Docker's swarm ID, once adopted
    tokens_nonce       TEXT,            -- hex; the join tokens, sealed
    tokens_sealed      TEXT,            -- hex
    current_action     TEXT,
    load_balancer      TEXT,            -- {"dns_name": …, "ports": [{"port", "protocol"}]} as last converged
    created_at         INTEGER NOT NULL,
    deployed_at        INTEGER,
    destroyed_at       INTEGER
);
CREATE INDEX swarms_by_state ON swarms(state);

ALTER TABLE node_agents ADD COLUMN engine TEXT;
-- The swarm node ID the engine last reported: kept when the engine leaves (and reports none),
-- so the `Down` node it left in the swarm's list can still be found and removed.
ALTER TABLE node_agents ADD COLUMN swarm_node_id TEXT;

-- A node of a swarm's node cluster that its cluster no longer needs leaves the swarm before
-- its instance is terminated: the cluster's reconciler marks it leaving, the swarm worker
-- drains it, makes it leave and removes it from the swarm, then marks it released.
ALTER TABLE nodes ADD COLUMN swarm_leaving INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN swarm_released INTEGER NOT NULL DEFAULT 0;
