//! Reading and writing a NodePool's status: the recorded instances, the
//! first sightings of instances without a launch time, the plan's
//! conditions, and the Degraded condition of a failed pass.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::Recorder;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::plan::{Recorded, State};
use super::provider::POOL_TAG;
use crate::api::conditions::{Observed, types};
use crate::api::{FirstSeen, NodePool, NodePoolStatus, PoolInstance};
use crate::shared::status;

/// The instances recorded in `status`. A record without a launch time (not
/// one this controller wrote) is aged from when it was first seen, which is
/// now; the next status write keeps that time.
pub fn recorded(status: &NodePoolStatus, now: Timestamp) -> Vec<Recorded> {
    status
        .instances
        .iter()
        .map(|i| Recorded {
            id: i.id.clone(),
            node: i.node.clone(),
            state: State::parse(i.state.as_deref()),
            launched: i.launched.as_ref().map_or(now, |t| t.0),
            drain_started: i.drain_started.as_ref().map(|t| t.0),
        })
        .collect()
}

/// `status.firstSeen` by id.
pub fn first_seen(status: &NodePoolStatus) -> BTreeMap<String, Timestamp> {
    status
        .first_seen
        .iter()
        .map(|f| (f.id.clone(), f.time.0))
        .collect()
}

/// What a pass writes into status.
pub struct Fill<'a> {
    /// The instances to record.
    pub instances: &'a [Recorded],
    /// `status.nextLaunch`.
    pub next_launch: i64,
    /// `status.readyReplicas`.
    pub ready: usize,
    /// `status.firstSeen`, by id.
    pub first_seen: &'a BTreeMap<String, Timestamp>,
    /// The conditions observed.
    pub observed: Vec<Observed<'static>>,
}

/// Fills `status` from a plan; returns the conditions whose status changed.
pub fn fill(
    pool: &NodePool,
    status: &mut NodePoolStatus,
    fill: Fill<'_>,
    now: Timestamp,
) -> Vec<Condition> {
    status.observed_generation = pool.metadata.generation;
    status.selector = Some(format!("{POOL_TAG}={}", pool.name_any()));
    status.next_launch = fill.next_launch;
    status.replicas = fill
        .instances
        .iter()
        .filter(|i| i.state != State::Terminating)
        .count() as i32;
    status.ready_replicas = fill.ready as i32;
    status.instances = fill
        .instances
        .iter()
        .map(|i| PoolInstance {
            id: i.id.clone(),
            node: i.node.clone(),
            state: Some(i.state.as_str().into()),
            launched: Some(Time(i.launched)),
            drain_started: i.drain_started.map(Time),
        })
        .collect();
    status.first_seen = fill
        .first_seen
        .iter()
        .map(|(id, at)| FirstSeen {
            id: id.clone(),
            time: Time(*at),
        })
        .collect();
    status::merge(
        &mut status.conditions,
        fill.observed,
        pool.metadata.generation,
        now,
    )
}

/// Writes status with the given resourceVersion as a precondition; returns
/// the new resourceVersion.
pub async fn write(
    client: &Client,
    pool: &NodePool,
    status: &NodePoolStatus,
    version: Option<&str>,
) -> Result<Option<String>, kube::Error> {
    let mut status_json = serde_json::to_value(status).unwrap_or_default();
    // An empty list is left out when serialised; a merge patch must say it.
    status_json["instances"] = json!(status.instances);
    status_json["firstSeen"] = json!(status.first_seen);
    let patch = json!({ "metadata": { "resourceVersion": version }, "status": status_json });
    let written = Api::<NodePool>::all(client.clone())
        .patch_status(
            &pool.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(written.resource_version())
}

/// Best effort: a Degraded condition that says what failed.
pub async fn report_failure(
    client: &Client,
    recorder: &Recorder,
    pool: &NodePool,
    reason: &'static str,
    message: String,
) {
    let mut status = pool.status.clone().unwrap_or_default();
    let changed = status::merge(
        &mut status.conditions,
        vec![Observed::new(types::DEGRADED, true, reason, message)],
        pool.metadata.generation,
        Timestamp::now(),
    );
    if changed.is_empty() && pool.status.as_ref() == Some(&status) {
        return;
    }
    let patch = json!({ "status": { "conditions": status.conditions } });
    let api = Api::<NodePool>::all(client.clone());
    if let Err(e) = api
        .patch_status(
            &pool.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::warn!(nodepool = %pool.name_any(), error = %e, "cannot report a failure in status");
    }
    status::publish(recorder, &pool.object_ref(&()), &changed).await;
}
