//! The PackageRepository controller: reads each repository's index,
//! verifies its signature, refuses a signed index older than the highest
//! version it accepted (kept in status) or past its expiry, reports Ready
//! and the package count, and keeps the last good index in memory for the
//! PackageSet controller.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::conditions::{Observed, types};
use crate::api::{PackageRepository, PackageRepositoryStatus};
use crate::pkg::index::{Index, parse_public_key};
use crate::pkg::trust::{self, Stale};
use crate::pkg::{FetchError, FetchOptions, Fetcher};
use crate::shared::{Shared, status};

/// Errors of the PackageRepository controller, each naming its step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// record: the repository's status could not be written.
    #[error("PackageRepository {name}: cannot write its status: {source}")]
    WriteStatus {
        /// The repository.
        name: String,
        /// The cause.
        source: kube::Error,
    },
}

/// Runs the controller until `stop` is cancelled.
pub fn run(ctx: Shared, stop: CancellationToken) -> BoxFuture<'static, ()> {
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

impl Error {
    /// The step that failed, as the metric's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::WriteStatus { .. } => "WriteStatus",
        }
    }
}

fn error_policy(repo: Arc<PackageRepository>, err: &Error, ctx: Arc<(Shared, Recorder)>) -> Action {
    warn!(repository = %repo.name_any(), error = %err, "reconcile failed");
    ctx.0.metrics.failed("packagerepository", err.reason());
    Action::requeue(Duration::from_secs(5))
}

/// One pass: observe (fetch and verify the index) → record (status) →
/// report (events).
async fn reconcile(
    repo: Arc<PackageRepository>,
    ctx: Arc<(Shared, Recorder)>,
) -> Result<Action, Error> {
    let (ctx, recorder) = (&ctx.0, &ctx.1);
    ctx.metrics.reconciled("packagerepository");
    let refresh = Duration::from_secs(repo.spec.refresh_interval_seconds.max(10) as u64);
    let now = Timestamp::now();
    let mut status: PackageRepositoryStatus = repo.status.clone().unwrap_or_default();
    let ready = observe(&repo, ctx, &mut status, now).await;
    let retry_soon = ready.status != crate::api::conditions::Status::True;
    let changed = status::merge(
        &mut status.conditions,
        vec![ready],
        repo.metadata.generation,
        now,
    );
    status.observed_generation = repo.metadata.generation;
    record(&repo, ctx, &status).await?;
    if !changed.is_empty() {
        info!(repository = %repo.name_any(), "repository status changed");
        status::publish(recorder, &repo.object_ref(&()), &changed).await;
    }
    Ok(Action::requeue(if retry_soon {
        refresh.min(Duration::from_secs(10))
    } else {
        refresh
    }))
}

/// observe: fetch and verify the index, keep the last good one in the
/// shared cache, and say whether the repository is ready.
async fn observe(
    repo: &PackageRepository,
    ctx: &Shared,
    status: &mut PackageRepositoryStatus,
    now: Timestamp,
) -> Observed<'static> {
    let name = repo.name_any();
    let forget = || {
        ctx.stores
            .indexes
            .write()
            .expect("index cache lock")
            .remove(&name);
    };
    match sync(repo).await {
        Ok((index, signed)) => {
            let (observed, cache) = observe_index(status, &index, signed, now);
            match cache {
                Cache::Replace => {
                    ctx.stores
                        .indexes
                        .write()
                        .expect("index cache lock")
                        .insert(name.clone(), Arc::new(index));
                }
                Cache::Remove => forget(),
                Cache::Keep => {}
            }
            observed
        }
        Err(SyncError::InvalidKey(message)) => {
            forget();
            Observed::new(types::READY, false, "InvalidSpec", message)
        }
        Err(SyncError::Fetch(err)) => {
            // A bad signature means the index cannot be trusted; anything else
            // (unreachable, 5xx) keeps the last good index.
            if matches!(err, FetchError::Index(_) | FetchError::Unsigned { .. }) {
                forget();
            }
            Observed::new(
                types::READY,
                false,
                "SyncFailed",
                format!("{err}; retrying"),
            )
        }
    }
}

/// record: the status, by server-side apply.
async fn record(
    repo: &PackageRepository,
    ctx: &Shared,
    status: &PackageRepositoryStatus,
) -> Result<(), Error> {
    let api: Api<PackageRepository> = Api::all(ctx.client.clone());
    status::apply_status(&api, &repo.name_any(), status)
        .await
        .map_err(|source| Error::WriteStatus {
            name: repo.name_any(),
            source,
        })?;
    Ok(())
}

