//! The AppInstance controller. Every state is declared and reached here;
//! no step holds a lock outside the API server, and each can be done
//! again, so an operator killed at any moment resumes where it was.
//!
//! One pass: observe (the AppPackage, the Role, the capabilities, the
//! other instances, the run objects) → check (valid, capabilities,
//! dependencies) → install (the version's stage must be made; the
//! directories `BASE/ROLE/APP/ID` and the env file are made by an agent,
//! whole or not at all, never over a directory the instance did not
//! make) → run or stop (the ConfigBundle and PackageSet; a stopped
//! instance's PackageSet keeps only its configuration package, so the
//! nodes stop its services and keep its files; the ServiceGroup, scaled to
//! zero when stopped) → record the status.
//! Deletion (a finalizer) stops it, deletes its run objects and, with
//! `deletionPolicy: Delete`, its directories; the stage stays.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::api::conditions::{Observed, types};
use crate::api::{
    AppInstance, AppInstanceStatus, AppPackage, ClaimedPath, ConfigBundle, ConfigModule,
    DeletionPolicy, EnsureDirectory, InstanceEndpoint, InstancePhase, InstancePolicy,
    InstanceState, PackageSet, Role, ServiceGroup, StorageFile, StorageTask, Tenant,
};
use crate::pkg::vars::expand;
use crate::shared::{MANAGER, status};

use super::role::namespace_of;
use super::{
    Context, Error, TaskState, capabilities_met, digest, key_is, list_params, release_task,
    required_capabilities, run_task, set_finalizer,
};

/// The finalizer that removes what an instance made.
pub const FINALIZER: &str = "theseus.dev/app-instance";
/// The label on an instance's run objects: `NAMESPACE.NAME`.
pub const INSTANCE_LABEL: &str = "theseus.dev/app-instance";
/// The ConfigModule every instance's bundle includes: the instance's
/// facts in `instance.env`.
pub const INSTANCE_MODULE: &str = "theseus-app-instance";
/// The env file in an instance's home.
pub const ENV_FILE: &str = "instance.env.sh";
/// The role of applications allowed once per cluster.
pub const SHARED_ROLE: &str = "shared";
/// The condition naming missing capabilities.
pub const CAPABILITIES_MET: &str = "CapabilitiesMet";
/// The condition naming missing applications.
pub const DEPENDENCIES_MET: &str = "DependenciesMet";
/// The condition saying whether the directories exist.
pub const STORAGE_READY: &str = "StorageReady";

/// `NAMESPACE/NAME`.
pub fn key(i: &AppInstance) -> String {
    format!("{}/{}", i.namespace().unwrap_or_default(), i.name_any())
}

/// The variables of an instance's run templates: `app`, `version`,
/// `role`, `id`, `instance` (`ROLE-APP-ID`), `home`, `namespace`, and
/// `values.NAME` (defaults applied).
pub fn variables(i: &AppInstance, app: &AppPackage, home: &str) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = [
        ("app", i.spec.app.clone()),
        ("version", i.spec.version.clone()),
        ("role", i.spec.role.clone()),
        ("id", i.spec.id.clone()),
        (
            "instance",
            format!("{}-{}-{}", i.spec.role, i.spec.app, i.spec.id),
        ),
        ("home", home.to_owned()),
        ("namespace", i.namespace().unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (name, value) in values(i, app) {
        vars.insert(format!("values.{name}"), value);
    }
    vars
}

/// The instance's parameter values, defaults applied.
pub fn values(i: &AppInstance, app: &AppPackage) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = app
        .spec
        .parameters
        .iter()
        .filter_map(|p| Some((p.name.clone(), p.default.clone()?)))
        .collect();
    out.extend(i.spec.values.clone());
    out
}

/// What is wrong with the instance itself: its name, namespace, version,
/// values, and the application's instance policy against `others` (every
/// instance of the application). Each problem names the field.
pub fn problems(
    i: &AppInstance,
    app: &AppPackage,
    role: &Role,
    others: &[AppInstance],
) -> Vec<String> {
    let mut out = Vec::new();
    let want = format!("{}-{}", i.spec.app, i.spec.id);
    if i.name_any() != want {
        out.push(format!(
            "metadata.name must be {want} (APP-ID), so that an id is taken once per role"
        ));
    }
    let ns = namespace_of(role);
    if i.namespace().as_deref() != Some(ns.as_str()) {
        out.push(format!(
            "spec.role: Role {} keeps its instances in namespace {ns}; create the instance there",
            role.name_any()
        ));
    }
    if !app
        .spec
        .versions
        .iter()
        .any(|v| v.version == i.spec.version)
    {
        let known: Vec<&str> = app
            .spec
            .versions
            .iter()
            .map(|v| v.version.as_str())
            .collect();
        out.push(format!(
            "spec.version: {} is not a version of AppPackage {} ({})",
            i.spec.version,
            app.name_any(),
            known.join(", ")
        ));
    }
    for name in i.spec.values.keys() {
        if !app.spec.parameters.iter().any(|p| &p.name == name) {
            out.push(format!(
                "spec.values.{name}: AppPackage {} has no such parameter",
                app.name_any()
            ));
        }
    }
    for p in &app.spec.parameters {
        if p.default.is_none() && !i.spec.values.contains_key(&p.name) {
            out.push(format!("spec.values.{}: required, and not set", p.name));
        }
    }
    let older = |o: &&AppInstance| {
        o.spec.app == i.spec.app
            && o.uid() != i.uid()
            && (o.creation_timestamp(), o.name_any()) < (i.creation_timestamp(), i.name_any())
    };
    match app.spec.instance_policy {
        InstancePolicy::Multi => {}
        InstancePolicy::OnePerRole => {
            if let Some(o) = others
                .iter()
                .filter(older)
                .find(|o| o.spec.role == i.spec.role)
            {
                out.push(format!(
                    "AppPackage {} allows one instance per role, and role {} has {}",
                    app.name_any(),
                    i.spec.role,
                    key(o)
                ));
            }
        }
        InstancePolicy::OnePerCluster => {
            if i.spec.role != SHARED_ROLE {
                out.push(format!(
                    "spec.role: AppPackage {} allows one instance per cluster, in the role {SHARED_ROLE}",
                    app.name_any()
                ));
            }
            // An instance outside `shared` is refused itself and holds
            // no place.
            if let Some(o) = others
                .iter()
                .filter(older)
                .find(|o| o.spec.role == SHARED_ROLE)
            {
                out.push(format!(
                    "AppPackage {} allows one instance per cluster, and {} exists",
                    app.name_any(),
                    key(o)
                ));
            }
        }
    }
    out
}

