//! Emulated hosts: real engines in their own namespaces, reachable from each other and from
//! the test, forming a swarm; and nothing of them left once they are dropped.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use flotilla_testkit::docker::{BUSYBOX_INDEX, httpd_service};
use flotilla_testkit::host::leftovers;
use flotilla_testkit::{BUSYBOX_IMAGE, Host, HostNetwork, HostSpec};

/// Polls `check` until it holds, or panics with `what` and the last observation.
fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn remains(host: &Host) -> PathBuf {
    host.dir().to_path_buf()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn two_hosts_reach_each_other_form_a_swarm_and_serve_http() {
    let network = HostNetwork::new().expect("a host network");
    let bridge = network.bridge().to_owned();
    let ip1 = Ipv4Addr::new(10, 0, 1, 5);
    let ip2 = Ipv4Addr::new(10, 0, 2, 7);
    let (one, two) = std::thread::scope(|s| {
        let one = s.spawn(|| network.boot(HostSpec::new(ip1)));
        let two = s.spawn(|| network.boot(HostSpec::new(ip2)));
        (
            one.join().expect("boot").expect("host 1"),
            two.join().expect("boot").expect("host 2"),
        )
    });
    let remains = [remains(&one), remains(&two)];

    // Each engine answers, has the image, and is named after its instance.
    for host in [&one, &two] {
        let name = host
            .docker(&["info", "--format", "{{.Name}}"])
            .expect("the command succeeds");
        assert_eq!(name.trim(), host.hostname());
        let images = host
            .docker(&["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
            .expect("the command succeeds");
        assert!(images.lines().any(|l| l == BUSYBOX_IMAGE), "{images}");
        assert_eq!(
            host.exec(&["hostname"])
                .expect("the command succeeds")
                .trim(),
            host.hostname()
        );
    }
    assert_ne!(one.hostname(), two.hostname());

    // Hosts of different /24s reach each other directly, and the gateway reaches both.
    assert!(
        one.exec(&["busybox", "ping", "-c1", "-W5", &ip2.to_string()])
            .is_ok()
    );
    assert!(
        two.exec(&["busybox", "ping", "-c1", "-W5", &ip1.to_string()])
            .is_ok()
    );
    assert!(
        one.exec(&[
            "busybox",
            "ping",
            "-c1",
            "-W5",
            &network.gateway().to_string()
        ])
        .is_ok()
    );
    // A container runs, and on the host network it sees the host's address.
    let addresses = one
        .docker(&[
            "run",
            "--rm",
            "--network",
            "host",
            BUSYBOX_IMAGE,
            "ip",
            "-4",
            "-o",
            "addr",
        ])
        .expect("the command succeeds");
    assert!(addresses.contains(&format!("inet {ip1}/32")), "{addresses}");

    // A swarm of the two.
    one.docker(&["swarm", "init", "--advertise-addr", &ip1.to_string()])
        .expect("the command succeeds");
    let token = one
        .docker(&["swarm", "join-token", "-q", "worker"])
        .expect("the command succeeds");
    two.docker(&[
        "swarm",
        "join",
        "--token",
        token.trim(),
        &format!("{ip1}:2377"),
    ])
    .expect("the command succeeds");
    wait_until("both nodes Ready", Duration::from_secs(60), || {
        let nodes = one
            .docker(&["node", "ls", "--format", "{{.Hostname}} {{.Status}}"])
            .map_err(|e| e.to_string())?;
        let mut ready: Vec<&str> = nodes
            .lines()
            .filter_map(|l| l.strip_suffix(" Ready"))
            .collect();
        ready.sort();
        let mut want = vec![one.hostname(), two.hostname()];
        want.sort();
        (ready == want).then_some(()).ok_or(nodes)
    });

    // A service with a host-mode published port, on both nodes.
    one.docker(&httpd_service(
        "web",
        &[
            "--replicas",
            "2",
            "--endpoint-mode",
            "dnsrr",
            "--publish",
            "mode=host,target=80,published=8080",
        ],
    ))
    .expect("the command succeeds");
    let rt = runtime();
    for ip in [ip1, ip2] {
        wait_until(
            &format!("web answering on {ip}:8080"),
            Duration::from_secs(90),
            || {
                let answer = rt
                    .block_on(network.http_get(SocketAddrV4::new(ip, 8080), "/index.html"))
                    .map_err(|e| e.to_string())?;
                answer.ends_with(BUSYBOX_INDEX).then_some(()).ok_or(answer)
            },
        );
    }
    let tasks = one
        .docker(&["service", "ps", "web", "--format", "{{.Node}}"])
        .expect("the command succeeds");
    assert!(
        tasks.contains(one.hostname()) && tasks.contains(two.hostname()),
        "{tasks}"
    );

    // Power off: nothing of the hosts or the network is left.
    drop((one, two));
    drop(network);
    for dir in &remains {
        let left = leftovers(dir);
        assert!(left.is_empty(), "left behind: {left:?}");
    }
    assert!(!PathBuf::from("/sys/class/net").join(&bridge).exists());
}

#[test]
fn a_panicking_test_leaves_no_host_behind() {
    let mut remains_of = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let network = HostNetwork::new().expect("a host network");
        let host = network
            .boot(HostSpec::new(Ipv4Addr::new(10, 1, 3, 9)))
            .expect("a host");
        remains_of = Some((remains(&host), network.bridge().to_owned()));
        // The engine restarts with its state, as across `systemctl restart docker`.
        let mut host = host;
        host.docker(&["tag", BUSYBOX_IMAGE, "kept:1"])
            .expect("the command succeeds");
        host.stop_engine(Duration::from_secs(20))
            .expect("the engine stops");
        assert!(host.docker(&["version"]).is_err());
        host.start_engine().expect("the engine starts again");
        let images = host
            .docker(&["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
            .expect("the command succeeds");
        assert!(images.contains("kept:1"), "{images}");
        host.docker(&[
            "run",
            "-d",
            "--name",
            "sleeper",
            BUSYBOX_IMAGE,
            "sleep",
            "1000",
        ])
        .expect("the command succeeds");
        panic!("the test fails with a container running");
    }));
    assert!(outcome.is_err());
    let (dir, bridge) = remains_of.expect("the host booted");
    let left = leftovers(&dir);
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!PathBuf::from("/sys/class/net").join(&bridge).exists());
}

/// The instance runner in docker mode, with a stand-in for `flotilla agent` (a shell script
/// that reports what it sees: its arguments, hostname, engine and the server through the
/// forwarder) and a stand-in server that records where connections come from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_boots_a_host_per_instance_and_powers_it_off_on_termination() {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    use base64::Engine as _;
    use flotilla_testkit::{InstanceRunner, MotoAccount, RunnerConfig};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // The stand-in server: answers any request, remembers each connection's source.
    let server = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = server.local_addr().expect("address").port();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    let server_task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, peer)) = server.accept().await else {
                continue;
            };
            seen.lock().expect("peers").push(peer.ip());
            tokio::spawn(async move {
                let mut buffer = [0_u8; 1024];
                let _ = stream.read(&mut buffer).await;
                let _ = stream
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                    .await;
            });
        }
    });

    let dir = tempfile::tempdir().expect("a temporary directory");
    let agent = dir.path().join("fake-flotilla");
    std::fs::write(
        &agent,
        r#"#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in
    --server) server=$2; shift ;;
    --state-file) state=$2; shift ;;
    --private-ip) private_ip=$2; shift ;;
    --bind-ip) bind_ip=$2; shift ;;
  esac
  shift
