//! Which NodeInstall changes wake a NodePool. Agents write their heartbeat
//! every few seconds; waking the pool for each would run a reconcile (and a
//! provider listing) per heartbeat per node. Only what the planner reads
//! from a NodeInstall wakes its pool: the pool label, the instance id, the
//! removal request, the object's arrival and departure. A stale heartbeat is
//! found by time (the planner looks again soon while a node is not ready).
//! The filtering itself is [`crate::shared::wake`]'s.

use futures::Stream;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use super::REMOVE_ANNOTATION;
use super::provider::POOL_TAG;
use crate::api::{NodeInstall, NodePool};
use crate::shared::wake::{self, View};

/// What the NodePool planner reads from one NodeInstall.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Relevant {
    /// The pool it belongs to (its `theseus.dev/nodepool` label).
    pub pool: Option<String>,
    /// `status.instanceId`.
    pub instance_id: Option<String>,
    /// Whether `theseus node remove` asked for it to go.
    pub remove_requested: bool,
    /// Whether it is being deleted.
    pub deleting: bool,
}

/// Remembers what was last seen of each NodeInstall and says which pools a
/// watch event concerns.
pub type Filter = wake::Filter<Relevant>;

impl View for Relevant {
    type Owner = NodePool;

    fn of(ni: &NodeInstall) -> Relevant {
        Relevant {
            pool: ni.labels().get(POOL_TAG).cloned(),
            instance_id: ni.status.as_ref().and_then(|s| s.instance_id.clone()),
            remove_requested: ni.annotations().contains_key(REMOVE_ANNOTATION),
            deleting: ni.metadata.deletion_timestamp.is_some(),
        }
    }

    fn owner(&self) -> Option<ObjectRef<NodePool>> {
        self.pool.as_deref().map(ObjectRef::new)
    }
}

/// The pools to reconcile, from NodeInstall watch events filtered by
/// [`Filter`].
pub fn pools_to_wake(
    events: impl Stream<Item = watcher::Event<NodeInstall>> + Send + 'static,
) -> impl Stream<Item = ObjectRef<NodePool>> + Send + 'static {
    wake::to_wake::<Relevant>(events)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    use super::*;

    fn node(pool: &str, instance: Option<&str>, beat: i64) -> NodeInstall {
        let mut ni: NodeInstall = serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "NodeInstall",
            "metadata": { "name": "n1", "labels": { POOL_TAG: pool } },
            "spec": {}
        }))
        .unwrap();
        let mut status = ni.status.clone().unwrap_or_default();
        status.instance_id = instance.map(str::to_owned);
        status.heartbeat = Some(Time(Timestamp::from_second(beat).unwrap()));
        ni.status = Some(status);
        ni
    }

    fn woken(filter: &mut Filter, event: watcher::Event<NodeInstall>) -> Vec<String> {
        filter.wake(event).into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn a_heartbeat_only_change_wakes_no_pool() {
        let mut f = Filter::default();
        let first = node("web", Some("i-1"), 100);
        assert_eq!(woken(&mut f, watcher::Event::Apply(first)), vec!["web"]);
        let beat = node("web", Some("i-1"), 110);
        assert!(woken(&mut f, watcher::Event::Apply(beat)).is_empty());
    }

    #[test]
    fn an_instance_id_or_a_removal_request_wakes_the_pool() {
        let mut f = Filter::default();
        woken(&mut f, watcher::Event::Apply(node("web", None, 100)));
        let joined = node("web", Some("i-1"), 100);
        assert_eq!(
            woken(&mut f, watcher::Event::Apply(joined.clone())),
            vec!["web"]
        );
        let mut asked = joined;
        asked
            .annotations_mut()
            .insert(REMOVE_ANNOTATION.into(), "true".into());
        assert_eq!(woken(&mut f, watcher::Event::Apply(asked)), vec!["web"]);
    }

    #[test]
    fn a_node_moving_pools_wakes_both_and_a_deletion_wakes_its_pool() {
        let mut f = Filter::default();
        woken(&mut f, watcher::Event::Apply(node("a", Some("i-1"), 1)));
        assert_eq!(
            woken(&mut f, watcher::Event::Apply(node("b", Some("i-1"), 1))),
            vec!["a", "b"]
        );
        assert_eq!(
            woken(&mut f, watcher::Event::Delete(node("b", Some("i-1"), 2))),
            vec!["b"]
        );
    }

    #[test]
    fn a_node_missing_from_a_relist_wakes_its_pool_and_an_unchanged_one_does_not() {
        let mut f = Filter::default();
        woken(&mut f, watcher::Event::Apply(node("web", Some("i-1"), 1)));
        woken(&mut f, watcher::Event::Init);
        assert!(
            woken(
                &mut f,
                watcher::Event::InitApply(node("web", Some("i-1"), 5))
            )
            .is_empty()
        );
        assert!(woken(&mut f, watcher::Event::InitDone).is_empty());
        woken(&mut f, watcher::Event::Init);
        assert_eq!(woken(&mut f, watcher::Event::InitDone), vec!["web"]);
    }
}
