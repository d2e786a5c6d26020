//! ConfigBundle: modules and values that render into configuration
//! packages, named by the hash of their bytes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Modules and values that render into configuration packages. Namespaced,
/// like the Secrets its `valuesFrom` reads and the Cluster whose facts it
/// may use. Each package's id is `PACKAGE--cfg.HASH`, the hash of the
/// package's content: the same bytes keep the same id (no rollout).
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "ConfigBundle",
    namespaced,
    status = "ConfigBundleStatus",
    shortname = "cfgb",
    category = "theseus",
    doc = "Configuration modules and values rendered into content-addressed packages.",
    printcolumn(name = "Package", type_ = "string", json_path = ".spec.package"),
    printcolumn(
        name = "Rendered",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Rendered")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ConfigBundleSpec {
    /// The package name the bundle produces (`web-config`); split output
    /// adds the service (`web-config-api`).
    #[schemars(
        regex(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*$"),
        length(min = 1, max = 63)
    )]
    pub package: String,

    /// The modules, in order.
    #[schemars(length(min = 1, max = 64))]
    pub modules: Vec<ModuleRef>,

    /// Parameter values, by parameter name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "any_map")]
    pub values: BTreeMap<String, serde_json::Value>,

    /// Secret parameters, each from a key of a Secret in the bundle's
    /// namespace. Their values are never written into a package or a
    /// status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_from: Vec<ValueFrom>,

    /// A Cluster in the same namespace whose layout the templates may read
    /// as `cluster.name`, `cluster.size` and `cluster.hosts.SERVICE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ref: Option<ClusterRef>,
}

/// A module and, optionally, the version it must have.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModuleRef {
    /// The ConfigModule.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The version it must have; any when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A secret parameter's source.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ValueFrom {
    /// The parameter.
    pub parameter: String,
    /// The Secret key holding its value.
    pub secret_key_ref: SecretKeyRef,
}

/// A key of a Secret in the bundle's namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret.
    pub name: String,
    /// The key.
    pub key: String,
}

/// A Cluster in the bundle's namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRef {
    /// The Cluster's name.
    pub name: String,
}

/// What the bundle rendered.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigBundleStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One entry per package (one, or one per service when split).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rendered: Vec<RenderedPackage>,

    /// Every parameter and calculation with its value; secrets masked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expanded_config: BTreeMap<String, String>,
    /// Every parameter's value as last rendered, defaults included and
    /// secrets left out: an immutable parameter may not differ from its
    /// value here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "any_map")]
    pub rendered_values: BTreeMap<String, serde_json::Value>,
    /// Where the packages are served: the operator's signed repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_url: Option<String>,

    /// Rendered (False lists every error and unset parameter, with field
    /// paths) and Published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One rendered package.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RenderedPackage {
    /// The service the package is for; empty for every node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// The package id, `NAME--cfg.HASH`.
    pub package_id: String,
    /// The sha256 of the package's content (every file's path, mode and
    /// bytes).
    pub content_digest: String,
    /// The sha256 of the inputs (modules, values, facts), to tell "nothing
    /// changed" from "changed, same output".
    pub input_digest: String,
    /// The secret parameters its files refer to (`${secret:NAME}`): a node
    /// given the package is also given, by reference, the Secret keys of
    /// these parameters (`spec.valuesFrom`), and resolves them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

fn any_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": { "x-kubernetes-preserve-unknown-fields": true }
    })
}
