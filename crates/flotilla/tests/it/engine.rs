//! `flotilla engine validate|up|show|down`: create, scale, repeat, resume, bad input, teardown.

use std::collections::BTreeMap;
use std::process::Output;

use flotilla_testkit::inspect::{self, Kind};
use flotilla_testkit::{Fault, FaultProxy, MotoAccount, Rule};

const OWNER: &str = "flotilla-e2e";
use serde_json::Value;

struct Env {
    proxy: FaultProxy,
    inspect: FaultProxy,
}

impl Env {
    async fn new() -> Env {
        let account = MotoAccount::start().await;
        Env {
            proxy: account.proxy,
            inspect: account.inspector,
        }
    }

    async fn flotilla(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .env("FLOTILLA_AWS_ENDPOINT_URL", self.proxy.endpoint())
            .env("AWS_ACCESS_KEY_ID", "AKIAE2E")
            .env("AWS_SECRET_ACCESS_KEY", "e2e-secret")
            .env("AWS_REGION", "us-east-1")
            .env("FLOTILLA_OWNER", OWNER)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .output()
            .await
            .expect("run flotilla")
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["engine", "--format", "json"];
        all.extend_from_slice(args);
        let output = self.flotilla(&all).await;
        assert!(
            output.status.success(),
            "flotilla {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON output")
    }

    async fn ec2(&self) -> aws_sdk_ec2::Client {
        inspect::ec2_client(&self.inspect.endpoint(), "us-east-1").await
    }

    /// Running instances per AZ and the number of owned VPCs and subnets, as moto sees them.
    async fn state(&self) -> (BTreeMap<String, usize>, usize, usize) {
        let ec2 = self.ec2().await;
        let running = inspect::instances_per_zone(&ec2, &["running"]).await;
        let vpcs = inspect::owned(&ec2, OWNER, Kind::Vpc).await.len();
        let subnets = inspect::owned(&ec2, OWNER, Kind::Subnet).await.len();
        (running, vpcs, subnets)
    }
}

fn per_az(output: &Value) -> Vec<u64> {
    output["nodes_per_az"]
        .as_object()
        .expect("nodes_per_az")
        .values()
        .filter_map(Value::as_u64)
        .collect()
}

const UP: &[&str] = &[
    "up",
    "--name",
    "web",
    "--region",
    "us-east-1",
    "--azs",
    "us-east-1a,us-east-1b,us-east-1c",
];

fn up(nodes: &str) -> Vec<&str> {
    let mut args = UP.to_vec();
    args.extend_from_slice(&["--nodes", nodes]);
    args
}

#[tokio::test]
async fn up_creates_scales_and_down_removes_everything() {
    let env = Env::new().await;
    let created = env.json(&up("6")).await;
    assert_eq!(created["cluster"]["current_num_nodes"], 6);
    assert_eq!(per_az(&created), vec![2, 2, 2]);
    assert_eq!(created["network"]["vpc_cidr"], "10.78.0.0/16");
    assert!(
        created["aws_calls"].as_u64().is_some_and(|n| n <= 25),
        "{}",
        created["aws_calls"]
    );

    let nine = env.json(&up("9")).await;
    assert_eq!(per_az(&nine), vec![3, 3, 3]);
    let four = env.json(&up("4")).await;
    let counts = per_az(&four);
    assert_eq!(counts.iter().sum::<u64>(), 4);
    assert!(
        counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0) <= 1,
        "{counts:?}"
    );
    let (running, vpcs, subnets) = env.state().await;
    assert_eq!(running.values().sum::<usize>(), 4);
    assert_eq!((vpcs, subnets), (1, 3));

    let shown = env
        .json(&["show", "--name", "web", "--region", "us-east-1"])
        .await;
    assert_eq!(shown["cluster"]["current_num_nodes"], 4);
    assert_eq!(
        shown["cluster"]["uuid"], created["cluster"]["uuid"],
        "the same name is the same cluster"
    );

    let down = env
        .json(&["down", "--name", "web", "--region", "us-east-1"])
        .await;
    assert_eq!(down["terminated"].as_array().map(Vec::len), Some(4));
    let (running, vpcs, subnets) = env.state().await;
    assert!(running.is_empty());
    assert_eq!((vpcs, subnets), (0, 0), "the network is gone");
}

#[tokio::test]
async fn an_interrupted_up_is_finished_by_running_it_again() {
    let env = Env::new().await;
    env.proxy.add_rule(
        Rule::action("RunInstances")
            .skip_dry_run()
            .in_az("us-east-1b")
            .times(1)
            .fault(Fault::Error {
                status: 400,
                code: "Blocked".into(),
                message: "injected".into(),
            }),
    );
    let mut args = vec!["engine"];
    args.extend(up("6"));
    let failed = env.flotilla(&args).await;
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("Blocked"), "{stderr}");
    let (running, _, _) = env.state().await;
    assert_eq!(
        running.values().sum::<usize>(),
        4,
        "the other AZs' launches went through"
    );

    let resumed = env.json(&up("6")).await;
    assert_eq!(per_az(&resumed), vec![2, 2, 2]);
    let (running, vpcs, subnets) = env.state().await;
    assert_eq!(running.values().sum::<usize>(), 6);
    assert_eq!((vpcs, subnets), (1, 3), "nothing created twice");
}

