//! The NodePool controller. Each pass: list the pool's instances from its
//! provider, read its NodeInstalls, drain the instances being removed, plan
//! (pure), record the plan in status (with the pool's resourceVersion), then
//! terminate, launch, uncordon the nodes whose removal was cancelled, and
//! record the result.
//!
//! A deleted pool is scaled to zero by the same passes (drained with the
//! same policy and timeout) before its finalizer lets it go.
//!
//! The launch sequence is in status before RunInstances is called and is
//! advanced only after the launched instances are recorded: a crash in
//! between leaves the sequence where it was, so the next pass reuses the
//! same idempotency token and adopts the instances carrying its tag.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Config;
use super::identity::{Mode, NodeIdentity};
use super::plan::{self, DrainOutcome, Recorded, State};
use super::pool_status::{self, Fill, report_failure};
use super::provider::{Instance, POOL_TAG, Provider};
use super::{drain, providers, triggers};
use crate::api::{NodeInstall, NodePool, NodePoolStatus};
use crate::pkg::failpoint;
use crate::shared::{Shared, status};

/// The controller's name in metrics.
const NAME: &str = "nodepool";
/// The finalizer that terminates a deleted pool's instances.
pub const FINALIZER: &str = "theseus.dev/nodepool-instances";
/// The failpoint between RunInstances and the status write that records it.
pub const AFTER_RUN_INSTANCES: &str = "nodepool-after-run-instances";

/// Errors of the NodePool controller, each naming the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// observe: the provider could not list the pool's instances.
    #[error(transparent)]
    ListInstances(super::provider::Error),
    /// drain: a drain pass failed.
    #[error(transparent)]
    Drain(drain::Error),
    /// record: the plan could not be written into status.
    #[error("NodePool {pool}: cannot write its status: {source}")]
    WriteStatus {
        /// The pool.
        pool: String,
        /// The cause.
        source: kube::Error,
    },
    /// record: the pool changed since it was read (HTTP 409); the next pass
    /// plans from the newer copy.
    #[error("NodePool {pool}: it changed while being planned; planning again")]
    Conflict {
        /// The pool.
        pool: String,
    },
    /// act: uncordoning the nodes whose removal was cancelled failed.
    #[error(transparent)]
    Uncordon(drain::Error),
    /// act: terminating instances failed.
    #[error(transparent)]
    Terminate(super::provider::Error),
    /// act: a removed node's NodeInstall could not be deleted.
    #[error("NodePool {pool}: cannot delete NodeInstall {node}: {source}")]
    DeleteNode {
        /// The pool.
        pool: String,
        /// The node.
        node: String,
        /// The cause.
        source: kube::Error,
    },
    /// act: launching instances failed.
    #[error(transparent)]
    Launch(super::provider::Error),
    /// The finalizer could not be added or removed, or its cleanup failed.
    #[error("NodePool finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// The step that failed, as the metric's and the log's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::ListInstances(_) => "ListInstances",
            Error::Drain(_) => "Drain",
            Error::WriteStatus { .. } => "WriteStatus",
            Error::Conflict { .. } => "Conflict",
            Error::Uncordon(_) => "Uncordon",
            Error::Terminate(_) => "Terminate",
            Error::DeleteNode { .. } => "DeleteNode",
            Error::Launch(_) => "Launch",
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "Finalizer",
            },
        }
    }
}

struct PoolContext {
    ctx: Shared,
    config: Config,
    recorder: Recorder,
    providers: providers::Cache,
    /// A client that does not retry 429: a refused eviction (a
    /// PodDisruptionBudget) must come back at once, not after minutes.
    evictions: kube::Client,
    /// Local agents' own identities, when they have them.
    identity: Option<Arc<NodeIdentity>>,
}

/// A client like the operator's, without kube's retries of 429/503/504,
/// and the issuer of local agents' identities (when the operator gives them
/// their own).
async fn clients(ctx: &Shared, settings: &Config) -> (kube::Client, Option<Arc<NodeIdentity>>) {
    let fallback = &ctx.client;
    match kube::Config::infer().await {
        Ok(mut config) => {
            let identity = (settings.local_identity == Mode::ServiceAccount).then(|| {
                Arc::new(NodeIdentity::new(
                    fallback.clone(),
                    &config,
                    &settings.identity_namespace,
                    &settings.identity_prefix,
                ))
            });
            config.default_retry = false;
            let evictions = kube::Client::try_from(config).unwrap_or_else(|_| fallback.clone());
            (evictions, identity)
        }
        Err(e) => {
            warn!(error = %e, "cannot build the eviction client; evictions blocked by a PodDisruptionBudget will be retried by kube");
            (fallback.clone(), None)
        }
    }
}

