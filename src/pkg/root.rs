//! The node root: cached packages, generations, `current`, the journal.
//!
//! ```text
//! packages/ID/   generations/N/   current -> generations/N
//! state/NAME/    journal.json     downloads/   lock
//! ```
//!
//! A [`Root`] holds a lock on `ROOT/lock` for as long as it lives: an
//! exclusive one for changes ([`Root::open`], which also runs
//! [`Root::recover`]), a shared one for reading ([`Root::open_shared`]).

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::disk::{self, TMP_MARK};
use super::failpoint;
use super::fetch::FetchError;
use super::generation::{self, GenerationError, SetFile};
use super::id::PackageId;
pub use super::journal::RecoveryReport;
use super::journal::{self, JournalError, Operation, Step};
use super::pkginfo::{PkgInfo, PkgInfoError};
use super::set::{Member, SetError};
use super::unpack::UnpackError;

/// Generations kept by default (besides the current one).
pub const DEFAULT_KEEP: usize = 3;

/// Errors from operations on the node root.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// A file under the root could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The journal is unreadable.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A generation is unreadable.
    #[error(transparent)]
    Generation(#[from] GenerationError),
    /// The ids do not form a valid set.
    #[error(transparent)]
    Set(#[from] SetError),
    /// A package's metadata is invalid.
    #[error(transparent)]
    PkgInfo(#[from] PkgInfoError),
    /// Fetching failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// An archive was refused.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// A package is needed but not cached, and there is no repository.
    #[error(
        "{0} is not cached under packages/ and no repository was given; pass --repo URL or `theseus pkg add` it"
    )]
    NotCached(PackageId),
    /// An archive's pkginfo.json names another id than its file.
    #[error(
        "{path}: pkginfo.json says {found}, but the archive is named {expected}; rebuild it with `theseus pkg build`"
    )]
    WrongId {
        /// The archive or URL.
        path: String,
        /// The id from the name.
        expected: PackageId,
        /// The id in pkginfo.json.
        found: PackageId,
    },
    /// The package is in use.
    #[error(
        "{id} is in use by generation {generation}{what}; activate a set without it (and run `theseus pkg gc --keep 0`) first"
    )]
    InUse {
        /// The package.
        id: PackageId,
        /// The generation using it.
        generation: u64,
        /// " (the active one)" or "".
        what: &'static str,
    },
    /// Nothing to roll back to.
    #[error("no generation older than {0:?} to roll back to")]
    NoPrevious(Option<u64>),
    /// An archive name is not `ID.tar.gz` or `ID.tar.zst`.
    #[error("{name}: not named ID.tar.gz or ID.tar.zst ({reason})")]
    BadArchiveName {
        /// The file name or URL.
        name: String,
        /// Why the id does not parse.
        reason: String,
    },
    /// Bootstrap on a root that already has an active set.
    #[error("{0} already has an active set (generation {1}); use `theseus pkg activate`")]
    AlreadyBootstrapped(PathBuf, u64),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RootError + '_ {
    move |source| RootError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A cached package.
#[derive(Debug, Clone, Serialize)]
pub struct CachedPackage {
    /// Its id.
    pub id: PackageId,
    /// Whether the current generation uses it.
    pub active: bool,
}

/// A switch that happened (or was not needed).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Switched {
    /// The generation `current` now points to.
    pub generation: u64,
    /// The one it pointed to before.
    pub previous: Option<u64>,
    /// The active ids.
    pub ids: Vec<PackageId>,
    /// Their set hash.
    pub hash: String,
    /// Whether anything changed (false when the set was already active).
    pub changed: bool,
    /// Packages downloaded for this switch.
    pub fetched: Vec<PackageId>,
    /// Old generations removed afterwards.
    pub removed_generations: Vec<u64>,
}

/// Takes the root's lock, exclusive or shared; when another process holds
/// it (a running agent owns its root for as long as it runs), says so
/// before it waits, rather than hanging without a word.
fn acquire(lock: &File, path: &Path, exclusive: bool) -> Result<(), RootError> {
    let tried = if exclusive {
        lock.try_lock()
    } else {
        lock.try_lock_shared()
    };
    match tried {
        Ok(()) => return Ok(()),
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err(path)(e)),
        Err(std::fs::TryLockError::WouldBlock) => {}
    }
    tracing::warn!(
        "{} is held by another process (a running agent holds its root: use its local API, or stop it); waiting for it",
        path.display()
    );
    if exclusive {
        lock.lock()
    } else {
        lock.lock_shared()
    }
    .map_err(io_err(path))
}

