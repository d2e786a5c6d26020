//! NodePools on EC2 end to end: a real `theseus operator` process against the
//! testbed's API server and moto, behind a proxy that records (and on demand
//! throttles) every EC2 call. Each test has its own run label, operator and
//! cluster name, so tests never see each other's instances.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use theseus::api::NodeInstall;

use crate::support::ec2::{self, Ec2Rig as Rig};
use crate::support::fleet::{Operator, RUN_LABEL};
use crate::support::{self, eventually};

fn assert_owner_tags(run: &str, instances: &BTreeMap<String, BTreeMap<String, String>>) {
    for (id, tags) in instances {
        assert_eq!(
            tags.get("theseus.dev/nodepool").map(String::as_str),
            Some(run),
            "{id}: {tags:?}"
        );
        assert_eq!(
            tags.get("theseus.dev/cluster").map(String::as_str),
            Some(run),
            "{id}: {tags:?}"
        );
        assert!(tags.contains_key("theseus.dev/launch"), "{id}: {tags:?}");
        assert_eq!(
            tags.get("team").map(String::as_str),
            Some("theseus-tests"),
            "{id}: {tags:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_takes_an_ec2_pool_through_0_5_2_0() {
    let Some(rig) = Rig::new("np-scale").await else {
        return;
    };
    let _operator = rig.operator("a", &[]);
    rig.create_pool(0).await;
    rig.converged(0, Duration::from_secs(60)).await;
    for n in [5, 2, 0] {
        rig.scale(n);
        let pool = rig.converged(n as usize, Duration::from_secs(90)).await;
        assert_owner_tags(&rig.run, &rig.ours().await);
        let st = pool.status.unwrap();
        assert_eq!(
            st.selector.as_deref(),
            Some(format!("theseus.dev/nodepool={}", rig.run).as_str())
        );
        eprintln!(
            "at {n}: nextLaunch {}, instances {:?}",
            st.next_launch,
            st.instances.iter().map(|i| &i.id).collect::<Vec<_>>()
        );
    }
    let scale = rig.pools().get_scale(&rig.run).await.unwrap();
    // The scale subresource reads through to spec and status (0 is omitted).
    assert_eq!(scale.spec.and_then(|s| s.replicas).unwrap_or(0), 0);
    assert_eq!(scale.status.map(|s| s.replicas), Some(0));
    rig.assert_describes_filtered();
    assert_eq!(
        rig.proxy.calls("RunInstances"),
        1,
        "one batch launched the five"
    );
    support::pools::delete_and_wait(&rig.pools(), &rig.run).await;
    rig.ns.delete(&rig.client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_run_instances_and_the_record_never_launches_twice() {
    let Some(rig) = Rig::new("np-crash").await else {
        return;
    };
    let mut operator = rig.operator(
        "a",
        &[("THESEUS_FAILPOINT", "nodepool-after-run-instances")],
    );
    rig.create_pool(0).await;
    let mut crashes = 0;
    for n in [2, 4, 7] {
        rig.scale(n);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match operator.try_wait() {
                Some(status) => {
                    assert_eq!(
                        status.code(),
                        Some(86),
                        "the operator stops at the failpoint"
                    );
                    crashes += 1;
                    operator.restart();
                    break;
                }
                None if Instant::now() > deadline => {
                    panic!("the failpoint was never reached scaling to {n}")
                }
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        // The restarted operator adopts the launch instead of repeating it.
        rig.converged(n as usize, Duration::from_secs(60)).await;
        assert!(
            operator.try_wait().is_none(),
            "no second launch, so no second crash"
        );
    }
    assert_eq!(crashes, 3);
    let ours = rig.ours().await;
    assert_eq!(ours.len(), 7);
    let mut per_launch: BTreeMap<String, usize> = BTreeMap::new();
    for tags in ours.values() {
        *per_launch
            .entry(tags["theseus.dev/launch"].clone())
            .or_default() += 1;
    }
    assert_eq!(
        per_launch.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 3],
        "{per_launch:?}"
    );
    assert_eq!(
        rig.proxy.calls("RunInstances"),
        3,
        "one RunInstances per scale-up, none repeated"
    );
    rig.assert_describes_filtered();
    rig.scale(0);
    rig.converged(0, Duration::from_secs(60)).await;
    support::pools::delete_and_wait(&rig.pools(), &rig.run).await;
    rig.ns.delete(&rig.client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_the_pool_does_not_own_or_did_not_record_are_never_terminated() {
    let Some(rig) = Rig::new("np-foreign").await else {
        return;
    };
    let untagged = ec2::plant(&rig.ec2, &rig.image, &[("team", "someone-else")]).await;
    let other_cluster = ec2::plant(
        &rig.ec2,
        &rig.image,
        &[
            ("theseus.dev/nodepool", &rig.run),
            ("theseus.dev/cluster", "another-cluster"),
        ],
    )
    .await;
    let young_ours = ec2::plant(
        &rig.ec2,
        &rig.image,
        &[
            ("theseus.dev/nodepool", &rig.run),
            ("theseus.dev/cluster", &rig.run),
        ],
    )
    .await;
    let planted = [untagged, other_cluster, young_ours.clone()];
    let _operator = rig.operator("a", &[]);
    rig.create_pool(3).await;
    // The young unrecorded instance is neither adopted nor counted.
    eventually(
        Duration::from_secs(60),
        "three recorded instances",
        || async {
            let pool = rig.pools().get(&rig.run).await.map_err(|e| e.to_string())?;
            let st = pool.status.unwrap_or_default();
            let ids: Vec<&String> = st.instances.iter().map(|i| &i.id).collect();
            (ids.len() == 3 && !ids.contains(&&young_ours))
                .then_some(())
                .ok_or(format!("{ids:?}"))
        },
    )
    .await;
    rig.scale(0);
    eventually(
        Duration::from_secs(60),
        "the pool's own instances terminated",
        || async {
            let live: Vec<String> = rig.ours().await.into_keys().collect();
            (live == vec![young_ours.clone()])
                .then_some(())
                .ok_or(format!("{live:?}"))
        },
    )
    .await;
    support::pools::delete_and_wait(&rig.pools(), &rig.run).await;
    for id in &planted {
        assert_eq!(
            ec2::state(&rig.ec2, id).await,
            "running",
            "{id} was touched"
        );
    }
    rig.assert_describes_filtered();
    ec2::terminate(&rig.ec2, &planted).await;
    rig.ns.delete(&rig.client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_calls_are_retried_with_backoff_and_the_pool_converges_without_duplicates() {
    let Some(rig) = Rig::new("np-throttle").await else {
        return;
    };
    let _operator = rig.operator("a", &[]);
    rig.create_pool(0).await;
    rig.converged(0, Duration::from_secs(60)).await;
    rig.proxy.log.lock().unwrap().throttle_until = Some(Instant::now() + Duration::from_secs(4));
    rig.scale(4);
    rig.converged(4, Duration::from_secs(90)).await;
    let (throttled, run_forwarded) = {
        let log = rig.proxy.log.lock().unwrap();
        (
            log.throttled,
            log.forwarded.get("RunInstances").copied().unwrap_or(0),
        )
    };
    assert!(throttled > 0, "the proxy throttled something");
    assert_eq!(run_forwarded, 1, "exactly one RunInstances reached EC2");
    assert_eq!(rig.ours().await.len(), 4);
    // Bounded: the operator gave up on no call for good, and never hammered.
    let attempts: usize = rig.proxy.log.lock().unwrap().calls.values().sum();
    assert!(
        attempts < 200,
        "{attempts} attempts in a 4-second throttle window"
    );
    rig.assert_describes_filtered();
    rig.scale(0);
    rig.converged(0, Duration::from_secs(60)).await;
    support::pools::delete_and_wait(&rig.pools(), &rig.run).await;
    rig.ns.delete(&rig.client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ec2_endpoint_that_never_answers_degrades_the_pool_instead_of_wedging_it() {
    let Some(rig) = Rig::new("np-silent").await else {
        return;
    };
    let _operator = rig.operator("a", &[]);
    rig.create_pool_with(1, json!({ "timeoutSeconds": 3 }))
        .await;
    rig.converged(1, Duration::from_secs(90)).await;

    rig.proxy.log.lock().unwrap().silent = true;
    let start = Instant::now();
    rig.scale(2);
    let message = eventually(
        Duration::from_secs(60),
        "Degraded=True, reason ProviderTimeout",
        || async {
            match rig.condition("Degraded").await {
                Some((s, r, m)) if s == "True" && r == "ProviderTimeout" => Ok(m),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let took = start.elapsed();
    assert!(message.contains(&rig.proxy.url), "{message}");
    assert!(message.contains("within 3s"), "{message}");
    assert!(rig.proxy.log.lock().unwrap().unanswered > 0);

    // Answers again: the pool converges and is no longer degraded.
    rig.proxy.log.lock().unwrap().silent = false;
    rig.converged(2, Duration::from_secs(90)).await;
    let healed = eventually(Duration::from_secs(30), "Degraded=False", || async {
        match rig.condition("Degraded").await {
            Some((s, _, _)) if s == "False" => Ok(start.elapsed()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eprintln!(
        "a silent endpoint with a 3 s call deadline: Degraded (ProviderTimeout) {took:?} after the scale; converged and healthy {healed:?} after it"
    );
    rig.scale(0);
    rig.converged(0, Duration::from_secs(60)).await;
    support::pools::delete_and_wait(&rig.pools(), &rig.run).await;
    rig.ns.delete(&rig.client).await;
}

/// `theseus_reconciles_total{controller="nodepool"}` of `operator`.
async fn pool_reconciles(operator: &Operator) -> u64 {
    let text = reqwest::get(format!("{}/metrics", operator.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(r#"theseus_reconciles_total{controller="nodepool"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Writes `status.heartbeat` (and, first, the instance id) of NodeInstall `name`.
async fn beat(api: &Api<NodeInstall>, name: &str, instance: &str) {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now());
    let patch = json!({ "status": { "instanceId": instance, "heartbeat": now } });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_do_not_wake_the_pool_but_a_removal_request_does() {
    let Some(rig) = Rig::new("np-beats").await else {
        return;
    };
    let operator = rig.operator("a", &[]);
    rig.create_pool(2).await;
    let pool = rig.converged(2, Duration::from_secs(90)).await;
    let api: Api<NodeInstall> = Api::all(rig.client.clone());
    let mut nodes = Vec::new();
    for (k, i) in pool.status.unwrap().instances.iter().enumerate() {
        let name = format!("{}-n{k}", rig.run);
        let ni: NodeInstall = serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "NodeInstall",
            "metadata": { "name": name, "labels": {
                RUN_LABEL: rig.run, "theseus.dev/nodepool": rig.run } },
            "spec": {}
        }))
        .unwrap();
        api.create(&PostParams::default(), &ni).await.unwrap();
        beat(&api, &name, &i.id).await;
        nodes.push((name, i.id.clone()));
    }
    eventually(Duration::from_secs(60), "2 ready replicas", || async {
        let st = rig.pools().get(&rig.run).await.unwrap().status.unwrap();
        (st.ready_replicas == 2)
            .then_some(())
            .ok_or(format!("{}", st.ready_replicas))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // our own writes settle

    let (reconciles, describes) = (
        pool_reconciles(&operator).await,
        rig.proxy.calls("DescribeInstances"),
    );
    let start = Instant::now();
    let mut beats = 0;
    while start.elapsed() < Duration::from_secs(12) {
        for (name, id) in &nodes {
            beat(&api, name, id).await;
            beats += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let woken = pool_reconciles(&operator).await - reconciles;
    let listed = rig.proxy.calls("DescribeInstances") - describes;
    eprintln!(
        "{beats} heartbeats in 12 s: {woken} NodePool reconcile(s), {listed} DescribeInstances"
    );
    assert!(woken <= 1, "{beats} heartbeats woke the pool {woken} times");
    assert!(listed <= 1, "{beats} heartbeats caused {listed} listings");

    // A change the planner reads does wake it (so the count above can move).
    let ask = json!({ "metadata": { "annotations": { "theseus.dev/remove": "true" } } });
    api.patch(&nodes[0].0, &PatchParams::default(), &Patch::Merge(&ask))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "a reconcile for the removal request",
        || async {
            let n = pool_reconciles(&operator).await;
            (n > reconciles + woken).then_some(()).ok_or(format!("{n}"))
        },
    )
    .await;

    rig.scale(0);
    rig.converged(0, Duration::from_secs(60)).await;
    for (name, _) in &nodes {
        let _ = api.delete(name, &Default::default()).await;
    }
    support::pools::delete_and_wait(&rig.pools(), &rig.run).await;
    rig.ns.delete(&rig.client).await;
}
