//! A moto server (the Python AWS emulator) on a free loopback port.
//!
//! Design decisions:
//! * One shared server per test process ([`Moto::shared`]): moto starts in a
//!   couple of seconds, which is too slow to pay per test. Tests isolate
//!   themselves by account instead ([`Moto::new_account_id`] plus the
//!   `x-moto-account-id` header that [`crate::FaultProxy`] sets), since moto
//!   keeps separate state per account.
//! * Everything here is plain `std` (process, net, fs) so sync tests and
//!   async tests on any runtime flavour can call it without a tokio context.
//! * The server must not outlive the test process, even when the process is
//!   killed, and the workspace forbids `unsafe` (so no `prctl`/`PR_SET_PDEATHSIG`).
//!   We start moto through a tiny Python wrapper that runs moto's server
//!   in-process and `os._exit`s when its stdin reaches EOF. We hold the write
//!   end of that pipe for as long as the [`Moto`] lives; the kernel closes it
//!   when our process dies, however it dies.
//! * moto's output goes to a file, not a pipe: werkzeug logs every request,
//!   and a pipe nobody drains would eventually block the server. The file is
//!   unlinked right after creation (we keep a read handle), so no log piles up
//!   in the temp dir even though the shared server is never dropped; its tail
//!   is what a startup failure panics with.
//! * Installing moto is automatic (a pinned version in a venv under
//!   `~/.cache/flotilla`) and guarded by an exclusive file lock, because
//!   several test binaries may start at the same time on a fresh machine.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The moto version the testkit installs and expects.
pub const MOTO_VERSION: &str = "5.2.1";

/// How long a fresh moto may take to answer before we give up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs moto's server in-process and exits as soon as stdin reaches EOF,
/// i.e. when the process that started us (and holds the pipe) is gone.
const WRAPPER: &str = r#"
import os, sys, threading
def _watch_parent():
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(0)
threading.Thread(target=_watch_parent, daemon=True).start()
from moto.server import main
main(sys.argv[1:])
"#;

/// A running moto server. The shared one lives until the process exits;
/// a dedicated one is killed when dropped.
#[derive(Debug)]
pub struct Moto {
    port: u16,
    /// Holds the child, and with it the stdin pipe that keeps it alive.
    child: Mutex<Child>,
    /// Read handle on moto's (already unlinked) output file.
    log: Mutex<File>,
}

impl Moto {
    /// The process-wide moto server, started on first use.
    pub fn shared() -> &'static Moto {
        static SHARED: OnceLock<Moto> = OnceLock::new();
        SHARED.get_or_init(Moto::start_dedicated)
    }

    /// A moto server of one's own, for tests that touch moto's global state.
    /// Killed on drop.
    pub fn start_dedicated() -> Moto {
        let python = ensure_moto_python();
        // Picking the port by binding :0 and releasing it leaves a small race
        // with other processes; a retry covers the rare loss.
        let mut last_err = String::new();
        for _ in 0..3 {
            match try_start(&python) {
                Ok(moto) => return moto,
                Err(e) => last_err = e,
            }
        }
        panic!("moto server did not start: {last_err}");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A fresh 12-digit account id, unique within this process (and, thanks
    /// to the pid, very likely across concurrently running test binaries).
    /// Always starts with `9`, so it never collides with moto's default
    /// account `123456789012`.
    pub fn new_account_id() -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
        let pid = u64::from(std::process::id()) % 100_000;
        format!("9{pid:05}{:06}", n % 1_000_000)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn try_start(python: &Path) -> Result<Moto, String> {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let port = crate::free_port();
    let log_path = std::env::temp_dir().join(format!(
        "flotilla-moto-{}-{}.log",
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    ));
    let out = File::create(&log_path).map_err(|e| format!("cannot create {log_path:?}: {e}"))?;
    let log = File::open(&log_path).map_err(|e| format!("cannot open {log_path:?}: {e}"))?;
    let _ = fs::remove_file(&log_path);
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot dup log fd: {e}"))?;
    let port_arg = port.to_string();
    let child = Command::new(python)
        .args(["-c", WRAPPER, "-H", "127.0.0.1", "-p", &port_arg])
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {python:?}: {e}"))?;
    let moto = Moto {
        port,
        child: Mutex::new(child),
        log: Mutex::new(log),
    };

    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if answers(port) {
            return Ok(moto);
        }
        let exited = moto
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_wait()
            .ok()
            .flatten();
        if let Some(status) = exited {
            return Err(format!(
                "moto exited with {status}; output tail:\n{}",
                moto.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "moto did not answer on port {port} within {STARTUP_TIMEOUT:?}; output tail:\n{}",
        moto.log_tail()
    ))
    // `moto` is dropped on the error paths, which kills the child.
}

impl Moto {
    fn log_tail(&self) -> String {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = String::new();
        let _ = log
            .seek(SeekFrom::Start(0))
            .and_then(|_| log.read_to_string(&mut text));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// True once moto serves its own API (not merely once the port is bound).
fn answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!(
        "GET /moto-api/data.json HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// A python that can `import moto.server`, installing moto if needed.
fn ensure_moto_python() -> PathBuf {
    if let Some(py) = std::env::var_os("FLOTILLA_MOTO_PYTHON") {
        let py = PathBuf::from(py);
        match installed_moto_version(&py) {
            Some(_) => return py,
            None => panic!("FLOTILLA_MOTO_PYTHON={py:?} cannot `import moto.server`"),
        }
    }
    let venv = crate::cache::cache_dir().join("moto-venv");
    let py = venv.join("bin/python");
    let ready = || installed_moto_version(&py).as_deref() == Some(MOTO_VERSION);
    crate::cache::install_once("moto-venv", ready, || {
        if !py.exists() {
            run(
                Command::new("python3").arg("-m").arg("venv").arg(&venv),
                "create the moto venv",
            );
        }
        run(
            Command::new(&py)
                .args(["-m", "pip", "install", "--quiet"])
                .arg(format!("moto[server]=={MOTO_VERSION}")),
            "pip install moto",
        );
    });
    match installed_moto_version(&py) {
        Some(v) if v == MOTO_VERSION => py,
        other => panic!("after installing, {py:?} reports moto {other:?}, wanted {MOTO_VERSION}"),
    }
}

/// moto's version as seen by `python`, if it has moto with the server extra.
fn installed_moto_version(python: &Path) -> Option<String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import moto.server, importlib.metadata as m; print(m.version('moto'))",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot {what}: {e}"));
    if !out.status.success() {
        panic!(
            "cannot {what} ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_unique_and_12_digits() {
        let a = Moto::new_account_id();
        let b = Moto::new_account_id();
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 12, "{id}");
            assert!(id.bytes().all(|c| c.is_ascii_digit()), "{id}");
            assert_ne!(id, "123456789012");
        }
    }
}
