//! Hostile archives: each is refused with nothing written outside the
//! temporary directory and nothing left behind.

use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use theseus::pkg::unpack::{Limits, UnpackError, unpack};

use crate::support::pkg::*;

/// Unpacks `archive` into `sandbox/dest`; returns the error text, checking
/// that `dest` is gone afterwards. An archive whose gzip stream is whole is
/// also tried compressed with zstd instead: the same tar is refused the
/// same way whichever the compression.
fn refuse(sandbox: &Path, archive: &[u8], expected: &str) -> UnpackError {
    let dest = sandbox.join("dest");
    let err = unpack(archive, &dest, &Limits::default(), "hostile--1").expect_err(expected);
    assert!(
        err.to_string().contains(expected),
        "{err} lacks {expected:?}"
    );
    assert!(!dest.exists(), "the temporary directory was left behind");
    let mut tar = Vec::new();
    if flate2::read::MultiGzDecoder::new(archive)
        .read_to_end(&mut tar)
        .is_ok()
    {
        let zst = zstd::stream::encode_all(&tar[..], 3).unwrap();
        let again = unpack(&zst[..], &dest, &Limits::default(), "hostile--1")
            .expect_err("the zstd archive is refused too");
        assert!(
            again.to_string().contains(expected),
            "zstd: {again} lacks {expected:?}"
        );
        assert!(
            !dest.exists(),
            "zstd: the temporary directory was left behind"
        );
    }
    err
}

fn sandbox() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("outside")).unwrap();
    std::fs::write(dir.path().join("outside/secret"), "keep").unwrap();
    dir
}

fn untouched(sandbox: &Path) {
    assert_eq!(
        tree(sandbox),
        vec!["outside", "outside/secret"],
        "something was written outside"
    );
    let secret = sandbox.join("outside/secret");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "keep");
    assert_eq!(
        std::fs::metadata(&secret).unwrap().nlink(),
        1,
        "a hard link to the secret exists"
    );
}

#[test]
fn an_entry_climbing_out_with_dot_dot_is_refused() {
    let sb = sandbox();
    refuse(sb.path(), &tar_gz(&[file("../x", b"evil", 0o644)]), "'..'");
    untouched(sb.path());
}

#[test]
fn an_absolute_entry_path_is_refused() {
    let sb = sandbox();
    let target = format!("{}/outside/x", sb.path().display());
    refuse(
        sb.path(),
        &tar_gz(&[file(&target, b"evil", 0o644)]),
        "absolute",
    );
    untouched(sb.path());
}

#[test]
fn a_file_written_through_an_earlier_symlink_is_refused() {
    let sb = sandbox();
    let outside = format!("{}/outside", sb.path().display());
    // An absolute link is refused at once; a relative one leaving the
    // package too; and even a harmless in-package link cannot be a parent.
    refuse(
        sb.path(),
        &tar_gz(&[
            entry(header("a", 0, b'2', &outside, 0o777), &[]),
            file("a/passwd", b"x", 0o644),
        ]),
        "leaves the package",
    );
    refuse(
        sb.path(),
        &tar_gz(&[
            entry(header("a", 0, b'2', "../outside", 0o777), &[]),
            file("a/passwd", b"x", 0o644),
        ]),
        "leaves the package",
    );
    let archive = tar_gz(&[
        entry(header("d", 0, b'5', "", 0o755), &[]),
        entry(header("a", 0, b'2', "d", 0o777), &[]),
        file("a/passwd", b"x", 0o644),
    ]);
    refuse(sb.path(), &archive, "its parent a is not a directory");
    untouched(sb.path());
}

#[test]
fn a_hard_link_to_a_file_outside_is_refused() {
    let sb = sandbox();
    let secret = format!("{}/outside/secret", sb.path().display());
    refuse(
        sb.path(),
        &tar_gz(&[entry(header("h", 0, b'1', &secret, 0o644), &[])]),
        "hard link target",
    );
    refuse(
        sb.path(),
        &tar_gz(&[entry(header("h", 0, b'1', "../outside/secret", 0o644), &[])]),
        "hard link target",
    );
    refuse(
        sb.path(),
        &tar_gz(&[entry(header("h", 0, b'1', "missing", 0o644), &[])]),
        "not a file earlier",
    );
    untouched(sb.path());
}

