//! The publisher loop's part for Clusters ([`clusters`](super::clusters)
//! has the pure projection): which clusters changed, from their events and
//! their NodeInstalls' (a heartbeat changes nothing the tree shows, so it
//! publishes nothing), which of their groups to publish, which groups they
//! no longer have, and the warnings for what they cannot publish.
//!
//! The groups a cluster published are remembered in memory; a cluster
//! being deleted has its groups (by its applied layout) removed in every
//! full pass too, so an operator that restarts meanwhile still removes
//! them. A cluster gone, or a service dropped, while no operator runs
//! leaves its groups' `config` keys; their containers go with the old
//! lease.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use super::clusters::{self, ClusterKey, GroupPath, NodeFacts, Projection, Refusal};
use super::projection;
use super::publisher::GroupState;
use crate::api::{Cluster, NodeInstall, ServiceGroup};

/// What one flush does for clusters.
pub(crate) struct Work {
    /// The groups to publish (diffed against etcd by the publisher).
    pub publish: Vec<GroupState>,
    /// The groups to remove: published by a cluster, wanted by no one.
    pub remove: Vec<GroupPath>,
    /// Every cluster group and its owner once this work is done.
    owners: HashMap<GroupPath, ClusterKey>,
    /// What is refused now.
    refusals: Vec<(ClusterKey, Refusal)>,
}

/// The clusters' state in the publisher loop.
pub(crate) struct ClusterSync {
    clusters: Store<Cluster>,
    nodes: Store<NodeInstall>,
    recorder: Option<Recorder>,
    /// The facts last seen of each NodeInstall bound to a cluster.
    seen: HashMap<String, NodeFacts>,
    dirty: HashSet<ClusterKey>,
    /// The groups clusters published, with their owner.
    owners: HashMap<GroupPath, ClusterKey>,
    /// The refusals already warned about.
    warned: HashSet<(ClusterKey, Refusal)>,
}

impl ClusterSync {
    /// Clusters and NodeInstalls from these stores; refusals are reported
    /// as Warning events through `recorder` too.
    pub fn new(
        clusters: Store<Cluster>,
        nodes: Store<NodeInstall>,
        recorder: Option<Recorder>,
    ) -> Self {
        Self {
            clusters,
            nodes,
            recorder,
            seen: HashMap::new(),
            dirty: HashSet::new(),
            owners: HashMap::new(),
            warned: HashSet::new(),
        }
    }

    /// The Clusters' store.
    pub fn store(&self) -> Store<Cluster> {
        self.clusters.clone()
    }

    /// Whether a cluster changed since the last flush.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Takes a Cluster event in; `true` when everything should be
    /// published again (a re-list may hide deletions).
    pub fn on_cluster(&mut self, event: &watcher::Event<Cluster>) -> bool {
        match event {
            watcher::Event::Apply(c) | watcher::Event::Delete(c) => {
                self.dirty.insert(clusters::key(c));
                false
            }
            watcher::Event::InitDone => true,
            watcher::Event::Init | watcher::Event::InitApply(_) => false,
        }
    }

    /// Takes a NodeInstall event in: its cluster is dirty when what the
    /// tree shows of it changed. `true` after a re-list.
    pub fn on_node(&mut self, event: &watcher::Event<NodeInstall>) -> bool {
        match event {
            watcher::Event::Apply(ni) => self.node_changed(ni.name_any(), clusters::node_facts(ni)),
            watcher::Event::Delete(ni) => self.node_changed(ni.name_any(), None),
            watcher::Event::Init => self.seen.clear(),
            watcher::Event::InitApply(ni) => {
                if let Some(facts) = clusters::node_facts(ni) {
                    self.seen.insert(ni.name_any(), facts);
                }
            }
            watcher::Event::InitDone => return true,
        }
        false
    }

    fn node_changed(&mut self, name: String, facts: Option<NodeFacts>) {
        let before = match &facts {
            Some(facts) => self.seen.insert(name, facts.clone()),
            None => self.seen.remove(&name),
        };
        if before == facts {
            return;
        }
        self.dirty.extend(before.into_iter().map(|f| f.cluster));
        self.dirty.extend(facts.into_iter().map(|f| f.cluster));
    }

    /// A group's keys were removed (a ServiceGroup left its path): the
    /// clusters that resolve to it publish at the next flush.
    pub fn path_freed(&mut self, group: &str) {
        let named = self
            .clusters
            .state()
            .into_iter()
            .filter(|c| clusters::group_name(&c.name_any()).is_ok_and(|g| g == group))
            .map(|c| clusters::key(&c));
        self.dirty.extend(named);
    }

