//! AppInstance: one named instance of an application in a role.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An instance of an AppPackage version, installed into a role: its
/// directories `BASE/ROLE/APP/ID` on the shared filesystem, its env file
/// and configuration, and — while `state` is `Running` — the objects that
/// run it. Its name is `APP-ID`, so an id is taken at most once per role
/// (namespace).
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "AppInstance",
    namespaced,
    status = "AppInstanceStatus",
    shortname = "appi",
    category = "theseus",
    doc = "An application instance in a role: installed on the shared filesystem, and running while its state says so.",
    printcolumn(name = "App", type_ = "string", json_path = ".spec.app"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(name = "State", type_ = "string", json_path = ".spec.state"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Home", type_ = "string", json_path = ".status.home"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.app == oldSelf.app && self.id == oldSelf.id && self.role == oldSelf.role",
        "message": "app, id and role are immutable; install another instance",
        "reason": "FieldValueForbidden"
    }
]))]
pub struct AppInstanceSpec {
    /// The AppPackage.
    #[schemars(regex(pattern = r"^[a-z0-9]+$"), length(min = 1, max = 30))]
    pub app: String,
    /// One of the application's versions.
    #[schemars(length(min = 1, max = 64))]
    pub version: String,
    /// The instance id: lowercase letters and digits.
    #[schemars(regex(pattern = r"^[a-z0-9]+$"), length(min = 1, max = 30))]
    pub id: String,
    /// The Role (whose namespace the instance is in).
    #[schemars(length(min = 1, max = 63))]
    pub role: String,
    /// Parameter values, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
    /// `Installed` (directories and configuration, nothing running) or
    /// `Running`. Default `Running`.
    #[serde(default)]
    pub state: InstanceState,
    /// What deleting the instance does to its directories: `Retain` (keep
    /// them) or `Delete`. The stage is always kept. Default `Retain`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Labels the nodes that run the instance must carry, besides the
    /// application's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

/// The declared state of an instance.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum InstanceState {
    /// Directories, env file and configuration exist; nothing runs.
    Installed,
    /// Installed, and its run objects exist and are published.
    #[default]
    Running,
}

/// What deletion does to an instance's directories.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Keep them.
    #[default]
    Retain,
    /// Remove them.
    Delete,
}

/// Where an instance is.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum InstancePhase {
    /// Nothing on the shared filesystem yet.
    #[default]
    NotInstalled,
    /// The version's stage exists.
    Staged,
    /// The directories, env file and configuration exist.
    Installed,
    /// The run objects exist and the instance is available.
    Running,
    /// Being deleted.
    Removing,
}

/// What the instance controller observed and made.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppInstanceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// NotInstalled, Staged, Installed, Running or Removing.
    #[serde(default)]
    pub phase: InstancePhase,
    /// The home directory, `BASE/ROLE/APP/ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// Every directory of the instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directories: Vec<String>,
    /// The stage the instance uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The key of the storage task that made the directories and env file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_key: Option<String>,
    /// The node whose agent made the directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_node: Option<String>,
    /// The objects it created (`PackageSet/NAME`, `ServiceGroup/NAME`,
    /// `ConfigBundle/NAME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<String>,
    /// Where a running instance is reached: its nodes' addresses and its
    /// ports, as published in the discovery tree under
    /// `/services/APP/ID.ROLE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<InstanceEndpoint>,
    /// CapabilitiesMet, DependenciesMet, StorageReady, Available,
    /// Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One node a running instance is reached at.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceEndpoint {
    /// The node (NodeInstall name).
    pub node: String,
    /// Its address.
    pub address: String,
    /// The instance's ports there, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
}
