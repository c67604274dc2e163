//! PostgreSQL notifications (LISTEN/NOTIFY) for sharing events among replicas (the
//! server's `replicas` module decides what a notification received means).
//!
//! Design decisions:
//! * A write's events are sent inside its own transaction ([`send_in`], called by the
//!   store's commit): PostgreSQL delivers a notification when, and only when, its
//!   transaction commits, so every committed change reaches the other replicas' listeners
//!   even if this replica dies right after the commit, and a rolled-back one never does.
//!   One notification ([`Notice`]) carries a transaction's events, split to stay under
//!   PostgreSQL's 8000-byte payload limit.
//! * The listener has a dedicated connection, outside the store's pools: a listening
//!   connection cannot be shared.
//! * A lost listening connection is reported (`Ok(None)`) rather than hidden: whatever was
//!   sent while it was down is gone, and the caller tells its listeners to resync.

use flotilla_api as api;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// The notification channel replicas share their events on.
pub const CHANNEL: &str = "flotilla_events";

/// A payload stays under this many bytes (PostgreSQL refuses 8000 and more).
const PAYLOAD_LIMIT: usize = 7000;

/// One notification: events of one transaction and the replica that made them.
#[derive(Debug, Serialize, Deserialize)]
pub struct Notice {
    pub replica: String,
    pub events: Vec<api::Event>,
}

/// `events` as notification payloads of at most [`PAYLOAD_LIMIT`] bytes each (an event
/// alone is always sent, whatever its size).
pub fn payloads(replica: &str, events: &[api::Event]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut notice = Notice {
        replica: replica.to_owned(),
        events: Vec::new(),
    };
    let mut size = 0;
    for event in events {
        let event_size = serde_json::to_string(event).map_or(0, |e| e.len()) + 1;
        if !notice.events.is_empty() && size + event_size > PAYLOAD_LIMIT {
            payloads.extend(serde_json::to_string(&notice).ok());
            notice.events.clear();
            size = 0;
        }
        size += event_size;
        notice.events.push(event.clone());
    }
    if !notice.events.is_empty() {
        payloads.extend(serde_json::to_string(&notice).ok());
    }
    payloads
}

/// Sends `events` as `replica`'s inside `tx`: delivered when `tx` commits.
pub(super) async fn send_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    replica: &str,
    events: &[api::Event],
) -> Result<(), StoreError> {
    for payload in payloads(replica, events) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    async fn next(listener: &mut NotificationListener) -> String {
        tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("a notification within 10 s")
            .expect("received")
            .expect("connected")
    }

    use flotilla_core::state::ClusterState;

    use super::*;
    use crate::store::Transition;
    use crate::store::testing::{self, Backend};

    fn event(n: usize) -> api::Event {
        api::Event {
            kind: "node".into(),
            action: "update".into(),
            datetime: "2026-12-07T00:00:00Z".into(),
            parents: vec![format!("/api/infra/v1/nodecluster/{n:0>36}/")],
            resource_uri: format!("/api/infra/v1/node/{n:0>36}/"),
            state: "Deployed".into(),
            uuid: format!("{n:0>36}"),
        }
    }

    #[test]
    fn a_big_transaction_is_split_under_the_payload_limit_and_loses_nothing() {
        let events: Vec<api::Event> = (0..200).map(event).collect();
        let sent = payloads("replica-a", &events);
        assert!(sent.len() > 1, "200 events do not fit one payload");
        let mut back = Vec::new();
        for payload in &sent {
            assert!(payload.len() < 8000, "{} bytes", payload.len());
            let notice: Notice = serde_json::from_str(payload).expect("a notice");
            assert_eq!(notice.replica, "replica-a");
            back.extend(notice.events);
        }
        let uuids = |e: &[api::Event]| e.iter().map(|e| e.uuid.clone()).collect::<Vec<_>>();
        assert_eq!(uuids(&back), uuids(&events), "all of them, in order");
        assert!(payloads("replica-a", &[]).is_empty());
    }

    /// The events of a write reach a listener because its transaction committed; a write
    /// that changed nothing (a compare-and-set that lost) sends none.
    #[tokio::test]
    async fn a_writes_events_are_sent_with_its_commit_and_only_then() {
        let store = testing::store(Backend::Postgres).await;
        store.share_events_as("a");
        let mut listener = NotificationListener::connect(&store.location, CHANNEL)
            .await
            .expect("listen");
        let cluster = testing::cluster(ClusterState::Init);
        store
            .insert_cluster(&cluster, &testing::action("a1", "/c1"), "default")
            .await
            .expect("insert");
        let notice: Notice = serde_json::from_str(&next(&mut listener).await).expect("notice");
        assert_eq!(notice.replica, "a");
        let kinds: Vec<&str> = notice.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["nodecluster", "action"],
            "one notice per transaction"
        );

        // Lost compare-and-set (the cluster is not Deployed): rolled back, nothing sent.
        let lost = Transition::new(ClusterState::Deployed, ClusterState::Terminating);
        let moved = store
            .transition_cluster("c1", &lost, None, None)
            .await
            .expect("transition");
        assert!(!moved);
        let won = Transition::new(ClusterState::Init, ClusterState::Deploying);
        assert!(
            store
                .transition_cluster("c1", &won, None, None)
                .await
                .expect("transition")
        );
        let notice: Notice = serde_json::from_str(&next(&mut listener).await).expect("notice");
        assert_eq!(
            notice
                .events
                .iter()
                .map(|e| e.state.as_str())
                .collect::<Vec<_>>(),
            ["Deploying"],
            "the next notice is the write that committed"
        );
    }
}
