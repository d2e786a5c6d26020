//! PackageSet: which packages must be active on which nodes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The packages that must be active on every NodeInstall the selector
/// matches, and how to roll a change across those nodes.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "PackageSet",
    status = "PackageSetStatus",
    shortname = "pkgset",
    category = "theseus",
    doc = "A set of packages to keep active on the nodes a selector matches, rolled within a disruption budget.",
    printcolumn(
        name = "Available",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Available")].status"#
    ),
    printcolumn(
        name = "Updated",
        type_ = "integer",
        json_path = ".status.updatedNodes"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredNodes"
    ),
    printcolumn(
        name = "Halted",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Halted")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "size(self.packages) > 0 || (has(self.configBundles) && size(self.configBundles) > 0)",
        "message": "spec.packages must list at least one package id (or spec.configBundles a bundle)",
        "fieldPath": ".packages",
        "reason": "FieldValueRequired"
    },
    {
        "rule": "self.packages.all(p, self.packages.exists_one(q, q.split('--')[0] == p.split('--')[0]))",
        "message": "spec.packages may hold only one package of each name",
        "fieldPath": ".packages",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct PackageSetSpec {
    /// Name of the PackageRepository the packages are fetched from.
    #[schemars(length(min = 1, max = 253))]
    pub repository: String,

    /// The package ids (`NAME--VERSION`) that make up the set: exactly these
    /// become the active set on each node, one package per name.
    #[schemars(
        length(max = 128),
        inner(
            regex(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*--[A-Za-z0-9._+]{1,64}$"),
            length(max = 129)
        )
    )]
    pub packages: Vec<String>,

    /// Package names that must be present in `packages` exactly once. The
    /// operator refuses to roll a set that lacks one (condition Degraded,
    /// reason InvalidSpec), which guards against dropping a vital package by
    /// a typo.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(regex(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*$"), length(max = 63))
    )]
    pub required: Vec<String>,

    /// Which NodeInstalls the set applies to, by their labels. An empty
    /// selector matches every NodeInstall. A node matched by two sets belongs
    /// to the older set; the newer one reports a Conflict condition.
    #[serde(default)]
    pub node_selector: LabelSelector,

    /// How a change is rolled across the matched nodes.
    #[serde(default)]
    pub strategy: RolloutStrategy,

    /// While true, no node is given a new target; nodes already switching
    /// finish. Use it to hold a rollout for inspection.
    #[serde(default)]
    pub paused: bool,

    /// ConfigBundles whose rendered packages join the set: each bundle's
    /// package for every node, and with `service`, that service's package
    /// too. A change of a bundle's output is a new set, rolled like any
    /// other; the packages come from the operator's repository of
    /// generated packages (`NodeTarget.sources`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub config_bundles: Vec<ConfigBundleRef>,
}

/// A ConfigBundle a PackageSet takes packages from.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigBundleRef {
    /// The bundle's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// The bundle's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The service whose split package (`PACKAGE-SERVICE`) the set takes
    /// besides the bundle's common one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// How a change is rolled across nodes.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// How many nodes may be unavailable (switching, unhealthy or silent) at
    /// once: an integer such as `2`, or a percentage of the matched nodes such
    /// as `25%` (rounded down, at least one). Must be above zero. Default 1.
    #[serde(default = "default_max_unavailable")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "type(self) == int ? self > 0 : self.matches('^(100|[1-9][0-9]?)%$')",
        "message": "maxUnavailable must be above zero: an integer of at least 1, or a percentage from 1% to 100%",
        "reason": "FieldValueInvalid"
    }]))]
    pub max_unavailable: IntOrString,

    /// How many nodes may fail their health check (and roll back) before the
    /// set is halted with Halted=True, reason FailureThreshold. Default 1.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1))]
    pub failure_threshold: i32,

    /// How long a node's service has to pass its health check after a
    /// switch before the node rolls back, in seconds. Default 60.
    #[serde(default = "default_health_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub health_timeout_seconds: i32,

    /// Seconds to wait after a batch of nodes became healthy before the next
    /// batch starts, so that slow failures show first. Default 0.
    #[serde(default)]
    #[schemars(range(min = 0, max = 86400))]
    pub wait_seconds: i32,
}

impl Default for RolloutStrategy {
    fn default() -> Self {
        Self {
            max_unavailable: default_max_unavailable(),
            failure_threshold: default_failure_threshold(),
            health_timeout_seconds: default_health_timeout(),
            wait_seconds: 0,
        }
    }
}

fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}

fn default_failure_threshold() -> i32 {
    1
}

fn default_health_timeout() -> i32 {
    60
}

/// The progress of the set across its nodes.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PackageSetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// A hash of the sorted package ids: the value a node reports as its
    /// active hash once it runs exactly this set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_hash: Option<String>,

    /// Nodes the selector matches and the set owns.
    #[serde(default)]
    pub desired_nodes: i32,

    /// Nodes whose active set is this set.
    #[serde(default)]
    pub updated_nodes: i32,

    /// Updated nodes that are healthy and heartbeating.
    #[serde(default)]
    pub ready_nodes: i32,

    /// Nodes that failed to activate the set and rolled back.
    #[serde(default)]
    pub failed_nodes: i32,

    /// Nodes given the set as target that have not finished switching.
    #[serde(default)]
    pub in_progress_nodes: i32,

    /// The names of the nodes currently switching, in the order they started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes_in_progress: Vec<String>,

    /// Available, Progressing, Degraded, Halted (and Conflict when another
    /// set already owns some of the matched nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
