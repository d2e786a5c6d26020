//! The Tenant controller: a tenant's namespaces, the bindings of its
//! owners and members to the shipped ClusterRoles, the binding of the
//! shipped admission policy to its namespaces, the part of the catalog it
//! may use, and its deletion.
//!
//! A pass: observe (the tenant, the catalog, the objects in its
//! namespaces) → act (namespaces, RoleBindings, the catalog's
//! ClusterRoleBinding, the policy binding) → record (status, by
//! compare-and-swap through [`crate::quota::update`], since the Cluster
//! and AppInstance controllers reserve usage in the same status) →
//! report (events for the conditions that changed).
//!
//! Deleted (under a finalizer): its Clusters and AppInstances are deleted
//! first, each through its own delete plan (nodes drained and terminated
//! at the provider); once none is left, the bindings and namespaces go,
//! then the finalizer.

mod delete;
pub mod lease;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::api::conditions::{Observed, types};
use crate::api::{
    AppInstance, AppPackage, Cluster, ClusterTemplate, RoleSubject, TENANT_LABEL, Tenant,
    TenantStatus,
};
use crate::quota::{self, ReserveError};
use crate::shared::{MANAGER, Shared, selector, status};

/// The controller's name in metrics.
pub const NAME: &str = "tenant";
/// The finalizer that deletes a tenant's clusters, instances and
/// namespaces before the Tenant goes.
pub const FINALIZER: &str = "theseus.dev/tenant";
/// The default prefix of the cluster-wide objects tenants are bound to.
pub const DEFAULT_PREFIX: &str = "theseus-tenant";

/// `--tenant-prefix`: a DNS subdomain prefix, short enough for its
/// suffixes.
pub fn parse_prefix(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 200
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !value.starts_with(['-', '.'])
        && !value.ends_with(['-', '.']);
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a name prefix: lowercase letters, digits, '-' and '.', at most 200"
        ))
    }
}

/// The names of the shipped cluster-wide objects a tenant is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The ClusterRole a tenant's owners are bound to in its namespaces.
    pub admin_role: String,
    /// The ClusterRole a tenant's members are bound to in its namespaces.
    pub user_role: String,
    /// The ClusterRole that reads the catalog, bound cluster-wide to a
    /// tenant's owners and members.
    pub catalog_role: String,
    /// The ValidatingAdmissionPolicy each tenant's namespaces are bound
    /// to (with the Tenant as its parameter).
    pub policy: String,
}

impl Config {
    /// PREFIX-admin, PREFIX-user, PREFIX-catalog and PREFIX.
    pub fn with_prefix(prefix: &str) -> Self {
        Config {
            admin_role: format!("{prefix}-admin"),
            user_role: format!("{prefix}-user"),
            catalog_role: format!("{prefix}-catalog"),
            policy: prefix.to_owned(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::with_prefix(DEFAULT_PREFIX)
    }
}

/// The ResourceQuota of each namespace, when the tenant has a cpu or
/// memory quota.
const RESOURCE_QUOTA: &str = "theseus-tenant";
/// The RoleBinding of the owners, in each namespace.
const ADMINS_BINDING: &str = "theseus-tenant-admins";
/// The RoleBinding of the members, in each namespace.
const USERS_BINDING: &str = "theseus-tenant-users";
/// The condition a tenant carries while it is deleted.
pub const DELETING: &str = "Deleting";
/// The condition naming the quota the last refused reservation exceeded.
pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";

/// The name of a tenant's cluster-wide objects (its catalog binding and
/// its policy binding).
pub fn binding_name(tenant: &str) -> String {
    format!("theseus-tenant-{tenant}")
}

/// Errors of a pass, each naming the tenant and the step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading objects failed.
    #[error("Tenant {tenant}: cannot read {what}: {source}")]
    Read {
        /// The tenant.
        tenant: String,
        /// What was read.
        what: String,
        /// The cause.
        source: kube::Error,
    },
    /// Writing an object failed.
    #[error("Tenant {tenant}: cannot {action}: {source}")]
    Write {
        /// The tenant.
        tenant: String,
        /// What was written.
        action: String,
        /// The cause.
        source: kube::Error,
    },
    /// The status could not be written.
    #[error("{0}")]
    Status(#[from] ReserveError),
}

impl Error {
    /// The step that failed, as the metric's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Read { .. } => "Read",
            Error::Write { .. } => "Write",
            Error::Status(_) => "WriteStatus",
        }
    }
}

