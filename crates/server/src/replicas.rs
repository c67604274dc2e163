//! Replicas sharing a PostgreSQL database see each other's events: every replica's events
//! and action-log streams, its DNS zone and its health verdicts follow the whole
//! installation, not only the changes that happened to be made on it.
//!
//! Design decisions:
//! * PostgreSQL's LISTEN/NOTIFY on one channel (`store::notify::CHANNEL`), no new
//!   infrastructure: every write sends its events inside its own transaction, with its
//!   replica's id (`Store::share_events_as`; a notification is delivered exactly when its
//!   transaction commits, so a replica killed right after a commit has still shared that
//!   commit's events), and each replica publishes every other replica's events into its own
//!   bus (`EventBus::publish_all`), where the events websocket, the DNS zone and the
//!   health verdicts already listen. The store's pools cannot LISTEN, so the listener has
//!   a dedicated connection (`store::notify`).
//! * Nothing is lost silently: a listener whose connection dropped misses what was sent
//!   meanwhile, so it puts a `missed` marker on this replica's bus
//!   ([`crate::events::MISSED_KIND`]): the events stream sends its client a `missed` frame
//!   to resync, exactly as for a listener that fell behind.
//! * A remote change of a cluster (or of one of its nodes) nudges this replica's reconciler
//!   for that cluster: if this replica holds the cluster's lease, a scale accepted by
//!   another replica or an agent registering there starts a pass at once instead of at the
//!   next poll; if not, the nudge only makes sure a task stands ready to take over.
//! * Action logs need nothing here: the log stream reads the action from the database.

use std::time::Duration;

use flotilla_api::{self as api, uri};
use tokio::sync::watch;

use crate::events::EventBus;
use crate::reconcile::Reconciler;
use crate::store::notify::{self, Notice, NotificationListener};

/// Publishes the other replicas' events on `bus`, until `stop`.
pub async fn share_events(
    url: String,
    bus: EventBus,
    reconciler: Reconciler,
    replica: String,
    mut stop: watch::Receiver<bool>,
) {
    let (url, bus, reconciler, replica) = (url.as_str(), &bus, &reconciler, replica.as_str());
    loop {
        let mut listener = match NotificationListener::connect(url, notify::CHANNEL).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot listen to the other replicas' events");
                bus.publish_missed();
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        loop {
            let received = tokio::select! {
                received = listener.recv() => received,
                _ = stop.changed() => return,
            };
            match received {
                Ok(Some(payload)) => match serde_json::from_str::<Notice>(&payload) {
                    Ok(notice) if notice.replica == replica => {}
                    Ok(notice) => {
                        for event in &notice.events {
                            nudge_for(reconciler, event);
                        }
                        bus.publish_all(notice.events);
                    }
                    Err(error) => tracing::warn!(%error, "an unreadable event notification"),
                },
                // The connection was lost (and is reopened by the next call): whatever was
                // sent meanwhile is gone.
                Ok(None) => {
                    tracing::warn!("the events listener reconnects; listeners are told to resync");
                    bus.publish_missed();
                }
                Err(error) => {
                    tracing::warn!(%error, "the events listener failed; reconnecting");
                    bus.publish_missed();
                    break;
                }
            }
        }
    }
}

/// The cluster a remote event is about, nudged (see the module docs).
fn nudge_for(reconciler: &Reconciler, event: &api::Event) {
    let uris = std::iter::once(&event.resource_uri).chain(&event.parents);
    for resource in uris.filter_map(|u| uri::Resource::parse(u)) {
        if let uri::Resource::NodeCluster { uuid } = resource {
            reconciler.nudge(&uuid);
        }
    }
}
