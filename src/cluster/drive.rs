//! The Cluster controller's plan step: when the solved layout (or the
//! configuration) differs from what the nodes run, make a ClusterPlan and
//! drive it to its end — NodePools per node class for the nodes, the
//! NodeInstalls of the cluster's nodes for packages and hooks — then
//! record where the cluster stands in its conditions.
//!
//! A pass: observe (the cluster, its plan, its nodes, the halt) → decide
//! ([`super::execute::step`], pure) → record (the plan's status, by a
//! compare-and-swap on its resourceVersion) → act (idempotent, from the
//! recorded status only) → report (the Cluster's conditions and events).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::execute::{self, Desired, NodeView, World};
use super::{Context, Error};
use crate::api::conditions::{Observed, types};
use crate::api::{
    Cluster, ClusterPlan, ClusterPlanSpec, ClusterPlanStatus, ClusterRequest, LayoutNode,
    NodeInstall, NodePool, NodeTarget, Operation, PackageRepository, PlanApproval, PlanPhase,
};
use crate::layout::Catalog;
use crate::shared::status;

pub use crate::api::{CLUSTER_LABEL, CLUSTER_NAMESPACE_LABEL, NODE_LABEL};
/// The ClusterPlan annotation `theseus cluster approve` sets.
pub const APPROVED_ANNOTATION: &str = "theseus.dev/approved";
/// The Cluster finalizer: a deleted cluster runs its delete plan first.
pub const FINALIZER: &str = "theseus.dev/cluster";
/// How often a running plan is looked at.
const POLL: Duration = Duration::from_secs(2);

fn object(cluster: &Cluster) -> String {
    format!(
        "Cluster {}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

fn kube_err<'a>(
    cluster: &'a Cluster,
    step: &'static str,
) -> impl FnOnce(kube::Error) -> Error + 'a {
    move |source| Error::Act {
        object: object(cluster),
        step,
        source,
    }
}

/// A merge patch of `name`, its failure named by `step`.
async fn merge<K>(
    api: &Api<K>,
    name: &str,
    patch: &serde_json::Value,
    cluster: &Cluster,
    step: &'static str,
) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(kube_err(cluster, step))?;
    Ok(())
}

/// What a pass reads fresh besides the cluster, read while the cluster
/// is: the plan the cluster named (as cached) and the fleet's halt.
pub struct Reads {
    /// The plan's name, and the plan as read.
    pub(super) plan: (Option<String>, Result<Option<ClusterPlan>, kube::Error>),
    /// The halt as read.
    halt: Result<Option<crate::shared::halt::Halt>, kube::Error>,
}

impl Reads {
    /// Reads the plan `cluster` names, and the halt, both at once. A
    /// running plan whose status this replica wrote last is not read
    /// again: the API server's answer to that write is the plan as stored,
    /// unless someone else wrote it since — and then this pass's record,
    /// made over that version, fails, the plan is forgotten and the next
    /// pass reads it. (Only a running plan: one that is pending or awaits
    /// its approval is read, since its approval is another's write that
    /// no record of this replica would meet.)
    pub async fn of(cluster: &Cluster, cx: &Context) -> Reads {
        let name = cluster.status.as_ref().and_then(|s| s.plan.clone());
        let ns = cluster.namespace().unwrap_or_default();
        let plans: Api<ClusterPlan> = Api::namespaced(cx.ctx.client.clone(), &ns);
        let written = name.as_ref().and_then(|name| {
            let written = cx.plans_written.lock().unwrap();
            written
                .get(&written_key(&ns, name))
                .filter(|p| runs(p))
                .cloned()
        });
        let plan = async {
            match (&name, written) {
                (_, Some(plan)) => Ok(Some(plan)),
                (Some(name), None) => plans.get_opt(name).await,
                (None, None) => Ok(None),
            }
        };
        let (plan, halt) = tokio::join!(plan, cx.ctx.halt.get());
        Reads {
            plan: (name, plan),
            halt,
        }
    }
}

/// The key of a plan in [`Context::plans_written`].
fn written_key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// Whether `plan` is running (forward or turning back).
fn runs(plan: &ClusterPlan) -> bool {
    let phase = plan.status.as_ref().map(|s| s.phase);
    matches!(phase, Some(PlanPhase::Running | PlanPhase::RollingBack))
}

