//! Cluster plans end to end: a three-service catalog (a store, an API that
//! needs the store, a cache the API uses) whose packages carry a hook
//! script, served by `theseus repo serve`; a Cluster applied with kubectl;
//! a real `theseus operator` that plans it, launches Local NodePools of
//! real agents, switches their packages and has them run the hooks.
//! The hooks append to one file, so the test reads the order they ran in.
//!
//! Shown here: a create (nodes, packages, hooks in dependency order,
//! Available), a scale up and down that moves no service that need not
//! move, an amend and a reconfigure that run only the tasks they need, a
//! delete that stops and removes everything; a failing hook retried and
//! rolled back (or, with `onFailure: Halt`, stopped); halt, pause and
//! manual approval holding a plan; and the operator killed at random
//! moments while plans run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use theseus::api::{Cluster, ClusterPlan, NodeInstall, NodePool, PlanPhase, conditions};

use crate::support::fleet::{Operator, RUN_LABEL};
use crate::support::repo_server::RepoServer;
use crate::support::{self, TestNamespace, TestbedEnv, eventually, test_logs, theseus};

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
        // Each package its own path: a node's packages are merged.
        let hook = format!("bin/{service}");
        let src = support::pkg::package_dir(dir, &id, &[], &[(hook.as_str(), HOOK)]);
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

