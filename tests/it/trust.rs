//! The trust rules on the node path, against the testbed's API server, real
//! `theseus agent` processes and real repositories served by
//! `theseus repo serve` (whose access logs show what was fetched): a target
//! whose repository is not allowed, or whose keys the agent does not trust,
//! is refused before any download; `NodeTarget.publicKeys` cannot widen
//! the trusted keys; an index re-served at a lower version (a rollback) or
//! past its expiry (a freeze) is refused, by the agent, by `theseus pkg`
//! and by the operator's PackageRepository controller; the local
//! `/activate` follows the same rules.

use std::time::Duration;

use kube::api::{Api, PostParams};
use serde_json::json;
use theseus::api::{NodeInstall, NodeInstallStatus, NodePhase, PackageRepository};
use theseus::pkg::PackageId;

use crate::support::agents::{
    Agent, Repo, demo_set, set_target, set_target_with_keys, status, until_active,
};
use crate::support::fleet::{Operator, RUN_LABEL};
use crate::support::{
    self, TestNamespace, apply_crds, chart, eventually, test_logs, theseus_command,
};

const WAIT: Duration = Duration::from_secs(90);

/// Waits until the node refused the target `hash` as untrusted.
async fn until_refused(api: &Api<NodeInstall>, node: &str, hash: &str) -> NodeInstallStatus {
    eventually(WAIT, "the target is refused as Untrusted", || async {
        let s = status(api, node).await?;
        let refused = s.phase == NodePhase::Failed
            && s.reason.as_deref() == Some("Untrusted")
            && s.failed_hash.as_deref() == Some(hash);
        refused.then_some(s.clone()).ok_or(format!("{s:?}"))
    })
    .await
}

/// A set no repository has: a refused target never gets as far as needing it.
fn phantom(n: u32) -> Vec<PackageId> {
    vec![format!("demo-web--0.0.{n}").parse().unwrap()]
}

fn message(s: &NodeInstallStatus) -> String {
    s.message.clone().unwrap_or_default()
}

#[tokio::test]
async fn a_foreign_repository_or_key_is_refused_with_nothing_downloaded() {
    let Some(tb) = require_testbed!() else { return };
    apply_crds(&tb);
    let api = Api::<NodeInstall>::all(tb.client().await);
    let (repo, other) = (Repo::demo(), Repo::demo());
    // Both repositories are allowed; only `repo`'s key is trusted.
    let trust = [
        repo.trust_args(),
        vec!["--allowed-repository".into(), other.url.clone()],
    ]
    .concat();
    let agent = Agent::start(&tb, "trust", "pool=trust", &trust);
    eventually(WAIT, "registered", || status(&api, &agent.node)).await;
    let node = agent.node.clone();
    let node = node.as_str();

    // A repository that is not allowed: the same server under another host
    // name. Not one request reaches it.
    let not_allowed = repo.url.replace("127.0.0.1", "localhost");
    let hash = set_target(&api, node, &phantom(1), &not_allowed, 20).await;
    let s = until_refused(&api, node, &hash).await;
    assert!(
        message(&s).contains(&not_allowed) && message(&s).contains(&repo.key),
        "names the repository and the key expected: {s:?}"
    );
    assert!(
        s.conditions.iter().any(|c| c.reason == "Untrusted"),
        "{s:?}"
    );

    // A target naming a key the agent does not trust, for a repository it
    // allows: refused before the index is read.
    let foreign = std::slice::from_ref(&other.key);
    let hash = set_target_with_keys(&api, node, &phantom(2), &other.url, foreign, 20).await;
    let s = until_refused(&api, node, &hash).await;
    assert!(
        message(&s).contains(&other.key) && message(&s).contains(&repo.key),
        "{s:?}"
    );
    assert_eq!(
        other.server.requests(),
        Vec::<String>::new(),
        "nothing fetched"
    );
    assert_eq!(
        repo.server.requests(),
        Vec::<String>::new(),
        "nothing fetched"
    );

    // The allowed repository signed by an untrusted key, with the target
    // naming no key: the index is read, its signature refused, and no
    // package is fetched.
    let hash = set_target(&api, node, &demo_set("1.0.0"), &other.url, 20).await;
    let s = until_refused(&api, node, &hash).await;
    assert!(
        message(&s).contains("signature does not match") && message(&s).contains(&repo.key),
        "{s:?}"
    );
    assert_eq!(other.server.package_requests(), Vec::<String>::new());

    // Keys a target names cannot widen the trusted set: naming the other
    // key next to the trusted one narrows to the trusted one, which the
    // other repository's index does not verify with.
    let both = [repo.key.clone(), other.key.clone()];
    let hash = set_target_with_keys(&api, node, &demo_set("2.0.0"), &other.url, &both, 20).await;
    until_refused(&api, node, &hash).await;
    assert_eq!(other.server.package_requests(), Vec::<String>::new());

    // The trusted repository, naming both keys, is fetched and activated.
    let hash = set_target_with_keys(&api, node, &demo_set("1.0.0"), &repo.url, &both, 20).await;
    until_active(&api, node, &hash).await;
    assert!(!repo.server.package_requests().is_empty());
    drop(agent);
    support::agents::delete(&api, node).await;
}

