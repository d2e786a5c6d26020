//! A test cluster for the plan tests: a three-service catalog (a store,
//! an API that needs the store, a cache the API uses, and a web service to
//! amend with) whose packages carry a hook script, served by
//! `theseus repo serve`; a real `theseus operator` that plans the cluster
//! `shop`, launches Local NodePools of real agents, switches their
//! packages and has them run the hooks. The hooks append to one file, so a
//! test reads the order they ran in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use theseus::api::{Cluster, ClusterPlan, NodeInstall, NodePool, PlanPhase, conditions};

use super::fleet::{Operator, RUN_LABEL};
use super::repo_server::RepoServer;
use super::{TestNamespace, TestbedEnv, eventually, test_logs, theseus};
use crate::support;

/// The hook every service runs for every action: it records the node,
/// service and action, and fails when the configuration asks it to.
pub const HOOK: &str = r#"#!/bin/sh
echo "$THESEUS_CLUSTER_NODE $THESEUS_SERVICE $THESEUS_ACTION $THESEUS_ATTEMPT" >> "$THESEUS_CONFIG_HOOKLOG"
if [ "$THESEUS_SERVICE $THESEUS_ACTION" = "$THESEUS_CONFIG_FAIL" ]; then
  echo "failing as the configuration asks"
  exit 3
fi
"#;

/// Builds and signs a repository of one package per service, each with
/// [`HOOK`]; returns (the server, its public key).
pub fn repository(dir: &Path, services: &[&str]) -> (RepoServer, String) {
    hook_repository(dir, services, HOOK)
}

