//! The built-in authoritative DNS server: `<node-uuid>.node.<domain>` → the node's public IP,
//! `<cluster-label>.cluster.<domain>` → the public IPs of the cluster's deployed nodes.
//!
//! The server computes the records from the store and hands the whole set to
//! [`DnsZone::replace`] on every node change; [`serve`] answers queries from it on UDP and TCP.
//!
//! Design decisions:
//! * Only `hickory-proto` (the wire format: parsing, name compression, EDNS), not
//!   `hickory-server`. The zone is one hash map that we answer from directly, so the server's
//!   catalog, authority traits, zone files and journals would be dead weight; the UDP loop and
//!   the TCP length-prefix framing are a few dozen lines here, and owning them lets us bound
//!   the memory (one receive buffer for UDP, a capped number of TCP connections with an idle
//!   timeout). Tests query it with hickory's own client (`hickory-net`, dev-only).
//! * The records are an immutable snapshot (`Arc<HashMap>`) swapped whole by [`DnsZone::replace`]:
//!   a query takes a read lock only long enough to clone the `Arc`, so queries never wait for
//!   a replacement being computed and see either the old or the new zone, never a mix. A
//!   replacement is visible to the very next query, which is how records follow IP and state
//!   changes "within one second".
//! * Lookups are one hash probe on the lowercased name (DNS names are case-insensitive), so
//!   10,000+ records cost nothing per query. Keys are `Box<str>` and values `Box<[Ipv4Addr]>`
//!   (no spare capacity), about 100 bytes per record.
//! * [`DnsZone::replace`] returns the difference with the previous snapshot, so the optional
//!   Route 53 mirror (`flotilla_aws::route53`) only sends what changed. A deletion carries the
//!   IPs the record had, because Route 53 deletes a record set only by its exact values.
//! * TTL is 5 s ([`TTL`]) and the negative-caching TTL (SOA minimum) too: IPs change when
//!   instances stop and start, and resolvers must not hold on to old answers.
//! * Answers follow RFC 1034/2308: AA set for everything in the zone; an unknown name is
//!   NXDOMAIN, a known name without records of the asked type is NODATA (NOERROR, no answer),
//!   both with the SOA in the authority section; `node.<domain>` and `cluster.<domain>` always
//!   exist (they are the parents of every record); names outside the zone are REFUSED (we are
//!   not a resolver). A cluster record lists every IP, sorted. Responses larger than the
//!   client's UDP payload size are truncated (TC) so the client retries over TCP.
//! * A name with no IPs is not kept: a cluster with no deployed node is NXDOMAIN, and a
//!   terminated node disappears as soon as the server stops listing it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Where the DNS server listens unless configured otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8053";
/// The zone served unless configured otherwise.
pub const DEFAULT_DOMAIN: &str = "flotilla.internal";
/// TTL of every answer, and the negative-caching TTL.
pub const TTL: u32 = 5;

/// The largest UDP payload we advertise over EDNS (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;
/// The longest domain: `<63-char label>.cluster.<domain>` must stay within 253 characters.
const MAX_DOMAIN_LEN: usize = 253 - 63 - ".cluster.".len();
/// TCP connections served at once; further ones are closed right away.
const MAX_TCP_CONNECTIONS: usize = 256;
/// A TCP connection with no complete query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// A zone that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("'{domain}' is not a valid DNS domain: {reason}")]
    InvalidDomain { domain: String, reason: String },
}

/// What [`DnsZone::replace`] changed about one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The name is new or its IPs changed; `ips` are the new IPs.
    Upsert,
    /// The name is gone; `ips` are the IPs it had.
    Delete,
}

/// One changed name, lowercase and without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordChange {
    pub name: String,
    /// Sorted, without duplicates.
    pub ips: Vec<Ipv4Addr>,
    pub kind: ChangeKind,
}

/// One immutable version of the records.
#[derive(Debug)]
struct Snapshot {
    records: HashMap<Box<str>, Box<[Ipv4Addr]>>,
    /// The SOA serial; moves on with every replacement that changes something.
    serial: u32,
}

