//! The ServiceGroup controller and the publisher against the testbed: kwok
//! pods that become Ready with IPs, and the discovery etcd (or an etcd of
//! the test's own where it is killed and restarted). Each test runs its own
//! controller in-process, scoped to its own namespace and etcd prefix.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use theseus::api::ServiceGroup;
use theseus::api::conditions::{self, types};
use theseus::discovery::{
    ContainerInfo, Context, ControllerError, EtcdConfig, GroupConfig, NAME_LABEL, Tree, run,
};
use tokio::task::JoinHandle;

use crate::support::discovery as ds;
use crate::support::{self, TestNamespace, eventually};

const WAIT: Duration = Duration::from_secs(90);

fn start(client: &Client, etcd: &EtcdConfig, ns: &str) -> JoinHandle<Result<(), ControllerError>> {
    let mut ctx = Context::new(client.clone(), etcd.clone());
    ctx.namespace = Some(ns.to_owned());
    ctx.resync_interval = Duration::from_secs(2);
    tokio::spawn(run(ctx))
}

fn group(name: &str, labels: &[&str], replicas: i32, config: &[(&str, &str)]) -> ServiceGroup {
    let config: BTreeMap<&str, &str> = config.iter().copied().collect();
    serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "ServiceGroup",
        "metadata": { "name": name },
        "spec": {
            "service": "web", "labels": labels, "replicas": replicas, "config": config,
            "template": { "image": "example/web:1",
                "ports": [{ "name": "http", "containerPort": 8080 }, { "containerPort": 9090 }] }
        }
    }))
    .unwrap()
}

