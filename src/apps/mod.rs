//! The application controllers: ClusterCapability (measured by the
//! agents, judged here), Role, AppPackage (stages) and AppInstance.
//!
//! Work on the shared filesystem is done by an agent on one node that
//! offers the capabilities the object requires, through a storage task in
//! that node's NodeInstall (`spec.storage`, one field manager per object):
//! the operator runs as a Deployment and mounts no shared filesystem, and
//! the agents are the ones whose view of it is measured.

pub mod capability;
pub mod instance;
pub mod package;
pub mod role;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::api::{AppInstance, AppPackage, ClusterCapability, NodeInstall, Role};
use crate::shared::Shared;

/// The capability controller's name in metrics.
pub const CAPABILITY: &str = "clustercapability";
/// The role controller's name in metrics.
pub const ROLE: &str = "role";
/// The application controller's name in metrics.
pub const PACKAGE: &str = "apppackage";
/// The instance controller's name in metrics.
pub const INSTANCE: &str = "appinstance";

/// Every ClusterCapability this operator manages.
pub async fn capabilities(cx: &Context) -> Result<Vec<Arc<ClusterCapability>>, Error> {
    let list = Api::<ClusterCapability>::all(cx.shared.client.clone())
        .list(&list_params(&cx.shared))
        .await
        .map_err(|source| Error::Read {
            object: "capabilities".into(),
            what: "the ClusterCapabilities".into(),
            source,
        })?;
    Ok(list.items.into_iter().map(Arc::new).collect())
}

/// List parameters for the objects this operator manages.
pub fn list_params(shared: &Shared) -> kube::api::ListParams {
    let params = kube::api::ListParams::default();
    match &shared.selector {
        Some(s) => params.labels(s),
        None => params,
    }
}

/// The controllers' configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// A node whose heartbeat is older counts as silent.
    pub stale_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            stale_after: Duration::from_secs(60),
        }
    }
}

/// Errors of a pass, each naming its object and step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing a node's probes or storage tasks failed.
    #[error("cannot write the {field} of NodeInstall {node}: {source}")]
    WriteNode {
        /// The node.
        node: String,
        /// `probes` or `storage`.
        field: &'static str,
        /// The cause.
        source: kube::Error,
    },
    /// Reading an object failed.
    #[error("{object}: cannot read {what}: {source}")]
    Read {
        /// The object reconciled.
        object: String,
        /// What was read.
        what: String,
        /// The cause.
        source: kube::Error,
    },
    /// Writing an object failed.
    #[error("{object}: cannot {action}: {source}")]
    Write {
        /// The object reconciled.
        object: String,
        /// What was written.
        action: String,
        /// The cause.
        source: kube::Error,
    },
    /// Its tenant's reservation could not be read or written.
    #[error("{object}: {source}")]
    Quota {
        /// The object reconciled.
        object: String,
        /// The cause.
        source: crate::quota::ReserveError,
    },
    /// The status could not be written.
    #[error("{object}: cannot write its status: {source}")]
    WriteStatus {
        /// The object.
        object: String,
        /// The cause.
        source: kube::Error,
    },
}

impl Error {
    /// The step that failed, as the metric's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::WriteNode { .. } => "WriteNode",
            Error::Read { .. } => "Read",
            Error::Write { .. } => "Write",
            Error::WriteStatus { .. } => "WriteStatus",
            Error::Quota { .. } => "Quota",
        }
    }
}

/// What every application controller is given.
pub struct Context {
    /// The shared handle.
    pub shared: Shared,
    /// Events.
    pub recorder: Recorder,
    /// The configuration.
    pub config: Config,
}

/// Whether `node`'s agent has not reported for `stale_after`.
pub fn silent(node: &NodeInstall, stale_after: Duration, now: Timestamp) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.heartbeat.as_ref())
        .is_none_or(|h| now.duration_since(h.0).as_secs() > stale_after.as_secs() as i64)
}