/// What a pass needs.
pub struct Context {
    /// The shared handle.
    pub shared: Shared,
    /// Events.
    pub recorder: Recorder,
    /// The names of the roles and the policy.
    pub config: Config,
}

/// Runs the controller until `stop`.
pub fn run(shared: Shared, config: Config, stop: CancellationToken) -> BoxFuture<'static, ()> {
    async move {
        let client = shared.client.clone();
        let cx = Arc::new(Context {
            recorder: Recorder::new(client.clone(), shared.reporter.clone()),
            shared: shared.clone(),
            config,
        });
        // A template's or an application's labels decide whether a
        // tenant's catalog holds it.
        let catalog = futures::stream::select(
            ticks(watcher(
                Api::<ClusterTemplate>::all(client.clone()),
                shared.watch_config(),
            )),
            ticks(watcher(
                Api::<AppPackage>::all(client.clone()),
                shared.watch_config(),
            )),
        );
        Controller::new(Api::<Tenant>::all(client.clone()), shared.watch_config())
            .reconcile_all_on(catalog)
            .graceful_shutdown_on(async move { stop.cancelled().await })
            .run(reconcile, error_policy, cx)
            .for_each(|_| async {})
            .await;
    }
    .boxed()
}

/// A tick per change the watch reports.
fn ticks<K: Send + 'static>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    events.filter_map(|e| async move {
        matches!(
            e,
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)
        )
        .then_some(())
    })
}

fn error_policy(tenant: Arc<Tenant>, err: &Error, cx: Arc<Context>) -> Action {
    warn!(tenant = %tenant.name_any(), error = %err, "reconcile failed");
    cx.shared.metrics.failed(NAME, err.reason());
    Action::requeue(Duration::from_secs(5))
}

/// The objects in a tenant's namespaces that hold reservations, by
/// object name (`Cluster NS/NAME`) and uid, and those being deleted.
struct Held {
    live: BTreeMap<String, String>,
    clusters: Vec<Cluster>,
    instances: Vec<AppInstance>,
}

