//! The ServiceGroup controller: runs each group as a Deployment it owns,
//! takes the group's status from that Deployment and the publisher, and
//! holds a finalizer that removes the group's keys from etcd when the group
//! is deleted. [`run`] starts it together with the publisher, which also
//! publishes the Clusters' services ([`clusters`](super::clusters)).
//!
//! A reconcile is a list of named steps: resolve (pure: path and owner) →
//! remove a previous path → apply the Deployment → ask for a publish →
//! write status and events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use super::cluster_sync::ClusterSync;
use super::config::EtcdConfig;
use super::instances::InstanceSync;
use super::paths::Layout;
use super::status::{self, Blocked, Observation};
use super::sync::{self, Command, Reports};
use super::{FIELD_MANAGER, FINALIZER, NAME_LABEL, deployment, projection};
use crate::api::{AppInstance, Cluster, ServiceGroup};
use crate::shared::metrics::Metrics;
use crate::shared::stores::Nodes;

/// What the ServiceGroup controller and the publisher need.
#[derive(Clone)]
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The discovery etcd.
    pub etcd: EtcdConfig,
    /// Where condition changes are reported as events.
    pub recorder: Recorder,
    /// How often every group is published again in full (stale keys planted
    /// by hand disappear within this interval).
    pub resync_interval: Duration,
    /// Transactions in flight while publishing.
    pub write_concurrency: usize,
    /// Only ServiceGroups (and their Deployments and pods) in this
    /// namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Only ServiceGroups (and Clusters, and NodeInstalls) whose labels
    /// match this selector; all when `None`.
    pub selector: Option<String>,
    /// Where reconciles and their failures are counted.
    pub metrics: Metrics,
    /// The NodeInstalls of the Clusters whose services are published: the
    /// operator's shared watch; `None` watches them for this controller
    /// alone (with `selector`).
    pub nodes: Option<Nodes>,
}

impl Context {
    /// A context with an event recorder reporting as `theseus-operator`,
    /// a 60 s resync and 4 concurrent writes.
    pub fn new(client: Client, etcd: EtcdConfig) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            etcd,
            resync_interval: Duration::from_secs(60),
            write_concurrency: 4,
            namespace: None,
            selector: None,
            metrics: Metrics::default(),
            nodes: None,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }
}

/// What went wrong reconciling a ServiceGroup; each variant names the step
/// that failed, and [`ControllerError::reason`] is the metric's reason.
#[derive(Debug, Error)]
pub enum ControllerError {
    /// apply: the group's Deployment could not be applied.
    #[error("cannot apply the Deployment for ServiceGroup {object}: {source}")]
    ApplyDeployment {
        /// `namespace/name`.
        object: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// record: the group's status could not be written.
    #[error("cannot write the status for ServiceGroup {object}: {source}")]
    WriteStatus {
        /// `namespace/name`.
        object: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// remove: the group's keys could not be removed.
    #[error(
        "cannot remove the keys of ServiceGroup {object} from the discovery etcd: {message}; its deletion completes once etcd is reachable"
    )]
    RemoveKeys {
        /// `namespace/name`.
        object: String,
        /// Why.
        message: String,
    },
    /// The publisher loop has stopped.
    #[error("the discovery publisher stopped; restart the operator")]
    PublisherStopped,
    /// The finalizer helper failed (adding or removing the finalizer, or
    /// one of the steps above inside it).
    #[error("finalizer of ServiceGroup failed: {0}")]
    Finalizer(#[source] Box<finalizer::Error<ControllerError>>),
    /// The ServiceGroup CRD is not served.
    #[error(
        "cannot list ServiceGroups ({0}); install the CRDs: theseus crds | kubectl apply --server-side -f -"
    )]
    CrdMissing(#[source] kube::Error),
}

impl ControllerError {
    /// The step that failed, as the metric's reason; a step that failed
    /// inside the finalizer is named by its own variant.
    pub fn reason(&self) -> &'static str {
        match self {
            ControllerError::ApplyDeployment { .. } => "ApplyDeployment",
            ControllerError::WriteStatus { .. } => "WriteStatus",
            ControllerError::RemoveKeys { .. } => "RemoveKeys",
            ControllerError::PublisherStopped => "PublisherStopped",
            ControllerError::CrdMissing(_) => "CrdMissing",
            ControllerError::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                finalizer::Error::AddFinalizer(_) => "AddFinalizer",
                finalizer::Error::RemoveFinalizer(_) => "RemoveFinalizer",
                _ => "Finalizer",
            },
        }
    }
}

struct State {
    client: Client,
    metrics: Metrics,
    recorder: Recorder,
    layout: Layout,
    groups: Store<ServiceGroup>,
    commands: mpsc::Sender<Command>,
    reports: Reports,
    failures: Mutex<HashMap<ObjectRef<ServiceGroup>, u32>>,
}