#[test]
fn a_symlink_escaping_through_dot_dot_is_refused_even_via_other_links() {
    let sb = sandbox();
    refuse(
        sb.path(),
        &tar_gz(&[entry(header("sub/l", 0, b'2', "../../x", 0o777), &[])]),
        "leaves the package",
    );
    // Each link alone stays inside; together `u` resolves above the root.
    let archive = tar_gz(&[
        entry(header("s/", 0, b'5', "", 0o755), &[]),
        entry(header("u", 0, b'2', "s/t/..", 0o777), &[]),
        entry(header("s/t", 0, b'2', "..", 0o777), &[]),
    ]);
    refuse(sb.path(), &archive, "leaves the package");
    untouched(sb.path());
}

#[test]
fn device_and_fifo_entries_are_refused() {
    let sb = sandbox();
    refuse(
        sb.path(),
        &tar_gz(&[entry(header("tty", 0, b'3', "", 0o666), &[])]),
        "device",
    );
    refuse(
        sb.path(),
        &tar_gz(&[entry(header("disk", 0, b'4', "", 0o666), &[])]),
        "device",
    );
    refuse(
        sb.path(),
        &tar_gz(&[entry(header("pipe", 0, b'6', "", 0o666), &[])]),
        "fifo",
    );
    untouched(sb.path());
}

#[test]
fn duplicate_entries_are_refused() {
    let sb = sandbox();
    refuse(
        sb.path(),
        &tar_gz(&[file("a", b"1", 0o644), file("a", b"2", 0o644)]),
        "duplicate",
    );
    untouched(sb.path());
}

