//! The fleet-wide halt: a ConfigMap in the operator's namespace. While it
//! exists, no rollout starts a new node; only an explicit resume removes it.
//! Keeping it in the API server means it survives operator restarts and
//! leader changes, and every replica sees the same answer.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde::{Deserialize, Serialize};

/// The name of the ConfigMap that holds the halt.
pub const HALT_CONFIGMAP: &str = "theseus-halt";
/// The field manager for halt writes.
const MANAGER: &str = "theseus-halt";

/// A halt in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Halt {
    /// Why rollouts are halted, as the caller said.
    pub reason: String,
    /// Who halted them.
    pub by: String,
    /// When, RFC 3339.
    pub at: String,
}

impl Halt {
    pub(crate) fn from_configmap(cm: &ConfigMap) -> Self {
        let get = |k: &str| {
            cm.data
                .as_ref()
                .and_then(|d| d.get(k))
                .cloned()
                .unwrap_or_default()
        };
        Self {
            reason: get("reason"),
            by: get("by"),
            at: get("at"),
        }
    }

    /// The text shown in every PackageSet's Halted condition.
    pub fn message(&self) -> String {
        format!("halted by {}: {}", self.by, self.reason)
    }
}

/// Reads and writes the halt.
#[derive(Clone)]
pub struct HaltStore {
    api: Api<ConfigMap>,
}

impl HaltStore {
    /// The store in `namespace`.
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
        }
    }

    /// The halt in force, if any.
    pub async fn get(&self) -> Result<Option<Halt>, kube::Error> {
        Ok(self
            .api
            .get_opt(HALT_CONFIGMAP)
            .await?
            .map(|cm| Halt::from_configmap(&cm)))
    }

    /// Halts every rollout. Halting again replaces the reason.
    pub async fn halt(&self, reason: &str, by: &str, now: Timestamp) -> Result<Halt, kube::Error> {
        let halt = Halt {
            reason: reason.to_owned(),
            by: by.to_owned(),
            at: now.to_string(),
        };
        let data: BTreeMap<String, String> = [
            ("reason".to_owned(), halt.reason.clone()),
            ("by".to_owned(), halt.by.clone()),
            ("at".to_owned(), halt.at.clone()),
        ]
        .into();
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(HALT_CONFIGMAP.to_owned()),
                labels: Some(
                    [("app.kubernetes.io/part-of".to_owned(), "theseus".to_owned())].into(),
                ),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        let value = serde_json::json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": cm.metadata, "data": cm.data });
        self.api
            .patch(
                HALT_CONFIGMAP,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&value),
            )
            .await?;
        Ok(halt)
    }

    /// Clears the halt. Returns whether one was in force.
    pub async fn resume(&self) -> Result<bool, kube::Error> {
        match self
            .api
            .delete(HALT_CONFIGMAP, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(err) => Err(err),
        }
    }
}