/// One pass over a cluster whose layout is solved (or that is deleted).
pub async fn drive(cluster: &Cluster, reads: Reads, cx: &Context) -> Result<Action, Error> {
    let began = std::time::Instant::now();
    let ns = cluster.namespace().unwrap_or_default();
    let clusters: Api<Cluster> = Api::namespaced(cx.ctx.client.clone(), &ns);
    let deleting = cluster.metadata.deletion_timestamp.is_some();
    let has_finalizer = cluster.finalizers().iter().any(|f| f == FINALIZER);
    if deleting && !has_finalizer {
        return Ok(Action::await_change());
    }
    if !deleting && !has_finalizer {
        let mut finalizers = cluster.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": cluster.resource_version() } });
        merge(
            &clusters,
            &cluster.name_any(),
            &patch,
            cluster,
            "AddFinalizer",
        )
        .await?;
    }
    let plans: Api<ClusterPlan> = Api::namespaced(cx.ctx.client.clone(), &ns);
    let mut st = cluster.status.clone().unwrap_or_default();
    let (current, halt) = match reads.plan {
        (name, read) if name == st.plan => (read, reads.halt),
        _ => {
            let plan = match &st.plan {
                Some(name) => plans.get_opt(name).await,
                None => Ok(None),
            };
            (plan, reads.halt)
        }
    };
    let current = current.map_err(kube_err(cluster, "ReadPlan"))?;
    let halted = halt.map_err(kube_err(cluster, "ReadHalt"))?.is_some();
    let catalog = cx.stores.catalog();
    let (goal, config) = goal(cluster, deleting);
    let current = supersede(cluster, current, &goal, &config, &plans).await?;
    let mut action = Action::requeue(POLL);
    let mut problem = None;
    let mut acting = None;
    let tenant = super::admit::tenant_of(cluster, cx);
    let mut admitted = None;
    let latest = match current {
        Some(mut plan) if !finished(&plan) || restored(cluster, &plan) => {
            let (next, act_on) = execute(
                cluster,
                &plan,
                (&plans, &catalog),
                (halted, tenant.as_deref()),
                cx,
            )
            .await?;
            acting = Some((plan.clone(), act_on));
            // A plan that ended in this pass is taken in with the same
            // status write that says no plan runs.
            plan.status = Some(next);
            if finished(&plan) {
                let phase = plan.status.as_ref().map(|s| s.phase);
                tracing::info!(cluster = %object(cluster), plan = %plan.name_any(), ?phase, "plan ended");
            }
            absorb(&mut st, Some(&plan));
            Some(plan)
        }
        last => {
            absorb(&mut st, last.as_ref());
            // A deleted cluster is done once nothing runs; another, once
            // it runs its layout with its configuration.
            let done = if deleting {
                st.applied_layout.is_empty()
            } else {
                hash_of(&goal, &config) == st.applied_hash.clone().unwrap_or_else(empty_hash)
            };
            let refused = match (&tenant, done || deleting) {
                (Some(t), false) => {
                    let (ok, condition) =
                        super::admit::admit(cluster, t, &goal, &catalog, cx).await?;
                    admitted = Some(condition);
                    !ok
                }
                _ => false,
            };
            if done {
                action = Action::requeue(Duration::from_secs(30));
                if deleting {
                    return finish_delete(cluster, &clusters, cx).await;
                }
                if let Some(t) = &tenant {
                    super::admit::settle(cluster, t, &st.applied_layout, &catalog, cx).await?;
                }
                last
            } else if refused {
                // Nothing is launched; a tenant's change, or this, tries
                // again.
                action = Action::requeue(Duration::from_secs(10));
                last
            } else if let Some(err) =
                start_plan(cluster, &mut st, &goal, &config, &catalog, &plans).await?
            {
                problem = Some(err);
                last
            } else {
                // The new plan's first pass, at once.
                action = Action::requeue(Duration::from_millis(50));
                match &st.plan {
                    Some(name) => plans
                        .get_opt(name)
                        .await
                        .map_err(kube_err(cluster, "ReadPlan"))?,
                    None => None,
                }
            }
        }
    };
    let health = Health::of(&st.applied_layout, &cluster_nodes(cluster, cx));
    let mut observed = conditions(&st, latest.as_ref(), halted, problem, &health);
    observed.extend(admitted);
    let reported = report(cluster, &clusters, st, observed, cx);
    // The nodes are told what the recorded plan asks of them while the
    // cluster's status is written: neither waits for the other.
    match &acting {
        Some((plan, acting)) => {
            let acted = act(cluster, plan, acting, &catalog, cx);
            let recorded = began.elapsed();
            let (acted, reported) = tokio::join!(acted, reported);
            acted?;
            reported?;
            tracing::debug!(
                cluster = %object(cluster),
                recorded_ms = recorded.as_millis() as u64,
                took_ms = began.elapsed().as_millis() as u64,
                "plan pass"
            );
        }
        None => reported.await?,
    }
    Ok(action)
}

/// How the nodes of the running layout are: Ready or not, the ones going
/// (marked for removal by a running plan) aside.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Health {
    /// Layout nodes whose NodeInstall is Ready.
    pub ready: usize,
    /// Layout nodes that count.
    pub total: usize,
    /// The ones that are not Ready, with why.
    pub not_ready: Vec<String>,
}

impl Health {
    /// The health of `layout` on `installs`.
    pub fn of(layout: &[LayoutNode], installs: &[NodeInstall]) -> Health {
        let mut health = Health::default();
        // A node without services has no package set to be Ready with.
        for node in layout.iter().filter(|n| !n.services.is_empty()) {
            let install = installs
                .iter()
                .find(|n| n.labels().get(NODE_LABEL) == Some(&node.name));
            if install.is_some_and(|n| n.annotations().contains_key(crate::api::REMOVE_ANNOTATION))
            {
                continue;
            }
            health.total += 1;
            match install.and_then(view) {
                Some((_, v)) if v.ready => health.ready += 1,
                Some((_, v)) => health.not_ready.push(format!(
                    "{}: {}",
                    node.name,
                    v.message.as_deref().unwrap_or("not Ready")
                )),
                None => health.not_ready.push(format!("{}: no node", node.name)),
            }
        }
        health
    }
}

/// A plan that has not started a task and no longer leads to the goal
/// (the layout or configuration changed meanwhile) is deleted: a new one
/// is made.
async fn supersede(
    cluster: &Cluster,
    current: Option<ClusterPlan>,
    goal: &[LayoutNode],
    config: &BTreeMap<String, String>,
    plans: &Api<ClusterPlan>,
) -> Result<Option<ClusterPlan>, Error> {
    let Some(plan) = current else { return Ok(None) };
    let phase = plan.status.as_ref().map(|s| s.phase).unwrap_or_default();
    let idle = matches!(phase, PlanPhase::Pending | PlanPhase::AwaitingApproval);
    let stale = hash_of(&plan.spec.to, &plan.spec.config) != hash_of(goal, config);
    if !(idle && stale) || cluster.metadata.deletion_timestamp.is_some() {
        return Ok(Some(plan));
    }
    match plans.delete(&plan.name_any(), &Default::default()).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(kube_err(cluster, "DeletePlan")(e)),
    }
}

fn empty_hash() -> String {
    hash_of(&[], &BTreeMap::new())
}

/// What the cluster should run: the solved layout and the configuration,
/// or no node once it is deleted (the delete plan's hooks still see the
/// configuration).
fn goal(cluster: &Cluster, deleting: bool) -> (Vec<LayoutNode>, BTreeMap<String, String>) {
    if deleting {
        return (Vec::new(), cluster.spec.config.clone());
    }
    let layout = cluster
        .status
        .as_ref()
        .map(|s| s.layout.clone())
        .unwrap_or_default();
    (layout, cluster.spec.config.clone())
}

/// A hash of a layout with its configuration.
pub fn hash_of(layout: &[LayoutNode], config: &BTreeMap<String, String>) -> String {
    let mut nodes = layout.to_vec();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let bytes = serde_json::to_vec(&(nodes, config)).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))[..16].to_owned()
}

/// The plan stopped at a failure and the cluster's spec is back at what it
/// started from (its layout and configuration): what the plan ran is to
/// be undone by its inverse, as if it had rolled back.
fn restored(cluster: &Cluster, plan: &ClusterPlan) -> bool {
    let deleting = cluster.metadata.deletion_timestamp.is_some();
    let (goal, config) = goal(cluster, deleting);
    !deleting
        && plan.status.as_ref().is_some_and(execute::stopped_forward)
        && hash_of(&goal, &config) == hash_of(&plan.spec.from, &plan.spec.from_config)
}

fn finished(plan: &ClusterPlan) -> bool {
    matches!(
        plan.status.as_ref().map(|s| s.phase),
        Some(PlanPhase::Succeeded | PlanPhase::Failed | PlanPhase::RolledBack)
    )
}

