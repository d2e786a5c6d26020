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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Config;
use super::status::{
    CONFIG_NOT_RENDERED, REPOSITORY_NOT_READY, conflict_condition, invalid_conditions, set_status,
};
use super::target::{TargetError, put_target};
use super::{ownership, plan, validate};
use crate::api::{
    ConfigBundle, ConfigBundleRef, NodeInstall, NodePhase, NodeTarget, PackageRepository,
    PackageSet, PackageSource, RenderedPackage, TargetSecret, ValueFrom,
};
use crate::pkg::PackageId;
use crate::pkg::set::set_hash;
use crate::shared::halt::HALT_CONFIGMAP;
use crate::shared::{Shared, status};

/// The controller's name in metrics.
const NAME: &str = "packageset";

/// Errors of the PackageSet controller, each naming the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// observe: the halt ConfigMap could not be read.
    #[error("PackageSet {set}: cannot read the halt ConfigMap: {source}")]
    ReadHalt {
        /// The set.
        set: String,
        /// The cause.
        source: kube::Error,
    },
    /// observe: the set's PackageRepository could not be read.
    #[error("PackageSet {set}: cannot read PackageRepository {repository}: {source}")]
    ReadRepository {
        /// The set.
        set: String,
        /// The repository.
        repository: String,
        /// The cause.
        source: kube::Error,
    },
    /// record: the set's status (the reservation) could not be written.
    #[error("PackageSet {set}: cannot write its status: {source}")]
    WriteStatus {
        /// The set.
        set: String,
        /// The cause.
        source: kube::Error,
    },
    /// record: the set changed since it was read (HTTP 409); the next pass
    /// plans from the newer copy.
    #[error("PackageSet {set}: it changed while being planned; planning again")]
    Conflict {
        /// The set.
        set: String,
    },
    /// act: a node's target could not be written.
    #[error("PackageSet {set}: cannot write the target of NodeInstall {node}: {source}")]
    WriteTarget {
        /// The set.
        set: String,
        /// The node.
        node: String,
        /// The cause.
        source: kube::Error,
    },
    /// observe: a ConfigBundle the set names could not be read.
    #[error("PackageSet {set}: cannot read ConfigBundle {bundle}: {source}")]
    ReadBundle {
        /// The set.
        set: String,
        /// `NAMESPACE/NAME`.
        bundle: String,
        /// The cause.
        source: kube::Error,
    },
    /// act: a node's target could not be written: the node kept changing.
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
    /// The step that failed, as the metric's and the log's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::ReadBundle { .. } => "ReadConfigBundle",
            Error::ReadHalt { .. } => "ReadHalt",
            Error::ReadRepository { .. } => "ReadRepository",
            Error::WriteStatus { .. } => "WriteStatus",
            Error::Conflict { .. } => "Conflict",
            Error::WriteTarget { .. } => "WriteTarget",
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
    written: Written,
}

/// Each set as this controller's last status write left it, with the
/// version it was written over. A pass that starts before the watch has
/// brought that write back plans from it instead of the cached copy,
/// whose version the API server would refuse (HTTP 409) and whose status
/// no longer says which nodes are reserved; a set the cache shows at any
/// other version is planned from the cache, as always.
#[derive(Default)]
struct Written(std::sync::Mutex<HashMap<String, (String, Arc<PackageSet>)>>);

impl Written {
    /// `set`, or what this controller wrote over it.
    fn fresher(&self, set: Arc<PackageSet>) -> Arc<PackageSet> {
        let mut written = self.0.lock().expect("written sets lock");
        let name = set.name_any();
        match written.get(&name) {
            Some((over, mine)) if set.resource_version().as_ref() == Some(over) => mine.clone(),
            Some(_) => {
                written.remove(&name);
                set
            }
            None => set,
        }
    }

    /// `mine` was written over version `over` of the set.
    fn remember(&self, over: Option<String>, mine: PackageSet) {
        if let Some(over) = over {
            let mut written = self.0.lock().expect("written sets lock");
            written.insert(mine.name_any(), (over, Arc::new(mine)));
        }
    }
}

