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
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams};
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
        // NodeInstall changes wake their pool, heartbeats excepted.
        let woken =
            triggers::pools_to_wake(Api::<NodeInstall>::all(client.clone()), config.clone());
        Controller::new(Api::<NodePool>::all(client), config)
            .reconcile_on(woken)
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

fn kube_err(pool: &NodePool) -> impl Fn(kube::Error) -> Error {
    let pool = pool.name_any();
    move |source| Error::Kube {
        pool: pool.clone(),
        source,
    }
}

/// How a pass ended.
struct Pass {
    action: Action,
    /// Recorded instances left (for a deleted pool: not yet gone).
    remaining: usize,
}

/// One pass towards `replicas` instances (zero for a deleted pool).
async fn pass(pool: &NodePool, pc: &PoolContext, replicas: usize) -> Result<Pass, Error> {
    let name = pool.name_any();
    let client = &pc.ctx.client;
    let status = pool.status.clone().unwrap_or_default();
    let provider = match providers::get(
        pool,
        &pc.ctx.client,
        &pc.config,
        &pc.providers,
        pc.identity.as_ref(),
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            report_failure(client, &pc.recorder, pool, "InvalidProvider", e.to_string()).await;
            // Nothing can have been launched with settings that do not work.
            return Ok(Pass {
                action: Action::await_change(),
                remaining: 0,
            });
        }
    };
    let listed = match provider.list().await {
        Ok(l) => l,
        Err(e) => {
            report_failure(client, &pc.recorder, pool, e.reason(), e.to_string()).await;
            return Err(e.into());
        }
    };
    let nodes = pool_nodes(pool, pc).await?;
    let now = Timestamp::now();
    let recorded = pool_status::recorded(&status, now);
    let first_seen = pool_status::first_seen(&status);
    let drains = drain_pass(pool, pc, &recorded).await?;
    let view = pool_view(pool, pc, &status, replicas);
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
        first_seen: &first_seen,
        now,
    });
    tracing::debug!(nodepool = %name, launch = ?decided.launch, terminate = ?decided.terminate, instances = decided.instances.len(), "planned");
    if !decided.strays.is_empty() {
        info!(nodepool = %name, strays = ?decided.strays, "leaving unrecorded young instances alone");
    }
    if !decided.cancelled.is_empty() {
        info!(nodepool = %name, nodes = ?decided.cancelled, "the pool grew again: removal cancelled");
    }

    // Record the plan (and the launch sequence) before acting on it.
    let mut next = status.clone();
    let changed = pool_status::fill(
        pool,
        &mut next,
        fill(&decided, &decided.instances, decided.next_launch),
        now,
    );
    let mut version = pool.resource_version();
    if next != status || decided.launch.is_some() {
        match pool_status::write(client, pool, &next, version.as_deref()).await {
            Ok(v) => version = v,
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(retry_soon()),
            Err(e) => return Err(kube_err(pool)(e)),
        }
    }
    status::publish(&pc.recorder, &pool.object_ref(&()), &changed).await;
    let staying: BTreeSet<String> = decided
        .instances
        .iter()
        .filter(|i| matches!(i.state, State::Pending | State::Running))
        .filter_map(|i| i.node.clone())
        .collect();
    drain::uncordon(&pc.evictions, &name, &staying).await?;

    let mut remaining = decided.instances.len();
    if !decided.terminate.is_empty() || decided.launch.is_some() {
        let (instances, next_launch) = act(pool, pc, provider.as_ref(), &listed, &decided).await?;
        remaining = instances.len();
        let mut after = next.clone();
        pool_status::fill(
            pool,
            &mut after,
            fill(&decided, &instances, next_launch),
            now,
        );
        match pool_status::write(client, pool, &after, version.as_deref()).await {
            Ok(_) => tracing::debug!(nodepool = %name, next_launch, remaining, "recorded"),
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(retry_soon()),
            Err(e) => return Err(kube_err(pool)(e)),
        }
    }
    Ok(Pass {
        action: Action::requeue(decided.requeue_after),
        remaining,
    })
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

/// Another writer changed the pool meanwhile: plan again from what it wrote.
fn retry_soon() -> Pass {
    Pass {
        action: Action::requeue(Duration::from_millis(200)),
        remaining: usize::MAX,
    }
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
                let reason = match e.reason() {
                    "ProviderTimeout" => "ProviderTimeout",
                    _ => "LaunchFailed",
                };
                report_failure(&pc.ctx.client, &pc.recorder, pool, reason, e.to_string()).await;
                return Err(e.into());
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
    let listed = provider.list().await?;
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
    provider.terminate(&victims).await?;
    let api: Api<NodeInstall> = Api::all(pc.ctx.client.clone());
    let lp = ListParams::default().labels(&format!("{POOL_TAG}={name}"));
    for ni in api.list(&lp).await.map_err(kube_err(pool))? {
        let _ = api.delete(&ni.name_any(), &DeleteParams::default()).await;
    }
    providers::forget(pool, &pc.providers);
    info!(nodepool = %name, orphans = victims.len(), "pool deleted: its instances drained and terminated");
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
