//! `GET /metrics`: the server's metrics in the Prometheus text format (issue #14's first
//! slice), from the maintained `prometheus` crate.
//!
//! Design decisions:
//! * One registry per server ([`Metrics`], held by the app), not the crate's global one: a
//!   test process runs many servers, and each must report only its own.
//! * Counters are bumped where the work happens (the HTTP edge, heartbeats, the swarm
//!   mailbox, reconcile passes). What the store already knows (nodes by state) and what the
//!   cloud counts itself (AWS calls per operation) is read at scrape time, so nothing is
//!   counted twice and a restart starts from the truth.
//! * AWS calls are counted twice over, on purpose: `aws_calls_total` when a call starts
//!   (read from the cloud's own counter at scrape time, so it can be compared with what
//!   AWS saw), and `aws_call_seconds` when it finishes — by service, operation, region and
//!   outcome, with its latency — reported by the engine through [`CallObserver`], together
//!   with throttled attempts and the region's request budget.
//! * Routes are labelled by their template (`/api/infra/v1/node/{uuid}/`), never by the
//!   path, so label cardinality is the route table's size.

use std::collections::BTreeMap;

use flotilla_core::cloud::{CallObserver, FinishedCall};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets of AWS calls, in seconds: AWS answers in tens of milliseconds, and a
/// call that waited for the budget or backed off takes seconds.
const AWS_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric of one server.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
    pub heartbeats: IntCounter,
    pub swarm_tasks_handed: IntCounter,
    pub reconcile_passes: IntCounterVec,
    pub reconcile_seconds: Histogram,
    nodes: IntGaugeVec,
    aws_calls: IntCounterVec,
    aws_call_seconds: HistogramVec,
    aws_throttled: IntCounterVec,
    aws_budget_rate: GaugeVec,
    leases_held: IntGaugeVec,
    leases_lost: IntCounterVec,
    db_connections: IntGaugeVec,
}

