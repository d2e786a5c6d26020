//! From Kubernetes objects to the tree, pure: which pod is published with
//! what info, which ServiceGroup owns a path, and what a group should hold.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::model::{ContainerInfo, PortMapping};
use super::paths::{self, PathError};
use super::publisher::GroupState;
use super::{FINALIZER, NAME_LABEL};
use crate::api::ServiceGroup;

/// The service and encoded group a ServiceGroup publishes under.
pub fn group_path(sg: &ServiceGroup) -> Result<(String, String), PathError> {
    paths::validate_service(&sg.spec.service)?;
    let group = paths::encode_group(&sg.spec.labels)?;
    Ok((sg.spec.service.clone(), group))
}

/// The ServiceGroup that owns a path among `groups`: the oldest one that
/// resolves to it (then by namespace and name, so all replicas agree).
pub fn owner<'g>(
    groups: impl IntoIterator<Item = &'g ServiceGroup>,
    service: &str,
    group: &str,
) -> Option<&'g ServiceGroup> {
    groups
        .into_iter()
        .filter(|sg| group_path(sg).is_ok_and(|(s, g)| s == service && g == group))
        .min_by_key(|sg| {
            (
                sg.metadata.creation_timestamp.clone().map(|t| t.0),
                sg.namespace(),
                sg.name_any(),
            )
        })
}

/// Whether `a` and `b` are the same object (namespace and name).
pub fn same_object(a: &ServiceGroup, b: &ServiceGroup) -> bool {
    a.namespace() == b.namespace() && a.name_any() == b.name_any()
}

/// Whether the publisher may write a group: it carries the finalizer (so
/// its keys are removed when it goes), is not being deleted, and owns its
/// path.
pub fn publishable<'g>(sg: &ServiceGroup, all: impl IntoIterator<Item = &'g ServiceGroup>) -> bool {
    let has_finalizer = sg.finalizers().iter().any(|f| f == FINALIZER);
    let Ok((service, group)) = group_path(sg) else {
        return false;
    };
    has_finalizer
        && sg.metadata.deletion_timestamp.is_none()
        && owner(all, &service, &group).is_some_and(|o| same_object(o, sg))
}

/// A pod's entry in the tree, when it should have one: it is Ready, has an
/// IP, and is not shutting down.
pub fn pod_info(pod: &Pod) -> Option<ContainerInfo> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let host = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    if !ready {
        return None;
    }
    let spec = pod.spec.as_ref();
    let port_mappings: Vec<PortMapping> = spec
        .and_then(|s| s.containers.first())
        .and_then(|c| c.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.container_port).ok()?;
            Some(PortMapping {
                name: p.name.clone(),
                container_port: port,
                host_port: port,
            })
        })
        .collect();
    Some(ContainerInfo {
        instance_host: host,
        instance_port: port_mappings.first().map(|p| p.host_port),
        port_mappings,
        instance_name: pod.name_any(),
        node_name: spec.and_then(|s| s.node_name.clone()),
    })
}

/// Whether a pod belongs to the ServiceGroup `name` in `namespace`.
pub fn pod_of(pod: &Pod, namespace: &str, name: &str) -> bool {
    pod.namespace().as_deref() == Some(namespace)
        && pod.labels().get(NAME_LABEL).map(String::as_str) == Some(name)
}

