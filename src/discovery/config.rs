//! How to reach the discovery etcd: [`EtcdConfig`], and the command-line
//! options that fill it ([`EtcdArgs`], flattened into `theseus operator` and
//! `theseus discover`).

use std::path::PathBuf;
use std::time::Duration;

use super::paths::DEFAULT_PREFIX;

/// Client certificate and key for TLS client authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Everything needed to connect to the discovery etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`; `https://` enables TLS.
    pub endpoints: Vec<String>,
    /// The key prefix of the tree, default `/services`.
    pub prefix: String,
    /// Seconds a published container stays after the operator stops
    /// renewing its lease.
    pub lease_ttl: i64,
    /// User and password for etcd authentication.
    pub user: Option<(String, String)>,
    /// CA bundle that signs the etcd server certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate and key, when etcd requires them.
    pub identity: Option<ClientIdentity>,
    /// How long one request may take before it counts as failed.
    pub request_timeout: Duration,
    /// How many times a failed request is tried before giving up.
    pub attempts: u32,
}

impl EtcdConfig {
    /// A plain-HTTP config for one or more endpoints with the defaults.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_PREFIX.to_owned(),
            lease_ttl: 30,
            user: None,
            ca: None,
            identity: None,
            request_timeout: Duration::from_secs(5),
            attempts: 4,
        }
    }

    /// The same config under another prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The same config with another lease TTL (seconds).
    pub fn with_lease_ttl(mut self, seconds: i64) -> Self {
        self.lease_ttl = seconds;
        self
    }

    /// The endpoints joined for messages.
    pub fn endpoints_text(&self) -> String {
        self.endpoints.join(",")
    }
}

/// Command-line options for the discovery etcd.
#[derive(clap::Args, Clone, Debug)]
pub struct EtcdArgs {
    /// Discovery etcd client URL; repeat or separate with commas for a cluster.
    #[arg(
        long = "discovery-etcd",
        env = "THESEUS_DISCOVERY_ETCD",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,

    /// Key prefix of the discovery tree.
    #[arg(long = "discovery-prefix", env = "THESEUS_DISCOVERY_PREFIX", default_value = DEFAULT_PREFIX)]
    pub prefix: String,

    /// Seconds published containers outlive an operator that stopped.
    #[arg(
        long = "discovery-lease-ttl",
        env = "THESEUS_DISCOVERY_LEASE_TTL",
        default_value_t = 30,
        value_parser = clap::value_parser!(i64).range(2..=3600)
    )]
    pub lease_ttl: i64,

    /// etcd user name (with --etcd-password).
    #[arg(long = "etcd-user", env = "THESEUS_ETCD_USER", requires = "password")]
    pub user: Option<String>,

    /// etcd password.
    #[arg(
        long = "etcd-password",
        env = "THESEUS_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    pub password: Option<String>,

    /// CA bundle (PEM) for an https:// etcd.
    #[arg(long = "etcd-ca", env = "THESEUS_ETCD_CA")]
    pub ca: Option<PathBuf>,

    /// Client certificate (PEM) for etcd client authentication.
    #[arg(long = "etcd-cert", env = "THESEUS_ETCD_CERT", requires = "key")]
    pub cert: Option<PathBuf>,

    /// Client key (PEM) for etcd client authentication.
    #[arg(long = "etcd-key", env = "THESEUS_ETCD_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl EtcdArgs {
    /// The config these options describe.
    pub fn config(&self) -> EtcdConfig {
        let mut config = EtcdConfig::new(self.endpoints.iter().map(|e| e.trim().to_owned()))
            .with_prefix(self.prefix.clone())
            .with_lease_ttl(self.lease_ttl);
        config.user = self.user.clone().zip(self.password.clone());
        config.ca = self.ca.clone();
        config.identity = self
            .cert
            .clone()
            .zip(self.key.clone())
            .map(|(cert, key)| ClientIdentity { cert, key });
        config
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdArgs,
    }

    #[test]
    fn options_fill_the_config() {
        let cli = Cli::parse_from([
            "t",
            "--discovery-etcd",
            "https://a:2379,https://b:2379",
            "--discovery-prefix",
            "/disc",
            "--etcd-user",
            "root",
            "--etcd-password",
            "pw",
            "--etcd-ca",
            "/ca.pem",
        ]);
        let config = cli.etcd.config();
        assert_eq!(config.endpoints, vec!["https://a:2379", "https://b:2379"]);
        assert_eq!(config.prefix, "/disc");
        assert_eq!(config.user, Some(("root".into(), "pw".into())));
        assert_eq!(config.ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(config.identity, None);
    }

    #[test]
    fn a_user_without_a_password_is_refused() {
        assert!(Cli::try_parse_from(["t", "--etcd-user", "root"]).is_err());
    }
}
