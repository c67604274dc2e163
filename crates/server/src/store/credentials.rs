//! Linked provider keys, sealed: the store sees only a nonce and a ciphertext
//! ([`crate::secrets`] seals and opens them), so the database file and its backups hold no
//! key in clear.

use super::{Store, StoreError};

impl Store {
    /// Replaces the provider's sealed keys in one statement.
    pub async fn put_provider_credentials(
        &self,
        provider: &str,
        nonce: &[u8],
        ciphertext: &[u8],
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO provider_credentials (provider, nonce, ciphertext, linked_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (provider) DO UPDATE SET nonce = excluded.nonce, \
             ciphertext = excluded.ciphertext, linked_at = excluded.linked_at",
        )
        .bind(provider)
        .bind(nonce)
        .bind(ciphertext)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The provider's sealed keys as (nonce, ciphertext), if any were linked.
    pub async fn provider_credentials(
        &self,
        provider: &str,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        Ok(
            sqlx::query_as(
                "SELECT nonce, ciphertext FROM provider_credentials WHERE provider = $1",
            )
            .bind(provider)
            .fetch_optional(&self.pool)
            .await?,
        )
    }
}