/// The index of `repo` as it is now: (index.json, index.json.sig).
fn snapshot(repo: &Repo) -> (Vec<u8>, Vec<u8>) {
    let read = |name: &str| std::fs::read(repo.dir.join(name)).unwrap();
    (read("index.json"), read("index.json.sig"))
}

fn replay(repo: &Repo, (index, sig): &(Vec<u8>, Vec<u8>)) {
    std::fs::write(repo.dir.join("index.json"), index).unwrap();
    std::fs::write(repo.dir.join("index.json.sig"), sig).unwrap();
}

#[tokio::test]
async fn an_index_rolled_back_or_expired_is_refused_even_after_a_restart() {
    let Some(tb) = require_testbed!() else { return };
    apply_crds(&tb);
    let api = Api::<NodeInstall>::all(tb.client().await);
    let repo = Repo::demo();
    let version_1 = snapshot(&repo);
    repo.reindex(&[]);
    let mut agent = Agent::start(&tb, "rollback", "pool=trust", &repo.trust_args());
    let node = agent.node.clone();
    eventually(WAIT, "registered", || status(&api, &node)).await;
    let hash = set_target(&api, &node, &demo_set("1.0.0"), &repo.url, 20).await;
    until_active(&api, &node, &hash).await;
    let fetched = repo.server.package_requests();
    assert!(
        fetched.iter().any(|p| p.contains("demo-web--1.0.0")),
        "{fetched:?}"
    );
    let record = std::fs::read_to_string(agent.root.join("repositories.json")).unwrap();
    assert!(record.contains("\"version\": 2"), "{record}");

    // The agent restarts, then the repository serves the old signed index.
    agent.stop();
    agent.spawn(&tb, "pool=trust", None);
    replay(&repo, &version_1);
    let hash = set_target(&api, &node, &demo_set("2.0.0"), &repo.url, 20).await;
    let s = until_refused(&api, &node, &hash).await;
    assert!(
        message(&s).contains("served version 1 is older than accepted version 2"),
        "{s:?}"
    );
    let fetched = repo.server.package_requests();
    assert!(
        !fetched.iter().any(|p| p.contains("demo-web--2.0.0")),
        "{fetched:?}"
    );

    // A newer index that has expired (a frozen mirror) is refused too.
    repo.reindex(&["--version", "3", "--expires-in", "1s"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hash = set_target(&api, &node, &demo_set("3.0.0"), &repo.url, 20).await;
    let s = until_refused(&api, &node, &hash).await;
    assert!(message(&s).contains("index version 3 expired at"), "{s:?}");
    let fetched = repo.server.package_requests();
    assert!(
        !fetched.iter().any(|p| p.contains("demo-web--3.0.0")),
        "{fetched:?}"
    );

    // Re-signed with time to spare, the repository is trusted again.
    repo.reindex(&["--expires-in", "1h"]);
    let hash = set_target(&api, &node, &demo_set("2.0.0"), &repo.url, 20).await;
    until_active(&api, &node, &hash).await;
    drop(agent);
    support::agents::delete(&api, &node).await;
}

#[tokio::test]
async fn the_local_activate_follows_the_same_rules() {
    let Some(tb) = require_testbed!() else { return };
    apply_crds(&tb);
    let api = Api::<NodeInstall>::all(tb.client().await);
    let (repo, other) = (Repo::demo(), Repo::demo());
    let agent = Agent::start(&tb, "local", "pool=trust", &repo.trust_args());
    eventually(WAIT, "registered", || status(&api, &agent.node)).await;
    let activate = |repository: &str| {
        let url = format!("http://127.0.0.1:{}/activate", agent.api_port);
        let ids = ["demo-config--1.0.0", "demo-web--1.0.0"];
        let body = json!({"ids": ids, "repository": repository});
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (
                status,
                serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            )
        }
    };
    let (code, body) = activate(&other.url).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["reason"], json!("Untrusted"), "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(&other.url) && error.contains(&repo.key),
        "{error}"
    );
    assert_eq!(other.server.requests(), Vec::<String>::new());
    assert!(
        !agent.root.join("packages/demo-web--1.0.0").exists(),
        "nothing was installed"
    );

    let (code, body) = activate(&repo.url).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["phase"], json!("Active"));
    assert_eq!(
        repo.server.package_requests().len(),
        2,
        "both packages fetched"
    );
    let node = agent.node.clone();
    drop(agent);
    support::agents::delete(&api, &node).await;
}