/// Takes in where the last plan (as read this pass) left the cluster: a
/// plan that succeeded moved it to its `to` layout and configuration.
fn absorb(st: &mut crate::api::ClusterStatus, last: Option<&ClusterPlan>) {
    let Some(plan) = last else { return };
    if plan.status.as_ref().map(|s| s.phase) == Some(PlanPhase::Succeeded) {
        st.applied_layout = plan.spec.to.clone();
        st.applied_config = plan.spec.config.clone();
        st.applied_hash = Some(hash_of(&plan.spec.to, &plan.spec.config));
        st.applied_request = plan.spec.request.clone();
    }
}

/// The operation that takes `from` to `to`, with the configuration
/// change `from_config` → `config`.
pub fn operation(
    from: &[LayoutNode],
    to: &[LayoutNode],
    from_config: &BTreeMap<String, String>,
    config: &BTreeMap<String, String>,
) -> Operation {
    let same = |a: &[LayoutNode], b: &[LayoutNode]| {
        let key = |l: &[LayoutNode]| -> BTreeSet<(String, String, Vec<String>)> {
            l.iter()
                .map(|n| {
                    let mut s = n.services.clone();
                    s.sort();
                    (n.name.clone(), n.node_class.clone(), s)
                })
                .collect()
        };
        key(a) == key(b)
    };
    if from.is_empty() {
        return Operation::Create;
    }
    if to.is_empty() {
        return Operation::Delete;
    }
    if same(from, to) && from_config != config {
        return Operation::Reconfigure {
            services: affected(to, from_config, config),
        };
    }
    let grows = from.iter().all(|f| {
        to.iter().any(|t| {
            t.name == f.name
                && t.node_class == f.node_class
                && f.services.iter().all(|s| t.services.contains(s))
        })
    });
    if grows && from.len() == to.len() {
        Operation::AddServices
    } else {
        Operation::Scale
    }
}

/// The services a configuration change touches: a key `SERVICE.KEY`
/// touches SERVICE, any other key every service.
fn affected(
    layout: &[LayoutNode],
    from: &BTreeMap<String, String>,
    to: &BTreeMap<String, String>,
) -> Vec<String> {
    let all: BTreeSet<&String> = layout.iter().flat_map(|n| &n.services).collect();
    let keys: BTreeSet<&String> = from.keys().chain(to.keys()).collect();
    let mut touched = BTreeSet::new();
    for key in keys.into_iter().filter(|k| from.get(*k) != to.get(*k)) {
        match key.split_once('.') {
            Some((service, _)) if all.contains(&service.to_owned()) => {
                touched.insert(service.to_owned());
            }
            _ => touched.extend(all.iter().map(|s| s.to_string())),
        }
    }
    touched.into_iter().collect()
}

/// Makes the plan from what the nodes run to `goal`, unless the same
/// change already failed (its plan, named by the change, still exists:
/// delete it to try again). Returns the planner's refusal, if any.
async fn start_plan(
    cluster: &Cluster,
    st: &mut crate::api::ClusterStatus,
    goal: &[LayoutNode],
    config: &BTreeMap<String, String>,
    catalog: &Catalog,
    plans: &Api<ClusterPlan>,
) -> Result<Option<String>, Error> {
    let from = st.applied_layout.clone();
    let from_config = st.applied_config.clone();
    let mut operation = operation(&from, goal, &from_config, config);
    // A layout change keeps the configuration the nodes run; the
    // configuration's change is its own reconfigure plan afterwards.
    let plan_config = match operation {
        Operation::Scale | Operation::AddServices => from_config.clone(),
        _ => config.clone(),
    };
    if matches!(operation, Operation::Reconfigure { ref services } if services.is_empty()) {
        operation = Operation::Restart;
    }
    let name = plan_name(cluster, &from, &from_config, goal, &plan_config);
    if let Some(existing) = plans
        .get_opt(&name)
        .await
        .map_err(kube_err(cluster, "ReadPlan"))?
    {
        st.plan = Some(existing.name_any());
        return Ok(None);
    }
    let made = crate::plan::plan(&from, goal, catalog, &operation)
        .and_then(|p| Ok((p, crate::plan::inverse(&from, goal, catalog, &operation)?)));
    let (forward, back) = match made {
        Ok(plans) => plans,
        Err(e) => {
            return Ok(Some(format!(
                "no plan from the running layout to the solved one: {e}"
            )));
        }
    };
    // A create starts from nothing: there is no spec to put back.
    let from_request = st.applied_request.clone().filter(|_| !from.is_empty());
    let spec = ClusterPlanSpec {
        cluster: cluster.name_any(),
        operation,
        from,
        to: goal.to_vec(),
        tasks: forward.tasks,
        config: plan_config,
        from_config,
        inverse: back.tasks,
        request: Some(ClusterRequest::of(&cluster.spec)),
        from_request,
    };
    let mut plan = ClusterPlan::new(&name, spec);
    plan.metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: cluster.namespace(),
        labels: Some(cluster_labels(cluster)),
        owner_references: cluster.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    };
    match plans.create(&PostParams::default(), &plan).await {
        Ok(_) => tracing::info!(
            cluster = %object(cluster),
            plan = %name,
            operation = plan.spec.operation.name(),
            tasks = plan.spec.tasks.len(),
            "made a plan"
        ),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(kube_err(cluster, "CreatePlan")(e)),
    }
    st.plan = Some(name);
    Ok(None)
}

/// `CLUSTER-<hash of the change and the cluster's generation>`: the same
/// change of the same spec, the same name — a pass repeated after a crash
/// finds the plan it made, and a change that failed is not tried again
/// until the spec changes or its plan is deleted; a change made again
/// later (scaled up, down, then up) gets a plan of its own.
fn plan_name(
    cluster: &Cluster,
    from: &[LayoutNode],
    from_config: &BTreeMap<String, String>,
    to: &[LayoutNode],
    config: &BTreeMap<String, String>,
) -> String {
    let change = format!(
        "{}>{}@{}",
        hash_of(from, from_config),
        hash_of(to, config),
        cluster.metadata.generation.unwrap_or_default()
    );
    let digest = hex::encode(Sha256::digest(change.as_bytes()));
    let mut base = cluster.name_any();
    base.truncate(240);
    format!("{base}-{}", &digest[..10])
}

/// The labels the cluster's plans, pools and nodes carry: the cluster's
/// own (so an operator's `--selector` sees them) and the cluster's name.
fn cluster_labels(cluster: &Cluster) -> BTreeMap<String, String> {
    let mut labels = cluster.labels().clone();
    labels.insert(CLUSTER_LABEL.into(), cluster.name_any());
    labels.insert(
        CLUSTER_NAMESPACE_LABEL.into(),
        cluster.namespace().unwrap_or_default(),
    );
    labels
}

