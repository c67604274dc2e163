//! The web dashboard in a real browser (issue #13): Debian's Chromium, headless, driven
//! through its chromedriver (W3C WebDriver, spoken here over HTTP with reqwest — a few
//! commands need no client crate) against a real `flotilla server` on moto with a real
//! agent per instance (the testkit's instance runner). One browser and one server go
//! through: log in; the launch wizard (the region's VPCs, Flotilla's own shown only once it
//! exists, the chosen VPC's subnets and security groups only, the server's nodes-per-AZ
//! preview); a 3-node cluster with Auto networking that becomes Deployed on the page without
//! a reload; a node whose agent is killed turning Unreachable on the page; forged changes
//! (no CSRF token, another site's Origin) refused; scaling from the list; a cluster
//! launched into a user's VPC made in moto, on two chosen subnets and a security group,
//! after a subnet of another VPC slipped into the page was refused with the field named;
//! the actions with a log, the events stream and the swarms page; removal after a
//! confirmation; logout; the failed-login throttle. Every wait polls the page with a
//! deadline (no fixed sleeps). Screenshots of each page go to
//! `$CARGO_TARGET_TMPDIR/dashboard-screenshots` (the README's are copies,
//! `docs/screenshots/`).
//!
//! Why raw WebDriver: chromedriver's W3C protocol is JSON over HTTP, and the handful of
//! commands used here (navigate, find, click, type, run a script, screenshot, cookies,
//! window size) are a few lines over the reqwest the crate already has — no new crate, so
//! nothing to download and nothing tied to a Chrome DevTools protocol version; Debian's
//! `chromium` and `chromium-driver` (installed by `scripts/test`) always match.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use flotilla_api::uri;
use flotilla_testkit::{InstanceRunner, MotoAccount, RunnerConfig};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Api, Server};

/// How long a cluster may take to deploy, scale or go away on moto.
const DEPLOY_LIMIT: Duration = Duration::from_secs(120);
/// How long the page may take to show something it was asked for.
pub(crate) const PAGE_LIMIT: Duration = Duration::from_secs(20);
/// The W3C WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One headless Chromium, through a chromedriver this test started on a free port.
pub(crate) struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    driver: Child,
    shots: PathBuf,
}

fn chromium_binary() -> &'static str {
    // Debian's /usr/bin/chromium is a shell wrapper; chromedriver wants the binary.
    if Path::new("/usr/lib/chromium/chromium").exists() {
        "/usr/lib/chromium/chromium"
    } else {
        "/usr/bin/chromium"
    }
}

