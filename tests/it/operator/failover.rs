//! The operator's leader failure modes against the testbed's API server,
//! with real `theseus operator` processes: a leader frozen past its lease
//! (SIGSTOP) is replaced and, once it resumes, sends no write; a leader
//! whose controller dies fails `/readyz`, exits non-zero and hands over.
//! Built only with the `failpoints` feature (the second test needs one).

use std::time::{Duration, Instant};

use crate::support::operator::{Rig, V1, V2, signal};
use crate::support::{self, eventually};

/// The lease the test operators hold (`--lease-seconds 4`).
const LEASE: Duration = Duration::from_secs(4);

/// A kubeconfig that impersonates `user` (in `system:masters`, so it may
/// do what the admin may), to tell one operator's requests from another's
/// on the API server.
fn impersonating_kubeconfig(rig: &Rig, user: &str) -> std::path::PathBuf {
    let path = rig.logs.join(format!("{user}.kubeconfig"));
    support::impersonating_kubeconfig(&rig.tb, &path, user, &["system:masters"])
}

/// A ValidatingAdmissionPolicy (and binding) named `name` that refuses every
/// write by `user` except to Leases, with a message naming the policy.
fn refuse_writes_of(rig: &Rig, name: &str, user: &str) {
    let policy = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": { "name": name },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": { "resourceRules": [{
                "apiGroups": ["", "theseus.dev", "events.k8s.io"], "apiVersions": ["*"],
                "operations": ["CREATE", "UPDATE", "DELETE"], "resources": ["*/*"]
            }]},
            "matchConditions": [{ "name": "frozen-operator",
                "expression": format!("request.userInfo.username == '{user}'") }],
            "validations": [{ "expression": "false", "message": format!("{name}: write by the resumed operator") }]
        }
    });
    let binding = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": { "name": name },
        "spec": { "policyName": name, "validationActions": ["Deny"] }
    });
    for object in [policy, binding] {
        let file = rig
            .logs
            .join(format!("{}.json", object["kind"].as_str().unwrap()));
        std::fs::write(&file, object.to_string()).unwrap();
        rig.tb
            .kubectl_ok(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_and_writes_nothing_when_it_resumes() {
    let Some(rig) = Rig::new("freeze").await else {
        return;
    };
    let fleet = rig.fleet(4, Duration::from_millis(500)).await;
    let user = format!("{}-frozen", rig.run);
    let kubeconfig = impersonating_kubeconfig(&rig, &user);
    let a = rig.operator_with("a", &[("KUBECONFIG", kubeconfig.to_str().unwrap())]);
    rig.wait_holder("a", Duration::from_secs(20)).await;
    let _b = rig.operator("b");
    rig.apply_set(&[V1], 1).await;
    rig.wait_condition("Available", "True", Duration::from_secs(60))
        .await;
    assert_eq!(rig.holder().await.as_deref(), Ok("a"));

    signal(a.pid(), "STOP");
    let frozen = Instant::now();
    rig.wait_holder("b", Duration::from_secs(20)).await;
    let takeover = frozen.elapsed();
    eprintln!("takeover with a frozen leader: {takeover:?} (lease {LEASE:?})");
    assert!(
        takeover < LEASE * 3,
        "the standby took {takeover:?} to replace a frozen leader"
    );

    // From now on the API server refuses (and names) any write of a's.
    let policy = format!("{}-frozen-writes", rig.run);
    refuse_writes_of(&rig, &policy, &user);
    let set = format!("packageset/{}", rig.run);
    eventually(Duration::from_secs(20), "the policy is in force", || {
        let out = rig.tb.kubectl(&[
            "annotate",
            &set,
            "--overwrite",
            "theseus.dev/probe=1",
            "--as",
            &user,
            "--as-group",
            "system:masters",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        async move {
            if stderr.contains("write by the resumed operator") {
                Ok(())
            } else {
                Err(stderr)
            }
        }
    })
    .await;

    // Work for a leader: the resumed one must leave it to b.
    rig.apply_set(&[V2], 1).await;
    signal(a.pid(), "CONT");
    tokio::time::sleep(LEASE * 2).await;
    rig.wait_condition("Available", "True", Duration::from_secs(90))
        .await;
    let log = rig.log("a");
    let refused: Vec<&str> = log.lines().filter(|l| l.contains(&policy)).collect();
    assert!(
        refused.is_empty(),
        "the resumed leader sent writes:\n{}",
        refused.join("\n")
    );
    assert_eq!(rig.holder().await.as_deref(), Ok("b"));

    for kind in [
        "validatingadmissionpolicybinding",
        "validatingadmissionpolicy",
    ] {
        rig.tb
            .kubectl(&["delete", kind, &policy, "--ignore-not-found"]);
    }
    rig.clean_up(fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_controller_dies_fails_readyz_exits_non_zero_and_hands_over() {
    let Some(rig) = Rig::new("dead-ctl").await else {
        return;
    };
    let fleet = rig.fleet(1, Duration::from_millis(100)).await;
    let mut a = rig.operator_with(
        "a",
        &[("THESEUS_FAILPOINT", "packageset-controller-panics")],
    );
    rig.wait_holder("a", Duration::from_secs(20)).await;
    let _b = rig.operator("b");

    // Poll /readyz until the process exits; remember what it said.
    let readyz = format!("{}/readyz", a.http);
    let http = reqwest::Client::new();
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = a.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the operator kept running: {answers:?}"
        );
        if let Ok(r) = http.get(&readyz).send().await {
            let code = r.status().as_u16();
            answers.push((code, r.text().await.unwrap_or_default()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("/readyz answered {answers:?}");
    assert_eq!(status.code(), Some(1), "exit status {status}");
    let log = rig.log("a");
    assert!(
        log.contains("the packageset controller panicked"),
        "the log names the dead controller:\n{log}"
    );
    assert!(answers.iter().any(|(code, _)| *code == 200), "{answers:?}");
    if let Some((code, text)) = answers.iter().find(|(code, _)| *code != 200) {
        assert_eq!(*code, 503);
        assert!(
            text.contains("the packageset controller panicked"),
            "{text}"
        );
    }
    // It released the lease on its way out: b leads at once, not after 4 s.
    rig.wait_holder("b", LEASE).await;
    rig.clean_up(fleet).await;
}

#[test]
fn the_binary_under_test_says_it_is_a_test_build_with_failpoints() {
    let out = std::process::Command::new(support::theseus())
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.contains("(test build with failpoints)"),
        "{version}"
    );
}