/// The NodePool of the cluster's nodes of `class`: `CLUSTER-CLASS`, cut
/// short, and a hash of the namespace, cluster and class, so that it is
/// unique and fits a label value (the nodes carry it) with room for the
/// node's sequence number.
pub fn pool_name(cluster: &Cluster, class: &str) -> String {
    let ns = cluster.namespace().unwrap_or_default();
    let full = format!("{ns}/{}/{class}", cluster.name_any());
    let digest = hex::encode(Sha256::digest(full.as_bytes()));
    let mut readable = format!("{}-{class}", cluster.name_any());
    readable.truncate(40);
    let readable = readable.trim_end_matches('-');
    format!("{readable}-{}", &digest[..8])
}

/// What [`act`] needs besides the plan.
struct Acting {
    /// What the nodes should have.
    desired: Desired,
    /// The cluster's nodes.
    installs: Vec<NodeInstall>,
    /// The repositories of the targets the nodes are to be given.
    repositories: BTreeMap<String, PackageRepository>,
    /// Each layout node's rank ([`execute::ranks`], of the plan's spec:
    /// computed once a pass), the order in which nodes are bound and told.
    rank: BTreeMap<String, usize>,
}

/// One pass of a running plan: step and record; returns the plan's status
/// as recorded, with what the nodes should have and the nodes (for
/// [`act`], which the caller runs beside the cluster's status write).
async fn execute(
    cluster: &Cluster,
    plan: &ClusterPlan,
    (plans, catalog): (&Api<ClusterPlan>, &Catalog),
    (halted, tenant): (bool, Option<&crate::api::Tenant>),
    cx: &Context,
) -> Result<(ClusterPlanStatus, Acting), Error> {
    // A tenant with `workers`: its lock is held until this pass's
    // recorded, so its plans' passes count and start tasks one at a time.
    let workers = tenant.and_then(|t| Some((t, t.spec.workers?)));
    let _turn = match workers {
        Some((t, _)) => {
            let lock = cx
                .workers
                .lock()
                .unwrap()
                .entry(t.name_any())
                .or_default()
                .clone();
            Some(lock.lock_owned().await)
        }
        None => None,
    };
    let slots = match workers {
        Some((t, n)) => {
            let elsewhere = running_elsewhere(cluster, plan, t, cx).await?;
            Some((n.max(0) as usize).saturating_sub(elsewhere))
        }
        None => None,
    };
    let mut installs = cluster_nodes(cluster, cx);
    let status = plan.status.clone().unwrap_or_default();
    let plan_id = format!("{}.{}", plan.name_any(), plan.uid().unwrap_or_default());
    let name = cluster.name_any();
    let now = Timestamp::now();
    let rank = execute::ranks(&plan.spec);
    // Nodes that registered since the last pass are bound first, so that
    // this pass's step sees them (their createNode ends now, not a pass
    // later).
    {
        let views = views(&installs);
        let world = world(
            cluster, plan, &views, catalog, halted, &name, &plan_id, now, slots,
        );
        let desired = execute::desired(&plan.spec, &status, &world);
        let nodes: Api<NodeInstall> = Api::all(cx.ctx.client.clone());
        for (install, node) in bind(cluster, (&desired, &rank), &installs, &nodes).await? {
            if let Some(ni) = installs.iter_mut().find(|n| n.name_any() == install) {
                ni.labels_mut().insert(NODE_LABEL.into(), node);
            }
        }
    }
    let views = views(&installs);
    let world = world(
        cluster, plan, &views, catalog, halted, &name, &plan_id, now, slots,
    );
    let next = execute::step(&plan.spec, &status, &world);
    let desired = execute::desired(&plan.spec, &next, &world);
    // The repositories of the targets the nodes are to be given are read
    // while the step is recorded (a read may go before the record; only
    // the writes to the nodes wait for it).
    let record = async {
        match next != status {
            true => record_plan(cluster, plan, &next, (plans, cx)).await,
            false => Ok(()),
        }
    };
    let (recorded, repositories) = tokio::join!(
        record,
        repositories(cluster, &desired, &installs, catalog, cx)
    );
    recorded?;
    let acting = Acting {
        desired,
        installs,
        repositories: repositories?,
        rank,
    };
    Ok((next, acting))
}

/// What a step of `plan` reads besides the plan.
#[allow(clippy::too_many_arguments)]
fn world<'a>(
    cluster: &Cluster,
    plan: &ClusterPlan,
    views: &'a BTreeMap<String, NodeView>,
    catalog: &'a Catalog,
    halted: bool,
    name: &'a str,
    plan_id: &'a str,
    now: Timestamp,
    slots: Option<usize>,
) -> World<'a> {
    World {
        nodes: views,
        catalog,
        cluster: name,
        plan: plan_id,
        halted,
        paused: cluster.spec.paused,
        manual: cluster.spec.plan_approval == PlanApproval::Manual,
        approved: plan
            .annotations()
            .get(APPROVED_ANNOTATION)
            .map(String::as_str)
            == Some("true"),
        task_retries: cluster.spec.strategy.task_retries,
        on_failure: cluster.spec.strategy.on_failure,
        // A deleted cluster turns back the plan it was running, not
        // the delete plan that follows it.
        cancel: cluster.metadata.deletion_timestamp.is_some()
            && plan.spec.operation != Operation::Delete,
        revert: restored(cluster, plan),
        now,
        slots,
    }
}

/// The tasks running now in the other plans of `tenant`'s clusters (read
/// fresh, not from a cache: a worker another pass just took counts).
async fn running_elsewhere(
    cluster: &Cluster,
    plan: &ClusterPlan,
    tenant: &crate::api::Tenant,
    cx: &Context,
) -> Result<usize, Error> {
    let mut running = 0;
    for ns in crate::quota::namespaces(tenant) {
        let plans: Api<ClusterPlan> = Api::namespaced(cx.ctx.client.clone(), &ns);
        let list = plans
            .list(&kube::api::ListParams::default())
            .await
            .map_err(kube_err(cluster, "ListTenantPlans"))?;
        running += list
            .items
            .iter()
            .filter(|p| p.uid() != plan.uid())
            .filter_map(|p| p.status.as_ref())
            .flat_map(|s| s.tasks.iter().chain(&s.rollback))
            .filter(|t| t.state == crate::api::TaskState::Running)
            .count();
    }
    Ok(running)
}

