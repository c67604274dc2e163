//! The event bus behind the events websocket (§6): every committed change of a node
//! cluster, a node or an action becomes one [`flotilla_api::Event`].
//!
//! Design decisions:
//! * One publishing point: the store owns the bus (it imports this module, never the
//!   reverse). A write builds its events ([`Pending`]) inside its transaction and the store
//!   publishes them right after the commit (with several replicas, also sends them to the
//!   others inside the transaction: `store::notify`). The API and the reconcilers both
//!   change state only through the store, so no code path can change an object without its
//!   event, and no event describes a change that was rolled back.
//! * A `tokio::sync::broadcast` channel: publishing never waits and never fails (no
//!   listener is fine). A listener that falls more than [`CAPACITY`] events behind loses the
//!   oldest ones (`Lagged`) and carries on, so one slow websocket never holds up an API call
//!   or a reconciler pass.
//! * Events are built whole here (event uuid4, ISO 8601 datetime, parents) and shared as
//!   `Arc`s, so N listeners cost one allocation per event, not N.
//! * Verbs follow Docker Cloud: `create` when an object first appears, `update` when its
//!   state (or labels) change, `delete` when it reaches `Terminated`.

use std::sync::Arc;

use flotilla_api::{self as api, date, uri};
use tokio::sync::broadcast;

/// Events a listener may fall behind by before it starts losing the oldest.
pub const CAPACITY: usize = 1024;

/// What kind of object changed (the event's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NodeCluster,
    Node,
    Action,
    Swarm,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NodeCluster => "nodecluster",
            Kind::Node => "node",
            Kind::Action => "action",
            Kind::Swarm => "swarm",
        }
    }
}

/// What happened to it (the event's `action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Create,
    Update,
    Delete,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
        }
    }

    /// `delete` for an object that just reached `Terminated`, else `update`.
    pub fn for_state(state: &str) -> Verb {
        if state == "Terminated" {
            Verb::Delete
        } else {
            Verb::Update
        }
    }
}

/// The `type` of the marker a bus carries when events of other replicas may have been
/// lost (the database listener reconnected, in the server's replicas module): the events stream
/// turns it into a `missed` frame, so its client resyncs.
pub const MISSED_KIND: &str = "missed";

/// The publishing side, shared by every clone of the store.
#[derive(Debug, Clone)]
pub struct EventBus {
    /// Every event this replica's listeners see: its own and other replicas'.
    sender: broadcast::Sender<Arc<api::Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl EventBus {
    pub fn new() -> EventBus {
        let (sender, _) = broadcast::channel(CAPACITY);
        EventBus { sender }
    }

    /// A new listener; it sees every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<api::Event>> {
        self.sender.subscribe()
    }

    /// Publishes events: a committed transaction's ([`Pending`]) or another replica's.
    /// Never blocks; with no listener they are simply dropped.
    pub fn publish_all(&self, events: impl IntoIterator<Item = api::Event>) {
        for event in events {
            let _ = self.sender.send(Arc::new(event));
        }
    }

    /// Tells every listener that events of other replicas may have been lost
    /// ([`MISSED_KIND`]).
    pub fn publish_missed(&self) {
        let _ = self.sender.send(Arc::new(api::Event {
            kind: MISSED_KIND.to_owned(),
            action: "update".to_owned(),
            datetime: date::format_iso_unix(date::now_unix()),
            parents: Vec::new(),
            resource_uri: String::new(),
            state: String::new(),
            uuid: uuid::Uuid::new_v4().to_string(),
        }));
    }
}

/// The events of one transaction, built before it commits: the store hands them to the
/// other replicas inside the transaction (PostgreSQL delivers a `NOTIFY` exactly when its
/// transaction commits, so an event is shared if and only if its change committed, even if
/// the replica dies right after) and publishes them on its own bus after the commit.
#[derive(Debug, Default)]
pub struct Pending(Vec<api::Event>);

impl IntoIterator for Pending {
    type Item = api::Event;
    type IntoIter = std::vec::IntoIter<api::Event>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl Pending {
    pub fn events(&self) -> &[api::Event] {
        &self.0
    }

    fn push(
        &mut self,
        kind: Kind,
        verb: Verb,
        resource_uri: String,
        state: &str,
        parents: Vec<String>,
    ) {
        self.0.push(api::Event {
            kind: kind.as_str().to_owned(),
            action: verb.as_str().to_owned(),
            datetime: date::format_iso_unix(date::now_unix()),
            parents,
            resource_uri,
            state: state.to_owned(),
            uuid: uuid::Uuid::new_v4().to_string(),
        });
    }

    pub fn cluster(&mut self, verb: Verb, uuid: &str, state: &str) {
        self.push(
            Kind::NodeCluster,
            verb,
            uri::node_cluster(uuid),
            state,
            Vec::new(),
        );
    }

    pub fn swarm(&mut self, verb: Verb, uuid: &str, state: &str) {
        self.push(Kind::Swarm, verb, uri::swarm(uuid), state, Vec::new());
    }

    /// A node's change; `cluster_uuid` is `None` for a bring-your-own node.
    pub fn node(&mut self, verb: Verb, uuid: &str, cluster_uuid: Option<&str>, state: &str) {
        self.push(
            Kind::Node,
            verb,
            uri::node(uuid),
            state,
            cluster_uuid.map(uri::node_cluster).into_iter().collect(),
        );
    }

    pub fn action(&mut self, verb: Verb, uuid: &str, object_uri: &str, state: &str) {
        self.push(
            Kind::Action,
            verb,
            uri::action(uuid),
            state,
            vec![object_uri.to_owned()],
        );
    }
}

/// The events websocket's query filters: `type`, `object`, and `parent` or `parents`
/// (comma-separated, as the Go SDK sends). Each may repeat; an event passes when it matches
/// every filter given (any value of it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub types: Vec<String>,
    pub objects: Vec<String>,
    pub parents: Vec<String>,
}

