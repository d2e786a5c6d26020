//! `theseus pkg check`: does the active tree match its `set.json`?

use serde::Serialize;

use super::generation;
use super::id::PackageId;
use super::journal;
use super::pkginfo::PkgInfo;
use super::root::{Root, RootError};

/// The result of a check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The generation checked, if one is active.
    pub generation: Option<u64>,
    /// Its ids.
    pub ids: Vec<PackageId>,
    /// Its set hash.
    pub hash: Option<String>,
    /// One line per problem; empty when everything matches.
    pub problems: Vec<String>,
}

impl Root {
    /// Verifies the active generation against its `set.json` and the cached
    /// packages, and reports leftovers of an interrupted operation.
    pub fn check(&self) -> Result<CheckReport, RootError> {
        let mut problems = Vec::new();
        if journal::read(self.path())?.is_some() {
            problems.push("journal.json: an operation is in flight or was interrupted; run `theseus pkg recover`".into());
        }
        for tmp in self.temporaries()? {
            problems.push(format!(
                "{tmp}: temporary left behind; run `theseus pkg recover`"
            ));
        }
        let Some(n) = self.current() else {
            if self.path().join("current").symlink_metadata().is_ok() {
                problems.push("current: does not point to generations/N".into());
            }
            return Ok(CheckReport {
                generation: None,
                ids: vec![],
                hash: None,
                problems,
            });
        };
        let dir = self.generations_dir().join(n.to_string());
        let set = match generation::read_set(&dir) {
            Ok(set) => set,
            Err(e) => {
                problems.push(e.to_string());
                return Ok(CheckReport {
                    generation: Some(n),
                    ids: vec![],
                    hash: None,
                    problems,
                });
            }
        };
        if set.generation != n {
            problems.push(format!(
                "{}: says generation {}",
                dir.join(generation::SET_FILE).display(),
                set.generation
            ));
        }
        for id in &set.ids {
            match PkgInfo::read_dir(&self.package_dir(id)) {
                Ok(info) if &info.id == id => {}
                Ok(info) => problems.push(format!("packages/{id}: pkginfo.json says {}", info.id)),
                Err(e) => problems.push(format!("packages/{id}: {e}")),
            }
        }
        if problems.is_empty() {
            let members = self.members(&set.ids)?;
            problems.extend(generation::verify(&dir, &set, &members));
        }
        Ok(CheckReport {
            generation: Some(n),
            ids: set.ids,
            hash: Some(set.hash),
            problems,
        })
    }
}
