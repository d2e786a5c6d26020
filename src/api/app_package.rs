//! AppPackage: an installable application, staged once per version and
//! installed as any number of instances.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ModuleRef;

/// An application: what it needs of the cluster, where its instances'
/// directories go, and per version what is staged once (shared by every
/// instance of the version) and what a running instance is.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "AppPackage",
    status = "AppPackageStatus",
    shortname = "app",
    category = "theseus",
    doc = "An installable application: requirements, instance policy, directories, and per version its stage and run.",
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.instancePolicy"),
    printcolumn(name = "Instances", type_ = "integer", json_path = ".status.instances"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.versions.all(v, self.versions.exists_one(w, w.version == v.version))",
        "message": "each version may appear once",
        "fieldPath": ".versions",
        "reason": "FieldValueDuplicate"
    },
    {
        "rule": "!has(self.parameters) || self.parameters.all(p, self.parameters.exists_one(q, q.name == p.name))",
        "message": "each parameter may appear once",
        "fieldPath": ".parameters",
        "reason": "FieldValueDuplicate"
    }
]))]
pub struct AppPackageSpec {
    /// What the application is, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,

    /// How many instances may exist: `Multi` (any), `OnePerRole`, or
    /// `OnePerCluster` (only in the role `shared`). Default `Multi`.
    #[serde(default)]
    pub instance_policy: InstancePolicy,

    /// What the cluster must offer, and which applications must run.
    #[serde(default)]
    pub requires: Requirements,

    /// The directories each instance gets, `BASE/ROLE/APP/ID` under the
    /// role's base directory of that name; the first is the instance's
    /// home.
    #[schemars(length(min = 1, max = 8))]
    pub directories: Vec<InstanceDirectory>,

    /// Where stages go: `STAGE/APP/stage/VERSION` (`${VAR}`: the agent's
    /// `--env VAR`). Default `/zeta/shared`.
    #[serde(default = "default_stage_root")]
    #[schemars(regex(pattern = r"^(/|\$\{)"), length(min = 1, max = 1024))]
    pub stage_root: String,

    /// The parameters an instance's `values` may set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub parameters: Vec<AppParameter>,

    /// The versions that can be installed.
    #[schemars(length(min = 1, max = 64))]
    pub versions: Vec<AppVersion>,
}

fn default_stage_root() -> String {
    "/zeta/shared".into()
}

/// How many instances of an application may exist.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum InstancePolicy {
    /// Any number, in any role.
    #[default]
    Multi,
    /// At most one per role.
    OnePerRole,
    /// At most one in the cluster, in the role `shared`.
    OnePerCluster,
}

/// What an application needs.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Requirements {
    /// ClusterCapabilities that must be Available.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub capabilities: Vec<CapabilityRequirement>,
    /// Applications that must have a Running instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub apps: Vec<AppRequirement>,
}

/// A required capability.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityRequirement {
    /// The ClusterCapability's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A required application.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppRequirement {
    /// The AppPackage's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The versions accepted; any when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    /// Where the running instance must be: `SameRole` or `Shared` (the
    /// role `shared`). Default `SameRole`.
    #[serde(default)]
    pub scope: AppScope,
}

/// Where a required application's instance must run.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum AppScope {
    /// In the instance's own role.
    #[default]
    SameRole,
    /// In the role `shared`.
    Shared,
}

/// A directory of each instance.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceDirectory {
    /// The role's base directory it goes under (`apps`, `data`).
    #[schemars(regex(pattern = r"^[a-z0-9]+$"), length(min = 1, max = 63))]
    pub base_directory: String,
    /// Its mode, octal. Default `0750`.
    #[serde(default = "super::default_mode")]
    #[schemars(regex(pattern = r"^0?[0-7]{3,4}$"))]
    pub mode: String,
    /// Its owner (user name or uid); unset: the role directory's owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Its group (group name or gid); unset: the role directory's group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A parameter of the application.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppParameter {
    /// Its name: letters, digits and underscores.
    #[schemars(
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"),
        length(min = 1, max = 63)
    )]
    pub name: String,
    /// What it is, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its value when an instance sets none; without one, every instance
    /// must set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// One installable version.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppVersion {
    /// The version.
    #[schemars(regex(pattern = r"^[A-Za-z0-9._+-]+$"), length(min = 1, max = 64))]
    pub version: String,
    /// What is prepared once for every instance of the version.
    #[serde(default)]
    pub stage: Stage,
    /// What a Running instance is.
    #[serde(default)]
    pub run: Run,
}

