//! Small durable-filesystem helpers: fsync of files and directories,
//! atomic replacement, and a clock formatted for `set.json`.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Suffix of every temporary name under the root; `recover` removes them.
pub const TMP_MARK: &str = ".tmp";

/// Flushes a directory's entries (new names, renames) to disk.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename,
/// fsync of the directory. Readers see the old or the new contents.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(TMP_MARK);
    let tmp = path.with_file_name(tmp_name);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Writes a new file and fsyncs it (no rename: for files inside a directory
/// that is itself renamed into place).
pub fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create_new(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Removes a file or a whole tree; a missing path is not an error.
pub fn remove_all(path: &Path) -> io::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Flushes everything written to the filesystem holding `path` (syncfs),
/// through coreutils' `sync -f`, which is far cheaper than an fsync per file
/// for a freshly unpacked package. Falls back to a global `sync`.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    let status = std::process::Command::new("sync")
        .arg("-f")
        .arg(path)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => {
            let s = std::process::Command::new("sync").status()?;
            if s.success() {
                Ok(())
            } else {
                Err(io::Error::other("`sync` failed"))
            }
        }
    }
}

/// Up to how many files and directories [`sync_trees`] fsyncs one by one;
/// past that, it flushes the whole filesystem instead.
pub const FSYNC_EACH_UP_TO: usize = 64;

/// Makes everything under `trees` durable: each file and directory fsynced
/// when they are at most [`FSYNC_EACH_UP_TO`] in all (a small package:
/// cheaper than a flush of the whole filesystem, which also writes out
/// whatever else is dirty on it), otherwise [`sync_filesystem`] of `fs`.
pub fn sync_trees(trees: &[&Path], fs: &Path) -> io::Result<()> {
    let mut entries = Vec::new();
    for tree in trees {
        if !collect_entries(tree, &mut entries, FSYNC_EACH_UP_TO)? {
            return sync_filesystem(fs);
        }
    }
    for (path, is_dir) in entries {
        match is_dir {
            true => fsync_dir(&path)?,
            false => File::open(&path)?.sync_all()?,
        }
    }
    Ok(())
}

/// Adds `dir` and what is under it to `entries` (with whether each is a
/// directory; symbolic links are left out: their target is another
/// entry, and their name is in their directory); false as soon as there
/// would be more than `limit`.
fn collect_entries(
    dir: &Path,
    entries: &mut Vec<(std::path::PathBuf, bool)>,
    limit: usize,
) -> io::Result<bool> {
    entries.push((dir.to_owned(), true));
    for entry in std::fs::read_dir(dir)? {
        if entries.len() >= limit {
            return Ok(false);
        }
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if !collect_entries(&entry.path(), entries, limit)? {
                return Ok(false);
            }
        } else if kind.is_file() {
            entries.push((entry.path(), false));
        }
    }
    Ok(entries.len() <= limit)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `secs` since the epoch as RFC 3339 UTC, e.g. `2025-01-31T12:00:00Z`.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn a_small_tree_is_synced_entry_by_entry_and_a_large_one_as_a_filesystem() {
        let tmp = tempfile::tempdir().unwrap();
        let small = tmp.path().join("small");
        std::fs::create_dir_all(small.join("bin")).unwrap();
        std::fs::write(small.join("pkginfo.json"), "{}").unwrap();
        std::fs::write(small.join("bin/run"), "#!/bin/sh").unwrap();
        std::os::unix::fs::symlink("run", small.join("bin/start")).unwrap();
        let mut entries = Vec::new();
        assert!(collect_entries(&small, &mut entries, FSYNC_EACH_UP_TO).unwrap());
        entries.sort();
        let want = [
            (small.clone(), true),
            (small.join("bin"), true),
            (small.join("bin/run"), false),
            (small.join("pkginfo.json"), false),
        ];
        assert_eq!(entries, want, "every directory and file, no link");

        let large = tmp.path().join("large");
        std::fs::create_dir(&large).unwrap();
        for i in 0..FSYNC_EACH_UP_TO {
            std::fs::write(large.join(format!("f{i}")), "x").unwrap();
        }
        let mut entries = Vec::new();
        assert!(!collect_entries(&large, &mut entries, FSYNC_EACH_UP_TO).unwrap());
        assert!(entries.len() <= FSYNC_EACH_UP_TO, "stops at the limit");

        sync_trees(&[&small], tmp.path()).unwrap();
        sync_trees(&[&small, &large], tmp.path()).unwrap();
    }
}
