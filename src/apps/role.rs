//! The Role controller: the role's namespace (labelled with the role, so
//! that no two roles share one), the RoleBinding of its administrators to
//! the ClusterRole `theseus-app-admin`, and its directory under each base
//! directory, made by an agent on a node offering the role's
//! capabilities.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::api::conditions::{Observed, types};
use crate::api::{EnsureDirectory, Role, RoleStatus, StorageTask};
use crate::shared::{MANAGER, status};

use super::{Context, Error, TaskState, digest, key_is, release_task, run_task};

/// The label naming the Role a namespace belongs to.
pub const ROLE_LABEL: &str = "theseus.dev/role";
/// The ClusterRole a role's administrators are bound to.
pub const ADMIN_CLUSTER_ROLE: &str = "theseus-app-admin";
/// The RoleBinding of a role's administrators.
pub const ADMIN_BINDING: &str = "theseus-role-admins";

/// The namespace of `role`.
pub fn namespace_of(role: &Role) -> String {
    role.spec
        .namespace
        .clone()
        .unwrap_or_else(|| role.name_any())
}

/// The role's directory under each base directory, by base name.
pub fn directories(role: &Role) -> Vec<EnsureDirectory> {
    role.spec
        .base_directories
        .iter()
        .map(|b| EnsureDirectory {
            path: format!("{}/{}", b.path.trim_end_matches('/'), role.name_any()),
            mode: b.mode.clone(),
            owner: b.owner.clone(),
            group: b.group.clone(),
            ..Default::default()
        })
        .collect()
}

/// The storage task that makes the role's directories.
pub fn task(role: &Role) -> StorageTask {
    let ensure = directories(role);
    StorageTask {
        id: format!("role/{}", role.name_any()),
        key: digest(&ensure),
        ensure,
        ..Default::default()
    }
}

/// One pass over a role.
pub async fn reconcile(role: Arc<Role>, cx: Arc<Context>) -> Result<Action, Error> {
    cx.shared.metrics.reconciled(super::ROLE);
    let name = role.name_any();
    let object = format!("Role {name}");
    let client = &cx.shared.client;
    let now = Timestamp::now();
    let previous = role.status.clone().unwrap_or_default();
    let mut next = previous.clone();
    next.observed_generation = role.metadata.generation;
    let ns = namespace_of(&role);
    next.namespace = Some(ns.clone());
    let mut observed = Vec::new();

    // The namespace, unless another role holds it.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let existing = namespaces
        .get_opt(&ns)
        .await
        .map_err(|source| Error::Read {
            object: object.clone(),
            what: format!("Namespace {ns}"),
            source,
        })?;
    let holder = existing
        .as_ref()
        .and_then(|n| n.labels().get(ROLE_LABEL).cloned());
    if holder.as_ref().is_some_and(|h| *h != name) {
        observed.push(Observed::new(
            types::READY,
            false,
            "Conflict",
            format!(
                "namespace {ns} belongs to Role {}; give this role another spec.namespace",
                holder.unwrap_or_default()
            ),
        ));
        return finish(&role, &cx, previous, next, observed, now).await;
    }
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": ns, "labels": { ROLE_LABEL: name } },
    });
    namespaces
        .patch(
            &ns,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|source| Error::Write {
            object: object.clone(),
            action: format!("apply Namespace {ns}"),
            source,
        })?;
    let subjects: Vec<serde_json::Value> = role
        .spec
        .admins
        .iter()
        .map(|s| {
            serde_json::json!({
                "kind": s.kind, "name": s.name, "apiGroup": "rbac.authorization.k8s.io"
            })
        })
        .collect();
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": { "name": ADMIN_BINDING, "namespace": ns, "labels": { ROLE_LABEL: name } },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ADMIN_CLUSTER_ROLE },
        "subjects": subjects,
    });
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .patch(
            ADMIN_BINDING,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&binding),
        )
        .await
        .map_err(|source| Error::Write {
            object: object.clone(),
            action: format!("apply RoleBinding {ns}/{ADMIN_BINDING}"),
            source,
        })?;

    // The directories.
    let task = task(&role);
    let manager = format!("theseus-storage.role.{name}");
    if key_is(previous.applied_key.as_deref(), &task.key) {
        observed.push(ready(&next));
        release_task(&cx, &task.id, &manager).await?;
        return finish(&role, &cx, previous, next, observed, now).await;
    }
    let caps = super::capabilities(&cx).await?;
    let paths: Vec<String> = task.ensure.iter().map(|d| d.path.clone()).collect();
    match run_task(&cx, &role.spec.capabilities, &caps, &manager, task, now).await? {
        Err(why) => observed.push(Observed::new(
            types::READY,
            false,
            "NoStorageNode",
            format!("the role's directories cannot be made: {why}"),
        )),
        Ok((_, TaskState::Done(result))) => {
            next.applied_key = Some(result.key);
            next.directories = paths;
            observed.push(ready(&next));
        }
        Ok((node, TaskState::Failed(result))) => observed.push(Observed::new(
            types::READY,
            false,
            "StorageFailed",
            format!(
                "node {node} could not make the role's directories: {}",
                result.message.unwrap_or_default()
            ),
        )),
        Ok((node, TaskState::Pending)) => observed.push(Observed::new(
            types::READY,
            false,
            "MakingDirectories",
            format!("node {node} is making the role's directories"),
        )),
    }
    finish(&role, &cx, previous, next, observed, now).await
}

fn ready(status: &RoleStatus) -> Observed<'static> {
    Observed::new(
        types::READY,
        true,
        "DirectoriesMade",
        format!(
            "namespace {} and directories {} exist",
            status.namespace.clone().unwrap_or_default(),
            status.directories.join(", ")
        ),
    )
}

async fn finish(
    role: &Role,
    cx: &Context,
    previous: RoleStatus,
    mut next: RoleStatus,
    observed: Vec<Observed<'_>>,
    now: Timestamp,
) -> Result<Action, Error> {
    let changed = status::merge(
        &mut next.conditions,
        observed,
        role.metadata.generation,
        now,
    );
    let done = crate::api::conditions::is_true(&next.conditions, types::READY);
    if next != previous {
        let api: Api<Role> = Api::all(cx.shared.client.clone());
        status::apply_status(&api, &role.name_any(), &next)
            .await
            .map_err(|source| Error::WriteStatus {
                object: format!("Role {}", role.name_any()),
                source,
            })?;
    }
    status::publish(&cx.recorder, &role.object_ref(&()), &changed).await;
    Ok(Action::requeue(Duration::from_secs(if done {
        300
    } else {
        5
    })))
}
