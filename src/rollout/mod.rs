//! PackageSet rollouts: the planner (pure) and the controllers around it.

pub mod controller;
pub mod ownership;
pub mod plan;
pub mod repository;
pub mod selector;
pub mod status;
pub mod target;
pub mod validate;
