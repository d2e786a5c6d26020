//! Generations: complete active trees under `generations/N/`.
//!
//! ```text
//! generations/N/active/NAME -> ../../../packages/ID
//! generations/N/bin/tool    -> ../active/NAME/bin/tool     (likewise lib/, etc/;
//!                                 a directory only one package uses is one link)
//! generations/N/etc/app.conf  a file, mode 0600, where the package's file
//!                              refers to secrets (see [`super::secrets`])
//! generations/N/set.json       {"generation", "ids", "hash", "time", "resolved"}
//! generations/N/environment    KEY=VALUE lines for services (systemd EnvironmentFile)
//! ```
//!
//! A generation is built under a temporary name, fsynced in full and only
//! then renamed to `N`: a directory named by a number is always complete.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::disk::{self, TMP_MARK};
use super::failpoint;
use super::id::PackageId;
use super::secrets::SecretValues;
use super::set::{Member, set_hash};

/// The directories merged from every active package.
pub const MERGED_DIRS: &[&str] = &["bin", "lib", "etc"];
/// The set description inside a generation.
pub const SET_FILE: &str = "set.json";
/// The environment file inside a generation.
pub const ENV_FILE: &str = "environment";

/// Errors from building or reading a generation.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// `set.json` is unreadable.
    #[error(
        "{path}: not a valid set.json ({message}); the generation is damaged, roll back or activate again"
    )]
    BadSetFile {
        /// The file.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
    /// A file refers to secrets the target gives no value for.
    #[error(
        "{file} of package {package} refers to the secret parameter(s) {}, which the node's target gives no Secret for; add them to the valuesFrom of the ConfigBundle that renders {package}",
        parameters.join(", ")
    )]
    UnresolvedSecret {
        /// The package.
        package: PackageId,
        /// The file, relative to the package.
        file: String,
        /// The parameters without a value.
        parameters: Vec<String>,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GenerationError + '_ {
    move |source| GenerationError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The contents of `set.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetFile {
    /// The generation number.
    pub generation: u64,
    /// The active ids, sorted.
    pub ids: Vec<PackageId>,
    /// [`set_hash`] of the ids.
    pub hash: String,
    /// When the generation was built (RFC 3339, UTC).
    pub time: String,
    /// The merged files that are resolved copies (secrets filled in, mode
    /// 0600) instead of links, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved: Vec<String>,
}

/// Reads `set.json` of the generation directory `dir`.
pub fn read_set(dir: &Path) -> Result<SetFile, GenerationError> {
    let path = dir.join(SET_FILE);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    serde_json::from_slice(&bytes).map_err(|e| GenerationError::BadSetFile {
        path,
        message: e.to_string(),
    })
}

/// The leaves a package contributes to the merged directories, e.g.
/// `bin/tool` or `lib/x/libx.so`, sorted.
pub fn merged_files(package_dir: &Path) -> Result<Vec<String>, GenerationError> {
    let mut out = Vec::new();
    for top in MERGED_DIRS {
        let dir = package_dir.join(top);
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            walk_leaves(&dir, top, &mut out)?;
        }
    }
    out.sort();
    Ok(out)
}

fn walk_leaves(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), GenerationError> {
    for item in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let item = item.map_err(io_err(dir))?;
        let name = item.file_name().to_string_lossy().into_owned();
        let child_rel = format!("{rel}/{name}");
        if item.file_type().map_err(io_err(dir))?.is_dir() {
            walk_leaves(&item.path(), &child_rel, out)?;
        } else {
            out.push(child_rel);
        }
    }
    Ok(())
}

/// The target of `active/NAME` for `id`.
pub fn active_target(id: &PackageId) -> PathBuf {
    PathBuf::from(format!("../../../packages/{id}"))
}

/// The target of the merged link at `rel` (e.g. `lib/x/y.so`) provided by
/// the package named `name`.
pub fn merged_target(rel: &str, name: &str) -> PathBuf {
    let depth = rel.matches('/').count();
    PathBuf::from(format!("{}active/{name}/{rel}", "../".repeat(depth)))
}

/// What a generation should contain: the merged links, by path. Where a
/// whole directory comes from one package, it is one link to that
/// directory (tree folding, as GNU Stow does), so a package of 20,000
/// files under `lib/app/` costs one link, not 20,000. The top-level
/// `bin/`, `lib/` and `etc/` are always real directories. The `resolved`
/// files are not links, and no directory above one is folded.
pub fn expected_links(
    members: &[Member],
    resolved: &BTreeSet<String>,
) -> BTreeMap<String, PathBuf> {
    // For every directory below the top level: its only owner, or None
    // when several packages put something under it.
    let mut owners: HashMap<&str, Option<&str>> = HashMap::new();
    for m in members {
        let name = m.info.id.name();
        for rel in &m.files {
            for dir in folded_ancestors(rel) {
                owners
                    .entry(dir)
                    .and_modify(|o| {
                        if *o != Some(name) {
                            *o = None;
                        }
                    })
                    .or_insert(Some(name));
            }
        }
    }
    for rel in resolved {
        for dir in folded_ancestors(rel) {
            owners.insert(dir, None);
        }
    }
    let mut links = BTreeMap::new();
    for m in members {
        let name = m.info.id.name();
        for rel in m.files.iter().filter(|r| !resolved.contains(*r)) {
            let at = folded_ancestors(rel)
                .find(|dir| owners.get(dir) == Some(&Some(name)))
                .unwrap_or(rel);
            links.insert(at.to_owned(), merged_target(at, name));
        }
    }
    links
}

/// The directories above `rel` that may be folded, shallowest first:
/// for `lib/a/b/c.so`, `lib/a` then `lib/a/b`.
fn folded_ancestors(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/').skip(1).map(move |(i, _)| &rel[..i])
}

/// A merged file with its secrets filled in.
struct Resolved {
    text: zeroize::Zeroizing<String>,
    /// 0600, or 0700 when the package's file is executable.
    mode: u32,
}

/// The merged files of `members` that hold secret references, resolved
/// with `secrets`, by path (only packages `secrets` names are read).
fn resolve_secrets(
    root: &Path,
    members: &[Member],
    secrets: &SecretValues,
) -> Result<BTreeMap<String, Resolved>, GenerationError> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    for m in members
        .iter()
        .filter(|m| secrets.has_package(m.info.id.name()))
    {
        let dir = root.join("packages").join(m.info.id.to_string());
        for rel in &m.files {
            let path = dir.join(rel);
            // Only the package's own files: a link is never followed.
            let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
            if !meta.is_file() {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            match secrets.resolve(m.info.id.name(), text) {
                Ok(Some(text)) => {
                    let exec = meta.permissions().mode() & 0o100 != 0;
                    let mode = if exec { 0o700 } else { 0o600 };
                    out.insert(rel.clone(), Resolved { text, mode });
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(GenerationError::UnresolvedSecret {
                        package: m.info.id.clone(),
                        file: rel.clone(),
                        parameters: e.parameters,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Writes `bytes` to a new file of `mode`, which gives nothing to group or
/// others (the file is never, not even for a moment, readable by anyone
/// else), and syncs it.
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o700)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Builds `generations/number` under `root` for `members` (already
/// validated as a set), with the files that refer to secrets resolved
/// from `secrets`, fsyncs it, and renames it into place.
pub fn build(
    root: &Path,
    number: u64,
    members: &[Member],
    secrets: &SecretValues,
    time: u64,
) -> Result<PathBuf, GenerationError> {
    let resolved = resolve_secrets(root, members, secrets)?;
    let resolved_paths: BTreeSet<String> = resolved.keys().cloned().collect();
    let gens = root.join("generations");
    let tmp = gens.join(format!("{number}{TMP_MARK}"));
    disk::remove_all(&tmp).map_err(io_err(&tmp))?;
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut mkdir = |p: PathBuf| -> Result<(), GenerationError> {
        if dirs.insert(p.clone()) {
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(())
    };
    mkdir(tmp.clone())?;
    mkdir(tmp.join("active"))?;
    for top in MERGED_DIRS {
        mkdir(tmp.join(top))?;
    }
    for m in members {
        let link = tmp.join("active").join(m.info.id.name());
        std::os::unix::fs::symlink(active_target(&m.info.id), &link).map_err(io_err(&link))?;
    }
    failpoint::hit("generation-partial");
    for (rel, target) in expected_links(members, &resolved_paths) {
        let link = tmp.join(&rel);
        mkdir(
            link.parent()
                .expect("a merged path has a parent")
                .to_owned(),
        )?;
        std::os::unix::fs::symlink(&target, &link).map_err(io_err(&link))?;
    }
    for (rel, file_of) in &resolved {
        let file = tmp.join(rel);
        mkdir(
            file.parent()
                .expect("a merged path has a parent")
                .to_owned(),
        )?;
        write_private(&file, file_of.text.as_bytes(), file_of.mode).map_err(io_err(&file))?;
    }
    let ids: Vec<PackageId> = sorted_ids(members);
    let resolved: Vec<String> = resolved_paths.into_iter().collect();
    write_metadata(root, &tmp, number, &ids, &resolved, time)?;
    for dir in &dirs {
        disk::fsync_dir(dir).map_err(io_err(dir))?;
    }
    failpoint::hit("generation-built");
    let dest = gens.join(number.to_string());
    std::fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
    disk::fsync_dir(&gens).map_err(io_err(&gens))?;
    failpoint::hit("generation-renamed");
    Ok(dest)
}

fn sorted_ids(members: &[Member]) -> Vec<PackageId> {
    let mut ids: Vec<PackageId> = members.iter().map(|m| m.info.id.clone()).collect();
    ids.sort();
    ids
}

fn write_metadata(
    root: &Path,
    dir: &Path,
    number: u64,
    ids: &[PackageId],
    resolved: &[String],
    time: u64,
) -> Result<(), GenerationError> {
    let hash = set_hash(ids);
    let set = SetFile {
        generation: number,
        ids: ids.to_vec(),
        hash: hash.clone(),
        time: disk::rfc3339(time),
        resolved: resolved.to_vec(),
    };
    let mut json = serde_json::to_vec_pretty(&set).expect("a set file always serializes");
    json.push(b'\n');
    let set_path = dir.join(SET_FILE);
    disk::write_synced(&set_path, &json).map_err(io_err(&set_path))?;
    let env_path = dir.join(ENV_FILE);
    disk::write_synced(&env_path, environment(root, number, &hash).as_bytes())
        .map_err(io_err(&env_path))
}

/// The environment file of a generation: where the active tree is.
pub fn environment(root: &Path, number: u64, hash: &str) -> String {
    let current = root.join("current");
    let c = current.display();
    format!(
        "THESEUS_ROOT={}\nTHESEUS_GENERATION={number}\nTHESEUS_SET_HASH={hash}\n\
         PATH={c}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         LD_LIBRARY_PATH={c}/lib\n",
        root.display()
    )
}

/// Compares the generation directory `dir` with what `members` say it
/// should hold; returns one line per problem.
pub fn verify(dir: &Path, set: &SetFile, members: &[Member]) -> Vec<String> {
    let mut problems = Vec::new();
    let ids = sorted_ids(members);
    if set.ids != ids || set.hash != set_hash(&ids) {
        problems.push(format!(
            "{}: ids or hash do not match the packages",
            dir.join(SET_FILE).display()
        ));
    }
    for m in members {
        let link = dir.join("active").join(m.info.id.name());
        if std::fs::read_link(&link).ok() != Some(active_target(&m.info.id)) {
            problems.push(format!(
                "{}: should link to {}",
                link.display(),
                active_target(&m.info.id).display()
            ));
        }
    }
    let resolved: BTreeSet<String> = set.resolved.iter().cloned().collect();
    let expected = expected_links(members, &resolved);
    let mut found = Vec::new();
    for top in MERGED_DIRS {
        let _ = walk_leaves(&dir.join(top), top, &mut found);
    }
    for rel in &found {
        let link = dir.join(rel);
        if resolved.contains(rel) {
            if !is_private_file(&link) {
                problems.push(format!(
                    "{}: should be a file readable by its owner only (secrets resolved)",
                    link.display()
                ));
            }
            continue;
        }
        match expected.get(rel) {
            None => problems.push(format!(
                "{}: not provided by any active package",
                link.display()
            )),
            Some(target) if std::fs::read_link(&link).ok().as_ref() != Some(target) => problems
                .push(format!(
                    "{}: should link to {}",
                    link.display(),
                    target.display()
                )),
            Some(target)
                if std::fs::symlink_metadata(link.parent().unwrap_or(dir).join(target))
                    .is_err() =>
            {
                problems.push(format!("{}: points to nothing", link.display()))
            }
            Some(_) => {}
        }
    }
    for rel in expected
        .keys()
        .chain(&resolved)
        .filter(|r| !found.contains(r))
    {
        problems.push(format!("{}: missing", dir.join(rel).display()));
    }
    problems
}

fn is_private_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o077 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, files: &[&str]) -> Member {
        crate::pkg::set::tests::member(id, &[], files)
    }

    #[test]
    fn directories_used_by_one_package_fold_into_one_link() {
        let members = [
            member(
                "a--1",
                &["bin/a", "lib/a/x/1.so", "lib/a/x/2.so", "lib/shared/a.so"],
            ),
            member("b--1", &["bin/b", "lib/shared/b.so", "lib/shared/sub/b.so"]),
        ];
        let links = expected_links(&members, &BTreeSet::new());
        let expected: &[(&str, &str)] = &[
            ("bin/a", "../active/a/bin/a"),
            ("bin/b", "../active/b/bin/b"),
            ("lib/a", "../active/a/lib/a"),
            ("lib/shared/a.so", "../../active/a/lib/shared/a.so"),
            ("lib/shared/b.so", "../../active/b/lib/shared/b.so"),
            ("lib/shared/sub", "../../active/b/lib/shared/sub"),
        ];
        let got: Vec<(&str, String)> = links
            .iter()
            .map(|(k, v)| (k.as_str(), v.display().to_string()))
            .collect();
        let want: Vec<(&str, String)> = expected.iter().map(|(k, v)| (*k, v.to_string())).collect();
        assert_eq!(got, want);
    }

    /// A root holding the package `id` with `files` (path, content).
    fn root_with(id: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, Member) {
        let dir = tempfile::tempdir().unwrap();
        for (rel, content) in files {
            let path = dir.path().join("packages").join(id).join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("generations")).unwrap();
        let rels: Vec<&str> = files.iter().map(|(r, _)| *r).collect();
        (dir, member(id, &rels))
    }

    fn secrets(package: &str, parameter: &str, value: &str) -> SecretValues {
        let mut v = SecretValues::default();
        v.insert(package, parameter, zeroize::Zeroizing::new(value.into()));
        v
    }

    #[test]
    fn a_file_with_secret_references_is_resolved_private_and_the_rest_stay_links() {
        use std::os::unix::fs::PermissionsExt;
        let id = "web-config--cfg.0123456789abcdef";
        let (root, m) = root_with(
            id,
            &[
                ("etc/web/token", "token = ${secret:apiToken}\n"),
                ("etc/web/web.conf", "port = 80\n"),
                (
                    "bin/login",
                    "#!/bin/sh\ncurl -H 'Token: ${secret:apiToken}' \"$@\"\n",
                ),
            ],
        );
        let script = root.path().join("packages").join(id).join("bin/login");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let members = [m];
        let values = secrets("web-config", "apiToken", "VALUE");
        let dir = build(root.path(), 1, &members, &values, 0).unwrap();
        let token = dir.join("etc/web/token");
        let meta = std::fs::symlink_metadata(&token).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&token).unwrap(), "token = VALUE\n");
        // An executable keeps its owner's execute bit, and only that.
        let login = std::fs::symlink_metadata(dir.join("bin/login")).unwrap();
        assert_eq!(login.permissions().mode() & 0o777, 0o700);
        // etc/web is not folded into one link: it holds the resolved file.
        assert!(
            std::fs::symlink_metadata(dir.join("etc/web"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(
            std::fs::read_link(dir.join("etc/web/web.conf")).unwrap(),
            merged_target("etc/web/web.conf", "web-config")
        );
        // The package keeps its reference.
        let cached = root.path().join("packages").join(id).join("etc/web/token");
        assert!(
            std::fs::read_to_string(cached)
                .unwrap()
                .contains("${secret:apiToken}")
        );
        let set = read_set(&dir).unwrap();
        assert_eq!(set.resolved, ["bin/login", "etc/web/token"]);
        assert_eq!(verify(&dir, &set, &members), Vec::<String>::new());
        // A resolved file others may read, or one replaced by a link, is a
        // problem.
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(verify(&dir, &set, &members).len(), 1);
    }

    #[test]
    fn a_reference_without_a_value_fails_the_build_and_leaves_nothing() {
        let id = "web-config--cfg.0123456789abcdef";
        let (root, m) = root_with(
            id,
            &[("etc/web/token", "${secret:apiToken} ${secret:other}")],
        );
        let members = [m];
        let err = build(
            root.path(),
            1,
            &members,
            &secrets("web-config", "apiToken", "VALUE"),
            0,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("etc/web/token") && text.contains("other") && text.contains(id),
            "{text}"
        );
        assert!(!text.contains("VALUE"), "{text}");
        assert_eq!(
            std::fs::read_dir(root.path().join("generations"))
                .unwrap()
                .count(),
            0
        );
        // Packages that no value names are not resolved: their references
        // stay as they are, and the file stays a link.
        let dir = build(root.path(), 1, &members, &SecretValues::default(), 0).unwrap();
        assert!(
            std::fs::symlink_metadata(dir.join("etc/web"))
                .unwrap()
                .is_symlink()
        );
    }
}
