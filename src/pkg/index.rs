//! Repository indexes (`index.json`) and their ed25519 signatures.
//!
//! A repository directory holds `packages/ID.tar.gz`; `index.json` lists
//! them with size and sha256, and `index.json.sig` holds the base64 ed25519
//! signature of the exact bytes of `index.json`. Keys are base64 too: a
//! public key is the 32 raw bytes (44 characters, what the
//! PackageRepository CRD's `publicKeys` accept); a secret key file holds the
//! 32-byte seed.
//!
//! The signed bytes include the index's `version`, which only ever grows,
//! and an optional `expires` (RFC 3339): a node keeps the highest version
//! it accepted from each repository and refuses an older one (a rollback)
//! or an expired one (a freeze), see [`super::trust::check_index`].

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::id::PackageId;

/// The index file name.
pub const INDEX: &str = "index.json";
/// The signature file name.
pub const SIGNATURE: &str = "index.json.sig";
/// Where packages live inside a repository.
pub const PACKAGES_DIR: &str = "packages";

/// Errors from building, signing, reading or verifying an index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// One package id has two archives (gzip and zstd).
    #[error(
        "{first} and {second} are both package {id}; a package is one archive: remove one of them"
    )]
    TwoArchives {
        /// The id.
        id: PackageId,
        /// One archive.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// A file in `packages/` is not named `ID.tar.gz` or `ID.tar.zst`.
    #[error(
        "{path}: not named ID.tar.gz or ID.tar.zst with a valid package id ({reason}); rename or remove it"
    )]
    BadPackageName {
        /// The file.
        path: PathBuf,
        /// Why its name does not parse.
        reason: String,
    },
    /// A package archive's metadata cannot be read.
    #[error(
        "{path}: cannot read its pkginfo.json ({message}); rebuild it with `theseus pkg build`"
    )]
    BadArchive {
        /// The archive.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// `index.json` is not a valid index.
    #[error("{origin}: not a valid index: {message}")]
    BadIndex {
        /// Where the index came from (file or URL).
        origin: String,
        /// The parse error.
        message: String,
    },
    /// A key is not base64 of 32 bytes.
    #[error(
        "{origin}: not an ed25519 key (expected base64 of 32 bytes, 44 characters ending in '=')"
    )]
    BadKey {
        /// The file or flag that held the key.
        origin: String,
    },
    /// `--version` does not increase the version of the index it replaces.
    #[error(
        "{path}: version {requested} is not above the current version {current}; an index's version only grows (nodes refuse an older one as a rollback): pass a higher --version or omit it"
    )]
    VersionNotIncreasing {
        /// The index file.
        path: PathBuf,
        /// The version asked for.
        requested: u64,
        /// The version of the index on disk.
        current: u64,
    },
    /// The signature does not verify with any configured key.
    #[error(
        "{origin}: signature does not match any configured public key; the index was altered or signed with another key"
    )]
    BadSignature {
        /// Where the signature came from.
        origin: String,
    },
}

/// A repository index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Increases with every published change; nodes and the operator refuse
    /// a version lower than the highest they accepted (a rollback).
    pub version: u64,
    /// When the index stops being valid (RFC 3339); nodes and the operator
    /// refuse it afterwards (a freeze). Absent in indexes that never expire.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339")]
    pub expires: Option<Timestamp>,
    /// The packages, sorted by id.
    pub packages: Vec<IndexEntry>,
}

/// One package in an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The package id.
    pub id: PackageId,
    /// The sha256 of the archive, lowercase hex.
    pub sha256: String,
    /// The archive size in bytes.
    pub size: u64,
    /// The archive path relative to the repository root.
    pub path: String,
    /// The names the package requires (from its `pkginfo.json`), so that a
    /// set can be checked against the index before any node fetches it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
}

impl Index {
    /// Parses index bytes; `origin` names them in errors.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Self, IndexError> {
        serde_json::from_slice(bytes).map_err(|e| IndexError::BadIndex {
            origin: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// The entry for `id`, if the index has it.
    pub fn find(&self, id: &PackageId) -> Option<&IndexEntry> {
        self.packages.iter().find(|e| &e.id == id)
    }

    /// The index as written to disk: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("an index always serializes");
        bytes.push(b'\n');
        bytes
    }
}

/// `expires` as an RFC 3339 string.
mod rfc3339 {
    use k8s_openapi::jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&t.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                text.parse()
                    .map_err(|e| D::Error::custom(format!("expires {text:?} is not RFC 3339: {e}")))
            })
            .transpose()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Lists `dir/packages/*.tar.gz` and `*.tar.zst` with their sizes and
