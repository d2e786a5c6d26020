//! Helpers shared by the `pkg` tests: sample packages, a repository built
//! and indexed in-process, and raw tar headers for archives the `tar`
//! crate's builder refuses to write.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

/// Writes a package directory for `id` with `files` (path, contents) and
/// the given `requires`, and returns its path.
pub fn package_dir(base: &Path, id: &str, requires: &[&str], files: &[(&str, &str)]) -> PathBuf {
    let dir = base.join("src").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let info = serde_json::json!({"id": id, "requires": requires});
    std::fs::write(dir.join("pkginfo.json"), info.to_string()).unwrap();
    for (rel, text) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// Builds a repository under `repo` holding `packages` (id, files) and
/// writes its index (signed with `key` when given).
pub fn make_repo(
    repo: &Path,
    packages: &[(&str, &[(&str, &str)])],
    key: Option<&ed25519_dalek::SigningKey>,
) {
    let out = repo.join("packages");
    for (id, files) in packages {
        let dir = package_dir(repo.parent().unwrap(), id, &[], files);
        theseus::pkg::build::build(&dir, &out).unwrap();
    }
    let options = theseus::pkg::index::WriteOptions {
        key,
        ..Default::default()
    };
    theseus::pkg::index::write(repo, options).unwrap();
}

/// A raw 512-byte ustar header.
pub fn header(name: &str, size: u64, typeflag: u8, link: &str, mode: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    let size_text = format!("{size:011o}");
    if size_text.len() <= 11 {
        octal(&mut h[124..136], size);
    } else {
        // Twelve digits and no terminator: what GNU tar accepts for 8-64 GB.
        h[124..136].copy_from_slice(format!("{size:012o}").as_bytes());
    }
    octal(&mut h[136..148], 0);
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(text.as_bytes());
}

/// A PAX extended header entry carrying `records` (key, value).
pub fn pax(records: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        let rest = format!(" {k}={v}\n");
        let mut len = rest.len() + 1;
        while format!("{len}{rest}").len() != len {
            len += 1;
        }
        body.extend_from_slice(format!("{len}{rest}").as_bytes());
    }
    entry(
        header("PaxHeader", body.len() as u64, b'x', "", 0o644),
        &body,
    )
}

/// One entry: a header and its data padded to 512 bytes.
pub fn entry(header: [u8; 512], data: &[u8]) -> Vec<u8> {
    let mut out = header.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// A regular file entry.
pub fn file(name: &str, data: &[u8], mode: u32) -> Vec<u8> {
    entry(header(name, data.len() as u64, b'0', "", mode), data)
}

/// The gzip-compressed tar stream of `entries` with its end marker.
pub fn tar_gz(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    for e in entries {
        gz.write_all(e).unwrap();
    }
    gz.write_all(&[0u8; 1024]).unwrap();
    gz.finish().unwrap()
}

/// A valid minimal package archive for `id` with `files`.
pub fn package_archive(id: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let info = serde_json::json!({"id": id}).to_string();
    let mut entries = vec![file("pkginfo.json", info.as_bytes(), 0o644)];
    entries.extend(files.iter().map(|(n, d)| file(n, d, 0o644)));
    tar_gz(&entries)
}

/// Every path under `dir`, relative and sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out);
    out.sort();
    out
}

fn walk(base: &Path, rel: &Path, out: &mut Vec<String>) {
    let Ok(items) = std::fs::read_dir(base.join(rel)) else {
        return;
    };
    for item in items {
        let item = item.unwrap();
        let child = rel.join(item.file_name());
        out.push(child.display().to_string());
        if item.file_type().unwrap().is_dir() {
            walk(base, &child, out);
        }
    }
}
