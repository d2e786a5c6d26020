//! The archive unpacker against mutated and generated archives: it never
//! panics or hangs, never writes outside its directory, leaves nothing
//! behind on error, and what it accepts keeps every rule (no setuid bit, no
//! device, no link out of the package, within the limits).

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use rand::Rng;
use rand::rngs::StdRng;
use theseus::pkg::unpack::{Limits, unpack};

use crate::engine::{Verdict, mutate, pick};

/// Small limits, so that every input is cheap.
pub const LIMITS: Limits = Limits {
    max_total_bytes: 1 << 20,
    max_entries: 256,
    max_path_len: 512,
};

/// A sandbox: `outside/secret` must stay as it is; `dest` is unpacked into.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), "keep").unwrap();
        Sandbox { dir }
    }

    fn dest(&self) -> PathBuf {
        self.dir.path().join("dest")
    }

    /// Unpacks `archive` and checks everything; removes `dest` afterwards.
    pub fn check(&self, archive: &[u8]) -> Verdict {
        let dest = self.dest();
        let result = unpack(archive, &dest, &LIMITS, "fuzz--1");
        let verdict = match &result {
            Err(e) if dest.exists() => Err(format!("refused ({e}) but left {}", dest.display())),
            Err(e) if e.to_string().is_empty() => Err("an empty error message".into()),
            Err(_) => Ok(()),
            Ok(stats) if stats.bytes > LIMITS.max_total_bytes => {
                Err(format!("wrote {} bytes past the limit", stats.bytes))
            }
            Ok(stats) if stats.entries > LIMITS.max_entries => {
                Err(format!("{} entries past the limit", stats.entries))
            }
            Ok(_) => accepted_tree_is_safe(&dest),
        };
        let outside = self.untouched();
        let _ = std::fs::remove_dir_all(&dest);
        verdict.and(outside)
    }

    fn untouched(&self) -> Verdict {
        let root = self.dir.path();
        let mut top: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "dest")
            .collect();
        top.sort();
        let inner: Vec<_> = std::fs::read_dir(root.join("outside"))
            .map_err(|e| format!("outside/: {e}"))?
            .map(|e| e.unwrap().file_name())
            .collect();
        let secret = root.join("outside/secret");
        let meta = std::fs::symlink_metadata(&secret).map_err(|e| format!("secret: {e}"))?;
        let text = std::fs::read_to_string(&secret).unwrap_or_default();
        if top != ["outside"]
            || inner.len() != 1
            || text != "keep"
            || meta.nlink() != 1
            || !meta.is_file()
        {
            return Err(format!(
                "something outside dest changed: top {top:?}, outside {inner:?}, secret {text:?} nlink {}",
                meta.nlink()
            ));
        }
        Ok(())
    }
}

/// Walks an unpacked tree: plain files without setid bits, directories, and
/// symlinks that resolve inside it.
fn accepted_tree_is_safe(dest: &Path) -> Verdict {
    let canonical = dest.canonicalize().map_err(|e| e.to_string())?;
    let mut todo = vec![dest.to_owned()];
    while let Some(dir) = todo.pop() {
        for item in std::fs::read_dir(&dir).map_err(|e| e.to_string())? {
            let path = item.map_err(|e| e.to_string())?.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| e.to_string())?;
            let kind = meta.file_type();
            if kind.is_dir() {
                todo.push(path);
            } else if kind.is_symlink() {
                link_stays_inside(dest, &canonical, &path)?;
            } else if kind.is_file() {
                if meta.permissions().mode() & 0o6000 != 0 {
                    return Err(format!("{} keeps a setuid or setgid bit", path.display()));
                }
            } else {
                return Err(format!(
                    "{} is neither file, directory nor link",
                    path.display()
                ));
            }
        }
    }
    Ok(())
}

