-- Every field of a node cluster is stored once.
--
-- Before: `name`, `target_num_nodes` and the tags lived both in the `spec` JSON and in columns
-- (a PATCH of the target or the tags changed only the column, so the JSON's copy went stale),
-- and `auto_replace` lived only in the JSON. Now the columns hold what can change or is
-- looked up (name, target_num_nodes, tags, and the new auto_replace), and `spec` holds only
-- the create-time fields that never change (provider, region, node_type, disk_gb,
-- provider_options). The columns were already the live values, so nothing is lost: the JSON
-- copies are dropped, and auto_replace moves from the JSON to its column.

ALTER TABLE clusters ADD COLUMN auto_replace INTEGER NOT NULL DEFAULT 0;

UPDATE clusters
    SET auto_replace = CASE WHEN json_extract(spec, '$.auto_replace') THEN 1 ELSE 0 END;

UPDATE clusters
    SET spec = json_remove(spec, '$.name', '$.target_num_nodes', '$.tags', '$.auto_replace');