/// What `/metrics` reads of this replica at scrape time.
#[derive(Debug, Clone, Default)]
pub struct ReplicaView {
    pub replica: String,
    /// The works whose lease this replica holds.
    pub held: Vec<String>,
    /// Tenures ended by a lost lease since the start.
    pub lost: u64,
    /// The store's pools: (pool, open connections, idle connections).
    pub pools: Vec<(&'static str, u32, u32)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered. Registration of these fixed, distinct names
    /// cannot fail.
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("flotilla".into()), None).unwrap_or_else(|_| Registry::new());
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_seconds = HistogramVec::new(
            HistogramOpts::new("http_request_seconds", "HTTP request latency by route"),
            &["route"],
        )
        .expect("valid metric");
        let heartbeats =
            IntCounter::new("heartbeats_total", "agent heartbeats received").expect("valid metric");
        let swarm_tasks_handed = IntCounter::new(
            "swarm_tasks_handed_total",
            "swarm tasks handed to agents in heartbeat answers",
        )
        .expect("valid metric");
        let reconcile_passes = IntCounterVec::new(
            Opts::new(
                "reconcile_passes_total",
                "node cluster reconcile passes by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let reconcile_seconds = Histogram::with_opts(HistogramOpts::new(
            "reconcile_pass_seconds",
            "duration of a node cluster reconcile pass",
        ))
        .expect("valid metric");
        let nodes = IntGaugeVec::new(
            Opts::new(
                "nodes",
                "nodes that are not Terminated, by cluster (empty: nodes of one's own) and state",
            ),
            &["cluster", "state"],
        )
        .expect("valid metric");
        let aws_calls = IntCounterVec::new(
            Opts::new(
                "aws_calls_total",
                "AWS API calls by operation (retries excluded)",
            ),
            &["operation"],
        )
        .expect("valid metric");
        let aws_call_seconds = HistogramVec::new(
            HistogramOpts::new(
                "aws_call_seconds",
                "finished AWS calls by service, operation, region and outcome, with their \
                 latency (budget waits and retries included)",
            )
            .buckets(AWS_BUCKETS.to_vec()),
            &["service", "operation", "region", "outcome"],
        )
        .expect("valid metric");
        let aws_throttled = IntCounterVec::new(
            Opts::new(
                "aws_throttled_attempts_total",
                "AWS attempts answered with a throttling error",
            ),
            &["service", "operation", "region"],
        )
        .expect("valid metric");
        let aws_budget_rate = GaugeVec::new(
            Opts::new(
                "aws_budget_requests_per_second",
                "the request budget's current rate per region (it shrinks when AWS throttles)",
            ),
            &["region"],
        )
        .expect("valid metric");
        let leases_held = IntGaugeVec::new(
            Opts::new(
                "lease_held",
                "1 for each piece of single-owner work whose lease this replica holds",
            ),
            &["replica", "work"],
        )
        .expect("valid metric");
        let leases_lost = IntCounterVec::new(
            Opts::new(
                "leases_lost_total",
                "tenures this replica ended because its lease was taken over or not renewed",
            ),
            &["replica"],
        )
        .expect("valid metric");
        let db_connections = IntGaugeVec::new(
            Opts::new(
                "db_pool_connections",
                "the store's database connections by pool (reader, writer) and state (idle, in_use)",
            ),
            &["pool", "state"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(leases_held.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(leases_lost.clone()),
            Box::new(db_connections.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_seconds.clone()),
            Box::new(heartbeats.clone()),
            Box::new(swarm_tasks_handed.clone()),
            Box::new(reconcile_passes.clone()),
            Box::new(reconcile_seconds.clone()),
            Box::new(nodes.clone()),
            Box::new(aws_calls.clone()),
            Box::new(aws_call_seconds.clone()),
            Box::new(aws_throttled.clone()),
            Box::new(aws_budget_rate.clone()),
        ] {
            let _ = registry.register(collector);
        }
        Metrics {
            registry,
            http_requests,
            http_seconds,
            heartbeats,
            swarm_tasks_handed,
            reconcile_passes,
            reconcile_seconds,
            nodes,
            aws_calls,
            aws_call_seconds,
            aws_throttled,
            aws_budget_rate,
            leases_held,
            leases_lost,
            db_connections,
        }
    }

    /// Sets the replica's scrape-time values (leases, pools) before [`Metrics::render`].
    pub fn set_replica(&self, view: &ReplicaView) {
        self.leases_held.reset();
        for work in &view.held {
            self.leases_held
                .with_label_values(&[view.replica.as_str(), work.as_str()])
                .set(1);
        }
        let lost = self.leases_lost.with_label_values(&[view.replica.as_str()]);
        if view.lost > lost.get() {
            lost.inc_by(view.lost - lost.get());
        }
        self.db_connections.reset();
        for (pool, open, idle) in &view.pools {
            let idle = i64::from(*idle);
            let in_use = i64::from(*open) - idle;
            self.db_connections
                .with_label_values(&[pool, "idle"])
                .set(idle);
            self.db_connections
                .with_label_values(&[pool, "in_use"])
                .set(in_use.max(0));
        }
    }

    /// The text exposition, with the scrape-time values: `nodes` ((cluster, state) →
    /// count) and the cloud's cumulative AWS calls per operation.
    pub fn render(
        &self,
        nodes: &BTreeMap<(String, String), i64>,
        aws_calls: &BTreeMap<String, u64>,
    ) -> String {
        self.nodes.reset();
        for ((cluster, state), count) in nodes {
            self.nodes
                .with_label_values(&[cluster.as_str(), state.as_str()])
                .set(*count);
        }
        for (operation, total) in aws_calls {
            let counter = self.aws_calls.with_label_values(&[operation.as_str()]);
            let seen = counter.get();
            if *total > seen {
                counter.inc_by(total - seen);
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl CallObserver for Metrics {
    fn finished(&self, call: &FinishedCall<'_>) {
        self.aws_call_seconds
            .with_label_values(&[
                call.service,
                call.operation,
                call.region,
                call.outcome.as_str(),
            ])
            .observe(call.seconds);
        if call.throttled_attempts > 0 {
            self.aws_throttled
                .with_label_values(&[call.service, call.operation, call.region])
                .inc_by(u64::from(call.throttled_attempts));
        }
        self.aws_budget_rate
            .with_label_values(&[call.region])
            .set(call.budget_rate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_the_counters_and_the_scrape_time_values() {
        let metrics = Metrics::new();
        metrics
            .http_requests
            .with_label_values(&["/_ping", "GET", "200"])
            .inc();
        metrics.heartbeats.inc_by(3);
        let nodes = BTreeMap::from([(("c1".to_owned(), "Deployed".to_owned()), 2)]);
        let calls = BTreeMap::from([("RunInstances".to_owned(), 5)]);
        metrics.finished(&FinishedCall {
            service: "ec2",
            operation: "RunInstances",
            region: "us-east-1",
            outcome: flotilla_core::cloud::CallOutcome::Throttled,
            seconds: 0.2,
            throttled_attempts: 2,
            budget_rate: 10.0,
        });
        metrics.set_replica(&ReplicaView {
            replica: "r1".into(),
            held: vec!["cluster:c1".into()],
            lost: 2,
            pools: vec![("writer", 1, 0), ("reader", 3, 2)],
        });
        let text = metrics.render(&nodes, &calls);
        assert!(text.contains("flotilla_heartbeats_total 3"), "{text}");
        assert!(
            text.contains("flotilla_lease_held{replica=\"r1\",work=\"cluster:c1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_leases_lost_total{replica=\"r1\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_db_pool_connections{pool=\"writer\",state=\"in_use\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_db_pool_connections{pool=\"reader\",state=\"idle\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_nodes{cluster=\"c1\",state=\"Deployed\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "flotilla_aws_call_seconds_count{operation=\"RunInstances\",outcome=\"throttled\",region=\"us-east-1\",service=\"ec2\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("flotilla_aws_throttled_attempts_total{operation=\"RunInstances\",region=\"us-east-1\",service=\"ec2\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_aws_budget_requests_per_second{region=\"us-east-1\"} 10"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_aws_calls_total{operation=\"RunInstances\"} 5"),
            "{text}"
        );
        // Cumulative counts are not counted twice.
        let text = metrics.render(&nodes, &calls);
        assert!(
            text.contains("flotilla_aws_calls_total{operation=\"RunInstances\"} 5"),
            "{text}"
        );
    }
}
