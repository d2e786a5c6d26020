//! NodePools with the local provider end to end: a real `theseus operator`
//! starts real `theseus agent` processes that register NodeInstalls; and the
//! drain before removal, against kwok Nodes and a PodDisruptionBudget.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use support::fleet::Operator;
use support::{TestNamespace, TestbedEnv, eventually, repo_root};
use theseus::api::conditions;
use theseus::api::{NodeInstall, NodePool};

struct Rig {
    tb: TestbedEnv,
    client: Client,
    ns: TestNamespace,
    run: String,
    logs: std::path::PathBuf,
    state: tempfile::TempDir,
}

impl Rig {
    async fn new(tag: &str) -> Option<Rig> {
        let tb = require_testbed!()?;
        support::apply_crds(&tb);
        let client = tb.client().await;
        let ns = TestNamespace::create(&tb, &client, tag).await;
        let run = ns.name.clone();
        let logs = repo_root().join("target/test-logs").join(&run);
        std::fs::create_dir_all(&logs).unwrap();
        eprintln!("operator logs: {}", logs.display());
        Some(Rig {
            tb,
            client,
            ns,
            run,
            logs,
            state: tempfile::tempdir().unwrap(),
        })
    }

    fn operator(&self) -> Operator {
        let state = self.state.path().to_str().unwrap().to_owned();
        Operator::start_with(
            &self.tb,
            &self.ns.name,
            &self.run,
            "a",
            &self.logs,
            &["--cluster-name", &self.run, "--state-dir", &state],
            &[],
        )
    }

    fn pools(&self) -> Api<NodePool> {
        Api::all(self.client.clone())
    }

    async fn apply_pool(&self, replicas: i32, policy: &str) {
        let spec = json!({
            "provider": { "type": "Local", "local": {} },
            "drainTimeoutSeconds": 5,
            "drainTimeoutPolicy": policy,
        });
        support::pools::apply(&self.pools(), &self.run, replicas, spec).await;
    }

    fn scale(&self, replicas: i32) {
        support::pools::scale(&self.tb, &self.run, replicas);
    }

    async fn node_installs(&self) -> Vec<NodeInstall> {
        Api::<NodeInstall>::all(self.client.clone())
            .list(&ListParams::default().labels(&format!("theseus.dev/nodepool={}", self.run)))
            .await
            .unwrap()
            .items
    }

