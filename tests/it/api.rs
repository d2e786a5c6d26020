//! The API types: generated CRDs, their validation schema, and the examples.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use theseus::api::{self, NodeInstall, NodePool, PackageRepository, PackageSet, ServiceGroup};
use theseus::cli::crds;

use crate::support::repo_root;

fn schema_of(kind: &str) -> Value {
    let crd: CustomResourceDefinition = api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    serde_json::to_value(schema).unwrap()
}

fn at<'v>(value: &'v Value, path: &str) -> &'v Value {
    path.split('.').fold(value, |v, key| {
        let next = if key == "items" {
            &v["items"]
        } else {
            &v["properties"][key]
        };
        assert!(!next.is_null(), "schema has no {path} (stopped at {key})");
        next
    })
}

fn rules(value: &Value) -> Vec<String> {
    value["x-kubernetes-validations"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| r["rule"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn crds_prints_every_definition_in_group_theseus_dev() {
    let stream = crds::render_stream();
    let docs: Vec<CustomResourceDefinition> = serde_yaml::Deserializer::from_str(&stream)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let mut kinds: Vec<_> = docs.iter().map(|c| c.spec.names.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "AppInstance",
            "AppPackage",
            "Cluster",
            "ClusterCapability",
            "ClusterPlan",
            "ClusterTemplate",
            "ConfigBundle",
            "ConfigModule",
            "NodeClass",
            "NodeInstall",
            "NodePool",
            "PackageRepository",
            "PackageSet",
            "Role",
            "ServiceDefinition",
            "ServiceGroup",
            "Tenant"
        ]
    );
    for crd in &docs {
        assert_eq!(crd.spec.group, "theseus.dev");
        assert_eq!(crd.spec.versions.len(), 1);
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["theseus".to_owned()][..])
        );
        let subresources = crd.spec.versions[0].subresources.as_ref().unwrap();
        assert!(
            subresources.status.is_some(),
            "{} lacks status",
            crd.spec.names.kind
        );
    }
}

#[test]
fn committed_crds_match_the_types() {
    let drift = crds::check_dir(&repo_root().join("crds"));
    assert!(
        drift.is_empty(),
        "crds/ drifted, run `make crds`: {drift:?}"
    );
}

#[test]
fn drift_in_a_crd_file_is_caught() {
    let dir = tempdir("drift");
    crds::write_dir(&dir).unwrap();
    assert!(crds::check_dir(&dir).is_empty());

    let file = dir.join("packagesets.theseus.dev.yaml");
    let edited = std::fs::read_to_string(&file)
        .unwrap()
        .replace("maxItems: 128", "maxItems: 129");
    std::fs::write(&file, edited).unwrap();
    std::fs::remove_file(dir.join("nodepools.theseus.dev.yaml")).unwrap();
    std::fs::write(dir.join("stale.theseus.dev.yaml"), "kind: Stale\n").unwrap();

    let drift = crds::check_dir(&dir);
    assert_eq!(
        drift,
        [
            "packagesets.theseus.dev.yaml differs",
            "nodepools.theseus.dev.yaml is missing",
            "stale.theseus.dev.yaml has no kind behind it",
        ]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn short_names_and_printer_columns_are_as_documented() {
    let expect = [
        (
            "PackageRepository",
            "pkgrepo",
            &["URL", "Packages", "Ready", "Age"][..],
        ),
        (
            "PackageSet",
            "pkgset",
            &["Available", "Updated", "Desired", "Halted", "Age"][..],
        ),
        (
            "NodeInstall",
            "ni",
            &["Phase", "Active", "Target", "Heartbeat"][..],
        ),
        (
            "ServiceGroup",
            "sg",
            &["Service", "Group", "Ready", "Published", "Age"][..],
        ),
        (
            "NodePool",
            "np",
            &["Desired", "Ready", "Provider", "Age"][..],
        ),
        ("ServiceDefinition", "svcdef", &["CPU", "Memory", "Age"][..]),
        (
            "NodeClass",
            "nc",
            &["Provider", "CPU", "Memory", "Cost", "Age"][..],
        ),
        (
            "ClusterTemplate",
            "ctpl",
            &["Valid", "Sizes", "Parent", "Age"][..],
        ),
        (
            "Cluster",
            "cl",
            &["Template", "Size", "Layout", "Available", "Plan", "Age"][..],
        ),
    ];
    for (kind, short, columns) in expect {
        let crd = api::crds()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .unwrap();
        assert_eq!(
            crd.spec.names.short_names,
            Some(vec![short.to_owned()]),
            "{kind}"
        );
        let names: Vec<_> = crd.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(names, columns, "{kind}");
    }
}

#[test]
fn nodepool_has_the_scale_subresource() {
    let crd = api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "NodePool")
        .unwrap();
    let scale = crd.spec.versions[0]
        .subresources
        .as_ref()
        .unwrap()
        .scale
        .clone()
        .unwrap();
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
}

#[test]
fn schema_carries_patterns_minimums_and_cel_rules() {
    let set = schema_of("PackageSet");
    let id = at(&set, "spec.packages.items");
    assert_eq!(id["pattern"], api::PACKAGE_ID_PATTERN);
    assert_eq!(
        at(&set, "spec.required.items")["pattern"],
        api::PACKAGE_NAME_PATTERN
    );
    let spec_rules = rules(at(&set, "spec"));
    assert!(
        spec_rules.contains(
            &"size(self.packages) > 0 || (has(self.configBundles) && size(self.configBundles) > 0)"
                .to_owned()
        ),
        "{spec_rules:?}"
    );
    let max_unavailable = at(&set, "spec.strategy.maxUnavailable");
    assert_eq!(max_unavailable["x-kubernetes-int-or-string"], true);
    assert!(rules(max_unavailable)[0].contains("self > 0"));
    assert_eq!(at(&set, "spec.strategy.failureThreshold")["minimum"], 1.0);

    let group = schema_of("ServiceGroup");
    assert_eq!(
        at(&group, "spec.labels.items")["pattern"],
        api::GROUP_LABEL_PATTERN
    );
    assert_eq!(
        at(&group, "spec.service")["pattern"],
        api::DNS_LABEL_PATTERN
    );
    assert_eq!(at(&group, "spec.replicas")["minimum"], 0.0);

    let pool = schema_of("NodePool");
    assert_eq!(at(&pool, "spec.replicas")["minimum"], 0.0);
    let provider_rules = rules(at(&pool, "spec.provider"));
    assert!(
        provider_rules
            .iter()
            .any(|r| r.contains("has(self.aws)") && r.contains("has(self.local)")),
        "{provider_rules:?}"
    );

    for kind in [
        "PackageRepository",
        "PackageSet",
        "NodeInstall",
        "ServiceGroup",
        "NodePool",
    ] {
        let schema = schema_of(kind);
        let conditions = at(&schema, "status.conditions");
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{kind}");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"]),
            "{kind}"
        );
    }
}

