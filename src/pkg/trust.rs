//! What a node trusts, and the decisions made from it before anything is
//! downloaded.
//!
//! A node is configured (agent flags, environment or a file) with the keys
//! it trusts and the repositories it may fetch from. A target names a
//! repository and, optionally, keys: [`decide`] accepts the target only when
//! its repository is allowed and at least one of its keys is trusted, and
//! returns the keys the index must be signed with. The target's keys can
//! only narrow the trusted set, never widen it. After the index arrived and
//! its signature verified, [`check_index`] refuses one older than the
//! version the node accepted before (a rollback) or past its `expires`
//! (a freeze). Both are pure: configuration, target, versions and `now` in,
//! a verdict out.

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use k8s_openapi::jiff::Timestamp;
use reqwest::Url;
use serde::{Deserialize, Serialize};

use super::index::{IndexError, encode_key, parse_public_key};

/// The trust configuration of a node, as the agent's `--trust-config` file
/// (YAML or JSON) holds it and its flags give it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustConfig {
    /// Ed25519 public keys (base64 of 32 bytes) a repository index must be
    /// signed with.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Repository URL prefixes the node may fetch from.
    #[serde(default)]
    pub allowed_repositories: Vec<String>,
    /// Accept unsigned indexes (development only).
    #[serde(default)]
    pub allow_unsigned: bool,
}

/// Errors in a trust configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("trust configuration {path}: {source}; check --trust-config (THESEUS_TRUST_CONFIG)")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not a trust configuration.
    #[error(
        "trust configuration {path}: {message}; expected YAML or JSON with trustedKeys, allowedRepositories and allowUnsigned"
    )]
    Parse {
        /// The file.
        path: String,
        /// The parse error.
        message: String,
    },
    /// A key does not parse.
    #[error(transparent)]
    Key(#[from] IndexError),
    /// An allowed repository is not an http(s) URL.
    #[error(
        "{origin}: {url:?} is not a repository URL ({reason}); give a base URL such as http://repo.example/stable/"
    )]
    BadRepository {
        /// Where it was configured.
        origin: String,
        /// The value.
        url: String,
        /// Why it is refused.
        reason: String,
    },
}

impl TrustConfig {
    /// Reads a configuration file (YAML, of which JSON is a subset).
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown,
            message: e.to_string(),
        })
    }

    /// This configuration and `other` together: every key and repository of
    /// both; unsigned indexes allowed when either allows them.
    pub fn merged(mut self, other: TrustConfig) -> Self {
        for key in other.trusted_keys {
            if !self.trusted_keys.contains(&key) {
                self.trusted_keys.push(key);
            }
        }
        for repo in other.allowed_repositories {
            if !self.allowed_repositories.contains(&repo) {
                self.allowed_repositories.push(repo);
            }
        }
        self.allow_unsigned |= other.allow_unsigned;
        self
    }

    /// Parses the keys and repositories; `origin` names the configuration
    /// in errors.
    pub fn policy(&self, origin: &str) -> Result<Policy, ConfigError> {
        let keys = self
            .trusted_keys
            .iter()
            .map(|k| {
                let key = parse_public_key(k, &format!("{origin}: trusted key {k:?}"))?;
                Ok(TrustedKey {
                    text: encode_key(key.as_bytes()),
                    key,
                })
            })
            .collect::<Result<Vec<_>, IndexError>>()?;
        let repositories = self
            .allowed_repositories
            .iter()
            .map(|url| {
                normalize_repository(url).map_err(|reason| ConfigError::BadRepository {
                    origin: origin.to_owned(),
                    url: url.clone(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            keys,
            repositories,
            allow_unsigned: self.allow_unsigned,
        })
    }
}

#[derive(Debug, Clone)]
struct TrustedKey {
    text: String,
    key: VerifyingKey,
}

/// A parsed trust configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    keys: Vec<TrustedKey>,
    repositories: Vec<String>,
    allow_unsigned: bool,
}

impl Policy {
    /// The trusted keys, base64.
    pub fn trusted_keys(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.text.clone()).collect()
    }

    /// The allowed repository prefixes, normalized.
    pub fn allowed_repositories(&self) -> &[String] {
        &self.repositories
    }

    /// Whether unsigned indexes are accepted (development only).
    pub fn allow_unsigned(&self) -> bool {
        self.allow_unsigned
    }

    /// A one-line summary for the agent's log.
    pub fn summary(&self) -> String {
        let repos = if self.repositories.is_empty() && self.allow_unsigned {
            "any repository".to_owned()
        } else {
            list(&self.repositories)
        };
        format!(
            "trusted keys: {}; allowed repositories: {repos}{}",
            list(&self.trusted_keys()),
            if self.allow_unsigned {
                "; UNSIGNED INDEXES ACCEPTED (development only)"
            } else {
                ""
            }
        )
    }
}

