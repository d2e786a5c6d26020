//! `theseus pkg` and `theseus repo` end to end, through the binary.

use std::path::Path;

use serde_json::Value;

use crate::support::pkg::*;
use crate::support::repo_server::RepoServer;
use crate::support::{run, theseus_command};

fn pkg(root: &Path, args: &[&str]) -> Result<String, String> {
    let out = theseus_command()
        .arg("pkg")
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "failure must be one line: {stderr}"
        );
        assert!(stderr.starts_with("theseus: "), "{stderr}");
        Err(stderr)
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn build(dir: &Path, out: &Path) -> String {
    let stdout = run::stdout_ok(
        theseus_command()
            .args(["pkg", "--format", "json", "build"])
            .arg(dir)
            .arg("-o")
            .arg(out),
    );
    json(&stdout)["path"].as_str().unwrap().to_owned()
}

#[test]
fn building_the_same_directory_twice_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let src = package_dir(
        dir.path(),
        "same--1",
        &[],
        &[("bin/a", "a\n"), ("lib/z/b", "b\n"), ("etc/c", "c\n")],
    );
    std::os::unix::fs::symlink("b", src.join("lib/z/b.1")).unwrap();
    let first = std::fs::read(build(&src, &dir.path().join("one"))).unwrap();
    // Different mtimes and a different umask-like mode must not matter.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(src.join("bin/a"), "a\n").unwrap();
    let second = std::fs::read(build(&src, &dir.path().join("two"))).unwrap();
    assert_eq!(first, second);
}

#[test]
fn an_invalid_pkginfo_is_reported_with_its_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("bad");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(
        src.join("pkginfo.json"),
        r#"{"id":"bad--1","service":{"start":[]}}"#,
    )
    .unwrap();
    let out = theseus_command()
        .args(["pkg", "build"])
        .arg(&src)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bad/pkginfo.json: field service.start"),
        "{err}"
    );
}

