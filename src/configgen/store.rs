//! The operator's repository of generated packages, kept in the API
//! server so that every replica serves the same bytes:
//!
//! - one ConfigMap per package, `cfgpkg.ID`, labelled
//!   [`PACKAGE_LABEL`], its archive in `binaryData.archive` and its
//!   sha256 and size in annotations (so the index is built from metadata
//!   alone). A package is content-addressed: once written it never
//!   changes, so a render that gives an id already stored writes nothing.
//! - one ConfigMap, [`INDEX_OBJECT`], holding the signed `index.json` and
//!   `index.json.sig` exactly as served. Its version grows by one with
//!   every change of the package list; it is replaced with the
//!   resourceVersion it was read at, so two writers never both win.
//!
//! All of it lives in the operator's namespace.

use std::collections::BTreeMap;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};

use super::archive::{self, ArchiveError};
use crate::config::Package;
use crate::pkg::PackageId;
use crate::pkg::index::{INDEX, Index, IndexEntry, PACKAGES_DIR, SIGNATURE, sign};

/// The label every generated package's ConfigMap carries.
pub const PACKAGE_LABEL: &str = "theseus.dev/generated-package";
/// The ConfigMap holding the signed index.
pub const INDEX_OBJECT: &str = "theseus-config-repository";
/// The annotation naming the package id.
const ID_ANNOTATION: &str = "theseus.dev/package-id";
/// The annotation holding the archive's sha256.
const SHA_ANNOTATION: &str = "theseus.dev/sha256";
/// The annotation holding the archive's size.
const SIZE_ANNOTATION: &str = "theseus.dev/size";
/// The annotation naming the bundle that first produced the package.
const BUNDLE_ANNOTATION: &str = "theseus.dev/config-bundle";
/// The key of the archive in a package's ConfigMap.
const ARCHIVE_KEY: &str = "archive";
/// The most bytes a package may have: a ConfigMap holds 1 MiB in all.
pub const MAX_ARCHIVE: usize = 900 * 1024;

/// Errors of the generated repository, each naming its step.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Building a package's archive failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A package is too large for the API server.
    #[error(
        "package {id} is {size} bytes, more than the {MAX_ARCHIVE} a generated package may have; \
         generate configuration, not data (move large files into a software package)"
    )]
    TooLarge {
        /// The package id.
        id: String,
        /// Its archive size.
        size: usize,
    },
    /// An API call failed.
    #[error("cannot {step} ConfigMap {namespace}/{name}: {source}")]
    Api {
        /// What was being done.
        step: &'static str,
        /// The namespace.
        namespace: String,
        /// The object.
        name: String,
        /// The cause.
        source: kube::Error,
    },
    /// The index changed under this writer; the next pass retries.
    #[error("the index ConfigMap {namespace}/{INDEX_OBJECT} changed meanwhile; retrying")]
    Conflict {
        /// The namespace.
        namespace: String,
    },
}

impl StoreError {
    /// The step that failed, as a metric's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Archive(_) => "Archive",
            StoreError::TooLarge { .. } => "TooLarge",
            StoreError::Api { .. } => "ConfigMapWrite",
            StoreError::Conflict { .. } => "IndexConflict",
        }
    }
}

/// The generated repository: where it lives and the key that signs it.
#[derive(Clone)]
pub struct Repository {
    api: Api<ConfigMap>,
    namespace: String,
    key: Option<Arc<SigningKey>>,
}

/// The name of a package's ConfigMap.
pub fn object_name(id: &str) -> String {
    format!("cfgpkg.{id}")
}

