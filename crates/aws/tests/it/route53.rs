//! The Route 53 mirror against moto: finding or creating the hosted zone, UPSERTs, DELETEs
//! (including of records that are not there), batching, and a full sync that removes strays.
//! Every check reads the hosted zone back through the inspection proxy.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use flotilla_aws::Aws;
use flotilla_aws::route53::{MirrorChange, Route53Mirror, SyncReport};
use flotilla_core::CloudError;
use flotilla_testkit::inspect;
use flotilla_testkit::{Fault, Rule};

use crate::harness::{Env, settings};

const DOMAIN: &str = "dns.flotilla.test";

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, last)
}

fn name(prefix: &str) -> String {
    format!("{prefix}.{DOMAIN}")
}

struct Route53Env {
    env: Env,
    aws: Arc<Aws>,
    inspect: aws_sdk_route53::Client,
}

impl Route53Env {
    async fn new() -> Route53Env {
        let env = Env::new().await;
        let aws = Arc::new(Aws::connect(settings(&env.proxy.endpoint())).await);
        let inspect = aws_sdk_route53::Client::new(
            &inspect::sdk_config(&env.inspect.endpoint(), "us-east-1").await,
        );
        Route53Env { env, aws, inspect }
    }

    async fn mirror(&self) -> Route53Mirror {
        Route53Mirror::connect(self.aws.clone(), DOMAIN, None, true)
            .await
            .expect("hosted zone found or created")
    }

    /// The A records of the zone, as moto has them: name (no trailing dot) → (TTL, sorted IPs).
    async fn a_records(&self, zone_id: &str) -> BTreeMap<String, (i64, Vec<Ipv4Addr>)> {
        let mut records = BTreeMap::new();
        let mut start: Option<(String, RrType)> = None;
        loop {
            let mut request = self
                .inspect
                .list_resource_record_sets()
                .hosted_zone_id(zone_id)
                .max_items(300);
            if let Some((name, kind)) = start.take() {
                request = request.start_record_name(name).start_record_type(kind);
            }
            let page = request
                .send()
                .await
                .expect("ListResourceRecordSets on moto");
            for set in page.resource_record_sets() {
                if set.r#type() == &RrType::A {
                    let mut ips: Vec<Ipv4Addr> = set
                        .resource_records()
                        .iter()
                        .map(|r| r.value().parse().expect("an IPv4 value"))
                        .collect();
                    ips.sort();
                    records.insert(
                        set.name().trim_end_matches('.').to_owned(),
                        (set.ttl().unwrap_or_default(), ips),
                    );
                }
            }
            match (
                page.is_truncated(),
                page.next_record_name(),
                page.next_record_type(),
            ) {
                (true, Some(name), Some(kind)) => start = Some((name.to_owned(), kind.clone())),
                _ => return records,
            }
        }
    }

    /// Writes a record behind the mirror's back.
    async fn put(&self, zone_id: &str, name: &str, kind: RrType, values: &[&str]) {
        let set = ResourceRecordSet::builder()
            .name(name)
            .r#type(kind)
            .ttl(300)
            .set_resource_records(Some(
                values
                    .iter()
                    .map(|v| ResourceRecord::builder().value(*v).build().expect("record"))
                    .collect(),
            ))
            .build()
            .expect("record set");
        self.inspect
            .change_resource_record_sets()
            .hosted_zone_id(zone_id)
            .change_batch(
                ChangeBatch::builder()
                    .changes(
                        Change::builder()
                            .action(ChangeAction::Upsert)
                            .resource_record_set(set)
                            .build()
                            .expect("change"),
                    )
                    .build()
                    .expect("batch"),
            )
            .send()
            .await
            .expect("ChangeResourceRecordSets on moto");
    }
}

fn ttl60(ips: &[u8]) -> (i64, Vec<Ipv4Addr>) {
    (60, ips.iter().map(|i| ip(*i)).collect())
}

