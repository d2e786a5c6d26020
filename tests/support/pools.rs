//! NodePool helpers shared by the NodePool tests.

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use theseus::api::NodePool;

use super::TestbedEnv;
use super::fleet::RUN_LABEL;

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
