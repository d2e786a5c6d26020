//! Draining a node before its instance goes: cordon the Kubernetes Node,
//! then evict its pods through the Eviction API, so that PodDisruptionBudgets
//! are respected. One pass per reconcile; the planner applies the timeout.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, EvictParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::plan::DrainOutcome;

/// Errors of a drain pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused a read or write other than a blocked eviction.
    #[error(
        "NodePool {pool}: cannot {action} while draining node {node}: {source}; check the operator's RBAC (nodes patch, pods list, pods/eviction create)"
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

/// Cordons `node` (when a Kubernetes Node of that name exists) and asks the
/// Eviction API to evict each of its pods once. Pods of DaemonSets, mirror
/// pods, finished pods and pods already being deleted are not waited for.
pub async fn drain(client: &Client, pool: &str, node: &str) -> Result<DrainOutcome, Error> {
    let err = |action: &'static str| {
        let (pool, node) = (pool.to_owned(), node.to_owned());
        move |source| Error::Kube {
            pool,
            node,
            action,
            source,
        }
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let Some(k8s_node) = nodes.get_opt(node).await.map_err(err("read the Node"))? else {
        return Ok(DrainOutcome::Done);
    };
    let cordoned = k8s_node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    if !cordoned {
        let patch = json!({ "spec": { "unschedulable": true } });
        nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(err("cordon the Node"))?;
        tracing::info!(pool, node, "cordoned");
    }
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .map_err(err("list the pods"))?;
    let mut blocked = Vec::new();
    for pod in pods.items.iter().filter(|p| must_evict(p)) {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        match api.evict(&name, &EvictParams::default()).await {
            Ok(_) => tracing::info!(pool, node, pod = %format!("{ns}/{name}"), "evicted"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(kube::Error::Api(e)) if e.code == 429 => {
                blocked.push(format!("{ns}/{name}: {}", e.message));
            }
            Err(e) => return Err(err("evict a pod")(e)),
        }
    }
    if blocked.is_empty() {
        // Evicted pods are on their way out; nothing is left that blocks.
        return Ok(DrainOutcome::Done);
    }
    Ok(DrainOutcome::Blocked {
        pods: blocked.len(),
        why: blocked.join("; "),
    })
}

fn must_evict(pod: &Pod) -> bool {
    let daemon = pod.owner_references().iter().any(|o| o.kind == "DaemonSet");
    let mirror = pod
        .annotations()
        .contains_key("kubernetes.io/config.mirror");
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    !(daemon || mirror || finished || pod.metadata.deletion_timestamp.is_some())
}
