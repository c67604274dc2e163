//! The user data every node boots with.
//!
//! One launch call starts every node of a subnet with the *same* user data, so the script
//! cannot name the node. It carries the batch (cluster uuid and first slot) and asks the
//! instance metadata service (IMDSv2, the only version our instances allow) for EC2's
//! `ami-launch-index`; slot = first slot + index. The node's uuid is derived from
//! (cluster, slot) exactly as [`crate::tags::node_uuid`] does, by the agent, so the script
//! stays small (user data is capped at 16 KB) whatever the batch size.
//!
//! The batch's registration token is the same for every instance too: the server derives it
//! from (cluster, first slot, count) with a secret only it holds, so no per-node list of
//! secrets ever lands in user data, and a token is only good for the slots of its batch.
//! The script starts with plain `FLOTILLA_*=value` assignments (the values an agent needs,
//! written to `/etc/flotilla/node.env` for systemd) so tools can read them back without
//! running the script.
//!
//! A server with a private CA (`flotilla server --agent-ca-cert`) sends that CA's PEM with
//! the script: it is written to `/etc/flotilla/ca.pem`, used by `curl` to fetch the agent
//! and named by `FLOTILLA_CA_CERT` in `node.env` so the agent trusts it too. It is public
//! data (a certificate, no key); the caller passes only re-encoded PEM, so the quoted
//! here-document cannot be broken out of.

use std::fmt::Write;

/// Where the node's agent comes from and whom it reports to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSource {
    /// The Flotilla server's URL, as nodes reach it.
    pub server_url: String,
    /// The batch's registration token (hex), good once per slot of the batch.
    pub token: String,
    /// PEM certificates the node must trust for `server_url` (a private CA), if any.
    pub ca_cert_pem: Option<String>,
}

/// Where nodes keep the server's CA certificate.
pub const NODE_CA_PATH: &str = "/etc/flotilla/ca.pem";

