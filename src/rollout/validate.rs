//! Checks a PackageSet against its repository's index before rolling it.
//! Pure: the index is passed in.

use std::collections::{BTreeMap, BTreeSet};

use crate::pkg::PackageId;
use crate::pkg::index::Index;

/// Why a set cannot be rolled, each problem a sentence naming the package.
/// `generated` are the packages of the set's ConfigBundles: they come from
/// the operator's repository, not `index`, but count as the set's for
/// names, duplicates and requirements.
pub fn problems(
    packages: &[String],
    generated: &[PackageId],
    required: &[String],
    index: &Index,
) -> Vec<String> {
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
    for id in generated {
        by_name.entry(id.name()).or_default().push(id);
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
        for needed in &entry.requires {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkg::index::IndexEntry;

    fn index(entries: &[(&str, &[&str])]) -> Index {
        Index {
            version: 1,
            expires: None,
            packages: entries
                .iter()
                .map(|(id, requires)| IndexEntry {
                    id: id.parse().unwrap(),
                    sha256: "0".repeat(64),
                    size: 1,
                    path: format!("packages/{id}.tar.gz"),
                    requires: requires.iter().map(|r| (*r).to_owned()).collect(),
                })
                .collect(),
        }
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn sets_are_checked_against_the_index() {
        let idx = index(&[("web--1", &["config"]), ("config--1", &[]), ("web--2", &[])]);
        let cases: [(&str, Vec<String>, Vec<String>, &str); 5] = [
            (
                "a complete set passes",
                ids(&["web--1", "config--1"]),
                ids(&["web"]),
                "",
            ),
            (
                "an unknown id is named",
                ids(&["web--9"]),
                vec![],
                "web--9 is not in the repository index",
            ),
            (
                "a broken requires is named",
                ids(&["web--1"]),
                vec![],
                "web--1 requires config",
            ),
            (
                "a missing required name is named",
                ids(&["web--2"]),
                ids(&["config"]),
                "required package config",
            ),
            (
                "two versions of one name are refused",
                ids(&["web--1", "web--2", "config--1"]),
                vec![],
                "web appears 2 times",
            ),
        ];
        for (name, packages, required, expected) in cases {
            let found = problems(&packages, &[], &required, &idx);
            if expected.is_empty() {
                assert!(found.is_empty(), "{name}: {found:?}");
            } else {
                assert!(
                    found.iter().any(|p| p.contains(expected)),
                    "{name}: {found:?}"
                );
            }
        }
    }

    #[test]
    fn generated_packages_satisfy_requirements_without_being_in_the_index() {
        let idx = index(&[("web--1", &["config"])]);
        let config: PackageId = "config--cfg.0123456789abcdef".parse().unwrap();
        let found = problems(
            &ids(&["web--1"]),
            std::slice::from_ref(&config),
            &ids(&["config"]),
            &idx,
        );
        assert!(found.is_empty(), "{found:?}");
        let twice = problems(
            &ids(&["web--1", "config--1"]),
            &[config],
            &[],
            &index(&[("web--1", &[]), ("config--1", &[])]),
        );
        assert!(
            twice.iter().any(|p| p.contains("config appears 2 times")),
            "{twice:?}"
        );
    }
}