#[tokio::test]
async fn bad_flags_are_refused_naming_the_field_and_nothing_is_created() {
    let env = Env::new().await;
    let cases: &[(&[&str], &str)] = &[
        (
            &["engine", "up", "--name", "bad name", "--nodes", "1"],
            "name: 'bad name' is not a valid name",
        ),
        (
            &["engine", "up", "--name", "web", "--nodes", "lots"],
            "target_num_nodes: must be a whole number",
        ),
        (
            &["engine", "up", "--name", "web", "--disk", "2"],
            "disk: must be between 8 and 16384 GB",
        ),
        (
            &["engine", "up", "--name", "web", "--vpc-id", "my-vpc"],
            "provider_options.vpc.id: 'my-vpc' is not a valid id",
        ),
        (
            &[
                "engine",
                "up",
                "--name",
                "web",
                "--subnet",
                "subnet-0123abcd",
            ],
            "provider_options.vpc.id: required when vpc is given",
        ),
        (
            &["engine", "up", "--name", "web", "--azs", "us-east-1z"],
            "us-east-1z is not an availability zone of us-east-1",
        ),
    ];
    for (args, expected) in cases {
        let output = env.flotilla(args).await;
        assert!(!output.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
    }
    let (running, vpcs, _) = env.state().await;
    assert!(running.is_empty());
    assert_eq!(vpcs, 0);
}

#[tokio::test]
async fn validate_prints_every_region_and_fails_with_the_seed_message() {
    let env = Env::new().await;
    let ok = env.flotilla(&["engine", "validate"]).await;
    assert!(ok.status.success());
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        stdout.contains("sa-east-1") && stdout.contains("AWS credentials are valid"),
        "{stdout}"
    );

    env.proxy.add_rule(Rule::any().fault(Fault::AuthFailure));
    let bad = env
        .flotilla(&["engine", "validate", "--instance-type", "m3.medium"])
        .await;
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.starts_with("Invalid AWS credentials or insufficient EC2 permissions"),
        "{stderr}"
    );
    assert!(stderr.contains("bad credentials: AuthFailure"), "{stderr}");
    assert!(
        stderr.contains("aws ec2 run-instances --dry-run --region af-south-1"),
        "{stderr}"
    );
}

/// Kills `flotilla engine up` with SIGKILL while its K-th AWS call is in flight, for every K of
/// a run from nothing, then runs it again: every crash point converges to one network and the
/// asked nodes, balanced, with nothing created twice.
#[tokio::test]
async fn a_kill_9_at_every_call_of_an_up_converges_on_the_next_run() {
    let probe = Env::new().await;
    probe.json(&up("6")).await;
    let total = probe.proxy.total() as u64;
    assert!(total >= 20, "a run from nothing makes {total} calls");
    let mut converged = 0;
    for k in 1..=total {
        let env = Env::new().await;
        env.proxy.add_rule(
            Rule::any()
                .nth(k)
                .fault(Fault::Delay(std::time::Duration::from_secs(60))),
        );
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["engine"])
            .args(up("6"))
            .env("FLOTILLA_AWS_ENDPOINT_URL", env.proxy.endpoint())
            .env("AWS_ACCESS_KEY_ID", "AKIAE2E")
            .env("AWS_SECRET_ACCESS_KEY", "e2e-secret")
            .env("FLOTILLA_OWNER", OWNER)
            .env_remove("AWS_ENDPOINT_URL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        // Wait until every call before the K-th has finished and nothing moves any more.
        let mut last = usize::MAX;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            let done = env.proxy.total();
            if done as u64 >= k - 1 && done == last {
                break;
            }
            last = done;
        }
        child.start_kill().expect("SIGKILL");
        child.wait().await.expect("reaped");
        env.proxy.clear_rules();
        // Let calls the dead process had already sent finish at moto before the rerun looks.
        // (A create landing after the rerun looked is a real race too: the next run removes
        // the duplicate, which the aws suite tests on its own.)
        let mut last = env.proxy.total();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let now = env.proxy.total();
            if now == last {
                break;
            }
            last = now;
        }

        let resumed = env.json(&up("6")).await;
        assert_eq!(per_az(&resumed), vec![2, 2, 2], "k={k}");
        let (running, vpcs, subnets) = env.state().await;
        assert_eq!(running.values().sum::<usize>(), 6, "k={k}");
        assert_eq!((vpcs, subnets), (1, 3), "k={k}: nothing created twice");
        let ec2 = env.ec2().await;
        for kind in [Kind::InternetGateway, Kind::RouteTable, Kind::SecurityGroup] {
            assert_eq!(
                inspect::owned(&ec2, OWNER, kind).await.len(),
                1,
                "k={k}: {kind:?}"
            );
        }
        converged += 1;
    }
    assert_eq!(
        converged, total,
        "{converged} of {total} crash points converged"
    );
}

#[tokio::test]
async fn named_profiles_work_and_missing_credentials_are_named() {
    let env = Env::new().await;
    let dir = std::env::temp_dir().join(format!("flotilla-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("credentials"),
        "[team]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = s\n",
    )
    .expect("credentials");
    std::fs::write(dir.join("config"), "[profile team]\nregion = us-east-1\n").expect("config");
    let run = |profile: Option<&'static str>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
        command.arg("engine");
        if let Some(profile) = profile {
            command.args(["--profile", profile]);
        }
        command
            .args(["validate"])
            .env("FLOTILLA_AWS_ENDPOINT_URL", env.proxy.endpoint())
            .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("credentials"))
            .env("AWS_CONFIG_FILE", dir.join("config"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL");
        command.output()
    };
    let with_profile = run(Some("team")).await.expect("run");
    assert!(
        with_profile.status.success(),
        "{}",
        String::from_utf8_lossy(&with_profile.stderr)
    );
    let without = run(None).await.expect("run");
    assert_eq!(without.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(
        stderr.contains("bad credentials: NoCredentials: no usable AWS credentials"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
