//! Draining before removal, against the testbed: local-provider pools whose
//! nodes have kwok Nodes carrying pods held by a finalizer, so that an
//! evicted pod stays terminating until the test lets it go. A drain ends
//! when the evicted pods are gone, a deleted pool drains like a scale-down,
//! and a pool that grows again cancels its drains and uncordons only the
//! nodes it cordoned.

use std::time::{Duration, Instant};

use theseus::api::NodePool;

use crate::support::eventually;
use crate::support::pools::{self, LocalRig, agent_pids, fake_node};

/// The pool's recorded instances as (id, state).
async fn instances(rig: &LocalRig) -> Result<Vec<(String, String)>, String> {
    let pool: NodePool = rig.pools().get(&rig.run).await.map_err(|e| e.to_string())?;
    Ok(pool
        .status
        .unwrap_or_default()
        .instances
        .into_iter()
        .map(|i| (i.id, i.state.unwrap_or_default()))
        .collect())
}

/// Waits until pod `name` (with `uid`) has been evicted: it is terminating.
async fn until_evicted(rig: &LocalRig, name: &str, uid: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("{name} evicted"),
        || async {
            pools::evicted(&rig.client, &rig.ns.name, name, uid)
                .await?
                .then_some(())
                .ok_or("not yet".to_string())
        },
    )
    .await;
}

