//! The dashboard's sessions, kept in the database so that every replica knows every
//! session (the HTTP side — cookie, CSRF header, `Origin` — is the `session` module, which
//! says why the design is what it is).
//!
//! What is stored (`dashboard_sessions`, `store::sessions`), and why:
//! * the SHA-256 of the cookie's random 256-bit id, never the id: a copy of the database
//!   (a backup, `pg_dump`, a read-only replica) opens no session, and the hash of a 256-bit
//!   random value needs no salt or slow hash;
//! * the user, how the session was opened ([`SignedInWith`]: the API key's id, the SHA-256
//!   of the stored password hash, or the directory), its creation and its expiry.
//!
//! The CSRF token is not stored at all: it is `SHA-256("flotilla dashboard csrf v1" ‖ 0 ‖
//! id)`, derived from the cookie's id. `GET /session` must answer it, and every request
//! that can ask carries the cookie, so the server can compute it again instead of keeping
//! it; the database then holds neither secret. Knowing the token gives nothing towards the
//! id (it is a one-way hash of it, labelled so that it differs from the stored hash), and
//! the token stays as unguessable as the id.
//!
//! Every request with the cookie reads its session (one primary-key lookup) besides the
//! credential check: there is no cache, so a logout or a removal on any replica ends the
//! session everywhere at its next request. Reads never write; expired rows are deleted by
//! the next login (with the oldest, beyond [`MAX_SESSIONS`]), a logout, or the removal of
//! the user.

use std::time::Duration;

use flotilla_core::cloud::Cloud;
use sha2::{Digest, Sha256};

use super::{App, AppResult, SignedInWith};
use crate::store::SessionRecord;

/// How long a session lasts after login.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at most (by the installation, over every replica).
pub const MAX_SESSIONS: usize = 10_000;

/// One logged-in browser.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub username: String,
    /// The credential the session was opened with; the session ends when it stops holding
    /// (`http` asks `App::still_holds` on every request).
    pub via: SignedInWith,
    pub csrf_token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

// Secrets stay out of logs: the ids and tokens are never printed.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A new session: the cookie's value (the only copy of the id) and the session.
pub struct Created {
    pub id: String,
    pub session: Session,
}

impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// The key a session is stored under: the hex SHA-256 of its id.
fn id_hash(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// The session's CSRF token, derived from its id (see the module docs).
fn csrf_token(id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"flotilla dashboard csrf v1\0");
    hasher.update(id.as_bytes());
    hex::encode(hasher.finalize())
}

fn via_columns(via: &SignedInWith) -> (&'static str, String) {
    match via {
        SignedInWith::Key(id) => ("key", id.clone()),
        SignedInWith::Password(print) => ("password", hex::encode(print)),
        SignedInWith::Directory => ("directory", String::new()),
    }
}

fn via_of(kind: &str, value: &str) -> Option<SignedInWith> {
    match kind {
        "key" => Some(SignedInWith::Key(value.to_owned())),
        "password" => {
            let mut print = [0u8; 32];
            hex::decode_to_slice(value, &mut print).ok()?;
            Some(SignedInWith::Password(print))
        }
        "directory" => Some(SignedInWith::Directory),
        _ => None,
    }
}

impl<C: Cloud + 'static> App<C> {
    /// Starts a session for `username` (already authenticated) at `now` (Unix seconds).
    pub async fn open_session(
        &self,
        username: &str,
        via: SignedInWith,
        now: i64,
    ) -> AppResult<Created> {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let expires_at = now.saturating_add(LIFETIME.as_secs().try_into().unwrap_or(i64::MAX));
        let (via_kind, via_value) = via_columns(&via);
        self.store
            .insert_session(
                &SessionRecord {
                    id_hash: id_hash(&id),
                    username: username.to_owned(),
                    via_kind: via_kind.to_owned(),
                    via_value,
                    created_at: now,
                    expires_at,
                },
                now,
                MAX_SESSIONS,
            )
            .await?;
        let session = Session {
            username: username.to_owned(),
            via,
            csrf_token: csrf_token(&id),
            expires_at,
        };
        Ok(Created { id, session })
    }

    /// The live session of cookie value `id` at `now` (Unix seconds).
    pub async fn session(&self, id: &str, now: i64) -> AppResult<Option<Session>> {
        let Some(record) = self.store.session(&id_hash(id), now).await? else {
            return Ok(None);
        };
        Ok(
            via_of(&record.via_kind, &record.via_value).map(|via| Session {
                username: record.username,
                via,
                csrf_token: csrf_token(id),
                expires_at: record.expires_at,
            }),
        )
    }

    /// Ends the session of cookie value `id`; whether there was one.
    pub async fn end_session(&self, id: &str) -> AppResult<bool> {
        Ok(self.store.delete_session(&id_hash(id)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_key_and_the_csrf_token_differ_and_reveal_nothing_stored() {
        let id = "ab".repeat(32);
        assert_eq!(id_hash(&id).len(), 64);
        assert_eq!(csrf_token(&id).len(), 64);
        assert_ne!(id_hash(&id), csrf_token(&id));
        assert_ne!(csrf_token(&id), id);
        assert_eq!(
            csrf_token(&id),
            csrf_token(&id),
            "derived, so every replica agrees"
        );
        for via in [
            SignedInWith::Key("k1".into()),
            SignedInWith::Password([7; 32]),
            SignedInWith::Directory,
        ] {
            let (kind, value) = via_columns(&via);
            assert_eq!(via_of(kind, &value), Some(via));
        }
        assert_eq!(via_of("password", "zz"), None);
    }
}
