//! Benchmark: fetch, verify, unpack and activate a set of about 200 MB in
//! about 20,000 files from a local HTTP server, against the shell pipeline
//! it replaces (`curl -s URL | tee >(sha256sum) | tar -xz`), on the same
//! files in the same run; the same set built with zstd (`ID.tar.zst`)
//! against the limit of writing the files (`cp -a` of the unpacked set
//! from the page cache); then time a rollback on that set.
//!
//! `cargo bench --bench pkg_fetch` runs the full size. Without `--bench`
//! (as `cargo test --all-targets` runs it) it is a quick smoke run.

#[path = "../tests/it/support/repo_server.rs"]
mod repo_server;
#[path = "../tests/it/support/run.rs"]
mod run;

use repo_server::RepoServer;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use theseus::pkg::{self, Root};

const WORDS: &[&str] = &[
    "theseus",
    "package",
    "generation",
    "rollback",
    "journal",
    "fetch",
    "verify",
    "unpack",
    "node",
    "agent",
    "operator",
    "switch",
    "current",
    "symlink",
    "rename",
    "fsync",
    "index",
    "repository",
];

struct Size {
    packages: usize,
    files_per_package: usize,
    mean_file: usize,
    rounds: usize,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let size = if full {
        Size {
            packages: 10,
            files_per_package: 2_000,
            mean_file: 10_000,
            rounds: 5,
        }
    } else {
        Size {
            packages: 2,
            files_per_package: 50,
            mean_file: 2_000,
            rounds: 1,
        }
    };
    let work = tempfile::tempdir_in(
        std::env::var_os("BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir),
    )
    .unwrap();
    let (repo, repo_zst) = (work.path().join("repo"), work.path().join("repo-zst"));
    let (ids, bytes, files) = generate(work.path(), &size);
    build_repo(&repo, work.path(), &ids, pkg::codec::Codec::Gzip);
    build_repo(&repo_zst, work.path(), &ids, pkg::codec::Codec::Zstd);
    println!(
        "set: {} packages, {files} files, {:.1} MB unpacked, {:.1} MB gzip, {:.1} MB zstd",
        ids.len(),
        bytes as f64 / 1e6,
        compressed(&repo) as f64 / 1e6,
        compressed(&repo_zst) as f64 / 1e6
    );
    let bin = private_binary(work.path());
    let server = RepoServer::start(Command::new(&bin), &repo);
    let server_zst = RepoServer::start(Command::new(&bin), &repo_zst);
    let urls: Vec<String> = ids
        .iter()
        .map(|id| format!("{}/packages/{id}.tar.gz", server.url))
        .collect();

    let (mut ours, mut theirs, mut zst, mut copy) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..size.rounds {
        theirs.push(baseline(
            &urls,
            &work.path().join(format!("baseline-{round}")),
        ));
        ours.push(theseus_activate(
            &bin,
            &server.url,
            &ids,
            &work.path().join(format!("root-{round}")),
        ));
        zst.push(theseus_activate(
            &bin,
            &server_zst.url,
            &ids,
            &work.path().join(format!("root-zst-{round}")),
        ));
        copy.push(copy_limit(
            work.path(),
            &ids,
            &work.path().join(format!("copy-{round}")),
        ));
    }
    let (t, b) = (median(&mut ours), median(&mut theirs));
    let (z, c) = (median(&mut zst), median(&mut copy));
    println!(
        "theseus activate (gzip): {:>8.3} s   (runs: {})",
        t.as_secs_f64(),
        list(&ours)
    );
    println!(
        "curl|tee|tar -xz:        {:>8.3} s   (runs: {})",
        b.as_secs_f64(),
        list(&theirs)
    );
    println!(
        "theseus activate (zstd): {:>8.3} s   (runs: {})",
        z.as_secs_f64(),
        list(&zst)
    );
    println!(
        "cp -a of the files:      {:>8.3} s   (runs: {})",
        c.as_secs_f64(),
        list(&copy)
    );
    println!(
        "ratio theseus/baseline: {:.2}",
        t.as_secs_f64() / b.as_secs_f64()
    );
    println!(
        "ratio zstd activate/cp -a: {:.2}; zstd/gzip activate: {:.2}",
        z.as_secs_f64() / c.as_secs_f64(),
        z.as_secs_f64() / t.as_secs_f64()
    );

    let root = work.path().join("root-0");
    let (in_process, cli) = rollback(&bin, &root);
    println!(
        "rollback: {:.2} ms in-process, {:.2} ms as `theseus pkg rollback`",
        ms(in_process),
        ms(cli)
    );
}

/// Writes the packages' directories under `work/src`, plus a tiny `seed--1`
/// package for the first generation.
fn generate(work: &Path, size: &Size) -> (Vec<String>, u64, usize) {
    let mut rng = StdRng::seed_from_u64(20_000);
    let (mut ids, mut bytes, mut files) = (Vec::new(), 0u64, 0usize);
    for p in 0..size.packages {
        let id = format!("bench{p}--1.0");
        let dir = work.join("src").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pkginfo.json"), format!("{{\"id\":\"{id}\"}}")).unwrap();
        for f in 0..size.files_per_package {
            let sub = dir.join(format!("lib/bench{p}/d{:02}", f % 40));
            std::fs::create_dir_all(&sub).unwrap();
            let len = rng.gen_range(size.mean_file / 10..size.mean_file * 19 / 10);
            let data = if f % 2 == 0 {
                text(&mut rng, len)
            } else {
                random(&mut rng, len)
            };
            std::fs::write(sub.join(format!("f{f:05}")), &data).unwrap();
            bytes += data.len() as u64;
            files += 1;
        }
        ids.push(id);
    }
    let seed = work.join("src/seed--1");
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::write(seed.join("pkginfo.json"), "{\"id\":\"seed--1\"}").unwrap();
    (ids, bytes, files)
}

/// Builds the packages of `work/src` (and the seed) into `repo/packages`
/// with `codec`, and indexes and signs them.
fn build_repo(repo: &Path, work: &Path, ids: &[String], codec: pkg::codec::Codec) {
    for id in ids.iter().map(String::as_str).chain(["seed--1"]) {
        pkg::build::build_with(&work.join("src").join(id), &repo.join("packages"), codec).unwrap();
    }
    let key = signing_key();
    let options = pkg::index::WriteOptions {
        key: Some(&key),
        ..Default::default()
    };
    pkg::index::write(repo, options).unwrap();
}

/// The limit of unpacking: `cp -a` of the set's files (just written, so
/// from the page cache) into a fresh directory.
fn copy_limit(work: &Path, ids: &[String], dest: &Path) -> Duration {
    std::fs::create_dir_all(dest).unwrap();
    let started = Instant::now();
    let status = Command::new("cp")
        .arg("-a")
        .args(ids.iter().map(|id| work.join("src").join(id)))
        .arg(dest)
        .status()
        .unwrap();
    let took = started.elapsed();
    assert!(status.success(), "cp -a failed");
    took
}

/// The repository's signing key: fixed, so that the agent's side of the
/// measurement includes verifying the index as a node does.
fn signing_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32])
}

