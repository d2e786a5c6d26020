//! The Cluster controller's solve step: the cluster's layout from its
//! template, size and services, solved against the layout it has (so a
//! change moves as few services as it can), recorded only when it changes.
//! A change that has no layout leaves the old one in place and says why in
//! `LayoutSolved`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Context, Error, Stores};
use crate::api::conditions::{Observed, types};
use crate::api::{Cluster, ClusterStatus, ClusterTemplate, LayoutNode};
use crate::layout::{self, Catalog, Outcome, Request, RequestError};
use crate::shared::{Shared, status};

/// The controller's name in metrics.
pub const NAME: &str = "cluster";

/// The controller over the shared cluster reflector; a template's change
/// reconciles the clusters `made_from` it, `catalog_changed` every
/// cluster, and a node's changed report (see [`super::wake`]) its
/// cluster. It starts once the NodeInstall cache holds a full list (plans
/// are driven from what the nodes report).
pub fn controller(
    ctx: Shared,
    stores: Stores,
    clusters: (
        impl Stream<Item = Arc<Cluster>> + Send + 'static,
        Store<Cluster>,
    ),
    templates: impl Stream<Item = Arc<ClusterTemplate>> + Send + 'static,
    made_from: impl Fn(Arc<ClusterTemplate>) -> Vec<ObjectRef<Cluster>> + Send + Sync + 'static,
    (catalog_changed, tenants): (
        impl Stream<Item = ()> + Send + 'static,
        Store<crate::api::Tenant>,
    ),
    stop: CancellationToken,
) -> BoxFuture<'static, ()> {
    let context = Context::with_tenants(ctx, stores, tenants);
    async move {
        if context.ctx.stores.nodes.ready(NAME).await.is_err() {
            return;
        }
        let nodes_changed = crate::shared::wake::to_wake::<super::wake::ClusterNode>(
            context.ctx.stores.nodes.subscribe(),
        );
        // A halt or a resume concerns every cluster at once.
        let halt_api: Api<ConfigMap> =
            Api::namespaced(context.ctx.client.clone(), &context.ctx.namespace);
        let halt_config = crate::shared::scoped(None).fields(&format!(
            "metadata.name={}",
            crate::shared::halt::HALT_CONFIGMAP
        ));
        let every = clusters.1.clone();
        let all_clusters = move |_| {
            every
                .state()
                .iter()
                .map(|c| ObjectRef::from_obj(&**c))
                .collect::<Vec<_>>()
        };
        Controller::for_shared_stream(clusters.0, clusters.1)
            .watches_shared_stream(templates, made_from)
            .reconcile_all_on(catalog_changed)
            .reconcile_on(nodes_changed)
            .watches(halt_api, halt_config, all_clusters)
            .graceful_shutdown_on(async move { stop.cancelled().await })
            .run(reconcile, error_policy, context)
            .for_each(|_| async {})
            .await
    }
    .boxed()
}

pub(super) fn error_policy(cluster: Arc<Cluster>, err: &Error, cx: Arc<Context>) -> Action {
    warn!(cluster = %describe(&cluster), error = %err, "reconcile failed");
    cx.ctx.metrics.failed(NAME, err.reason());
    Action::requeue(Duration::from_secs(5))
}

/// One pass: observe (the catalog) → decide ([`decide`]) → record (status,
/// when it changed) → report (events).
pub async fn reconcile(cluster: Arc<Cluster>, cx: Arc<Context>) -> Result<Action, Error> {
    cx.ctx.metrics.reconciled(NAME);
    tracing::debug!(cluster = %describe(&cluster), "pass begins");
    // The cache may not have this controller's last status write yet (a
    // node's report wakes it at once): both steps decide from the
    // cluster as stored, never from an older status. The plan the cached
    // cluster names and the halt are read at the same time, so that a
    // pass begins with one round trip, not two (the plan is read again
    // only when the stored cluster names another).
    let ns = cluster.namespace().unwrap_or_default();
    let api = Api::<Cluster>::namespaced(cx.ctx.client.clone(), &ns);
    let name = cluster.name_any();
    let (stored, reads) = tokio::join!(api.get_opt(&name), super::drive::Reads::of(&cluster, &cx));
    let Some(cluster) = stored
        .map_err(|source| Error::Act {
            object: format!("Cluster {}", describe(&cluster)),
            step: "ReadCluster",
            source,
        })?
        .map(Arc::new)
    else {
        return Ok(Action::await_change());
    };
    let latest = if cluster.metadata.deletion_timestamp.is_none() && !cluster.spec.paused {
        solve(&cluster, &cx).await?
    } else {
        None
    };
    super::drive::drive(latest.as_ref().unwrap_or(&cluster), reads, &cx).await
}