/// hashes, sorted by id; an id in both is refused.
pub fn scan(dir: &Path) -> Result<Vec<IndexEntry>, IndexError> {
    let pkgs = dir.join(PACKAGES_DIR);
    let mut entries = Vec::new();
    for item in std::fs::read_dir(&pkgs).map_err(io_err(&pkgs))? {
        let path = item.map_err(io_err(&pkgs))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let Some((stem, _)) = super::codec::split_archive_name(&name) else {
            continue;
        };
        if stem.starts_with('.') {
            continue;
        }
        let id: PackageId =
            stem.parse()
                .map_err(|e: super::id::IdError| IndexError::BadPackageName {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
        let (sha256, size) = hash_file(&path)?;
        let requires = read_requires(&path)?;
        entries.push(IndexEntry {
            path: format!("{PACKAGES_DIR}/{name}"),
            id,
            sha256,
            size,
            requires,
        });
    }
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(pair) = entries.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(IndexError::TwoArchives {
            id: pair[0].id.clone(),
            first: dir.join(&pair[0].path),
            second: dir.join(&pair[1].path),
        });
    }
    Ok(entries)
}

/// The `requires` of the `pkginfo.json` at the root of a package archive.
fn read_requires(path: &Path) -> Result<Vec<String>, IndexError> {
    /// A pkginfo.json larger than this is not a package's metadata.
    const MAX_PKGINFO: u64 = 1 << 20;
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let bad = |message: String| IndexError::BadArchive {
        path: path.to_owned(),
        message,
    };
    let decoder = super::codec::Decoder::sniff(std::io::BufReader::new(file))
        .map_err(|e| bad(e.to_string()))?;
    let mut archive = tar::Archive::new(decoder);
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let entry = entry.map_err(|e| bad(e.to_string()))?;
        let name = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        if name.as_os_str() != "pkginfo.json" && name.as_os_str() != "./pkginfo.json" {
            continue;
        }
        let mut bytes = Vec::new();
        entry
            .take(MAX_PKGINFO)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(e.to_string()))?;
        let info = super::pkginfo::PkgInfo::parse(&bytes, path).map_err(|e| bad(e.to_string()))?;
        return Ok(info.requires);
    }
    Err(bad("it holds no pkginfo.json".into()))
}

/// The sha256 (hex) and size of a file.
pub fn hash_file(path: &Path) -> Result<(String, u64), IndexError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// What [`write`] puts in an index besides the packages.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions<'a> {
    /// The version; default the previous index's version plus one (1 for
    /// the first). It must be above the previous one.
    pub version: Option<u64>,
    /// Signs `index.json` into `index.json.sig`; without it the signature
    /// file is removed.
    pub key: Option<&'a SigningKey>,
    /// When the index expires.
    pub expires: Option<Timestamp>,
}

/// Writes `dir/index.json` (and, with a key, `dir/index.json.sig`).
pub fn write(dir: &Path, options: WriteOptions<'_>) -> Result<Index, IndexError> {
    let index_path = dir.join(INDEX);
    let previous = match std::fs::read(&index_path) {
        Ok(bytes) => Some(Index::parse(&bytes, &index_path.display().to_string())?.version),
        Err(_) => None,
    };
    let version = match (options.version, previous) {
        (Some(requested), Some(current)) if requested <= current => {
            return Err(IndexError::VersionNotIncreasing {
                path: index_path,
                requested,
                current,
            });
        }
        (Some(v), _) => v,
        (None, previous) => previous.map_or(1, |v| v + 1),
    };
    let index = Index {
        version,
        expires: options.expires,
        packages: scan(dir)?,
    };
    let key = options.key;
    let bytes = index.to_bytes();
    write_atomic(&index_path, &bytes)?;
    let sig_path = dir.join(SIGNATURE);
    match key {
        Some(key) => write_atomic(&sig_path, format!("{}\n", sign(&bytes, key)).as_bytes())?,
        None => match std::fs::remove_file(&sig_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&sig_path)(e)),
            _ => {}
        },
    }
    Ok(index)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IndexError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// A fresh random signing key.
pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// The base64 of a key's 32 raw bytes (public or secret seed).
pub fn encode_key(bytes: &[u8; 32]) -> String {
    B64.encode(bytes)
}

