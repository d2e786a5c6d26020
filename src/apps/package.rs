//! The AppPackage controller: counts the instances of each application,
//! makes the stage of every version an instance uses — once, shared by all
//! its instances, kept when the last one goes — and holds the application
//! (a finalizer) while instances exist.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::api::conditions::{Observed, types};
use crate::api::{
    AppInstance, AppPackage, AppPackageStatus, AppVersion, EnsureDirectory, PackageRepository,
    StagedVersion, StorageFetch, StorageFile, StorageRun, StorageTask,
};
use crate::shared::status;

use super::{
    Context, Error, TaskState, digest, key_is, list_params, release_task, required_capabilities,
    run_task, set_finalizer,
};

/// The finalizer that keeps an application while instances use it.
pub const FINALIZER: &str = "theseus.dev/app-package";

/// The stage directory of `version` of `app`.
pub fn stage_path(app: &AppPackage, version: &str) -> String {
    format!(
        "{}/{}/stage/{version}",
        app.spec.stage_root.trim_end_matches('/'),
        app.name_any()
    )
}

/// The storage task that makes the stage of `version`, caching `fetch`'s
/// packages in it.
pub fn stage_task(
    app: &AppPackage,
    version: &AppVersion,
    fetch: Option<StorageFetch>,
) -> StorageTask {
    let path = stage_path(app, &version.version);
    let ensure = vec![EnsureDirectory {
        path: path.clone(),
        mode: "0755".into(),
        claim: Some(format!(
            "{}.{}",
            app.uid().unwrap_or_default(),
            version.version
        )),
        files: version
            .stage
            .files
            .iter()
            .map(|(name, content)| StorageFile {
                name: name.clone(),
                content: content.clone(),
            })
            .collect(),
        ..Default::default()
    }];
    let run = (!version.stage.argv.is_empty()).then(|| StorageRun {
        argv: version.stage.argv.clone(),
        timeout_seconds: version.stage.timeout_seconds,
        env: [
            ("THESEUS_STAGE".to_owned(), path.clone()),
            ("THESEUS_APP".to_owned(), app.name_any()),
            ("THESEUS_VERSION".to_owned(), version.version.clone()),
        ]
        .into(),
    });
    let mut task = StorageTask {
        id: format!("stage/{}/{}", app.name_any(), version.version),
        key: String::new(),
        ensure,
        remove: Vec::new(),
        fetch,
        run,
    };
    task.key = digest(&task);
    task
}

/// Where the stage's packages come from: `Ok(None)` without packages,
/// `Ok(Err(why))` when the repository cannot be used.
async fn stage_fetch(
    app: &AppPackage,
    version: &AppVersion,
    cx: &Context,
) -> Result<Result<Option<StorageFetch>, String>, Error> {
    let stage = &version.stage;
    if stage.packages.is_empty() {
        return Ok(Ok(None));
    }
    let Some(name) = &stage.repository else {
        return Ok(Err(
            "stage.packages needs stage.repository, the PackageRepository they come from".into(),
        ));
    };
    let repository = Api::<PackageRepository>::all(cx.shared.client.clone())
        .get_opt(name)
        .await
        .map_err(|source| Error::Read {
            object: format!("AppPackage {}", app.name_any()),
            what: format!("PackageRepository {name}"),
            source,
        })?;
    let Some(repository) = repository else {
        return Ok(Err(format!(
            "PackageRepository {name} does not exist; create it or fix stage.repository"
        )));
    };
    Ok(Ok(Some(StorageFetch {
        repository: repository.spec.url.clone(),
        public_keys: repository.spec.public_keys.clone(),
        packages: stage.packages.clone(),
    })))
}

/// The instances of `app` among `all`.
pub fn instances_of<'a>(app: &str, all: &'a [AppInstance]) -> Vec<&'a AppInstance> {
    all.iter().filter(|i| i.spec.app == app).collect()
}

