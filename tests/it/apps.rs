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
use theseus::api::{ClusterCapability, NodeInstall, ServiceGroup};
use theseus::discovery::paths::encode_group;
use theseus::discovery::{ContainerInfo, Tree};

use crate::support::agents::Agent;
use crate::support::fleet::RUN_LABEL;
use crate::support::operator::Rig;
use crate::support::policy::Cleanup;
use crate::support::run::stdout_ok;
use crate::support::{TestbedEnv, eventually, theseus};

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

/// `n` agents of the run, node `i` seeing `SHARED` through its link
/// (pointed at the shared directory unless `own` names it) and labelled
/// `slot=a`, `slot=b`…; their names sort in start order.
pub fn agents(
    tb: &TestbedEnv,
    run: &str,
    trust: &[String],
    shared: &Shared,
    n: usize,
    own: &[usize],
) -> Vec<Agent> {
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
            let slot = (b'a' + i as u8) as char;
            Agent::start_with(
                tb,
                &format!("apps{slot}"),
                &format!("{RUN_LABEL}={run},slot={slot}"),
                trust,
                None,
                &extra,
            )
        })
        .collect()
}

/// Creates the ClusterCapability `name` of the rig's run.
pub async fn capability(
    client: &kube::Client,
    run: &str,
    cleanup: &mut Cleanup,
    name: &str,
    probe: serde_json::Value,
) {
    let mut spec = json!({
        "nodeSelector": { "matchLabels": { RUN_LABEL: run } },
        "intervalSeconds": 15,
    });
    for (k, v) in probe.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let cap = json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "ClusterCapability",
        "metadata": { "name": name, "labels": { RUN_LABEL: run } },
        "spec": spec,
    });
    cleanup.add("clustercapability", name);
    Api::<ClusterCapability>::all(client.clone())
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
    client: &kube::Client,
    name: &str,
    what: &str,
    check: impl Fn(&theseus::api::ClusterCapabilityStatus) -> bool,
) -> theseus::api::ClusterCapabilityStatus {
    let api = Api::<ClusterCapability>::all(client.clone());
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
    let agents = agents(&rig.tb, &rig.run, &rig.repo.trust_args(), &shared, 3, &[2]);
    let nodes: Api<NodeInstall> = Api::all(rig.client.clone());
    heartbeats(&nodes, &agents).await;
    let _operator = rig.operator("a");
    let name = format!("{}-shared", rig.run);
    capability(
        &rig.client,
        &rig.run,
        &mut cleanup,
        &name,
        json!({ "sharedFilesystem": { "path": "${SHARED}" } }),
    )
    .await;
    let odd = agents[2].node.clone();
    let status = capability_where(&rig.client, &name, "node 2 fails the probe", |s| {
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
    capability_where(&rig.client, &name, "every node offers it once fixed", |s| {
        s.nodes_ready == 3 && s.failing.is_empty() && available(s) == Some(true)
    })
    .await;

    // Lost on node 1: the next measurement names it.
    shared.point(1, &shared.own(1));
    let status = capability_where(&rig.client, &name, "node 1 lost it", |s| {
        s.nodes_ready == 2 && available(s) == Some(false)
    })
    .await;
    assert_eq!(status.failing[0].node, agents[1].node);

    // An exec probe: a program's exit status on every node.
    let exec = format!("{}-exec", rig.run);
    capability(
        &rig.client,
        &rig.run,
        &mut cleanup,
        &exec,
        json!({ "exec": { "argv": ["test", "-d", "${SHARED}/../own-1"] } }),
    )
    .await;
    capability_where(
        &rig.client,
        &exec,
        "the exec probe passes everywhere",
        |s| s.nodes_ready == 3 && available(s) == Some(true),
    )
    .await;
    for agent in &agents {
        let _ = nodes.delete(&agent.node, &Default::default()).await;
    }
}

/// Applies `object` (any kind) by server-side apply.
pub fn apply(tb: &TestbedEnv, dir: &Path, object: serde_json::Value) {
    let file = dir.join(format!("{:08x}.json", rand::random::<u32>()));
    std::fs::write(&file, object.to_string()).unwrap();
    tb.kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        file.to_str().unwrap(),
    ]);
}

/// A Role `name` with base directories `apps` (0750) and `data` (0700)
/// under the shared directory, in namespace `ns`.
pub fn role(run: &str, name: &str, ns: &str, capability: &str) -> serde_json::Value {
    json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "Role",
        "metadata": { "name": name, "labels": { RUN_LABEL: run } },
        "spec": {
            "namespace": ns,
            "capabilities": [capability],
            "baseDirectories": [
                { "name": "apps", "path": "${SHARED}/apps", "mode": "0750" },
                { "name": "data", "path": "${SHARED}/data", "mode": "0700" }
            ],
            "admins": [{ "kind": "User", "name": "alice" }]
        }
    })
}

