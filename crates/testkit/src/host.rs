//! Emulated machines: a [`Host`] is one EC2 instance made real enough to run a Docker engine
//! and an agent — its own network namespace with the instance's private IPv4 address, its
//! own mount, UTS (hostname) and PID namespaces, and its own `dockerd` — and a
//! [`HostNetwork`] is the wire between such hosts and the test process.
//!
//! Design decisions (each checked on this kind of machine; see
//! `/work/shared/design/docker-nodes.md` for the facts they rest on):
//!
//! * **Network.** One Linux bridge per [`HostNetwork`] (`flb<pid>-<n>`), with one address of
//!   its own, the *gateway* (a `/32` from 100.64.0.0/10, which no VPC of ours uses). Each
//!   host is a named network namespace (`fl-<pid>-<n>`) whose `eth0` (a veth whose other end
//!   `flv<pid>-<n>` is in the bridge) carries the instance's private IP as a `/32` plus an
//!   on-link default route (`default dev eth0 scope link`). Every destination is therefore
//!   resolved by ARP on the bridge: hosts of different subnets and VPC CIDRs reach each other
//!   directly, and the gateway answers for itself. No prefix has to be planned, and moto may
//!   hand out any address.
//! * **The root namespace reaches hosts from the gateway address only.** Its main routing
//!   table is left alone: two test processes (or two tests) may well have hosts with the same
//!   private IP on different bridges, and a main-table route to one of them would misroute
//!   the other. Instead a policy rule `from <gateway> lookup <table>` sends whatever the root
//!   namespace sends *from the gateway address* into the network's own table, whose only
//!   route is `default dev <bridge> scope link`. Replies to connections hosts open to the
//!   gateway follow that rule by themselves; a test that opens a connection binds the gateway
//!   first ([`HostNetwork::connect`], [`HostNetwork::http_get`], `curl --interface <gw>`).
//! * **Namespaces.** A long-lived *holder* per host is started as
//!   `nsenter --net=/run/netns/<ns> unshare --pid --fork --kill-child --mount --uts
//!   --mount-proc --propagation private sh -c '<set-up>; exec sleep infinity'`. The set-up
//!   runs inside the new mount namespace: it detaches the copies of `/run/netns/*` (so this
//!   host does not keep other hosts' network namespaces alive), mounts tmpfs over
//!   `/run/docker` (where the hard-coded `/run/docker/plugins` lives) and `/run/containerd`
//!   (so `dockerd` never finds a system containerd and starts one of its own inside the
//!   host), and sets the hostname to the instance's private DNS name. The engine and the
//!   agent enter the holder's namespaces with `nsenter -t <holder> …`. `ip netns exec` is
//!   *not* used: it remounts `/sys`, and `dockerd` then fails with "Devices cgroup isn't
//!   mounted". Propagation is private, so nothing the engine mounts (overlays, the nsfs
//!   `ingress_sbox`, bind mounts) ever appears in the root mount namespace.
//! * **A PID namespace per host, with the holder as its init**, is what makes power-off
//!   reliable: killing the holder makes the kernel kill every process in the namespace at
//!   once — `dockerd`, its containerd, the shims and every container — which is what
//!   terminating an instance is. A graceful `dockerd` stop of a swarm member takes ten
//!   seconds and more and leaves shims and containers behind when it is cut short; a power
//!   loss has neither problem. `/proc` is remounted inside (`--mount-proc`) so the engine's
//!   PIDs and `/proc` agree. The engine runs in the PID namespace (`nsenter -p`, which
//!   forks); the agent does not need to (see `runner`).
//! * **The engine.** `dockerd` with its own `--data-root`, `--exec-root`, `--pidfile`,
//!   `--config-file` (an empty one: never the machine's `/etc/docker/daemon.json`),
//!   containerd namespaces, `-H unix:///tmp/flh/<pid>-<n>/docker.sock` (short: a unix socket
//!   path must stay under 108 bytes; reachable from the root namespace because `/tmp` is the
//!   same directory in every mount namespace), `--iptables=false --ip-masq=false`, and env
//!   `DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1`. It keeps a default bridge, on
//!   `198.19.255.1/24` (a benchmarking range no VPC uses), private to its network namespace:
//!   with `--bridge=none` a container's default network is `none`, and a swarm service's
//!   `--publish mode=host` then publishes nothing; with the bridge, docker-proxy publishes
//!   host ports without iptables. Readiness is polled (`docker version`), never slept for.
//!   Each engine gets [`crate::docker::BUSYBOX_IMAGE`] loaded at boot.
//! * **Names carry the owning PID** (`fl-<pid>-<n>`, `flb<pid hex>-<n hex>`,
//!   `flv<pid hex>-<n hex>`, `/tmp/flh/<pid>-<n>`, routing table `2^30 + pid·256 + k`), so
//!   [`sweep`] — run once per process before the first network — removes exactly the
//!   leftovers of test processes that died without cleaning up, and only theirs.
//! * **Cleanup on [`Drop`]**, also when a test panics: a host kills its holder (and with it
//!   the namespace), waits for it, kills whatever might still be in its PID namespace,
//!   unmounts anything under its directory, deletes its veth and network namespace and
//!   removes its directory; a network deletes its policy rule, routing table and bridge once
//!   its last host is gone (hosts hold the network alive).
//! * Everything here is blocking `std` code (it runs `ip`, `nsenter`, `docker`), except the
//!   async helpers that connect from the gateway address.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use crate::docker;