/// The solve step: observe (the catalog) → decide ([`decide`]) → record
/// (status, when it changed) → report (events); returns the cluster as
/// recorded, when it was.
pub(super) async fn solve(cluster: &Arc<Cluster>, cx: &Context) -> Result<Option<Cluster>, Error> {
    let uid = cluster.uid().unwrap_or_default();
    let fingerprint = cx.stores.fingerprint();
    let inputs =
        |layout_hash: Option<String>| (cluster.metadata.generation, fingerprint, layout_hash);
    let previous = cluster.status.clone().unwrap_or_default();
    let memo = |cx: &Context| {
        cx.solved
            .lock()
            .map(|m| m.get(&uid).cloned())
            .ok()
            .flatten()
    };
    if memo(cx) == Some(inputs(previous.layout_hash.clone())) {
        return Ok(None);
    }
    let catalog = cx.stores.catalog();
    let decision = {
        let input = cluster.clone();
        tokio::task::spawn_blocking(move || decide(&catalog, &input))
            .await
            .map_err(|e| Error::Decide {
                object: format!("Cluster {}", describe(cluster)),
                step: "solve",
                message: e.to_string(),
            })?
    };
    let (next, changed) = next_status(cluster, &previous, &decision, Timestamp::now());
    let recorded = if next != previous {
        Some(record(cluster, &cx.ctx, &next).await?)
    } else {
        None
    };
    report(cx, cluster, &previous, &next, &changed).await;
    if let Ok(mut m) = cx.solved.lock() {
        m.insert(uid, inputs(next.layout_hash.clone()));
    }
    Ok(recorded)
}

/// The status after `decision`: the new layout and its hash when there is
/// one, the old layout otherwise; and the conditions whose status changed.
fn next_status(
    cluster: &Cluster,
    previous: &ClusterStatus,
    decision: &Decision,
    now: Timestamp,
) -> (
    ClusterStatus,
    Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
) {
    let mut next = previous.clone();
    let changed = status::merge(
        &mut next.conditions,
        decision.conditions.clone(),
        cluster.metadata.generation,
        now,
    );
    next.observed_generation = cluster.metadata.generation;
    if let Some(layout) = &decision.layout {
        next.layout = layout.clone();
        next.layout_hash = Some(layout_hash(layout));
        next.template_revision = decision.template_revision.clone();
    }
    (next, changed)
}

/// record: the status, by server-side apply.
async fn record(cluster: &Cluster, ctx: &Shared, status: &ClusterStatus) -> Result<Cluster, Error> {
    let api =
        Api::<Cluster>::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    status::apply_status(&api, &cluster.name_any(), status)
        .await
        .map_err(|source| Error::WriteStatus {
            object: format!("Cluster {}", describe(cluster)),
            source,
        })
}

/// report: an event per changed condition, and one when the layout changed
/// while it stayed solved.
async fn report(
    cx: &Context,
    cluster: &Cluster,
    previous: &ClusterStatus,
    next: &ClusterStatus,
    changed: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) {
    let reference = cluster.object_ref(&());
    status::publish(&cx.recorder, &reference, changed).await;
    let relaid = previous.layout_hash.is_some() && previous.layout_hash != next.layout_hash;
    if relaid && changed.iter().all(|c| c.type_ != types::LAYOUT_SOLVED) {
        let message = format!(
            "{} → {} nodes ({})",
            previous.layout.len(),
            next.layout.len(),
            summary(&next.layout)
        );
        status::publish_one(
            &cx.recorder,
            &reference,
            types::LAYOUT_SOLVED,
            "True",
            "LayoutChanged",
            &message,
        )
        .await;
    }
}

/// What a pass concludes for a cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The layout to record, when it differs from the cluster's.
    pub layout: Option<Vec<LayoutNode>>,
    /// The template revision the new layout was solved against.
    pub template_revision: Option<String>,
    /// `Valid` and `LayoutSolved`.
    pub conditions: Vec<Observed<'static>>,
}

