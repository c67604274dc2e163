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
//! * Routes are labelled by their template (`/api/infra/v1/node/{uuid}/`), never by the
//!   path, so label cardinality is the route table's size.

use std::collections::BTreeMap;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

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
        let nodes = IntGaugeVec::new(Opts::new("nodes", "nodes by state"), &["state"])
            .expect("valid metric");
        let aws_calls = IntCounterVec::new(
            Opts::new(
                "aws_calls_total",
                "AWS API calls by operation (retries excluded)",
            ),
            &["operation"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_seconds.clone()),
            Box::new(heartbeats.clone()),
            Box::new(swarm_tasks_handed.clone()),
            Box::new(reconcile_passes.clone()),
            Box::new(reconcile_seconds.clone()),
            Box::new(nodes.clone()),
            Box::new(aws_calls.clone()),
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
        }
    }

    /// The text exposition, with the scrape-time values: `nodes` (state → count) and the
    /// cloud's cumulative AWS calls per operation.
    pub fn render(
        &self,
        nodes: &BTreeMap<String, i64>,
        aws_calls: &BTreeMap<String, u64>,
    ) -> String {
        self.nodes.reset();
        for (state, count) in nodes {
            self.nodes.with_label_values(&[state.as_str()]).set(*count);
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
        let nodes = BTreeMap::from([("Deployed".to_owned(), 2)]);
        let calls = BTreeMap::from([("RunInstances".to_owned(), 5)]);
        let text = metrics.render(&nodes, &calls);
        assert!(text.contains("flotilla_heartbeats_total 3"), "{text}");
        assert!(
            text.contains("flotilla_nodes{state=\"Deployed\"} 2"),
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
