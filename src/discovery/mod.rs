//! Service discovery: the etcd tree (docs/architecture.md, "The etcd
//! discovery tree"), the ServiceGroup
//! controller that runs each group as a Deployment, and the publisher that
//! keeps the tree a projection of each group's ready pods and of each
//! Cluster's services on its ready nodes.
//!
//! - [`paths`]: the key layout and group encoding (pure);
//! - [`tree`]: the driver operations over etcd v3;
//! - [`diff`]: desired against actual keys, as transactions (pure);
//! - [`projection`]: pods and ServiceGroups to tree contents (pure);
//! - [`clusters`]: Clusters and their NodeInstalls to tree contents (pure);
//! - [`instances`]: running AppInstances to tree contents;
//! - [`publisher`]: writes groups into the tree under a lease;
//! - [`lease`]: keeps that lease alive from a task of its own;
//! - [`controller`]: the ServiceGroup controller and [`run`];
//! - [`follow`]: what an application uses to follow a group.

mod cluster_sync;
pub mod clusters;
pub mod config;
pub mod controller;
pub mod deployment;
pub mod diff;
pub mod follow;
pub mod instances;
pub mod lease;
pub mod model;
pub mod paths;
pub mod projection;
pub mod publisher;
pub mod status;
mod sync;
pub mod tree;

pub use config::{EtcdArgs, EtcdConfig};
pub use controller::{Context, ControllerError, run};
pub use follow::{Follower, GroupEvent};
pub use model::{ContainerInfo, GroupConfig, PortMapping};
pub use tree::{Tree, TreeError};

/// The ServiceGroup controller and publisher as one of `theseus operator`'s
/// controllers: runs while the operator leads, publishing ServiceGroups and
/// the Clusters' services into `etcd`; without an etcd (`--no-discovery`)
/// it idles.
pub fn operator_controller(
    shared: crate::shared::Shared,
    etcd: Option<EtcdConfig>,
    stop: tokio_util::sync::CancellationToken,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        let Some(etcd) = etcd else {
            // Disabled: idle until stopped (ending early would mean it died).
            stop.cancelled().await;
            return;
        };
        let mut discovery = Context::new(shared.client.clone(), etcd);
        discovery.selector = shared.selector.clone();
        discovery.metrics = shared.metrics.clone();
        discovery.nodes = Some(shared.stores.nodes.clone());
        discovery.recorder =
            kube::runtime::events::Recorder::new(shared.client.clone(), shared.reporter.clone());
        tokio::select! {
            result = run(discovery) => {
                if let Err(err) = result {
                    tracing::error!(error = %err, "the ServiceGroup controller stopped");
                }
            }
            () = stop.cancelled() => {}
        }
    })
}

/// The field manager of every server-side apply by the operator.
pub const FIELD_MANAGER: &str = "theseus-operator";
/// The finalizer that removes a group's keys from etcd before it goes.
pub const FINALIZER: &str = "theseus.dev/discovery";
/// Label on a group's Deployment and pods: the service.
pub const SERVICE_LABEL: &str = "theseus.dev/service";
/// Label on a group's Deployment and pods: the encoded group.
pub const GROUP_LABEL: &str = "theseus.dev/group";
/// Label on a group's Deployment and pods: the ServiceGroup's name (the
/// Deployment's selector).
pub const NAME_LABEL: &str = "theseus.dev/service-group";
