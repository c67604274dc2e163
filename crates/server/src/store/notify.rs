//! PostgreSQL notifications (LISTEN/NOTIFY) for sharing events among replicas (the
//! server's `replicas` module decides what is sent and what a notification means).
//!
//! Design decisions:
//! * Dedicated connections, outside the store's pools: a listening connection cannot be
//!   shared, and notifications must not queue behind the single writer.
//! * A lost listening connection is reported (`Ok(None)`) rather than hidden: whatever was
//!   sent while it was down is gone, and the caller tells its listeners to resync.

use sqlx::Connection as _;

use super::StoreError;

/// Sends notifications on its own connection, reopened after a failure.
#[derive(Debug)]
pub struct Notifier {
    url: String,
    connection: Option<sqlx::PgConnection>,
}

impl Notifier {
    pub fn new(url: impl Into<String>) -> Notifier {
        Notifier {
            url: url.into(),
            connection: None,
        }
    }

    /// `pg_notify(channel, payload)`; one more try on a fresh connection if the open one
    /// failed.
    pub async fn notify(&mut self, channel: &str, payload: &str) -> Result<(), StoreError> {
        let mut last = None;
        for _ in 0..2 {
            let connection = match self.connection.as_mut() {
                Some(open) => open,
                None => self
                    .connection
                    .insert(sqlx::PgConnection::connect(&self.url).await?),
            };
            match sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(payload)
                .execute(&mut *connection)
                .await
            {
                Ok(_) => return Ok(()),
                Err(error) => {
                    self.connection = None;
                    last = Some(error);
                }
            }
        }
        Err(last.map_or_else(
            || StoreError::Database(sqlx::Error::PoolClosed),
            StoreError::Database,
        ))
    }
}

/// Receives the notifications of one channel.
pub struct NotificationListener {
    listener: sqlx::postgres::PgListener,
}

impl std::fmt::Debug for NotificationListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationListener")
            .finish_non_exhaustive()
    }
}

impl NotificationListener {
    pub async fn connect(url: &str, channel: &str) -> Result<NotificationListener, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(channel).await?;
        Ok(NotificationListener { listener })
    }

    /// The next notification's payload; `Ok(None)` when the connection was lost (the next
    /// call reconnects; notifications sent meanwhile are lost).
    pub async fn recv(&mut self) -> Result<Option<String>, StoreError> {
        Ok(self
            .listener
            .try_recv()
            .await?
            .map(|notification| notification.payload().to_owned()))
    }
}
