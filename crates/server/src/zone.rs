//! Keeps the DNS zone ([`crate::dns`]) — and, when configured, a Route 53 mirror of it —
//! equal to the store.
//!
//! Design decisions:
//! * The zone is a pure function of the store ([`records_of`]): every node that is not
//!   `Terminated` and has a public IP gets `<uuid>.node.<domain>`; every cluster gets
//!   `<name>.cluster.<domain>` with the public IPs of its `Deployed` nodes. Rebuilding it
//!   whole, rather than patching it per event, means no event can be mis-applied and a
//!   restart needs no special case; [`crate::dns::DnsZone::replace`] computes the diff.
//! * It is rebuilt when the event bus reports a node or cluster change, after a short
//!   pause ([`DEBOUNCE`]) that folds a burst of changes (a 300-node deploy) into one
//!   rebuild, so records follow a change well within a second. One query reads every row
//!   the zone needs; at 10,000 nodes that is a few milliseconds.
//! * The mirror gets only the diff. It is behind a trait so the server crate never names an
//!   AWS type (`crates/aws` implements it with Route 53). A failed mirror call is retried by
//!   a full sync (list the mirror, make it equal) at the next rebuild or the next
//!   [`MIRROR_RESYNC`], so a lost change is never lost for good.
//! * With several replicas each keeps its own zone (every replica answers DNS; the events of
//!   the others reach its bus), and only the holder of the mirror's lease ([`MIRROR_WORK`])
//!   writes to Route 53, so two replicas never race on the mirror's diffs.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_core::state::NodeState;
use tokio::sync::{broadcast, watch};

use crate::dns::{DnsZone, RecordChange};

/// The Route 53 mirror's lease: one replica writes the mirror.
pub const MIRROR_WORK: &str = "dns-mirror";
use crate::store::{DnsRow, Store, StoreError};

/// Pause after a change before the zone is rebuilt.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the mirror is fully re-synchronised even without a failure.
pub const MIRROR_RESYNC: Duration = Duration::from_secs(600);

/// A boxed future, as trait objects return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A copy of the zone somewhere else (Route 53).
pub trait ZoneMirror: Send + Sync {
    /// Applies a diff.
    fn apply<'a>(&'a self, changes: &'a [RecordChange]) -> BoxFuture<'a, Result<(), String>>;
    /// Makes the mirror hold exactly `records`.
    fn sync<'a>(
        &'a self,
        records: &'a BTreeMap<String, Vec<Ipv4Addr>>,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The configured mirror, if any (a newtype so configs stay `Debug`).
#[derive(Clone)]
pub struct Mirror(pub Arc<dyn ZoneMirror>);

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Mirror")
    }
}

/// The zone's records for these store rows.
pub fn records_of(zone: &DnsZone, rows: &[DnsRow]) -> BTreeMap<String, Vec<Ipv4Addr>> {
    let mut records: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    for row in rows {
        let Some(ip) = row
            .public_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        if row.state == NodeState::Terminated.as_str() {
            continue;
        }
        records.insert(zone.node_fqdn(&row.node_uuid), vec![ip]);
        if let Some(cluster) = &row.cluster_name
            && row.state == NodeState::Deployed.as_str()
        {
            records
                .entry(zone.cluster_fqdn(cluster, row.cluster_org.as_deref()))
                .or_default()
                .push(ip);
        }
    }
    for ips in records.values_mut() {
        ips.sort();
        ips.dedup();
    }
    records
}

/// Rebuilds the zone from the store; returns the records and what changed.
pub async fn rebuild(
    store: &Store,
    zone: &DnsZone,
) -> Result<(BTreeMap<String, Vec<Ipv4Addr>>, Vec<RecordChange>), StoreError> {
    let rows = store.dns_rows().await?;
    let records = records_of(zone, &rows);
    let changes = zone.replace(records.clone());
    Ok((records, changes))
}