/// Runs the controller until `stop` is cancelled.
pub fn run(ctx: Shared, settings: Config, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let client = ctx.client.clone();
        let (nodes, woken) = watch_nodes(&ctx, &stop);
        if ctx.stores.nodes.ready(NAME).await.is_err() {
            return;
        }

        let config = ctx.watch_config();
        let controller = Controller::new(Api::<PackageSet>::all(client.clone()), config.clone());
        let sets = controller.store();
        let (by_halt, by_repo, by_bundle) = (sets.clone(), sets.clone(), sets.clone());
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
            written: Written::default(),
        });
        controller
            .reconcile_all_on(woken)
            .watches(halt_api, halt_config, move |_| all_sets(&by_halt))
            .watches(
                Api::<ConfigBundle>::all(client.clone()),
                crate::shared::scoped(None),
                move |bundle| {
                    let (ns, name) = (bundle.namespace().unwrap_or_default(), bundle.name_any());
                    by_bundle
                        .state()
                        .iter()
                        .filter(|s| {
                            s.spec
                                .config_bundles
                                .iter()
                                .any(|b| b.namespace == ns && b.name == name)
                        })
                        .map(|s| ObjectRef::from_obj(&**s))
                        .collect::<Vec<_>>()
                },
            )
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

/// The phases of the fleet-wide gauge of NodeInstalls, in `NodePhase`'s
/// order.
const PHASES: [&str; 7] = [
    "Idle",
    "Fetching",
    "Activating",
    "Verifying",
    "Active",
    "RolledBack",
    "Failed",
];

/// The phase gauge's counts, moved node by node as their phases change (a
/// change costs the same with 20 nodes or 20,000).
#[derive(Default)]
struct PhaseCounts {
    counts: [i64; PHASES.len()],
}

impl PhaseCounts {
    /// A node went from phase `old` to `new` (`None`: it was not there, or
    /// is gone); whether a count changed.
    fn moved(&mut self, old: Option<NodePhase>, new: Option<NodePhase>) -> bool {
        if old == new {
            return false;
        }
        if let Some(p) = old {
            self.counts[p as usize] -= 1;
        }
        if let Some(p) = new {
            self.counts[p as usize] += 1;
        }
        true
    }

    /// Counts `phases` afresh (after a re-list).
    fn reset(&mut self, phases: impl IntoIterator<Item = NodePhase>) {
        *self = PhaseCounts::default();
        for phase in phases {
            self.moved(None, Some(phase));
        }
    }

    fn publish(&self, metrics: &crate::shared::metrics::Metrics) {
        for (phase, count) in PHASES.iter().zip(self.counts) {
            metrics
                .nodes
                .get_or_create(&crate::shared::metrics::PhaseLabels {
                    phase: (*phase).to_owned(),
                })
                .set(count);
        }
    }
}

