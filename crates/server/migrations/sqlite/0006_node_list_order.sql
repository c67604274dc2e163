-- `GET node/` lists nodes oldest first (`ORDER BY created_at, rowid`) and cuts the page in
-- SQL. This index makes that an index scan that stops after the page, instead of sorting
-- every node for each request (with 10,000 nodes a page of 25 cost as much as the table).
CREATE INDEX nodes_by_created ON nodes(created_at);