/// One pass over a tenant.
pub async fn reconcile(tenant: Arc<Tenant>, cx: Arc<Context>) -> Result<Action, Error> {
    cx.shared.metrics.reconciled(NAME);
    let name = tenant.name_any();
    let client = &cx.shared.client;
    let tenants: Api<Tenant> = Api::all(client.clone());
    let deleting = tenant.meta().deletion_timestamp.is_some();
    let has_finalizer = tenant.finalizers().iter().any(|f| f == FINALIZER);
    if deleting && !has_finalizer {
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        let mut finalizers = tenant.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": tenant.resource_version() } });
        tenants
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(write_err(&name, "add its finalizer"))?;
    }
    let namespaces = quota::namespaces(&tenant);
    let held = held(&tenant, &namespaces, &cx).await?;
    if deleting {
        return delete::delete(&tenant, &namespaces, held, &cx).await;
    }
    for ns in &namespaces {
        apply_namespace(&tenant, ns, &cx).await?;
    }
    apply_cluster_wide(&tenant, &cx).await?;
    if let Some(l) = &tenant.spec.lease {
        leases(&tenant, l, &held.clusters, &cx).await?;
    }
    let templates =
        allowed::<ClusterTemplate>(&tenant, tenant.spec.catalog.templates.as_ref(), &cx).await?;
    let packages =
        allowed::<AppPackage>(&tenant, tenant.spec.catalog.app_packages.as_ref(), &cx).await?;
    let refused = refusals(&held);
    let stale: BTreeSet<String> = tenant
        .status
        .as_ref()
        .map(|s| quota::stale(s, &held.live))
        .unwrap_or_default()
        .into_iter()
        .collect();
    let now = Timestamp::now();
    write_status(&tenants, &tenant, &cx, |current, st| {
        // Reservations of objects that are gone (deleted while no
        // operator ran) are released; others were made since the read
        // and stay.
        for object in &stale {
            if !held.live.contains_key(object) {
                *st = quota::with_reservation(st, &current.spec.quotas, (object, ""), None, now);
            }
        }
        st.observed_generation = current.metadata.generation;
        st.namespaces = namespaces.clone();
        st.templates = templates.clone();
        st.app_packages = packages.clone();
        st.usage = quota::total(&st.reservations);
        st.summary = quota::summary(&current.spec.quotas, &st.usage);
        conditions(current, st, &refused)
    })
    .await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// The conditions whose status differs between two statuses, as they
/// are in `after`.
/// Writes a Tenant's status (through [`quota::update`], the one writer
/// of it): `change` edits the status read with the tenant and returns the
/// conditions it observes, merged in at `now`; then an event is recorded
/// for each condition whose status changed.
async fn write_status<F>(
    tenants: &Api<Tenant>,
    tenant: &Tenant,
    cx: &Context,
    mut change: F,
) -> Result<(), quota::ReserveError>
where
    F: FnMut(&Tenant, &mut TenantStatus) -> Vec<Observed<'static>>,
{
    let name = tenant.name_any();
    let now = Timestamp::now();
    let previous = tenant.status.clone().unwrap_or_default();
    let written = quota::update(tenants, &name, &format!("Tenant {name}"), |current, st| {
        let before = st.clone();
        let observed = change(current, st);
        status::merge(
            &mut st.conditions,
            observed,
            current.metadata.generation,
            now,
        );
        Ok(*st != before)
    })
    .await?;
    let after = written
        .and_then(|t| t.status)
        .unwrap_or_else(|| previous.clone());
    status::publish(
        &cx.recorder,
        &tenant.object_ref(&()),
        &changed_conditions(&previous, &after),
    )
    .await;
    Ok(())
}

fn changed_conditions(
    before: &TenantStatus,
    after: &TenantStatus,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    after
        .conditions
        .iter()
        .filter(|c| {
            before
                .conditions
                .iter()
                .find(|b| b.type_ == c.type_)
                .is_none_or(|b| b.status != c.status)
        })
        .cloned()
        .collect()
}

/// Ready, QuotaExceeded (usage over a lowered quota, or the clusters and
/// instances refused for a quota) and Deleting (False).
fn conditions(
    tenant: &Tenant,
    st: &TenantStatus,
    refused: &[(String, String)],
) -> Vec<Observed<'static>> {
    let ready = Observed::new(
        types::READY,
        true,
        "NamespacesReady",
        format!(
            "namespaces {} and the bindings of {} owners and {} members exist",
            st.namespaces.join(", "),
            tenant.spec.owners.len(),
            tenant.spec.members.len()
        ),
    );
    let over = quota::check(
        &tenant.spec.quotas,
        &quota::total(std::iter::empty()),
        &crate::api::Usage::default(),
        &st.usage,
    );
    let exceeded = match (refused.first(), over) {
        (Some((object, why)), _) => Observed::new(
            QUOTA_EXCEEDED,
            true,
            "Refused",
            format!(
                "{object} was refused: {why}{}",
                if refused.len() > 1 {
                    format!(" (and {} more)", refused.len() - 1)
                } else {
                    String::new()
                }
            ),
        ),
        (None, Some(over)) => Observed::new(
            QUOTA_EXCEEDED,
            true,
            "OverQuota",
            format!(
                "the tenant uses {} of quota {}, which is {}: lowered below usage; nothing grows until usage is back under it",
                over.wanted, over.quota, over.limit
            ),
        ),
        (None, None) => Observed::new(
            QUOTA_EXCEEDED,
            false,
            "WithinQuota",
            "every reservation fits the quotas",
        ),
    };
    let deleting = Observed::new(DELETING, false, "NotDeleting", "the tenant is in use");
    vec![ready, exceeded, deleting]
}

/// The Clusters refused for a quota, with why (their `Admitted`
/// condition).
fn refusals(held: &Held) -> Vec<(String, String)> {
    held.clusters
        .iter()
        .filter_map(|c| {
            let cond = c
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|k| k.type_ == types::ADMITTED)?;
            (cond.status == "False" && cond.reason == "QuotaExceeded").then(|| {
                (
                    format!(
                        "Cluster {}/{}",
                        c.namespace().unwrap_or_default(),
                        c.name_any()
                    ),
                    cond.message.clone(),
                )
            })
        })
        .collect()
}

fn read_err<'a>(tenant: &'a str, what: &'a str) -> impl FnOnce(kube::Error) -> Error + 'a {
    move |source| Error::Read {
        tenant: tenant.to_owned(),
        what: what.to_owned(),
        source,
    }
}

fn write_err<'a>(tenant: &'a str, action: &'a str) -> impl FnOnce(kube::Error) -> Error + 'a {
    move |source| Error::Write {
        tenant: tenant.to_owned(),
        action: action.to_owned(),
        source,
    }
}