/// The instance's directories, home first, or why they cannot be made.
pub fn directories(
    i: &AppInstance,
    app: &AppPackage,
    role: &Role,
) -> Result<Vec<EnsureDirectory>, String> {
    let claim = i.uid().unwrap_or_default();
    app.spec
        .directories
        .iter()
        .map(|d| {
            let base = role
                .spec
                .base_directories
                .iter()
                .find(|b| b.name == d.base_directory)
                .ok_or_else(|| {
                    format!(
                        "Role {} has no base directory {} (AppPackage {} puts a directory there); add it to the role",
                        role.name_any(),
                        d.base_directory,
                        app.name_any()
                    )
                })?;
            Ok(EnsureDirectory {
                path: format!(
                    "{}/{}/{}/{}",
                    base.path.trim_end_matches('/'),
                    role.name_any(),
                    i.spec.app,
                    i.spec.id
                ),
                mode: d.mode.clone(),
                owner: d.owner.clone().or_else(|| base.owner.clone()),
                group: d.group.clone().or_else(|| base.group.clone()),
                claim: Some(claim.clone()),
                files: Vec::new(),
            })
        })
        .collect()
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The id of the instance's storage task (install or remove).
fn task_id(i: &AppInstance) -> String {
    format!("instance/{}", key(i))
}

/// The field manager of the instance's storage task.
fn task_manager(i: &AppInstance) -> String {
    format!("theseus-storage.instance.{}", key(i).replace('/', "."))
}

/// The env file: the instance's names, paths and values as shell
/// variables.
pub fn env_file(
    i: &AppInstance,
    app: &AppPackage,
    dirs: &[EnsureDirectory],
    stage: &str,
) -> String {
    let mut lines = vec![format!(
        "# The environment of AppInstance {}, written by the operator.",
        key(i)
    )];
    let mut put = |k: String, v: &str| lines.push(format!("export {k}={}", quote(v)));
    put("THESEUS_APP".into(), &i.spec.app);
    put("THESEUS_APP_VERSION".into(), &i.spec.version);
    put("THESEUS_ROLE".into(), &i.spec.role);
    put("THESEUS_INSTANCE_ID".into(), &i.spec.id);
    put(
        "THESEUS_INSTANCE".into(),
        &format!("{}-{}-{}", i.spec.role, i.spec.app, i.spec.id),
    );
    put("THESEUS_HOME".into(), &dirs[0].path);
    put("THESEUS_STAGE".into(), stage);
    for (d, spec) in dirs.iter().zip(&app.spec.directories) {
        put(
            format!("THESEUS_DIR_{}", spec.base_directory.to_uppercase()),
            &d.path,
        );
    }
    for (k, v) in values(i, app) {
        put(format!("THESEUS_VALUE_{}", k.to_uppercase()), &v);
    }
    lines.join("\n") + "\n"
}

/// The storage task that makes the instance's directories and env file.
pub fn install_task(i: &AppInstance, mut dirs: Vec<EnsureDirectory>, env: String) -> StorageTask {
    dirs[0].files.push(StorageFile {
        name: ENV_FILE.into(),
        content: env,
    });
    let mut task = StorageTask {
        id: task_id(i),
        key: String::new(),
        ensure: dirs,
        ..Default::default()
    };
    task.key = digest(&task);
    task
}

/// The storage task that removes the instance's directories.
pub fn remove_task(i: &AppInstance, dirs: &[EnsureDirectory]) -> StorageTask {
    let mut task = StorageTask {
        id: task_id(i),
        key: String::new(),
        remove: dirs
            .iter()
            .map(|d| ClaimedPath {
                path: d.path.clone(),
                claim: d.claim.clone().unwrap_or_default(),
            })
            .collect(),
        ..Default::default()
    };
    task.key = digest(&task);
    task
}

/// `value` with every `${NAME}` of its strings replaced from `vars`.
pub fn substitute(value: &Value, vars: &BTreeMap<String, String>) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => Value::String(expand(s, vars).map_err(|k| {
            format!("${{{k}}} is not a variable of an instance (app, version, role, id, instance, home, namespace, values.NAME)")
        })?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute(v, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), substitute(v, vars)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// The built-in module: the instance's facts in `instance.env`.
pub fn instance_module() -> Value {
    let names = [
        "instance_app",
        "instance_version",
        "instance_role",
        "instance_id",
        "instance_home",
        "instance_namespace",
    ];
    let mut parameters: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| ((*n).to_owned(), json!({ "type": "string" })))
        .collect();
    // The lines of the instances it requires, made by the controller.
    parameters.insert(
        "instance_requires".into(),
        json!({ "type": "string", "default": "" }),
    );
    let mut content: String = names
        .iter()
        .map(|n| format!("{}={{{{ {n} }}}}\n", n.to_uppercase()))
        .collect();
    content.push_str("{{ instance_requires }}");
    json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "ConfigModule",
        "metadata": { "name": INSTANCE_MODULE },
        "spec": {
            "version": "2",
            "parameters": parameters,
            "templates": [{ "path": "instance.env", "content": content }],
        }
    })
}

/// The objects' names: the ConfigBundle (namespaced) and the PackageSet
/// (cluster-scoped).
fn set_name(i: &AppInstance) -> String {
    format!("{}-{}", i.namespace().unwrap_or_default(), i.name_any())
}

