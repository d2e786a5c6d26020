//! NodePool helpers shared by the NodePool tests: applying and scaling
//! pools, a rig with an operator and a local-provider pool, kwok Nodes, and
//! pods held on a node by a finalizer (an eviction leaves them terminating
//! until the test lets them go).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use theseus::api::conditions;
use theseus::api::{NodeInstall, NodePool};

use super::fleet::{Operator, RUN_LABEL};
use super::{TestNamespace, TestbedEnv, eventually, test_logs};

/// The finalizer that keeps a test pod terminating after its eviction.
pub const HOLD: &str = "theseus.dev/test-hold";

/// Applies (server-side) the NodePool named `run`, labelled with the run and
/// giving its nodes the run label, with `spec` merged over `replicas`.
pub async fn apply(pools: &Api<NodePool>, run: &str, replicas: i32, mut spec: Value) {
    spec["replicas"] = json!(replicas);
    spec["nodeLabels"] = json!({ RUN_LABEL: run });
    let pool = json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "NodePool",
        "metadata": { "name": run, "labels": { RUN_LABEL: run } },
        "spec": spec
    });
    pools
        .patch(
            run,
            &PatchParams::apply("nodepool-test").force(),
            &Patch::Apply(&pool),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot apply NodePool {run}: {e}"));
}

/// `kubectl scale nodepool/NAME --replicas=N`.
pub fn scale(tb: &TestbedEnv, name: &str, replicas: i32) {
    tb.kubectl_ok(&[
        "scale",
        &format!("nodepool/{name}"),
        &format!("--replicas={replicas}"),
    ]);
}

/// Deletes the NodePool `name` and waits until its finalizer has let it go
/// (the operator has terminated its instances).
pub async fn delete_and_wait(pools: &Api<NodePool>, name: &str) {
    let _ = pools.delete(name, &DeleteParams::default()).await;
    eventually(Duration::from_secs(60), "the pool is gone", || async {
        match pools.get_opt(name).await {
            Ok(None) => Ok(()),
            other => Err(format!(
                "finalizers: {:?}",
                other.map(|p| p.map(|p| p.metadata.finalizers))
            )),
        }
    })
    .await;
}

/// A test's own operator and local-provider pool, named after its namespace.
pub struct LocalRig {
    /// The testbed.
    pub tb: TestbedEnv,
    /// A client for it.
    pub client: Client,
    /// The test's namespace.
    pub ns: TestNamespace,
    /// The run label, pool name and cluster name (the namespace's name).
    pub run: String,
    /// Where the operator logs.
    pub logs: std::path::PathBuf,
    /// The operator's state directory (local agents' roots).
    pub state: tempfile::TempDir,
}

impl LocalRig {
    /// A fresh namespace (and so run) tagged `tag`, or `None` without a
    /// testbed outside CI.
    pub async fn new(tag: &str) -> Option<LocalRig> {
        let tb = super::testbed()?;
        super::apply_crds(&tb);
        let client = tb.client().await;
        let ns = TestNamespace::create(&tb, &client, tag).await;
        let run = ns.name.clone();
        let logs = test_logs(&run);
        Some(LocalRig {
            tb,
            client,
            ns,
            run,
            logs,
            state: tempfile::tempdir().unwrap(),
        })
    }

    /// Starts the run's operator.
    pub fn operator(&self) -> Operator {
        self.operator_with(&[])
    }

    /// Starts the run's operator with `extra` arguments.
    pub fn operator_with(&self, extra: &[&str]) -> Operator {
        let state = self.state.path().to_str().unwrap().to_owned();
        let mut args = vec!["--cluster-name", &self.run, "--state-dir", &state];
        args.extend_from_slice(extra);
        Operator::start_with(
            &self.tb,
            &self.ns.name,
            &self.run,
            "a",
            &self.logs,
            &args,
            &[],
        )
    }

    /// The NodePool API.
    pub fn pools(&self) -> Api<NodePool> {
        Api::all(self.client.clone())
    }

    /// Applies the run's local pool with a 5 s drain timeout under `policy`.
    pub async fn apply_pool(&self, replicas: i32, policy: &str) {
        self.apply_pool_with(replicas, 5, policy).await;
    }

    /// Applies the run's local pool with this drain timeout and policy.
    pub async fn apply_pool_with(&self, replicas: i32, drain_timeout: i32, policy: &str) {
        let spec = json!({
            "provider": { "type": "Local", "local": {} },
            "drainTimeoutSeconds": drain_timeout,
            "drainTimeoutPolicy": policy,
        });
        apply(&self.pools(), &self.run, replicas, spec).await;
    }

    /// `kubectl scale` the run's pool.
    pub fn scale(&self, replicas: i32) {
        scale(&self.tb, &self.run, replicas);
    }

