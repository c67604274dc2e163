//! The user data every node boots with.
//!
//! One launch call starts every node of a subnet with the *same* user data, so the script
//! cannot name the node. It carries the batch (cluster uuid and first slot) and asks the
//! instance metadata service (IMDSv2, the only version our instances allow) for EC2's
//! `ami-launch-index`; slot = first slot + index. The node's uuid is derived from
//! (cluster, slot) exactly as [`crate::tags::node_uuid`] does, by the agent, so the script
//! stays small (user data is capped at 16 KB) whatever the batch size.

use std::fmt::Write;

/// Where the node's agent comes from and whom it reports to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSource {
    /// The Flotilla server's URL, as nodes reach it.
    pub server_url: String,
}

/// The bootstrap script for one launch batch.
pub fn user_data(cluster_uuid: &str, first_slot: u32, agent: Option<&AgentSource>) -> String {
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
    let _ = writeln!(script, "CLUSTER={cluster_uuid}");
    let _ = writeln!(
        script,
        "SLOT=$(( {first_slot} + $(imds ami-launch-index) ))"
    );
    script.push_str(
        r#"mkdir -p /etc/flotilla
printf 'FLOTILLA_CLUSTER=%s\nFLOTILLA_SLOT=%s\n' "$CLUSTER" "$SLOT" > /etc/flotilla/node.env
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
        let server = agent.server_url.trim_end_matches('/');
        let _ = writeln!(script, "SERVER={server}");
        script.push_str(
            r#"curl -fsSL "$SERVER/download/flotilla" -o /usr/local/bin/flotilla
chmod 0755 /usr/local/bin/flotilla
printf 'FLOTILLA_SERVER=%s\n' "$SERVER" >> /etc/flotilla/node.env
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
        let script = user_data("c-1", 40, None);
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("SLOT=$(( 40 + $(imds ami-launch-index) ))"));
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
        };
        let script = user_data("c-1", 0, Some(&source));
        assert!(script.contains("SERVER=https://flotilla.example.com\n"));
        assert!(script.contains("\"$SERVER/download/flotilla\""));
        assert!(script.contains("ExecStart=/usr/local/bin/flotilla agent"));
    }
}
