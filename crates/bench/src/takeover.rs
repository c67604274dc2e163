//! Lease takeover after a SIGKILL (issue #14): three replicas on one PostgreSQL (the test
//! kit's), the holder of the health sweep's lease killed `--kills` times; each time, the
//! time from the kill (the process gone) until a survivor's `/metrics` says it holds the
//! lease. The killed replica is restarted (same id, port and data) before the next kill,
//! and kills are spread over the renewal period, since the takeover time depends on how
//! long before its death the holder last renewed: between lease time − renewal period and
//! the lease time, plus the waiter's retry step.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use flotilla_api::uri;
use flotilla_testkit::{DatabaseKind, MotoAccount, ServerBuilder, ServerProcess};
use serde_json::json;

use crate::report::{Table, Target};
use crate::{Ctx, stats};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many times the holder is killed.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// The replicas' `--lease-time`, in seconds.
    #[arg(long, default_value_t = 15.0)]
    lease_time: f64,
}

const WORK: &str = "health";

async fn holds(api: &flotilla_api::Client) -> bool {
    let Ok((200, body)) = api.get_bytes(uri::METRICS).await else {
        return false;
    };
    let wanted = format!("work=\"{WORK}\"}} 1");
    String::from_utf8_lossy(&body)
        .lines()
        .any(|l| l.starts_with("flotilla_lease_held{") && l.ends_with(&wanted))
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let account = MotoAccount::start().await;
    let database = tokio::task::spawn_blocking(flotilla_testkit::postgres::database).await??;
    let lease = args.lease_time.to_string();
    let builder = |id: &str| {
        ServerBuilder::new(&ctx.bin, account.proxy.endpoint())
            .database(DatabaseKind::Sqlite)
            .access_key_id("AKIABENCH")
            .args(["--database", database.url(), "--replica-id", id])
            .args(["--lease-time", lease.as_str(), "--no-dns"])
            .start_limit(Duration::from_secs(60))
    };
    let first = builder("r0").start().await?;
    let credentials = first.credentials().cloned().context("no admin printed")?;
    let mut servers: Vec<ServerProcess> = vec![first];
    let mut dirs = Vec::new();
    for id in ["r1", "r2"] {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        std::fs::copy(
            servers[0].data_dir().join("secret.key"),
            data.join("secret.key"),
        )?;
        servers.push(builder(id).dir(dir.path()).data_dir(&data).start().await?);
        dirs.push(dir);
    }
    let http = reqwest::Client::new();
    let apis: Vec<flotilla_api::Client> = servers
        .iter()
        .map(|s| {
            flotilla_api::Client::new(
                s.base(),
                credentials.user.clone(),
                credentials.key.clone(),
                http.clone(),
            )
        })
        .collect();
    let renewal = Duration::from_secs_f64(args.lease_time / 3.0);
    let limit = Duration::from_secs_f64(args.lease_time * 4.0 + 30.0);
    let mut samples = Vec::new();
    for kill in 0..args.kills {
        // The holder, once the lease has settled.
        let started = Instant::now();
        let holder = loop {
            let mut holder = None;
            for (index, api) in apis.iter().enumerate() {
                if holds(api).await {
                    holder = Some(index);
                }
            }
            if let Some(holder) = holder {
                break holder;
            }
            anyhow::ensure!(started.elapsed() < limit, "nobody holds the lease");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Spread the kills over the renewal period.
        let phase = renewal.mul_f64((kill as f64 * 0.37) % 1.0);
        tokio::time::sleep(phase).await;
        servers[holder].kill().await;
        let killed_at = Instant::now();
        let taker = loop {
            let mut taker = None;
            for (index, api) in apis.iter().enumerate() {
                if index != holder && holds(api).await {
                    taker = Some(index);
                }
            }
            if let Some(taker) = taker {
                break taker;
            }
            anyhow::ensure!(killed_at.elapsed() < limit, "no takeover after kill {kill}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let took = killed_at.elapsed().as_secs_f64() * 1000.0;
        eprintln!("kill {kill}: r{holder} killed, r{taker} took over in {took:.0} ms");
        samples.push(took);
        servers[holder].restart().await?;
    }
    let summary = stats::summarize(&samples);
    let mut table = Table::new(
        "Takeover of the health sweep's lease after a SIGKILL of its holder",
        &["lease time", "kills", "p50", "p90", "max", "min"],
    );
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    table.row(vec![
        format!("{} s", args.lease_time),
        summary.count.to_string(),
        format!("{:.0} ms", summary.p50_ms),
        format!("{:.0} ms", summary.p90_ms),
        format!("{:.0} ms", summary.max_ms),
        format!("{min:.0} ms"),
    ]);
    let targets = vec![Target {
        name: "takeover after SIGKILL".into(),
        target: format!("within the lease time ({} s)", args.lease_time),
        value: format!("max {:.0} ms", summary.max_ms),
        met: Some(summary.max_ms <= args.lease_time * 1000.0),
    }];
    let report = ctx.report(
        "takeover",
        "Lease takeover after SIGKILL (three replicas on PostgreSQL)",
        json!({"kills": args.kills, "lease_time_s": args.lease_time, "replicas": 3, "work": WORK}),
        targets,
        vec![table],
        json!({"takeover_ms": samples, "summary": summary}),
    );
    for mut server in servers {
        server.stop(Duration::from_secs(10)).await;
    }
    drop(dirs);
    ctx.write(&report)
}
