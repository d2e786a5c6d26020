//! Readers that connect the download to the unpacker: a channel of
//! chunks read as a `BufRead`, and a reader that hashes what passes.

use std::io::{self, BufRead, Read};
use std::path::Path;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::fetch_error::FetchError;
use super::unpack::{self, Limits, UnpackStats};

/// The result of downloading one archive.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The sha256 of the archive.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// What the unpack did.
    pub stats: UnpackStats,
}

/// Unpacks a local archive into `dest`, hashing it in the same pass.
pub fn unpack_file(
    path: &Path,
    dest: &Path,
    limits: &Limits,
    label: &str,
) -> Result<Fetched, FetchError> {
    let io_err = |source| FetchError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let mut reader = HashingReader {
        inner: io::BufReader::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        size: 0,
    };
    let stats = unpack::unpack(&mut reader, dest, limits, label)?;
    // Hash whatever follows the gzip stream too, so the hash is the file's.
    io::copy(&mut reader, &mut io::sink()).map_err(io_err)?;
    Ok(Fetched {
        sha256: hex::encode(reader.hasher.finalize()),
        size: reader.size,
        stats,
    })
}

/// Feeds chunks from the download task to the blocking unpacker.
pub(crate) struct ChannelReader {
    pub(crate) rx: mpsc::Receiver<Bytes>,
    pub(crate) chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => break,
            }
        }
        Ok(&self.chunk)
    }

    fn consume(&mut self, n: usize) {
        let _ = self.chunk.split_to(n);
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: BufRead> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for HashingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        let data = self.inner.fill_buf().map(|d| &d[..n]).unwrap_or_default();
        self.hasher.update(data);
        self.size += n as u64;
        self.inner.consume(n);
    }
}
