//! Directories on the shared filesystem, made and removed for the
//! operator's storage tasks (`spec.storage`): roles' directories,
//! application stages and instance homes.
//!
//! - **Claimed** directories (a stage, an instance's directories) belong
//!   to one object, whose claim (its uid) is in the directory's
//!   [`CLAIM_FILE`]. Such a directory appears whole or not at all: it is
//!   built aside (`.NAME.partial.CLAIM`, with its mode, owner, files and
//!   claim), then renamed into place with `RENAME_NOREPLACE`, so a crash
//!   leaves only the aside copy (removed at the next attempt) and a
//!   directory someone else made meanwhile is never replaced. An existing
//!   directory without the claim is never touched ([`StorageError::Occupied`]).
//!   Removal renames the directory aside first (`.NAME.removing.CLAIM`),
//!   so a half-removed directory is never at its path.
//! - **Unclaimed** directories (a role's) are created when missing and
//!   left as they are when present.
//!
//! Everything here can be done twice: an agent restarted in the middle, or
//! an operator that asks again, finds the work done and reports success.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::api::{ClaimedPath, EnsureDirectory};
use crate::pkg::disk::{fsync_dir, remove_all, write_atomic, write_synced};

/// The file in a claimed directory that names its owner object.
pub const CLAIM_FILE: &str = ".theseus-claim";
/// The file in a directory whose storage task's program succeeded; it
/// holds the task's key, so the program runs once per key.
pub const DONE_FILE: &str = ".theseus-done";

/// Why a storage task failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A directory to create exists and is not the object's.
    #[error(
        "{path} exists and was not created by this object (its {CLAIM_FILE} is {found}); it is left untouched: move it away or choose another id"
    )]
    Occupied {
        /// The directory.
        path: PathBuf,
        /// What its claim file holds, or why there is none.
        found: String,
    },
    /// A directory to remove carries another claim.
    #[error(
        "{path} is not removed: it was not created by this object (its {CLAIM_FILE} is {found})"
    )]
    NotClaimed {
        /// The directory.
        path: PathBuf,
        /// What its claim file holds.
        found: String,
    },
    /// A file-system call failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What the agent tried.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A `${VAR}` the agent has no `--env` for, or an unknown user.
    #[error("{0}")]
    Config(String),
    /// The task's program failed.
    #[error("{0}")]
    Run(String),
    /// The agent does not trust the repository of the task's packages.
    #[error("{0}")]
    Untrusted(String),
    /// A package could not be fetched.
    #[error("{0}")]
    Fetch(String),
}

impl StorageError {
    /// The reason reported in `status.storage[].reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Occupied { .. } => "HomeOccupied",
            Self::NotClaimed { .. } => "NotClaimed",
            Self::Io { .. } => "IoError",
            Self::Config(_) => "InvalidTask",
            Self::Run(_) => "RunFailed",
            Self::Untrusted(_) => super::trust::UNTRUSTED,
            Self::Fetch(_) => "FetchFailed",
        }
    }
}

fn io_err<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> StorageError + 'p {
    move |source| StorageError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The claim of the directory at `path`: `Ok(None)` when it has none.
fn claim_of(path: &Path) -> Result<Option<String>, StorageError> {
    let file = path.join(CLAIM_FILE);
    match fs::read_to_string(&file) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &file)(e)),
    }
}

fn describe(claim: Option<&str>) -> String {
    match claim {
        Some(c) => format!("{c:?}"),
        None => "missing".into(),
    }
}

/// A name next to `path`: `.NAME.WHAT.CLAIM`.
fn beside(path: &Path, what: &str, claim: &str) -> Result<PathBuf, StorageError> {
    let name = path
        .file_name()
        .ok_or_else(|| StorageError::Config(format!("{} has no final name", path.display())))?;
    let safe: String = claim
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    Ok(path.with_file_name(format!(".{}.{what}.{safe}", name.to_string_lossy())))
}