impl Browser {
    pub(crate) async fn start() -> Browser {
        let port = flotilla_testkit::free_port();
        // Its own process group, so that the browsers it starts end with it (Drop).
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromedriver (apt-get install chromium chromium-driver): {e}")
            });
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(answer) = ready
                && let Ok(status) = answer.json::<Value>().await
                && status["value"]["ready"] == true
            {
                break;
            }
            assert!(started.elapsed() < PAGE_LIMIT, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium_binary(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1280,860", "--lang=en-US"],
            },
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver started no browser: {answer}"));
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Browser {
            http,
            session: format!("{base}/session/{id}"),
            driver,
            shots,
        }
    }

    /// One WebDriver command; its `value`.
    pub(crate) async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        } else if method == Method::POST {
            request = request.json(&json!({}));
        }
        let answer: Value = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if answer["value"]["error"].is_string() {
            panic!("{method} {path}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.command(Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    pub(crate) async fn find(&self, css: &str) -> String {
        let found = self
            .command(
                Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT].as_str().expect("element").to_owned()
    }

    pub(crate) async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.command(Method::POST, &format!("/element/{element}/click"), None)
            .await;
    }

    /// Clears a field and types `text` into it, as a user would.
    pub(crate) async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(Method::POST, &format!("/element/{element}/clear"), None)
            .await;
        self.command(
            Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub(crate) async fn run(&self, script: &str) -> Value {
        self.command(
            Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Polls `script` until it returns something other than `null`/`false`; that value.
    pub(crate) async fn wait(&self, what: &str, limit: Duration, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.run(script).await;
            if !(value.is_null() || value == false) {
                return value;
            }
            if started.elapsed() > limit {
                let page = self.run("return document.body.innerText").await;
                panic!("timed out after {limit:?} waiting for {what}; the page says:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The dashboard's login form.
    pub(crate) async fn open_login(&self, server: &Server) {
        self.goto(&format!("{}/", server.base)).await;
        self.wait(
            "the login form",
            PAGE_LIMIT,
            "return !document.getElementById('login-view').hidden",
        )
        .await;
    }

    pub(crate) async fn submit_login(&self, user: &str, key: &str) {
        self.fill("#login-user", user).await;
        self.fill("#login-key", key).await;
        self.click("#login-submit").await;
    }

    pub(crate) async fn screenshot(&self, name: &str) {
        let data = self.command(Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64"))
            .expect("PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("save screenshot");
    }

    pub(crate) async fn window(&self, width: u32, height: u32) {
        self.command(
            Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Ends the browser (the driver goes on Drop).
    pub(crate) async fn quit(&self) {
        let _ = self.http.delete(&self.session).send().await;
    }

    pub(crate) async fn cookie(&self, name: &str) -> Option<String> {
        let cookies = self.command(Method::GET, "/cookie", None).await;
        cookies
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["value"].as_str())
            .map(str::to_owned)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver and the browsers it started: its whole process group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// JavaScript: the text of the cluster row named `name`'s cell `class`, or null.
fn cell(name: &str, class: &str) -> String {
    format!(
        "const row = [...document.querySelectorAll('#clusters-body tr')]
            .find(r => r.querySelector('.name a').textContent === {name:?});
         if (!row || document.getElementById('clusters-view').hidden) return null;
         return row.querySelector('.{class}').textContent;"
    )
}

/// JavaScript: `script` (a function body) run as an expression.
fn expr(script: &str) -> String {
    format!("(() => {{ {script} }})()")
}

/// A user's own network in moto, as a person would make it in the console: a VPC named
/// `team-vpc` with three subnets and a security group, and another VPC with one subnet.
struct UserNetwork {
    vpc: String,
    subnets: Vec<String>,
    group: String,
    other_subnet: String,
}

/// Makes [`UserNetwork`] through the test's own way to moto.
async fn user_network(inspector: &str) -> UserNetwork {
    use flotilla_testkit::inspect::{
        create_security_group, create_user_vpc, ec2_client, name_resource,
    };
    let ec2 = ec2_client(inspector, "us-east-1").await;
    let (vpc, subnets) = create_user_vpc(
        &ec2,
        "10.20.0.0/16",
        &[
            ("10.20.1.0/24", "us-east-1a"),
            ("10.20.2.0/24", "us-east-1b"),
            ("10.20.3.0/24", "us-east-1c"),
        ],
    )
    .await;
    name_resource(&ec2, &vpc, "team-vpc").await;
    let group = create_security_group(&ec2, &vpc, "team-web").await;
    flotilla_testkit::inspect::create_instance_profile(inspector, "team-role").await;
    let (_, other) = create_user_vpc(&ec2, "10.30.0.0/16", &[("10.30.1.0/24", "us-east-1a")]).await;
    UserNetwork {
        vpc,
        subnets,
        group,
        other_subnet: other[0].clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_launches_scales_and_removes_a_cluster_in_a_browser() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let began = Instant::now();
    let MotoAccount {
        proxy, inspector, ..
    } = MotoAccount::start().await;
    let ec2 = flotilla_testkit::inspect::ec2_client(&inspector.endpoint(), "us-east-1").await;
    let network = user_network(&inspector.endpoint()).await;
    // Agents decide readiness and a silent one is Unreachable after 2 s; the wizard's
    // network lists are reused for 1 s, so Flotilla's new VPC shows up at the next opening.
    let server = Server::start(
        &proxy.endpoint(),
        &[
            "--node-ready",
            "agent",
            "--heartbeat-grace",
            "2",
            "--network-cache",
            "1",
        ],
    )
    .await;
    let mut runner_config = RunnerConfig::new(proxy.endpoint(), env!("CARGO_BIN_EXE_flotilla"));
    runner_config.heartbeat = Duration::from_millis(300);
    let runner = InstanceRunner::start(runner_config).await;
    let browser = Browser::start().await;

    // Log in: a wrong key is refused on the form, the right one opens the empty list.
    browser.open_login(&server).await;
    browser.screenshot("login").await;
    browser.submit_login(&server.user, "not-the-key").await;
    browser
        .wait(
            "the wrong key's error",
            PAGE_LIMIT,
            "return document.getElementById('login-error').textContent.includes('Wrong')",
        )
        .await;
    browser.submit_login(&server.user, &server.key).await;
    browser
        .wait(
            "the empty state",
            PAGE_LIMIT,
            "return !document.getElementById('clusters-empty').hidden
                && document.getElementById('live').textContent === 'live'",
        )
        .await;
    // Marks this page load: if anything below reloaded the page, the mark would be gone.
    browser.run("window.sameLoad = 'yes'; return null").await;
    browser.screenshot("clusters-empty").await;
    let cookie = browser
        .cookie("flotilla_session")
        .await
        .expect("session cookie");

    // The wizard: the catalogue, the region's VPCs (the user's, by Name tag; no Flotilla
    // VPC yet) and Auto subnets with nothing to pick.
    browser.click("#launch-link").await;
    let vpcs = browser
        .wait(
            "the catalogue and the region's VPCs in the form",
            PAGE_LIMIT,
            "const vpcs = [...document.querySelectorAll('#launch-vpc option')].map(o => o.textContent);
             return document.querySelectorAll('#launch-type option').length > 0
                && document.getElementById('launch-region').value.includes('us-east-1')
                && vpcs.some(v => v.includes('team-vpc')) ? vpcs : null",
        )
        .await;
    assert_eq!(vpcs[0], "Auto", "{vpcs}");
    assert!(
        !vpcs.to_string().contains("Flotilla"),
        "no Flotilla VPC before one exists: {vpcs}"
    );
    assert!(
        vpcs.to_string()
            .contains(&format!("{} (team-vpc)", network.vpc)),
        "{vpcs}"
    );
    assert_eq!(
        browser
            .run("return document.getElementById('launch-subnets').disabled")
            .await,
        true,
        "no subnet can be picked with VPC Auto"
    );
    // The whole catalogue (more than one page of node types), with a small default.
    let default_type = browser
        .run("return document.getElementById('launch-type').value")
        .await;
    assert_eq!(default_type, uri::node_type("aws", "t3.micro"));
    browser.fill("#launch-name", "Not a DNS name!").await;
    browser.fill("#launch-nodes", "3").await;
    browser.click("#launch-submit").await;
    let error = browser
        .wait(
            "the name's error next to it",
            PAGE_LIMIT,
            "const e = document.getElementById('launch-name-error').textContent;
             return e && document.getElementById('launch-name').getAttribute('aria-invalid') === 'true'
                && document.getElementById('launch-nodes-error').textContent === '' ? e : null",
        )
        .await;
    assert!(!error.as_str().unwrap_or("").is_empty(), "{error}");
    browser.screenshot("launch-error").await;
    let (_, clusters) = server.call(Method::GET, &uri::node_clusters(), None).await;
    assert_eq!(
        clusters["meta"]["total_count"], 0,
        "the bad launch made nothing"
    );

    // The preview: 3 nodes over the server's 3 AZs, one each, as the server plans them.
    browser.fill("#launch-name", "web").await;
    let preview = browser
        .wait(
            "the nodes-per-AZ preview",
            PAGE_LIMIT,
            "const items = [...document.querySelectorAll('#preview-list li')].map(li => li.textContent);
             return items.length === 3 && items.every(t => t.endsWith(': 1 node')) ? items : null",
        )
        .await;
    assert!(
        preview.to_string().contains("us-east-1a: 1 node"),
        "{preview}"
    );
    browser.screenshot("launch").await;

    // Launch; the list shows the cluster Deployed (its agents registered) without a reload.
    browser.click("#launch-submit").await;
    browser
        .wait("the new cluster's row", PAGE_LIMIT, &cell("web", "counts"))
        .await;
    browser
        .wait(
            "the cluster Deployed with 3 nodes over 3 AZs",
            DEPLOY_LIMIT,
            &format!(
                "const state = {}; const counts = {}; const az = {};
                 return state === 'Deployed' && counts === '3 / 3' && (az.match(/: 1/g) || []).length === 3",
                expr(&cell("web", "state")),
                expr(&cell("web", "counts")),
                expr(&cell("web", "per-az"))
            ),
        )
        .await;
    assert_eq!(browser.run("return window.sameLoad || null").await, "yes");
    let region = browser.run(&cell("web", "region")).await;
    assert_eq!(region, "us-east-1");
    assert_eq!(browser.run(&cell("web", "node-type")).await, "t3.micro");
    browser.screenshot("clusters").await;

    // Its nodes: state, AZ, public IP, DNS name, last seen with the exact time on hover.
    browser.click("#clusters-body .name a").await;
    let nodes = browser
        .wait(
            "the cluster's 3 nodes",
            PAGE_LIMIT,
            "const rows = [...document.querySelectorAll('#nodes-body tr')];
             if (document.getElementById('cluster-view').hidden || rows.length !== 3) return null;
             return rows.map(r => [...r.cells].map(c => c.textContent));",
        )
        .await;
    for node in nodes.as_array().expect("rows") {
        assert_eq!(node[1], "Deployed", "{node}");
        assert!(
            node[2]
                .as_str()
                .is_some_and(|az| az.starts_with("us-east-1")),
            "{node}"
        );
        assert!(
            node[4].as_str().is_some_and(|dns| dns.contains('.')),
            "{node}"
        );
    }
    let hover = browser
        .run("return document.querySelector('#nodes-body time').getAttribute('title')")
        .await;
    assert!(
        hover.as_str().is_some_and(|t| t.len() > 10),
        "the exact time on hover: {hover}"
    );
    browser.screenshot("cluster").await;
    browser.window(390, 844).await;
    browser.screenshot("cluster-phone").await;
    browser.window(1280, 860).await;

    // A node whose agent dies turns Unreachable on the nodes page, highlighted, then
    // Deployed again when its agent comes back.
    let public_ip = nodes[0][3].as_str().expect("public IP").to_owned();
    let instance = runner
        .agents()
        .into_iter()
        .find(|(_, ip)| ip.to_string() == public_ip)
        .map(|(id, _)| id)
        .expect("the node's agent");
    browser.click("#nav-nodes").await;
    runner.stop(&instance);
    let row = format!(
        "const row = [...document.querySelectorAll('#all-nodes-body tr')]
            .find(r => r.cells[3].textContent === {public_ip:?});"
    );
    browser
        .wait(
            "the silent node Unreachable and highlighted",
            PAGE_LIMIT,
            &format!(
                "{row} return !!row && row.cells[1].textContent === 'Unreachable'
                    && row.classList.contains('unreachable')"
            ),
        )
        .await;
    browser.screenshot("nodes-unreachable").await;
    // From the same address, so the row is found by it again.
    runner.restart(&instance, Some(public_ip.parse().expect("an IPv4 address")));
    browser
        .wait(
            "the node Deployed again",
            PAGE_LIMIT,
            &format!("{row} return !!row && row.cells[1].textContent === 'Deployed'"),
        )
        .await;

    // A change forged with the session cookie but without the CSRF token is refused, and
    // so is one from another site's page; the same cookie reads fine.
    let uuid = cluster_named(&server, "web").await;
    let path = uri::node_cluster(&uuid);
    let http = reqwest::Client::new();
    let forged = http
        .patch(format!("{}{path}", server.base))
        .header("Cookie", format!("flotilla_session={cookie}"))
        .json(&json!({"target_num_nodes": 5}))
        .send()
        .await
        .expect("forged");
    assert_eq!(forged.status(), 403);
    let cross_site = http
        .delete(format!("{}{path}", server.base))
        .header("Cookie", format!("flotilla_session={cookie}"))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .expect("cross-site");
    assert_eq!(cross_site.status(), 403);
    let in_page = browser
        .run(&format!(
            "return fetch({path:?}, {{method: 'PATCH', headers: {{'Content-Type': 'application/json'}},
                body: JSON.stringify({{target_num_nodes: 5}})}}).then(r => r.status)"
        ))
        .await;
    assert_eq!(in_page, 403, "a script without the token is refused too");
    let read = http
        .get(format!("{}{path}", server.base))
        .header("Cookie", format!("flotilla_session={cookie}"))
        .send()
        .await
        .expect("read");
    assert_eq!(read.status(), 200);
    let (_, cluster) = server.call(Method::GET, &path, None).await;
    assert_eq!(
        cluster["target_num_nodes"], 3,
        "the forgeries changed nothing"
    );

    // Scale to 4 from the list.
    browser.click("#nav-clusters").await;
    let scale = format!("#scale-{uuid}");
    browser
        .wait("the list", PAGE_LIMIT, &cell("web", "counts"))
        .await;
    browser.fill(&scale, "4").await;
    browser
        .click(&format!("tr[data-uuid='{uuid}'] .scale"))
        .await;
    browser
        .wait(
            "4 nodes Deployed",
            DEPLOY_LIMIT,
            &format!(
                "const state = {}; const counts = {};
                 return state === 'Deployed' && counts === '4 / 4'",
                expr(&cell("web", "state")),
                expr(&cell("web", "counts"))
            ),
        )
        .await;
    let (_, cluster) = server.call(Method::GET, &path, None).await;
    assert_eq!(cluster["target_num_nodes"], 4);

    // An action's log streams while it runs: scale to 5 with the new instance's boot held,
    // open the running action, see its launch, let the node boot, and watch the rest of the
    // log and the end arrive on the same page.
    runner.pause_boots(true);
    browser.fill(&scale, "5").await;
    browser
        .click(&format!("tr[data-uuid='{uuid}'] .scale"))
        .await;
    browser.click("#nav-actions").await;
    browser
        .wait(
            "the running scale action",
            PAGE_LIMIT,
            "const row = [...document.querySelectorAll('#actions-body tr')]
                .find(r => r.cells[0].textContent === 'Node Cluster Scale' && r.cells[1].textContent === 'In progress');
             if (!row) return null; row.querySelector('a').click(); return true",
        )
        .await;
    let running = browser
        .wait(
            "the running action's log so far",
            DEPLOY_LIMIT,
            "const log = document.getElementById('action-log').textContent;
             return document.getElementById('action-state').textContent === 'In progress'
                && log.includes('launched') ? log : null",
        )
        .await;
    assert!(
        running
            .as_str()
            .is_some_and(|l| !l.contains("Deployed (5 of 5")),
        "the node is still held: {running}"
    );
    browser.screenshot("action-running").await;
    runner.pause_boots(false);
    let finished = browser
        .wait(
            "the rest of the log and the end, streamed",
            DEPLOY_LIMIT,
            "const log = document.getElementById('action-log').textContent;
             return document.getElementById('action-state').textContent === 'Success'
                && log.includes('Deployed (5 of 5') ? log : null",
        )
        .await;
    assert!(
        finished
            .as_str()
            .is_some_and(|l| l.starts_with(running.as_str().unwrap_or_default())),
        "the log grew in place: {finished}"
    );
    assert_eq!(browser.run("return window.sameLoad || null").await, "yes");
    browser.click("#nav-clusters").await;

    // The wizard again: Flotilla's VPC is offered now that it exists. Choosing the user's
    // VPC offers exactly its subnets (with AZ and free addresses) and its security group.
    browser.click("#launch-link").await;
    browser
        .wait(
            "Flotilla's own VPC among the choices",
            PAGE_LIMIT,
            "return [...document.querySelectorAll('#launch-vpc option')]
                .some(o => o.textContent.includes('(dc-vpc)') && o.textContent.includes(\"Flotilla's\"))",
        )
        .await;
    browser
        .click(&format!("#launch-vpc option[value='{}']", network.vpc))
        .await;
    let offered = browser
        .wait(
            "the VPC's subnets and security groups",
            PAGE_LIMIT,
            "const subnets = [...document.querySelectorAll('#launch-subnets-options input')];
             const groups = [...document.querySelectorAll('#launch-sgs-options input')];
             if (document.getElementById('launch-subnets').disabled || subnets.length === 0) return null;
             return {subnets: subnets.map(i => [i.value, i.labels[0].textContent]),
                     groups: groups.map(i => i.value)};",
        )
        .await;
    let offered_subnets: Vec<&str> = offered["subnets"]
        .as_array()
        .expect("subnets")
        .iter()
        .map(|s| s[0].as_str().expect("id"))
        .collect();
    assert_eq!(offered_subnets, network.subnets, "{offered}");
    assert!(
        offered["subnets"][0][1]
            .as_str()
            .is_some_and(|label| label.contains("us-east-1a") && label.contains("free")),
        "{offered}"
    );
    let groups = offered["groups"].to_string();
    assert!(groups.contains(&network.group), "{offered}");
    assert!(!groups.contains(&network.other_subnet), "{offered}");
    browser.fill("#launch-name", "team").await;
    browser.fill("#launch-nodes", "2").await;
    for id in [&network.subnets[0], &network.subnets[1], &network.group] {
        browser.click(&format!("input[value='{id}']")).await;
    }
    // The IAM role: None, or one of the account's instance profiles.
    let profiles = browser
        .wait(
            "the account's instance profiles",
            PAGE_LIMIT,
            "const names = [...document.querySelectorAll('#launch-iam option')].map(o => o.value);
             return names.includes('team-role') ? names : null",
        )
        .await;
    assert_eq!(profiles[0], "", "None comes first: {profiles}");
    browser.click("#launch-iam option[value='team-role']").await;
    let preview = browser
        .wait(
            "the preview over the two chosen subnets",
            PAGE_LIMIT,
            "const items = [...document.querySelectorAll('#preview-list li')].map(li => li.textContent);
             return items.length === 2 && items.every(t => t.includes(': 1 node')) ? items : null",
        )
        .await;
    assert!(
        preview.to_string().contains(&network.subnets[0]),
        "{preview}"
    );
    browser.screenshot("launch-vpc").await;

    // A subnet of another VPC cannot be offered by the page; one slipped in anyway (a stale
    // or tampered page) is refused by the server, the error next to Subnets.
    browser
        .run(&format!(
            "const box = document.getElementById('launch-subnets-options');
             const input = Object.assign(document.createElement('input'),
                {{type: 'checkbox', value: {other:?}, id: 'stale', checked: true}});
             box.append(input); return null",
            other = network.other_subnet
        ))
        .await;
    browser.click("#launch-submit").await;
    let refused = browser
        .wait(
            "the foreign subnet refused next to Subnets",
            PAGE_LIMIT,
            "const e = document.getElementById('launch-subnets-error').textContent;
             return e.includes('belongs to')
                && document.getElementById('launch-subnets').getAttribute('aria-invalid') === 'true' ? e : null",
        )
        .await;
    assert!(
        refused
            .as_str()
            .is_some_and(|e| e.contains(&network.other_subnet)),
        "{refused}"
    );
    browser.screenshot("launch-refused").await;
    let (_, listed) = server
        .call(
            Method::GET,
            &format!("{}?name=team", uri::node_clusters()),
            None,
        )
        .await;
    assert_eq!(
        listed["meta"]["total_count"], 0,
        "the refused launch made nothing"
    );
    browser
        .run("document.getElementById('stale').remove(); return null")
        .await;
    browser.click("#launch-submit").await;
    browser
        .wait(
            "the team cluster Deployed in the user's VPC",
            DEPLOY_LIMIT,
            &format!(
                "const state = {}; const counts = {};
                 return state === 'Deployed' && counts === '2 / 2'",
                expr(&cell("team", "state")),
                expr(&cell("team", "counts"))
            ),
        )
        .await;
    let team = cluster_named(&server, "team").await;
    let (_, team_cluster) = server
        .call(Method::GET, &uri::node_cluster(&team), None)
        .await;
    assert_eq!(
        team_cluster["provider_options"]["vpc"],
        json!({"id": network.vpc, "subnets": [network.subnets[0], network.subnets[1]],
            "security_groups": [network.group]}),
        "{team_cluster}"
    );
    assert_eq!(
        team_cluster["provider_options"]["iam"],
        json!({"instance_profile_name": "team-role"}),
        "{team_cluster}"
    );
    for subnet in &network.subnets[..2] {
        let instances = flotilla_testkit::inspect::instances_in_subnet(&ec2, subnet).await;
        assert_eq!(instances.len(), 1, "one node in {subnet}: {instances:?}");
        let profile = flotilla_testkit::inspect::instance_profile_of(&ec2, &instances[0]).await;
        assert!(
            profile
                .as_deref()
                .is_some_and(|arn| arn.ends_with("instance-profile/team-role")),
            "{subnet}: launched with {profile:?}"
        );
    }

    // Actions, newest first, and one's log; the events seen since login; the swarms page.
    browser.click("#nav-actions").await;
    browser
        .wait(
            "the actions",
            PAGE_LIMIT,
            "return [...document.querySelectorAll('#actions-body tr')]
                .some(r => r.cells[0].textContent === 'Node Cluster Deploy')",
        )
        .await;
    browser.screenshot("actions").await;
    browser
        .run(
            "[...document.querySelectorAll('#actions-body tr a')]
                .find(a => a.textContent === 'Node Cluster Deploy').click(); return null",
        )
        .await;
    let log = browser
        .wait(
            "the action's log",
            PAGE_LIMIT,
            "const log = document.getElementById('action-log').textContent;
             return !document.getElementById('action-view').hidden && log.length > 0 ? log : null",
        )
        .await;
    assert!(log.as_str().is_some_and(|l| l.contains('\n')), "{log}");
    browser.screenshot("action-log").await;
    browser.click("#nav-events").await;
    let events = browser
        .wait(
            "the events since login",
            PAGE_LIMIT,
            "const items = document.querySelectorAll('#events-list li');
             return items.length > 5 ? items.length : null",
        )
        .await;
    assert!(events.as_u64().is_some_and(|n| n > 5), "{events}");
    browser.screenshot("events").await;
    browser.click("#nav-swarms").await;
    browser
        .wait(
            "the swarms' empty state",
            PAGE_LIMIT,
            "return !document.getElementById('swarms-empty').hidden",
        )
        .await;
    browser.click("#nav-clusters").await;

    // Remove both: a confirmation first (Cancel keeps it), then they leave the list.
    let remove = format!("tr[data-uuid='{uuid}'] .remove");
    browser
        .wait("the list", PAGE_LIMIT, &cell("web", "counts"))
        .await;
    browser.click(&remove).await;
    browser
        .wait(
            "the confirmation",
            PAGE_LIMIT,
            "return document.getElementById('confirm').open",
        )
        .await;
    browser.screenshot("remove-confirm").await;
    browser.click("#confirm-cancel").await;
    browser
        .wait(
            "the confirmation closed",
            PAGE_LIMIT,
            "return !document.getElementById('confirm').open",
        )
        .await;
    let (_, cluster) = server.call(Method::GET, &path, None).await;
    assert_ne!(cluster["state"], "Terminating", "Cancel removes nothing");
    assert_ne!(cluster["state"], "Terminated", "Cancel removes nothing");
    for remove in [remove, format!("tr[data-uuid='{team}'] .remove")] {
        browser.click(&remove).await;
        browser
            .wait(
                "the confirmation",
                PAGE_LIMIT,
                "return document.getElementById('confirm').open",
            )
            .await;
        browser.click("#confirm-ok").await;
        browser
            .wait(
                "the confirmation closed",
                PAGE_LIMIT,
                "return !document.getElementById('confirm').open",
            )
            .await;
    }
    browser
        .wait(
            "both clusters gone from the list and the empty state back",
            DEPLOY_LIMIT,
            "return !document.getElementById('clusters-empty').hidden",
        )
        .await;
    let (_, cluster) = server.call(Method::GET, &path, None).await;
    assert_eq!(cluster["state"], "Terminated");
    assert_eq!(browser.run("return window.sameLoad || null").await, "yes");

    // Log out: the login form again, and the old cookie is worth nothing.
    browser.click("#logout").await;
    browser
        .wait(
            "the login form after logout",
            PAGE_LIMIT,
            "return !document.getElementById('login-view').hidden",
        )
        .await;
    let after = http
        .get(format!("{}{}", server.base, uri::node_clusters()))
        .header("Cookie", format!("flotilla_session={cookie}"))
        .send()
        .await
        .expect("after logout");
    assert_eq!(after.status(), 401);
    assert!(browser.cookie("flotilla_session").await.is_none());

    // The dashboard's login goes through the failed-login throttle (login.rs): wrong keys
    // are 401s, then 429 with Retry-After (the last step here: it blocks this address).
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let answer = http
            .post(format!("{}{}", server.base, uri::session()))
            .json(&json!({"user": server.user, "key": "guess"}))
            .send()
            .await
            .expect("login attempt");
        statuses.push(answer.status().as_u16());
        if answer.status() == 429 {
            assert!(answer.headers().get("retry-after").is_some());
            break;
        }
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429], "{statuses:?}");
    eprintln!(
        "screenshots in {}; the test took {:?}",
        browser.shots.display(),
        began.elapsed()
    );
    browser.quit().await;
}

/// A browser signed in to `server`'s dashboard with its admin key, on the node clusters
/// page with the live stream connected.
pub(crate) async fn signed_in(server: &Server) -> Browser {
    let browser = Browser::start().await;
    browser.open_login(server).await;
    browser.submit_login(&server.user, &server.key).await;
    browser
        .wait(
            "signed in and live",
            PAGE_LIMIT,
            "return document.getElementById('login-view').hidden
                && document.getElementById('live').textContent === 'live'",
        )
        .await;
    browser
}

/// The uuid of the one cluster called `name`.
async fn cluster_named(api: &Api, name: &str) -> String {
    let (status, list) = api
        .call(
            Method::GET,
            &format!("{}?name={name}", uri::node_clusters()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    let objects = list["objects"].as_array().expect("objects");
    assert_eq!(objects.len(), 1, "{list}");
    objects[0]["uuid"].as_str().expect("uuid").to_owned()
}
