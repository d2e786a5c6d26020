//! `theseus pkg build`: a directory with `pkginfo.json` becomes `ID.tar.gz`
//! (or `ID.tar.zst` with [`Codec::Zstd`]).
//!
//! The archive is deterministic: entries sorted by name, mtime 0, owner and
//! group 0 with empty names, modes normalized to 0755/0644, and a gzip header
//! without a name or time (zstd: one frame at a fixed level, with its
//! checksum) — the same directory always gives the same bytes.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

use super::codec::Codec;
use super::pkginfo::{PkgInfo, PkgInfoError};

/// The zstd level of built archives: zstd's default, a good ratio at a
/// speed near gzip's fastest.
const ZSTD_LEVEL: i32 = 3;

/// Errors from building a package archive.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `pkginfo.json` is missing or invalid.
    #[error(transparent)]
    PkgInfo(#[from] PkgInfoError),
    /// A listed systemd unit is not in the directory.
    #[error(
        "{dir}: systemd unit {unit} is listed in pkginfo.json but systemd/{unit} does not exist"
    )]
    MissingUnit {
        /// The package directory.
        dir: PathBuf,
        /// The unit file name.
        unit: String,
    },
    /// The directory holds something a package cannot carry.
    #[error("{path}: {what}; packages hold only files, directories and relative symlinks")]
    Unsupported {
        /// The offending path.
        path: PathBuf,
        /// What it is.
        what: String,
    },
    /// Reading the input or writing the archive failed.
    #[error("{path}: {source}")]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
}

/// A built package archive.
#[derive(Debug, Clone)]
pub struct Built {
    /// The package metadata.
    pub info: PkgInfo,
    /// Where the archive was written (`OUTDIR/ID.tar.gz` or `.tar.zst`).
    pub path: PathBuf,
    /// The sha256 of the archive, in hex.
    pub sha256: String,
    /// The archive size in bytes.
    pub size: u64,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Builds `out_dir/ID.tar.gz` from `dir`, where ID is `pkginfo.json`'s `id`.
pub fn build(dir: &Path, out_dir: &Path) -> Result<Built, BuildError> {
    build_with(dir, out_dir, Codec::Gzip)
}

/// Builds `out_dir/ID.tar.gz` or `out_dir/ID.tar.zst` from `dir`, by `codec`.
pub fn build_with(dir: &Path, out_dir: &Path, codec: Codec) -> Result<Built, BuildError> {
    let info = PkgInfo::read_dir(dir)?;
    for unit in &info.systemd_units {
        if !dir.join("systemd").join(unit).is_file() {
            return Err(BuildError::MissingUnit {
                dir: dir.to_owned(),
                unit: unit.clone(),
            });
        }
    }
    let mut entries = Vec::new();
    walk(dir, Path::new(""), &mut entries)?;

    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let suffix = codec.suffix();
    let path = out_dir.join(format!("{}{suffix}", info.id));
    let tmp = out_dir.join(format!(".{}{suffix}.tmp", info.id));
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        size: 0,
    };
    let mut hashing = match codec {
        Codec::Gzip => {
            let gz = GzBuilder::new()
                .mtime(0)
                .write(hashing, Compression::default());
            let gz = write_tar(gz, dir, &entries, &tmp)?;
            gz.finish().map_err(io_err(&tmp))?
        }
        Codec::Zstd => {
            let mut zst =
                zstd::stream::write::Encoder::new(hashing, ZSTD_LEVEL).map_err(io_err(&tmp))?;
            zst.include_checksum(true).map_err(io_err(&tmp))?;
            let zst = write_tar(zst, dir, &entries, &tmp)?;
            zst.finish().map_err(io_err(&tmp))?
        }
    };
    hashing.inner.flush().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(Built {
        info,
        path,
        sha256: hex::encode(hashing.hasher.finalize()),
        size: hashing.size,
    })
}

/// Writes the tar stream of `entries` of `dir` into `out`; returns `out`.
fn write_tar<W: Write>(
    out: W,
    dir: &Path,
    entries: &[PathBuf],
    tmp: &Path,
) -> Result<W, BuildError> {
    let mut tar = tar::Builder::new(out);
    for rel in entries {
        append(&mut tar, dir, rel)?;
    }
    tar.into_inner().map_err(io_err(tmp))
}

/// Collects relative paths under `dir/rel`, parents before children, sorted.
fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), BuildError> {
    let here = dir.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&here)
        .map_err(io_err(&here))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err(&here))?;
    names.sort();
    for name in names {
        let child = rel.join(&name);
        let meta = std::fs::symlink_metadata(dir.join(&child)).map_err(io_err(&child))?;
        out.push(child.clone());
        if meta.is_dir() {
            walk(dir, &child, out)?;
        }
    }
    Ok(())
}

fn append<W: Write>(tar: &mut tar::Builder<W>, dir: &Path, rel: &Path) -> Result<(), BuildError> {
    let full = dir.join(rel);
    let meta = std::fs::symlink_metadata(&full).map_err(io_err(&full))?;
    let mut header = tar::Header::new_gnu();
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    let kind = meta.file_type();
    if kind.is_dir() {
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        tar.append_data(&mut header, rel, io::empty())
            .map_err(io_err(&full))
    } else if kind.is_file() {
        use std::os::unix::fs::PermissionsExt;
        let exec = meta.permissions().mode() & 0o111 != 0;
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(if exec { 0o755 } else { 0o644 });
        header.set_size(meta.len());
        let file = File::open(&full).map_err(io_err(&full))?;
        tar.append_data(&mut header, rel, file)
            .map_err(io_err(&full))
    } else if kind.is_symlink() {
        let target = std::fs::read_link(&full).map_err(io_err(&full))?;
        if target.is_absolute() {
            return Err(BuildError::Unsupported {
                path: full,
                what: format!("absolute symlink to {}", target.display()),
            });
        }
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        tar.append_link(&mut header, rel, &target)
            .map_err(io_err(&full))
    } else {
        Err(BuildError::Unsupported {
            path: full,
            what: "a device, fifo or socket".into(),
        })
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
