//! `GET /metrics` (issue #14's first slice) against a real server on moto: the exposition
//! parses as Prometheus text, its AWS call counts equal what the proxy in front of moto saw,
//! and it counts HTTP requests, reconcile passes, nodes by cluster and state, and finished AWS
//! calls by service, operation, region and outcome with their latency. It needs credentials.

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
    let deployed = samples
        .iter()
        .find(|s| {
            s.metric == "flotilla_nodes"
                && s.labels.get("cluster") == Some(uuid.as_str())
                && s.labels.get("state") == Some("Deployed")
        })
        .expect("nodes by cluster and state");
    assert_eq!(value(deployed), 2.0);

    // Finished calls by service, operation, region and outcome, with their latency: the
    // launch succeeded on EC2, and no operation finished more often than it started (the
    // started counts are read from a later scrape: a call may finish in between).
    let launched = samples
        .iter()
        .find(|s| {
            s.metric == "flotilla_aws_call_seconds_count"
                && s.labels.get("service") == Some("ec2")
                && s.labels.get("operation") == Some("RunInstances")
                && s.labels.get("outcome") == Some("ok")
        })
        .expect("finished launches are observed");
    assert!(value(launched) >= 1.0);
    let region = launched.labels.get("region").expect("a region label");
    assert!(!region.is_empty());
    assert!(
        find(
            &samples,
            "flotilla_aws_budget_requests_per_second",
            ("region", region)
        )
        .is_some_and(|s| value(s) > 0.0),
        "the region's budget rate is shown"
    );
    let mut finished: BTreeMap<String, f64> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.metric == "flotilla_aws_call_seconds_count")
    {
        *finished
            .entry(s.labels.get("operation").unwrap_or_default().to_owned())
            .or_default() += value(s);
    }
    let later = scrape(&server).await;
    for (operation, finished) in &finished {
        let started = find(&later, "flotilla_aws_calls_total", ("operation", operation))
            .map(value)
            .unwrap_or(0.0);
        assert!(
            *finished <= started,
            "{operation}: {finished} finished, {started} started"
        );
    }
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
