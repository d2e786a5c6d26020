//! ClusterCapability: something the cluster offers, measured on its nodes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A capability of the cluster (shared storage, a reachable discovery
/// etcd, a minimum agent version, labels, or any check a program makes),
/// measured on every node the selector matches by the nodes' agents, and
/// aggregated by the operator. An AppPackage that requires it installs
/// only while it is Available.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "ClusterCapability",
    status = "ClusterCapabilityStatus",
    shortname = "cap",
    category = "theseus",
    doc = "A capability of the cluster, measured on its nodes: shared filesystem, discovery etcd, agent version, labels or a program's check.",
    printcolumn(
        name = "Available",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Available")].status"#
    ),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.nodesReady"),
    printcolumn(name = "Total", type_ = "integer", json_path = ".status.nodesTotal"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.sharedFilesystem), has(self.exec), has(self.discoveryEtcd), has(self.agentVersion), has(self.labels)].filter(x, x).size() == 1",
    "message": "a capability has exactly one probe: sharedFilesystem, exec, discoveryEtcd, agentVersion or labels",
    "reason": "FieldValueInvalid"
}]))]
pub struct ClusterCapabilitySpec {
    /// The nodes (NodeInstalls, by label) that must offer it; empty: every
    /// node.
    #[serde(default)]
    pub node_selector: LabelSelector,

    /// Every selected node sees the same filesystem at `path`: one node
    /// writes a fresh nonce there, every other node must read it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_filesystem: Option<SharedFilesystemProbe>,

    /// A program run on every selected node; exit status 0 is offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,

    /// Every selected node reaches the discovery etcd at `endpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_etcd: Option<DiscoveryEtcdProbe>,

    /// Every selected node's agent is at least this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<AgentVersionProbe>,

    /// Every selected node carries these labels (a node class's labels,
    /// for example).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,

    /// Seconds between measurements (a fresh nonce, every probe run again).
    /// A node that joins is measured at once. Default 300.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 5, max = 86400))]
    pub interval_seconds: i32,
}

fn default_interval() -> i32 {
    300
}

/// The shared-filesystem probe.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SharedFilesystemProbe {
    /// The mount point every node must share: an absolute path. `${VAR}`
    /// is the agent's `--env VAR`, for nodes that mount it elsewhere.
    #[schemars(regex(pattern = r"^(/|\$\{)"), length(min = 1, max = 1024))]
    pub path: String,
    /// Whether the nodes must also be able to write there (every node
    /// writes and removes a file of its own). Default true.
    #[serde(default = "yes")]
    pub writable: bool,
}

fn yes() -> bool {
    true
}

/// A program's check.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExecProbe {
    /// The program (an absolute path, or a name on the agent's PATH) and
    /// its arguments; `${VAR}` is the agent's `--env VAR`.
    #[schemars(length(min = 1, max = 64))]
    pub argv: Vec<String>,
    /// Seconds before it is killed and the node fails. Default 10.
    #[serde(default = "default_exec_timeout")]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_seconds: i32,
}

fn default_exec_timeout() -> i32 {
    10
}

/// The discovery etcd probe.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryEtcdProbe {
    /// The etcd endpoints (`http://host:port`); a node passes when it
    /// reaches one of them and etcd answers a status request.
    #[schemars(length(min = 1, max = 16))]
    pub endpoints: Vec<String>,
}

/// The agent-version probe, judged from each node's reported version.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentVersionProbe {
    /// The lowest version accepted (`MAJOR.MINOR.PATCH`).
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+$"))]
    pub min: String,
}

/// What was measured.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCapabilityStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Selected nodes that offer the capability.
    #[serde(default)]
    pub nodes_ready: i32,
    /// Selected nodes.
    #[serde(default)]
    pub nodes_total: i32,
    /// The selected nodes that do not offer it, with why (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<FailingNode>,
    /// The current measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<Measurement>,
    /// Available (every selected node offers it, and there is at least
    /// one), Progressing (a measurement awaits nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A node that does not offer the capability.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailingNode {
    /// The node (its NodeInstall's name).
    pub node: String,
    /// Why, for machines: `ProbeFailed`, `NotMeasured`, `NodeSilent`,
    /// `VersionTooOld`, `LabelMissing`.
    pub reason: String,
    /// Why, for people.
    pub message: String,
}

/// One round of probes.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// The round's nonce: nodes report results for it, and the shared
    /// filesystem probe's writer writes it.
    pub nonce: String,
    /// The node that writes the nonce (shared filesystem probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
    /// When the round started.
    pub started: Time,
}
