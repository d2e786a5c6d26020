//! A Cluster's services in the tree, pure: for each service of the
//! cluster's applied layout, the group `SERVICE/CLUSTER` whose containers
//! are the layout nodes running that service, at their NodeInstalls'
//! addresses, so that an application follows them like any ServiceGroup's
//! (`Follower::labels(tree, SERVICE, &[CLUSTER])`).
//!
//! - **Group**: the cluster's name is the group's one label. A name with a
//!   `.` (a DNS subdomain may have one, and the group encoding reads it as
//!   a label separator) or longer than 63 characters is refused, not
//!   encoded: an encoded name could no longer be followed by name, and
//!   could collide with another group.
//! - **Config**: the cluster's `spec.config` (the values declared on it,
//!   as a ServiceGroup's group config is its `spec.config`).
//! - **Containers**: one per layout node of `status.appliedLayout` that
//!   runs the service, named after the layout node, whose NodeInstall is
//!   Ready, reports an address (`status.address`), and is neither being
//!   deleted nor marked for removal. `node_name` is the NodeInstall's name.
//! - **Owner of a path**: a ServiceGroup that resolves to it wins over any
//!   cluster; of clusters of one name (in different namespaces), the
//!   oldest. A cluster being deleted publishes nothing.

use std::collections::BTreeMap;

use kube::ResourceExt;
use thiserror::Error;

use super::model::ContainerInfo;
use super::paths;
use super::publisher::GroupState;
use crate::api::conditions::types;
use crate::api::{
    CLUSTER_LABEL, CLUSTER_NAMESPACE_LABEL, Cluster, NODE_LABEL, NodeInstall, REMOVE_ANNOTATION,
};

/// A cluster: (namespace, name).
pub type ClusterKey = (String, String);

/// A path of the tree: (service, encoded group).
pub type GroupPath = (String, String);

/// The key of `cluster`.
pub fn key(cluster: &Cluster) -> ClusterKey {
    (cluster.namespace().unwrap_or_default(), cluster.name_any())
}

/// Why (part of) a cluster is not published.
#[derive(Clone, Debug, Error, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The name cannot be one group label.
    #[error(
        "the cluster's services are not published for discovery: its name {0:?} cannot be a discovery group (a group label is lowercase letters, digits and hyphens, at most 63 characters; a '.' would split it into several labels); use a name without '.'"
    )]
    Name(String),
    /// A service name that is not a DNS label.
    #[error(
        "service {0:?} is not published for discovery: its name is not a DNS label (lowercase letters, digits, inner hyphens, at most 63)"
    )]
    Service(String),
    /// An instance's id and role that cannot be one group.
    #[error(
        "the instance is not published for discovery: its id {id:?} and role {role:?} cannot be a discovery group (labels of lowercase letters, digits and hyphens, at most 63 characters together; a '.' would split a label); use a role name without '.'"
    )]
    Instance {
        /// The instance's id.
        id: String,
        /// Its role.
        role: String,
    },
    /// Another object publishes the path.
    #[error(
        "service {service:?} is not published for discovery: {service}/{group} is published by {owner}"
    )]
    Taken {
        /// The service.
        service: String,
        /// The group.
        group: String,
        /// Who publishes it: `ServiceGroup NS/NAME`, `Cluster NS/NAME` or
        /// `AppInstance NS/NAME`.
        owner: String,
    },
}

/// The group a cluster named `name` publishes its services under.
pub fn group_name(name: &str) -> Result<String, Refusal> {
    if name.contains('.') {
        return Err(Refusal::Name(name.to_owned()));
    }
    paths::encode_group(&[name]).map_err(|_| Refusal::Name(name.to_owned()))
}

/// What of a NodeInstall the tree shows: its cluster, its layout node and
/// its container entry (`None` while it must not be published).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// The cluster it belongs to.
    pub cluster: ClusterKey,
    /// The layout node it is bound to.
    pub node: String,
    /// Its entry: Ready, with an address, not going away.
    pub entry: Option<ContainerInfo>,
}

/// The facts of a NodeInstall bound to a cluster's layout node; `None`
/// for any other.
pub fn node_facts(ni: &NodeInstall) -> Option<NodeFacts> {
    let labels = ni.labels();
    let cluster = (
        labels.get(CLUSTER_NAMESPACE_LABEL)?.clone(),
        labels.get(CLUSTER_LABEL)?.clone(),
    );
    let node = labels.get(NODE_LABEL)?.clone();
    let entry = entry(ni, &node);
    Some(NodeFacts {
        cluster,
        node,
        entry,
    })
}

