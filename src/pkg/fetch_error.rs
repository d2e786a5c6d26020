//! The errors of the repository client.

use std::io;
use std::path::PathBuf;

use super::index::IndexError;
use super::trust::Stale;
use super::unpack::UnpackError;

/// Errors from talking to a repository.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The host did not answer.
    #[error("cannot reach {url}: {message}; check the repository URL and that the server is up")]
    Unreachable {
        /// The URL.
        url: String,
        /// The transport error.
        message: String,
    },
    /// The server has no such file.
    #[error("{url} not found (HTTP 404); check the package id and the repository's index.json")]
    NotFound {
        /// The URL.
        url: String,
    },
    /// The server answered with an error status.
    #[error("{url}: server answered HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The connection dropped and retries ran out.
    #[error("{url}: download interrupted after {got} bytes: {message}")]
    Interrupted {
        /// The URL.
        url: String,
        /// Bytes received in all.
        got: u64,
        /// The last transport error.
        message: String,
    },
    /// The body is shorter or longer than the index says.
    #[error(
        "{url}: got {got} bytes, the index says {expected}; the repository is inconsistent, re-run `theseus repo index`"
    )]
    WrongSize {
        /// The URL.
        url: String,
        /// Bytes received (or about to be).
        got: u64,
        /// The size in the index.
        expected: u64,
    },
    /// The sha256 does not match the index.
    #[error(
        "{url}: sha256 is {actual}, the index says {expected}; the package was altered or the index is stale"
    )]
    WrongHash {
        /// The URL.
        url: String,
        /// The hash from the index.
        expected: String,
        /// The hash of what arrived.
        actual: String,
    },
    /// The index lists no such package.
    #[error("{id} is not in the index at {url}; check the id or publish the package")]
    NotInIndex {
        /// The package id.
        id: String,
        /// The index URL.
        url: String,
    },
    /// The index or its signature is bad.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Keys are configured but the repository is unsigned.
    #[error(
        "{url} not found, but public keys are configured: the repository must be signed (`theseus repo index --sign-key`)"
    )]
    Unsigned {
        /// The signature URL.
        url: String,
    },
    /// The index verified but is older than one accepted before, or expired.
    #[error("{url}: {stale}")]
    Stale {
        /// The index URL.
        url: String,
        /// What is wrong with it.
        stale: Stale,
    },
    /// The archive was refused.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// A local file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
}

impl FetchError {
    /// Whether the repository's index was refused as untrusted: unsigned,
    /// signed by no expected key, rolled back or expired. Nothing but the
    /// index (and its signature) was downloaded.
    pub fn is_untrusted(&self) -> bool {
        matches!(
            self,
            FetchError::Unsigned { .. }
                | FetchError::Stale { .. }
                | FetchError::Index(IndexError::BadSignature { .. } | IndexError::BadKey { .. })
        )
    }
}
