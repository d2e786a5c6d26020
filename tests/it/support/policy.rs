//! Helpers of the `policy` tests: kubectl as an impersonated or
//! token-holding identity, assertions on the admission policy's answers,
//! cleanup of the cluster-scoped objects a test creates, and a
//! `theseus agent` process.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::{self, TestbedEnv, chart};

/// The user extra that names the node of a bound token's pod.
pub const NODE_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// A command's stdout and stderr together.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The request succeeded.
pub fn assert_allowed(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} was refused: {}", text(out));
}

/// The request failed, refused by `policy` with a message naming `rule`.
pub fn assert_refused(out: &Output, policy: &str, rule: &str, what: &str) {
    let said = text(out);
    assert!(!out.status.success(), "{what} was allowed: {said}");
    assert!(
        said.contains(&format!("ValidatingAdmissionPolicy '{policy}'"))
            && said.contains(&format!("rule {rule}:")),
        "{what}: refused, but not by rule {rule} of {policy}: {said}"
    );
}

/// Cluster-scoped objects and NodeInstalls a test created, deleted when it
/// ends (also when it fails), so that nothing outlives it on the shared
/// API server.
pub struct Cleanup {
    tb: TestbedEnv,
    objects: Vec<(String, String)>,
    pub release: Option<(String, String)>,
    /// Held while `release` is installed, released after its uninstall.
    pub turn: Option<std::sync::MutexGuard<'static, ()>>,
}

impl Cleanup {
    pub fn new(tb: &TestbedEnv) -> Self {
        Cleanup {
            tb: tb.clone(),
            objects: Vec::new(),
            release: None,
            turn: None,
        }
    }

    pub fn add(&mut self, kind: &str, name: &str) {
        self.objects.push((kind.to_owned(), name.to_owned()));
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (kind, name) in self.objects.iter().rev() {
            let _ = self
                .tb
                .kubectl(&["delete", kind, name, "--ignore-not-found", "--wait=false"]);
        }
        if let Some((name, ns)) = &self.release {
            let _ = self.tb.helm(&["uninstall", name, "--namespace", ns]);
        }
    }
}

/// Unique identities of one test, so that tests running at the same time
/// against the same API server never match each other's policies.
pub struct Ids {
    pub tag: String,
    pub user_prefix: String,
    pub group: String,
}

impl Ids {
    pub fn new() -> Self {
        let tag = format!("{:08x}", rand::random::<u32>());
        Ids {
            user_prefix: format!("theseus-test-{tag}:node:"),
            group: format!("theseus-test-{tag}:nodes"),
            tag,
        }
    }

    /// A NodeInstall name of this test.
    pub fn node(&self, n: &str) -> String {
        format!("ptest-{}-{n}", self.tag)
    }
}

/// A NodeInstall manifest, with a target or without.
pub fn node_install(name: &str, target: bool) -> String {
    let spec = if target {
        format!("spec:\n  target: {}\n", target_json())
    } else {
        "spec: {}\n".to_owned()
    };
    format!(
        "apiVersion: theseus.dev/v1alpha1\nkind: NodeInstall\nmetadata:\n  name: {name}\n  labels:\n    theseus.dev/test: policy\n{spec}"
    )
}

/// A valid `spec.target` as JSON.
pub fn target_json() -> String {
    r#"{"packageSet":"s","setHash":"h1","packages":["web--1"],"repositoryUrl":"http://127.0.0.1:1/"}"#
        .to_owned()
}

/// `kubectl ARGS…` as `who` (impersonation flags).
pub fn as_who(tb: &TestbedEnv, who: &[String], args: &[&str]) -> Output {
    let mut all: Vec<&str> = who.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    tb.kubectl(&all)
}

/// `kubectl patch nodeinstall NODE --type=merge -p BODY [EXTRA…]` as `who`.
pub fn patch(tb: &TestbedEnv, who: &[String], node: &str, body: &str, extra: &[&str]) -> Output {
    let mut args = vec!["patch", "nodeinstall", node, "--type=merge", "-p", body];
    args.extend_from_slice(extra);
    as_who(tb, who, &args)
}

/// `kubectl create [EXTRA…] -f -` with `yaml`, as `who`.
pub fn create_as(tb: &TestbedEnv, who: &[String], yaml: &str, extra: &[&str]) -> Output {
    let mut args: Vec<&str> = who.iter().map(String::as_str).collect();
    args.push("create");
    args.extend_from_slice(extra);
    tb.kubectl_stdin(&args, yaml)
}

