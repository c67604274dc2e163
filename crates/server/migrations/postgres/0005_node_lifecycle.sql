-- Node lifecycle (PostgreSQL dialect of ../sqlite/0005_node_lifecycle.sql, which says why).
-- PostgreSQL relaxes a column constraint in place: no table rebuild.

ALTER TABLE nodes ALTER COLUMN cluster_uuid DROP NOT NULL;   -- NULL: a bring-your-own node
ALTER TABLE nodes ADD COLUMN instance_public_ip TEXT;
UPDATE nodes SET instance_public_ip = public_ip;
CREATE INDEX nodes_by_state ON nodes(state);

ALTER TABLE node_agents ADD COLUMN revoked_at BIGINT;