    /// The pool's NodeInstalls.
    pub async fn node_installs(&self) -> Vec<NodeInstall> {
        Api::<NodeInstall>::all(self.client.clone())
            .list(&ListParams::default().labels(&format!("theseus.dev/nodepool={}", self.run)))
            .await
            .unwrap()
            .items
    }

    /// Waits for `n` registered agents, each NodeInstall naming its instance,
    /// and `n` ready replicas.
    pub async fn joined(&self, n: usize) -> NodePool {
        eventually(
            Duration::from_secs(90),
            &format!("{n} local nodes joined"),
            || async {
                let nodes = self.node_installs().await;
                let with_ids = nodes
                    .iter()
                    .filter(|n| {
                        n.status
                            .as_ref()
                            .and_then(|s| s.instance_id.as_deref())
                            .is_some_and(|id| id.starts_with("local-"))
                    })
                    .count();
                let pool = self
                    .pools()
                    .get(&self.run)
                    .await
                    .map_err(|e| e.to_string())?;
                let st = pool.status.clone().unwrap_or_default();
                if nodes.len() == n
                    && with_ids == n
                    && st.ready_replicas == n as i32
                    && st.replicas == n as i32
                {
                    Ok(pool)
                } else {
                    Err(format!(
                        "{} NodeInstalls ({with_ids} with ids), status {:?}",
                        nodes.len(),
                        (st.replicas, st.ready_replicas)
                    ))
                }
            },
        )
        .await
    }

    /// Waits until the pool's `type_` condition has `reason`.
    pub async fn condition(&self, type_: &str, reason: &str, timeout: Duration) -> NodePool {
        eventually(timeout, &format!("{type_} reason {reason}"), || async {
            let pool = self
                .pools()
                .get(&self.run)
                .await
                .map_err(|e| e.to_string())?;
            let st = pool.status.clone().unwrap_or_default();
            match conditions::find(&st.conditions, type_) {
                Some(c) if c.reason == reason => Ok(pool),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }
}

/// The pids of the pool's running agents, from the provider's pid files.
pub fn agent_pids(state: &std::path::Path, pool: &str) -> Vec<u32> {
    let dir = state.join("nodepools").join(pool);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            std::fs::read_to_string(e.ok()?.path().join("pid"))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .filter(|pid: &u32| std::path::Path::new(&format!("/proc/{pid}")).exists())
        .collect()
}

/// Creates a kwok Node named `name` (kwok makes it Ready). It is tainted
/// NoSchedule: the tests drain and delete these nodes, so the scheduler
/// must not put other tests' pods (the demo's ServiceGroup) on them; the
/// tests' own pods are bound to it by name and tolerate everything.
pub async fn fake_node(client: &Client, name: &str) {
    let node: Node = serde_json::from_value(json!({
        "metadata": { "name": name, "annotations": { "kwok.x-k8s.io/node": "fake" },
                      "labels": { "type": "kwok", "kubernetes.io/hostname": name } },
        "spec": { "taints": [{ "key": "theseus.dev/test-node", "effect": "NoSchedule" }] },
        "status": { "allocatable": { "cpu": "8", "memory": "32Gi", "pods": "110" },
                    "capacity": { "cpu": "8", "memory": "32Gi", "pods": "110" } }
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
}

/// Creates pod `name` on `node`, held by the [`HOLD`] finalizer; returns its uid.
pub async fn held_pod(client: &Client, ns: &str, name: &str, node: &str) -> String {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "finalizers": [HOLD] },
        "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "fake" }],
                  "tolerations": [{ "operator": "Exists" }] }
    }))
    .unwrap();
    let created = Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    created.metadata.uid.unwrap()
}

/// Removes the [`HOLD`] finalizer so that a terminating pod can go.
pub async fn release(client: &Client, ns: &str, name: &str) {
    let patch = json!({ "metadata": { "finalizers": null } });
    let _ = Api::<Pod>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await;
}

/// Whether pod `name` with `uid` still exists and is being deleted (evicted).
pub async fn evicted(client: &Client, ns: &str, name: &str, uid: &str) -> Result<bool, String> {
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?;
    Ok(pod.is_some_and(|p| {
        p.metadata.uid.as_deref() == Some(uid) && p.metadata.deletion_timestamp.is_some()
    }))
}

/// Whether Node `name` is cordoned.
pub async fn cordoned(client: &Client, name: &str) -> bool {
    let node = Api::<Node>::all(client.clone()).get(name).await.unwrap();
    node.spec.and_then(|s| s.unschedulable) == Some(true)
}

/// Deletes the kwok Nodes `names`.
pub async fn delete_nodes(client: &Client, names: &[String]) {
    for name in names {
        let _ = Api::<Node>::all(client.clone())
            .delete(name, &DeleteParams::default())
            .await;
    }
}