fn link_stays_inside(dest: &Path, canonical: &Path, link: &Path) -> Verdict {
    match link.canonicalize() {
        Ok(real) if real.starts_with(canonical) => Ok(()),
        Ok(real) => Err(format!(
            "{} resolves outside: {}",
            link.display(),
            real.display()
        )),
        // Dangling (or a loop): follow it lexically, as far as it goes.
        Err(_) => {
            let target = std::fs::read_link(link).map_err(|e| e.to_string())?;
            let rel = link
                .parent()
                .unwrap()
                .strip_prefix(dest)
                .unwrap()
                .join(&target);
            let mut depth = 0i32;
            for part in rel.components() {
                match part {
                    Component::Normal(_) => depth += 1,
                    Component::ParentDir => depth -= 1,
                    Component::CurDir => {}
                    _ => depth = -1,
                }
                if depth < 0 {
                    return Err(format!(
                        "{} points outside: {}",
                        link.display(),
                        target.display()
                    ));
                }
            }
            Ok(())
        }
    }
}

// ---- inputs ----------------------------------------------------------

const NAMES: &[&str] = &[
    "a",
    "b",
    "bin",
    "pkginfo.json",
    "..",
    ".",
    "",
    "etc",
    "passwd",
    "outside",
    "secret",
    "dest",
    "x y",
    "\u{e9}",
];

fn path(rng: &mut StdRng) -> String {
    let mut parts: Vec<String> = (0..rng.gen_range(1..4))
        .map(|_| pick(rng, NAMES).to_string())
        .collect();
    match rng.gen_range(0..20) {
        0 => parts.push("c".repeat(256)),
        1 => parts.push("d".repeat(rng.gen_range(90..160))),
        _ => {}
    }
    let joined = parts.join("/");
    match rng.gen_range(0..12) {
        0 => format!("/{joined}"),
        1 => format!("{joined}/"),
        2 => format!("./{joined}"),
        _ => joined,
    }
}

/// A raw ustar header with `name`, size, type and link; the checksum is
/// right unless `bad_sum`.
fn header(name: &[u8], size: u64, kind: u8, link: &[u8], mode: u32, bad_sum: bool) -> [u8; 512] {
    let mut h = [0u8; 512];
    let (prefix, name) = if name.len() > 100 && name.len() <= 255 {
        let cut = name.len() - 100;
        (&name[..cut.min(155)], &name[cut.min(155)..])
    } else {
        (&name[..0], name)
    };
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if size < 0o77777777777 {
        octal(&mut h[124..136], size);
    } else {
        // base-256, as GNU tar writes sizes of 8 GiB and more
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], 0);
    h[156] = kind;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum::<u32>() + u32::from(bad_sum);
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}\0", width = field.len() - 1);
    let bytes = text.as_bytes();
    field.copy_from_slice(&bytes[bytes.len() - field.len()..]);
}