/// Runs the controller until `stop` is cancelled.
pub fn run(ctx: Shared, settings: Config, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let client = ctx.client.clone();
        let config = ctx.watch_config();
        let recorder = Recorder::new(client.clone(), ctx.reporter.clone());
        let (evictions, identity) = clients(&ctx, &settings).await;
        let shared = Arc::new(PoolContext {
            ctx,
            config: settings,
            recorder,
            providers: Arc::new(Mutex::new(HashMap::new())),
            evictions,
            identity,
        });
        if shared.ctx.stores.nodes.ready(NAME).await.is_err() {
            return;
        }
        // NodeInstall changes wake their pool, heartbeats excepted.
        let woken = triggers::pools_to_wake(shared.ctx.stores.nodes.subscribe());
        Controller::new(Api::<NodePool>::all(client), config)
            .reconcile_on(woken)
            .graceful_shutdown_on(async move { stop.cancelled().await })
            .run(reconcile, error_policy, shared)
            .for_each(|_| async {})
            .await;
    })
}

fn error_policy(pool: Arc<NodePool>, err: &Error, pc: Arc<PoolContext>) -> Action {
    pc.ctx.metrics.failed(NAME, err.reason());
    if err.reason() == "Conflict" {
        // Another writer changed the pool meanwhile: plan again from what
        // it wrote.
        tracing::debug!(nodepool = %pool.name_any(), "status write conflict; planning again");
        return Action::requeue(Duration::from_millis(200));
    }
    warn!(nodepool = %pool.name_any(), step = err.reason(), error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(3))
}