/// The instance a run's ServiceGroup belongs to (by its label, `NS.NAME`).
pub fn of_group(group: ServiceGroup) -> Option<kube::runtime::reflector::ObjectRef<AppInstance>> {
    let (ns, name) = group.labels().get(INSTANCE_LABEL)?.split_once('.')?;
    Some(kube::runtime::reflector::ObjectRef::new(name).within(ns))
}

/// What one pass learned, for the status.
struct Pass {
    observed: Vec<Observed<'static>>,
    phase: InstancePhase,
    requeue: u64,
}

/// One pass over an instance.
pub async fn reconcile(inst: Arc<AppInstance>, cx: Arc<Context>) -> Result<Action, Error> {
    cx.shared.metrics.reconciled(super::INSTANCE);
    let who = key(&inst);
    let object = format!("AppInstance {who}");
    let ns = inst.namespace().unwrap_or_default();
    let client = &cx.shared.client;
    let api: Api<AppInstance> = Api::namespaced(client.clone(), &ns);
    let now = Timestamp::now();
    let read = |what: String| {
        let object = object.clone();
        move |source| Error::Read {
            object,
            what,
            source,
        }
    };
    let app = Api::<AppPackage>::all(client.clone())
        .get_opt(&inst.spec.app)
        .await
        .map_err(read(format!("AppPackage {}", inst.spec.app)))?;
    let role = Api::<Role>::all(client.clone())
        .get_opt(&inst.spec.role)
        .await
        .map_err(read(format!("Role {}", inst.spec.role)))?;
    let previous = inst.status.clone().unwrap_or_default();
    let mut next = previous.clone();
    next.observed_generation = inst.metadata.generation;

    if inst.metadata.deletion_timestamp.is_some() {
        next.phase = InstancePhase::Removing;
        let gone = remove(&inst, app.as_ref(), role.as_ref(), &previous, &cx, now).await?;
        match gone {
            Ok(()) => {
                if let Some(tenant) = tenant_of(&inst, &cx).await? {
                    let tenants: Api<Tenant> = Api::all(client.clone());
                    crate::quota::release(&tenants, &tenant.name_any(), &object)
                        .await
                        .map_err(|e| quota_err(&object, e))?;
                }
                set_finalizer(&api, &inst, FINALIZER, false).await?;
                return Ok(Action::await_change());
            }
            Err(waiting) => {
                let pass = Pass {
                    observed: vec![Observed::new(types::AVAILABLE, false, "Removing", waiting)],
                    phase: InstancePhase::Removing,
                    requeue: 3,
                };
                return finish(&inst, &cx, previous, next, pass, now).await;
            }
        }
    }
    set_finalizer(&api, &inst, FINALIZER, true).await?;
    if let Some(tenant) = tenant_of(&inst, &cx).await? {
        let (ok, condition) = admit(&inst, &tenant, &object, &cx).await?;
        if !ok {
            let pass = Pass {
                observed: vec![condition],
                phase: previous.phase,
                requeue: 10,
            };
            return finish(&inst, &cx, previous, next, pass, now).await;
        }
        let _ = status::merge(
            &mut next.conditions,
            vec![condition],
            inst.metadata.generation,
            now,
        );
    }
    let role_missing = role.is_none();
    let (Some(app), Some(role)) = (app, role) else {
        let missing = if role_missing {
            format!("Role {} does not exist; create it", inst.spec.role)
        } else {
            format!("AppPackage {} does not exist; create it", inst.spec.app)
        };
        let pass = Pass {
            observed: vec![Observed::new(types::VALID, false, "NotFound", missing)],
            phase: previous.phase,
            requeue: 15,
        };
        return finish(&inst, &cx, previous, next, pass, now).await;
    };
    let others = Api::<AppInstance>::all(client.clone())
        .list(&list_params(&cx.shared))
        .await
        .map_err(read("the AppInstances".into()))?
        .items;
    let pass = advance(&inst, &app, &role, &others, &mut next, &cx, now).await?;
    finish(&inst, &cx, previous, next, pass, now).await
}

/// The tenant whose namespace the instance is in, if any.
async fn tenant_of(inst: &AppInstance, cx: &Context) -> Result<Option<Tenant>, Error> {
    let tenants = Api::<Tenant>::all(cx.shared.client.clone())
        .list(&list_params(&cx.shared))
        .await
        .map_err(|source| Error::Read {
            object: format!("AppInstance {}", key(inst)),
            what: "the Tenants".into(),
            source,
        })?
        .items;
    let ns = inst.namespace().unwrap_or_default();
    Ok(crate::quota::tenant_of(&ns, &tenants).cloned())
}

fn quota_err(object: &str, e: crate::quota::ReserveError) -> Error {
    Error::Quota {
        object: object.to_owned(),
        source: e,
    }
}

/// The instance's application must be in the tenant's catalog, and one
/// instance is reserved in its quotas (by compare-and-swap) before
/// anything is staged. Returns the `Admitted` condition.
async fn admit(
    inst: &AppInstance,
    tenant: &Tenant,
    object: &str,
    cx: &Context,
) -> Result<(bool, Observed<'static>), Error> {
    use crate::quota::ReserveError;
    let name = tenant.name_any();
    let allowed = tenant.status.as_ref().map(|s| &s.app_packages);
    if tenant.spec.catalog.app_packages.is_some()
        && !allowed.is_some_and(|a| a.contains(&inst.spec.app))
    {
        let message = format!(
            "application {} is not in tenant {name}'s catalog (spec.catalog.appPackages)",
            inst.spec.app
        );
        return Ok((
            false,
            Observed::new(types::ADMITTED, false, "AppNotAllowed", message),
        ));
    }
    let tenants: Api<Tenant> = Api::all(cx.shared.client.clone());
    let uid = inst.uid().unwrap_or_default();
    let usage = crate::quota::instance_usage();
    match crate::quota::reserve(&tenants, &name, (object, &uid), &usage).await {
        Ok(_) => Ok((
            true,
            Observed::new(
                types::ADMITTED,
                true,
                "Reserved",
                format!("one instance reserved in tenant {name}'s quotas"),
            ),
        )),
        Err(ReserveError::Exceeded { exceeded, .. }) => Ok((
            false,
            Observed::new(
                types::ADMITTED,
                false,
                "QuotaExceeded",
                format!(
                    "tenant {name}: {exceeded}; nothing is staged: remove an instance or raise the quota"
                ),
            ),
        )),
        Err(e @ (ReserveError::Deleting { .. } | ReserveError::Gone { .. })) => Ok((
            false,
            Observed::new(types::ADMITTED, false, "TenantUnavailable", e.to_string()),
        )),
        Err(e) => Err(quota_err(object, e)),
    }
}

