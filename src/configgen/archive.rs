//! A rendered package as a package archive: its files and a
//! `pkginfo.json` holding only its id, through the deterministic package
//! builder, so the same content always gives the same archive bytes.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::config::Package;
use crate::pkg::build::{BuildError, Built, build};

/// Why a rendered package could not be written as an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Staging the package's files failed.
    #[error("package {id}: cannot stage {path}: {source}")]
    Stage {
        /// The package id.
        id: String,
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// The package builder refused the staged files.
    #[error("package {id}: {source}")]
    Build {
        /// The package id.
        id: String,
        /// The cause.
        source: BuildError,
    },
}

/// Writes `package` as `DIR/ID.tar.gz` (staged in a temporary directory
/// inside `dir`, which is removed whatever happens).
pub fn write(package: &Package, dir: &Path) -> Result<Built, ArchiveError> {
    let stage = |path: &Path, source| ArchiveError::Stage {
        id: package.id.clone(),
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| stage(dir, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".config-render-")
        .tempdir_in(dir)
        .map_err(|e| stage(dir, e))?;
    for (path, file) in &package.files {
        let target = staging.path().join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| stage(parent, e))?;
        }
        std::fs::write(&target, &file.content).map_err(|e| stage(&target, e))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file.mode))
            .map_err(|e| stage(&target, e))?;
    }
    let info = serde_json::json!({ "id": package.id });
    let info_path = staging.path().join("pkginfo.json");
    let bytes = serde_json::to_vec_pretty(&info).unwrap_or_default();
    std::fs::write(&info_path, bytes).map_err(|e| stage(&info_path, e))?;
    build(staging.path(), dir).map_err(|source| ArchiveError::Build {
        id: package.id.clone(),
        source,
    })
}

/// The archive bytes of `package`, built in a temporary directory.
pub fn bytes(package: &Package) -> Result<Vec<u8>, ArchiveError> {
    let dir = tempfile::tempdir().map_err(|e| ArchiveError::Stage {
        id: package.id.clone(),
        path: std::env::temp_dir().display().to_string(),
        source: e,
    })?;
    let built = write(package, dir.path())?;
    std::fs::read(&built.path).map_err(|e| ArchiveError::Stage {
        id: package.id.clone(),
        path: built.path.display().to_string(),
        source: e,
    })
}
