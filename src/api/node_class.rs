//! NodeClass: a kind of machine a cluster template may place services on.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Provider, Resources};

/// A kind of machine: where it is launched (the same provider block as a
/// NodePool), what it holds, the labels its nodes carry and what it costs
/// relative to the other classes.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "NodeClass",
    status = "NodeClassStatus",
    shortname = "nc",
    category = "theseus",
    doc = "A kind of machine for cluster layouts: provider, capacity, node labels and relative cost.",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider.type"),
    printcolumn(name = "CPU", type_ = "string", json_path = ".spec.capacity.cpu"),
    printcolumn(name = "Memory", type_ = "string", json_path = ".spec.capacity.memory"),
    printcolumn(name = "Cost", type_ = "integer", json_path = ".spec.cost"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodeClassSpec {
    /// Where nodes of this class are launched.
    pub provider: Provider,

    /// What one node holds. A resource left out is not limited; the layout
    /// solver keeps the sum of a node's services' `resources` within it.
    #[serde(default)]
    pub capacity: Resources,

    /// Labels every node of this class carries on its NodeInstall.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, String>,

    /// The relative cost of one node of this class; among layouts that
    /// change an existing cluster equally, the solver picks the cheapest.
    /// Default 1.
    #[serde(default = "default_cost")]
    #[schemars(range(min = 0, max = 1000000))]
    pub cost: i32,
}

fn default_cost() -> i32 {
    1
}

/// What the operator observed about the node class.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeClassStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Valid: the class's provider and capacity are usable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
