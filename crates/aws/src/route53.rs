//! The optional Route 53 mirror of the built-in DNS zone: the same A records, in a hosted
//! zone, so that names resolve for anyone on the internet without pointing at our server.
//!
//! The server's zone (`flotilla_server::dns`) is the source of truth; this module only copies
//! it: [`Route53Mirror::apply`] sends what changed, [`Route53Mirror::full_sync`] makes the
//! hosted zone equal to the zone (at start, and whenever a change could not be sent).
//!
//! Design decisions:
//! * The mirror borrows an [`Aws`]: the same SDK configuration (credentials, `endpoint_url`
//!   for moto) and the same [`Aws::send`](crate::call) wrapper, so Route 53 calls are counted
//!   in [`Aws::call_counts`] and throttling is retried like every other call. Route 53 is a
//!   global service: requests are signed for `us-east-1` and take tokens from a budget of
//!   their own (named `route53`), so a burst of DNS changes never delays EC2 calls.
//!   `PriorRequestNotComplete` (Route 53's "a change to this zone is still being applied") is
//!   retried here, since it is Route 53's alone.
//! * Changes are UPSERTs and DELETEs, never CREATEs: an UPSERT is correct whether or not the
//!   record exists, so a change that was applied but whose answer was lost can be resent.
//! * Route 53 deletes a record set only with its exact TTL and values, and fails the *whole*
//!   batch (`InvalidChangeBatch`) when a deleted record is missing or differs. When a batch
//!   with deletions fails that way, the deletions are re-read from the hosted zone (one
//!   lookup each, or one listing of the zone when there are many), those already gone are
//!   dropped, the others get their current values, and the batch is sent once more.
//! * A batch holds at most 1,000 `ResourceRecord` elements (Route 53's limit, an UPSERT
//!   counting twice), so [`apply`](Route53Mirror::apply) splits large changes into several
//!   calls. Batches are sent one after the other: Route 53 applies one change batch per zone
//!   at a time anyway.
//! * Only plain A records are ever touched: never the apex, aliases, weighted/latency sets
//!   (`SetIdentifier`), names with escaped characters, or other types (NS, SOA, TXT…). By
//!   default the mirror owns every plain A record below the apex, i.e. the hosted zone is
//!   meant for Flotilla alone; [`Route53Mirror::restrict_to`] narrows deletions by
//!   [`full_sync`](Route53Mirror::full_sync) to names under given suffixes
//!   (`node.<domain>`, `cluster.<domain>`) for a zone shared with other records.
//! * The hosted zone is found by name (`ListHostedZonesByName`) or given by id; it is created
//!   only when asked, and then as a **public** zone: a private zone must be associated with a
//!   VPC when it is created, and Flotilla's VPCs are per region and come and go with their
//!   clusters. A private zone made by the user can be mirrored by passing its id.
//! * The TTL is 60 s by default ([`DEFAULT_TTL`]): Route 53 bills per query and takes tens of
//!   seconds to propagate a change anyway; the built-in server answers with 5 s.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, HostedZone, HostedZoneConfig, ResourceRecord,
    ResourceRecordSet, RrType,
};
use aws_types::region::Region;
use flotilla_core::CloudError;

use crate::Aws;
use crate::call::{CallError, Idempotency};

/// The budget (and the "region" in error messages) of Route 53 calls.
const BUDGET: &str = "route53";
/// Route 53 is global; its API is signed for this region.
const SIGNING_REGION: &str = "us-east-1";
/// `ResourceRecord` elements per `ChangeResourceRecordSets` call.
const MAX_RECORDS_PER_BATCH: usize = 1000;
/// Record sets per `ListResourceRecordSets` page (Route 53's maximum).
const PAGE_SIZE: i32 = 300;
/// Above this many deletions in a refused batch, list the zone instead of one lookup each.
const LOOKUPS_BEFORE_LISTING: usize = 10;
/// Tries of a call refused with `PriorRequestNotComplete`.
const PRIOR_REQUEST_TRIES: u32 = 6;
/// TTL of the records the mirror writes, unless set with [`Route53Mirror::with_ttl`].
pub const DEFAULT_TTL: i64 = 60;

