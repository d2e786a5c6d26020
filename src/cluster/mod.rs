//! The ClusterTemplate and Cluster controllers: templates get `Valid`, a
//! `revision` and the sizes they can be solved for; clusters get a layout
//! (which nodes, of which NodeClass, run which services) or the reason no
//! layout exists.
//!
//! Both read one catalog: a shared reflector per kind (ServiceDefinition,
//! NodeClass, ClusterTemplate, Cluster), each watched once. A change to a
//! service or a node class re-assesses every template and re-solves every
//! cluster; a template's change re-assesses the templates (a parent or an
//! include may have changed) and re-solves the clusters made from it.
//!
//! Each reconcile is a list of steps: observe (a snapshot of the catalog
//! stores) → decide (pure: [`template::assess`], [`solve::decide`]) →
//! record (status, only when it changed) → report (events, metrics).

pub mod admit;
pub mod drive;
pub mod execute;
pub mod rollback;
pub mod solve;
pub mod template;
mod wake;

#[cfg(test)]
mod scenarios;

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::api::{Cluster, ClusterTemplate, NodeClass, ServiceDefinition, Tenant};
use crate::layout::Catalog;
use crate::shared::Shared;

/// The catalog's stores, each filled by one watch.
#[derive(Clone)]
pub struct Stores {
    /// ServiceDefinitions.
    pub services: Store<ServiceDefinition>,
    /// NodeClasses.
    pub node_classes: Store<NodeClass>,
    /// ClusterTemplates (unresolved).
    pub templates: Store<ClusterTemplate>,
}

impl Stores {
    /// A fingerprint of the catalog as it stands now (every object's name
    /// and resourceVersion): equal fingerprints, the same catalog.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut versions: Vec<(String, String, Option<String>)> = Vec::new();
        versions.extend(
            self.services
                .state()
                .iter()
                .map(|o| ("s".into(), o.name_any(), o.resource_version())),
        );
        versions.extend(
            self.node_classes
                .state()
                .iter()
                .map(|o| ("n".into(), o.name_any(), o.resource_version())),
        );
        versions.extend(
            self.templates
                .state()
                .iter()
                .map(|o| ("t".into(), o.name_any(), o.resource_version())),
        );
        versions.sort();
        versions.hash(&mut h);
        h.finish()
    }

    /// The catalog as it stands now.
    pub fn catalog(&self) -> Catalog {
        let (services, classes, templates) = (
            self.services.state(),
            self.node_classes.state(),
            self.templates.state(),
        );
        Catalog::of(
            services.iter().map(AsRef::as_ref),
            classes.iter().map(AsRef::as_ref),
            templates.iter().map(AsRef::as_ref),
        )
    }
}

/// What a reconcile of either controller needs.
pub struct Context {
    /// The shared handle.
    pub ctx: Shared,
    /// The catalog.
    pub stores: Stores,
    /// Events.
    pub recorder: kube::runtime::events::Recorder,
    /// What each cluster (by uid) was last solved from: its generation,
    /// the catalog's fingerprint and the layout hash it then had. A pass
    /// with the same inputs (a node's report woke it) does not solve again.
    pub solved: std::sync::Mutex<HashMap<String, SolvedFrom>>,
    /// Each NodePool (by cluster uid and name) as this replica last
    /// applied it, and when:
    /// a pass that would apply the same again within
    /// [`POOL_REAPPLY`] does not (a pass wakes at every node report).
    pub pools_applied: std::sync::Mutex<HashMap<String, (serde_json::Value, std::time::Instant)>>,
    /// Tenants, whose namespaces' clusters reserve usage in their
    /// status before a plan starts.
    pub tenants: Store<Tenant>,
    /// One lock per tenant with `workers`: held from counting the
    /// tenant's running tasks to recording a plan's new ones, so that two
    /// clusters' passes cannot both take the last worker.
    pub workers: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Each running plan (by namespace and name) as the API server
    /// answered this replica's last write of its status: the next pass
    /// starts from it instead of reading the plan again (see
    /// [`drive::Reads::of`]).
    pub plans_written: std::sync::Mutex<HashMap<String, crate::api::ClusterPlan>>,
}