#[test]
fn every_spec_field_has_a_description() {
    fn walk(kind: &str, path: &str, schema: &Value, missing: &mut Vec<String>) {
        if let Some(props) = schema["properties"].as_object() {
            for (name, sub) in props {
                let here = format!("{path}.{name}");
                if sub["description"]
                    .as_str()
                    .is_none_or(|d| d.trim().is_empty())
                {
                    missing.push(format!("{kind}{here}"));
                }
                walk(kind, &here, sub, missing);
            }
        }
        if schema["items"].is_object() {
            walk(kind, path, &schema["items"], missing);
        }
    }
    let mut missing = Vec::new();
    for kind in [
        "PackageRepository",
        "PackageSet",
        "NodeInstall",
        "ServiceGroup",
        "NodePool",
    ] {
        let schema = schema_of(kind);
        for part in ["spec", "status"] {
            walk(
                kind,
                &format!(".{part}"),
                &schema["properties"][part],
                &mut missing,
            );
        }
    }
    assert!(
        missing.is_empty(),
        "fields without a doc comment: {missing:#?}"
    );
}

#[test]
fn every_example_parses_into_its_type() {
    let mut seen = Vec::new();
    let quickstart: Vec<_> = std::fs::read_dir(repo_root().join("examples/quickstart"))
        .unwrap()
        .collect();
    assert!(quickstart.len() >= 5, "examples/quickstart/ has the demo");
    for entry in std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .chain(quickstart)
    {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let kind = serde_yaml::from_str::<Value>(&text).unwrap()["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{} has no kind", path.display()))
            .to_owned();
        let parsed: Result<(), serde_yaml::Error> = match kind.as_str() {
            "PackageRepository" => serde_yaml::from_str::<PackageRepository>(&text).map(drop),
            "PackageSet" => serde_yaml::from_str::<PackageSet>(&text).map(drop),
            "NodeInstall" => serde_yaml::from_str::<NodeInstall>(&text).map(drop),
            "ServiceGroup" => serde_yaml::from_str::<ServiceGroup>(&text).map(drop),
            "NodePool" => serde_yaml::from_str::<NodePool>(&text).map(drop),
            "Namespace" => serde_yaml::from_str::<Namespace>(&text).map(drop),
            other => panic!("{}: unknown kind {other}", path.display()),
        };
        parsed.unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        seen.push(kind);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 6, "examples cover every kind: {seen:?}");
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("theseus-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
