//! The Theseus API: custom resources of group `theseus.dev`, version
//! `v1alpha1`, one file per kind.
//!
//! The Rust types are the source of truth: `theseus crds` and `crds/` are
//! generated from them, so the schema the API server enforces (patterns,
//! minimums, CEL rules) and the `kubectl explain` text (the doc comments)
//! never drift from the code.

// kube's `printcolumn(...)` lists repeat `type_ = …` by design; clippy
// reads each repetition as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

mod app_instance;
mod app_package;
mod cluster;
mod cluster_capability;
mod cluster_plan;
mod cluster_template;
pub mod conditions;
mod config_bundle;
mod config_module;
mod node_class;
mod node_install;
mod node_pool;
mod package_repository;
mod package_set;
mod role;
mod service_definition;
mod service_group;
mod tenant;

pub use app_instance::*;
pub use app_package::*;
pub use cluster::*;
pub use cluster_capability::*;
pub use cluster_plan::*;
pub use cluster_template::*;
pub use config_bundle::*;
pub use config_module::*;
pub use node_class::*;
pub use node_install::*;
pub use node_pool::*;
pub use package_repository::*;
pub use package_set::*;
pub use role::*;
pub use service_definition::*;
pub use service_group::*;
pub use tenant::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every Theseus kind.
pub const GROUP: &str = "theseus.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// The category every kind joins, so that `kubectl get theseus` lists them all.
pub const CATEGORY: &str = "theseus";

/// A package id, `NAME--VERSION` (see `pkg::id` for the full rules).
pub const PACKAGE_ID_PATTERN: &str = r"^[a-z0-9]+(-[a-z0-9]+)*--[A-Za-z0-9._+]{1,64}$";
/// A package name: lowercase letters, digits and single hyphens.
pub const PACKAGE_NAME_PATTERN: &str = r"^[a-z0-9]+(-[a-z0-9]+)*$";
/// A service-group label: lowercase letters, digits and hyphens.
pub const GROUP_LABEL_PATTERN: &str = r"^[a-z0-9-]+$";
/// A service name: a DNS label, as it becomes part of object names.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Every CustomResourceDefinition Theseus serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        PackageRepository::crd(),
        PackageSet::crd(),
        NodeInstall::crd(),
        ServiceGroup::crd(),
        NodePool::crd(),
        ServiceDefinition::crd(),
        NodeClass::crd(),
        ClusterTemplate::crd(),
        Cluster::crd(),
        ClusterPlan::crd(),
        ConfigModule::crd(),
        ConfigBundle::crd(),
        ClusterCapability::crd(),
        Role::crd(),
        Tenant::crd(),
        with_root_rules(
            AppPackage::crd(),
            serde_json::json!([{
                "rule": "!has(oldSelf.status) || !has(oldSelf.status.inUse) || oldSelf.status.inUse.all(v, self.spec.versions.exists(x, x.version == v))",
                "message": "a version AppInstances use cannot be removed from spec.versions; move or remove those instances first (status.inUse lists the versions in use)",
                "reason": "FieldValueForbidden",
                "fieldPath": ".spec.versions"
            }]),
        ),
        with_root_rules(
            AppInstance::crd(),
            serde_json::json!([{
                "rule": "self.metadata.name == self.spec.app + '-' + self.spec.id",
                "message": "an AppInstance is named APP-ID (spec.app, '-', spec.id), so that an id is taken at most once per role",
                "reason": "FieldValueInvalid"
            }]),
        ),
    ]
}

/// `crd` with CEL `rules` on the whole object (where `self.metadata.name`
/// and `oldSelf.status` can be seen).
fn with_root_rules(
    mut crd: CustomResourceDefinition,
    rules: serde_json::Value,
) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema.x_kubernetes_validations =
                Some(serde_json::from_value(rules.clone()).expect("valid rules"));
        }
    }
    crd
}

/// The YAML of one CRD, as committed under `crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    serde_yaml::to_string(crd).expect("a CRD always serializes")
}

/// The file name a CRD is stored under in `crds/`: `<plural>.<group>.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}
