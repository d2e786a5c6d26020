//! `make demo` as a newcomer meets it: `scripts/demo up` on the testbed
//! brings up the operator, the repository and examples/quickstart/, and
//! every "try next" command it prints works when typed into a shell that
//! sourced the demo's env file. `scripts/demo down` then leaves nothing
//! running and nothing in the cluster.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, TestbedEnv, eventually, repo_root, theseus};

/// Where this test's demo keeps its state (not the developer's .testbed/demo).
fn demo_dir() -> PathBuf {
    repo_root().join("target/test-demo")
}

/// `scripts/demo ARG` the way `make demo` runs it: no KUBECONFIG, so the
/// script finds (and, were it down, starts) the testbed itself.
fn demo(tb: &TestbedEnv, arg: &str) -> Output {
    Command::new(repo_root().join("scripts/demo"))
        .arg(arg)
        .env("THESEUS", theseus())
        .env("THESEUS_DEMO_DIR", demo_dir())
        .env("PATH", tb.var("PATH"))
        .env_remove("KUBECONFIG")
        .env_remove("THESEUS_DISCOVERY_ETCD")
        .stdin(Stdio::null())
        .output()
        .expect("scripts/demo runs")
}

/// Stops the demo however the test ends.
struct Down(TestbedEnv);

impl Drop for Down {
    fn drop(&mut self) {
        let out = demo(&self.0, "down");
        if std::thread::panicking() {
            eprintln!(
                "--- demo down ---\n{}{}\n--- operator log (tail) ---\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&demo_dir().join("operator.log"), 60)
            );
        }
    }
}

fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One of the printed next commands, as bash running it after sourcing the
/// env file; it must appear verbatim in the demo's output.
fn suggested(printed: &str, command: &str) -> Command {
    assert!(
        printed.contains(command),
        "the demo no longer suggests `{command}`"
    );
    let env = demo_dir().join("env");
    let mut bash = Command::new("bash");
    bash.arg("-c")
        .arg(format!(". '{}' && {command}", env.display()))
        .current_dir(repo_root())
        .stdin(Stdio::null());
    bash
}

fn next(printed: &str, command: &str) -> Output {
    suggested(printed, command).output().expect("bash runs")
}

fn ok(printed: &str, command: &str) -> String {
    support::run::stdout_ok(&mut suggested(printed, command))
}

