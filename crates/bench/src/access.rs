//! Issue #15's benchmarks: what authorization costs the API, and sign-in through LDAP.
//!
//! * `GET node/` pages of 25 with 10,000 nodes in the store, requested alternately with the
//!   administrator's key (no grants looked at) and a `view` team member's key (the page cut
//!   in SQL by the member's grants): p50/p99 of each and the ratio. The 10,000 are
//!   bring-your-own nodes the member may not see, plus a cluster of its organization
//!   deployed on moto (`--node-ready running`): both pages render 25 rows, and the member's
//!   query must pass over the 10,000 it may not see.
//! * Sign-in latency: a request with a directory user's password through a real OpenLDAP
//!   (`flotilla_testkit::slapd`, LDAPS; each sign-in is a search, a bind as the user and the
//!   user's group sync), against a local user's argon2 password and an API key.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use flotilla_api::client::new_node_cluster;
use flotilla_api::uri;
use flotilla_testkit::slapd::{self, Slapd};
use flotilla_testkit::{FaultProxy, Moto};
use rand::Rng as _;
use reqwest::Method;
use serde_json::json;

use crate::Ctx;
use crate::report::{Table, Target, ms};
use crate::server::ServerProcess;
use crate::stats::{Summary, summarize};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Nodes in the store the member may not see (bring-your-own).
    #[arg(long, default_value_t = 10_000)]
    nodes: u32,
    /// Nodes of the organization's cluster, which the member sees (deployed on moto).
    #[arg(long, default_value_t = 100)]
    member_nodes: u32,
    /// Requests per key for the pages.
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Sign-ins per kind.
    #[arg(long, default_value_t = 100)]
    sign_ins: usize,
}

