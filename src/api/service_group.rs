//! ServiceGroup: a service's labeled group of containers, published into
//! the etcd discovery tree.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A labeled group of one service's containers. The operator runs it as a
/// Deployment and publishes its ready containers under
/// `/services/SERVICE/GROUP/containers/NAME/info` in the discovery etcd.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "ServiceGroup",
    namespaced,
    status = "ServiceGroupStatus",
    shortname = "sg",
    category = "theseus",
    doc = "A labeled group of a service's containers, run as a Deployment and published into the etcd discovery tree.",
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
    printcolumn(name = "Group", type_ = "string", json_path = ".status.group"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Published",
        type_ = "integer",
        json_path = ".status.publishedContainers"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceGroupSpec {
    /// The service this group belongs to: the first path element under
    /// `/services` in the discovery tree. A DNS label.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub service: String,

    /// The group's labels, each of lowercase letters, digits and hyphens.
    /// The group's path element is the labels sorted, de-duplicated and
    /// joined with `.`; an empty list is the group `default`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(regex(pattern = r"^[a-z0-9-]+$"), length(min = 1, max = 63))
    )]
    pub labels: Vec<String>,

    /// Configuration applications read from `/services/SERVICE/GROUP/config`,
    /// published as a JSON object of these keys and values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,

    /// How many containers the group runs. Default 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// The container every replica runs.
    pub template: ContainerTemplate,

    /// Where the containers may run.
    #[serde(default)]
    pub constraints: Constraints,

    /// How a change to the template is rolled out.
    #[serde(default)]
    pub rolling_update: GroupRollingUpdate,
}

fn default_replicas() -> i32 {
    1
}

/// The container a group runs.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerTemplate {
    /// The container image, e.g. `registry.example.com/web:1.4`.
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,

    /// The command to run instead of the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,

    /// Arguments to the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,

    /// Environment variables, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,

    /// Ports the container listens on. The first is published as
    /// `instance_port`; all of them as `port_mappings`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["containerPort"]))]
    pub ports: Vec<GroupPort>,

    /// CPU each container requests and is limited to, as a Kubernetes
    /// quantity (e.g. `250m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?m?$"))]
    pub cpu: Option<String>,

    /// Memory each container requests and is limited to, as a Kubernetes
    /// quantity (e.g. `256Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub memory: Option<String>,
}

/// One port of a container.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupPort {
    /// An optional name (an IANA service name), published in `port_mappings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub name: Option<String>,

    /// The port number inside the container.
    #[schemars(range(min = 1, max = 65535))]
    pub container_port: i32,
}

/// Where a group's containers may run.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Constraints {
    /// Node labels a node must carry to run the group's containers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// At most one of the group's containers per node.
    #[serde(default)]
    pub unique_hosts: bool,
}

/// How a group's containers are replaced.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupRollingUpdate {
    /// Seconds a new container must stay ready before it counts as available
    /// and the next one is replaced. Default 0.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub wait_seconds: i32,

    /// How many containers may be unavailable during an update: an integer or
    /// a percentage. Default 1.
    #[serde(default = "default_group_max_unavailable")]
    pub max_unavailable: IntOrString,
}

impl Default for GroupRollingUpdate {
    fn default() -> Self {
        Self {
            wait_seconds: 0,
            max_unavailable: default_group_max_unavailable(),
        }
    }
}

fn default_group_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}

/// What is running and published.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceGroupStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The group's path element in the discovery tree (its encoded labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,

    /// Containers that exist.
    #[serde(default)]
    pub replicas: i32,

    /// Containers that are ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Containers published in the discovery tree.
    #[serde(default)]
    pub published_containers: i32,

    /// The group's key prefix in the discovery etcd,
    /// e.g. `/services/web/canary.eu/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_path: Option<String>,

    /// Available, Progressing, Published (and Conflict when another group
    /// already owns the same service and labels).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