done
{
  echo "server=$server"
  echo "private_ip=$private_ip"
  echo "bind_ip=$bind_ip"
  echo "hostname=$(hostname)"
  echo "engine=$(docker -H "$DOCKER_HOST" info --format '{{.Name}}')"
  echo "answer=$(busybox wget -q -O - "$server/_ping")"
} > "$state.tmp"
mv "$state.tmp" "$state.report"
exec sleep 1000
"#,
    )
    .expect("write the stand-in agent");
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");

    let account = MotoAccount::start().await;
    let ec2 = account.ec2("us-east-1").await;
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .expect("vpc");
    let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).expect("vpc id");
    let subnet = ec2
        .create_subnet()
        .vpc_id(vpc_id)
        .cidr_block("10.0.3.0/24")
        .send()
        .await
        .expect("subnet");
    let subnet_id = subnet
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("subnet id");
    let user_data = format!(
        "#!/bin/sh\nFLOTILLA_CLUSTER=c-hosts\nFLOTILLA_FIRST_SLOT=1\nFLOTILLA_COUNT=1\nFLOTILLA_SERVER=http://127.0.0.1:{port}\nFLOTILLA_TOKEN=t\n"
    );
    let launched = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet_id)
        .user_data(base64::engine::general_purpose::STANDARD.encode(user_data))
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(
                    Tag::builder()
                        .key("flotilla:cluster")
                        .value("c-hosts")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("run instances");
    let instance = &launched.instances()[0];
    let id = instance.instance_id().expect("id").to_owned();
    let private_ip: Ipv4Addr = instance
        .private_ip_address()
        .expect("a private IP")
        .parse()
        .expect("IPv4");
    let private_dns = instance.private_dns_name().expect("a DNS name").to_owned();

    let mut config = RunnerConfig::new(account.inspector.endpoint(), &agent);
    config.docker = true;
    let runner = InstanceRunner::start(config).await;

    // The host boots, its agent runs inside it and reports.
    let deadline = Instant::now() + Duration::from_secs(120);
    let report = loop {
        let reports: Vec<PathBuf> = std::fs::read_dir(std::env::temp_dir())
            .expect("temp dir")
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("flotilla-runner-")
            })
            .map(|e| e.path().join(format!("{id}.json.report")))
            .filter(|p| p.exists())
            .collect();
        if let Some(report) = reports.first() {
            break std::fs::read_to_string(report).expect("the report");
        }
        assert!(
            Instant::now() < deadline,
            "no report from the agent in its host; log: {}",
            runner.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let gateway = runner
        .network()
        .expect("docker mode has a network")
        .gateway();
    assert!(
        report.contains(&format!("private_ip={private_ip}\n")),
        "{report}"
    );
    assert!(report.contains("bind_ip=\n"), "{report}");
    assert!(
        report.contains(&format!("hostname={private_dns}\n")),
        "{report}"
    );
    assert!(
        report.contains(&format!("engine={private_dns}\n")),
        "{report}"
    );
    assert!(
        report.contains(&format!("server=http://{gateway}:")),
        "{report}"
    );
    assert!(report.contains("answer=OK"), "{report}");
    // The server saw the agent's own loopback address, as in plain mode.
    let agent_ip = runner.agents().get(&id).copied().expect("a live agent");
    assert!(
        peers
            .lock()
            .expect("peers")
            .contains(&std::net::IpAddr::V4(agent_ip)),
        "the server saw {:?}, the agent is {agent_ip}",
        peers.lock().expect("peers")
    );
    assert_eq!(runner.hosts().get(&id), Some(&private_ip));
    let socket = runner.docker_host(&id).expect("the host's engine");
    let host_dir = PathBuf::from(socket.trim_start_matches("unix://"))
        .parent()
        .expect("the host's directory")
        .to_path_buf();
    let images = runner
        .docker(
            &id,
            &["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
        )
        .expect("the engine answers");
    assert!(images.contains(BUSYBOX_IMAGE), "{images}");

    // Terminating the instance powers the host off.
    ec2.terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .expect("terminate");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(runner.hosts().is_empty() && leftovers(&host_dir).is_empty()) {
        assert!(
            Instant::now() < deadline,
            "the host outlived its instance: {:?}",
            leftovers(&host_dir)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(runner.agents().is_empty());
    drop(runner);
    server_task.abort();
}

/// What a test process killed before its hosts were dropped leaves behind (made by hand here,
/// under a PID that is dead) is removed by the sweep; nothing of a live process is touched.
#[test]
fn the_sweep_removes_what_dead_test_processes_left() {
    use std::process::{Command, Stdio};
    let ip = |args: &[&str]| {
        let status = Command::new("ip").args(args).status().expect("ip runs");
        assert!(status.success(), "ip {args:?}");
    };
    // The process's own sweep (run by the first host network any test here makes) must not
    // run in the middle of the set-up below: run it now.
    flotilla_testkit::host::sweep_once();
    let mut gone = Command::new("true").spawn().expect("true");
    gone.wait().expect("true exits");
    let dead = gone.id();
    let tag = format!("{dead}-1");
    let netns = format!("fl-{tag}");
    let bridge = format!("flb{dead:x}-1");
    let veth = format!("flv{dead:x}-2");
    let table = ((1_u32 << 30) + (dead << 8) + 1).to_string();
    let dir = PathBuf::from(flotilla_testkit::host::HOSTS_DIR).join(&tag);
    ip(&["netns", "add", &netns]);
    ip(&["link", "add", &bridge, "type", "bridge"]);
    ip(&["link", "set", &bridge, "up"]);
    ip(&[
        "link",
        "add",
        &veth,
        "type",
        "veth",
        "peer",
        "name",
        &format!("flv{dead:x}-3"),
    ]);
    ip(&["route", "add", "default", "dev", &bridge, "table", &table]);
    ip(&[
        "rule",
        "add",
        "from",
        "100.127.255.254",
        "table",
        &table,
        "pref",
        "100",
    ]);
    std::fs::create_dir_all(dir.join("x")).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(dir.join("x"))
        .status()
        .expect("mount runs");
    assert!(mounted.success());
    /// Kills the stand-in holder if the sweep did not (a failing test must not leave it).
    struct Holder(std::process::Child);
    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut holder = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "sh", "-c"])
        .arg(format!(": flotilla-host {tag}; exec sleep 1000"))
        .stdin(Stdio::null())
        .spawn()
        .map(Holder)
        .expect("a stand-in holder");
    // The sweep finds holders by their command line: wait until the child has exec'd
    // `unshare` (right after the fork it still carries this test binary's command line).
    let pid = holder.0.id();
    wait_until("the holder to exec", Duration::from_secs(10), || {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| e.to_string())?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&format!("flotilla-host {tag}")) {
            Ok(())
        } else {
            Err(cmdline)
        }
    });

    flotilla_testkit::host::sweep();

    wait_until("the holder to be killed", Duration::from_secs(10), || {
        holder
            .0
            .try_wait()
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .ok_or_else(|| "alive".to_owned())
    });
    let left = leftovers(&dir);
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!PathBuf::from("/sys/class/net").join(&bridge).exists());
    let rules = Command::new("ip")
        .args(["rule", "show"])
        .output()
        .expect("ip rule");
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains(&format!("lookup {table}")),
        "the rule is left"
    );
}
