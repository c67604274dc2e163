//! Leases with fencing tokens: one owner per piece of work among replicas sharing a
//! database (migration 0010).
//!
//! Design decisions:
//! * A lease is a row per piece of work (`cluster:<uuid>`, …): its owner (a replica id),
//!   its expiry, and a fencing token. Acquiring is one `INSERT … ON CONFLICT DO UPDATE …
//!   WHERE` statement that succeeds only when the lease is free, expired, or already the
//!   caller's: two replicas racing for it get exactly one owner (the database serialises the
//!   two upserts on the row; the loser's `WHERE` sees the winner's unexpired lease).
//! * The token only ever increases: a new holder gets the previous token + 1, and rows are
//!   never deleted (a release only expires the lease). So a token names one tenure, and
//!   "the current token" is all a write needs to check.
//! * Expiry is liveness, the token is safety. Expiry times come from the replicas' clocks
//!   (milliseconds, passed in), so a skewed or paused replica may believe it still holds an
//!   expired lease; it cannot act on that belief, because every write made for the work
//!   carries the token ([`Fence`]) and the store refuses it once another replica has taken
//!   over ([`StoreError::StaleLease`]).
//! * The fence check takes the lease row's write lock inside the write's transaction (a
//!   no-op `UPDATE` of the row): a takeover waits until the fenced write commits, or the
//!   write sees the new token and is refused — never a write that lands after the new
//!   holder has read the state. On SQLite the transaction's write lock already orders them.
//! * The fence travels with the work, not through every store method's arguments: a work
//!   runner (the server's `lease` module) runs the work's future inside [`fenced`], a task-local scope,
//!   and `Store::write` — the one way to begin a write — checks the fence in scope inside
//!   the transaction. So every write the work makes, including ones added later, is
//!   fenced without a parameter anyone could forget; writes made outside a scope (API
//!   calls, agents' heartbeats) are not the work's and are not fenced. A scope does not
//!   cross `tokio::spawn`: the work must not spawn tasks that write (none does; its
//!   concurrency is `join`).

use super::{Store, StoreError};

/// A held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub work: String,
    pub owner: String,
    /// The fencing token of this tenure; greater than every earlier holder's.
    pub token: i64,
    /// Milliseconds since the Unix epoch.
    pub expires_at: i64,
}

impl Lease {
    /// What a write made for this lease's work carries.
    pub fn fence(&self) -> Fence<'_> {
        Fence {
            work: &self.work,
            owner: &self.owner,
            token: self.token,
        }
    }
}

/// The proof a write carries that it is made by the current holder of `work`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence<'a> {
    pub work: &'a str,
    pub owner: &'a str,
    pub token: i64,
}

tokio::task_local! {
    static FENCE: Lease;
}

/// Runs `work` with every store write it makes fenced by `lease` (see the module docs).
pub async fn fenced<F: std::future::Future>(lease: Lease, work: F) -> F::Output {
    FENCE.scope(lease, work).await
}

/// The lease whose fence the current task's writes carry, if any.
pub fn fence_in_scope() -> Option<Lease> {
    FENCE.try_with(Lease::clone).ok()
}

/// Refuses the transaction's write unless `fence` is still the lease's current tenure; on
/// success the lease row stays locked until the transaction ends (see the module docs).
pub(super) async fn check_fence_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    fence: &Fence<'_>,
) -> Result<(), StoreError> {
    let current = sqlx::query(
        "UPDATE leases SET token = token WHERE work = $1 AND owner = $2 AND token = $3",
    )
    .bind(fence.work)
    .bind(fence.owner)
    .bind(fence.token)
    .execute(&mut **tx)
    .await?;
    if current.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::StaleLease {
            work: fence.work.to_owned(),
            token: fence.token,
        })
    }
}

impl Store {
    /// Takes the lease on `work` for `owner` until `now_ms + ttl_ms`, if it is free,
    /// expired or already `owner`'s. A new tenure gets the next token; `owner` renewing its
    /// unexpired lease keeps its token. `None` when another replica holds it.
    pub async fn acquire_lease(
        &self,
        work: &str,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let expires_at = now_ms.saturating_add(ttl_ms);
        let token: Option<i64> = sqlx::query_scalar(
            "INSERT INTO leases (work, owner, token, expires_at) VALUES ($1, $2, 1, $3)
             ON CONFLICT (work) DO UPDATE SET
                token = CASE WHEN leases.owner = excluded.owner AND leases.expires_at > $4
                    THEN leases.token ELSE leases.token + 1 END,
                owner = excluded.owner,
                expires_at = excluded.expires_at
             WHERE leases.expires_at <= $4 OR leases.owner = excluded.owner
             RETURNING token",
        )
        .bind(work)
        .bind(owner)
        .bind(expires_at)
        .bind(now_ms)
        .fetch_optional(&self.writer)
        .await?;
        Ok(token.map(|token| Lease {
            work: work.to_owned(),
            owner: owner.to_owned(),
            token,
            expires_at,
        }))
    }

    /// Extends `lease` to `now_ms + ttl_ms` if it is still the current tenure (nobody took
    /// over, even after it expired). False when it was lost: stop the work.
    pub async fn renew_lease(
        &self,
        lease: &mut Lease,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let expires_at = now_ms.saturating_add(ttl_ms);
        let renewed = sqlx::query(
            "UPDATE leases SET expires_at = $1 WHERE work = $2 AND owner = $3 AND token = $4",
        )
        .bind(expires_at)
        .bind(&lease.work)
        .bind(&lease.owner)
        .bind(lease.token)
        .execute(&self.writer)
        .await?
        .rows_affected()
            == 1;
        if renewed {
            lease.expires_at = expires_at;
        }
        Ok(renewed)
    }

