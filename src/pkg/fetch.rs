//! The repository client: index, signature, and one-pass package download.
//!
//! A package streams from the network into the hasher and, through a
//! bounded channel, into the unpacker running on a blocking thread: bytes
//! are read once, never stored whole. When a connection drops, the download
//! resumes with a `Range` request and keeps feeding the same unpacker, so
//! a resumed package is still hashed and unpacked in one pass.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::accepted::AcceptedVersions;
use super::index::{self, Index, IndexEntry, IndexError};
use super::trust::{self, Grant};
use super::unpack::{self, Limits};

pub use super::fetch_error::FetchError;
pub use super::stream::Fetched;

/// Largest `index.json` accepted.
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// How many times an index whose signature does not match is read again
/// (with its signature) before it is refused.
pub const SIGNATURE_REREADS: u32 = 2;

/// How hard the fetcher tries.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Retries after the first attempt, for transport errors and 5xx.
    pub retries: u32,
    /// The first backoff; it doubles with every retry.
    pub backoff: Duration,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time allowed between two reads of a body.
    pub read_timeout: Duration,
    /// Packages fetched at once.
    pub concurrency: usize,
    /// Caps for every archive.
    pub limits: Limits,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            retries: 4,
            backoff: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
            limits: Limits::default(),
        }
    }
}

/// A client for one repository.
#[derive(Debug, Clone)]
pub struct Fetcher {
    base: String,
    client: reqwest::Client,
    keys: Vec<VerifyingKey>,
    require_signature: bool,
    versions: Option<(AcceptedVersions, String)>,
    options: FetchOptions,
}

enum Attempt {
    Retry(FetchError),
    Fatal(FetchError),
}

