//! The cluster planner: the tasks that take a cluster from one layout to
//! another, and the order they run in.
//!
//! Pure: it reads the old and new layouts (which node of which class runs
//! which services), the catalog's service definitions and the operation,
//! and returns a [`Plan`]: tasks (create a node, install a service on it,
//! start it, …), each naming the tasks it runs after. No I/O, no clock;
//! the same input gives the same bytes out, whatever the order of the
//! layouts' lists.
//!
//! The rules (`docs/architecture.md`, "Plans"):
//!
//! - a node that joins is created and bootstrapped before its services; a
//!   node that leaves has its services stopped and removed, then is
//!   deleted; a node whose class changed leaves and joins again;
//! - a service that joins a node is installed, configured, initialized
//!   and started; one that leaves is stopped and removed; one that stays
//!   has no task, except for a reconfigure (stop, configure, start of the
//!   changed services and of everything that depends on them at runtime)
//!   and a restart (stop and start of every service);
//! - across the cluster, a service is installed after what its `install`
//!   dependencies name and started after what its `runtime` dependencies
//!   name, when those are in the new layout; it is stopped before what its
//!   `runtime` dependencies name and removed before what its `install`
//!   dependencies name, when those are in the old layout;
//! - one node runs one task at a time: its tasks form a chain, in one
//!   topological order of the whole plan.
//!
//! [`inverse`] plans the way back, for a rollback.

mod deps;
mod diff;
mod inverse;
mod order;
mod tasks;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::LayoutNode;
pub use crate::api::{Operation, Task, TaskAction as Action};
use crate::layout::Catalog;

pub use deps::Phase;
pub use inverse::inverse;

/// The tasks of one operation, in a topological order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// What the plan is for.
    pub operation: Operation,
    /// Every task, each after the tasks its `after` names.
    #[serde(default)]
    pub tasks: Vec<Task>,
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A layout or the operation names a service the catalog lacks.
    #[error("service {service}{} has no ServiceDefinition", on_node(.node))]
    UnknownService {
        /// The service.
        service: String,
        /// The node that runs it; none when the operation names it.
        node: Option<String>,
    },
    /// A layout names one node twice.
    #[error("the {layout} layout names node {node} twice")]
    DuplicateNode {
        /// `old` or `new`.
        layout: &'static str,
        /// The node.
        node: String,
    },
    /// Services of a layout depend on each other in a cycle.
    #[error(
        "the {phase} dependencies form a cycle: {}; no order installs or starts them",
        cycle_text(.services)
    )]
    Cycle {
        /// Install or runtime.
        phase: Phase,
        /// The services of the cycle, in order: each depends on the next,
        /// the last on the first.
        services: Vec<String>,
    },
    /// The layouts change in a way the operation does not allow.
    #[error("operation {operation} cannot {change}")]
    Mismatch {
        /// The operation's name.
        operation: &'static str,
        /// What changes that it does not allow.
        change: String,
    },
    /// The tasks wait for each other (a fault of the planner).
    #[error("the tasks {} wait for each other; please report this layout", .tasks.join(", "))]
    Unordered {
        /// The tasks left unordered.
        tasks: Vec<String>,
    },
}

fn cycle_text(services: &[String]) -> String {
    let mut names: Vec<&str> = services.iter().map(String::as_str).collect();
    names.extend(services.first().map(String::as_str));
    names.join(" -> ")
}

fn on_node(node: &Option<String>) -> String {
    node.as_ref()
        .map(|n| format!(" (on node {n})"))
        .unwrap_or_default()
}

/// The plan that takes the cluster from `old` to `new` for `operation`.
/// Fails on a service the catalog lacks, a node named twice, a dependency
/// cycle among the services of either layout, or a change the operation
/// does not allow.
pub fn plan(
    old: &[LayoutNode],
    new: &[LayoutNode],
    catalog: &Catalog,
    operation: &Operation,
) -> Result<Plan, Error> {
    let old = diff::nodes(old, "old", catalog)?;
    let new = diff::nodes(new, "new", catalog)?;
    let changes = diff::changes(&old, &new);
    diff::check(operation, &changes)?;
    let graphs = deps::Graphs::new(catalog, &old, &new)?;
    let restarts = tasks::restarts(operation, &changes, &graphs, catalog)?;
    let graph = tasks::build(&changes, &restarts, &graphs);
    let tasks = order::tasks(graph)?;
    Ok(Plan {
        operation: operation.clone(),
        tasks,
    })
}
