//! The values of the secrets a target's packages refer to, read by the
//! agent with its own identity (`NodeTarget.secrets`).
//!
//! The operator never reads these Secrets and no value is ever in a
//! target, a package or a status: the agent reads each key just before it
//! fetches the set, keeps the values in memory (zeroed when dropped) and
//! writes them only into the resolved files of the new generation, mode
//! 0600. Which Secrets a node may read is the cluster's RBAC: the chart's
//! `config.agentSecrets` grants the agents `get` on the Secrets named.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use zeroize::Zeroizing;

use crate::api::TargetSecret;
use crate::pkg::secrets::SecretValues;

/// The `status.reason` of a node whose target's Secrets it cannot read.
pub const SECRET_UNAVAILABLE: &str = "SecretUnavailable";

/// Why a Secret of the target could not be read; nothing was fetched or
/// changed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The agent's identity may not read it.
    #[error(
        "the agent may not read Secret {namespace}/{name} (for {package}'s ${{secret:{parameter}}}): grant this node's identity get on it (the chart's config.agentSecrets)"
    )]
    Forbidden {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The package that refers to it.
        package: String,
        /// The parameter.
        parameter: String,
    },
    /// It does not exist.
    #[error(
        "Secret {namespace}/{name} (for {package}'s ${{secret:{parameter}}}) does not exist: create it, or fix the ConfigBundle's valuesFrom"
    )]
    NotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The package that refers to it.
        package: String,
        /// The parameter.
        parameter: String,
    },
    /// It has no such key, or the value is not UTF-8 text.
    #[error(
        "Secret {namespace}/{name} has {problem} (for {package}'s ${{secret:{parameter}}}): fix the Secret or the ConfigBundle's valuesFrom"
    )]
    BadKey {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// `no key K` or `a key K that is not UTF-8 text`.
        problem: String,
        /// The package that refers to it.
        package: String,
        /// The parameter.
        parameter: String,
    },
    /// The agent has no API client (activated locally).
    #[error(
        "the set refers to Secrets, which only an agent following its NodeInstall reads; activate it through a PackageSet"
    )]
    NoClient,
    /// The API server did not answer.
    #[error("reading Secret {namespace}/{name}: {source}; will try again")]
    Api {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The error.
        #[source]
        source: Box<kube::Error>,
    },
}

/// Reads every key `refs` name (each Secret once) into values by package
/// and parameter.
pub async fn read(
    client: &kube::Client,
    refs: &[TargetSecret],
) -> Result<SecretValues, SecretError> {
    let mut secrets: BTreeMap<(&str, &str), Secret> = BTreeMap::new();
    let mut values = SecretValues::default();
    for r in refs {
        let at = (r.namespace.as_str(), r.name.as_str());
        if let std::collections::btree_map::Entry::Vacant(slot) = secrets.entry(at) {
            let api: Api<Secret> = Api::namespaced(client.clone(), &r.namespace);
            slot.insert(api.get(&r.name).await.map_err(|e| refused(r, e))?);
        }
        let bad = |problem: String| SecretError::BadKey {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            problem,
            package: r.package.clone(),
            parameter: r.parameter.clone(),
        };
        let bytes = secrets[&at]
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .ok_or_else(|| bad(format!("no key {}", r.key)))?;
        let text = String::from_utf8(bytes.0.clone())
            .map_err(|_| bad(format!("a key {} that is not UTF-8 text", r.key)))?;
        values.insert(&r.package, &r.parameter, Zeroizing::new(text));
    }
    // The Secrets' bytes go with `secrets`; zero them.
    for secret in secrets.values_mut() {
        if let Some(data) = secret.data.as_mut() {
            for value in data.values_mut() {
                zeroize::Zeroize::zeroize(&mut value.0);
            }
        }
    }
    Ok(values)
}

fn refused(r: &TargetSecret, e: kube::Error) -> SecretError {
    let code = match &e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    };
    match code {
        Some(403) => SecretError::Forbidden {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            package: r.package.clone(),
            parameter: r.parameter.clone(),
        },
        Some(404) => SecretError::NotFound {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            package: r.package.clone(),
            parameter: r.parameter.clone(),
        },
        _ => SecretError::Api {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            source: Box::new(e),
        },
    }
}
