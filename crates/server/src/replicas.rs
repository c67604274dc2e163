//! Replicas sharing a PostgreSQL database see each other's events: every replica's events
//! and action-log streams, its DNS zone and its health verdicts follow the whole
//! installation, not only the changes that happened to be made on it.
//!
//! Design decisions:
//! * PostgreSQL's LISTEN/NOTIFY on one channel ([`CHANNEL`]), no new infrastructure: a
//!   replica sends each of its own events (`EventBus::subscribe_local`, so an event
//!   received from another replica is never sent back) as a notification with its replica
//!   id, and publishes every other replica's into its own bus (`EventBus::publish_remote`),
//!   where the events websocket, the DNS zone and the health verdicts already listen.
//!   The store's pools cannot LISTEN, so both directions use dedicated connections
//!   (`store::notify`), outside the store's writer queue.
//! * Nothing is lost silently. A notification is sent after the change committed (the
//!   store publishes after commit), so a replica killed in between loses that event for the
//!   others; and a listener whose connection dropped misses what was sent meanwhile. Both
//!   become a `missed` marker on the receiving replicas' buses
//!   ([`crate::events::MISSED_KIND`]): the events stream sends its client a `missed` frame
//!   to resync, exactly as for a listener that fell behind. (The sender's side: when this
//!   replica's forwarder falls behind its own bus, it sends a `missed` notification.)
//! * A remote change of a cluster (or of one of its nodes) nudges this replica's reconciler
//!   for that cluster: if this replica holds the cluster's lease, a scale accepted by
//!   another replica or an agent registering there starts a pass at once instead of at the
//!   next poll; if not, the nudge only makes sure a task stands ready to take over.
//! * Action logs need nothing here: the log stream reads the action from the database.

use std::time::Duration;

use flotilla_api::{self as api, uri};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::events::EventBus;
use crate::reconcile::Reconciler;
use crate::store::notify::{NotificationListener, Notifier};

/// The notification channel.
pub const CHANNEL: &str = "flotilla_events";

/// One notification: an event, or a `missed` marker, and the replica that sent it.
#[derive(Debug, Serialize, Deserialize)]
struct Notice {
    replica: String,
    /// `None`: the sender lost events of its own (its forwarder fell behind).
    event: Option<api::Event>,
}

/// Shares this replica's events with the others and publishes theirs, until `stop`.
pub async fn share_events(
    url: String,
    bus: EventBus,
    reconciler: Reconciler,
    replica: String,
    stop: watch::Receiver<bool>,
) {
    let send = forward_own_events(&url, &bus, &replica, stop.clone());
    let receive = receive_others(&url, &bus, &reconciler, &replica, stop);
    tokio::join!(send, receive);
}

fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

async fn forward_own_events(
    url: &str,
    bus: &EventBus,
    replica: &str,
    mut stop: watch::Receiver<bool>,
) {
    let mut own = bus.subscribe_local();
    let mut notifier = Notifier::new(url);
    loop {
        let notice = tokio::select! {
            received = own.recv() => match received {
                Ok(event) => Notice { replica: replica.to_owned(), event: Some((*event).clone()) },
                Err(broadcast::error::RecvError::Lagged(count)) => {
                    tracing::warn!(count, "events not shared with the other replicas: telling them");
                    Notice { replica: replica.to_owned(), event: None }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = stop.changed() => return,
        };
        let Ok(payload) = serde_json::to_string(&notice) else {
            continue;
        };
        if let Err(error) = notifier.notify(CHANNEL, &payload).await {
            tracing::warn!(%error, "cannot share an event with the other replicas");
        }
        if stopped(&stop) {
            return;
        }
    }
}

async fn receive_others(
    url: &str,
    bus: &EventBus,
    reconciler: &Reconciler,
    replica: &str,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mut listener = match NotificationListener::connect(url, CHANNEL).await {
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
                    Ok(Notice {
                        event: Some(event), ..
                    }) => {
                        nudge_for(reconciler, &event);
                        bus.publish_remote(event);
                    }
                    Ok(Notice { event: None, .. }) => bus.publish_missed(),
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
