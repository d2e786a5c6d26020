//! ClusterTemplate: a blueprint users instantiate as Clusters of a size.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A blueprint for clusters: which services and node classes may be used,
/// what a new cluster gets by default, and the constraints every layout
/// keeps. `theseus template solve` shows the layout for a size.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "ClusterTemplate",
    status = "ClusterTemplateStatus",
    shortname = "ctpl",
    category = "theseus",
    doc = "A cluster blueprint: compatible services and node classes, defaults, and the layout constraints.",
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Valid")].status"#
    ),
    printcolumn(name = "Sizes", type_ = "string", json_path = ".status.feasibleSizes"),
    printcolumn(name = "Parent", type_ = "string", json_path = ".spec.parent"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterTemplateSpec {
    /// A partial template only contributes to others through `includes`;
    /// no Cluster may name it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,

    /// A template whose resolved fields this one starts from; this
    /// template's own fields override the parent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub parent: Option<String>,

    /// Partial templates merged in order after the parent and before this
    /// template's own fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    pub includes: Vec<String>,

    /// Fields of this template that a template including it may not
    /// change, as dotted paths under `spec`, e.g.
    /// `constraints.services.zookeeper.count`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")))]
    pub immutable: Vec<String>,

    /// The services and node classes clusters of this template may use.
    #[serde(default)]
    pub compatibility: Compatibility,

    /// What a new cluster gets when its own spec leaves a field out.
    #[serde(default)]
    pub defaults: TemplateDefaults,

    /// The rules every layout of this template keeps.
    #[serde(default)]
    pub constraints: TemplateConstraints,
}

/// The services and node classes a template may use; its order is the
/// template's preference order.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Compatibility {
    /// ServiceDefinition names a cluster of this template may run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub services: Vec<String>,

    /// NodeClass names a cluster of this template may use, most preferred
    /// first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 253)))]
    pub node_classes: Vec<String>,
}

/// What a cluster gets when its spec leaves a field out.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateDefaults {
    /// The services a new cluster runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub services: Vec<String>,

    /// The node class preferred when several fit equally well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_class: Option<String>,

    /// Configuration values handed to the services' actions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

/// The rules a layout keeps.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateConstraints {
    /// The cluster sizes (node counts) the template allows.
    #[serde(default)]
    pub size: SizeRange,

    /// Which services must, or must not, share a node.
    #[serde(default)]
    pub layout: LayoutRules,

    /// Per-service placement rules, by service name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, ServiceConstraint>,
}

/// An inclusive range of node counts.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
    "message": "size.min must not exceed size.max",
    "reason": "FieldValueInvalid"
}]))]
pub struct SizeRange {
    /// The smallest cluster. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub min: Option<i32>,
    /// The largest cluster. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max: Option<i32>,
}

/// Coexistence rules between services on one node.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LayoutRules {
    /// Groups of services that run together: a node runs all of a group's
    /// services (those in the cluster) or none of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 2, max = 64)))]
    pub must_coexist: Vec<Vec<String>>,

    /// Groups of services that keep apart: a node runs at most one service
    /// of each group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 2, max = 64)))]
    pub cant_coexist: Vec<Vec<String>>,
}

/// Where one service runs and on how many nodes.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceConstraint {
    /// Node classes the service may run on, most preferred first. Default:
    /// any of the template's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_classes: Vec<String>,

    /// How many nodes run the service. Default: at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<CountRange>,

    /// How many nodes run the service relative to the cluster size (or to
    /// the number of nodes running the service named in `of`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<Ratio>,
}

/// An inclusive range of node counts for one service.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
    "message": "count.min must not exceed count.max",
    "reason": "FieldValueInvalid"
}]))]
pub struct CountRange {
    /// At least this many nodes run the service. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub min: Option<i32>,
    /// At most this many nodes run the service. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub max: Option<i32>,
}

/// Between `min` and `max` nodes running the service for every `perNodes`
/// nodes of the base: `min × base ≤ perNodes × count ≤ max × base`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
        "message": "ratio.min must not exceed ratio.max",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "has(self.min) || has(self.max)",
        "message": "a ratio needs min, max or both",
        "reason": "FieldValueRequired"
    }
]))]
pub struct Ratio {
    /// The size of the unit the bounds count per.
    #[schemars(range(min = 1, max = 10000))]
    pub per_nodes: i32,
    /// At least this many per `perNodes` nodes of the base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub min: Option<i32>,
    /// At most this many per `perNodes` nodes of the base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub max: Option<i32>,
    /// The base: the nodes running this service. Default: every node of
    /// the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<String>,
}

/// What the operator found about the template.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterTemplateStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// A hash of the resolved template (parent and includes merged in):
    /// clusters re-solve when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,

    /// The cluster sizes for which a layout of the default services
    /// exists, as ranges (`1`, `3-40`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feasible_sizes: Vec<String>,

    /// Valid: the template resolves and names only known services and node
    /// classes (False with reason UnknownService, UnknownNodeClass,
    /// MissingDependency, ConflictingServices, Cycle or ImmutableField).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