fn push_entry(out: &mut Vec<u8>, h: [u8; 512], data: &[u8]) {
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn pax_body(records: &[(&str, String)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        let rest = format!(" {k}={v}\n");
        let mut len = rest.len() + 1;
        while format!("{len}{rest}").len() != len {
            len += 1;
        }
        body.extend_from_slice(format!("{len}{rest}").as_bytes());
    }
    body
}

/// A tar stream of a few generated entries, hostile ones included.
fn generated_tar(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.gen_range(1..10) {
        let name = path(rng);
        let mode = *pick(rng, &[0o644, 0o755, 0o4755, 0o2755, 0o7777, 0o000, 0o1777]);
        let data: Vec<u8> = vec![b'x'; rng.gen_range(0..2000)];
        let bad_sum = rng.gen_ratio(1, 30);
        let link = path(rng);
        let kind = *pick(rng, b"0000555221134567xgLKZ\0");
        let size = match rng.gen_range(0..20) {
            0 => u64::MAX >> 1,
            1 => 1 << 40,
            2 => data.len() as u64 + rng.gen_range(1..600),
            3 => (data.len() as u64).saturating_sub(rng.gen_range(1..600)),
            _ => data.len() as u64,
        };
        match kind {
            b'x' | b'g' => {
                let records = [
                    ("path", path(rng)),
                    ("linkpath", link.clone()),
                    ("size", pick(rng, crate::engine::NUMBERS).to_string()),
                ];
                let body = pax_body(&records[..rng.gen_range(1..=3)]);
                push_entry(
                    &mut out,
                    header(b"PaxHeader", body.len() as u64, kind, b"", 0o644, bad_sum),
                    &body,
                );
            }
            b'L' | b'K' => {
                let long = format!(
                    "{}\0",
                    if kind == b'L' {
                        path(rng)
                    } else {
                        link.clone()
                    }
                )
                .repeat(rng.gen_range(1..3));
                push_entry(
                    &mut out,
                    header(
                        b"././@LongLink",
                        long.len() as u64,
                        kind,
                        b"",
                        0o644,
                        bad_sum,
                    ),
                    long.as_bytes(),
                );
            }
            b'0' | b'7' | b'\0' => push_entry(
                &mut out,
                header(name.as_bytes(), size, kind, b"", mode, bad_sum),
                &data,
            ),
            _ => push_entry(
                &mut out,
                header(name.as_bytes(), 0, kind, link.as_bytes(), mode, bad_sum),
                &[],
            ),
        }
    }
    if rng.gen_ratio(9, 10) {
        out.extend_from_slice(&[0u8; 1024]);
    }
    out
}

/// Field offsets and lengths of a ustar header, for targeted mutations.
const FIELDS: &[(usize, usize)] = &[
    (0, 100),
    (100, 8),
    (124, 12),
    (148, 8),
    (156, 1),
    (157, 100),
    (257, 8),
    (345, 155),
];

/// Values written over header fields.
const HOSTILE_FIELDS: &[&[u8]] = &[
    b"../../outside/x",
    b"/etc/passwd",
    b"a/../..",
    b"\xff\xfe",
    b"999999999999",
];

/// Mutates header fields of a tar stream, fixing the checksum most times.
fn mutate_headers(rng: &mut StdRng, tar: &mut [u8]) {
    let blocks = tar.len() / 512;
    if blocks == 0 {
        return;
    }
    for _ in 0..rng.gen_range(1..4) {
        let at = rng.gen_range(0..blocks) * 512;
        let (off, len) = *pick(rng, FIELDS);
        let field = &mut tar[at + off..at + off + len];
        match rng.gen_range(0..5) {
            0 => field.fill(b'7'),
            1 => field.fill(0),
            2 => {
                let v = *pick(rng, HOSTILE_FIELDS);
                let n = v.len().min(len);
                field[..n].copy_from_slice(&v[..n]);
            }
            3 => field[0] = *pick(rng, b"0123456LKxgSDVM\x80\xff"),
            _ => {
                let i = rng.gen_range(0..len);
                field[i] ^= 1 << rng.gen_range(0..8);
            }
        }
        if rng.gen_ratio(4, 5) {
            let h = &mut tar[at..at + 512];
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|b| *b as u32).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        }
    }
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = MultiGzDecoder::new(bytes)
        .take(4 << 20)
        .read_to_end(&mut out);
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Makes inputs: generated, mutated at the tar level, or mutated compressed.
pub fn generator() -> impl FnMut(&mut StdRng, &[Vec<u8>]) -> Vec<u8> {
    let mut tars: Vec<Vec<u8>> = Vec::new();
    move |rng: &mut StdRng, corpus: &[Vec<u8>]| {
        if tars.is_empty() {
            tars = corpus.iter().map(|c| gunzip(c)).collect();
        }
        generate(rng, corpus, &tars)
    }
}

/// A tar stream compressed as a package archive is: gzip mostly, zstd
/// a third of the time (the unpacker tells them apart by their first
/// bytes, and the same rules hold for both).
fn compress(rng: &mut StdRng, tar: &[u8]) -> Vec<u8> {
    if rng.gen_range(0..3) == 0 {
        zstd::stream::encode_all(tar, 1).unwrap()
    } else {
        gzip(tar)
    }
}

fn generate(rng: &mut StdRng, corpus: &[Vec<u8>], tars: &[Vec<u8>]) -> Vec<u8> {
    match rng.gen_range(0..10) {
        0..=2 => {
            let tar = generated_tar(rng);
            compress(rng, &tar)
        }
        3..=5 => {
            let mut tar = pick(rng, tars).clone();
            mutate_headers(rng, &mut tar);
            compress(rng, &tar)
        }
        6..=8 => {
            let tar = pick(rng, tars).clone();
            let mutated = mutate(
                rng,
                &tar,
                tars,
                &[b"ustar\x0000", b"././@LongLink", b"../", b"/"],
            );
            compress(rng, &mutated)
        }
        _ => {
            let seed = pick(rng, corpus);
            mutate(rng, seed, corpus, &[])
        }
    }
}
