//! Bring-your-own-node registration tokens (§3.8): created by `POST token/`, consumed once
//! by an agent registering a node.
//!
//! Design decisions:
//! * Only the SHA-256 of a token is stored. Tokens are 128 random bits, so an unsalted hash
//!   cannot be brute-forced, and it lets a token be looked up by its hash.
//! * Consuming is a single compare-and-set `UPDATE ... WHERE used = 0`, so two agents
//!   racing with the same token cannot both register.

use super::{Store, StoreError};

impl Store {
    /// Stores a new, unused token by its hash.
    pub async fn insert_byo_token(
        &self,
        token_hash: &str,
        username: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO byo_tokens (token_hash, username, used, created_at) VALUES ($1, $2, FALSE, $3)",
        )
        .bind(token_hash)
        .bind(username)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks the token with this hash used if it exists and was unused; returns the user
    /// who created it when it did, `None` for an unknown or already used token.
    pub async fn consume_byo_token(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.write().await?;
        let user = sqlx::query_scalar(
            "UPDATE byo_tokens SET used = TRUE, used_at = $1 WHERE token_hash = $2 AND used = FALSE RETURNING username",
        )
        .bind(now)
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(user)
    }
}