async fn scale(api: &Api<ServiceGroup>, name: &str, replicas: i32) {
    let patch = json!({ "spec": { "replicas": replicas } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// The containers published for `web/GROUP`.
async fn published(tree: &Tree, group: &str) -> Result<BTreeMap<String, ContainerInfo>, String> {
    let all = tree
        .service_containers("web")
        .await
        .map_err(|e| e.to_string())?;
    Ok(all
        .into_iter()
        .filter(|c| c.group == group)
        .map(|c| (c.container, c.info))
        .collect())
}

/// Waits until exactly `n` containers are published under `web/GROUP`.
async fn wait_published(tree: &Tree, group: &str, n: usize) -> BTreeMap<String, ContainerInfo> {
    eventually(WAIT, &format!("{n} containers published"), || async {
        let found = published(tree, group).await?;
        if found.len() == n {
            Ok(found)
        } else {
            Err(format!("{} published: {:?}", found.len(), found.keys()))
        }
    })
    .await
}

/// Deletes the namespace's groups while the operator still runs (so their
/// finalizers are honoured and the namespace can go), then stops it.
async fn finish(operator: JoinHandle<Result<(), ControllerError>>, groups: &Api<ServiceGroup>) {
    ds::delete_groups(groups).await;
    operator.abort();
}

async fn ready_pods(pods: &Api<Pod>, name: &str) -> Vec<Pod> {
    let list = pods
        .list(&ListParams::default().labels(&format!("{NAME_LABEL}={name}")))
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter(|p| theseus::discovery::projection::pod_info(p).is_some())
        .collect()
}

async fn condition(api: &Api<ServiceGroup>, name: &str, type_: &str) -> Option<(String, String)> {
    let sg = api.get(name).await.ok()?;
    let status = sg.status?;
    let c = conditions::find(&status.conditions, type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_published_scaled_unreadied_and_removed_with_its_keys() {
    let Some(tb) = support::testbed() else { return };
    support::apply_crds(&tb);
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "disc").await;
    let etcd = ds::config(tb.discovery_etcd());
    let tree = Tree::connect(&etcd).await.unwrap();
    let operator = start(&client, &etcd, &ns.name);
    let groups: Api<ServiceGroup> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    let sg = group("web-eu", &["eu", "canary"], 5, &[("mode", "fast")]);
    groups.create(&PostParams::default(), &sg).await.unwrap();

    // 5 ready pods -> 5 info keys with the pods' values.
    let found = wait_published(&tree, "canary.eu", 5).await;
    for pod in ready_pods(&pods, "web-eu").await {
        let info = &found[&pod.name_any()];
        let status = pod.status.as_ref().unwrap();
        assert_eq!(Some(&info.instance_host), status.pod_ip.as_ref());
        assert_eq!(info.instance_port, Some(8080));
        assert_eq!(info.port_mappings.len(), 2);
        assert_eq!(info.instance_name, pod.name_any());
        assert_eq!(info.node_name, pod.spec.as_ref().unwrap().node_name);
    }
    let config = tree.group_config("web", "canary.eu").await.unwrap();
    assert_eq!(
        config,
        Some(GroupConfig::from([("mode".into(), "fast".into())]))
    );

    // Status: from the Deployment and the publisher.
    eventually(WAIT, "Available and Published", || async {
        let available = condition(&groups, "web-eu", types::AVAILABLE).await;
        let published = condition(&groups, "web-eu", types::PUBLISHED).await;
        match (available, published) {
            (Some(a), Some(p)) if a.0 == "True" && p.0 == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let status = groups.get("web-eu").await.unwrap().status.unwrap();
    assert_eq!(status.published_containers, 5);
    assert_eq!(status.group.as_deref(), Some("canary.eu"));
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .get("web-eu")
        .await
        .unwrap();
    assert_eq!(deployment.owner_references()[0].kind, "ServiceGroup");

    // Scaled to 2 -> three keys gone.
    scale(&groups, "web-eu", 2).await;
    let found = wait_published(&tree, "canary.eu", 2).await;

    // A pod made NotReady -> its key gone.
    let victim = found.keys().next().unwrap().clone();
    let not_ready = json!({ "status": { "conditions": [{ "type": "Ready", "status": "False" }] } });
    pods.patch_status(
        &victim,
        &PatchParams::default(),
        &Patch::Strategic(&not_ready),
    )
    .await
    .unwrap();
    let left = wait_published(&tree, "canary.eu", 1).await;
    assert!(!left.contains_key(&victim), "{victim} is still published");

    // Config follows spec.config.
    let patch = json!({ "spec": { "config": { "mode": "slow" } } });
    groups
        .patch("web-eu", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(WAIT, "config mirrored", || async {
        match tree.group_config("web", "canary.eu").await {
            Ok(Some(c)) if c.get("mode").map(String::as_str) == Some("slow") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Deleted -> all its keys gone, then the object goes.
    groups
        .delete("web-eu", &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "group removed from etcd and the API", || async {
        let exists = tree
            .group_exists("web", "canary.eu")
            .await
            .map_err(|e| e.to_string())?;
        let gone = groups
            .get_opt("web-eu")
            .await
            .map_err(|e| e.to_string())?
            .is_none();
        if !exists && gone {
            Ok(())
        } else {
            Err(format!("keys {exists}, object gone {gone}"))
        }
    })
    .await;
    finish(operator, &groups).await;
    ds::wipe(&tree).await;
    ns.delete(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_groups_on_one_path_the_newer_gets_a_conflict_and_overwrites_nothing() {
    let Some(tb) = support::testbed() else { return };
    support::apply_crds(&tb);
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "conflict").await;
    let etcd = ds::config(tb.discovery_etcd());
    let tree = Tree::connect(&etcd).await.unwrap();
    let operator = start(&client, &etcd, &ns.name);
    let groups: Api<ServiceGroup> = Api::namespaced(client.clone(), &ns.name);

    let older = group("older", &["eu"], 2, &[("owner", "older")]);
    groups.create(&PostParams::default(), &older).await.unwrap();
    wait_published(&tree, "eu", 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // a later creationTimestamp
    let newer = group("newer", &["eu", "eu"], 4, &[("owner", "newer")]);
    groups.create(&PostParams::default(), &newer).await.unwrap();

    eventually(WAIT, "the newer group reports a conflict", || async {
        match condition(&groups, "newer", types::CONFLICT).await {
            Some((s, r)) if s == "True" && r == "PathTaken" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let message = groups.get("newer").await.unwrap().status.unwrap();
    let conflict = conditions::find(&message.conditions, types::CONFLICT).unwrap();
    assert!(conflict.message.contains("older"), "{}", conflict.message);
    tokio::time::sleep(Duration::from_secs(3)).await; // a resync or two
    let found = published(&tree, "eu").await.unwrap();
    assert_eq!(found.len(), 2, "the older group's containers stay");
    assert!(
        found
            .values()
            .all(|i| i.instance_name.starts_with("older-"))
    );
    let config = tree.group_config("web", "eu").await.unwrap().unwrap();
    assert_eq!(config["owner"], "older");
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    assert!(
        deployments.get_opt("newer").await.unwrap().is_none(),
        "no Deployment for the newer group"
    );

    // Once the older group is gone, the newer one takes the path over.
    groups
        .delete("older", &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "the newer group publishes", || async {
        let config = tree
            .group_config("web", "eu")
            .await
            .map_err(|e| e.to_string())?;
        let found = published(&tree, "eu").await?;
        let owner = config.and_then(|c| c.get("owner").cloned());
        if owner.as_deref() == Some("newer") && found.len() == 4 {
            Ok(())
        } else {
            Err(format!("owner {owner:?}, {} containers", found.len()))
        }
    })
    .await;
    finish(operator, &groups).await;
    ds::wipe(&tree).await;
    ns.delete(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_key_planted_by_hand_is_removed_at_the_next_resync() {
    let Some(tb) = support::testbed() else { return };
    support::apply_crds(&tb);
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "stale").await;
    let etcd = ds::config(tb.discovery_etcd());
    let tree = Tree::connect(&etcd).await.unwrap();
    let operator = start(&client, &etcd, &ns.name);
    let groups: Api<ServiceGroup> = Api::namespaced(client.clone(), &ns.name);
    groups
        .create(&PostParams::default(), &group("web", &[], 1, &[]))
        .await
        .unwrap();
    wait_published(&tree, "default", 1).await;

    let ghost = ContainerInfo {
        instance_host: "10.9.9.9".into(),
        instance_name: "ghost".into(),
        ..ContainerInfo::default()
    };
    tree.set_container_info("web", "default", "ghost", &ghost)
        .await
        .unwrap();
    let junk = format!("{}junk", tree.layout().group("web", "default"));
    tree.client().put(junk.clone(), "x", None).await.unwrap();
    eventually(Duration::from_secs(30), "stale keys removed", || async {
        let range = tree
            .range(&tree.layout().group("web", "default"))
            .await
            .map_err(|e| e.to_string())?;
        let keys: Vec<&str> = range.entries.iter().map(|e| e.key.as_str()).collect();
        let stale = keys.iter().any(|k| k.contains("ghost") || *k == junk);
        if stale {
            Err(format!("{keys:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(published(&tree, "default").await.unwrap().len(), 1);
    finish(operator, &groups).await;
    ds::wipe(&tree).await;
    ns.delete(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_operator_leaves_entries_until_the_lease_expires_and_a_new_one_republishes() {
    let Some(tb) = support::testbed() else { return };
    support::apply_crds(&tb);
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "lease").await;
    let etcd = ds::config(tb.discovery_etcd()).with_lease_ttl(6);
    let tree = Tree::connect(&etcd).await.unwrap();
    let operator = start(&client, &etcd, &ns.name);
    let groups: Api<ServiceGroup> = Api::namespaced(client.clone(), &ns.name);
    groups
        .create(&PostParams::default(), &group("web", &["a"], 2, &[]))
        .await
        .unwrap();
    wait_published(&tree, "a", 2).await;

    operator.abort(); // killed: the lease is not revoked
    let _ = operator.await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        published(&tree, "a").await.unwrap().len(),
        2,
        "entries outlive the operator"
    );
    wait_published(&tree, "a", 0).await; // gone once the lease expired
    assert!(
        tree.group_exists("web", "a").await.unwrap(),
        "the config is not leased"
    );

    let restarted = start(&client, &etcd, &ns.name);
    wait_published(&tree, "a", 2).await;
    finish(restarted, &groups).await;
    ds::wipe(&tree).await;
    ns.delete(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_etcd_restarts_mid_way_the_tree_converges() {
    let Some(tb) = support::testbed() else { return };
    support::apply_crds(&tb);
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "restart").await;
    let mut own = ds::OwnEtcd::start().await;
    let mut etcd = ds::config(&own.url()).with_lease_ttl(10);
    etcd.request_timeout = Duration::from_secs(2);
    let tree = Tree::connect(&etcd).await.unwrap();
    let operator = start(&client, &etcd, &ns.name);
    let groups: Api<ServiceGroup> = Api::namespaced(client.clone(), &ns.name);
    groups
        .create(&PostParams::default(), &group("web", &["r"], 3, &[]))
        .await
        .unwrap();
    wait_published(&tree, "r", 3).await;

    own.kill();
    scale(&groups, "web", 1).await;
    eventually(WAIT, "Published=False while etcd is down", || async {
        match condition(&groups, "web", types::PUBLISHED).await {
            Some((s, r)) if s == "False" && r == "EtcdUnavailable" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    own.restart().await;
    wait_published(&tree, "r", 1).await;
    eventually(WAIT, "Published=True again", || async {
        match condition(&groups, "web", types::PUBLISHED).await {
            Some((s, _)) if s == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    finish(operator, &groups).await;
    ns.delete(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_labels_moves_the_group_to_its_new_path() {
    let Some(tb) = support::testbed() else { return };
    support::apply_crds(&tb);
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "move").await;
    let etcd = ds::config(tb.discovery_etcd());
    let tree = Tree::connect(&etcd).await.unwrap();
    let operator = start(&client, &etcd, &ns.name);
    let groups: Api<ServiceGroup> = Api::namespaced(client.clone(), &ns.name);
    groups
        .create(&PostParams::default(), &group("web", &["blue"], 2, &[]))
        .await
        .unwrap();
    wait_published(&tree, "blue", 2).await;
    eventually(WAIT, "status records the path", || async {
        let status = groups.get("web").await.map_err(|e| e.to_string())?.status;
        match status.and_then(|s| s.etcd_path) {
            Some(path) if path.ends_with("/web/blue/") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let patch = json!({ "spec": { "labels": ["green"] } });
    groups
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_published(&tree, "green", 2).await;
    eventually(WAIT, "the old path is gone", || async {
        match tree.group_exists("web", "blue").await {
            Ok(false) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    finish(operator, &groups).await;
    ds::wipe(&tree).await;
    ns.delete(&client).await;
}