/// What a group should hold: its config and its ready pods.
pub fn group_state<'p>(
    sg: &ServiceGroup,
    pods: impl IntoIterator<Item = &'p Pod>,
) -> Result<GroupState, PathError> {
    let (service, group) = group_path(sg)?;
    let namespace = sg.namespace().unwrap_or_default();
    let name = sg.name_any();
    let containers: BTreeMap<String, ContainerInfo> = pods
        .into_iter()
        .filter(|p| pod_of(p, &namespace, &name))
        .filter_map(|p| pod_info(p).map(|info| (p.name_any(), info)))
        .collect();
    Ok(GroupState {
        service,
        group,
        config: sg.spec.config.clone(),
        containers,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    use super::*;

    pub(crate) fn mk_group(ns: &str, name: &str, labels: &[&str], created: i64) -> ServiceGroup {
        let mut sg: ServiceGroup = serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "ServiceGroup",
            "metadata": { "name": name, "namespace": ns, "finalizers": [FINALIZER] },
            "spec": { "service": "web", "labels": labels, "template": { "image": "web:1" } }
        }))
        .unwrap();
        sg.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        sg
    }

    fn mk_pod(name: &str, ready: bool, ip: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "ns", "labels": { NAME_LABEL: "web" } },
            "spec": {
                "nodeName": "kwok-node-1",
                "containers": [{ "name": "web", "image": "web:1",
                    "ports": [{ "name": "http", "containerPort": 8080 }, { "containerPort": 9090 }] }]
            },
            "status": {
                "podIP": ip,
                "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }]
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_ready_pod_is_published_with_ip_first_port_all_ports_name_and_node() {
        let info = pod_info(&mk_pod("web-abc", true, Some("10.0.0.7"))).unwrap();
        assert_eq!(info.instance_host, "10.0.0.7");
        assert_eq!(info.instance_port, Some(8080));
        assert_eq!(info.port_mappings.len(), 2);
        assert_eq!(info.port_mappings[0].name.as_deref(), Some("http"));
        assert_eq!(info.instance_name, "web-abc");
        assert_eq!(info.node_name.as_deref(), Some("kwok-node-1"));
    }

    #[test]
    fn only_ready_pods_with_an_ip_that_are_not_terminating_are_published() {
        let mut terminating = mk_pod("t", true, Some("10.0.0.1"));
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(5).unwrap()));
        let cases = [
            (
                "a ready pod with an IP",
                mk_pod("a", true, Some("10.0.0.1")),
                true,
            ),
            (
                "a pod that is not ready",
                mk_pod("b", false, Some("10.0.0.1")),
                false,
            ),
            ("a ready pod without an IP", mk_pod("c", true, None), false),
            ("a terminating pod", terminating, false),
        ];
        for (name, pod, published) in cases {
            assert_eq!(pod_info(&pod).is_some(), published, "{name}");
        }
    }

    #[test]
    fn the_oldest_group_owns_a_path_and_the_newer_one_does_not_publish() {
        let older = mk_group("a", "old", &["eu"], 100);
        let newer = mk_group("b", "new", &["eu"], 200);
        let other = mk_group("b", "other", &["us"], 50);
        let all = [newer.clone(), older.clone(), other.clone()];
        assert!(same_object(owner(&all, "web", "eu").unwrap(), &older));
        assert!(publishable(&older, &all));
        assert!(!publishable(&newer, &all));
        assert!(publishable(&other, &all));
    }

    #[test]
    fn a_group_without_the_finalizer_or_being_deleted_is_not_published() {
        let mut bare = mk_group("a", "g", &[], 1);
        bare.metadata.finalizers = None;
        assert!(!publishable(&bare, [&bare]));
        let mut deleting = mk_group("a", "g", &[], 1);
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(9).unwrap()));
        assert!(!publishable(&deleting, [&deleting]));
    }

    #[test]
    fn a_group_state_holds_the_config_and_only_its_own_ready_pods() {
        let mut sg = mk_group("ns", "web", &["eu", "canary"], 1);
        sg.spec.config.insert("k".into(), "v".into());
        let mut foreign = mk_pod("x", true, Some("10.0.0.9"));
        foreign.metadata.namespace = Some("elsewhere".into());
        let pods = [
            mk_pod("a", true, Some("10.0.0.1")),
            mk_pod("b", false, Some("10.0.0.2")),
            foreign,
        ];
        let state = group_state(&sg, &pods).unwrap();
        assert_eq!(state.group, "canary.eu");
        assert_eq!(state.config["k"], "v");
        assert_eq!(state.containers.keys().collect::<Vec<_>>(), vec!["a"]);
    }
}