/// Sets this `manager`'s one entry of the list `field` (`probes` or
/// `storage`) of NodeInstall `node`'s spec by server-side apply: `item`,
/// or none (which takes the manager's entry away).
pub async fn apply_node_list<T: Serialize>(
    client: &Client,
    node: &str,
    manager: &str,
    field: &'static str,
    item: Option<T>,
) -> Result<(), Error> {
    let list: Vec<T> = item.into_iter().collect();
    let body = serde_json::json!({
        "apiVersion": "theseus.dev/v1alpha1",
        "kind": "NodeInstall",
        "metadata": { "name": node },
        "spec": { field: list },
    });
    let manager: String = manager
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '-' })
        .take(128)
        .collect();
    Api::<NodeInstall>::all(client.clone())
        .patch(
            node,
            &PatchParams::apply(&manager).force(),
            &Patch::Apply(&body),
        )
        .await
        .map(drop)
        .map_err(|source| Error::WriteNode {
            node: node.to_owned(),
            field,
            source,
        })
}

/// What the application controllers read of a NodeInstall (not its
/// heartbeat): a change of it wakes them. Remembered per node as its
/// digest.
#[derive(serde::Serialize)]
struct View<'a> {
    labels: &'a std::collections::BTreeMap<String, String>,
    probes: &'a [crate::api::ProbeResult],
    storage: &'a [crate::api::StorageResult],
    version: Option<&'a str>,
    address: Option<&'a str>,
    active: Option<&'a str>,
    spec_probes: &'a [crate::api::NodeProbe],
}

impl View<'_> {
    /// The digest of what the application controllers read of `ni`.
    fn of(ni: &NodeInstall) -> u64 {
        let status = ni.status.as_ref();
        crate::shared::wake::digest(&View {
            labels: ni.labels(),
            probes: status.map_or(&[], |s| &s.probes),
            storage: status.map_or(&[], |s| &s.storage),
            version: status.and_then(|s| s.agent_version.as_deref()),
            address: status.and_then(|s| s.address.as_deref()),
            active: status.and_then(|s| s.active_hash.as_deref()),
            spec_probes: &ni.spec.probes,
        })
    }
}

/// A tick whenever a NodeInstall's [`View`] changes, one appears or one
/// goes.
fn node_changes(
    events: impl Stream<Item = watcher::Event<NodeInstall>> + Send + 'static,
) -> impl Stream<Item = ()> + Send + 'static {
    let mut seen: HashMap<String, u64> = HashMap::new();
    events.filter_map(move |event| {
        let changed = match event {
            watcher::Event::Apply(ni) | watcher::Event::InitApply(ni) => {
                let view = View::of(&ni);
                seen.insert(ni.name_any(), view) != Some(view)
            }
            watcher::Event::Delete(ni) => seen.remove(&ni.name_any()).is_some(),
            watcher::Event::Init => false,
            watcher::Event::InitDone => true,
        };
        futures::future::ready(changed.then_some(()))
    })
}

