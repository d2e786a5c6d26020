//! The provider trait: what the NodePool controller needs from a place that
//! runs instances — list the pool's instances, launch a batch, terminate.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;

pub use crate::api::POOL_TAG;
/// The tag naming the cluster (operator `--cluster-name`) that owns it.
pub const CLUSTER_TAG: &str = "theseus.dev/cluster";
/// The tag holding the launch sequence an instance was started with.
pub const LAUNCH_TAG: &str = "theseus.dev/launch";

/// Who owns the instances a provider manages.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The pool's name.
    pub pool: String,
    /// The pool's uid, for idempotency tokens.
    pub uid: String,
    /// The cluster's name.
    pub cluster: String,
}

impl Owner {
    /// Whether `tags` carry this owner's pool and cluster tags.
    pub fn owns(&self, tags: &BTreeMap<String, String>) -> bool {
        tags.get(POOL_TAG) == Some(&self.pool) && tags.get(CLUSTER_TAG) == Some(&self.cluster)
    }

    /// The idempotency token of the launch with sequence `seq`: at most 64
    /// ASCII characters (a uid is 36).
    pub fn token(&self, seq: i64) -> String {
        let mut token = format!("{}-{seq}", self.uid);
        token.truncate(64);
        token
    }
}

/// An instance as a provider lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    /// The provider's id.
    pub id: String,
    /// When it was launched, when the provider says.
    pub launched: Option<Timestamp>,
    /// Its tags (EC2) or the equivalent labels (local).
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    /// The launch sequence it was started with, from its tag.
    pub fn launch_seq(&self) -> Option<i64> {
        self.tags.get(LAUNCH_TAG).and_then(|s| s.parse().ok())
    }
}

/// What kind of failure a provider error is; only the provider that raised
/// it knows the details (its error is the [`Error`]'s source).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The provider kept refusing for rate limits.
    Throttled,
    /// An instance to terminate is not the owner's.
    NotOwned,
    /// The provider did not answer in time.
    Timeout,
    /// A provider or Kubernetes API call failed.
    Api,
    /// A local process or file could not be used.
    Local,
}

/// Errors of any provider: a kind and the provider's own error.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct Error {
    /// What kind of failure.
    pub kind: Kind,
    /// The provider's error, which names the pool and what to do.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl Error {
    /// An error of `kind` caused by `source`.
    pub fn new(kind: Kind, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error {
            kind,
            source: Box::new(source),
        }
    }

    /// The reason of the pool's Degraded condition: `ProviderTimeout` when
    /// the provider did not answer in time, else `ProviderError`.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            Kind::Timeout => "ProviderTimeout",
            _ => "ProviderError",
        }
    }
}

/// A place that runs a pool's instances.
pub trait Provider: Send + Sync {
    /// The pool's live instances (never another pool's or cluster's).
    fn list(&self) -> BoxFuture<'_, Result<Vec<Instance>, Error>>;

    /// Launches `count` instances with sequences from `first_seq`, reusing
    /// the sequence's idempotency token; returns them.
    fn launch(&self, first_seq: i64, count: usize) -> BoxFuture<'_, Result<Vec<Instance>, Error>>;

    /// Terminates instances previously returned by [`Provider::list`]; an
    /// instance that does not carry the owner's tags is refused.
    fn terminate<'a>(&'a self, instances: &'a [Instance]) -> BoxFuture<'a, Result<(), Error>>;
}
