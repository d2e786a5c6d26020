//! Cluster: a user's cluster of a template and size, and its solved layout.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

    /// While true, the layout is neither solved again nor acted on.
    #[serde(default)]
    pub paused: bool,
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

    /// LayoutSolved (False with reason Unsatisfiable and the explanation)
    /// and Valid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
