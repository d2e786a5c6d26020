//! User commands that are neither the operator nor the agent.

pub mod app;
pub mod cluster;
pub mod completions;
pub mod config;
pub mod crds;
pub mod dashboard;
pub mod discover;
pub mod groups;
pub mod node;
pub mod pkg;
pub mod policy;
pub mod repo;
pub mod rollout;
pub mod template;
pub mod tenant;
