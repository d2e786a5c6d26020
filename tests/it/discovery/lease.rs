//! The discovery lease under a slow etcd: the publisher reaches the
//! testbed's discovery etcd through a proxy that holds back every answer
//! for longer than the lease TTL, while the test watches the published
//! entries directly. Renewals run on their own beat, so no entry expires.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use theseus::api::ServiceGroup;
use theseus::discovery::{Context, Tree, run};

use crate::support::discovery as ds;
use crate::support::discovery::delay::DelayProxy;
use crate::support::{self, TestNamespace, eventually};

/// The lease TTL, in seconds.
const TTL: u64 = 4;
/// How long etcd's answers are held back: more than the TTL.
const HELD: Duration = Duration::from_secs(2 * TTL);
/// How long they are held back for.
const WINDOW: Duration = Duration::from_secs(4 * TTL);

/// Whether the pod `name` exists and is Ready.
async fn pod_ready(pods: &Api<Pod>, name: &str) -> bool {
    pods.get_opt(name)
        .await
        .unwrap()
        .and_then(|p| p.status)
        .and_then(|s| s.conditions)
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The published containers of `web/slow`, by name, with their lease.
async fn published(tree: &Tree) -> Result<BTreeMap<String, i64>, String> {
    let prefix = format!("{}containers/", tree.layout().group("web", "slow"));
    let range = tree.range(&prefix).await.map_err(|e| e.to_string())?;
    Ok(range
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.lease))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_held_back_longer_than_the_lease_ttl_expire_no_published_entry() {
    let Some(tb) = support::testbed() else { return };
    support::apply_crds(&tb);
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "slow-etcd").await;
    let proxy = DelayProxy::start(tb.discovery_etcd()).await;
    let direct = ds::config(tb.discovery_etcd()).with_lease_ttl(TTL as i64);
    let mut slow = direct.clone();
    slow.endpoints = vec![proxy.url.clone()];
    let observer = Tree::connect(&direct).await.unwrap();

    let mut ctx = Context::new(client.clone(), slow);
    ctx.namespace = Some(ns.name.clone());
    // A full publish every 2 s: one is always in flight while answers lag.
    ctx.resync_interval = Duration::from_secs(2);
    let operator = tokio::spawn(run(ctx));
    let groups: Api<ServiceGroup> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let sg: ServiceGroup = serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "ServiceGroup",
        "metadata": { "name": "web" },
        "spec": { "service": "web", "labels": ["slow"], "replicas": 3,
                  "template": { "image": "example/web:1",
                                "ports": [{ "name": "http", "containerPort": 8080 }] } }
    }))
    .unwrap();
    groups.create(&PostParams::default(), &sg).await.unwrap();
    let before = eventually(
        Duration::from_secs(90),
        "3 containers published",
        || async {
            let found = published(&observer).await?;
            (found.len() == 3)
                .then_some(found.clone())
                .ok_or(format!("{found:?}"))
        },
    )
    .await;

    // Hold answers back for longer than the TTL, for a while; then let
    // them through and watch until the held-back ones have drained.
    proxy.set_delay(HELD);
    let start = Instant::now();
    let mut lifted = false;
    let mut samples = 0;
    while start.elapsed() < WINDOW + HELD + Duration::from_secs(TTL) {
        if !lifted && start.elapsed() >= WINDOW {
            proxy.set_delay(Duration::ZERO);
            lifted = true;
        }
        let now = published(&observer).await.unwrap();
        samples += 1;
        // An entry may go only because its pod stopped being Ready (on a
        // loaded machine the node controller can mark kwok's pods NotReady
        // when their node's heartbeat lags): never because its lease
        // expired. Every entry left keeps the same lease.
        for (key, lease) in &before {
            match now.get(key) {
                Some(now_lease) => assert_eq!(
                    now_lease,
                    lease,
                    "after {:?} of answers held back {HELD:?}, {key} moved to another lease",
                    start.elapsed()
                ),
                None => {
                    let pod = key.rsplit('/').nth(1).unwrap_or_default();
                    assert!(
                        !pod_ready(&pods, pod).await,
                        "after {:?} of answers held back {HELD:?} (lease TTL {TTL}s), {key} vanished though its pod is Ready",
                        start.elapsed()
                    );
                }
            }
        }
        assert!(
            now.keys().all(|k| before.contains_key(k)),
            "an entry appeared: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "answers held back {HELD:?} for {WINDOW:?} with a {TTL}s lease: no entry of a Ready pod left its lease through {samples} samples"
    );

    ds::delete_groups(&groups).await;
    operator.abort();
    ds::wipe(&observer).await;
    ns.delete(&client).await;
}
