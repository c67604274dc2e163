//! The failed-login throttle's counters (migration 0015, table `login_throttle`), shared by
//! every replica; what they mean and when they are written is the `login` module's.
//!
//! Design decisions:
//! * One row per (kind, subject): kinds `pair`, `client`, `user` count failures, kind
//!   `trust` records a client's last successful sign-in as a user. The subjects arrive
//!   hashed or encoded (by the `login` module); the store never sees a username.
//! * A check is one read of at most four rows by primary key ([`Store::throttle_rows`]).
//! * A failure is counted by one upsert per counter that increments in SQL (`failures + 1`,
//!   or 1 when the last failure is older than the window) and returns the new count, so
//!   replicas failing at once never lose a count (the upsert locks the row on PostgreSQL;
//!   SQLite has one writer); the block that count earns is computed by the caller and set
//!   in the same transaction.
//! * Bounded: before a subject is added to a kind holding `max` rows, the kind's rows idle
//!   for longer than it remembers go, then the longest idle.

use super::{Store, StoreError};

/// One counter (or trust) row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ThrottleRow {
    pub kind: String,
    pub subject: String,
    pub failures: i64,
    /// Unix milliseconds of the last failure (of the last success, for `trust`).
    pub last_ms: i64,
    pub blocked_until_ms: Option<i64>,
}

/// A failure to count on one counter.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    pub kind: &'a str,
    pub subject: &'a str,
    /// The check found no row for it: room is made first (see the module docs).
    pub new: bool,
}

/// How the counters forget and how many rows a kind holds.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Failures older than this (ms) are forgotten.
    pub window_ms: i64,
    /// Trust older than this (ms) is worth nothing.
    pub trust_ms: i64,
    /// Rows per kind.
    pub max: i64,
}

/// Deletes what `kind` no longer needs when it holds `max` rows or more: its rows idle for
/// longer than `keep_ms`, then the longest idle, until one more fits.
async fn make_room_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: &str,
    now_ms: i64,
    keep_ms: i64,
    max: i64,
) -> Result<(), StoreError> {
    let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM login_throttle WHERE kind = $1")
        .bind(kind)
        .fetch_one(&mut **tx)
        .await?;
    if held < max {
        return Ok(());
    }
    sqlx::query("DELETE FROM login_throttle WHERE kind = $1 AND last_ms < $2")
        .bind(kind)
        .bind(now_ms.saturating_sub(keep_ms))
        .execute(&mut **tx)
        .await?;
    let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM login_throttle WHERE kind = $1")
        .bind(kind)
        .fetch_one(&mut **tx)
        .await?;
    if held >= max {
        sqlx::query(
            "DELETE FROM login_throttle WHERE kind = $1 AND subject IN (SELECT subject FROM login_throttle WHERE kind = $1 ORDER BY last_ms, subject LIMIT $2)",
        )
        .bind(kind)
        .bind(held - max.max(1) + 1)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Store {
    /// The rows of these four (kind, subject) keys that exist: one read, by primary key.
    pub async fn throttle_rows(
        &self,
        keys: [(&str, &str); 4],
    ) -> Result<Vec<ThrottleRow>, StoreError> {
        let [a, b, c, d] = keys;
        Ok(sqlx::query_as::<_, ThrottleRow>(
            "SELECT kind, subject, failures, last_ms, blocked_until_ms FROM login_throttle WHERE (kind = $1 AND subject = $2) OR (kind = $3 AND subject = $4) OR (kind = $5 AND subject = $6) OR (kind = $7 AND subject = $8)",
        )
        .bind(a.0)
        .bind(a.1)
        .bind(b.0)
        .bind(b.1)
        .bind(c.0)
        .bind(c.1)
        .bind(d.0)
        .bind(d.1)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Counts one failure at `now_ms` on each of `failures`, in one transaction; `block`
    /// turns a kind's new count into the end of its block (or none).
    pub async fn count_login_failures(
        &self,
        failures: &[Failure<'_>],
        now_ms: i64,
        retention: Retention,
        block: impl Fn(&str, i64) -> Option<i64>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        for failure in failures {
            if failure.new {
                make_room_in(
                    &mut tx,
                    failure.kind,
                    now_ms,
                    retention.window_ms,
                    retention.max,
                )
                .await?;
            }
            let count: i64 = sqlx::query_scalar(
                "INSERT INTO login_throttle (kind, subject, failures, last_ms, blocked_until_ms) VALUES ($1, $2, 1, $3, NULL) \
                 ON CONFLICT (kind, subject) DO UPDATE SET \
                 failures = CASE WHEN $3 - login_throttle.last_ms > $4 THEN 1 ELSE login_throttle.failures + 1 END, \
                 last_ms = $3 \
                 RETURNING failures",
            )
            .bind(failure.kind)
            .bind(failure.subject)
            .bind(now_ms)
            .bind(retention.window_ms)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE login_throttle SET blocked_until_ms = $3 WHERE kind = $1 AND subject = $2",
            )
            .bind(failure.kind)
            .bind(failure.subject)
            .bind(block(failure.kind, count))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A successful sign-in's writes, in one transaction: forgets the `pair` counter
    /// `forget` and records trust `trust` (its subject, and whether the check found no row
    /// for it) at `now_ms`.
    pub async fn record_login_success(
        &self,
        forget: Option<&str>,
        trust: Option<(&str, bool)>,
        now_ms: i64,
        retention: Retention,
    ) -> Result<(), StoreError> {
        if forget.is_none() && trust.is_none() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        if let Some(pair) = forget {
            sqlx::query("DELETE FROM login_throttle WHERE kind = 'pair' AND subject = $1")
                .bind(pair)
                .execute(&mut *tx)
                .await?;
        }
        if let Some((subject, new)) = trust {
            if new {
                make_room_in(&mut tx, "trust", now_ms, retention.trust_ms, retention.max).await?;
            }
            sqlx::query(
                "INSERT INTO login_throttle (kind, subject, failures, last_ms, blocked_until_ms) VALUES ('trust', $1, 0, $2, NULL) \
                 ON CONFLICT (kind, subject) DO UPDATE SET last_ms = $2",
            )
            .bind(subject)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Rows held by the throttle, for tests of its bound.
    pub async fn throttle_rows_held(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM login_throttle")
            .fetch_one(&self.pool)
            .await?)
    }
}