/// One changed name for [`Route53Mirror::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorChange {
    /// Fully qualified, any case, with or without the trailing dot.
    pub name: String,
    /// The new IPs; for a deletion, the IPs the record had (if known; empty = look them up).
    pub ips: Vec<Ipv4Addr>,
    pub delete: bool,
}

impl MirrorChange {
    pub fn upsert(name: impl Into<String>, ips: Vec<Ipv4Addr>) -> MirrorChange {
        MirrorChange {
            name: name.into(),
            ips,
            delete: false,
        }
    }

    pub fn delete(name: impl Into<String>, ips: Vec<Ipv4Addr>) -> MirrorChange {
        MirrorChange {
            name: name.into(),
            ips,
            delete: true,
        }
    }
}

/// What [`Route53Mirror::full_sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub upserted: usize,
    pub deleted: usize,
    pub unchanged: usize,
}

/// One change as sent to Route 53.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Upsert {
        name: String,
        ips: Vec<Ipv4Addr>,
    },
    /// With the exact TTL and values Route 53 needs to delete.
    Delete {
        name: String,
        ips: Vec<Ipv4Addr>,
        ttl: i64,
    },
}

impl Op {
    /// `ResourceRecord` elements it counts for in a batch (an UPSERT is a DELETE and a CREATE).
    fn weight(&self) -> usize {
        match self {
            Op::Upsert { ips, .. } => 2 * ips.len().max(1),
            Op::Delete { ips, .. } => ips.len().max(1),
        }
    }

    fn to_change(&self, default_ttl: i64) -> Result<Change, CloudError> {
        let (action, name, ips, ttl) = match self {
            Op::Upsert { name, ips } => (ChangeAction::Upsert, name, ips, default_ttl),
            Op::Delete { name, ips, ttl } => (ChangeAction::Delete, name, ips, *ttl),
        };
        let records = ips
            .iter()
            .map(|ip| ResourceRecord::builder().value(ip.to_string()).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(build_error)?;
        let set = ResourceRecordSet::builder()
            .name(format!("{name}."))
            .r#type(RrType::A)
            .ttl(ttl)
            .set_resource_records(Some(records))
            .build()
            .map_err(build_error)?;
        Change::builder()
            .action(action)
            .resource_record_set(set)
            .build()
            .map_err(build_error)
    }
}

fn build_error(error: aws_smithy_types::error::operation::BuildError) -> CloudError {
    CloudError::Other {
        operation: "ChangeResourceRecordSets".into(),
        message: format!("could not build the request: {error}"),
    }
}

/// A plain A record as it is in the hosted zone.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Current {
    ttl: i64,
    ips: Vec<Ipv4Addr>,
}

/// `name` lowercased, without the trailing dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `/hostedzone/Z123` → `Z123`.
fn bare_zone_id(id: &str) -> String {
    id.trim_start_matches('/')
        .trim_start_matches("hostedzone/")
        .to_owned()
}

fn hostname_labels(name: &str) -> bool {
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    })
}

/// Keeps a hosted zone equal to Flotilla's DNS zone. See the module docs.
#[derive(Debug)]
pub struct Route53Mirror {
    aws: Arc<Aws>,
    client: aws_sdk_route53::Client,
    /// Without the `/hostedzone/` prefix.
    zone_id: String,
    /// Lowercase, without the trailing dot.
    domain: String,
    ttl: i64,
    /// Name suffixes (lowercase, no dots around) that `full_sync` may delete under; empty =
    /// everything below the apex.
    managed: Vec<String>,
}

