//! `flotilla provider link aws` against the real `flotilla server` on moto (through the
//! testkit proxy): keys AWS refuses are reported with the reasons and exit 1 and change
//! nothing; accepted keys are linked, used for a deploy, and appear in clear neither in the
//! database files nor in the server's log.

use std::process::Output;

use flotilla_testkit::server::isolate_env;
use flotilla_testkit::{DatabaseKind, Fault, MotoAccount, Rule};

use crate::support::{Server, server};

const KEY_ID: &str = "AKIAE2ELINKEDKEY";
const SECRET: &str = "e2e/linked+Secret/Key0123456789abcdefXYZ";

async fn flotilla(server: &Server, args: &[&str]) -> Output {
    isolate_env(&mut tokio::process::Command::new(env!(
        "CARGO_BIN_EXE_flotilla"
    )))
    .args(args)
    .env("FLOTILLA_HOST", &server.base)
    .env("FLOTILLA_USER", &server.user)
    .env("FLOTILLA_APIKEY", &server.key)
    .output()
    .await
    .expect("run flotilla")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_keys_are_validated_stored_sealed_and_used() {
    let MotoAccount { proxy, .. } = MotoAccount::start().await;
    // The keys are looked for in the SQLite database's files: SQLite is pinned.
    let server = Server::start_with(
        server(&proxy.endpoint())
            .database(DatabaseKind::Sqlite)
            .args(["--node-ready", "running"]),
        reqwest::Client::new(),
    )
    .await;

    // Keys AWS refuses everywhere: the reasons, exit 1, nothing linked.
    proxy.add_rule(Rule::any().fault(Fault::AuthFailure));
    let refused = flotilla(
        &server,
        &[
            "provider",
            "link",
            "aws",
            "--access-key-id",
            "AKIAREFUSED",
            "--secret-access-key",
            "refused-secret",
        ],
    )
    .await;
    proxy.clear_rules();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stdout));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("Invalid AWS credentials or insufficient EC2 permissions"),
        "{stderr}"
    );
    assert!(
        stderr.contains("aws ec2 run-instances --dry-run"),
        "{stderr}"
    );
    let shown = flotilla(&server, &["provider", "show", "aws"]).await;
    assert!(text(&shown.stdout).contains("no keys linked"), "{shown:?}");

    // Accepted keys: the per-region table, then the server uses them.
    let linked = flotilla(
        &server,
        &[
            "provider",
            "link",
            "aws",
            "--access-key-id",
            KEY_ID,
            "--secret-access-key",
            SECRET,
        ],
    )
    .await;
    let stdout = text(&linked.stdout);
    assert!(linked.status.success(), "{}", text(&linked.stderr));
    assert!(stdout.contains("REGION"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("us-east-1") && l.ends_with("ok")),
        "{stdout}"
    );
    assert!(!stdout.contains(SECRET));
    let shown = flotilla(&server, &["provider", "show", "aws"]).await;
    assert!(text(&shown.stdout).contains(KEY_ID), "{shown:?}");

    let create = flotilla(
        &server,
        &[
            "nodecluster",
            "create",
            "linked",
            "aws",
            "us-east-1",
            "t3.micro",
            "-t",
            "1",
            "--sync",
        ],
    )
    .await;
    assert!(
        create.status.success(),
        "{}\n{}",
        text(&create.stderr),
        server.log()
    );

    // Neither key in clear at rest or in the log.
    let log = server.log();
    assert!(!log.contains(SECRET), "the log holds the secret:\n{log}");
    assert!(
        !log.contains(KEY_ID),
        "the log holds the access key id:\n{log}"
    );
    let data = server.data_dir();
    let mut checked = 0;
    for name in ["flotilla.db", "flotilla.db-wal", "flotilla.db-shm"] {
        let Ok(bytes) = std::fs::read(data.join(name)) else {
            continue;
        };
        checked += 1;
        assert!(!contains(&bytes, SECRET), "{name} holds the secret");
        assert!(!contains(&bytes, KEY_ID), "{name} holds the access key id");
    }
    assert!(checked > 0, "no database file in {}", data.display());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("secret.key"))
        .expect("secret.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