/// A URI given in a filter matches with or without its trailing slash, or by its last
/// segment (an object's uuid).
fn uri_matches(uri: &str, wanted: &str) -> bool {
    let uri = uri.trim_end_matches('/');
    let wanted = wanted.trim_end_matches('/');
    !wanted.is_empty() && (uri == wanted || uri.rsplit('/').next() == Some(wanted))
}

impl Filter {
    pub fn from_query(query: &str) -> Filter {
        let mut filter = Filter::default();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let values = value
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned);
            match name.as_ref() {
                "type" => filter.types.extend(values),
                "object" => filter.objects.extend(values),
                "parent" | "parents" => filter.parents.extend(values),
                _ => {}
            }
        }
        filter
    }

    pub fn matches(&self, event: &api::Event) -> bool {
        (self.types.is_empty() || self.types.contains(&event.kind))
            && (self.objects.is_empty()
                || self
                    .objects
                    .iter()
                    .any(|o| uri_matches(&event.resource_uri, o)))
            && (self.parents.is_empty()
                || self
                    .parents
                    .iter()
                    .any(|p| event.parents.iter().any(|e| uri_matches(e, p))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "5516c8b6-3d4b-4a52-9a1e-0f8f2d7b9c10";
    const NODE: &str = "7a1e0f8f-3d4b-4a52-9a1e-5516c8b62d7b";

    #[tokio::test]
    async fn events_carry_the_documented_fields_and_parents() {
        let bus = EventBus::new();
        let mut listener = bus.subscribe();
        let mut pending = Pending::default();
        pending.node(Verb::Update, NODE, Some(CLUSTER), "Deployed");
        bus.publish_all(pending);
        let event = listener.recv().await.expect("event");
        let json = serde_json::to_value(event.as_ref()).expect("json");
        assert_eq!(json["type"], "node");
        assert_eq!(json["action"], "update");
        assert_eq!(json["state"], "Deployed");
        assert_eq!(json["resource_uri"], uri::node(NODE));
        assert_eq!(
            json["parents"],
            serde_json::json!([uri::node_cluster(CLUSTER)])
        );
        assert!(uri::is_uuid4(json["uuid"].as_str().expect("uuid")));
        let datetime = json["datetime"].as_str().expect("datetime");
        assert_eq!(datetime.len(), 20, "{datetime}");
        assert!(datetime.ends_with('Z') && datetime.as_bytes()[10] == b'T');
        let keys: Vec<&String> = json.as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), 7, "{keys:?}");
    }

    #[tokio::test]
    async fn a_lagging_listener_skips_and_publishers_never_wait() {
        let bus = EventBus::new();
        let mut slow = bus.subscribe();
        for _ in 0..CAPACITY + 10 {
            let mut pending = Pending::default();
            pending.cluster(Verb::Update, CLUSTER, "Scaling");
            bus.publish_all(pending);
        }
        assert!(matches!(
            slow.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
        assert!(slow.recv().await.is_ok(), "then it carries on");
    }

    #[test]
    fn filters_match_type_object_and_parents() {
        let bus = EventBus::new();
        let mut listener = bus.subscribe();
        let mut pending = Pending::default();
        pending.node(Verb::Create, NODE, Some(CLUSTER), "Deploying");
        bus.publish_all(pending);
        let event = listener.try_recv().expect("event");
        assert!(Filter::from_query("").matches(&event));
        assert!(Filter::from_query("type=node").matches(&event));
        assert!(Filter::from_query("type=action&type=node").matches(&event));
        assert!(!Filter::from_query("type=nodecluster").matches(&event));
        assert!(Filter::from_query(&format!("object={NODE}")).matches(&event));
        assert!(Filter::from_query(&format!("object={}", uri::node(NODE))).matches(&event));
        assert!(!Filter::from_query(&format!("object={CLUSTER}")).matches(&event));
        assert!(Filter::from_query(&format!("parent={CLUSTER}")).matches(&event));
        assert!(
            Filter::from_query(&format!("parents=x,{}", uri::node_cluster(CLUSTER)))
                .matches(&event)
        );
        assert!(!Filter::from_query("parents=x,y").matches(&event));
        assert!(!Filter::from_query(&format!("type=node&parent={NODE}")).matches(&event));
    }
}