/// `theseus pkg --root ROOT ARGS…`: success and stderr.
fn pkg(root: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = theseus_command()
        .arg("pkg")
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn theseus_pkg_follows_the_same_rules() {
    let (repo, other) = (Repo::demo(), Repo::demo());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let config = ["demo-config--1.0.0"];

    // No key and no --allow-unsigned: nothing is trusted, nothing fetched.
    let (ok, err) = pkg(
        &root,
        &[&["add"], &config[..], &["--repo", &repo.url]].concat(),
    );
    assert!(!ok && err.contains("trusts no signing key"), "{err}");
    // A foreign key: the index is read and refused, no package fetched.
    let args = [
        &["add"],
        &config[..],
        &["--repo", &other.url, "--key", &repo.key],
    ]
    .concat();
    let (ok, err) = pkg(&root, &args);
    assert!(
        !ok && err.contains("signature does not match") && err.contains(&repo.key),
        "{err}"
    );
    assert_eq!(other.server.package_requests(), Vec::<String>::new());
    // A repository outside the node's trust configuration.
    let trust = dir.path().join("trust.yaml");
    let yaml = format!(
        "trustedKeys: [\"{}\"]\nallowedRepositories: [\"{}\"]\n",
        repo.key, repo.url
    );
    std::fs::write(&trust, yaml).unwrap();
    let trust_flag = trust.to_str().unwrap();
    let args = [
        &["add"],
        &config[..],
        &["--repo", &other.url, "--trust-config", trust_flag],
    ]
    .concat();
    let seen = other.server.requests().len();
    let (ok, err) = pkg(&root, &args);
    assert!(
        !ok && err.contains("not under an allowed repository"),
        "{err}"
    );
    assert_eq!(other.server.requests().len(), seen, "no request");
    // A package by URL has no signed index.
    let url = format!("{}/packages/demo-config--1.0.0.tar.gz", repo.url);
    let (ok, err) = pkg(&root, &["add", &url]);
    assert!(!ok && err.contains("no signed index"), "{err}");
    assert_eq!(repo.server.requests(), Vec::<String>::new());

    // Trusted: accepted, and its version recorded; a replayed older index
    // is then refused.
    let version_1 = snapshot(&repo);
    repo.reindex(&[]);
    let args = [
        &["add"],
        &config[..],
        &["--repo", &repo.url, "--trust-config", trust_flag],
    ]
    .concat();
    let (ok, err) = pkg(&root, &args);
    assert!(ok, "{err}");
    assert_eq!(
        repo.server.package_requests(),
        ["/packages/demo-config--1.0.0.tar.gz"]
    );
    replay(&repo, &version_1);
    let args = [
        "add",
        "demo-web--1.0.0",
        "--repo",
        &repo.url,
        "--key",
        &repo.key,
    ];
    let (ok, err) = pkg(&root, &args);
    assert!(
        !ok && err.contains("served version 1 is older than accepted version 2"),
        "{err}"
    );
    assert!(
        !repo
            .server
            .package_requests()
            .iter()
            .any(|p| p.contains("demo-web"))
    );
}

#[tokio::test]
async fn the_package_repository_reports_a_rollback_naming_both_versions() {
    let Some(tb) = require_testbed!() else { return };
    apply_crds(&tb);
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "trust").await;
    let run = ns.name.clone();
    let logs = test_logs(&run);
    let repo = Repo::demo();
    let version_1 = snapshot(&repo);
    repo.reindex(&[]);
    let _operator = Operator::start(&tb, &ns.name, &run, "a", &logs);
    let repos = Api::<PackageRepository>::all(client.clone());
    let object: PackageRepository = serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageRepository",
        "metadata": { "name": run, "labels": { RUN_LABEL: run } },
        "spec": { "url": repo.url, "publicKeys": [repo.key], "refreshIntervalSeconds": 10 }
    }))
    .unwrap();
    repos.create(&PostParams::default(), &object).await.unwrap();
    let ready = |reason: &'static str| {
        let repos = repos.clone();
        let run = run.clone();
        move || {
            let repos = repos.clone();
            let run = run.clone();
            async move {
                let r = repos.get(&run).await.map_err(|e| e.to_string())?;
                let s = r.status.clone().ok_or("no status")?;
                let c = s
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Ready")
                    .ok_or("no Ready")?;
                (c.reason == reason)
                    .then_some(s.clone())
                    .ok_or(format!("{s:?}"))
            }
        }
    };
    let s = eventually(WAIT, "the repository is Synced", ready("Synced")).await;
    assert_eq!(s.accepted_index_version, Some(2));

    replay(&repo, &version_1);
    let s = eventually(WAIT, "the rollback is reported", ready("IndexRollback")).await;
    let c = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(c.status, "False");
    assert!(
        c.message
            .contains("served version 1 is older than accepted version 2"),
        "{c:?}"
    );
    assert_eq!(s.accepted_index_version, Some(2), "never lowered");

    repo.reindex(&["--version", "3", "--expires-in", "1s"]);
    let s = eventually(WAIT, "the expiry is reported", ready("IndexExpired")).await;
    assert_eq!(s.index_version, Some(3));
    let _ = repos.delete(&run, &Default::default()).await;
    ns.delete(&client).await;
}