/// An AppInstance `APP-ID` in `ns`.
pub fn instance(
    run: &str,
    ns: &str,
    app: &str,
    id: &str,
    role: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut spec = json!({ "app": app, "version": "1.0.0", "id": id, "role": role });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "AppInstance",
        "metadata": { "name": format!("{app}-{id}"), "namespace": ns, "labels": { RUN_LABEL: run } },
        "spec": spec,
    })
}

/// The instance once `check` holds for its status.
pub async fn instance_where(
    client: &kube::Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&theseus::api::AppInstanceStatus) -> bool,
) -> theseus::api::AppInstanceStatus {
    let api = Api::<theseus::api::AppInstance>::namespaced(client.clone(), ns);
    eventually(
        Duration::from_secs(120),
        &format!("{ns}/{name}: {what}"),
        || async {
            let i = api.get(name).await.map_err(|e| e.to_string())?;
            let status = i.status.unwrap_or_default();
            if check(&status) {
                Ok(status)
            } else {
                Err(format!("{status:?}"))
            }
        },
    )
    .await
}

/// The condition `type_` of `status`: (status, reason, message).
pub fn condition(s: &theseus::api::AppInstanceStatus, type_: &str) -> (String, String, String) {
    theseus::api::conditions::find(&s.conditions, type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// Waits until the Role controller has made the namespace `ns`.
pub async fn namespace_made(client: &kube::Client, ns: &str) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    eventually(
        Duration::from_secs(60),
        &format!("the role's namespace {ns} exists"),
        || async {
            namespaces
                .get(ns)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await;
}

/// Deletes the instances of `namespaces` and the applications `apps`
/// while the operator runs (their finalizers need it), and waits until
/// they are gone.
pub async fn teardown(client: &kube::Client, namespaces: &[&str], apps: &[&str]) {
    use theseus::api::{AppInstance, AppPackage};
    for ns in namespaces {
        let api = Api::<AppInstance>::namespaced(client.clone(), ns);
        let _ = api
            .delete_collection(&Default::default(), &Default::default())
            .await;
        eventually(
            Duration::from_secs(120),
            &format!("the instances of {ns} are gone"),
            || async {
                let left = api
                    .list(&Default::default())
                    .await
                    .map_err(|e| e.to_string())?;
                if left.items.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "{:?}",
                        left.items
                            .iter()
                            .map(|i| (i.metadata.name.clone(), i.status.clone()))
                            .collect::<Vec<_>>()
                    ))
                }
            },
        )
        .await;
    }
    let api = Api::<AppPackage>::all(client.clone());
    for app in apps {
        let _ = api.delete(app, &Default::default()).await;
        eventually(
            Duration::from_secs(60),
            &format!("AppPackage {app} is gone"),
            || async {
                match api.get_opt(app).await.map_err(|e| e.to_string())? {
                    None => Ok(()),
                    Some(a) => Err(format!("{:?}", a.status)),
                }
            },
        )
        .await;
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// An instance is held while a required capability is missing (naming
/// the node that lacks it), proceeds once it is fixed, and is Degraded —
/// nothing deleted — when it is lost; `OnePerCluster` forces the role
/// `shared` and refuses a second instance; an occupied home is never
/// overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_wait_for_capabilities_keep_their_policy_and_never_overwrite_a_home() {
    let Some(rig) = Rig::new("appcap").await else {
        return;
    };
    let mut cleanup = Cleanup::new(&rig.tb);
    let shared = Shared::new();
    let agents = agents(&rig.tb, &rig.run, &rig.repo.trust_args(), &shared, 2, &[1]);
    let nodes: Api<NodeInstall> = Api::all(rig.client.clone());
    heartbeats(&nodes, &agents).await;
    let _operator = rig.operator("a");
    let tag = &rig.run[rig.run.len() - 8..];
    let cap = format!("{}-shared", rig.run);
    capability(
        &rig.client,
        &rig.run,
        &mut cleanup,
        &cap,
        json!({ "sharedFilesystem": { "path": "${SHARED}" } }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Two roles, and the role `shared`.
    let prod = format!("prod{tag}");
    let prod_ns = format!("{}-prod", rig.run);
    let shared_ns = format!("{}-shared", rig.run);
    for (name, ns) in [
        (prod.as_str(), prod_ns.as_str()),
        ("shared", shared_ns.as_str()),
    ] {
        cleanup.add("namespace", ns);
        cleanup.add("role.theseus.dev", name);
        apply(&rig.tb, dir.path(), role(&rig.run, name, ns, &cap));
    }
    let app = format!("keep{tag}");
    let single = format!("single{tag}");
    for (name, policy) in [(&app, "Multi"), (&single, "OnePerCluster")] {
        cleanup.add("apppackage", name);
        apply(
            &rig.tb,
            dir.path(),
            json!({
                "apiVersion": "theseus.dev/v1alpha1", "kind": "AppPackage",
                "metadata": { "name": name, "labels": { RUN_LABEL: rig.run } },
                "spec": {
                    "instancePolicy": policy,
                    "requires": { "capabilities": [{ "name": cap }] },
                    "directories": [{ "baseDirectory": "apps", "mode": "0750" }],
                    "stageRoot": "${SHARED}/zeta/shared",
                    "versions": [{ "version": "1.0.0", "stage": { "files": { "VERSION": "1.0.0\n" } } }]
                }
            }),
        );
    }

    namespace_made(&rig.client, &prod_ns).await;
    namespace_made(&rig.client, &shared_ns).await;
    // Held while node b's path is another directory (installed with the
    // command line, which refuses the same id twice).
    let run_label = format!("{RUN_LABEL}={}", rig.run);
    let install = [
        "app",
        "install",
        &app,
        "--id",
        "one",
        "--role",
        &prod,
        "--no-start",
        "--label",
        &run_label,
    ];
    let out = stdout_ok(rig.tb.command(theseus()).args(install));
    assert!(
        out.contains(&format!("appinstance {prod_ns}/{app}-one created")),
        "{out}"
    );
    let taken = rig.tb.command(theseus()).args(install).output().unwrap();
    assert!(!taken.status.success());
    let stderr = String::from_utf8_lossy(&taken.stderr);
    assert!(stderr.contains("id one is taken"), "{stderr}");
    let held = instance_where(
        &rig.client,
        &prod_ns,
        &format!("{app}-one"),
        "held for the capability",
        |s| condition(s, "CapabilitiesMet").0 == "False",
    )
    .await;
    let (_, reason, message) = condition(&held, "CapabilitiesMet");
    assert_eq!(reason, "CapabilityMissing");
    assert!(message.contains(&cap), "{message}");
    let home = shared.path().join(format!("apps/{prod}/{app}/one"));
    // Wait for the measurement to name node b, then check nothing was made.
    capability_where(&rig.client, &cap, "node b fails", |s| {
        s.failing
            .iter()
            .any(|f| f.node == agents[1].node && f.reason == "ProbeFailed")
    })
    .await;
    let held = instance_where(
        &rig.client,
        &prod_ns,
        &format!("{app}-one"),
        "the condition names node b",
        |s| condition(s, "CapabilitiesMet").2.contains(&agents[1].node),
    )
    .await;
    assert_eq!(held.phase, theseus::api::InstancePhase::NotInstalled);
    assert!(!home.exists(), "nothing is installed while held");
    let list = stdout_ok(rig.tb.command(theseus()).args(["capability", "list"]));
    assert!(
        list.lines()
            .any(|l| l.contains(&agents[1].node) && l.contains("ProbeFailed")),
        "{list}"
    );
    let status = stdout_ok(
        rig.tb
            .command(theseus())
            .args(["app", "status", &app, "--id", "one", "--role", &prod]),
    );
    assert!(
        status.contains("CapabilitiesMet") && status.contains(&agents[1].node),
        "{status}"
    );

    // Fixed: the instance proceeds.
    shared.point(1, &shared.path());
    let installed = instance_where(
        &rig.client,
        &prod_ns,
        &format!("{app}-one"),
        "installed",
        |s| s.phase == theseus::api::InstancePhase::Installed,
    )
    .await;
    assert_eq!(
        installed.home.as_deref(),
        Some(format!("${{SHARED}}/apps/{prod}/{app}/one").as_str())
    );
    assert_eq!(mode(&home), 0o750);
    assert_eq!(mode(&shared.path().join(format!("apps/{prod}"))), 0o750);
    assert_eq!(mode(&shared.path().join(format!("data/{prod}"))), 0o700);
    let env = std::fs::read_to_string(home.join("instance.env.sh")).unwrap();
    assert!(env.contains("export THESEUS_INSTANCE_ID='one'"), "{env}");
    assert!(env.contains("THESEUS_STAGE="), "{env}");
    assert_eq!(
        std::fs::read_to_string(
            shared
                .path()
                .join(format!("zeta/shared/{app}/stage/1.0.0/VERSION"))
        )
        .unwrap(),
        "1.0.0\n"
    );
    std::fs::write(home.join("data.db"), "kept").unwrap();
    // Started (the application runs nothing of its own: Running once
    // installed).
    stdout_ok(
        rig.tb
            .command(theseus())
            .args(["app", "start", &app, "--id", "one", "--role", &prod]),
    );
    instance_where(
        &rig.client,
        &prod_ns,
        &format!("{app}-one"),
        "running",
        |s| s.phase == theseus::api::InstancePhase::Running,
    )
    .await;

    // Lost while running: Degraded, nothing stopped or deleted.
    shared.point(1, &shared.own(1));
    let degraded = instance_where(
        &rig.client,
        &prod_ns,
        &format!("{app}-one"),
        "degraded",
        |s| condition(s, "Degraded").0 == "True",
    )
    .await;
    assert_eq!(condition(&degraded, "Degraded").1, "CapabilityLost");
    assert_eq!(degraded.phase, theseus::api::InstancePhase::Running);
    assert_eq!(
        std::fs::read_to_string(home.join("data.db")).unwrap(),
        "kept"
    );
    shared.point(1, &shared.path());
    instance_where(
        &rig.client,
        &prod_ns,
        &format!("{app}-one"),
        "healthy again",
        |s| {
            condition(s, "Degraded").0 == "False" && s.phase == theseus::api::InstancePhase::Running
        },
    )
    .await;

    // An occupied home is never overwritten.
    let taken = shared.path().join(format!("apps/{prod}/{app}/taken"));
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("precious"), "theirs").unwrap();
    apply(
        &rig.tb,
        dir.path(),
        instance(
            &rig.run,
            &prod_ns,
            &app,
            "taken",
            &prod,
            json!({ "state": "Installed" }),
        ),
    );
    let occupied = instance_where(
        &rig.client,
        &prod_ns,
        &format!("{app}-taken"),
        "refused: home occupied",
        |s| condition(s, "StorageReady").2.contains("HomeOccupied"),
    )
    .await;
    assert_eq!(condition(&occupied, "StorageReady").0, "False");
    assert_eq!(
        std::fs::read_to_string(taken.join("precious")).unwrap(),
        "theirs"
    );
    assert!(!taken.join("instance.env.sh").exists());
    assert!(!taken.join(".theseus-claim").exists());

    // OnePerCluster: only in the role `shared`, and only once.
    apply(
        &rig.tb,
        dir.path(),
        instance(
            &rig.run,
            &prod_ns,
            &single,
            "elsewhere",
            &prod,
            json!({ "state": "Installed" }),
        ),
    );
    apply(
        &rig.tb,
        dir.path(),
        instance(
            &rig.run,
            &shared_ns,
            &single,
            "first",
            "shared",
            json!({ "state": "Installed" }),
        ),
    );
    let elsewhere = instance_where(
        &rig.client,
        &prod_ns,
        &format!("{single}-elsewhere"),
        "refused outside shared",
        |s| condition(s, "Valid").0 == "False",
    )
    .await;
    assert!(
        condition(&elsewhere, "Valid")
            .2
            .contains("in the role shared"),
        "{elsewhere:?}"
    );
    instance_where(
        &rig.client,
        &shared_ns,
        &format!("{single}-first"),
        "the first is installed",
        |s| s.phase == theseus::api::InstancePhase::Installed,
    )
    .await;
    apply(
        &rig.tb,
        dir.path(),
        instance(
            &rig.run,
            &shared_ns,
            &single,
            "second",
            "shared",
            json!({ "state": "Installed" }),
        ),
    );
    let second = instance_where(
        &rig.client,
        &shared_ns,
        &format!("{single}-second"),
        "the second is refused",
        |s| condition(s, "Valid").0 == "False",
    )
    .await;
    assert!(
        condition(&second, "Valid")
            .2
            .contains(&format!("{single}-first")),
        "{second:?}"
    );
    assert!(
        !shared
            .path()
            .join(format!("apps/shared/{single}/second"))
            .exists()
    );

    teardown(&rig.client, &[&prod_ns, &shared_ns], &[&app, &single]).await;
    for agent in &agents {
        let _ = nodes.delete(&agent.node, &Default::default()).await;
    }
}

/// An application with two instances in two roles: its stage made once
/// (its package fetched and unpacked before the staging step), the
/// directories `BASE/ROLE/APP/ID` made with the roles' modes, both
/// Running (their services answer on their nodes, their discovery groups
/// `APP/ID.ROLE` and their run ServiceGroups' containers are in the tree);
/// a client that requires the application in its role learns its address,
/// port and home; one set to `Installed` (its service stops, its entries
/// go, its files stay) and back to `Running`; one deleted with `Retain`
/// (directories and stage kept), the other with `Delete` (directories
/// gone, stage kept); every entry gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_in_two_roles_run_stop_start_and_are_removed_by_their_policy() {
    use crate::config_bundles::Rig as ConfigRig;
    use theseus::api::{AppInstance, InstancePhase};
    let Some(tb) = crate::support::testbed() else {
        return;
    };
    let etcd = crate::support::discovery::config(tb.discovery_etcd());
    let discovery = [
        "--discovery-etcd",
        etcd.endpoints[0].as_str(),
        "--discovery-prefix",
        etcd.prefix.as_str(),
    ];
    let Some(rig) = ConfigRig::start("appinst", &discovery).await else {
        return;
    };
    let tree = Tree::connect(&etcd).await.expect("the discovery etcd");
    rig.create_repository().await;
    let mut cleanup = Cleanup::new(&rig.tb);
    let shared = Shared::new();
    let agents = agents(&rig.tb, &rig.run, &rig.trust, &shared, 2, &[]);
    let nodes: Api<NodeInstall> = Api::all(rig.client.clone());
    heartbeats(&nodes, &agents).await;
    let tag = rig.tag().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let cap = format!("{}-shared", rig.run);
    capability(
        &rig.client,
        &rig.run,
        &mut cleanup,
        &cap,
        json!({ "sharedFilesystem": { "path": "${SHARED}" } }),
    )
    .await;
    let module = format!("webmode-{tag}");
    cleanup.add("configmodule", &module);
    apply(
        &rig.tb,
        dir.path(),
        json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "ConfigModule",
            "metadata": { "name": module },
            "spec": {
                "version": "1",
                "parameters": { "mode": { "type": "string", "default": "ok" }, "port": { "type": "string" } },
                "templates": [{ "path": "etc/web/mode", "content": "{{ mode }}\n" }]
            }
        }),
    );
    let roles = [
        (format!("prod{tag}"), format!("{}-prod", rig.run)),
        (format!("dev{tag}"), format!("{}-dev", rig.run)),
    ];
    for (name, ns) in &roles {
        cleanup.add("namespace", ns);
        cleanup.add("role.theseus.dev", name);
        apply(&rig.tb, dir.path(), role(&rig.run, name, ns, &cap));
    }
    let app = format!("web{tag}");
    cleanup.add("apppackage", &app);
    apply(
        &rig.tb,
        dir.path(),
        json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "AppPackage",
            "metadata": { "name": app, "labels": { RUN_LABEL: rig.run } },
            "spec": {
                "requires": { "capabilities": [{ "name": cap }] },
                "directories": [
                    { "baseDirectory": "apps", "mode": "0750" },
                    { "baseDirectory": "data", "mode": "0700" }
                ],
                "stageRoot": "${SHARED}/zeta/shared",
                "parameters": [{ "name": "port" }, { "name": "mode", "default": "ok" }],
                "versions": [{
                    "version": "1.0.0",
                    "stage": {
                        "files": { "install_instance.sh": "#!/bin/sh\necho install\n" },
                        "repository": rig.run,
                        "packages": ["cfgweb--1.0.0"],
                        "argv": ["sh", "-c",
                            "echo staged >> runs.log && cp packages/cfgweb--1.0.0/www/version staged-version"]
                    },
                    "run": {
                        "packageSet": { "repository": rig.run, "packages": ["cfgweb--1.0.0"] },
                        "configModules": [{ "name": module }],
                        "configPackage": "web-config",
                        "ports": { "http": "${values.port}" },
                        "serviceGroup": {
                            "service": "${app}-ui", "labels": ["${id}", "${role}"],
                            "config": { "home": "${home}" },
                            "template": { "image": "example/ui:1",
                                "ports": [{ "name": "http", "containerPort": 8080 }] }
                        }
                    }
                }]
            }
        }),
    );
    for (_, ns) in &roles {
        namespace_made(&rig.client, ns).await;
    }
    let ids = ["one", "two"];
    for (i, (role_name, ns)) in roles.iter().enumerate() {
        let slot = ((b'a' + i as u8) as char).to_string();
        apply(
            &rig.tb,
            dir.path(),
            instance(
                &rig.run,
                ns,
                &app,
                ids[i],
                role_name,
                json!({
                    "values": { "port": agents[i].port.to_string() },
                    "nodeSelector": { "slot": slot },
                }),
            ),
        );
    }
    for (i, (_, ns)) in roles.iter().enumerate() {
        let s = instance_where(
            &rig.client,
            ns,
            &format!("{app}-{}", ids[i]),
            "running",
            |s| s.phase == InstancePhase::Running,
        )
        .await;
        assert_eq!(s.endpoints.len(), 1, "{s:?}");
        assert_eq!(s.endpoints[0].node, agents[i].node);
        assert_eq!(s.endpoints[0].ports["http"], agents[i].port);
        eventually(Duration::from_secs(30), "the service answers", || {
            agents[i].service_version()
        })
        .await;
        let (role, id) = (&roles[i].0, ids[i]);
        let info = published(&tree, &app, id, role, &agents[i].node).await;
        assert_eq!(
            info.instance_host, s.endpoints[0].address,
            "the node's address"
        );
        assert_eq!(info.instance_port, Some(agents[i].port));
        assert_eq!(info.port_mappings[0].name.as_deref(), Some("http"));
        let group = encode_group(&[id, role.as_str()]).unwrap();
        let config = tree.group_config(&app, &group).await.unwrap().unwrap();
        assert_eq!(config["role"], *role);
        assert_eq!(config["namespace"], roles[i].1);
        assert!(config["home"].ends_with(&format!("apps/{role}/{app}/{id}")));
        // The run's ServiceGroup, with the instance's variables, publishes
        // its own containers.
        ui_containers(&tree, &app, id, role, 1).await;
        let ui = Api::<ServiceGroup>::namespaced(rig.client.clone(), &roles[i].1)
            .get(&format!("{app}-{id}"))
            .await
            .unwrap();
        assert_eq!(ui.spec.config["home"], config["home"]);
    }
    // An application that requires web in its role learns where web is.
    let client_app = format!("client{tag}");
    cleanup.add("apppackage", &client_app);
    let needs = format!("requires.{app}");
    apply(
        &rig.tb,
        dir.path(),
        json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "AppPackage",
            "metadata": { "name": client_app, "labels": { RUN_LABEL: rig.run } },
            "spec": {
                "requires": {
                    "capabilities": [{ "name": cap }],
                    "apps": [{ "name": app, "scope": "SameRole" }]
                },
                "directories": [{ "baseDirectory": "apps" }],
                "stageRoot": "${SHARED}/zeta/shared",
                "versions": [{
                    "version": "1.0.0",
                    "run": { "serviceGroup": {
                        "service": "${app}", "labels": ["${id}", "${role}"],
                        "config": {
                            "web": format!("${{{needs}.addresses}}:${{{needs}.port.http}}"),
                            "webHome": format!("${{{needs}.home}}")
                        },
                        "template": { "image": "example/client:1" }
                    } }
                }]
            }
        }),
    );
    apply(
        &rig.tb,
        dir.path(),
        instance(
            &rig.run,
            &roles[0].1,
            &client_app,
            "c1",
            &roles[0].0,
            json!({}),
        ),
    );
    let c1 = instance_where(
        &rig.client,
        &roles[0].1,
        &format!("{client_app}-c1"),
        "running beside web",
        |s| s.phase == InstancePhase::Running,
    )
    .await;
    let (_, reason, message) = condition(&c1, "DependenciesMet");
    assert_eq!(reason, "Running");
    assert!(message.contains(&format!("{app}-one")), "{message}");
    let client_group = Api::<ServiceGroup>::namespaced(rig.client.clone(), &roles[0].1)
        .get(&format!("{client_app}-c1"))
        .await
        .unwrap();
    let web_one = instance_where(
        &rig.client,
        &roles[0].1,
        &format!("{app}-one"),
        "running",
        |s| s.phase == InstancePhase::Running,
    )
    .await;
    assert_eq!(
        client_group.spec.config["web"],
        format!("{}:{}", web_one.endpoints[0].address, agents[0].port)
    );
    assert_eq!(
        Some(&client_group.spec.config["webHome"]),
        web_one.home.as_ref()
    );

    let stage = shared.path().join(format!("zeta/shared/{app}/stage/1.0.0"));
    assert_eq!(
        std::fs::read_to_string(stage.join("runs.log")).unwrap(),
        "staged\n",
        "staged once for both"
    );
    assert!(stage.join("install_instance.sh").exists());
    // The stage's package was fetched, verified and unpacked whole before
    // the staging step ran, and nothing half-fetched is left.
    assert_eq!(
        std::fs::read_to_string(stage.join("staged-version")).unwrap(),
        "1.0.0\n"
    );
    let cached: Vec<String> = std::fs::read_dir(stage.join("packages"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached, ["cfgweb--1.0.0"]);
    let homes: Vec<PathBuf> = roles
        .iter()
        .zip(ids)
        .map(|((r, _), id)| shared.path().join(format!("apps/{r}/{app}/{id}")))
        .collect();
    let data: Vec<PathBuf> = roles
        .iter()
        .zip(ids)
        .map(|((r, _), id)| shared.path().join(format!("data/{r}/{app}/{id}")))
        .collect();
    for (home, data) in homes.iter().zip(&data) {
        assert_eq!(mode(home), 0o750);
        assert_eq!(mode(data), 0o700);
        assert!(home.join("instance.env.sh").exists());
    }

    // Stopped: the service goes, the files stay; started again.
    let instances = |ns: &str| Api::<AppInstance>::namespaced(rig.client.clone(), ns);
    let state = |s: &str| json!({ "spec": { "state": s } });
    let one = format!("{app}-one");
    instances(&roles[0].1)
        .patch(
            &one,
            &PatchParams::default(),
            &Patch::Merge(&state("Installed")),
        )
        .await
        .unwrap();
    let stopped = instance_where(&rig.client, &roles[0].1, &one, "stopped", |s| {
        s.phase == InstancePhase::Installed && condition(s, "Available").1 == "Stopped"
    })
    .await;
    assert!(stopped.endpoints.is_empty());
    unpublished(&tree, &app, "one", &roles[0].0).await;
    ui_containers(&tree, &app, "one", &roles[0].0, 0).await;
    eventually(
        Duration::from_secs(30),
        "the service is stopped",
        || async {
            match agents[0].service_version().await {
                Err(_) => Ok(()),
                Ok(v) => Err(format!("still answers {v}")),
            }
        },
    )
    .await;
    assert!(homes[0].join("instance.env.sh").exists());
    instances(&roles[0].1)
        .patch(
            &one,
            &PatchParams::default(),
            &Patch::Merge(&state("Running")),
        )
        .await
        .unwrap();
    instance_where(&rig.client, &roles[0].1, &one, "running again", |s| {
        s.phase == InstancePhase::Running
    })
    .await;
    eventually(Duration::from_secs(30), "the service answers again", || {
        agents[0].service_version()
    })
    .await;
    published(&tree, &app, "one", &roles[0].0, &agents[0].node).await;
    ui_containers(&tree, &app, "one", &roles[0].0, 1).await;

    // Removed: one with Retain, two with Delete.
    let two = format!("{app}-two");
    instances(&roles[1].1)
        .patch(
            &two,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": { "deletionPolicy": "Delete" } })),
        )
        .await
        .unwrap();
    teardown(&rig.client, &[&roles[0].1, &roles[1].1], &[]).await;
    for (i, (role, ns)) in roles.iter().enumerate() {
        unpublished(&tree, &app, ids[i], role).await;
        unpublished(&tree, &format!("{app}-ui"), ids[i], role).await;
        let groups = Api::<ServiceGroup>::namespaced(rig.client.clone(), ns);
        assert!(
            groups
                .get_opt(&format!("{app}-{}", ids[i]))
                .await
                .unwrap()
                .is_none()
        );
    }
    assert!(
        homes[0].join("instance.env.sh").exists(),
        "Retain keeps the directories"
    );
    assert!(data[0].exists());
    assert!(!homes[1].exists(), "Delete removes the directories");
    assert!(!data[1].exists());
    assert!(stage.join("runs.log").exists(), "the stage stays");
    for agent in &agents {
        eventually(
            Duration::from_secs(30),
            "the service is stopped after removal",
            || async {
                match agent.service_version().await {
                    Err(_) => Ok(()),
                    Ok(v) => Err(format!("still answers {v}")),
                }
            },
        )
        .await;
    }
    teardown(&rig.client, &[], &[&app, &client_app]).await;
    for agent in &agents {
        let _ = nodes.delete(&agent.node, &Default::default()).await;
    }
}

