//! Each local agent's own identity: the ServiceAccount `PREFIX+NODE` in the
//! per-node namespace (`theseus-nodes` by default), a token for it, and a
//! kubeconfig that reads the token from a file the operator renews. The
//! admission policy confines every ServiceAccount of that namespace to the
//! NodeInstall its name ends in, so a local agent is held to its own node
//! exactly as an agent on EC2 or systemd with its own identity is.
//!
//! Removing the node deletes its ServiceAccount, which invalidates every
//! token issued for it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

/// How long one token is valid.
pub const TOKEN_SECONDS: i64 = 24 * 3600;
/// A token older than this is renewed (the agent re-reads the file within a
/// minute).
const RENEW_AFTER: Duration = Duration::from_secs(12 * 3600);

/// The label on the ServiceAccounts this module creates.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "theseus-operator");

/// Whom local agents act as.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The operator's own credentials (inherited).
    #[value(name = "operator")]
    Operator,
    /// Each node's own ServiceAccount.
    #[value(name = "service-account")]
    ServiceAccount,
}

/// Errors of issuing or revoking a node's identity.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused.
    #[error(
        "node {node}: cannot {action} ServiceAccount {namespace}/{name}: {source}; the operator needs create on namespaces, create/delete on serviceaccounts and create on serviceaccounts/token there"
    )]
    Kube {
        /// The node.
        node: String,
        /// What was attempted.
        action: &'static str,
        /// The namespace.
        namespace: String,
        /// The ServiceAccount.
        name: String,
        /// The cause.
        source: kube::Error,
    },
    /// The API server answered a token request without a token.
    #[error("node {node}: the token request for ServiceAccount {name} returned no token")]
    NoToken {
        /// The node.
        node: String,
        /// The ServiceAccount.
        name: String,
    },
    /// The token or kubeconfig could not be written.
    #[error("node {node}: cannot write {path}: {source}")]
    Io {
        /// The node.
        node: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<Error> for super::provider::Error {
    fn from(e: Error) -> super::provider::Error {
        let kind = match &e {
            Error::Kube { .. } | Error::NoToken { .. } => super::provider::Kind::Api,
            Error::Io { .. } => super::provider::Kind::Local,
        };
        super::provider::Error::new(kind, e)
    }
}

/// Issues and revokes per-node ServiceAccount identities.
pub struct NodeIdentity {
    client: kube::Client,
    namespace: String,
    prefix: String,
    server: String,
    ca_pem: Option<String>,
    insecure: bool,
    tls_server_name: Option<String>,
}

/// The files of one node's identity, under its directory.
pub struct Files {
    /// The kubeconfig the agent is started with (`KUBECONFIG`).
    pub kubeconfig: PathBuf,
    /// The token it names.
    pub token: PathBuf,
}

impl Files {
    /// The identity files of the node whose state is in `dir`.
    pub fn in_dir(dir: &Path) -> Files {
        Files {
            kubeconfig: dir.join("kubeconfig"),
            token: dir.join("token"),
        }
    }
}

impl NodeIdentity {
    /// Identities in `namespace` named `prefix+NODE`, for agents that reach
    /// the API server the way `config` does (its URL and CA; not its user).
    pub fn new(
        client: kube::Client,
        config: &kube::Config,
        namespace: &str,
        prefix: &str,
    ) -> NodeIdentity {
        let ca_pem = config.root_cert.as_ref().map(|certs| {
            certs
                .iter()
                .map(|der| pem("CERTIFICATE", der))
                .collect::<String>()
        });
        NodeIdentity {
            client,
            namespace: namespace.to_owned(),
            prefix: prefix.to_owned(),
            server: config
                .cluster_url
                .to_string()
                .trim_end_matches('/')
                .to_owned(),
            ca_pem,
            insecure: config.accept_invalid_certs,
            tls_server_name: config.tls_server_name.clone(),
        }
    }

    /// The ServiceAccount name of `node`.
    pub fn account(&self, node: &str) -> String {
        format!("{}{node}", self.prefix)
    }

    fn kube_err(&self, node: &str, action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        let (node, namespace, name) = (node.to_owned(), self.namespace.clone(), self.account(node));
        move |source| Error::Kube {
            node,
            action,
            namespace,
            name,
            source,
        }
    }

    /// Creates `node`'s ServiceAccount (and the namespace) when missing,
    /// writes a fresh token and the kubeconfig naming it into `files`.
    pub async fn issue(&self, node: &str, files: &Files) -> Result<(), Error> {
        let namespaces = Api::<Namespace>::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(self.namespace.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        ignore_exists(namespaces.create(&PostParams::default(), &ns).await)
            .map_err(self.kube_err(node, "create the namespace of"))?;
        let accounts = Api::<ServiceAccount>::namespaced(self.client.clone(), &self.namespace);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(self.account(node)),
                labels: Some([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        ignore_exists(accounts.create(&PostParams::default(), &sa).await)
            .map_err(self.kube_err(node, "create"))?;
        self.renew(node, files).await?;
        let io = |path: &Path| {
            let (node, path) = (node.to_owned(), path.to_owned());
            move |source| Error::Io { node, path, source }
        };
        write_private(&files.kubeconfig, &self.kubeconfig(node, &files.token))
            .map_err(io(&files.kubeconfig))
    }

    /// Writes a fresh token for `node` into `files.token`.
    pub async fn renew(&self, node: &str, files: &Files) -> Result<(), Error> {
        let accounts = Api::<ServiceAccount>::namespaced(self.client.clone(), &self.namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(TOKEN_SECONDS),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = accounts
            .create_token_request(&self.account(node), &PostParams::default(), &request)
            .await
            .map_err(self.kube_err(node, "request a token for"))?
            .status
            .and_then(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::NoToken {
                node: node.to_owned(),
                name: self.account(node),
            })?;
        write_private(&files.token, &token).map_err(|source| Error::Io {
            node: node.to_owned(),
            path: files.token.clone(),
            source,
        })
    }

    /// Renews `node`'s token when it is older than half its lifetime.
    pub async fn renew_if_old(&self, node: &str, files: &Files) -> Result<(), Error> {
        let age = std::fs::metadata(&files.token)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        match age {
            Some(age) if age < RENEW_AFTER => Ok(()),
            _ => self.renew(node, files).await,
        }
    }

    /// Deletes `node`'s ServiceAccount: every token issued for it stops
    /// working at once.
    pub async fn revoke(&self, node: &str) -> Result<(), Error> {
        let accounts = Api::<ServiceAccount>::namespaced(self.client.clone(), &self.namespace);
        match accounts
            .delete(&self.account(node), &DeleteParams::default())
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            r => r.map(|_| ()).map_err(self.kube_err(node, "delete")),
        }
    }

    /// The kubeconfig of `node`'s agent (JSON, which is YAML).
    fn kubeconfig(&self, node: &str, token: &Path) -> String {
        let mut cluster = serde_json::json!({ "server": self.server });
        if let Some(ca) = &self.ca_pem {
            cluster["certificate-authority-data"] =
                base64::engine::general_purpose::STANDARD.encode(ca).into();
        }
        if self.insecure {
            cluster["insecure-skip-tls-verify"] = true.into();
        }
        if let Some(name) = &self.tls_server_name {
            cluster["tls-server-name"] = name.clone().into();
        }
        let user = format!("{}/{}", self.namespace, self.account(node));
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "theseus", "cluster": cluster }],
            "users": [{ "name": user, "user": { "tokenFile": token } }],
            "contexts": [{ "name": "theseus", "context": { "cluster": "theseus", "user": user } }],
            "current-context": "theseus",
        })
        .to_string()
    }
}

fn ignore_exists<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        r => r.map(|_| ()),
    }
}

/// `der` as a PEM block.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes `text` to `path` readable by its owner only, atomically.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_wraps_at_64_columns() {
        let p = pem("CERTIFICATE", &[7u8; 100]);
        let lines: Vec<&str> = p.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
        assert!(lines[1..lines.len() - 1].iter().all(|l| l.len() <= 64));
        let body: String = lines[1..lines.len() - 1].concat();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap(),
            vec![7u8; 100]
        );
    }
}