/// The records of the zone. `Send + Sync`; share it behind an `Arc`.
pub struct DnsZone {
    /// Lowercase, without the trailing dot.
    domain: String,
    /// `.<domain>`, to check that a record belongs to the zone.
    dot_domain: String,
    /// `node.<domain>` and `cluster.<domain>`: names that exist without records.
    node_parent: String,
    cluster_parent: String,
    /// The apex as a name, for the SOA and NS records.
    origin: Name,
    /// The primary name server of the SOA and the NS record: `ns.<domain>`.
    name_server: Name,
    /// The SOA's responsible mailbox: `hostmaster.<domain>`.
    hostmaster: Name,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Serialises replacements, so each diff is against the snapshot it replaces.
    writer: Mutex<()>,
}

impl std::fmt::Debug for DnsZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snapshot = self.snapshot();
        f.debug_struct("DnsZone")
            .field("domain", &self.domain)
            .field("records", &snapshot.records.len())
            .field("serial", &snapshot.serial)
            .finish()
    }
}

/// A cluster name as one DNS label: lowercase `[a-z0-9-]`, no leading or trailing `-`, 1 to
/// 63 characters. Other characters become `-` (runs of them one `-`). A name that is empty
/// after that, or longer than 63, gets a hash of the original name (so distinct names stay
/// distinct): `x-<hash>`, or the first 54 characters, `-` and 8 hex digits.
pub fn dns_label(name: &str) -> String {
    let mut label = String::with_capacity(name.len());
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            label.push(c);
        } else if !label.ends_with('-') {
            label.push('-');
        }
    }
    let trimmed = label.trim_matches('-');
    let hash = || hex::encode(&Sha256::digest(name.as_bytes())[..4]);
    if trimmed.is_empty() {
        format!("x-{}", hash())
    } else if trimmed.len() > 63 {
        // Only ASCII is left, so byte slicing is on character boundaries.
        format!("{}-{}", trimmed[..54].trim_end_matches('-'), hash())
    } else {
        trimmed.to_owned()
    }
}