/// The discovery entry of instance `ID` of `app` in `role` on `node`,
/// once the operator published it (`APP/ID.ROLE`, as a follower of the
/// labels `ID` and `ROLE` reads it).
async fn published(tree: &Tree, app: &str, id: &str, role: &str, node: &str) -> ContainerInfo {
    let group = encode_group(&[id, role]).unwrap();
    eventually(
        Duration::from_secs(60),
        &format!("{app}/{group} published"),
        || async {
            let names = tree
                .group_container_names(app, &group)
                .await
                .map_err(|e| e.to_string())?;
            if names != [node] {
                return Err(format!("containers {names:?}, want [{node}]"));
            }
            tree.container_info(app, &group, node)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no info".to_owned())
        },
    )
    .await
}

/// Waits until the run's ServiceGroup of instance `ID` (`APP-ui/ID.ROLE`)
/// publishes `n` containers.
async fn ui_containers(tree: &Tree, app: &str, id: &str, role: &str, n: usize) {
    let (service, group) = (format!("{app}-ui"), encode_group(&[id, role]).unwrap());
    eventually(
        Duration::from_secs(90),
        &format!("{service}/{group}: {n} containers"),
        || async {
            let names = tree
                .group_container_names(&service, &group)
                .await
                .map_err(|e| e.to_string())?;
            if names.len() == n {
                Ok(())
            } else {
                Err(format!("containers {names:?}"))
            }
        },
    )
    .await;
}

