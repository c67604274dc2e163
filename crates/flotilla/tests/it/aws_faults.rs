//! AWS faults and the request budget (issue #5, items 2 and 3), against the real `flotilla
//! server` on moto through the fault proxy.
//!
//! * Seeded 20 % throttling and 5 % internal errors on every call: create-and-deploy 6,
//!   scale 6→9, 9→4, node rm and cluster rm each converge, with each network resource created
//!   once and 9 instances launched in all (no duplicate) and nothing left behind (no orphan).
//! * `InsufficientInstanceCapacity` in one AZ: the 6 nodes land 3/3 in the two others;
//!   once the AZ recovers, the next scale (6→9) restores the balance 3/3/3.
//! * Eventual consistency (a new resource hidden from describes for 2 s): the same
//!   operations create nothing twice.
//! * Keys revoked mid-deploy (the proxy answers `AuthFailure` to every call signed with
//!   them): the action fails with a reason naming the credentials; linking good keys
//!   through `PUT provider/aws/credentials/` and retrying the action finishes the deploy.
//! * 20 clusters deployed at once never exceed the configured per-account-and-region
//!   request budget (`FLOTILLA_AWS_REQUESTS_PER_SECOND`, `FLOTILLA_AWS_BURST`), measured
//!   from the proxy's arrival times; a storm of `RequestLimitExceeded` is met with
//!   back-off: the attempt rate stays far below the budget and falls during the storm, and
//!   everything converges once the storm ends.
//!
//! ```text
//! cargo test -p flotilla --test it aws_faults -- --nocapture
//! ```

use std::time::{Duration, Instant};

use flotilla_testkit::{CallRecord, Fault, Rule};
use serde_json::json;

use crate::ops::{self, ACCESS_KEY, CONVERGE_LIMIT, Expect, Harness};

/// Runs the issue's five operations in sequence on one server, checking after each.
async fn five_operations(h: &Harness, what: &str) {
    let cluster = h.create_cluster("faults", 6).await;
    let steps: [(&str, Option<usize>); 5] = [
        ("create-and-deploy 6", Some(6)),
        ("scale 6→9", Some(9)),
        ("scale 9→4", Some(4)),
        ("node rm", Some(3)),
        ("cluster rm", None),
    ];
    for (step, nodes) in steps {
        let started = Instant::now();
        let action = match step {
            "create-and-deploy 6" => h.deploy(&cluster).await,
            "scale 6→9" => h.scale(&cluster, 9).await,
            "scale 9→4" => h.scale(&cluster, 4).await,
            "node rm" => {
                let node = h
                    .nodes_of(&cluster)
                    .await
                    .iter()
                    .find(|n| n["state"] == "Deployed")
                    .and_then(|n| n["resource_uri"].as_str().map(str::to_owned))
                    .expect("a deployed node");
                h.remove(&node).await
            }
            _ => h.remove(&cluster).await,
        };
        h.wait_success(&action, &format!("{what}: {step}")).await;
        let expect = Expect {
            cluster: cluster.clone(),
            nodes,
            action,
        };
        let problems = h.check(&expect).await;
        assert!(
            problems.is_empty(),
            "{what}: {step}: {problems:#?}\n{}",
            h.logs()
        );
        eprintln!("{what}: {step} converged in {:.1?}", started.elapsed());
    }
}

/// Successful (forwarded, 200) calls of `action`.
fn done(h: &Harness, action: &str) -> usize {
    h.proxy
        .calls()
        .iter()
        .filter(|c| c.action == action && c.status == 200)
        .count()
}