async fn reconcile(pool: Arc<NodePool>, pc: Arc<PoolContext>) -> Result<Action, Error> {
    pc.ctx.metrics.reconciled(NAME);
    if pool.metadata.deletion_timestamp.is_some()
        && pool.finalizers().iter().any(|f| f == FINALIZER)
    {
        // Scale to zero, draining as usual, before the finalizer's cleanup.
        let removal = pass(&pool, &pc, 0).await?;
        if removal.remaining > 0 {
            return Ok(removal.action);
        }
    }
    let api: Api<NodePool> = Api::all(pc.ctx.client.clone());
    finalizer(&api, FINALIZER, pool, |event| async {
        match event {
            Event::Apply(pool) => {
                let replicas = pool.spec.replicas.max(0) as usize;
                Ok(pass(&pool, &pc, replicas).await?.action)
            }
            Event::Cleanup(pool) => cleanup(&pool, &pc).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// How a pass ended.
struct Pass {
    action: Action,
    /// Recorded instances left (for a deleted pool: not yet gone).
    remaining: usize,
}

/// One pass towards `replicas` instances (zero for a deleted pool):
/// observe → drain → plan → record → act → report.
async fn pass(pool: &NodePool, pc: &PoolContext, replicas: usize) -> Result<Pass, Error> {
    let Some(seen) = observe(pool, pc).await? else {
        // Nothing can have been launched with settings that do not work.
        return Ok(Pass {
            action: Action::await_change(),
            remaining: 0,
        });
    };
    let now = Timestamp::now();
    let recorded = pool_status::recorded(&seen.status, now);
    let drains = drain_pass(pool, pc, &recorded).await?;
    let decided = decide(pool, pc, &seen, &recorded, &drains, replicas, now);
    let (next, changed, version) = record(pool, pc, &seen, &decided, now).await?;
    report(pc, pool, &changed).await;
    let remaining = act(pool, pc, &seen, &decided, &next, version, now).await?;
    Ok(Pass {
        action: Action::requeue(decided.requeue_after),
        remaining,
    })
}

/// What a pass decides from.
struct Observed {
    provider: Arc<dyn Provider>,
    status: NodePoolStatus,
    listed: Vec<Instance>,
    nodes: Vec<plan::NodeView>,
}

/// observe: the provider, its listing of the pool's instances, the pool's
/// NodeInstalls and what status recorded. `None` when the provider's
/// settings cannot work (the pool reports it).
async fn observe(pool: &NodePool, pc: &PoolContext) -> Result<Option<Observed>, Error> {
    let client = &pc.ctx.client;
    let provider = match providers::get(
        pool,
        client,
        &pc.config,
        &pc.providers,
        pc.identity.as_ref(),
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            report_failure(client, &pc.recorder, pool, "InvalidProvider", e.to_string()).await;
            return Ok(None);
        }
    };
    let listed = match provider.list().await {
        Ok(l) => l,
        Err(e) => {
            report_failure(client, &pc.recorder, pool, e.reason(), e.to_string()).await;
            return Err(Error::ListInstances(e));
        }
    };
    let nodes = pool_nodes(pool, pc);
    Ok(Some(Observed {
        provider,
        status: pool.status.clone().unwrap_or_default(),
        listed,
        nodes,
    }))
}

/// plan: the pure planner over what was observed and drained.
fn decide(
    pool: &NodePool,
    pc: &PoolContext,
    seen: &Observed,
    recorded: &[Recorded],
    drains: &BTreeMap<String, DrainOutcome>,
    replicas: usize,
    now: Timestamp,
) -> plan::Plan {
    let name = pool.name_any();
    let listed: Vec<plan::Listed> = seen
        .listed
        .iter()
        .map(|i| plan::Listed {
            id: i.id.clone(),
            launched: i.launched,
            launch_seq: i.launch_seq(),
        })
        .collect();
    let decided = plan::plan(&plan::Input {
        pool: &pool_view(pool, pc, &seen.status, replicas),
        recorded,
        listed: &listed,
        nodes: &seen.nodes,
        drains,
        previous: &seen.status.conditions,
        first_seen: &pool_status::first_seen(&seen.status),
        now,
    });
    tracing::debug!(nodepool = %name, launch = ?decided.launch, terminate = ?decided.terminate, instances = decided.instances.len(), "planned");
    if !decided.strays.is_empty() {
        info!(nodepool = %name, strays = ?decided.strays, "leaving unrecorded young instances alone");
    }
    if !decided.cancelled.is_empty() {
        info!(nodepool = %name, nodes = ?decided.cancelled, "the pool grew again: removal cancelled");
    }
    decided
}

/// record: the plan (and the launch sequence) in status, with the pool's
/// resourceVersion, before acting on it; returns the written status, the
/// changed conditions and the new resourceVersion.
async fn record(
    pool: &NodePool,
    pc: &PoolContext,
    seen: &Observed,
    decided: &plan::Plan,
    now: Timestamp,
) -> Result<(NodePoolStatus, Vec<Condition>, Option<String>), Error> {
    let mut next = seen.status.clone();
    let changed = pool_status::fill(
        pool,
        &mut next,
        fill(decided, &decided.instances, decided.next_launch),
        now,
    );
    let mut version = pool.resource_version();
    if next != seen.status || decided.launch.is_some() {
        version = write_status(pool, pc, &next, version.as_deref()).await?;
    }
    Ok((next, changed, version))
}

/// act: uncordon the nodes whose removal was cancelled, terminate and
/// launch as recorded, then record what was launched; returns the recorded
/// instances left.
async fn act(
    pool: &NodePool,
    pc: &PoolContext,
    seen: &Observed,
    decided: &plan::Plan,
    recorded: &NodePoolStatus,
    version: Option<String>,
    now: Timestamp,
) -> Result<usize, Error> {
    let staying: BTreeSet<String> = decided
        .instances
        .iter()
        .filter(|i| matches!(i.state, State::Pending | State::Running))
        .filter_map(|i| i.node.clone())
        .collect();
    drain::uncordon(&pc.evictions, &pool.name_any(), &staying)
        .await
        .map_err(Error::Uncordon)?;
    let api: Api<NodeInstall> = Api::all(pc.ctx.client.clone());
    for node in &decided.forget_nodes {
        delete_node(pool, &api, node).await?;
    }
    if decided.terminate.is_empty() && decided.launch.is_none() {
        return Ok(decided.instances.len());
    }
    let (instances, next_launch) = provide(pool, pc, seen, decided).await?;
    let mut after = recorded.clone();
    pool_status::fill(
        pool,
        &mut after,
        fill(decided, &instances, next_launch),
        now,
    );
    write_status(pool, pc, &after, version.as_deref()).await?;
    tracing::debug!(nodepool = %pool.name_any(), next_launch, remaining = instances.len(), "recorded");
    Ok(instances.len())
}

/// report: an event per changed condition.
async fn report(pc: &PoolContext, pool: &NodePool, changed: &[Condition]) {
    status::publish(&pc.recorder, &pool.object_ref(&()), changed).await;
}

/// Writes the pool's status with `version`; returns the new version.
async fn write_status(
    pool: &NodePool,
    pc: &PoolContext,
    status: &NodePoolStatus,
    version: Option<&str>,
) -> Result<Option<String>, Error> {
    match pool_status::write(&pc.ctx.client, pool, status, version).await {
        Ok(v) => Ok(v),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Conflict {
            pool: pool.name_any(),
        }),
        Err(source) => Err(Error::WriteStatus {
            pool: pool.name_any(),
            source,
        }),
    }
}

/// What to write into status for `decided`, with these instances.
fn fill<'a>(decided: &'a plan::Plan, instances: &'a [Recorded], next_launch: i64) -> Fill<'a> {
    Fill {
        instances,
        next_launch,
        ready: decided.ready,
        first_seen: &decided.first_seen,
        observed: decided.conditions.clone(),
    }
}

/// Carries out the plan's terminations and launch (already recorded);
/// returns the instances and the next launch sequence to record after.
async fn provide(
    pool: &NodePool,
    pc: &PoolContext,
    seen: &Observed,
    decided: &plan::Plan,
) -> Result<(Vec<Recorded>, i64), Error> {
    let provider = seen.provider.as_ref();
    let mut instances = decided.instances.clone();
    let mut next_launch = decided.next_launch;
    if !decided.terminate.is_empty() {
        terminate(pool, pc, provider, &seen.listed, decided).await?;
        instances.retain(|i| i.state != State::Terminating);
    }
    if let Some(launch) = &decided.launch {
        let launched = match provider.launch(launch.first_seq, launch.count).await {
            Ok(l) => l,
            Err(e) => {
                let reason = match e.reason() {
                    "ProviderTimeout" => "ProviderTimeout",
                    _ => "LaunchFailed",
                };
                report_failure(&pc.ctx.client, &pc.recorder, pool, reason, e.to_string()).await;
                return Err(Error::Launch(e));
            }
        };
        failpoint::hit(AFTER_RUN_INSTANCES);
        info!(nodepool = %pool.name_any(), seq = launch.first_seq, ids = ?launched.iter().map(|i| &i.id).collect::<Vec<_>>(), "launched");
        // Without a launch time from the provider, now is its first sight.
        let now = Timestamp::now();
        instances.extend(launched.into_iter().map(|i| Recorded {
            id: i.id,
            node: None,
            state: State::Pending,
            launched: i.launched.unwrap_or(now),
            drain_started: None,
        }));
        next_launch = launch.first_seq + launch.count as i64;
    }
    Ok((instances, next_launch))
}

async fn terminate(
    pool: &NodePool,
    pc: &PoolContext,
    provider: &dyn Provider,
    listed: &[Instance],
    decided: &plan::Plan,
) -> Result<(), Error> {
    let ids: BTreeSet<&String> = decided.terminate.iter().collect();
    let victims: Vec<Instance> = listed
        .iter()
        .filter(|i| ids.contains(&i.id))
        .cloned()
        .collect();
    provider
        .terminate(&victims)
        .await
        .map_err(Error::Terminate)?;
    info!(nodepool = %pool.name_any(), ids = ?ids, "terminated");
    let api: Api<NodeInstall> = Api::all(pc.ctx.client.clone());
    for node in &decided.remove_nodes {
        delete_node(pool, &api, node).await?;
    }
    Ok(())
}

/// Deletes the NodeInstall `node` of `pool` (gone already is fine).
async fn delete_node(pool: &NodePool, api: &Api<NodeInstall>, node: &str) -> Result<(), Error> {
    match api.delete(node, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::DeleteNode {
            pool: pool.name_any(),
            node: node.to_owned(),
            source,
        }),
    }
}

/// The finalizer's last step, once the removal passes have drained and
/// terminated every recorded instance: terminate old unrecorded instances
/// carrying the pool's tags, and remove the pool's NodeInstalls.
async fn cleanup(pool: &NodePool, pc: &PoolContext) -> Result<Action, Error> {
    let name = pool.name_any();
    let Ok(provider) = providers::get(
        pool,
        &pc.ctx.client,
        &pc.config,
        &pc.providers,
        pc.identity.as_ref(),
    )
    .await
    else {
        // Nothing can have been launched with settings that do not work.
        return Ok(Action::await_change());
    };
    let listed = provider.list().await.map_err(Error::ListInstances)?;
    let status = pool.status.clone().unwrap_or_default();
    let first_seen = pool_status::first_seen(&status);
    let grace = pc.config.instance_grace.as_secs() as i64;
    let now = Timestamp::now();
    let (victims, young): (Vec<Instance>, Vec<Instance>) = listed.into_iter().partition(|i| {
        // No launch time and never seen: young, as far as anyone knows.
        let since = i.launched.or_else(|| first_seen.get(&i.id).copied());
        since.is_some_and(|t| now.duration_since(t).as_secs() >= grace)
    });
    if !young.is_empty() {
        warn!(nodepool = %name, ids = ?young.iter().map(|i| &i.id).collect::<Vec<_>>(), "pool deleted: leaving unrecorded young instances alone");
    }
    provider
        .terminate(&victims)
        .await
        .map_err(Error::Terminate)?;
    let api: Api<NodeInstall> = Api::all(pc.ctx.client.clone());
    for ni in members(pool, pc) {
        let _ = api.delete(&ni.name_any(), &DeleteParams::default()).await;
    }
    providers::forget(pool, &pc.providers);
    info!(nodepool = %name, orphans = victims.len(), "pool deleted: its instances drained and terminated");
    Ok(Action::await_change())
}

/// The pool's NodeInstalls, from the shared store (no LIST per pass).
fn pool_nodes(pool: &NodePool, pc: &PoolContext) -> Vec<plan::NodeView> {
    members(pool, pc)
        .iter()
        .map(|n| {
            let status = n.status.clone().unwrap_or_default();
            plan::NodeView {
                name: n.name_any(),
                instance_id: status.instance_id,
                heartbeat: status.heartbeat.map(|t| t.0),
                remove_requested: n.annotations().contains_key(super::REMOVE_ANNOTATION),
                created: n.metadata.creation_timestamp.as_ref().map(|t| t.0),
            }
        })
        .collect()
}

/// The NodeInstalls labelled with the pool's name, from the shared store.
fn members(pool: &NodePool, pc: &PoolContext) -> Vec<Arc<NodeInstall>> {
    let name = pool.name_any();
    pc.ctx
        .stores
        .nodes
        .store()
        .state()
        .into_iter()
        .filter(|n| n.labels().get(POOL_TAG) == Some(&name))
        .collect()
}

async fn drain_pass(
    pool: &NodePool,
    pc: &PoolContext,
    recorded: &[Recorded],
) -> Result<BTreeMap<String, DrainOutcome>, Error> {
    let mut out = BTreeMap::new();
    for r in recorded.iter().filter(|r| r.state == State::Draining) {
        let outcome = match &r.node {
            Some(node) => drain::drain(&pc.evictions, &pool.name_any(), node)
                .await
                .map_err(Error::Drain)?,
            None => DrainOutcome::Done,
        };
        out.insert(r.id.clone(), outcome);
    }
    Ok(out)
}

fn pool_view(
    pool: &NodePool,
    pc: &PoolContext,
    status: &NodePoolStatus,
    replicas: usize,
) -> plan::PoolView {
    let secs = |s: i32| Duration::from_secs(s.max(0) as u64);
    plan::PoolView {
        replicas,
        order: pool.spec.scale_down_order,
        drain_timeout: secs(pool.spec.drain_timeout_seconds),
        drain_policy: pool.spec.drain_timeout_policy,
        join_timeout: secs(pool.spec.join_timeout_seconds),
        grace: pc.config.instance_grace,
        stale_after: pc.config.stale_after,
        next_launch: status.next_launch,
    }
}

#[cfg(test)]
#[path = "controller_scenarios.rs"]
mod scenarios;
