//! NodeInstall: one per node, the operator's target and the agent's report.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The package state of one node. The agent creates it when it starts and
/// writes `status`; the operator writes `spec.target`. It is named after the
/// node and carries the node's labels, which PackageSet selectors match.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "NodeInstall",
    status = "NodeInstallStatus",
    shortname = "ni",
    category = "theseus",
    doc = "The packages one node should run (spec, from the operator) and runs (status, from its agent).",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Active", type_ = "string", json_path = ".status.activeHash"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target.setHash"),
    printcolumn(name = "Heartbeat", type_ = "date", json_path = ".status.heartbeat")
)]
#[serde(rename_all = "camelCase")]
pub struct NodeInstallSpec {
    /// The set the node should make active. Written by the operator; absent
    /// until a PackageSet claims the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<NodeTarget>,

    /// The set a cluster plan will make `target` once this node's coming
    /// installs start. The agent fetches the packages of it that it does
    /// not have into its cache ahead of time, trusted as a target's are,
    /// and activates nothing: the install then only switches. Written by
    /// the operator's cluster controller when it binds the node, and
    /// removed once `target` holds the packages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<NodeTarget>,

    /// A cluster plan's tasks for this node: service action hooks to run
    /// in this order, each once per attempt, each only after the ones
    /// before it succeeded (the node's next hooks come with the one it runs
    /// now, so it goes on without waiting for the operator). Written by the
    /// operator's cluster controller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tasks: Vec<NodeTask>,

    /// Probes of ClusterCapabilities this node is selected by, one per
    /// capability, each for the capability's current measurement. Written
    /// by the operator's capability controller (one field manager per
    /// capability); the agent runs each once per nonce and reports in
    /// `status.probes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["capability"]))]
    #[schemars(length(max = 256))]
    pub probes: Vec<NodeProbe>,

    /// Work on the shared filesystem (roles' and application instances'
    /// directories, application stages), one entry per object, each done
    /// once per `key`. Written by the operator's application controllers
    /// (one field manager per object); reported in `status.storage`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    #[schemars(length(max = 256))]
    pub storage: Vec<StorageTask>,
}

/// One capability's probe on this node.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeProbe {
    /// The ClusterCapability.
    #[schemars(length(min = 1, max = 253))]
    pub capability: String,
    /// The measurement's nonce; a new one runs the probe again.
    #[schemars(length(min = 1, max = 64))]
    pub nonce: String,
    /// Check the shared filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_filesystem: Option<NodeFilesystemProbe>,
    /// Run a program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<super::ExecProbe>,
    /// Reach the discovery etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_etcd: Option<super::DiscoveryEtcdProbe>,
}

/// The shared-filesystem probe as one node runs it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeFilesystemProbe {
    /// The path (`${VAR}`: the agent's `--env VAR`).
    pub path: String,
    /// Whether the node must be able to write there.
    #[serde(default)]
    pub writable: bool,
    /// Whether this node writes the nonce (one node per measurement);
    /// the others read it back.
    #[serde(default)]
    pub writer: bool,
}

/// A probe's result on this node.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    /// The ClusterCapability.
    pub capability: String,
    /// The nonce of the measurement the result is for.
    pub nonce: String,
    /// Whether the node offers the capability.
    pub ok: bool,
    /// What the probe found, for people (why it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it was measured.
    pub measured: Time,
}

/// Work on the shared filesystem for one object.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageTask {
    /// The object: `role/NAME`, `stage/APP/VERSION` or
    /// `instance/NAMESPACE/NAME`.
    #[schemars(length(min = 1, max = 512))]
    pub id: String,
    /// A digest of the work; the agent does it once per key, and a new key
    /// does it again (everything it does can be done twice).
    #[schemars(length(min = 1, max = 128))]
    pub key: String,
    /// Directories to create (or keep), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ensure: Vec<EnsureDirectory>,
    /// Directories to remove, each only if this object claimed it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub remove: Vec<ClaimedPath>,
    /// Packages to unpack into the first directory (under `packages/`)
    /// once it exists and before `run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch: Option<StorageFetch>,
    /// A program to run once the directories exist (an application's
    /// staging step), in the first of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<StorageRun>,
}

