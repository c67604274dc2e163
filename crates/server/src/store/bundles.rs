//! Client bundles' tables (migration 0013): Flotilla's CA (its key sealed) and the client
//! certificates it issued.
//!
//! Design decisions:
//! * The store keeps what it is given: the CA key arrives sealed (`secrets::BUNDLE_CA`) and
//!   a bundle's key never arrives at all.
//! * The CA is created on first use by whichever request gets there first: the insert is
//!   `ON CONFLICT DO NOTHING` and everyone reads back the one row, so two racing requests
//!   (or two replicas) end with one CA.

use super::{Store, StoreError};

/// The CA's row: certificate, and its key sealed (hex nonce, hex ciphertext).
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CaRecord {
    pub cert_pem: String,
    pub key_nonce: String,
    pub key_sealed: String,
}

impl std::fmt::Debug for CaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRecord").finish_non_exhaustive()
    }
}

/// One issued client certificate.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BundleRecord {
    /// The certificate's serial, hex.
    pub id: String,
    pub username: String,
    pub fingerprint: String,
    pub swarm: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

macro_rules! bundle_select {
    () => {
        "SELECT id, username, fingerprint, swarm, created_at, expires_at, revoked_at FROM bundles "
    };
}

impl Store {
    /// The CA, if one was created.
    pub async fn bundle_ca(&self) -> Result<Option<CaRecord>, StoreError> {
        Ok(sqlx::query_as::<_, CaRecord>(
            "SELECT cert_pem, key_nonce, key_sealed FROM bundle_ca WHERE id = 'ca'",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Stores `ca` unless a CA exists; the CA that exists afterwards (the first one wins).
    pub async fn insert_bundle_ca(&self, ca: &CaRecord, now: i64) -> Result<CaRecord, StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO bundle_ca (id, cert_pem, key_nonce, key_sealed, created_at) VALUES ('ca', $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ca.cert_pem)
        .bind(&ca.key_nonce)
        .bind(&ca.key_sealed)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let stored = sqlx::query_as::<_, CaRecord>(
            "SELECT cert_pem, key_nonce, key_sealed FROM bundle_ca WHERE id = 'ca'",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(stored)
    }

    pub async fn insert_bundle(&self, bundle: &BundleRecord) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO bundles (id, username, fingerprint, swarm, created_at, expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&bundle.id)
        .bind(&bundle.username)
        .bind(&bundle.fingerprint)
        .bind(&bundle.swarm)
        .bind(bundle.created_at)
        .bind(bundle.expires_at)
        .bind(bundle.revoked_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A user's bundles, revoked ones included, oldest first.
    pub async fn bundles(&self, username: &str) -> Result<Vec<BundleRecord>, StoreError> {
        Ok(sqlx::query_as::<_, BundleRecord>(concat!(
            bundle_select!(),
            "WHERE username = $1 ORDER BY created_at, id"
        ))
        .bind(username)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The bundle of a certificate, by its fingerprint.
    pub async fn bundle_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<BundleRecord>, StoreError> {
        Ok(
            sqlx::query_as::<_, BundleRecord>(concat!(bundle_select!(), "WHERE fingerprint = $1"))
                .bind(fingerprint)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Revokes a user's bundle; false when it has no such bundle not yet revoked.
    pub async fn revoke_bundle(
        &self,
        username: &str,
        id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let result = sqlx::query(
            "UPDATE bundles SET revoked_at = $1 WHERE username = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(username)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(result.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::access::AccessUser;
    use crate::store::testing::{self, Backend, store_tests};

    async fn the_first_ca_wins_and_bundles_are_revoked_once(backend: Backend) {
        let store = testing::store(backend).await;
        assert_eq!(store.bundle_ca().await.expect("read"), None);
        let first = CaRecord {
            cert_pem: "first".into(),
            key_nonce: "00".into(),
            key_sealed: "11".into(),
        };
        let second = CaRecord {
            cert_pem: "second".into(),
            ..first.clone()
        };
        assert_eq!(
            store.insert_bundle_ca(&first, 1).await.expect("insert"),
            first
        );
        assert_eq!(
            store.insert_bundle_ca(&second, 2).await.expect("race"),
            first
        );
        assert_eq!(store.bundle_ca().await.expect("read"), Some(first));

        let user = AccessUser {
            username: "alice".into(),
            admin: false,
            password_hash: None,
            created_at: 1,
        };
        assert!(store.create_user(&user, None).await.expect("user"));
        let bundle = BundleRecord {
            id: "4a".into(),
            username: "alice".into(),
            fingerprint: "ff".into(),
            swarm: Some("s1".into()),
            created_at: 5,
            expires_at: 500,
            revoked_at: None,
        };
        store.insert_bundle(&bundle).await.expect("bundle");
        assert_eq!(
            store
                .bundle_by_fingerprint("ff")
                .await
                .expect("by fingerprint"),
            Some(bundle.clone())
        );
        assert!(
            !store
                .revoke_bundle("bob", "4a", 9)
                .await
                .expect("not bob's")
        );
        assert!(store.revoke_bundle("alice", "4a", 9).await.expect("revoke"));
        assert!(!store.revoke_bundle("alice", "4a", 10).await.expect("once"));
        let listed = store.bundles("alice").await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].revoked_at, Some(9));
    }

    store_tests!(the_first_ca_wins_and_bundles_are_revoked_once);
}
