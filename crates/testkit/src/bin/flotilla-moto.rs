//! `flotilla-moto`: runs the pinned moto emulator on a free loopback port for demos and
//! manual testing, with the same install logic the tests use (one mechanism, one pin).
//! Prints `endpoint=http://127.0.0.1:PORT` and serves until SIGINT/SIGTERM; moto stops with it.

use flotilla_testkit::Moto;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let moto = Moto::start_dedicated();
    println!("endpoint={}", moto.endpoint());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    drop(moto);
    Ok(())
}
