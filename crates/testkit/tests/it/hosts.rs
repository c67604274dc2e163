//! Emulated hosts: real engines in their own namespaces, reachable from each other and from
//! the test, forming a swarm; and nothing of them left once they are dropped.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use flotilla_testkit::docker::BUSYBOX_INDEX;
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

fn remains(host: &Host) -> (String, String, PathBuf) {
    (
        host.netns().to_owned(),
        host.veth().to_owned(),
        host.dir().to_path_buf(),
    )
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
    one.docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "2",
        "--endpoint-mode",
        "dnsrr",
        "--publish",
        "mode=host,target=80,published=8080",
        BUSYBOX_IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ])
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
    for (netns, veth, dir) in &remains {
        let left = leftovers(netns, veth, dir);
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
    let ((netns, veth, dir), bridge) = remains_of.expect("the host booted");
    let left = leftovers(&netns, &veth, &dir);
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!PathBuf::from("/sys/class/net").join(&bridge).exists());
}
