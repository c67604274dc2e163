-- Client bundles (issue #15): Flotilla's certificate authority and the certificates it
-- issued to users. Portable SQL (SQLite and PostgreSQL: ../postgres/0013_bundles.sql).
--
-- * `bundle_ca`: at most one row (`id` = 'ca'), created on first use. The certificate is
--   public; the private key is stored only sealed (ChaCha20-Poly1305 under the data
--   directory's secret.key, label "flotilla bundle CA key v1"), hex nonce and ciphertext.
-- * `bundles`: one row per issued client certificate. `id` is its serial (hex), how users
--   name a bundle; `fingerprint` (hex SHA-256 of the certificate's DER) is how a manager's
--   proxy finds it from a connection. The key is never stored. A bundle is revoked by
--   stamping `revoked_at`; the row stays for the audit trail.
-- * Numbered 0013 while 0011 and 0012 are being written elsewhere: sqlx applies every
--   migration the database has not seen, whatever its number, so the gap is harmless.

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