/// Packages a storage task caches: each is fetched, verified against the
/// repository's signed index under the agent's own trust (its
/// `--trusted-key` and `--allowed-repository`), and unpacked whole into
/// `packages/ID/` of the task's first directory.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageFetch {
    /// The repository's URL.
    #[schemars(length(min = 1, max = 2048))]
    pub repository: String,
    /// The keys (base64) the repository's index must be signed with, of
    /// those the agent trusts; empty: any key the agent trusts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<String>,
    /// The package ids.
    #[schemars(length(min = 1, max = 32))]
    pub packages: Vec<String>,
}

/// A directory the agent creates with a mode and owner.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnsureDirectory {
    /// Its absolute path (`${VAR}`: the agent's `--env VAR`). Missing
    /// parents are created with mode 0755.
    #[schemars(length(min = 2, max = 1024))]
    pub path: String,
    /// Its mode, in octal (`0750`).
    #[schemars(regex(pattern = r"^0?[0-7]{3,4}$"))]
    pub mode: String,
    /// Its owner (a user name or uid); unset: the agent's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Its group (a group name or gid); unset: the agent's group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The claim of the object the directory belongs to (its uid). With a
    /// claim the directory is created whole or not at all (built aside,
    /// then renamed into place), with its files and a claim marker; an
    /// existing directory without this claim is never touched. Without a
    /// claim an existing directory is kept as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// Files written into the directory (replaced whole when they differ).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub files: Vec<StorageFile>,
}

/// A file the agent writes.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageFile {
    /// Its name, inside the directory.
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]+$"), length(min = 1, max = 255))]
    pub name: String,
    /// Its content.
    #[schemars(length(max = 65536))]
    pub content: String,
}

/// A directory claimed by an object.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimedPath {
    /// Its absolute path.
    #[schemars(length(min = 2, max = 1024))]
    pub path: String,
    /// The claim it must carry to be removed.
    pub claim: String,
}

/// A program the agent runs for a storage task.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageRun {
    /// The program and its arguments; a relative `argv[0]` is inside the
    /// directory.
    #[schemars(length(min = 1, max = 64))]
    pub argv: Vec<String>,
    /// Seconds before it is killed and the task fails.
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i32,
    /// Its extra environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// One action hook of a service, for the agent to run once per attempt.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeTask {
    /// The plan's task id, e.g. `node-1/store/install`.
    #[schemars(length(min = 1, max = 512))]
    pub id: String,
    /// Which attempt this is (from 1); a higher attempt runs the hook again,
    /// the same one never does.
    #[schemars(range(min = 1))]
    pub attempt: i32,
    /// The service the hook belongs to.
    #[schemars(length(min = 1, max = 63))]
    pub service: String,
    /// The phase: install, configure, initialize, start, stop or remove.
    pub action: super::TaskAction,
    /// The package (an active one) that `argv[0]` and the working directory
    /// are inside; none when `argv[0]` is an absolute path. While the
    /// target holds it but the node has not switched to it yet, the hook
    /// waits for the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// The program and its arguments.
    #[schemars(length(min = 1, max = 64))]
    pub argv: Vec<String>,
    /// Seconds before the hook is killed and the attempt fails.
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i32,
    /// Extra environment of the hook (the cluster's configuration, its
    /// name, which nodes run which service).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// How a hook attempt went.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum HookState {
    /// Running now.
    #[default]
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, timed out, could not start, or the agent restarted
    /// while it ran (it is never run twice).
    Failed,
}

/// The agent's report of the last hook attempt it ran.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeTaskStatus {
    /// The task id, one of `spec.tasks`.
    pub id: String,
    /// Its attempt.
    pub attempt: i32,
    /// How it went.
    pub state: HookState,
    /// The exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed, with the last lines of its output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Time>,
}

