//! PackageRepository: where packages come from.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A plain HTTP package repository: a static `index.json`, an optional
/// `index.json.sig`, and `packages/ID.tar.gz` files, served by any web server.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "theseus.dev",
    version = "v1alpha1",
    kind = "PackageRepository",
    status = "PackageRepositoryStatus",
    shortname = "pkgrepo",
    category = "theseus",
    doc = "A plain HTTP repository of packages that PackageSets draw from.",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
    printcolumn(
        name = "Packages",
        type_ = "integer",
        json_path = ".status.packageCount"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PackageRepositorySpec {
    /// Base URL of the repository, for example `http://packages.example.com/stable/`.
    /// `index.json` and `packages/ID.tar.gz` are fetched relative to it.
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub url: String,

    /// Ed25519 public keys (base64 of the 32 raw key bytes, as
    /// `theseus repo keygen` prints them). When any are listed, `index.json`
    /// must carry a valid `index.json.sig` made by one of them, or the
    /// repository is not Ready and nothing is fetched from it; its version
    /// must not fall below `status.acceptedIndexVersion` and it must not be
    /// past its `expires`. They go into each node's target, where they can
    /// only narrow the keys the node's agent trusts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = r"^[A-Za-z0-9+/]{43}=$")))]
    pub public_keys: Vec<String>,

    /// How often the operator re-reads the index, in seconds. Default 300.
    #[serde(default = "default_refresh_seconds")]
    #[schemars(range(min = 10))]
    pub refresh_interval_seconds: i32,
}

fn default_refresh_seconds() -> i32 {
    300
}

/// What the operator last saw of the repository.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PackageRepositoryStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// How many packages the index lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_count: Option<i64>,

    /// The `version` field of the last index read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_version: Option<i64>,

    /// The highest signed index version the operator accepted from this
    /// repository. A lower one served later is refused (Ready False, reason
    /// IndexRollback). To start over at lower versions, recreate the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_index_version: Option<i64>,

    /// When the last index read expires (its `expires`, RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_expires: Option<Time>,

    /// When the index was last read successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<Time>,

    /// `Ready` is True when the index was fetched (and its signature verified,
    /// when keys are configured) at the last sync. False with reason
    /// IndexRollback when a signed index is older than the accepted one, or
    /// IndexExpired when it is past its `expires`; the message names both
    /// versions or the expiry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
