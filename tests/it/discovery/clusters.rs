//! A Cluster's services in the discovery tree, end to end: a real operator
//! publishing into the testbed's discovery etcd (under a prefix of the
//! test's own), the shop cluster of [`crate::support::shop`] on real local
//! agents, and a real `Follower` per service, as an application would use.
//!
//! Shown here: each service of the applied layout is the group
//! `SERVICE/shop` whose containers are the layout nodes running it, at
//! their agents' address (127.0.0.1, from the Local provider's
//! `--address`), named after the layout node, with the NodeInstall as
//! `node_name` and the cluster's config as the group's; heartbeats write
//! nothing; a scale up adds the new api nodes once its plan ends; deleting
//! the cluster removes every key of its groups.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::GetOptions;
use kube::ResourceExt;
use theseus::api::NODE_LABEL;
use theseus::discovery::{ContainerInfo, EtcdConfig, Follower, GroupConfig, Tree};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::support::discovery as ds;
use crate::support::shop::{Shop, assert_succeeded};
use crate::support::{self, eventually};

const WAIT: Duration = Duration::from_secs(60);

/// Containers by name, as a follower of one group sees them.
type View = BTreeMap<String, ContainerInfo>;

/// Follows `SERVICE/shop` in a task of its own; the receiver holds the
/// follower's view after every event.
fn follow(tree: &Tree, service: &str) -> (watch::Receiver<View>, JoinHandle<()>) {
    let mut follower = Follower::labels(tree.clone(), service, &["shop"]).expect("a valid group");
    let (tell, view) = watch::channel(View::new());
    let task = tokio::spawn(async move {
        loop {
            let _ = follower.next().await;
            let containers = follower
                .containers()
                .into_iter()
                .map(|((_, container), info)| (container, info))
                .collect();
            tell.send_replace(containers);
        }
    });
    (view, task)
}

/// The layout nodes running each service, by the cluster's applied layout.
async fn nodes_by_service(shop: &Shop) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (node, services) in shop.layout().await {
        for service in services {
            out.entry(service).or_default().insert(node.clone());
        }
    }
    out
}

/// The NodeInstall bound to each layout node.
async fn installs_by_node(shop: &Shop) -> BTreeMap<String, String> {
    shop.installs()
        .await
        .iter()
        .filter_map(|ni| Some((ni.labels().get(NODE_LABEL)?.clone(), ni.name_any())))
        .collect()
}

/// Waits until every followed group holds exactly the layout's nodes of
/// its service, each with the right entry.
async fn wait_published(shop: &Shop, views: &BTreeMap<String, watch::Receiver<View>>) {
    let want = nodes_by_service(shop).await;
    let installs = installs_by_node(shop).await;
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        views.keys().collect::<Vec<_>>(),
        "the followed services are the layout's"
    );
    eventually(WAIT, "the layout's nodes to be followed", || {
        let (want, installs) = (&want, &installs);
        async move {
            for (service, view) in views {
                let seen = view.borrow().clone();
                let names: BTreeSet<String> = seen.keys().cloned().collect();
                if names != want[service] {
                    return Err(format!("{service}: {names:?}, want {:?}", want[service]));
                }
                for (node, info) in &seen {
                    let expected = ContainerInfo {
                        instance_host: "127.0.0.1".into(),
                        instance_port: None,
                        port_mappings: Vec::new(),
                        instance_name: node.clone(),
                        node_name: installs.get(node).cloned(),
                    };
                    if *info != expected {
                        return Err(format!("{service}/{node}: {info:?}, want {expected:?}"));
                    }
                }
            }
            Ok(())
        }
    })
    .await;
}

/// Every key under the test's prefix, with its modification revision.
async fn keys(tree: &Tree) -> BTreeMap<String, i64> {
    let root = tree.layout().root();
    let mut client = tree.client();
    let response = client
        .get(root.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("etcd answers");
    response
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_owned(), kv.mod_revision()))
        .collect()
}

async fn start(etcd: &EtcdConfig) -> Option<Shop> {
    let endpoint = etcd.endpoints[0].clone();
    let args = [
        "--discovery-etcd",
        endpoint.as_str(),
        "--discovery-prefix",
        etcd.prefix.as_str(),
    ];
    Shop::start_with("clusters", &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusters_services_are_groups_of_its_ready_nodes_until_it_is_deleted() {
    let Some(tb) = support::testbed() else { return };
    let etcd = ds::config(tb.discovery_etcd());
    let Some(shop) = start(&etcd).await else {
        return;
    };
    let tree = Tree::connect(&etcd).await.expect("the discovery etcd");
    let services = ["store", "api", "cache"].map(|s| shop.service(s));
    let mut views = BTreeMap::new();
    let mut tasks = Vec::new();
    for service in &services {
        let (view, task) = follow(&tree, service);
        views.insert(service.clone(), view);
        tasks.push(task);
    }
    shop.apply("");
    shop.wait("Available", "240s");

    // Every node reports the address its pool gave it.
    for ni in shop.installs().await {
        let address = ni.status.and_then(|s| s.address);
        assert_eq!(
            address.as_deref(),
            Some("127.0.0.1"),
            "{}",
            ni.metadata.name.unwrap()
        );
    }
    wait_published(&shop, &views).await;
    let config = GroupConfig::from([("hooklog".into(), shop.hooklog.display().to_string())]);
    let store_node = views[&services[0]].borrow().keys().next().unwrap().clone();
    for service in &services {
        assert_eq!(
            tree.group_config(service, "shop").await.unwrap().as_ref(),
            Some(&config),
            "{service}: the cluster's spec.config"
        );
    }
    let info = format!(
        "{}/{}/shop/containers/{store_node}/info",
        etcd.prefix, services[0]
    );
    let before = keys(&tree).await;
    assert!(before.contains_key(&info), "{info} in {:?}", before.keys());
    assert_eq!(
        before.len(),
        3 + 3,
        "a config and one container per service"
    );

    // Heartbeats (every 5 s) change nothing the tree shows: nothing written.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(keys(&tree).await, before, "keys rewritten without a change");

    // Scaled to 5: once the plan ends, the new api nodes are containers.
    let create = shop.plan_name().await;
    shop.cli(&["scale", "shop", "5"]);
    let up = shop
        .ended_plan(create.as_deref(), Duration::from_secs(240))
        .await;
    assert_succeeded(&up);
    wait_published(&shop, &views).await;
    let api = views[&services[1]].borrow().len();
    assert!(api > 1, "the new nodes run the api ({api} containers)");

    // Deleted: every key of its groups goes (config keys are not leased:
    // only their removal takes them away).
    for task in tasks {
        task.abort();
    }
    shop.delete().await;
    eventually(
        Duration::from_secs(10),
        "the cluster's keys to go",
        || async {
            let left = keys(&tree).await;
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{:?}", left.keys()))
            }
        },
    )
    .await;
    ds::wipe(&tree).await;
}