/// The NodeInstalls of the cluster's pools, from the shared store.
fn cluster_nodes(cluster: &Cluster, cx: &Context) -> Vec<NodeInstall> {
    let (name, ns) = (cluster.name_any(), cluster.namespace().unwrap_or_default());
    cx.ctx
        .stores
        .nodes
        .store()
        .state()
        .iter()
        .filter(|n| {
            n.labels().get(CLUSTER_LABEL) == Some(&name)
                && n.labels().get(CLUSTER_NAMESPACE_LABEL) == Some(&ns)
        })
        .map(|n| (**n).clone())
        .collect()
}

/// The bound nodes as the executor sees them.
fn views(installs: &[NodeInstall]) -> BTreeMap<String, NodeView> {
    installs.iter().filter_map(view).collect()
}

/// A bound node as the executor sees it: its layout node and its view.
pub(super) fn view(n: &NodeInstall) -> Option<(String, NodeView)> {
    let node = n.labels().get(NODE_LABEL)?.clone();
    let st = n.status.clone().unwrap_or_default();
    let ready = st
        .conditions
        .iter()
        .any(|c| c.type_ == types::READY && c.status == "True");
    Some((
        node,
        NodeView {
            install: n.name_any(),
            registered: st.heartbeat.is_some(),
            active: st.active.clone(),
            failed_hash: st.failed_hash.clone(),
            message: st.message.clone(),
            tasks: st.tasks.clone(),
            ready,
        },
    ))
}

/// record: the plan's status, only over the version observed (a
/// concurrent writer makes this pass end and the next start over).
pub(super) async fn record_plan(
    cluster: &Cluster,
    plan: &ClusterPlan,
    next: &ClusterPlanStatus,
    (plans, cx): (&Api<ClusterPlan>, &Context),
) -> Result<(), Error> {
    let mut updated = plan.clone();
    updated.status = Some(next.clone());
    let key = written_key(&plan.namespace().unwrap_or_default(), &plan.name_any());
    let written = plans
        .replace_status(&plan.name_any(), &PostParams::default(), &updated)
        .await;
    // Only running plans are kept: a plan that ended is read no more.
    let mut cache = cx.plans_written.lock().unwrap();
    match written {
        Ok(stored) if runs(&stored) => {
            cache.insert(key, stored);
            Ok(())
        }
        Ok(_) => {
            cache.remove(&key);
            Ok(())
        }
        Err(e) => {
            cache.remove(&key);
            Err(kube_err(cluster, "WritePlan")(e))
        }
    }
}

/// act: pools sized to the nodes that should exist (the ones going
/// marked first), new pool nodes bound to layout nodes, and each bound
/// node's packages and hook.
async fn act(
    cluster: &Cluster,
    plan: &ClusterPlan,
    acting: &Acting,
    catalog: &Catalog,
    cx: &Context,
) -> Result<(), Error> {
    let Acting {
        desired,
        installs,
        repositories,
        rank,
    } = acting;
    let nodes: Api<NodeInstall> = Api::all(cx.ctx.client.clone());
    let bound: BTreeMap<String, &NodeInstall> = installs
        .iter()
        .filter_map(|n| Some((n.labels().get(NODE_LABEL)?.clone(), n)))
        .collect();
    for node in &desired.deleting {
        if let Some(ni) = bound.get(node)
            && !ni.annotations().contains_key(crate::api::REMOVE_ANNOTATION)
        {
            let patch =
                json!({ "metadata": { "annotations": { crate::api::REMOVE_ANNOTATION: "true" } } });
            merge(&nodes, &ni.name_any(), &patch, cluster, "MarkRemoval").await?;
        }
    }
    size_pools(cluster, plan, desired, catalog, cx).await?;
    bind(cluster, (desired, rank), installs, &nodes).await?;
    // The nodes are told at once, not one after another: a task on the
    // last node in name order starts as soon as one on the first. The
    // writes go out with the nodes of the most plan behind them first:
    // when there are more than run at once, the critical path's go first.
    let mut order: Vec<(&String, &&NodeInstall)> = bound.iter().collect();
    order.sort_by_key(|(node, _)| critical_first(rank, node));
    let mut puts = Vec::new();
    for (node, ni) in order {
        if desired.exists.contains_key(node) {
            puts.push(put_node(
                cluster,
                ni,
                desired,
                node,
                (catalog, repositories),
                &nodes,
            ));
        }
    }
    in_parallel(puts).await
}

/// Runs `writes`, up to [`PARALLEL_WRITES`] at a time (the next starts as
/// soon as one ends); the first error ends it.
async fn in_parallel<F>(writes: Vec<F>) -> Result<(), Error>
where
    F: std::future::Future<Output = Result<(), Error>>,
{
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(writes)
        .buffer_unordered(PARALLEL_WRITES)
        .try_collect()
        .await
}

/// How many nodes a pass writes to at once.
const PARALLEL_WRITES: usize = 32;

/// One NodePool per node class of the plan, with as many replicas as
/// nodes of the class should exist.
async fn size_pools(
    cluster: &Cluster,
    plan: &ClusterPlan,
    desired: &Desired,
    catalog: &Catalog,
    cx: &Context,
) -> Result<(), Error> {
    let classes: BTreeSet<&String> = plan
        .spec
        .from
        .iter()
        .chain(&plan.spec.to)
        .map(|n| &n.node_class)
        .collect();
    let pools: Api<NodePool> = Api::all(cx.ctx.client.clone());
    for class in classes {
        let Some(nc) = catalog.node_classes.get(class) else {
            continue;
        };
        let replicas = desired.exists.values().filter(|c| *c == class).count();
        let mut node_labels = nc.node_labels.clone();
        node_labels.extend(cluster_labels(cluster));
        let pool = json!({
            "apiVersion": "theseus.dev/v1alpha1",
            "kind": "NodePool",
            "metadata": { "name": pool_name(cluster, class), "labels": cluster_labels(cluster) },
            "spec": {
                "replicas": replicas,
                "provider": nc.provider,
                "nodeLabels": node_labels,
                "drainTimeoutSeconds": 30,
                "drainTimeoutPolicy": "Force",
            },
        });
        let name = pool_name(cluster, class);
        // Keyed by the cluster's uid too: a cluster made again under the
        // same name gets its pools applied at once.
        let key = format!("{}/{name}", cluster.uid().unwrap_or_default());
        let fresh = |(applied, at): &(serde_json::Value, std::time::Instant)| {
            *applied == pool && at.elapsed() < super::POOL_REAPPLY
        };
        if cx
            .pools_applied
            .lock()
            .unwrap()
            .get(&key)
            .is_some_and(fresh)
        {
            continue;
        }
        pools
            .patch(
                &name,
                &PatchParams::apply(crate::shared::MANAGER).force(),
                &Patch::Apply(&pool),
            )
            .await
            .map_err(kube_err(cluster, "ApplyNodePool"))?;
        let now = std::time::Instant::now();
        cx.pools_applied.lock().unwrap().insert(key, (pool, now));
    }
    Ok(())
}

