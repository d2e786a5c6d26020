//! The application controllers: ClusterCapability (measured by the
//! agents, judged here), Role, AppPackage (stages) and AppInstance.
//!
//! Work on the shared filesystem is done by an agent on one node that
//! offers the capabilities the object requires, through a storage task in
//! that node's NodeInstall (`spec.storage`, one field manager per object):
//! the operator runs as a Deployment and mounts no shared filesystem, and
//! the agents are the ones whose view of it is measured.

pub mod capability;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::api::{ClusterCapability, NodeInstall};
use crate::shared::Shared;

/// The capability controller's name in metrics.
pub const CAPABILITY: &str = "clustercapability";

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
/// heartbeat): a change of it wakes them.
#[derive(Clone, PartialEq)]
struct View {
    labels: std::collections::BTreeMap<String, String>,
    probes: Vec<crate::api::ProbeResult>,
    storage: Vec<crate::api::StorageResult>,
    version: Option<String>,
    address: Option<String>,
    active: Option<String>,
    spec_probes: Vec<crate::api::NodeProbe>,
}

impl View {
    fn of(ni: &NodeInstall) -> Self {
        let status = ni.status.clone().unwrap_or_default();
        Self {
            labels: ni.labels().clone(),
            probes: status.probes,
            storage: status.storage,
            version: status.agent_version,
            address: status.address,
            active: status.active_hash,
            spec_probes: ni.spec.probes.clone(),
        }
    }
}

/// A tick whenever a NodeInstall's [`View`] changes, one appears or one
/// goes.
fn node_changes(
    events: impl Stream<Item = watcher::Event<NodeInstall>> + Send + 'static,
) -> impl Stream<Item = ()> + Send + 'static {
    let mut seen: HashMap<String, View> = HashMap::new();
    events.filter_map(move |event| {
        let changed = match event {
            watcher::Event::Apply(ni) | watcher::Event::InitApply(ni) => {
                let view = View::of(&ni);
                seen.insert(ni.name_any(), view.clone()).as_ref() != Some(&view)
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
        let capabilities = Controller::new(
            Api::<ClusterCapability>::all(client.clone()),
            shared.watch_config(),
        )
        .reconcile_all_on(node_changes(shared.stores.nodes.subscribe()))
        .graceful_shutdown_on({
            let stop = stop.clone();
            async move { stop.cancelled().await }
        })
        .run(capability::reconcile, error_policy, context.clone())
        .for_each(|_| async {});
        capabilities.await;
    }
    .boxed()
}

fn error_policy<K: kube::Resource>(object: Arc<K>, err: &Error, cx: Arc<Context>) -> Action {
    warn!(object = %object.meta().name.as_deref().unwrap_or(""), error = %err, "reconcile failed");
    cx.shared.metrics.failed(CAPABILITY, err.reason());
    Action::requeue(Duration::from_secs(5))
}
