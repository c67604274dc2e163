//! Tools the tests install once per machine (moto, the docker-cloud CLI) live in
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
