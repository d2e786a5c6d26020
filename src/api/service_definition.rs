//! ServiceDefinition: a service of the catalog that cluster templates place
//! on nodes.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A service an administrator publishes: the packages that carry it, what it
/// needs from the rest of a cluster, what one instance consumes, and the
/// commands run at each phase of its life on a node.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "ServiceDefinition",
    status = "ServiceDefinitionStatus",
    shortname = "svcdef",
    category = "theseus",
    doc = "A service of the catalog: its packages, dependencies, resources per instance and lifecycle actions.",
    printcolumn(name = "CPU", type_ = "string", json_path = ".spec.resources.cpu"),
    printcolumn(
        name = "Memory",
        type_ = "string",
        json_path = ".spec.resources.memory"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDefinitionSpec {
    /// Name of the PackageRepository the packages come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub repository: Option<String>,

    /// The package ids (`NAME--VERSION`) that carry the service; a node
    /// running the service has them active.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            regex(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*--[A-Za-z0-9._+]{1,64}$"),
            length(max = 129)
        )
    )]
    pub packages: Vec<String>,

    /// What the service offers to and needs from the other services of a
    /// cluster.
    #[serde(default)]
    pub dependencies: Dependencies,

    /// What one instance of the service consumes on its node. The layout
    /// solver keeps the sum over a node's services within its NodeClass's
    /// capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,

    /// The commands run on a node at each phase of the service's life.
    #[serde(default)]
    pub actions: Actions,
}

/// A service's relations to the other services of a cluster.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Dependencies {
    /// Extra names the service answers to in other services' `requires`,
    /// `uses` and `conflicts` (e.g. `sql-database` for a PostgreSQL service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub provides: Vec<String>,

    /// Services (or provided names) that may not be in the same cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub conflicts: Vec<String>,

    /// What must be present, and what is ordered first, while installing.
    #[serde(default)]
    pub install: PhaseDependencies,

    /// What must be present, and what is started first, while running.
    #[serde(default)]
    pub runtime: PhaseDependencies,
}

/// Dependencies that hold during one phase.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PhaseDependencies {
    /// Services (or provided names) that must be in the cluster; they are
    /// handled before this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub requires: Vec<String>,

    /// Services (or provided names) handled before this one when they are in
    /// the cluster; their absence is fine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub uses: Vec<String>,
}

/// Amounts of CPU, memory and disk, as Kubernetes quantities (`500m`, `4Gi`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU cores, e.g. `2` or `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory in bytes, e.g. `4Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Disk in bytes, e.g. `100Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Quantity>,
}

/// The commands run at each phase of a service's life on a node.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Actions {
    /// Run once, after the packages are active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<Action>,
    /// Run whenever the cluster's configuration changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configure: Option<Action>,
    /// Run once, before the first start (e.g. formatting a file system).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialize: Option<Action>,
    /// Starts the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Action>,
    /// Stops the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Action>,
    /// Run before the service leaves the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Option<Action>,
}

/// One command, run inside the service's active package.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// The program and its arguments; the program is a path inside the
    /// package (e.g. `bin/format-namenode`) or an absolute path.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 4096)))]
    pub argv: Vec<String>,

    /// Seconds the command may run before it is killed and the step fails.
    /// Default 300.
    #[serde(default = "default_action_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i32,
}

fn default_action_timeout() -> i32 {
    300
}

/// What the operator observed about the service definition.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDefinitionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Valid: the definition's references resolve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
