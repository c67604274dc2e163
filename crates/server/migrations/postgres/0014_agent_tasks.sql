-- The swarm worker's tasks for agents: PostgreSQL dialect of ../sqlite/0014_agent_tasks.sql,
-- which says what each column is for.

CREATE TABLE agent_tasks (
    node_uuid   TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    position    INTEGER NOT NULL,
    task_nonce  TEXT NOT NULL,
    task_sealed TEXT NOT NULL,
    PRIMARY KEY (node_uuid, task_id)
);