async fn timed(client: &flotilla_api::Client, path: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (status, body) = client.get_bytes(path).await?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    if status != 200 {
        bail!("{path}: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(elapsed)
}

async fn ok(
    server: &ServerProcess,
    method: Method,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let (status, answer) = server.call(method, path, Some(body)).await?;
    if !(200..300).contains(&status) {
        bail!("{path}: {status} {answer}");
    }
    Ok(answer)
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let moto = tokio::task::spawn_blocking(Moto::shared).await?;
    let fault = FaultProxy::start(&moto.endpoint(), Some(Moto::new_account_id())).await;
    let server = ServerProcess::start(
        &ctx.bin,
        &fault.endpoint(),
        // The seeded nodes do not heartbeat: keep them Deployed for the whole run.
        &[
            "--node-ready".into(),
            "running".into(),
            "--heartbeat-grace".into(),
            "86400".into(),
        ],
    )
    .await?;
    ok(
        &server,
        Method::POST,
        &uri::orgs(),
        json!({"name": "bench"}),
    )
    .await?;
    let created = ok(
        &server,
        Method::POST,
        &uri::users(),
        json!({"username": "member"}),
    )
    .await?;
    let member_key = created["api_key"]["key"]
        .as_str()
        .context("member key")?
        .to_owned();
    ok(
        &server,
        Method::POST,
        &uri::teams("bench"),
        json!({"name": "viewers", "members": ["member"]}),
    )
    .await?;
    ok(
        &server,
        Method::POST,
        &uri::grants("bench"),
        json!({"team": "viewers", "role": "view"}),
    )
    .await?;
    // 10,000 nodes in the store the member may not see: bring-your-own nodes (fast to seed;
    // the administrator's only), and a cluster of the organization deployed on moto (moto
    // cannot describe thousands of instances within the SDK's timeout on this machine).
    let started = Instant::now();
    let (agents, _) = crate::agents::register_byo_many(&server, args.nodes as usize, 32).await?;
    drop(agents);
    let cluster = ok(
        &server,
        Method::POST,
        &uri::node_clusters_in("bench"),
        new_node_cluster("visible", args.member_nodes, "us-east-1", "t3.micro"),
    )
    .await?;
    let uuid = cluster["uuid"].as_str().context("uuid")?.to_owned();
    let (status, answer) = server
        .call(Method::POST, &uri::node_cluster_deploy(&uuid), None)
        .await?;
    if status != 202 {
        bail!("deploy of {uuid}: {status} {answer}");
    }
    loop {
        let (_, cluster) = server
            .call(Method::GET, &uri::node_cluster(&uuid), None)
            .await?;
        if cluster["state"] == "Deployed" {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!("cluster {uuid} never deployed: {cluster}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "{} + {} nodes in {:.1} s",
        args.nodes,
        args.member_nodes,
        started.elapsed().as_secs_f64()
    );
    let admin = server.api().clone();
    let member = admin.with_credentials("member", member_key.clone());
    let mut totals = Vec::new();
    for client in [&admin, &member] {
        let (_, body) = client
            .get_bytes(&format!("{}?limit=1", uri::nodes()))
            .await?;
        let listed: serde_json::Value = serde_json::from_slice(&body)?;
        totals.push(listed["meta"]["total_count"].as_u64().unwrap_or(0) as usize);
    }
    let expected = [
        args.nodes as usize + args.member_nodes as usize,
        args.member_nodes as usize,
    ];
    if totals != expected {
        bail!("the administrator and the member list {totals:?} nodes, not {expected:?}");
    }
    // Alternate the two keys request by request, so both see the same machine load; each
    // asks for random pages of its own list.
    let mut rng = rand::rng();
    let (mut admin_ms, mut member_ms) = (Vec::new(), Vec::new());
    for i in 0..args.requests + 10 {
        let mut page = |total: usize| {
            let offset = if i % 2 == 0 {
                0
            } else {
                rng.random_range(0..total - 25)
            };
            format!("{}?limit=25&offset={offset}", uri::nodes())
        };
        let admin_path = page(totals[0]);
        let member_path = page(totals[1]);
        let a = timed(&admin, &admin_path).await?;
        let m = timed(&member, &member_path).await?;
        if i >= 10 {
            admin_ms.push(a);
            member_ms.push(m);
        }
    }
    let admin_page = summarize(&admin_ms);
    let member_page = summarize(&member_ms);
    let ratio = member_page.p99_ms / admin_page.p99_ms.max(1e-9);
    eprintln!("page of 25: admin {admin_page:?}, member {member_page:?}, p99 ratio {ratio:.2}");

    // Sign-in latency.
    let directory = tokio::task::spawn_blocking(Slapd::start).await??;
    let alice = directory.add_user("alice", "Alice Smith", "alice-password-1")?;
    directory.add_group("ops", &[&alice])?;
    ok(
        &server,
        Method::POST,
        &uri::teams("bench"),
        json!({"name": "ops", "ldap_group_dn": format!("cn=ops,{}", slapd::GROUPS)}),
    )
    .await?;
    ok(
        &server,
        Method::POST,
        &uri::users(),
        json!({"username": "local", "password": "local-password-1"}),
    )
    .await?;
    ok(
        &server,
        Method::PUT,
        &uri::ldap(),
        json!({"servers": [{"url": directory.ldaps_url(), "tls": "ldaps", "ca_pem": directory.ca_pem(),
                "bind_dn": slapd::ADMIN_DN, "bind_password": slapd::ADMIN_PASSWORD}],
            "searches": [{"base_dn": slapd::PEOPLE, "scope": "sub", "filter": "(objectClass=inetOrgPerson)",
                "username_attribute": "uid", "full_name_attribute": "cn"}]}),
    )
    .await?;
    let path = format!("{}?limit=1", uri::node_clusters());
    let kinds = [
        (
            "API key (member)",
            admin.with_credentials("member", member_key.clone()),
        ),
        (
            "local password (argon2)",
            admin.with_credentials("local", "local-password-1"),
        ),
        (
            "LDAP password (LDAPS: search, bind, group sync)",
            admin.with_credentials("alice", "alice-password-1"),
        ),
    ];
    let mut sign_ins: Vec<(&str, Summary)> = Vec::new();
    for (name, client) in &kinds {
        timed(client, &path).await?;
        let mut samples = Vec::new();
        for _ in 0..args.sign_ins {
            samples.push(timed(client, &path).await?);
        }
        let summary = summarize(&samples);
        eprintln!("{name}: {summary:?}");
        sign_ins.push((name, summary));
    }
    drop(directory);
    server.stop().await;

    let mut pages = Table::new(
        &format!(
            "GET node/ page of 25 with {} nodes in the store ({} bring-your-own, the administrator's only; {} in a cluster of the member's organization), keys alternated request by request",
            args.nodes + args.member_nodes,
            args.nodes,
            args.member_nodes
        ),
        &[
            "key", "requests", "p50 (ms)", "p90 (ms)", "p99 (ms)", "max (ms)",
        ],
    );
    for (name, s) in [
        ("administrator", &admin_page),
        ("view member of the team", &member_page),
    ] {
        pages.row(vec![
            name.into(),
            s.count.to_string(),
            ms(s.p50_ms),
            ms(s.p90_ms),
            ms(s.p99_ms),
            ms(s.max_ms),
        ]);
    }
    pages.row(vec![
        "member / administrator, p99".into(),
        String::new(),
        format!("{:.2}", member_page.p50_ms / admin_page.p50_ms.max(1e-9)),
        String::new(),
        format!("{ratio:.2}"),
        String::new(),
    ]);
    let mut signs = Table::new(
        "Sign-in: one authenticated request (GET nodecluster/?limit=1), sequential",
        &[
            "credential",
            "requests",
            "p50 (ms)",
            "p90 (ms)",
            "p99 (ms)",
            "max (ms)",
        ],
    );
    for (name, s) in &sign_ins {
        signs.row(vec![
            (*name).into(),
            s.count.to_string(),
            ms(s.p50_ms),
            ms(s.p90_ms),
            ms(s.p99_ms),
            ms(s.max_ms),
        ]);
    }
    let targets = vec![Target {
        name: format!(
            "GET node/ page of 25, {} nodes, member vs admin",
            args.nodes
        ),
        target: "p99 ratio < 2".into(),
        value: format!("{ratio:.2}"),
        met: Some(ratio < 2.0),
    }];
    let report = ctx.report(
        "access",
        "6. Access control: authorization's cost, sign-in through LDAP",
        json!({"nodes": args.nodes, "member_nodes": args.member_nodes, "requests": args.requests, "sign_ins": args.sign_ins}),
        targets,
        vec![pages, signs],
        json!({"admin_page": admin_page, "member_page": member_page, "p99_ratio": ratio,
            "sign_ins": sign_ins.iter().map(|(n, s)| json!({"credential": n, "latency": s})).collect::<Vec<_>>()}),
    );
    ctx.write(&report)
}
