//! What the results record about where and how they were produced: the machine (from
//! `/proc`), tool versions, and a process's CPU time and memory (`/proc/<pid>/stat`,
//! `/proc/<pid>/status`).

use std::path::Path;
use std::process::Command;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub ram_mib: u64,
    pub kernel: String,
    /// `/proc/loadavg` when the run ended: other work on the machine skews the figures.
    pub load_average: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
        cores: cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
            .max(1),
        ram_mib: status_kib(&meminfo, "MemTotal").unwrap_or(0) / 1024,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// A `Name:   123 kB` field of `/proc/<pid>/status` or `/proc/meminfo`, in KiB.
pub fn status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// user + system CPU time in clock ticks, from the text of `/proc/<pid>/stat` (fields 14
/// and 15; the command name in parentheses may itself contain spaces).
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A snapshot of one process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcSample {
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
}

pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        cpu_ticks: stat_cpu_ticks(&stat)?,
        rss_kib: status_kib(&status, "VmRSS").unwrap_or(0),
        hwm_kib: status_kib(&status, "VmHWM").unwrap_or(0),
        threads: status_kib(&status, "Threads").unwrap_or(0),
    })
}

/// The CPU time of a process and its children, the `cutime`/`cstime` of those it reaped
/// included (fields 16 and 17 of `/proc/<pid>/stat`): PostgreSQL's postmaster and its
/// backends, some of which come and go during a window.
pub fn stat_cpu_ticks_with_reaped(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(stat_cpu_ticks(stat)? + cutime + cstime)
}

/// The parent pid (field 4) of `/proc/<pid>/stat`.
fn stat_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// A snapshot of a process and its direct children (a postmaster and its backends).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TreeSample {
    /// The root's own CPU time and its reaped children's, plus the living children's.
    pub cpu_ticks: u64,
    /// The sum of their proportional set sizes (`Pss` of `/proc/<pid>/smaps_rollup`):
    /// shared memory (PostgreSQL's shared buffers) counted once, split among its users.
    pub pss_kib: u64,
    /// The sum of their resident sets (shared pages counted in each process).
    pub rss_kib: u64,
    /// The root and its living children.
    pub processes: u64,
}

/// [`TreeSample`] of `root` and its direct children; `None` when `root` is gone.
pub fn sample_tree(root: u32) -> Option<TreeSample> {
    let read = |pid: u32, file: &str| std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok();
    let root_stat = read(root, "stat")?;
    let mut tree = TreeSample {
        cpu_ticks: stat_cpu_ticks_with_reaped(&root_stat)?,
        ..TreeSample::default()
    };
    let mut members = vec![root];
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(stat) = read(pid, "stat")
            && stat_ppid(&stat) == Some(root)
        {
            tree.cpu_ticks += stat_cpu_ticks(&stat).unwrap_or(0);
            members.push(pid);
        }
    }
    for pid in members {
        let rollup = read(pid, "smaps_rollup").unwrap_or_default();
        tree.pss_kib += status_kib(&rollup, "Pss").unwrap_or(0);
        tree.rss_kib += status_kib(&rollup, "Rss").unwrap_or(0);
        tree.processes += 1;
    }
    Some(tree)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux in practice).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU use between two samples, in percent of one core.
pub fn cpu_percent(before: &ProcSample, after: &ProcSample, seconds: f64) -> f64 {
    ticks_percent(before.cpu_ticks, after.cpu_ticks, seconds)
}

/// CPU use between two counts of clock ticks, in percent of one core.
pub fn ticks_percent(before: u64, after: u64, seconds: f64) -> f64 {
    let ticks = after.saturating_sub(before) as f64;
    (ticks / clock_ticks() / seconds.max(1e-9) * 1000.0).round() / 10.0
}

fn output(cmd: &str, args: &[&str], dir: Option<&Path>) -> String {
    let mut command = Command::new(cmd);
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

#[derive(Debug, Clone, Serialize)]
pub struct Versions {
    pub rustc: String,
    pub flotilla_commit: String,
    /// Uncommitted changes in the checkout when the figures were taken.
    pub worktree_dirty: bool,
    pub moto: String,
}

pub fn versions(repo: &Path) -> Versions {
    let status = output(
        "git",
        &["status", "--porcelain", "--untracked-files=no"],
        Some(repo),
    );
    Versions {
        rustc: output("rustc", &["--version"], None),
        flotilla_commit: output("git", &["rev-parse", "HEAD"], Some(repo)),
        worktree_dirty: !status.is_empty() && status != "unknown",
        moto: flotilla_testkit::moto::MOTO_VERSION.to_owned(),
    }
}

/// Raises this process's open-file limit (soft and hard) with `prlimit`, which needs no
/// `unsafe` here; returns the soft limit in force afterwards.
pub fn raise_nofile(wanted: u64) -> u64 {
    let wanted = wanted.min(hard_nofile().max(1024));
    let pid = std::process::id().to_string();
    let _ = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={wanted}:{wanted}")])
        .status();
    current_nofile()
}

/// The soft (`column` 3) or hard (4) open-file limit of this process.
fn nofile(column: usize) -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(column))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn current_nofile() -> u64 {
    nofile(3)
}

/// The hard limit: what an unprivileged process (or a container without
/// `CAP_SYS_RESOURCE`) may raise its soft limit to.
pub fn hard_nofile() -> u64 {
    nofile(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        let stat = "4242 (flotilla (x) y) S 1 4242 4242 0 -1 4194560 1208 0 0 0 731 95 0 0 20 0 9 0 123 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(731 + 95));
        assert_eq!(stat_cpu_ticks_with_reaped(stat), Some(731 + 95));
        assert_eq!(stat_ppid(stat), Some(1));
        let reaped = "7 (postgres) S 1 7 7 0 -1 4194560 1208 0 0 0 731 95 40 2 20 0 9 0 123 0 0";
        assert_eq!(stat_cpu_ticks_with_reaped(reaped), Some(731 + 95 + 40 + 2));
        let status = "Name:\tflotilla\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\nThreads:\t9\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(status_kib(status, "Threads"), Some(9));
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(
            cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n").as_deref(),
            Some("AMD EPYC 7B13")
        );
    }
}
