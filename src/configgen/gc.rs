//! Collection of generated packages nothing uses any more.
//!
//! A package is deleted only when no ConfigBundle's last render names it,
//! no NodeInstall's target lists it, no node has it active or cached (a
//! kept generation a node may roll back to, reported in
//! `status.cached`), and it was stored longer ago than the grace period
//! (which covers a render between storing a package and recording it in
//! the bundle's status). The index is then published without it.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::store::{Repository, StoreError, collectable};
use super::{Error, NAME};
use crate::api::{ConfigBundle, NodeInstall};
use crate::shared::Shared;

/// Sweeps every half grace period (between 1 s and a minute) until `stop`.
pub async fn run(ctx: Shared, repository: Repository, grace: Duration, stop: CancellationToken) {
    if ctx.stores.nodes.ready(NAME).await.is_err() {
        return;
    }
    let every = (grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match sweep(&ctx, &repository, grace).await {
            Ok(0) => {}
            Ok(n) => info!(packages = n, "collected unused generated packages"),
            Err(e) => {
                warn!(error = %e, "cannot collect generated packages; trying again");
                ctx.metrics.failed(NAME, e.reason());
            }
        }
    }
}

/// One sweep; returns how many packages it deleted.
async fn sweep(ctx: &Shared, repository: &Repository, grace: Duration) -> Result<usize, Error> {
    let params = match ctx.selector.as_deref() {
        Some(selector) => ListParams::default().labels(selector),
        None => ListParams::default(),
    };
    let bundles = Api::<ConfigBundle>::all(ctx.client.clone())
        .list(&params)
        .await
        .map_err(|source| Error::Read {
            bundle: "*".into(),
            what: "the ConfigBundles".into(),
            source,
        })?;
    let nodes = ctx.stores.nodes.store().state();
    let used = used(&bundles.items, nodes.iter().map(|n| &**n));
    let store_err = |source: StoreError| Error::Store {
        bundle: "*".into(),
        source,
    };
    let stored = repository.stored().await.map_err(store_err)?;
    let gone = collectable(&stored, &used, Timestamp::now(), grace);
    for id in &gone {
        repository.delete(id).await.map_err(store_err)?;
        info!(package = %id, "deleted an unused generated package");
    }
    if !gone.is_empty() {
        repository.publish().await.map_err(store_err)?;
    }
    Ok(gone.len())
}

/// Every package id a bundle's last render names, or a node targets, has
/// active or keeps cached.
pub fn used<'a>(
    bundles: &[ConfigBundle],
    nodes: impl Iterator<Item = &'a NodeInstall>,
) -> BTreeSet<String> {
    let mut used: BTreeSet<String> = bundles
        .iter()
        .filter_map(|b| b.status.as_ref())
        .flat_map(|s| s.rendered.iter().map(|r| r.package_id.clone()))
        .collect();
    for node in nodes {
        if let Some(t) = &node.spec.target {
            used.extend(t.packages.iter().cloned());
        }
        if let Some(s) = &node.status {
            used.extend(s.active.iter().cloned());
            used.extend(s.cached.iter().cloned());
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        ConfigBundleSpec, ConfigBundleStatus, NodeInstallSpec, NodeInstallStatus, NodeTarget,
        RenderedPackage,
    };

    #[test]
    fn a_package_is_used_while_a_bundle_names_it_or_a_node_targets_runs_or_keeps_it() {
        let mut bundle = ConfigBundle::new("web", ConfigBundleSpec::default());
        bundle.status = Some(ConfigBundleStatus {
            rendered: vec![RenderedPackage {
                package_id: "web--cfg.now".into(),
                ..RenderedPackage::default()
            }],
            ..ConfigBundleStatus::default()
        });
        let mut node = NodeInstall::new("n0", NodeInstallSpec::default());
        node.spec.target = Some(NodeTarget {
            packages: vec!["web--cfg.target".into()],
            ..NodeTarget::default()
        });
        node.status = Some(NodeInstallStatus {
            active: vec!["web--cfg.active".into()],
            cached: vec!["web--cfg.rollback".into()],
            ..NodeInstallStatus::default()
        });
        let used = used(&[bundle], [&node].into_iter());
        for id in [
            "web--cfg.now",
            "web--cfg.target",
            "web--cfg.active",
            "web--cfg.rollback",
        ] {
            assert!(used.contains(id), "{id} {used:?}");
        }
        assert_eq!(used.len(), 4);
    }
}
