//! What users would pick instead: a DaemonSet. On the testbed's kwok
//! cluster, N fake Nodes (kwok makes them and their pods Ready) run a
//! DaemonSet, and a change of its pod template rolls it with
//! `maxUnavailable: B`; then a PackageSet rolls over N simulated nodes
//! (`support::fleet`) with the same `maxUnavailable`, each node's switch
//! taking the time a kwok pod took to become Ready in that rolling update
//! (created → Ready, the mean over its N new pods). It prints both wall
//! times, from the change to the controller reporting it done (the
//! DaemonSet's status: observed generation, N updated, N available; the
//! PackageSet's `Available` with N ready nodes), their ratio (goal ≤ 1.0),
//! and where the time went on each side: per node (the DaemonSet's old pod
//! deleted → gone → the new pod created → scheduled → Ready), and per slot
//! of the budget (first start, switches, refills, the tail; see
//! `rollout/slots.rs`). The times come from one watch of the pods and the
//! fleet's own watch, in this process.
//!
//!     cargo bench --bench rollout_daemonset    (needs the testbed: testbed/testbed up)
//!
//! Environment: THESEUS_BENCH_NODES (2000), THESEUS_BENCH_BUDGET (100).
//! Without `--bench` (as `cargo test --all-targets` runs it) it rolls 6
//! nodes with a budget of 2 and fails unless both rollouts finish with every
//! node replaced once.

#[allow(dead_code)] // the benchmark uses a part of the tests' support
#[path = "../tests/it/support/mod.rs"]
mod support;

#[allow(dead_code)] // shared with rollout_fleet
#[path = "rollout/common.rs"]
mod common;
#[path = "rollout/slots.rs"]
mod slots;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{env_or, machine};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use support::fleet::{CONCURRENCY, Fleet, Operator, RUN_LABEL};
use support::test_logs;
use theseus::api::{PackageRepository, PackageSet};

/// What the pod watch saw of one pod, and when.
#[derive(Clone, Debug)]
struct Seen {
    node: Option<String>,
    created: Instant,
    bound: Option<Instant>,
    ready: Option<Instant>,
    deleting: Option<Instant>,
    gone: Option<Instant>,
}