async fn advance(
    inst: &AppInstance,
    app: &AppPackage,
    role: &Role,
    others: &[AppInstance],
    next: &mut AppInstanceStatus,
    cx: &Context,
    now: Timestamp,
) -> Result<Pass, Error> {
    let mut observed = Vec::new();
    let wrong = problems(inst, app, role, others);
    let dirs = directories(inst, app, role);
    if !wrong.is_empty() || dirs.is_err() {
        let mut all = wrong;
        all.extend(dirs.err());
        observed.push(Observed::new(
            types::VALID,
            false,
            "InvalidSpec",
            all.join("; "),
        ));
        return Ok(Pass {
            observed,
            phase: next.phase,
            requeue: 30,
        });
    }
    let dirs = dirs.expect("checked");
    observed.push(Observed::new(
        types::VALID,
        true,
        "Valid",
        "the instance is valid",
    ));
    let installed_before = next.applied_key.is_some();

    // Capabilities and dependencies.
    let caps = super::capabilities(cx).await?;
    let required = required_capabilities(app);
    let caps_met = capabilities_met(&required, &caps);
    observed.push(match &caps_met {
        Ok(()) => Observed::new(
            CAPABILITIES_MET,
            true,
            "Available",
            "every required capability is available",
        ),
        Err(why) => Observed::new(
            CAPABILITIES_MET,
            false,
            "CapabilityMissing",
            format!("missing: {why}"),
        ),
    });
    let deps = dependencies(inst, app, others);
    observed.push(match &deps {
        Ok(found) if found.is_empty() => Observed::new(
            DEPENDENCIES_MET,
            true,
            "NoneRequired",
            "the application requires no other application",
        ),
        Ok(found) => Observed::new(
            DEPENDENCIES_MET,
            true,
            "Running",
            format!(
                "every required application runs: {}",
                found.iter().map(|d| key(d)).collect::<Vec<_>>().join(", ")
            ),
        ),
        Err(why) => Observed::new(DEPENDENCIES_MET, false, "NotRunning", why.clone()),
    });
    let lost = caps_met.is_err() && installed_before;
    observed.push(if lost {
        Observed::new(
            types::DEGRADED,
            true,
            "CapabilityLost",
            format!(
                "a required capability was lost; the instance is kept as it is: {}",
                caps_met.clone().err().unwrap_or_default()
            ),
        )
    } else {
        Observed::new(types::DEGRADED, false, "Healthy", "nothing is lacking")
    });
    if caps_met.is_err() && !installed_before {
        observed.push(Observed::new(
            STORAGE_READY,
            false,
            "WaitingForCapabilities",
            "nothing is installed until every required capability is available",
        ));
        observed.push(Observed::new(
            types::AVAILABLE,
            false,
            "NotInstalled",
            "held: a required capability is missing",
        ));
        return Ok(Pass {
            observed,
            phase: InstancePhase::NotInstalled,
            requeue: 10,
        });
    }

    // The stage.
    let staged = app
        .status
        .as_ref()
        .and_then(|s| s.staged.iter().find(|v| v.version == inst.spec.version));
    let Some(staged) = staged else {
        observed.push(Observed::new(
            STORAGE_READY,
            false,
            "WaitingForStage",
            format!(
                "waiting for AppPackage {} to stage version {}",
                app.name_any(),
                inst.spec.version
            ),
        ));
        observed.push(Observed::new(
            types::AVAILABLE,
            false,
            "NotInstalled",
            "not installed yet",
        ));
        return Ok(Pass {
            observed,
            phase: InstancePhase::NotInstalled,
            requeue: 3,
        });
    };
    next.stage = Some(staged.path.clone());

    // The directories and env file.
    let env = env_file(inst, app, &dirs, &staged.path);
    let task = install_task(inst, dirs.clone(), env);
    let manager = task_manager(inst);
    if !key_is(next.applied_key.as_deref(), &task.key) {
        let state = match run_task(cx, &required, &caps, &manager, task, now).await? {
            Err(why) => Err(("NoStorageNode", why)),
            Ok((node, TaskState::Done(result))) => {
                next.applied_key = Some(result.key.clone());
                next.storage_node = Some(node.clone());
                next.home = Some(dirs[0].path.clone());
                next.directories = dirs.iter().map(|d| d.path.clone()).collect();
                tracing::info!(instance = %key(inst), %node, created = ?result.created, "installed");
                Ok(())
            }
            Ok((node, TaskState::Failed(result))) => Err((
                "StorageFailed",
                format!(
                    "node {node}: {} ({})",
                    result.message.unwrap_or_default(),
                    result.reason.unwrap_or_default()
                ),
            )),
            Ok((node, TaskState::Pending)) => Err((
                "Installing",
                format!("node {node} is making the instance's directories"),
            )),
        };
        if let Err((reason, message)) = state {
            observed.push(Observed::new(STORAGE_READY, false, reason, message));
            observed.push(Observed::new(
                types::AVAILABLE,
                false,
                "NotInstalled",
                "not installed yet",
            ));
            let phase = if installed_before {
                next.phase
            } else {
                InstancePhase::Staged
            };
            return Ok(Pass {
                observed,
                phase,
                requeue: 3,
            });
        }
    } else {
        release_task(cx, &task.id, &manager).await?;
    }
    observed.push(Observed::new(
        STORAGE_READY,
        true,
        "DirectoriesMade",
        format!("{} exist with the env file", next.directories.join(", ")),
    ));

    // Run or stop.
    let home = dirs[0].path.clone();
    let running = inst.spec.state == InstanceState::Running;
    let requires = match deps {
        Ok(found) => dependency_variables(&found),
        Err(why) if running => {
            observed.push(Observed::new(
                types::AVAILABLE,
                false,
                "WaitingForDependencies",
                why,
            ));
            return Ok(Pass {
                observed,
                phase: InstancePhase::Installed,
                requeue: 5,
            });
        }
        Err(_) => BTreeMap::new(),
    };
    let run = run_objects(inst, app, &home, &requires, running, next, cx).await?;
    observed.push(run.clone());
    let up = run.status == crate::api::conditions::Status::True;
    let phase = if running && up {
        InstancePhase::Running
    } else {
        InstancePhase::Installed
    };
    let requeue = if up { 60 } else { 3 };
    Ok(Pass {
        observed,
        phase,
        requeue,
    })
}

