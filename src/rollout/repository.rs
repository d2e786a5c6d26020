//! The PackageRepository controller: reads each repository's index,
//! verifies its signature, reports Ready and the package count, and keeps
//! the last good index in memory for the PackageSet controller.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::conditions::{Observed, types};
use crate::api::{PackageRepository, PackageRepositoryStatus};
use crate::operator::{Context, MANAGER, status};
use crate::pkg::index::{Index, parse_public_key};
use crate::pkg::{FetchError, FetchOptions, Fetcher};

/// The last good index of each repository, by name.
pub type IndexCache = Arc<RwLock<HashMap<String, Arc<Index>>>>;

/// Errors of the PackageRepository controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused a read or write.
    #[error("PackageRepository {name}: {source}")]
    Kube {
        /// The repository.
        name: String,
        /// The cause.
        source: kube::Error,
    },
}

/// Runs the controller until `stop` is cancelled.
pub fn run(ctx: Context, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let api: Api<PackageRepository> = Api::all(ctx.client.clone());
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        Controller::new(api, ctx.watch_config())
            .graceful_shutdown_on(async move { stop.cancelled().await })
            .run(reconcile, error_policy, Arc::new((ctx, recorder)))
            .for_each(|_| async {})
            .await;
    })
}

fn error_policy(
    repo: Arc<PackageRepository>,
    err: &Error,
    ctx: Arc<(Context, Recorder)>,
) -> Action {
    warn!(repository = %repo.name_any(), error = %err, "reconcile failed");
    ctx.0.metrics.failed("packagerepository", "Kube");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(
    repo: Arc<PackageRepository>,
    ctx: Arc<(Context, Recorder)>,
) -> Result<Action, Error> {
    let (ctx, recorder) = (&ctx.0, &ctx.1);
    ctx.metrics.reconciled("packagerepository");
    let name = repo.name_any();
    let refresh = Duration::from_secs(repo.spec.refresh_interval_seconds.max(10) as u64);
    let now = Timestamp::now();
    let mut status: PackageRepositoryStatus = repo.status.clone().unwrap_or_default();

    let ready = match sync(&repo).await {
        Ok(index) => {
            status.package_count = Some(index.packages.len() as i64);
            status.index_version = Some(index.version as i64);
            status.last_sync = Some(Time(now));
            let message = format!(
                "index version {} lists {} packages",
                index.version,
                index.packages.len()
            );
            ctx.indexes
                .write()
                .expect("index cache lock")
                .insert(name.clone(), Arc::new(index));
            Observed::new(types::READY, true, "Synced", message)
        }
        Err(SyncError::InvalidKey(message)) => {
            ctx.indexes.write().expect("index cache lock").remove(&name);
            Observed::new(types::READY, false, "InvalidSpec", message)
        }
        Err(SyncError::Fetch(err)) => {
            // A bad signature means the index cannot be trusted; anything else
            // (unreachable, 5xx) keeps the last good index.
            if matches!(err, FetchError::Index(_) | FetchError::Unsigned { .. }) {
                ctx.indexes.write().expect("index cache lock").remove(&name);
            }
            Observed::new(
                types::READY,
                false,
                "SyncFailed",
                format!("{err}; retrying"),
            )
        }
    };
    let retry_soon = ready.status != crate::api::conditions::Status::True;
    let changed = status::merge(
        &mut status.conditions,
        vec![ready],
        repo.metadata.generation,
        now,
    );
    status.observed_generation = repo.metadata.generation;
    let api: Api<PackageRepository> = Api::all(ctx.client.clone());
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageRepository", "status": status
        })),
    )
    .await
    .map_err(|source| Error::Kube {
        name: name.clone(),
        source,
    })?;
    if !changed.is_empty() {
        info!(repository = %name, "repository status changed");
        status::publish(recorder, &repo.object_ref(&()), &changed).await;
    }
    Ok(Action::requeue(if retry_soon {
        refresh.min(Duration::from_secs(10))
    } else {
        refresh
    }))
}

enum SyncError {
    InvalidKey(String),
    Fetch(FetchError),
}

async fn sync(repo: &PackageRepository) -> Result<Index, SyncError> {
    let keys = repo
        .spec
        .public_keys
        .iter()
        .enumerate()
        .map(|(i, k)| parse_public_key(k, &format!("spec.publicKeys[{i}]")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SyncError::InvalidKey(e.to_string()))?;
    let options = FetchOptions {
        retries: 1,
        ..FetchOptions::default()
    };
    Fetcher::new(&repo.spec.url, keys, options)
        .index()
        .await
        .map_err(SyncError::Fetch)
}
