//! The ClusterTemplate controller: resolves each template (parent and
//! includes merged in), checks it against the catalog, and records `Valid`,
//! the `revision` of the resolved template and the `feasibleSizes`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Context, Error, Stores};
use crate::api::conditions::{Observed, types};
use crate::api::{ClusterTemplate, ClusterTemplateStatus};
use crate::layout::{self, Catalog, Finding, Request};
use crate::shared::{Shared, status};

/// The controller's name in metrics.
pub const NAME: &str = "clustertemplate";

/// The controller over the shared template reflector, reconciling every
/// template when `catalog_changed` ticks.
pub fn controller(
    ctx: Shared,
    stores: Stores,
    templates: impl Stream<Item = Arc<ClusterTemplate>> + Send + 'static,
    catalog_changed: impl Stream<Item = ()> + Send + 'static,
    stop: CancellationToken,
) -> BoxFuture<'static, ()> {
    let store = stores.templates.clone();
    let context = Context::new(ctx, stores);
    Controller::for_shared_stream(templates, store)
        .reconcile_all_on(catalog_changed)
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .boxed()
}

fn error_policy(template: Arc<ClusterTemplate>, err: &Error, cx: Arc<Context>) -> Action {
    warn!(template = %template.name_any(), error = %err, "reconcile failed");
    cx.ctx.metrics.failed(NAME, err.reason());
    Action::requeue(Duration::from_secs(5))
}

/// One pass: observe (the catalog) → decide ([`assess`]) → record (status,
/// when it changed) → report (events).
pub async fn reconcile(template: Arc<ClusterTemplate>, cx: Arc<Context>) -> Result<Action, Error> {
    cx.ctx.metrics.reconciled(NAME);
    let name = template.name_any();
    let catalog = cx.stores.catalog();
    let assessed = {
        let input = name.clone();
        tokio::task::spawn_blocking(move || assess(&catalog, &input))
            .await
            .map_err(|e| Error::Decide {
                object: format!("ClusterTemplate {name}"),
                step: "assessment",
                message: e.to_string(),
            })?
    };
    // A template found invalid is assessed again after a while: the
    // catalog it was read against may have been half listed (a service
    // seen missing at start-up), and no later event need say otherwise.
    let action = if assessed.valid.status == crate::api::conditions::Status::True {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(20))
    };
    let now = Timestamp::now();
    let previous = template.status.clone().unwrap_or_default();
    let mut next = previous.clone();
    let changed = status::merge(
        &mut next.conditions,
        vec![assessed.valid],
        template.metadata.generation,
        now,
    );
    next.observed_generation = template.metadata.generation;
    next.revision = assessed.revision;
    next.feasible_sizes = assessed.feasible_sizes;
    if next != previous {
        record(&template, &cx.ctx, &next).await?;
    }
    status::publish(&cx.recorder, &template.object_ref(&()), &changed).await;
    Ok(action)
}

/// record: the status, by server-side apply.
async fn record(
    template: &ClusterTemplate,
    ctx: &Shared,
    status: &ClusterTemplateStatus,
) -> Result<(), Error> {
    let api = Api::<ClusterTemplate>::all(ctx.client.clone());
    status::apply_status(&api, &template.name_any(), status)
        .await
        .map_err(|source| Error::WriteStatus {
            object: format!("ClusterTemplate {}", template.name_any()),
            source,
        })?;
    Ok(())
}

/// What a template is worth: whether it is valid, its revision, and the
/// sizes for which its default services have a layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    /// The `Valid` condition.
    pub valid: Observed<'static>,
    /// The revision of the resolved template, when it resolves.
    pub revision: Option<String>,
    /// Size ranges (`1`, `3-40`); empty for a partial or invalid template.
    pub feasible_sizes: Vec<String>,
}

/// Pure: resolves `name` in `catalog`, validates it, and computes the
/// sizes it can be solved for.
pub fn assess(catalog: &Catalog, name: &str) -> Assessment {
    let resolved = match layout::resolve::resolve(catalog, name) {
        Ok(resolved) => resolved,
        Err(findings) => return invalid(&findings, None),
    };
    let revision = Some(layout::resolve::revision(&resolved));
    let findings = layout::validate::template(catalog, &resolved);
    if !findings.is_empty() {
        return invalid(&findings, revision);
    }
    if resolved.partial {
        return Assessment {
            valid: Observed::new(
                types::VALID,
                true,
                "Partial",
                "a partial template: other templates include it; no Cluster may name it",
            ),
            revision,
            feasible_sizes: Vec::new(),
        };
    }
    let request = Request {
        size: 1,
        ..Request::default()
    };
    let ranges = layout::build_model(catalog, &resolved, &request)
        .and_then(|model| layout::sizes::feasible_sizes(&model).map_err(|e| e.to_string()));
    match ranges {
        Ok(ranges) => {
            let feasible_sizes = layout::sizes::format_ranges(&ranges);
            let message = match feasible_sizes.is_empty() {
                true => {
                    "valid, but no cluster size has a layout: see `theseus template solve` for why"
                        .to_owned()
                }
                false => format!(
                    "valid; layouts exist for sizes {}",
                    feasible_sizes.join(", ")
                ),
            };
            Assessment {
                valid: Observed::new(types::VALID, true, "Valid", message),
                revision,
                feasible_sizes,
            }
        }
        Err(message) => Assessment {
            valid: Observed::new(types::VALID, false, "InvalidSpec", message),
            revision,
            feasible_sizes: Vec::new(),
        },
    }
}

/// `Valid` False, its reason the first finding's and its message every
/// finding with its field path.
fn invalid(findings: &[Finding], revision: Option<String>) -> Assessment {
    let (reason, message) = layout::validate::condition(findings);
    Assessment {
        valid: Observed::new(types::VALID, false, reason, message),
        revision,
        feasible_sizes: Vec::new(),
    }
}