/// The Clusters and AppInstances in the tenant's namespaces.
async fn held(tenant: &Tenant, namespaces: &[String], cx: &Context) -> Result<Held, Error> {
    let name = tenant.name_any();
    let client = &cx.shared.client;
    let mut out = Held {
        live: BTreeMap::new(),
        clusters: Vec::new(),
        instances: Vec::new(),
    };
    for ns in namespaces {
        let clusters = Api::<Cluster>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .map_err(read_err(&name, "its Clusters"))?;
        for c in clusters.items {
            out.live.insert(
                format!("Cluster {ns}/{}", c.name_any()),
                c.uid().unwrap_or_default(),
            );
            out.clusters.push(c);
        }
        let instances = Api::<AppInstance>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .map_err(read_err(&name, "its AppInstances"))?;
        for i in instances.items {
            out.live.insert(
                format!("AppInstance {ns}/{}", i.name_any()),
                i.uid().unwrap_or_default(),
            );
            out.instances.push(i);
        }
    }
    Ok(out)
}

/// The names of the objects of kind `K` that `selector` selects (every
/// one, without a selector).
async fn allowed<K>(
    tenant: &Tenant,
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    cx: &Context,
) -> Result<Vec<String>, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(selector) = selector else {
        return Ok(Vec::new());
    };
    let name = tenant.name_any();
    let what = format!("the {}s", K::kind(&()));
    let list = Api::<K>::all(cx.shared.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(read_err(&name, &what))?;
    let mut names: Vec<String> = list
        .items
        .iter()
        .filter(|o| selector::matches(selector, o.labels()))
        .map(ResourceExt::name_any)
        .collect();
    names.sort();
    Ok(names)
}

fn subjects(people: &[RoleSubject]) -> Vec<serde_json::Value> {
    people
        .iter()
        .map(|s| json!({ "kind": s.kind, "name": s.name, "apiGroup": "rbac.authorization.k8s.io" }))
        .collect()
}

/// The tenant's labels on what it makes: its name, and its own labels
/// (so an operator's `--selector` sees them).
fn labels(tenant: &Tenant) -> BTreeMap<String, String> {
    let mut labels = tenant.labels().clone();
    labels.insert(TENANT_LABEL.into(), tenant.name_any());
    labels
}

/// A namespace of the tenant, labeled with it, and the bindings of its
/// owners and members there.
async fn apply_namespace(tenant: &Tenant, ns: &str, cx: &Context) -> Result<(), Error> {
    let name = tenant.name_any();
    let client = &cx.shared.client;
    let apply = PatchParams::apply(MANAGER).force();
    let body = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": ns, "labels": labels(tenant) },
    });
    Api::<Namespace>::all(client.clone())
        .patch(ns, &apply, &Patch::Apply(&body))
        .await
        .map_err(write_err(&name, &format!("apply Namespace {ns}")))?;
    // Pods and Deployments in the namespace: the tenant's cpu and memory
    // bound their requests (each namespace's, as Kubernetes has no quota
    // over namespaces; the nodes' are reserved by the operator).
    let mut hard = serde_json::Map::new();
    if let Some(cpu) = &tenant.spec.quotas.cpu {
        hard.insert("requests.cpu".into(), json!(cpu));
    }
    if let Some(memory) = &tenant.spec.quotas.memory {
        hard.insert("requests.memory".into(), json!(memory));
    }
    if !hard.is_empty() {
        let body = json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": { "name": RESOURCE_QUOTA, "namespace": ns, "labels": labels(tenant) },
            "spec": { "hard": hard },
        });
        Api::<ResourceQuota>::namespaced(client.clone(), ns)
            .patch(RESOURCE_QUOTA, &apply, &Patch::Apply(&body))
            .await
            .map_err(write_err(
                &name,
                &format!("apply ResourceQuota {ns}/{RESOURCE_QUOTA}"),
            ))?;
    }
    let bindings = Api::<RoleBinding>::namespaced(client.clone(), ns);
    for (binding, role, people) in [
        (ADMINS_BINDING, &cx.config.admin_role, &tenant.spec.owners),
        (USERS_BINDING, &cx.config.user_role, &tenant.spec.members),
    ] {
        let body = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": binding, "namespace": ns, "labels": labels(tenant) },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
            "subjects": subjects(people),
        });
        bindings
            .patch(binding, &apply, &Patch::Apply(&body))
            .await
            .map_err(write_err(
                &name,
                &format!("apply RoleBinding {ns}/{binding}"),
            ))?;
    }
    Ok(())
}