/// Whether every application `app` requires has a Running instance where
/// the requirement says.
fn dependencies<'o>(
    inst: &AppInstance,
    app: &AppPackage,
    others: &'o [AppInstance],
) -> Result<Vec<&'o AppInstance>, String> {
    let mut missing = Vec::new();
    let mut found_all = Vec::new();
    for r in &app.spec.requires.apps {
        let role = match r.scope {
            crate::api::AppScope::SameRole => inst.spec.role.as_str(),
            crate::api::AppScope::Shared => SHARED_ROLE,
        };
        let found = others
            .iter()
            .filter(|o| {
                o.spec.app == r.name
                    && o.spec.role == role
                    && (r.versions.is_empty() || r.versions.contains(&o.spec.version))
                    && o.status
                        .as_ref()
                        .is_some_and(|s| s.phase == InstancePhase::Running)
            })
            .min_by_key(|o| key(o));
        if let Some(found) = found {
            found_all.push(found);
        } else {
            missing.push(format!(
                "no Running instance of {} in role {role}{}",
                r.name,
                if r.versions.is_empty() {
                    String::new()
                } else {
                    format!(" at version {}", r.versions.join(" or "))
                }
            ));
        }
    }
    if missing.is_empty() {
        Ok(found_all)
    } else {
        Err(missing.join("; "))
    }
}

/// What an instance learns of the instances it requires, as variables
/// (`requires.APP.id`, `.role`, `.namespace`, `.home`, `.addresses` —
/// comma-separated — and `.port.NAME`).
pub fn dependency_variables(deps: &[&AppInstance]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for d in deps {
        let prefix = format!("requires.{}", d.spec.app);
        let status = d.status.clone().unwrap_or_default();
        let addresses: Vec<&str> = status
            .endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect();
        out.insert(format!("{prefix}.id"), d.spec.id.clone());
        out.insert(format!("{prefix}.role"), d.spec.role.clone());
        out.insert(
            format!("{prefix}.namespace"),
            d.namespace().unwrap_or_default(),
        );
        out.insert(
            format!("{prefix}.home"),
            status.home.clone().unwrap_or_default(),
        );
        out.insert(format!("{prefix}.addresses"), addresses.join(","));
        for e in &status.endpoints {
            for (name, port) in &e.ports {
                out.insert(format!("{prefix}.port.{name}"), port.to_string());
            }
        }
    }
    out
}

/// The dependency variables as `instance.env` lines:
/// `REQUIRES_APP_HOME=…` (upper case, `.` as `_`).
fn dependency_lines(vars: &BTreeMap<String, String>) -> String {
    vars.iter()
        .map(|(k, v)| {
            let name: String = k
                .chars()
                .map(|c| match c {
                    '.' | '-' => '_',
                    c => c.to_ascii_uppercase(),
                })
                .collect();
            format!("{name}={v}\n")
        })
        .collect()
}

/// Applies the instance's ConfigBundle and PackageSet (running: the
/// application's packages; stopped: its configuration package only) and
/// says whether they are Available.
async fn run_objects(
    inst: &AppInstance,
    app: &AppPackage,
    home: &str,
    requires: &BTreeMap<String, String>,
    running: bool,
    next: &mut AppInstanceStatus,
    cx: &Context,
) -> Result<Observed<'static>, Error> {
    let version = app
        .spec
        .versions
        .iter()
        .find(|v| v.version == inst.spec.version)
        .expect("validated");
    let mut vars = variables(inst, app, home);
    vars.extend(requires.clone());
    next.created.clear();
    next.endpoints.clear();
    let mut parts = Vec::new();
    if let Some(run) = &version.run.package_set {
        let facts = Facts {
            home,
            requires: dependency_lines(requires),
        };
        parts.push(run_set(inst, app, version, run, &vars, facts, running, next, cx).await?);
    }
    if let Some(group) = &version.run.service_group {
        parts.push(run_group(inst, app, group, &vars, running, next, cx).await?);
    }
    Ok(combine(parts, running))
}