fn halted(tb: &TestbedEnv) -> String {
    String::from_utf8_lossy(
        &tb.kubectl(&[
            "get",
            "packageset",
            "demo-web",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Halted\")].status}",
        ])
        .stdout,
    )
    .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_demo_runs_and_every_suggested_command_works() {
    let Some(tb) = require_testbed!() else {
        return;
    };
    let started = Instant::now();
    let _down = Down(tb.clone());
    let up = demo(&tb, "up");
    let printed = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(
        up.status.success(),
        "scripts/demo up failed:\n{printed}{}\n--- operator log ---\n{}",
        String::from_utf8_lossy(&up.stderr),
        tail(&demo_dir().join("operator.log"), 60)
    );
    eprintln!("scripts/demo up took {:?}", started.elapsed());
    for line in [
        // The testbed's builds run beside cargo's (quick here: all built).
        "building the testbed in the background meanwhile",
        "nodepool.theseus.dev/demo condition met",
        "packageset/demo-web is available",
        "demo-0  127.0.0.1:27100/version  ->  1.0.0",
        "demo-2  127.0.0.1:27102/version  ->  1.0.0",
        "servicegroup.theseus.dev/web-demo condition met",
        "web/demo  config {\"greeting\":\"hello\"}",
        "Stop everything with: make demo-down",
    ] {
        assert!(
            printed.contains(line),
            "the demo did not print {line:?}:\n{printed}"
        );
    }

    // Upgrade to 2.0.0.
    ok(
        &printed,
        r#"kubectl patch packageset demo-web --type merge -p '{"spec":{"packages":["demo-web--2.0.0","demo-config--1.0.0"]}}'"#,
    );
    let status = ok(&printed, "kubectl theseus rollout status demo-web");
    assert!(status.contains("is available"), "{status}");
    assert_eq!(ok(&printed, "curl 127.0.0.1:27100/version").trim(), "2.0.0");

    // Halt and resume.
    ok(&printed, r#"theseus rollout halt --reason "trying it out""#);
    eventually(Duration::from_secs(30), "the set shows Halted", || async {
        let h = halted(&tb);
        (h == "True").then_some(()).ok_or(h)
    })
    .await;
    ok(&printed, "theseus rollout resume");
    eventually(Duration::from_secs(30), "the halt clears", || async {
        let h = halted(&tb);
        (h == "False").then_some(()).ok_or(h)
    })
    .await;

    // Scale the pool to five; the new nodes get the set.
    ok(&printed, "kubectl scale nodepool/demo --replicas=5");
    ok(
        &printed,
        "kubectl wait --for=jsonpath='{.status.readyReplicas}'=5 nodepool/demo",
    );
    ok(&printed, "kubectl theseus rollout status demo-web");
    let five = next(&printed, "curl 127.0.0.1:27100/version");
    assert!(five.status.success());
    let out = Command::new("curl")
        .args(["-fsS", "http://127.0.0.1:27104/version"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "2.0.0",
        "node demo-4"
    );

    // A failing release is rolled back and the set turns Degraded.
    ok(
        &printed,
        r#"kubectl patch packageset demo-web --type merge -p '{"spec":{"packages":["demo-web--3.0.0","demo-config--1.0.0"]}}'"#,
    );
    let failed = next(&printed, "kubectl theseus rollout status demo-web");
    let said = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "{said}");
    assert!(said.contains("is stuck"), "{said}");
    assert_eq!(ok(&printed, "curl 127.0.0.1:27100/version").trim(), "2.0.0");

    // Discovery follows the ServiceGroup as it scales.
    let command = "theseus discover watch web";
    assert!(printed.contains(command));
    let mut watch = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". '{}' && exec {command}",
            demo_dir().join("env").display()
        ))
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let reader = std::thread::spawn(move || {
        let mut added = 0;
        let mut seen = Vec::new();
        for line in lines.map_while(Result::ok) {
            added += usize::from(line.starts_with("+ demo/"));
            seen.push(line);
            if added == 3 {
                return Ok(());
            }
        }
        Err(seen)
    });
    ok(
        &printed,
        r#"kubectl -n theseus-demo patch servicegroup web-demo --type merge -p '{"spec":{"replicas":3}}'"#,
    );
    // Generous: on a loaded 2-core machine the scheduler and kwok may take
    // a while to make two more pods Ready; the wait ends at the third.
    let deadline = Instant::now() + Duration::from_secs(180);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = watch.kill();
    let _ = watch.wait();
    if let Err(seen) = reader.join().unwrap() {
        let pods = tb.kubectl(&["-n", "theseus-demo", "get", "pods", "-o", "wide"]);
        panic!(
            "discover watch did not show a third container; it printed {seen:#?}\npods:\n{}",
            String::from_utf8_lossy(&pods.stdout)
        );
    }

    // Down: nothing left running, nothing left in the cluster or etcd.
    let down = demo(&tb, "down");
    assert!(
        down.status.success(),
        "scripts/demo down failed:\n{}{}",
        String::from_utf8_lossy(&down.stdout),
        String::from_utf8_lossy(&down.stderr)
    );
    let gone = tb.kubectl(&["get", "nodepool", "demo"]);
    assert!(!gone.status.success(), "the NodePool is deleted");
    let pools = demo_dir().join("operator/nodepools/demo");
    let left: Vec<_> = std::fs::read_dir(&pools)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no node directories remain: {left:?}");
    let agents = Command::new("pgrep")
        .args(["-f", "instance-id local-demo-"])
        .output()
        .unwrap();
    assert!(
        !agents.status.success(),
        "no demo agent runs: {}",
        String::from_utf8_lossy(&agents.stdout)
    );
    let tree = Command::new(theseus())
        .args(["discover", "ls", "web"])
        .env("THESEUS_DISCOVERY_ETCD", tb.discovery_etcd())
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&tree.stdout).contains("demo"),
        "the group left the discovery tree: {}",
        String::from_utf8_lossy(&tree.stdout)
    );
    eprintln!("the whole demo took {:?}", started.elapsed());
}