impl Route53Mirror {
    /// Finds the hosted zone for `zone_domain` (or checks the one given by id, whose name
    /// must be `zone_domain`). Without an id and without a zone of that name, creates a public
    /// hosted zone if `create_if_missing`, and fails otherwise; several zones of that name
    /// (a public and a private one, say) need the id to choose.
    pub async fn connect(
        aws: Arc<Aws>,
        zone_domain: &str,
        hosted_zone_id: Option<String>,
        create_if_missing: bool,
    ) -> Result<Route53Mirror, CloudError> {
        let domain = normalize(zone_domain);
        if domain.is_empty() || !hostname_labels(&domain) {
            return Err(CloudError::InvalidResource {
                field: "Route 53 zone".into(),
                message: format!("'{zone_domain}' is not a DNS domain"),
            });
        }
        let config = aws_sdk_route53::config::Builder::from(&aws.sdk_config)
            .region(Region::new(SIGNING_REGION))
            .build();
        let client = aws_sdk_route53::Client::from_conf(config);
        let mut mirror = Route53Mirror {
            aws,
            client,
            zone_id: String::new(),
            domain,
            ttl: DEFAULT_TTL,
            managed: Vec::new(),
        };
        mirror.zone_id = match hosted_zone_id {
            Some(id) => mirror.check_zone(&bare_zone_id(&id)).await?,
            None => match mirror.find_zone().await? {
                Some(id) => id,
                None if create_if_missing => mirror.create_zone().await?,
                None => {
                    return Err(CloudError::InvalidResource {
                        field: "Route 53 zone".into(),
                        message: format!(
                            "there is no hosted zone named {}; create one, give its id, or let Flotilla create it",
                            mirror.domain
                        ),
                    });
                }
            },
        };
        tracing::info!(zone = %mirror.domain, id = %mirror.zone_id, "mirroring DNS to Route 53");
        Ok(mirror)
    }

    /// The TTL of the records written from now on.
    pub fn with_ttl(mut self, ttl: i64) -> Route53Mirror {
        self.ttl = ttl;
        self
    }

    /// Limits what [`full_sync`](Self::full_sync) deletes to names under these suffixes
    /// (e.g. `node.flotilla.example.com`), for a hosted zone shared with other records.
    pub fn restrict_to(mut self, suffixes: impl IntoIterator<Item = String>) -> Route53Mirror {
        self.managed = suffixes.into_iter().map(|s| normalize(&s)).collect();
        self
    }