/// A node's container entry, when it should have one.
fn entry(ni: &NodeInstall, node: &str) -> Option<ContainerInfo> {
    let leaving = ni.metadata.deletion_timestamp.is_some()
        || ni.annotations().contains_key(REMOVE_ANNOTATION);
    let status = ni.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == types::READY && c.status == "True");
    let address = status.address.clone().filter(|a| !a.is_empty())?;
    (ready && !leaving).then(|| ContainerInfo {
        instance_host: address,
        instance_port: None,
        port_mappings: Vec::new(),
        instance_name: node.to_owned(),
        node_name: Some(ni.name_any()),
    })
}

/// The entries of every cluster's layout nodes: cluster → layout node →
/// entry. When two NodeInstalls are bound to one layout node, the first
/// by name that has an entry.
pub fn entries<'n>(
    nodes: impl IntoIterator<Item = &'n NodeInstall>,
) -> BTreeMap<ClusterKey, BTreeMap<String, ContainerInfo>> {
    let mut bound: Vec<(String, NodeFacts)> = nodes
        .into_iter()
        .filter_map(|ni| Some((ni.name_any(), node_facts(ni)?)))
        .collect();
    bound.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: BTreeMap<ClusterKey, BTreeMap<String, ContainerInfo>> = BTreeMap::new();
    for (_, facts) in bound {
        if let Some(info) = facts.entry {
            out.entry(facts.cluster)
                .or_default()
                .entry(facts.node)
                .or_insert(info);
        }
    }
    out
}

/// The groups one cluster should have (before ownership), and what it
/// cannot publish. `entries` are its layout nodes' entries.
pub fn cluster_groups(
    cluster: &Cluster,
    entries: &BTreeMap<String, ContainerInfo>,
) -> (Vec<GroupState>, Vec<Refusal>) {
    if cluster.metadata.deletion_timestamp.is_some() {
        return (Vec::new(), Vec::new());
    }
    let group = match group_name(&cluster.name_any()) {
        Ok(group) => group,
        Err(refusal) => return (Vec::new(), vec![refusal]),
    };
    let (mut groups, mut refusals) = (Vec::new(), Vec::new());
    for (service, nodes) in services(cluster) {
        if paths::validate_service(&service).is_err() {
            refusals.push(Refusal::Service(service));
            continue;
        }
        let containers = nodes
            .into_iter()
            .filter_map(|n| Some((n.clone(), entries.get(&n)?.clone())))
            .collect();
        groups.push(GroupState {
            service,
            group: group.clone(),
            config: cluster.spec.config.clone(),
            containers,
        });
    }
    (groups, refusals)
}

/// The paths of a cluster being deleted (none for any other): its groups
/// go, also those an operator that restarted never published itself.
pub fn leaving_paths(cluster: &Cluster) -> Vec<GroupPath> {
    if cluster.metadata.deletion_timestamp.is_none() {
        return Vec::new();
    }
    let Ok(group) = group_name(&cluster.name_any()) else {
        return Vec::new();
    };
    services(cluster)
        .into_keys()
        .filter(|s| paths::validate_service(s).is_ok())
        .map(|s| (s, group.clone()))
        .collect()
}

/// The services of the applied layout and the layout nodes running each.
fn services(cluster: &Cluster) -> BTreeMap<String, Vec<String>> {
    let layout = cluster.status.as_ref().map(|s| s.applied_layout.as_slice());
    crate::api::nodes_by_service(layout.unwrap_or_default())
}

/// Every cluster's groups, each path given to one owner.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Projection {
    /// The groups to publish by path, with the cluster that owns each.
    pub groups: BTreeMap<GroupPath, (ClusterKey, GroupState)>,
    /// What is not published, and why, by cluster.
    pub refusals: Vec<(ClusterKey, Refusal)>,
}

/// The groups of `clusters` with their nodes' entries. `taken` holds the
/// paths ServiceGroups publish, with their owner (`NS/NAME`); of clusters
/// resolving to one path, the oldest (then by namespace) owns it.
pub fn project<'c>(
    clusters: impl IntoIterator<Item = &'c Cluster>,
    entries: &BTreeMap<ClusterKey, BTreeMap<String, ContainerInfo>>,
    taken: &BTreeMap<GroupPath, String>,
) -> Projection {
    let mut clusters: Vec<&Cluster> = clusters.into_iter().collect();
    clusters.sort_by_key(|c| (c.metadata.creation_timestamp.clone().map(|t| t.0), key(c)));
    let none = BTreeMap::new();
    let mut out = Projection::default();
    for cluster in clusters {
        let owner = key(cluster);
        let (groups, refusals) = cluster_groups(cluster, entries.get(&owner).unwrap_or(&none));
        out.refusals
            .extend(refusals.into_iter().map(|r| (owner.clone(), r)));
        for state in groups {
            let path = (state.service.clone(), state.group.clone());
            match owner_of(&out, taken, &path) {
                Some(by) => out.refusals.push((owner.clone(), taken_by(&path, by))),
                None => {
                    out.groups.insert(path, (owner.clone(), state));
                }
            }
        }
    }
    out
}

