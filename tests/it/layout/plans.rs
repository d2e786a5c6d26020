//! Cluster plans end to end: a three-service catalog (a store, an API that
//! needs the store, a cache the API uses) whose packages carry a hook
//! script, served by `theseus repo serve`; a Cluster applied with kubectl;
//! a real `theseus operator` that plans it, launches Local NodePools of
//! real agents, switches their packages and has them run the hooks.
//! The hooks append to one file, so the test reads the order they ran in.
//!
//! Shown here: a create (nodes, packages, hooks in dependency order,
//! Available). The rollback, halt, approval and delete paths are shown by
//! the executor's unit tests (`cluster::execute::tests`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use kube::api::Api;
use theseus::api::{Cluster, ClusterPlan, NodeInstall, PlanPhase};

use crate::support::fleet::{Operator, RUN_LABEL};
use crate::support::repo_server::RepoServer;
use crate::support::{self, TestNamespace, test_logs, theseus};

/// The hook every service runs for every action: it records the node,
/// service and action, and fails when the configuration asks it to.
const HOOK: &str = r#"#!/bin/sh
echo "$THESEUS_CLUSTER_NODE $THESEUS_SERVICE $THESEUS_ACTION $THESEUS_ATTEMPT" >> "$THESEUS_CONFIG_HOOKLOG"
if [ "$THESEUS_SERVICE $THESEUS_ACTION" = "$THESEUS_CONFIG_FAIL" ]; then
  echo "failing as the configuration asks"
  exit 3
fi
"#;

/// Builds and signs a repository of one package per service; returns
/// (the server, its public key).
fn repository(dir: &Path, services: &[&str]) -> (RepoServer, String) {
    let repo = dir.join("repo");
    let secret = dir.join("repo.key");
    let key = support::run::stdout_ok(
        Command::new(theseus())
            .args(["repo", "keygen", "--out"])
            .arg(&secret),
    )
    .trim()
    .to_owned();
    for service in services {
        let id = format!("{service}--1.0");
        let src = support::pkg::package_dir(dir, &id, &[], &[("bin/hook", HOOK)]);
        theseus::pkg::build::build(&src, &repo.join("packages")).unwrap();
    }
    support::run::stdout_ok(
        Command::new(theseus())
            .args(["repo", "index"])
            .arg(&repo)
            .arg("--sign-key")
            .arg(&secret),
    );
    (RepoServer::start(Command::new(theseus()), &repo), key)
}

/// The catalog: services `RUN-store`, `RUN-api`, `RUN-cache`, a Local
/// node class and a template placing each service on its own nodes.
fn catalog(run: &str, url: &str, key: &str) -> String {
    let hook = r#"{argv: [/bin/sh, bin/hook], timeoutSeconds: 30}"#;
    let actions = format!(
        "{{install: {hook}, configure: {hook}, initialize: {hook}, start: {hook}, stop: {hook}, remove: {hook}}}"
    );
    let service = |name: &str, deps: &str| {
        format!(
            "apiVersion: theseus.dev/v1alpha1
kind: ServiceDefinition
metadata: {{name: {run}-{name}, labels: {{{RUN_LABEL}: {run}}}}}
spec:
  repository: {run}
  packages: [{run}-{name}--1.0]
  dependencies: {deps}
  actions: {actions}
---
"
        )
    };
    let mut text = format!(
        "apiVersion: theseus.dev/v1alpha1
kind: PackageRepository
metadata: {{name: {run}, labels: {{{RUN_LABEL}: {run}}}}}
spec: {{url: '{url}/', publicKeys: ['{key}']}}
---
apiVersion: theseus.dev/v1alpha1
kind: NodeClass
metadata: {{name: {run}-box, labels: {{{RUN_LABEL}: {run}}}}}
spec: {{provider: {{type: Local, local: {{}}}}}}
---
"
    );
    text += &service("store", "{}");
    text += &service(
        "api",
        &format!(
            "{{install: {{requires: [{run}-store]}}, runtime: {{requires: [{run}-store], uses: [{run}-cache]}}}}"
        ),
    );
    text += &service("cache", "{}");
    text += &format!(
        "apiVersion: theseus.dev/v1alpha1
kind: ClusterTemplate
metadata: {{name: {run}, labels: {{{RUN_LABEL}: {run}}}}}
spec:
  compatibility: {{services: [{run}-store, {run}-api, {run}-cache], nodeClasses: [{run}-box]}}
  defaults: {{services: [{run}-store, {run}-api, {run}-cache], nodeClass: {run}-box}}
  constraints:
    size: {{min: 3, max: 10}}
    layout: {{cantCoexist: [[{run}-store, {run}-api, {run}-cache]]}}
    services:
      {run}-store: {{count: {{min: 1, max: 1}}}}
      {run}-cache: {{count: {{min: 1, max: 1}}}}
      {run}-api: {{count: {{min: 1}}}}
"
    );
    text
}

