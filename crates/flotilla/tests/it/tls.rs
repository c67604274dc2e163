//! HTTPS end to end: `flotilla server --tls-cert --tls-key` with a CA and a certificate for
//! 127.0.0.1 made in the test (rcgen).
//!
//! * The API answers over https for a client that trusts the CA (`/_ping`, an authenticated
//!   GET, the events websocket over TLS), refuses plain http on the same port, and a client
//!   without the CA fails with a certificate error; the `flotilla` client commands work with
//!   `FLOTILLA_CA_CERT` and name the certificate problem without it.
//! * Bad settings stop the server with an error naming the flag or the file.
//! * A node's agent (run here by hand from the user data the server gave the instance in
//!   moto, which carries the CA of `--agent-ca-cert`) stops with a certificate error without
//!   `--ca-cert` and registers with it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use flotilla_api::uri;
use flotilla_testkit::MotoAccount;
use flotilla_testkit::inspect::ec2_client;
use flotilla_testkit::runner::parse_user_data;
use futures::StreamExt as _;
use serde_json::Value;

use crate::support::{LIMIT, Server, server};

/// A CA, a server certificate for 127.0.0.1 and localhost signed by it, and an unrelated CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("dir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params("Flotilla test CA"), ca_key).expect("CA");
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "flotilla test server");
        let server = params.signed_by(&server_key, &ca).expect("server cert");
        let other_key = rcgen::KeyPair::generate().expect("other key");
        let other = rcgen::CertifiedIssuer::self_signed(ca_params("Another CA"), other_key)
            .expect("other CA");
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("write PEM");
        };
        write("ca.pem", ca.pem());
        write("other-ca.pem", other.pem());
        write("server.pem", server.pem());
        write("server.key", server_key.serialize_pem());
        write("garbage.pem", "not a certificate\n".to_owned());
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn ca_params(name: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params
}