    /// The hosted zone's id, without the `/hostedzone/` prefix.
    pub fn hosted_zone_id(&self) -> &str {
        &self.zone_id
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    async fn check_zone(&self, id: &str) -> Result<String, CloudError> {
        let client = &self.client;
        let output = self
            .aws
            .send(BUDGET, "GetHostedZone", Idempotency::Safe, || {
                client.get_hosted_zone().id(id).send()
            })
            .await
            .map_err(|e| {
                if e.is("NoSuchHostedZone") || e.is("InvalidInput") {
                    CloudError::InvalidResource {
                        field: "Route 53 hosted zone id".into(),
                        message: format!("{id}: {}", e.message),
                    }
                } else {
                    e.into_cloud_error()
                }
            })?;
        let name = output.hosted_zone().map(|z| normalize(z.name()));
        if name.as_deref() != Some(self.domain.as_str()) {
            return Err(CloudError::InvalidResource {
                field: "Route 53 hosted zone id".into(),
                message: format!(
                    "{id} is the zone of {}, not of {}",
                    name.unwrap_or_default(),
                    self.domain
                ),
            });
        }
        Ok(id.to_owned())
    }

    async fn find_zone(&self) -> Result<Option<String>, CloudError> {
        let client = &self.client;
        let dns_name = format!("{}.", self.domain);
        let output = self
            .aws
            .send(BUDGET, "ListHostedZonesByName", Idempotency::Safe, || {
                client
                    .list_hosted_zones_by_name()
                    .dns_name(&dns_name)
                    .max_items(100)
                    .send()
            })
            .await
            .map_err(CallError::into_cloud_error)?;
        // The listing starts at our name, in name order: the matches come first.
        let matches: Vec<&HostedZone> = output
            .hosted_zones()
            .iter()
            .filter(|zone| normalize(zone.name()) == self.domain)
            .collect();
        match matches.as_slice() {
            [] => Ok(None),
            [zone] => Ok(Some(bare_zone_id(zone.id()))),
            several => Err(CloudError::InvalidResource {
                field: "Route 53 zone".into(),
                message: format!(
                    "several hosted zones are named {} ({}); give the id of the one to use",
                    self.domain,
                    several
                        .iter()
                        .map(|z| bare_zone_id(z.id()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    async fn create_zone(&self) -> Result<String, CloudError> {
        let client = &self.client;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        // Unique per attempt: a reference can never be reused, even after the zone is gone.
        let reference = format!("flotilla-{}-{nanos}", self.aws.settings().owner);
        let config = HostedZoneConfig::builder()
            .comment(format!(
                "Flotilla DNS zone (flotilla:owner {})",
                self.aws.settings().owner
            ))
            .private_zone(false)
            .build();
        // Not resent after a lost answer (it could make a second zone of the same name); the
        // next connect finds the zone by name.
        let output = self
            .aws
            .send(
                BUDGET,
                "CreateHostedZone",
                Idempotency::CreatesSomething,
                || {
                    client
                        .create_hosted_zone()
                        .name(&self.domain)
                        .caller_reference(&reference)
                        .hosted_zone_config(config.clone())
                        .send()
                },
            )
            .await
            .map_err(CallError::into_cloud_error)?;
        let id = output
            .hosted_zone()
            .map(|z| bare_zone_id(z.id()))
            .ok_or_else(|| CloudError::Other {
                operation: "CreateHostedZone".into(),
                message: "the answer has no hosted zone".into(),
            })?;
        tracing::info!(zone = %self.domain, %id, "created a public Route 53 hosted zone");
        Ok(id)
    }

    /// A name that belongs in the zone (strictly below the apex, hostname labels).
    fn in_zone(&self, name: &str) -> bool {
        name.strip_suffix(&self.domain)
            .and_then(|prefix| prefix.strip_suffix('.'))
            .is_some_and(|prefix| !prefix.is_empty() && hostname_labels(prefix))
    }

    /// A name `full_sync` may delete.
    fn managed(&self, name: &str) -> bool {
        self.in_zone(name)
            && (self.managed.is_empty()
                || self.managed.iter().any(|suffix| {
                    name.strip_suffix(suffix.as_str())
                        .is_some_and(|prefix| prefix.ends_with('.'))
                }))
    }

    /// Sends the changes: UPSERT for new IPs, DELETE for removed names. The last change of a
    /// name wins; names outside the zone are skipped with a warning; a deletion of a record
    /// that is not there is not an error.
    pub async fn apply(&self, changes: &[MirrorChange]) -> Result<(), CloudError> {
        let mut last: BTreeMap<String, &MirrorChange> = BTreeMap::new();
        for change in changes {
            let name = normalize(&change.name);
            if self.in_zone(&name) {
                last.insert(name, change);
            } else {
                tracing::warn!(name = %change.name, zone = %self.domain, "Route 53 change skipped: name not below the zone");
            }
        }
        let mut ops = Vec::with_capacity(last.len());
        for (name, change) in last {
            let mut ips = change.ips.clone();
            ips.sort_unstable();
            ips.dedup();
            if !change.delete && !ips.is_empty() {
                ops.push(Op::Upsert { name, ips });
            } else if !ips.is_empty() {
                ops.push(Op::Delete {
                    name,
                    ips,
                    ttl: self.ttl,
                });
            } else if let Some(current) = self.current(&name).await? {
                // A deletion (or an empty upsert) without values: delete what is there.
                ops.push(Op::Delete {
                    name,
                    ips: current.ips,
                    ttl: current.ttl,
                });
            }
        }
        self.send_ops(ops).await
    }

    /// Makes the plain A records of the hosted zone equal to `records` (fully qualified names,
    /// any case): upserts the missing and different ones, deletes the others (within
    /// [`restrict_to`](Self::restrict_to)). Records with no IPs count as absent.
    pub async fn full_sync(
        &self,
        records: &BTreeMap<String, Vec<Ipv4Addr>>,
    ) -> Result<SyncReport, CloudError> {
        let mut desired: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for (name, ips) in records {
            let name = normalize(name);
            if self.in_zone(&name) {
                desired.entry(name).or_default().extend(ips);
            } else {
                tracing::warn!(%name, zone = %self.domain, "Route 53 record skipped: name not below the zone");
            }
        }
        desired.retain(|_, ips| {
            ips.sort_unstable();
            ips.dedup();
            !ips.is_empty()
        });
        let current = self.list_a_records().await?;
        let mut report = SyncReport::default();
        let mut ops = Vec::new();
        for (name, ips) in &desired {
            let same = current
                .get(name)
                .is_some_and(|c| c.ttl == self.ttl && &c.ips == ips);
            if same {
                report.unchanged += 1;
            } else {
                report.upserted += 1;
                ops.push(Op::Upsert {
                    name: name.clone(),
                    ips: ips.clone(),
                });
            }
        }
        let mut strays: Vec<(&String, &Current)> = current
            .iter()
            .filter(|(name, _)| self.managed(name) && !desired.contains_key(*name))
            .collect();
        strays.sort_by(|a, b| a.0.cmp(b.0));
        for (name, record) in strays {
            report.deleted += 1;
            ops.push(Op::Delete {
                name: name.clone(),
                ips: record.ips.clone(),
                ttl: record.ttl,
            });
        }
        self.send_ops(ops).await?;
        Ok(report)
    }

    /// Sends `ops` in batches of at most [`MAX_RECORDS_PER_BATCH`] records.
    async fn send_ops(&self, ops: Vec<Op>) -> Result<(), CloudError> {
        let mut batch: Vec<Op> = Vec::new();
        let mut weight = 0;
        for op in ops {
            if !batch.is_empty() && weight + op.weight() > MAX_RECORDS_PER_BATCH {
                self.send_batch(std::mem::take(&mut batch)).await?;
                weight = 0;
            }
            weight += op.weight();
            batch.push(op);
        }
        if !batch.is_empty() {
            self.send_batch(batch).await?;
        }
        Ok(())
    }

    /// One batch; if Route 53 refuses it and it deletes something, once more with the
    /// deletions re-read from the zone.
    async fn send_batch(&self, batch: Vec<Op>) -> Result<(), CloudError> {
        let error = match self.change(&batch).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let refused = error.is("InvalidChangeBatch") || error.is("InvalidInput");
        let deletions = batch
            .iter()
            .filter(|op| matches!(op, Op::Delete { .. }))
            .count();
        if !refused || deletions == 0 {
            return Err(error.into_cloud_error());
        }
        tracing::info!(
            zone = %self.domain,
            deletions,
            message = %error.message,
            "Route 53 refused a change batch; re-reading the records it deletes"
        );
        let listing = if deletions > LOOKUPS_BEFORE_LISTING {
            Some(self.list_a_records().await?)
        } else {
            None
        };
        let mut retry = Vec::with_capacity(batch.len());
        for op in batch {
            match op {
                Op::Delete { name, .. } => {
                    let current = match &listing {
                        Some(listing) => listing.get(&name).cloned(),
                        None => self.current(&name).await?,
                    };
                    if let Some(current) = current {
                        retry.push(Op::Delete {
                            name,
                            ips: current.ips,
                            ttl: current.ttl,
                        });
                    }
                }
                upsert => retry.push(upsert),
            }
        }
        if retry.is_empty() {
            return Ok(());
        }
        self.change(&retry)
            .await
            .map_err(CallError::into_cloud_error)
    }

    /// One `ChangeResourceRecordSets`, retried while Route 53 is still applying an earlier one.
    async fn change(&self, ops: &[Op]) -> Result<(), CallError> {
        let changes = match ops
            .iter()
            .map(|op| op.to_change(self.ttl))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(changes) => changes,
            Err(error) => {
                return Err(CallError {
                    operation: "ChangeResourceRecordSets",
                    region: BUDGET.into(),
                    code: None,
                    message: error.to_string(),
                    status: None,
                    transport: false,
                    retryable: false,
                });
            }
        };
        let batch = ChangeBatch::builder()
            .set_changes(Some(changes))
            .build()
            .map_err(|error| CallError {
                operation: "ChangeResourceRecordSets",
                region: BUDGET.into(),
                code: None,
                message: error.to_string(),
                status: None,
                transport: false,
                retryable: false,
            })?;
        let client = &self.client;
        let mut tries = 0;
        loop {
            tries += 1;
            // UPSERTs and DELETEs can be resent: a DELETE that already happened is refused
            // and handled like any missing record (see `send_batch`).
            let result = self
                .aws
                .send(
                    BUDGET,
                    "ChangeResourceRecordSets",
                    Idempotency::Safe,
                    || {
                        client
                            .change_resource_record_sets()
                            .hosted_zone_id(&self.zone_id)
                            .change_batch(batch.clone())
                            .send()
                    },
                )
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(error)
                    if error.is("PriorRequestNotComplete") && tries < PRIOR_REQUEST_TRIES =>
                {
                    let pause = self
                        .aws
                        .settings()
                        .retry_base
                        .saturating_mul(1 << tries)
                        .min(self.aws.settings().retry_cap)
                        .max(Duration::from_millis(1));
                    tokio::time::sleep(pause).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The plain A record of one name, if there is one.
    async fn current(&self, name: &str) -> Result<Option<Current>, CloudError> {
        let client = &self.client;
        let start = format!("{name}.");
        let output = self
            .aws
            .send(BUDGET, "ListResourceRecordSets", Idempotency::Safe, || {
                client
                    .list_resource_record_sets()
                    .hosted_zone_id(&self.zone_id)
                    .start_record_name(&start)
                    .start_record_type(RrType::A)
                    .max_items(1)
                    .send()
            })
            .await
            .map_err(CallError::into_cloud_error)?;
        Ok(output
            .resource_record_sets()
            .iter()
            .filter_map(plain_a_record)
            .find(|(n, _)| n == name)
            .map(|(_, current)| current))
    }

    /// Every plain A record of the hosted zone, by name.
    async fn list_a_records(&self) -> Result<HashMap<String, Current>, CloudError> {
        let client = &self.client;
        let mut records = HashMap::new();
        let mut next: Option<(String, RrType, Option<String>)> = None;
        loop {
            let start = next.clone();
            let page = self
                .aws
                .send(BUDGET, "ListResourceRecordSets", Idempotency::Safe, || {
                    let mut request = client
                        .list_resource_record_sets()
                        .hosted_zone_id(&self.zone_id)
                        .max_items(PAGE_SIZE);
                    if let Some((name, kind, identifier)) = start.clone() {
                        request = request
                            .start_record_name(name)
                            .start_record_type(kind)
                            .set_start_record_identifier(identifier);
                    }
                    request.send()
                })
                .await
                .map_err(CallError::into_cloud_error)?;
            records.extend(
                page.resource_record_sets()
                    .iter()
                    .filter_map(plain_a_record),
            );
            next = match (
                page.is_truncated(),
                page.next_record_name(),
                page.next_record_type(),
            ) {
                (true, Some(name), Some(kind)) => Some((
                    name.to_owned(),
                    kind.clone(),
                    page.next_record_identifier().map(str::to_owned),
                )),
                _ => break,
            };
        }
        Ok(records)
    }
}

/// A record set as (normalized name, TTL and sorted IPs) if it is a plain A record: no alias,
/// no routing policy, every value an IPv4 address.
fn plain_a_record(set: &ResourceRecordSet) -> Option<(String, Current)> {
    if set.r#type() != &RrType::A || set.alias_target().is_some() || set.set_identifier().is_some()
    {
        return None;
    }
    let mut ips = set
        .resource_records()
        .iter()
        .map(|r| r.value().parse::<Ipv4Addr>().ok())
        .collect::<Option<Vec<_>>>()?;
    ips.sort_unstable();
    Some((
        normalize(set.name()),
        Current {
            ttl: set.ttl()?,
            ips,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_ids_lose_their_prefix() {
        assert_eq!(bare_zone_id("/hostedzone/Z123"), "Z123");
        assert_eq!(bare_zone_id("hostedzone/Z123"), "Z123");
        assert_eq!(bare_zone_id("Z123"), "Z123");
    }

    #[test]
    fn upserts_weigh_twice() {
        let ip = Ipv4Addr::new(192, 0, 2, 1);
        let upsert = Op::Upsert {
            name: "a.example.com".into(),
            ips: vec![ip, ip],
        };
        let delete = Op::Delete {
            name: "a.example.com".into(),
            ips: vec![ip],
            ttl: 60,
        };
        assert_eq!(upsert.weight(), 4);
        assert_eq!(delete.weight(), 1);
    }
}