    /// What to do now: every cluster's groups when `full`, else those of
    /// changed clusters and of paths that changed hands; `groups` are the
    /// ServiceGroups, which win a path over a cluster.
    pub fn work(&self, full: bool, groups: &[std::sync::Arc<ServiceGroup>]) -> Work {
        let taken = service_group_paths(groups);
        let nodes = self.nodes.state();
        let entries = clusters::entries(nodes.iter().map(AsRef::as_ref));
        let all = self.clusters.state();
        let Projection { groups, refusals } =
            clusters::project(all.iter().map(AsRef::as_ref), &entries, &taken);
        let owners: HashMap<GroupPath, ClusterKey> = groups
            .iter()
            .map(|(path, (owner, _))| (path.clone(), owner.clone()))
            .collect();
        let publish = groups
            .into_iter()
            .filter(|(path, (owner, _))| {
                full || self.dirty.contains(owner) || self.owners.get(path) != Some(owner)
            })
            .map(|(_, (_, state))| state)
            .collect();
        let remove = self
            .owners
            .keys()
            .cloned()
            .chain(self.leaving(full, &all))
            .filter(|path| !owners.contains_key(path) && !taken.contains_key(path))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Work {
            publish,
            remove,
            owners,
            refusals,
        }
    }

    /// The paths of the clusters being deleted (all of them when `full`,
    /// else the changed ones): after a restart, the operator removes what
    /// it did not publish itself.
    fn leaving(&self, full: bool, all: &[std::sync::Arc<Cluster>]) -> Vec<GroupPath> {
        all.iter()
            .filter(|c| full || self.dirty.contains(&clusters::key(c)))
            .flat_map(|c| clusters::leaving_paths(c))
            .collect()
    }

    /// The work was written: remember what is published now.
    pub fn done(&mut self, work: Work) {
        self.owners = work.owners;
        self.dirty.clear();
    }

    /// Warns (log and a Warning event on the cluster) of each refusal not
    /// warned of yet.
    pub async fn warn(&mut self, work: &Work) {
        warn_new(
            self.recorder.as_ref(),
            &self.clusters,
            &mut self.warned,
            &work.refusals,
        )
        .await;
    }
}

impl Work {
    /// The paths clusters publish once this work is done, with their
    /// owner (`Cluster NS/NAME`).
    pub fn owned(&self) -> impl Iterator<Item = (GroupPath, String)> + '_ {
        self.owners
            .iter()
            .map(|(path, (ns, name))| (path.clone(), format!("Cluster {ns}/{name}")))
    }
}

/// Warns (log and a Warning event on the object, from `objects`) of each
/// of `refusals` not in `warned`; a refusal that ends is forgotten, so
/// that it is warned of again should it come back.
pub(crate) async fn warn_new<K>(
    recorder: Option<&Recorder>,
    objects: &Store<K>,
    warned: &mut HashSet<((String, String), Refusal)>,
    refusals: &[((String, String), Refusal)],
) where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    for (owner, refusal) in refusals {
        if warned.contains(&(owner.clone(), refusal.clone())) {
            continue;
        }
        let (namespace, name) = owner;
        tracing::warn!(%namespace, %name, kind = %K::kind(&()), "{refusal}");
        let reference = ObjectRef::<K>::new(name).within(namespace);
        let (Some(recorder), Some(object)) = (recorder, objects.get(&reference)) else {
            continue;
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "NotPublished".into(),
            note: Some(refusal.to_string()),
            action: "Publish".into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &object.object_ref(&())).await {
            tracing::debug!(%error, "cannot publish an event");
        }
    }
    *warned = refusals.iter().cloned().collect();
}