fn text(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())].as_bytes());
        out.push(if rng.gen_ratio(1, 12) { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

fn random(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

fn compressed(repo: &Path) -> u64 {
    std::fs::read_dir(repo.join("packages"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// The shell pipeline Theseus replaces, over every package in turn.
fn baseline(urls: &[String], dest: &Path) -> Duration {
    std::fs::create_dir_all(dest).unwrap();
    let mut script = String::from("set -e -o pipefail\n");
    for (i, url) in urls.iter().enumerate() {
        script.push_str(&format!(
            "mkdir p{i}; curl -sf {url} | tee >(sha256sum >/dev/null) | tar -xz -C p{i}\n"
        ));
    }
    let started = Instant::now();
    let status = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dest)
        .status()
        .unwrap();
    let took = started.elapsed();
    assert!(status.success(), "the baseline pipeline failed");
    took
}

/// `theseus pkg activate` of the whole set onto a root whose current
/// generation holds only `seed--1`.
fn theseus_activate(bin: &Path, url: &str, ids: &[String], root: &Path) -> Duration {
    let key = pkg::index::encode_key(signing_key().verifying_key().as_bytes());
    let run = |args: &[&str]| {
        run::stdout_ok(
            Command::new(bin)
                .arg("pkg")
                .arg("--root")
                .arg(root)
                .args(args)
                .args(["--repo", url, "--key", &key]),
        );
    };
    run(&["bootstrap", "seed--1"]);
    let mut args = vec!["activate"];
    args.extend(ids.iter().map(String::as_str));
    let started = Instant::now();
    run(&args);
    started.elapsed()
}

/// Times a rollback from the big set to the seed generation: once through
/// the library, once (after switching forward again) through the CLI.
fn rollback(bin: &Path, root: &Path) -> (Duration, Duration) {
    let opened = Root::open(root).unwrap();
    let started = Instant::now();
    let switched = opened.rollback().unwrap();
    let in_process = started.elapsed();
    assert_eq!(switched.ids.len(), 1);
    drop(opened);
    // Forward again (everything cached), then roll back through the CLI.
    let set: Vec<String> = std::fs::read_dir(root.join("packages"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("bench"))
        .collect();
    let status = Command::new(bin)
        .args(["pkg", "--root"])
        .arg(root)
        .arg("activate")
        .args(&set)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let status = Command::new(bin)
        .args(["pkg", "--root"])
        .arg(root)
        .arg("rollback")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let cli = started.elapsed();
    assert!(status.success());
    (in_process, cli)
}

/// A private copy of the release binary (the build directory is shared).
fn private_binary(work: &Path) -> PathBuf {
    let copy = work.join("theseus");
    std::fs::copy(env!("CARGO_BIN_EXE_theseus"), &copy).unwrap();
    copy
}

fn median(runs: &mut [Duration]) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn list(runs: &[Duration]) -> String {
    runs.iter()
        .map(|d| format!("{:.3}", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
