//! The agent's trust configuration: which keys it trusts and which
//! repositories it may fetch from, from flags, the environment and a file
//! (the Helm chart mounts one from a ConfigMap). The agent checks every
//! target, local activation and local add against it before downloading
//! anything; see [`crate::pkg::trust`].

use std::path::PathBuf;

use clap::Args;

use crate::pkg::trust::{ConfigError, Policy, TrustConfig};

/// The reason written to NodeInstall status when a target is refused.
pub const UNTRUSTED: &str = "Untrusted";

/// Trust flags of `theseus agent`.
#[derive(Args, Debug, Clone, Default)]
pub struct TrustArgs {
    /// An ed25519 public key (base64, as `theseus repo keygen` prints it)
    /// that repository indexes must be signed with (repeatable). A target's
    /// own `publicKeys` can only narrow this set.
    #[arg(
        long = "trusted-key",
        value_name = "KEY",
        env = "THESEUS_TRUSTED_KEYS",
        value_delimiter = ','
    )]
    pub trusted_keys: Vec<String>,

    /// A repository URL prefix the agent may fetch from (repeatable); a
    /// target elsewhere is refused before anything is downloaded.
    #[arg(
        long = "allowed-repository",
        value_name = "URL-PREFIX",
        env = "THESEUS_ALLOWED_REPOSITORIES",
        value_delimiter = ','
    )]
    pub allowed_repositories: Vec<String>,

    /// DEVELOPMENT ONLY: accept unsigned indexes and packages by URL (and,
    /// with no --allowed-repository, any repository). Never use it on a
    /// node that matters: whoever can serve or redirect the repository runs
    /// code as root on it.
    #[arg(long, env = "THESEUS_ALLOW_UNSIGNED")]
    pub allow_unsigned: bool,

    /// A trust configuration file (YAML or JSON: trustedKeys,
    /// allowedRepositories, allowUnsigned), merged with the flags.
    #[arg(long, value_name = "PATH", env = "THESEUS_TRUST_CONFIG")]
    pub trust_config: Option<PathBuf>,
}

impl TrustArgs {
    /// The flags and the file, merged and parsed.
    pub fn policy(&self) -> Result<Policy, ConfigError> {
        let flags = TrustConfig {
            trusted_keys: self.trusted_keys.clone(),
            allowed_repositories: self.allowed_repositories.clone(),
            allow_unsigned: self.allow_unsigned,
        };
        let policy = flags.policy("--trusted-key/--allowed-repository")?;
        let Some(path) = &self.trust_config else {
            return Ok(policy);
        };
        let file = TrustConfig::read(path)?;
        let origin = format!("--trust-config {}", path.display());
        // Each part is checked on its own, so that an error names its source.
        file.policy(&origin)?;
        flags.merged(file).policy(&origin)
    }
}
