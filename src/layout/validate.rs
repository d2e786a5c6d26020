//! Validation of a resolved template, and of a cluster's service list,
//! against the catalog. Each finding names the field path and says what to
//! do.

use std::collections::BTreeSet;
use std::fmt;

use crate::api::ClusterTemplateSpec;

use super::model::Catalog;

/// Why a template or cluster is not valid: the condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// A parent or include names no template.
    UnknownTemplate,
    /// A field names a service with no ServiceDefinition, or one the
    /// template is not compatible with.
    UnknownService,
    /// A field names a node class with no NodeClass, or one the template is
    /// not compatible with.
    UnknownNodeClass,
    /// A service requires another that the cluster does not run.
    MissingDependency,
    /// Two services of the cluster conflict.
    ConflictingServices,
    /// Templates, or services' install requirements, form a cycle.
    Cycle,
    /// A template changes a field its include marks immutable.
    ImmutableField,
}

impl Reason {
    /// The CamelCase reason of the Valid condition.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownTemplate => "UnknownTemplate",
            Reason::UnknownService => "UnknownService",
            Reason::UnknownNodeClass => "UnknownNodeClass",
            Reason::MissingDependency => "MissingDependency",
            Reason::ConflictingServices => "ConflictingServices",
            Reason::Cycle => "Cycle",
            Reason::ImmutableField => "ImmutableField",
        }
    }
}

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The condition reason.
    pub reason: Reason,
    /// The field path, e.g. `spec.defaults.services[2]`.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl Finding {
    /// A finding.
    pub fn new(reason: Reason, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason,
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same finding, reached through `field` (a parent or include).
    pub fn under(mut self, field: &str) -> Self {
        self.message = format!("via {field}: {}", self.message);
        self
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The reason (the first finding's) and the message (every finding with
/// its field path) of a `Valid=False` condition.
pub fn condition(findings: &[Finding]) -> (&'static str, String) {
    let reason = findings
        .first()
        .map_or("InvalidSpec", |f| f.reason.as_str());
    let message = findings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    (reason, message)
}

/// Checks a resolved template's names and its default services.
pub fn template(catalog: &Catalog, t: &ClusterTemplateSpec) -> Vec<Finding> {
    let mut out = Vec::new();
    let compatible = &t.compatibility.services;
    let known = |name: &str| catalog.services.contains_key(name);
    let allowed =
        |name: &str| known(name) && (compatible.is_empty() || compatible.iter().any(|c| c == name));
    for (i, s) in compatible.iter().enumerate() {
        if !known(s) {
            out.push(unknown_service(
                format!("spec.compatibility.services[{i}]"),
                s,
                "",
            ));
        }
    }
    for (i, s) in t.defaults.services.iter().enumerate() {
        if known(s) && !allowed(s) {
            out.push(unknown_service(
                format!("spec.defaults.services[{i}]"),
                s,
                " or not in spec.compatibility.services",
            ));
        }
    }
    let layout = &t.constraints.layout;
    for (kind, groups) in [
        ("mustCoexist", &layout.must_coexist),
        ("cantCoexist", &layout.cant_coexist),
    ] {
        for (i, group) in groups.iter().enumerate() {
            for (k, s) in group.iter().enumerate() {
                if !known(s) {
                    out.push(unknown_service(
                        format!("spec.constraints.layout.{kind}[{i}][{k}]"),
                        s,
                        "",
                    ));
                }
            }
        }
    }
    for (name, rules) in &t.constraints.services {
        let base = format!("spec.constraints.services.{name}");
        if !known(name) {
            out.push(unknown_service(base.clone(), name, ""));
        }
        if let Some(of) = rules
            .ratio
            .as_ref()
            .and_then(|r| r.of.as_ref())
            .filter(|o| !known(o))
        {
            out.push(unknown_service(format!("{base}.ratio.of"), of, ""));
        }
        for (i, c) in rules.node_classes.iter().enumerate() {
            out.extend(node_class(
                catalog,
                t,
                format!("{base}.nodeClasses[{i}]"),
                c,
            ));
        }
    }
    for (i, c) in t.compatibility.node_classes.iter().enumerate() {
        out.extend(node_class(
            catalog,
            t,
            format!("spec.compatibility.nodeClasses[{i}]"),
            c,
        ));
    }
    if let Some(c) = &t.defaults.node_class {
        out.extend(node_class(catalog, t, "spec.defaults.nodeClass".into(), c));
    }
    // Dependencies are checked once every name is known.
    if out.is_empty() {
        out = services(catalog, &t.defaults.services, "spec.defaults.services");
    }
    out
}

fn unknown_service(path: String, name: &str, extra: &str) -> Finding {
    Finding::new(
        Reason::UnknownService,
        path,
        format!("service {name} has no ServiceDefinition{extra}; create it or remove the name"),
    )
}

fn node_class(
    catalog: &Catalog,
    t: &ClusterTemplateSpec,
    path: String,
    name: &str,
) -> Option<Finding> {
    let listed = &t.compatibility.node_classes;
    let ok = catalog.node_classes.contains_key(name)
        && (listed.is_empty() || listed.iter().any(|c| c == name));
    (!ok).then(|| {
        Finding::new(
            Reason::UnknownNodeClass,
            path,
            format!("node class {name} has no NodeClass or is not in spec.compatibility.nodeClasses; create it or remove the name"),
        )
    })
}

/// Checks that a list of services carries its own dependencies: every
/// `requires` is met by a member (by name or `provides`), no two members
/// conflict, and install requirements form no cycle. `field` is the list's
/// path.
pub fn services(catalog: &Catalog, list: &[String], field: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let provided = |want: &str, except: &str| {
        list.iter().any(|s| {
            s != except
                && (s == want
                    || catalog
                        .services
                        .get(s)
                        .is_some_and(|d| d.dependencies.provides.iter().any(|p| p == want)))
        })
    };
    for (i, name) in list.iter().enumerate() {
        let Some(def) = catalog.services.get(name) else {
            out.push(unknown_service(format!("{field}[{i}]"), name, ""));
            continue;
        };
        let deps = &def.dependencies;
        for (phase, reqs) in [
            ("install", &deps.install.requires),
            ("runtime", &deps.runtime.requires),
        ] {
            for want in reqs.iter().filter(|w| !provided(w, name)) {
                out.push(Finding::new(
                    Reason::MissingDependency,
                    format!("{field}[{i}]"),
                    format!(
                        "service {name} requires {want} (ServiceDefinition {name} spec.dependencies.{phase}.requires), \
                         which no service of the list provides; add a service that provides {want}"
                    ),
                ));
            }
        }
        for bad in deps.conflicts.iter().filter(|c| provided(c, name)) {
            out.push(Finding::new(
                Reason::ConflictingServices,
                format!("{field}[{i}]"),
                format!(
                    "service {name} conflicts with {bad} (ServiceDefinition {name} spec.dependencies.conflicts), \
                     which the list also runs; remove one of them"
                ),
            ));
        }
    }
    out.extend(install_cycle(catalog, list, field));
    out
}

/// A cycle among the install requirements of the listed services.
fn install_cycle(catalog: &Catalog, list: &[String], field: &str) -> Option<Finding> {
    let targets = |name: &str| -> Vec<String> {
        let reqs = catalog
            .services
            .get(name)
            .map(|d| d.dependencies.install.requires.clone())
            .unwrap_or_default();
        list.iter()
            .filter(|s| {
                reqs.iter().any(|r| {
                    *s == r
                        || catalog
                            .services
                            .get(*s)
                            .is_some_and(|d| d.dependencies.provides.contains(r))
                })
            })
            .cloned()
            .collect()
    };
    fn visit(
        n: &str,
        targets: &dyn Fn(&str) -> Vec<String>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut cycle = path[at..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if !done.insert(n.to_owned()) {
            return None;
        }
        path.push(n.to_owned());
        let found = targets(n)
            .iter()
            .find_map(|t| visit(t, targets, path, done));
        path.pop();
        found
    }
    let mut done = BTreeSet::new();
    let cycle = list
        .iter()
        .find_map(|s| visit(s, &targets, &mut Vec::new(), &mut done))?;
    Some(Finding::new(
        Reason::Cycle,
        field.to_owned(),
        format!(
            "the services' spec.dependencies.install.requires form a cycle: {}; remove one requirement",
            cycle.join(" -> ")
        ),
    ))
}