/// An open node root.
#[derive(Debug)]
pub struct Root {
    path: PathBuf,
    keep: usize,
    recovery: Option<RecoveryReport>,
    _lock: File,
}

impl Root {
    /// Opens (creating if needed) the root at `path` for changes: takes the
    /// exclusive lock, waiting for any other holder, and runs
    /// [`Root::recover`].
    pub fn open(path: &Path) -> Result<Self, RootError> {
        Self::open_with_keep(path, DEFAULT_KEEP)
    }

    /// Like [`Root::open`], keeping `keep` generations (also when the
    /// recovery finishes an interrupted switch).
    pub fn open_with_keep(path: &Path, keep: usize) -> Result<Self, RootError> {
        for sub in ["packages", "generations", "downloads", "state"] {
            let dir = path.join(sub);
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let path = std::fs::canonicalize(path).map_err(io_err(path))?;
        let lock_path = path.join("lock");
        let lock = File::options()
            .create(true)
            .append(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        acquire(&lock, &lock_path, true)?;
        let mut root = Self {
            path,
            keep,
            recovery: None,
            _lock: lock,
        };
        root.recovery = Some(root.recover()?);
        Ok(root)
    }

    /// Opens the root at `path` for reading, under a shared lock (creating
    /// the directory if it is missing, so that it can hold the lock file).
    pub fn open_shared(path: &Path) -> Result<Self, RootError> {
        std::fs::create_dir_all(path).map_err(io_err(path))?;
        let path = std::fs::canonicalize(path).map_err(io_err(path))?;
        let lock_path = path.join("lock");
        let lock = File::options()
            .create(true)
            .append(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        acquire(&lock, &lock_path, false)?;
        Ok(Self {
            path,
            keep: DEFAULT_KEEP,
            recovery: None,
            _lock: lock,
        })
    }

    /// The root directory (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many generations are kept.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// What the recovery at [`Root::open`] did.
    pub fn recovery(&self) -> Option<&RecoveryReport> {
        self.recovery.as_ref()
    }

    pub(crate) fn packages_dir(&self) -> PathBuf {
        self.path.join("packages")
    }

    pub(crate) fn generations_dir(&self) -> PathBuf {
        self.path.join("generations")
    }

    /// The directory of a cached package.
    pub fn package_dir(&self, id: &PackageId) -> PathBuf {
        self.packages_dir().join(id.to_string())
    }

    /// The generation `current` points to.
    pub fn current(&self) -> Option<u64> {
        let target = std::fs::read_link(self.path.join("current")).ok()?;
        target
            .strip_prefix("generations")
            .ok()?
            .to_str()?
            .parse()
            .ok()
    }

    /// The complete generations, ascending.
    pub fn generations(&self) -> Result<Vec<u64>, RootError> {
        let dir = self.generations_dir();
        let mut out: Vec<u64> = read_names(&dir)?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The active set, if any.
    pub fn active(&self) -> Result<Option<SetFile>, RootError> {
        match self.current() {
            Some(n) => Ok(Some(generation::read_set(
                &self.generations_dir().join(n.to_string()),
            )?)),
            None => Ok(None),
        }
    }

    /// The cached packages, sorted, each marked active or not.
    pub fn list(&self) -> Result<Vec<CachedPackage>, RootError> {
        let active = self.active()?.map(|s| s.ids).unwrap_or_default();
        let mut ids: Vec<PackageId> = read_names(&self.packages_dir())?
            .iter()
            .filter(|n| !n.contains(TMP_MARK))
            .filter_map(|n| n.parse().ok())
            .collect();
        ids.sort();
        Ok(ids
            .into_iter()
            .map(|id| CachedPackage {
                active: active.contains(&id),
                id,
            })
            .collect())
    }

    /// Reads the metadata of cached packages and lists their merged files.
    pub fn members(&self, ids: &[PackageId]) -> Result<Vec<Member>, RootError> {
        ids.iter()
            .map(|id| {
                let dir = self.package_dir(id);
                let info = PkgInfo::read_dir(&dir)?;
                let files = generation::merged_files(&dir)?;
                Ok(Member { info, files })
            })
            .collect()
    }

    /// Removes generation `n` atomically: renamed to a temporary name first,
    /// so a crash never leaves a half-deleted generation under its number.
    pub(crate) fn remove_generation(&self, n: u64) -> Result<(), RootError> {
        let gens = self.generations_dir();
        let from = gens.join(n.to_string());
        let to = gens.join(format!("{n}{TMP_MARK}-gc"));
        std::fs::rename(&from, &to).map_err(io_err(&from))?;
        disk::fsync_dir(&gens).map_err(io_err(&gens))?;
        failpoint::hit("gc-partial");
        disk::remove_all(&to).map_err(io_err(&to))
    }

    /// Removes generations beyond the newest `keep` (never the current one).
    pub fn collect_generations(&self, keep: usize) -> Result<Vec<u64>, RootError> {
        let doomed = generations_to_remove(&self.generations()?, self.current(), keep);
        for n in &doomed {
            self.remove_generation(*n)?;
        }
        Ok(doomed)
    }

    /// Points `current` at generation `n` with one rename, and fsyncs.
    pub(crate) fn switch_to(&self, n: u64) -> Result<(), RootError> {
        let tmp = self.path.join(format!("current{TMP_MARK}"));
        disk::remove_all(&tmp).map_err(io_err(&tmp))?;
        std::os::unix::fs::symlink(format!("generations/{n}"), &tmp).map_err(io_err(&tmp))?;
        failpoint::hit("switch-link-created");
        let current = self.path.join("current");
        std::fs::rename(&tmp, &current).map_err(io_err(&current))?;
        failpoint::hit("switch-renamed");
        disk::fsync_dir(&self.path).map_err(io_err(&self.path))?;
        failpoint::hit("switch-synced");
        Ok(())
    }

    /// Switches back to the newest generation older than the current one:
    /// one rename, no download.
    pub fn rollback(&self) -> Result<Switched, RootError> {
        let current = self.current();
        let target = self
            .generations()?
            .into_iter()
            .filter(|n| current.is_some_and(|c| *n < c))
            .max()
            .ok_or(RootError::NoPrevious(current))?;
        let set = generation::read_set(&self.generations_dir().join(target.to_string()))?;
        let entry = journal::Journal {
            operation: Operation::Rollback,
            ids: set.ids.clone(),
            hash: set.hash.clone(),
            from: current,
            to: Some(target),
            step: Step::Switch,
            started: disk::unix_now(),
        };
        journal::write(&self.path, &entry)?;
        self.switch_to(target)?;
        journal::clear(&self.path)?;
        Ok(Switched {
            generation: target,
            previous: current,
            ids: set.ids,
            hash: set.hash,
            changed: true,
            fetched: vec![],
            removed_generations: vec![],
        })
    }
}

/// Names in a directory (empty when it does not exist).
pub(crate) fn read_names(dir: &Path) -> Result<Vec<String>, RootError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_err(dir)(e)),
    };
    entries
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(io_err(dir))
}

/// Which generations to delete: all but the newest `keep`, never `current`.
pub fn generations_to_remove(existing: &[u64], current: Option<u64>, keep: usize) -> Vec<u64> {
    let mut sorted = existing.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let mut doomed: Vec<u64> = sorted
        .into_iter()
        .skip(keep)
        .filter(|n| Some(*n) != current)
        .collect();
    doomed.sort_unstable();
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_collection_keeps_the_newest_and_the_current_generation() {
        type Case = (
            &'static str,
            &'static [u64],
            Option<u64>,
            usize,
            &'static [u64],
        );
        let cases: &[Case] = &[
            ("fewer than keep removes nothing", &[1, 2], Some(2), 3, &[]),
            (
                "the oldest beyond keep go",
                &[1, 2, 3, 4, 5],
                Some(5),
                3,
                &[1, 2],
            ),
            (
                "a rolled-back current is kept even when old",
                &[1, 2, 3, 4, 5],
                Some(1),
                3,
                &[2],
            ),
            (
                "keep zero leaves only the current",
                &[1, 2, 3],
                Some(2),
                0,
                &[1, 3],
            ),
            ("no current removes beyond keep", &[1, 2], None, 1, &[1]),
        ];
        for (name, existing, current, keep, expected) in cases {
            assert_eq!(
                generations_to_remove(existing, *current, *keep),
                expected.to_vec(),
                "{name}"
            );
        }
    }
}
