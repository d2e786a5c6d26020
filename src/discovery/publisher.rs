//! The publisher: writes what groups should look like into the tree, as
//! the difference against what etcd holds, in transactions of at most
//! [`MAX_TXN_OPS`] operations. Container entries hang on a lease that the
//! publisher keeps alive; when the lease is lost, a fresh one is granted
//! and the caller re-publishes in full.
//!
//! This part knows nothing of Kubernetes: [`sync`](super::sync) feeds it
//! [`GroupState`]s built from ServiceGroups and their ready pods.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use futures::{StreamExt, TryStreamExt};
use thiserror::Error;

use super::diff::{self, MAX_TXN_OPS, Op, Want};
use super::model::{ContainerInfo, GroupConfig};
use super::tree::{Tree, TreeError};

/// What went wrong publishing.
#[derive(Debug, Error)]
pub enum PublishError {
    /// The tree could not be read or written.
    #[error("publishing to the discovery tree failed: {0}")]
    Tree(#[from] TreeError),
    /// etcd refused a lease.
    #[error(
        "discovery etcd refused a lease of {ttl}s: {reason}; check --discovery-lease-ttl and etcd's lease limits"
    )]
    Lease {
        /// The TTL asked for.
        ttl: i64,
        /// Why.
        reason: String,
    },
}

/// What one group should look like in the tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupState {
    /// The service.
    pub service: String,
    /// The encoded group.
    pub group: String,
    /// The group's config.
    pub config: GroupConfig,
    /// Its ready containers, by name.
    pub containers: BTreeMap<String, ContainerInfo>,
}

/// What a publish did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Keys written.
    pub puts: usize,
    /// Keys deleted.
    pub deletes: usize,
    /// Transactions used.
    pub transactions: usize,
}

/// Whether a keep-alive kept the lease or had to replace it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseRenewal {
    /// The lease lives on.
    Kept,
    /// The lease had expired and a new one was granted: every container
    /// entry must be written again.
    Replaced,
}

/// Publishes groups into one tree under one lease.
pub struct Publisher {
    tree: Tree,
    ttl: i64,
    lease: i64,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    concurrency: usize,
}

impl Publisher {
    /// Grants a lease of the tree config's TTL and returns a publisher that
    /// writes with `concurrency` transactions in flight.
    pub async fn new(tree: Tree, concurrency: usize) -> Result<Self, PublishError> {
        let ttl = tree.config().lease_ttl;
        let lease = grant(&tree, ttl).await?;
        Ok(Self {
            tree,
            ttl,
            lease,
            keeper: None,
            concurrency: concurrency.max(1),
        })
    }

    /// The lease container entries hang on.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The tree written to.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// How often [`keep_alive`](Self::keep_alive) should run: a third of
    /// the TTL, so two missed renewals still keep the lease.
    pub fn keep_alive_interval(&self) -> Duration {
        Duration::from_millis((self.ttl.max(1) as u64) * 1000 / 3)
    }

    /// Renews the lease, or grants a new one when it expired.
    pub async fn keep_alive(&mut self) -> Result<LeaseRenewal, PublishError> {
        match self.renew().await {
            Ok(ttl) if ttl > 0 => return Ok(LeaseRenewal::Kept),
            Ok(_) => tracing::warn!(
                lease = self.lease,
                "discovery lease expired; granting a new one"
            ),
            Err(error) => {
                self.keeper = None;
                return Err(error.into());
            }
        }
        self.keeper = None;
        self.lease = grant(&self.tree, self.ttl).await?;
        Ok(LeaseRenewal::Replaced)
    }

    async fn renew(&mut self) -> Result<i64, TreeError> {
        if self.keeper.is_none() {
            let lease = self.lease;
            let pair = self
                .tree
                .call("keep lease alive", |mut c| async move {
                    c.lease_keep_alive(lease).await
                })
                .await?;
            self.keeper = Some(pair);
        }
        let Some((keeper, stream)) = self.keeper.as_mut() else {
            return Ok(0);
        };
        let timeout = self.tree.config().request_timeout;
        let answer = tokio::time::timeout(timeout, async {
            keeper.keep_alive().await?;
            stream.message().await
        })
        .await;
        match answer {
            Ok(Ok(Some(response))) => Ok(response.ttl()),
            Ok(Ok(None)) => Err(unavailable(&self.tree, "lease keep-alive stream ended")),
            Ok(Err(error)) => Err(unavailable(&self.tree, &error.to_string())),
            Err(_) => Err(unavailable(&self.tree, "no keep-alive answer in time")),
        }
    }

    /// Makes the tree hold exactly `groups` under their group prefixes:
    /// reads each group, diffs, and writes only the difference.
    pub async fn publish(&self, groups: &[GroupState]) -> Result<PublishReport, PublishError> {
        // Futures are collected first: a lazy `map` closure in the stream
        // would make the future's `Send` impossible to prove.
        let mut reads = Vec::with_capacity(groups.len());
        for group in groups {
            let prefix = self.tree.layout().group(&group.service, &group.group);
            reads.push(read_and_diff(
                self.tree.clone(),
                prefix,
                self.desired(group),
                self.lease,
            ));
        }
        let ops: Vec<Vec<Op>> = futures::stream::iter(reads)
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;
        self.write(ops.into_iter().flatten().collect()).await
    }

    /// Writes `ops` in transactions of at most [`MAX_TXN_OPS`], with the
    /// publisher's concurrency.
    pub async fn write(&self, ops: Vec<Op>) -> Result<PublishReport, PublishError> {
        let mut report = PublishReport::default();
        for op in &ops {
            match op {
                Op::Put { .. } => report.puts += 1,
                Op::Delete { .. } => report.deletes += 1,
            }
        }
        let chunks = diff::chunk(ops, MAX_TXN_OPS);
        report.transactions = chunks.len();
        let mut writes = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let tree = self.tree.clone();
            let lease = self.lease;
            writes.push(async move { tree.apply(&chunk, lease).await });
        }
        futures::stream::iter(writes)
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(report)
    }

    /// Removes a group and everything under it.
    pub async fn remove(&self, service: &str, group: &str) -> Result<i64, PublishError> {
        Ok(self.tree.remove_group(service, group).await?)
    }

    /// The keys a group should have, for callers that diff themselves.
    pub fn desired(&self, group: &GroupState) -> BTreeMap<String, Want> {
        diff::desired_group(
            self.tree.layout(),
            &group.service,
            &group.group,
            &group.config,
            &group.containers,
        )
    }
}

async fn read_and_diff(
    tree: Tree,
    prefix: String,
    desired: BTreeMap<String, Want>,
    lease: i64,
) -> Result<Vec<Op>, TreeError> {
    let actual = tree.range(&prefix).await?.actual();
    Ok(diff::diff(&desired, &actual, lease))
}

async fn grant(tree: &Tree, ttl: i64) -> Result<i64, PublishError> {
    let response = tree
        .call("grant lease", |mut c| async move {
            c.lease_grant(ttl, None).await
        })
        .await?;
    if !response.error().is_empty() || response.id() == 0 {
        return Err(PublishError::Lease {
            ttl,
            reason: response.error().to_owned(),
        });
    }
    Ok(response.id())
}

fn unavailable(tree: &Tree, last: &str) -> TreeError {
    TreeError::Unavailable {
        endpoints: tree.config().endpoints_text(),
        what: "keep lease alive".into(),
        attempts: 1,
        last: last.to_owned(),
    }
}
