//! User commands that are neither the operator nor the agent.

pub mod crds;
pub mod discover;
pub mod groups;