impl Repository {
    /// The repository in `namespace`, signed with `key` (unsigned without).
    pub fn new(client: Client, namespace: &str, key: Option<Arc<SigningKey>>) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            key,
        }
    }

    fn api_err(&self, step: &'static str, name: &str) -> impl FnOnce(kube::Error) -> StoreError {
        let (namespace, name) = (self.namespace.clone(), name.to_owned());
        move |source| StoreError::Api {
            step,
            namespace,
            name,
            source,
        }
    }

    /// Stores `package` unless it is stored already; says whether it wrote.
    pub async fn ensure(&self, package: &Package, bundle: &str) -> Result<bool, StoreError> {
        let name = object_name(&package.id);
        if self
            .api
            .get_metadata_opt(&name)
            .await
            .map_err(self.api_err("read", &name))?
            .is_some()
        {
            return Ok(false);
        }
        let owned = package.clone();
        let bytes = tokio::task::spawn_blocking(move || archive::bytes(&owned))
            .await
            .expect("the archive builder does not panic")?;
        if bytes.len() > MAX_ARCHIVE {
            return Err(StoreError::TooLarge {
                id: package.id.clone(),
                size: bytes.len(),
            });
        }
        let sha = hex::encode(Sha256::digest(&bytes));
        let object = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(PACKAGE_LABEL.into(), "true".into())])),
                annotations: Some(BTreeMap::from([
                    (ID_ANNOTATION.into(), package.id.clone()),
                    (SHA_ANNOTATION.into(), sha),
                    (SIZE_ANNOTATION.into(), bytes.len().to_string()),
                    (BUNDLE_ANNOTATION.into(), bundle.to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            binary_data: Some(BTreeMap::from([(ARCHIVE_KEY.into(), ByteString(bytes))])),
            immutable: Some(true),
            ..ConfigMap::default()
        };
        match self.api.create(&PostParams::default(), &object).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(self.api_err("create", &name)(e)),
        }
    }

    /// The metadata of every package's object.
    async fn list(&self) -> Result<Vec<kube::core::PartialObjectMeta<ConfigMap>>, StoreError> {
        Ok(self
            .api
            .list_metadata(&ListParams::default().labels(&format!("{PACKAGE_LABEL}=true")))
            .await
            .map_err(self.api_err("list", "-l theseus.dev/generated-package"))?
            .items)
    }

    /// The packages stored, as index entries (from metadata only).
    pub async fn entries(&self) -> Result<Vec<IndexEntry>, StoreError> {
        let mut entries: Vec<IndexEntry> = self
            .list()
            .await?
            .iter()
            .filter(|m| m.metadata.deletion_timestamp.is_none())
            .filter_map(|m| {
                let a = m.annotations();
                let id: PackageId = a.get(ID_ANNOTATION)?.parse().ok()?;
                Some(IndexEntry {
                    path: format!("{PACKAGES_DIR}/{id}.tar.gz"),
                    id,
                    sha256: a.get(SHA_ANNOTATION)?.clone(),
                    size: a.get(SIZE_ANNOTATION)?.parse().ok()?,
                    requires: Vec::new(),
                })
            })
            .collect();
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(entries)
    }

    /// Makes the served index list exactly the stored packages, with a
    /// version one higher than the last; writes nothing when it does
    /// already. Returns the index served.
    pub async fn publish(&self) -> Result<Index, StoreError> {
        let entries = self.entries().await?;
        let current = self
            .api
            .get_opt(INDEX_OBJECT)
            .await
            .map_err(self.api_err("read", INDEX_OBJECT))?;
        let served = current.as_ref().and_then(served_index);
        if let Some(index) = &served
            && index.packages == entries
            && self.signed(current.as_ref()) == self.key.is_some()
        {
            return Ok(index.clone());
        }
        let index = Index {
            version: served.map_or(1, |i| i.version + 1),
            expires: None,
            packages: entries,
        };
        let bytes = index.to_bytes();
        let mut data = BTreeMap::from([(
            INDEX.to_owned(),
            String::from_utf8(bytes.clone()).unwrap_or_default(),
        )]);
        if let Some(key) = &self.key {
            data.insert(SIGNATURE.to_owned(), format!("{}\n", sign(&bytes, key)));
        }
        let object = ConfigMap {
            metadata: ObjectMeta {
                name: Some(INDEX_OBJECT.into()),
                resource_version: current.as_ref().and_then(|c| c.resource_version()),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        };
        let written = match &current {
            Some(_) => {
                self.api
                    .replace(INDEX_OBJECT, &PostParams::default(), &object)
                    .await
            }
            None => self.api.create(&PostParams::default(), &object).await,
        };
        match written {
            Ok(_) => Ok(index),
            Err(kube::Error::Api(e)) if e.code == 409 => Err(StoreError::Conflict {
                namespace: self.namespace.clone(),
            }),
            Err(e) => Err(self.api_err("write", INDEX_OBJECT)(e)),
        }
    }

    fn signed(&self, current: Option<&ConfigMap>) -> bool {
        current
            .and_then(|c| c.data.as_ref())
            .is_some_and(|d| d.contains_key(SIGNATURE))
    }

    /// A file of the repository as served: `index.json`, `index.json.sig`
    /// or `packages/ID.tar.gz`; `None` when there is no such file.
    pub async fn file(&self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if path == INDEX || path == SIGNATURE {
            let index = self
                .api
                .get_opt(INDEX_OBJECT)
                .await
                .map_err(self.api_err("read", INDEX_OBJECT))?;
            return Ok(index
                .and_then(|c| c.data)
                .and_then(|mut d| d.remove(path))
                .map(String::into_bytes));
        }
        let Some(id) = path
            .strip_prefix(&format!("{PACKAGES_DIR}/"))
            .and_then(|f| f.strip_suffix(".tar.gz"))
            .filter(|id| id.parse::<PackageId>().is_ok())
        else {
            return Ok(None);
        };
        let name = object_name(id);
        let object = self
            .api
            .get_opt(&name)
            .await
            .map_err(self.api_err("read", &name))?;
        Ok(object
            .and_then(|c| c.binary_data)
            .and_then(|mut d| d.remove(ARCHIVE_KEY))
            .map(|b| b.0))
    }
}

/// The index a ConfigMap holds, if it holds a readable one.
fn served_index(object: &ConfigMap) -> Option<Index> {
    let bytes = object.data.as_ref()?.get(INDEX)?;
    Index::parse(bytes.as_bytes(), INDEX_OBJECT).ok()
}

/// A stored package, for collection: its id and when it was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The package id.
    pub id: String,
    /// When its ConfigMap was created.
    pub created: k8s_openapi::jiff::Timestamp,
}

