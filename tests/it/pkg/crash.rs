//! Crash safety: `theseus pkg activate` is killed at every step boundary
//! (failpoints) and at random moments (SIGKILL); after each, `recover` and
//! `check` pass and `current` holds exactly the old set or the new one.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use theseus::pkg::failpoint;

use crate::support::pkg::*;
use crate::support::repo_server::RepoServer;
use crate::support::{run, theseus_command};

const OLD: &[&str] = &["alpha--1", "beta--1"];
const NEW: &[&str] = &["alpha--2", "beta--1", "gamma--1"];
const RUNS_PER_STEP: usize = 6;
const RANDOM_RUNS: usize = 130;

/// The steps after which the new set must be active.
const COMMITTED: &[&str] = &[
    "switch-renamed",
    "switch-synced",
    "gc-partial",
    "journal-cleared",
];

/// Concurrent runs (each on its own root).
const WORKERS: usize = 4;

enum Job {
    /// Exit at this failpoint.
    Failpoint(&'static str),
    /// SIGKILL after this delay.
    Kill(Duration),
}

/// Runs one crashed activation on `root`; returns whether the new set won.
fn run(job: &Job, root: &Path, url: &str, seed: u64, i: usize) -> bool {
    match job {
        Job::Failpoint(step) => {
            let status = activate_new(root, url)
                .env(failpoint::ENV, step)
                .status()
                .unwrap();
            assert_eq!(
                status.code(),
                Some(failpoint::EXIT_CODE),
                "failpoint {step} was not reached"
            );
            let is_new = assert_whole(root, &format!("failpoint {step} (run {i})"));
            assert_eq!(
                is_new,
                COMMITTED.contains(step),
                "failpoint {step}: wrong side of the switch"
            );
            is_new
        }
        Job::Kill(delay) => {
            let mut child = activate_new(root, url).spawn().unwrap();
            std::thread::sleep(*delay);
            let _ = child.kill(); // SIGKILL
            child.wait().unwrap();
            assert_whole(
                root,
                &format!("seed {seed} run {i}, SIGKILL after {delay:?}"),
            )
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let (src, dst) = (item.path(), to.join(item.file_name()));
        let kind = item.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if kind.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

fn pkg(root: &Path) -> Command {
    let mut cmd = theseus_command();
    cmd.arg("pkg").arg("--root").arg(root);
    cmd
}

fn activate_new(root: &Path, url: &str) -> Command {
    let mut cmd = pkg(root);
    cmd.args(["--keep", "0", "activate"])
        .args(NEW)
        .args(["--repo", url, "--allow-unsigned"]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd
}

/// After a crash: recover and check pass, the set is old or new as a
/// whole, and nothing temporary is left. Returns whether the new set won.
fn assert_whole(root: &Path, context: &str) -> bool {
    let recover = pkg(root).arg("recover").output().unwrap();
    assert!(
        recover.status.success(),
        "{context}: recover failed: {}",
        String::from_utf8_lossy(&recover.stderr)
    );
    let check = pkg(root).arg("check").output().unwrap();
    assert!(
        check.status.success(),
        "{context}: check failed: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let set: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("current/set.json")).unwrap()).unwrap();
    let ids: Vec<String> = set["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let is_new = ids == NEW;
    assert!(is_new || ids == OLD, "{context}: current holds {ids:?}");
    let alpha = std::fs::read_to_string(root.join("current/bin/alpha")).unwrap();
    assert_eq!(
        alpha,
        if is_new { "alpha 2\n" } else { "alpha 1\n" },
        "{context}: mixed tree"
    );
    assert_eq!(
        root.join("current/lib/gamma").exists(),
        is_new,
        "{context}: mixed tree"
    );
    let leftovers: Vec<String> = tree(root)
        .into_iter()
        .filter(|p| p.contains(".tmp") || p.starts_with("downloads/"))
        .collect();
    assert!(leftovers.is_empty(), "{context}: left behind {leftovers:?}");
    assert!(
        !root.join("journal.json").exists(),
        "{context}: journal left behind"
    );
    is_new
}

#[test]
fn activation_killed_at_any_moment_leaves_the_old_set_or_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    make_repo(
        &dir.path().join("repo"),
        &[
            ("alpha--1", &[("bin/alpha", "alpha 1\n")]),
            (
                "alpha--2",
                &[("bin/alpha", "alpha 2\n"), ("etc/alpha.conf", "x\n")],
            ),
            (
                "beta--1",
                &[("bin/beta", "beta\n"), ("lib/beta/libbeta.so", "so\n")],
            ),
            (
                "gamma--1",
                &[("lib/gamma", "gamma\n"), ("share/doc", "doc\n")],
            ),
        ],
        None,
    );
    let server = RepoServer::start(theseus_command(), &dir.path().join("repo"));
    let template = dir.path().join("template");
    run::stdout_ok(pkg(&template).arg("bootstrap").args(OLD).args([
        "--repo",
        &server.url,
        "--allow-unsigned",
    ]));

    // One undisturbed run tells how long an activation takes here.
    let timing_root = dir.path().join("timing");
    copy_tree(&template, &timing_root);
    let started = Instant::now();
    assert!(
        activate_new(&timing_root, &server.url)
            .status()
            .unwrap()
            .success()
    );
    let full = started.elapsed();
    assert!(assert_whole(&timing_root, "undisturbed run"));

    let seed: u64 = rand::thread_rng().r#gen();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut jobs: Vec<Job> = Vec::new();
    for step in failpoint::ACTIVATE_STEPS {
        jobs.extend((0..RUNS_PER_STEP).map(|_| Job::Failpoint(step)));
    }
    // Up to one and a half activations: some kills land after the switch,
    // a few after the end.
    let span = full.as_micros() as u64 * 3 / 2;
    jobs.extend(
        (0..RANDOM_RUNS).map(|_| Job::Kill(Duration::from_micros(rng.gen_range(0..=span)))),
    );

    let next = std::sync::atomic::AtomicUsize::new(0);
    let new_sets = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(job) = jobs.get(i) else { break };
                    let root = dir.path().join(format!("run-{i}"));
                    copy_tree(&template, &root);
                    if run(job, &root, &server.url, seed, i) {
                        new_sets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    std::fs::remove_dir_all(&root).unwrap();
                }
            });
        }
    });
    let runs = jobs.len();
    let new = new_sets.into_inner();
    eprintln!(
        "{runs} crash runs (seed {seed}): {new} ended with the new set, {} with the old; one activation takes {full:?}",
        runs - new
    );
    assert!(runs >= 200);
}
