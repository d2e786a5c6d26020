//! The PackageSet controller: reads the set, its nodes, the halt and the
//! repository index; calls the planner; writes the set's status (reserving
//! the nodes it is about to start) and then the nodes' targets.
//!
//! The reservation makes the budget hold even with two operators at once:
//! the status write carries the set's resourceVersion, so of two operators
//! planning from the same view only one can record its choice; the other
//! gets a conflict, re-reads, and sees the reserved nodes as unavailable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Config;
use super::status::{REPOSITORY_NOT_READY, conflict_condition, invalid_conditions, set_status};
use super::target::{TargetError, put_target};
use super::{ownership, plan, validate};
use crate::api::{NodeInstall, NodeTarget, PackageRepository, PackageSet};
use crate::pkg::PackageId;
use crate::pkg::set::set_hash;
use crate::shared::halt::HALT_CONFIGMAP;
use crate::shared::{Shared, status};

/// The controller's name in metrics.
const NAME: &str = "packageset";

/// Errors of the PackageSet controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused a read or write.
    #[error("PackageSet {set}: {source}")]
    Kube {
        /// The set.
        set: String,
        /// The cause.
        source: kube::Error,
    },
    /// A node's target could not be written: the node kept changing.
    #[error(
        "PackageSet {set}: the target of NodeInstall {node} was not written: it changed under every attempt (an agent or another writer is updating it); retrying"
    )]
    TargetConflict {
        /// The set.
        set: String,
        /// The node.
        node: String,
    },
}

impl Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "Kube",
            Error::TargetConflict { .. } => "TargetConflict",
        }
    }
}

struct SetContext {
    ctx: Shared,
    config: Config,
    nodes: Store<NodeInstall>,
    sets: Store<PackageSet>,
    recorder: Recorder,
}

/// Runs the controller until `stop` is cancelled.
pub fn run(ctx: Shared, settings: Config, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let client = ctx.client.clone();
        let node_api: Api<NodeInstall> = Api::all(client.clone());
        let (nodes, writer) = reflector::store::<NodeInstall>();
        // Node changes that matter to a rollout trigger a reconcile of every
        // set, after the store has taken them in: a reconcile never plans
        // from a store older than the event that woke it. Heartbeat-only
        // updates wake nothing (stale heartbeats are found by requeueing).
        let (wake, woken) = futures::channel::mpsc::channel::<()>(1);
        let mut seen: HashMap<String, NodeFingerprint> = HashMap::new();
        let node_stream = reflector::reflector(writer, watcher(node_api, ctx.watch_config()))
            .default_backoff()
            .touched_objects()
            .for_each(move |node| {
                if let Ok(node) = node {
                    let fingerprint = NodeFingerprint::of(&node);
                    if seen.insert(node.name_any(), fingerprint.clone()).as_ref()
                        != Some(&fingerprint)
                    {
                        // A full channel means a wake-up is already pending.
                        let _ = wake.clone().try_send(());
                    }
                }
                async {}
            });
        let reflect_stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = node_stream => {}
                () = reflect_stop.cancelled() => {}
            }
        });
        if nodes.wait_until_ready().await.is_err() {
            return;
        }

        let config = ctx.watch_config();
        let controller = Controller::new(Api::<PackageSet>::all(client.clone()), config.clone());
        let sets = controller.store();
        let (by_halt, by_repo) = (sets.clone(), sets.clone());
        let halt_api: Api<ConfigMap> = Api::namespaced(client.clone(), &ctx.namespace);
        let halt_config =
            crate::shared::scoped(None).fields(&format!("metadata.name={HALT_CONFIGMAP}"));
        let recorder = Recorder::new(client.clone(), ctx.reporter.clone());
        let shared = Arc::new(SetContext {
            ctx,
            config: settings,
            nodes,
            sets,
            recorder,
        });
        controller
            .reconcile_all_on(woken)
            .watches(halt_api, halt_config, move |_| all_sets(&by_halt))
            .watches(Api::<PackageRepository>::all(client), config, move |repo| {
                let name = repo.name_any();
                by_repo
                    .state()
                    .iter()
                    .filter(|s| s.spec.repository == name)
                    .map(|s| ObjectRef::from_obj(&**s))
                    .collect::<Vec<_>>()
            })
            .graceful_shutdown_on(async move { stop.cancelled().await })
            .run(reconcile, error_policy, shared)
            .for_each(|_| async {})
            .await;
    })
}

