//! Tools the tests install once per machine (moto, the docker-cloud CLI, schemathesis) live in
//! `~/.cache/flotilla`. Several test binaries may start at once, so installing is guarded by
//! a file lock, and whether to install is asked again once the lock is held.

use std::fs::{self, OpenOptions};
use std::path::PathBuf;

/// `~/.cache/flotilla`, created if missing.
pub fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME must be set to locate ~/.cache/flotilla");
    let cache = PathBuf::from(home).join(".cache/flotilla");
    fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("cannot create {cache:?}: {e}"));
    cache
}

/// Runs `install` unless `ready()` holds, under the cross-process lock `<name>.lock`.
pub fn install_once(name: &str, ready: impl Fn() -> bool, install: impl FnOnce()) {
    if ready() {
        return;
    }
    let lock_path = cache_dir().join(format!("{name}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open {lock_path:?}: {e}"));
    // Blocks while another test binary installs; released when `lock` drops.
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {lock_path:?}: {e}"));
    if !ready() {
        install();
    }
}

/// The schemathesis version the fuzz tests install and expect (an OpenAPI fuzzer, PyPI).
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// The `schemathesis` executable of a venv under `~/.cache/flotilla/schemathesis-venv`,
/// installed (pinned) on first use like moto; `FLOTILLA_SCHEMATHESIS` overrides it.
pub fn schemathesis() -> PathBuf {
    use std::process::{Command, Stdio};
    if let Some(path) = std::env::var_os("FLOTILLA_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let venv = cache_dir().join("schemathesis-venv");
    let python = venv.join("bin/python");
    let version = || {
        Command::new(&python)
            .args([
                "-c",
                "import schemathesis, importlib.metadata as m; print(m.version('schemathesis'))",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let ready = || version().as_deref() == Some(SCHEMATHESIS_VERSION);
    let run = |command: &mut Command, what: &str| {
        let out = command
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot {what}: {e}"));
        assert!(
            out.status.success(),
            "cannot {what} ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    install_once("schemathesis-venv", ready, || {
        if !python.exists() {
            run(
                Command::new("python3").arg("-m").arg("venv").arg(&venv),
                "create the schemathesis venv",
            );
        }
        run(
            Command::new(&python)
                .args(["-m", "pip", "install", "--quiet"])
                .arg(format!("schemathesis=={SCHEMATHESIS_VERSION}")),
            "pip install schemathesis",
        );
    });
    let found = version();
    assert_eq!(
        found.as_deref(),
        Some(SCHEMATHESIS_VERSION),
        "after installing, {python:?} reports schemathesis {found:?}"
    );
    venv.join("bin/schemathesis")
}