/// Runs the application controllers until `stop`.
pub fn run(shared: Shared, config: Config, stop: CancellationToken) -> BoxFuture<'static, ()> {
    async move {
        if shared.stores.nodes.ready(CAPABILITY).await.is_err() {
            return;
        }
        let client = shared.client.clone();
        let context = Arc::new(Context {
            recorder: Recorder::new(client.clone(), shared.reporter.clone()),
            shared: shared.clone(),
            config,
        });
        let stopped = |stop: &CancellationToken| {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        };
        let nodes = || node_changes(shared.stores.nodes.subscribe());
        let capabilities = Controller::new(
            Api::<ClusterCapability>::all(client.clone()),
            shared.watch_config(),
        )
        .reconcile_all_on(nodes())
        .graceful_shutdown_on(stopped(&stop))
        .run(capability::reconcile, error_policy, context.clone())
        .for_each(|_| async {});
        let roles = Controller::new(Api::<Role>::all(client.clone()), shared.watch_config())
            .reconcile_all_on(nodes())
            .graceful_shutdown_on(stopped(&stop))
            .run(role::reconcile, error_policy, context.clone())
            .for_each(|_| async {});
        // An application is reconciled when its instances change (their
        // versions decide what is staged).
        let instances_of_apps = watcher(
            Api::<AppInstance>::all(client.clone()),
            shared.watch_config(),
        )
        .touched_objects()
        .filter_map(|i| async move {
            i.ok()
                .map(|i| kube::runtime::reflector::ObjectRef::<AppPackage>::new(&i.spec.app))
        });
        let packages = Controller::new(
            Api::<AppPackage>::all(client.clone()),
            shared.watch_config(),
        )
        .reconcile_on(instances_of_apps)
        .reconcile_all_on(nodes())
        .graceful_shutdown_on(stopped(&stop))
        .run(package::reconcile, error_policy, context.clone())
        .for_each(|_| async {});
        // Instances wait on their application's stage, capabilities, the
        // nodes' storage results and other instances (dependencies).
        let changes = futures::stream::select(
            futures::stream::select(
                nodes(),
                ticks(watcher(
                    Api::<AppPackage>::all(client.clone()),
                    shared.watch_config(),
                )),
            ),
            ticks(watcher(
                Api::<ClusterCapability>::all(client.clone()),
                shared.watch_config(),
            )),
        );
        let instances = Controller::new(
            Api::<AppInstance>::all(client.clone()),
            shared.watch_config(),
        )
        .watches(
            Api::<crate::api::ServiceGroup>::all(client.clone()),
            shared.watch_config(),
            instance::of_group,
        )
        .reconcile_all_on(changes)
        .graceful_shutdown_on(stopped(&stop))
        .run(instance::reconcile, error_policy, context.clone())
        .for_each(|_| async {});
        tokio::join!(capabilities, roles, packages, instances);
    }
    .boxed()
}

fn error_policy<K: kube::Resource<DynamicType = ()>>(
    object: Arc<K>,
    err: &Error,
    cx: Arc<Context>,
) -> Action {
    let kind = K::kind(&());
    warn!(%kind, object = %object.meta().name.as_deref().unwrap_or(""), error = %err, "reconcile failed");
    let name = match kind.as_ref() {
        "Role" => ROLE,
        "AppPackage" => PACKAGE,
        "AppInstance" => INSTANCE,
        _ => CAPABILITY,
    };
    cx.shared.metrics.failed(name, err.reason());
    Action::requeue(Duration::from_secs(5))
}

/// The sha256 of `value`'s JSON, in hex (16 characters): the key of a
/// storage task.
pub fn digest(value: &impl Serialize) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

/// Whether `node` offers capability `cap`: selected by it, measured, and
/// not among its failing nodes.
pub fn offers(cap: &ClusterCapability, node: &NodeInstall) -> bool {
    let Some(status) = &cap.status else {
        return false;
    };
    crate::shared::selector::matches(&cap.spec.node_selector, node.labels())
        && status.nodes_total > 0
        && !status.failing.iter().any(|f| f.node == node.name_any())
}

