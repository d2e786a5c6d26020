//! The highest index version a node accepted from each repository, kept in
//! `ROOT/repositories.json` so that a restart does not forget it: a
//! repository (or a mirror in front of it) that later serves an older
//! signed index is refused. Written like the journal: a temporary file,
//! fsync, rename, fsync of the directory.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::disk;

/// The file name under the node root.
pub const FILE: &str = "repositories.json";

/// What the node remembers of one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The highest index version accepted.
    pub version: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    repositories: BTreeMap<String, Accepted>,
}

/// The accepted versions of a node root.
#[derive(Debug, Clone)]
pub struct AcceptedVersions {
    path: PathBuf,
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: not a valid record of accepted index versions ({e}); it is only ever replaced whole, so something else wrote it: restore it or remove it to accept any version once",
            path.display()
        ),
    )
}

impl AcceptedVersions {
    /// The record under `root`.
    pub fn under(root: &Path) -> Self {
        Self {
            path: root.join(FILE),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> io::Result<File> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt(&self.path, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(File::default()),
            Err(e) => Err(e),
        }
    }

    /// The highest version accepted from `repository` (a normalized URL).
    pub fn get(&self, repository: &str) -> io::Result<Option<u64>> {
        Ok(self.load()?.repositories.get(repository).map(|a| a.version))
    }

    /// Records `version` for `repository` when it is higher than the one
    /// recorded; never lowers it.
    pub fn record(&self, repository: &str, version: u64) -> io::Result<()> {
        let mut file = self.load()?;
        let entry = file
            .repositories
            .entry(repository.to_owned())
            .or_insert(Accepted { version });
        if entry.version > version {
            return Ok(());
        }
        entry.version = version;
        let mut bytes = serde_json::to_vec_pretty(&file).expect("the record serializes");
        bytes.push(b'\n');
        disk::write_atomic(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_only_go_up_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let record = AcceptedVersions::under(dir.path());
        assert_eq!(record.get("http://a/").unwrap(), None);
        record.record("http://a/", 5).unwrap();
        record.record("http://a/", 3).unwrap();
        record.record("http://b/", 1).unwrap();
        let reopened = AcceptedVersions::under(dir.path());
        assert_eq!(reopened.get("http://a/").unwrap(), Some(5));
        assert_eq!(reopened.get("http://b/").unwrap(), Some(1));
        std::fs::write(record.path(), b"{garbage").unwrap();
        let err = reopened.get("http://a/").unwrap_err().to_string();
        assert!(err.contains(FILE) && err.contains("remove it"), "{err}");
    }
}
