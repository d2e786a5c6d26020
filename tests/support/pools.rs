//! NodePool helpers shared by the NodePool tests.

use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use theseus::api::NodePool;

use super::fleet::RUN_LABEL;
use super::{TestbedEnv, eventually};

/// Applies (server-side) the NodePool named `run`, labelled with the run and
/// giving its nodes the run label, with `spec` merged over `replicas`.
pub async fn apply(pools: &Api<NodePool>, run: &str, replicas: i32, mut spec: Value) {
    spec["replicas"] = json!(replicas);
    spec["nodeLabels"] = json!({ RUN_LABEL: run });
    let pool = json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "NodePool",
        "metadata": { "name": run, "labels": { RUN_LABEL: run } },
        "spec": spec
    });
    pools
        .patch(
            run,
            &PatchParams::apply("nodepool-test").force(),
            &Patch::Apply(&pool),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot apply NodePool {run}: {e}"));
}

/// `kubectl scale nodepool/NAME --replicas=N`.
pub fn scale(tb: &TestbedEnv, name: &str, replicas: i32) {
    tb.kubectl_ok(&[
        "scale",
        &format!("nodepool/{name}"),
        &format!("--replicas={replicas}"),
    ]);
}

/// Deletes the NodePool `name` and waits until its finalizer has let it go
/// (the operator has terminated its instances).
pub async fn delete_and_wait(pools: &Api<NodePool>, name: &str) {
    let _ = pools.delete(name, &DeleteParams::default()).await;
    eventually(Duration::from_secs(60), "the pool is gone", || async {
        match pools.get_opt(name).await {
            Ok(None) => Ok(()),
            other => Err(format!(
                "finalizers: {:?}",
                other.map(|p| p.map(|p| p.metadata.finalizers))
            )),
        }
    })
    .await;
}
