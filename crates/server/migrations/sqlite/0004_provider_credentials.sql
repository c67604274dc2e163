-- Keys linked through `PUT /api/infra/v1/provider/<provider>/credentials/`. Only an AEAD
-- ciphertext of the keys is kept (ChaCha20-Poly1305 under the data directory's
-- `secret.key`, a random nonce per write): neither the access key id nor the secret is
-- stored in clear.

CREATE TABLE provider_credentials (
    provider    TEXT PRIMARY KEY,       -- 'aws'
    nonce       BLOB NOT NULL,          -- 12 random bytes, new on every write
    ciphertext  BLOB NOT NULL,          -- sealed JSON {access_key_id, secret_access_key, session_token}
    linked_at   INTEGER NOT NULL
);