/// The bootstrap script for one launch batch of `count` nodes from `first_slot`.
pub fn user_data(
    cluster_uuid: &str,
    first_slot: u32,
    count: u32,
    agent: Option<&AgentSource>,
) -> String {
    let mut script = String::from("#!/bin/sh\n");
    let _ = writeln!(
        script,
        "# Flotilla node bootstrap: cluster {cluster_uuid}, slots from {first_slot}"
    );
    script.push_str(
        r#"set -eu
imds() {
  token=$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
  curl -sf -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}
"#,
    );
    let _ = writeln!(script, "FLOTILLA_CLUSTER={cluster_uuid}");
    let _ = writeln!(script, "FLOTILLA_FIRST_SLOT={first_slot}");
    let _ = writeln!(script, "FLOTILLA_COUNT={count}");
    if let Some(agent) = agent {
        let server = agent.server_url.trim_end_matches('/');
        let _ = writeln!(script, "FLOTILLA_SERVER={server}");
        let _ = writeln!(script, "FLOTILLA_TOKEN={}", agent.token);
    }
    script.push_str(
        r#"FLOTILLA_SLOT=$(( FLOTILLA_FIRST_SLOT + $(imds ami-launch-index) ))
mkdir -p /etc/flotilla
umask 077
printf 'FLOTILLA_CLUSTER=%s\nFLOTILLA_SLOT=%s\nFLOTILLA_FIRST_SLOT=%s\nFLOTILLA_COUNT=%s\n' \
  "$FLOTILLA_CLUSTER" "$FLOTILLA_SLOT" "$FLOTILLA_FIRST_SLOT" "$FLOTILLA_COUNT" > /etc/flotilla/node.env
umask 022
if ! command -v docker >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -yq docker.io curl
  elif command -v dnf >/dev/null 2>&1; then
    dnf install -y docker
  fi
  systemctl enable --now docker
fi
"#,
    );
    if let Some(agent) = agent {
        let mut curl_ca = String::new();
        if let Some(pem) = &agent.ca_cert_pem {
            let _ = writeln!(script, "cat > {NODE_CA_PATH} <<'PEM'");
            script.push_str(pem.trim_end());
            script.push_str("\nPEM\n");
            let _ = writeln!(
                script,
                "printf 'FLOTILLA_CA_CERT=%s\\n' {NODE_CA_PATH} >> /etc/flotilla/node.env"
            );
            curl_ca = format!(" --cacert {NODE_CA_PATH}");
        }
        let _ = writeln!(
            script,
            r#"curl -fsSL{curl_ca} "$FLOTILLA_SERVER/download/flotilla" -o /usr/local/bin/flotilla"#
        );
        script.push_str(
            r#"chmod 0755 /usr/local/bin/flotilla
printf 'FLOTILLA_SERVER=%s\nFLOTILLA_TOKEN=%s\n' "$FLOTILLA_SERVER" "$FLOTILLA_TOKEN" >> /etc/flotilla/node.env
cat > /etc/systemd/system/flotilla-agent.service <<'UNIT'
[Unit]
Description=Flotilla agent
After=docker.service network-online.target
Wants=network-online.target
[Service]
EnvironmentFile=/etc/flotilla/node.env
ExecStart=/usr/local/bin/flotilla agent
Restart=always
RestartSec=5
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now flotilla-agent
"#,
        );
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_derives_the_slot_from_the_launch_index_and_stays_small() {
        let script = user_data("c-1", 40, 3, None);
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("\nFLOTILLA_FIRST_SLOT=40\nFLOTILLA_COUNT=3\n"));
        assert!(
            script.contains("FLOTILLA_SLOT=$(( FLOTILLA_FIRST_SLOT + $(imds ami-launch-index) ))")
        );
        assert!(
            !script.contains("FLOTILLA_TOKEN="),
            "no token without a server"
        );
        assert!(script.contains("X-aws-ec2-metadata-token"), "IMDSv2 only");
        assert!(
            !script.contains("flotilla agent"),
            "no agent without a server"
        );
        assert!(script.len() < 16 * 1024);
    }

    #[test]
    fn with_a_server_the_agent_is_fetched_from_it_and_run_as_a_service() {
        let source = AgentSource {
            server_url: "https://flotilla.example.com/".into(),
            token: "00ff".into(),
            ca_cert_pem: None,
        };
        let script = user_data("c-1", 0, 2, Some(&source));
        assert!(script.contains("\nFLOTILLA_SERVER=https://flotilla.example.com\n"));
        assert!(script.contains("\nFLOTILLA_TOKEN=00ff\n"));
        assert!(script.contains("\"$FLOTILLA_SERVER/download/flotilla\""));
        assert!(
            script.contains("FLOTILLA_TOKEN=%s"),
            "the token reaches node.env"
        );
        assert!(script.contains("ExecStart=/usr/local/bin/flotilla agent"));
        assert!(!script.contains("ca.pem"), "no CA unless given");
    }

    #[test]
    fn a_private_ca_reaches_curl_and_the_agent() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let source = AgentSource {
            server_url: "https://10.0.0.1:8000".into(),
            token: "00ff".into(),
            ca_cert_pem: Some(pem.into()),
        };
        let script = user_data("c-1", 0, 2, Some(&source));
        let written = format!("cat > /etc/flotilla/ca.pem <<'PEM'\n{pem}PEM\n");
        let at = script.find(&written).expect("the CA is written");
        let fetch = script
            .find("curl -fsSL --cacert /etc/flotilla/ca.pem \"$FLOTILLA_SERVER/download/flotilla\"")
            .expect("curl trusts it");
        assert!(at < fetch, "written before it is used");
        assert!(
            script
                .contains("FLOTILLA_CA_CERT=%s\\n' /etc/flotilla/ca.pem >> /etc/flotilla/node.env")
        );
    }
}
