//! `GET /metrics` (issue #14's first slice) against a real server on moto: the exposition
//! parses as Prometheus text, its AWS call counts equal what the proxy in front of moto saw,
//! and it counts HTTP requests, reconcile passes and nodes by state. It needs credentials.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_api::uri;
use flotilla_testkit::MotoAccount;
use prometheus_parse::{Sample, Scrape, Value as Metric};

use crate::support::{LIMIT, Server};

async fn scrape(server: &Server) -> Vec<Sample> {
    let (status, body) = server
        .api
        .get_bytes(uri::METRICS)
        .await
        .expect("GET /metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).expect("UTF-8");
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition parses as Prometheus text")
        .samples
}

fn value(sample: &Sample) -> f64 {
    match sample.value {
        Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => v,
        _ => f64::NAN,
    }
}

fn find<'a>(samples: &'a [Sample], metric: &str, label: (&str, &str)) -> Option<&'a Sample> {
    samples
        .iter()
        .find(|s| s.metric == metric && s.labels.get(label.0) == Some(label.1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_server_did() {
    let MotoAccount { proxy, .. } = MotoAccount::start().await;
    let server = Server::start(&proxy.endpoint(), &["--node-ready", "running"]).await;
    let uuid = server.create_and_deploy("metrics", 2).await;
    let started = Instant::now();
    loop {
        let (_, cluster) = server
            .call(reqwest::Method::GET, &uri::node_cluster(&uuid), None)
            .await;
        if cluster["state"] == "Deployed" {
            break;
        }
        assert!(started.elapsed() < LIMIT, "never Deployed: {cluster}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The server's AWS calls, as it counts them, lie between two readings of the proxy's
    // log (an observation may run in between); retries would differ, and there are none.
    let before = proxy.counts_by_action();
    let samples = scrape(&server).await;
    let after = proxy.counts_by_action();
    let counted: BTreeMap<String, f64> = samples
        .iter()
        .filter(|s| s.metric == "flotilla_aws_calls_total")
        .map(|s| {
            (
                s.labels.get("operation").unwrap_or_default().to_owned(),
                value(s),
            )
        })
        .collect();
    assert!(!counted.is_empty(), "AWS calls are counted");
    for (action, seen) in &after {
        let low = before.get(action).copied().unwrap_or(0) as f64;
        let counted = counted.get(action).copied().unwrap_or(0.0);
        assert!(
            low <= counted && counted <= *seen as f64,
            "{action}: the server counted {counted}, the proxy saw {low}..{seen}"
        );
    }
    let deployed = find(&samples, "flotilla_nodes", ("state", "Deployed")).expect("nodes");
    assert_eq!(value(deployed), 2.0);
    let created = samples
        .iter()
        .find(|s| {
            s.metric == "flotilla_http_requests_total"
                && s.labels.get("route") == Some("/api/infra/v1/nodecluster/")
                && s.labels.get("method") == Some("POST")
                && s.labels.get("status") == Some("201")
        })
        .expect("the create is counted");
    assert_eq!(value(created), 1.0);
    let passes: f64 = samples
        .iter()
        .filter(|s| s.metric == "flotilla_reconcile_passes_total")
        .map(value)
        .sum();
    assert!(passes >= 1.0, "reconcile passes are counted");

    // Same rules as every API route: credentials needed.
    let anonymous = reqwest::get(format!("{}{}", server.base, uri::METRICS))
        .await
        .expect("GET");
    assert_eq!(anonymous.status(), 401);
}
