//! A real Docker engine for a test: `dockerd` in the root network namespace with its own
//! data root, exec root, pid file, socket and containerd namespaces, in a short temporary
//! directory (unix socket paths must stay under 108 bytes). Stopped on drop: SIGTERM, a
//! bounded wait for its PID, SIGKILL, then every mount it left under its directory is
//! unmounted (deepest first) before the directory is removed — also after a panic.
//!
//! (Kept small and local; the namespaced test hosts of `flotilla-testkit` will take it over.)

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long an engine may take to answer `_ping` after it was started.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a stopping engine may take before it is killed (a swarm member is slow).
const STOP_DEADLINE: Duration = Duration::from_secs(20);

pub struct Dockerd {
    child: Option<Child>,
    /// Removed (after unmounting) on drop.
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
}

impl Dockerd {
    /// Starts an engine and waits until it answers `_ping`; panics (after cleaning up) when
    /// it does not within [`START_DEADLINE`].
    pub fn start() -> Dockerd {
        let dir = tempfile::Builder::new()
            .prefix("fla-")
            .tempdir_in("/tmp")
            .expect("a temporary directory");
        let root = dir.path().to_path_buf();
        let log = std::fs::File::create(root.join("dockerd.log")).expect("the engine's log");
        let pid = std::process::id();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("x"))
            .arg("--pidfile")
            .arg(root.join("d.pid"))
            .arg("-H")
            .arg(format!("unix://{}", root.join("d.sock").display()))
            .args(["--bridge=none", "--iptables=false"])
            .arg(format!("--containerd-namespace=fl-test-{pid}"))
            .arg(format!("--containerd-plugins-namespace=fl-testp-{pid}"))
            .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting dockerd (apt-get install docker.io)");
        let mut engine = Dockerd {
            child: Some(child),
            dir: Some(dir),
            root,
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if ping(&engine.socket()) {
                return engine;
            }
            if let Some(child) = engine.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = engine.log();
                drop(engine);
                panic!("dockerd exited with {status} before answering:\n{log}");
            }
            if Instant::now() > deadline {
                let log = engine.log();
                drop(engine);
                panic!("dockerd did not answer within {START_DEADLINE:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("d.sock")
    }

    /// `DOCKER_HOST` for this engine.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The end of the engine's log, for failure messages.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text[text.ceil_char_boundary(start)..].to_owned()
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => {
                    eprintln!("dockerd did not stop within {STOP_DEADLINE:?}; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        // The containerd this engine started, if it outlived its engine.
        let containerd_pid = std::fs::read_to_string(self.root.join("x/containerd/containerd.pid"))
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = containerd_pid
            && is_containerd(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while is_containerd(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if is_containerd(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Whether `pid` is (still) a containerd process: the pid file may be stale.
fn is_containerd(pid: rustix::process::Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{}/comm", pid.as_raw_nonzero()))
        .is_ok_and(|comm| comm.trim() == "containerd")
}

/// Whether the engine at `socket` answers `GET /_ping` with `OK`.
fn ping(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.ends_with("OK")
}

/// Mount points under `root` from `/proc/self/mountinfo`, deepest first.
fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(root))
        .collect();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    mounts.dedup();
    mounts
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        for point in mounts_under(&self.root) {
            let status = Command::new("umount").arg("-l").arg(&point).status();
            if !status.is_ok_and(|s| s.success()) {
                eprintln!("could not unmount {}", point.display());
            }
        }
        if let Some(dir) = self.dir.take()
            && let Err(error) = dir.close()
        {
            eprintln!("could not remove the engine's directory: {error}");
        }
    }
}