fn decode_32(text: &str, origin: &str) -> Result<[u8; 32], IndexError> {
    let bad = || IndexError::BadKey {
        origin: origin.to_owned(),
    };
    let bytes = B64.decode(text.trim()).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

/// Parses a base64 public key; `origin` names it in errors.
pub fn parse_public_key(text: &str, origin: &str) -> Result<VerifyingKey, IndexError> {
    let bytes = decode_32(text, origin)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| IndexError::BadKey {
        origin: origin.to_owned(),
    })
}

/// Reads a secret key file (base64 of the 32-byte seed).
pub fn read_secret_key(path: &Path) -> Result<SigningKey, IndexError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    Ok(SigningKey::from_bytes(&decode_32(
        &text,
        &path.display().to_string(),
    )?))
}

/// The base64 signature of `bytes`.
pub fn sign(bytes: &[u8], key: &SigningKey) -> String {
    B64.encode(key.sign(bytes).to_bytes())
}

/// Checks that `signature` (base64) signs `bytes` with one of `keys`.
pub fn verify(
    bytes: &[u8],
    signature: &str,
    keys: &[VerifyingKey],
    origin: &str,
) -> Result<(), IndexError> {
    let bad = || IndexError::BadSignature {
        origin: origin.to_owned(),
    };
    let raw = B64.decode(signature.trim()).map_err(|_| bad())?;
    let sig = Signature::from_slice(&raw).map_err(|_| bad())?;
    if keys.iter().any(|k| k.verify(bytes, &sig).is_ok()) {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_round_trips_and_old_indexes_without_it_still_parse() {
        let old = br#"{"version": 4, "packages": []}"#;
        let index = Index::parse(old, "t").unwrap();
        assert_eq!((index.version, index.expires), (4, None));
        assert!(
            !String::from_utf8(index.to_bytes())
                .unwrap()
                .contains("expires")
        );
        let with = Index {
            expires: Some("2030-01-02T03:04:05Z".parse().unwrap()),
            ..index
        };
        let text = String::from_utf8(with.to_bytes()).unwrap();
        assert!(
            text.contains(r#""expires": "2030-01-02T03:04:05Z""#),
            "{text}"
        );
        assert_eq!(Index::parse(text.as_bytes(), "t").unwrap(), with);
        let bad = br#"{"version": 4, "expires": "next week", "packages": []}"#;
        let err = Index::parse(bad, "http://r/index.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("next week") && err.contains("RFC 3339"),
            "{err}"
        );
    }

    #[test]
    fn a_written_version_only_grows() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(PACKAGES_DIR)).unwrap();
        assert_eq!(
            write(dir.path(), WriteOptions::default()).unwrap().version,
            1
        );
        assert_eq!(
            write(dir.path(), WriteOptions::default()).unwrap().version,
            2
        );
        let at = |v| WriteOptions {
            version: Some(v),
            ..Default::default()
        };
        assert_eq!(write(dir.path(), at(7)).unwrap().version, 7);
        let err = write(dir.path(), at(7)).unwrap_err().to_string();
        assert!(err.contains("not above the current version 7"), "{err}");
        assert!(write(dir.path(), at(3)).is_err());
        assert_eq!(
            write(dir.path(), WriteOptions::default()).unwrap().version,
            8
        );
    }

    #[test]
    fn a_signature_verifies_only_with_its_key_and_bytes() {
        let key = generate_key();
        let other = generate_key();
        let sig = sign(b"index", &key);
        let public = key.verifying_key();
        assert!(verify(b"index", &sig, &[public], "t").is_ok());
        assert!(verify(b"index", &sig, &[other.verifying_key(), public], "t").is_ok());
        assert!(verify(b"index!", &sig, &[public], "t").is_err());
        assert!(verify(b"index", &sig, &[other.verifying_key()], "t").is_err());
        assert!(verify(b"index", "garbage", &[public], "t").is_err());
    }

    #[test]
    fn public_keys_are_44_base64_characters_that_round_trip() {
        let key = generate_key().verifying_key();
        let text = encode_key(key.as_bytes());
        assert_eq!(text.len(), 44);
        assert!(text.ends_with('='));
        assert_eq!(parse_public_key(&text, "t").unwrap(), key);
        assert!(
            parse_public_key("AAAA", "flag --key")
                .unwrap_err()
                .to_string()
                .contains("flag --key")
        );
    }
}
