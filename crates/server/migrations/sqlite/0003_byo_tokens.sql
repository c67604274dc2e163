-- Bring-your-own-node registration tokens (`POST /api/infra/v1/token/`, `docker-cloud node
-- byo`). Only a hash of each token is kept; a token registers one node, once.

CREATE TABLE byo_tokens (
    token_hash  TEXT PRIMARY KEY,       -- hex SHA-256 of the token; never the token
    username    TEXT NOT NULL,          -- who asked for it
    used        INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    used_at     INTEGER
);