impl Fetcher {
    /// A client for the repository at `base_url`; with `keys`, the index
    /// must be signed by one of them.
    pub fn new(base_url: &str, keys: Vec<VerifyingKey>, options: FetchOptions) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .build()
            .expect("the HTTP client configuration is static");
        Self {
            base: base_url.trim_end_matches('/').to_owned(),
            client,
            require_signature: !keys.is_empty(),
            keys,
            versions: None,
            options,
        }
    }

    /// A client for a repository a trust decision granted: its index must
    /// verify as the grant says, and, with `versions`, a verified index
    /// older than the one accepted before or expired is refused, and a newer
    /// one recorded.
    pub fn granted(
        grant: &Grant,
        options: FetchOptions,
        versions: Option<AcceptedVersions>,
    ) -> Self {
        let mut fetcher = Self::new(&grant.repository, grant.keys.clone(), options);
        fetcher.require_signature = grant.require_signature;
        fetcher.versions = versions.map(|v| (v, grant.repository.clone()));
        fetcher
    }

    /// The options in use.
    pub fn options(&self) -> &FetchOptions {
        &self.options
    }

    /// The URL of a file in the repository.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    /// Fetches `index.json` and checks `index.json.sig` against the keys:
    /// required when the fetcher requires a signature, else checked when
    /// present. A verified index is checked against the accepted versions.
    ///
    /// `index.json` and its signature are two reads: a repository that
    /// replaces both between them (the operator's generated packages do,
    /// on every new bundle) can hand out an index with the next one's
    /// signature. A signature that does not match is therefore read again,
    /// with the index, up to [`SIGNATURE_REREADS`] times, before the index
    /// is refused; one that never matches is refused as before.
    pub async fn index(&self) -> Result<Index, FetchError> {
        let url = self.url(index::INDEX);
        let mut rereads = 0;
        let (bytes, verified) = loop {
            let bytes = self.get_small(&url).await?;
            match self.verify_signature(&bytes).await {
                Err(FetchError::Index(IndexError::BadSignature { .. }))
                    if rereads < SIGNATURE_REREADS =>
                {
                    rereads += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(rereads))).await;
                }
                verified => break (bytes, verified?),
            }
        };
        let index = Index::parse(&bytes, &url)?;
        if let (true, Some((versions, repository))) = (verified, &self.versions) {
            let io = |source| FetchError::Io {
                path: versions.path().to_owned(),
                source,
            };
            let accepted = versions.get(repository).map_err(io)?;
            let now = k8s_openapi::jiff::Timestamp::now();
            trust::check_index(index.version, index.expires, accepted, now)
                .map_err(|stale| FetchError::Stale { url, stale })?;
            versions.record(repository, index.version).map_err(io)?;
        }
        Ok(index)
    }

    /// Whether the index's signature verified; an error when it is required
    /// and missing, or present and wrong.
    async fn verify_signature(&self, bytes: &[u8]) -> Result<bool, FetchError> {
        if self.keys.is_empty() && !self.require_signature {
            return Ok(false);
        }
        let sig_url = self.url(index::SIGNATURE);
        let sig = match self.get_small(&sig_url).await {
            Err(FetchError::NotFound { url }) if self.require_signature => {
                return Err(FetchError::Unsigned { url });
            }
            Err(FetchError::NotFound { .. }) => return Ok(false),
            other => other?,
        };
        let sig = String::from_utf8_lossy(&sig);
        index::verify(bytes, &sig, &self.keys, &sig_url)?;
        Ok(true)
    }

    /// Downloads the package `entry` and unpacks it into `dest` (which must
    /// not exist) in one pass, checking size and sha256 against the index.
    /// On any error `dest` is gone.
    pub async fn fetch_entry(
        &self,
        entry: &IndexEntry,
        dest: &Path,
    ) -> Result<Fetched, FetchError> {
        let url = self.url(&entry.path);
        if entry.path.contains("..") || entry.path.contains("://") || !self.contains(&url) {
            return Err(FetchError::Index(IndexError::BadIndex {
                origin: self.url(index::INDEX),
                message: format!("package path {:?} leaves the repository", entry.path),
            }));
        }
        let expect = Some((entry.sha256.as_str(), entry.size));
        self.fetch_url(&url, expect, dest, &entry.id.to_string())
            .await
    }

    /// Whether `url` stays under the repository as the HTTP client will
    /// request it: URLs are normalized first, and `%2e%2e` is `..` there.
    fn contains(&self, url: &str) -> bool {
        match (
            reqwest::Url::parse(&format!("{}/", self.base)),
            reqwest::Url::parse(url),
        ) {
            (Ok(base), Ok(url)) => url.as_str().starts_with(base.as_str()),
            // A URL that does not parse fails on its own when fetched.
            _ => true,
        }
    }

    /// Downloads `url` and unpacks it into `dest`; checks sha256 and size
    /// when `expect` gives them. `label` names the archive in errors.
    pub async fn fetch_url(
        &self,
        url: &str,
        expect: Option<(&str, u64)>,
        dest: &Path,
        label: &str,
    ) -> Result<Fetched, FetchError> {
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let (dest_buf, limits, label_buf) =
            (dest.to_owned(), self.options.limits, label.to_owned());
        let unpacker = tokio::task::spawn_blocking(move || {
            let reader = super::stream::ChannelReader {
                rx,
                chunk: Bytes::new(),
            };
            unpack::unpack(reader, &dest_buf, &limits, &label_buf)
        });
        let downloaded = self.download(url, expect.map(|e| e.1), tx).await;
        let unpacked = unpacker.await.expect("the unpack thread does not panic");
        let result = match (downloaded, unpacked) {
            (Err(e), _) => Err(e),
            // The unpacker stopped reading early: its error is the reason.
            (Ok(None), Err(e)) => Err(e.into()),
            (Ok(None), Ok(_)) => Err(FetchError::Interrupted {
                url: url.to_owned(),
                got: 0,
                message: "the unpacker stopped reading".into(),
            }),
            (Ok(Some((sha256, _))), _)
                if expect.is_some_and(|(want, _)| !want.eq_ignore_ascii_case(&sha256)) =>
            {
                Err(FetchError::WrongHash {
                    url: url.to_owned(),
                    expected: expect.map(|e| e.0.to_owned()).unwrap_or_default(),
                    actual: sha256,
                })
            }
            (Ok(Some(_)), Err(e)) => Err(e.into()),
            (Ok(Some((sha256, size))), Ok(stats)) => Ok(Fetched {
                sha256,
                size,
                stats,
            }),
        };
        if result.is_err() {
            let _ = std::fs::remove_dir_all(dest);
        }
        result
    }

    /// Streams `url` into `tx`, resuming with `Range` after a dropped
    /// connection. Returns the sha256 and size of the whole body, or `None`
    /// when the receiver stopped listening before the end.
    async fn download(
        &self,
        url: &str,
        size: Option<u64>,
        tx: mpsc::Sender<Bytes>,
    ) -> Result<Option<(String, u64)>, FetchError> {
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        let mut attempt = 0u32;
        loop {
            match self
                .stream_once(url, size, &mut offset, &mut hasher, &tx)
                .await
            {
                Ok(true) => return Ok(Some((hex::encode(hasher.finalize()), offset))),
                Ok(false) => return Ok(None),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(e)) if attempt >= self.options.retries => return Err(e),
                Err(Attempt::Retry(e)) => {
                    tracing::warn!(%url, offset, attempt, "retrying: {e}");
                    tokio::time::sleep(self.options.backoff * 2u32.saturating_pow(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn stream_once(
        &self,
        url: &str,
        size: Option<u64>,
        offset: &mut u64,
        hasher: &mut Sha256,
        tx: &mpsc::Sender<Bytes>,
    ) -> Result<bool, Attempt> {
        let mut request = self.client.get(url);
        if *offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| self.transport(url, *offset, e))?;
        let mut skip = self.check_status(url, &response, *offset, size)?;
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => return Err(self.transport(url, *offset, e)),
            };
            let chunk = if skip > 0 {
                let n = skip.min(chunk.len() as u64);
                skip -= n;
                chunk.slice(n as usize..)
            } else {
                chunk
            };
            if chunk.is_empty() {
                continue;
            }
            let next = *offset + chunk.len() as u64;
            if let Some(expected) = size.filter(|s| next > *s) {
                return Err(Attempt::Fatal(FetchError::WrongSize {
                    url: url.to_owned(),
                    got: next,
                    expected,
                }));
            }
            hasher.update(&chunk);
            *offset = next;
            if tx.send(chunk).await.is_err() {
                // The unpacker stopped; its error explains why.
                return Ok(false);
            }
        }
        match size {
            Some(expected) if *offset < expected => Err(Attempt::Retry(FetchError::Interrupted {
                url: url.to_owned(),
                got: *offset,
                message: format!(
                    "connection closed before the {expected} bytes the index announces"
                ),
            })),
            _ => Ok(true),
        }
    }

    /// Classifies the response status; returns how many bytes of the body
    /// to skip (when a server ignored our `Range` and sent everything).
    fn check_status(
        &self,
        url: &str,
        response: &reqwest::Response,
        offset: u64,
        size: Option<u64>,
    ) -> Result<u64, Attempt> {
        let status = response.status();
        match status {
            StatusCode::OK => Ok(offset),
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let range = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if range.starts_with(&format!("bytes {offset}-")) {
                    Ok(0)
                } else {
                    Err(Attempt::Retry(FetchError::Interrupted {
                        url: url.to_owned(),
                        got: offset,
                        message: format!("server answered the range request with {range:?}"),
                    }))
                }
            }
            StatusCode::NOT_FOUND => Err(Attempt::Fatal(FetchError::NotFound {
                url: url.to_owned(),
            })),
            StatusCode::RANGE_NOT_SATISFIABLE => Err(Attempt::Fatal(FetchError::WrongSize {
                url: url.to_owned(),
                got: offset,
                expected: size.unwrap_or(offset),
            })),
            s if s.is_server_error()
                || s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT =>
            {
                Err(Attempt::Retry(FetchError::Status {
                    url: url.to_owned(),
                    status: s.as_u16(),
                }))
            }
            s => Err(Attempt::Fatal(FetchError::Status {
                url: url.to_owned(),
                status: s.as_u16(),
            })),
        }
    }

    fn transport(&self, url: &str, offset: u64, e: reqwest::Error) -> Attempt {
        let message = error_chain(&e);
        if offset == 0 && (e.is_connect() || e.is_request()) && !e.is_body() {
            Attempt::Retry(FetchError::Unreachable {
                url: url.to_owned(),
                message,
            })
        } else {
            Attempt::Retry(FetchError::Interrupted {
                url: url.to_owned(),
                got: offset,
                message,
            })
        }
    }

    /// GETs a small file (the index or its signature) with retries.
    async fn get_small(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(64);
        let collect = async move {
            let mut body = Vec::new();
            while let Some(chunk) = rx.recv().await {
                if (body.len() + chunk.len()) as u64 > MAX_INDEX_BYTES {
                    return None;
                }
                body.extend_from_slice(&chunk);
            }
            Some(body)
        };
        let (downloaded, body) = tokio::join!(self.download(url, None, tx), collect);
        downloaded?.ok_or_else(|| FetchError::WrongSize {
            url: url.to_owned(),
            got: MAX_INDEX_BYTES + 1,
            expected: MAX_INDEX_BYTES,
        })?;
        body.ok_or_else(|| FetchError::WrongSize {
            url: url.to_owned(),
            got: MAX_INDEX_BYTES + 1,
            expected: MAX_INDEX_BYTES,
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ed25519_dalek::SigningKey;

    use super::*;

    /// A repository on 127.0.0.1 whose `index.json` is version 1 for the
    /// first `stale` reads and version 2 after, while its signature is
    /// always version 2's: a writer replaced both between two reads.
    async fn replaced_between_reads(stale: usize, key: &SigningKey) -> String {
        let one = br#"{"version": 1, "packages": []}"#.to_vec();
        let two = br#"{"version": 2, "packages": []}"#.to_vec();
        let sig = index::sign(&two, key);
        let reads = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route(
                "/index.json",
                axum::routing::get(move || {
                    let (one, two, reads) = (one.clone(), two.clone(), reads.clone());
                    async move {
                        if reads.fetch_add(1, Ordering::SeqCst) < stale {
                            one
                        } else {
                            two
                        }
                    }
                }),
            )
            .route(
                "/index.json.sig",
                axum::routing::get(move || {
                    let sig = sig.clone();
                    async move { sig }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    #[tokio::test]
    async fn an_index_replaced_between_its_two_reads_is_read_again_and_a_wrong_one_refused() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let keys = vec![key.verifying_key()];
        let url = replaced_between_reads(1, &key).await;
        let fetcher = Fetcher::new(&url, keys.clone(), FetchOptions::default());
        let index = fetcher.index().await.expect("read again, it verifies");
        assert_eq!(index.version, 2);

        // An index that never matches its signature is refused.
        let url = replaced_between_reads(usize::MAX, &key).await;
        let fetcher = Fetcher::new(&url, keys, FetchOptions::default());
        let err = fetcher.index().await.unwrap_err();
        assert!(err.is_untrusted(), "{err}");
    }
}