/// Where hosts keep their engine's files: short, because the engine's unix socket lives here.
pub const HOSTS_DIR: &str = "/tmp/flh";

/// The default bridge every engine keeps inside its own network namespace.
pub const ENGINE_BRIDGE_IP: &str = "198.19.255.1/24";

/// How long an engine may take to answer after it was started.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(90);

/// Unique per process for networks and hosts alike (names are `<pid>-<n>`).
static NEXT: AtomicU32 = AtomicU32::new(1);

fn next_id() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs a command to completion; its stdout, or an error naming it with its stderr.
pub(crate) fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// Polls `check` every 50 ms until it yields a value or `limit` passes.
pub(crate) fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` is a live process. A zombie still has a /proc entry but is dead for our
/// purposes, and so is a *thread* with that id: `/proc/<tid>` resolves for threads too, and
/// with a small `pid_max` a dead owner's PID is soon some thread's id.
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    field("Tgid:") == pid.to_string() && !matches!(field("State:").chars().next(), Some('Z' | 'X'))
}

pub(crate) fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Mount points (from the root namespace's view) at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn unmount_under(dir: &Path) {
    for point in mounts_under(dir) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&point)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// PIDs of live processes whose command line contains `needle`.
pub(crate) fn processes_with(needle: &str) -> Vec<u32> {
    let own = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| {
                    String::from_utf8_lossy(&raw)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// The routing table of network `n` of process `pid`.
fn table_of(pid: u32, n: u32) -> u32 {
    (1 << 30) + (pid << 8) + (n & 0xff)
}

/// Removes what earlier test processes that are now dead left behind: holders and engines,
/// mounts, network namespaces, veths, bridges, policy rules and routing tables, directories.
/// Only names that carry a dead owner's PID are touched. Runs once per process by itself.
pub fn sweep() {
    let dead = |pid: u32| pid != std::process::id() && !pid_alive(pid);
    // Processes first: a holder keeps a namespace alive.
    for pid in processes_with("flotilla-host ")
        .into_iter()
        .chain(processes_with(&format!("{HOSTS_DIR}/")))
    {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
            .unwrap_or_default();
        let owner = cmdline
            .split_once("flotilla-host ")
            .or_else(|| cmdline.split_once(&format!("{HOSTS_DIR}/")))
            .and_then(|(_, rest)| rest.split('-').next()?.parse::<u32>().ok());
        if owner.is_some_and(dead) {
            kill(pid, "KILL");
        }
    }
    if let Ok(entries) = fs::read_dir(HOSTS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if owner.is_some_and(dead) {
                unmount_under(&entry.path());
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    for line in ip(&["netns", "list"]).unwrap_or_default().lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let owner = name
            .strip_prefix("fl-")
            .and_then(|rest| rest.split('-').next()?.parse::<u32>().ok());
        if owner.is_some_and(dead) {
            let _ = ip(&["netns", "del", name]);
        }
    }
    for line in ip(&["-o", "link", "show"]).unwrap_or_default().lines() {
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        let owner = name
            .strip_prefix("flb")
            .or_else(|| name.strip_prefix("flv"))
            .and_then(|rest| u32::from_str_radix(rest.split('-').next()?, 16).ok());
        if owner.is_some_and(dead) {
            let _ = ip(&["link", "del", name]);
        }
    }
    for line in ip(&["rule", "show"]).unwrap_or_default().lines() {
        let Some(table) = line
            .split_whitespace()
            .skip_while(|w| *w != "lookup")
            .nth(1)
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        if !(1 << 30..1 << 31).contains(&table) {
            continue;
        }
        if dead((table - (1 << 30)) >> 8) {
            let table = table.to_string();
            let _ = ip(&["rule", "del", "table", &table]);
            let _ = ip(&["route", "flush", "table", &table]);
        }
    }
}

/// [`sweep`], once per process: the first host network a process makes runs it. A test
/// that fakes a dead process's leftovers calls it first, so that sweep cannot run in the
/// middle of its set-up.
pub fn sweep_once() {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(sweep);
}

#[derive(Debug)]
struct Net {
    bridge: String,
    gateway: Ipv4Addr,
    table: u32,
    /// Private IPs of the hosts on this network (one machine per address).
    addresses: Mutex<HashSet<Ipv4Addr>>,
}

impl Drop for Net {
    fn drop(&mut self) {
        let table = self.table.to_string();
        let _ = ip(&[
            "rule",
            "del",
            "from",
            &self.gateway.to_string(),
            "table",
            &table,
        ]);
        let _ = ip(&["route", "flush", "table", &table]);
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// A bridge that connects hosts with each other and with the root namespace. See the module
/// docs. Cheap to clone; the bridge goes when the last clone and the last host are gone.
#[derive(Debug, Clone)]
pub struct HostNetwork {
    net: Arc<Net>,
}

impl HostNetwork {
    /// Creates the bridge, its gateway address and its routing table (after sweeping the
    /// leftovers of dead test processes, once per process).
    pub fn new() -> anyhow::Result<HostNetwork> {
        sweep_once();
        let pid = std::process::id();
        let n = next_id();
        let bridge = format!("flb{pid:x}-{n:x}");
        if bridge.len() > 15 {
            bail!("interface name {bridge} is too long");
        }
        // Its own counter: live networks of one process never share a table (256 at once).
        static NEXT_TABLE: AtomicU32 = AtomicU32::new(0);
        let table = table_of(pid, NEXT_TABLE.fetch_add(1, Ordering::Relaxed));
        // The gateway must be unique among live networks on this machine: pick a candidate
        // and take it under a machine-wide lock, after checking nobody holds it.
        let lock_path = crate::cache::cache_dir().join("host-network.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {lock_path:?}"))?;
        lock.lock()
            .with_context(|| format!("cannot lock {lock_path:?}"))?;
        let taken = ip(&["-4", "-o", "addr", "show"])?;
        let mut seed = pid.wrapping_mul(2_654_435_761) ^ n.wrapping_mul(40_503);
        let gateway = loop {
            let candidate =
                Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) | (seed & 0x3f_ffff));
            seed = seed.wrapping_add(257);
            let last = candidate.octets()[3];
            if last != 0 && last != 255 && !taken.contains(&format!("inet {candidate}/")) {
                break candidate;
            }
        };
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        let net = Net {
            bridge: bridge.clone(),
            gateway,
            table,
            addresses: Mutex::new(HashSet::new()),
        };
        let table = table.to_string();
        let gw = gateway.to_string();
        ip(&["addr", "add", &format!("{gw}/32"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        ip(&[
            "route", "add", "default", "dev", &bridge, "scope", "link", "table", &table,
        ])?;
        ip(&["rule", "add", "from", &gw, "table", &table, "pref", "100"])?;
        drop(lock);
        Ok(HostNetwork { net: Arc::new(net) })
    }

    /// The bridge's own address: what hosts reach the root namespace at, and the source
    /// address the root namespace reaches hosts from.
    pub fn gateway(&self) -> Ipv4Addr {
        self.net.gateway
    }

    /// The bridge's interface name.
    pub fn bridge(&self) -> &str {
        &self.net.bridge
    }

    /// Boots a host on this network (blocking; a few seconds). See [`Host::boot`].
    pub fn boot(&self, spec: HostSpec) -> anyhow::Result<Host> {
        Host::boot(self, spec)
    }

    /// A TCP connection from the gateway address to a host's address.
    pub async fn connect(&self, addr: SocketAddrV4) -> std::io::Result<tokio::net::TcpStream> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((self.net.gateway, 0)))?;
        socket.connect(SocketAddr::V4(addr)).await
    }

    /// `GET path` (HTTP/1.0) from the gateway address; the status line and body.
    pub async fn http_get(&self, addr: SocketAddrV4, path: &str) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = self.connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok(answer)
    }
}

/// What a host is booted as: the instance's private address and private DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub private_ip: Ipv4Addr,
    /// The hostname, e.g. `ip-10-0-1-5.ec2.internal`.
    pub hostname: String,
}

impl HostSpec {
    /// A host named the way EC2 names an instance in us-east-1 (`ip-a-b-c-d.ec2.internal`).
    pub fn new(private_ip: Ipv4Addr) -> HostSpec {
        let [a, b, c, d] = private_ip.octets();
        HostSpec {
            private_ip,
            hostname: format!("ip-{a}-{b}-{c}-{d}.ec2.internal"),
        }
    }
}

/// One emulated machine. See the module docs. Powered off (everything removed) on drop.
#[derive(Debug)]
pub struct Host {
    spec: HostSpec,
    net: Arc<Net>,
    netns: String,
    veth: String,
    dir: PathBuf,
    /// `unshare`, the parent of the holder; it kills the holder when it dies.
    unshare: Option<Child>,
    /// The holder: init of the host's PID namespace (a root-namespace PID).
    holder: Option<u32>,
    /// `nsenter … dockerd` (it waits for the engine it forked).
    engine: Option<Child>,
    /// The host's PID namespace (`pid:[inode]`), to find stragglers at power-off.
    pid_ns: Option<String>,
}

impl Host {
    /// Boots a machine: namespaces, address, hostname, engine (waited for) and the busybox
    /// image. Everything created so far is removed again when a step fails.
    pub fn boot(network: &HostNetwork, spec: HostSpec) -> anyhow::Result<Host> {
        let pid = std::process::id();
        let n = next_id();
        if !network
            .net
            .addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.private_ip)
        {
            bail!("{} is already a host on this network", spec.private_ip);
        }
        let mut host = Host {
            spec,
            net: network.net.clone(),
            netns: format!("fl-{pid}-{n}"),
            veth: format!("flv{pid:x}-{n:x}"),
            dir: PathBuf::from(HOSTS_DIR).join(format!("{pid}-{n}")),
            unshare: None,
            holder: None,
            engine: None,
            pid_ns: None,
        };
        host.wire()?;
        host.start_holder()?;
        host.start_engine()?;
        docker::load_busybox(&host.socket())
            .with_context(|| format!("loading the busybox image into {}", host.spec.hostname))?;
        Ok(host)
    }

    fn wire(&mut self) -> anyhow::Result<()> {
        let ns = self.netns.as_str();
        ip(&["netns", "add", ns])?;
        ip(&[
            "link", "add", &self.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["link", "set", &self.veth, "master", &self.net.bridge, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/32", self.spec.private_ip),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "-n", ns, "route", "add", "default", "dev", "eth0", "scope", "link",
        ])?;
        Ok(())
    }

    fn start_holder(&mut self) -> anyhow::Result<()> {
        fs::create_dir_all(&self.dir).with_context(|| format!("creating {:?}", self.dir))?;
        let tag = self
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // The comment names the owner for `sweep`; `$1` is the hostname.
        let script = format!(
            ": flotilla-host {tag}; set -e; \
             for m in /run/netns/*; do umount -l \"$m\" 2>/dev/null || true; done; \
             umount -l /run/netns 2>/dev/null || true; \
             mkdir -p /run/docker /run/containerd; \
             mount -t tmpfs tmpfs /run/docker; mount -t tmpfs tmpfs /run/containerd; \
             hostname \"$1\"; exec sleep infinity"
        );
        let log = fs::File::create(self.dir.join("holder.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args([
                "unshare",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--uts",
                "--mount-proc",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
                "flotilla-host",
                &self.spec.hostname,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the host's holder (nsenter + unshare)")?;
        let unshare_pid = child.id();
        self.unshare = Some(child);
        // nsenter execs unshare, which forks the holder; the holder is ready once its set-up
        // script exec'd `sleep`.
        let holder = wait_for("the host's namespaces", Duration::from_secs(20), || {
            if let Some(child) = self.unshare.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "the holder exited ({status}): {}",
                    fs::read_to_string(self.dir.join("holder.log")).unwrap_or_default()
                );
            }
            let children =
                fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
                    .unwrap_or_default();
            let Some(holder) = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
            else {
                return Ok(None);
            };
            let comm = fs::read_to_string(format!("/proc/{holder}/comm")).unwrap_or_default();
            Ok((comm.trim() == "sleep").then_some(holder))
        })?;
        self.holder = Some(holder);
        self.pid_ns = fs::read_link(format!("/proc/{holder}/ns/pid"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        Ok(())
    }

    /// Starts the engine again after [`Host::stop_engine`] (with the same data root: images,
    /// swarm membership and containers survive, as across a `systemctl restart docker`), and
    /// waits until it answers.
    pub fn start_engine(&mut self) -> anyhow::Result<()> {
        if self.engine.is_some() {
            bail!("the engine of {} is running", self.spec.hostname);
        }
        let dir = &self.dir;
        let tag = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let config = dir.join("daemon.json");
        fs::write(&config, "{}\n")?;
        // A pidfile left by a killed engine names a PID of this namespace that may be taken.
        let _ = fs::remove_file(dir.join("docker.pid"));
        let log = fs::File::create(dir.join("dockerd.log"))?;
        let child = self
            .enter(true)?
            .arg("dockerd")
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.join("d"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(self.docker_host())
            .args(["--bip", ENGINE_BRIDGE_IP])
            .args(["--iptables=false", "--ip-masq=false"])
            .args(["--containerd-namespace", &format!("fl-{tag}")])
            .args([
                "--containerd-plugins-namespace",
                &format!("fl-{tag}-plugins"),
            ])
            .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd in the host")?;
        self.engine = Some(child);
        let socket = self.socket();
        wait_for(
            &format!("the engine of {}", self.spec.hostname),
            ENGINE_TIMEOUT,
            || {
                if let Some(engine) = self.engine.as_mut()
                    && let Ok(Some(status)) = engine.try_wait()
                {
                    bail!("dockerd exited ({status}):\n{}", self.engine_log());
                }
                Ok(
                    docker::docker(&socket, &["version", "--format", "{{.Server.Version}}"])
                        .ok()
                        .map(|_| ()),
                )
            },
        )
        .map_err(|e| anyhow!("{e}\n{}", self.engine_log()))
    }

    /// Stops the engine the way a service manager does: SIGTERM to `dockerd`, a wait for it
    /// to exit, SIGKILL after `grace`; then whatever it left in the host (its containerd,
    /// shims, containers) is killed too, so the host is back to its holder alone.
    pub fn stop_engine(&mut self, grace: Duration) -> anyhow::Result<()> {
        let Some(mut engine) = self.engine.take() else {
            return Ok(());
        };
        let nsenter = engine.id();
        let dockerd = fs::read_to_string(format!("/proc/{nsenter}/task/{nsenter}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok());
        if let Some(dockerd) = dockerd {
            kill(dockerd, "TERM");
            let stopped = wait_for("dockerd to stop", grace, || {
                Ok((!pid_alive(dockerd)).then_some(()))
            });
            if stopped.is_err() {
                kill(dockerd, "KILL");
            }
        }
        wait_for("nsenter to exit", Duration::from_secs(10), || {
            Ok(engine.try_wait()?.map(|_| ()))
        })?;
        if let (Some(pid_ns), Some(holder)) = (&self.pid_ns, self.holder) {
            wait_for(
                "the engine's processes to die",
                Duration::from_secs(10),
                || {
                    let left: Vec<u32> = processes_in(pid_ns)
                        .into_iter()
                        .filter(|pid| *pid != holder)
                        .collect();
                    left.iter().for_each(|pid| kill(*pid, "KILL"));
                    Ok(left.is_empty().then_some(()))
                },
            )?;
        }
        Ok(())
    }

    /// A command that runs inside the host's network, mount and UTS namespaces (and its PID
    /// namespace with `pid`, in which case `nsenter` forks and waits for the command).
    /// Append the program and its arguments.
    pub fn enter(&self, pid: bool) -> anyhow::Result<Command> {
        let holder = self
            .holder
            .ok_or_else(|| anyhow!("the host has no holder"))?;
        let mut command = Command::new("nsenter");
        command.args(["-t", &holder.to_string(), "-m", "-u", "-n"]);
        if pid {
            command.arg("-p");
        }
        command.arg("--");
        Ok(command)
    }

    /// Runs a program inside the host (all its namespaces); its stdout.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.enter(true)?.args(args))
    }

    /// `docker <args>` against this host's engine, from the root namespace; its stdout.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        docker::docker(&self.socket(), args)
    }

    pub fn private_ip(&self) -> Ipv4Addr {
        self.spec.private_ip
    }

    pub fn hostname(&self) -> &str {
        &self.spec.hostname
    }

    /// The network namespace's name (`ip netns`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The root-side veth's name.
    pub fn veth(&self) -> &str {
        &self.veth
    }

    /// The host's directory (engine data and exec roots, socket, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The holder's PID (root namespace): `nsenter -t <pid>` enters the host.
    pub fn holder_pid(&self) -> Option<u32> {
        self.holder
    }

    /// The engine's unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// `unix://<socket>`, for `DOCKER_HOST` or `docker -H`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// What the engine logged so far (its last 8 KiB).
    pub fn engine_log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(self.dir.join("dockerd.log")) {
            let _ = file.read_to_string(&mut text);
        }
        let cut = text.len().saturating_sub(8192);
        let cut = (cut..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[cut..].to_owned()
    }

    /// Pulls the plug: every process of the host dies at once, then its mounts, network
    /// namespace, veth and directory are removed. Idempotent; [`Drop`] calls it.
    pub fn power_off(&mut self) {
        if let Some(holder) = self.holder.take() {
            kill(holder, "KILL");
            let _ = wait_for("the holder to die", Duration::from_secs(10), || {
                Ok((!pid_alive(holder)).then_some(()))
            });
        }
        if let Some(mut unshare) = self.unshare.take() {
            let _ = unshare.kill();
            let _ = unshare.wait();
        }
        // The kernel killed every process of the PID namespace with its init; make sure.
        if let Some(pid_ns) = self.pid_ns.take() {
            let _ = wait_for(
                "the host's processes to die",
                Duration::from_secs(10),
                || {
                    let left = processes_in(&pid_ns);
                    left.iter().for_each(|pid| kill(*pid, "KILL"));
                    Ok(left.is_empty().then_some(()))
                },
            );
        }
        if let Some(mut engine) = self.engine.take() {
            let _ = wait_for("nsenter to exit", Duration::from_secs(5), || {
                Ok(engine.try_wait().ok().flatten().map(|_| ()))
            });
            let _ = engine.kill();
            let _ = engine.wait();
        }
        unmount_under(&self.dir);
        let _ = ip(&["link", "del", &self.veth]);
        let _ = ip(&["netns", "del", &self.netns]);
        if self.dir.exists() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        self.net
            .addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.spec.private_ip);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.power_off();
    }
}