/// Warns of the leases that end within [`lease::NOTICE`] (a Warning
/// event on the cluster, and the annotation that says it was given) and
/// deletes the clusters whose lease ended after a warning.
async fn leases(
    tenant: &Tenant,
    l: &crate::api::Lease,
    clusters: &[Cluster],
    cx: &Context,
) -> Result<(), Error> {
    use kube::runtime::events::EventType;
    let name = tenant.name_any();
    let now = Timestamp::now();
    for c in clusters
        .iter()
        .filter(|c| c.meta().deletion_timestamp.is_none())
    {
        let Some(created) = c.meta().creation_timestamp.as_ref().map(|t| t.0) else {
            continue;
        };
        let annotations = c.annotations();
        let verdict = lease::verdict(
            created,
            l,
            annotations
                .get(lease::EXTENDED_ANNOTATION)
                .map(String::as_str),
            annotations
                .get(lease::WARNED_ANNOTATION)
                .map(String::as_str),
            now,
        );
        let ns = c.namespace().unwrap_or_default();
        let api = Api::<Cluster>::namespaced(cx.shared.client.clone(), &ns);
        let what = format!("Cluster {ns}/{}", c.name_any());
        let (reason, note) = match &verdict {
            lease::Verdict::Keep { .. } => continue,
            lease::Verdict::Warn { end, note } => (
                "LeaseExpiring",
                format!(
                    "tenant {name}'s lease of {what} ends at {end}: it is deleted then, unless extended (kubectl annotate -n {ns} cluster/{} {}=TIME --overwrite, at most {} days after its creation){}",
                    c.name_any(),
                    lease::EXTENDED_ANNOTATION,
                    l.max_days.unwrap_or(l.initial_days),
                    note.as_ref().map(|n| format!("; {n}")).unwrap_or_default()
                ),
            ),
            lease::Verdict::Delete { end } => (
                "LeaseExpired",
                format!("tenant {name}'s lease of {what} ended at {end}: deleting it"),
            ),
        };
        status::publish_event(
            &cx.recorder,
            &c.object_ref(&()),
            EventType::Warning,
            reason,
            "Lease",
            &note,
        )
        .await;
        tracing::info!(tenant = %name, "{note}");
        match verdict {
            lease::Verdict::Warn { .. } => {
                let patch = json!({ "metadata": { "annotations": {
                    lease::WARNED_ANNOTATION: now.to_string(),
                } } });
                api.patch(
                    &c.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(write_err(&name, &format!("mark {what}'s lease warned")))?;
            }
            _ => delete::delete_one(&api, &c.name_any(), &name, &what).await?,
        }
    }
    Ok(())
}

/// The cluster-wide binding of the tenant's people to the catalog
/// reader, and the admission policy's binding to its namespaces.
async fn apply_cluster_wide(tenant: &Tenant, cx: &Context) -> Result<(), Error> {
    let name = tenant.name_any();
    let client = &cx.shared.client;
    let apply = PatchParams::apply(MANAGER).force();
    let binding = binding_name(&name);
    let people: Vec<RoleSubject> = tenant
        .spec
        .owners
        .iter()
        .chain(&tenant.spec.members)
        .cloned()
        .collect();
    let body = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": { "name": binding, "labels": labels(tenant) },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cx.config.catalog_role },
        "subjects": subjects(&people),
    });
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(&binding, &apply, &Patch::Apply(&body))
        .await
        .map_err(write_err(
            &name,
            &format!("apply ClusterRoleBinding {binding}"),
        ))?;
    let body = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": { "name": binding, "labels": labels(tenant) },
        "spec": {
            "policyName": cx.config.policy,
            "validationActions": ["Deny"],
            "paramRef": { "name": name, "parameterNotFoundAction": "Deny" },
            "matchResources": {
                "namespaceSelector": { "matchLabels": { TENANT_LABEL: name } },
            },
        },
    });
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .patch(&binding, &apply, &Patch::Apply(&body))
        .await
        .map_err(write_err(
            &name,
            &format!("apply ValidatingAdmissionPolicyBinding {binding}"),
        ))?;
    Ok(())
}
