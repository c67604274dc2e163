-- Node lifecycle (health, IP changes, bring-your-own nodes, revocation).
--
-- * A bring-your-own node belongs to no cluster: `nodes.cluster_uuid` becomes nullable. SQLite
--   cannot relax a column constraint in place, so the table is rebuilt (the documented
--   create-copy-drop-rename procedure; foreign keys are checked at commit, by which time
--   `node_agents` points at the new table under the old name). Its instance, AZ and subnet
--   are '' (Flotilla cannot see its machine).
-- * `instance_public_ip` is the public IP EC2 reported last. The node's `public_ip` follows
--   whichever source changed last: an agent registering from a new address, or EC2 reporting
--   a new address (stop/start, an elastic IP) — see `Store::observe_public_ip`.
-- * A credential is revoked (node removed) by stamping `revoked_at`; the row stays, so the
--   node's batch slot can never register again.

PRAGMA defer_foreign_keys = ON;

CREATE TABLE nodes_new (
    uuid                TEXT PRIMARY KEY,
    cluster_uuid        TEXT REFERENCES clusters(uuid),   -- NULL: a bring-your-own node
    slot                INTEGER NOT NULL,
    instance_id         TEXT NOT NULL,
    state               TEXT NOT NULL,
    availability_zone   TEXT NOT NULL,
    subnet_id           TEXT NOT NULL,
    public_ip           TEXT,
    private_ip          TEXT,
    nickname            TEXT,
    tags                TEXT NOT NULL DEFAULT '[]',
    last_seen           INTEGER,
    created_at          INTEGER NOT NULL,
    deployed_at         INTEGER,
    destroyed_at        INTEGER,
    instance_public_ip  TEXT,
    UNIQUE (cluster_uuid, slot)
);

INSERT INTO nodes_new (uuid, cluster_uuid, slot, instance_id, state, availability_zone, subnet_id,
        public_ip, private_ip, nickname, tags, last_seen, created_at, deployed_at, destroyed_at,
        instance_public_ip)
    SELECT uuid, cluster_uuid, slot, instance_id, state, availability_zone, subnet_id,
        public_ip, private_ip, nickname, tags, last_seen, created_at, deployed_at, destroyed_at,
        public_ip
    FROM nodes;

DROP TABLE nodes;
ALTER TABLE nodes_new RENAME TO nodes;
CREATE INDEX nodes_by_cluster ON nodes(cluster_uuid);
CREATE INDEX nodes_by_state ON nodes(state);

ALTER TABLE node_agents ADD COLUMN revoked_at INTEGER;
