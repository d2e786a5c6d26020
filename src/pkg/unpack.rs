//! Unpacking hostile archives safely.
//!
//! Every entry is checked before anything touches the disk, and files are
//! written by this module — never by the `tar` crate's `unpack_in` — into a
//! fresh directory that only this code writes to. The module keeps a map of
//! every path it created, so it knows without asking the filesystem that no
//! parent of a new entry is a symlink (an entry `a -> /etc` followed by
//! `a/passwd` is refused), that no entry appears twice, and where every link
//! really points once the whole archive is in.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::codec::Decoder;
use super::paths::{Node, lexical_join, relative_path, stays_inside};

/// Bytes of padding allowed after the end-of-archive marker.
const MAX_TRAILER: u64 = 1 << 20;

/// Caps that stop a hostile archive early.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes the decompressed stream may hold.
    pub max_total_bytes: u64,
    /// Most entries (files, directories, links) in one archive.
    pub max_entries: u64,
    /// Longest entry path or link target, in bytes.
    pub max_path_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_total_bytes: 4 << 30,
            max_entries: 100_000,
            max_path_len: 1024,
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries in the archive.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Files whose setuid or setgid bit was cleared.
    pub setid_cleared: u64,
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry breaks a safety rule.
    #[error("{package}: refused entry {entry:?}: {reason}")]
    Hostile {
        /// The package or archive being unpacked.
        package: String,
        /// The entry path as written in the archive.
        entry: String,
        /// The rule it breaks.
        reason: String,
    },
    /// The archive exceeds a limit.
    #[error(
        "{package}: {what} exceeds the limit of {limit}; the archive is hostile or needs a higher limit"
    )]
    Limit {
        /// The package or archive being unpacked.
        package: String,
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: u64,
    },
    /// The archive is not a valid gzip- or zstd-compressed tar stream.
    #[error("{package}: archive is truncated or corrupt: {source}")]
    Corrupt {
        /// The package or archive being unpacked.
        package: String,
        /// The decoder's error.
        source: io::Error,
    },
    /// Writing to the temporary directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
}

/// Unpacks the gzip- or zstd-compressed tar stream `reader` (told apart by
/// its first bytes) into `dest`, which must not exist yet. On any error `dest` is removed again. `package` names the
/// archive in errors.
pub fn unpack<R: BufRead>(
    reader: R,
    dest: &Path,
    limits: &Limits,
    package: &str,
) -> Result<UnpackStats, UnpackError> {
    std::fs::create_dir(dest).map_err(|source| UnpackError::Io {
        path: dest.to_owned(),
        source,
    })?;
    let result = Unpacker::new(dest, limits, package).run(reader);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

struct Unpacker<'a> {
    dest: &'a Path,
    limits: &'a Limits,
    package: &'a str,
    nodes: HashMap<PathBuf, Node>,
    stats: UnpackStats,
    tripped: Arc<AtomicBool>,
    buf: Vec<u8>,
}

impl<'a> Unpacker<'a> {
    fn new(dest: &'a Path, limits: &'a Limits, package: &'a str) -> Self {
        Self {
            dest,
            limits,
            package,
            nodes: HashMap::new(),
            stats: UnpackStats::default(),
            tripped: Arc::new(AtomicBool::new(false)),
            buf: vec![0; 256 << 10],
        }
    }

    fn run<R: BufRead>(mut self, reader: R) -> Result<UnpackStats, UnpackError> {
        let capped = Capped {
            inner: Decoder::sniff(reader).map_err(|e| self.corrupt(e))?,
            left: self.limits.max_total_bytes,
            tripped: self.tripped.clone(),
        };
        let mut archive = tar::Archive::new(BufReader::with_capacity(256 << 10, capped));
        let entries = archive.entries().map_err(|e| self.corrupt(e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.corrupt(e))?;
            self.entry(entry)?;
        }
        self.check_links()?;
        self.finish_dirs()?;
        let mut rest = archive.into_inner();
        self.drain_trailer(&mut rest)?;
        Ok(self.stats)
    }

    fn corrupt(&self, source: io::Error) -> UnpackError {
        if self.tripped.load(Ordering::Relaxed) {
            return self.limit("decompressed size", self.limits.max_total_bytes);
        }
        UnpackError::Corrupt {
            package: self.package.to_owned(),
            source,
        }
    }