#[test]
fn a_setuid_binary_is_accepted_with_the_bit_cleared() {
    let sb = sandbox();
    let dest = sb.path().join("dest");
    let archive = tar_gz(&[file("bin/su", b"#!/bin/sh\n", 0o6755)]);
    let stats = unpack(&archive[..], &dest, &Limits::default(), "suid--1").unwrap();
    assert_eq!(stats.setid_cleared, 1);
    let mode = std::fs::metadata(dest.join("bin/su"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
}

#[test]
fn a_pax_size_that_disagrees_with_the_ustar_size_is_refused() {
    let sb = sandbox();
    let mut body = pax(&[("size", "5")]);
    body.extend(entry(header("f", 600, b'0', "", 0o644), &[b'a'; 600]));
    refuse(
        sb.path(),
        &tar_gz(&[body]),
        "PAX size 5 disagrees with the header size 600",
    );
    untouched(sb.path());
}

/// Gzip-compresses `prefix` followed by `zeros` zero bytes, lazily: only
/// what the reader consumes is ever produced.
struct LazyBomb {
    gz: GzEncoder<Vec<u8>>,
    prefix: Option<Vec<u8>>,
    zeros_left: u64,
    out: Vec<u8>,
    pos: usize,
    produced: u64,
}

impl LazyBomb {
    fn new(prefix: Vec<u8>, zeros: u64) -> Self {
        Self {
            gz: GzEncoder::new(Vec::new(), Compression::fast()),
            prefix: Some(prefix),
            zeros_left: zeros,
            out: Vec::new(),
            pos: 0,
            produced: 0,
        }
    }
}

impl Read for LazyBomb {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.out.len() {
            if let Some(prefix) = self.prefix.take() {
                self.gz.write_all(&prefix)?;
            } else if self.zeros_left > 0 {
                let n = self.zeros_left.min(64 << 10);
                self.gz.write_all(&vec![0u8; n as usize])?;
                self.zeros_left -= n;
                self.produced += n;
            } else {
                return Ok(0);
            }
            self.gz.flush()?;
            self.out = std::mem::take(self.gz.get_mut());
            self.pos = 0;
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn a_ten_gigabyte_gzip_bomb_is_stopped_quickly() {
    const TEN_GB: u64 = 10 << 30;
    let sb = sandbox();
    let dest = sb.path().join("dest");
    let started = Instant::now();
    // One entry that claims 10 GB: refused from its header.
    let bomb = LazyBomb::new(header("zeros", TEN_GB, b'0', "", 0o644).to_vec(), TEN_GB);
    let err = unpack(
        io::BufReader::new(bomb),
        &dest,
        &Limits::default(),
        "bomb--1",
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::Limit { .. }), "{err}");
    eprintln!("header bomb stopped after {:?}", started.elapsed());
    // 10 GB of zeros after the end-of-archive marker: refused by the trailer cap.
    let bomb = LazyBomb::new(Vec::new(), TEN_GB);
    let err = unpack(
        io::BufReader::new(bomb),
        &dest,
        &Limits::default(),
        "bomb--2",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("after the end of the archive"),
        "{err}"
    );
    eprintln!("trailer bomb stopped after {:?}", started.elapsed());
    // Many entries whose sizes add up beyond the cap.
    let limits = Limits {
        max_total_bytes: 4 << 20,
        ..Limits::default()
    };
    let mut prefix = Vec::new();
    for i in 0..8 {
        prefix.extend(entry(
            header(&format!("z{i}"), 1 << 20, b'0', "", 0o644),
            &vec![0u8; 1 << 20],
        ));
    }
    let bomb = LazyBomb::new(prefix, TEN_GB);
    let err = unpack(io::BufReader::new(bomb), &dest, &limits, "bomb--3").unwrap_err();
    assert!(matches!(err, UnpackError::Limit { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(!dest.exists());
    untouched(sb.path());
}

/// A tar stream of `count` tiny files, generated as it is read (stored, not
/// compressed, so generating it costs nothing).
struct ManyEntries {
    next: u64,
    count: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ManyEntries {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.next == self.count {
                return Ok(0);
            }
            self.buf = file(&format!("f{}", self.next), b"x", 0o644);
            self.next += 1;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn a_million_tiny_entries_are_stopped_by_the_entry_cap() {
    let sb = sandbox();
    let dest = sb.path().join("dest");
    let (reader, writer) = std::io::pipe().unwrap();
    let producer = std::thread::spawn(move || {
        let mut gz = GzEncoder::new(writer, Compression::none());
        let mut entries = ManyEntries {
            next: 0,
            count: 1_000_000,
            buf: vec![],
            pos: 0,
        };
        // The consumer hangs up at the cap; that write error is expected.
        let _ = io::copy(&mut entries, &mut gz).and_then(|_| gz.finish().map(|_| 0));
    });
    let limits = Limits {
        max_entries: 20_000,
        ..Limits::default()
    };
    let err = unpack(io::BufReader::new(reader), &dest, &limits, "many--1").unwrap_err();
    assert!(
        err.to_string()
            .contains("entry count exceeds the limit of 20000"),
        "{err}"
    );
    producer.join().unwrap();
    assert!(!dest.exists());
    assert!(Limits::default().max_entries <= 100_000);
    untouched(sb.path());
}

#[test]
fn a_zstd_bomb_is_stopped_by_the_size_cap_and_a_stream_of_neither_codec_is_refused() {
    let sb = sandbox();
    let dest = sb.path().join("dest");
    let limits = Limits {
        max_total_bytes: 4 << 20,
        ..Limits::default()
    };
    // 8 MiB of entries and a GiB of zeros behind them, zstd-compressed as
    // they are read by the unpacker (which hangs up at the cap).
    let (reader, writer) = std::io::pipe().unwrap();
    let producer = std::thread::spawn(move || {
        let mut zst = zstd::stream::write::Encoder::new(writer, 1).unwrap();
        for i in 0..8 {
            let e = entry(
                header(&format!("z{i}"), 1 << 20, b'0', "", 0o644),
                &vec![0u8; 1 << 20],
            );
            if zst.write_all(&e).is_err() {
                return;
            }
        }
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            if zst.write_all(&zeros).is_err() {
                return;
            }
        }
        let _ = zst.finish();
    });
    let err = unpack(io::BufReader::new(reader), &dest, &limits, "zbomb--1").unwrap_err();
    assert!(matches!(err, UnpackError::Limit { .. }), "{err}");
    producer.join().unwrap();
    assert!(!dest.exists());
    // Neither gzip nor zstd (a zip's magic): refused, nothing written.
    refuse(
        sb.path(),
        b"PK\x03\x04not a package",
        "neither a gzip nor a zstd",
    );
    // A zstd archive cut in half.
    let tar = {
        let mut t = Vec::new();
        flate2::read::MultiGzDecoder::new(&package_archive("t--1", &[("data", &[7u8; 5000])])[..])
            .read_to_end(&mut t)
            .unwrap();
        t
    };
    let zst = zstd::stream::encode_all(&tar[..], 3).unwrap();
    refuse(sb.path(), &zst[..zst.len() / 2], "truncated or corrupt");
    untouched(sb.path());
}

#[test]
fn a_truncated_archive_is_refused() {
    let sb = sandbox();
    let archive = package_archive("t--1", &[("data", &[7u8; 5000])]);
    refuse(
        sb.path(),
        &archive[..archive.len() / 2],
        "truncated or corrupt",
    );
    untouched(sb.path());
}