    /// Waits for `n` registered agents, each NodeInstall naming its instance,
    /// and `n` ready replicas.
    async fn joined(&self, n: usize) -> NodePool {
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

    async fn condition(&self, type_: &str, reason: &str, timeout: Duration) -> NodePool {
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
fn agent_pids(state: &std::path::Path, pool: &str) -> Vec<u32> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_agents_join_as_the_pool_scales_up_and_leave_as_it_scales_down() {
    let Some(rig) = Rig::new("np-local").await else {
        return;
    };
    let _operator = rig.operator();
    rig.apply_pool(0, "Wait").await;
    rig.scale(3);
    let pool = rig.joined(3).await;
    let pids = agent_pids(rig.state.path(), &rig.run);
    assert_eq!(pids.len(), 3, "three agent processes");
    let nodes: Vec<Option<String>> = pool
        .status
        .unwrap()
        .instances
        .iter()
        .map(|i| i.node.clone())
        .collect();
    assert!(nodes.iter().all(Option::is_some), "{nodes:?}");

    rig.scale(1);
    rig.joined(1).await;
    eventually(Duration::from_secs(30), "two agents stopped", || async {
        let left = pids
            .iter()
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            .count();
        (left == 1)
            .then_some(())
            .ok_or(format!("{left} of the agents still run"))
    })
    .await;
    // Newest first: the survivor is the first launched.
    let survivor = rig.node_installs().await.pop().unwrap();
    assert_eq!(
        survivor.metadata.name.as_deref(),
        Some(format!("{}-0", rig.run).as_str())
    );

    support::pools::delete_and_wait(&rig.pools(), &rig.run).await;
    assert!(
        agent_pids(rig.state.path(), &rig.run).is_empty(),
        "deleting the pool stops its agents"
    );
    assert!(rig.node_installs().await.is_empty());
    rig.ns.delete(&rig.client).await;
}

async fn fake_node(client: &Client, name: &str) {
    let node: Node = serde_json::from_value(json!({
        "metadata": { "name": name, "annotations": { "kwok.x-k8s.io/node": "fake" },
                      "labels": { "type": "kwok", "kubernetes.io/hostname": name } },
        "status": { "allocatable": { "cpu": "8", "memory": "32Gi", "pods": "110" },
                    "capacity": { "cpu": "8", "memory": "32Gi", "pods": "110" } }
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
}

async fn protected_pod(client: &Client, ns: &str, node: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "guarded", "labels": { "app": "guarded" } },
        "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "fake" }],
                  "tolerations": [{ "operator": "Exists" }] }
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let pdb = json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": { "name": "guarded", "namespace": ns },
        "spec": { "minAvailable": 1, "selector": { "matchLabels": { "app": "guarded" } } }
    });
    let api: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(client.clone(), ns);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(pdb).unwrap(),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(60),
        "the PDB allows no disruption and the pod is ready",
        || async {
            let pdb = api.get("guarded").await.map_err(|e| e.to_string())?;
            let st = pdb.status.unwrap_or_default();
            (st.current_healthy == Some(1) && st.disruptions_allowed == Some(0))
                .then_some(())
                .ok_or(format!("{st:?}"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disruption_budget_holds_the_removal_until_the_timeout_then_the_policy_decides() {
    let Some(rig) = Rig::new("np-drain").await else {
        return;
    };
    let node_name = format!("{}-0", rig.run);
    fake_node(&rig.client, &node_name).await;
    protected_pod(&rig.client, &rig.ns.name, &node_name).await;
    let _operator = rig.operator();
    rig.apply_pool(1, "Wait").await;
    rig.joined(1).await;

    rig.scale(0);
    let pool = rig
        .condition("Degraded", "DrainTimeout", Duration::from_secs(60))
        .await;
    let st = pool.status.unwrap();
    assert_eq!(st.instances.len(), 1, "Wait keeps the node");
    assert_eq!(st.instances[0].state.as_deref(), Some("Draining"));
    let c = conditions::find(&st.conditions, "Degraded").unwrap();
    assert!(c.message.contains("guarded"), "{}", c.message);
    let node = Api::<Node>::all(rig.client.clone())
        .get(&node_name)
        .await
        .unwrap();
    assert_eq!(
        node.spec.unwrap().unschedulable,
        Some(true),
        "the node is cordoned"
    );
    let pod = Api::<Pod>::namespaced(rig.client.clone(), &rig.ns.name)
        .get_opt("guarded")
        .await
        .unwrap();
    assert!(
        pod.is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
        "the budget protected the pod"
    );

    rig.apply_pool(0, "Force").await;
    let pool = rig
        .condition("Degraded", "DrainForced", Duration::from_secs(60))
        .await;
    eventually(
        Duration::from_secs(30),
        "the instance is removed",
        || async {
            let st = rig
                .pools()
                .get(&rig.run)
                .await
                .unwrap()
                .status
                .unwrap_or_default();
            (st.instances.is_empty() && rig.node_installs().await.is_empty())
                .then_some(())
                .ok_or(format!("{:?}", st.instances))
        },
    )
    .await;
    let c = conditions::find(&pool.status.unwrap().conditions, "Degraded")
        .unwrap()
        .clone();
    assert!(c.message.contains("Force"), "{}", c.message);
    assert!(agent_pids(rig.state.path(), &rig.run).is_empty());

    support::pools::delete_and_wait(&rig.pools(), &rig.run).await;
    let _ = Api::<Node>::all(rig.client.clone())
        .delete(&node_name, &DeleteParams::default())
        .await;
    rig.ns.delete(&rig.client).await;
}

fn theseus_node(rig: &Rig, args: &[&str]) -> String {
    let out = rig
        .tb
        .command(support::theseus())
        .arg("node")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "theseus node {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_add_grows_the_pool_and_node_remove_takes_out_the_named_node() {
    let Some(rig) = Rig::new("np-cli").await else {
        return;
    };
    let _operator = rig.operator();
    rig.apply_pool(0, "Wait").await;
    let out = theseus_node(&rig, &["add", "--pool", &rig.run, "--count", "3"]);
    assert!(out.contains("scaled to 3"), "{out}");
    rig.joined(3).await;

    // Not the newest (which the pool's order would pick): the one named.
    let victim = format!("{}-1", rig.run);
    theseus_node(&rig, &["remove", &victim]);
    rig.joined(2).await;
    let mut names: Vec<String> = rig
        .node_installs()
        .await
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![format!("{}-0", rig.run), format!("{}-2", rig.run)]
    );
    let pool = rig.pools().get(&rig.run).await.unwrap();
    assert_eq!(pool.spec.replicas, 2);

    support::pools::delete_and_wait(&rig.pools(), &rig.run).await;
    assert!(agent_pids(rig.state.path(), &rig.run).is_empty());
    rig.ns.delete(&rig.client).await;
}