/// Runs the ServiceGroup controller and the publisher until the future is
/// dropped. Dropping it does not revoke the discovery lease: entries stay
/// until it expires, or until the next operator re-publishes them.
///
/// The future is `Send + 'static`: `tokio::spawn(run(ctx))` works.
pub fn run(ctx: Context) -> BoxFuture<'static, Result<(), ControllerError>> {
    run_controllers(ctx).boxed()
}

async fn run_controllers(ctx: Context) -> Result<(), ControllerError> {
    let groups: Api<ServiceGroup> = ctx.api();
    crd_served(groups.clone()).await?;
    let labelled = crate::shared::scoped(None).labels(NAME_LABEL);
    let scoped = crate::shared::scoped(ctx.selector.as_deref());
    let controller = Controller::new(groups.clone(), scoped.clone())
        .owns(ctx.api::<Deployment>(), labelled.clone())
        .watches(ctx.api::<Pod>(), labelled.clone(), |pod| {
            let name = pod.labels().get(NAME_LABEL)?.clone();
            Some(ObjectRef::new(&name).within(&pod.namespace()?))
        });
    let store = controller.store();
    let same_path = store.clone();
    let (notify, notified) = futures::channel::mpsc::unbounded();
    let controller = controller
        .watches(groups, scoped, move |sg| sharing_path(&same_path, &sg))
        .reconcile_on(notified);
    let (commands, command_rx) = mpsc::channel(64);
    let reports = Reports::default();
    // A watch of NodeInstalls of its own, when not given one, ends with it.
    let own_watch = tokio_util::sync::CancellationToken::new();
    let _own_watch = own_watch.clone().drop_guard();
    let nodes = ctx.nodes.clone().unwrap_or_else(|| {
        let scope = crate::shared::scoped(ctx.selector.as_deref());
        Nodes::watch(ctx.client.clone(), scope, own_watch)
    });
    let inputs = Inputs {
        groups: store.clone(),
        nodes,
        reports: reports.clone(),
        notify,
    };
    let publisher = publisher(&ctx, inputs, command_rx);
    let state = Arc::new(State {
        client: ctx.client.clone(),
        metrics: ctx.metrics.clone(),
        recorder: ctx.recorder.clone(),
        layout: Layout::new(&ctx.etcd.prefix),
        groups: store,
        commands,
        reports,
        failures: Mutex::default(),
    });
    let controller = controller
        .run(reconcile, error_policy, state)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "ServiceGroup reconcile did not complete");
            }
        });
    tokio::select! {
        () = controller => Ok(()),
        () = publisher => Err(ControllerError::PublisherStopped),
    }
}

/// What the publisher shares with the controller.
struct Inputs {
    groups: Store<ServiceGroup>,
    nodes: Nodes,
    reports: Reports,
    notify: futures::channel::mpsc::UnboundedSender<ObjectRef<ServiceGroup>>,
}

/// The publisher, fed by its own reflectors of the groups' pods and of the
/// Clusters, by the NodeInstalls' events and by the controller's commands.
fn publisher(
    ctx: &Context,
    inputs: Inputs,
    commands: mpsc::Receiver<Command>,
) -> BoxFuture<'static, ()> {
    let labelled = crate::shared::scoped(None).labels(NAME_LABEL);
    let (pod_store, pod_writer) = reflector::store();
    let pods =
        reflector::reflector(pod_writer, watcher(ctx.api::<Pod>(), labelled)).default_backoff();
    let scoped = crate::shared::scoped(ctx.selector.as_deref());
    let (cluster_store, cluster_writer) = reflector::store();
    let clusters = reflector::reflector(
        cluster_writer,
        watcher(ctx.api::<Cluster>(), scoped.clone()),
    )
    .default_backoff();
    let recorder = Some(ctx.recorder.clone());
    let cluster_sync = ClusterSync::new(
        cluster_store,
        inputs.nodes.store().clone(),
        recorder.clone(),
    );
    let (instance_store, instance_writer) = reflector::store();
    let instances =
        reflector::reflector(instance_writer, watcher(ctx.api::<AppInstance>(), scoped))
            .default_backoff();
    let instance_sync = InstanceSync::new(instance_store, recorder);
    let events = sync::Events {
        pods: pods.boxed(),
        clusters: clusters.boxed(),
        instances: instances.boxed(),
        nodes: inputs.nodes.subscribe().boxed(),
    };
    sync::run(
        sync::Sync {
            etcd: ctx.etcd.clone(),
            groups: inputs.groups,
            pods: pod_store,
            clusters: cluster_sync,
            instances: instance_sync,
            nodes: inputs.nodes,
            reports: inputs.reports,
            notify: inputs.notify,
            resync_every: ctx.resync_interval,
            concurrency: ctx.write_concurrency,
        },
        commands,
        events,
    )
    .boxed()
}

