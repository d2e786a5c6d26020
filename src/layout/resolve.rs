//! Template resolution: a template's parent and includes merged under its
//! own fields, and the immutable fields of its includes enforced.
//!
//! Merge order: the resolved parent, then each include in order, then the
//! template itself. Lists (compatible services and node classes, default
//! services, layout rules) are joined without duplicates; single values
//! (default node class, size bounds, each service's nodeClasses, count and
//! ratio) are replaced by the later source when it sets them.

use sha2::{Digest, Sha256};

use crate::api::{ClusterTemplateSpec, ServiceConstraint};

use super::model::Catalog;
use super::validate::{Finding, Reason};

/// The resolved template `name`, or the findings that stop it resolving
/// (UnknownTemplate, Cycle, ImmutableField).
pub fn resolve(catalog: &Catalog, name: &str) -> Result<ClusterTemplateSpec, Vec<Finding>> {
    resolve_in(catalog, name, &mut Vec::new())
}

fn resolve_in(
    catalog: &Catalog,
    name: &str,
    stack: &mut Vec<String>,
) -> Result<ClusterTemplateSpec, Vec<Finding>> {
    let Some(spec) = catalog.templates.get(name) else {
        return Err(vec![Finding::new(
            Reason::UnknownTemplate,
            "spec.template",
            format!("ClusterTemplate {name} does not exist; create it or name another template"),
        )]);
    };
    if stack.iter().any(|n| n == name) {
        let cycle = format!("{} -> {name}", stack.join(" -> "));
        return Err(vec![Finding::new(
            Reason::Cycle,
            "spec.parent",
            format!(
                "templates refer to each other in a cycle: {cycle}; break it by removing a parent or include"
            ),
        )]);
    }
    stack.push(name.to_owned());
    let mut resolved = ClusterTemplateSpec::default();
    let mut findings = Vec::new();
    let mut sources = Vec::new();
    if let Some(parent) = &spec.parent {
        match resolve_in(catalog, parent, stack) {
            Ok(p) => merge(&mut resolved, &p),
            Err(f) => findings.extend(f.into_iter().map(|f| f.under("spec.parent"))),
        }
    }
    for (i, include) in spec.includes.iter().enumerate() {
        match resolve_in(catalog, include, stack) {
            Ok(inc) => {
                merge(&mut resolved, &inc);
                sources.push((i, include.clone(), inc));
            }
            Err(f) => findings.extend(
                f.into_iter()
                    .map(|f| f.under(&format!("spec.includes[{i}]"))),
            ),
        }
    }
    merge(&mut resolved, spec);
    stack.pop();
    for (i, include, inc) in &sources {
        findings.extend(immutable_changes(&resolved, inc, include, *i));
    }
    resolved.partial = spec.partial;
    resolved.immutable = spec.immutable.clone();
    for (_, _, inc) in &sources {
        resolved.immutable.extend(inc.immutable.iter().cloned());
    }
    if findings.is_empty() {
        Ok(resolved)
    } else {
        Err(findings)
    }
}

/// Merges `over` into `base`.
pub fn merge(base: &mut ClusterTemplateSpec, over: &ClusterTemplateSpec) {
    join(
        &mut base.compatibility.services,
        &over.compatibility.services,
    );
    join(
        &mut base.compatibility.node_classes,
        &over.compatibility.node_classes,
    );
    join(&mut base.defaults.services, &over.defaults.services);
    if over.defaults.node_class.is_some() {
        base.defaults
            .node_class
            .clone_from(&over.defaults.node_class);
    }
    base.defaults.config.extend(over.defaults.config.clone());
    let (b, o) = (&mut base.constraints, &over.constraints);
    b.size.min = o.size.min.or(b.size.min);
    b.size.max = o.size.max.or(b.size.max);
    join(&mut b.layout.must_coexist, &o.layout.must_coexist);
    join(&mut b.layout.cant_coexist, &o.layout.cant_coexist);
    for (name, rules) in &o.services {
        let entry = b.services.entry(name.clone()).or_default();
        merge_service(entry, rules);
    }
}

fn merge_service(base: &mut ServiceConstraint, over: &ServiceConstraint) {
    if !over.node_classes.is_empty() {
        base.node_classes.clone_from(&over.node_classes);
    }
    if over.count.is_some() {
        base.count.clone_from(&over.count);
    }
    if over.ratio.is_some() {
        base.ratio.clone_from(&over.ratio);
    }
}

fn join<T: Clone + PartialEq>(base: &mut Vec<T>, more: &[T]) {
    for item in more {
        if !base.contains(item) {
            base.push(item.clone());
        }
    }
}

/// Findings for each immutable field of an include that the resolved
/// template changed.
fn immutable_changes(
    resolved: &ClusterTemplateSpec,
    include: &ClusterTemplateSpec,
    name: &str,
    index: usize,
) -> Vec<Finding> {
    let after = serde_json::to_value(resolved).unwrap_or_default();
    let before = serde_json::to_value(include).unwrap_or_default();
    include
        .immutable
        .iter()
        .filter(|path| at(&after, path) != at(&before, path))
        .map(|path| {
            Finding::new(
                Reason::ImmutableField,
                format!("spec.{path}"),
                format!(
                    "spec.{path} is immutable in the included template {name} (spec.includes[{index}]) \
                     and may not be changed; remove the override"
                ),
            )
        })
        .collect()
}

fn at<'v>(value: &'v serde_json::Value, dotted: &str) -> Option<&'v serde_json::Value> {
    dotted.split('.').try_fold(value, |v, key| v.get(key))
}

/// A short hash of the resolved template: clusters re-solve when it changes.
pub fn revision(resolved: &ClusterTemplateSpec) -> String {
    let bytes = serde_json::to_vec(resolved).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}