/// Asserts for `period` that the pool keeps `n` instances and its agents.
async fn holds_for(rig: &LocalRig, period: Duration, n: usize, what: &str) {
    let start = Instant::now();
    while start.elapsed() < period {
        let kept = instances(rig).await.unwrap();
        assert_eq!(
            kept.len(),
            n,
            "{what}: after {:?}: {kept:?}",
            start.elapsed()
        );
        assert_eq!(
            agent_pids(rig.state.path(), &rig.run).len(),
            n,
            "{what}: an agent was stopped after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the pool has no instance and no agent; returns how long.
async fn until_removed(rig: &LocalRig) -> Duration {
    let start = Instant::now();
    eventually(Duration::from_secs(60), "the instances removed", || async {
        let left = instances(rig).await.unwrap_or_default();
        let agents = agent_pids(rig.state.path(), &rig.run).len();
        (left.is_empty() && agents == 0)
            .then_some(())
            .ok_or(format!("{left:?}, {agents} agents"))
    })
    .await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_instance_lives_until_its_evicted_pods_are_gone() {
    let Some(rig) = LocalRig::new("np-grace").await else {
        return;
    };
    let node = format!("{}-0", rig.run);
    let elsewhere = format!("{}-elsewhere", rig.run);
    fake_node(&rig.client, &node).await;
    fake_node(&rig.client, &elsewhere).await;
    let uid = pools::held_pod(&rig.client, &rig.ns.name, "held", &node).await;
    let _operator = rig.operator();
    rig.apply_pool_with(1, 300, "Wait").await;
    rig.joined(1).await;

    rig.scale(0);
    until_evicted(&rig, "held", &uid).await;
    assert!(pools::cordoned(&rig.client, &node).await);
    holds_for(
        &rig,
        Duration::from_secs(8),
        1,
        "while the evicted pod terminates",
    )
    .await;

    // The pod goes; one of the same name (a new uid) appears on another
    // node at once: it is not the evicted pod and holds nothing up.
    pools::release(&rig.client, &rig.ns.name, "held").await;
    let released = Instant::now();
    eventually(Duration::from_secs(30), "the held pod gone", || async {
        let gone = !pools::evicted(&rig.client, &rig.ns.name, "held", &uid).await?;
        gone.then_some(()).ok_or("still there".to_string())
    })
    .await;
    let twin = pools::held_pod(&rig.client, &rig.ns.name, "held", &elsewhere).await;
    assert_ne!(twin, uid);
    until_removed(&rig).await;
    eprintln!(
        "the instance was terminated {:?} after its evicted pod was let go (held 8 s+ before)",
        released.elapsed()
    );

    pools::release(&rig.client, &rig.ns.name, "held").await;
    pools::delete_and_wait(&rig.pools(), &rig.run).await;
    pools::delete_nodes(&rig.client, &[node, elsewhere]).await;
    rig.ns.delete(&rig.client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pool_drains_its_nodes_like_a_scale_down() {
    let Some(rig) = LocalRig::new("np-delete").await else {
        return;
    };
    let node = format!("{}-0", rig.run);
    fake_node(&rig.client, &node).await;
    let uid = pools::held_pod(&rig.client, &rig.ns.name, "held", &node).await;
    let _operator = rig.operator();
    rig.apply_pool_with(1, 300, "Wait").await;
    rig.joined(1).await;

    let _ = rig
        .pools()
        .delete(&rig.run, &kube::api::DeleteParams::default())
        .await;
    until_evicted(&rig, "held", &uid).await;
    assert!(pools::cordoned(&rig.client, &node).await);
    holds_for(
        &rig,
        Duration::from_secs(6),
        1,
        "the deleted pool waits for its drain",
    )
    .await;
    assert!(rig.pools().get_opt(&rig.run).await.unwrap().is_some());

    pools::release(&rig.client, &rig.ns.name, "held").await;
    let released = Instant::now();
    pools::delete_and_wait(&rig.pools(), &rig.run).await;
    eprintln!(
        "the deleted pool was gone {:?} after its drain could finish",
        released.elapsed()
    );
    assert!(agent_pids(rig.state.path(), &rig.run).is_empty());
    assert!(rig.node_installs().await.is_empty());
    pools::delete_nodes(&rig.client, &[node]).await;
    rig.ns.delete(&rig.client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_during_a_drain_cancels_it_and_uncordons_only_what_the_pool_cordoned() {
    let Some(rig) = LocalRig::new("np-cancel").await else {
        return;
    };
    let ours = format!("{}-0", rig.run);
    let theirs = format!("{}-1", rig.run);
    fake_node(&rig.client, &ours).await;
    fake_node(&rig.client, &theirs).await;
    // Someone else cordoned this one before any drain.
    rig.tb.kubectl_ok(&["cordon", &theirs]);
    let uids = [
        pools::held_pod(&rig.client, &rig.ns.name, "held-0", &ours).await,
        pools::held_pod(&rig.client, &rig.ns.name, "held-1", &theirs).await,
    ];
    let _operator = rig.operator();
    rig.apply_pool_with(2, 300, "Wait").await;
    rig.joined(2).await;
    let before = instances(&rig).await.unwrap();

    rig.scale(0);
    until_evicted(&rig, "held-0", &uids[0]).await;
    until_evicted(&rig, "held-1", &uids[1]).await;
    assert!(pools::cordoned(&rig.client, &ours).await);

    rig.scale(2);
    let pool = rig.joined(2).await;
    let after: Vec<String> = pool
        .status
        .unwrap()
        .instances
        .into_iter()
        .map(|i| i.id)
        .collect();
    let ids: Vec<String> = before.into_iter().map(|(id, _)| id).collect();
    assert_eq!(after, ids, "the same instances stay; none launched");
    eventually(Duration::from_secs(30), "our cordon lifted", || async {
        (!pools::cordoned(&rig.client, &ours).await)
            .then_some(())
            .ok_or("still cordoned".to_string())
    })
    .await;
    assert!(
        pools::cordoned(&rig.client, &theirs).await,
        "a node cordoned by someone else stays cordoned"
    );

    for name in ["held-0", "held-1"] {
        pools::release(&rig.client, &rig.ns.name, name).await;
    }
    rig.scale(0);
    until_removed(&rig).await;
    pools::delete_and_wait(&rig.pools(), &rig.run).await;
    pools::delete_nodes(&rig.client, &[ours, theirs]).await;
    rig.ns.delete(&rig.client).await;
}
