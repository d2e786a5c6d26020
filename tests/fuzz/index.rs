//! `index.json` and its signature: parsing never panics and names the
//! origin; a signature verifies exactly when it is the key's signature of
//! these bytes; and no entry path the fetcher accepts leads out of the
//! repository.
//!
//! An input is the index bytes, optionally followed by `\n--sig--\n` and
//! the text of `index.json.sig`. Corpus files are signed with the fixed key
//! [`key`] (seed bytes all 7).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey};
use rand::Rng;
use rand::rngs::StdRng;
use theseus::pkg::index::{self, Index, IndexEntry};
use theseus::pkg::{FetchError, FetchOptions, Fetcher};

use crate::engine::{Verdict, mutate, pick};
use crate::json::mutate_json;

const SEPARATOR: &[u8] = b"\n--sig--\n";
/// A repository under a path, on a port nothing listens on: the fetcher's
/// error names the URL it would have fetched.
const BASE: &str = "http://127.0.0.1:9/repo/stable";

const KEYS: &[&str] = &[
    "version", "packages", "id", "sha256", "size", "path", "requires", "expires",
];
const STRINGS: &[&str] = &[
    "demo-web--1.0.0",
    "packages/demo-web--1.0.0.tar.gz",
    "../x.tar.gz",
    "%2e%2e/%2e%2e/x.tar.gz",
    ".%2E/x.tar.gz",
    "packages/%2e%2e/%2e%2e/%2e%2e/x",
    "/abs.tar.gz",
    "//other-host/x.tar.gz",
    "?query",
    "#fragment",
    "packages\\..\\x",
    "http://evil.example/x",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "2030-01-01T00:00:00Z",
];

/// The key the corpus is signed with.
pub fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn split(input: &[u8]) -> (&[u8], &[u8]) {
    match input.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        Some(i) => (&input[..i], &input[i + SEPARATOR.len()..]),
        None => (input, &[]),
    }
}

/// The checker: holds a runtime for the fetcher's path check.
pub fn checker() -> impl FnMut(&[u8]) -> Verdict {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = FetchOptions {
        retries: 0,
        connect_timeout: std::time::Duration::from_secs(2),
        ..FetchOptions::default()
    };
    let fetcher = Fetcher::new(BASE, vec![], options);
    move |input| {
        let (bytes, sig) = split(input);
        signature(bytes, sig)?;
        match Index::parse(bytes, "fuzz/index.json") {
            Err(e) if !e.to_string().starts_with("fuzz/index.json: ") => {
                Err(format!("the error does not name the index: {e}"))
            }
            Err(_) => Ok(()),
            Ok(index) => {
                let again = Index::parse(&index.to_bytes(), "again")
                    .map_err(|e| format!("own bytes refused: {e}"))?;
                if again != index {
                    return Err("a round trip changed the index".into());
                }
                index.packages.iter().take(20).try_for_each(|e| {
                    runtime.block_on(stays_in_repository(&fetcher, e, dir.path()))
                })
            }
        }
    }
}

fn signature(bytes: &[u8], sig: &[u8]) -> Verdict {
    // Curve arithmetic is slow in a debug build: sign only when the text
    // could be a signature, and check a fresh signature on every 16th input.
    let key = key();
    let public = key.verifying_key();
    let text = String::from_utf8_lossy(sig);
    let accepted = index::verify(bytes, &text, &[public], "fuzz/index.json.sig").is_ok();
    let decoded = B64.decode(text.trim()).ok().filter(|d| d.len() == 64);
    let genuine = decoded.is_some_and(|d| d == key.sign(bytes).to_bytes());
    if accepted != genuine {
        return Err(format!(
            "signature accepted={accepted} but genuine={genuine}"
        ));
    }
    let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
    if accepted && index::verify(bytes, &text, &[other], "o").is_ok() {
        return Err("verified with another key".into());
    }
    if index::verify(bytes, &text, &[], "o").is_ok() {
        return Err("verified with no key".into());
    }
    if bytes.len().is_multiple_of(16)
        && index::verify(bytes, &index::sign(bytes, &key), &[public], "s").is_err()
    {
        return Err("a fresh signature does not verify".into());
    }
    let _ = index::parse_public_key(&text, "fuzz");
    Ok(())
}

/// The fetcher either refuses the entry's path, or tries a URL under the
/// repository's base path.
async fn stays_in_repository(
    fetcher: &Fetcher,
    entry: &IndexEntry,
    scratch: &std::path::Path,
) -> Verdict {
    let dest = scratch.join("dest");
    let url = match fetcher.fetch_entry(entry, &dest).await {
        Err(FetchError::Index(_)) => return Ok(()),
        Err(FetchError::Unreachable { url, .. }) => url,
        Err(FetchError::Interrupted { url, .. }) => url,
        other => return Err(format!("{:?}: unexpected {other:?}", entry.path)),
    };
    if dest.exists() {
        return Err(format!(
            "{:?}: a failed fetch left {}",
            entry.path,
            dest.display()
        ));
    }
    // What the HTTP client really requests, after its normalization.
    match reqwest::Url::parse(&url) {
        Ok(u) if u.as_str().starts_with(&format!("{BASE}/")) => Ok(()),
        Ok(u) => Err(format!(
            "index path {:?} leads out of the repository to {u}",
            entry.path
        )),
        Err(_) => Ok(()),
    }
}

pub fn generate(rng: &mut StdRng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let (bytes, sig) = split(pick(rng, corpus).as_slice());
    let indexes: Vec<Vec<u8>> = corpus.iter().map(|c| split(c).0.to_vec()).collect();
    let (bytes, sig) = match rng.gen_range(0..4) {
        0 => (
            bytes.to_vec(),
            mutate(rng, sig, &[], &[b"=", b"+", b"/", b" ", b"\n"]),
        ),
        1 => {
            let mutated = mutate_json(rng, bytes, &indexes, KEYS, STRINGS);
            let sig = index::sign(&mutated, &key());
            (mutated, sig.into_bytes())
        }
        _ => (
            mutate_json(rng, bytes, &indexes, KEYS, STRINGS),
            sig.to_vec(),
        ),
    };
    [bytes.as_slice(), SEPARATOR, sig.as_slice()].concat()
}