/// One Available of the run objects' parts: the first part not where
/// the instance's state wants it, else all of them, their messages joined.
fn combine(parts: Vec<Observed<'static>>, running: bool) -> Observed<'static> {
    let there = |o: &Observed| {
        if running {
            o.status == crate::api::conditions::Status::True
        } else {
            o.reason == "Stopped"
        }
    };
    if let Some(behind) = parts.iter().find(|o| !there(o)) {
        return behind.clone();
    }
    match parts.split_first() {
        None => Observed::new(
            types::AVAILABLE,
            running,
            if running { "Installed" } else { "Stopped" },
            "the application runs nothing (no run.packageSet or run.serviceGroup); installed",
        ),
        Some((first, rest)) => {
            let mut all = first.clone();
            for part in rest {
                all.message = format!("{}; {}", all.message, part.message);
            }
            all
        }
    }
}

/// The run's ServiceGroup `APP-ID` in the instance's namespace: the
/// template with the instance's variables, `replicas: 0` while stopped.
async fn run_group(
    inst: &AppInstance,
    app: &AppPackage,
    group: &serde_json::Map<String, Value>,
    vars: &BTreeMap<String, String>,
    running: bool,
    next: &mut AppInstanceStatus,
    cx: &Context,
) -> Result<Observed<'static>, Error> {
    let ns = inst.namespace().unwrap_or_default();
    let name = inst.name_any();
    let object = format!("AppInstance {}", key(inst));
    let groups: Api<ServiceGroup> = Api::namespaced(cx.shared.client.clone(), &ns);
    let existing = groups.get_opt(&name).await.map_err(|source| Error::Read {
        object: object.clone(),
        what: format!("ServiceGroup {ns}/{name}"),
        source,
    })?;
    if !running && existing.is_none() {
        return Ok(stopped());
    }
    let invalid = |e: String| {
        Observed::new(
            types::AVAILABLE,
            false,
            "InvalidRun",
            format!(
                "AppPackage {} run.serviceGroup: {e}; fix the application's version {}",
                app.name_any(),
                inst.spec.version
            ),
        )
    };
    let checked = substitute(&Value::Object(group.clone()), vars).and_then(|spec| {
        serde_json::from_value::<crate::api::ServiceGroupSpec>(spec.clone())
            .map(|_| spec)
            .map_err(|e| format!("not a ServiceGroup spec: {e}"))
    });
    let mut spec = match checked {
        Ok(spec) => spec,
        Err(e) => return Ok(invalid(e)),
    };
    if !running {
        spec["replicas"] = json!(0);
    }
    let mut labels = inst.labels().clone();
    labels.insert(INSTANCE_LABEL.into(), format!("{ns}.{name}"));
    let object_json = json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "ServiceGroup",
        "metadata": { "name": name, "namespace": ns, "labels": labels },
        "spec": spec,
    });
    let applied = match groups
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&object_json),
        )
        .await
    {
        Ok(applied) => applied,
        // The API server's schema refused what the template made.
        Err(kube::Error::Api(e)) if e.code == 422 => {
            return Ok(invalid(format!("the API server refused it: {}", e.message)));
        }
        Err(source) => {
            return Err(Error::Write {
                object,
                action: format!("apply ServiceGroup {ns}/{name}"),
                source,
            });
        }
    };
    next.created.push(format!("ServiceGroup/{name}"));
    let status = applied.status.clone().unwrap_or_default();
    let current = status.observed_generation == applied.metadata.generation;
    let available =
        current && crate::api::conditions::is_true(&status.conditions, types::AVAILABLE);
    Ok(match (running, available, status.ready_replicas) {
        (true, true, ready) => Observed::new(
            types::AVAILABLE,
            true,
            "Running",
            format!(
                "ServiceGroup {name} has {ready} ready containers, published at {}",
                status.etcd_path.unwrap_or_default()
            ),
        ),
        (true, false, _) => Observed::new(
            types::AVAILABLE,
            false,
            "Starting",
            format!("waiting for ServiceGroup {name} to be available"),
        ),
        (false, _, 0) if current => stopped(),
        (false, _, ready) => Observed::new(
            types::AVAILABLE,
            false,
            "Stopping",
            format!("stopping: ServiceGroup {name} still has {ready} ready containers"),
        ),
    })
}

fn stopped() -> Observed<'static> {
    Observed::new(
        types::AVAILABLE,
        false,
        "Stopped",
        "installed and not running (spec.state: Installed)",
    )
}

/// What the instance's `instance.env` holds besides its names.
struct Facts<'h> {
    home: &'h str,
    /// The dependency lines.
    requires: String,
}