fn phase_of(node: &NodeInstall) -> NodePhase {
    node.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// The shared NodeInstall store, and a stream that wakes every set when a node
/// changes in a way that matters to a rollout, after the store has taken
/// the change in (a reconcile never plans from a store older than the event
/// that woke it). Heartbeat-only updates wake nothing (stale heartbeats are
/// found by requeueing). Keeps the fleet's phase gauge.
fn watch_nodes(
    ctx: &Shared,
    stop: &CancellationToken,
) -> (Store<NodeInstall>, futures::channel::mpsc::Receiver<()>) {
    let nodes = ctx.stores.nodes.store().clone();
    let (wake, woken) = futures::channel::mpsc::channel::<()>(1);
    // Per node, the digest of its fingerprint (not a copy of it) and its
    // phase, for the gauge.
    let mut seen: HashMap<String, (u64, NodePhase)> = HashMap::new();
    let mut phases = PhaseCounts::default();
    let (gauge_nodes, metrics) = (nodes.clone(), ctx.metrics.clone());
    let node_stream = ctx.stores.nodes.subscribe().for_each(move |event| {
        let (changed, counted) = match event {
            watcher::Event::Apply(node) => {
                let now = (NodeFingerprint::of(&node), phase_of(&node));
                let old = seen.insert(node.name_any(), now);
                (
                    old.map(|(f, _)| f) != Some(now.0),
                    phases.moved(old.map(|(_, p)| p), Some(now.1)),
                )
            }
            // A re-list is taken in whole and acted on once, at InitDone.
            watcher::Event::InitApply(node) => {
                seen.insert(
                    node.name_any(),
                    (NodeFingerprint::of(&node), phase_of(&node)),
                );
                (false, false)
            }
            watcher::Event::Delete(node) => match seen.remove(&node.name_any()) {
                Some((_, phase)) => (true, phases.moved(Some(phase), None)),
                None => (false, false),
            },
            watcher::Event::InitDone => {
                let names: std::collections::HashSet<String> =
                    gauge_nodes.state().iter().map(|n| n.name_any()).collect();
                seen.retain(|name, _| names.contains(name));
                phases.reset(seen.values().map(|(_, p)| *p));
                (true, true)
            }
            watcher::Event::Init => (false, false),
        };
        if counted {
            phases.publish(&metrics);
        }
        if changed {
            // A full channel means a wake-up is already pending.
            let _ = wake.clone().try_send(());
        }
        async {}
    });
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = node_stream => {}
            () = stop.cancelled() => {}
        }
    });
    (nodes, woken)
}

fn all_sets(store: &Store<PackageSet>) -> Vec<ObjectRef<PackageSet>> {
    store
        .state()
        .iter()
        .map(|s| ObjectRef::from_obj(&**s))
        .collect()
}

/// What of a NodeInstall a rollout decides from.
#[derive(serde::Serialize)]
struct NodeFingerprint<'a> {
    labels: &'a std::collections::BTreeMap<String, String>,
    target: Option<&'a str>,
    active: Option<&'a str>,
    failed: Option<&'a str>,
    phase: crate::api::NodePhase,
}

impl NodeFingerprint<'_> {
    /// The digest of what a rollout decides from in `node`.
    fn of(node: &NodeInstall) -> u64 {
        let status = node.status.as_ref();
        crate::shared::wake::digest(&NodeFingerprint {
            labels: node.labels(),
            target: node.spec.target.as_ref().map(|t| t.set_hash.as_str()),
            active: status.and_then(|s| s.active_hash.as_deref()),
            failed: status.and_then(|s| s.failed_hash.as_deref()),
            phase: status.map(|s| s.phase).unwrap_or_default(),
        })
    }
}

