//! PackageSet rollouts: the planner (pure) and the controller around it.

pub mod plan;
pub mod selector;
