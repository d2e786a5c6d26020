//! The publisher loop: watches the groups' pods, and on every change —
//! and on start, on a re-list, on a replaced lease and every resync
//! interval — publishes the affected groups. It is the only writer of
//! published groups, so a group's removal (sent by the controller's
//! finalizer) never races with a publish of the same group.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::NAME_LABEL;
use super::config::EtcdConfig;
use super::paths::Layout;
use super::projection;
use super::publisher::{GroupState, PublishError, Publisher};
use super::status::Published;
use super::tree::{Tree, backoff};
use crate::api::ServiceGroup;

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
    pub reports: Reports,
    pub notify: UnboundedSender<ObjectRef<ServiceGroup>>,
    pub resync_every: Duration,
    pub concurrency: usize,
}

struct Loop {
    sync: Sync,
    publisher: Option<Publisher>,
    dirty: HashSet<ObjectRef<ServiceGroup>>,
    full: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

/// Runs until the command channel closes or the future is dropped.
pub(crate) async fn run(
    sync: Sync,
    mut commands: mpsc::Receiver<Command>,
    pod_events: impl Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Send,
) {
    let mut pod_events = std::pin::pin!(pod_events);
    let resync_every = sync.resync_every;
    let mut state = Loop {
        sync,
        publisher: None,
        dirty: HashSet::new(),
        full: true,
        failures: 0,
        retry_at: None,
    };
    // Pods and groups must be listed before the first (full) publish, or
    // it would remove the entries of pods not seen yet.
    let pods_ready = state.sync.pods.clone();
    let groups_ready = state.sync.groups.clone();
    let mut ready = Box::pin(async move {
        let _ = pods_ready.wait_until_ready().await;
        let _ = groups_ready.wait_until_ready().await;
    })
    .fuse();
    let mut is_ready = false;
    let mut resync = tokio::time::interval(resync_every);
    // The lease is renewed by the publisher's own task; this loop only
    // hears when it was replaced, and then publishes everything again.
    let mut lease_changes: Option<watch::Receiver<i64>> = None;
    loop {
        if is_ready {
            state.flush_if_due().await;
        }
        if lease_changes.is_none() {
            lease_changes = state.publisher.as_ref().map(Publisher::lease_changes);
        }
        let retry_at = state.retry_at;
        tokio::select! {
            () = &mut ready, if !is_ready => is_ready = true,
            command = commands.recv() => match command {
                Some(command) => state.handle(command).await,
                None => return,
            },
            Some(event) = pod_events.next() => {
                state.on_pod_event(event);
                while let Some(Some(event)) = pod_events.next().now_or_never() {
                    state.on_pod_event(event);
                }
            }
            _ = resync.tick() => state.full = true,
            Some(()) = lease_replaced(&mut lease_changes) => state.full = true,
            () = sleep_until(retry_at), if retry_at.is_some() => state.retry_at = None,
        }
    }
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
        if (self.dirty.is_empty() && !self.full) || self.retry_at.is_some() {
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
        let (publishable, states): (Vec<&Arc<ServiceGroup>>, Vec<GroupState>) = targets
            .iter()
            .filter(|sg| projection::publishable(sg, all.iter().map(AsRef::as_ref)))
            .filter_map(|sg| {
                let own = pods.get(&key(sg)).map(Vec::as_slice).unwrap_or_default();
                let state = projection::group_state(sg, own.iter().map(AsRef::as_ref)).ok()?;
                Some((sg, state))
            })
            .unzip();
        let result = match (connected, &self.publisher) {
            (Ok(()), Some(publisher)) => publisher.publish(&states).await.map(|_| ()),
            (Err(error), _) => Err(error),
            (Ok(()), None) => Ok(()),
        };
        let layout = Layout::new(&self.sync.etcd.prefix);
        let error = result.as_ref().err().map(ToString::to_string);
        for (sg, state) in publishable.iter().zip(&states) {
            let report = Published {
                path: layout.group(&state.service, &state.group),
                containers: state.containers.len(),
                error: error.clone(),
            };
            self.report(sg, report);
        }
        if result.is_ok() {
            self.dirty.clear();
            self.full = false;
        }
        result
    }

    fn report(&self, sg: &ServiceGroup, report: Published) {
        let previous = lock(&self.sync.reports).insert(key(sg), report.clone());
        if previous.as_ref() != Some(&report) {
            let _ = self.sync.notify.unbounded_send(ObjectRef::from_obj(sg));
        }
    }
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