/// Whether every capability of `required` is Available; the error names
/// each one that is not, with the nodes that lack it.
pub fn capabilities_met(
    required: &[String],
    caps: &[Arc<ClusterCapability>],
) -> Result<(), String> {
    let mut missing = Vec::new();
    for name in required {
        match caps.iter().find(|c| c.name_any() == *name) {
            None => missing.push(format!("{name} (no such ClusterCapability)")),
            Some(c) => {
                let status = c.status.clone().unwrap_or_default();
                if !crate::api::conditions::is_true(
                    &status.conditions,
                    crate::api::conditions::types::AVAILABLE,
                ) {
                    let nodes: Vec<String> = status
                        .failing
                        .iter()
                        .take(5)
                        .map(|f| format!("{}: {}", f.node, f.message))
                        .collect();
                    missing.push(if nodes.is_empty() {
                        format!("{name} (not measured on any node yet)")
                    } else {
                        format!("{name} (lacking on {})", nodes.join("; "))
                    });
                }
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join(", "))
    }
}

/// The node to do storage work on: a live node offering every capability
/// of `required`; `current` when it still does, else the first by name.
pub fn storage_node(
    required: &[String],
    caps: &[Arc<ClusterCapability>],
    nodes: &[Arc<NodeInstall>],
    current: Option<&str>,
    stale_after: Duration,
    now: Timestamp,
) -> Result<String, String> {
    let fit = |n: &NodeInstall| {
        n.metadata.deletion_timestamp.is_none()
            && !silent(n, stale_after, now)
            && required.iter().all(|r| {
                caps.iter()
                    .find(|c| c.name_any() == *r)
                    .is_some_and(|c| offers(c, n))
            })
    };
    let mut fitting: Vec<&NodeInstall> = nodes.iter().map(|n| &**n).filter(|n| fit(n)).collect();
    fitting.sort_by_key(|n| n.name_any());
    if let Some(node) = current.and_then(|c| fitting.iter().find(|n| n.name_any() == c)) {
        return Ok(node.name_any());
    }
    fitting.first().map(|n| n.name_any()).ok_or_else(|| {
        if required.is_empty() {
            "no node's agent is reporting".to_owned()
        } else {
            format!(
                "no live node offers every required capability ({})",
                required.join(", ")
            )
        }
    })
}

/// How a storage task stands.
#[derive(Debug, PartialEq)]
pub enum TaskState {
    /// The agent has not finished it.
    Pending,
    /// Done, with what it created.
    Done(crate::api::StorageResult),
    /// Failed, with why.
    Failed(crate::api::StorageResult),
}

/// How long a failed storage task waits before it is tried again.
pub const TASK_RETRY: Duration = Duration::from_secs(30);

/// Gives `task` to `node` (by `manager`, when the node does not hold it
/// already) and says how it stands. A task that failed over
/// [`TASK_RETRY`] ago is given again with a new key (`KEY.rSECONDS`).
pub async fn drive_task(
    client: &Client,
    node: &NodeInstall,
    manager: &str,
    mut task: crate::api::StorageTask,
    now: Timestamp,
) -> Result<TaskState, Error> {
    let base = task.key.clone();
    let held = node.spec.storage.iter().find(|t| t.id == task.id);
    let result = node
        .status
        .as_ref()
        .and_then(|s| s.storage.iter().find(|r| r.id == task.id));
    if let Some(held) = held.filter(|h| h.key.split('.').next() == Some(base.as_str())) {
        task.key = held.key.clone();
    }
    let state = match result.filter(|r| r.key == task.key) {
        Some(r) if r.state == crate::api::HookState::Succeeded => TaskState::Done(r.clone()),
        Some(r) if r.state == crate::api::HookState::Failed => {
            let finished = r.finished.as_ref().map_or(now, |t| t.0);
            if now.duration_since(finished).as_secs() >= TASK_RETRY.as_secs() as i64 {
                task.key = format!("{base}.r{}", now.as_second());
                TaskState::Pending
            } else {
                TaskState::Failed(r.clone())
            }
        }
        _ => TaskState::Pending,
    };
    if node.spec.storage.iter().find(|t| t.id == task.id) != Some(&task)
        && !matches!(state, TaskState::Done(_))
    {
        apply_node_list(client, &node.name_any(), manager, "storage", Some(task)).await?;
    }
    Ok(state)
}

/// Whether a done task's key is of the work `base` names.
pub fn key_is(key: Option<&str>, base: &str) -> bool {
    key.and_then(|k| k.split('.').next()) == Some(base)
}

/// Takes the storage task of `manager` off `node`, if it has one.
pub async fn clear_task(
    client: &Client,
    nodes: &[Arc<NodeInstall>],
    node: &str,
    id: &str,
    manager: &str,
) -> Result<(), Error> {
    let holds = nodes
        .iter()
        .any(|n| n.name_any() == node && n.spec.storage.iter().any(|t| t.id == id));
    if holds {
        apply_node_list::<crate::api::StorageTask>(client, node, manager, "storage", None).await?;
    }
    Ok(())
}

/// Adds or removes `finalizer` on `object` (a merge patch carrying the
/// object's resourceVersion, so a concurrent change is not overwritten).
pub async fn set_finalizer<K>(
    api: &Api<K>,
    object: &K,
    finalizer: &str,
    present: bool,
) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut list = object.meta().finalizers.clone().unwrap_or_default();
    if list.iter().any(|f| f == finalizer) == present {
        return Ok(());
    }
    if present {
        list.push(finalizer.to_owned());
    } else {
        list.retain(|f| f != finalizer);
    }
    let patch = serde_json::json!({
        "metadata": { "finalizers": list, "resourceVersion": object.meta().resource_version }
    });
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
        .map_err(|source| Error::Write {
            object: format!("{} {name}", K::kind(&())),
            action: format!("{} the finalizer", if present { "add" } else { "remove" }),
            source,
        })
}