#[test]
fn keygen_prints_a_public_key_the_crd_pattern_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("repo.key");
    let out = theseus_command()
        .args(["repo", "keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(public.len(), 44);
    assert!(
        public.ends_with('=')
            && public[..43]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("repo.key.pub"))
            .unwrap()
            .trim(),
        public
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn every_command_has_help_with_an_example() {
    let groups: &[(&str, &[&str])] = &[
        (
            "pkg",
            &[
                "list",
                "active",
                "add",
                "remove",
                "activate",
                "rollback",
                "check",
                "recover",
                "bootstrap",
                "gc",
                "build",
            ],
        ),
        ("repo", &["index", "keygen", "serve"]),
    ];
    for (group, commands) in groups {
        for command in *commands {
            let out = theseus_command()
                .args([group, command, "--help"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("Example"),
                "{group} {command}: {text}"
            );
        }
    }
}

#[test]
fn local_archives_are_added_activated_rolled_back_checked_and_collected() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("root"), dir.path().join("out"));
    let a1 = build(
        &package_dir(dir.path(), "a--1", &[], &[("bin/a", "a1\n")]),
        &out,
    );
    let a2 = build(
        &package_dir(dir.path(), "a--2", &[], &[("bin/a", "a2\n")]),
        &out,
    );
    let b1 = build(
        &package_dir(dir.path(), "b--1", &["a"], &[("bin/a", "clash\n")]),
        &out,
    );
    for archive in [&a1, &a2, &b1] {
        assert_eq!(
            json(&pkg(&root, &["--format", "json", "add", archive]).unwrap())["sha256"]
                .as_str()
                .unwrap()
                .len(),
            64
        );
    }
    pkg(&root, &["activate", "a--1"]).unwrap();
    let switched = json(&pkg(&root, &["--format", "json", "activate", "a--2"]).unwrap());
    assert_eq!(
        (
            switched["generation"].as_u64(),
            switched["previous"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(
        std::fs::read_to_string(root.join("current/bin/a")).unwrap(),
        "a2\n"
    );

    let list = json(&pkg(&root, &["--format", "json", "list"]).unwrap());
    let active: Vec<bool> = list["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["active"].as_bool().unwrap())
        .collect();
    assert_eq!(active, [false, true, false], "{list}");
    let err = pkg(&root, &["remove", "a--2"]).unwrap_err();
    assert!(
        err.contains("a--2 is in use by generation 2 (the active one)"),
        "{err}"
    );
    let err = pkg(&root, &["activate", "a--2", "b--1"]).unwrap_err();
    assert!(err.contains("both provide bin/a"), "{err}");
    let err = pkg(&root, &["activate", "b--1"]).unwrap_err();
    assert!(err.contains("b--1 requires a"), "{err}");

    let back = json(&pkg(&root, &["--format", "json", "rollback"]).unwrap());
    assert_eq!(back["generation"].as_u64(), Some(1));
    assert_eq!(
        std::fs::read_to_string(root.join("current/bin/a")).unwrap(),
        "a1\n"
    );
    let active = json(&pkg(&root, &["--format", "json", "active"]).unwrap());
    assert_eq!(active["ids"], serde_json::json!(["a--1"]));
    assert_eq!(
        active["hash"].as_str().unwrap(),
        theseus::pkg::set_hash(&["a--1".parse().unwrap()])
    );
    pkg(&root, &["check"]).unwrap();

    // Damage the active tree: check names the problem.
    std::fs::remove_file(root.join("generations/1/bin/a")).unwrap();
    let err = pkg(&root, &["check"]).unwrap_err();
    assert!(err.contains("generations/1/bin/a: missing"), "{err}");
    std::os::unix::fs::symlink("../active/a/bin/a", root.join("generations/1/bin/a")).unwrap();

    let gc = json(&pkg(&root, &["--format", "json", "gc", "--keep", "0"]).unwrap());
    assert_eq!(gc["generations"], serde_json::json!([2]));
    assert_eq!(gc["packages"], serde_json::json!(["a--2", "b--1"]));
    pkg(&root, &["check"]).unwrap();
    let err = pkg(&root, &["rollback"]).unwrap_err();
    assert!(err.contains("no generation older than"), "{err}");
}

#[test]
fn bootstrap_refuses_a_root_that_already_has_an_active_set() {
    let dir = tempfile::tempdir().unwrap();
    make_repo(
        &dir.path().join("repo"),
        &[("a--1", &[("bin/a", "a\n")])],
        None,
    );
    let server = RepoServer::start(theseus_command(), &dir.path().join("repo"));
    let root = dir.path().join("root");
    pkg(
        &root,
        &[
            "bootstrap",
            "--repo",
            &server.url,
            "--allow-unsigned",
            "a--1",
        ],
    )
    .unwrap();
    let err = pkg(
        &root,
        &[
            "bootstrap",
            "--repo",
            &server.url,
            "--allow-unsigned",
            "a--1",
        ],
    )
    .unwrap_err();
    assert!(err.contains("already has an active set"), "{err}");
    let active = json(&pkg(&root, &["--format", "json", "active"]).unwrap());
    assert_eq!(active["generation"].as_u64(), Some(1));
}

#[test]
fn a_zstd_package_is_built_indexed_served_and_activated_like_a_gzip_one() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let packages = repo.join("packages");
    let zstd_build = |src: &Path, out: &Path| {
        let stdout = run::stdout_ok(
            theseus_command()
                .args(["pkg", "--format", "json", "build", "--compression", "zstd"])
                .arg(src)
                .arg("-o")
                .arg(out),
        );
        json(&stdout)["path"].as_str().unwrap().to_owned()
    };
    let z = package_dir(dir.path(), "z--1", &[], &[("bin/z", "zstd\n")]);
    let path = zstd_build(&z, &packages);
    assert!(path.ends_with("z--1.tar.zst"), "{path}");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], [0x28, 0xb5, 0x2f, 0xfd], "zstd's magic");
    // Deterministic too.
    let again = zstd_build(&z, &dir.path().join("again"));
    assert_eq!(bytes, std::fs::read(again).unwrap());
    // A gzip package next to it, which requires the zstd one.
    build(
        &package_dir(dir.path(), "g--1", &["z"], &[("bin/g", "gzip\n")]),
        &packages,
    );
    run::stdout_ok(theseus_command().args(["repo", "index"]).arg(&repo));
    let index: Value =
        serde_json::from_slice(&std::fs::read(repo.join("index.json")).unwrap()).unwrap();
    let paths: Vec<&str> = index["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["packages/g--1.tar.gz", "packages/z--1.tar.zst"]);

    // Fetched from the served repository and activated with the gzip one.
    let server = RepoServer::start(theseus_command(), &repo);
    let root = dir.path().join("root");
    pkg(
        &root,
        &[
            "activate",
            "--repo",
            &server.url,
            "--allow-unsigned",
            "g--1",
            "z--1",
        ],
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("current/bin/z")).unwrap(),
        "zstd\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("current/bin/g")).unwrap(),
        "gzip\n"
    );
    // Added from a file too, by its name.
    let other = dir.path().join("other");
    pkg(&other, &["add", &path]).unwrap();
    pkg(&other, &["activate", "z--1"]).unwrap();

    // One id in both codecs is refused by the indexer, naming both.
    build(&z, &packages);
    let out = theseus_command()
        .args(["repo", "index"])
        .arg(&repo)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("z--1") && said.contains("remove one of them"),
        "{said}"
    );
}