/// Binds each unbound node of a class's pool to a layout node of that
/// class that should exist and has none: the nodes that registered first
/// (then the oldest) to the layout nodes with the most of the plan behind
/// them (see [`execute::ranks`]), so that a launch slower than the others
/// does not hold up the plan's critical path.
async fn bind(
    cluster: &Cluster,
    (desired, rank): (&Desired, &BTreeMap<String, usize>),
    installs: &[NodeInstall],
    nodes: &Api<NodeInstall>,
) -> Result<Vec<(String, String)>, Error> {
    let binds = binds(cluster, (desired, rank), installs);
    let patches: Vec<serde_json::Value> = binds
        .iter()
        .map(|(_, node)| json!({ "metadata": { "labels": { NODE_LABEL: node } } }))
        .collect();
    let mut writes = Vec::new();
    for ((name, _), patch) in binds.iter().zip(&patches) {
        writes.push(merge(nodes, name, patch, cluster, "BindNode"));
    }
    in_parallel(writes).await?;
    Ok(binds)
}

/// The sort key that puts the layout nodes of highest `rank` first.
fn critical_first(rank: &BTreeMap<String, usize>, node: &str) -> std::cmp::Reverse<usize> {
    std::cmp::Reverse(rank.get(node).copied().unwrap_or(0))
}

/// Which unbound NodeInstall goes to which layout node (see [`bind`]).
fn binds(
    cluster: &Cluster,
    (desired, rank): (&Desired, &BTreeMap<String, usize>),
    installs: &[NodeInstall],
) -> Vec<(String, String)> {
    let bound: BTreeSet<&String> = installs
        .iter()
        .filter_map(|n| n.labels().get(NODE_LABEL))
        .collect();
    // Per pool, its unbound nodes: the registered first, then the oldest.
    let mut free: BTreeMap<String, Vec<&NodeInstall>> = BTreeMap::new();
    for ni in installs {
        let unbound = !ni.labels().contains_key(NODE_LABEL)
            && !ni.annotations().contains_key(crate::api::REMOVE_ANNOTATION);
        let pool = ni.labels().get(crate::api::POOL_TAG).cloned();
        if let (true, Some(pool)) = (unbound, pool) {
            free.entry(pool).or_default().push(ni);
        }
    }
    let mut free: BTreeMap<String, std::vec::IntoIter<&NodeInstall>> = free
        .into_iter()
        .map(|(pool, mut nodes)| {
            nodes.sort_by_key(|n| {
                let registered = n.status.as_ref().is_some_and(|s| s.heartbeat.is_some());
                (
                    !registered,
                    n.creation_timestamp().map(|t| t.0),
                    n.name_any(),
                )
            });
            (pool, nodes.into_iter())
        })
        .collect();
    let mut wanted: Vec<(&String, &String)> = desired
        .exists
        .iter()
        .filter(|(node, _)| !bound.contains(node))
        .collect();
    wanted.sort_by_key(|(node, _)| (critical_first(rank, node), *node));
    wanted
        .into_iter()
        .filter_map(|(node, class)| {
            let ni = free.get_mut(&pool_name(cluster, class))?.next()?;
            Some((ni.name_any(), node.clone()))
        })
        .collect()
}

/// The node's target (its services' packages) and hook, when they differ
/// from what it has.
async fn put_node(
    cluster: &Cluster,
    ni: &NodeInstall,
    desired: &Desired,
    node: &str,
    (catalog, repositories): (&Catalog, &BTreeMap<String, PackageRepository>),
    nodes: &Api<NodeInstall>,
) -> Result<(), Error> {
    let mut patch = serde_json::Map::new();
    // (The repository was read for exactly these packages.)
    if let Some(packages) = new_packages(ni, desired, node)
        && let Some(repo) = repositories.get(repository_of(packages, catalog))
    {
        patch.insert("target".into(), json!(target(cluster, packages, repo)));
    }
    // The hooks the node should run. The list it holds is written again
    // only when it lacks one of them or holds one that is neither asked
    // for nor finished (abandoned, or given back while queued): hooks
    // that finished may stay, so a queued hook's end costs no write. A
    // merge patch replaces a list whole.
    let tasks = desired.hooks.get(node).map_or(&[][..], Vec::as_slice);
    let held = &ni.spec.tasks;
    let missing = tasks.iter().any(|t| !held.contains(t));
    let stale = held
        .iter()
        .any(|t| !tasks.contains(t) && !desired.finished_hooks.contains(&t.id));
    if missing || stale {
        patch.insert("tasks".into(), json!(tasks));
    }
    let want = desired.next.get(node);
    let next = next_target(cluster, want, catalog, repositories);
    if let Some(next) = next_change(want, ni.spec.next.as_ref(), next, !patch.is_empty()) {
        patch.insert("next".into(), next);
    }
    if patch.is_empty() {
        return Ok(());
    }
    merge(
        nodes,
        &ni.name_any(),
        &json!({ "spec": patch }),
        cluster,
        "WriteNode",
    )
    .await
}

/// What a node's `spec.next` (now `held`) is to become, if anything: the
/// set it will install next (`want`, made into `next` from the
/// repository read for it) when that changed; null when none is wanted,
/// only if the node is written anyway (`writing`: an outdated `next` is
/// harmless, not worth a write of its own).
fn next_change(
    want: Option<&Vec<String>>,
    held: Option<&NodeTarget>,
    next: Option<NodeTarget>,
    writing: bool,
) -> Option<serde_json::Value> {
    if want == held.map(|t| &t.packages) {
        return None;
    }
    match (want, next) {
        (Some(_), Some(next)) => Some(json!(next)),
        (None, _) if writing => Some(serde_json::Value::Null),
        _ => None,
    }
}

/// The packages `ni` (bound to `node`) is to be given, when they differ
/// from its target's.
fn new_packages<'d>(ni: &NodeInstall, desired: &'d Desired, node: &str) -> Option<&'d [String]> {
    let packages = desired.packages.get(node)?;
    let have = ni.spec.target.as_ref().map(|t| &t.packages);
    (!packages.is_empty() && have != Some(packages)).then_some(packages.as_slice())
}

/// The repository that carries `packages`: the one of the services that
/// name them.
fn repository_of<'c>(packages: &[String], catalog: &'c Catalog) -> &'c str {
    catalog
        .services
        .values()
        .filter(|s| s.packages.iter().any(|p| packages.contains(p)))
        .find_map(|s| s.repository.as_deref())
        .unwrap_or_default()
}

