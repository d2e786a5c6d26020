//! Which NodeInstall changes wake a Cluster: what the plan executor reads
//! of its nodes (the binding, the agent's registration, active packages,
//! failed switch, hook report, readiness, a removal) — not heartbeats, and
//! not a hook reported Running (the executor waits for its end; a pass for
//! it would only hold up the pass for the next report). A running plan's
//! next task then starts as soon as the last one is reported, not at the
//! next poll.

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::drive::{CLUSTER_LABEL, CLUSTER_NAMESPACE_LABEL, view};
use super::execute::NodeView;
use crate::api::{Cluster, HookState, NodeInstall, REMOVE_ANNOTATION};
use crate::shared::wake::View;

/// What the Cluster controller reads from one NodeInstall.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ClusterNode {
    /// The cluster (namespace, name) its labels name.
    cluster: Option<(String, String)>,
    /// The layout node it is bound to, and what it reports.
    bound: Option<(String, NodeView)>,
    /// Removal asked for.
    remove_requested: bool,
    /// Being deleted.
    deleting: bool,
}

impl View for ClusterNode {
    type Owner = Cluster;

    fn of(ni: &NodeInstall) -> ClusterNode {
        let labels = ni.labels();
        ClusterNode {
            cluster: labels.get(CLUSTER_LABEL).map(|name| {
                let ns = labels.get(CLUSTER_NAMESPACE_LABEL).cloned();
                (ns.unwrap_or_default(), name.clone())
            }),
            bound: view(ni).map(|(node, mut v)| {
                v.tasks.retain(|t| t.state != HookState::Running);
                (node, v)
            }),
            remove_requested: ni.annotations().contains_key(REMOVE_ANNOTATION),
            deleting: ni.metadata.deletion_timestamp.is_some(),
        }
    }

    fn owner(&self) -> Option<ObjectRef<Cluster>> {
        let (ns, name) = self.cluster.as_ref()?;
        Some(ObjectRef::new(name).within(ns))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::*;
    use crate::api::NodeTaskStatus;
    use crate::shared::wake::Filter;

    fn node(beat: i64, task: Option<HookState>) -> NodeInstall {
        let mut ni: NodeInstall = serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "NodeInstall",
            "metadata": { "name": "shop-box-1", "labels": {
                CLUSTER_LABEL: "shop", CLUSTER_NAMESPACE_LABEL: "team",
                super::super::drive::NODE_LABEL: "node-1" } },
            "spec": {}
        }))
        .unwrap();
        let mut status = ni.status.clone().unwrap_or_default();
        status.heartbeat = Some(Time(Timestamp::from_second(beat).unwrap()));
        status.tasks = Vec::from_iter(task.map(|state| NodeTaskStatus {
            id: "p/forward/node-1/db/start".into(),
            attempt: 1,
            state,
            ..NodeTaskStatus::default()
        }));
        ni.status = Some(status);
        ni
    }

    fn woken(f: &mut Filter<ClusterNode>, ni: NodeInstall) -> Vec<String> {
        f.wake(Event::Apply(ni))
            .into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect()
    }

    #[test]
    fn a_hook_s_end_wakes_the_cluster_and_a_heartbeat_or_its_start_does_not() {
        let mut f = Filter::<ClusterNode>::default();
        assert_eq!(woken(&mut f, node(1, None)), ["team/shop"]);
        assert!(woken(&mut f, node(2, None)).is_empty(), "a heartbeat");
        assert!(
            woken(&mut f, node(3, Some(HookState::Running))).is_empty(),
            "a hook started"
        );
        assert_eq!(
            woken(&mut f, node(4, Some(HookState::Succeeded))),
            ["team/shop"]
        );
        assert!(woken(&mut f, node(5, Some(HookState::Succeeded))).is_empty());
    }

    #[test]
    fn a_node_of_no_cluster_wakes_nothing() {
        let mut f = Filter::<ClusterNode>::default();
        let mut ni = node(1, None);
        ni.labels_mut().clear();
        assert!(woken(&mut f, ni).is_empty());
    }
}
