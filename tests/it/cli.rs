//! The command line as people meet it: `--help` on every command has an
//! example, shell completions, and the binary as the kubectl plugin
//! `kubectl theseus`.

use std::process::Command;

use crate::support::{self, theseus};

fn help(path: &[String]) -> String {
    support::run::stdout_ok(Command::new(theseus()).args(path).arg("--help"))
}

/// The subcommand names under "Commands:" in a help text (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // An entry starts with two spaces and a name; wrapped descriptions
        // are indented further.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_command_and_subcommand_help_shows_an_example() {
    let mut pending: Vec<Vec<String>> = vec![vec![]];
    let mut checked = Vec::new();
    let mut missing = Vec::new();
    while let Some(path) = pending.pop() {
        let text = help(&path);
        let shown = format!("theseus {}", path.join(" "));
        if !text.contains("Example") {
            missing.push(shown.trim().to_owned());
        }
        for sub in subcommands(&text) {
            let mut next = path.clone();
            next.push(sub);
            pending.push(next);
        }
        checked.push(shown);
    }
    assert!(missing.is_empty(), "--help without an example: {missing:?}");
    // The walk reached the nested commands, not only the top level.
    for nested in [
        "theseus rollout status",
        "theseus pkg activate",
        "theseus discover watch",
        "theseus repo serve",
        "theseus completions",
    ] {
        assert!(
            checked.iter().any(|c| c == nested),
            "the walk did not reach {nested}: {checked:?}"
        );
    }
}

#[test]
fn completions_print_a_script_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _theseus"),
        ("zsh", "#compdef theseus"),
        ("fish", "complete -c theseus"),
    ] {
        let script = support::run::stdout_ok(Command::new(theseus()).args(["completions", shell]));
        assert!(
            script.contains(marker),
            "{shell}: no {marker:?} in the script"
        );
        for sub in ["rollout", "pkg", "completions"] {
            assert!(script.contains(sub), "{shell}: the script misses {sub}");
        }
    }
    let out = Command::new(theseus())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown shell is refused");
}

#[test]
fn global_log_format_is_accepted_before_and_after_the_subcommand() {
    for args in [
        &["--log-format", "json", "crds", "--help"][..],
        &["crds", "--log-format", "text", "--help"][..],
    ] {
        let out = Command::new(theseus()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
    }
    let out = Command::new(theseus())
        .args(["--log-format", "xml", "crds"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn kubectl_runs_the_binary_as_the_theseus_plugin() {
    let Some(tb) = require_testbed!() else { return };
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-theseus");
    std::os::unix::fs::symlink(theseus(), &plugin).unwrap();
    let testbed_path = tb
        .vars()
        .find(|(k, _)| *k == "PATH")
        .map(|(_, v)| v.clone());
    let path = format!(
        "{}:{}",
        dir.path().display(),
        testbed_path.unwrap_or_else(|| std::env::var("PATH").unwrap())
    );
    let kubectl = tb.bin("kubectl");

    let out = tb
        .command(&kubectl)
        .env("PATH", &path)
        .args(["theseus", "crds", "--help"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl theseus crds --help: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Usage: kubectl theseus crds"),
        "usage does not follow the plugin name: {stdout}"
    );

    let out = tb
        .command(&kubectl)
        .env("PATH", &path)
        .args(["plugin", "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(plugin.to_str().unwrap()),
        "kubectl plugin list does not show {}: {listed}{}",
        plugin.display(),
        String::from_utf8_lossy(&out.stderr)
    );

    // The plugin runs the real commands, not only their help.
    let out = tb
        .command(&kubectl)
        .env("PATH", &path)
        .args(["theseus", "crds"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("kind: CustomResourceDefinition"));
}