/// Whether `label` is a hostname label: 1 to 63 of `[a-z0-9-_]`, not starting or ending with `-`.
fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// `fqdn` lowercased, without the trailing dot.
fn normalize(fqdn: &str) -> String {
    fqdn.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsZone {
    /// A zone for `domain` (e.g. `flotilla.internal`; case and a trailing dot do not matter),
    /// with no records yet.
    pub fn new(domain: &str) -> Result<DnsZone, DnsError> {
        let domain = normalize(domain);
        let invalid = |reason: &str| DnsError::InvalidDomain {
            domain: domain.clone(),
            reason: reason.to_owned(),
        };
        if domain.is_empty() {
            return Err(invalid("it is empty"));
        }
        if domain.len() > MAX_DOMAIN_LEN {
            return Err(invalid(&format!(
                "it is longer than {MAX_DOMAIN_LEN} characters"
            )));
        }
        if let Some(label) = domain.split('.').find(|label| !valid_label(label)) {
            return Err(invalid(&format!(
                "label '{label}' must be 1 to 63 letters, digits, '-' or '_', not starting or ending with '-'"
            )));
        }
        let name = |prefix: &str| {
            Name::from_ascii(format!("{prefix}{domain}."))
                .map_err(|e| invalid(&format!("not a DNS name ({e})")))
        };
        Ok(DnsZone {
            origin: name("")?,
            name_server: name("ns.")?,
            hostmaster: name("hostmaster.")?,
            dot_domain: format!(".{domain}"),
            node_parent: format!("node.{domain}"),
            cluster_parent: format!("cluster.{domain}"),
            snapshot: RwLock::new(Arc::new(Snapshot {
                records: HashMap::new(),
                serial: initial_serial(),
            })),
            writer: Mutex::new(()),
            domain,
        })
    }

    /// The zone's domain, lowercase, without the trailing dot.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// `<uuid>.node.<domain>`: a node's `external_fqdn`.
    pub fn node_fqdn(&self, node_uuid: &str) -> String {
        format!("{}.{}", node_uuid.to_ascii_lowercase(), self.node_parent)
    }

    /// `<label>.cluster.<domain>` for a cluster of the `default` organization, and
    /// `<label>.<org label>.cluster.<domain>` for another's (cluster names are unique per
    /// organization, so two organizations' `web` must not share a name), labels from
    /// [`dns_label`].
    pub fn cluster_fqdn(&self, cluster_name: &str, org: Option<&str>) -> String {
        match org.filter(|o| *o != crate::store::access::DEFAULT_ORG) {
            Some(org) => format!(
                "{}.{}.{}",
                dns_label(cluster_name),
                dns_label(org),
                self.cluster_parent
            ),
            None => format!("{}.{}", dns_label(cluster_name), self.cluster_parent),
        }
    }

    /// Number of names with records.
    pub fn len(&self) -> usize {
        self.snapshot().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The SOA serial (moves on with every replacement that changes something).
    pub fn serial(&self) -> u32 {
        self.snapshot().serial
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces every record at once (names are fully qualified, any case, with or without
    /// the trailing dot) and returns what changed, sorted by name. Names outside the zone or
    /// that are not hostnames are skipped with a warning; names with no IPs are left out.
    /// The next query sees the new records.
    pub fn replace(&self, records: BTreeMap<String, Vec<Ipv4Addr>>) -> Vec<RecordChange> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.snapshot();

        let mut merged: HashMap<String, Vec<Ipv4Addr>> = HashMap::with_capacity(records.len());
        for (name, ips) in records {
            let key = normalize(&name);
            if !self.may_hold_records(&key) {
                tracing::warn!(name, zone = %self.domain, "DNS record skipped: not a hostname below the zone");
                continue;
            }
            merged.entry(key).or_default().extend(ips);
        }
        let mut new: HashMap<Box<str>, Box<[Ipv4Addr]>> = HashMap::with_capacity(merged.len());
        for (key, mut ips) in merged {
            ips.sort_unstable();
            ips.dedup();
            if !ips.is_empty() {
                new.insert(key.into_boxed_str(), ips.into_boxed_slice());
            }
        }

        let mut changes: Vec<RecordChange> = new
            .iter()
            .filter(|(name, ips)| old.records.get(*name) != Some(*ips))
            .map(|(name, ips)| RecordChange {
                name: name.to_string(),
                ips: ips.to_vec(),
                kind: ChangeKind::Upsert,
            })
            .chain(
                old.records
                    .iter()
                    .filter(|(name, _)| !new.contains_key(*name))
                    .map(|(name, ips)| RecordChange {
                        name: name.to_string(),
                        ips: ips.to_vec(),
                        kind: ChangeKind::Delete,
                    }),
            )
            .collect();
        if changes.is_empty() {
            return changes;
        }
        changes.sort_by(|a, b| a.name.cmp(&b.name));
        let next = Arc::new(Snapshot {
            records: new,
            serial: old.serial.wrapping_add(1).max(1),
        });
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = next;
        changes
    }

    /// The IPs of a name (any case, with or without the trailing dot), sorted.
    pub fn lookup(&self, fqdn: &str) -> Option<Vec<Ipv4Addr>> {
        self.snapshot()
            .records
            .get(normalize(fqdn).as_str())
            .map(|ips| ips.to_vec())
    }

    /// A name strictly below the zone, made of hostname labels, other than the fixed parents.
    fn may_hold_records(&self, key: &str) -> bool {
        match key.strip_suffix(&self.dot_domain) {
            Some(prefix) => {
                key != self.node_parent
                    && key != self.cluster_parent
                    && key.len() <= 253
                    && prefix.split('.').all(valid_label)
            }
            None => false,
        }
    }

    fn soa_record(&self, serial: u32) -> Record {
        let soa = SOA::new(
            self.name_server.clone(),
            self.hostmaster.clone(),
            serial,
            60,
            30,
            3600,
            TTL,
        );
        Record::from_rdata(self.origin.clone(), TTL, RData::SOA(soa))
    }

    /// The answer to one parsed request (before any truncation).
    fn respond(&self, request: &Message) -> Message {
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        response.queries = request.queries.clone();
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            response.edns = Some(edns);
        }
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return response;
        }
        let [query] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response;
        };
        let qname = query.name();
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY)
            || !self.origin.zone_of(qname)
        {
            response.metadata.response_code = ResponseCode::Refused;
            return response;
        }
        response.metadata.authoritative = true;

        let snapshot = self.snapshot();
        let key = normalize(&qname.to_ascii());
        let qtype = query.query_type();
        if key == self.domain {
            if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                response.answers.push(self.soa_record(snapshot.serial));
            }
            if matches!(qtype, RecordType::NS | RecordType::ANY) {
                response.answers.push(Record::from_rdata(
                    self.origin.clone(),
                    TTL,
                    RData::NS(NS(self.name_server.clone())),
                ));
            }
        } else if key != self.node_parent && key != self.cluster_parent {
            match snapshot.records.get(key.as_str()) {
                None => response.metadata.response_code = ResponseCode::NXDomain,
                Some(ips) if matches!(qtype, RecordType::A | RecordType::ANY) => {
                    response.answers.extend(
                        ips.iter()
                            .map(|ip| Record::from_rdata(qname.clone(), TTL, RData::A(A(*ip)))),
                    );
                }
                Some(_) => {}
            }
        }
        if response.answers.is_empty() {
            response.authorities.push(self.soa_record(snapshot.serial));
        }
        response
    }

    /// The wire answer to one wire query, at most `limit` bytes (truncated with TC beyond
    /// that). `None` when nothing should be sent back: responses, and garbage without a
    /// readable header.
    fn answer_bytes(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let request = match Message::from_vec(query) {
            Ok(request) => request,
            Err(_) => {
                // A readable header that is a query gets FORMERR; anything else is dropped.
                let header: [u8; 12] = query.get(..12)?.try_into().ok()?;
                if header[2] & 0x80 != 0 {
                    return None;
                }
                let id = u16::from_be_bytes([header[0], header[1]]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let limit = if tcp {
            usize::from(u16::MAX)
        } else {
            request
                .edns
                .as_ref()
                .map_or(512, |edns| usize::from(edns.max_payload()))
                .clamp(512, usize::from(EDNS_PAYLOAD))
        };
        let response = self.respond(&request);
        match response.to_vec() {
            Ok(bytes) if bytes.len() <= limit => Some(bytes),
            Ok(_) => response.truncate().to_vec().ok(),
            Err(error) => {
                tracing::warn!(%error, "DNS answer could not be encoded");
                Message::error_msg(request.metadata.id, OpCode::Query, ResponseCode::ServFail)
                    .to_vec()
                    .ok()
            }
        }
    }
}

/// A serial that moves forward across restarts: the current Unix time.
fn initial_serial() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// Serves `zone` on the given UDP socket and TCP listener until `shutdown` resolves; then
/// closes every TCP connection and returns. Socket errors on single packets or connections
/// are logged and do not stop the server.
pub async fn serve(
    zone: Arc<DnsZone>,
    udp: UdpSocket,
    tcp: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut tasks = JoinSet::new();
    // Queries are small; 4 KiB holds any sane one, and longer datagrams are cut (→ FORMERR).
    let mut buffer = vec![0u8; 4096];
    tracing::info!(
        zone = %zone.domain,
        udp = %udp.local_addr()?,
        tcp = %tcp.local_addr()?,
        "DNS server listening"
    );
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            received = udp.recv_from(&mut buffer) => match received {
                Ok((len, peer)) => {
                    if let Some(answer) = zone.answer_bytes(&buffer[..len], false)
                        && let Err(error) = udp.send_to(&answer, peer).await
                    {
                        tracing::debug!(%error, %peer, "DNS answer over UDP not sent");
                    }
                }
                // E.g. an ICMP port unreachable from an earlier answer's peer.
                Err(error) => tracing::debug!(%error, "DNS UDP receive failed"),
            },
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => match connections.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let zone = zone.clone();
                        tasks.spawn(async move {
                            serve_tcp(&zone, stream, peer).await;
                            drop(permit);
                        });
                    }
                    Err(_) => tracing::debug!(%peer, "DNS TCP connection refused: too many"),
                },
                Err(error) => {
                    // Usually out of file descriptors: give connections time to close.
                    tracing::warn!(%error, "DNS TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
    Ok(())
}

/// One TCP connection: length-prefixed queries, answered in order, until the peer closes it
/// or stays idle for [`TCP_IDLE`].
async fn serve_tcp(zone: &DnsZone, mut stream: TcpStream, peer: SocketAddr) {
    let mut query = Vec::new();
    loop {
        let read = async {
            let len = usize::from(stream.read_u16().await?);
            query.resize(len, 0);
            stream.read_exact(&mut query).await?;
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(TCP_IDLE, read).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        let Some(answer) = zone.answer_bytes(&query, true) else {
            return;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&answer);
        if let Err(error) = stream.write_all(&framed).await {
            tracing::debug!(%error, %peer, "DNS answer over TCP not sent");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, last)
    }

    fn records(entries: &[(&str, &[u8])]) -> BTreeMap<String, Vec<Ipv4Addr>> {
        entries
            .iter()
            .map(|(name, ips)| ((*name).to_owned(), ips.iter().map(|i| ip(*i)).collect()))
            .collect()
    }

    #[test]
    fn labels_are_valid_dns_labels() {
        assert_eq!(dns_label("web"), "web");
        assert_eq!(dns_label("Web-Prod-1"), "web-prod-1");
        assert_eq!(dns_label("my cluster_name!"), "my-cluster-name");
        assert_eq!(dns_label("--a--b--"), "a-b");
        let empty = dns_label("");
        assert!(empty.starts_with("x-") && empty.len() == 10, "{empty}");
        assert_ne!(dns_label("!!!"), dns_label("???"));
        let long = "a".repeat(100);
        let label = dns_label(&long);
        assert_eq!(label.len(), 63, "{label}");
        assert_ne!(label, dns_label(&"a".repeat(101)));
        for name in [
            "",
            "é",
            "über-cluster",
            &long,
            "-x-",
            "a.b",
            &format!("{}-{}", "b".repeat(53), "c".repeat(20)),
        ] {
            let label = dns_label(name);
            assert!(
                valid_label(&label) && !label.contains('_'),
                "{name:?} → {label:?}"
            );
        }
    }

    #[test]
    fn domains_are_validated_and_lowercased() {
        let zone = DnsZone::new("Flotilla.Internal.").expect("valid");
        assert_eq!(zone.domain(), "flotilla.internal");
        assert_eq!(
            zone.node_fqdn("0F6C5E4A-0000-4000-8000-000000000001"),
            "0f6c5e4a-0000-4000-8000-000000000001.node.flotilla.internal"
        );
        assert_eq!(
            zone.cluster_fqdn("Web", None),
            "web.cluster.flotilla.internal"
        );
        assert_eq!(
            zone.cluster_fqdn("Web", Some("default")),
            "web.cluster.flotilla.internal"
        );
        assert_eq!(
            zone.cluster_fqdn("web", Some("red")),
            "web.red.cluster.flotilla.internal"
        );
        for bad in ["", ".", "a..b", "-a.b", "a b.c", &"x".repeat(64)] {
            assert!(DnsZone::new(bad).is_err(), "{bad:?}");
        }
        assert!(DnsZone::new(&"a.".repeat(MAX_DOMAIN_LEN)).is_err());
    }

    #[test]
    fn replace_reports_upserts_and_deletes() {
        let zone = DnsZone::new("flotilla.internal").expect("valid");
        let serial = zone.serial();
        let changes = zone.replace(records(&[
            ("a.node.flotilla.internal", &[1]),
            ("web.cluster.flotilla.internal", &[3, 1, 1]),
        ]));
        assert_eq!(
            changes,
            vec![
                RecordChange {
                    name: "a.node.flotilla.internal".into(),
                    ips: vec![ip(1)],
                    kind: ChangeKind::Upsert
                },
                RecordChange {
                    name: "web.cluster.flotilla.internal".into(),
                    ips: vec![ip(1), ip(3)],
                    kind: ChangeKind::Upsert
                },
            ]
        );
        assert_eq!(zone.serial(), serial.wrapping_add(1).max(1));

        // The same records again (other case, trailing dot): nothing changes.
        assert!(
            zone.replace(records(&[
                ("A.node.flotilla.internal.", &[1]),
                ("web.cluster.flotilla.internal", &[1, 3]),
            ]))
            .is_empty()
        );
        assert_eq!(zone.serial(), serial.wrapping_add(1).max(1));

        // A changed IP, a removed node, a new node, a cluster without IPs.
        let changes = zone.replace(records(&[
            ("b.node.flotilla.internal", &[2]),
            ("web.cluster.flotilla.internal", &[2]),
            ("empty.cluster.flotilla.internal", &[]),
        ]));
        assert_eq!(
            changes,
            vec![
                RecordChange {
                    name: "a.node.flotilla.internal".into(),
                    ips: vec![ip(1)],
                    kind: ChangeKind::Delete
                },
                RecordChange {
                    name: "b.node.flotilla.internal".into(),
                    ips: vec![ip(2)],
                    kind: ChangeKind::Upsert
                },
                RecordChange {
                    name: "web.cluster.flotilla.internal".into(),
                    ips: vec![ip(2)],
                    kind: ChangeKind::Upsert
                },
            ]
        );
        assert_eq!(zone.lookup("a.node.flotilla.internal"), None);
        assert_eq!(
            zone.lookup("WEB.cluster.flotilla.internal."),
            Some(vec![ip(2)])
        );
        assert_eq!(zone.lookup("empty.cluster.flotilla.internal"), None);
        assert_eq!(zone.len(), 2);
    }

    #[test]
    fn replace_skips_names_outside_the_zone() {
        let zone = DnsZone::new("flotilla.internal").expect("valid");
        let changes = zone.replace(records(&[
            ("flotilla.internal", &[1]),
            ("node.flotilla.internal", &[1]),
            ("x.example.com", &[1]),
            ("xflotilla.internal", &[1]),
            ("bad name.node.flotilla.internal", &[1]),
            ("ok.node.flotilla.internal", &[1]),
        ]));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].name, "ok.node.flotilla.internal");
    }

    #[test]
    fn names_that_differ_only_in_case_are_merged() {
        let zone = DnsZone::new("flotilla.internal").expect("valid");
        zone.replace(records(&[
            ("Web.cluster.flotilla.internal", &[2]),
            ("web.cluster.flotilla.internal", &[1]),
        ]));
        assert_eq!(
            zone.lookup("web.cluster.flotilla.internal"),
            Some(vec![ip(1), ip(2)])
        );
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        let zone = DnsZone::new("flotilla.internal").expect("valid");
        assert_eq!(zone.answer_bytes(&[1, 2, 3], false), None);
        // A header that claims one question, then nothing.
        let query = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff];
        let answer = zone.answer_bytes(&query, false).expect("FORMERR");
        let message = Message::from_vec(&answer).expect("parses");
        assert_eq!(message.metadata.id, 0xabcd);
        assert_eq!(message.metadata.response_code, ResponseCode::FormErr);
        // A response is never answered (no loops between two servers).
        let mut response = query;
        response[2] |= 0x80;
        assert_eq!(zone.answer_bytes(&response, false), None);
    }
}