/// Fails with a hint when the ServiceGroup CRD is not installed. Boxed for
/// the same reason as [`reconcile`].
fn crd_served(groups: Api<ServiceGroup>) -> BoxFuture<'static, Result<(), ControllerError>> {
    async move {
        let params = kube::api::ListParams::default().limit(1);
        groups
            .list(&params)
            .await
            .map_err(ControllerError::CrdMissing)?;
        Ok(())
    }
    .boxed()
}

/// Other ServiceGroups that resolve to the same path as `sg`: a change to
/// one (above all its deletion) may end or start a conflict for them.
fn sharing_path(store: &Store<ServiceGroup>, sg: &ServiceGroup) -> Vec<ObjectRef<ServiceGroup>> {
    let Ok(path) = projection::group_path(sg) else {
        return Vec::new();
    };
    store
        .state()
        .iter()
        .filter(|other| !projection::same_object(other, sg))
        .filter(|other| projection::group_path(other).is_ok_and(|p| p == path))
        .map(|other| ObjectRef::from_obj(other.as_ref()))
        .collect()
}

/// The reconcile, boxed: naming the future's type here lets the compiler
/// prove it `Send` (it cannot through the generic `Controller::run`).
fn reconcile(
    sg: Arc<ServiceGroup>,
    state: Arc<State>,
) -> BoxFuture<'static, Result<Action, ControllerError>> {
    reconcile_group(sg, state).boxed()
}

async fn reconcile_group(
    sg: Arc<ServiceGroup>,
    state: Arc<State>,
) -> Result<Action, ControllerError> {
    let namespace = sg.namespace().unwrap_or_default();
    let api: Api<ServiceGroup> = Api::namespaced(state.client.clone(), &namespace);
    let reference = ObjectRef::from_obj(sg.as_ref());
    state.metrics.reconciled("servicegroup");
    let action = finalizer(&api, FINALIZER, sg, |event| async {
        match event {
            finalizer::Event::Apply(sg) => state.apply(&sg).await,
            finalizer::Event::Cleanup(sg) => state.cleanup(&sg).await,
        }
    })
    .await
    .map_err(|e| ControllerError::Finalizer(Box::new(e)))?;
    lock(&state.failures).remove(&reference);
    Ok(action)
}

