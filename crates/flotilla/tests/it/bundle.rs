//! Client bundles with a real swarm (issue #15): a 1-manager swarm of a real engine, users
//! with `view` and `manage` grants on it and the server administrator each get a bundle
//! with `flotilla bundle create`, and Debian's real `docker` CLI, set up by the bundle's
//! `env.sh`, talks to the manager's Docker API proxy with it: the viewer lists services
//! and reads logs, the manager creates a plain service and execs into its container (a
//! hijacked connection) but is refused a bind mount of a host path (the refusal names the
//! roles), the administrator may, and a revoked bundle is refused at its next request.
//!
//! The CLI runs in the manager's network namespace (`nsenter --net`): the hosts' private
//! addresses are reachable only from inside the hosts' network (`flotilla_testkit::host`).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

use flotilla_api::uri;
use flotilla_testkit::docker::{BUSYBOX_IMAGE, docker_cli};
use flotilla_testkit::server::isolate_env;
use serde_json::{Value, json};

use crate::swarm::{Env, SWARM_LIMIT, all_ready, members};

/// A user of the test: name and API key.
struct User {
    name: String,
    key: String,
}

impl Env {
    /// `flotilla <args>` as `user`.
    async fn cli_as(&self, user: &User, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
        isolate_env(&mut command)
            .args(args)
            .env("FLOTILLA_HOST", &self.server.base)
            .env("FLOTILLA_USER", &user.name)
            .env("FLOTILLA_APIKEY", &user.key);
        command.output().await.expect("run flotilla")
    }

    /// A user with `role` on swarm `swarm`, through a team of its own in `default`.
    async fn user_with(&self, name: &str, role: &str, swarm: &str) -> User {
        let post = |path: String, body: Value| async move {
            let (status, answer) = self
                .server
                .call(reqwest::Method::POST, &path, Some(body))
                .await;
            assert_eq!(status, 201, "POST {path}: {answer}");
            answer
        };
        let created = post(uri::users(), json!({"username": name})).await;
        let key = created["api_key"]["key"]
            .as_str()
            .expect("the new user's key")
            .to_owned();
        let team = format!("{name}-team");
        post(
            uri::teams("default"),
            json!({"name": team, "members": [name]}),
        )
        .await;
        post(
            uri::grants("default"),
            json!({"team": team, "role": role, "resource": swarm}),
        )
        .await;
        User {
            name: name.to_owned(),
            key,
        }
    }

    /// `flotilla bundle create --swarm <swarm>` as `user`, unzipped into `dir/<user>`: the
    /// directory and the bundle's id.
    async fn bundle_for(&self, user: &User, swarm: &str, dir: &Path) -> (PathBuf, String) {
        let zip_path = dir.join(format!("{}.zip", user.name));
        let zip_text = zip_path.display().to_string();
        let output = self
            .cli_as(
                user,
                &[
                    "bundle", "create", "--swarm", swarm, "--out", &zip_text, "--format", "json",
                ],
            )
            .await;
        assert!(
            output.status.success(),
            "bundle create as {}: {}",
            user.name,
            String::from_utf8_lossy(&output.stderr)
        );
        let created: Value = serde_json::from_slice(&output.stdout).expect("json");
        let id = created["bundle"]["id"].as_str().expect("id").to_owned();
        let bundle_dir = dir.join(&user.name);
        let file = std::fs::File::open(&zip_path).expect("the zip");
        zip::ZipArchive::new(file)
            .expect("a zip")
            .extract(&bundle_dir)
            .expect("unzip");
        (bundle_dir, id)
    }
}

