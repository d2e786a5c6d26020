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
use crate::layout::Catalog;

pub use deps::Phase;
pub use inverse::inverse;

/// What one task does on its node.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Launches the node, of the class the target layout gives it.
    CreateNode,
    /// Prepares a new node (the agent and its root) for services.
    Bootstrap,
    /// Runs the service's `install` action after its packages are active.
    Install,
    /// Runs the service's `configure` action.
    Configure,
    /// Runs the service's `initialize` action, once before the first start.
    Initialize,
    /// Starts the service.
    Start,
    /// Stops the service.
    Stop,
    /// Runs the service's `remove` action; it leaves the node.
    Remove,
    /// Deletes the node.
    DeleteNode,
}

impl Action {
    /// The name as serialized and as it ends a task id, e.g. `createNode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::CreateNode => "createNode",
            Action::Bootstrap => "bootstrap",
            Action::Install => "install",
            Action::Configure => "configure",
            Action::Initialize => "initialize",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Remove => "remove",
            Action::DeleteNode => "deleteNode",
        }
    }
}

/// One step on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Stable and readable: `NODE/ACTION` for a node's own tasks
    /// (`node-3/createNode`), `NODE/SERVICE/ACTION` for a service's
    /// (`node-3/datanode/install`).
    pub id: String,
    /// The node the task runs on.
    pub node: String,
    /// The service it acts on; none for createNode, bootstrap, deleteNode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// What it does.
    pub action: Action,
    /// The ids of the tasks that must finish first, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

/// What a plan is for. The layouts say what changes; the operation says
/// which changes are expected and what else is done to services that stay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "OperationFields", into = "OperationFields")]
pub enum Operation {
    /// A new cluster: the old layout is empty.
    Create,
    /// The cluster goes: the new layout is empty.
    Delete,
    /// Services (and maybe nodes) are added; nothing leaves.
    AddServices,
    /// The configuration of these services changed; the layout did not.
    Reconfigure {
        /// The services whose configuration changed.
        services: Vec<String>,
    },
    /// Any change of the layout: nodes join and leave, services move.
    Scale,
    /// Every service is stopped and started again; the layout did not
    /// change.
    Restart,
}

impl Operation {
    /// The name as serialized in `type`, e.g. `addServices`.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    fn kind(&self) -> OperationKind {
        match self {
            Operation::Create => OperationKind::Create,
            Operation::Delete => OperationKind::Delete,
            Operation::AddServices => OperationKind::AddServices,
            Operation::Reconfigure { .. } => OperationKind::Reconfigure,
            Operation::Scale => OperationKind::Scale,
            Operation::Restart => OperationKind::Restart,
        }
    }
}

/// An operation as stored: one object whose `type` names the operation,
/// so that its schema is structural when a custom resource embeds it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct OperationFields {
    /// What the plan does: create, delete, addServices, reconfigure,
    /// scale or restart.
    #[serde(rename = "type")]
    kind: OperationKind,
    /// For reconfigure: the services whose configuration changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    services: Vec<String>,
}

/// The operation's name alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
enum OperationKind {
    Create,
    Delete,
    AddServices,
    Reconfigure,
    Scale,
    Restart,
}

impl OperationKind {
    fn as_str(self) -> &'static str {
        match self {
            OperationKind::Create => "create",
            OperationKind::Delete => "delete",
            OperationKind::AddServices => "addServices",
            OperationKind::Reconfigure => "reconfigure",
            OperationKind::Scale => "scale",
            OperationKind::Restart => "restart",
        }
    }
}

impl From<Operation> for OperationFields {
    fn from(operation: Operation) -> Self {
        let kind = operation.kind();
        let services = match operation {
            Operation::Reconfigure { services } => services,
            _ => Vec::new(),
        };
        OperationFields { kind, services }
    }
}

impl TryFrom<OperationFields> for Operation {
    type Error = String;

    fn try_from(fields: OperationFields) -> Result<Self, String> {
        let OperationFields { kind, services } = fields;
        if !services.is_empty() && kind != OperationKind::Reconfigure {
            return Err(format!(
                "services is only for a reconfigure, not for {}",
                kind.as_str()
            ));
        }
        Ok(match kind {
            OperationKind::Create => Operation::Create,
            OperationKind::Delete => Operation::Delete,
            OperationKind::AddServices => Operation::AddServices,
            OperationKind::Reconfigure => Operation::Reconfigure { services },
            OperationKind::Scale => Operation::Scale,
            OperationKind::Restart => Operation::Restart,
        })
    }
}

impl JsonSchema for Operation {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Operation".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        OperationFields::json_schema(generator)
    }
}

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