/// The run's PackageSet (and the instance's ConfigBundle).
#[allow(clippy::too_many_arguments)]
async fn run_set(
    inst: &AppInstance,
    app: &AppPackage,
    version: &crate::api::AppVersion,
    run: &crate::api::RunPackageSet,
    vars: &BTreeMap<String, String>,
    facts: Facts<'_>,
    running: bool,
    next: &mut AppInstanceStatus,
    cx: &Context,
) -> Result<Observed<'static>, Error> {
    let client = &cx.shared.client;
    let ns = inst.namespace().unwrap_or_default();
    let object = format!("AppInstance {}", key(inst));
    let name = set_name(inst);
    let sets: Api<PackageSet> = Api::all(client.clone());
    let existing = sets.get_opt(&name).await.map_err(|source| Error::Read {
        object: object.clone(),
        what: format!("PackageSet {name}"),
        source,
    })?;
    if !running && existing.is_none() {
        return Ok(stopped());
    }
    let write = |action: String| {
        let object = object.clone();
        move |source| Error::Write {
            object,
            action,
            source,
        }
    };
    let mut labels = inst.labels().clone();
    labels.insert(INSTANCE_LABEL.into(), format!("{ns}.{}", inst.name_any()));
    // The built-in module and the bundle.
    Api::<ConfigModule>::all(client.clone())
        .patch(
            INSTANCE_MODULE,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&instance_module()),
        )
        .await
        .map_err(write(format!("apply ConfigModule {INSTANCE_MODULE}")))?;
    let mut modules = vec![json!({ "name": INSTANCE_MODULE })];
    modules.extend(
        version
            .run
            .config_modules
            .iter()
            .map(|m| serde_json::to_value(m).unwrap_or_default()),
    );
    let mut bundle_values: serde_json::Map<String, Value> = [
        ("instance_app", inst.spec.app.clone()),
        ("instance_version", inst.spec.version.clone()),
        ("instance_role", inst.spec.role.clone()),
        ("instance_id", inst.spec.id.clone()),
        ("instance_home", facts.home.to_owned()),
        ("instance_namespace", ns.clone()),
        ("instance_requires", facts.requires),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Value::String(v)))
    .collect();
    if !version.run.config_modules.is_empty() {
        for (k, v) in values(inst, app) {
            bundle_values.insert(k, Value::String(v));
        }
    }
    let package = version
        .run
        .config_package
        .clone()
        .unwrap_or_else(|| format!("{}-instance", inst.spec.app));
    let bundle = json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "ConfigBundle",
        "metadata": { "name": inst.name_any(), "namespace": ns, "labels": labels },
        "spec": { "package": package, "modules": modules, "values": bundle_values },
    });
    Api::<ConfigBundle>::namespaced(client.clone(), &ns)
        .patch(
            &inst.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&bundle),
        )
        .await
        .map_err(write(format!(
            "apply ConfigBundle {ns}/{}",
            inst.name_any()
        )))?;
    // The set.
    let mut selector = run.node_selector.clone();
    selector.extend(inst.spec.node_selector.clone());
    let selector = substitute(&serde_json::to_value(&selector).unwrap_or_default(), vars);
    let packages = substitute(
        &serde_json::to_value(&run.packages).unwrap_or_default(),
        vars,
    );
    let (selector, packages) = match (selector, packages) {
        (Ok(s), Ok(p)) => (s, p),
        (Err(e), _) | (_, Err(e)) => {
            return Ok(Observed::new(
                types::AVAILABLE,
                false,
                "InvalidRun",
                format!("AppPackage {} run.packageSet: {e}", app.name_any()),
            ));
        }
    };
    let set = json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageSet",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "repository": run.repository,
            "packages": if running { packages } else { json!([]) },
            "nodeSelector": { "matchLabels": selector },
            "configBundles": [{ "namespace": ns, "name": inst.name_any() }],
        }
    });
    let applied = sets
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&set),
        )
        .await
        .map_err(write(format!("apply PackageSet {name}")))?;
    next.created.extend([
        format!("ConfigBundle/{}", inst.name_any()),
        format!("PackageSet/{name}"),
    ]);
    let status = applied.status.clone().unwrap_or_default();
    let current = status.observed_generation == applied.metadata.generation
        && crate::api::conditions::is_true(&status.conditions, types::AVAILABLE);
    next.endpoints = if running && current {
        endpoints(&applied, &version.run.ports, vars, cx)
    } else {
        Vec::new()
    };
    Ok(match (running, current) {
        (true, true) => Observed::new(
            types::AVAILABLE,
            true,
            "Running",
            format!(
                "PackageSet {name} is available on {} nodes",
                status.ready_nodes
            ),
        ),
        (true, false) => Observed::new(
            types::AVAILABLE,
            false,
            "Starting",
            format!("waiting for PackageSet {name} to be available"),
        ),
        (false, true) => Observed::new(
            types::AVAILABLE,
            false,
            "Stopped",
            format!("stopped: PackageSet {name} keeps only the instance's configuration"),
        ),
        (false, false) => Observed::new(
            types::AVAILABLE,
            false,
            "Stopping",
            format!(
                "stopping: waiting for PackageSet {name} to take the application off its nodes"
            ),
        ),
    })
}

