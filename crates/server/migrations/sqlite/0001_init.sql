-- Flotilla's control-plane store. Times are seconds since the Unix epoch (UTC); the API
-- formats them. JSON columns hold serde_json text.

CREATE TABLE installation (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    owner_id    TEXT NOT NULL,          -- the flotilla:owner tag value
    created_at  INTEGER NOT NULL
);

CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    api_key_salt  TEXT NOT NULL,        -- hex, random per key
    api_key_hash  TEXT NOT NULL,        -- hex SHA-256(salt || key); the key itself is never stored
    created_at    INTEGER NOT NULL
);

CREATE TABLE clusters (
    uuid              TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    nickname          TEXT NOT NULL,
    spec              TEXT NOT NULL,    -- flotilla_core::ClusterSpec
    state             TEXT NOT NULL,
    target_num_nodes  INTEGER NOT NULL,
    generation        INTEGER NOT NULL DEFAULT 0,
    next_slot         INTEGER NOT NULL DEFAULT 0,
    tags              TEXT NOT NULL,    -- ["name", ...]
    current_action    TEXT,             -- action receiving the reconciler's log
    created_at        INTEGER NOT NULL,
    deployed_at       INTEGER,
    destroyed_at      INTEGER
);
CREATE INDEX clusters_by_state ON clusters(state);

CREATE TABLE nodes (
    uuid               TEXT PRIMARY KEY,
    cluster_uuid       TEXT NOT NULL REFERENCES clusters(uuid),
    slot               INTEGER NOT NULL,
    instance_id        TEXT NOT NULL,
    state              TEXT NOT NULL,
    availability_zone  TEXT NOT NULL,
    subnet_id          TEXT NOT NULL,
    public_ip          TEXT,
    private_ip         TEXT,            -- address/prefix of its subnet
    nickname           TEXT,
    tags               TEXT NOT NULL DEFAULT '[]',
    last_seen          INTEGER,
    created_at         INTEGER NOT NULL,
    deployed_at        INTEGER,
    destroyed_at       INTEGER,
    UNIQUE (cluster_uuid, slot)
);
CREATE INDEX nodes_by_cluster ON nodes(cluster_uuid);

CREATE TABLE actions (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,   -- creation order
    uuid             TEXT NOT NULL UNIQUE,
    object_uri       TEXT NOT NULL,
    label            TEXT NOT NULL,
    method           TEXT NOT NULL,
    path             TEXT NOT NULL,
    username         TEXT NOT NULL,
    user_agent       TEXT NOT NULL,
    ip               TEXT NOT NULL,
    state            TEXT NOT NULL,
    start_date       INTEGER NOT NULL,
    end_date         INTEGER,
    body             TEXT NOT NULL,
    logs             TEXT NOT NULL DEFAULT '',
    can_be_canceled  INTEGER NOT NULL DEFAULT 0,
    can_be_retried   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX actions_by_object ON actions(object_uri);