/// A tick per change of a watched kind.
fn ticks<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = ()> + Send + 'static {
    events.filter_map(|e| futures::future::ready(e.ok().map(drop)))
}

/// The capabilities `app` requires, by name.
pub fn required_capabilities(app: &crate::api::AppPackage) -> Vec<String> {
    app.spec
        .requires
        .capabilities
        .iter()
        .map(|c| c.name.clone())
        .collect()
}

/// Runs `task` on the node it belongs on (the one holding it while it
/// still fits, else the first live node offering `required`): moves it
/// there, drives it ([`drive_task`]), and takes it off the node once done.
/// `Ok(Err(why))` when no node fits.
pub async fn run_task(
    cx: &Context,
    required: &[String],
    caps: &[Arc<ClusterCapability>],
    manager: &str,
    task: crate::api::StorageTask,
    now: Timestamp,
) -> Result<Result<(String, TaskState), String>, Error> {
    let client = &cx.shared.client;
    let nodes = cx.shared.stores.nodes.store().state();
    let holder = holder(&nodes, &task.id);
    let node = match storage_node(
        required,
        caps,
        &nodes,
        holder.as_deref(),
        cx.config.stale_after,
        now,
    ) {
        Ok(node) => node,
        Err(why) => return Ok(Err(why)),
    };
    if let Some(old) = holder.as_deref().filter(|h| *h != node) {
        clear_task(client, &nodes, old, &task.id, manager).await?;
    }
    let ni = nodes
        .iter()
        .find(|n| n.name_any() == node)
        .expect("chosen from the store");
    let id = task.id.clone();
    let state = drive_task(client, ni, manager, task, now).await?;
    if matches!(state, TaskState::Done(_)) {
        clear_task(client, &nodes, &node, &id, manager).await?;
    }
    Ok(Ok((node, state)))
}

/// Takes the task `id` of `manager` off whichever node still holds it.
pub async fn release_task(cx: &Context, id: &str, manager: &str) -> Result<(), Error> {
    let nodes = cx.shared.stores.nodes.store().state();
    match holder(&nodes, id) {
        Some(node) => clear_task(&cx.shared.client, &nodes, &node, id, manager).await,
        None => Ok(()),
    }
}

/// The node whose spec holds the storage task `id`.
fn holder(nodes: &[Arc<NodeInstall>], id: &str) -> Option<String> {
    nodes
        .iter()
        .find(|n| n.spec.storage.iter().any(|t| t.id == id))
        .map(|n| n.name_any())
}