/// Live processes in the PID namespace `pid_ns` (as `readlink /proc/PID/ns/pid` shows it).
fn processes_in(pid_ns: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/ns/pid"))
                .is_ok_and(|ns| ns.to_string_lossy() == pid_ns)
                && pid_alive(*pid)
        })
        .collect()
}

/// What the host whose directory is `dir` (`/tmp/flh/<pid>-<n>`, [`Host::dir`]) left in the
/// root namespace, if anything: its network namespace, veth, mounts, directory, processes.
pub fn leftovers(dir: &Path) -> Vec<String> {
    let tag = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let (pid, n) = tag.split_once('-').unwrap_or_default();
    let netns = format!("fl-{tag}");
    let netns = netns.as_str();
    let veth = match (pid.parse::<u32>(), n.parse::<u32>()) {
        (Ok(pid), Ok(n)) => format!("flv{pid:x}-{n:x}"),
        _ => String::new(),
    };
    let mut found = Vec::new();
    if ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(netns))
    {
        found.push(format!("network namespace {netns}"));
    }
    if !veth.is_empty() && Path::new("/sys/class/net").join(&veth).exists() {
        found.push(format!("veth {veth}"));
    }
    for point in mounts_under(dir) {
        found.push(format!("mount {}", point.display()));
    }
    if dir.exists() {
        found.push(format!("directory {}", dir.display()));
    }
    let needle = dir.to_string_lossy();
    for pid in processes_with(&needle)
        .into_iter()
        .chain(processes_with(&format!("flotilla-host {tag};")))
    {
        found.push(format!("process {pid}"));
    }
    found
}