/// Runs the real `docker` CLI in `netns` after `. ./env.sh` in `bundle` (with DOCKER_HOST
/// replaced by `host`, the manager's private address).
fn docker_with(netns: &str, bundle: &Path, host: &str, args: &[&str]) -> Output {
    let config = bundle.join(".docker");
    std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args([
            "sh",
            "-c",
            r#"cd "$1" && . ./env.sh && export DOCKER_HOST="$2" && shift 2 && exec "$@""#,
            "sh",
        ])
        .arg(bundle)
        .arg(host)
        .arg(docker_cli())
        .args(args)
        .env("DOCKER_CONFIG", config)
        .output()
        .expect("run docker")
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundles_docker_cli_is_held_to_its_users_role_and_refused_once_revoked() {
    let (env, _) = Env::start(&[]).await;
    let uuid = env.create_swarm("bundled", 1, 0).await;
    let swarm = env
        .wait(&uuid, "the swarm forms", |s| {
            s["state"] == "Deployed" && all_ready(s, 1)
        })
        .await;
    let manager_uri = members(&swarm, "manager")[0]["node"]
        .as_str()
        .expect("the manager's node")
        .to_owned();
    let instance = env.instance_of(&manager_uri).await;
    let private_ip = env.runner.hosts()[&instance].to_string();
    let netns = env.runner.netns(&instance).expect("the manager's host");
    let host = format!("tcp://{private_ip}:2376");

    let viewer = env.user_with("viewer", "view", &uuid).await;
    let maker = env.user_with("maker", "manage", &uuid).await;
    let admin = User {
        name: env.server.user.clone(),
        key: env.server.key.clone(),
    };
    let dir = tempfile::tempdir().expect("dir");
    let (viewer_bundle, viewer_id) = env.bundle_for(&viewer, "bundled", dir.path()).await;
    let (maker_bundle, _) = env.bundle_for(&maker, &uuid, dir.path()).await;
    let (admin_bundle, _) = env.bundle_for(&admin, "bundled", dir.path()).await;

    // UCP's layout, and env.sh points at the manager (its public address when it has one).
    for file in [
        "ca.pem", "cert.pem", "key.pem", "cert.pub", "env.sh", "env.ps1", "env.cmd",
    ] {
        assert!(viewer_bundle.join(file).exists(), "{file} is in the bundle");
    }
    let env_sh = std::fs::read_to_string(viewer_bundle.join("env.sh")).expect("env.sh");
    let (_, node) = env
        .server
        .call(reqwest::Method::GET, &manager_uri, None)
        .await;
    let public_ip = node["public_ip"].as_str().unwrap_or_default().to_owned();
    let shown = env_sh
        .lines()
        .find_map(|l| l.strip_prefix("export DOCKER_HOST="))
        .unwrap_or_else(|| panic!("no DOCKER_HOST in env.sh: {env_sh}"));
    assert!(
        shown == format!("tcp://{public_ip}:2376") || shown == host,
        "env.sh points at {shown}, not at the manager ({public_ip} or {private_ip})"
    );
    assert!(env_sh.contains("export DOCKER_TLS_VERIFY=1"), "{env_sh}");

    // The proxy starts once the agent's report shows a manager: wait for it to answer.
    let started = Instant::now();
    loop {
        let output = docker_with(
            &netns,
            &viewer_bundle,
            &host,
            &["version", "--format", "{{.Server.Version}}"],
        );
        if output.status.success() {
            break;
        }
        assert!(
            started.elapsed() < SWARM_LIMIT,
            "the proxy never answered: {}\nagents:\n{}",
            text(&output),
            env.runner.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    // view: lists services.
    let listed = docker_with(&netns, &viewer_bundle, &host, &["service", "ls"]);
    assert!(
        listed.status.success(),
        "viewer's service ls: {}",
        text(&listed)
    );
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("REPLICAS"),
        "{}",
        text(&listed)
    );

    let create = |name: &str, bind: bool| {
        let mut args = vec![
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--endpoint-mode",
            "dnsrr",
            "--name",
            name,
        ];
        if bind {
            args.extend(["--mount", "type=bind,source=/etc,target=/host-etc"]);
        }
        args.extend([BUSYBOX_IMAGE, "sleep", "3600"]);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |bundle: &Path, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_with(&netns, bundle, &host, &args)
    };

    // view may not create; manage may create a plain service but not bind-mount the host.
    let refused = run(&viewer_bundle, create("by-viewer", false));
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("your role is 'view'"),
        "{}",
        text(&refused)
    );
    let plain = run(&maker_bundle, create("plain", false));
    assert!(
        plain.status.success(),
        "manage creates a plain service: {}",
        text(&plain)
    );
    // Hijacked and streamed requests pass through for a role that may make them: exec
    // (manage) into the plain service's container, logs (view).
    let started = Instant::now();
    let container = loop {
        let listed = env
            .runner
            .docker(&instance, &["ps", "-q", "--filter", "name=plain"])
            .unwrap_or_default();
        if let Some(id) = listed.lines().next() {
            break id.trim().to_owned();
        }
        assert!(
            started.elapsed() < SWARM_LIMIT,
            "the plain service's task never ran: {:?}",
            env.runner
                .docker(&instance, &["service", "ps", "--no-trunc", "plain"])
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let exec = docker_with(
        &netns,
        &maker_bundle,
        &host,
        &["exec", &container, "echo", "through-the-proxy"],
    );
    assert!(exec.status.success(), "manage execs: {}", text(&exec));
    assert!(
        String::from_utf8_lossy(&exec.stdout).contains("through-the-proxy"),
        "{}",
        text(&exec)
    );
    let logs = docker_with(&netns, &viewer_bundle, &host, &["logs", &container]);
    assert!(logs.status.success(), "view reads logs: {}", text(&logs));
    let exec = docker_with(&netns, &viewer_bundle, &host, &["exec", &container, "true"]);
    assert!(!exec.status.success(), "view may not exec: {}", text(&exec));
    let refused = run(&maker_bundle, create("hostmount", true));
    assert!(!refused.status.success(), "{}", text(&refused));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("bind mount of the host path /etc")
            && message.contains("'admin'")
            && message.contains("your role is 'manage'"),
        "{}",
        text(&refused)
    );
    // admin may.
    let allowed = run(&admin_bundle, create("hostmount", true));
    assert!(
        allowed.status.success(),
        "admin bind-mounts: {}",
        text(&allowed)
    );
    let services = env
        .runner
        .docker(&instance, &["service", "ls", "--format", "{{.Name}}"])
        .expect("service ls on the engine");
    let mut names: Vec<&str> = services.lines().collect();
    names.sort();
    assert_eq!(
        names,
        ["hostmount", "plain"],
        "exactly what was allowed exists"
    );

    // Revoked: refused at the very next request.
    let output = env.cli_as(&viewer, &["bundle", "rm", &viewer_id]).await;
    assert!(
        output.status.success(),
        "bundle rm: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed = docker_with(&netns, &viewer_bundle, &host, &["service", "ls"]);
    assert!(!listed.status.success(), "{}", text(&listed));
    assert!(
        String::from_utf8_lossy(&listed.stderr).contains("was revoked"),
        "{}",
        text(&listed)
    );
    // The others' bundles still work.
    let listed = docker_with(&netns, &maker_bundle, &host, &["service", "ls"]);
    assert!(listed.status.success(), "{}", text(&listed));
}
