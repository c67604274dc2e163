-- Bring-your-own-node registration tokens (PostgreSQL dialect of ../sqlite/0003_byo_tokens.sql).
-- Only a hash of each token is kept; a token registers one node, once.

CREATE TABLE byo_tokens (
    token_hash  TEXT PRIMARY KEY,       -- hex SHA-256 of the token; never the token
    username    TEXT NOT NULL,          -- who asked for it
    used        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT NOT NULL,
    used_at     BIGINT
);