fn cluster_yaml(run: &str, hooklog: &Path) -> String {
    format!(
        "apiVersion: theseus.dev/v1alpha1
kind: Cluster
metadata: {{name: shop, labels: {{{RUN_LABEL}: {run}}}}}
spec:
  template: {run}
  size: 3
  strategy: {{taskRetries: 1}}
  config: {{hooklog: '{}'}}
",
        hooklog.display()
    )
}

/// The hook lines as (node, service, action, attempt), in the order run.
fn hook_lines(path: &Path) -> Vec<(String, String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0].into(), w[1].into(), w[2].into(), w[3].into())
        })
        .collect()
}

/// Where in `lines` the hook of `service` `action` ran (the first time).
fn position(lines: &[(String, String, String, String)], service: &str, action: &str) -> usize {
    lines
        .iter()
        .position(|(_, s, a, _)| s.ends_with(service) && a == action)
        .unwrap_or_else(|| panic!("no {service} {action} hook ran: {lines:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_created_with_its_hooks_in_dependency_order_and_becomes_available() {
    let Some(tb) = support::testbed() else {
        return;
    };
    support::apply_crds(&tb);
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "plans").await;
    let run = ns.name.clone();
    let work = tempfile::tempdir().unwrap();
    let (server, key) = repository(
        work.path(),
        &[
            &format!("{run}-store"),
            &format!("{run}-api"),
            &format!("{run}-cache"),
        ],
    );
    let state = work.path().join("state");
    let state_arg = state.to_str().unwrap().to_owned();
    let _operator = Operator::start_with(
        &tb,
        &ns.name,
        &run,
        "plans",
        &test_logs(&run),
        &["--state-dir", &state_arg, "--cluster-name", &run],
        &[
            ("THESEUS_TRUSTED_KEYS", &key),
            ("THESEUS_ALLOWED_REPOSITORIES", &server.url),
        ],
    );
    let out = tb.kubectl_stdin(&["apply"], &catalog(&run, &server.url, &key));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hooklog = work.path().join("hooks.log");
    let out = tb.kubectl_stdin(&["apply", "-n", &ns.name], &cluster_yaml(&run, &hooklog));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Created: nodes launch, packages switch, hooks run in dependency
    // order, and kubectl wait sees Available.
    tb.kubectl_ok(&[
        "wait",
        "-n",
        &ns.name,
        "--for=condition=Available",
        "cluster/shop",
        "--timeout=240s",
    ]);
    let lines = hook_lines(&hooklog);
    let mut seen = BTreeMap::new();
    for (node, service, action, _) in &lines {
        *seen
            .entry((node.clone(), service.clone(), action.clone()))
            .or_insert(0) += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "a hook ran twice: {lines:?}"
    );
    assert_eq!(
        seen.len(),
        3 * 4,
        "install, configure, initialize, start per service: {lines:?}"
    );
    assert!(
        position(&lines, "-store", "install") < position(&lines, "-api", "install"),
        "{lines:?}"
    );
    assert!(
        position(&lines, "-store", "start") < position(&lines, "-api", "start"),
        "{lines:?}"
    );
    assert!(
        position(&lines, "-cache", "start") < position(&lines, "-api", "start"),
        "{lines:?}"
    );
    for service in ["-store", "-api", "-cache"] {
        let order: Vec<&str> = lines
            .iter()
            .filter(|(_, s, _, _)| s.ends_with(service))
            .map(|(_, _, a, _)| a.as_str())
            .collect();
        assert_eq!(
            order,
            ["install", "configure", "initialize", "start"],
            "{service}"
        );
    }
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), &ns.name);
    let plans: Api<ClusterPlan> = Api::namespaced(client.clone(), &ns.name);
    let shop = clusters.get("shop").await.unwrap();
    let st = shop.status.clone().unwrap();
    assert_eq!(st.applied_layout.len(), 3);
    let create = plans.get(st.plan.as_deref().unwrap()).await.unwrap();
    assert_eq!(create.spec.operation.name(), "create");
    let cst = create.status.unwrap();
    assert_eq!(cst.phase, PlanPhase::Succeeded);
    assert!(
        cst.tasks.iter().all(|t| t.attempts == 1),
        "no task ran twice: {:?}",
        cst.tasks
    );
    let nodes: Api<NodeInstall> = Api::all(client.clone());
    let bound = nodes
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("theseus.dev/cluster=shop,{RUN_LABEL}={run}")),
        )
        .await
        .unwrap()
        .items;
    assert_eq!(bound.len(), 3, "one NodeInstall per layout node");

    // The agents the pool started outlive the operator by design; this
    // test ends them (the cluster's delete plan is not shown here).
    tb.kubectl_ok(&["delete", "-n", &ns.name, "cluster/shop", "--wait=false"]);
    for pool in std::fs::read_dir(state.join("nodepools")).unwrap() {
        let pool = pool.unwrap().file_name();
        for pid in support::pools::agent_pids(&state, pool.to_str().unwrap()) {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
    ns.delete(&client).await;
}
