//! Cluster: a user's cluster of a template and size, and its solved layout.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The label naming a node's cluster (on the cluster's ClusterPlans,
/// NodePools and NodeInstalls).
pub const CLUSTER_LABEL: &str = "theseus.dev/cluster";
/// The label naming the cluster's namespace.
pub const CLUSTER_NAMESPACE_LABEL: &str = "theseus.dev/cluster-namespace";
/// The label binding a NodeInstall to a node of the cluster's layout.
pub const NODE_LABEL: &str = "theseus.dev/cluster-node";

/// A cluster made from a ClusterTemplate: the operator solves which nodes,
/// of which NodeClass, run which services, and records the layout.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "Cluster",
    namespaced,
    status = "ClusterStatus",
    shortname = "cl",
    category = "theseus",
    doc = "A cluster of a template and size; its status holds the solved layout of nodes and services.",
    printcolumn(name = "Template", type_ = "string", json_path = ".spec.template"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".spec.size"),
    printcolumn(
        name = "Layout",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="LayoutSolved")].reason"#
    ),
    printcolumn(
        name = "Available",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Available")].status"#
    ),
    printcolumn(name = "Plan", type_ = "string", json_path = ".status.plan"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// The ClusterTemplate the cluster is made from.
    #[schemars(length(min = 1, max = 253))]
    pub template: String,

    /// How many nodes the cluster has.
    #[schemars(range(min = 1, max = 10000))]
    pub size: i32,

    /// The services the cluster runs. Empty: the template's default
    /// services. Add a service here to amend a running cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    pub services: Vec<String>,

    /// Configuration values, over the template's default config.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,

    /// The node class preferred when several fit equally well (over the
    /// template's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_class: Option<String>,

    /// While true, the layout is neither solved again nor acted on, and
    /// the running plan starts no new task.
    #[serde(default)]
    pub paused: bool,

    /// Whether a plan runs as soon as it is made (`Automatic`, the default)
    /// or waits in AwaitingApproval for `theseus cluster approve NAME`.
    #[serde(default)]
    pub plan_approval: PlanApproval,

    /// How plans run: retries per task and what a failure does.
    #[serde(default)]
    pub strategy: Strategy,
}

/// The part of a Cluster's spec the layout is solved for.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRequest {
    /// How many nodes.
    pub size: i32,
    /// The services asked for (empty: the template's defaults).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// The node class asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_class: Option<String>,
}

impl ClusterRequest {
    /// What `spec` asks for.
    pub fn of(spec: &ClusterSpec) -> Self {
        Self {
            size: spec.size,
            services: spec.services.clone(),
            node_class: spec.node_class.clone(),
        }
    }
}

/// Whether a plan waits for approval.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PlanApproval {
    /// Plans run when made.
    #[default]
    Automatic,
    /// Plans wait until approved (`theseus cluster approve NAME`, or the
    /// annotation `theseus.dev/approved: "true"` on the ClusterPlan).
    Manual,
}

/// What a failed task does to its plan.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum OnFailure {
    /// Run the plan's inverse tasks, back to the old layout.
    #[default]
    Rollback,
    /// Stop where the plan stands, for a person to look.
    Halt,
}

/// How a cluster's plans run.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// How many times a failed task is tried again (with backoff) before
    /// the plan fails. Default 3.
    #[serde(default = "default_task_retries")]
    #[schemars(range(min = 0, max = 20))]
    pub task_retries: i32,
    /// What a task that failed every attempt does. Default Rollback.
    #[serde(default)]
    pub on_failure: OnFailure,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            task_retries: default_task_retries(),
            on_failure: OnFailure::default(),
        }
    }
}

fn default_task_retries() -> i32 {
    3
}

/// One node of a layout.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct LayoutNode {
    /// The node's name within the cluster; stable across re-solves.
    pub name: String,
    /// The NodeClass it is launched as.
    pub node_class: String,
    /// The services it runs, in the template's order.
    #[serde(default)]
    pub services: Vec<String>,
}

/// The layout nodes running each service of `layout`, in layout order.
pub fn nodes_by_service(layout: &[LayoutNode]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in layout {
        for service in &node.services {
            out.entry(service.clone())
                .or_default()
                .push(node.name.clone());
        }
    }
    out
}

/// The solved layout and how the cluster stands.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The template revision the layout was solved against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_revision: Option<String>,

    /// The nodes of the cluster with their class and services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub layout: Vec<LayoutNode>,

    /// A hash of `layout`, to notice a change at a glance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout_hash: Option<String>,

    /// The layout the nodes run: where the last plan that finished left
    /// the cluster (its `to`, or its `from` after a rollback).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub applied_layout: Vec<LayoutNode>,

    /// A hash of `appliedLayout` and of the configuration it runs with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_hash: Option<String>,

    /// The configuration the nodes run with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub applied_config: BTreeMap<String, String>,

    /// What the spec asked for (size, services, node class) when the
    /// applied layout was solved: what a rollback of a stopped plan puts
    /// back (`theseus cluster rollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_request: Option<ClusterRequest>,

    /// The ClusterPlan running now, or the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,

    /// LayoutSolved (False with reason Unsatisfiable and the explanation),
    /// Valid, Available (the layout runs), Progressing (a plan runs),
    /// Degraded (the last plan failed) and Halted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
