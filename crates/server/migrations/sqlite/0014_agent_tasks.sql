-- The swarm worker's tasks for agents (issue #14): every replica answers heartbeats, so the
-- tasks waiting for a node's agent live in the database, not in the memory of the replica
-- that planned them. Portable SQL (SQLite and PostgreSQL: ../postgres/0014_agent_tasks.sql).
--
-- * One row per task waiting for a node: the holder of the swarm lease replaces a node's
--   rows when its plan for that node changes (a fenced write); every replica reads them
--   into its heartbeat answers' mailbox.
-- * `task_nonce`/`task_sealed`: the agent protocol's AgentTask as JSON, sealed
--   (ChaCha20-Poly1305 under secret.key, label "flotilla agent task v1", hex), because a
--   join task carries the swarm's join token, which is never stored in the clear.
-- * `position` keeps the planner's order of a node's tasks.

CREATE TABLE agent_tasks (
    node_uuid   TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    position    INTEGER NOT NULL,
    task_nonce  TEXT NOT NULL,
    task_sealed TEXT NOT NULL,
    PRIMARY KEY (node_uuid, task_id)
);
