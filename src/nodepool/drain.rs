//! Draining a node before its instance goes: cordon the Kubernetes Node
//! (marking it as cordoned by the pool), then evict its pods through the
//! Eviction API, so that PodDisruptionBudgets are respected. A drain is done
//! only when the pods that had to go are gone from the node, not when their
//! eviction was accepted: an evicted pod runs until its grace period (or a
//! finalizer) lets it go, and its instance must live until then. One pass
//! per reconcile; the planner applies the timeout.
//!
//! When a node's removal is cancelled (the pool grew again), [`uncordon`]
//! lifts the cordon, but only where the pool set it.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::plan::DrainOutcome;

/// The label on a Node the NodePool controller cordoned, so that it finds
/// the nodes to uncordon with one list.
pub const CORDONED_LABEL: &str = "theseus.dev/cordoned";
/// The annotation naming the pool that cordoned a Node.
pub const CORDONED_BY: &str = "theseus.dev/cordoned-by";

/// Errors of a drain pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused a read or write other than a blocked eviction.
    #[error(
        "NodePool {pool}: cannot {action} while draining node {node}: {source}; check the operator's RBAC (nodes get/list/patch, pods list, pods/eviction create)"
    )]
    Kube {
        /// The pool.
        pool: String,
        /// The node.
        node: String,
        /// What was attempted.
        action: &'static str,
        /// The cause.
        source: kube::Error,
    },
}

/// What a drain does with one pod of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Not waited for: a DaemonSet's or mirror pod, or one that finished.
    Ignore,
    /// Already being deleted (evicted, by us or anyone): waited for.
    Terminating,
    /// To be evicted, then waited for.
    Evict,
}

/// What a drain does with `pod`.
pub fn disposition(pod: &Pod) -> Disposition {
    let daemon = pod.owner_references().iter().any(|o| o.kind == "DaemonSet");
    let mirror = pod
        .annotations()
        .contains_key("kubernetes.io/config.mirror");
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    if daemon || mirror || finished {
        Disposition::Ignore
    } else if pod.metadata.deletion_timestamp.is_some() {
        Disposition::Terminating
    } else {
        Disposition::Evict
    }
}

fn kube_err(pool: &str, node: &str, action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    let (pool, node) = (pool.to_owned(), node.to_owned());
    move |source| Error::Kube {
        pool,
        node,
        action,
        source,
    }
}

/// Cordons `node` (when a Kubernetes Node of that name exists), asks the
/// Eviction API to evict each of its pods, and reports Done once none of
/// the pods that must go is left on the node.
pub async fn drain(client: &Client, pool: &str, node: &str) -> Result<DrainOutcome, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let Some(k8s_node) =
        nodes
            .get_opt(node)
            .await
            .map_err(kube_err(pool, node, "read the Node"))?
    else {
        return Ok(DrainOutcome::Done);
    };
    let cordoned = k8s_node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    if !cordoned {
        // Marked first or together: a node is never left cordoned by us
        // without the mark that lets us undo it.
        let patch = json!({
            "metadata": { "labels": { CORDONED_LABEL: "true" }, "annotations": { CORDONED_BY: pool } },
            "spec": { "unschedulable": true }
        });
        nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_err(pool, node, "cordon the Node"))?;
        tracing::info!(pool, node, "cordoned");
    }
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .map_err(kube_err(pool, node, "list the pods"))?;
    let mut left = Vec::new();
    for pod in &pods.items {
        let what = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        match disposition(pod) {
            Disposition::Ignore => {}
            Disposition::Terminating => left.push(format!("{what}: terminating")),
            Disposition::Evict => {
                if let Some(why) = evict(client, pool, node, pod).await? {
                    left.push(format!("{what}: {why}"));
                }
            }
        }
    }
    if left.is_empty() {
        return Ok(DrainOutcome::Done);
    }
    Ok(DrainOutcome::Blocked {
        pods: left.len(),
        why: left.join("; "),
    })
}

/// Evicts `pod`, only if it is still the pod that was listed (same UID);
/// returns what keeps it on the node, or `None` when it is gone already.
async fn evict(
    client: &Client,
    pool: &str,
    node: &str,
    pod: &Pod,
) -> Result<Option<String>, Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let params = EvictParams {
        delete_options: Some(DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        }),
        ..EvictParams::default()
    };
    match api.evict(&pod.name_any(), &params).await {
        Ok(_) => {
            tracing::info!(pool, node, pod = %pod.name_any(), "evicted");
            Ok(Some("evicted, waiting for it to terminate".into()))
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        // Another pod of the same name: the next pass sees it as it is.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Some("replaced meanwhile".into())),
        Err(kube::Error::Api(e)) if e.code == 429 => Ok(Some(e.message)),
        Err(e) => Err(kube_err(pool, node, "evict a pod")(e)),
    }
}

/// Uncordons the Nodes `pool` cordoned that are among `keep` (nodes of
/// instances that stay: their removal was cancelled). Nodes cordoned by
/// someone else are never touched.
pub async fn uncordon(client: &Client, pool: &str, keep: &BTreeSet<String>) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let marked = nodes
        .list(&ListParams::default().labels(CORDONED_LABEL))
        .await
        .map_err(kube_err(pool, "-", "list cordoned Nodes"))?;
    for n in marked.items.iter().filter(|n| {
        n.annotations().get(CORDONED_BY).map(String::as_str) == Some(pool)
            && keep.contains(&n.name_any())
    }) {
        let name = n.name_any();
        let patch = json!({
            "metadata": { "labels": { CORDONED_LABEL: null }, "annotations": { CORDONED_BY: null } },
            "spec": { "unschedulable": null }
        });
        nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_err(pool, &name, "uncordon the Node"))?;
        tracing::info!(pool, node = %name, "removal cancelled: uncordoned");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut base = json!({ "metadata": { "name": "p", "namespace": "ns", "uid": "u1" } });
        merge(&mut base, extra);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn a_running_pod_is_evicted_and_a_terminating_one_is_waited_for() {
        assert_eq!(disposition(&pod(json!({}))), Disposition::Evict);
        let terminating = pod(json!({ "metadata": {
            "deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 30 } }));
        assert_eq!(disposition(&terminating), Disposition::Terminating);
    }

    #[test]
    fn daemon_set_mirror_and_finished_pods_are_not_waited_for() {
        let daemon = pod(json!({ "metadata": { "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "x" }] } }));
        let mirror =
            pod(json!({ "metadata": { "annotations": { "kubernetes.io/config.mirror": "h" } } }));
        let done = pod(json!({ "status": { "phase": "Succeeded" } }));
        for p in [daemon, mirror, done] {
            assert_eq!(disposition(&p), Disposition::Ignore);
        }
    }
}