/// The repositories of the new targets of the bound nodes and of the sets
/// they will install next, by name, read each once.
async fn repositories(
    cluster: &Cluster,
    desired: &Desired,
    installs: &[NodeInstall],
    catalog: &Catalog,
    cx: &Context,
) -> Result<BTreeMap<String, PackageRepository>, Error> {
    let targets = installs
        .iter()
        .filter_map(|ni| new_packages(ni, desired, ni.labels().get(NODE_LABEL)?));
    let nexts = installs.iter().filter_map(|ni| {
        let next = desired.next.get(ni.labels().get(NODE_LABEL)?)?;
        let held = ni.spec.next.as_ref().map(|t| &t.packages);
        (held != Some(next)).then_some(next.as_slice())
    });
    let names: BTreeSet<&str> = targets
        .chain(nexts)
        .map(|packages| repository_of(packages, catalog))
        .collect();
    let repos: Api<PackageRepository> = Api::all(cx.ctx.client.clone());
    let read = names.into_iter().map(|name| {
        let repos = &repos;
        async move {
            Ok::<_, Error>((
                name.to_owned(),
                repos
                    .get(name)
                    .await
                    .map_err(kube_err(cluster, "ReadRepository"))?,
            ))
        }
    });
    futures::future::try_join_all(read)
        .await
        .map(|read| read.into_iter().collect())
}

/// The set a node bound to a layout node will install next (its
/// `spec.next`), when it will install one and its repository was read.
fn next_target(
    cluster: &Cluster,
    packages: Option<&Vec<String>>,
    catalog: &Catalog,
    repositories: &BTreeMap<String, PackageRepository>,
) -> Option<NodeTarget> {
    let packages = packages?;
    let repo = repositories.get(repository_of(packages, catalog))?;
    Some(target(cluster, packages, repo))
}

/// A target of `packages` from `repo`, the repository of the services
/// that carry them.
fn target(cluster: &Cluster, packages: &[String], repo: &PackageRepository) -> NodeTarget {
    let ids: Vec<crate::pkg::PackageId> = packages.iter().filter_map(|p| p.parse().ok()).collect();
    NodeTarget {
        package_set: format!("cluster:{}", cluster.name_any()),
        set_hash: crate::pkg::set_hash(&ids),
        packages: packages.to_vec(),
        repository_url: repo.spec.url.clone(),
        public_keys: repo.spec.public_keys.clone(),
        health_timeout_seconds: None,
        sources: Vec::new(),
        secrets: Vec::new(),
    }
}

/// A deleted cluster whose delete plan finished: its pools go, then the
/// finalizer.
async fn finish_delete(
    cluster: &Cluster,
    clusters: &Api<Cluster>,
    cx: &Context,
) -> Result<Action, Error> {
    super::admit::release(cluster, cx).await?;
    let pools: Api<NodePool> = Api::all(cx.ctx.client.clone());
    let selector = format!("{CLUSTER_LABEL}={}", cluster.name_any());
    let owned = pools
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(kube_err(cluster, "ListNodePools"))?;
    for pool in owned
        .items
        .iter()
        .filter(|p| p.labels().get(CLUSTER_NAMESPACE_LABEL) == cluster.namespace().as_ref())
    {
        match pools.delete(&pool.name_any(), &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(kube_err(cluster, "DeleteNodePool")(e)),
        }
    }
    let patch = crate::shared::without_finalizer(cluster, FINALIZER);
    merge(
        clusters,
        &cluster.name_any(),
        &patch,
        cluster,
        "RemoveFinalizer",
    )
    .await?;
    if let Ok(mut solved) = cx.solved.lock() {
        solved.remove(&cluster.uid().unwrap_or_default());
    }
    Ok(Action::await_change())
}

/// report: the cluster's conditions from its plan, written with the
/// applied layout; events for the conditions that changed.
async fn report(
    cluster: &Cluster,
    clusters: &Api<Cluster>,
    mut st: crate::api::ClusterStatus,
    observed: Vec<Observed<'static>>,
    cx: &Context,
) -> Result<(), Error> {
    let before = st.clone();
    let changed = status::merge(
        &mut st.conditions,
        observed,
        cluster.metadata.generation,
        Timestamp::now(),
    );
    if st != before || !changed.is_empty() {
        status::apply_status(clusters, &cluster.name_any(), &st)
            .await
            .map_err(kube_err(cluster, "WriteStatus"))?;
    }
    status::publish(&cx.recorder, &cluster.object_ref(&()), &changed).await;
    Ok(())
}

/// Halted, Progressing and Degraded from the plan; Available from the
/// running layout's nodes.
pub fn conditions(
    st: &crate::api::ClusterStatus,
    plan: Option<&ClusterPlan>,
    halted: bool,
    problem: Option<String>,
    health: &Health,
) -> Vec<Observed<'static>> {
    let plan_status = plan.and_then(|p| p.status.clone()).unwrap_or_default();
    let phase = plan.map(|_| plan_status.phase);
    let progress = plan_status.progress.clone().unwrap_or_default();
    let name = plan.map(|p| p.name_any()).unwrap_or_default();
    let running = matches!(
        phase,
        Some(
            PlanPhase::Pending
                | PlanPhase::AwaitingApproval
                | PlanPhase::Running
                | PlanPhase::RollingBack
        )
    );
    vec![
        halted_condition(halted),
        if running {
            let message = format!("plan {name} ({:?}): {progress}", plan_status.phase);
            Observed::new(types::PROGRESSING, true, "PlanRunning", message)
        } else {
            Observed::new(
                types::PROGRESSING,
                false,
                "Complete",
                format!("no plan runs; the last: {name}"),
            )
        },
        degraded(phase, &name, plan_status.message.as_deref(), problem),
        available(st, health),
    ]
}

fn available(st: &crate::api::ClusterStatus, health: &Health) -> Observed<'static> {
    if st.applied_layout.is_empty() {
        return Observed::new(types::AVAILABLE, false, "NotRunning", "no layout runs yet");
    }
    if health.ready < health.total {
        let message = format!(
            "{} of {} nodes ready; {}",
            health.ready,
            health.total,
            health.not_ready.join("; ")
        );
        return Observed::new(types::AVAILABLE, false, "NodesNotReady", message);
    }
    let message = format!(
        "{} nodes run the layout {}, every one Ready",
        st.applied_layout.len(),
        st.applied_hash.as_deref().unwrap_or_default()
    );
    Observed::new(types::AVAILABLE, true, "LayoutRunning", message)
}