type Pods = Arc<Mutex<HashMap<String, Seen>>>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(tb) = support::testbed() else {
        return;
    };
    let full = std::env::args().any(|a| a == "--bench");
    let nodes = env_or("THESEUS_BENCH_NODES", if full { 2000 } else { 6 }) as usize;
    let budget = env_or("THESEUS_BENCH_BUDGET", if full { 100 } else { 2 });
    let common::Run {
        client,
        ns,
        run,
        selector,
        cleanup: _cleanup,
    } = common::Run::start(
        &tb,
        "dsbench",
        "nodes,nodeinstalls,packagesets,packagerepositories",
    )
    .await;

    // The kwok Nodes, Ready.
    eprintln!("creating {nodes} kwok nodes …");
    let names: Vec<String> = (0..nodes).map(|i| format!("{run}-{i:04}")).collect();
    let node_api: Api<Node> = Api::all(client.clone());
    futures::stream::iter(&names)
        .for_each_concurrent(CONCURRENCY, |name| {
            let (api, run) = (node_api.clone(), run.clone());
            async move {
                let node: Node = serde_json::from_value(json!({
                    "metadata": { "name": name,
                                  "annotations": { "kwok.x-k8s.io/node": "fake" },
                                  "labels": { "type": "kwok", "kubernetes.io/hostname": name,
                                              RUN_LABEL: run } },
                    // Other tests' pods stay off these nodes.
                    "spec": { "taints": [{ "key": "theseus.dev/test-node", "effect": "NoSchedule" }] },
                    "status": { "allocatable": { "cpu": "8", "memory": "32Gi", "pods": "110" },
                                "capacity": { "cpu": "8", "memory": "32Gi", "pods": "110" } }
                }))
                .unwrap();
                api.create(&PostParams::default(), &node).await.unwrap();
            }
        })
        .await;
    wait(Duration::from_secs(600), "the kwok nodes Ready", || async {
        let list = node_api
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap();
        list.items.iter().filter(|n| node_ready(n)).count() == nodes
    })
    .await;

    // The DaemonSet, every pod Ready.
    let pods: Pods = Arc::default();
    let watch = tokio::spawn(watch_pods(
        Api::namespaced(client.clone(), &run),
        pods.clone(),
    ));
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &run);
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": { "name": "bench" },
        "spec": {
            "selector": { "matchLabels": { "app": "bench" } },
            "updateStrategy": { "type": "RollingUpdate",
                                "rollingUpdate": { "maxUnavailable": budget, "maxSurge": 0 } },
            "template": {
                "metadata": { "labels": { "app": "bench" }, "annotations": { "version": "1" } },
                "spec": {
                    "nodeSelector": { RUN_LABEL: run },
                    "tolerations": [{ "operator": "Exists" }],
                    "containers": [{ "name": "app", "image": "fake" }]
                }
            }
        }
    }))
    .unwrap();
    eprintln!("creating the DaemonSet …");
    daemonsets
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
    wait_daemonset(&daemonsets, nodes).await;

    // The rolling update.
    eprintln!("rolling the DaemonSet …");
    let asked = Instant::now();
    daemonsets
        .patch(
            "bench",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "spec": { "template": { "metadata": { "annotations": { "version": "2" } } } }
            })),
        )
        .await
        .unwrap();
    wait_daemonset(&daemonsets, nodes).await;
    let done = Instant::now();
    let ds_wall = done - asked;
    tokio::time::sleep(Duration::from_millis(500)).await;
    watch.abort();

    // Each node's replacement, from the pod watch.
    let seen: Vec<Seen> = pods.lock().unwrap().values().cloned().collect();
    let old: HashMap<String, &Seen> = seen
        .iter()
        .filter(|p| p.created < asked)
        .filter_map(|p| Some((p.node.clone()?, p)))
        .collect();
    let new: HashMap<String, &Seen> = seen
        .iter()
        .filter(|p| p.created >= asked)
        .filter_map(|p| Some((p.node.clone()?, p)))
        .collect();
    assert_eq!(old.len(), nodes, "an old pod on every node");
    assert_eq!(new.len(), nodes, "one new pod on every node");
    let mut parts = [const { Vec::new() }; 4];
    let mut spans = Vec::new();
    let mut to_ready = Vec::new();
    for (node, o) in &old {
        let n = new[node];
        let (deleting, gone) = (o.deleting.expect("deleted"), o.gone.expect("gone"));
        let (bound, ready) = (n.bound.expect("scheduled"), n.ready.expect("Ready"));
        parts[0].push(gone.saturating_duration_since(deleting));
        parts[1].push(n.created.saturating_duration_since(gone));
        parts[2].push(bound.saturating_duration_since(n.created));
        parts[3].push(ready.saturating_duration_since(bound));
        to_ready.push(ready.saturating_duration_since(n.created));
        spans.push((deleting, ready));
    }
    let ds_timeline = slots::Timeline {
        asked,
        done,
        spans,
        budget: budget as usize,
    };
    let (pod_ready, pod_p50, pod_p99, _) = slots::stats(&to_ready);
    let rate = |times: Vec<Instant>| {
        let first = times.iter().min().copied().unwrap_or(asked);
        let last = times.iter().max().copied().unwrap_or(asked);
        times.len() as f64 / (last - first).as_secs_f64().max(1e-3)
    };
    let deletions = rate(old.values().filter_map(|p| p.deleting).collect());
    let creations = rate(new.values().map(|p| p.created).collect());

    // The PackageSet over as many simulated nodes, each switch taking a
    // kwok pod's time to Ready.
    eprintln!(
        "rolling a PackageSet over {nodes} simulated nodes, switch {:.3} s …",
        pod_ready.as_secs_f64()
    );
    let _repo = common::repository(&client, &run).await;
    let fleet = Fleet::start(&client, &run, &run, nodes, pod_ready).await;
    let logs = test_logs(&run);
    let operator = Operator::start(&tb, &run, &run, "bench", &logs);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ps_asked, ps_done) = common::roll(&client, &run, budget, nodes).await;
    let ps_wall = ps_done - ps_asked;
    let switches = fleet.log.lock().unwrap().switches.clone();
    assert_eq!(switches.len(), nodes, "every node switched once");
    let ps_timeline = slots::Timeline {
        asked: ps_asked,
        done: ps_done,
        spans: switches.iter().map(|s| (s.began, s.ended)).collect(),
        budget: budget as usize,
    };

    let secs = |d: Duration| d.as_secs_f64();
    let mean = |v: &[Duration]| secs(slots::stats(v).0);
    println!("DaemonSet vs PackageSet over {nodes} nodes, maxUnavailable {budget}");
    println!("  machine: {}", machine());
    println!(
        "  a kwok pod's time to Ready (created → Ready, the update's {nodes} new pods): {:.3} s mean (p50 {:.3}, p99 {:.3})",
        secs(pod_ready),
        secs(pod_p50),
        secs(pod_p99)
    );
    println!(
        "  DaemonSet rolling update (template changed → status: all updated and available) {:>8.2} s",
        secs(ds_wall)
    );
    println!(
        "    a node's replacement, mean: old pod deleted → gone {:.3} s, gone → new pod created {:.3} s,",
        mean(&parts[0]),
        mean(&parts[1])
    );
    println!(
        "      created → scheduled {:.3} s, scheduled → Ready {:.3} s",
        mean(&parts[2]),
        mean(&parts[3])
    );
    println!(
        "    pace: {deletions:.1} deletions/s, {creations:.1} creations/s (the controller-manager's client: 20 requests/s unless --kube-api-qps says otherwise)"
    );
    print!("{}", ds_timeline.describe());
    println!(
        "  PackageSet rollout, each switch {:.3} s (the kwok pod's time to Ready)        {:>8.2} s",
        secs(pod_ready),
        secs(ps_wall)
    );
    print!("{}", ps_timeline.describe());
    println!(
        "  ratio (PackageSet / DaemonSet)       {:>8.3}   (goal <= 1.0)",
        secs(ps_wall) / secs(ds_wall)
    );

    drop(operator);
    fleet.remove().await;
    let _ = Api::<PackageSet>::all(client.clone())
        .delete(&run, &DeleteParams::default())
        .await;
    let _ = Api::<PackageRepository>::all(client.clone())
        .delete(&run, &DeleteParams::default())
        .await;
    let _ = daemonsets.delete("bench", &DeleteParams::default()).await;
    futures::stream::iter(&names)
        .for_each_concurrent(CONCURRENCY, |name| {
            let api = node_api.clone();
            async move {
                let _ = api.delete(name, &DeleteParams::default()).await;
            }
        })
        .await;
    ns.delete(&client).await;
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Records when each pod of the DaemonSet was first seen, bound to a node,
/// Ready, being deleted, and gone.
async fn watch_pods(api: Api<Pod>, pods: Pods) {
    let config = watcher::Config::default().labels("app=bench");
    let events = watcher(api, config).default_backoff();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let now = Instant::now();
        let (pod, gone) = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => (pod, false),
            Ok(watcher::Event::Delete(pod)) => (pod, true),
            _ => continue,
        };
        let mut pods = pods.lock().unwrap();
        let seen = pods.entry(pod.uid().unwrap_or_default()).or_insert(Seen {
            node: None,
            created: now,
            bound: None,
            ready: None,
            deleting: None,
            gone: None,
        });
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        if seen.bound.is_none() && node.is_some() {
            seen.node = node;
            seen.bound = Some(now);
        }
        if seen.ready.is_none() && pod_ready(&pod) {
            seen.ready = Some(now);
        }
        if seen.deleting.is_none() && (pod.metadata.deletion_timestamp.is_some() || gone) {
            seen.deleting = Some(now);
        }
        if gone {
            seen.gone = Some(now);
        }
    }
}

/// Waits until the DaemonSet's status says its current template runs and is
/// available on all `n` nodes (as `kubectl rollout status` does), polling
/// every 100 ms.
async fn wait_daemonset(api: &Api<DaemonSet>, n: usize) {
    let n = n as i32;
    wait(
        Duration::from_secs(3600),
        "the DaemonSet rolled out",
        || async {
            let ds = api.get("bench").await.unwrap();
            let status = ds.status.unwrap_or_default();
            status.observed_generation >= ds.metadata.generation
                && status.desired_number_scheduled == n
                && status.updated_number_scheduled == Some(n)
                && status.number_available == Some(n)
        },
    )
    .await;
}

async fn wait<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