/// The nodes running the set, with the instance's ports.
fn endpoints(
    set: &PackageSet,
    ports: &BTreeMap<String, String>,
    vars: &BTreeMap<String, String>,
    cx: &Context,
) -> Vec<InstanceEndpoint> {
    let hash = set.status.as_ref().and_then(|s| s.set_hash.clone());
    let ports: BTreeMap<String, u16> = ports
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), expand(v, vars).ok()?.parse().ok()?)))
        .collect();
    let mut out: Vec<InstanceEndpoint> = cx
        .shared
        .stores
        .nodes
        .store()
        .state()
        .iter()
        .filter(|n| crate::shared::selector::matches(&set.spec.node_selector, n.labels()))
        .filter_map(|n| {
            let s = n.status.as_ref()?;
            (s.active_hash == hash).then_some(())?;
            Some(InstanceEndpoint {
                node: n.name_any(),
                address: s.address.clone()?,
                ports: ports.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

/// Removes what the instance made; `Ok(Err(why))` while waiting.
async fn remove(
    inst: &AppInstance,
    app: Option<&AppPackage>,
    role: Option<&Role>,
    previous: &AppInstanceStatus,
    cx: &Context,
    now: Timestamp,
) -> Result<Result<(), String>, Error> {
    let client = &cx.shared.client;
    let ns = inst.namespace().unwrap_or_default();
    let object = format!("AppInstance {}", key(inst));
    let name = set_name(inst);
    let sets: Api<PackageSet> = Api::all(client.clone());
    let set = sets.get_opt(&name).await.map_err(|source| Error::Read {
        object: object.clone(),
        what: format!("PackageSet {name}"),
        source,
    })?;
    // Stop first: the nodes keep only the configuration package.
    if let Some(set) = set {
        if !set.spec.packages.is_empty() {
            // A merge patch: an apply without the set's labels would
            // take them away (and with them this operator's selector).
            let stopped = json!({ "spec": { "packages": [] } });
            sets.patch(&name, &PatchParams::default(), &Patch::Merge(&stopped))
                .await
                .map_err(|source| Error::Write {
                    object: object.clone(),
                    action: format!("stop PackageSet {name}"),
                    source,
                })?;
            return Ok(Err(format!(
                "stopping: PackageSet {name} takes the application off its nodes"
            )));
        }
        let status = set.status.clone().unwrap_or_default();
        let stopped = status.observed_generation == set.metadata.generation
            && crate::api::conditions::is_true(&status.conditions, types::AVAILABLE);
        if !stopped && status.desired_nodes > 0 {
            return Ok(Err(format!("stopping: waiting for PackageSet {name}")));
        }
        sets.delete(&name, &DeleteParams::default())
            .await
            .map_err(|source| Error::Write {
                object: object.clone(),
                action: format!("delete PackageSet {name}"),
                source,
            })?;
    }
    // The group's finalizer takes its containers out of the tree.
    let groups: Api<ServiceGroup> = Api::namespaced(client.clone(), &ns);
    let group = groups
        .get_opt(&inst.name_any())
        .await
        .map_err(|source| Error::Read {
            object: object.clone(),
            what: format!("ServiceGroup {ns}/{}", inst.name_any()),
            source,
        })?;
    if let Some(group) = group {
        if group.metadata.deletion_timestamp.is_none() {
            groups
                .delete(&inst.name_any(), &DeleteParams::default())
                .await
                .map_err(|source| Error::Write {
                    object: object.clone(),
                    action: format!("delete ServiceGroup {ns}/{}", inst.name_any()),
                    source,
                })?;
        }
        return Ok(Err(format!(
            "removing: waiting for ServiceGroup {ns}/{} to go",
            inst.name_any()
        )));
    }
    match Api::<ConfigBundle>::namespaced(client.clone(), &ns)
        .delete(&inst.name_any(), &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(source) => {
            return Err(Error::Write {
                object,
                action: format!("delete ConfigBundle {ns}/{}", inst.name_any()),
                source,
            });
        }
    }
    let manager = task_manager(inst);
    let id = task_id(inst);
    let delete =
        inst.spec.deletion_policy == DeletionPolicy::Delete && previous.applied_key.is_some();
    if !delete {
        release_task(cx, &id, &manager).await?;
        return Ok(Ok(()));
    }
    let (Some(app), Some(role)) = (app, role) else {
        return Ok(Err(format!(
            "deletionPolicy Delete: the AppPackage {} and Role {} are needed to find the directories",
            inst.spec.app, inst.spec.role
        )));
    };
    let dirs = directories(inst, app, role).unwrap_or_default();
    let task = remove_task(inst, &dirs);
    let caps = super::capabilities(cx).await?;
    match run_task(cx, &required_capabilities(app), &caps, &manager, task, now).await? {
        Err(why) => return Ok(Err(format!("the directories cannot be removed yet: {why}"))),
        Ok((node, TaskState::Done(_))) => {
            tracing::info!(instance = %key(inst), %node, "directories removed");
        }
        Ok((node, TaskState::Failed(r))) => {
            return Ok(Err(format!(
                "node {node} could not remove the directories: {}",
                r.message.unwrap_or_default()
            )));
        }
        Ok((node, TaskState::Pending)) => {
            return Ok(Err(format!("node {node} is removing the directories")));
        }
    }
    Ok(Ok(()))
}

async fn finish(
    inst: &AppInstance,
    cx: &Context,
    previous: AppInstanceStatus,
    mut next: AppInstanceStatus,
    pass: Pass,
    now: Timestamp,
) -> Result<Action, Error> {
    next.phase = pass.phase;
    let changed = status::merge(
        &mut next.conditions,
        pass.observed,
        inst.metadata.generation,
        now,
    );
    if next != previous {
        let api: Api<AppInstance> = Api::namespaced(
            cx.shared.client.clone(),
            &inst.namespace().unwrap_or_default(),
        );
        status::apply_status(&api, &inst.name_any(), &next)
            .await
            .map_err(|source| Error::WriteStatus {
                object: format!("AppInstance {}", key(inst)),
                source,
            })?;
    }
    status::publish(&cx.recorder, &inst.object_ref(&()), &changed).await;
    Ok(Action::requeue(Duration::from_secs(pass.requeue)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(status: bool, reason: &'static str, message: &str) -> Observed<'static> {
        Observed::new(types::AVAILABLE, status, reason, message)
    }

    #[test]
    fn the_run_is_available_when_every_part_is_and_names_the_part_behind() {
        let set = part(true, "Running", "set up");
        let group = part(false, "Starting", "group starting");
        assert_eq!(combine(vec![set.clone(), group.clone()], true), group);
        let both = combine(vec![set, part(true, "Running", "group up")], true);
        assert_eq!(both.message, "set up; group up");
        let stopping = part(false, "Stopping", "group still has 1");
        let stopped = part(false, "Stopped", "set stopped");
        assert_eq!(
            combine(vec![stopped.clone(), stopping.clone()], false),
            stopping
        );
        assert_eq!(combine(vec![stopped.clone()], false), stopped);
        assert_eq!(combine(Vec::new(), true).reason, "Installed");
        assert_eq!(combine(Vec::new(), false).reason, "Stopped");
    }

    #[test]
    fn a_required_instance_is_passed_as_variables_and_env_lines() {
        let web: AppInstance = serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "AppInstance",
            "metadata": { "name": "web-one", "namespace": "prod" },
            "spec": { "app": "web", "version": "1", "id": "one", "role": "prod" },
            "status": { "phase": "Running", "home": "/apps/prod/web/one", "endpoints": [
                { "node": "a", "address": "10.0.0.1", "ports": { "http": 80 } },
                { "node": "b", "address": "10.0.0.2", "ports": { "http": 80 } }
            ] }
        }))
        .unwrap();
        let vars = dependency_variables(&[&web]);
        assert_eq!(vars["requires.web.addresses"], "10.0.0.1,10.0.0.2");
        assert_eq!(vars["requires.web.port.http"], "80");
        assert_eq!(vars["requires.web.home"], "/apps/prod/web/one");
        assert_eq!(vars["requires.web.namespace"], "prod");
        let lines = dependency_lines(&vars);
        assert!(
            lines.contains("REQUIRES_WEB_HOME=/apps/prod/web/one\n"),
            "{lines}"
        );
        assert!(lines.contains("REQUIRES_WEB_PORT_HTTP=80\n"), "{lines}");
    }

    #[test]
    fn a_run_group_belongs_to_the_instance_its_label_names() {
        let group: ServiceGroup = serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "ServiceGroup",
            "metadata": { "name": "web-one", "namespace": "prod",
                "labels": { INSTANCE_LABEL: "prod.web-one" } },
            "spec": { "service": "web", "template": { "image": "i" } }
        }))
        .unwrap();
        let owner = of_group(group.clone()).unwrap();
        assert_eq!(owner.name, "web-one");
        assert_eq!(owner.namespace.as_deref(), Some("prod"));
        let mut other = group;
        other.metadata.labels = None;
        assert!(of_group(other).is_none());
    }
}
