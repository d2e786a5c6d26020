//! PackageSet rollouts: the planner (pure) and the controllers around it.

pub mod controller;
pub mod ownership;
pub mod plan;
#[cfg(test)]
mod plan_props;
pub mod repository;
pub mod selector;
pub mod status;
pub mod target;
pub mod validate;
