//! `theseus config render` end to end, with no cluster: the examples render
//! into archives named by their content, the same inputs give the same
//! bytes, problems are all printed with their field paths, and the output
//! activates with `theseus pkg`.

use std::path::Path;

use crate::support::run::stdout_ok;
use crate::support::{repo_root, theseus_command};

fn render(bundle: &str, facts: Option<&str>, out: &Path) -> std::process::Output {
    let examples = repo_root().join("examples/config");
    let mut cmd = theseus_command();
    cmd.args(["config", "render", "-m"])
        .arg(&examples)
        .arg("-f")
        .arg(examples.join(bundle))
        .arg("-o")
        .arg(out);
    if let Some(facts) = facts {
        cmd.arg("--facts").arg(examples.join(facts));
    }
    cmd.output().unwrap()
}

/// The ids printed, in order.
fn ids(out: &std::process::Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

#[test]
fn config_render_needs_no_cluster_and_its_package_activates_with_pkg() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two, root) = (
        dir.path().join("one"),
        dir.path().join("two"),
        dir.path().join("root"),
    );
    let first = ids(&render("demo-config-bundle.yaml", None, &one));
    let second = ids(&render("demo-config-bundle.yaml", None, &two));
    assert_eq!(first, second);
    assert_eq!(first.len(), 1);
    let id = &first[0];
    assert!(
        id.starts_with("demo-config--cfg.") && id.len() == "demo-config--cfg.".len() + 16,
        "{id}"
    );
    let archive = format!("{id}.tar.gz");
    let bytes = std::fs::read(one.join(&archive)).unwrap();
    assert_eq!(
        bytes,
        std::fs::read(two.join(&archive)).unwrap(),
        "same bytes"
    );

    let pkg = |args: &[&str]| {
        stdout_ok(
            theseus_command()
                .arg("pkg")
                .arg("--root")
                .arg(&root)
                .args(args),
        )
    };
    pkg(&["add", one.join(&archive).to_str().unwrap()]);
    pkg(&["activate", id]);
    let conf = std::fs::read_to_string(root.join("current/etc/demo-config/demo.conf")).unwrap();
    assert_eq!(
        conf,
        "greeting = hello from theseus config\nlisten = 127.0.0.1:8080\nenvironment = dev\n"
    );
    // The secret is a reference the node resolves, never a value.
    let token = std::fs::read_to_string(root.join("current/etc/demo-config/api-token")).unwrap();
    assert_eq!(token, "${secret:apiToken}\n");
}

#[test]
fn config_render_prints_every_problem_with_its_field_path_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bad.yaml");
    std::fs::write(
        &bundle,
        "apiVersion: theseus.dev/v1alpha1
kind: ConfigBundle
metadata: {name: bad}
spec:
  package: demo-config
  modules: [{name: demo-web}]
  values: {port: 80, environment: prod, apiToken: plain, colour: red}
",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = theseus_command()
        .args(["config", "render", "-m"])
        .arg(repo_root().join("examples/config"))
        .arg("-f")
        .arg(&bundle)
        .arg("-o")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "spec.values.port: 80 is outside 1024..65535",
        "spec.values.apiToken: apiToken is secret; give it with spec.valuesFrom",
        "spec.values.colour: no module of the bundle has this parameter",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(
        !text.contains("plain"),
        "a secret value is never printed:\n{text}"
    );
    assert!(!out_dir.exists(), "nothing written");
}

#[test]
fn a_cluster_s_facts_split_the_output_and_facts_no_file_uses_change_no_id() {
    let dir = tempfile::tempdir().unwrap();
    let before = ids(&render(
        "zookeeper-bundle.yaml",
        Some("analytics-facts.json"),
        &dir.path().join("a"),
    ));
    assert_eq!(before.len(), 2);
    assert!(
        before[0].starts_with("zookeeper-config--cfg."),
        "{before:?}"
    );
    assert!(
        before[1].starts_with("zookeeper-config-zookeeper--cfg."),
        "{before:?}"
    );
    let zoo = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(dir.path().join("a").join(format!("{}.tar.gz", before[1])))
        .arg("etc/zookeeper/zoo.cfg")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&zoo.stdout).contains("server.3=analytics-3:2888:3888"),
        "{}",
        String::from_utf8_lossy(&zoo.stdout)
    );
    // Kafka's hosts are in the facts but in no file: same ids.
    let facts = std::fs::read_to_string(repo_root().join("examples/config/analytics-facts.json"))
        .unwrap()
        .replace("analytics-5", "analytics-6");
    let moved = dir.path().join("facts.json");
    std::fs::write(&moved, facts).unwrap();
    let examples = repo_root().join("examples/config");
    let after = ids(&theseus_command()
        .args(["config", "render", "-m"])
        .arg(&examples)
        .arg("-f")
        .arg(examples.join("zookeeper-bundle.yaml"))
        .arg("--facts")
        .arg(&moved)
        .arg("-o")
        .arg(dir.path().join("b"))
        .output()
        .unwrap());
    assert_eq!(before, after);
}

#[test]
fn the_config_examples_are_accepted_by_the_api_server() {
    let Some(tb) = crate::support::with_crds() else {
        return;
    };
    let examples = repo_root().join("examples/config");
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            tb.kubectl_ok(&["apply", "--dry-run=server", "-f", path.to_str().unwrap()]);
        }
    }
    // The schema refuses a mode a package cannot hold.
    let bad = "apiVersion: theseus.dev/v1alpha1
kind: ConfigModule
metadata: {name: bad-mode}
spec: {version: \"1\", templates: [{path: a, mode: \"0600\", content: x}]}
";
    let out = tb.kubectl_stdin(&["apply", "--dry-run=server"], bad);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.templates[0].mode"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
