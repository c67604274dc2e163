-- Flotilla's control-plane store, PostgreSQL dialect (the SQLite dialect is ../sqlite/; each
-- version here builds the same tables as the SQLite file of the same version). Times are
-- seconds since the Unix epoch (UTC); the API formats them. JSON columns hold serde_json text.
--
-- Where the dialects differ:
-- * Integers are BIGINT (the store binds i64), booleans BOOLEAN (SQLite: INTEGER 0/1; the
--   store writes them as bound booleans or TRUE/FALSE, which SQLite reads as 1/0).
-- * `rowid` is SQLite's implicit insertion order; here it is an explicit identity column of
--   the same name, so `ORDER BY created_at, rowid` reads the same on both.
-- * `nodes.uuid` compares bytewise (COLLATE "C"), as SQLite's BINARY collation does: the
--   uuid-prefix filter is a range on it.

CREATE TABLE installation (
    id          BIGINT PRIMARY KEY CHECK (id = 1),
    owner_id    TEXT NOT NULL,          -- the flotilla:owner tag value
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    api_key_salt  TEXT NOT NULL,        -- hex, random per key
    api_key_hash  TEXT NOT NULL,        -- hex SHA-256(salt || key); the key itself is never stored
    created_at    BIGINT NOT NULL
);

CREATE TABLE clusters (
    uuid              TEXT PRIMARY KEY,
    rowid             BIGINT GENERATED ALWAYS AS IDENTITY,
    name              TEXT NOT NULL,
    nickname          TEXT NOT NULL,
    spec              TEXT NOT NULL,    -- flotilla_core::ClusterSpec
    state             TEXT NOT NULL,
    target_num_nodes  BIGINT NOT NULL,
    generation        BIGINT NOT NULL DEFAULT 0,
    next_slot         BIGINT NOT NULL DEFAULT 0,
    tags              TEXT NOT NULL,    -- ["name", ...]
    current_action    TEXT,             -- action receiving the reconciler's log
    created_at        BIGINT NOT NULL,
    deployed_at       BIGINT,
    destroyed_at      BIGINT
);
CREATE INDEX clusters_by_state ON clusters(state);

CREATE TABLE nodes (
    uuid               TEXT COLLATE "C" PRIMARY KEY,
    rowid              BIGINT GENERATED ALWAYS AS IDENTITY,
    cluster_uuid       TEXT NOT NULL REFERENCES clusters(uuid),
    slot               BIGINT NOT NULL,
    instance_id        TEXT NOT NULL,
    state              TEXT NOT NULL,
    availability_zone  TEXT NOT NULL,
    subnet_id          TEXT NOT NULL,
    public_ip          TEXT,
    private_ip         TEXT,            -- address/prefix of its subnet
    nickname           TEXT,
    tags               TEXT NOT NULL DEFAULT '[]',
    last_seen          BIGINT,
    created_at         BIGINT NOT NULL,
    deployed_at        BIGINT,
    destroyed_at       BIGINT,
    UNIQUE (cluster_uuid, slot)
);
CREATE INDEX nodes_by_cluster ON nodes(cluster_uuid);

CREATE TABLE actions (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- creation order
    uuid             TEXT NOT NULL UNIQUE,
    object_uri       TEXT NOT NULL,
    label            TEXT NOT NULL,
    method           TEXT NOT NULL,
    path             TEXT NOT NULL,
    username         TEXT NOT NULL,
    user_agent       TEXT NOT NULL,
    ip               TEXT NOT NULL,
    state            TEXT NOT NULL,
    start_date       BIGINT NOT NULL,
    end_date         BIGINT,
    body             TEXT NOT NULL,
    logs             TEXT NOT NULL DEFAULT '',
    can_be_canceled  BOOLEAN NOT NULL DEFAULT FALSE,
    can_be_retried   BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX actions_by_object ON actions(object_uri);