    fn limit(&self, what: &'static str, limit: u64) -> UnpackError {
        UnpackError::Limit {
            package: self.package.to_owned(),
            what,
            limit,
        }
    }

    fn hostile(&self, entry: &[u8], reason: impl Into<String>) -> UnpackError {
        UnpackError::Hostile {
            package: self.package.to_owned(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.into(),
        }
    }

    fn io(&self, rel: &Path) -> impl FnOnce(io::Error) -> UnpackError + use<'_> {
        let path = self.dest.join(rel);
        move |source| UnpackError::Io { path, source }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        use tar::EntryType as T;
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(self.limit("entry count", self.limits.max_entries));
        }
        let kind = entry.header().entry_type();
        if kind == T::XGlobalHeader {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let ustar_size = entry.header().entry_size().map_err(|e| self.corrupt(e))?;
        if entry.size() != ustar_size {
            let msg = format!(
                "PAX size {} disagrees with the header size {ustar_size}",
                entry.size()
            );
            return Err(self.hostile(&raw, msg));
        }
        // Refuse a huge entry from its header, before inflating any of it.
        if entry.size() > self.limits.max_total_bytes.saturating_sub(self.stats.bytes) {
            return Err(self.limit("total size", self.limits.max_total_bytes));
        }
        let Some(rel) = self.entry_path(&raw)? else {
            return match kind {
                T::Directory => Ok(()),
                _ => Err(self.hostile(&raw, "names the archive root")),
            };
        };
        let mode = entry.header().mode().map_err(|e| self.corrupt(e))?;
        match kind {
            T::Directory => self.mkdir(&raw, rel, mode),
            T::Regular | T::Continuous => self.write_file(&raw, rel, mode, &mut entry),
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.symlink(&raw, rel, &target)
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.hard_link(&raw, rel, &target)
            }
            T::Char | T::Block => Err(self.hostile(&raw, "device entries are not allowed")),
            T::Fifo => Err(self.hostile(&raw, "fifo entries are not allowed")),
            other => Err(self.hostile(&raw, format!("unsupported entry type {other:?}"))),
        }
    }

    /// The normalized relative path of an entry, `None` for the root itself.
    fn entry_path(&self, raw: &[u8]) -> Result<Option<PathBuf>, UnpackError> {
        if raw.len() > self.limits.max_path_len {
            return Err(self.limit("path length", self.limits.max_path_len as u64));
        }
        let rel = relative_path(raw).map_err(|reason| self.hostile(raw, reason))?;
        Ok((!rel.as_os_str().is_empty()).then_some(rel))
    }

    /// Makes sure every parent of `rel` is a directory this unpack created,
    /// creating missing ones, and that `rel` itself does not exist yet.
    fn prepare(&mut self, raw: &[u8], rel: &Path) -> Result<(), UnpackError> {
        let mut parent = PathBuf::new();
        let parts: Vec<_> = rel.components().collect();
        for part in &parts[..parts.len() - 1] {
            parent.push(part);
            match self.nodes.get(&parent) {
                Some(Node::Dir { .. }) => {}
                Some(_) => {
                    let why = format!("its parent {} is not a directory", parent.display());
                    return Err(self.hostile(raw, why));
                }
                None => {
                    std::fs::create_dir(self.dest.join(&parent)).map_err(self.io(&parent))?;
                    self.nodes.insert(parent.clone(), Node::Dir { mode: 0o755 });
                }
            }
        }
        if self.nodes.contains_key(rel) {
            return Err(self.hostile(raw, "duplicate entry"));
        }
        Ok(())
    }

    fn mkdir(&mut self, raw: &[u8], rel: PathBuf, mode: u32) -> Result<(), UnpackError> {
        let mode = (mode & 0o777) | 0o700;
        if let Some(Node::Dir { mode: m }) = self.nodes.get_mut(&rel) {
            // Created implicitly for an earlier child; take the stated mode.
            *m = mode;
            return Ok(());
        }
        self.prepare(raw, &rel)?;
        std::fs::create_dir(self.dest.join(&rel)).map_err(self.io(&rel))?;
        self.nodes.insert(rel, Node::Dir { mode });
        Ok(())
    }

    fn write_file(
        &mut self,
        raw: &[u8],
        rel: PathBuf,
        mode: u32,
        data: &mut impl Read,
    ) -> Result<(), UnpackError> {
        self.prepare(raw, &rel)?;
        if mode & 0o6000 != 0 {
            self.stats.setid_cleared += 1;
        }
        let mode = mode & 0o777;
        let path = self.dest.join(&rel);
        // create_new: O_EXCL, so an existing name (or symlink) is never followed.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(self.io(&rel))?;
        loop {
            let n = data.read(&mut self.buf).map_err(|e| self.corrupt(e))?;
            if n == 0 {
                break;
            }
            file.write_all(&self.buf[..n]).map_err(self.io(&rel))?;
            self.stats.bytes += n as u64;
        }
        if mode & 0o022 != 0 {
            // The umask may have taken group or other write bits away.
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(self.io(&rel))?;
        }
        self.nodes.insert(rel, Node::File);
        Ok(())
    }

    fn symlink(&mut self, raw: &[u8], rel: PathBuf, target: &[u8]) -> Result<(), UnpackError> {
        if target.is_empty() || target.len() > self.limits.max_path_len {
            return Err(self.hostile(raw, "symlink target is empty or too long"));
        }
        let target = PathBuf::from(OsStr::from_bytes(target));
        let parent = rel.parent().unwrap_or(Path::new(""));
        if lexical_join(parent, &target).is_none() {
            let why = format!("symlink target {} leaves the package", target.display());
            return Err(self.hostile(raw, why));
        }
        self.prepare(raw, &rel)?;
        std::os::unix::fs::symlink(&target, self.dest.join(&rel)).map_err(self.io(&rel))?;
        self.nodes.insert(rel, Node::Symlink(target));
        Ok(())
    }

    fn hard_link(&mut self, raw: &[u8], rel: PathBuf, target: &[u8]) -> Result<(), UnpackError> {
        let target_rel = relative_path(target)
            .map_err(|r| self.hostile(raw, format!("hard link target: {r}")))?;
        if self.nodes.get(&target_rel) != Some(&Node::File) {
            let why = format!(
                "hard link target {} is not a file earlier in the package",
                String::from_utf8_lossy(target)
            );
            return Err(self.hostile(raw, why));
        }
        self.prepare(raw, &rel)?;
        std::fs::hard_link(self.dest.join(&target_rel), self.dest.join(&rel))
            .map_err(self.io(&rel))?;
        self.nodes.insert(rel, Node::File);
        Ok(())
    }

    /// Resolves every symlink through the links it passes, and refuses any
    /// that ends up outside the package.
    fn check_links(&self) -> Result<(), UnpackError> {
        for (path, node) in &self.nodes {
            if let Node::Symlink(target) = node
                && !stays_inside(&self.nodes, path)
            {
                let why = format!("symlink target {} leaves the package", target.display());
                return Err(self.hostile(path.as_os_str().as_encoded_bytes(), why));
            }
        }
        Ok(())
    }

    fn finish_dirs(&self) -> Result<(), UnpackError> {
        for (path, node) in &self.nodes {
            if let Node::Dir { mode } = node
                && *mode != 0o755
            {
                std::fs::set_permissions(
                    self.dest.join(path),
                    std::fs::Permissions::from_mode(*mode),
                )
                .map_err(self.io(path))?;
            }
        }
        Ok(())
    }

    /// Reads what follows the end-of-archive marker: zero padding of a
    /// bounded size, then the end of the gzip stream (checking its CRC).
    fn drain_trailer(&self, rest: &mut impl Read) -> Result<(), UnpackError> {
        let mut seen = 0u64;
        let mut buf = [0u8; 64 << 10];
        loop {
            let n = rest.read(&mut buf).map_err(|e| self.corrupt(e))?;
            if n == 0 {
                return Ok(());
            }
            seen += n as u64;
            if seen > MAX_TRAILER {
                return Err(self.limit("data after the end of the archive", MAX_TRAILER));
            }
        }
    }
}

/// A reader that fails once more than `left` bytes have passed through it.
struct Capped<R> {
    inner: R,
    left: u64,
    tripped: Arc<AtomicBool>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.tripped.store(true, Ordering::Relaxed);
            return Err(io::Error::other("decompressed size limit reached"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
