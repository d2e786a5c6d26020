//! Tenant: who may create clusters and application instances, in which
//! namespaces, from which part of the catalog, and how much of it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::RoleSubject;

/// The label naming the Tenant a namespace belongs to (set by the tenant
/// controller on the namespaces it makes).
pub const TENANT_LABEL: &str = "theseus.dev/tenant";

/// A tenant: its people (owners and members), its namespaces, the part of
/// the catalog its users may use, its quotas and how many of its plan
/// tasks run at once. Usage is reserved in `status` by compare-and-swap
/// before anything is launched, so concurrent creates cannot overrun a
/// quota; deleting a tenant deletes its clusters and application instances
/// through their own delete plans, then its namespaces.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "Tenant",
    status = "TenantStatus",
    shortname = "tn",
    category = "theseus",
    doc = "A tenant: owners and members, namespaces, the catalog its users may use, and quotas reserved before anything is launched.",
    printcolumn(
        name = "Clusters",
        type_ = "string",
        json_path = ".status.summary.clusters"
    ),
    printcolumn(name = "Nodes", type_ = "string", json_path = ".status.summary.nodes"),
    printcolumn(
        name = "Apps",
        type_ = "string",
        json_path = ".status.summary.appInstances"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Quota",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="QuotaExceeded")].reason"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Who administers the tenant: bound to the ClusterRole
    /// `theseus-tenant-admin` in each of its namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub owners: Vec<RoleSubject>,

    /// Who uses the tenant: bound to the ClusterRole `theseus-tenant-user`
    /// in each of its namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub members: Vec<RoleSubject>,

    /// The tenant's namespaces. Default: one namespace named as the tenant.
    #[serde(default)]
    pub namespaces: TenantNamespaces,

    /// Which ClusterTemplates, NodeClasses and AppPackages the tenant's
    /// users may use. A selector left out allows every object of its kind.
    #[serde(default)]
    pub catalog: TenantCatalog,

    /// How much the tenant may use. A quota left out is not limited.
    #[serde(default)]
    pub quotas: Quotas,

    /// The most plan tasks of this tenant's clusters running at once;
    /// tasks beyond it wait for one to end. Left out: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub workers: Option<i32>,

    /// How long the tenant's clusters live: a cluster past its lease is
    /// deleted, after a warning event, unless its lease is extended
    /// (annotation `theseus.dev/lease-extended-until`, at most `maxDays`
    /// after its creation). Left out: clusters live until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// The tenant's namespaces: listed by name, or a prefix under which its
/// users' namespaces are made (`PREFIX-1`, `PREFIX-2`, … up to `max`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantNamespaces {
    /// Namespaces by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))
    )]
    pub names: Vec<String>,

    /// A prefix: namespaces `PREFIX-1` … `PREFIX-max` are the tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 56))]
    pub prefix: Option<String>,

    /// How many namespaces the prefix makes. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max: Option<i32>,
}

/// Label selectors over the catalog.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantCatalog {
    /// The ClusterTemplates the tenant's clusters may be made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<LabelSelector>,
    /// The NodeClasses the tenant's clusters may run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_classes: Option<LabelSelector>,
    /// The AppPackages the tenant's application instances may install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_packages: Option<LabelSelector>,
}

/// A tenant's quotas; each left out is not limited.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Quotas {
    /// Clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub clusters: Option<i64>,
    /// Nodes, over every cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub nodes: Option<i64>,
    /// Nodes per NodeClass.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes_per_class: BTreeMap<String, i64>,
    /// CPU over every node (each node counts its NodeClass's capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory over every node (each node counts its NodeClass's capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Application instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub app_instances: Option<i64>,
}

/// How long clusters live.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// Days a cluster lives from its creation.
    #[schemars(range(min = 1, max = 3650))]
    pub initial_days: i32,
    /// The most days an extension may reach from its creation. Default:
    /// `initialDays`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub max_days: Option<i32>,
}

/// Amounts counted against the quotas.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Clusters.
    #[serde(default)]
    pub clusters: i64,
    /// Nodes.
    #[serde(default)]
    pub nodes: i64,
    /// Nodes per NodeClass.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes_per_class: BTreeMap<String, i64>,
    /// CPU, in millicores.
    #[serde(default)]
    pub cpu_millis: i64,
    /// Memory, in bytes.
    #[serde(default)]
    pub memory_bytes: i64,
    /// Application instances.
    #[serde(default)]
    pub app_instances: i64,
}

/// One object's reserved usage.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// `Cluster NAMESPACE/NAME` or `AppInstance NAMESPACE/NAME`.
    pub object: String,
    /// The object's uid: a reservation of an object deleted and made again
    /// under the same name is not its own.
    pub uid: String,
    /// What it holds.
    pub usage: Usage,
    /// When it was last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
}

/// Usage against quota, for `kubectl get tenants` (`3/5`, or `3` when
/// not limited).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UsageSummary {
    /// Clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<String>,
    /// Nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<String>,
    /// Application instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_instances: Option<String>,
}

/// The tenant as the operator found and keeps it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The tenant's namespaces, made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// The ClusterTemplates its catalog allows, by name (what the
    /// admission policy checks a Cluster against).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<String>,
    /// The AppPackages its catalog allows, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_packages: Vec<String>,
    /// Every object's reserved usage: written by compare-and-swap on
    /// this status's resourceVersion before the object's nodes are
    /// launched or its instance staged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["object"]))]
    pub reservations: Vec<Reservation>,
    /// The sum of `reservations`.
    #[serde(default)]
    pub usage: Usage,
    /// Usage against quota, as the printer columns show it.
    #[serde(default)]
    pub summary: UsageSummary,
    /// Ready (namespaces and bindings made), QuotaExceeded (the last
    /// refused reservation: which quota, by how much) and Deleting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
