-- `GET node/` lists nodes oldest first (`ORDER BY created_at, rowid`) and cuts the page in
-- SQL (PostgreSQL dialect of ../sqlite/0006_node_list_order.sql).
CREATE INDEX nodes_by_created ON nodes(created_at);
