//! What every controller shares, below the controllers and above the kinds
//! and the package code: the [`Shared`] handle (client, event reporter,
//! metrics, the halt store, the scope of the objects this operator manages,
//! and the stores controllers read), status and event helpers, the halt,
//! the metrics and the watch configuration.
//!
//! Nothing here knows a controller; each controller folder (`rollout`,
//! `repository`, `nodepool`, `discovery`) imports this module, never another
//! controller, and `operator` wires them together.

#[cfg(test)]
pub mod fake_api;
pub mod halt;
pub mod metrics;
pub mod selector;
pub mod status;
pub mod stores;
pub mod wake;

use kube::Client;
use kube::runtime::events::Reporter;

use self::halt::HaltStore;
use self::metrics::Metrics;
use self::stores::Stores;

/// The field manager of everything the operator writes.
pub const MANAGER: &str = "theseus-operator";

/// What every controller is given.
#[derive(Clone)]
pub struct Shared {
    /// The API client (fenced: it writes only while this replica leads).
    pub client: Client,
    /// The metrics registry.
    pub metrics: Metrics,
    /// The halt store.
    pub halt: HaltStore,
    /// The event reporter.
    pub reporter: Reporter,
    /// The namespace of the operator's own objects (the halt ConfigMap).
    pub namespace: String,
    /// Only objects matching this label selector are managed, if set.
    pub selector: Option<String>,
    /// Caches that one controller fills and others read.
    pub stores: Stores,
}

impl Shared {
    /// The watcher configuration for the objects this operator manages.
    pub fn watch_config(&self) -> kube::runtime::watcher::Config {
        scoped(self.selector.as_deref())
    }
}

/// How long one watch call may stay open: the API server ends it after this
/// many seconds and the watcher resumes from the last resourceVersion. A
/// watch that goes quiet without an error (a stalled connection, a watch on
/// storage the API server replaced) is noticed within this time plus a few
/// seconds, instead of kube's default of nearly five minutes.
pub const WATCH_TIMEOUT_SECONDS: u32 = 20;

/// A watcher configuration limited to objects matching `selector`, if any,
/// with watch calls bounded by [`WATCH_TIMEOUT_SECONDS`].
pub fn scoped(selector: Option<&str>) -> kube::runtime::watcher::Config {
    let config = kube::runtime::watcher::Config::default().timeout(WATCH_TIMEOUT_SECONDS);
    match selector {
        Some(selector) => config.labels(selector),
        None => config,
    }
}

/// A merge patch that takes `finalizer` off `object`, over the version
/// read: should the object have changed since, the API server refuses it
/// (409) and the next pass starts over.
pub fn without_finalizer<K: kube::Resource>(object: &K, finalizer: &str) -> serde_json::Value {
    let finalizers: Vec<&String> = object
        .meta()
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .collect();
    serde_json::json!({ "metadata": {
        "finalizers": finalizers,
        "resourceVersion": object.meta().resource_version,
    } })
}

#[cfg(test)]
mod finalizer_tests {
    use super::*;

    #[test]
    fn the_patch_keeps_the_other_finalizers_and_the_version_read() {
        let mut cm = k8s_openapi::api::core::v1::ConfigMap::default();
        cm.metadata.finalizers = Some(vec!["a/x".into(), "theseus.dev/t".into(), "b/y".into()]);
        cm.metadata.resource_version = Some("42".into());
        assert_eq!(
            without_finalizer(&cm, "theseus.dev/t"),
            serde_json::json!({ "metadata": { "finalizers": ["a/x", "b/y"], "resourceVersion": "42" } })
        );
    }
}
