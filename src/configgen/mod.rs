//! The ConfigBundle controller: renders each bundle with the ConfigModules
//! it names (and its Cluster's layout), stores the packages in the
//! operator's signed repository of generated packages ([`store`]), and
//! reports what it rendered.
//!
//! One pass: observe (the modules, the Cluster's facts; never a Secret:
//! the operator may read no Secret but its own, and a secret's value is
//! the node's business) → decide
//! ([`config::render`], pure) → act (store the packages not stored yet,
//! publish the index when its list changed) → record (status, only when it
//! changed) → report (an event per changed condition). A bundle that does
//! not render keeps its last rendered packages: the nodes keep running
//! them.

pub mod archive;
mod gc;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::conditions::Observed;
use crate::api::{Cluster, ConfigBundle, ConfigModule, RenderedPackage};
use crate::config::{self, Facts, Problem, Rendered};
use crate::shared::{Shared, status};

use self::store::{Repository, StoreError};

/// The controller's name in metrics.
pub const NAME: &str = "configbundle";
/// The condition saying whether the bundle rendered.
pub const RENDERED: &str = "Rendered";
/// The condition saying whether its packages are served.
pub const PUBLISHED: &str = "Published";

/// How the operator publishes generated packages.
#[derive(Clone)]
pub struct Config {
    /// Signs the index; without it the repository is unsigned (agents that
    /// pin keys refuse it).
    pub key: Option<Arc<ed25519_dalek::SigningKey>>,
    /// The URL nodes reach the repository at, shown in status.
    pub url: Option<String>,
    /// How long an unused generated package is kept before it is deleted.
    pub grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            key: None,
            url: None,
            grace: Duration::from_secs(3600),
        }
    }
}

/// Errors of a pass, each naming its step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// observe: listing the modules or reading a Cluster failed.
    #[error("ConfigBundle {bundle}: cannot read {what}: {source}")]
    Read {
        /// `NAMESPACE/NAME`.
        bundle: String,
        /// What was being read.
        what: String,
        /// The cause.
        source: kube::Error,
    },
    /// act: storing a package or the index failed.
    #[error("ConfigBundle {bundle}: {source}")]
    Store {
        /// `NAMESPACE/NAME`.
        bundle: String,
        /// The cause.
        source: StoreError,
    },
    /// record: the status could not be written.
    #[error("ConfigBundle {bundle}: cannot write its status: {source}")]
    WriteStatus {
        /// `NAMESPACE/NAME`.
        bundle: String,
        /// The cause.
        source: kube::Error,
    },
}

impl Error {
    /// The step that failed, as the metric's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Read { .. } => "Read",
            Error::Store { source, .. } => source.reason(),
            Error::WriteStatus { .. } => "WriteStatus",
        }
    }
}

struct Context {
    ctx: Shared,
    recorder: Recorder,
    repository: Repository,
    config: Config,
}

/// Runs the controller until `stop` is cancelled. Every bundle is rendered
/// again when a ConfigModule changes, and a bundle when its Cluster does.
pub fn run(ctx: Shared, config: Config, stop: CancellationToken) -> BoxFuture<'static, ()> {
    let client = ctx.client.clone();
    let bundles: Api<ConfigBundle> = Api::all(client.clone());
    let modules: Api<ConfigModule> = Api::all(client.clone());
    let clusters: Api<Cluster> = Api::all(client.clone());
    let controller = Controller::new(bundles, ctx.watch_config());
    let store = controller.store();
    let modules_changed = watcher(modules, crate::shared::scoped(None))
        .touched_objects()
        .filter_map(|m| async move { m.ok().map(|_| ()) });
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), ctx.reporter.clone()),
        repository: Repository::new(client, &ctx.namespace, config.key.clone()),
        ctx,
        config,
    });
    let collect = gc::run(
        context.ctx.clone(),
        context.repository.clone(),
        context.config.grace,
        stop.clone(),
    );
    let controller = controller
        .reconcile_all_on(modules_changed)
        .watches(clusters, crate::shared::scoped(None), move |cluster| {
            let (ns, name) = (cluster.namespace(), cluster.name_any());
            store
                .state()
                .into_iter()
                .filter(|b| {
                    b.namespace() == ns
                        && b.spec.cluster_ref.as_ref().is_some_and(|r| r.name == name)
                })
                .map(|b| ObjectRef::from_obj(&*b))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, context)
        .for_each(|_| async {});
    async move {
        tokio::join!(controller, collect);
    }
    .boxed()
}

fn error_policy(bundle: Arc<ConfigBundle>, err: &Error, cx: Arc<Context>) -> Action {
    warn!(bundle = %key(&bundle), error = %err, "reconcile failed");
    cx.ctx.metrics.failed(NAME, err.reason());
    Action::requeue(Duration::from_secs(5))
}

