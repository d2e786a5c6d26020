//! Every Theseus kind, with its CRD's printer columns as the dashboard's
//! default columns: the table `kubectl get` prints is the table the
//! dashboard shows.

use std::sync::OnceLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::discovery::ApiResource;
use serde_json::Value;

/// One kind the dashboard lists.
#[derive(Clone, Debug)]
pub struct Kind {
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
    pub resource: ApiResource,
    pub columns: Vec<Column>,
}

/// A printer column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub json_path: String,
}

/// Every kind of the theseus.dev group, in the order of `theseus crds`.
pub fn kinds() -> &'static [Kind] {
    static KINDS: OnceLock<Vec<Kind>> = OnceLock::new();
    KINDS.get_or_init(|| crate::api::crds().iter().map(kind_of).collect())
}

/// The kind whose plural is `plural`.
pub fn by_plural(plural: &str) -> Option<&'static Kind> {
    kinds().iter().find(|k| k.plural == plural)
}

fn kind_of(crd: &CustomResourceDefinition) -> Kind {
    let version = crd
        .spec
        .versions
        .iter()
        .find(|v| v.storage)
        .or_else(|| crd.spec.versions.first())
        .expect("a CRD has a version");
    let columns = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| Column {
            name: c.name.clone(),
            json_path: c.json_path.clone(),
        })
        .collect();
    let names = &crd.spec.names;
    Kind {
        kind: names.kind.clone(),
        plural: names.plural.clone(),
        namespaced: crd.spec.scope == "Namespaced",
        resource: ApiResource {
            group: crd.spec.group.clone(),
            version: version.name.clone(),
            api_version: format!("{}/{}", crd.spec.group, version.name),
            kind: names.kind.clone(),
            plural: names.plural.clone(),
        },
        columns,
    }
}

/// The text of a printer column of `object`, as `kubectl get` would show
/// it: the JSONPath subset the CRDs use (`.a.b`, `[N]`, `[*]` and
/// `[?(@.k=="v")]`); lists are joined with commas; absent is empty.
pub fn cell(object: &Value, json_path: &str) -> String {
    let mut values = vec![object];
    for step in steps(json_path) {
        values = values.into_iter().flat_map(|v| apply(v, &step)).collect();
    }
    values.into_iter().map(text).collect::<Vec<_>>().join(",")
}

#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    Filter(String, String),
}

fn steps(path: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            if end > 0 {
                out.push(Step::Field(after[..end].to_owned()));
            }
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let Some(end) = after.find(']') else { break };
            let inner = &after[..end];
            rest = &after[end + 1..];
            if inner == "*" {
                out.push(Step::All);
            } else if let Ok(i) = inner.parse() {
                out.push(Step::Index(i));
            } else if let Some(cond) = inner.strip_prefix("?(@.").and_then(|c| c.strip_suffix(')'))
                && let Some((field, value)) = cond.split_once("==")
            {
                let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
                out.push(Step::Filter(field.trim().to_owned(), value.to_owned()));
            }
        } else {
            break;
        }
    }
    out
}

fn apply<'a>(value: &'a Value, step: &Step) -> Vec<&'a Value> {
    match step {
        Step::Field(name) => value.get(name).into_iter().collect(),
        Step::Index(i) => value.get(i).into_iter().collect(),
        Step::All => value
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Step::Filter(field, wanted) => value
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|item| item.get(field).map(text).as_deref() == Some(wanted.as_str()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_follow_the_jsonpath_subset_of_the_crds() {
        let object = json!({
            "spec": { "replicas": 3, "provider": { "type": "aws" } },
            "status": {
                "feasibleSizes": [3, 5, 7],
                "conditions": [
                    { "type": "Ready", "status": "True" },
                    { "type": "Halted", "status": "False", "reason": "NotHalted" }
                ]
            }
        });
        assert_eq!(cell(&object, ".spec.replicas"), "3");
        assert_eq!(cell(&object, ".spec.provider.type"), "aws");
        assert_eq!(cell(&object, ".status.feasibleSizes"), "3,5,7");
        assert_eq!(cell(&object, ".status.feasibleSizes[1]"), "5");
        assert_eq!(cell(&object, ".status.conditions[*].type"), "Ready,Halted");
        assert_eq!(
            cell(&object, r#".status.conditions[?(@.type=="Halted")].reason"#),
            "NotHalted"
        );
        assert_eq!(
            cell(&object, r#".status.conditions[?(@.type=="Gone")].status"#),
            ""
        );
        assert_eq!(cell(&object, ".spec.absent.deeper"), "");
    }

    #[test]
    fn every_kind_has_its_crds_printer_columns() {
        let sets = by_plural("packagesets").expect("packagesets");
        assert_eq!(sets.kind, "PackageSet");
        assert!(!sets.namespaced);
        assert!(
            sets.columns.iter().any(|c| c.name == "Halted"),
            "{:?}",
            sets.columns
        );
        let groups = by_plural("servicegroups").expect("servicegroups");
        assert!(groups.namespaced);
        assert_eq!(groups.resource.api_version, "theseus.dev/v1alpha1");
        assert!(kinds().len() >= 15);
    }
}