fn https_client(ca: Option<&Path>) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(flotilla_agent::tls::client_config(ca).expect("TLS config"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// `flotilla server` over TLS with a client that trusts its CA.
async fn start_tls_server(pki: &Pki, aws_endpoint: &str, extra: &[&str]) -> Server {
    let builder = server(aws_endpoint)
        .access_key_id("AKIAE2ETLS")
        .tls(pki.path("server.pem"), pki.path("server.key"))
        .args(extra);
    Server::start_with(builder, https_client(Some(&pki.path("ca.pem")))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_https_to_clients_that_trust_its_ca() {
    let pki = Pki::new();
    let MotoAccount { proxy, .. } = MotoAccount::start().await;
    let server = start_tls_server(&pki, &proxy.endpoint(), &["--node-ready", "running"]).await;

    assert!(server.api.ping().await.expect("ping"), "/_ping answers");
    let (status, listed) = server
        .call(reqwest::Method::GET, &uri::node_clusters(), None)
        .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["meta"]["total_count"], 0);

    // Over TLS the dashboard's session cookie is Secure (and HttpOnly, SameSite=Strict).
    let login = https_client(Some(&pki.path("ca.pem")))
        .post(format!("{}{}", server.base, uri::session()))
        .json(&serde_json::json!({"user": server.user, "key": server.key}))
        .send()
        .await
        .expect("dashboard login");
    assert_eq!(login.status(), 200);
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    for part in [
        "flotilla_session=",
        "; Secure",
        "; HttpOnly",
        "; SameSite=Strict",
    ] {
        assert!(cookie.contains(part), "{cookie}");
    }

    // Plain http to the TLS port gets no answer.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let plain = flotilla_api::Client::new(
        server.base.replacen("https://", "http://", 1),
        "",
        "",
        plain,
    )
    .ping()
    .await;
    assert!(plain.is_err(), "plain http answered: {plain:?}");

    // A client that trusts only the system's roots, or another CA, refuses the server.
    for ca in [None, Some(pki.path("other-ca.pem"))] {
        let error = flotilla_api::Client::new(&server.base, "", "", https_client(ca.as_deref()))
            .ping()
            .await
            .expect_err("untrusted certificate");
        assert!(
            flotilla_agent::tls::certificate_error(&error).is_some(),
            "a certificate error: {error:?}"
        );
    }

    // The events websocket works over TLS (upgrade on a rustls stream).
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        flotilla_agent::tls::client_config(Some(&pki.path("ca.pem"))).expect("config"),
    ));
    let port = server.base.rsplit(':').next().expect("port").to_owned();
    let tcp = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = format!("wss://127.0.0.1:{port}{}", flotilla_api::uri::events())
        .into_client_request()
        .expect("request");
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", server.user, server.key));
    request.headers_mut().insert(
        "Authorization",
        format!("Basic {basic}").parse().expect("header"),
    );
    let (mut socket, response) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("websocket over TLS");
    assert_eq!(response.status().as_u16(), 101);
    server.create_cluster("tls", 1).await;
    loop {
        let frame = tokio::time::timeout(LIMIT, socket.next())
            .await
            .expect("an event in time")
            .expect("open socket")
            .expect("frame");
        let Ok(text) = frame.to_text() else { continue };
        let event: Value = serde_json::from_str(text).expect("JSON");
        if event["type"] == "nodecluster" {
            break;
        }
    }

    // The client commands: with FLOTILLA_CA_CERT they work, without it they say why not.
    let cli = |ca: Option<&Path>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
        command
            .args(["nodecluster", "ls"])
            .env("FLOTILLA_HOST", &server.base)
            .env("FLOTILLA_USER", &server.user)
            .env("FLOTILLA_APIKEY", &server.key)
            .env_remove("DOCKERCLOUD_REST_HOST")
            .env_remove("FLOTILLA_CA_CERT");
        if let Some(ca) = ca {
            command.env("FLOTILLA_CA_CERT", ca);
        }
        command
    };
    let output = cli(Some(&pki.path("ca.pem"))).output().await.expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("tls"));
    let output = cli(None).output().await.expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not trusted"), "{stderr}");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_stop_the_server_with_the_flag_or_file_named() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("dir");
    let cert = pki.path("server.pem");
    let key = pki.path("server.key");
    let garbage = pki.path("garbage.pem");
    let missing = pki.path("missing.pem");
    let cases: Vec<(Vec<&Path>, Vec<&str>, String)> = vec![
        (vec![&cert], vec!["--tls-cert"], "--tls-key".to_owned()),
        (vec![&key], vec!["--tls-key"], "--tls-cert".to_owned()),
        (
            vec![&garbage, &key],
            vec!["--tls-cert", "--tls-key"],
            garbage.display().to_string(),
        ),
        (
            vec![&cert, &garbage],
            vec!["--tls-cert", "--tls-key"],
            garbage.display().to_string(),
        ),
        (
            vec![&missing, &key],
            vec!["--tls-cert", "--tls-key"],
            missing.display().to_string(),
        ),
        (
            vec![&cert, &key, &garbage],
            vec!["--tls-cert", "--tls-key", "--agent-ca-cert"],
            garbage.display().to_string(),
        ),
    ];
    for (files, flags, named) in cases {
        let mut command = server("http://127.0.0.1:9")
            .access_key_id("AKIAE2ETLS")
            .command(flotilla_testkit::free_port(), &dir.path().join("data"));
        for (flag, file) in flags.iter().zip(&files) {
            command.arg(flag).arg(file);
        }
        let output = tokio::time::timeout(LIMIT, command.output())
            .await
            .expect("exits in time")
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flags:?} started: {stderr}");
        assert!(stderr.contains(&named), "{flags:?}: {named} in {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registers_over_https_only_when_it_trusts_the_ca() {
    let pki = Pki::new();
    let MotoAccount {
        proxy,
        inspector: inspect,
        ..
    } = MotoAccount::start().await;
    let ca = pki.path("ca.pem");
    let ca_arg = ca.to_str().expect("UTF-8 path");
    let server = start_tls_server(
        &pki,
        &proxy.endpoint(),
        &["--node-ready", "agent", "--agent-ca-cert", ca_arg],
    )
    .await;
    assert!(server.base.starts_with("https://"));

    let uuid = server.create_and_deploy("secure", 1).await;

    // The instance's user data: the https URL, the token and the CA for the node.
    let ec2 = ec2_client(&inspect.endpoint(), "us-east-1").await;
    let started = Instant::now();
    let (instance_id, script) = loop {
        let reservations = ec2
            .describe_instances()
            .send()
            .await
            .expect("describe")
            .reservations
            .unwrap_or_default();
        let instance = reservations
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.instance_id().map(str::to_owned));
        if let Some(id) = instance {
            let attribute = ec2
                .describe_instance_attribute()
                .instance_id(&id)
                .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
                .send()
                .await
                .expect("user data");
            let encoded = attribute
                .user_data()
                .and_then(|v| v.value())
                .unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .expect("base64 user data");
            break (id, String::from_utf8(bytes).expect("UTF-8 user data"));
        }
        assert!(
            started.elapsed() < LIMIT,
            "no instance launched: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let boot = parse_user_data(&script, 0).expect("FLOTILLA_* values");
    assert_eq!(
        boot.server, server.base,
        "nodes reach the server over https"
    );
    let ca_pem = std::fs::read_to_string(&ca).expect("CA");
    let ca_body: String = ca_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let script_body: String = script.lines().collect();
    assert!(
        script.contains("cat > /etc/flotilla/ca.pem <<'PEM'") && script_body.contains(&ca_body),
        "the CA travels in the user data:\n{script}"
    );
    assert!(script.contains("--cacert /etc/flotilla/ca.pem"), "{script}");

    let state_dir = tempfile::tempdir().expect("dir");
    let agent = |ca: Option<&Path>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
        command
            .arg("agent")
            .args(["--server", &boot.server, "--cluster", &boot.cluster])
            .args(["--slot", &boot.slot.to_string()])
            .args(["--first-slot", &boot.first_slot.to_string()])
            .args(["--count", &boot.count.to_string()])
            .arg("--state-file")
            .arg(state_dir.path().join(format!("{instance_id}.json")))
            .args(["--bind-ip", "127.0.0.61", "--heartbeat-seconds", "0.3"])
            .env("FLOTILLA_TOKEN", &boot.token)
            .env("FLOTILLA_LOG", "info")
            .env_remove("FLOTILLA_CA_CERT")
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(ca) = ca {
            command.arg("--ca-cert").arg(ca);
        }
        command
    };

    // Without the CA: the agent stops at once and says why.
    let output = tokio::time::timeout(LIMIT, agent(None).output())
        .await
        .expect("the agent gives up")
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("not trusted") && stderr.contains("--ca-cert"),
        "{stderr}"
    );

    // With it: the node registers.
    let mut running = agent(Some(&ca))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");
    let started = Instant::now();
    loop {
        let (_, listed) = server
            .call(
                reqwest::Method::GET,
                &format!("{}?node_cluster={uuid}", uri::nodes()),
                None,
            )
            .await;
        let nodes = listed["objects"].as_array().cloned().unwrap_or_default();
        if nodes.len() == 1 && nodes[0]["state"] == "Deployed" {
            assert_eq!(nodes[0]["public_ip"], "127.0.0.61", "{nodes:#?}");
            break;
        }
        if let Ok(Some(status)) = running.try_wait() {
            panic!("the agent exited ({status}): {}", server.log());
        }
        assert!(
            started.elapsed() < LIMIT,
            "never Deployed: {nodes:#?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = running.kill().await;
}
