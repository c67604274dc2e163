-- Client bundles: PostgreSQL dialect of ../sqlite/0013_bundles.sql, which says what each
-- table and column is for.

CREATE TABLE bundle_ca (
    id          TEXT PRIMARY KEY,
    cert_pem    TEXT NOT NULL,
    key_nonce   TEXT NOT NULL,
    key_sealed  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE bundles (
    id          TEXT PRIMARY KEY,
    username    TEXT NOT NULL REFERENCES users(username),
    fingerprint TEXT NOT NULL UNIQUE,
    swarm       TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX bundles_by_user ON bundles(username);