/// What [`decide`] grants a target: how its index must be verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The repository URL, normalized (trailing slash): where to fetch from
    /// and the key of its accepted index version.
    pub repository: String,
    /// The keys the index must be signed with: the trusted keys, narrowed
    /// to those the target names.
    pub keys: Vec<VerifyingKey>,
    /// The same keys, base64, for messages.
    pub expected: Vec<String>,
    /// Whether an index without a valid signature is refused.
    pub require_signature: bool,
}

impl Grant {
    /// The message for this repository's index refused as untrusted (`e`
    /// says why), naming the keys that were expected.
    pub fn refusing(&self, e: &dyn std::fmt::Display) -> String {
        let expected = if self.expected.is_empty() {
            "none (unsigned indexes are allowed)".to_owned()
        } else {
            self.expected.join(", ")
        };
        format!(
            "refusing the index of repository {}: {e}; expected an index signed by {expected}",
            self.repository
        )
    }
}

/// Why a target is refused before anything is downloaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The node trusts no key and does not allow unsigned indexes.
    #[error(
        "refusing repository {repository}: this node trusts no signing key; configure the repository's public key (`theseus agent --trusted-key`, `theseus pkg --key`, or trustedKeys in the trust configuration), or --allow-unsigned for development only"
    )]
    NothingTrusted {
        /// The repository.
        repository: String,
    },
    /// The repository URL is not an http(s) URL the node can check.
    #[error("refusing repository {repository}: {reason}")]
    BadRepository {
        /// The repository.
        repository: String,
        /// Why.
        reason: String,
    },
    /// The repository is not under any allowed prefix.
    #[error(
        "refusing repository {repository}: it is not under an allowed repository ({}); expected an index signed by {}; add it with --allowed-repository or point the PackageRepository at an allowed one",
        list(allowed),
        list(expected)
    )]
    NotAllowed {
        /// The repository.
        repository: String,
        /// The allowed prefixes.
        allowed: Vec<String>,
        /// The trusted keys.
        expected: Vec<String>,
    },
    /// The target names keys of which the node trusts none.
    #[error(
        "refusing repository {repository}: the target names key(s) {} of which this node trusts none; expected {}; fix PackageRepository.spec.publicKeys or add the key to the node's --trusted-key",
        list(named),
        list(expected)
    )]
    ForeignKeys {
        /// The repository.
        repository: String,
        /// The keys the target names.
        named: Vec<String>,
        /// The trusted keys.
        expected: Vec<String>,
    },
    /// A package by URL is covered by no signed index.
    #[error(
        "refusing {url}: a package fetched by URL is covered by no signed index; add it by id from a trusted repository, or allow unsigned packages (development only)"
    )]
    UnsignedArchive {
        /// The archive URL.
        url: String,
    },
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Normalizes a repository URL (scheme and host lowercased, default port
/// and `..` removed, trailing slash) so that an allowed prefix matches only
/// at a path-segment boundary of the URL actually fetched.
pub fn normalize_repository(url: &str) -> Result<String, String> {
    let parsed = Url::parse(url.trim()).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("scheme {:?} is not http or https", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("it names no host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("it carries credentials".into());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("a repository URL has no query or fragment".into());
    }
    let mut text = parsed.to_string();
    if !text.ends_with('/') {
        text.push('/');
    }
    Ok(text)
}

/// Decides, before any download, whether a target that names `repository`
/// and `target_keys` may be fetched, and how its index must be verified.
pub fn decide(policy: &Policy, repository: &str, target_keys: &[String]) -> Result<Grant, Refusal> {
    if policy.keys.is_empty() && !policy.allow_unsigned {
        return Err(Refusal::NothingTrusted {
            repository: repository.to_owned(),
        });
    }
    let normalized = normalize_repository(repository).map_err(|reason| Refusal::BadRepository {
        repository: repository.to_owned(),
        reason,
    })?;
    let open = policy.repositories.is_empty() && policy.allow_unsigned;
    if !open
        && !policy
            .repositories
            .iter()
            .any(|p| normalized.starts_with(p))
    {
        return Err(Refusal::NotAllowed {
            repository: repository.to_owned(),
            allowed: policy.repositories.clone(),
            expected: policy.trusted_keys(),
        });
    }
    let named: Vec<VerifyingKey> = target_keys
        .iter()
        .filter_map(|k| parse_public_key(k, "target").ok())
        .collect();
    let keys: Vec<&VerifyingKey> = if policy.keys.is_empty() {
        // Unsigned indexes are allowed: keys the target names narrow that
        // to indexes signed by them.
        named.iter().collect()
    } else if target_keys.is_empty() {
        policy.keys.iter().map(|k| &k.key).collect()
    } else {
        policy
            .keys
            .iter()
            .map(|k| &k.key)
            .filter(|k| named.contains(k))
            .collect()
    };
    if keys.is_empty() && !policy.keys.is_empty() {
        return Err(Refusal::ForeignKeys {
            repository: repository.to_owned(),
            named: target_keys.to_vec(),
            expected: policy.trusted_keys(),
        });
    }
    if keys.is_empty() && !target_keys.is_empty() {
        // Only unparseable keys named, with unsigned indexes allowed: the
        // target asked for a signature nothing can verify.
        return Err(Refusal::ForeignKeys {
            repository: repository.to_owned(),
            named: target_keys.to_vec(),
            expected: vec![],
        });
    }
    Ok(Grant {
        repository: normalized,
        expected: keys.iter().map(|k| encode_key(k.as_bytes())).collect(),
        // With unsigned indexes allowed, a signature is still required when
        // the target names keys: it asked for one.
        require_signature: !policy.allow_unsigned || !target_keys.is_empty(),
        keys: keys.into_iter().copied().collect(),
    })
}

/// Decides whether a package archive may be fetched by `url` alone (no
/// index): only when unsigned packages are allowed, and from an allowed
/// repository when any are listed.
pub fn decide_archive(policy: &Policy, url: &str) -> Result<(), Refusal> {
    if !policy.allow_unsigned {
        return Err(Refusal::UnsignedArchive {
            url: url.to_owned(),
        });
    }
    decide(policy, url, &[]).map(|_| ())
}

/// Why a verified index is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    /// An older index than one accepted before.
    #[error(
        "served version {served} is older than accepted version {accepted}; refusing a rollback of the index (publish a newer one with `theseus repo index`)"
    )]
    Rollback {
        /// The version served.
        served: u64,
        /// The highest version accepted before.
        accepted: u64,
    },
    /// An index past its expiry.
    #[error(
        "index version {version} expired at {expires}; refusing a frozen index (re-sign it with `theseus repo index --expires-in`)"
    )]
    Expired {
        /// The version served.
        version: u64,
        /// Its `expires`.
        expires: Timestamp,
        /// The time of the check.
        now: Timestamp,
    },
}

/// Checks a verified index's `version` against the highest one `accepted`
/// before from the same repository, and its `expires` against `now`.
pub fn check_index(
    version: u64,
    expires: Option<Timestamp>,
    accepted: Option<u64>,
    now: Timestamp,
) -> Result<(), Stale> {
    if let Some(accepted) = accepted.filter(|&a| version < a) {
        return Err(Stale::Rollback {
            served: version,
            accepted,
        });
    }
    match expires {
        Some(expires) if now >= expires => Err(Stale::Expired {
            version,
            expires,
            now,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[path = "trust_tests.rs"]
mod tests;