fn all_sets(store: &Store<PackageSet>) -> Vec<ObjectRef<PackageSet>> {
    store
        .state()
        .iter()
        .map(|s| ObjectRef::from_obj(&**s))
        .collect()
}

/// What of a NodeInstall a rollout decides from.
#[derive(Clone, PartialEq)]
struct NodeFingerprint {
    labels: std::collections::BTreeMap<String, String>,
    target: Option<String>,
    active: Option<String>,
    failed: Option<String>,
    phase: crate::api::NodePhase,
}

impl NodeFingerprint {
    fn of(node: &NodeInstall) -> Self {
        let status = node.status.clone().unwrap_or_default();
        Self {
            labels: node.labels().clone(),
            target: node.spec.target.as_ref().map(|t| t.set_hash.clone()),
            active: status.active_hash,
            failed: status.failed_hash,
            phase: status.phase,
        }
    }
}

fn error_policy(set: Arc<PackageSet>, err: &Error, ctx: Arc<SetContext>) -> Action {
    warn!(packageset = %set.name_any(), error = %err, "reconcile failed");
    ctx.ctx.metrics.failed(NAME, err.reason());
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(set: Arc<PackageSet>, sc: Arc<SetContext>) -> Result<Action, Error> {
    sc.ctx.metrics.reconciled(NAME);
    if let Some(action) = reconcile_once(&set, &sc).await? {
        return Ok(action);
    }
    // Our copy of the set was older than the API server's (our own last
    // status write, not yet seen by the watch): read it and go once more.
    let fresh = Api::<PackageSet>::all(sc.ctx.client.clone())
        .get(&set.name_any())
        .await
        .map_err(|source| Error::Kube {
            set: set.name_any(),
            source,
        })?;
    Ok(reconcile_once(&fresh, &sc)
        .await?
        .unwrap_or_else(|| Action::requeue(Duration::from_millis(100))))
}

/// One pass: `None` when the status write lost a race (HTTP 409).
async fn reconcile_once(set: &PackageSet, sc: &SetContext) -> Result<Option<Action>, Error> {
    let name = set.name_any();
    let kube_err = |source| Error::Kube {
        set: name.clone(),
        source,
    };
    let now = Timestamp::now();
    let halt = sc.ctx.halt.get().await.map_err(kube_err)?;
    let repo = Api::<PackageRepository>::all(sc.ctx.client.clone())
        .get_opt(&set.spec.repository)
        .await
        .map_err(kube_err)?;

    // Validate (pure) before touching any node.
    let index = sc
        .ctx
        .stores
        .indexes
        .read()
        .expect("index cache lock")
        .get(&set.spec.repository)
        .cloned();
    let (repo, index) = match (repo, index) {
        (Some(repo), Some(index)) => (repo, index),
        (repo, _) => {
            let why = match repo {
                None => format!("PackageRepository {} does not exist", set.spec.repository),
                Some(_) => format!(
                    "PackageRepository {} has no index yet; see its Ready condition",
                    set.spec.repository
                ),
            };
            return write_invalid(set, sc, REPOSITORY_NOT_READY, vec![why], now).await;
        }
    };
    let problems = validate::problems(&set.spec.packages, &set.spec.required, &index);
    if !problems.is_empty() {
        return write_invalid(set, sc, "InvalidSpec", problems, now).await;
    }
    let ids: Vec<PackageId> = set
        .spec
        .packages
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    let hash = set_hash(&ids);

    // Decide (pure).
    let all_nodes = sc.nodes.state();
    let claim = claim_nodes(set, &sc.sets, &all_nodes);
    let views = node_views(set, &hash, &claim.owned, &all_nodes);
    let set_view = plan::SetView {
        set_hash: hash.clone(),
        max_unavailable: set.spec.strategy.max_unavailable.clone(),
        failure_threshold: set.spec.strategy.failure_threshold.max(1) as u32,
        wait: Duration::from_secs(set.spec.strategy.wait_seconds.max(0) as u64),
        paused: set.spec.paused,
    };
    let halt_message = halt.as_ref().map(|h| h.message());
    let decided = plan::plan(&plan::Input {
        set: &set_view,
        nodes: &views,
        halt: halt_message.as_deref(),
        stale_after: sc.config.stale_after,
        now,
    });

    // Write: first the reservation (with the set's resourceVersion), then targets.
    let mut observed = decided.conditions.clone();
    observed.push(conflict_condition(&claim.conflicts));
    let status = set_status(set, &hash, &decided, observed, now);
    let changed = match write_status(set, sc, status).await {
        Ok(changed) => changed,
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(None),
        Err(e) => return Err(kube_err(e)),
    };
    status::publish(&sc.recorder, &set.object_ref(&()), &changed).await;
    record_metrics(sc, set, &changed, &all_nodes, now);
    let target = NodeTarget {
        package_set: name.clone(),
        set_hash: hash,
        packages: ids.iter().map(ToString::to_string).collect(),
        repository_url: repo.spec.url.clone(),
        public_keys: repo.spec.public_keys.clone(),
        health_timeout_seconds: Some(set.spec.strategy.health_timeout_seconds),
    };
    let to_write: BTreeSet<&String> = decided
        .start
        .iter()
        .chain(&decided.adopt)
        .chain(&decided.retarget)
        .collect();
    // Targets go out concurrently (at most a budget's worth, plus adoptions):
    // a batch of 20 nodes should not wait for 20 round trips in a row.
    futures::future::try_join_all(
        to_write
            .into_iter()
            .map(|node| write_target(sc, node, &target)),
    )
    .await?;
    Ok(Some(Action::requeue(
        decided.requeue_after.unwrap_or(Duration::from_secs(300)),
    )))
}

/// Nodes by phase across the fleet, and the duration of a rollout that just
/// became Available (from when its Progressing condition turned True).
fn record_metrics(
    sc: &SetContext,
    set: &PackageSet,
    changed: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    nodes: &[Arc<NodeInstall>],
    now: Timestamp,
) {
    let mut phases: BTreeMap<String, i64> = BTreeMap::new();
    for node in nodes {
        let phase = node.status.as_ref().map(|s| s.phase).unwrap_or_default();
        *phases.entry(format!("{phase:?}")).or_default() += 1;
    }
    for phase in [
        "Idle",
        "Fetching",
        "Activating",
        "Verifying",
        "Active",
        "RolledBack",
        "Failed",
    ] {
        let count = phases.get(phase).copied().unwrap_or(0);
        sc.ctx
            .metrics
            .nodes
            .get_or_create(&crate::shared::metrics::PhaseLabels {
                phase: phase.to_owned(),
            })
            .set(count);
    }
    let became_available = changed
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True");
    let started = set
        .status
        .as_ref()
        .and_then(|s| crate::api::conditions::find(&s.conditions, "Progressing"))
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.0);
    if let (true, Some(started)) = (became_available, started) {
        let seconds = now.duration_since(started).as_secs_f64();
        sc.ctx.metrics.rollout_seconds.observe(seconds.max(0.0));
    }
}

