//! ConfigModule: parameters, calculations and templates that render into a
//! configuration package.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A module of configuration: the parameters it takes (with types,
/// defaults, and which are secret or immutable), values it calculates from
/// them and from the cluster, the files it renders, and the rules the
/// values must keep. ConfigBundles combine modules and values into
/// packages named by the hash of their bytes.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "ConfigModule",
    status = "ConfigModuleStatus",
    shortname = "cfgmod",
    category = "theseus",
    doc = "A configuration module: typed parameters, calculations, file templates and validations.",
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ConfigModuleSpec {
    /// The module's version; a bundle that names a version renders only
    /// with this one.
    #[schemars(length(min = 1, max = 64))]
    pub version: String,

    /// Other modules a bundle must include with this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,

    /// The parameters, by name (letters, digits and `_`, as templates
    /// refer to them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, Parameter>,

    /// Values computed from the parameters, the cluster's facts and earlier
    /// calculations, by name: each is an expression of the template
    /// language (e.g. `"0.0.0.0:" ~ port`). A calculation may use another
    /// in any order; a cycle is an error.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub calculations: BTreeMap<String, String>,

    /// The files the module renders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<FileTemplate>,

    /// Rules the values must keep.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validations: Vec<Validation>,
}

/// How the module stands.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigModuleStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Valid: the templates and expressions compile (written by the
    /// operator once it renders bundles).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The type of a parameter's value.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ParameterType {
    /// Text.
    #[default]
    String,
    /// A whole number.
    Integer,
    /// true or false.
    Boolean,
}

/// One parameter: a subset of an OpenAPI v3 schema, plus whether it is
/// secret or immutable.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Parameter {
    /// The value's type.
    #[serde(default, rename = "type")]
    pub type_: ParameterType,
    /// What the parameter means, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The value when a bundle gives none; without it the parameter must
    /// be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub default: Option<serde_json::Value>,
    /// The only values allowed.
    #[serde(default, rename = "enum", skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "any_values")]
    pub enum_: Vec<serde_json::Value>,
    /// The smallest integer allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<i64>,
    /// The largest integer allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<i64>,
    /// A regular expression a string must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Secret: given only through a bundle's `valuesFrom` (a Secret), never
    /// written into a package or a status; templates see a reference the
    /// node's agent resolves.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    /// Immutable: once a bundle rendered with a value, changing it is
    /// refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub immutable: bool,
}

/// One file the module renders.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileTemplate {
    /// The file's path inside the package, relative (e.g. `etc/web.conf`).
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
    /// The file's mode: `"0644"` (the default) or `"0755"` (executable),
    /// the two modes a package holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^0?(644|755)$"))]
    pub mode: Option<String>,
    /// The template (minijinja: `{{ port }}`, `{% if … %}`, filters).
    pub content: String,
    /// An expression; the file is rendered only when it is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// The services the file is for. Empty: every node. With services, the
    /// bundle's output is split into one package per service, so a change
    /// to one service's file changes only its nodes' package.
    #[serde(default, rename = "for", skip_serializing_if = "Vec::is_empty")]
    pub for_: Vec<String>,
}

/// A rule the values must keep.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    /// An expression that must be true (e.g. `port != 22`).
    pub rule: String,
    /// What is wrong when it is false, and what to do.
    pub message: String,
    /// The field the message is about, e.g. `spec.values.port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

fn any_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

fn any_values(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": { "x-kubernetes-preserve-unknown-fields": true }
    })
}
