//! NodePools: a declared count of nodes, launched on EC2 or as local agent
//! processes, drained before removal. The planner (`plan`) is pure; the
//! providers, the drain and the controller are the I/O around it.

use std::path::PathBuf;
use std::time::Duration;

pub mod aws;
pub mod controller;
pub mod drain;
pub mod identity;
pub mod local;
pub mod plan;
pub mod pool_status;
pub mod provider;
pub mod providers;
pub mod triggers;
pub mod userdata;

/// The NodePool controller's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where local pools keep their agents' roots (`STATE/nodepools/POOL`).
    pub state_dir: PathBuf,
    /// This cluster's name in the instances' cluster tag.
    pub cluster_name: String,
    /// How long an unrecorded instance is left alone before it counts as
    /// an orphan.
    pub instance_grace: Duration,
    /// A NodeInstall whose heartbeat is older than this counts as
    /// unavailable.
    pub stale_after: Duration,
    /// Whom local agents act as.
    pub local_identity: identity::Mode,
    /// Namespace of local agents' own ServiceAccounts.
    pub identity_namespace: String,
    /// Prefix of their names (followed by the node's).
    pub identity_prefix: String,
}

pub use crate::api::REMOVE_ANNOTATION;
#[cfg(test)]
mod plan_props;