/// How long an applied NodePool is taken to be as applied: after this,
/// the next pass applies it again (whoever changed it since).
pub const POOL_REAPPLY: std::time::Duration = std::time::Duration::from_secs(30);

/// A cluster's generation, the catalog's fingerprint and the cluster's
/// layout hash, as a solve read them.
pub type SolvedFrom = (Option<i64>, u64, Option<String>);

impl Context {
    /// A context whose events are reported as the operator.
    pub fn new(ctx: Shared, stores: Stores) -> Arc<Self> {
        Self::with_tenants(ctx, stores, reflector::store().0)
    }

    /// A context that sees the tenants of `tenants`.
    pub fn with_tenants(ctx: Shared, stores: Stores, tenants: Store<Tenant>) -> Arc<Self> {
        let recorder =
            kube::runtime::events::Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        Arc::new(Self {
            ctx,
            stores,
            recorder,
            solved: Default::default(),
            pools_applied: Default::default(),
            plans_written: Default::default(),
            tenants,
            workers: Default::default(),
        })
    }
}

/// Errors of both controllers, each naming its step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// decide: the pure step, on a blocking thread, did not finish.
    #[error("{object}: the {step} did not finish: {message}")]
    Decide {
        /// `ClusterTemplate NAME` or `Cluster NAMESPACE/NAME`.
        object: String,
        /// `assessment` or `solve`.
        step: &'static str,
        /// Why.
        message: String,
    },
    /// record: the status could not be written.
    #[error("{object}: cannot write its status: {source}")]
    WriteStatus {
        /// `ClusterTemplate NAME` or `Cluster NAMESPACE/NAME`.
        object: String,
        /// The cause.
        source: kube::Error,
    },
    /// Its tenant's reservation could not be read or written.
    #[error("{object}: {source}")]
    Tenant {
        /// `Cluster NAMESPACE/NAME`.
        object: String,
        /// The cause.
        source: crate::quota::ReserveError,
    },
    /// A step of driving the cluster's plan failed.
    #[error("{object}: {step} failed: {source}")]
    Act {
        /// `Cluster NAMESPACE/NAME`.
        object: String,
        /// The step, e.g. `ApplyNodePool`.
        step: &'static str,
        /// The cause.
        source: kube::Error,
    },
}

impl Error {
    /// The step that failed, as the metric's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Decide { .. } => "Decide",
            Error::WriteStatus { .. } => "WriteStatus",
            Error::Act { step, .. } => step,
            Error::Tenant { .. } => "Tenant",
        }
    }
}

/// How many events a subscriber of a shared reflector may fall behind.
const BUFFER: usize = 256;

/// A shared reflector of `K` (cluster-wide, or only the objects the
/// operator's selector matches): its store, the stream that must be
/// polled to fill it, and `N` subscriptions to the objects it applies.
///
/// Every subscription must be polled: an idle one fills its buffer and
/// then holds the reflector (and so the store) still. Hence exactly one
/// per consumer, none kept aside.
fn shared_reflector<K, const N: usize>(
    ctx: &Shared,
    api: Api<K>,
) -> (
    Store<K>,
    BoxFuture<'static, ()>,
    [reflector::ReflectHandle<K>; N],
)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store_shared(BUFFER);
    let subscribers =
        std::array::from_fn(|_| writer.subscribe().expect("a shared store has subscribers"));
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let driver = watcher(api, ctx.watch_config())
        .default_backoff()
        .reflect_shared(writer)
        .for_each(move |event| {
            if let Err(error) = event {
                tracing::warn!(
                    %error,
                    "watching {kind}s failed; retrying (if the kind is not served, install the CRDs: theseus crds | kubectl apply --server-side -f -)"
                );
            }
            futures::future::ready(())
        })
        .boxed();
    (store, driver, subscribers)
}

/// One `()` per object a subscription sees: "something in the catalog
/// changed".
fn ticks<K: Send + Sync + 'static>(
    sub: impl Stream<Item = Arc<K>> + Send + 'static,
) -> impl Stream<Item = ()> + Send + 'static {
    sub.map(|_| ())
}

