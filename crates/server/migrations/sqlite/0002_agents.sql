-- Agent registration: the installation's secret that batch registration tokens are derived
-- from, and one row per node whose agent has registered.

CREATE TABLE agent_secret (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    secret      TEXT NOT NULL,          -- hex; usable, not hashed: the server derives tokens from it
    created_at  INTEGER NOT NULL
);

CREATE TABLE node_agents (
    node_uuid        TEXT PRIMARY KEY REFERENCES nodes(uuid),  -- one registration per node, ever
    credential_hash  TEXT NOT NULL UNIQUE,  -- hex SHA-256 of the node's credential; never the credential
    agent_version    TEXT,
    docker_version   TEXT,
    private_ips      TEXT NOT NULL DEFAULT '[]',   -- ["10.78.0.5", ...] as the agent reports them
    registered_at    INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
