-- Nothing to do on SQLite: every TEXT column compares bytewise (BINARY) already. The
-- PostgreSQL migration of this version gives `node_agents.node_uuid` the collation of
-- `nodes.uuid` (see ../postgres/0016_node_agents_uuid_collation.sql).
SELECT 1;