/// Pure: the cluster's layout from `catalog`, solved against the layout
/// it has, or why there is none.
pub fn decide(catalog: &Catalog, cluster: &Cluster) -> Decision {
    let spec = &cluster.spec;
    let current: &[LayoutNode] = cluster
        .status
        .as_ref()
        .map(|s| s.layout.as_slice())
        .unwrap_or_default();
    let kept = kept(current);
    if let Some(blocked) = template_unusable(catalog, &spec.template, &kept) {
        return blocked;
    }
    let request = Request {
        size: u32::try_from(spec.size).unwrap_or(0),
        services: spec.services.clone(),
        node_class: spec.node_class.clone(),
    };
    let prefix = cluster.name_any();
    match layout::solve_request(catalog, &spec.template, &request, current, &prefix) {
        Ok(Outcome::Solved { layout, objective }) => {
            let message = format!(
                "{} nodes ({}); total cost {}",
                layout.len(),
                summary(&layout),
                objective.cost
            );
            Decision {
                conditions: solved(&spec.template, true, "Solved", message),
                layout: (layout.as_slice() != current).then_some(layout),
                template_revision: layout::resolve::resolve(catalog, &spec.template)
                    .ok()
                    .map(|r| layout::resolve::revision(&r)),
            }
        }
        Ok(Outcome::Unsatisfiable(explanation)) => unsolved(solved(
            &spec.template,
            false,
            "Unsatisfiable",
            format!("{explanation}{kept}"),
        )),
        Err(RequestError::Invalid { findings, .. }) => {
            let (reason, message) = layout::validate::condition(&findings);
            not_valid(reason, message, &kept)
        }
        Err(RequestError::Request(message)) => not_valid("InvalidSpec", message, &kept),
        Err(RequestError::Solver(e)) => unsolved(solved(
            &spec.template,
            false,
            "SolverLimit",
            format!("{e}{kept}"),
        )),
    }
}

/// `Valid` False when the template is missing or partial.
fn template_unusable(catalog: &Catalog, template: &str, kept: &str) -> Option<Decision> {
    match catalog.templates.get(template) {
        None => Some(not_valid(
            "TemplateNotFound",
            format!(
                "spec.template: ClusterTemplate {template} does not exist; create it or name another"
            ),
            kept,
        )),
        Some(t) if t.partial => Some(not_valid(
            "PartialTemplate",
            format!(
                "spec.template: ClusterTemplate {template} is partial (other templates include it); name a complete template"
            ),
            kept,
        )),
        Some(_) => None,
    }
}

/// `Valid` True and `LayoutSolved` as given.
fn solved(
    template: &str,
    status: bool,
    reason: &'static str,
    message: String,
) -> Vec<Observed<'static>> {
    vec![
        Observed::new(
            types::VALID,
            true,
            "Valid",
            format!("template {template} and the request are valid"),
        ),
        Observed::new(types::LAYOUT_SOLVED, status, reason, message),
    ]
}

/// No new layout: the conditions say why.
fn unsolved(conditions: Vec<Observed<'static>>) -> Decision {
    Decision {
        conditions,
        layout: None,
        template_revision: None,
    }
}

/// `Valid` False for `reason`, and `LayoutSolved` False pointing at it.
fn not_valid(reason: &'static str, message: String, kept: &str) -> Decision {
    Decision {
        conditions: vec![
            Observed::new(types::VALID, false, reason, message),
            Observed::new(
                types::LAYOUT_SOLVED,
                false,
                "NotValid",
                format!("the cluster is not valid (see the Valid condition){kept}"),
            ),
        ],
        layout: None,
        template_revision: None,
    }
}

/// What the message says of a layout that stays.
fn kept(current: &[LayoutNode]) -> String {
    match current.len() {
        0 => String::new(),
        n => format!("; the previous layout of {n} nodes stays"),
    }
}

/// `2×[namenode], 3×[datanode]`: how many nodes run each service set, in
/// the order the sets first appear.
pub fn summary(layout: &[LayoutNode]) -> String {
    let mut sets: Vec<(&[String], usize)> = Vec::new();
    for node in layout {
        match sets
            .iter_mut()
            .find(|(s, _)| *s == node.services.as_slice())
        {
            Some((_, n)) => *n += 1,
            None => sets.push((&node.services, 1)),
        }
    }
    sets.iter()
        .map(|(s, n)| format!("{n}×[{}]", s.join(",")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A short hash of a layout.
pub fn layout_hash(layout: &[LayoutNode]) -> String {
    let bytes = serde_json::to_vec(layout).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

fn describe(cluster: &Cluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}