fn claim_nodes(
    set: &PackageSet,
    sets: &Store<PackageSet>,
    nodes: &[Arc<NodeInstall>],
) -> ownership::Claim {
    let all_sets = sets.state();
    let claimants: Vec<ownership::Claimant<'_>> = all_sets
        .iter()
        .map(|s| ownership::Claimant {
            name: s.metadata.name.as_deref().unwrap_or_default(),
            created: s.metadata.creation_timestamp.as_ref().map(|t| t.0),
            selector: &s.spec.node_selector,
        })
        .collect();
    let labels: BTreeMap<String, BTreeMap<String, String>> = nodes
        .iter()
        .map(|n| (n.name_any(), n.labels().clone()))
        .collect();
    ownership::claim(&set.name_any(), &claimants, &labels)
}

fn node_views(
    set: &PackageSet,
    hash: &str,
    owned: &BTreeSet<String>,
    nodes: &[Arc<NodeInstall>],
) -> Vec<plan::NodeView> {
    let reserved: BTreeSet<&String> = set
        .status
        .as_ref()
        .filter(|s| s.set_hash.as_deref() == Some(hash))
        .map(|s| s.nodes_in_progress.iter().collect())
        .unwrap_or_default();
    nodes
        .iter()
        .filter(|n| owned.contains(&n.name_any()))
        .map(|n| {
            let status = n.status.clone().unwrap_or_default();
            let ready = crate::api::conditions::find(&status.conditions, "Ready")
                .filter(|c| c.status == "True")
                .map(|c| c.last_transition_time.0);
            plan::NodeView {
                name: n.name_any(),
                target_hash: n.spec.target.as_ref().map(|t| t.set_hash.clone()),
                active_hash: status.active_hash,
                phase: status.phase,
                failed_hash: status.failed_hash,
                heartbeat: last_sign_of_life(n),
                ready_since: ready,
                reserved: reserved.contains(&n.name_any()),
            }
        })
        .collect()
}