/// One pass over an application.
pub async fn reconcile(app: Arc<AppPackage>, cx: Arc<Context>) -> Result<Action, Error> {
    cx.shared.metrics.reconciled(super::PACKAGE);
    let name = app.name_any();
    let object = format!("AppPackage {name}");
    let client = &cx.shared.client;
    let api: Api<AppPackage> = Api::all(client.clone());
    let all = Api::<AppInstance>::all(client.clone())
        .list(&list_params(&cx.shared))
        .await
        .map_err(|source| Error::Read {
            object: object.clone(),
            what: "the AppInstances".into(),
            source,
        })?
        .items;
    let instances = instances_of(&name, &all);
    if app.metadata.deletion_timestamp.is_some() {
        if instances.is_empty() {
            set_finalizer(&api, &app, FINALIZER, false).await?;
            return Ok(Action::await_change());
        }
    } else {
        set_finalizer(&api, &app, FINALIZER, true).await?;
    }
    let now = Timestamp::now();
    let previous = app.status.clone().unwrap_or_default();
    let in_use: BTreeSet<String> = instances.iter().map(|i| i.spec.version.clone()).collect();
    let mut next = AppPackageStatus {
        observed_generation: app.metadata.generation,
        instances: i32::try_from(instances.len()).unwrap_or(i32::MAX),
        in_use: in_use.iter().cloned().collect(),
        staged: previous.staged.clone(),
        conditions: previous.conditions.clone(),
    };
    let mut problems = Vec::new();
    let mut waiting = Vec::new();
    let caps = super::capabilities(&cx).await?;
    let required = required_capabilities(&app);
    for version in &in_use {
        let Some(spec) = app.spec.versions.iter().find(|v| &v.version == version) else {
            problems.push(format!(
                "version {version} is used by instances but is not in spec.versions; put it back or move the instances to another version"
            ));
            continue;
        };
        let fetch = match stage_fetch(&app, spec, &cx).await? {
            Ok(fetch) => fetch,
            Err(why) => {
                problems.push(format!("the stage of version {version}: {why}"));
                continue;
            }
        };
        let task = stage_task(&app, spec, fetch);
        let manager = format!("theseus-storage.stage.{name}.{version}");
        let made = next
            .staged
            .iter()
            .any(|s| &s.version == version && key_is(Some(&s.key), &task.key));
        if made {
            release_task(&cx, &task.id, &manager).await?;
            continue;
        }
        match run_task(&cx, &required, &caps, &manager, task, now).await? {
            Err(why) => waiting.push(format!("version {version}: {why}")),
            Ok((node, TaskState::Done(result))) => {
                next.staged.retain(|s| &s.version != version);
                next.staged.push(StagedVersion {
                    version: version.clone(),
                    path: stage_path(&app, version),
                    key: result.key,
                    node: node.clone(),
                });
                next.staged.sort_by(|a, b| a.version.cmp(&b.version));
                tracing::info!(app = %name, %version, %node, "stage made");
            }
            Ok((node, TaskState::Failed(result))) => problems.push(format!(
                "the stage of version {version} failed on node {node}: {}",
                result.message.unwrap_or_default()
            )),
            Ok((node, TaskState::Pending)) => {
                waiting.push(format!("version {version} on node {node}"));
            }
        }
    }
    let staged = if !problems.is_empty() {
        Observed::new("Staged", false, "StageFailed", problems.join("; "))
    } else if !waiting.is_empty() {
        Observed::new(
            "Staged",
            false,
            "Staging",
            format!("making stages: {}", waiting.join("; ")),
        )
    } else {
        Observed::new(
            "Staged",
            true,
            "StagesMade",
            format!(
                "every version in use is staged ({})",
                next.in_use.join(", ")
            ),
        )
    };
    let valid = Observed::new(
        types::VALID,
        problems.iter().all(|p| !p.contains("not in spec.versions")),
        if problems.iter().any(|p| p.contains("not in spec.versions")) {
            "VersionInUse"
        } else {
            "Valid"
        },
        problems
            .iter()
            .find(|p| p.contains("not in spec.versions"))
            .cloned()
            .unwrap_or_else(|| "every version in use is declared".into()),
    );
    let done = problems.is_empty() && waiting.is_empty();
    let changed = status::merge(
        &mut next.conditions,
        vec![staged, valid],
        app.metadata.generation,
        now,
    );
    if next != previous {
        status::apply_status(&api, &name, &next)
            .await
            .map_err(|source| Error::WriteStatus { object, source })?;
    }
    status::publish(&cx.recorder, &app.object_ref(&()), &changed).await;
    Ok(Action::requeue(Duration::from_secs(if done {
        120
    } else {
        5
    })))
}
