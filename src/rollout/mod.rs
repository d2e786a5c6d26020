//! PackageSet rollouts: the planner (pure) and the controller around it.

use std::time::Duration;

pub mod controller;
pub mod ownership;
pub mod plan;
#[cfg(test)]
mod plan_props;
pub use crate::shared::selector;
pub mod status;
pub mod target;
pub mod validate;

/// The PackageSet controller's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// A NodeInstall whose heartbeat is older than this counts as
    /// unavailable.
    pub stale_after: Duration,
    /// Where nodes fetch generated configuration packages from (the
    /// operator's `/config-repository/`), and the keys its index is
    /// signed with.
    pub generated: crate::api::PackageSource,
}