fn halted_condition(halted: bool) -> Observed<'static> {
    if halted {
        let message = "the fleet is halted: no plan starts a task until `theseus resume`";
        Observed::new(types::HALTED, true, "Halted", message)
    } else {
        Observed::new(types::HALTED, false, "NotHalted", "plans run")
    }
}

fn degraded(
    phase: Option<PlanPhase>,
    name: &str,
    message: Option<&str>,
    problem: Option<String>,
) -> Observed<'static> {
    let message = message.unwrap_or_default();
    match (phase, problem) {
        (_, Some(p)) => Observed::new(types::DEGRADED, true, "NoPlan", p),
        (Some(PlanPhase::RolledBack), None) => Observed::new(
            types::DEGRADED,
            true,
            "RolledBack",
            format!("plan {name}: {message}"),
        ),
        (Some(PlanPhase::Failed), None) => {
            let message = format!(
                "plan {name}: {message}; change the cluster's spec or delete the ClusterPlan to try again"
            );
            Observed::new(types::DEGRADED, true, "PlanFailed", message)
        }
        _ => Observed::new(types::DEGRADED, false, "AsPlanned", "no plan failed"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::conditions::Status;

    fn layout_node(name: &str) -> LayoutNode {
        LayoutNode {
            name: name.into(),
            node_class: "box".into(),
            services: vec!["db".into()],
        }
    }

    fn install(node: &str, ready: bool, going: bool) -> NodeInstall {
        let mut ni: NodeInstall = serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "NodeInstall",
            "metadata": { "name": format!("pool-{node}"), "labels": { NODE_LABEL: node } },
            "spec": {},
            "status": { "message": "set h failed its health check", "conditions": [{
                "type": "Ready", "status": if ready { "True" } else { "False" },
                "reason": "R", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"
            }] }
        }))
        .unwrap();
        if going {
            ni.annotations_mut()
                .insert(crate::api::REMOVE_ANNOTATION.into(), "true".into());
        }
        ni
    }

    fn available(layout: &[LayoutNode], installs: &[NodeInstall]) -> (bool, String, String) {
        let st = crate::api::ClusterStatus {
            applied_layout: layout.to_vec(),
            ..Default::default()
        };
        let health = Health::of(layout, installs);
        let c = super::available(&st, &health);
        (c.status == Status::True, c.reason.to_string(), c.message)
    }

    #[test]
    fn registered_machines_go_to_the_layout_nodes_with_the_most_plan_behind_them_first() {
        let cluster: Cluster = serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "Cluster",
            "metadata": { "name": "shop", "namespace": "team", "uid": "u" },
            "spec": { "template": "t", "size": 3 }
        }))
        .unwrap();
        let pool = pool_name(&cluster, "box");
        let machine = |name: &str, created: &str, registered: bool| -> NodeInstall {
            let mut ni: NodeInstall = serde_json::from_value(json!({
                "apiVersion": "theseus.dev/v1alpha1", "kind": "NodeInstall",
                "metadata": { "name": name, "creationTimestamp": created,
                    "labels": { crate::api::POOL_TAG: pool } },
                "spec": {}
            }))
            .unwrap();
            if registered {
                ni.status = Some(crate::api::NodeInstallStatus {
                    heartbeat: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        Timestamp::from_second(1).unwrap(),
                    )),
                    ..Default::default()
                });
            }
            ni
        };
        let mut desired = Desired::default();
        let mut rank = BTreeMap::new();
        for (node, r) in [("n1", 4), ("n2", 6), ("n3", 5), ("n4", 4)] {
            desired.exists.insert(node.into(), "box".into());
            rank.insert(node.to_owned(), r);
        }
        let mut bound = install("n4", true, false);
        bound
            .labels_mut()
            .insert(crate::api::POOL_TAG.into(), pool.clone());
        let installs = [
            machine("m-late", "2026-01-01T00:00:09Z", true),
            machine("m-unregistered", "2026-01-01T00:00:00Z", false),
            machine("m-first", "2026-01-01T00:00:01Z", true),
            bound,
        ];
        // The first to register serves n2 (the longest chain), the next
        // n3; the one not registered yet gets what is left.
        assert_eq!(
            binds(&cluster, (&desired, &rank), &installs),
            [
                ("m-first".to_owned(), "n2".to_owned()),
                ("m-late".to_owned(), "n3".to_owned()),
                ("m-unregistered".to_owned(), "n1".to_owned()),
            ]
        );
    }

    #[test]
    fn a_node_is_told_its_next_set_when_it_changes_and_loses_it_only_with_another_write() {
        let set = |p: &str| NodeTarget {
            package_set: "cluster:c".into(),
            set_hash: p.into(),
            packages: vec![p.into()],
            repository_url: "http://127.0.0.1/".into(),
            ..NodeTarget::default()
        };
        let api = vec!["api--1".to_owned()];
        // A new next set goes out.
        let change = next_change(Some(&api), None, Some(set("api--1")), false);
        assert_eq!(change.unwrap()["packages"], json!(["api--1"]));
        // The one held: nothing, even when its repository was not read
        // this pass and the node is written for something else.
        assert_eq!(
            next_change(Some(&api), Some(&set("api--1")), None, true),
            None
        );
        // No longer wanted: cleared with another write, not alone.
        let held = set("api--1");
        assert_eq!(
            next_change(None, Some(&held), None, true),
            Some(serde_json::Value::Null)
        );
        assert_eq!(next_change(None, Some(&held), None, false), None);
        // Wanted but its repository not read: the next pass writes it.
        let db = vec!["db--1".to_owned()];
        assert_eq!(next_change(Some(&db), Some(&held), None, true), None);
    }

    #[test]
    fn available_needs_every_running_node_ready_except_the_ones_going() {
        let layout = [layout_node("n1"), layout_node("n2")];
        let (ok, reason, _) = available(
            &layout,
            &[install("n1", true, false), install("n2", true, false)],
        );
        assert!(ok, "{reason}");
        let (ok, reason, message) = available(
            &layout,
            &[install("n1", true, false), install("n2", false, false)],
        );
        assert!(!ok);
        assert_eq!(reason, "NodesNotReady");
        assert!(
            message.contains("1 of 2") && message.contains("n2: set h failed"),
            "{message}"
        );
        let (ok, _, message) = available(&layout, &[install("n1", true, false)]);
        assert!(!ok && message.contains("n2: no node"), "{message}");
        let (ok, _, _) = available(
            &layout,
            &[install("n1", true, false), install("n2", false, true)],
        );
        assert!(ok, "a node a plan removes does not count");
        assert!(!available(&[], &[]).0, "nothing runs yet");
    }
}
