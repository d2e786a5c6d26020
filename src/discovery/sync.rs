//! The publisher loop: watches the groups' pods, the Clusters and their
//! NodeInstalls, and on every change — and on start, on a re-list, on a
//! replaced lease and every resync interval — publishes the affected
//! groups (a ServiceGroup's, a cluster's service, see
//! [`clusters`](super::clusters), or a running application instance, see
//! [`instances`](super::instances)). It is the only writer of published
//! groups, so a group's removal (sent by the controller's finalizer) never
//! races with a publish of the same group.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::NAME_LABEL;
use super::cluster_sync::service_group_paths;
use super::cluster_sync::{ClusterSync, Work};
use super::clusters::GroupPath;
use super::config::EtcdConfig;
use super::instances::InstanceSync;
use super::paths::Layout;
use super::projection;
use super::publisher::{GroupState, PublishError, Publisher};
use super::status::Published;
use super::tree::{Tree, backoff};
use crate::api::{AppInstance, Cluster, NodeInstall, ServiceGroup};
use crate::shared::stores::Nodes;

/// What the publisher did last per ServiceGroup (`namespace`, `name`).
pub(crate) type Reports = Arc<Mutex<HashMap<(String, String), Published>>>;

/// A request from the controller.
pub(crate) enum Command {
    /// Publish this group now.
    Resync(ObjectRef<ServiceGroup>),
    /// Remove a group's keys, then answer.
    Remove {
        /// The service.
        service: String,
        /// The encoded group.
        group: String,
        /// The ServiceGroup whose report to drop.
        owner: (String, String),
        /// The answer: `Err` with a message when etcd failed.
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// The publisher loop's inputs.
pub(crate) struct Sync {
    pub etcd: EtcdConfig,
    pub groups: Store<ServiceGroup>,
    pub pods: Store<Pod>,
    /// The clusters' part of the loop.
    pub clusters: ClusterSync,
    /// The application instances' part of the loop.
    pub instances: InstanceSync,
    /// The NodeInstalls (for their first full list).
    pub nodes: Nodes,
    pub reports: Reports,
    pub notify: UnboundedSender<ObjectRef<ServiceGroup>>,
    pub resync_every: Duration,
    pub concurrency: usize,
}

/// The publisher loop's event streams.
pub(crate) struct Events {
    /// The groups' pods.
    pub pods: BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>>,
    /// The Clusters.
    pub clusters: BoxStream<'static, Result<watcher::Event<Cluster>, watcher::Error>>,
    /// The AppInstances.
    pub instances: BoxStream<'static, Result<watcher::Event<AppInstance>, watcher::Error>>,
    /// The NodeInstalls.
    pub nodes: BoxStream<'static, watcher::Event<NodeInstall>>,
}

/// A part of the loop whose inputs are listed: it may publish.
enum Gate {
    /// Pods and ServiceGroups.
    Groups,
    /// Clusters and NodeInstalls (opened after [`Gate::Groups`]).
    Clusters,
    /// AppInstances (opened after [`Gate::Clusters`], whose paths win).
    Instances,
}

struct Loop {
    sync: Sync,
    publisher: Option<Publisher>,
    dirty: HashSet<ObjectRef<ServiceGroup>>,
    full: bool,
    failures: u32,
    retry_at: Option<Instant>,
    groups_open: bool,
    clusters_open: bool,
    instances_open: bool,
}

/// Runs until the command channel closes or the future is dropped.
pub(crate) async fn run(sync: Sync, mut commands: mpsc::Receiver<Command>, events: Events) {
    let Events {
        mut pods,
        mut clusters,
        mut instances,
        mut nodes,
    } = events;
    let resync_every = sync.resync_every;
    let mut gates = gates(&sync);
    let mut state = Loop {
        sync,
        publisher: None,
        dirty: HashSet::new(),
        full: true,
        failures: 0,
        retry_at: None,
        groups_open: false,
        clusters_open: false,
        instances_open: false,
    };
    let mut resync = tokio::time::interval(resync_every);
    // The lease is renewed by the publisher's own task; this loop only
    // hears when it was replaced, and then publishes everything again.
    let mut lease_changes: Option<watch::Receiver<i64>> = None;
    loop {
        state.flush_if_due().await;
        if lease_changes.is_none() {
            lease_changes = state.publisher.as_ref().map(Publisher::lease_changes);
        }
        let retry_at = state.retry_at;
        let all_open = state.instances_open;
        tokio::select! {
            Some(gate) = gates.next(), if !all_open => state.open(gate),
            command = commands.recv() => match command {
                Some(command) => state.handle(command).await,
                None => return,
            },
            Some(event) = pods.next() => {
                state.on_pod_event(event);
                while let Some(Some(event)) = pods.next().now_or_never() {
                    state.on_pod_event(event);
                }
            }
            Some(event) = clusters.next() => {
                state.on_cluster_event(event);
                while let Some(Some(event)) = clusters.next().now_or_never() {
                    state.on_cluster_event(event);
                }
            }
            Some(event) = instances.next() => {
                state.on_instance_event(event);
                while let Some(Some(event)) = instances.next().now_or_never() {
                    state.on_instance_event(event);
                }
            }
            Some(event) = nodes.next() => {
                state.on_node_event(&event);
                while let Some(Some(event)) = nodes.next().now_or_never() {
                    state.on_node_event(&event);
                }
            }
            _ = resync.tick() => state.full = true,
            Some(()) = lease_replaced(&mut lease_changes) => state.full = true,
            () = sleep_until(retry_at), if retry_at.is_some() => state.retry_at = None,
        }
    }
}

/// The gates, in order: pods and groups must be listed before the first
/// (full) publish, or it would remove the entries of pods not seen yet;
/// clusters and their NodeInstalls before their groups are, and instances
/// before theirs. One after
/// the other (kube's `wait_until_ready` wakes one waiter of a store only),
/// so clusters that cannot be listed never hold ServiceGroups back.
fn gates(sync: &Sync) -> BoxStream<'static, Gate> {
    let (pods, groups) = (sync.pods.clone(), sync.groups.clone());
    let (clusters, nodes) = (sync.clusters.store(), sync.nodes.clone());
    let listed = async move {
        let _ = pods.wait_until_ready().await;
        let _ = groups.wait_until_ready().await;
        Gate::Groups
    };
    let clusters_listed = async move {
        let _ = clusters.wait_until_ready().await;
        if nodes.ready("discovery").await.is_err() {
            std::future::pending::<()>().await;
        }
        Gate::Clusters
    };
    let instances = sync.instances.store();
    let instances_listed = async move {
        let _ = instances.wait_until_ready().await;
        Gate::Instances
    };
    futures::stream::once(listed)
        .chain(futures::stream::once(clusters_listed))
        .chain(futures::stream::once(instances_listed))
        .boxed()
}

/// Resolves when the lease was replaced; never without a publisher.
async fn lease_replaced(changes: &mut Option<watch::Receiver<i64>>) -> Option<()> {
    match changes {
        Some(changes) => changes.changed().await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

impl Loop {
    fn open(&mut self, gate: Gate) {
        match gate {
            Gate::Groups => self.groups_open = true,
            Gate::Clusters => self.clusters_open = true,
            Gate::Instances => self.instances_open = true,
        }
        self.full = true;
    }

    fn on_cluster_event(&mut self, event: Result<watcher::Event<Cluster>, watcher::Error>) {
        match event {
            Ok(event) => self.full |= self.sync.clusters.on_cluster(&event),
            Err(error) => tracing::warn!(%error, "watching Clusters failed; retrying"),
        }
    }

    fn on_instance_event(&mut self, event: Result<watcher::Event<AppInstance>, watcher::Error>) {
        match event {
            Ok(event) => self.full |= self.sync.instances.on_instance(&event),
            Err(error) => tracing::warn!(%error, "watching AppInstances failed; retrying"),
        }
    }

    fn on_node_event(&mut self, event: &watcher::Event<NodeInstall>) {
        self.full |= self.sync.clusters.on_node(event);
    }

    fn on_pod_event(&mut self, event: Result<watcher::Event<Pod>, watcher::Error>) {
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::Delete(pod)) => {
                if let Some(group) = group_of(&pod) {
                    self.dirty.insert(group);
                }
            }
            // A re-list may hide deletions: publish everything again.
            Ok(watcher::Event::InitDone) => self.full = true,
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(error) => tracing::warn!(%error, "watching the groups' pods failed; retrying"),
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Resync(group) => {
                self.dirty.insert(group);
            }
            Command::Remove {
                service,
                group,
                owner,
                done,
            } => {
                let result = self.remove(&service, &group).await;
                if result.is_ok() {
                    lock(&self.sync.reports).remove(&owner);
                    self.sync.clusters.path_freed(&group);
                    self.sync.instances.path_freed(&service, &group);
                }
                let _ = done.send(result.map_err(|e| e.to_string()));
            }
        }
    }

    async fn remove(&mut self, service: &str, group: &str) -> Result<(), PublishError> {
        let publisher = self.publisher().await?;
        let removed = publisher.remove(service, group).await?;
        tracing::info!(
            service,
            group,
            removed,
            "removed a group from the discovery tree"
        );
        Ok(())
    }

    async fn publisher(&mut self) -> Result<&mut Publisher, PublishError> {
        let publisher = match self.publisher.take() {
            Some(publisher) => publisher,
            None => {
                let tree = Tree::connect(&self.sync.etcd).await?;
                let publisher = Publisher::new(tree, self.sync.concurrency).await?;
                tracing::info!(
                    lease = publisher.lease(),
                    "publishing to the discovery etcd"
                );
                self.full = true;
                publisher
            }
        };
        Ok(self.publisher.insert(publisher))
    }

    async fn flush_if_due(&mut self) {
        let clusters_dirty = self.clusters_open && self.sync.clusters.is_dirty();
        let instances_dirty = self.instances_open && self.sync.instances.is_dirty();
        let idle = self.dirty.is_empty() && !self.full && !clusters_dirty && !instances_dirty;
        if !self.groups_open || idle || self.retry_at.is_some() {
            return;
        }
        match self.flush().await {
            Ok(()) => self.failures = 0,
            Err(error) => {
                let wait = backoff(self.failures.min(8));
                self.failures += 1;
                tracing::warn!(%error, retry_in = ?wait, "publishing failed");
                self.retry_at = Some(Instant::now() + wait);
            }
        }
    }

    async fn flush(&mut self) -> Result<(), PublishError> {
        // Connecting may replace the lease, which makes this a full publish.
        let connected = self.publisher().await.map(|_| ());
        let (publishable, mut states) = self.group_states();
        let groups = states.len();
        let all_groups = self.sync.groups.state();
        let clusters = self
            .clusters_open
            .then(|| self.sync.clusters.work(self.full, &all_groups));
        states.extend(clusters.iter().flat_map(|w| w.publish.iter().cloned()));
        let instances = self.instances_open.then(|| {
            let mut taken: BTreeMap<_, _> = service_group_paths(&all_groups)
                .into_iter()
                .map(|(path, owner)| (path, format!("ServiceGroup {owner}")))
                .collect();
            taken.extend(clusters.iter().flat_map(Work::owned));
            self.sync.instances.work(self.full, &taken)
        });
        states.extend(instances.iter().flat_map(|w| w.publish.iter().cloned()));
        let removes: Vec<GroupPath> = clusters
            .iter()
            .flat_map(|w| w.remove.iter())
            .chain(instances.iter().flat_map(|w| w.remove.iter()))
            .cloned()
            .collect();
        let result = match (connected, &self.publisher) {
            (Ok(()), Some(publisher)) => write(publisher, &states, &removes).await,
            (Err(error), _) => Err(error),
            (Ok(()), None) => Ok(()),
        };
        self.report_all(&publishable, &states[..groups], &result);
        if let Some(work) = clusters {
            self.sync.clusters.warn(&work).await;
            if result.is_ok() {
                self.sync.clusters.done(work);
            }
        }
        if let Some(work) = instances {
            self.sync.instances.warn(&work).await;
            if result.is_ok() {
                self.sync.instances.done(work);
            }
        }
        if result.is_ok() {
            self.dirty.clear();
            self.full = false;
        }
        result
    }

    /// The ServiceGroups to publish (all of them when full, else the
    /// changed ones) and what each should hold.
    fn group_states(&self) -> (Vec<Arc<ServiceGroup>>, Vec<GroupState>) {
        let all = self.sync.groups.state();
        let targets: Vec<Arc<ServiceGroup>> = if self.full {
            all.clone()
        } else {
            self.dirty
                .iter()
                .filter_map(|r| self.sync.groups.get(r))
                .collect()
        };
        let pods = pods_by_group(&self.sync.pods);
        targets
            .into_iter()
            .filter(|sg| projection::publishable(sg, all.iter().map(AsRef::as_ref)))
            .filter_map(|sg| {
                let own = pods.get(&key(&sg)).map(Vec::as_slice).unwrap_or_default();
                let state = projection::group_state(&sg, own.iter().map(AsRef::as_ref)).ok()?;
                Some((sg, state))
            })
            .unzip()
    }

    /// Tells each published ServiceGroup how its publish went.
    fn report_all(
        &self,
        publishable: &[Arc<ServiceGroup>],
        states: &[GroupState],
        result: &Result<(), PublishError>,
    ) {
        let layout = Layout::new(&self.sync.etcd.prefix);
        let error = result.as_ref().err().map(ToString::to_string);
        for (sg, state) in publishable.iter().zip(states) {
            let report = Published {
                path: layout.group(&state.service, &state.group),
                containers: state.containers.len(),
                error: error.clone(),
            };
            self.report(sg, report);
        }
    }

    fn report(&self, sg: &ServiceGroup, report: Published) {
        let previous = lock(&self.sync.reports).insert(key(sg), report.clone());
        if previous.as_ref() != Some(&report) {
            let _ = self.sync.notify.unbounded_send(ObjectRef::from_obj(sg));
        }
    }
}

/// Publishes `states`, then removes the groups clusters and instances no
/// longer have.
async fn write(
    publisher: &Publisher,
    states: &[GroupState],
    removes: &[GroupPath],
) -> Result<(), PublishError> {
    publisher.publish(states).await?;
    for (service, group) in removes {
        let removed = publisher.remove(service, group).await?;
        if removed > 0 {
            tracing::info!(
                service,
                group,
                removed,
                "removed a group no cluster or instance publishes from the discovery tree"
            );
        }
    }
    Ok(())
}

fn key(sg: &ServiceGroup) -> (String, String) {
    (sg.namespace().unwrap_or_default(), sg.name_any())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The ServiceGroup a pod belongs to, from its label.
fn group_of(pod: &Pod) -> Option<ObjectRef<ServiceGroup>> {
    let name = pod.labels().get(NAME_LABEL)?;
    Some(ObjectRef::new(name).within(&pod.namespace()?))
}

fn pods_by_group(pods: &Store<Pod>) -> HashMap<(String, String), Vec<Arc<Pod>>> {
    let mut out: HashMap<(String, String), Vec<Arc<Pod>>> = HashMap::new();
    for pod in pods.state() {
        if let (Some(ns), Some(name)) = (pod.namespace(), pod.labels().get(NAME_LABEL)) {
            out.entry((ns, name.clone())).or_default().push(pod.clone());
        }
    }
    out
}
