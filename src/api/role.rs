//! Role: a tenant of the shared filesystem, whose application instances
//! live in its directories and its namespace.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A role: its directory under each base directory of the shared
/// filesystem (`/BASE/ROLE`, made with the role's owner, group and mode),
/// the namespace its AppInstances live in, and who administers it
/// (RoleBindings the controller keeps). The role `shared` holds the
/// instances of applications allowed once per cluster.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "Role",
    status = "RoleStatus",
    shortname = "trole",
    category = "theseus",
    doc = "A role on the shared filesystem: base directories, the namespace of its application instances, and its administrators.",
    printcolumn(name = "Namespace", type_ = "string", json_path = ".status.namespace"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.baseDirectories.all(b, self.baseDirectories.exists_one(c, c.name == b.name))",
    "message": "each base directory name may appear once",
    "fieldPath": ".baseDirectories",
    "reason": "FieldValueDuplicate"
}]))]
pub struct RoleSpec {
    /// The base directories (apps, data, etl, zeta, …) the role has a
    /// directory in: `PATH/ROLE`.
    #[schemars(length(min = 1, max = 16))]
    pub base_directories: Vec<BaseDirectory>,

    /// The namespace its AppInstances live in (created when missing);
    /// default: the role's name. One role per namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub namespace: Option<String>,

    /// The ClusterCapabilities a node must offer to make the role's
    /// directories (the shared filesystem's, normally).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub capabilities: Vec<String>,

    /// Who administers the role: bound to the ClusterRole
    /// `theseus-app-admin` in the role's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub admins: Vec<RoleSubject>,
}

/// A base directory of the shared filesystem.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BaseDirectory {
    /// Its name, which AppPackages' `directories` use (`apps`, `data`).
    #[schemars(regex(pattern = r"^[a-z0-9]+$"), length(min = 1, max = 63))]
    pub name: String,
    /// Its absolute path (`/apps`; `${VAR}`: the agent's `--env VAR`).
    #[schemars(regex(pattern = r"^(/|\$\{)"), length(min = 1, max = 1024))]
    pub path: String,
    /// The mode of the role's directory under it, octal. Default `0750`.
    #[serde(default = "default_mode")]
    #[schemars(regex(pattern = r"^0?[0-7]{3,4}$"))]
    pub mode: String,
    /// The owner of the role's directory (user name or uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The group of the role's directory (group name or gid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The mode of directories when none is given.
pub fn default_mode() -> String {
    "0750".into()
}

/// A user or group.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleSubject {
    /// `User` or `Group`.
    #[schemars(regex(pattern = r"^(User|Group)$"))]
    pub kind: String,
    /// The name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What the role controller made.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The namespace of its instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The role's directories, one per base directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directories: Vec<String>,
    /// The key of the storage task that made them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_key: Option<String>,
    /// Ready: the namespace, the bindings and the directories exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