/// A version's stage, `STAGE/APP/stage/VERSION`, made once by an agent on
/// a node that offers the required capabilities.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// Files written into the stage (install scripts, image references,
    /// a version manifest).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// The PackageRepository the stage's packages come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub repository: Option<String>,
    /// Packages (`NAME--VERSION`) cached in the stage, each unpacked whole
    /// into `packages/ID/` before the staging step runs (which may be a
    /// hook inside one: `["sh", "packages/ID/stage.sh"]`). Fetched and
    /// verified by the agent like its own packages, under its trust.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 200)))]
    pub packages: Vec<String>,
    /// A staging step run once in the stage directory after its files are
    /// written (`sh install_stage.sh`), with `THESEUS_STAGE`, `THESEUS_APP`
    /// and `THESEUS_VERSION` set; the stage counts only when it exits 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub argv: Vec<String>,
    /// Seconds before the staging step is killed. Default 600.
    #[serde(default = "default_stage_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i32,
}

fn default_stage_timeout() -> i32 {
    600
}

impl Default for Stage {
    fn default() -> Self {
        Self {
            files: BTreeMap::new(),
            repository: None,
            packages: Vec::new(),
            argv: Vec::new(),
            timeout_seconds: default_stage_timeout(),
        }
    }
}

/// What a running instance is. Every string may use `${app}`,
/// `${version}`, `${role}`, `${id}`, `${instance}` (`ROLE-APP-ID`),
/// `${home}`, `${namespace}`, `${values.NAME}` and, of each required
/// application's instance, `${requires.APP.id|role|namespace|home|addresses}`
/// and `${requires.APP.port.NAME}`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    /// Packages to keep active on the nodes the instance runs on (a
    /// PackageSet in the instance's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_set: Option<RunPackageSet>,
    /// A group of containers: the spec of a ServiceGroup `APP-ID` in the
    /// instance's namespace (`service`, `labels`, `config`, `replicas`,
    /// `template`, …), scaled to zero while the instance is stopped. Its
    /// strings may use the variables; the result is checked against the
    /// ServiceGroup schema when an instance applies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "service_group_template")]
    pub service_group: Option<serde_json::Map<String, serde_json::Value>>,
    /// ConfigModules rendered for each instance (a ConfigBundle with the
    /// instance's values and `instance_*` facts) whose packages join the
    /// PackageSet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub config_modules: Vec<ModuleRef>,
    /// The name of the package of each instance's configuration (the
    /// instance's ConfigBundle: the `instance_*` facts in `instance.env`,
    /// and the files of `configModules`). Default `APP-instance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*$"),
        length(min = 1, max = 63)
    )]
    pub config_package: Option<String>,
    /// The ports the instance serves, by name (`http: "${values.port}"`),
    /// published with its nodes' addresses in the discovery tree.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, String>,
}

/// The PackageSet of a running instance.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunPackageSet {
    /// The PackageRepository the packages come from.
    pub repository: String,
    /// The package ids.
    #[schemars(length(min = 1, max = 128))]
    pub packages: Vec<String>,
    /// The NodeInstalls it runs on, by label; an instance's own
    /// `nodeSelector` is added to it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

/// What the application controller observed.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppPackageStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many AppInstances use the application.
    #[serde(default)]
    pub instances: i32,
    /// The versions AppInstances use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64)))]
    pub in_use: Vec<String>,
    /// The versions whose stage is made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub staged: Vec<StagedVersion>,
    /// Staged (every version in use has its stage) and Valid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A version's stage, made.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StagedVersion {
    /// The version.
    pub version: String,
    /// The stage directory.
    pub path: String,
    /// The key of the storage task that made it (a digest of the stage).
    pub key: String,
    /// The node whose agent made it.
    pub node: String,
}

fn service_group_template(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "required": ["service", "template"],
        "x-kubernetes-preserve-unknown-fields": true
    })
}
