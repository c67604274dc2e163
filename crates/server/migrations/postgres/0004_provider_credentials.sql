-- Keys linked through `PUT /api/infra/v1/provider/<provider>/credentials/` (PostgreSQL
-- dialect of ../sqlite/0004_provider_credentials.sql). Only an AEAD ciphertext of the keys is
-- kept (ChaCha20-Poly1305 under the data directory's `secret.key`, a random nonce per write).

CREATE TABLE provider_credentials (
    provider    TEXT PRIMARY KEY,       -- 'aws'
    nonce       BYTEA NOT NULL,         -- 12 random bytes, new on every write
    ciphertext  BYTEA NOT NULL,         -- sealed JSON {access_key_id, secret_access_key, session_token}
    linked_at   BIGINT NOT NULL
);