fn key(bundle: &ConfigBundle) -> String {
    format!(
        "{}/{}",
        bundle.namespace().unwrap_or_default(),
        bundle.name_any()
    )
}

/// One pass over a bundle.
async fn reconcile(bundle: Arc<ConfigBundle>, cx: Arc<Context>) -> Result<Action, Error> {
    cx.ctx.metrics.reconciled(NAME);
    let who = key(&bundle);
    let namespace = bundle.namespace().unwrap_or_default();
    let Inputs {
        modules,
        facts,
        mut problems,
    } = inputs(&cx.ctx.client, &namespace, &bundle.spec)
        .await
        .map_err(|(what, source)| Error::Read {
            bundle: who.clone(),
            what,
            source,
        })?;
    let previous = bundle.status.clone().unwrap_or_default();
    let last_values = (!previous.rendered_values.is_empty()).then_some(&previous.rendered_values);
    let rendered = match config::render(&modules, &bundle.spec, facts.as_ref(), last_values) {
        Ok(r) if problems.is_empty() => Some(r),
        Ok(_) => None,
        Err(found) => {
            problems.extend(found.0);
            None
        }
    };
    let mut next = previous.clone();
    next.observed_generation = bundle.metadata.generation;
    next.repository_url = cx.config.url.clone();
    let conditions = match &rendered {
        Some(r) => {
            let index = act(r, &who, &cx.repository)
                .await
                .map_err(|source| Error::Store {
                    bundle: who.clone(),
                    source,
                })?;
            next.rendered = entries(r);
            next.expanded_config = r.expanded.clone();
            next.rendered_values = r.values.clone();
            let served = r
                .packages
                .iter()
                .all(|p| index.packages.iter().any(|e| e.id.to_string() == p.id));
            vec![
                rendered_true(r),
                published(served, index.version, &cx.config),
            ]
        }
        None => vec![rendered_false(&problems)],
    };
    let now = Timestamp::now();
    let changed = status::merge(
        &mut next.conditions,
        conditions,
        bundle.metadata.generation,
        now,
    );
    if next != previous {
        let api: Api<ConfigBundle> = Api::namespaced(cx.ctx.client.clone(), &namespace);
        status::apply_status(&api, &bundle.name_any(), &next)
            .await
            .map_err(|source| Error::WriteStatus {
                bundle: who.clone(),
                source,
            })?;
    }
    if !changed.is_empty() {
        info!(bundle = %who, "config bundle status changed");
        status::publish(&cx.recorder, &bundle.object_ref(&()), &changed).await;
    }
    // A Cluster that does not exist yet is not watched for: look again
    // now and then.
    Ok(Action::requeue(Duration::from_secs(
        if rendered.is_some() { 300 } else { 30 },
    )))
}

/// What a bundle renders from: every ConfigModule, its Cluster's facts,
/// and the problems found on the way (a missing Cluster), with their
/// field paths.
pub struct Inputs {
    /// The modules by name.
    pub modules: BTreeMap<String, crate::api::ConfigModuleSpec>,
    /// The facts of `spec.clusterRef`'s Cluster, when it names one that exists.
    pub facts: Option<Facts>,
    /// What is wrong with the references.
    pub problems: Vec<Problem>,
}

/// Reads the [`Inputs`] of `spec` for a bundle in `namespace` (the
/// controller's observe step, and `theseus config diff`'s). A failed read
/// names what it read.
pub async fn inputs(
    client: &kube::Client,
    namespace: &str,
    spec: &crate::api::ConfigBundleSpec,
) -> Result<Inputs, (String, kube::Error)> {
    let modules = Api::<ConfigModule>::all(client.clone())
        .list(&Default::default())
        .await
        .map_err(|e| ("the ConfigModules".to_owned(), e))?
        .items
        .into_iter()
        .map(|m| (m.name_any(), m.spec))
        .collect();
    let mut problems = Vec::new();
    let facts = match &spec.cluster_ref {
        None => None,
        Some(r) => {
            let cluster = Api::<Cluster>::namespaced(client.clone(), namespace)
                .get_opt(&r.name)
                .await
                .map_err(|e| (format!("Cluster {namespace}/{}", r.name), e))?;
            match cluster {
                Some(c) => Some(facts_of(&c)),
                None => {
                    problems.push(Problem {
                        path: "spec.clusterRef.name".into(),
                        message: format!(
                            "Cluster {namespace}/{} does not exist; create it or remove clusterRef",
                            r.name
                        ),
                    });
                    None
                }
            }
        }
    };
    Ok(Inputs {
        modules,
        facts,
        problems,
    })
}

