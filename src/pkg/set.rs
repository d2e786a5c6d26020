//! Package sets: the rules a set of packages must satisfy, and its hash.
//!
//! Everything here is pure: it takes ids, metadata and file lists and
//! returns a verdict, so the rules are tested with tables.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::id::PackageId;
use super::pkginfo::PkgInfo;

/// Why a set of packages cannot be active together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetError {
    /// The set is empty.
    #[error("the package set is empty; name at least one package id")]
    Empty,
    /// Two ids share a name.
    #[error("{first} and {second} have the same name; a set holds one package per name")]
    DuplicateName {
        /// The first id with the name.
        first: PackageId,
        /// The second one.
        second: PackageId,
    },
    /// A package requires a name that no package in the set has.
    #[error(
        "{package} requires {missing}, which is not in the set; add an id like {missing}--VERSION"
    )]
    MissingRequirement {
        /// The requiring package.
        package: PackageId,
        /// The missing name.
        missing: String,
    },
    /// A name the set declares required is absent.
    #[error("the set must contain exactly one {0} package and has none")]
    RequiredMissing(String),
    /// Two packages provide the same merged file.
    #[error(
        "{first} and {second} both provide {path}; a merged path may come from one package only"
    )]
    FileConflict {
        /// The path under the generation, e.g. `bin/tool`.
        path: String,
        /// One provider.
        first: PackageId,
        /// The other.
        second: PackageId,
    },
}

/// One package of a set, as the set rules see it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its metadata (which carries its id).
    pub info: PkgInfo,
    /// The leaves it contributes to the merged `bin/`, `lib/` and `etc/`,
    /// relative to the generation, e.g. `bin/tool` or `lib/x/libx.so`.
    pub files: Vec<String>,
}

/// The stable hash of a set: the first 16 hex digits of the sha256 of the
/// sorted ids joined by `"\n"`. The operator compares it with
/// `NodeInstall.status`.
pub fn set_hash(ids: &[PackageId]) -> String {
    let mut sorted: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    sorted.sort();
    sorted.dedup();
    let digest = Sha256::digest(sorted.join("\n").as_bytes());
    hex::encode(digest)[..16].to_owned()
}

/// Checks that the ids alone could form a set: non-empty, one per name.
pub fn validate_ids(ids: &[PackageId]) -> Result<(), SetError> {
    if ids.is_empty() {
        return Err(SetError::Empty);
    }
    let mut by_name: BTreeMap<&str, &PackageId> = BTreeMap::new();
    for id in ids {
        if let Some(first) = by_name.insert(id.name(), id) {
            return Err(SetError::DuplicateName {
                first: first.clone(),
                second: id.clone(),
            });
        }
    }
    Ok(())
}

/// Checks every set rule: one package per name, every `requires` present,
/// each `required` name present, and no merged file provided twice.
pub fn validate(members: &[Member], required: &[String]) -> Result<(), SetError> {
    let ids: Vec<PackageId> = members.iter().map(|m| m.info.id.clone()).collect();
    validate_ids(&ids)?;
    let has = |name: &str| ids.iter().any(|id| id.name() == name);
    for m in members {
        if let Some(missing) = m.info.requires.iter().find(|r| !has(r)) {
            return Err(SetError::MissingRequirement {
                package: m.info.id.clone(),
                missing: missing.clone(),
            });
        }
    }
    if let Some(name) = required.iter().find(|r| !has(r)) {
        return Err(SetError::RequiredMissing(name.clone()));
    }
    check_file_conflicts(members)
}

fn check_file_conflicts(members: &[Member]) -> Result<(), SetError> {
    let mut leaves: BTreeMap<&str, &PackageId> = BTreeMap::new();
    for m in members {
        for path in &m.files {
            if let Some(first) = leaves.insert(path, &m.info.id) {
                return Err(conflict(path, first, &m.info.id));
            }
        }
    }
    // A leaf of one package must not be a directory of another.
    for (path, owner) in &leaves {
        let mut prefix = *path;
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if let Some(other) = leaves.get(parent) {
                return Err(conflict(parent, other, owner));
            }
            prefix = parent;
        }
    }
    Ok(())
}

fn conflict(path: &str, a: &PackageId, b: &PackageId) -> SetError {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    SetError::FileConflict {
        path: path.to_owned(),
        first: first.clone(),
        second: second.clone(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A member without a service, for tests here and in `generation`.
    pub(crate) fn member(id: &str, requires: &[&str], files: &[&str]) -> Member {
        let info = PkgInfo {
            id: id.parse().unwrap(),
            requires: requires.iter().map(|s| s.to_string()).collect(),
            service: None,
            systemd_units: vec![],
            state_directory: false,
        };
        Member {
            info,
            files: files.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn set_rules_accept_and_reject_as_expected() {
        type Case = (
            &'static str,
            Vec<Member>,
            Vec<&'static str>,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "a valid set passes",
                vec![
                    member("a--1", &["b"], &["bin/a"]),
                    member("b--2", &[], &["bin/b"]),
                ],
                vec!["a"],
                None,
            ),
            ("an empty set fails", vec![], vec![], Some("empty")),
            (
                "two versions of one name fail",
                vec![member("a--1", &[], &[]), member("a--2", &[], &[])],
                vec![],
                Some("same name"),
            ),
            (
                "a missing requirement fails",
                vec![member("a--1", &["b"], &[])],
                vec![],
                Some("requires b"),
            ),
            (
                "a missing required name fails",
                vec![member("a--1", &[], &[])],
                vec!["c"],
                Some("exactly one c"),
            ),
            (
                "the same merged file twice fails",
                vec![
                    member("a--1", &[], &["bin/x"]),
                    member("b--1", &[], &["bin/x"]),
                ],
                vec![],
                Some("both provide bin/x"),
            ),
            (
                "a file where another has a directory fails",
                vec![
                    member("a--1", &[], &["lib/x"]),
                    member("b--1", &[], &["lib/x/y.so"]),
                ],
                vec![],
                Some("both provide lib/x"),
            ),
            (
                "shared directories with distinct files pass",
                vec![
                    member("a--1", &[], &["lib/x/a.so"]),
                    member("b--1", &[], &["lib/x/b.so"]),
                ],
                vec![],
                None,
            ),
        ];
        for (name, members, required, expected) in cases {
            let required: Vec<String> = required.into_iter().map(String::from).collect();
            let got = validate(&members, &required).map_err(|e| e.to_string());
            match expected {
                None => assert!(got.is_ok(), "{name}: {got:?}"),
                Some(text) => {
                    let err = got.expect_err(name);
                    assert!(err.contains(text), "{name}: {err}");
                }
            }
        }
    }

    #[test]
    fn the_set_hash_ignores_order_and_has_sixteen_hex_digits() {
        let a: PackageId = "a--1".parse().unwrap();
        let b: PackageId = "b--2".parse().unwrap();
        let h = set_hash(&[a.clone(), b.clone()]);
        assert_eq!(h, set_hash(&[b, a]));
        assert_eq!(h.len(), 16);
        let expected = hex::encode(Sha256::digest(b"a--1\nb--2"));
        assert_eq!(h, expected[..16]);
    }
}
