//! NodePool: how many nodes a pool has, and where they are launched.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A pool of nodes of one kind, kept at `replicas` instances on EC2 or as
/// local agent processes. Removed nodes are drained first. Scale it with
/// `kubectl scale nodepool/NAME --replicas=N`.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "NodePool",
    status = "NodePoolStatus",
    shortname = "np",
    category = "theseus",
    doc = "A pool of nodes kept at a declared count, launched on EC2 or as local processes, drained before removal.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider.type"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolSpec {
    /// How many nodes the pool should have.
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: i32,

    /// Where the pool's nodes are launched.
    pub provider: Provider,

    /// Labels every node of the pool carries on its NodeInstall (in addition
    /// to `theseus.dev/nodepool: NAME`), for PackageSet selectors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, String>,

    /// Seconds allowed for evicting a node's pods before it is removed.
    /// Default 300.
    #[serde(default = "default_drain_timeout")]
    #[schemars(range(min = 0, max = 86400))]
    pub drain_timeout_seconds: i32,

    /// What to do when a drain times out: `Wait` keeps the node until its pods
    /// can be evicted; `Force` removes it anyway. Default Wait.
    #[serde(default)]
    pub drain_timeout_policy: DrainTimeoutPolicy,

    /// Which nodes go first when the pool shrinks. Default NewestFirst.
    #[serde(default)]
    pub scale_down_order: ScaleDownOrder,

    /// Seconds a launched instance has to register its NodeInstall before it
    /// is replaced. Default 600.
    #[serde(default = "default_join_timeout")]
    #[schemars(range(min = 10, max = 86400))]
    pub join_timeout_seconds: i32,
}

fn default_drain_timeout() -> i32 {
    300
}

fn default_join_timeout() -> i32 {
    600
}

/// What happens when a node's drain times out.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum DrainTimeoutPolicy {
    /// Keep the node and keep trying; the pool reports Degraded.
    #[default]
    Wait,
    /// Remove the node anyway; the pool reports it in a condition.
    Force,
}

/// The order in which nodes are removed.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ScaleDownOrder {
    /// The most recently launched nodes go first.
    #[default]
    NewestFirst,
    /// The longest-running nodes go first.
    OldestFirst,
}

/// Where a pool's nodes are launched: `type` names the provider and the
/// field of the same name holds its settings. Exactly one is set.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.aws) ? 1 : 0) + (has(self.local) ? 1 : 0) == 1",
        "message": "spec.provider must set exactly one provider: aws or local",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "self.type == 'Aws' ? has(self.aws) : has(self.local)",
        "message": "spec.provider.type must name the provider that is set",
        "fieldPath": ".type",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct Provider {
    /// The provider: `Aws` or `Local`.
    #[serde(rename = "type")]
    pub type_: ProviderType,

    /// Settings for EC2 instances, when `type` is `Aws`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsProvider>,

    /// Settings for local agent processes, when `type` is `Local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalProvider>,
}

/// The kinds of provider.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ProviderType {
    /// AWS EC2.
    Aws,
    /// `theseus agent` child processes of the operator, for development.
    Local,
}

/// How instances are launched on EC2.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AwsProvider {
    /// The AWS region, e.g. `eu-west-1`.
    #[schemars(length(min = 1, max = 64))]
    pub region: String,

    /// The instance type, e.g. `m7i.large`.
    #[schemars(length(min = 1, max = 64))]
    pub instance_type: String,

    /// The AMI to launch, e.g. `ami-0123456789abcdef0`.
    #[schemars(regex(pattern = r"^ami-[0-9a-f]+$"))]
    pub image_id: String,

    /// Subnets to spread instances over, round-robin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnet_ids: Vec<String>,

    /// Security groups every instance joins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_ids: Vec<String>,

    /// Name of the EC2 key pair for SSH access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,

    /// Name of the IAM instance profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,

    /// Extra tags on every instance. The ownership tags
    /// `theseus.dev/nodepool` and `theseus.dev/cluster` are always added.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,

    /// Extra shell run by the instance's bootstrap script before the agent
    /// starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub user_data: Option<String>,

    /// A Secret holding `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    /// Without it, the operator uses the standard AWS credential chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,

    /// Overrides the EC2 endpoint URL (for an EC2-compatible API or tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s]+$"))]
    pub endpoint: Option<String>,

    /// Seconds one EC2 call may take before it counts as failed and the
    /// pool reports Degraded (reason ProviderTimeout). Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_seconds: Option<i32>,
}

/// A reference to a Secret by namespace and name.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// The Secret's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// How local agent processes are started.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalProvider {
    /// Directory under which each local node gets its own root. Default: a
    /// `nodepools/POOL` directory under the operator's state directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,

    /// When set, node N (the number in its name, `POOL-N`) is started with
    /// `--env PORT=BASE+N`, so that the services of several local nodes on
    /// one machine listen on distinct ports; packages read it as `${PORT}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65000))]
    pub service_port_base: Option<i32>,
}

/// What the pool has.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Instances that exist (launched and not yet terminated).
    #[serde(default)]
    pub replicas: i32,

    /// Instances whose agent has registered and is heartbeating.
    #[serde(default)]
    pub ready_replicas: i32,

    /// The label selector of the pool's NodeInstalls, for the scale
    /// subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// The sequence number of the next launch; recorded before each launch
    /// so that a retried launch reuses its idempotency token.
    #[serde(default)]
    pub next_launch: i64,

    /// The pool's instances.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub instances: Vec<PoolInstance>,

    /// Instances the provider lists without a launch time and the pool has
    /// not recorded, with when the pool first saw each: their age (for the
    /// grace period before an unrecorded instance counts as an orphan)
    /// counts from then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub first_seen: Vec<FirstSeen>,

    /// Ready, Scaling, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// When the pool first saw an instance whose launch time is unknown.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FirstSeen {
    /// The provider's id.
    pub id: String,

    /// When a listing first showed it.
    pub time: Time,
}

/// One instance of a pool.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolInstance {
    /// The provider's id (an EC2 instance id, or `local-N`).
    pub id: String,

    /// The node name its agent registered, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,

    /// Pending, Running, Draining, Terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,

    /// When the instance was launched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launched: Option<Time>,

    /// When its drain began (state Draining), for the drain timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_started: Option<Time>,
}

/// The tag (EC2) or label naming the pool an instance belongs to.
pub const POOL_TAG: &str = "theseus.dev/nodepool";

/// The NodeInstall annotation `theseus node remove` sets: the node goes
/// first when its pool shrinks.
pub const REMOVE_ANNOTATION: &str = "theseus.dev/remove";
