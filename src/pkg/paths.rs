//! Path rules for archive entries: normalization, and where symlinks
//! really point once every link on the way is followed.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed while resolving one path before giving up.
const MAX_LINK_HOPS: usize = 40;

/// What the unpacker created at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// A directory, with the mode to give it at the end.
    Dir { mode: u32 },
    /// A regular file (or a hard link to one).
    File,
    /// A symlink and its target.
    Symlink(PathBuf),
}

/// Turns an entry path into a normalized relative path, refusing absolute
/// paths and `..`.
pub(crate) fn relative_path(raw: &[u8]) -> Result<PathBuf, String> {
    if raw.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) if p.len() > 255 => {
                return Err("a path component exceeds 255 bytes".into());
            }
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains '..'".into()),
            Component::RootDir | Component::Prefix(_) => return Err("path is absolute".into()),
        }
    }
    Ok(out)
}

/// Joins a relative `target` to `base` without touching the disk; `None` if
/// it is absolute or climbs above the package root.
pub(crate) fn lexical_join(base: &Path, target: &Path) -> Option<Vec<OsString>> {
    let mut parts: Vec<OsString> = base.iter().map(|p| p.to_owned()).collect();
    for part in target.components() {
        match part {
            Component::Normal(p) => parts.push(p.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts)
}

/// Follows the symlink at `link` through every link on its way, as the
/// kernel would, and tells whether it stays inside the package.
pub(crate) fn stays_inside(nodes: &HashMap<PathBuf, Node>, link: &Path) -> bool {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut todo: Vec<OsString> = link.iter().rev().map(|p| p.to_owned()).collect();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        match part.to_str() {
            Some(".") => continue,
            Some("..") => {
                if resolved.pop().is_none() {
                    return false;
                }
                continue;
            }
            _ => {}
        }
        resolved.push(part);
        let here: PathBuf = resolved.iter().collect();
        if let Some(Node::Symlink(target)) = nodes.get(&here) {
            hops += 1;
            if hops > MAX_LINK_HOPS || target.is_absolute() {
                return false;
            }
            resolved.pop();
            todo.extend(target.iter().rev().map(|p| p.to_owned()));
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_normalized_or_refused() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("a/b", Ok("a/b")),
            ("./a//b/", Ok("a/b")),
            ("./", Ok("")),
            ("../x", Err("'..'")),
            ("a/../../x", Err("'..'")),
            ("/etc/x", Err("absolute")),
        ];
        for (raw, expected) in cases {
            let got = relative_path(raw.as_bytes());
            match expected {
                Ok(p) => assert_eq!(got.unwrap(), Path::new(p), "{raw}"),
                Err(e) => assert!(got.unwrap_err().contains(e), "{raw}"),
            }
        }
    }

    #[test]
    fn links_are_followed_through_other_links() {
        let mut nodes = HashMap::new();
        nodes.insert(PathBuf::from("s"), Node::Dir { mode: 0o755 });
        nodes.insert(PathBuf::from("s/t"), Node::Symlink("..".into()));
        nodes.insert(PathBuf::from("u"), Node::Symlink("s/t/..".into()));
        nodes.insert(PathBuf::from("ok"), Node::Symlink("s/t/s".into()));
        nodes.insert(PathBuf::from("loop"), Node::Symlink("loop".into()));
        assert!(stays_inside(&nodes, Path::new("s/t")));
        assert!(stays_inside(&nodes, Path::new("ok")));
        assert!(
            !stays_inside(&nodes, Path::new("u")),
            "u escapes through s/t"
        );
        assert!(!stays_inside(&nodes, Path::new("loop")));
    }

    #[test]
    fn lexical_joins_refuse_climbing_above_the_root() {
        assert!(lexical_join(Path::new("a/b"), Path::new("../c")).is_some());
        assert!(lexical_join(Path::new("a"), Path::new("../../c")).is_none());
        assert!(lexical_join(Path::new(""), Path::new("/etc")).is_none());
    }
}
