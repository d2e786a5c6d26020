//! Application instances and cluster capabilities against the testbed,
//! with local agents. The agents share a real directory (that is a shared
//! filesystem for processes of one machine): each agent is given
//! `--env SHARED=LINK`, its own symbolic link to the shared directory, so
//! that the test can point one node's link elsewhere — to a directory of
//! its own — and prove that the probe measures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use theseus::api::{ClusterCapability, NodeInstall};

use crate::support::agents::Agent;
use crate::support::eventually;
use crate::support::fleet::RUN_LABEL;
use crate::support::operator::Rig;
use crate::support::policy::Cleanup;

/// The shared directory, and one link per node.
pub struct Shared {
    pub dir: tempfile::TempDir,
}

impl Shared {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("shared")).unwrap();
        Shared { dir }
    }

    /// The real shared directory.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    /// Node `n`'s link.
    pub fn link(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("node-{n}"))
    }

    /// Points node `n`'s link at `target`, atomically.
    pub fn point(&self, n: usize, target: &Path) {
        let tmp = self.dir.path().join(format!(".node-{n}.new"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, self.link(n)).unwrap();
    }

    /// A directory of node `n`'s own, not the shared one.
    pub fn own(&self, n: usize) -> PathBuf {
        let own = self.dir.path().join(format!("own-{n}"));
        std::fs::create_dir_all(&own).unwrap();
        own
    }
}

/// `n` agents of the rig's run, node `i` seeing `SHARED` through its link
/// (pointed at the shared directory unless `own` names it). Their names
/// sort in start order.
pub fn agents(rig: &Rig, shared: &Shared, n: usize, own: &[usize]) -> Vec<Agent> {
    (0..n)
        .map(|i| {
            let target = if own.contains(&i) {
                shared.own(i)
            } else {
                shared.path()
            };
            shared.point(i, &target);
            let extra = vec![
                "--env".to_owned(),
                format!("SHARED={}", shared.link(i).display()),
            ];
            Agent::start_with(
                &rig.tb,
                &format!("apps{}", (b'a' + i as u8) as char),
                &format!("{RUN_LABEL}={}", rig.run),
                &rig.repo.trust_args(),
                None,
                &extra,
            )
        })
        .collect()
}

/// Creates the ClusterCapability `name` of the rig's run.
pub async fn capability(rig: &Rig, cleanup: &mut Cleanup, name: &str, probe: serde_json::Value) {
    let mut spec = json!({
        "nodeSelector": { "matchLabels": { RUN_LABEL: rig.run } },
        "intervalSeconds": 15,
    });
    for (k, v) in probe.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let cap = json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "ClusterCapability",
        "metadata": { "name": name, "labels": { RUN_LABEL: rig.run } },
        "spec": spec,
    });
    cleanup.add("clustercapability", name);
    Api::<ClusterCapability>::all(rig.client.clone())
        .patch(
            name,
            &PatchParams::apply("apps-test").force(),
            &Patch::Apply(&cap),
        )
        .await
        .unwrap();
}

/// The capability once `check` holds for its status.
pub async fn capability_where(
    rig: &Rig,
    name: &str,
    what: &str,
    check: impl Fn(&theseus::api::ClusterCapabilityStatus) -> bool,
) -> theseus::api::ClusterCapabilityStatus {
    let api = Api::<ClusterCapability>::all(rig.client.clone());
    eventually(
        Duration::from_secs(90),
        &format!("{name}: {what}"),
        || async {
            let cap = api.get(name).await.map_err(|e| e.to_string())?;
            let status = cap.status.unwrap_or_default();
            if check(&status) {
                Ok(status)
            } else {
                Err(format!("{status:?}"))
            }
        },
    )
    .await
}

/// Waits until every agent has reported a heartbeat.
pub async fn heartbeats(nodes: &Api<NodeInstall>, agents: &[Agent]) {
    for agent in agents {
        eventually(
            Duration::from_secs(30),
            &format!("{} heartbeats", agent.node),
            || async {
                let ni = nodes.get(&agent.node).await.map_err(|e| e.to_string())?;
                ni.status
                    .and_then(|s| s.heartbeat)
                    .map(drop)
                    .ok_or_else(|| "no heartbeat".to_owned())
            },
        )
        .await;
    }
}

fn available(s: &theseus::api::ClusterCapabilityStatus) -> Option<bool> {
    theseus::api::conditions::find(&s.conditions, "Available").map(|c| c.status == "True")
}

#[tokio::test]
async fn a_shared_filesystem_probe_fails_on_the_node_whose_path_is_another_directory() {
    let Some(rig) = Rig::new("cap").await else {
        return;
    };
    let mut cleanup = Cleanup::new(&rig.tb);
    let shared = Shared::new();
    // Node 2 (the last by name: never the writer) sees a directory of its own.
    let agents = agents(&rig, &shared, 3, &[2]);
    let nodes: Api<NodeInstall> = Api::all(rig.client.clone());
    heartbeats(&nodes, &agents).await;
    let _operator = rig.operator("a");
    let name = format!("{}-shared", rig.run);
    capability(
        &rig,
        &mut cleanup,
        &name,
        json!({ "sharedFilesystem": { "path": "${SHARED}" } }),
    )
    .await;
    let odd = agents[2].node.clone();
    let status = capability_where(&rig, &name, "node 2 fails the probe", |s| {
        s.nodes_total == 3
            && s.nodes_ready == 2
            && s.failing.len() == 1
            && s.failing[0].reason == "ProbeFailed"
            && available(s) == Some(false)
    })
    .await;
    assert_eq!(status.failing[0].node, odd);
    assert!(
        status.failing[0]
            .message
            .contains("not the shared filesystem"),
        "{:?}",
        status.failing[0]
    );
    let condition = theseus::api::conditions::find(&status.conditions, "Available").unwrap();
    assert!(condition.message.contains(&odd), "{condition:?}");
    // One writer, not the odd node; its directory is on the same device as
    // the shared one, so only the nonce tells them apart.
    let mut writers = Vec::new();
    for agent in &agents {
        let ni = nodes.get(&agent.node).await.unwrap();
        if ni.spec.probes[0].shared_filesystem.as_ref().unwrap().writer {
            writers.push(agent.node.clone());
        }
    }
    assert_eq!(writers.len(), 1, "{writers:?}");
    assert_ne!(writers[0], odd);

    // Fixed: node 2 sees the shared directory.
    shared.point(2, &shared.path());
    capability_where(&rig, &name, "every node offers it once fixed", |s| {
        s.nodes_ready == 3 && s.failing.is_empty() && available(s) == Some(true)
    })
    .await;

    // Lost on node 1: the next measurement names it.
    shared.point(1, &shared.own(1));
    let status = capability_where(&rig, &name, "node 1 lost it", |s| {
        s.nodes_ready == 2 && available(s) == Some(false)
    })
    .await;
    assert_eq!(status.failing[0].node, agents[1].node);

    // An exec probe: a program's exit status on every node.
    let exec = format!("{}-exec", rig.run);
    capability(
        &rig,
        &mut cleanup,
        &exec,
        json!({ "exec": { "argv": ["test", "-d", "${SHARED}/../own-1"] } }),
    )
    .await;
    capability_where(&rig, &exec, "the exec probe passes everywhere", |s| {
        s.nodes_ready == 3 && available(s) == Some(true)
    })
    .await;
    for agent in &agents {
        let _ = nodes.delete(&agent.node, &Default::default()).await;
    }
}
