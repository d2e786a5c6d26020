//! The publisher: writes what groups should look like into the tree, as
//! the difference against what etcd holds, in transactions of at most
//! [`MAX_TXN_OPS`] operations. Container entries hang on a lease that a
//! task of the publisher's own keeps alive ([`lease`](super::lease)); when
//! the lease is lost, a fresh one is granted and announced through
//! [`Publisher::lease_changes`], and the caller re-publishes in full.
//!
//! This part knows nothing of Kubernetes: [`sync`](super::sync) feeds it
//! [`GroupState`]s built from ServiceGroups and their ready pods.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

/// Publishes groups into one tree under one lease. Dropping it stops the
/// renewals (the entries stay until the lease expires).
pub struct Publisher {
    tree: Tree,
    lease: watch::Receiver<i64>,
    keeper: JoinHandle<()>,
    concurrency: usize,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl Publisher {
    /// Grants a lease of the tree config's TTL, starts renewing it on a
    /// connection of its own, and returns a publisher that writes with
    /// `concurrency` transactions in flight.
    pub async fn new(tree: Tree, concurrency: usize) -> Result<Self, PublishError> {
        let ttl = tree.config().lease_ttl;
        let lease_client = Tree::lease_client(tree.config()).await?;
        let lease = grant(&tree, ttl).await?;
        let (announce, lease) = watch::channel(lease);
        let keeper = tokio::spawn(super::lease::keep_alive(
            tree.config().clone(),
            lease_client,
            announce,
        ));
        Ok(Self {
            tree,
            lease,
            keeper,
            concurrency: concurrency.max(1),
        })
    }

    /// The lease container entries hang on now.
    pub fn lease(&self) -> i64 {
        *self.lease.borrow()
    }

    /// Changes when the lease expired and a new one replaced it: every
    /// container entry must then be written again.
    pub fn lease_changes(&self) -> watch::Receiver<i64> {
        self.lease.clone()
    }

    /// The tree written to.
    pub fn tree(&self) -> &Tree {
        &self.tree
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
                self.lease(),
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
            let lease = self.lease();
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
