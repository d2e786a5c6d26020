//! The NodePool controller. Each pass: list the pool's instances from its
//! provider, read its NodeInstalls, drain the instances being removed, plan
//! (pure), record the plan in status (with the pool's resourceVersion), then
//! terminate, launch, and record the result.
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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::plan::{self, DrainOutcome, Recorded, State};
use super::provider::{Instance, POOL_TAG, Provider};
use super::{drain, providers};
use crate::api::conditions::{Observed, types};
use crate::api::{NodeInstall, NodePool, NodePoolStatus, PoolInstance};
use crate::operator::{Context, status};
use crate::pkg::failpoint;

/// The controller's name in metrics.
const NAME: &str = "nodepool";
/// The finalizer that terminates a deleted pool's instances.
pub const FINALIZER: &str = "theseus.dev/nodepool-instances";
/// The failpoint between RunInstances and the status write that records it.
pub const AFTER_RUN_INSTANCES: &str = "nodepool-after-run-instances";

/// Errors of the NodePool controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused a read or write.
    #[error("NodePool {pool}: {source}")]
    Kube {
        /// The pool.
        pool: String,
        /// The cause.
        source: kube::Error,
    },
    /// The provider failed.
    #[error(transparent)]
    Provider(#[from] super::provider::Error),
    /// The pool's provider settings cannot be used.
    #[error(transparent)]
    Settings(#[from] providers::Error),
    /// A drain pass failed.
    #[error(transparent)]
    Drain(#[from] drain::Error),
    /// Adding or removing the finalizer failed.
    #[error("NodePool finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "Kube",
            Error::Provider(_) => "Provider",
            Error::Settings(_) => "Settings",
            Error::Drain(_) => "Drain",
            Error::Finalizer(_) => "Finalizer",
        }
    }
}

struct PoolContext {
    ctx: Context,
    recorder: Recorder,
    providers: providers::Cache,
    /// A client that does not retry 429: a refused eviction (a
    /// PodDisruptionBudget) must come back at once, not after minutes.
    evictions: kube::Client,
}

/// A client like the operator's, without kube's retries of 429/503/504.
async fn eviction_client(fallback: &kube::Client) -> kube::Client {
    match kube::Config::infer().await {
        Ok(mut config) => {
            config.default_retry = false;
            kube::Client::try_from(config).unwrap_or_else(|_| fallback.clone())
        }
        Err(e) => {
            warn!(error = %e, "cannot build the eviction client; evictions blocked by a PodDisruptionBudget will be retried by kube");
            fallback.clone()
        }
    }
}

/// Runs the controller until `stop` is cancelled.
pub fn run(ctx: Context, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let client = ctx.client.clone();
        let config = ctx.watch_config();
        let recorder = Recorder::new(client.clone(), ctx.reporter.clone());
        let evictions = eviction_client(&client).await;
        let shared = Arc::new(PoolContext {
            ctx,
            recorder,
            providers: Arc::new(Mutex::new(HashMap::new())),
            evictions,
        });
        Controller::new(Api::<NodePool>::all(client.clone()), config.clone())
            .watches(Api::<NodeInstall>::all(client), config, |ni| {
                ni.labels()
                    .get(POOL_TAG)
                    .map(|p| ObjectRef::<NodePool>::new(p))
            })
            .graceful_shutdown_on(async move { stop.cancelled().await })
            .run(reconcile, error_policy, shared)
            .for_each(|_| async {})
            .await;
    })
}

fn error_policy(pool: Arc<NodePool>, err: &Error, pc: Arc<PoolContext>) -> Action {
    warn!(nodepool = %pool.name_any(), error = %err, "reconcile failed");
    pc.ctx.metrics.failed(NAME, err.reason());
    Action::requeue(Duration::from_secs(3))
}