/// What to do with the cached index after a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cache {
    /// The new index replaces it.
    Replace,
    /// The last good one stays (the new one is a rollback).
    Keep,
    /// No index may be used (the new one expired).
    Remove,
}

/// Pure: the status and Ready condition after reading `index` at `now`. A
/// `signed` index must not be older than `status.acceptedIndexVersion` nor
/// expired, and raises the accepted version.
fn observe_index(
    status: &mut PackageRepositoryStatus,
    index: &Index,
    signed: bool,
    now: Timestamp,
) -> (Observed<'static>, Cache) {
    status.index_version = Some(index.version as i64);
    status.index_expires = index.expires.map(Time);
    let accepted = status
        .accepted_index_version
        .and_then(|v| u64::try_from(v).ok());
    let checked = match signed {
        true => trust::check_index(index.version, index.expires, accepted, now),
        false => Ok(()),
    };
    match checked {
        Ok(()) => {
            if signed {
                let highest = accepted.unwrap_or(0).max(index.version);
                status.accepted_index_version = Some(highest as i64);
            }
            status.package_count = Some(index.packages.len() as i64);
            status.last_sync = Some(Time(now));
            let message = format!(
                "index version {} lists {} packages",
                index.version,
                index.packages.len()
            );
            (
                Observed::new(types::READY, true, "Synced", message),
                Cache::Replace,
            )
        }
        Err(stale @ Stale::Rollback { .. }) => (
            Observed::new(types::READY, false, "IndexRollback", stale.to_string()),
            Cache::Keep,
        ),
        Err(stale @ Stale::Expired { .. }) => (
            Observed::new(types::READY, false, "IndexExpired", stale.to_string()),
            Cache::Remove,
        ),
    }
}

enum SyncError {
    InvalidKey(String),
    Fetch(FetchError),
}

/// Reads the index; also says whether its signature was verified.
async fn sync(repo: &PackageRepository) -> Result<(Index, bool), SyncError> {
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
    let signed = !keys.is_empty();
    Fetcher::new(&repo.spec.url, keys, options)
        .index()
        .await
        .map(|index| (index, signed))
        .map_err(SyncError::Fetch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::Status;

    fn index(version: u64, expires: Option<&str>) -> Index {
        Index {
            version,
            expires: expires.map(|e| e.parse().unwrap()),
            packages: vec![],
        }
    }

    #[test]
    fn a_signed_index_older_than_the_accepted_one_or_expired_is_refused() {
        let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        let mut status = PackageRepositoryStatus::default();
        let (ready, cache) = observe_index(&mut status, &index(5, None), true, now);
        assert_eq!((ready.status, cache), (Status::True, Cache::Replace));
        assert_eq!(status.accepted_index_version, Some(5));

        let (ready, cache) = observe_index(&mut status, &index(3, None), true, now);
        assert_eq!(
            (ready.status, ready.reason, cache),
            (Status::False, "IndexRollback", Cache::Keep)
        );
        assert!(
            ready
                .message
                .contains("served version 3 is older than accepted version 5"),
            "{}",
            ready.message
        );
        assert_eq!(status.accepted_index_version, Some(5), "never lowered");
        assert_eq!(status.index_version, Some(3), "the served one is shown");

        let expired = index(6, Some("2026-05-31T00:00:00Z"));
        let (ready, cache) = observe_index(&mut status, &expired, true, now);
        assert_eq!((ready.reason, cache), ("IndexExpired", Cache::Remove));
        assert!(
            ready.message.contains("expired at 2026-05-31T00:00:00Z"),
            "{}",
            ready.message
        );
        assert_eq!(status.accepted_index_version, Some(5));

        let (ready, _) = observe_index(
            &mut status,
            &index(7, Some("2026-06-08T00:00:00Z")),
            true,
            now,
        );
        assert_eq!(ready.status, Status::True);
        assert_eq!(status.accepted_index_version, Some(7));
    }

    #[test]
    fn an_unsigned_index_is_read_without_version_checks() {
        let now = Timestamp::now();
        let mut status = PackageRepositoryStatus {
            accepted_index_version: Some(9),
            ..Default::default()
        };
        let (ready, _) = observe_index(&mut status, &index(2, None), false, now);
        assert_eq!(ready.status, Status::True);
        assert_eq!(status.accepted_index_version, Some(9));
    }
}
