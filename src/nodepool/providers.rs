//! Building a pool's provider from its spec, and keeping it between passes
//! (an EC2 client is worth reusing).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

use super::Config;
use super::aws::{self, Ec2};
use super::identity::NodeIdentity;
use super::local::Local;
use super::provider::{Owner, Provider};
use crate::api::{NodePool, ProviderType, SecretReference};

/// Providers by pool uid, with the settings they were built from.
pub type Cache = Arc<Mutex<HashMap<String, (String, Arc<dyn Provider>)>>>;

/// Errors of building a provider.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `spec.provider` names a provider whose settings are missing.
    #[error(
        "NodePool {pool}: spec.provider.type is {kind} but spec.provider.{field} is not set; set it"
    )]
    MissingSettings {
        /// The pool.
        pool: String,
        /// The provider type.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// The credentials Secret cannot be used.
    #[error("NodePool {pool}: credentials Secret {namespace}/{name}: {why}")]
    Secret {
        /// The pool.
        pool: String,
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// The operator cannot find its own binary to run local agents.
    #[error("NodePool {pool}: cannot find the operator's binary to start local agents: {source}")]
    Program {
        /// The pool.
        pool: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The provider of `pool`, built or reused; local agents act as their
/// node's own identity when `identity` is given.
pub async fn get(
    pool: &NodePool,
    client: &kube::Client,
    config: &Config,
    cache: &Cache,
    identity: Option<&Arc<NodeIdentity>>,
) -> Result<Arc<dyn Provider>, Error> {
    let name = pool.name_any();
    let owner = Owner {
        pool: name.clone(),
        uid: pool.uid().unwrap_or_default(),
        cluster: config.cluster_name.clone(),
    };
    let keys = match pool
        .spec
        .provider
        .aws
        .as_ref()
        .and_then(|a| a.credentials_secret_ref.as_ref())
    {
        Some(r) => Some(secret_keys(client, &name, r).await?),
        None => None,
    };
    let key = settings_key(pool, &keys);
    if let Some((k, p)) = cache.lock().expect("provider cache").get(&owner.uid)
        && *k == key
    {
        return Ok(p.clone());
    }
    let provider: Arc<dyn Provider> = match pool.spec.provider.type_ {
        ProviderType::Aws => aws_provider(pool, owner.clone(), keys).await?,
        ProviderType::Local => local_provider(pool, owner.clone(), config, identity)?,
    };
    cache
        .lock()
        .expect("provider cache")
        .insert(owner.uid, (key, provider.clone()));
    Ok(provider)
}

/// An EC2 provider from `spec.provider.aws`.
async fn aws_provider(
    pool: &NodePool,
    owner: Owner,
    keys: Option<(String, String)>,
) -> Result<Arc<dyn Provider>, Error> {
    let settings = pool
        .spec
        .provider
        .aws
        .clone()
        .ok_or(Error::MissingSettings {
            pool: owner.pool.clone(),
            kind: "Aws",
            field: "aws",
        })?;
    let client = aws::client(&settings, keys).await;
    Ok(Arc::new(Ec2::new(
        client,
        owner,
        settings,
        &pool.spec.node_labels,
    )))
}

/// A local-process provider from `spec.provider.local`, its nodes under
/// the pool's state directory.
fn local_provider(
    pool: &NodePool,
    owner: Owner,
    config: &Config,
    identity: Option<&Arc<NodeIdentity>>,
) -> Result<Arc<dyn Provider>, Error> {
    let settings = pool.spec.provider.local.clone().unwrap_or_default();
    let dir = settings
        .state_dir
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| config.state_dir.join("nodepools").join(&owner.pool));
    let program = std::env::current_exe().map_err(|source| Error::Program {
        pool: owner.pool.clone(),
        source,
    })?;
    let labels: BTreeMap<String, String> = pool.spec.node_labels.clone();
    Ok(Arc::new(Local::new(
        owner,
        dir,
        program,
        labels,
        settings.service_port_base,
        identity.cloned(),
    )))
}

/// What a cached provider was built from: rebuilt when it changes.
fn settings_key(pool: &NodePool, keys: &Option<(String, String)>) -> String {
    serde_json::to_string(&(&pool.spec.provider, &pool.spec.node_labels, keys)).unwrap_or_default()
}

/// Puts `provider` in the cache as `pool`'s (scenario tests' fake providers).
#[cfg(test)]
pub fn insert(cache: &Cache, pool: &NodePool, provider: Arc<dyn Provider>) {
    cache.lock().expect("provider cache").insert(
        pool.uid().unwrap_or_default(),
        (settings_key(pool, &None), provider),
    );
}

/// Drops a deleted pool's provider.
pub fn forget(pool: &NodePool, cache: &Cache) {
    cache
        .lock()
        .expect("provider cache")
        .remove(&pool.uid().unwrap_or_default());
}

async fn secret_keys(
    client: &kube::Client,
    pool: &str,
    r: &SecretReference,
) -> Result<(String, String), Error> {
    let err = |why: String| Error::Secret {
        pool: pool.to_owned(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        why,
    };
    let secret = Api::<Secret>::namespaced(client.clone(), &r.namespace)
        .get(&r.name)
        .await
        .map_err(|e| err(format!("cannot read it: {e}")))?;
    let data = secret.data.unwrap_or_default();
    let get = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| err(format!("it has no UTF-8 key {k}")))
    };
    Ok((get("AWS_ACCESS_KEY_ID")?, get("AWS_SECRET_ACCESS_KEY")?))
}
