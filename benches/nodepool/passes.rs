//! NodePool controller passes for the benchmarks: list, plan, terminate,
//! launch, record, the way `src/nodepool/controller.rs` runs them, without
//! the Kubernetes side (no NodeInstalls, no drains; the status is kept in
//! memory).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use theseus::api::{DrainTimeoutPolicy, ScaleDownOrder};
use theseus::nodepool::plan::{self, Listed, PoolView, Recorded, State};
use theseus::nodepool::provider::Provider;

/// What the pool's status would hold.
#[derive(Default)]
pub struct Record {
    /// `status.instances`.
    pub instances: Vec<Recorded>,
    /// `status.nextLaunch`.
    pub next_launch: i64,
}

fn view(replicas: usize, next_launch: i64) -> PoolView {
    PoolView {
        replicas,
        order: ScaleDownOrder::NewestFirst,
        drain_timeout: Duration::from_secs(300),
        drain_policy: DrainTimeoutPolicy::Wait,
        join_timeout: Duration::from_secs(600),
        grace: Duration::from_secs(600),
        stale_after: Duration::from_secs(60),
        next_launch,
    }
}

/// One controller pass; returns whether it did anything.
pub async fn pass(provider: &dyn Provider, record: &mut Record, replicas: usize) -> bool {
    let listed = provider.list().await.expect("list");
    let listed_view: Vec<Listed> = listed
        .iter()
        .map(|i| Listed {
            id: i.id.clone(),
            launched: i.launched,
            launch_seq: i.launch_seq(),
        })
        .collect();
    let pool = view(replicas, record.next_launch);
    let decided = plan::plan(&plan::Input {
        pool: &pool,
        recorded: &record.instances,
        listed: &listed_view,
        nodes: &[],
        drains: &BTreeMap::new(),
        previous: &[],
        first_seen: &BTreeMap::new(),
        now: Timestamp::now(),
    });
    let mut instances = decided.instances.clone();
    let mut next_launch = decided.next_launch;
    let victims: Vec<_> = listed
        .iter()
        .filter(|i| decided.terminate.contains(&i.id))
        .cloned()
        .collect();
    if !victims.is_empty() {
        provider.terminate(&victims).await.expect("terminate");
        instances.retain(|i| i.state != State::Terminating);
    }
    if let Some(l) = &decided.launch {
        let launched = provider.launch(l.first_seq, l.count).await.expect("launch");
        instances.extend(launched.into_iter().map(|i| Recorded {
            id: i.id,
            node: None,
            state: State::Pending,
            launched: i.launched.unwrap_or_else(Timestamp::now),
            drain_started: None,
        }));
        next_launch = l.first_seq + l.count as i64;
    }
    let acted = !victims.is_empty() || decided.launch.is_some();
    record.instances = instances;
    record.next_launch = next_launch;
    acted
}