#[tokio::test]
async fn route53_finds_or_creates_the_hosted_zone_only_when_asked() {
    let r53 = Route53Env::new().await;
    let missing = Route53Mirror::connect(r53.aws.clone(), DOMAIN, None, false).await;
    assert!(
        matches!(missing, Err(CloudError::InvalidResource { .. })),
        "{missing:?}"
    );

    let created = r53.mirror().await;
    assert!(!created.hosted_zone_id().starts_with('/'));
    let zone = r53
        .inspect
        .get_hosted_zone()
        .id(created.hosted_zone_id())
        .send()
        .await
        .expect("the zone exists in moto");
    let config = zone.hosted_zone().and_then(|z| z.config());
    assert_eq!(
        config.map(|c| c.private_zone()),
        Some(false),
        "a public zone"
    );

    // Found by name (any case, trailing dot), not created twice; or given by id.
    let found = Route53Mirror::connect(r53.aws.clone(), "DNS.Flotilla.Test.", None, false)
        .await
        .expect("found by name");
    assert_eq!(found.hosted_zone_id(), created.hosted_zone_id());
    let listed = r53
        .inspect
        .list_hosted_zones_by_name()
        .dns_name(DOMAIN)
        .send()
        .await
        .expect("ListHostedZonesByName");
    let named: Vec<_> = listed
        .hosted_zones()
        .iter()
        .filter(|z| z.name() == format!("{DOMAIN}."))
        .collect();
    assert_eq!(named.len(), 1);
    let by_id = Route53Mirror::connect(
        r53.aws.clone(),
        DOMAIN,
        Some(format!("/hostedzone/{}", created.hosted_zone_id())),
        false,
    )
    .await
    .expect("given by id");
    assert_eq!(by_id.hosted_zone_id(), created.hosted_zone_id());

    // An id of another zone, or of no zone, is refused.
    let other = Route53Mirror::connect(
        r53.aws.clone(),
        "other.flotilla.test",
        Some(created.hosted_zone_id().to_owned()),
        false,
    )
    .await;
    assert!(
        matches!(other, Err(CloudError::InvalidResource { .. })),
        "{other:?}"
    );
    let nothing =
        Route53Mirror::connect(r53.aws.clone(), DOMAIN, Some("ZNOSUCHZONE".into()), false).await;
    assert!(nothing.is_err(), "{nothing:?}");
}