/// Each network resource was created once, and 9 instances were launched in all.
async fn nothing_created_twice(h: &Harness, what: &str) {
    for (action, want) in [
        ("CreateVpc", 1),
        ("CreateInternetGateway", 1),
        ("CreateRouteTable", 1),
        ("CreateSecurityGroup", 1),
        ("CreateSubnet", 3),
    ] {
        assert_eq!(
            done(h, action),
            want,
            "{what}: {action} succeeded {} times",
            done(h, action)
        );
    }
    let launched = ops::all_instances(&h.ec2().await).await;
    assert_eq!(
        launched, 9,
        "{what}: {launched} instances launched, want 6 + 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_internal_errors_converge_without_duplicates() {
    let h = Harness::start(&[]).await;
    h.proxy.set_random_faults(0x5eed_0005, 0.20, 0.05);
    five_operations(&h, "20% throttling + 5% 500s").await;
    let faults = h
        .proxy
        .calls()
        .iter()
        .filter(|c| c.injected.is_some())
        .count();
    eprintln!(
        "20% throttling + 5% 500s: {faults} of {} calls failed by the proxy",
        h.proxy.total()
    );
    assert!(faults > 10, "the faults were injected: {faults}");
    nothing_created_twice(&h, "20% throttling + 5% 500s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_error_in_one_az_moves_nodes_and_the_next_scale_rebalances() {
    let h = Harness::start(&[]).await;
    h.proxy.add_rule(
        Rule::action("RunInstances")
            .in_az("us-east-1a")
            .skip_dry_run()
            .fault(Fault::InsufficientCapacity),
    );
    let cluster = h.create_cluster("capacity", 6).await;
    let action = h.deploy(&cluster).await;
    h.wait_success(&action, "deploy with us-east-1a full").await;
    let ec2 = h.ec2().await;
    let per_zone = |running: Vec<ops::Running>| {
        let mut counts = std::collections::BTreeMap::new();
        for zone in ops::ZONES {
            counts.insert(zone.to_owned(), 0);
        }
        for instance in running {
            *counts.entry(instance.zone).or_insert(0) += 1;
        }
        counts.into_values().collect::<Vec<usize>>()
    };
    assert_eq!(
        per_zone(ops::running_instances(&ec2).await),
        vec![0, 3, 3],
        "the nodes land in the other AZs"
    );
    let cluster_now = h.get(&cluster).await;
    assert_eq!(cluster_now["state"], "Deployed", "{cluster_now}");
    assert!(
        h.proxy
            .calls()
            .iter()
            .any(|c| c.injected.as_deref() == Some("InsufficientInstanceCapacity")),
        "the capacity error was injected"
    );

    // The AZ recovers: the next scale fills it first.
    h.proxy.clear_rules();
    let action = h.scale(&cluster, 9).await;
    h.wait_success(&action, "scale 6→9 after the AZ recovered")
        .await;
    assert_eq!(per_zone(ops::running_instances(&ec2).await), vec![3, 3, 3]);
    let problems = h
        .check(&Expect {
            cluster,
            nodes: Some(9),
            action,
        })
        .await;
    assert!(problems.is_empty(), "{problems:#?}\n{}", h.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_consistency_creates_nothing_twice() {
    let h = Harness::start(&[]).await;
    h.proxy.set_eventual_consistency(Duration::from_secs(2));
    five_operations(&h, "eventual consistency 2 s").await;
    nothing_created_twice(&h, "eventual consistency 2 s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_keys_fail_the_action_clearly_and_good_keys_resume_it() {
    let h = Harness::start(&[]).await;
    let cluster = h.create_cluster("keys", 6).await;
    let action = h.deploy(&cluster).await;
    // Mid-deploy: the keys the server started with stop working.
    let started = Instant::now();
    while h.proxy.total() < 8 {
        assert!(
            started.elapsed() < CONVERGE_LIMIT,
            "the deploy never started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    h.proxy.add_rule(
        Rule::any()
            .with_access_key(ACCESS_KEY)
            .fault(Fault::AuthFailure),
    );
    let failed = h.wait_action(&action, CONVERGE_LIMIT).await;
    assert_eq!(failed["state"], "Failed", "{failed:#}");
    let logs = failed["logs"].as_str().unwrap_or("");
    let reason = logs
        .lines()
        .rev()
        .find(|l| l.starts_with("Failed:"))
        .unwrap_or_else(|| panic!("no Failed: line in {logs}"));
    assert!(
        reason.contains("AuthFailure") && reason.to_lowercase().contains("credentials"),
        "a clear reason: {reason}"
    );
    eprintln!("revoked keys: {reason}");
    assert_eq!(failed["can_be_retried"], true, "{failed:#}");

    // Good keys linked through the API; the retried action finishes the deploy.
    let (status, linked, _) = h
        .call(
            reqwest::Method::PUT,
            &flotilla_api::uri::provider_credentials("aws"),
            Some(json!({"access_key_id": "AKIAE2EGOODKEYS",
                "secret_access_key": "good/Secret+Key0123456789"})),
        )
        .await;
    assert!((200..300).contains(&status), "{status} {linked}");
    let mark = h.proxy.total();
    let (status, retried, _) = h
        .call(reqwest::Method::POST, &format!("{action}retry/"), None)
        .await;
    assert!((200..300).contains(&status), "{status} {retried}");
    h.wait_success(&action, "the retried deploy").await;
    let problems = h
        .check(&Expect {
            cluster,
            nodes: Some(6),
            action,
        })
        .await;
    assert!(problems.is_empty(), "{problems:#?}\n{}", h.logs());
    let later: Vec<CallRecord> = h.proxy.calls().into_iter().skip(mark).collect();
    assert!(
        later.iter().all(|c| c.access_key == "AKIAE2EGOODKEYS"),
        "after the link only the new keys are used"
    );
}

/// The most calls seen in any window versus what the bucket allows:
/// `(calls, allowed, window)` of the worst window.
fn worst_window(calls: &[CallRecord], rate: f64, burst: f64) -> (usize, f64, Duration) {
    let mut times: Vec<Instant> = calls.iter().map(|c| c.at).collect();
    times.sort();
    let mut worst = (0, f64::MAX, Duration::ZERO);
    let mut worst_excess = f64::MIN;
    for i in 0..times.len() {
        for j in i..times.len() {
            let window = times[j] - times[i];
            let count = j - i + 1;
            let allowed = burst + rate * window.as_secs_f64();
            if count as f64 - allowed > worst_excess {
                worst_excess = count as f64 - allowed;
                worst = (count, allowed, window);
            }
        }
    }
    worst
}

/// Calls per second over `[from, to)`.
fn rate(calls: &[CallRecord], from: Instant, to: Instant) -> f64 {
    let n = calls.iter().filter(|c| c.at >= from && c.at < to).count();
    n as f64 / (to - from).as_secs_f64().max(0.001)
}

const RATE: f64 = 10.0;
const BURST: u32 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clusters_stay_within_the_request_budget() {
    let rate_text = RATE.to_string();
    let burst_text = BURST.to_string();
    let h = Harness::start(&[
        ("FLOTILLA_AWS_REQUESTS_PER_SECOND", &rate_text),
        ("FLOTILLA_AWS_BURST", &burst_text),
    ])
    .await;
    let mut clusters = Vec::new();
    for i in 0..20 {
        clusters.push(h.create_cluster(&format!("budget{i}"), 1).await);
    }
    h.proxy.clear_log();
    let started = Instant::now();
    let actions = futures::future::join_all(clusters.iter().map(|c| h.deploy(c))).await;
    for action in &actions {
        let done = h.wait_action(action, Duration::from_secs(240)).await;
        assert_eq!(done["state"], "Success", "{done:#}");
    }
    let elapsed = started.elapsed();
    let calls = h.proxy.calls();
    let (count, allowed, window) = worst_window(&calls, RATE, f64::from(BURST));
    let per_second = calls.len() as f64 / elapsed.as_secs_f64();
    eprintln!(
        "20 clusters: {} AWS calls in {elapsed:.1?} ({per_second:.1}/s average); budget \
         {RATE}/s, burst {BURST}; the fullest window held {count} calls in {window:.2?} \
         (the bucket allows {allowed:.1})",
        calls.len()
    );
    // One call of slack: the proxy stamps arrivals, a little after the bucket released them.
    assert!(
        count as f64 <= allowed + 1.0,
        "{count} calls in {window:?}, the budget allows {allowed:.1}"
    );
    let running = ops::running_instances(&h.ec2().await).await;
    assert_eq!(running.len(), 20, "one node per cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_storm_backs_off_instead_of_amplifying() {
    let rate_text = RATE.to_string();
    let burst_text = BURST.to_string();
    let h = Harness::start(&[
        ("FLOTILLA_AWS_REQUESTS_PER_SECOND", &rate_text),
        ("FLOTILLA_AWS_BURST", &burst_text),
    ])
    .await;
    let mut clusters = Vec::new();
    for i in 0..5 {
        clusters.push(h.create_cluster(&format!("storm{i}"), 1).await);
    }
    // Every call is throttled for 20 s.
    h.proxy.add_rule(Rule::any().fault(Fault::Throttle));
    h.proxy.clear_log();
    let storm = Instant::now();
    let actions = futures::future::join_all(clusters.iter().map(|c| h.deploy(c))).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let end = Instant::now();
    let during: Vec<CallRecord> = h.proxy.calls();
    h.proxy.clear_rules();
    let first = rate(&during, storm, storm + Duration::from_secs(5));
    let last = rate(&during, storm + Duration::from_secs(10), end);
    let overall = rate(&during, storm, end);
    eprintln!(
        "storm: {} attempts in {:.1?} ({overall:.2}/s; first 5 s {first:.2}/s, last 10 s \
         {last:.2}/s; budget {RATE}/s)",
        during.len(),
        end - storm,
    );
    assert!(
        during
            .iter()
            .all(|c| c.injected.as_deref() == Some("RequestLimitExceeded")),
        "every attempt in the storm was throttled"
    );
    // Back-off: far below what the budget alone would allow, and slowing down.
    assert!(
        overall < RATE / 2.0,
        "{overall:.2} attempts/s under throttling: no back-off"
    );
    assert!(
        last < first,
        "the attempt rate rises during the storm: {first:.2}/s then {last:.2}/s"
    );
    // The storm ends: everything converges, with the retried actions if they failed.
    for (action, cluster) in actions.iter().zip(&clusters) {
        let mut done = h.wait_action(action, CONVERGE_LIMIT).await;
        if done["state"] == "Failed" {
            let (status, body, _) = h
                .call(reqwest::Method::POST, &format!("{action}retry/"), None)
                .await;
            assert!((200..300).contains(&status), "{status} {body}");
            done = h.wait_action(action, CONVERGE_LIMIT).await;
        }
        assert_eq!(done["state"], "Success", "{cluster}: {done:#}");
    }
    let running = ops::running_instances(&h.ec2().await).await;
    assert_eq!(running.len(), 5, "one node per cluster");
}
