//! The EC2 user data of a pool's instances: a bootstrap script that installs
//! and starts `theseus agent` with the pool's labels and the instance's id.

use std::collections::BTreeMap;

use base64::Engine;

use super::provider::POOL_TAG;

/// The values the bootstrap script needs.
#[derive(Clone, Debug)]
pub struct Bootstrap<'a> {
    /// The pool's name.
    pub pool: &'a str,
    /// The pool's `spec.nodeLabels`.
    pub labels: &'a BTreeMap<String, String>,
    /// The pool's extra shell (`spec.provider.aws.userData`), run first.
    pub extra: Option<&'a str>,
}

/// Renders the script. The agent's node name is the host name; the instance
/// id comes from the instance metadata service (IMDSv2). The binary is
/// taken from the image, or downloaded from `$THESEUS_AGENT_URL` when the
/// extra shell exports it; the agent's kubeconfig is expected at
/// `/etc/theseus/kubeconfig` (put there by the image or the extra shell).
pub fn render(b: &Bootstrap<'_>) -> String {
    let labels: Vec<String> = std::iter::once(format!("{POOL_TAG}={}", b.pool))
        .chain(b.labels.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    let labels = shell_quote(&labels.join(","));
    let extra = b.extra.unwrap_or("");
    format!(
        r#"#!/bin/sh
# Theseus NodePool bootstrap for pool {pool}.
set -eu
{extra}
if ! command -v theseus >/dev/null 2>&1; then
  curl -fsSL "${{THESEUS_AGENT_URL:?set THESEUS_AGENT_URL in the pool's userData or bake theseus into the image}}" -o /usr/local/bin/theseus
  chmod 0755 /usr/local/bin/theseus
fi
# The agent trusts the keys and repositories of /etc/theseus/trust.yaml
# (write it in the pool's userData); without it, it refuses every target.
TRUST=/etc/theseus/trust.yaml
TRUST_ENV="; no $TRUST: the agent trusts no key and refuses every target"
[ -f "$TRUST" ] && TRUST_ENV="Environment=THESEUS_TRUST_CONFIG=$TRUST"
IMDS_TOKEN=$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' http://169.254.169.254/latest/api/token)
INSTANCE_ID=$(curl -fsS -H "X-aws-ec2-metadata-token: $IMDS_TOKEN" http://169.254.169.254/latest/meta-data/instance-id)
cat >/etc/systemd/system/theseus-agent.service <<UNIT
[Unit]
Description=Theseus node agent
After=network-online.target
[Service]
Environment=KUBECONFIG=/etc/theseus/kubeconfig
$TRUST_ENV
ExecStart=$(command -v theseus) agent --node-name $(hostname) --labels {labels} --instance-id $INSTANCE_ID
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now theseus-agent.service
"#,
        pool = b.pool,
    )
}

/// The script, base64-encoded as RunInstances wants it.
pub fn encode(b: &Bootstrap<'_>) -> String {
    base64::engine::general_purpose::STANDARD.encode(render(b))
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_starts_the_agent_with_the_pool_label_and_the_instance_id() {
        let labels = BTreeMap::from([("tier".to_string(), "web".to_string())]);
        let script = render(&Bootstrap {
            pool: "web",
            labels: &labels,
            extra: Some("echo hello"),
        });
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("--labels 'theseus.dev/nodepool=web,tier=web'"));
        assert!(script.contains("--instance-id $INSTANCE_ID"));
        assert!(script.find("echo hello") < script.find("theseus-agent.service"));
        // The pool's userData (run first) may write the trust configuration.
        assert!(script.find("echo hello") < script.find("[ -f \"$TRUST\" ]"));
        assert!(script.contains("Environment=THESEUS_TRUST_CONFIG=$TRUST"));
    }

    #[test]
    fn labels_with_quotes_cannot_break_out_of_the_shell_word() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