async fn reconcile(pool: Arc<NodePool>, pc: Arc<PoolContext>) -> Result<Action, Error> {
    pc.ctx.metrics.reconciled(NAME);
    let api: Api<NodePool> = Api::all(pc.ctx.client.clone());
    finalizer(&api, FINALIZER, pool, |event| async {
        match event {
            Event::Apply(pool) => apply(&pool, &pc).await,
            Event::Cleanup(pool) => cleanup(&pool, &pc).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn kube_err(pool: &NodePool) -> impl Fn(kube::Error) -> Error {
    let pool = pool.name_any();
    move |source| Error::Kube {
        pool: pool.clone(),
        source,
    }
}

async fn apply(pool: &NodePool, pc: &PoolContext) -> Result<Action, Error> {
    let name = pool.name_any();
    let provider = match providers::get(pool, &pc.ctx, &pc.providers).await {
        Ok(p) => p,
        Err(e) => {
            report_failure(pool, pc, "InvalidProvider", e.to_string()).await;
            return Ok(Action::await_change());
        }
    };
    let listed = match provider.list().await {
        Ok(l) => l,
        Err(e) => {
            report_failure(pool, pc, "ProviderError", e.to_string()).await;
            return Err(e.into());
        }
    };
    let nodes = pool_nodes(pool, pc).await?;
    let status = pool.status.clone().unwrap_or_default();
    let recorded = recorded(&status);
    let drains = drain_pass(pool, pc, &recorded).await?;
    let now = Timestamp::now();
    let view = pool_view(pool, pc, &status);
    let listed_view: Vec<plan::Listed> = listed
        .iter()
        .map(|i| plan::Listed {
            id: i.id.clone(),
            launched: i.launched,
            launch_seq: i.launch_seq(),
        })
        .collect();
    let decided = plan::plan(&plan::Input {
        pool: &view,
        recorded: &recorded,
        listed: &listed_view,
        nodes: &nodes,
        drains: &drains,
        previous: &status.conditions,
        now,
    });
    tracing::debug!(
        nodepool = %name,
        launch = ?decided.launch,
        terminate = ?decided.terminate,
        instances = decided.instances.len(),
        "planned"
    );
    if !decided.strays.is_empty() {
        info!(nodepool = %name, strays = ?decided.strays, "leaving unrecorded young instances alone");
    }

    // Record the plan (and the launch sequence) before acting on it.
    let mut next = status.clone();
    let changed = fill_status(
        pool,
        &mut next,
        &decided.instances,
        decided.next_launch,
        decided.ready,
        decided.conditions.clone(),
        now,
    );
    let mut version = pool.resource_version();
    if next != status || decided.launch.is_some() {
        match write_status(pool, pc, &next, version.as_deref()).await {
            Ok(v) => version = v,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            Err(e) => return Err(kube_err(pool)(e)),
        }
    }
    status::publish(&pc.recorder, &pool.object_ref(&()), &changed).await;

    if !decided.terminate.is_empty() || decided.launch.is_some() {
        let (instances, next_launch) = act(pool, pc, provider.as_ref(), &listed, &decided).await?;
        let mut after = next.clone();
        fill_status(
            pool,
            &mut after,
            &instances,
            next_launch,
            decided.ready,
            decided.conditions.clone(),
            now,
        );
        match write_status(pool, pc, &after, version.as_deref()).await {
            Ok(_) => {
                tracing::debug!(nodepool = %name, next_launch, instances = instances.len(), "recorded")
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            Err(e) => return Err(kube_err(pool)(e)),
        }
    }
    Ok(Action::requeue(decided.requeue_after))
}

/// Carries out the plan's terminations and launch (already recorded);
/// returns the instances and the next launch sequence to record after.
async fn act(
    pool: &NodePool,
    pc: &PoolContext,
    provider: &dyn Provider,
    listed: &[Instance],
    decided: &plan::Plan,
) -> Result<(Vec<Recorded>, i64), Error> {
    let mut instances = decided.instances.clone();
    let mut next_launch = decided.next_launch;
    if !decided.terminate.is_empty() {
        terminate(pool, pc, provider, listed, decided).await?;
        instances.retain(|i| i.state != State::Terminating);
    }
    if let Some(launch) = &decided.launch {
        let launched = match provider.launch(launch.first_seq, launch.count).await {
            Ok(l) => l,
            Err(e) => {
                report_failure(pool, pc, "LaunchFailed", e.to_string()).await;
                return Err(e.into());
            }
        };
        failpoint::hit(AFTER_RUN_INSTANCES);
        info!(nodepool = %pool.name_any(), seq = launch.first_seq, ids = ?launched.iter().map(|i| &i.id).collect::<Vec<_>>(), "launched");
        instances.extend(launched.into_iter().map(|i| Recorded {
            id: i.id,
            node: None,
            state: State::Pending,
            launched: i.launched,
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
    provider.terminate(&victims).await?;
    info!(nodepool = %pool.name_any(), ids = ?ids, "terminated");
    let api: Api<NodeInstall> = Api::all(pc.ctx.client.clone());
    for node in &decided.remove_nodes {
        match api.delete(node, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(kube_err(pool)(e)),
        }
    }
    Ok(())
}

async fn cleanup(pool: &NodePool, pc: &PoolContext) -> Result<Action, Error> {
    let name = pool.name_any();
    let Ok(provider) = providers::get(pool, &pc.ctx, &pc.providers).await else {
        // Nothing can have been launched with settings that do not work.
        return Ok(Action::await_change());
    };
    let listed = provider.list().await?;
    let recorded: BTreeSet<String> = recorded(&pool.status.clone().unwrap_or_default())
        .into_iter()
        .map(|r| r.id)
        .collect();
    let grace = Duration::from_secs(pc.ctx.args.instance_grace_seconds);
    let now = Timestamp::now();
    let (victims, young): (Vec<Instance>, Vec<Instance>) = listed.into_iter().partition(|i| {
        recorded.contains(&i.id)
            || now.duration_since(i.launched).as_secs() >= grace.as_secs() as i64
    });
    if !young.is_empty() {
        warn!(nodepool = %name, ids = ?young.iter().map(|i| &i.id).collect::<Vec<_>>(), "pool deleted: leaving unrecorded young instances alone");
    }
    provider.terminate(&victims).await?;
    let api: Api<NodeInstall> = Api::all(pc.ctx.client.clone());
    let lp = ListParams::default().labels(&format!("{POOL_TAG}={name}"));
    for ni in api.list(&lp).await.map_err(kube_err(pool))? {
        let _ = api.delete(&ni.name_any(), &DeleteParams::default()).await;
    }
    providers::forget(pool, &pc.providers);
    info!(nodepool = %name, terminated = victims.len(), "pool deleted: instances terminated");
    Ok(Action::await_change())
}

async fn pool_nodes(pool: &NodePool, pc: &PoolContext) -> Result<Vec<plan::NodeView>, Error> {
    let lp = ListParams::default().labels(&format!("{POOL_TAG}={}", pool.name_any()));
    let list = Api::<NodeInstall>::all(pc.ctx.client.clone())
        .list(&lp)
        .await
        .map_err(kube_err(pool))?;
    Ok(list
        .items
        .iter()
        .map(|n| {
            let status = n.status.clone().unwrap_or_default();
            plan::NodeView {
                name: n.name_any(),
                instance_id: status.instance_id,
                heartbeat: status.heartbeat.map(|t| t.0),
                remove_requested: n.annotations().contains_key(super::REMOVE_ANNOTATION),
            }
        })
        .collect())
}

async fn drain_pass(
    pool: &NodePool,
    pc: &PoolContext,
    recorded: &[Recorded],
) -> Result<BTreeMap<String, DrainOutcome>, Error> {
    let mut out = BTreeMap::new();
    for r in recorded.iter().filter(|r| r.state == State::Draining) {
        let outcome = match &r.node {
            Some(node) => drain::drain(&pc.evictions, &pool.name_any(), node).await?,
            None => DrainOutcome::Done,
        };
        out.insert(r.id.clone(), outcome);
    }
    Ok(out)
}

fn pool_view(pool: &NodePool, pc: &PoolContext, status: &NodePoolStatus) -> plan::PoolView {
    let secs = |s: i32| Duration::from_secs(s.max(0) as u64);
    plan::PoolView {
        replicas: pool.spec.replicas.max(0) as usize,
        order: pool.spec.scale_down_order,
        drain_timeout: secs(pool.spec.drain_timeout_seconds),
        drain_policy: pool.spec.drain_timeout_policy,
        join_timeout: secs(pool.spec.join_timeout_seconds),
        grace: Duration::from_secs(pc.ctx.args.instance_grace_seconds),
        stale_after: Duration::from_secs(pc.ctx.args.stale_after_seconds),
        next_launch: status.next_launch,
    }
}

fn recorded(status: &NodePoolStatus) -> Vec<Recorded> {
    status
        .instances
        .iter()
        .map(|i| Recorded {
            id: i.id.clone(),
            node: i.node.clone(),
            state: State::parse(i.state.as_deref()),
            launched: i
                .launched
                .as_ref()
                .map(|t| t.0)
                .unwrap_or_else(Timestamp::now),
            drain_started: i.drain_started.as_ref().map(|t| t.0),
        })
        .collect()
}

/// Fills `status` from the plan; returns the conditions whose status changed.
fn fill_status(
    pool: &NodePool,
    status: &mut NodePoolStatus,
    instances: &[Recorded],
    next_launch: i64,
    ready: usize,
    observed: Vec<Observed<'static>>,
    now: Timestamp,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status.observed_generation = pool.metadata.generation;
    status.selector = Some(format!("{POOL_TAG}={}", pool.name_any()));
    status.next_launch = next_launch;
    status.replicas = instances
        .iter()
        .filter(|i| i.state != State::Terminating)
        .count() as i32;
    status.ready_replicas = ready as i32;
    status.instances = instances
        .iter()
        .map(|i| PoolInstance {
            id: i.id.clone(),
            node: i.node.clone(),
            state: Some(i.state.as_str().into()),
            launched: Some(Time(i.launched)),
            drain_started: i.drain_started.map(Time),
        })
        .collect();
    status::merge(
        &mut status.conditions,
        observed,
        pool.metadata.generation,
        now,
    )
}

/// Writes status with the given resourceVersion as a precondition; returns
/// the new resourceVersion.
async fn write_status(
    pool: &NodePool,
    pc: &PoolContext,
    status: &NodePoolStatus,
    version: Option<&str>,
) -> Result<Option<String>, kube::Error> {
    let mut status_json = serde_json::to_value(status).unwrap_or_default();
    // An empty list is left out when serialised; a merge patch must say it.
    status_json["instances"] = json!(status.instances);
    let patch = json!({ "metadata": { "resourceVersion": version }, "status": status_json });
    let written = Api::<NodePool>::all(pc.ctx.client.clone())
        .patch_status(
            &pool.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(written.resource_version())
}

/// Best effort: a Degraded condition that says what failed.
async fn report_failure(pool: &NodePool, pc: &PoolContext, reason: &'static str, message: String) {
    let mut status = pool.status.clone().unwrap_or_default();
    let changed = status::merge(
        &mut status.conditions,
        vec![Observed::new(types::DEGRADED, true, reason, message)],
        pool.metadata.generation,
        Timestamp::now(),
    );
    if changed.is_empty() && pool.status.as_ref() == Some(&status) {
        return;
    }
    let patch = json!({ "status": { "conditions": status.conditions } });
    let api = Api::<NodePool>::all(pc.ctx.client.clone());
    if let Err(e) = api
        .patch_status(
            &pool.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        warn!(nodepool = %pool.name_any(), error = %e, "cannot report a failure in status");
    }
    status::publish(&pc.recorder, &pool.object_ref(&()), &changed).await;
}