    /// Gives `lease` up so another replica may take it at once (it expires now; the row and
    /// its token stay, so the next tenure's token is still greater). A lost lease is left
    /// alone.
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE leases SET expires_at = 0 WHERE work = $1 AND owner = $2 AND token = $3",
        )
        .bind(&lease.work)
        .bind(&lease.owner)
        .bind(lease.token)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Expires every lease (a SQLite database's start: one file has one server, so any lease
    /// in it was left by an earlier process of this installation, which is gone). Tokens
    /// stay, so the next tenures' tokens are still greater.
    pub async fn expire_all_leases(&self) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("UPDATE leases SET expires_at = 0 WHERE expires_at > 0")
                .execute(&self.writer)
                .await?
                .rows_affected(),
        )
    }

    /// The lease on `work` as stored (held or expired), if it was ever taken.
    pub async fn lease(&self, work: &str) -> Result<Option<Lease>, StoreError> {
        let row: Option<(String, String, i64, i64)> =
            sqlx::query_as("SELECT work, owner, token, expires_at FROM leases WHERE work = $1")
                .bind(work)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(work, owner, token, expires_at)| Lease {
            work,
            owner,
            token,
            expires_at,
        }))
    }
}

#[cfg(test)]
mod tests {
    use flotilla_core::state::ClusterState;

    use super::*;
    use crate::store::Transition;
    use crate::store::testing::{self, Backend, store_tests};

    const TTL: i64 = 15_000;

    async fn takeover_after_expiry_bumps_the_token(backend: Backend) {
        let store = testing::store(backend).await;
        let a = store
            .acquire_lease("cluster:c1", "a", 0, TTL)
            .await
            .expect("acquire")
            .expect("free: a takes it");
        assert_eq!(a.token, 1);
        assert_eq!(
            store
                .acquire_lease("cluster:c1", "b", TTL - 1, TTL)
                .await
                .expect("acquire"),
            None,
            "held by a until it expires"
        );
        let mut renewed = a.clone();
        assert!(
            store
                .renew_lease(&mut renewed, 10, TTL)
                .await
                .expect("renew")
        );
        assert_eq!(renewed.token, 1, "renewing keeps the tenure");
        let b = store
            .acquire_lease("cluster:c1", "b", 10 + TTL, TTL)
            .await
            .expect("acquire")
            .expect("expired: b takes it over");
        assert_eq!(b.token, 2);
        let mut lost = renewed;
        assert!(
            !store
                .renew_lease(&mut lost, 10 + TTL, TTL)
                .await
                .expect("renew"),
            "a lost it"
        );
        store
            .release_lease(&lost)
            .await
            .expect("a lost lease is left alone");
        assert_eq!(
            store
                .lease("cluster:c1")
                .await
                .expect("read")
                .map(|l| l.owner),
            Some("b".into())
        );
        store.release_lease(&b).await.expect("release");
        let again = store
            .acquire_lease("cluster:c1", "a", 20 + TTL, TTL)
            .await
            .expect("acquire")
            .expect("released: free at once");
        assert_eq!(again.token, 3, "tokens never repeat, even after a release");
    }

    async fn a_stale_holders_write_is_refused(backend: Backend) {
        let store = testing::store(backend).await;
        let cluster = testing::cluster(ClusterState::Deploying);
        store
            .insert_cluster(
                &cluster,
                &testing::action("a1", "/x/"),
                crate::store::access::DEFAULT_ORG,
            )
            .await
            .expect("cluster");
        let paused = store
            .acquire_lease("cluster:c1", "a", 0, TTL)
            .await
            .expect("acquire")
            .expect("a");
        let current = store
            .acquire_lease("cluster:c1", "b", TTL, TTL)
            .await
            .expect("acquire")
            .expect("b takes over while a is paused");
        let settle = |fence| Transition {
            fence: Some(fence),
            ..Transition::new(ClusterState::Deploying, ClusterState::Deployed)
        };
        let refused = store
            .transition_cluster("c1", &settle(paused.fence()), None, None)
            .await;
        assert!(
            matches!(refused, Err(StoreError::StaleLease { token: 1, .. })),
            "{refused:?}"
        );
        let unchanged = store.cluster("c1").await.expect("read").expect("cluster");
        assert_eq!(unchanged.state, ClusterState::Deploying);
        assert!(
            store
                .transition_cluster("c1", &settle(current.fence()), None, None)
                .await
                .expect("the holder writes")
        );
        let moved = store.cluster("c1").await.expect("read").expect("cluster");
        assert_eq!(moved.state, ClusterState::Deployed);
    }

    async fn replicas_racing_for_a_lease_get_exactly_one_owner(backend: Backend) {
        let first = testing::store(backend).await;
        let second = first.another_replica().await;
        for round in 0..5 {
            let work = format!("cluster:race{round}");
            let racers: Vec<_> = (0..8)
                .map(|i| {
                    let store = if i % 2 == 0 {
                        (*first).clone()
                    } else {
                        second.clone()
                    };
                    let work = work.clone();
                    tokio::spawn(async move {
                        store
                            .acquire_lease(&work, &format!("replica-{i}"), 0, TTL)
                            .await
                            .expect("acquire")
                    })
                })
                .collect();
            let mut owners = Vec::new();
            for racer in racers {
                owners.extend(racer.await.expect("join"));
            }
            assert_eq!(owners.len(), 1, "round {round}: {owners:?}");
            assert_eq!(owners[0].token, 1);
            let stored = first.lease(&work).await.expect("read").expect("lease");
            assert_eq!(stored.owner, owners[0].owner);
        }
    }

    store_tests!(
        takeover_after_expiry_bumps_the_token,
        a_stale_holders_write_is_refused,
        replicas_racing_for_a_lease_get_exactly_one_owner,
    );
}