/// Everything an agent needs to switch to a set, so that it reads nothing but
/// its own NodeInstall.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeTarget {
    /// Name of the PackageSet this target comes from.
    #[schemars(length(min = 1, max = 253))]
    pub package_set: String,

    /// Hash of the sorted package ids; equals `status.activeHash` once the
    /// node has switched.
    #[schemars(length(min = 1, max = 128))]
    pub set_hash: String,

    /// The package ids to make active, exactly.
    #[schemars(
        length(min = 1, max = 256),
        inner(
            regex(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*--[A-Za-z0-9._+]{1,64}$"),
            length(max = 129)
        )
    )]
    pub packages: Vec<String>,

    /// Base URL of the repository to fetch missing packages from.
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub repository_url: String,

    /// Ed25519 keys the repository index must be signed with (base64). They
    /// can only narrow the keys the agent itself trusts (its
    /// `--trusted-key`), never widen them: a target naming no key the agent
    /// trusts is refused. Empty: the agent's trusted keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub public_keys: Vec<String>,

    /// How long the node's service has to pass its health check after the
    /// switch, in seconds, before the agent rolls back. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub health_timeout_seconds: Option<i32>,

    /// Other repositories some of `packages` come from (the operator's
    /// generated configuration packages); the rest come from
    /// `repositoryUrl`. Each is trusted, or refused, like `repositoryUrl`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub sources: Vec<PackageSource>,

    /// Secret values some of `packages` refer to (`${secret:NAME}` in
    /// generated configuration), by reference: the agent reads each key
    /// with its own identity and writes the files that use it, resolved
    /// and readable by their owner only, into the new generation. No value
    /// is ever in the target, a package or a status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub secrets: Vec<TargetSecret>,
}

/// Where the value of a secret parameter of a package is.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TargetSecret {
    /// The name of the package whose files refer to it (e.g. `web-config`).
    #[schemars(length(min = 1, max = 63))]
    pub package: String,
    /// The parameter, as in `${secret:PARAMETER}`.
    #[schemars(length(min = 1, max = 253))]
    pub parameter: String,
    /// The namespace of the Secret.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// The Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A repository some packages of a target come from.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PackageSource {
    /// Base URL of the repository.
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub url: String,
    /// Ed25519 keys its index must be signed with (base64); as
    /// `publicKeys`, they only narrow the agent's trusted keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub public_keys: Vec<String>,
    /// The package ids fetched from it (each one of the target's).
    #[schemars(length(min = 1, max = 64))]
    pub packages: Vec<String>,
}

/// Where a node is in switching sets.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum NodePhase {
    /// Nothing to do: no target, or the target is active.
    #[default]
    Idle,
    /// Downloading and verifying packages.
    Fetching,
    /// Building the new generation, stopping the service and switching.
    Activating,
    /// The new set is active; waiting for its health check.
    Verifying,
    /// The target set is active and healthy.
    Active,
    /// The target set failed and the node went back to its previous set.
    RolledBack,
    /// The node could not switch and could not roll back; needs a person.
    Failed,
}

/// What the node's agent reports.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeInstallStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The package ids of the active generation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<String>,

    /// Hash of the sorted active ids, comparable with `spec.target.setHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_hash: Option<String>,

    /// Where the agent is in switching sets.
    #[serde(default)]
    pub phase: NodePhase,

    /// What the agent is doing or why it stopped, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Why the phase is what it is, for machines: `Untrusted` when the
    /// agent refused the target because its repository is not allowed or
    /// its index is not signed by a key the agent trusts (or is older than
    /// one it accepted, or expired). Nothing was downloaded then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// The set hash of the last target that failed and was rolled back; the
    /// operator does not retry it until the target changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_hash: Option<String>,

    /// When the agent last reported. A stale heartbeat makes the node count
    /// as unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Time>,

    /// The version of the agent binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,

    /// The cloud instance this node runs on, when a NodePool launched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,

    /// The address peers reach the node at (an IP address or a host name),
    /// as its agent reports it (`--address`). A Cluster's services are
    /// published in the discovery tree at their nodes' addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,

    /// Where the agent's local HTTP API answers (`http://HOST:PORT`), as
    /// it reports it: the operator's dashboard reads the node's services,
    /// their metrics and log tails there, with the fleet's agent token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_endpoint: Option<String>,

    /// Package ids unpacked on the node (active or not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cached: Vec<String>,

    /// The agent's reports of the hooks of `spec.tasks` it ran: the last
    /// attempt of each, in the order of `spec.tasks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<NodeTaskStatus>,

    /// Results of `spec.probes`, one per capability.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeResult>,

    /// Results of `spec.storage`, one per object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage: Vec<StorageResult>,

    /// `Ready` is True when the active set is the target and healthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// How a storage task went.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageResult {
    /// The task's id.
    pub id: String,
    /// The task's key.
    pub key: String,
    /// Running, Succeeded or Failed.
    pub state: HookState,
    /// Why it failed, for machines: `HomeOccupied` (a directory to create
    /// exists and was not created by the object), `NotClaimed` (a
    /// directory to remove carries another claim), `RunFailed`, `IoError`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The directories it created (not those that were there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<String>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Time>,
}
