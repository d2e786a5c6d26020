//! NodePools with the local provider end to end: a real `theseus operator`
//! starts real `theseus agent` processes that register NodeInstalls; and the
//! drain before removal, against kwok Nodes and a PodDisruptionBudget.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use theseus::api::conditions;

use crate::support::pools::{LocalRig as Rig, agent_pids, fake_node};
use crate::support::{self, eventually};

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
