//! The dashboard's sessions (migration 0015, table `dashboard_sessions`), shared by every
//! replica: what `app::sessions` keeps of a logged-in browser.
//!
//! Design decisions:
//! * The store keeps what it is given: a session is found by the SHA-256 of its cookie's id
//!   (hex), computed above; neither the id nor the CSRF token derived from it arrives here.
//! * Reading a session is one primary-key lookup and never writes: an expired row is
//!   answered as no session and deleted by the next login's sweep ([`Store::insert_session`]:
//!   expired rows first, then the oldest beyond the bound, in the insert's transaction).
//! * Times are Unix seconds, comparable across replicas (their clocks decide only when a
//!   session expires).

use super::{Store, StoreError};

/// One logged-in browser as stored.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRecord {
    /// Hex SHA-256 of the cookie's id.
    pub id_hash: String,
    pub username: String,
    /// How the session was opened: `key`, `password` or `directory`.
    pub via_kind: String,
    /// The key's id, the password hash's hex fingerprint, or empty.
    pub via_value: String,
    pub created_at: i64,
    pub expires_at: i64,
}

// The id's hash opens nothing, but stays out of logs anyway.
impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("username", &self.username)
            .field("via_kind", &self.via_kind)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Stores a new session. In the same transaction: sessions expired at `now` are
    /// deleted, then — while `max` or more remain — the ones closest to expiry (the oldest:
    /// every session lives as long), so at most `max` are held.
    pub async fn insert_session(
        &self,
        session: &SessionRecord,
        now: i64,
        max: usize,
    ) -> Result<(), StoreError> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dashboard_sessions")
            .fetch_one(&mut *tx)
            .await?;
        if held >= max {
            sqlx::query(
                "DELETE FROM dashboard_sessions WHERE id_hash IN (SELECT id_hash FROM dashboard_sessions ORDER BY expires_at, id_hash LIMIT $1)",
            )
            .bind(held - max + 1)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO dashboard_sessions (id_hash, username, via_kind, via_value, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&session.id_hash)
        .bind(&session.username)
        .bind(&session.via_kind)
        .bind(&session.via_value)
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The session whose id hashes to `id_hash`, unless it expired by `now`.
    pub async fn session(
        &self,
        id_hash: &str,
        now: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        Ok(sqlx::query_as::<_, SessionRecord>(
            "SELECT id_hash, username, via_kind, via_value, created_at, expires_at FROM dashboard_sessions WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Ends the session whose id hashes to `id_hash`; whether there was one.
    pub async fn delete_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let deleted = sqlx::query("DELETE FROM dashboard_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// Sessions held (expired ones not yet swept included), for tests of the bound.
    pub async fn sessions_held(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM dashboard_sessions")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::access::AccessUser;
    use crate::store::testing::{self, Backend, store_tests};

    fn session(id_hash: &str, username: &str, created_at: i64) -> SessionRecord {
        SessionRecord {
            id_hash: id_hash.into(),
            username: username.into(),
            via_kind: "key".into(),
            via_value: "k1".into(),
            created_at,
            expires_at: created_at + 100,
        }
    }

    async fn sessions_are_shared_expire_end_and_are_bounded(backend: Backend) {
        let store = testing::store(backend).await;
        let user = AccessUser {
            username: "alice".into(),
            admin: false,
            password_hash: None,
            created_at: 1,
        };
        assert!(store.create_user(&user, None).await.expect("user"));
        let first = session("aa", "alice", 10);
        store.insert_session(&first, 10, 3).await.expect("insert");
        // Another replica (its own pools) sees it at once, until it expires.
        let other = store.another_replica().await;
        assert_eq!(
            other.session("aa", 50).await.expect("read"),
            Some(first.clone())
        );
        assert_eq!(other.session("aa", 110).await.expect("expired"), None);
        assert_eq!(other.session("bb", 50).await.expect("unknown"), None);
        // Logged out on one replica, gone on the other.
        assert!(other.delete_session("aa").await.expect("logout"));
        assert!(!other.delete_session("aa").await.expect("once"));
        assert_eq!(store.session("aa", 50).await.expect("read"), None);

        // The bound: expired ones go first, then the oldest.
        for (hash, at) in [("s1", 10), ("s2", 20), ("s3", 30)] {
            store
                .insert_session(&session(hash, "alice", at), at, 3)
                .await
                .expect("insert");
        }
        assert_eq!(store.sessions_held().await.expect("count"), 3);
        store
            .insert_session(&session("s4", "alice", 40), 40, 3)
            .await
            .expect("insert");
        assert_eq!(store.sessions_held().await.expect("count"), 3);
        assert_eq!(store.session("s1", 40).await.expect("read"), None, "oldest");
        assert!(store.session("s2", 40).await.expect("read").is_some());
        // At 125, s2 (expires 120) has expired: it goes, and nobody else.
        store
            .insert_session(&session("s5", "alice", 125), 125, 3)
            .await
            .expect("insert");
        assert_eq!(store.sessions_held().await.expect("count"), 3);
        for hash in ["s3", "s4", "s5"] {
            assert!(store.session(hash, 125).await.expect("read").is_some());
        }
        // Removing the user ends its sessions.
        assert!(store.delete_user("alice", 126).await.expect("delete"));
        assert_eq!(store.sessions_held().await.expect("count"), 0);
    }

    store_tests!(sessions_are_shared_expire_end_and_are_bounded);
}
