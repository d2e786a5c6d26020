//! User commands that are neither the operator nor the agent.

pub mod crds;
pub mod node;
pub mod pkg;
pub mod repo;
pub mod rollout;
