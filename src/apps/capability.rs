//! The ClusterCapability controller: starts a measurement (a fresh nonce,
//! a writer node), gives each selected node its probe (`spec.probes`, one
//! field manager per capability), and judges the nodes' results into
//! `nodesReady/nodesTotal`, the failing nodes and `Available`.
//!
//! Judging is pure ([`judge`]); the agents measure. A node that joins is
//! given the current measurement's probe at once; a new measurement
//! starts every `intervalSeconds`, when the spec changes, or when the
//! writer is gone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use rand::Rng;
use tracing::info;

use crate::api::conditions::{Observed, types};
use crate::api::{
    ClusterCapability, ClusterCapabilitySpec, ClusterCapabilityStatus, FailingNode, Measurement,
    NodeFilesystemProbe, NodeInstall, NodeProbe,
};
use crate::shared::{selector, status};

use super::{Context, Error, silent};

/// The most failing nodes a status lists.
const MAX_FAILING: usize = 100;

/// Whether the capability needs the agents (a probe) or is judged from
/// what the NodeInstalls already say (version, labels).
pub fn needs_probe(spec: &ClusterCapabilitySpec) -> bool {
    spec.shared_filesystem.is_some() || spec.exec.is_some() || spec.discovery_etcd.is_some()
}

/// The nodes `spec` selects, by name.
pub fn selected<'n>(
    spec: &ClusterCapabilitySpec,
    nodes: &'n [Arc<NodeInstall>],
) -> Vec<&'n NodeInstall> {
    let mut out: Vec<&NodeInstall> = nodes
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter(|n| selector::matches(&spec.node_selector, n.labels()))
        .map(|n| &**n)
        .collect();
    out.sort_by_key(|n| n.name_any());
    out
}

/// Whether a new measurement must start: none yet, the spec changed, the
/// interval passed, or the writer is no longer a live selected node.
pub fn new_measurement_due(
    cap: &ClusterCapability,
    nodes: &[&NodeInstall],
    now: Timestamp,
    stale_after: Duration,
) -> bool {
    let status = cap.status.clone().unwrap_or_default();
    let Some(m) = &status.measurement else {
        return true;
    };
    if status.observed_generation != cap.metadata.generation {
        return true;
    }
    let age = now.duration_since(m.started.0).as_secs();
    if age >= i64::from(cap.spec.interval_seconds) {
        return true;
    }
    match &m.writer {
        Some(w) => !nodes
            .iter()
            .any(|n| n.name_any() == *w && !silent(n, stale_after, now)),
        None => cap.spec.shared_filesystem.is_some() && !nodes.is_empty(),
    }
}

/// A new measurement: a random nonce, and for the shared filesystem probe
/// the first live selected node as writer.
pub fn start(
    cap: &ClusterCapability,
    nodes: &[&NodeInstall],
    now: Timestamp,
    stale_after: Duration,
) -> Measurement {
    let nonce: String = (0..16)
        .map(|_| format!("{:x}", rand::thread_rng().gen_range(0..16u8)))
        .collect();
    let writer = cap
        .spec
        .shared_filesystem
        .as_ref()
        .and_then(|_| nodes.iter().find(|n| !silent(n, stale_after, now)))
        .map(|n| n.name_any());
    Measurement {
        nonce,
        writer,
        started: Time(now),
    }
}

/// The probe node `node` runs for `measurement`.
pub fn probe_for(
    name: &str,
    spec: &ClusterCapabilitySpec,
    measurement: &Measurement,
    node: &str,
) -> NodeProbe {
    NodeProbe {
        capability: name.to_owned(),
        nonce: measurement.nonce.clone(),
        shared_filesystem: spec
            .shared_filesystem
            .as_ref()
            .map(|fs| NodeFilesystemProbe {
                path: fs.path.clone(),
                writable: fs.writable,
                writer: measurement.writer.as_deref() == Some(node),
            }),
        exec: spec.exec.clone(),
        discovery_etcd: spec.discovery_etcd.clone(),
    }
}