/// Waits until the policy is in force: a policy takes a moment after its
/// creation to be loaded, so `probe` (a request it must refuse, sent as a
/// server-side dry run) is repeated until it is refused by `rule`.
pub fn wait_in_force(policy: &str, rule: &str, probe: impl Fn() -> Output) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = probe();
        let said = text(&out);
        if !out.status.success() && said.contains(&format!("rule {rule}:")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ValidatingAdmissionPolicy {policy} not in force after 60 s; last answer: {said}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Installs the policy and the agents' ClusterRole as a non-Helm install
/// does (`theseus policy --rbac | kubectl apply -f -`) with the test's
/// identities and per-node ServiceAccount namespace; returns the policy's
/// name.
pub fn install_without_helm(
    tb: &TestbedEnv,
    ids: &Ids,
    nodes_ns: &str,
    cleanup: &mut Cleanup,
) -> String {
    let policy = format!("theseus-test-policy-{}", ids.tag);
    cleanup.add("validatingadmissionpolicy", &policy);
    cleanup.add("validatingadmissionpolicybinding", &policy);
    let role = format!("theseus-test-policy-{}-agent", ids.tag);
    cleanup.add("clusterrole", &role);
    cleanup.add("clusterrolebinding", &role);
    let yaml = theseus_policy(&[
        "--name",
        &policy,
        "--agent-service-account",
        &format!("{nodes_ns}/no-such-agent"),
        "--node-user-prefix",
        &ids.user_prefix,
        "--node-group",
        &ids.group,
        "--node-service-account-namespace",
        nodes_ns,
        "--rbac",
        "--rbac-name",
        &role,
    ]);
    assert_allowed(
        &tb.kubectl_stdin(&["apply"], &yaml),
        "applying `theseus policy --rbac`",
    );
    policy
}

/// `helm install` of the chart into `ns` with the test's identities; no pod
/// runs (no operator replica, the agent DaemonSet selects no node).
pub fn install_chart(tb: &TestbedEnv, ns: &str, nodes_ns: &str, ids: &Ids, cleanup: &mut Cleanup) {
    cleanup.turn = Some(support::chart_release_lock());
    cleanup.release = Some((ns.to_owned(), ns.to_owned()));
    let identity = format!(
        "agent.identity.userPrefix={},agent.identity.group={},agent.identity.serviceAccountNamespace={nodes_ns}",
        ids.user_prefix, ids.group
    );
    tb.helm_ok(&[
        "install",
        ns,
        &chart(),
        "--namespace",
        ns,
        "--set",
        "operator.replicas=0,halt.enabled=false,agent.nodeSelector.theseus-test=none",
        "--set",
        &identity,
    ]);
}

/// A kubeconfig that authenticates with `token` only (no client
/// certificate), written into `dir`.
pub fn token_kubeconfig(tb: &TestbedEnv, dir: &Path, token: &str) -> PathBuf {
    let ca = tb.kubectl_ok(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ]);
    let server = tb.var("THESEUS_KUBE_APISERVER");
    let path = dir.join("kubeconfig");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: t\n  user:\n    token: {token}\ncontexts:\n- name: t\n  context: {{cluster: t, user: t}}\ncurrent-context: t\n"
    );
    std::fs::write(&path, config).unwrap();
    path
}

/// A `theseus agent` process with its own kubeconfig, killed when dropped.
pub struct AgentProcess {
    child: std::process::Child,
    log: PathBuf,
}

impl AgentProcess {
    pub fn start(tb: &TestbedEnv, kubeconfig: &Path, node: &str, dir: &Path, run: &str) -> Self {
        let log = dir.join(format!("agent-{run}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = tb
            .command(support::theseus())
            .args(["agent", "--node-name", node, "--heartbeat-seconds", "1"])
            .arg("--root")
            .arg(dir.join("root"))
            .args(["--listen", "127.0.0.1:0", "--labels"])
            .arg(format!("theseus.dev/test=policy,run={run}"))
            .env("KUBECONFIG", kubeconfig)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("theseus agent starts");
        AgentProcess { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `theseus policy ARGS…` (stdout).
pub fn theseus_policy(args: &[&str]) -> String {
    support::run::stdout_ok(Command::new(support::theseus()).arg("policy").args(args))
}

/// The documents of a YAML stream, without `metadata.labels` (the chart adds
/// its release labels).
pub fn policy_docs(yaml: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .map(|mut d| {
            d["metadata"].as_object_mut().unwrap().remove("labels");
            d
        })
        .collect()
}
