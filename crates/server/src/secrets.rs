//! Encryption at rest for secrets the server must be able to read back (linked AWS keys).
//!
//! Design decisions:
//! * One 32-byte key per installation, in `secret.key` next to the database, created with
//!   mode 0600 on first start. The server refuses to start when the file is readable or
//!   writable by group or others, rather than keep using a key that may have leaked.
//!   Keeping the key outside the database means a copied database (or backup) alone
//!   reveals nothing.
//! * ChaCha20-Poly1305 (AEAD) with a fresh random 96-bit nonce on every write; the
//!   purpose label is authenticated as associated data, so a ciphertext cannot be moved to
//!   another use. Tampering or a different key is an error, never garbage.
//! * Plaintexts live only in memory; `SecretKey`'s `Debug` never shows the key.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context as _, bail};
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// The label (associated data) of sealed provider keys.
pub const PROVIDER_KEYS: &[u8] = b"flotilla provider credentials v1";
/// The label of an LDAP server's sealed bind password.
pub const LDAP_BIND_PASSWORD: &[u8] = b"flotilla ldap bind password v1";
/// The label of a swarm's sealed join tokens.
pub const SWARM_TOKENS: &[u8] = b"flotilla swarm join tokens v1";
/// The label of the client bundles' CA key (`ca`).
pub const BUNDLE_CA: &[u8] = b"flotilla bundle CA key v1";
/// The label of a task waiting for an agent (a join task carries a swarm's join token).
pub const AGENT_TASK: &[u8] = b"flotilla agent task v1";

/// The installation's data key. See the module documentation.
#[derive(Clone)]
pub struct SecretKey(Key);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// Reads the key file, creating it (mode 0600, 32 random bytes) when it does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<SecretKey> {
        if !path.exists() {
            let key = ChaCha20Poly1305::generate_key(&mut OsRng);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(key.as_slice())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        SecretKey::load(path)
    }

    /// Reads the key file; refuses one that group or others may access.
    pub fn load(path: &Path) -> anyhow::Result<SecretKey> {
        let metadata =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} is accessible by group or others (mode {mode:o}); it holds the key that encrypts linked AWS credentials. Run `chmod 600 {}` if it has not leaked, or replace it and link the keys again",
                path.display(),
                path.display()
            );
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        if bytes.len() != 32 {
            bail!(
                "{} must hold exactly 32 bytes, found {}",
                path.display(),
                bytes.len()
            );
        }
        Ok(SecretKey(*Key::from_slice(&bytes)))
    }

    /// Encrypts `plaintext` under a fresh random nonce; returns (nonce, ciphertext).
    pub fn seal(&self, label: &[u8], plaintext: &[u8]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let cipher = ChaCha20Poly1305::new(&self.0);
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: label,
                },
            )
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        Ok((nonce.to_vec(), ciphertext))
    }

    /// Decrypts what [`SecretKey::seal`] produced with the same label.
    pub fn open(&self, label: &[u8], nonce: &[u8], ciphertext: &[u8]) -> anyhow::Result<Vec<u8>> {
        if nonce.len() != 12 {
            bail!(
                "a sealed secret has a nonce of {} bytes, not 12",
                nonce.len()
            );
        }
        ChaCha20Poly1305::new(&self.0)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: label,
                },
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "cannot decrypt the linked credentials: secret.key is not the key they were sealed with, or the database row was altered"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_round_trips_with_fresh_nonces_and_detects_tampering() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret.key");
        let key = SecretKey::load_or_create(&path).expect("created");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = SecretKey::load_or_create(&path).expect("loaded");
        let (n1, c1) = key.seal(PROVIDER_KEYS, b"secret").expect("seal");
        let (n2, c2) = key.seal(PROVIDER_KEYS, b"secret").expect("seal");
        assert_ne!(n1, n2);
        assert_ne!(c1, c2);
        assert_eq!(
            again.open(PROVIDER_KEYS, &n1, &c1).expect("open"),
            b"secret"
        );
        assert!(key.open(b"other", &n1, &c1).is_err());
        let mut bad = c1.clone();
        bad[0] ^= 1;
        assert!(key.open(PROVIDER_KEYS, &n1, &bad).is_err());
        assert_eq!(format!("{key:?}"), "SecretKey(..)");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret.key");
        SecretKey::load_or_create(&path).expect("created");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let error = SecretKey::load_or_create(&path).expect_err("refused");
        assert!(error.to_string().contains("group or others"), "{error}");
    }
}