/// The stored packages that may go: referenced by nothing in `used` and
/// stored longer ago than `grace`. Pure.
pub fn collectable(
    stored: &[Stored],
    used: &std::collections::BTreeSet<String>,
    now: k8s_openapi::jiff::Timestamp,
    grace: std::time::Duration,
) -> Vec<String> {
    let grace = k8s_openapi::jiff::SignedDuration::try_from(grace).unwrap_or_default();
    stored
        .iter()
        .filter(|s| !used.contains(&s.id))
        .filter(|s| now.duration_since(s.created) >= grace)
        .map(|s| s.id.clone())
        .collect()
}

impl Repository {
    /// The stored packages with their creation times.
    pub async fn stored(&self) -> Result<Vec<Stored>, StoreError> {
        Ok(self
            .list()
            .await?
            .iter()
            .filter_map(|m| {
                Some(Stored {
                    id: m.annotations().get(ID_ANNOTATION)?.clone(),
                    created: m.metadata.creation_timestamp.as_ref()?.0,
                })
            })
            .collect())
    }

    /// Deletes the package `id`'s object (gone already is fine).
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        let name = object_name(id);
        match self.api.delete(&name, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(self.api_err("delete", &name)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use k8s_openapi::jiff::Timestamp;

    use super::*;

    #[test]
    fn only_packages_nothing_uses_and_older_than_the_grace_are_collected() {
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        let stored = vec![
            Stored {
                id: "web--cfg.a".into(),
                created: at(0),
            },
            Stored {
                id: "web--cfg.b".into(),
                created: at(0),
            },
            Stored {
                id: "web--cfg.c".into(),
                created: at(950),
            },
        ];
        let used = BTreeSet::from(["web--cfg.a".to_owned()]);
        let gone = collectable(&stored, &used, at(1000), Duration::from_secs(100));
        // a is used; c is younger than the grace.
        assert_eq!(gone, ["web--cfg.b"]);
        assert!(collectable(&stored, &used, at(50), Duration::from_secs(100)).is_empty());
    }
}