/// Who already publishes `path`, if anyone.
fn owner_of(
    out: &Projection,
    taken: &BTreeMap<GroupPath, String>,
    path: &GroupPath,
) -> Option<String> {
    if let Some(group) = taken.get(path) {
        return Some(format!("ServiceGroup {group}"));
    }
    let (ns, name) = &out.groups.get(path)?.0;
    Some(format!("Cluster {ns}/{name}"))
}

fn taken_by(path: &GroupPath, owner: String) -> Refusal {
    Refusal::Taken {
        service: path.0.clone(),
        group: path.1.clone(),
        owner,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    use super::*;

    fn cluster(ns: &str, name: &str, created: i64, layout: &[(&str, &[&str])]) -> Cluster {
        let layout: Vec<_> = layout
            .iter()
            .map(|(n, s)| json!({ "name": n, "nodeClass": "box", "services": s }))
            .collect();
        let mut c: Cluster = serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "Cluster",
            "metadata": { "name": name, "namespace": ns },
            "spec": { "template": "t", "size": 3, "config": { "mode": "fast" } },
            "status": { "appliedLayout": layout }
        }))
        .unwrap();
        c.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        c
    }

    fn node(name: &str, layout_node: &str, ready: bool, address: Option<&str>) -> NodeInstall {
        serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "NodeInstall",
            "metadata": { "name": name, "labels": {
                CLUSTER_LABEL: "shop", CLUSTER_NAMESPACE_LABEL: "team", NODE_LABEL: layout_node } },
            "spec": {},
            "status": {
                "address": address,
                "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" },
                    "reason": "r", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z" }]
            }
        }))
        .unwrap()
    }

    fn shop() -> Cluster {
        cluster(
            "team",
            "shop",
            100,
            &[
                ("shop-0", &["store"]),
                ("shop-1", &["api", "cache"]),
                ("shop-2", &["api"]),
            ],
        )
    }

    fn containers(state: &GroupState) -> Vec<(&str, &str, Option<&str>)> {
        state
            .containers
            .iter()
            .map(|(name, info)| {
                (
                    name.as_str(),
                    info.instance_host.as_str(),
                    info.node_name.as_deref(),
                )
            })
            .collect()
    }

    #[test]
    fn each_service_is_a_group_of_its_ready_nodes_at_their_addresses() {
        let nodes = [
            node("box-a", "shop-0", true, Some("10.0.0.1")),
            node("box-b", "shop-1", true, Some("10.0.0.2")),
            node("box-c", "shop-2", false, Some("10.0.0.3")),
        ];
        let out = project([&shop()], &entries(&nodes), &BTreeMap::new());
        let paths: Vec<&GroupPath> = out.groups.keys().collect();
        let path = |s: &str| (s.to_owned(), "shop".to_owned());
        assert_eq!(paths, vec![&path("api"), &path("cache"), &path("store")]);
        let api = &out.groups[&path("api")];
        assert_eq!(api.0, ("team".to_owned(), "shop".to_owned()));
        assert_eq!(
            containers(&api.1),
            vec![("shop-1", "10.0.0.2", Some("box-b"))],
            "shop-2 is not Ready"
        );
        assert_eq!(api.1.config["mode"], "fast", "the cluster's spec.config");
        let store = &out.groups[&path("store")].1;
        assert_eq!(store.containers["shop-0"].instance_name, "shop-0");
        assert_eq!(store.containers["shop-0"].instance_port, None);
        assert!(out.refusals.is_empty());
    }

    #[test]
    fn a_node_without_an_address_being_deleted_or_marked_for_removal_is_not_a_container() {
        let mut deleting = node("d", "shop-1", true, Some("10.0.0.4"));
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(5).unwrap()));
        let mut marked = node("m", "shop-1", true, Some("10.0.0.5"));
        marked
            .annotations_mut()
            .insert(REMOVE_ANNOTATION.into(), "true".into());
        let cases = [
            (
                "ready with an address",
                node("a", "shop-1", true, Some("10.0.0.1")),
                true,
            ),
            ("no address", node("b", "shop-1", true, None), false),
            (
                "an empty address",
                node("c", "shop-1", true, Some("")),
                false,
            ),
            (
                "not ready",
                node("e", "shop-1", false, Some("10.0.0.6")),
                false,
            ),
            ("being deleted", deleting, false),
            ("marked for removal", marked, false),
        ];
        for (name, ni, published) in cases {
            let facts = node_facts(&ni).unwrap();
            assert_eq!(facts.entry.is_some(), published, "{name}");
            assert_eq!(facts.node, "shop-1");
        }
        let unbound: NodeInstall = serde_json::from_value(json!({
            "metadata": { "name": "free", "labels": { CLUSTER_LABEL: "shop" } }, "spec": {}
        }))
        .unwrap();
        assert_eq!(node_facts(&unbound), None, "not bound to a layout node");
    }

    #[test]
    fn two_installs_of_one_layout_node_give_the_first_ready_one_by_name() {
        let nodes = [
            node("z", "shop-0", true, Some("10.0.0.9")),
            node("b", "shop-0", false, Some("10.0.0.2")),
            node("c", "shop-0", true, Some("10.0.0.3")),
        ];
        let all = entries(&nodes);
        let shop = &all[&("team".to_owned(), "shop".to_owned())];
        assert_eq!(shop["shop-0"].node_name.as_deref(), Some("c"));
    }

    #[test]
    fn a_name_with_a_dot_or_too_long_is_refused_with_the_reason() {
        assert_eq!(group_name("shop"), Ok("shop".to_owned()));
        assert_eq!(group_name("shop-2"), Ok("shop-2".to_owned()));
        let long = "a".repeat(64);
        for bad in ["shop.eu", long.as_str()] {
            assert_eq!(group_name(bad), Err(Refusal::Name(bad.to_owned())), "{bad}");
        }
        let dotted = cluster("team", "shop.eu", 1, &[("n-0", &["store"])]);
        let out = project([&dotted], &BTreeMap::new(), &BTreeMap::new());
        assert!(out.groups.is_empty());
        let message = out.refusals[0].1.to_string();
        assert!(
            message.contains("\"shop.eu\"") && message.contains("'.'"),
            "{message}"
        );
    }

    #[test]
    fn a_service_with_no_ready_node_still_has_its_group_and_config() {
        let out = project([&shop()], &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(out.groups.len(), 3);
        assert!(out.groups.values().all(|(_, s)| s.containers.is_empty()));
    }

    #[test]
    fn a_cluster_being_deleted_or_without_an_applied_layout_publishes_nothing() {
        let mut deleting = shop();
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(9).unwrap()));
        let fresh = cluster("team", "new", 1, &[]);
        let out = project([&deleting, &fresh], &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(out, Projection::default());
    }

    #[test]
    fn a_service_group_wins_a_path_and_the_oldest_cluster_of_a_name_wins_the_rest() {
        let older = cluster("b", "shop", 50, &[("n-0", &["store", "api"])]);
        let newer = shop();
        let taken = BTreeMap::from([(("api".to_owned(), "shop".to_owned()), "x/web".to_owned())]);
        let out = project([&newer, &older], &BTreeMap::new(), &taken);
        let owners: Vec<(&str, &str)> = out
            .groups
            .iter()
            .map(|((s, _), ((ns, _), _))| (s.as_str(), ns.as_str()))
            .collect();
        assert_eq!(owners, vec![("cache", "team"), ("store", "b")]);
        let refused: Vec<String> = out
            .refusals
            .iter()
            .map(|(k, r)| format!("{}: {r}", k.0))
            .collect();
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(refused[0].starts_with("b: ") && refused[0].contains("ServiceGroup x/web"));
        assert!(
            refused
                .iter()
                .any(|r| r.starts_with("team: ") && r.contains("Cluster b/shop"))
        );
    }

    #[test]
    fn a_cluster_being_deleted_leaves_the_paths_of_its_applied_layout() {
        let mut deleting = shop();
        assert!(leaving_paths(&deleting).is_empty(), "not being deleted");
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(9).unwrap()));
        let paths: Vec<String> = leaving_paths(&deleting)
            .into_iter()
            .map(|(s, g)| format!("{s}/{g}"))
            .collect();
        assert_eq!(paths, vec!["api/shop", "cache/shop", "store/shop"]);
    }

    #[test]
    fn a_service_name_that_is_not_a_dns_label_is_refused_alone() {
        let c = cluster("team", "shop", 1, &[("n-0", &["store", "Bad_Name"])]);
        let out = project([&c], &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(out.groups.len(), 1);
        assert_eq!(out.refusals[0].1, Refusal::Service("Bad_Name".into()));
    }
}