/// Makes the directory `dir` describes (its path already expanded); the
/// directories it created go into `created`.
pub fn ensure(dir: &EnsureDirectory, created: &mut Vec<String>) -> Result<(), StorageError> {
    let path = Path::new(&dir.path);
    if !path.is_absolute() || path.components().any(|c| c.as_os_str() == "..") {
        return Err(StorageError::Config(format!(
            "{} is not an absolute path without '..'",
            dir.path
        )));
    }
    let mode = parse_mode(&dir.mode)?;
    let owner = ids(dir.owner.as_deref(), dir.group.as_deref())?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(io_err("create", parent))?;
    let Some(claim) = dir.claim.as_deref() else {
        if !path.is_dir() {
            match DirBuilder::new().mode(mode).create(path) {
                Ok(()) => {
                    fs::set_permissions(path, Permissions::from_mode(mode))
                        .map_err(io_err("set the mode of", path))?;
                    chown(path, owner)?;
                    created.push(dir.path.clone());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create", path)(e)),
            }
        }
        return write_files(path, dir);
    };
    // Twice at most: a directory that appears between the look and the
    // rename is looked at again.
    for _ in 0..2 {
        if fs::symlink_metadata(path).is_ok() {
            let found = if path.is_dir() {
                claim_of(path)?
            } else {
                Some("(not a directory)".into())
            };
            if found.as_deref() != Some(claim) {
                return Err(StorageError::Occupied {
                    path: path.to_owned(),
                    found: describe(found.as_deref()),
                });
            }
            return write_files(path, dir);
        }
        let partial = beside(path, "partial", claim)?;
        remove_all(&partial).map_err(io_err("remove the leftover", &partial))?;
        DirBuilder::new()
            .mode(mode)
            .create(&partial)
            .map_err(io_err("create", &partial))?;
        write_synced(&partial.join(CLAIM_FILE), format!("{claim}\n").as_bytes())
            .map_err(io_err("write the claim into", &partial))?;
        write_files(&partial, dir)?;
        fs::set_permissions(&partial, Permissions::from_mode(mode))
            .map_err(io_err("set the mode of", &partial))?;
        chown(&partial, owner)?;
        fsync_dir(&partial).map_err(io_err("sync", &partial))?;
        match rename_noreplace(&partial, path) {
            Ok(()) => {
                fsync_dir(parent).map_err(io_err("sync", parent))?;
                created.push(dir.path.clone());
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                remove_all(&partial).map_err(io_err("remove", &partial))?;
            }
            Err(e) => {
                let _ = remove_all(&partial);
                return Err(io_err("rename into place", path)(e));
            }
        }
    }
    Err(StorageError::Occupied {
        path: path.to_owned(),
        found: "(appeared while it was being created)".into(),
    })
}

/// `rename(from, to)` that fails with `AlreadyExists` when `to` exists.
/// Where the filesystem has no `RENAME_NOREPLACE` (some network
/// filesystems), a look then a plain rename: a narrow window, documented.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            if fs::symlink_metadata(to).is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            fs::rename(from, to)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes the files of `dir` into `path`, each replaced whole when it
/// differs.
fn write_files(path: &Path, dir: &EnsureDirectory) -> Result<(), StorageError> {
    for file in &dir.files {
        if file.name.contains('/') || file.name == "." || file.name == ".." {
            return Err(StorageError::Config(format!(
                "file name {:?} must be a plain name",
                file.name
            )));
        }
        let target = path.join(&file.name);
        if fs::read(&target).is_ok_and(|b| b == file.content.as_bytes()) {
            continue;
        }
        write_atomic(&target, file.content.as_bytes()).map_err(io_err("write", &target))?;
    }
    Ok(())
}

/// Removes the directory `p` names (its path already expanded) if it
/// carries the claim; a missing one is already removed. Returns whether
/// it removed anything.
pub fn remove(p: &ClaimedPath) -> Result<bool, StorageError> {
    let path = Path::new(&p.path);
    let removing = beside(path, "removing", &p.claim)?;
    remove_all(&removing).map_err(io_err("remove", &removing))?;
    if fs::symlink_metadata(path).is_err() {
        return Ok(false);
    }
    let found = claim_of(path)?;
    if found.as_deref() != Some(p.claim.as_str()) {
        return Err(StorageError::NotClaimed {
            path: path.to_owned(),
            found: describe(found.as_deref()),
        });
    }
    fs::rename(path, &removing).map_err(io_err("move aside", path))?;
    remove_all(&removing).map_err(io_err("remove", &removing))?;
    Ok(true)
}

/// Whether the program of the task `key` already succeeded in `dir`.
pub fn done(dir: &Path, key: &str) -> bool {
    fs::read_to_string(dir.join(DONE_FILE)).is_ok_and(|k| k.trim() == key)
}

/// Records that the program of the task `key` succeeded in `dir`.
pub fn mark_done(dir: &Path, key: &str) -> Result<(), StorageError> {
    let file = dir.join(DONE_FILE);
    write_atomic(&file, format!("{key}\n").as_bytes()).map_err(io_err("write", &file))
}

fn parse_mode(text: &str) -> Result<u32, StorageError> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| StorageError::Config(format!("mode {text:?} is not octal")))
}