/// Waits until the instance's group has no key left.
async fn unpublished(tree: &Tree, app: &str, id: &str, role: &str) {
    let group = encode_group(&[id, role]).unwrap();
    eventually(
        Duration::from_secs(60),
        &format!("{app}/{group} removed"),
        || async {
            match tree.group_exists(app, &group).await {
                Ok(false) => Ok(()),
                Ok(true) => Err("still there".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
}

/// The operator SIGKILLed at 10 random moments while ten instances
/// install: every instance reaches its declared state, no directory is
/// created twice (the agents' logs name each directory they made), and
/// nothing half-made is left beside the homes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_at_random_moments_installs_every_instance_once() {
    use rand::Rng;
    use theseus::api::{AppInstance, InstancePhase};
    let Some(rig) = Rig::new("appkill").await else {
        return;
    };
    let mut cleanup = Cleanup::new(&rig.tb);
    let shared = Shared::new();
    let agents = agents(&rig.tb, &rig.run, &rig.repo.trust_args(), &shared, 2, &[]);
    let nodes: Api<NodeInstall> = Api::all(rig.client.clone());
    heartbeats(&nodes, &agents).await;
    let tag = &rig.run[rig.run.len() - 8..];
    let cap = format!("{}-shared", rig.run);
    capability(
        &rig.client,
        &rig.run,
        &mut cleanup,
        &cap,
        json!({ "sharedFilesystem": { "path": "${SHARED}" } }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prod = format!("prod{tag}");
    let ns = format!("{}-prod", rig.run);
    cleanup.add("namespace", &ns);
    cleanup.add("role.theseus.dev", &prod);
    apply(&rig.tb, dir.path(), role(&rig.run, &prod, &ns, &cap));
    let app = format!("many{tag}");
    cleanup.add("apppackage", &app);
    apply(
        &rig.tb,
        dir.path(),
        json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "AppPackage",
            "metadata": { "name": app, "labels": { RUN_LABEL: rig.run } },
            "spec": {
                "requires": { "capabilities": [{ "name": cap }] },
                "directories": [{ "baseDirectory": "apps" }, { "baseDirectory": "data", "mode": "0700" }],
                "stageRoot": "${SHARED}/zeta/shared",
                "versions": [{ "version": "1.0.0", "stage": { "argv": ["sh", "-c", "echo staged >> runs.log"] } }]
            }
        }),
    );
    let mut op = rig.operator("a");
    namespace_made(&rig.client, &ns).await;
    let ids: Vec<String> = (0..10).map(|i| format!("i{i}")).collect();
    for id in &ids {
        apply(
            &rig.tb,
            dir.path(),
            instance(
                &rig.run,
                &ns,
                &app,
                id,
                &prod,
                json!({ "state": "Installed" }),
            ),
        );
    }
    let mut moments = Vec::new();
    for _ in 0..10 {
        let wait = rand::thread_rng().gen_range(100..1500);
        moments.push(wait);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        op.kill();
        op.restart();
    }
    eprintln!("operator killed after {moments:?} ms");
    let api = Api::<AppInstance>::namespaced(rig.client.clone(), &ns);
    for id in &ids {
        let name = format!("{app}-{id}");
        instance_where(&rig.client, &ns, &name, "installed", |s| {
            s.phase == InstancePhase::Installed && condition(s, "StorageReady").0 == "True"
        })
        .await;
        let uid = api.get(&name).await.unwrap().metadata.uid.unwrap();
        for base in ["apps", "data"] {
            let d = shared.path().join(format!("{base}/{prod}/{app}/{id}"));
            assert_eq!(
                std::fs::read_to_string(d.join(".theseus-claim"))
                    .unwrap()
                    .trim(),
                uid
            );
        }
    }
    for base in ["apps", "data"] {
        let mut names: Vec<String> =
            std::fs::read_dir(shared.path().join(format!("{base}/{prod}/{app}")))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
        names.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(names, want, "nothing half-made beside the homes in {base}");
    }
    let stage = shared
        .path()
        .join(format!("zeta/shared/{app}/stage/1.0.0/runs.log"));
    assert_eq!(
        std::fs::read_to_string(stage).unwrap(),
        "staged\n",
        "staged once"
    );
    let logs: String = agents.iter().map(|a| a.log()).collect();
    for id in &ids {
        let made = logs
            .lines()
            .filter(|l| l.contains("storage task done") && l.contains(&format!("/{app}/{id}\"")))
            .count();
        assert_eq!(
            made, 1,
            "{id}'s directories were made exactly once:\n{logs}"
        );
    }
    teardown(&rig.client, &[&ns], &[&app]).await;
    drop(op);
    for agent in &agents {
        let _ = nodes.delete(&agent.node, &Default::default()).await;
    }
}
