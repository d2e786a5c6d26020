//! Admission of a cluster in a tenant's namespace: its template and node
//! classes must be in the tenant's catalog, and its usage (the goal
//! layout's nodes, per class, and their capacity) is reserved in the
//! Tenant's status by compare-and-swap before its plan starts — so no
//! node is launched for a cluster the quota cannot hold, whatever number
//! of creates race for it. Once a plan that shrank the cluster finished,
//! the reservation comes down to what runs; a deleted cluster's goes.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::Api;

use super::{Context, Error};
use crate::api::conditions::{Observed, types};
use crate::api::{Cluster, LayoutNode, Tenant};
use crate::layout::Catalog;
use crate::quota::{self, ReserveError};
use crate::shared::selector;

/// How a cluster is named in its tenant's reservations.
pub fn object(cluster: &Cluster) -> String {
    format!(
        "Cluster {}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

/// The tenant whose namespace the cluster is in, if any.
pub fn tenant_of(cluster: &Cluster, cx: &Context) -> Option<Arc<Tenant>> {
    let ns = cluster.namespace().unwrap_or_default();
    let tenants: Vec<Tenant> = cx.tenants.state().iter().map(|t| (**t).clone()).collect();
    quota::tenant_of(&ns, &tenants).map(|t| Arc::new(t.clone()))
}

fn quota_err(cluster: &Cluster) -> impl FnOnce(ReserveError) -> Error + '_ {
    move |source| Error::Tenant {
        object: object(cluster),
        source,
    }
}

/// Whether the cluster may run `goal`: its catalog checks, then its
/// usage reserved. Returns the `Admitted` condition, True or False with
/// the reason and what to do.
pub async fn admit(
    cluster: &Cluster,
    tenant: &Tenant,
    goal: &[LayoutNode],
    catalog: &Catalog,
    cx: &Context,
) -> Result<(bool, Observed<'static>), Error> {
    let name = tenant.name_any();
    if let Some(refusal) = outside_catalog(cluster, tenant, goal, cx) {
        return Ok((false, refusal));
    }
    let usage = quota::layout_usage(goal, catalog);
    let tenants: Api<Tenant> = Api::all(cx.ctx.client.clone());
    let uid = cluster.uid().unwrap_or_default();
    match quota::reserve(&tenants, &name, (&object(cluster), &uid), &usage).await {
        Ok(held) => {
            let message = format!("{} nodes reserved in tenant {name}'s quotas", held.nodes);
            Ok((
                true,
                Observed::new(types::ADMITTED, true, "Reserved", message),
            ))
        }
        Err(ReserveError::Exceeded { exceeded, .. }) => {
            let message = format!(
                "tenant {name}: {exceeded}; no node is launched: lower spec.size, or raise the tenant's quota, or free some of it"
            );
            tracing::info!(cluster = %object(cluster), "{message}");
            Ok((
                false,
                Observed::new(types::ADMITTED, false, "QuotaExceeded", message),
            ))
        }
        Err(e @ (ReserveError::Deleting { .. } | ReserveError::Gone { .. })) => Ok((
            false,
            Observed::new(types::ADMITTED, false, "TenantUnavailable", e.to_string()),
        )),
        Err(e) => Err(quota_err(cluster)(e)),
    }
}

/// A template or node class outside the tenant's catalog, as a refusal.
fn outside_catalog(
    cluster: &Cluster,
    tenant: &Tenant,
    goal: &[LayoutNode],
    cx: &Context,
) -> Option<Observed<'static>> {
    let name = tenant.name_any();
    let catalog = &tenant.spec.catalog;
    if let Some(templates) = &catalog.templates {
        let allowed = cx.stores.templates.state().iter().any(|t| {
            t.name_any() == cluster.spec.template && selector::matches(templates, t.labels())
        });
        if !allowed {
            let message = format!(
                "template {} is not in tenant {name}'s catalog (spec.catalog.templates); use one of: {}",
                cluster.spec.template,
                tenant
                    .status
                    .as_ref()
                    .map(|s| s.templates.join(", "))
                    .unwrap_or_default()
            );
            return Some(Observed::new(
                types::ADMITTED,
                false,
                "TemplateNotAllowed",
                message,
            ));
        }
    }
    if let Some(classes) = &catalog.node_classes {
        let state = cx.stores.node_classes.state();
        let outside: Vec<&String> = goal
            .iter()
            .map(|n| &n.node_class)
            .filter(|class| {
                !state
                    .iter()
                    .any(|c| c.name_any() == **class && selector::matches(classes, c.labels()))
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !outside.is_empty() {
            let names: Vec<&str> = outside.iter().map(|s| s.as_str()).collect();
            let message = format!(
                "node classes {} are not in tenant {name}'s catalog (spec.catalog.nodeClasses); set spec.nodeClass to one that is",
                names.join(", ")
            );
            return Some(Observed::new(
                types::ADMITTED,
                false,
                "NodeClassNotAllowed",
                message,
            ));
        }
    }
    None
}

/// Brings the cluster's reservation down to what `applied` uses, once no
/// plan runs (a shrink finished, or a growth rolled back). Reads the
/// tenant only when its cached status says the reservation differs.
pub async fn settle(
    cluster: &Cluster,
    tenant: &Tenant,
    applied: &[LayoutNode],
    catalog: &Catalog,
    cx: &Context,
) -> Result<(), Error> {
    let key = object(cluster);
    let usage = quota::layout_usage(applied, catalog);
    let held = tenant
        .status
        .as_ref()
        .and_then(|s| s.reservations.iter().find(|r| r.object == key));
    match held {
        Some(r) if r.usage != usage && !applied.is_empty() => {
            let tenants: Api<Tenant> = Api::all(cx.ctx.client.clone());
            quota::settle(&tenants, &tenant.name_any(), &key, Some(&usage))
                .await
                .map_err(quota_err(cluster))
        }
        _ => Ok(()),
    }
}

/// A deleted cluster's reservation goes (before its finalizer).
pub async fn release(cluster: &Cluster, cx: &Context) -> Result<(), Error> {
    let Some(tenant) = tenant_of(cluster, cx) else {
        return Ok(());
    };
    let tenants: Api<Tenant> = Api::all(cx.ctx.client.clone());
    quota::release(&tenants, &tenant.name_any(), &object(cluster))
        .await
        .map_err(quota_err(cluster))
}
