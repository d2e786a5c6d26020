//! ClusterPlan: the ordered tasks that take a Cluster from one layout to
//! another, and how far they got.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::LayoutNode;

/// A plan of a Cluster: the operation, the layouts it goes from and to,
/// its tasks and their inverse (the way back). Owned by its Cluster; the
/// spec never changes once created. The status records each task's
/// state, so a restarted operator resumes where the plan stood.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "ClusterPlan",
    namespaced,
    status = "ClusterPlanStatus",
    shortname = "cplan",
    category = "theseus",
    doc = "The ordered tasks that take a Cluster from one layout to another, with their progress.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(
        name = "Operation",
        type_ = "string",
        json_path = ".spec.operation.type"
    ),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "a ClusterPlan's spec is immutable; create a new plan"}]))]
#[serde(rename_all = "camelCase")]
pub struct ClusterPlanSpec {
    /// The Cluster the plan is for, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub cluster: String,
    /// What the plan does.
    pub operation: Operation,
    /// The layout the plan starts from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<LayoutNode>,
    /// The layout the plan ends at.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<LayoutNode>,
    /// The tasks, in an order that keeps every `after`.
    #[serde(default)]
    pub tasks: Vec<Task>,
    /// The configuration the hooks of the plan see.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub config: std::collections::BTreeMap<String, String>,
    /// The configuration before the plan, which the inverse tasks see.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub from_config: std::collections::BTreeMap<String, String>,
    /// The tasks that take `to` back to `from`, run when the plan fails
    /// and rolls back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inverse: Vec<Task>,
    /// What the Cluster's spec asked for when the plan was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<super::ClusterRequest>,
    /// What it asked for when `from` was solved, if known: with
    /// `fromConfig`, the spec a rollback of the stopped plan puts back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_request: Option<super::ClusterRequest>,
}

/// Where a plan stands.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PlanPhase {
    /// Created, no task started.
    #[default]
    Pending,
    /// Waiting for `theseus cluster approve`.
    AwaitingApproval,
    /// Tasks are running.
    Running,
    /// Every task finished.
    Succeeded,
    /// A task failed and the plan stopped.
    Failed,
    /// A task failed; the inverse tasks are running.
    RollingBack,
    /// The inverse tasks finished: the cluster is back at `from`.
    RolledBack,
}

/// Where a task stands.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum TaskState {
    /// Not started.
    #[default]
    Pending,
    /// Recorded as started; running.
    Running,
    /// Finished.
    Succeeded,
    /// Failed its last attempt.
    Failed,
    /// Not run: in a rollback, an inverse task whose forward task never
    /// ran has nothing to undo.
    Skipped,
}

impl TaskState {
    /// Done with: succeeded, or skipped with nothing to do; what a task
    /// after it waits for.
    pub fn is_done(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Skipped)
    }
}

/// How a plan stands, task by task.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPlanStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the plan stands.
    #[serde(default)]
    pub phase: PlanPhase,
    /// Tasks finished of all, e.g. `3/10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Each task that left Pending, by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub tasks: Vec<TaskStatus>,
    /// Each inverse task that left Pending, by id, once the plan rolls
    /// back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub rollback: Vec<TaskStatus>,
    /// Why the plan failed: the task and its last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Conditions of the plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One task's progress.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// The task's id.
    pub id: String,
    /// Where it stands.
    pub state: TaskState,
    /// How many times it was started.
    #[serde(default)]
    pub attempts: i32,
    /// When its last attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Time>,
    /// After a failed attempt: not tried again before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Time>,
    /// The last error, with the last lines of the action's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What one task does on its node.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum TaskAction {
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

impl TaskAction {
    /// The name as serialized and as it ends a task id, e.g. `createNode`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskAction::CreateNode => "createNode",
            TaskAction::Bootstrap => "bootstrap",
            TaskAction::Install => "install",
            TaskAction::Configure => "configure",
            TaskAction::Initialize => "initialize",
            TaskAction::Start => "start",
            TaskAction::Stop => "stop",
            TaskAction::Remove => "remove",
            TaskAction::DeleteNode => "deleteNode",
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
    pub action: TaskAction,
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