/// Owner and group ids from names or numbers.
type Ids = (Option<u32>, Option<u32>);

fn ids(owner: Option<&str>, group: Option<&str>) -> Result<Ids, StorageError> {
    Ok((
        owner
            .map(|o| lookup("/etc/passwd", o, "user"))
            .transpose()?,
        group
            .map(|g| lookup("/etc/group", g, "group"))
            .transpose()?,
    ))
}

/// A numeric id as it is, else the id of `name` in `file` (`passwd` or
/// `group` format: `name:x:id:…`).
fn lookup(file: &str, name: &str, what: &str) -> Result<u32, StorageError> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let text = fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let n = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            (n == name).then_some(id)
        })
        .next()
        .ok_or_else(|| {
            StorageError::Config(format!(
                "{what} {name:?} is not in {file}; use a numeric id for users of a directory service"
            ))
        })
}

fn chown(path: &Path, (owner, group): Ids) -> Result<(), StorageError> {
    if owner.is_none() && group.is_none() {
        return Ok(());
    }
    std::os::unix::fs::chown(path, owner, group).map_err(io_err("change the owner of", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::StorageFile;

    fn claimed(path: &Path, claim: &str) -> EnsureDirectory {
        EnsureDirectory {
            path: path.display().to_string(),
            mode: "0750".into(),
            claim: Some(claim.into()),
            files: vec![StorageFile {
                name: "env.sh".into(),
                content: "export APP=spark\n".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_claimed_directory_is_made_whole_with_its_mode_files_and_claim() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("apps/prod/spark/fw");
        let mut created = Vec::new();
        ensure(&claimed(&home, "uid-1"), &mut created).unwrap();
        assert_eq!(created, vec![home.display().to_string()]);
        let mode = fs::metadata(&home).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750);
        assert_eq!(
            fs::read_to_string(home.join("env.sh")).unwrap(),
            "export APP=spark\n"
        );
        assert_eq!(claim_of(&home).unwrap().as_deref(), Some("uid-1"));
        let names: Vec<_> = fs::read_dir(home.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["fw"], "no partial copy is left beside it");

        // Again: nothing is created, a changed file is replaced.
        let mut again = claimed(&home, "uid-1");
        again.files[0].content = "export APP=spark2\n".into();
        let mut created = Vec::new();
        ensure(&again, &mut created).unwrap();
        assert!(created.is_empty());
        assert_eq!(
            fs::read_to_string(home.join("env.sh")).unwrap(),
            "export APP=spark2\n"
        );
    }

    #[test]
    fn an_existing_directory_of_another_claim_or_none_is_never_touched() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("fw");
        fs::create_dir(&home).unwrap();
        fs::write(home.join("data"), "precious").unwrap();
        let err = ensure(&claimed(&home, "uid-1"), &mut Vec::new()).unwrap_err();
        assert_eq!(err.reason(), "HomeOccupied");
        assert!(err.to_string().contains("missing"), "{err}");
        assert_eq!(fs::read_to_string(home.join("data")).unwrap(), "precious");
        assert!(!home.join("env.sh").exists());

        fs::write(home.join(CLAIM_FILE), "uid-2\n").unwrap();
        let err = ensure(&claimed(&home, "uid-1"), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("uid-2"), "{err}");
        let err = remove(&ClaimedPath {
            path: home.display().to_string(),
            claim: "uid-1".into(),
        })
        .unwrap_err();
        assert_eq!(err.reason(), "NotClaimed");
        assert!(home.join("data").exists());
    }

    #[test]
    fn a_partial_copy_left_by_a_crash_is_replaced_and_never_seen_at_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("fw");
        let partial = beside(&home, "partial", "uid-1").unwrap();
        fs::create_dir(&partial).unwrap();
        fs::write(partial.join("half"), "x").unwrap();
        ensure(&claimed(&home, "uid-1"), &mut Vec::new()).unwrap();
        assert!(!partial.exists());
        assert!(!home.join("half").exists());
        assert!(home.join("env.sh").exists());
    }

    #[test]
    fn removal_takes_only_the_claimed_directory_and_can_be_repeated() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("fw");
        ensure(&claimed(&home, "uid-1"), &mut Vec::new()).unwrap();
        let p = ClaimedPath {
            path: home.display().to_string(),
            claim: "uid-1".into(),
        };
        // A crash after the move aside left a copy; it goes too.
        let removing = beside(&home, "removing", "uid-1").unwrap();
        fs::create_dir(&removing).unwrap();
        assert!(remove(&p).unwrap());
        assert!(!home.exists());
        assert!(!removing.exists());
        assert!(!remove(&p).unwrap(), "a second removal finds nothing");
    }

    #[test]
    fn an_unclaimed_directory_is_made_when_missing_and_kept_when_present() {
        let tmp = tempfile::tempdir().unwrap();
        let role = tmp.path().join("apps/prod");
        let dir = EnsureDirectory {
            path: role.display().to_string(),
            mode: "0770".into(),
            ..Default::default()
        };
        let mut created = Vec::new();
        ensure(&dir, &mut created).unwrap();
        assert_eq!(created.len(), 1);
        assert_eq!(
            fs::metadata(&role).unwrap().permissions().mode() & 0o7777,
            0o770
        );
        fs::set_permissions(&role, Permissions::from_mode(0o700)).unwrap();
        let mut created = Vec::new();
        ensure(&dir, &mut created).unwrap();
        assert!(created.is_empty());
        assert_eq!(
            fs::metadata(&role).unwrap().permissions().mode() & 0o7777,
            0o700,
            "an existing role directory is left as it is"
        );
    }

    #[test]
    fn bad_paths_modes_and_users_are_refused_before_anything_is_made() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = claimed(&tmp.path().join("a/../b"), "u");
        assert_eq!(
            ensure(&dir, &mut Vec::new()).unwrap_err().reason(),
            "InvalidTask"
        );
        dir.path = tmp.path().join("b").display().to_string();
        dir.mode = "999".into();
        assert_eq!(
            ensure(&dir, &mut Vec::new()).unwrap_err().reason(),
            "InvalidTask"
        );
        dir.mode = "0700".into();
        dir.owner = Some("no-such-user-here".into());
        let err = ensure(&dir, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("numeric id"), "{err}");
        assert!(!tmp.path().join("b").exists());
    }
}