/// The paths ServiceGroups publish (those not being deleted), with the
/// owner of each (`NS/NAME`).
pub(crate) fn service_group_paths(
    groups: &[std::sync::Arc<ServiceGroup>],
) -> BTreeMap<GroupPath, String> {
    let live: Vec<&ServiceGroup> = groups
        .iter()
        .map(AsRef::as_ref)
        .filter(|sg| sg.metadata.deletion_timestamp.is_none())
        .collect();
    live.iter()
        .filter_map(|sg| projection::group_path(sg).ok())
        .filter_map(|(service, group)| {
            let owner = projection::owner(live.iter().copied(), &service, &group)?;
            let name = format!(
                "{}/{}",
                owner.namespace().unwrap_or_default(),
                owner.name_any()
            );
            Some(((service, group), name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kube::runtime::reflector;
    use serde_json::json;

    use super::*;
    use crate::api::{CLUSTER_LABEL, CLUSTER_NAMESPACE_LABEL, NODE_LABEL};

    fn cluster(layout: serde_json::Value) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "Cluster",
            "metadata": { "name": "shop", "namespace": "team" },
            "spec": { "template": "t", "size": 1 },
            "status": { "appliedLayout": layout }
        }))
        .unwrap()
    }

    fn node(ready: bool, heartbeat: i64) -> NodeInstall {
        serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "NodeInstall",
            "metadata": { "name": "box-0", "labels": {
                CLUSTER_LABEL: "shop", CLUSTER_NAMESPACE_LABEL: "team", NODE_LABEL: "shop-0" } },
            "spec": {},
            "status": {
                "address": "10.0.0.1",
                "heartbeat": format!("2026-01-01T00:00:{heartbeat:02}Z"),
                "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" },
                    "reason": "r", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z" }]
            }
        }))
        .unwrap()
    }

    fn store<K>(objects: Vec<K>) -> Store<K>
    where
        K: kube::Resource + Clone + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let (store, mut writer) = reflector::store::<K>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(object));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        store
    }

    fn sync(layout: serde_json::Value, nodes: Vec<NodeInstall>) -> ClusterSync {
        ClusterSync::new(store(vec![cluster(layout)]), store(nodes), None)
    }

    fn paths(work: &Work) -> Vec<(String, String)> {
        work.publish
            .iter()
            .map(|s| (s.service.clone(), s.group.clone()))
            .collect()
    }

    #[test]
    fn a_heartbeat_changes_nothing_and_readiness_dirties_the_cluster() {
        let mut sync = sync(json!([]), Vec::new());
        assert!(!sync.on_node(&watcher::Event::Init));
        assert!(!sync.on_node(&watcher::Event::InitApply(node(true, 1))));
        assert!(sync.on_node(&watcher::Event::InitDone), "a re-list");
        sync.on_node(&watcher::Event::Apply(node(true, 2)));
        assert!(!sync.is_dirty(), "a heartbeat");
        sync.on_node(&watcher::Event::Apply(node(false, 3)));
        assert!(sync.is_dirty(), "no longer Ready");
        sync.dirty.clear();
        sync.on_node(&watcher::Event::Delete(node(false, 3)));
        assert!(sync.is_dirty(), "deleted");
    }

    #[test]
    fn only_changed_clusters_publish_until_a_full_pass_and_gone_services_are_removed() {
        let layout =
            json!([{ "name": "shop-0", "nodeClass": "box", "services": ["store", "api"] }]);
        let mut sync = sync(layout, vec![node(true, 1)]);
        let first = sync.work(false, &[]);
        assert_eq!(paths(&first).len(), 2, "never published: published now");
        assert_eq!(
            first.publish[1].containers["shop-0"].instance_host,
            "10.0.0.1"
        );
        sync.done(first);
        assert!(sync.work(false, &[]).publish.is_empty(), "nothing changed");
        assert_eq!(sync.work(true, &[]).publish.len(), 2, "a full pass");

        // The service `api` leaves the layout: its group is removed.
        let fewer =
            cluster(json!([{ "name": "shop-0", "nodeClass": "box", "services": ["store"] }]));
        sync.clusters = store(vec![fewer.clone()]);
        assert!(!sync.on_cluster(&watcher::Event::Apply(fewer)));
        let work = sync.work(false, &[]);
        assert_eq!(paths(&work), vec![("store".into(), "shop".into())]);
        assert_eq!(work.remove, vec![("api".to_owned(), "shop".to_owned())]);
        sync.done(work);

        // The cluster goes: every group of it is removed.
        sync.clusters = store(Vec::new());
        let work = sync.work(false, &[]);
        assert!(work.publish.is_empty());
        assert_eq!(work.remove, vec![("store".to_owned(), "shop".to_owned())]);
    }

    #[test]
    fn a_restarted_operator_removes_the_groups_of_a_cluster_being_deleted() {
        let layout = json!([{ "name": "shop-0", "nodeClass": "box", "services": ["store"] }]);
        let mut deleting = cluster(layout);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(9).unwrap(),
            ));
        let sync = ClusterSync::new(store(vec![deleting]), store(vec![node(true, 1)]), None);
        assert!(
            sync.work(false, &[]).remove.is_empty(),
            "only in a full pass"
        );
        let work = sync.work(true, &[]);
        assert!(work.publish.is_empty());
        assert_eq!(work.remove, vec![("store".to_owned(), "shop".to_owned())]);
    }

    #[test]
    fn a_path_a_service_group_takes_is_left_to_it_and_a_path_it_frees_is_published() {
        let layout = json!([{ "name": "shop-0", "nodeClass": "box", "services": ["store"] }]);
        let mut sync = sync(layout, vec![node(true, 1)]);
        let first = sync.work(false, &[]);
        sync.done(first);
        let sg: ServiceGroup = serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "ServiceGroup",
            "metadata": { "name": "web", "namespace": "x" },
            "spec": { "service": "store", "labels": ["shop"], "template": { "image": "i" } }
        }))
        .unwrap();
        let work = sync.work(false, &[Arc::new(sg)]);
        assert!(
            work.publish.is_empty() && work.remove.is_empty(),
            "the group's own publish replaces the keys"
        );
        assert!(
            work.refusals[0]
                .1
                .to_string()
                .contains("ServiceGroup x/web")
        );
        sync.done(work);
        sync.path_freed("shop");
        assert!(sync.is_dirty());
        assert_eq!(paths(&sync.work(false, &[])).len(), 1, "published again");
    }
}
