//! The Deployment that runs a ServiceGroup, built by a pure function.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EnvVar, PodAffinityTerm, PodAntiAffinity, PodSpec,
    PodTemplateSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};

use super::{GROUP_LABEL, NAME_LABEL, SERVICE_LABEL};
use crate::api::ServiceGroup;

/// The node label that makes "unique hosts" mean one container per node.
pub const HOSTNAME_TOPOLOGY: &str = "kubernetes.io/hostname";

/// The labels of a group's Deployment and pods: the service, the group
/// and the ServiceGroup's name (the selector).
pub fn labels(sg: &ServiceGroup, service: &str, group: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (SERVICE_LABEL.to_owned(), service.to_owned()),
        (GROUP_LABEL.to_owned(), group.to_owned()),
        (NAME_LABEL.to_owned(), sg.name_any()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "theseus".to_owned(),
        ),
    ])
}

/// The Deployment for `sg`, published as `service`/`group`: owned by the
/// ServiceGroup, with the container template, replicas, resources,
/// constraints and rolling-update settings of its spec.
pub fn build(sg: &ServiceGroup, service: &str, group: &str) -> Deployment {
    let labels = labels(sg, service, group);
    let selector = BTreeMap::from([(NAME_LABEL.to_owned(), sg.name_any())]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(sg.name_any()),
            namespace: sg.namespace(),
            labels: Some(labels.clone()),
            owner_references: sg.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(sg.spec.replicas),
            min_ready_seconds: Some(sg.spec.rolling_update.wait_seconds),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(sg.spec.rolling_update.max_unavailable.clone()),
                    max_surge: None,
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(sg, service, selector)),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn pod_spec(sg: &ServiceGroup, service: &str, selector: BTreeMap<String, String>) -> PodSpec {
    let constraints = &sg.spec.constraints;
    let anti_affinity = constraints.unique_hosts.then(|| Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(selector),
                    ..LabelSelector::default()
                }),
                topology_key: HOSTNAME_TOPOLOGY.into(),
                ..PodAffinityTerm::default()
            }]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    });
    PodSpec {
        containers: vec![container(sg, service)],
        node_selector: (!constraints.node_selector.is_empty())
            .then(|| constraints.node_selector.clone()),
        affinity: anti_affinity,
        ..PodSpec::default()
    }
}

fn container(sg: &ServiceGroup, service: &str) -> Container {
    let t = &sg.spec.template;
    let resources: BTreeMap<String, Quantity> = [("cpu", &t.cpu), ("memory", &t.memory)]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), Quantity(value.clone()?))))
        .collect();
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    Container {
        name: service.to_owned(),
        image: Some(t.image.clone()),
        command: non_empty(&t.command),
        args: non_empty(&t.args),
        env: (!t.env.is_empty()).then(|| {
            t.env
                .iter()
                .map(|(name, value)| EnvVar {
                    name: name.clone(),
                    value: Some(value.clone()),
                    ..EnvVar::default()
                })
                .collect()
        }),
        ports: (!t.ports.is_empty()).then(|| {
            t.ports
                .iter()
                .map(|p| ContainerPort {
                    container_port: p.container_port,
                    name: p.name.clone(),
                    ..ContainerPort::default()
                })
                .collect()
        }),
        resources: (!resources.is_empty()).then(|| ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde_json::{Value, json};

    use super::*;

    fn mk_group(spec: Value) -> ServiceGroup {
        serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "ServiceGroup",
            "metadata": { "name": "web-eu", "namespace": "prod", "uid": "u-1" },
            "spec": spec
        }))
        .unwrap()
    }

    fn built(spec: Value) -> Value {
        let sg = mk_group(spec);
        serde_json::to_value(build(&sg, "web", "canary.eu")).unwrap()
    }

    #[test]
    fn the_deployment_is_owned_by_the_group_and_labelled_with_service_and_group() {
        let d = built(json!({ "service": "web", "template": { "image": "web:1" } }));
        assert_eq!(d["metadata"]["name"], "web-eu");
        assert_eq!(d["metadata"]["namespace"], "prod");
        assert_eq!(d["metadata"]["ownerReferences"][0]["kind"], "ServiceGroup");
        assert_eq!(d["metadata"]["ownerReferences"][0]["controller"], true);
        let pod_labels = &d["spec"]["template"]["metadata"]["labels"];
        assert_eq!(pod_labels[SERVICE_LABEL], "web");
        assert_eq!(pod_labels[GROUP_LABEL], "canary.eu");
        assert_eq!(
            d["spec"]["selector"]["matchLabels"],
            json!({ NAME_LABEL: "web-eu" })
        );
    }

    #[test]
    fn the_spec_maps_to_template_replicas_resources_and_rollout() {
        let d = built(json!({
            "service": "web", "replicas": 5,
            "template": {
                "image": "web:2", "command": ["serve"], "args": ["--fast"],
                "env": { "MODE": "x" }, "ports": [{ "name": "http", "containerPort": 8080 }],
                "cpu": "250m", "memory": "128Mi"
            },
            "rollingUpdate": { "waitSeconds": 30, "maxUnavailable": "20%" }
        }));
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 5);
        assert_eq!(spec["minReadySeconds"], 30);
        assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], "20%");
        let c = &spec["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "web:2");
        assert_eq!(c["command"], json!(["serve"]));
        assert_eq!(c["args"], json!(["--fast"]));
        assert_eq!(c["env"], json!([{ "name": "MODE", "value": "x" }]));
        assert_eq!(c["ports"][0]["containerPort"], 8080);
        assert_eq!(c["resources"]["requests"]["cpu"], "250m");
        assert_eq!(c["resources"]["limits"]["memory"], "128Mi");
    }

    #[test]
    fn constraints_become_a_node_selector_and_for_unique_hosts_anti_affinity() {
        let cases = [(false, Value::Null), (true, json!(HOSTNAME_TOPOLOGY))];
        for (unique, topology) in cases {
            let d = built(json!({
                "service": "web", "template": { "image": "web:1" },
                "constraints": { "nodeSelector": { "size": "large" }, "uniqueHosts": unique }
            }));
            let pod = &d["spec"]["template"]["spec"];
            assert_eq!(pod["nodeSelector"], json!({ "size": "large" }));
            let term = &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                [0];
            assert_eq!(term["topologyKey"], topology, "unique hosts {unique}");
        }
    }

    #[test]
    fn defaults_give_one_replica_no_wait_and_one_unavailable() {
        let sg = mk_group(json!({ "service": "web", "template": { "image": "web:1" } }));
        let d = build(&sg, "web", "default");
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.min_ready_seconds, Some(0));
        let rolling = spec.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    }
}
