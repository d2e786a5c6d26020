//! A deleted tenant: its Clusters and AppInstances first (each through
//! its own delete plan), then its bindings and namespaces, then the
//! finalizer.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::{
    Context, DELETING, Error, FINALIZER, Held, binding_name, read_err, write_err, write_status,
};
use crate::api::conditions::Observed;
use crate::api::{TENANT_LABEL, Tenant};

/// A deleted tenant: its Clusters and AppInstances are deleted (each
/// through its own finalizer and delete plan); once none is left, its
/// bindings and namespaces; once those are gone, the finalizer.
pub(super) async fn delete(
    tenant: &Tenant,
    namespaces: &[String],
    held: Held,
    cx: &Context,
) -> Result<Action, Error> {
    let name = tenant.name_any();
    let client = &cx.shared.client;
    let tenants: Api<Tenant> = Api::all(client.clone());
    delete_each(&held.clusters, client, &name).await?;
    delete_each(&held.instances, client, &name).await?;
    let left = held.clusters.len() + held.instances.len();
    let mut remaining_namespaces = Vec::new();
    if left == 0 {
        let binding = binding_name(&name);
        let policy_bindings = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone());
        delete_one(&policy_bindings, &binding, &name, "its policy binding").await?;
        let catalog_bindings = Api::<ClusterRoleBinding>::all(client.clone());
        delete_one(&catalog_bindings, &binding, &name, "its catalog binding").await?;
        let api = Api::<Namespace>::all(client.clone());
        for ns in namespaces {
            let Some(found) = api
                .get_opt(ns)
                .await
                .map_err(read_err(&name, "its namespaces"))?
            else {
                continue;
            };
            // Only a namespace this tenant made (or adopted) goes.
            if found.labels().get(TENANT_LABEL) != Some(&name) {
                continue;
            }
            remaining_namespaces.push(ns.clone());
            if found.meta().deletion_timestamp.is_none() {
                delete_one(&api, ns, &name, &format!("Namespace {ns}")).await?;
            }
        }
    }
    let message = if left > 0 {
        format!(
            "deleting {} clusters and {} application instances (their delete plans drain and remove their nodes)",
            held.clusters.len(),
            held.instances.len()
        )
    } else if !remaining_namespaces.is_empty() {
        format!("deleting namespaces {}", remaining_namespaces.join(", "))
    } else {
        "done; removing the finalizer".to_owned()
    };
    let observed = vec![Observed::new(DELETING, true, "Deleting", message)];
    write_status(&tenants, tenant, cx, |_, _| observed.clone()).await?;
    if left > 0 || !remaining_namespaces.is_empty() {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let patch = crate::shared::without_finalizer(tenant, FINALIZER);
    match tenants
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(write_err(&name, "remove its finalizer")(e)),
    }
    tracing::info!(tenant = %name, "tenant deleted: its clusters, instances and namespaces are gone");
    Ok(Action::await_change())
}

/// Deletes each of `objects` (a tenant's Clusters or AppInstances) not
/// being deleted already.
async fn delete_each<K>(objects: &[K], client: &kube::Client, tenant: &str) -> Result<(), Error>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    for object in objects
        .iter()
        .filter(|o| o.meta().deletion_timestamp.is_none())
    {
        let (ns, name) = (object.namespace().unwrap_or_default(), object.name_any());
        let api = Api::<K>::namespaced(client.clone(), &ns);
        let what = format!("{} {ns}/{name}", K::kind(&()));
        delete_one(&api, &name, tenant, &what).await?;
    }
    Ok(())
}

/// Deletes `name` of `api` (in the background); one already gone is
/// what was wanted.
pub(super) async fn delete_one<K>(
    api: &Api<K>,
    name: &str,
    tenant: &str,
    what: &str,
) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Write {
            tenant: tenant.to_owned(),
            action: format!("delete {what}"),
            source,
        }),
    }
}