/// The catalog: services `RUN-store`, `RUN-api`, `RUN-cache` (the
/// template's defaults) and `RUN-web` (to amend with), a Local node class
/// and a template placing the three on their own nodes.
fn catalog(run: &str, url: &str, key: &str) -> String {
    let service = |name: &str, deps: &str| {
        let hook = format!("{{argv: [/bin/sh, bin/{run}-{name}], timeoutSeconds: 30}}");
        let actions = format!(
            "{{install: {hook}, configure: {hook}, initialize: {hook}, start: {hook}, stop: {hook}, remove: {hook}}}"
        );
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
    text += &service("web", "{}");
    text += &format!(
        "apiVersion: theseus.dev/v1alpha1
kind: ClusterTemplate
metadata: {{name: {run}, labels: {{{RUN_LABEL}: {run}}}}}
spec:
  compatibility: {{services: [{run}-store, {run}-api, {run}-cache, {run}-web], nodeClasses: [{run}-box]}}
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

fn cluster_yaml(run: &str, hooklog: &Path, extra: &str) -> String {
    format!(
        "apiVersion: theseus.dev/v1alpha1
kind: Cluster
metadata: {{name: shop, labels: {{{RUN_LABEL}: {run}}}}}
spec:
  template: {run}
  size: 3
  strategy: {{taskRetries: 1}}
  config: {{hooklog: '{}'}}
{extra}",
        hooklog.display()
    )
}

/// A hook's line: (node, service, action, attempt).
type Line = (String, String, String, String);

/// The hook lines as (node, service, action, attempt), in the order run.
fn hook_lines(path: &Path) -> Vec<Line> {
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
fn position(lines: &[Line], service: &str, action: &str) -> usize {
    lines
        .iter()
        .position(|(_, s, a, _)| s.ends_with(service) && a == action)
        .unwrap_or_else(|| panic!("no {service} {action} hook ran: {lines:?}"))
}

/// A running shop: the repository, the catalog, an operator, and the
/// cluster `shop` in the test's namespace once [`Shop::apply`]ed.
struct Shop {
    tb: TestbedEnv,
    client: Client,
    ns: TestNamespace,
    run: String,
    state: PathBuf,
    hooklog: PathBuf,
    operator: Operator,
    _agents: Agents,
    _server: RepoServer,
    _work: tempfile::TempDir,
}

impl Shop {
    async fn start(prefix: &str) -> Option<Shop> {
        let tb = support::testbed()?;
        support::apply_crds(&tb);
        let client = tb.client().await;
        let ns = TestNamespace::create(&tb, &client, prefix).await;
        let run = ns.name.clone();
        let work = tempfile::tempdir().unwrap();
        let services: Vec<String> = ["store", "api", "cache", "web"]
            .iter()
            .map(|s| format!("{run}-{s}"))
            .collect();
        let names: Vec<&str> = services.iter().map(String::as_str).collect();
        let (server, key) = repository(work.path(), &names);
        let state = work.path().join("state");
        let state_arg = state.to_str().unwrap().to_owned();
        let operator = Operator::start_with(
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
        Some(Shop {
            tb,
            client,
            ns,
            run,
            state: state.clone(),
            hooklog,
            operator,
            _agents: Agents(state),
            _server: server,
            _work: work,
        })
    }

    /// Applies the cluster with `extra` lines of spec.
    fn apply(&self, extra: &str) {
        let yaml = cluster_yaml(&self.run, &self.hooklog, extra);
        let out = self
            .tb
            .kubectl_stdin(&["apply", "-n", &self.ns.name], &yaml);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `theseus cluster ARGS… -n NS`, which must succeed.
    fn cli(&self, args: &[&str]) -> String {
        support::run::stdout_ok(
            self.tb
                .command(theseus())
                .arg("cluster")
                .args(args)
                .args(["-n", &self.ns.name]),
        )
    }

    fn service(&self, short: &str) -> String {
        format!("{}-{short}", self.run)
    }

    async fn cluster(&self) -> Cluster {
        let clusters: Api<Cluster> = Api::namespaced(self.client.clone(), &self.ns.name);
        clusters.get("shop").await.unwrap()
    }

    async fn plan(&self, name: &str) -> ClusterPlan {
        let plans: Api<ClusterPlan> = Api::namespaced(self.client.clone(), &self.ns.name);
        plans.get(name).await.unwrap()
    }

    /// The plan the cluster names once it is not `previous` and has ended.
    async fn ended_plan(&self, previous: Option<&str>, timeout: Duration) -> ClusterPlan {
        let plans: Api<ClusterPlan> = Api::namespaced(self.client.clone(), &self.ns.name);
        let clusters: Api<Cluster> = Api::namespaced(self.client.clone(), &self.ns.name);
        eventually(timeout, "the cluster's next plan to end", || {
            let (plans, clusters) = (plans.clone(), clusters.clone());
            async move {
                let shop = clusters.get("shop").await.map_err(|e| e.to_string())?;
                let name = shop
                    .status
                    .clone()
                    .and_then(|s| s.plan)
                    .ok_or("no plan yet")?;
                if Some(name.as_str()) == previous {
                    return Err(format!("still the plan {name}"));
                }
                let plan = plans.get(&name).await.map_err(|e| e.to_string())?;
                let phase = plan.status.as_ref().map(|s| s.phase).unwrap_or_default();
                // The cluster has taken the ended plan in (its applied
                // layout with it) once it says no plan runs.
                let conditions = shop.status.map(|s| s.conditions).unwrap_or_default();
                let idle = conditions::find(&conditions, "Progressing")
                    .is_some_and(|c| c.status == "False" && c.message.ends_with(&name));
                match phase {
                    PlanPhase::Succeeded | PlanPhase::Failed | PlanPhase::RolledBack if idle => {
                        Ok(plan)
                    }
                    other => Err(format!("{name} is {other:?}, the cluster idle: {idle}")),
                }
            }
        })
        .await
    }

    /// The name of the cluster's current plan.
    async fn plan_name(&self) -> Option<String> {
        self.cluster().await.status.and_then(|s| s.plan)
    }

    fn wait(&self, condition: &str, timeout: &str) {
        self.tb.kubectl_ok(&[
            "wait",
            "-n",
            &self.ns.name,
            &format!("--for=condition={condition}"),
            "cluster/shop",
            &format!("--timeout={timeout}"),
        ]);
    }

    fn lines(&self) -> Vec<Line> {
        hook_lines(&self.hooklog)
    }

    /// The applied layout: node → services.
    async fn layout(&self) -> BTreeMap<String, BTreeSet<String>> {
        let st = self.cluster().await.status.unwrap_or_default();
        st.applied_layout
            .into_iter()
            .map(|n| (n.name, n.services.into_iter().collect()))
            .collect()
    }

    async fn pools(&self) -> Vec<NodePool> {
        let pools: Api<NodePool> = Api::all(self.client.clone());
        pools
            .list(&ListParams::default().labels(&format!("{RUN_LABEL}={}", self.run)))
            .await
            .unwrap()
            .items
    }

    async fn installs(&self) -> Vec<NodeInstall> {
        let nodes: Api<NodeInstall> = Api::all(self.client.clone());
        nodes
            .list(&ListParams::default().labels(&format!(
                "theseus.dev/cluster=shop,{RUN_LABEL}={}",
                self.run
            )))
            .await
            .unwrap()
            .items
    }

    /// The live agent processes of the cluster's pools.
    fn agents(&self) -> Vec<u32> {
        let Ok(pools) = std::fs::read_dir(self.state.join("nodepools")) else {
            return Vec::new();
        };
        pools
            .flat_map(|p| {
                let pool = p.unwrap().file_name();
                support::pools::agent_pids(&self.state, pool.to_str().unwrap())
            })
            .collect()
    }

    /// The cluster runs as many nodes as its layout has: the pools'
    /// instances, the NodeInstalls and the live agents.
    async fn assert_no_node_leaked(&self) {
        let want = self.layout().await.len();
        let pools = self.pools().await;
        let instances: i32 = pools
            .iter()
            .map(|p| p.status.as_ref().map(|s| s.replicas).unwrap_or(0))
            .sum();
        assert_eq!(instances as usize, want, "pool instances vs the layout");
        let wanted: i32 = pools.iter().map(|p| p.spec.replicas).sum();
        assert_eq!(wanted as usize, want, "pool replicas vs the layout");
        assert_eq!(self.installs().await.len(), want, "NodeInstalls");
        assert_eq!(self.agents().len(), want, "live agents");
    }

    /// Deletes the cluster and waits for its finalizer: the delete plan
    /// ran, and the pools, nodes and agents are gone. Then the namespace.
    async fn delete(self) {
        let mark = self.lines().len();
        self.tb.kubectl_ok(&[
            "delete",
            "-n",
            &self.ns.name,
            "cluster/shop",
            "--timeout=240s",
        ]);
        let removed: BTreeSet<String> = self.lines()[mark..]
            .iter()
            .filter(|(_, _, a, _)| a == "remove")
            .map(|(_, s, _, _)| s.clone())
            .collect();
        assert!(
            removed.contains(&self.service("store")),
            "the delete plan ran each service's remove hook: {removed:?}"
        );
        eventually(
            Duration::from_secs(120),
            "the pools and nodes to go",
            || {
                let shop = &self;
                async move {
                    let (pools, nodes, agents) = (
                        shop.pools().await.len(),
                        shop.installs().await.len(),
                        shop.agents().len(),
                    );
                    if pools + nodes + agents == 0 {
                        Ok(())
                    } else {
                        Err(format!("{pools} pools, {nodes} nodes, {agents} agents"))
                    }
                }
            },
        )
        .await;
        let Shop {
            ns,
            client,
            mut operator,
            ..
        } = self;
        operator.kill();
        ns.delete(&client).await;
    }
}

/// Ends the agents of a test that fails midway (they outlive the
/// operator by design).
struct Agents(PathBuf);

impl Drop for Agents {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(pools) = std::fs::read_dir(self.0.join("nodepools")) else {
            return;
        };
        for pool in pools.flatten() {
            let pool = pool.file_name();
            for pid in support::pools::agent_pids(&self.0, pool.to_str().unwrap_or_default()) {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
    }
}

/// (node, service, action) of each line, counted.
fn counted(lines: &[Line]) -> BTreeMap<(String, String, String), usize> {
    let mut seen = BTreeMap::new();
    for (node, service, action, _) in lines {
        *seen
            .entry((node.clone(), service.clone(), action.clone()))
            .or_insert(0) += 1;
    }
    seen
}

/// The services `lines` ran hooks for.
fn services_of(lines: &[Line]) -> BTreeSet<String> {
    lines.iter().map(|(_, s, _, _)| s.clone()).collect()
}

/// The nodes `lines` ran hooks on.
fn nodes_of(lines: &[Line]) -> BTreeSet<String> {
    lines.iter().map(|(n, _, _, _)| n.clone()).collect()
}

fn assert_succeeded(plan: &ClusterPlan) {
    let st = plan.status.clone().unwrap_or_default();
    assert_eq!(
        st.phase,
        PlanPhase::Succeeded,
        "plan {} ({}): {:?}; tasks: {:?}",
        plan.name_any(),
        plan.spec.operation.name(),
        st.message,
        st.tasks
    );
}

fn assert_ran_once(plan: &ClusterPlan) {
    let st = plan.status.clone().unwrap();
    assert!(
        st.tasks.iter().all(|t| t.attempts == 1),
        "a task of {} ran more than once: {:?}",
        plan.name_any(),
        st.tasks
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_created_scaled_amended_reconfigured_and_deleted_by_plans() {
    let Some(shop) = Shop::start("plans").await else {
        return;
    };
    shop.apply("");

    // Created: nodes launch, packages switch, hooks run in dependency
    // order, and kubectl wait sees Available.
    shop.wait("Available", "240s");
    let lines = shop.lines();
    let seen = counted(&lines);
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
    let create_name = shop.plan_name().await.unwrap();
    let create = shop.plan(&create_name).await;
    assert_eq!(create.spec.operation.name(), "create");
    assert_succeeded(&create);
    assert_ran_once(&create);
    assert_eq!(shop.installs().await.len(), 3, "one NodeInstall per node");
    shop.assert_no_node_leaked().await;

    // Scale to 5 and back to 3: the nodes that stay keep their services
    // and run no hook.
    let three = shop.layout().await;
    let mark = shop.lines().len();
    shop.cli(&["scale", "shop", "5"]);
    let up = shop
        .ended_plan(Some(&create_name), Duration::from_secs(240))
        .await;
    assert_succeeded(&up);
    assert_eq!(up.spec.operation.name(), "scale");
    assert_ran_once(&up);
    let five = shop.layout().await;
    assert_eq!(
        five.len(),
        5,
        "{five:?} from {:?}; the cluster: {:?}",
        up.spec.to,
        shop.cluster().await.status
    );
    for (node, services) in &three {
        assert_eq!(five.get(node), Some(services), "{node} moved: {five:?}");
    }
    let ran = shop.lines()[mark..].to_vec();
    assert!(
        nodes_of(&ran).iter().all(|n| !three.contains_key(n)),
        "a node that stays ran a hook while scaling up: {ran:?}"
    );
    shop.assert_no_node_leaked().await;

    let mark = shop.lines().len();
    shop.cli(&["scale", "shop", "3"]);
    let down = shop
        .ended_plan(Some(&up.name_any()), Duration::from_secs(240))
        .await;
    assert_succeeded(&down);
    assert_ran_once(&down);
    assert_eq!(shop.layout().await, three, "back to the first layout");
    let ran = shop.lines()[mark..].to_vec();
    assert!(
        nodes_of(&ran).iter().all(|n| !three.contains_key(n)),
        "a node that stays ran a hook while scaling down: {ran:?}"
    );
    assert!(
        ran.iter().all(|(_, _, a, _)| a == "stop" || a == "remove"),
        "{ran:?}"
    );
    shop.assert_no_node_leaked().await;

    // Amend: only the new service's tasks run.
    let web = shop.service("web");
    let mark = shop.lines().len();
    shop.cli(&["add-services", "shop", &web]);
    let amend = shop
        .ended_plan(Some(&down.name_any()), Duration::from_secs(240))
        .await;
    assert_succeeded(&amend);
    assert_eq!(amend.spec.operation.name(), "addServices");
    let ran = shop.lines()[mark..].to_vec();
    assert_eq!(services_of(&ran), BTreeSet::from([web.clone()]), "{ran:?}");
    let actions: Vec<&str> = ran.iter().map(|(_, _, a, _)| a.as_str()).collect();
    assert_eq!(actions, ["install", "configure", "initialize", "start"]);

    // Reconfigure the cache: it and the API that uses it restart, in
    // order; the store and the web service do not.
    let mark = shop.lines().len();
    let cache = shop.service("cache");
    shop.cli(&["set", "shop", &format!("{cache}.size=2")]);
    let reconf = shop
        .ended_plan(Some(&amend.name_any()), Duration::from_secs(240))
        .await;
    assert_succeeded(&reconf);
    assert_eq!(reconf.spec.operation.name(), "reconfigure");
    let ran = shop.lines()[mark..].to_vec();
    assert_eq!(
        services_of(&ran),
        BTreeSet::from([cache.clone(), shop.service("api")]),
        "{ran:?}"
    );
    assert!(
        position(&ran, "-api", "stop") < position(&ran, "-cache", "stop"),
        "the API stops before the cache it uses: {ran:?}"
    );
    assert!(
        position(&ran, "-cache", "start") < position(&ran, "-api", "start"),
        "{ran:?}"
    );
    assert!(
        ran.iter()
            .any(|(_, s, a, _)| *s == cache && a == "configure"),
        "{ran:?}"
    );
    shop.wait("Available", "10s");
    shop.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_start_hook_is_retried_then_rolled_back_or_with_halt_stops() {
    let Some(shop) = Shop::start("planfail").await else {
        return;
    };
    shop.apply("");
    shop.wait("Available", "240s");
    let create = shop.plan_name().await.unwrap();
    let before = shop.layout().await;

    // The cache's start fails on every attempt: two attempts
    // (taskRetries 1), then the inverse plan puts the old configuration
    // back and starts what was stopped.
    let cache = shop.service("cache");
    let mark = shop.lines().len();
    shop.cli(&["set", "shop", &format!("fail={cache} start")]);
    let failed = shop
        .ended_plan(Some(&create), Duration::from_secs(300))
        .await;
    let st = failed.status.clone().unwrap();
    assert_eq!(st.phase, PlanPhase::RolledBack, "{st:?}");
    let ran = shop.lines()[mark..].to_vec();
    let attempts: Vec<&str> = ran
        .iter()
        .filter(|(_, s, a, _)| *s == cache && a == "start")
        .map(|(_, _, _, n)| n.as_str())
        .collect();
    assert_eq!(
        &attempts[..2],
        ["1", "2"],
        "retried once, then rolled back (whose start succeeds): {ran:?}"
    );
    for service in ["store", "api", "cache"] {
        let last = ran
            .iter()
            .rev()
            .find(|(_, s, _, _)| *s == shop.service(service))
            .unwrap();
        assert_eq!(last.2, "start", "{service} runs again: {ran:?}");
    }
    let shop_now = shop.cluster().await;
    let cst = shop_now.status.clone().unwrap();
    let degraded = conditions::find(&cst.conditions, "Degraded").unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "RolledBack")
    );
    assert!(
        degraded.message.contains(&format!("{cache}/start")),
        "names the task: {degraded:?}"
    );
    assert!(!cst.applied_config.contains_key("fail"), "{cst:?}");
    assert_eq!(shop.layout().await, before, "the old layout");
    shop.wait("Available", "10s");
    let out = shop
        .tb
        .command(theseus())
        .args(["cluster", "status", "shop", "-n", &shop.ns.name])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("RolledBack"), "{printed}");

    // With onFailure: Halt, the same change (its plan deleted to try
    // again) stops at the failure: nothing is undone.
    shop.tb.kubectl_ok(&[
        "patch",
        "-n",
        &shop.ns.name,
        "cluster/shop",
        "--type=merge",
        "-p",
        r#"{"spec":{"strategy":{"taskRetries":1,"onFailure":"Halt"}}}"#,
    ]);
    shop.tb.kubectl_ok(&[
        "delete",
        "-n",
        &shop.ns.name,
        &format!("clusterplan/{}", failed.name_any()),
    ]);
    let mark = shop.lines().len();
    let halted = shop.ended_plan(None, Duration::from_secs(300)).await;
    let st = halted.status.clone().unwrap();
    assert_eq!(st.phase, PlanPhase::Failed, "{st:?}");
    assert!(st.rollback.is_empty(), "nothing undone: {:?}", st.rollback);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ran = shop.lines()[mark..].to_vec();
    let last = ran.last().unwrap();
    assert_eq!(
        (last.1.as_str(), last.2.as_str(), last.3.as_str()),
        (cache.as_str(), "start", "2"),
        "no hook after the failure: {ran:?}"
    );
    let cst = shop.cluster().await.status.unwrap();
    let degraded = conditions::find(&cst.conditions, "Degraded").unwrap();
    assert_eq!(degraded.reason, "PlanFailed", "{degraded:?}");
    assert!(degraded.message.contains(&format!("{cache}/start")));
    shop.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_pause_and_manual_approval_each_hold_a_plan_until_released() {
    let Some(shop) = Shop::start("planhold").await else {
        return;
    };
    // Manual approval: the create waits; no pool, no hook.
    shop.apply("  planApproval: Manual\n");
    let waiting = eventually(Duration::from_secs(60), "a plan awaiting approval", || {
        let shop = &shop;
        async move {
            let name = shop.plan_name().await.ok_or("no plan yet")?;
            let plan = shop.plan(&name).await;
            match plan.status.as_ref().map(|s| s.phase) {
                Some(PlanPhase::AwaitingApproval) => Ok(name),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(shop.pools().await.is_empty(), "no node before approval");
    assert!(shop.lines().is_empty());
    shop.cli(&["approve", "shop"]);
    shop.wait("Available", "240s");
    assert_eq!(shop.plan_name().await.as_deref(), Some(waiting.as_str()));
    shop.tb.kubectl_ok(&[
        "patch",
        "-n",
        &shop.ns.name,
        "cluster/shop",
        "--type=merge",
        "-p",
        r#"{"spec":{"planApproval":"Automatic"}}"#,
    ]);

    // Halt: the next plan starts no task until resumed.
    let (code, body) = shop
        .operator
        .post("/halt", json!({ "reason": "maintenance", "by": "test" }))
        .await;
    assert_eq!(code, 200, "{body}");
    shop.wait("Halted", "30s");
    let mark = shop.lines().len();
    shop.cli(&["set", "shop", "mode=halted"]);
    held(&shop, &waiting, mark).await;
    let (code, body) = shop.operator.post("/resume", json!({})).await;
    assert_eq!(code, 200, "{body}");
    let resumed = shop
        .ended_plan(Some(&waiting), Duration::from_secs(240))
        .await;
    assert_succeeded(&resumed);

    // Pause: the same.
    shop.tb.kubectl_ok(&[
        "patch",
        "-n",
        &shop.ns.name,
        "cluster/shop",
        "--type=merge",
        "-p",
        r#"{"spec":{"paused":true}}"#,
    ]);
    let mark = shop.lines().len();
    shop.cli(&["set", "shop", "mode=paused"]);
    held(&shop, &resumed.name_any(), mark).await;
    shop.tb.kubectl_ok(&[
        "patch",
        "-n",
        &shop.ns.name,
        "cluster/shop",
        "--type=merge",
        "-p",
        r#"{"spec":{"paused":false}}"#,
    ]);
    let unpaused = shop
        .ended_plan(Some(&resumed.name_any()), Duration::from_secs(240))
        .await;
    assert_eq!(unpaused.status.unwrap().phase, PlanPhase::Succeeded);
    let cst = shop.cluster().await.status.unwrap();
    assert_eq!(
        cst.applied_config.get("mode").map(String::as_str),
        Some("paused")
    );
    shop.delete().await;
}

/// A new plan after `previous` exists and, for a while, starts no task
/// and runs no hook.
async fn held(shop: &Shop, previous: &str, mark: usize) {
    let name = eventually(Duration::from_secs(60), "the next plan", || async move {
        match shop.plan_name().await {
            Some(name) if name != previous => Ok(name),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let plan = shop.plan(&name).await;
    let st = plan.status.unwrap_or_default();
    assert!(
        st.tasks.iter().all(|t| t.attempts == 0),
        "a task started while held: {:?}",
        st.tasks
    );
    assert_eq!(shop.lines().len(), mark, "a hook ran while held");
}

/// A small deterministic generator for the kill moments (the seed is
/// printed so a failing run can be repeated with THESEUS_KILL_SEED).
struct Moments(u64);

impl Moments {
    fn next_ms(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        low + (self.0 >> 33) % (high - low)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_at_random_moments_finishes_every_plan_with_no_task_twice() {
    let Some(mut shop) = Shop::start("plankill").await else {
        return;
    };
    let wanted: usize = std::env::var("THESEUS_PLAN_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed = std::env::var("THESEUS_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill moments: THESEUS_KILL_SEED={seed}");
    let mut moments = Moments(seed);
    let mut kills = 0;
    let mut previous: Option<String> = None;
    // A create, then scales up and down until enough kills happened.
    let sizes = [3, 5, 3, 4, 3, 5, 3];
    for (i, size) in sizes.iter().enumerate() {
        if i > 0 && kills >= wanted {
            break;
        }
        let mark = shop.lines().len();
        if i == 0 {
            shop.apply("");
        } else {
            shop.cli(&["scale", "shop", &size.to_string()]);
        }
        // Kill and restart the operator at random moments until the
        // plan for this size has ended.
        loop {
            tokio::time::sleep(Duration::from_millis(moments.next_ms(300, 4000))).await;
            let ended = match shop.plan_name().await {
                Some(name) if Some(&name) != previous.as_ref() => {
                    let phase = shop.plan(&name).await.status.map(|s| s.phase);
                    matches!(
                        phase,
                        Some(PlanPhase::Succeeded | PlanPhase::Failed | PlanPhase::RolledBack)
                    )
                }
                _ => false,
            };
            if ended {
                break;
            }
            shop.operator.kill();
            kills += 1;
            shop.operator.restart();
        }
        let plan = shop
            .ended_plan(previous.as_deref(), Duration::from_secs(300))
            .await;
        assert_succeeded(&plan);
        assert_ran_once(&plan);
        let ran = shop.lines()[mark..].to_vec();
        let twice: Vec<_> = counted(&ran).into_iter().filter(|(_, n)| *n > 1).collect();
        assert!(twice.is_empty(), "hooks ran twice: {twice:?}");
        assert_eq!(shop.layout().await.len(), *size as usize);
        shop.assert_no_node_leaked().await;
        previous = Some(plan.name_any());
    }
    eprintln!("the operator was killed {kills} times");
    assert!(kills >= wanted, "{kills} kills");
    shop.delete().await;
}