/// `helm template` of the chart with `sets`, as JSON documents.
fn render_chart(tb: &support::TestbedEnv, sets: &[&str]) -> Result<Vec<serde_json::Value>, String> {
    let chart = chart();
    let mut cmd = tb.helm_command(&["template", "t", &chart]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    let out = cmd.output().expect("helm runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .filter(|v: &serde_json::Value| v.is_object())
        .collect())
}

#[test]
fn the_chart_gives_every_agent_its_trust_configuration() {
    let Some(tb) = require_testbed!() else { return };
    let key = theseus::pkg::index::encode_key(
        theseus::pkg::index::generate_key()
            .verifying_key()
            .as_bytes(),
    );
    let docs = render_chart(
        &tb,
        &[
            &format!("agent.trust.trustedKeys[0]={key}"),
            "agent.trust.allowedRepositories[0]=http://packages.example/stable/",
        ],
    )
    .unwrap();
    let find = |kind: &str| {
        docs.iter()
            .find(|d| {
                d["kind"] == kind
                    && d["metadata"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .contains("agent")
            })
            .unwrap_or_else(|| panic!("no agent {kind}"))
    };
    let config_map = find("ConfigMap");
    let file = config_map["data"]["trust.yaml"].as_str().unwrap();
    let config: theseus::pkg::trust::TrustConfig = serde_yaml::from_str(file).unwrap();
    let policy = config.policy("chart").unwrap();
    assert_eq!(policy.trusted_keys(), vec![key.clone()]);
    assert!(!policy.allow_unsigned());
    let granted = theseus::pkg::trust::decide(&policy, "http://packages.example/stable/", &[]);
    assert!(granted.is_ok(), "{granted:?}");
    let elsewhere = theseus::pkg::trust::decide(&policy, "http://mirror.example/", &[]);
    assert!(elsewhere.is_err());

    let pod = &find("DaemonSet")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env = container["env"].as_array().unwrap();
    let path = env
        .iter()
        .find(|e| e["name"] == "THESEUS_TRUST_CONFIG")
        .and_then(|e| e["value"].as_str())
        .expect("THESEUS_TRUST_CONFIG is set");
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("-")) && m["mountPath"] != "/")
        .expect("the file's directory is mounted");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    assert!(path.ends_with("/trust.yaml"), "{path}");

    // The default trusts nothing (every target is refused), and the schema
    // refuses a key that is not one.
    let docs = render_chart(&tb, &[]).unwrap();
    let file = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["trust.yaml"].is_string())
        .map(|d| d["data"]["trust.yaml"].as_str().unwrap().to_owned())
        .unwrap();
    let policy = serde_yaml::from_str::<theseus::pkg::trust::TrustConfig>(&file)
        .unwrap()
        .policy("chart")
        .unwrap();
    assert!(theseus::pkg::trust::decide(&policy, "http://packages.example/", &[]).is_err());
    let err = render_chart(&tb, &["agent.trust.trustedKeys[0]=not-a-key"]).unwrap_err();
    assert!(err.contains("trustedKeys"), "{err}");
}