/// Only the objects whose spec changed: first seen (by uid), or of a new
/// generation. The controllers' own status writes, and the re-lists of a
/// watch, wake nothing.
fn spec_changes<K: Resource + Send + Sync + 'static>(
    sub: impl Stream<Item = Arc<K>> + Send + 'static,
) -> impl Stream<Item = Arc<K>> + Send + 'static {
    let mut seen: HashMap<String, Option<i64>> = HashMap::new();
    sub.filter(move |o| {
        let generation = o.meta().generation;
        let changed = seen.insert(o.uid().unwrap_or_default(), generation) != Some(generation);
        futures::future::ready(changed)
    })
}

/// Runs both controllers until `stop` is cancelled.
pub fn run(ctx: Shared, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let client = ctx.client.clone();
        let (services, services_driver, [services_a, services_b]) =
            shared_reflector::<ServiceDefinition, 2>(&ctx, Api::all(client.clone()));
        let (node_classes, classes_driver, [classes_a, classes_b]) =
            shared_reflector::<NodeClass, 2>(&ctx, Api::all(client.clone()));
        let (templates, templates_driver, [templates_a, templates_b, templates_c]) =
            shared_reflector::<ClusterTemplate, 3>(&ctx, Api::all(client.clone()));
        let (clusters, clusters_driver, [clusters_a]) =
            shared_reflector::<Cluster, 1>(&ctx, Api::all(client.clone()));
        // A tenant's change (a quota raised, usage freed) may admit a
        // cluster refused before.
        let (tenants, tenants_driver, [tenants_a]) =
            shared_reflector::<Tenant, 1>(&ctx, Api::all(client.clone()));
        let stores = Stores {
            services,
            node_classes,
            templates: templates.clone(),
        };
        let templates_controller = template::controller(
            ctx.clone(),
            stores.clone(),
            spec_changes(templates_a),
            futures::stream::select(
                futures::stream::select(ticks(services_a), ticks(classes_a)),
                ticks(spec_changes(templates_b)),
            ),
            stop.clone(),
        );
        let by_template = clusters.clone();
        let clusters_controller = solve::controller(
            ctx.clone(),
            stores.clone(),
            (spec_changes(clusters_a), clusters),
            spec_changes(templates_c),
            move |t: Arc<ClusterTemplate>| made_from(&by_template, &t.name_any()),
            (
                futures::stream::select(
                    futures::stream::select(ticks(services_b), ticks(classes_b)),
                    ticks(spec_changes(tenants_a)),
                ),
                tenants,
            ),
            stop.clone(),
        );
        let drivers = futures::future::join5(
            services_driver,
            classes_driver,
            templates_driver,
            clusters_driver,
            tenants_driver,
        );
        // The controllers end when `stop` is cancelled (after their
        // reconciles in flight); the reflectors end with them.
        tokio::select! {
            _ = drivers => {}
            _ = futures::future::join(templates_controller, clusters_controller) => {}
        }
    })
}

/// The clusters made from `template`.
pub fn made_from(clusters: &Store<Cluster>, template: &str) -> Vec<ObjectRef<Cluster>> {
    clusters
        .state()
        .iter()
        .filter(|c| c.spec.template == template)
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

#[cfg(test)]
mod spec_change_tests {
    use super::*;

    fn template(uid: &str, generation: i64) -> Arc<ClusterTemplate> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "theseus.dev/v1alpha1", "kind": "ClusterTemplate",
                "metadata": { "name": "t", "uid": uid, "generation": generation },
                "spec": {}
            }))
            .expect("a template"),
        )
    }

    #[tokio::test]
    async fn only_new_objects_and_new_generations_pass() {
        let events = [
            template("a", 1),
            template("a", 1), // its own status write
            template("a", 2), // a spec change
            template("b", 1), // deleted and created again
        ];
        let passed: Vec<(String, i64)> = spec_changes(futures::stream::iter(events))
            .map(|t| (t.uid().unwrap(), t.metadata.generation.unwrap()))
            .collect()
            .await;
        assert_eq!(passed, [("a".into(), 1), ("a".into(), 2), ("b".into(), 1)]);
    }
}