#[tokio::test]
async fn route53_apply_upserts_changes_and_deletes() {
    let r53 = Route53Env::new().await;
    let mirror = r53.mirror().await;
    let zone = mirror.hosted_zone_id().to_owned();

    mirror
        .apply(&[
            MirrorChange::upsert(name("n1.node"), vec![ip(1)]),
            MirrorChange::upsert(name("Web.Cluster") + ".", vec![ip(3), ip(1), ip(2)]),
            MirrorChange::upsert("outside.example.com", vec![ip(9)]),
        ])
        .await
        .expect("apply");
    let expected = BTreeMap::from([
        (name("n1.node"), ttl60(&[1])),
        (name("web.cluster"), ttl60(&[1, 2, 3])),
    ]);
    assert_eq!(r53.a_records(&zone).await, expected);

    // A node's IP changes: one UPSERT, for the node and its cluster.
    mirror
        .apply(&[
            MirrorChange::upsert(name("n1.node"), vec![ip(4)]),
            MirrorChange::upsert(name("web.cluster"), vec![ip(2), ip(3), ip(4)]),
        ])
        .await
        .expect("apply");
    let expected = BTreeMap::from([
        (name("n1.node"), ttl60(&[4])),
        (name("web.cluster"), ttl60(&[2, 3, 4])),
    ]);
    assert_eq!(r53.a_records(&zone).await, expected);

    // Deletions: with the values, without them (looked up), and of a record that was never
    // there, in one batch with an upsert that must still happen.
    mirror
        .apply(&[
            MirrorChange::delete(name("web.cluster"), vec![ip(2), ip(3), ip(4)]),
            MirrorChange::delete(name("ghost.node"), vec![ip(7)]),
            MirrorChange::upsert(name("n2.node"), vec![ip(5)]),
        ])
        .await
        .expect("a missing record's deletion is not an error");
    mirror
        .apply(&[MirrorChange::delete(name("n1.node"), vec![])])
        .await
        .expect("delete without values");
    let expected = BTreeMap::from([(name("n2.node"), ttl60(&[5]))]);
    assert_eq!(r53.a_records(&zone).await, expected);

    // The SOA and NS records of the zone are untouched.
    let sets = r53
        .inspect
        .list_resource_record_sets()
        .hosted_zone_id(&zone)
        .send()
        .await
        .expect("ListResourceRecordSets");
    let kinds: Vec<RrType> = sets
        .resource_record_sets()
        .iter()
        .map(|s| s.r#type().clone())
        .collect();
    assert!(
        kinds.contains(&RrType::Soa) && kinds.contains(&RrType::Ns),
        "{kinds:?}"
    );

    // Counted like every other call.
    let calls = r53.aws.call_counts();
    assert!(
        calls.get("ChangeResourceRecordSets").copied().unwrap_or(0) >= 4,
        "{calls:?}"
    );
}

#[tokio::test]
async fn route53_full_sync_removes_strays_and_is_idempotent() {
    let r53 = Route53Env::new().await;
    let mirror = r53.mirror().await;
    let zone = mirror.hosted_zone_id().to_owned();

    // What a previous run (or a person) left behind.
    r53.put(&zone, &name("stray.node"), RrType::A, &["192.0.2.66"])
        .await;
    r53.put(&zone, &name("n1.node"), RrType::A, &["192.0.2.99"])
        .await;
    r53.put(&zone, &name("web.cluster"), RrType::A, &["192.0.2.1"])
        .await;
    r53.put(&zone, &name("notes"), RrType::Txt, &["\"keep me\""])
        .await;
    r53.put(&zone, DOMAIN, RrType::A, &["192.0.2.80"]).await;

    let desired = BTreeMap::from([
        (name("n1.node"), vec![ip(1)]),
        (name("n2.node"), vec![ip(2)]),
        (name("web.cluster"), vec![ip(2), ip(1)]),
        (name("empty.cluster"), vec![]),
    ]);
    let report = mirror.full_sync(&desired).await.expect("full sync");
    assert_eq!(
        report,
        SyncReport {
            upserted: 3,
            deleted: 1,
            unchanged: 0
        }
    );
    let records = r53.a_records(&zone).await;
    let expected = BTreeMap::from([
        // The apex is never the mirror's.
        (DOMAIN.to_owned(), (300, vec![ip(80)])),
        (name("n1.node"), ttl60(&[1])),
        (name("n2.node"), ttl60(&[2])),
        (name("web.cluster"), ttl60(&[1, 2])),
    ]);
    assert_eq!(records, expected);
    let txt = r53
        .inspect
        .list_resource_record_sets()
        .hosted_zone_id(&zone)
        .start_record_name(name("notes"))
        .start_record_type(RrType::Txt)
        .max_items(1)
        .send()
        .await
        .expect("ListResourceRecordSets");
    assert_eq!(
        txt.resource_record_sets().first().map(|s| s.name()),
        Some(format!("{}.", name("notes")).as_str()),
        "other record types are left alone"
    );

    // In sync: nothing to send.
    let changes_before = r53
        .aws
        .call_counts()
        .get("ChangeResourceRecordSets")
        .copied();
    let report = mirror.full_sync(&desired).await.expect("full sync");
    assert_eq!(
        report,
        SyncReport {
            upserted: 0,
            deleted: 0,
            unchanged: 3
        }
    );
    assert_eq!(
        r53.aws
            .call_counts()
            .get("ChangeResourceRecordSets")
            .copied(),
        changes_before
    );

    // Restricted to the node names, strays elsewhere stay.
    r53.put(&zone, &name("www"), RrType::A, &["192.0.2.81"])
        .await;
    let restricted = r53
        .mirror()
        .await
        .restrict_to([name("node"), name("cluster")]);
    let report = restricted
        .full_sync(&BTreeMap::from([(name("n1.node"), vec![ip(1)])]))
        .await
        .expect("full sync");
    assert_eq!(report.deleted, 2, "n2 and web, not www: {report:?}");
    let records = r53.a_records(&zone).await;
    assert!(records.contains_key(&name("www")));
    assert!(!records.contains_key(&name("n2.node")));
}

#[tokio::test]
async fn route53_large_changes_are_batched_and_throttling_is_retried() {
    let r53 = Route53Env::new().await;
    let mirror = r53.mirror().await;
    let zone = mirror.hosted_zone_id().to_owned();

    // Route 53 is throttled twice: the shared `send` wrapper retries.
    r53.env
        .proxy
        .add_rule(Rule::any().times(2).fault(Fault::Throttle));
    let changes: Vec<MirrorChange> = (0..1200u32)
        .map(|i| {
            let [_, _, c, d] = i.to_be_bytes();
            MirrorChange::upsert(
                name(&format!("n{i}.node")),
                vec![Ipv4Addr::new(10, 0, c, d)],
            )
        })
        .collect();
    mirror.apply(&changes).await.expect("apply");

    // An UPSERT counts as two records: 500 per call, so three calls for 1,200.
    let calls = r53.aws.call_counts();
    assert_eq!(calls.get("ChangeResourceRecordSets"), Some(&3), "{calls:?}");
    let attempts = r53.aws.attempt_counts();
    assert_eq!(
        attempts.get("ChangeResourceRecordSets"),
        Some(&5),
        "{attempts:?}"
    );
    let records = r53.a_records(&zone).await;
    assert_eq!(records.len(), 1200);
    assert_eq!(
        records.get(&name("n1027.node")),
        Some(&(60, vec![Ipv4Addr::new(10, 0, 4, 3)]))
    );

    // Deleting them all goes through the same batching (and the full sync's listing pages).
    let report = mirror.full_sync(&BTreeMap::new()).await.expect("full sync");
    assert_eq!(report.deleted, 1200);
    assert!(r53.a_records(&zone).await.is_empty());
}