fn error_policy(set: Arc<PackageSet>, err: &Error, ctx: Arc<SetContext>) -> Action {
    ctx.ctx.metrics.failed(NAME, err.reason());
    if let Error::Conflict { .. } = err {
        // Our copy was older than the API server's (often our own last
        // status write, not yet seen by the watch): plan again shortly.
        tracing::debug!(packageset = %set.name_any(), "status write conflict; planning again");
        return Action::requeue(Duration::from_millis(100));
    }
    warn!(packageset = %set.name_any(), step = err.reason(), error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// One pass: observe → plan → record → act → report.
async fn reconcile(set: Arc<PackageSet>, sc: Arc<SetContext>) -> Result<Action, Error> {
    sc.ctx.metrics.reconciled(NAME);
    let set = sc.written.fresher(set);
    let now = Timestamp::now();
    let seen = observe(&set, &sc).await?;
    let decision = match decide(&set, &sc, &seen, now) {
        Ok(decision) => decision,
        Err(invalid) => return record_invalid(&set, &sc, invalid, now).await,
    };
    let changed = record(&set, &sc, &decision, now).await?;
    let acted = act(&sc, &decision).await;
    report(&sc, &set, &changed, now).await;
    acted?;
    Ok(Action::requeue(
        decision
            .plan
            .requeue_after
            .unwrap_or(Duration::from_secs(300)),
    ))
}

/// What a pass decides from.
struct Observed {
    halt: Option<String>,
    repository: Option<PackageRepository>,
    index: Option<Arc<crate::pkg::index::Index>>,
    nodes: Vec<Arc<NodeInstall>>,
    /// The packages of the set's ConfigBundles, or why there are none yet.
    generated: Result<Generated, Vec<String>>,
}

/// The packages a set's ConfigBundles rendered, and where the secrets
/// their files refer to are.
#[derive(Clone, Debug, Default)]
struct Generated {
    ids: Vec<PackageId>,
    secrets: Vec<TargetSecret>,
}

/// observe: the halt, the repository and its verified index, the nodes.
async fn observe(set: &PackageSet, sc: &SetContext) -> Result<Observed, Error> {
    let name = set.name_any();
    // Both read at once: a pass begins with one round trip, not two.
    let repositories = Api::<PackageRepository>::all(sc.ctx.client.clone());
    let (halt, repository) = tokio::join!(
        sc.ctx.halt.get(),
        repositories.get_opt(&set.spec.repository)
    );
    let halt = halt.map_err(|source| Error::ReadHalt {
        set: name.clone(),
        source,
    })?;
    let repository = repository.map_err(|source| Error::ReadRepository {
        set: name,
        repository: set.spec.repository.clone(),
        source,
    })?;
    let index = sc
        .ctx
        .stores
        .indexes
        .read()
        .expect("index cache lock")
        .get(&set.spec.repository)
        .cloned();
    let generated = generated_packages(set, sc).await?;
    Ok(Observed {
        halt: halt.map(|h| h.message()),
        repository,
        index,
        nodes: sc.nodes.state(),
        generated,
    })
}

/// The packages the set's ConfigBundles rendered last (the common one,
/// and the named service's) with the Secret keys their files refer to, or
/// a problem per bundle that has none.
async fn generated_packages(
    set: &PackageSet,
    sc: &SetContext,
) -> Result<Result<Generated, Vec<String>>, Error> {
    let mut generated = Generated::default();
    let mut problems = Vec::new();
    for r in &set.spec.config_bundles {
        let bundle = Api::<ConfigBundle>::namespaced(sc.ctx.client.clone(), &r.namespace)
            .get_opt(&r.name)
            .await
            .map_err(|source| Error::ReadBundle {
                set: set.name_any(),
                bundle: format!("{}/{}", r.namespace, r.name),
                source,
            })?;
        let values_from = bundle
            .as_ref()
            .map(|b| b.spec.values_from.clone())
            .unwrap_or_default();
        let rendered = bundle
            .and_then(|b| b.status)
            .map(|s| s.rendered)
            .unwrap_or_default();
        let mine: Vec<&RenderedPackage> = rendered
            .iter()
            .filter(|p| p.service.is_empty() || Some(&p.service) == r.service.as_ref())
            .collect();
        for p in &mine {
            match secret_references(r, p, &values_from) {
                Ok(refs) => generated.secrets.extend(refs),
                Err(problem) => problems.push(problem),
            }
        }
        let wants_service = r
            .service
            .as_ref()
            .is_some_and(|s| !rendered.iter().any(|p| &p.service == s));
        if rendered.is_empty() {
            problems.push(format!(
                "ConfigBundle {}/{} has rendered no package yet; see its Rendered condition",
                r.namespace, r.name
            ));
        } else if wants_service {
            problems.push(format!(
                "ConfigBundle {}/{} renders no package for service {}",
                r.namespace,
                r.name,
                r.service.as_deref().unwrap_or_default()
            ));
        }
        generated
            .ids
            .extend(mine.iter().filter_map(|p| p.package_id.parse().ok()));
    }
    Ok(if problems.is_empty() {
        Ok(generated)
    } else {
        Err(problems)
    })
}

/// Where the values of the secrets that the rendered package `p` of the
/// bundle `r` refers to are: a reference per parameter, to the Secret key
/// its bundle's `valuesFrom` names (the operator reads no Secret).
fn secret_references(
    r: &ConfigBundleRef,
    p: &RenderedPackage,
    values_from: &[ValueFrom],
) -> Result<Vec<TargetSecret>, String> {
    let package = p
        .package_id
        .parse::<PackageId>()
        .map(|id| id.name().to_owned())
        .unwrap_or_default();
    p.secrets
        .iter()
        .map(|parameter| {
            let from = values_from
                .iter()
                .find(|v| &v.parameter == parameter)
                .ok_or_else(|| {
                    format!(
                        "ConfigBundle {}/{}: package {} refers to secret parameter {parameter}, which spec.valuesFrom no longer names; add it back",
                        r.namespace, r.name, p.package_id
                    )
                })?;
            Ok(TargetSecret {
                package: package.clone(),
                parameter: parameter.clone(),
                namespace: r.namespace.clone(),
                name: from.secret_key_ref.name.clone(),
                key: from.secret_key_ref.key.clone(),
            })
        })
        .collect()
}

/// Why a set cannot be planned: a condition reason and the problems.
struct Invalid {
    reason: &'static str,
    problems: Vec<String>,
}

/// What a pass decided.
struct Decision {
    name: String,
    hash: String,
    ids: Vec<PackageId>,
    /// The ids of `ids` that the set's ConfigBundles rendered, and the
    /// secrets their files refer to.
    generated: Generated,
    repository: PackageRepository,
    conflicts: BTreeMap<String, String>,
    health_timeout_seconds: i32,
    plan: plan::Plan,
}

/// plan: validate the set against the index, claim its nodes, and call the
/// planner (pure, given what was observed).
fn decide(
    set: &PackageSet,
    sc: &SetContext,
    seen: &Observed,
    now: Timestamp,
) -> Result<Decision, Invalid> {
    let (repository, ids, generated) = validated(set, seen)?;
    let hash = set_hash(&ids);
    let claim = claim_nodes(set, &sc.sets, &seen.nodes);
    let views = node_views(set, &hash, &claim.owned, &seen.nodes);
    let set_view = plan::SetView {
        set_hash: hash.clone(),
        max_unavailable: set.spec.strategy.max_unavailable.clone(),
        failure_threshold: set.spec.strategy.failure_threshold.max(1) as u32,
        wait: Duration::from_secs(set.spec.strategy.wait_seconds.max(0) as u64),
        paused: set.spec.paused,
    };
    let plan = plan::plan(&plan::Input {
        set: &set_view,
        nodes: &views,
        halt: seen.halt.as_deref(),
        stale_after: sc.config.stale_after,
        now,
    });
    Ok(Decision {
        name: set.name_any(),
        hash,
        ids,
        generated,
        repository,
        conflicts: claim.conflicts,
        health_timeout_seconds: set.spec.strategy.health_timeout_seconds,
        plan,
    })
}

/// The set's repository, all its package ids and those of them its
/// ConfigBundles rendered, or why it cannot be planned.
fn validated(
    set: &PackageSet,
    seen: &Observed,
) -> Result<(PackageRepository, Vec<PackageId>, Generated), Invalid> {
    let (repository, index) = match (&seen.repository, &seen.index) {
        (Some(repo), Some(index)) => (repo.clone(), index),
        (repo, _) => {
            let why = match repo {
                None => format!("PackageRepository {} does not exist", set.spec.repository),
                Some(_) => format!(
                    "PackageRepository {} has no index yet; see its Ready condition",
                    set.spec.repository
                ),
            };
            return Err(Invalid {
                reason: REPOSITORY_NOT_READY,
                problems: vec![why],
            });
        }
    };
    let generated = match &seen.generated {
        Ok(generated) => generated.clone(),
        Err(problems) => {
            return Err(Invalid {
                reason: CONFIG_NOT_RENDERED,
                problems: problems.clone(),
            });
        }
    };
    let problems = validate::problems(
        &set.spec.packages,
        &generated.ids,
        &set.spec.required,
        index,
    );
    if !problems.is_empty() {
        return Err(Invalid {
            reason: "InvalidSpec",
            problems,
        });
    }
    let mut ids: Vec<PackageId> = set
        .spec
        .packages
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    ids.extend(generated.ids.iter().cloned());
    ids.sort();
    Ok((repository, ids, generated))
}

/// record: the status with the reservation, carrying the set's
/// resourceVersion, before any target; returns the changed conditions.
async fn record(
    set: &PackageSet,
    sc: &SetContext,
    decision: &Decision,
    now: Timestamp,
) -> Result<Vec<Condition>, Error> {
    let mut observed = decision.plan.conditions.clone();
    observed.push(conflict_condition(&decision.conflicts));
    let status = set_status(set, &decision.hash, &decision.plan, observed, now);
    write_status(set, sc, status).await
}

/// act: the targets of the nodes the plan starts, adopts or retargets,
/// concurrently (at most a budget's worth, plus adoptions: a batch of 20
/// nodes should not wait for 20 round trips in a row).
async fn act(sc: &SetContext, decision: &Decision) -> Result<(), Error> {
    let plan = &decision.plan;
    let target = NodeTarget {
        package_set: decision.name.clone(),
        set_hash: decision.hash.clone(),
        packages: decision.ids.iter().map(ToString::to_string).collect(),
        repository_url: decision.repository.spec.url.clone(),
        public_keys: decision.repository.spec.public_keys.clone(),
        health_timeout_seconds: Some(decision.health_timeout_seconds),
        sources: generated_source(&sc.config.generated, &decision.generated.ids),
        secrets: decision.generated.secrets.clone(),
    };
    let to_write: BTreeSet<&String> = plan
        .start
        .iter()
        .chain(&plan.adopt)
        .chain(&plan.retarget)
        .collect();
    futures::future::try_join_all(
        to_write
            .into_iter()
            .map(|node| write_target(sc, node, &target)),
    )
    .await?;
    Ok(())
}

/// report: an event per changed condition, and the rollout duration.
async fn report(sc: &SetContext, set: &PackageSet, changed: &[Condition], now: Timestamp) {
    status::publish(&sc.recorder, &set.object_ref(&()), changed).await;
    record_duration(sc, set, changed, now);
}

/// The duration of a rollout that just became Available (from when its
/// Progressing condition turned True).
fn record_duration(sc: &SetContext, set: &PackageSet, changed: &[Condition], now: Timestamp) {
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
    let labels = nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n.labels())));
    ownership::claim(&set.name_any(), &claimants, labels)
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
        .filter_map(|n| {
            let name = n.metadata.name.as_ref()?;
            owned.contains(name).then_some((name, n))
        })
        .map(|(name, n)| {
            // Borrowed, not cloned: a pass reads every node of the set.
            let status = n.status.as_ref();
            let ready = status
                .and_then(|s| crate::api::conditions::find(&s.conditions, "Ready"))
                .filter(|c| c.status == "True")
                .map(|c| c.last_transition_time.0);
            plan::NodeView {
                name: name.clone(),
                target_hash: n.spec.target.as_ref().map(|t| t.set_hash.clone()),
                active_hash: status.and_then(|s| s.active_hash.clone()),
                phase: status.map(|s| s.phase).unwrap_or_default(),
                failed_hash: status.and_then(|s| s.failed_hash.clone()),
                heartbeat: last_sign_of_life(n),
                ready_since: ready,
                reserved: reserved.contains(name),
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

/// Writes `status` (unless unchanged) with the set's resourceVersion;
/// returns the changed conditions.
async fn write_status(
    set: &PackageSet,
    sc: &SetContext,
    (status, changed): (crate::api::PackageSetStatus, Vec<Condition>),
) -> Result<Vec<Condition>, Error> {
    if set.status.as_ref() == Some(&status) {
        return Ok(changed);
    }
    let patch =
        json!({ "metadata": { "resourceVersion": set.resource_version() }, "status": status });
    match Api::<PackageSet>::all(sc.ctx.client.clone())
        .patch_status(
            &set.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(written) => {
            sc.written.remember(set.resource_version(), written);
            Ok(changed)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Conflict {
            set: set.name_any(),
        }),
        Err(source) => Err(Error::WriteStatus {
            set: set.name_any(),
            source,
        }),
    }
}

/// record, for a set that cannot be planned: its Valid (and Ready)
/// conditions say why; no node is touched.
async fn record_invalid(
    set: &PackageSet,
    sc: &SetContext,
    invalid: Invalid,
    now: Timestamp,
) -> Result<Action, Error> {
    let mut status = set.status.clone().unwrap_or_default();
    let changed = status::merge(
        &mut status.conditions,
        invalid_conditions(invalid.reason, &invalid.problems),
        set.metadata.generation,
        now,
    );
    status.observed_generation = set.metadata.generation;
    let changed = write_status(set, sc, (status, changed)).await?;
    status::publish(&sc.recorder, &set.object_ref(&()), &changed).await;
    // A repository that is not ready yet is worth another look soon; an
    // invalid spec waits for a change (the watch brings it).
    Ok(if super::status::waiting(invalid.reason) {
        Action::requeue(Duration::from_secs(10))
    } else {
        Action::await_change()
    })
}

/// Writes a node's target (see [`put_target`]), from the store's copy.
async fn write_target(sc: &SetContext, node: &str, target: &NodeTarget) -> Result<(), Error> {
    let api: Api<NodeInstall> = Api::all(sc.ctx.client.clone());
    let cached = sc.nodes.get(&ObjectRef::new(node)).map(|n| (*n).clone());
    put_target(&api, cached, node, target)
        .await
        .map_err(|e| match e {
            TargetError::Kube(source) => Error::WriteTarget {
                set: target.package_set.clone(),
                node: node.to_owned(),
                source,
            },
            TargetError::Conflicts => Error::TargetConflict {
                set: target.package_set.clone(),
                node: node.to_owned(),
            },
        })
}

#[cfg(test)]
#[path = "controller_scenarios.rs"]
mod scenarios;

/// The source of a target's generated packages (`generated`, the ids its
/// ConfigBundles rendered), if it has any.
fn generated_source(source: &PackageSource, generated: &[PackageId]) -> Vec<PackageSource> {
    if generated.is_empty() {
        return Vec::new();
    }
    vec![PackageSource {
        packages: generated.iter().map(ToString::to_string).collect(),
        ..source.clone()
    }]
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

    #[test]
    fn a_pass_plans_from_its_own_last_write_until_the_cache_has_moved_past_it() {
        let at = |version: &str, nodes: &[&str]| {
            let mut set: PackageSet = serde_json::from_value(json!({
                "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageSet",
                "metadata": { "name": "web", "resourceVersion": version },
                "spec": { "repository": "repo", "packages": [] }
            }))
            .unwrap();
            set.status = Some(crate::api::PackageSetStatus {
                nodes_in_progress: nodes.iter().map(|n| n.to_string()).collect(),
                ..Default::default()
            });
            set
        };
        let written = Written::default();
        let cached = Arc::new(at("1", &[]));
        assert_eq!(
            written.fresher(cached.clone()).resource_version().unwrap(),
            "1"
        );
        // The pass over version 1 reserved n0 and wrote version 2.
        written.remember(Some("1".into()), at("2", &["n0"]));
        let next = written.fresher(cached.clone());
        assert_eq!(
            next.resource_version().unwrap(),
            "2",
            "the cache still shows 1"
        );
        assert_eq!(next.status.as_ref().unwrap().nodes_in_progress, ["n0"]);
        // The watch brought version 2 (or anyone's later one): the cache wins.
        let caught_up = Arc::new(at("3", &["n0", "n1"]));
        assert_eq!(written.fresher(caught_up).resource_version().unwrap(), "3");
        assert_eq!(
            written.fresher(cached).resource_version().unwrap(),
            "1",
            "forgotten once the cache moved past it"
        );
    }

    #[test]
    fn the_phase_counts_follow_each_node_and_a_relist_counts_afresh() {
        let count = |c: &PhaseCounts, phase: NodePhase| c.counts[phase as usize];
        let mut c = PhaseCounts::default();
        // a and b appear Idle; a again Idle; a goes Fetching; b goes away.
        assert!(c.moved(None, Some(NodePhase::Idle)));
        assert!(c.moved(None, Some(NodePhase::Idle)));
        assert!(
            !c.moved(Some(NodePhase::Idle), Some(NodePhase::Idle)),
            "unchanged"
        );
        assert!(c.moved(Some(NodePhase::Idle), Some(NodePhase::Fetching)));
        assert_eq!(count(&c, NodePhase::Idle), 1);
        assert_eq!(count(&c, NodePhase::Fetching), 1);
        assert!(c.moved(Some(NodePhase::Idle), None));
        assert!(!c.moved(None, None), "gone already");
        assert_eq!(count(&c, NodePhase::Idle), 0);
        c.reset([NodePhase::Active, NodePhase::Active, NodePhase::Failed]);
        assert_eq!(
            count(&c, NodePhase::Fetching),
            0,
            "a is gone after the re-list"
        );
        assert_eq!(count(&c, NodePhase::Active), 2);
        assert_eq!(count(&c, NodePhase::Failed), 1);
        assert_eq!(PHASES[NodePhase::RolledBack as usize], "RolledBack");
        assert_eq!(PHASES[NodePhase::Failed as usize], "Failed");
    }

    #[test]
    fn only_generated_packages_come_from_the_generated_repository() {
        let source = PackageSource {
            url: "http://operator:8080/config-repository".into(),
            public_keys: vec!["key".into()],
            packages: Vec::new(),
        };
        let ids: Vec<PackageId> = ["web--1.0.0", "web-config--cfg.0123456789abcdef"]
            .iter()
            .map(|i| i.parse().unwrap())
            .collect();
        let sources = generated_source(&source, &ids[1..]);
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].packages, ["web-config--cfg.0123456789abcdef"]);
        assert_eq!(sources[0].public_keys, ["key"]);
        assert!(generated_source(&source, &[]).is_empty());
    }

    #[test]
    fn a_package_that_refers_to_secrets_gets_the_secret_keys_by_reference() {
        use crate::api::SecretKeyRef;
        let r = ConfigBundleRef {
            namespace: "shop".into(),
            name: "web".into(),
            service: None,
        };
        let p = RenderedPackage {
            package_id: "web-config--cfg.0123456789abcdef".into(),
            secrets: vec!["apiToken".into()],
            ..RenderedPackage::default()
        };
        let values_from = [ValueFrom {
            parameter: "apiToken".into(),
            secret_key_ref: SecretKeyRef {
                name: "web".into(),
                key: "api-token".into(),
            },
        }];
        let refs = secret_references(&r, &p, &values_from).unwrap();
        assert_eq!(
            refs,
            [TargetSecret {
                package: "web-config".into(),
                parameter: "apiToken".into(),
                namespace: "shop".into(),
                name: "web".into(),
                key: "api-token".into(),
            }]
        );
        // A package with no reference needs none; one whose bundle no
        // longer names the Secret is a problem naming the bundle.
        let plain = RenderedPackage {
            secrets: vec![],
            ..p.clone()
        };
        assert!(secret_references(&r, &plain, &[]).unwrap().is_empty());
        let problem = secret_references(&r, &p, &[]).unwrap_err();
        assert!(
            problem.contains("shop/web") && problem.contains("apiToken"),
            "{problem}"
        );
    }
}
