//! The agent channel's tokens and secrets: the installation's agent secret, the batch
//! registration token derived from it, and the hashes and random values credentials are
//! made of. Below both the agent channel (`app::agents`, which checks tokens) and the
//! reconcilers (which put a batch's token in its user data); it imports only the store.
//!
//! Design decisions:
//! * **Batch registration tokens.** One launch gives every instance of a batch the same user
//!   data, so a token cannot name a node. The server holds a random *agent secret*, created
//!   at [`crate::initialize`] and kept in the store in the clear — it must stay usable, since
//!   the server derives every batch's token from it: `hex(HMAC-SHA256(secret,
//!   "cluster:first_slot:count"))`. The token is good for slots `first_slot..first_slot +
//!   count` of that cluster only, and only once per slot (`app::agents` enforces that).
//! * Cryptography comes from crates, not from this file: HMAC-SHA256 from `hmac` (RFC 2104,
//!   checked here against RFC 4231's test vectors) and token comparison from `subtle`
//!   (constant time, so the time taken does not reveal a matching prefix).

use flotilla_api::date;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts a key of any length (a long one is hashed first), so `new_from_slice`
    // cannot fail.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// The registration token of the launch batch `first_slot..first_slot + count` of a cluster.
pub fn batch_token(secret: &str, cluster_uuid: &str, first_slot: u32, count: u32) -> String {
    hex::encode(hmac_sha256(
        secret.as_bytes(),
        format!("{cluster_uuid}:{first_slot}:{count}").as_bytes(),
    ))
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill(buffer.as_mut_slice());
    hex::encode(buffer)
}

/// The installation's agent secret, created on first use.
pub async fn load_secret(store: &Store) -> Result<String, StoreError> {
    store
        .ensure_agent_secret(&random_hex(32), date::now_unix())
        .await
}

pub(crate) fn credential_hash(credential: &str) -> String {
    hex::encode(Sha256::digest(credential.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn batch_token_values_do_not_change() {
        // Tokens already handed to launched instances must stay valid across upgrades:
        // this value was computed by an independent HMAC implementation (Python's `hmac`).
        assert_eq!(
            batch_token(
                "installation-secret",
                "5516df0b-721e-4470-b350-741ff22e63a0",
                3,
                2
            ),
            "e0a87b42c7cc0d250866c7cd0919ddf0d7d4714c04eba4ec5d27d20fb23d9204"
        );
    }

    #[test]
    fn batch_tokens_bind_secret_cluster_and_batch() {
        let token = batch_token("s", "c", 3, 2);
        assert_eq!(token.len(), 64);
        assert_eq!(token, batch_token("s", "c", 3, 2));
        for other in [
            batch_token("t", "c", 3, 2),
            batch_token("s", "d", 3, 2),
            batch_token("s", "c", 4, 2),
            batch_token("s", "c", 3, 3),
            // The separator keeps "1:23" and "12:3" apart.
            batch_token("s", "c", 1, 23),
        ] {
            assert_ne!(token, other);
        }
        assert_ne!(batch_token("s", "c", 1, 23), batch_token("s", "c", 12, 3));
    }
}