/// The verdict on every selected node.
pub fn judge(
    name: &str,
    spec: &ClusterCapabilitySpec,
    measurement: Option<&Measurement>,
    nodes: &[&NodeInstall],
    now: Timestamp,
    stale_after: Duration,
) -> (i32, Vec<FailingNode>) {
    let mut ready = 0;
    let mut failing = Vec::new();
    for node in nodes {
        match verdict(name, spec, measurement, node, now, stale_after) {
            None => ready += 1,
            Some((reason, message)) => failing.push(FailingNode {
                node: node.name_any(),
                reason: reason.into(),
                message,
            }),
        }
    }
    (ready, failing)
}

fn verdict(
    name: &str,
    spec: &ClusterCapabilitySpec,
    measurement: Option<&Measurement>,
    node: &NodeInstall,
    now: Timestamp,
    stale_after: Duration,
) -> Option<(&'static str, String)> {
    if silent(node, stale_after, now) {
        return Some((
            "NodeSilent",
            format!(
                "the node's agent has not reported for over {}s",
                stale_after.as_secs()
            ),
        ));
    }
    let status = node.status.clone().unwrap_or_default();
    if let Some(min) = &spec.agent_version {
        let have = status.agent_version.as_deref().unwrap_or("0.0.0");
        if version(have) < version(&min.min) {
            return Some((
                "VersionTooOld",
                format!("agent {have} is older than {}", min.min),
            ));
        }
    }
    if let Some(labels) = &spec.labels {
        let missing: Vec<String> = labels
            .iter()
            .filter(|(k, v)| node.labels().get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !missing.is_empty() {
            return Some((
                "LabelMissing",
                format!("lacks label {}", missing.join(", ")),
            ));
        }
    }
    if !needs_probe(spec) {
        return None;
    }
    let nonce = measurement.map(|m| m.nonce.as_str()).unwrap_or_default();
    match status
        .probes
        .iter()
        .find(|r| r.capability == name && r.nonce == nonce)
    {
        Some(r) if r.ok => None,
        Some(r) => Some(("ProbeFailed", r.message.clone().unwrap_or_default())),
        None => Some((
            "NotMeasured",
            "the node's agent has not reported this measurement yet".into(),
        )),
    }
}

fn version(text: &str) -> Vec<u64> {
    text.split(['.', '-', '+'])
        .take(3)
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// The conditions of a judged capability.
pub fn conditions(total: i32, ready: i32, failing: &[FailingNode]) -> Vec<Observed<'static>> {
    let measuring = failing.iter().any(|f| f.reason == "NotMeasured");
    let available = if total == 0 {
        Observed::new(
            types::AVAILABLE,
            false,
            "NoNodes",
            "no node matches the capability's nodeSelector",
        )
    } else if failing.is_empty() {
        Observed::new(
            types::AVAILABLE,
            true,
            "AllNodesOffer",
            format!("all {total} selected nodes offer it"),
        )
    } else {
        let names: Vec<String> = failing
            .iter()
            .take(5)
            .map(|f| format!("{} ({}: {})", f.node, f.reason, f.message))
            .collect();
        Observed::new(
            types::AVAILABLE,
            false,
            if measuring && failing.iter().all(|f| f.reason == "NotMeasured") {
                "Measuring"
            } else {
                "NodesLack"
            },
            format!(
                "{} of {total} selected nodes do not offer it: {}",
                total - ready,
                names.join("; ")
            ),
        )
    };
    let progressing = Observed::new(
        types::PROGRESSING,
        measuring,
        if measuring { "Measuring" } else { "Measured" },
        if measuring {
            "waiting for nodes' agents to report this measurement"
        } else {
            "every selected node reported this measurement"
        },
    );
    vec![available, progressing]
}

/// One pass over a capability.
pub async fn reconcile(cap: Arc<ClusterCapability>, cx: Arc<Context>) -> Result<Action, Error> {
    cx.shared.metrics.reconciled(super::CAPABILITY);
    let name = cap.name_any();
    let now = Timestamp::now();
    let all = cx.shared.stores.nodes.store().state();
    let nodes = selected(&cap.spec, &all);
    let previous = cap.status.clone().unwrap_or_default();
    let measurement = if needs_probe(&cap.spec)
        && new_measurement_due(&cap, &nodes, now, cx.config.stale_after)
    {
        let m = start(&cap, &nodes, now, cx.config.stale_after);
        info!(capability = %name, nonce = %m.nonce, writer = ?m.writer, "new measurement");
        Some(m)
    } else if needs_probe(&cap.spec) {
        previous.measurement.clone()
    } else {
        None
    };
    // Give each selected node its probe; take it from the others.
    let manager = format!("theseus-capability.{name}");
    let wanted: BTreeMap<String, Option<NodeProbe>> = all
        .iter()
        .map(|n| {
            let node = n.name_any();
            let probe = measurement
                .as_ref()
                .filter(|_| nodes.iter().any(|s| s.name_any() == node))
                .map(|m| probe_for(&name, &cap.spec, m, &node));
            (node, probe)
        })
        .collect();
    for node in all.iter() {
        let have = node.spec.probes.iter().find(|p| p.capability == name);
        let want = wanted.get(&node.name_any()).cloned().flatten();
        if have != want.as_ref() {
            super::apply_node_list(
                &cx.shared.client,
                &node.name_any(),
                &manager,
                "probes",
                want,
            )
            .await?;
        }
    }
    let (ready, failing) = judge(
        &name,
        &cap.spec,
        measurement.as_ref(),
        &nodes,
        now,
        cx.config.stale_after,
    );
    let total = i32::try_from(nodes.len()).unwrap_or(i32::MAX);
    let mut next = ClusterCapabilityStatus {
        observed_generation: cap.metadata.generation,
        nodes_ready: ready,
        nodes_total: total,
        failing: failing.iter().take(MAX_FAILING).cloned().collect(),
        measurement: measurement.clone(),
        conditions: previous.conditions.clone(),
    };
    let changed = status::merge(
        &mut next.conditions,
        conditions(total, ready, &failing),
        cap.metadata.generation,
        now,
    );
    if next != previous {
        let api: Api<ClusterCapability> = Api::all(cx.shared.client.clone());
        status::apply_status(&api, &name, &next)
            .await
            .map_err(|source| Error::WriteStatus {
                object: format!("ClusterCapability {name}"),
                source,
            })?;
    }
    if !changed.is_empty() {
        status::publish(&cx.recorder, &cap.object_ref(&()), &changed).await;
    }
    let until_next = measurement.map_or(i64::from(cap.spec.interval_seconds), |m| {
        i64::from(cap.spec.interval_seconds) - now.duration_since(m.started.0).as_secs()
    });
    let soon = if failing.is_empty() { 30 } else { 5 };
    Ok(Action::requeue(Duration::from_secs(
        until_next.clamp(1, soon) as u64,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{NodeInstallSpec, NodeInstallStatus, ProbeResult, SharedFilesystemProbe};

    fn node(name: &str, beat: i64, probes: &[(&str, bool)]) -> Arc<NodeInstall> {
        let mut ni = NodeInstall::new(name, NodeInstallSpec::default());
        ni.status = Some(NodeInstallStatus {
            heartbeat: Some(Time(Timestamp::from_second(beat).unwrap())),
            agent_version: Some("0.9.0".into()),
            probes: probes
                .iter()
                .map(|(nonce, ok)| ProbeResult {
                    capability: "shared".into(),
                    nonce: (*nonce).into(),
                    ok: *ok,
                    message: Some(if *ok { "read" } else { "other directory" }.into()),
                    measured: Time(Timestamp::from_second(beat).unwrap()),
                })
                .collect(),
            ..Default::default()
        });
        Arc::new(ni)
    }

    fn spec() -> ClusterCapabilitySpec {
        ClusterCapabilitySpec {
            shared_filesystem: Some(SharedFilesystemProbe {
                path: "/zeta".into(),
                writable: true,
            }),
            interval_seconds: 300,
            ..Default::default()
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn only_results_for_the_current_nonce_count_and_each_failing_node_is_named() {
        let m = Measurement {
            nonce: "n2".into(),
            writer: Some("a".into()),
            started: Time(at(100)),
        };
        let all = vec![
            node("a", 100, &[("n2", true)]),
            node("b", 100, &[("n1", true)]),
            node("c", 100, &[("n2", false)]),
            node("d", 10, &[("n2", true)]),
        ];
        let nodes = selected(&spec(), &all);
        let (ready, failing) = judge(
            "shared",
            &spec(),
            Some(&m),
            &nodes,
            at(101),
            Duration::from_secs(60),
        );
        assert_eq!(ready, 1);
        let reasons: Vec<(&str, &str)> = failing
            .iter()
            .map(|f| (f.node.as_str(), f.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("b", "NotMeasured"),
                ("c", "ProbeFailed"),
                ("d", "NodeSilent")
            ]
        );
        let conds = conditions(4, ready, &failing);
        assert!(conds[0].message.contains("3 of 4"), "{}", conds[0].message);
        assert!(
            conds[0]
                .message
                .contains("c (ProbeFailed: other directory)")
        );
    }

    #[test]
    fn a_new_measurement_starts_on_interval_spec_change_or_a_gone_writer() {
        let all = vec![node("a", 100, &[]), node("b", 100, &[])];
        let nodes = selected(&spec(), &all);
        let mut cap = ClusterCapability::new("shared", spec());
        cap.metadata.generation = Some(1);
        assert!(new_measurement_due(
            &cap,
            &nodes,
            at(100),
            Duration::from_secs(60)
        ));
        let m = start(&cap, &nodes, at(100), Duration::from_secs(60));
        assert_eq!(m.writer.as_deref(), Some("a"));
        assert_eq!(m.nonce.len(), 16);
        cap.status = Some(ClusterCapabilityStatus {
            observed_generation: Some(1),
            measurement: Some(m.clone()),
            ..Default::default()
        });
        assert!(!new_measurement_due(
            &cap,
            &nodes,
            at(150),
            Duration::from_secs(60)
        ));
        assert!(new_measurement_due(
            &cap,
            &nodes,
            at(400),
            Duration::from_secs(60)
        ));
        cap.metadata.generation = Some(2);
        assert!(new_measurement_due(
            &cap,
            &nodes,
            at(150),
            Duration::from_secs(60)
        ));
        cap.metadata.generation = Some(1);
        let without_a = vec![all[1].clone()];
        let nodes = selected(&spec(), &without_a);
        assert!(new_measurement_due(
            &cap,
            &nodes,
            at(150),
            Duration::from_secs(60)
        ));
        let p = probe_for("shared", &cap.spec, &m, "a");
        assert!(p.shared_filesystem.unwrap().writer);
        let p = probe_for("shared", &cap.spec, &m, "b");
        assert!(!p.shared_filesystem.unwrap().writer);
    }

    #[test]
    fn versions_and_labels_are_judged_without_a_probe() {
        let mut spec = ClusterCapabilitySpec {
            agent_version: Some(crate::api::AgentVersionProbe {
                min: "0.10.0".into(),
            }),
            ..Default::default()
        };
        assert!(!needs_probe(&spec));
        let all = vec![node("a", 100, &[])];
        let nodes = selected(&spec, &all);
        let (ready, failing) = judge("v", &spec, None, &nodes, at(100), Duration::from_secs(60));
        assert_eq!((ready, failing[0].reason.as_str()), (0, "VersionTooOld"));
        spec.agent_version = None;
        spec.labels = Some([("disk".to_owned(), "ssd".to_owned())].into());
        let (_, failing) = judge("v", &spec, None, &nodes, at(100), Duration::from_secs(60));
        assert_eq!(failing[0].message, "lacks label disk=ssd");
    }
}