/// Builds and signs a repository of one package `SERVICE--1.0` per
/// service, each holding `hook` at `bin/SERVICE`; returns (the server,
/// its public key).
pub fn hook_repository(dir: &Path, services: &[&str], hook: &str) -> (RepoServer, String) {
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
        let path = format!("bin/{service}");
        let src = support::pkg::package_dir(dir, &id, &[], &[(path.as_str(), hook)]);
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

/// The PackageRepository `RUN` (at `url`, signed by `key`) and the Local
/// NodeClass `RUN-box`, as YAML documents.
pub fn repository_and_class(run: &str, url: &str, key: &str) -> String {
    format!(
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
    )
}

/// The catalog: services `RUN-store`, `RUN-api`, `RUN-cache` (the
/// template's defaults) and `RUN-web` (to amend with), a Local node class
/// and a template placing the three on their own nodes.
pub fn catalog(run: &str, url: &str, key: &str) -> String {
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
    let mut text = repository_and_class(run, url, key);
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

pub fn cluster_yaml(run: &str, hooklog: &Path, extra: &str) -> String {
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
pub type Line = (String, String, String, String);

/// The hook lines as (node, service, action, attempt), in the order run.
pub fn hook_lines(path: &Path) -> Vec<Line> {
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
pub fn position(lines: &[Line], service: &str, action: &str) -> usize {
    lines
        .iter()
        .position(|(_, s, a, _)| s.ends_with(service) && a == action)
        .unwrap_or_else(|| panic!("no {service} {action} hook ran: {lines:?}"))
}

/// A running shop: the repository, the catalog, an operator, and the
/// cluster `shop` in the test's namespace once [`Shop::apply`]ed.
pub struct Shop {
    pub tb: TestbedEnv,
    pub client: Client,
    pub ns: TestNamespace,
    pub run: String,
    pub state: PathBuf,
    pub hooklog: PathBuf,
    pub operator: Operator,
    _agents: Agents,
    _server: RepoServer,
    _work: tempfile::TempDir,
}

impl Shop {
    pub async fn start(prefix: &str) -> Option<Shop> {
        Shop::start_with(prefix, &[]).await
    }

    /// Like [`Shop::start`], with more arguments for the operator.
    pub async fn start_with(prefix: &str, operator_args: &[&str]) -> Option<Shop> {
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
            &[
                &["--state-dir", &state_arg, "--cluster-name", &run],
                operator_args,
            ]
            .concat(),
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
    pub fn apply(&self, extra: &str) {
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

    /// A merge patch of the cluster's spec with `spec` (JSON).
    pub fn patch_spec(&self, spec: &str) {
        self.tb.kubectl_ok(&[
            "patch",
            "-n",
            &self.ns.name,
            "cluster/shop",
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{spec}}}"#),
        ]);
    }

    /// `theseus cluster ARGS… -n NS`, which must succeed.
    pub fn cli(&self, args: &[&str]) -> String {
        support::run::stdout_ok(
            self.tb
                .command(theseus())
                .arg("cluster")
                .args(args)
                .args(["-n", &self.ns.name]),
        )
    }

    pub fn service(&self, short: &str) -> String {
        format!("{}-{short}", self.run)
    }

    pub async fn cluster(&self) -> Cluster {
        let clusters: Api<Cluster> = Api::namespaced(self.client.clone(), &self.ns.name);
        clusters.get("shop").await.unwrap()
    }

    pub async fn plan(&self, name: &str) -> ClusterPlan {
        let plans: Api<ClusterPlan> = Api::namespaced(self.client.clone(), &self.ns.name);
        plans.get(name).await.unwrap()
    }

    /// The plan the cluster names once it is not `previous` and has ended.
    pub async fn ended_plan(&self, previous: Option<&str>, timeout: Duration) -> ClusterPlan {
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
    pub async fn plan_name(&self) -> Option<String> {
        self.cluster().await.status.and_then(|s| s.plan)
    }

    pub fn wait(&self, condition: &str, timeout: &str) {
        self.tb.kubectl_ok(&[
            "wait",
            "-n",
            &self.ns.name,
            &format!("--for=condition={condition}"),
            "cluster/shop",
            &format!("--timeout={timeout}"),
        ]);
    }

    pub fn lines(&self) -> Vec<Line> {
        hook_lines(&self.hooklog)
    }

    /// The applied layout: node → services.
    pub async fn layout(&self) -> BTreeMap<String, BTreeSet<String>> {
        let st = self.cluster().await.status.unwrap_or_default();
        st.applied_layout
            .into_iter()
            .map(|n| (n.name, n.services.into_iter().collect()))
            .collect()
    }

    pub async fn pools(&self) -> Vec<NodePool> {
        let pools: Api<NodePool> = Api::all(self.client.clone());
        pools
            .list(&ListParams::default().labels(&format!("{RUN_LABEL}={}", self.run)))
            .await
            .unwrap()
            .items
    }

    pub async fn installs(&self) -> Vec<NodeInstall> {
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

    /// The logs of every agent the cluster's pools started, one after
    /// another.
    pub fn agent_logs(&self) -> String {
        let Ok(pools) = std::fs::read_dir(self.state.join("nodepools")) else {
            return String::new();
        };
        let mut logs = String::new();
        for pool in pools.flatten() {
            for node in std::fs::read_dir(pool.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let log = node.path().join("agent.log");
                logs += &std::fs::read_to_string(log).unwrap_or_default();
            }
        }
        logs
    }

    /// The live agent processes of the cluster's pools.
    pub fn agents(&self) -> Vec<u32> {
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
    /// instances (as their status reports them, once it caught up), the
    /// NodeInstalls and the live agents.
    pub async fn assert_no_node_leaked(&self) {
        let want = self.layout().await.len();
        eventually(Duration::from_secs(60), "the nodes to match the layout", || async move {
            let pools = self.pools().await;
            let instances: i32 = pools
                .iter()
                .map(|p| p.status.as_ref().map(|s| s.replicas).unwrap_or(0))
                .sum();
            let replicas: i32 = pools.iter().map(|p| p.spec.replicas).sum();
            let installs = self.installs().await;
            let counts = (
                instances as usize,
                replicas as usize,
                installs.len(),
                self.agents().len(),
            );
            if counts == (want, want, want, want) {
                return Ok(());
            }
            // What each side holds, so that a leak says which node it is.
            let recorded: Vec<String> = pools
                .iter()
                .flat_map(|p| p.status.iter().flat_map(|s| &s.instances))
                .map(|i| format!("{} {:?} node={:?}", i.id, i.state, i.node))
                .collect();
            let nodes: Vec<String> = installs
                .iter()
                .map(|n| {
                    let st = n.status.clone().unwrap_or_default();
                    format!(
                        "{} instance={:?} heartbeat={} created={:?}",
                        n.name_any(),
                        st.instance_id,
                        st.heartbeat.is_some(),
                        n.metadata.creation_timestamp.as_ref().map(|t| t.0)
                    )
                })
                .collect();
            Err(format!(
                "{want} layout nodes; (pool instances, pool replicas, NodeInstalls, agents) = {counts:?}; recorded instances {recorded:?}; NodeInstalls {nodes:?}; agent pids {:?}",
                self.agents()
            ))
        })
        .await;
    }

    /// Deletes the cluster and waits for its finalizer: the delete plan
    /// ran, and the pools, nodes and agents are gone. Then the namespace.
    pub async fn delete(self) {
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
pub struct Agents(PathBuf);

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
pub fn counted(lines: &[Line]) -> BTreeMap<(String, String, String), usize> {
    let mut seen = BTreeMap::new();
    for (node, service, action, _) in lines {
        *seen
            .entry((node.clone(), service.clone(), action.clone()))
            .or_insert(0) += 1;
    }
    seen
}

/// The services `lines` ran hooks for.
pub fn services_of(lines: &[Line]) -> BTreeSet<String> {
    lines.iter().map(|(_, s, _, _)| s.clone()).collect()
}

/// The nodes `lines` ran hooks on.
pub fn nodes_of(lines: &[Line]) -> BTreeSet<String> {
    lines.iter().map(|(n, _, _, _)| n.clone()).collect()
}

pub fn assert_succeeded(plan: &ClusterPlan) {
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

pub fn assert_ran_once(plan: &ClusterPlan) {
    let st = plan.status.clone().unwrap();
    assert!(
        st.tasks.iter().all(|t| t.attempts == 1),
        "a task of {} ran more than once: {:?}",
        plan.name_any(),
        st.tasks
    );
}