/// A Cluster's facts: its name, its running layout's size and the nodes
/// running each service.
pub fn facts_of(cluster: &Cluster) -> Facts {
    let layout = cluster
        .status
        .as_ref()
        .map(|s| s.applied_layout.as_slice())
        .unwrap_or_default();
    Facts {
        name: cluster.name_any(),
        size: u32::try_from(layout.len()).unwrap_or(u32::MAX),
        hosts: crate::api::nodes_by_service(layout),
    }
}

/// act: store the packages not stored yet, then publish the index.
async fn act(
    rendered: &Rendered,
    bundle: &str,
    repository: &Repository,
) -> Result<crate::pkg::index::Index, StoreError> {
    let mut wrote = false;
    for package in &rendered.packages {
        wrote |= repository.ensure(package, bundle).await?;
    }
    if wrote {
        info!(%bundle, "stored new generated packages");
    }
    repository.publish().await
}

fn entries(rendered: &Rendered) -> Vec<RenderedPackage> {
    rendered
        .packages
        .iter()
        .map(|p| RenderedPackage {
            service: p.service.clone(),
            package_id: p.id.clone(),
            content_digest: p.content_digest.clone(),
            input_digest: rendered.input_digest.clone(),
            secrets: p.secret_parameters(),
        })
        .collect()
}

fn rendered_true(rendered: &Rendered) -> Observed<'static> {
    let ids: Vec<&str> = rendered.packages.iter().map(|p| p.id.as_str()).collect();
    Observed::new(
        RENDERED,
        true,
        "Rendered",
        format!("rendered {}", ids.join(", ")),
    )
}

fn rendered_false(problems: &[Problem]) -> Observed<'static> {
    let mut lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.sort();
    lines.dedup();
    Observed::new(
        RENDERED,
        false,
        "InvalidSpec",
        format!(
            "{} problem(s); the last rendered packages stay: {}",
            lines.len(),
            lines.join("; ")
        ),
    )
}

fn published(served: bool, version: u64, config: &Config) -> Observed<'static> {
    let at = config
        .url
        .as_deref()
        .unwrap_or("the operator's /config-repository/");
    match (served, config.key.is_some()) {
        (true, true) => Observed::new(
            PUBLISHED,
            true,
            "Published",
            format!("served at {at}, signed index version {version}"),
        ),
        (true, false) => Observed::new(
            PUBLISHED,
            true,
            "PublishedUnsigned",
            format!(
                "served at {at}, index version {version}, unsigned: start the operator with \
                 --config-signing-key so that agents can verify it"
            ),
        ),
        (false, _) => Observed::new(
            PUBLISHED,
            false,
            "Publishing",
            "the index does not list every package yet; retrying".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::Status;
    use crate::api::{ClusterSpec, ClusterStatus, LayoutNode};

    #[test]
    fn a_clusters_facts_are_its_running_layout() {
        let mut cluster = Cluster::new("zk", ClusterSpec::default());
        let node = |name: &str, services: &[&str]| LayoutNode {
            name: name.into(),
            node_class: "small".into(),
            services: services.iter().map(|s| (*s).to_owned()).collect(),
        };
        cluster.status = Some(ClusterStatus {
            applied_layout: vec![
                node("zk-1", &["zookeeper"]),
                node("zk-2", &["zookeeper", "kafka"]),
                node("zk-3", &["kafka"]),
            ],
            ..ClusterStatus::default()
        });
        let facts = facts_of(&cluster);
        assert_eq!((facts.name.as_str(), facts.size), ("zk", 3));
        assert_eq!(facts.hosts["zookeeper"], ["zk-1", "zk-2"]);
        assert_eq!(facts.hosts["kafka"], ["zk-2", "zk-3"]);
    }

    #[test]
    fn a_bundle_that_does_not_render_lists_every_problem_once() {
        let problems = vec![
            Problem {
                path: "spec.values.port".into(),
                message: "must be an integer".into(),
            },
            Problem {
                path: "spec.valuesFrom[0].secretKeyRef".into(),
                message: "Secret default/web has no key \"token\"".into(),
            },
            Problem {
                path: "spec.values.port".into(),
                message: "must be an integer".into(),
            },
        ];
        let c = rendered_false(&problems);
        assert_eq!((c.status, c.reason), (Status::False, "InvalidSpec"));
        assert!(c.message.starts_with("2 problem(s)"), "{}", c.message);
        assert!(c.message.contains("spec.values.port: must be an integer"));
        assert!(c.message.contains("spec.valuesFrom[0].secretKeyRef"));
    }
}