fn error_policy(sg: Arc<ServiceGroup>, error: &ControllerError, state: Arc<State>) -> Action {
    let reference = ObjectRef::from_obj(sg.as_ref());
    let mut failures = lock(&state.failures);
    let count = failures.entry(reference).or_insert(0);
    *count += 1;
    let wait = retry_delay(*count);
    state.metrics.failed("servicegroup", error.reason());
    tracing::warn!(group = %describe(&sg), %error, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// Seconds to wait after the `failures`-th failure in a row: 1, 2, 4… up to
/// five minutes.
pub fn retry_delay(failures: u32) -> Duration {
    Duration::from_secs((1u64 << failures.saturating_sub(1).min(9)).min(300))
}

impl State {
    async fn apply(&self, sg: &ServiceGroup) -> Result<Action, ControllerError> {
        let blocked = self.resolve(sg);
        let path = projection::group_path(sg).ok();
        let mut deployment = None;
        if let (None, Some((service, group))) = (&blocked, &path) {
            self.remove_previous_path(sg, service, group).await?;
            deployment = Some(self.apply_deployment(sg, service, group).await?);
            let _ = self
                .commands
                .try_send(Command::Resync(ObjectRef::from_obj(sg)));
        }
        let published = lock(&self.reports)
            .get(&(sg.namespace().unwrap_or_default(), sg.name_any()))
            .cloned();
        let observation = Observation {
            generation: sg.metadata.generation,
            desired: sg.spec.replicas,
            group: path.map(|(_, g)| g),
            blocked: blocked.clone(),
            deployment: deployment.as_ref(),
            published: published.as_ref(),
        };
        self.write_status(sg, &observation).await?;
        Ok(match blocked {
            // Waits for a change; a conflict is also looked at again now
            // and then, in case the owner's deletion went unnoticed.
            Some(Blocked::Conflict { .. }) => Action::requeue(Duration::from_secs(60)),
            Some(Blocked::Invalid(_)) => Action::await_change(),
            None => Action::requeue(Duration::from_secs(300)),
        })
    }

    /// Pure checks: a publishable path, owned by this group.
    fn resolve(&self, sg: &ServiceGroup) -> Option<Blocked> {
        let (service, group) = match projection::group_path(sg) {
            Ok(path) => path,
            Err(error) => return Some(Blocked::Invalid(error.to_string())),
        };
        let all = self.groups.state();
        let owner = projection::owner(all.iter().map(AsRef::as_ref), &service, &group)?;
        (!projection::same_object(owner, sg)).then(|| Blocked::Conflict {
            path: format!("{service}/{group}"),
            owner: describe(owner),
        })
    }

    /// When the labels changed, the keys under the old path go first.
    async fn remove_previous_path(
        &self,
        sg: &ServiceGroup,
        service: &str,
        group: &str,
    ) -> Result<(), ControllerError> {
        let previous = sg.status.as_ref().and_then(|s| s.etcd_path.clone());
        let Some(previous) = previous.filter(|p| *p != self.layout.group(service, group)) else {
            return Ok(());
        };
        let Some((old_service, old_group)) = self.layout.parse_group(&previous) else {
            return Ok(());
        };
        let all = self.groups.state();
        let taken = projection::owner(all.iter().map(AsRef::as_ref), &old_service, &old_group)
            .is_some_and(|o| !projection::same_object(o, sg));
        if taken {
            return Ok(());
        }
        self.remove_keys(sg, old_service, old_group).await
    }

    async fn apply_deployment(
        &self,
        sg: &ServiceGroup,
        service: &str,
        group: &str,
    ) -> Result<Deployment, ControllerError> {
        let desired = deployment::build(sg, service, group);
        let api: Api<Deployment> =
            Api::namespaced(self.client.clone(), &sg.namespace().unwrap_or_default());
        api.patch(
            &sg.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
        .map_err(|source| ControllerError::ApplyDeployment {
            object: describe(sg),
            source,
        })
    }

    async fn write_status(
        &self,
        sg: &ServiceGroup,
        observation: &Observation<'_>,
    ) -> Result<(), ControllerError> {
        let previous = sg.status.clone().unwrap_or_default();
        let (next, transitions) = status::next(&previous, observation, Timestamp::now());
        if next != previous {
            let api: Api<ServiceGroup> =
                Api::namespaced(self.client.clone(), &sg.namespace().unwrap_or_default());
            crate::shared::status::apply_status(&api, &sg.name_any(), &next)
                .await
                .map_err(|source| ControllerError::WriteStatus {
                    object: describe(sg),
                    source,
                })?;
        }
        for t in transitions {
            crate::shared::status::publish_one(
                &self.recorder,
                &sg.object_ref(&()),
                &t.type_,
                &t.status,
                &t.reason,
                &t.message,
            )
            .await;
        }
        Ok(())
    }

    async fn cleanup(&self, sg: &ServiceGroup) -> Result<Action, ControllerError> {
        if let Ok((service, group)) = projection::group_path(sg) {
            let all = self.groups.state();
            let owner = projection::owner(all.iter().map(AsRef::as_ref), &service, &group);
            if owner.is_none_or(|o| projection::same_object(o, sg)) {
                self.remove_keys(sg, service, group).await?;
            }
        }
        Ok(Action::await_change())
    }

    async fn remove_keys(
        &self,
        sg: &ServiceGroup,
        service: String,
        group: String,
    ) -> Result<(), ControllerError> {
        let (done, answer) = oneshot::channel();
        let owner = (sg.namespace().unwrap_or_default(), sg.name_any());
        self.commands
            .send(Command::Remove {
                service,
                group,
                owner,
                done,
            })
            .await
            .map_err(|_| ControllerError::PublisherStopped)?;
        answer
            .await
            .map_err(|_| ControllerError::PublisherStopped)?
            .map_err(|message| ControllerError::RemoveKeys {
                object: describe(sg),
                message,
            })
    }
}

fn describe(sg: &ServiceGroup) -> String {
    format!("{}/{}", sg.namespace().unwrap_or_default(), sg.name_any())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_failing_inside_the_finalizer_is_named_by_its_own_step() {
        let keys = || ControllerError::RemoveKeys {
            object: "ns/web".into(),
            message: "etcd unreachable".into(),
        };
        assert_eq!(keys().reason(), "RemoveKeys");
        let wrapped = ControllerError::Finalizer(Box::new(finalizer::Error::CleanupFailed(keys())));
        assert_eq!(wrapped.reason(), "RemoveKeys");
        let unnamed = ControllerError::Finalizer(Box::new(finalizer::Error::UnnamedObject));
        assert_eq!(unnamed.reason(), "Finalizer");
        assert_eq!(
            ControllerError::PublisherStopped.reason(),
            "PublisherStopped"
        );
    }

    #[test]
    fn retries_back_off_from_one_second_to_five_minutes() {
        let waits: Vec<u64> = [1, 2, 3, 5, 9, 10, 30]
            .iter()
            .map(|n| retry_delay(*n).as_secs())
            .collect();
        assert_eq!(waits, vec![1, 2, 4, 16, 256, 300, 300]);
    }
}
