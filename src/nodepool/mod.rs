//! NodePools: a declared count of nodes, launched on EC2 or as local agent
//! processes, drained before removal. The planner (`plan`) is pure; the
//! providers, the drain and the controller are the I/O around it.

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

/// The NodeInstall annotation `theseus node remove` sets: the node goes
/// first when its pool shrinks.
pub const REMOVE_ANNOTATION: &str = "theseus.dev/remove";
#[cfg(test)]
mod plan_props;
