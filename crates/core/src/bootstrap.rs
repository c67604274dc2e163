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

use std::fmt::Write;

/// Where the node's agent comes from and whom it reports to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSource {
    /// The Flotilla server's URL, as nodes reach it.
    pub server_url: String,
    /// The batch's registration token (hex), good once per slot of the batch.
    pub token: String,
}

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
    if agent.is_some() {
        script.push_str(
            r#"curl -fsSL "$FLOTILLA_SERVER/download/flotilla" -o /usr/local/bin/flotilla
chmod 0755 /usr/local/bin/flotilla
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
    }
}
