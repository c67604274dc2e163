//! `flotilla server`'s node-lifecycle options: health, observation, DNS and the optional
//! Route 53 mirror of the zone.
//!
//! The mirror lives here because this crate is the one place that may name both the
//! server's types and the AWS crate's: the server only knows a [`ZoneMirror`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use flotilla_aws::AwsAccount;
use flotilla_aws::route53::{MirrorChange, Route53Mirror};
use flotilla_server::ServerConfig;
use flotilla_server::dns::{ChangeKind, RecordChange};
use flotilla_server::zone::{BoxFuture, Mirror, ZoneMirror};

#[derive(Debug, Args)]
pub struct LifecycleOptions {
    /// Seconds without a heartbeat after which a node is Unreachable (3 missed 10 s
    /// heartbeats by default).
    #[arg(long, env = "FLOTILLA_HEARTBEAT_GRACE", default_value_t = 30.0)]
    heartbeat_grace: f64,
    /// Seconds between observations of each region's instances and networks (one
    /// DescribeInstances per region, whatever the number of clusters): out-of-band
    /// terminations, new public IPs and network drift are found within this period.
    #[arg(long, env = "FLOTILLA_OBSERVE_INTERVAL", default_value_t = 60.0)]
    observe_interval: f64,
    /// The DNS domain: nodes are `<uuid>.node.<domain>`, clusters `<name>.cluster.<domain>`.
    #[arg(long, env = "FLOTILLA_DNS_DOMAIN", default_value = "flotilla.internal")]
    dns_domain: String,
    /// Where the built-in DNS server answers (UDP and TCP) [default: 127.0.0.1:8053; if
    /// that is taken the server runs without DNS and says so, while an address given here
    /// must be free].
    #[arg(long, env = "FLOTILLA_DNS_LISTEN")]
    dns_listen: Option<SocketAddr>,
    /// Do not run the built-in DNS server.
    #[arg(long)]
    no_dns: bool,
    /// Mirror the zone to the Route 53 hosted zone named like --dns-domain (created, public,
    /// if there is none).
    #[arg(long, env = "FLOTILLA_ROUTE53")]
    route53: bool,
    /// Mirror the zone to this Route 53 hosted zone (its name must be --dns-domain).
    #[arg(long, env = "FLOTILLA_ROUTE53_ZONE_ID")]
    route53_zone_id: Option<String>,
    /// Seconds the launch wizard's lists of a region's VPCs, subnets, security groups and
    /// of the instance profiles are reused before AWS is asked again.
    #[arg(long, env = "FLOTILLA_NETWORK_CACHE", default_value_t = 30.0)]
    network_cache: f64,
    /// Seconds between syncs of the LDAP directory's users and groups (when LDAP is
    /// configured; `POST /api/access/v1/ldap/sync/` or `flotilla ldap sync` syncs at once).
    #[arg(long, env = "FLOTILLA_LDAP_SYNC_INTERVAL", default_value_t = 3600.0)]
    ldap_sync_interval: f64,
}

/// Where the DNS server answers unless told otherwise.
pub const DEFAULT_DNS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 8053);

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    if value.is_finite() && value > 0.0 && value < 1e9 {
        Ok(Duration::from_secs_f64(value))
    } else {
        anyhow::bail!("{flag} must be a positive number of seconds")
    }
}

impl LifecycleOptions {
    /// Checks the options and writes them into `config`.
    pub fn apply(&self, config: &mut ServerConfig) -> anyhow::Result<()> {
        config.heartbeat_grace = seconds(self.heartbeat_grace, "--heartbeat-grace")?;
        config.reconcile.resync_interval = seconds(self.observe_interval, "--observe-interval")?;
        config.inventory_ttl = seconds(self.network_cache, "--network-cache")?;
        config.ldap_sync_interval = seconds(self.ldap_sync_interval, "--ldap-sync-interval")?;
        flotilla_server::dns::DnsZone::new(&self.dns_domain).context("--dns-domain")?;
        config.dns_domain = self.dns_domain.clone();
        config.dns_listen = (!self.no_dns).then(|| self.dns_listen.unwrap_or(DEFAULT_DNS_LISTEN));
        config.dns_required = self.dns_listen.is_some();
        Ok(())
    }

    /// Connects the Route 53 mirror when one is asked for.
    pub async fn connect_mirror(
        &self,
        aws: &AwsAccount,
        config: &mut ServerConfig,
    ) -> anyhow::Result<()> {
        if !self.route53 && self.route53_zone_id.is_none() {
            return Ok(());
        }
        let mirror = Route53Mirror::connect(
            aws.current(),
            &self.dns_domain,
            self.route53_zone_id.clone(),
            self.route53_zone_id.is_none(),
        )
        .await
        .context("--route53")?
        // Only our own names are ever deleted from a zone that may hold others.
        .restrict_to([
            format!("node.{}", self.dns_domain),
            format!("cluster.{}", self.dns_domain),
        ]);
        config.dns_mirror = Some(Mirror(Arc::new(Route53(mirror))));
        Ok(())
    }
}

/// The server's [`ZoneMirror`] over Route 53.
struct Route53(Route53Mirror);

impl ZoneMirror for Route53 {
    fn apply<'a>(&'a self, changes: &'a [RecordChange]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let changes: Vec<MirrorChange> = changes
                .iter()
                .map(|c| match c.kind {
                    ChangeKind::Upsert => MirrorChange::upsert(c.name.clone(), c.ips.clone()),
                    ChangeKind::Delete => MirrorChange::delete(c.name.clone(), c.ips.clone()),
                })
                .collect();
            self.0.apply(&changes).await.map_err(|e| e.to_string())
        })
    }

    fn sync<'a>(
        &'a self,
        records: &'a BTreeMap<String, Vec<Ipv4Addr>>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .full_sync(records)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}