/// A node's last heartbeat or, before its first, when it registered: a
/// node that has just joined gets `--stale-after-seconds` to report instead
/// of degrading every set it matches until its first status write.
fn last_sign_of_life(node: &NodeInstall) -> Option<Timestamp> {
    node.status
        .as_ref()
        .and_then(|s| s.heartbeat.as_ref())
        .or(node.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

async fn write_status(
    set: &PackageSet,
    sc: &SetContext,
    status: (
        crate::api::PackageSetStatus,
        Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    ),
) -> Result<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>, kube::Error> {
    let (status, changed) = status;
    if set.status.as_ref() == Some(&status) {
        return Ok(changed);
    }
    let patch =
        json!({ "metadata": { "resourceVersion": set.resource_version() }, "status": status });
    Api::<PackageSet>::all(sc.ctx.client.clone())
        .patch_status(
            &set.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(changed)
}

async fn write_invalid(
    set: &PackageSet,
    sc: &SetContext,
    reason: &'static str,
    problems: Vec<String>,
    now: Timestamp,
) -> Result<Option<Action>, Error> {
    let mut status = set.status.clone().unwrap_or_default();
    let changed = status::merge(
        &mut status.conditions,
        invalid_conditions(reason, &problems),
        set.metadata.generation,
        now,
    );
    status.observed_generation = set.metadata.generation;
    match write_status(set, sc, (status, changed)).await {
        Ok(changed) => status::publish(&sc.recorder, &set.object_ref(&()), &changed).await,
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(None),
        Err(source) => {
            return Err(Error::Kube {
                set: set.name_any(),
                source,
            });
        }
    }
    // A repository that is not ready yet is worth another look soon; an
    // invalid spec waits for a change (the watch brings it).
    Ok(Some(if reason == REPOSITORY_NOT_READY {
        Action::requeue(Duration::from_secs(10))
    } else {
        Action::await_change()
    }))
}

/// Writes a node's target (see [`put_target`]), from the store's copy.
async fn write_target(sc: &SetContext, node: &str, target: &NodeTarget) -> Result<(), Error> {
    let api: Api<NodeInstall> = Api::all(sc.ctx.client.clone());
    let cached = sc.nodes.get(&ObjectRef::new(node)).map(|n| (*n).clone());
    put_target(&api, cached, node, target)
        .await
        .map_err(|e| match e {
            TargetError::Kube(source) => Error::Kube {
                set: target.package_set.clone(),
                source,
            },
            TargetError::Conflicts => Error::TargetConflict {
                set: target.package_set.clone(),
                node: node.to_owned(),
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{NodeInstallSpec, NodeInstallStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn a_node_is_alive_from_its_registration_until_its_first_heartbeat() {
        let registered = Timestamp::from_second(1_000).unwrap();
        let beat = Timestamp::from_second(2_000).unwrap();
        let mut node = NodeInstall::new("n0", NodeInstallSpec::default());
        assert_eq!(last_sign_of_life(&node), None, "never heard of");
        node.metadata.creation_timestamp = Some(Time(registered));
        assert_eq!(last_sign_of_life(&node), Some(registered));
        node.status = Some(NodeInstallStatus {
            heartbeat: Some(Time(beat)),
            ..NodeInstallStatus::default()
        });
        assert_eq!(last_sign_of_life(&node), Some(beat));
    }
}
