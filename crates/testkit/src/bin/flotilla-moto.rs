//! `flotilla-moto`: runs the pinned moto emulator on a free loopback port for demos and
//! manual testing, with the same install logic the tests use (one mechanism, one pin).
//! Prints `endpoint=http://127.0.0.1:PORT` and serves until SIGINT/SIGTERM; moto stops with it.
//!
//! With `--agents PATH_TO_FLOTILLA`, it also plays the machines: for every instance launched
//! in us-east-1 it starts a real `flotilla agent` (the testkit's instance runner), configured
//! from the instance's user data, so a server's nodes register as they would on EC2. With
//! `--docker` as well, every instance is an emulated host with its own network namespace,
//! private IP, hostname and Docker engine, and its agent runs inside it (the runner's docker
//! mode; needs root, `dockerd` and busybox-static).

use std::path::PathBuf;
use std::time::Duration;

use flotilla_testkit::{InstanceRunner, Moto, RunnerConfig};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut agents: Option<PathBuf> = None;
    let mut docker = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--docker" => docker = true,
            "--agents" => {
                agents = Some(
                    args.next()
                        .map(PathBuf::from)
                        .ok_or_else(|| anyhow::anyhow!("--agents needs the flotilla binary"))?,
                )
            }
            other => anyhow::bail!(
                "unknown argument {other}; usage: flotilla-moto [--agents PATH_TO_FLOTILLA [--docker]]"
            ),
        }
    }
    if docker && agents.is_none() {
        anyhow::bail!("--docker needs --agents PATH_TO_FLOTILLA");
    }
    let moto = Moto::start_dedicated();
    println!("endpoint={}", moto.endpoint());
    let runner = match agents {
        Some(binary) => {
            let mut config = RunnerConfig::new(moto.endpoint(), binary);
            config.heartbeat = Duration::from_secs(2);
            config.docker = docker;
            Some(InstanceRunner::start(config).await)
        }
        None => None,
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    drop(runner);
    drop(moto);
    Ok(())
}
