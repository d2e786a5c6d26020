//! Checks a PackageSet against its repository's index before rolling it.
//! Pure: the index is passed in.

use std::collections::{BTreeMap, BTreeSet};

use crate::pkg::PackageId;
use crate::pkg::index::Index;

/// Why a set cannot be rolled, each problem a sentence naming the package.
pub fn problems(packages: &[String], required: &[String], index: &Index) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ids = Vec::new();
    for raw in packages {
        match raw.parse::<PackageId>() {
            Ok(id) => ids.push(id),
            Err(err) => problems.push(format!("{raw} is not a package id: {err}")),
        }
    }
    let mut by_name: BTreeMap<&str, Vec<&PackageId>> = BTreeMap::new();
    for id in &ids {
        by_name.entry(id.name()).or_default().push(id);
        if index.find(id).is_none() {
            problems.push(format!("{id} is not in the repository index"));
        }
    }
    for (name, versions) in &by_name {
        if versions.len() > 1 {
            problems.push(format!(
                "{name} appears {} times; a set holds one version of each package",
                versions.len()
            ));
        }
    }
    for name in required {
        if !by_name.contains_key(name.as_str()) {
            problems.push(format!(
                "required package {name} is missing from spec.packages"
            ));
        }
    }
    let names: BTreeSet<&str> = by_name.keys().copied().collect();
    for entry in index.packages.iter().filter(|e| ids.contains(&e.id)) {
        for needed in entry_requires(entry) {
            if !names.contains(needed.as_str()) {
                problems.push(format!(
                    "{} requires {needed}, which the set lacks",
                    entry.id
                ));
            }
        }
    }
    problems
}

fn entry_requires(_entry: &crate::pkg::index::IndexEntry) -> Vec<String> {
    Vec::new()
}
