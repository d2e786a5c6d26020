//! Rolling back a plan that stopped at a failure (`onFailure: Halt`) by
//! hand: the Cluster's spec is put back as the plan found it (the size,
//! services and node class of `fromRequest`, the configuration of
//! `fromConfig`), and the controller then turns the stopped plan back by
//! its inverse. `theseus cluster rollback` and the dashboard's Roll back
//! button make the same merge patch, as their user.

use serde_json::{Map, Value, json};

use crate::api::{Cluster, ClusterPlan};
use kube::ResourceExt;

use super::execute::stopped_forward;

/// The merge patch of `cluster` that rolls back `plan`, or why it cannot
/// be rolled back by hand (a sentence naming the plan and what to do).
pub fn patch(cluster: &Cluster, plan: &ClusterPlan) -> Result<Value, String> {
    let object = format!(
        "ClusterPlan {}/{}",
        plan.namespace().unwrap_or_default(),
        plan.name_any()
    );
    let current = cluster.status.as_ref().and_then(|s| s.plan.as_deref());
    if current != Some(plan.name_any().as_str()) {
        return Err(format!(
            "{object} is not the plan of Cluster {}: roll back its current plan",
            cluster.name_any()
        ));
    }
    let status = plan.status.clone().unwrap_or_default();
    if !stopped_forward(&status) {
        return Err(format!(
            "{object} is {:?}: only a plan stopped at a failure (onFailure: Halt) is rolled back by hand; a plan with onFailure: Rollback rolls back by itself",
            status.phase
        ));
    }
    if plan.spec.from.is_empty() {
        return Err(format!(
            "{object} created the cluster: there is nothing to go back to; delete the Cluster to undo it"
        ));
    }
    let Some(request) = &plan.spec.from_request else {
        return Err(format!(
            "{object} does not record the spec it started from (made by an older operator): put the Cluster's size, services and configuration back by hand"
        ));
    };
    // A merge patch: keys of the current configuration the plan did not
    // start with are removed.
    let mut config: Map<String, Value> = cluster
        .spec
        .config
        .keys()
        .filter(|k| !plan.spec.from_config.contains_key(*k))
        .map(|k| (k.clone(), Value::Null))
        .collect();
    for (k, v) in &plan.spec.from_config {
        config.insert(k.clone(), json!(v));
    }
    Ok(json!({
        "spec": {
            "size": request.size,
            "services": request.services,
            "nodeClass": request.node_class,
            "config": config,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(config: Value, plan: &str) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "Cluster",
            "metadata": { "name": "shop", "namespace": "apps" },
            "spec": { "template": "t", "size": 5, "services": ["web", "db"], "config": config },
            "status": { "plan": plan }
        }))
        .unwrap()
    }

    fn plan(phase: &str, rollback: Value, from: Value, from_request: Value) -> ClusterPlan {
        serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "ClusterPlan",
            "metadata": { "name": "shop-1", "namespace": "apps" },
            "spec": {
                "cluster": "shop", "operation": { "type": "scale" }, "tasks": [],
                "from": from, "fromConfig": { "region": "eu" },
                "request": { "size": 5, "services": ["web", "db"] },
                "fromRequest": from_request
            },
            "status": { "phase": phase, "rollback": rollback }
        }))
        .unwrap()
    }

    #[test]
    fn a_stopped_plan_puts_the_spec_back_as_it_found_it() {
        let from = json!([{ "name": "shop-1", "nodeClass": "small", "services": ["web"] }]);
        let old = json!({ "size": 3, "services": ["web"] });
        let stopped = plan("Failed", json!([]), from.clone(), old.clone());
        let c = cluster(json!({ "region": "us", "fail": "true" }), "shop-1");
        assert_eq!(
            patch(&c, &stopped).unwrap(),
            json!({ "spec": {
                "size": 3, "services": ["web"], "nodeClass": null,
                "config": { "region": "eu", "fail": null }
            } })
        );
        // Not the cluster's plan; not stopped; a create; unrecorded.
        let other = cluster(json!({}), "shop-2");
        assert!(
            patch(&other, &stopped)
                .unwrap_err()
                .contains("not the plan")
        );
        let rolling = plan("RollingBack", json!([]), from.clone(), old.clone());
        assert!(
            patch(&c, &rolling)
                .unwrap_err()
                .contains("rolls back by itself")
        );
        let rolled = plan(
            "Failed",
            json!([{ "id": "x", "state": "Failed" }]),
            from.clone(),
            old.clone(),
        );
        assert!(patch(&c, &rolled).is_err(), "its rollback already began");
        let create = plan("Failed", json!([]), json!([]), old);
        assert!(
            patch(&c, &create)
                .unwrap_err()
                .contains("delete the Cluster")
        );
        let unknown = plan("Failed", json!([]), from, Value::Null);
        assert!(patch(&c, &unknown).unwrap_err().contains("by hand"));
    }
}
