-- Docker Swarm clusters and what each node's engine reports (PostgreSQL dialect of
-- ../sqlite/0008_swarms.sql, which says what each column is for).

CREATE TABLE swarms (
    uuid               TEXT PRIMARY KEY,
    rowid              BIGINT GENERATED ALWAYS AS IDENTITY,
    name               TEXT NOT NULL,
    state              TEXT NOT NULL,
    managers           BIGINT NOT NULL,
    manager_cluster    TEXT NOT NULL REFERENCES clusters(uuid),
    worker_cluster     TEXT NOT NULL REFERENCES clusters(uuid),
    bootstrap_node     TEXT,            -- the node uuid chosen to run `swarm init`
    cluster_id         TEXT,            -- Docker's swarm ID, once adopted
    tokens_nonce       TEXT,            -- hex; the join tokens, sealed
    tokens_sealed      TEXT,            -- hex
    current_action     TEXT,
    load_balancer      TEXT,            -- {"dns_name": …, "ports": [{"port", "protocol"}]} as last converged
    created_at         BIGINT NOT NULL,
    deployed_at        BIGINT,
    destroyed_at       BIGINT
);
CREATE INDEX swarms_by_state ON swarms(state);

ALTER TABLE node_agents ADD COLUMN engine TEXT;
ALTER TABLE node_agents ADD COLUMN swarm_node_id TEXT;

ALTER TABLE nodes ADD COLUMN swarm_leaving BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE nodes ADD COLUMN swarm_released BOOLEAN NOT NULL DEFAULT FALSE;
