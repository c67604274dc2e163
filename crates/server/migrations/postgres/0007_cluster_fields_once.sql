-- Every field of a node cluster is stored once (PostgreSQL dialect of
-- ../sqlite/0007_cluster_fields_once.sql, which says why): auto_replace moves from the spec
-- JSON to its column, and the JSON keeps only the create-time fields.

ALTER TABLE clusters ADD COLUMN auto_replace BOOLEAN NOT NULL DEFAULT FALSE;

UPDATE clusters
    SET auto_replace = COALESCE((spec::jsonb ->> 'auto_replace')::boolean, FALSE);

UPDATE clusters
    SET spec = (spec::jsonb - 'name' - 'target_num_nodes' - 'tags' - 'auto_replace')::text;
