//! Writing a node's target: a compare-and-swap on the NodeInstall that
//! retries a few conflicts and then reports them, never giving up silently.

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::api::{NodeInstall, NodeTarget};

/// How many times [`put_target`] writes before it gives up for this pass.
pub const TARGET_ATTEMPTS: usize = 3;

/// Why a target was not written.
#[derive(Debug)]
pub enum TargetError {
    /// The API server refused a read or the write.
    Kube(kube::Error),
    /// Every attempt met a newer NodeInstall (HTTP 409).
    Conflicts,
}

/// Writes `target` to `node`, starting from `cached` (the store's copy) when
/// there is one. The patch carries the node's resourceVersion; on a conflict
/// (the agent wrote its status meanwhile) it re-reads the node and tries
/// again unless the target is already there. When every attempt conflicts,
/// the error makes the controller requeue: the node is reserved in the
/// set's status, so a later pass writes it.
pub async fn put_target(
    api: &Api<NodeInstall>,
    cached: Option<NodeInstall>,
    node: &str,
    target: &NodeTarget,
) -> Result<(), TargetError> {
    let mut current = match cached {
        Some(n) => n,
        None => api.get(node).await.map_err(TargetError::Kube)?,
    };
    for _ in 0..TARGET_ATTEMPTS {
        if current.spec.target.as_ref() == Some(target) {
            return Ok(());
        }
        let patch = json!({ "metadata": { "resourceVersion": current.resource_version() }, "spec": { "target": whole(target) } });
        match api
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                current = api.get(node).await.map_err(TargetError::Kube)?;
            }
            Err(e) => return Err(TargetError::Kube(e)),
        }
    }
    if current.spec.target.as_ref() == Some(target) {
        return Ok(());
    }
    Err(TargetError::Conflicts)
}

/// `target` as a merge patch that replaces it whole: a field it leaves
/// out (no keys, no sources) is cleared, not kept from the last target.
fn whole(target: &NodeTarget) -> serde_json::Value {
    let mut value = json!(target);
    if let Some(fields) = value.as_object_mut() {
        for optional in ["publicKeys", "healthTimeoutSeconds", "sources", "secrets"] {
            fields.entry(optional).or_insert(serde_json::Value::Null);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::{Method, Request, Response, StatusCode};
    use kube::client::Body;

    use super::*;
    use crate::api::NodeInstallSpec;

    /// An API server whose NodeInstall `n0` changes between every read and
    /// write: each GET answers it, each PATCH a 409. Counts the PATCHes.
    fn always_conflicting(patches: Arc<AtomicUsize>) -> kube::Client {
        let service = tower::service_fn(move |request: Request<Body>| {
            let patches = patches.clone();
            async move {
                let (status, body) = if request.method() == Method::PATCH {
                    patches.fetch_add(1, Ordering::SeqCst);
                    let conflict = serde_json::json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "the object has been modified", "reason": "Conflict", "code": 409
                    });
                    (StatusCode::CONFLICT, conflict)
                } else {
                    let mut node = NodeInstall::new("n0", NodeInstallSpec::default());
                    node.metadata.resource_version =
                        Some(patches.load(Ordering::SeqCst).to_string());
                    (StatusCode::OK, serde_json::to_value(&node).unwrap())
                };
                let body = Body::from(serde_json::to_vec(&body).unwrap());
                Ok::<_, std::convert::Infallible>(
                    Response::builder().status(status).body(body).unwrap(),
                )
            }
        });
        kube::Client::new(service, "default")
    }

    fn target() -> NodeTarget {
        NodeTarget {
            package_set: "web".into(),
            set_hash: "h".into(),
            packages: vec!["web--1".into()],
            repository_url: "http://127.0.0.1:1".into(),
            ..NodeTarget::default()
        }
    }

    #[tokio::test]
    async fn a_target_write_that_conflicts_every_time_is_an_error_not_a_silent_success() {
        let patches = Arc::new(AtomicUsize::new(0));
        let api: Api<NodeInstall> = Api::all(always_conflicting(patches.clone()));
        let result = put_target(&api, None, "n0", &target()).await;
        assert!(matches!(result, Err(TargetError::Conflicts)), "{result:?}");
        assert_eq!(patches.load(Ordering::SeqCst), TARGET_ATTEMPTS);
    }

    #[tokio::test]
    async fn a_target_already_there_is_not_written_again() {
        let patches = Arc::new(AtomicUsize::new(0));
        let api: Api<NodeInstall> = Api::all(always_conflicting(patches.clone()));
        let mut node = NodeInstall::new("n0", NodeInstallSpec::default());
        node.spec.target = Some(target());
        put_target(&api, Some(node), "n0", &target()).await.unwrap();
        assert_eq!(patches.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_target_patch_clears_what_the_new_target_leaves_out() {
        let patch = whole(&target());
        for cleared in ["publicKeys", "sources", "secrets"] {
            assert_eq!(patch[cleared], serde_json::Value::Null, "{patch}");
        }
        assert_eq!(patch["packages"], json!(target().packages));
    }
}
