//! `flotilla-bench`: the benchmarks of issue #6 against the real `flotilla server` binary,
//! moto (through the testkit `FaultProxy`) and in-process simulated agents. Each subcommand
//! writes `bench/results/<name>.json` and regenerates `bench/RESULTS.md`; see
//! `bench/README.md` for the one command per benchmark.

mod access;
mod agents;
mod api;
mod awsproxy;
mod fleet;
mod pg;
mod provisioning;
mod report;
mod scale;
mod server;
mod stats;
mod steady;
mod swarm;
mod sys;
mod takeover;
mod ws;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Benchmarks of the Flotilla control plane (bench/README.md)")]
struct Cli {
    /// The `flotilla` binary to measure (default: the `bench-fast` build in the target
    /// directory, else the debug one).
    #[arg(long, global = true, env = "FLOTILLA_BENCH_BIN")]
    flotilla_bin: Option<PathBuf>,
    /// Where RESULTS.md and results/ go.
    #[arg(long, global = true, default_value_os_t = default_bench_dir())]
    bench_dir: PathBuf,
    /// The cargo profile that built `--flotilla-bin`, when its directory does not say.
    #[arg(long, global = true)]
    build_profile: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Item 1: create+deploy, scale and rm through moto at fixed AWS latencies.
    Provisioning(provisioning::Args),
    /// Item 2: M simulated agents registering and heartbeating against one server.
    Scale(scale::Args),
    /// Item 3: API latency with 10,000 nodes in the store; events fan-out during a deploy.
    Api(api::Args),
    /// Item 4: AWS calls per minute of idle reconcilers.
    Steady(steady::Args),
    /// Swarms of real Docker engines: create → Deployed, a worker drained away, memory
    /// per emulated host (needs root, dockerd and busybox-static).
    Swarm(swarm::Args),
    /// Lease takeover after a SIGKILL: three replicas on one PostgreSQL.
    Takeover(takeover::Args),
    /// Issue #15: `GET node/` with a team member's key against the admin's; LDAP sign-in.
    Access(access::Args),
    /// Regenerates RESULTS.md from the JSON results.
    Report,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn default_bench_dir() -> PathBuf {
    repo_root().join("bench")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The measured binary, the cargo profile that built it, and how it is run.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub bin: PathBuf,
    pub profile: String,
    pub bench_dir: PathBuf,
}

impl Ctx {
    /// The common part of every report.
    pub fn report(
        &self,
        benchmark: &str,
        title: &str,
        settings: Value,
        targets: Vec<report::Target>,
        tables: Vec<report::Table>,
        results: Value,
    ) -> report::Report {
        let args: Vec<String> = std::env::args().collect();
        let mut command_line = String::new();
        if let Ok(bin) = std::env::var("FLOTILLA_BENCH_BIN") {
            command_line.push_str(&format!("FLOTILLA_BENCH_BIN={bin} "));
        }
        command_line.push_str(&args.join(" "));
        report::Report {
            benchmark: benchmark.into(),
            title: title.into(),
            finished_at: utc_now(),
            command_line,
            build_profile: self.profile.clone(),
            server_binary: self.bin.display().to_string(),
            machine: json!(sys::machine()),
            versions: json!(sys::versions(&repo_root())),
            settings,
            targets,
            tables,
            results,
        }
    }

    pub fn write(&self, report: &report::Report) -> anyhow::Result<()> {
        let path = report::write(&self.bench_dir, report)?;
        eprintln!(
            "wrote {} and {}",
            path.display(),
            self.bench_dir.join("RESULTS.md").display()
        );
        Ok(())
    }
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn find_bin(explicit: Option<PathBuf>) -> anyhow::Result<(PathBuf, String)> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(bin) => vec![bin],
        None => vec![
            target_dir().join("bench-fast/flotilla"),
            target_dir().join("release/flotilla"),
            target_dir().join("debug/flotilla"),
        ],
    };
    for bin in candidates {
        if bin.is_file() {
            let bin = bin.canonicalize()?;
            let profile = bin
                .parent()
                .and_then(Path::file_name)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| "unknown".into());
            return Ok((bin, profile));
        }
    }
    anyhow::bail!(
        "no flotilla binary: build it with `cargo build --profile bench-fast -p flotilla` or pass --flotilla-bin"
    )
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // reqwest is built without a TLS provider here; only loopback HTTP is used, but a client
    // cannot be built without one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if let Command::Report = cli.command {
        return report::regenerate(&cli.bench_dir);
    }
    let (bin, found_profile) = find_bin(cli.flotilla_bin)?;
    let profile = cli.build_profile.unwrap_or(found_profile);
    let nofile = sys::raise_nofile(server::SERVER_NOFILE);
    eprintln!(
        "measuring {} (profile {profile}); open-file limit {nofile}",
        bin.display()
    );
    let ctx = Ctx {
        bin,
        profile,
        bench_dir: cli.bench_dir,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Provisioning(args) => provisioning::run(&ctx, args).await,
            Command::Scale(args) => scale::run(&ctx, args).await,
            Command::Api(args) => api::run(&ctx, args).await,
            Command::Access(args) => access::run(&ctx, args).await,
            Command::Steady(args) => steady::run(&ctx, args).await,
            Command::Swarm(args) => swarm::run(&ctx, args).await,
            Command::Takeover(args) => takeover::run(&ctx, args).await,
            Command::Report => Ok(()),
        }
    })
}