/// Keeps `zone` (and `mirror`) equal to the store until `stop` turns true.
pub async fn maintain(
    store: Store,
    zone: Arc<DnsZone>,
    mirror: Option<Mirror>,
    mut stop: watch::Receiver<bool>,
) {
    let mut events = store.events().subscribe();
    // The first round fully synchronises the mirror: it may hold records of a previous run.
    let mut mirror_stale = true;
    let mut last_full_sync = tokio::time::Instant::now();
    loop {
        match rebuild(&store, &zone).await {
            Ok((records, changes)) => {
                if !changes.is_empty() {
                    tracing::debug!(changes = changes.len(), "DNS zone updated");
                }
                if let Some(Mirror(mirror)) = &mirror {
                    if last_full_sync.elapsed() >= MIRROR_RESYNC {
                        mirror_stale = true;
                    }
                    let outcome = if mirror_stale {
                        last_full_sync = tokio::time::Instant::now();
                        mirror.sync(&records).await
                    } else if changes.is_empty() {
                        Ok(())
                    } else {
                        mirror.apply(&changes).await
                    };
                    mirror_stale = match outcome {
                        Ok(()) => false,
                        Err(error) => {
                            tracing::warn!(%error, "cannot update the DNS mirror; will resync");
                            true
                        }
                    };
                }
            }
            Err(error) => tracing::warn!(%error, "cannot rebuild the DNS zone"),
        }
        // Wait for a relevant change (or, with a stale mirror, a retry).
        let retry = if mirror_stale && mirror.is_some() {
            Duration::from_secs(5)
        } else {
            MIRROR_RESYNC
        };
        let woke = tokio::select! {
            woke = next_change(&mut events) => woke,
            () = tokio::time::sleep(retry) => true,
            changed = stop.changed() => changed.is_ok() && !*stop.borrow(),
        };
        if !woke {
            break;
        }
        tokio::time::sleep(DEBOUNCE).await;
        // Fold everything that arrived during the pause into this rebuild.
        while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = events.try_recv() {}
    }
}

/// Waits for a node or cluster event; false when the bus is closed.
async fn next_change(events: &mut broadcast::Receiver<Arc<flotilla_api::Event>>) -> bool {
    loop {
        match events.recv().await {
            Ok(event) if event.kind == "node" || event.kind == "nodecluster" => return true,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return true,
            Err(broadcast::error::RecvError::Closed) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(uuid: &str, ip: Option<&str>, state: NodeState, cluster: Option<&str>) -> DnsRow {
        DnsRow {
            node_uuid: uuid.into(),
            public_ip: ip.map(str::to_owned),
            state: state.as_str().into(),
            cluster_name: cluster.map(str::to_owned),
            cluster_org: None,
        }
    }

    #[test]
    fn nodes_get_their_ip_and_clusters_their_deployed_nodes_ips() {
        let zone = DnsZone::new("flotilla.internal").expect("zone");
        let rows = [
            row("a", Some("10.0.0.2"), NodeState::Deployed, Some("web")),
            row("b", Some("10.0.0.1"), NodeState::Deployed, Some("web")),
            row("c", Some("10.0.0.3"), NodeState::Unreachable, Some("web")),
            row("d", Some("10.0.0.4"), NodeState::Terminated, Some("web")),
            row("e", None, NodeState::Deployed, Some("web")),
            row("f", Some("10.0.0.6"), NodeState::Deployed, None),
            row("g", Some("not-an-ip"), NodeState::Deployed, None),
        ];
        let records = records_of(&zone, &rows);
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
        assert_eq!(
            records.get("web.cluster.flotilla.internal"),
            Some(&vec![ip("10.0.0.1"), ip("10.0.0.2")]),
            "only Deployed nodes, sorted"
        );
        assert_eq!(
            records.get("c.node.flotilla.internal"),
            Some(&vec![ip("10.0.0.3")]),
            "an Unreachable node keeps its own name"
        );
        assert!(!records.contains_key("d.node.flotilla.internal"));
        assert!(!records.contains_key("e.node.flotilla.internal"));
        assert!(records.contains_key("f.node.flotilla.internal"));
        assert!(!records.contains_key("g.node.flotilla.internal"));
        assert_eq!(records.len(), 5);
    }
}
